//! Table definitions and metadata keys: the on-disk schema in one place.

use redb::{TableDefinition, WriteTransaction};

/// (collection, local id) -> bincode [`super::StoredRecord`].
pub const RECORDS: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("records");
/// queue sequence -> bincode [`super::QueuedOp`].
pub const QUEUE: TableDefinition<u64, &[u8]> = TableDefinition::new("queue");
/// op_id -> queue sequence ([`PARKED_SEQ`] while parked in a conflict).
pub const OP_INDEX: TableDefinition<&str, u64> = TableDefinition::new("op_index");
/// (collection, server id) -> local id: maps pulled records to local ones.
pub const SERVER_IDS: TableDefinition<(&str, &str), &str> = TableDefinition::new("server_ids");
/// dead-letter sequence -> bincode [`super::DeadLetter`].
pub const DEAD: TableDefinition<u64, &[u8]> = TableDefinition::new("dead_letters");
/// (collection, local id) -> bincode [`super::ParkedConflict`].
pub const CONFLICTS: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("conflicts");
/// (collection, local id, queue sequence) -> (): each record's queued ops,
/// so that finding a record's later ops is a range lookup, not a queue scan.
pub const RECORD_QUEUE: TableDefinition<(&str, &str, u64), ()> =
    TableDefinition::new("record_queue");
/// op_id -> dead-letter sequence: `retry`, `discard` and `wait_synced` find
/// a dead letter without scanning them all.
pub const DEAD_BY_OP: TableDefinition<&str, u64> = TableDefinition::new("dead_by_op");
/// op_id -> bincode [`super::settled::Settled`]: how a conflict
/// resolution settled an op, for `wait_synced` (bounded, see
/// [`super::settled`]).
pub const SETTLED: TableDefinition<&str, &[u8]> = TableDefinition::new("settled");
/// insertion sequence -> op_id of [`SETTLED`], oldest first.
pub const SETTLED_ORDER: TableDefinition<u64, &str> = TableDefinition::new("settled_order");
/// (collection, local id) -> bincode [`super::ServerRecordStored`]: the
/// newest server record pulled while the record had pending ops (so not
/// applied); taken once its last pending op is confirmed at an older
/// version.
pub const DEFERRED: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("deferred");
/// scope name -> bincode [`crate::domain::scope_state::ScopeState`]: each
/// subscribed scope's pull cursor, first-sync mark and progress
/// (protocol revision 3). A row exists once the scope was pulled.
pub const SCOPE_STATE: TableDefinition<&str, &[u8]> = TableDefinition::new("scope_state");
/// scope name -> 1 (`subscribe`) or 0 (`unsubscribe`): the app's explicit
/// choices, which override `[sync] scopes`.
pub const SCOPE_CHOICES: TableDefinition<&str, u8> = TableDefinition::new("scope_choices");
/// op_id -> the user (session `sub`) whose queued op became this dead
/// letter, written for the dead letters of a user when the token changes
/// to another one: `retry` refuses them under another user's session.
pub const DEAD_SUB: TableDefinition<&str, &str> = TableDefinition::new("dead_letter_sub");
/// (collection, index name) -> bincode [`super::index::IndexMeta`]: each
/// secondary index's fields and state (building, ready, dropping).
pub const INDEXES: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("indexes");
/// (collection, index name, key, local id) -> (): one entry per live record
/// of an index that is building or ready; the key is the record's indexed
/// field values, each encoded by `domain::query::collate::encode`.
pub const INDEX_ENTRIES: TableDefinition<(&str, &str, &[u8], &str), ()> =
    TableDefinition::new("index_entries");
/// Small named values.
pub const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");

pub const META_CLIENT_ID: &str = "client_id";
pub const META_SCHEMA: &str = "schema_version";
/// Next queue sequence to append (u64 BE).
pub const META_QUEUE_TAIL: &str = "queue_tail";
/// Next dead-letter sequence (u64 BE).
pub const META_DEAD_TAIL: &str = "dead_tail";
/// The pull cursor (opaque server string).
pub const META_CURSOR: &str = "pull_cursor";
/// The last `GET v1/session` the daemon acted on (JSON
/// [`crate::domain::scope_state::Grants`]); absent: never fetched, or the
/// backend has no scopes.
pub const META_SESSION: &str = "session";
/// The scopes the last session apply said are pulled (JSON list).
pub const META_PULLED: &str = "pulled_scopes";
/// Present while records of scopes not pulled stay on this device because
/// they had pending ops (or were just written there): the next session
/// apply purges those that have settled.
pub const META_LEFTOVER: &str = "unpulled_leftovers";
/// "1" while sync is paused by the user.
pub const META_PAUSED: &str = "paused";
/// Count of conflicts resolved, for status (u64 BE).
pub const META_RESOLVED: &str = "conflicts_resolved";
/// Last successful sync, ms (i64 BE).
pub const META_LAST_SYNC: &str = "last_sync_at";

/// Where the queue numbering starts: far from zero so the head can move
/// down for re-sends, and below 2^53 so sequence numbers stay exact in
/// JSON readers that use doubles (JavaScript).
pub const QUEUE_ORIGIN: u64 = 1 << 52;
/// Marker in [`OP_INDEX`] for an op parked in a manual conflict.
pub const PARKED_SEQ: u64 = u64::MAX;

/// Creates every table so that read transactions can always open them.
pub fn for_each_table(txn: &WriteTransaction) -> Result<(), redb::TableError> {
    txn.open_table(RECORDS)?;
    txn.open_table(QUEUE)?;
    txn.open_table(OP_INDEX)?;
    txn.open_table(SERVER_IDS)?;
    txn.open_table(DEAD)?;
    txn.open_table(CONFLICTS)?;
    txn.open_table(META)?;
    txn.open_table(RECORD_QUEUE)?;
    txn.open_table(DEAD_BY_OP)?;
    txn.open_table(SETTLED)?;
    txn.open_table(SETTLED_ORDER)?;
    txn.open_table(DEFERRED)?;
    txn.open_table(SCOPE_STATE)?;
    txn.open_table(SCOPE_CHOICES)?;
    txn.open_table(DEAD_SUB)?;
    txn.open_table(INDEXES)?;
    txn.open_table(INDEX_ENTRIES)?;
    Ok(())
}

pub fn u64_be(v: Option<&[u8]>) -> Option<u64> {
    v.and_then(|b| b.try_into().ok()).map(u64::from_be_bytes)
}

pub fn i64_be(v: Option<&[u8]>) -> Option<i64> {
    v.and_then(|b| b.try_into().ok()).map(i64::from_be_bytes)
}
