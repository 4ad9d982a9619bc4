//! [`BackendStore`] on a redb database file (`<data_dir>/backend.redb`).
//!
//! Why: the reference backend needs a durable, dependency-free store for
//! demos and tests; redb is already the daemon's database.
//!
//! Tables (values are JSON):
//! - `meta`: `"schema"` -> [`SCHEMA_VERSION`]; `"users"` -> 1 once a
//!   users-mode server has written (see [`BackendStore::held_users`]);
//! - `records`: `(collection, id)` -> [`StoredRecord`] (the current record
//!   and its scope);
//! - `applied_ops`: op_id -> `AppliedOp` (the reply record and its scope,
//!   kept forever);
//! - `changes`: sequence (u64, from 1, gap-free) -> [`Change`] (the global
//!   log of `v1/changes`; users-mode servers append to it too, unserved);
//! - `scope_feeds`: `(scope, sequence)` -> [`ScopedChange`] (each scope's
//!   feed, gap-free per scope; records without their scope, which the
//!   reader adds);
//! - `scope_heads`: scope -> its newest sequence.
//!
//! `apply` runs one write transaction per call (one per request or batch),
//! commits with redb's default, durable, commit, and then publishes the new
//! log head to the store's [`Feed`] (waiting pulls of either kind).
//!
//! # Schema
//!
//! Schema 3 adds scopes. A schema 2 file is upgraded in place when opened:
//! its records and applied ops are in [`SINGLE_SCOPE`] (their stored JSON
//! has no scope, which reads as that), and the `"default"` feed is built as
//! a copy of the global log (same sequences). Schema 1 files (records keyed
//! by id alone, no `meta` table) are refused with a message rather than
//! migrated: start on a fresh data directory.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use redb::{
    Database, ReadableDatabase, ReadableTable, Table, TableDefinition, TableHandle,
    WriteTransaction,
};
use serde::{de::DeserializeOwned, Deserialize, Serialize};
use tokio::sync::watch;

use crate::backend::protocol::{Change, Gone, ScopedChange, ServerRecord};
use crate::domain::scope::SINGLE_SCOPE;

use super::access::{self, present, Caller};
use super::feed::Feed;
use super::ops::{plan, single_scope, Action, Plan, StoredRecord, ValidOp};
use super::store::{with_scope, BackendStore, ChangeSlice, Outcome, ScopeSlice, StoreError};

const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const RECORDS: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("records");
const APPLIED_OPS: TableDefinition<&str, &[u8]> = TableDefinition::new("applied_ops");
const CHANGES: TableDefinition<u64, &[u8]> = TableDefinition::new("changes");
const SCOPE_FEEDS: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("scope_feeds");
const SCOPE_HEADS: TableDefinition<&str, u64> = TableDefinition::new("scope_heads");

type RecordsTable<'t> = Table<'t, (&'static str, &'static str), &'static [u8]>;

/// Key of the schema version in `meta`.
const SCHEMA_KEY: &str = "schema";
/// Key in `meta` present once a users-mode server has written.
const USERS_KEY: &str = "users";
/// The on-disk format this code reads and writes.
pub const SCHEMA_VERSION: u64 = 3;
/// The schema before scopes, upgraded when opened.
const SCHEMA_BEFORE_SCOPES: u64 = 2;

/// File name of the database inside the data directory.
pub const DB_FILE: &str = "backend.redb";
/// redb page cache size.
pub const CACHE_BYTES: usize = 32 * 1024 * 1024;

/// What `applied_ops` remembers about an applied op.
#[derive(Debug, Serialize, Deserialize)]
struct AppliedOp {
    record: ServerRecord,
    /// The scope of `record` (ops applied before scopes: [`SINGLE_SCOPE`]).
    #[serde(default = "single_scope")]
    scope: String,
    /// Server clock (ms since epoch) at application; kept so a retention
    /// policy can prune later.
    applied_at: i64,
}

/// A database file this code must not read.
#[derive(Debug, Clone, PartialEq, Eq)]
enum FormatError {
    /// Tables but no `meta`: written before schema versions (schema 1).
    Unversioned,
    /// A schema version this code does not know.
    Unknown(u64),
}

impl FormatError {
    fn into_store_error(self, path: &Path) -> StoreError {
        let what = match self {
            FormatError::Unversioned => "was written by an older syncd backend (schema 1, \
                 record ids global)"
                .to_owned(),
            FormatError::Unknown(v) => format!("has unknown schema version {v}"),
        };
        StoreError::Failed(format!(
            "{} {what}; this syncd backend uses schema {SCHEMA_VERSION} (ids per \
             collection, scopes) and converts only schema {SCHEMA_BEFORE_SCOPES}: start \
             it with an empty --data directory, or move the file away",
            path.display()
        ))
    }
}

/// The redb-backed store.
pub struct RedbStore {
    db: Database,
    path: PathBuf,
    feed: Feed,
    /// Whether `meta` is known to say `"users"` (saves a write per commit).
    users_recorded: AtomicBool,
}

impl std::fmt::Debug for RedbStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedbStore")
            .field("path", &self.path)
            .finish()
    }
}

trait Ctx<T> {
    fn ctx(self, what: &str) -> Result<T, StoreError>;
}

impl<T, E: Into<redb::Error>> Ctx<T> for Result<T, E> {
    fn ctx(self, what: &str) -> Result<T, StoreError> {
        self.map_err(|e| StoreError::Failed(format!("{what}: {}", e.into())))
    }
}

fn encode<T: Serialize>(v: &T) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(v).map_err(|e| StoreError::Failed(format!("encode: {e}")))
}

fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, StoreError> {
    serde_json::from_slice(bytes)
        .map_err(|e| StoreError::Failed(format!("corrupt stored value: {e}")))
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// Checks the file's schema (writing it into a new file) and creates the
/// tables. `Ok(Err(_))`: a file of another format.
fn prepare(txn: &WriteTransaction) -> Result<Result<(), FormatError>, StoreError> {
    let names: Vec<String> = txn
        .list_tables()
        .ctx("list tables")?
        .map(|h| h.name().to_owned())
        .collect();
    if !names.is_empty() && !names.iter().any(|n| n == META.name()) {
        return Ok(Err(FormatError::Unversioned));
    }
    {
        let mut meta = txn.open_table(META).ctx("open meta")?;
        let found = meta.get(SCHEMA_KEY).ctx("read meta")?.map(|g| g.value());
        match found {
            Some(SCHEMA_VERSION) => {}
            Some(SCHEMA_BEFORE_SCOPES) => {
                upgrade_to_scopes(txn)?;
                meta.insert(SCHEMA_KEY, SCHEMA_VERSION).ctx("write meta")?;
            }
            Some(v) => return Ok(Err(FormatError::Unknown(v))),
            None => {
                meta.insert(SCHEMA_KEY, SCHEMA_VERSION).ctx("write meta")?;
            }
        }
    }
    txn.open_table(RECORDS).ctx("open records")?;
    txn.open_table(APPLIED_OPS).ctx("open applied_ops")?;
    txn.open_table(CHANGES).ctx("open changes")?;
    txn.open_table(SCOPE_FEEDS).ctx("open scope_feeds")?;
    txn.open_table(SCOPE_HEADS).ctx("open scope_heads")?;
    Ok(Ok(()))
}

/// Schema 2 → 3: every record is in [`SINGLE_SCOPE`], whose feed is the
/// global log as it stands (a `Change` is a [`ScopedChange`] record entry
/// byte for byte).
fn upgrade_to_scopes(txn: &WriteTransaction) -> Result<(), StoreError> {
    let changes = txn.open_table(CHANGES).ctx("open changes")?;
    let mut feeds = txn.open_table(SCOPE_FEEDS).ctx("open scope_feeds")?;
    let mut head = 0;
    for item in changes.iter().ctx("read changes")? {
        let (k, v) = item.ctx("read changes")?;
        head = k.value();
        feeds
            .insert((SINGLE_SCOPE, head), v.value())
            .ctx("write scope_feeds")?;
    }
    if head > 0 {
        txn.open_table(SCOPE_HEADS)
            .ctx("open scope_heads")?
            .insert(SINGLE_SCOPE, head)
            .ctx("write scope_heads")?;
    }
    tracing::info!(
        entries = head,
        "backend store upgraded to schema {SCHEMA_VERSION}: every record is in scope '{SINGLE_SCOPE}'"
    );
    Ok(())
}

/// A fresh server id (a ULID) not in use in `collection`. A clash needs a
/// client to have chosen that ULID; a few draws settle it.
fn fresh_id(records: &RecordsTable<'_>, collection: &str) -> Result<String, StoreError> {
    for _ in 0..8 {
        let id = ulid::Ulid::generate().to_string();
        if records
            .get((collection, id.as_str()))
            .ctx("read records")?
            .is_none()
        {
            return Ok(id);
        }
    }
    Err(StoreError::Failed("no free record id after 8 draws".into()))
}

/// The tables and counters of one `apply` transaction.
struct Batch<'t> {
    records: RecordsTable<'t>,
    applied: Table<'t, &'static str, &'static [u8]>,
    changes: Table<'t, u64, &'static [u8]>,
    scope_feeds: Table<'t, (&'static str, u64), &'static [u8]>,
    scope_heads: Table<'t, &'static str, u64>,
    /// Sequence of the next change-log entry.
    next_seq: u64,
    applied_at: i64,
    /// Whether anything was written (commit rather than abort).
    wrote: bool,
    /// Whether the change log grew (publish the new head).
    appended: bool,
}

impl<'t> Batch<'t> {
    fn open(txn: &'t WriteTransaction) -> Result<Batch<'t>, StoreError> {
        let changes = txn.open_table(CHANGES).ctx("open changes")?;
        let next_seq = match changes.last().ctx("read changes")? {
            Some((k, _)) => k.value().saturating_add(1),
            None => 1,
        };
        Ok(Batch {
            records: txn.open_table(RECORDS).ctx("open records")?,
            applied: txn.open_table(APPLIED_OPS).ctx("open applied_ops")?,
            changes,
            scope_feeds: txn.open_table(SCOPE_FEEDS).ctx("open scope_feeds")?,
            scope_heads: txn.open_table(SCOPE_HEADS).ctx("open scope_heads")?,
            next_seq,
            applied_at: now_ms(),
            wrote: false,
            appended: false,
        })
    }

    /// Applies one op: a replay, or the access rules and [`plan`] over the
    /// current record.
    fn apply_one(&mut self, op: &ValidOp, caller: &Caller) -> Result<Outcome, StoreError> {
        let remembered = self
            .applied
            .get(op.op_id.as_str())
            .ctx("read applied_ops")?
            .map(|g| decode::<AppliedOp>(g.value()))
            .transpose()?;
        if let Some(prev) = remembered {
            if let Err(r) = access::replay(caller, &op.op_id, &prev.scope) {
                return Ok(Outcome::refused(r));
            }
            return Ok(Outcome::Applied {
                record: present(caller, &prev.scope, prev.record),
                replayed: true,
            });
        }
        let current = match op.action.target_id() {
            Some(id) => self
                .records
                .get((op.collection.as_str(), id))
                .ctx("read records")?
                .map(|g| decode::<StoredRecord>(g.value()))
                .transpose()?,
            None => None,
        };
        let scope = match access::target_scope(caller, op, current.as_ref()) {
            Ok(scope) => scope,
            Err(r) => return Ok(Outcome::refused(r)),
        };
        let fresh = match op.action {
            Action::Create { id: None, .. } => Some(fresh_id(&self.records, &op.collection)?),
            _ => None,
        };
        let new_id = || fresh.unwrap_or_else(|| ulid::Ulid::generate().to_string());
        let record = match plan(op, current.as_ref(), new_id) {
            Plan::Write(record) => {
                let from = current.as_ref().map(|c| c.scope.as_str());
                self.write(&op.collection, record, from, &scope)?
            }
            Plan::Unchanged(record) => record,
            Plan::Conflict(record) => {
                return Ok(Outcome::Conflict(access::conflict(
                    caller,
                    current.as_ref(),
                    record,
                )))
            }
            Plan::NotFound(reason) => return Ok(Outcome::NotFound(reason)),
        };
        let memo = AppliedOp {
            record,
            scope,
            applied_at: self.applied_at,
        };
        self.applied
            .insert(op.op_id.as_str(), encode(&memo)?.as_slice())
            .ctx("write applied_ops")?;
        self.wrote = true;
        Ok(Outcome::Applied {
            record: present(caller, &memo.scope, memo.record),
            replayed: false,
        })
    }

    /// Stores `record` as the current one in scope `to`, and appends it to
    /// the global log and to `to`'s feed; a move from scope `from` also
    /// appends a gone entry to `from`'s feed.
    fn write(
        &mut self,
        collection: &str,
        record: ServerRecord,
        from: Option<&str>,
        to: &str,
    ) -> Result<ServerRecord, StoreError> {
        let stored = StoredRecord {
            collection: collection.to_owned(),
            record,
            scope: to.to_owned(),
        };
        self.records
            .insert(
                (collection, stored.record.id.as_str()),
                encode(&stored)?.as_slice(),
            )
            .ctx("write records")?;
        let change = Change {
            collection: stored.collection,
            record: stored.record,
        };
        let bytes = encode(&change)?;
        self.changes
            .insert(self.next_seq, bytes.as_slice())
            .ctx("write changes")?;
        self.next_seq = self.next_seq.saturating_add(1);
        if let Some(from) = from.filter(|f| *f != to) {
            let gone = ScopedChange::Gone {
                collection: collection.to_owned(),
                gone: Gone {
                    id: change.record.id.clone(),
                    version: change.record.version,
                },
            };
            self.append_to_scope(from, &encode(&gone)?)?;
        }
        self.append_to_scope(to, &bytes)?;
        self.wrote = true;
        self.appended = true;
        Ok(change.record)
    }

    /// Appends an entry to `scope`'s feed at its next sequence.
    fn append_to_scope(&mut self, scope: &str, entry: &[u8]) -> Result<(), StoreError> {
        let head = self
            .scope_heads
            .get(scope)
            .ctx("read scope_heads")?
            .map(|g| g.value())
            .unwrap_or(0);
        let seq = head.saturating_add(1);
        self.scope_feeds
            .insert((scope, seq), entry)
            .ctx("write scope_feeds")?;
        self.scope_heads
            .insert(scope, seq)
            .ctx("write scope_heads")?;
        Ok(())
    }
}

impl RedbStore {
    /// Opens (creating if missing) the database in `data_dir`, creating the
    /// directory too. Refuses a file of another schema. Blocking.
    pub fn open(data_dir: &Path) -> Result<RedbStore, StoreError> {
        std::fs::create_dir_all(data_dir)
            .map_err(|e| StoreError::Failed(format!("create {}: {e}", data_dir.display())))?;
        let path = data_dir.join(DB_FILE);
        let db = Database::builder()
            .set_cache_size(CACHE_BYTES)
            .create(&path)
            .map_err(|e| StoreError::Failed(format!("open {}: {e}", path.display())))?;
        let txn = db.begin_write().ctx("begin write")?;
        if let Err(e) = prepare(&txn)? {
            txn.abort().ctx("abort")?;
            return Err(e.into_store_error(&path));
        }
        txn.commit().ctx("commit")?;
        let store = RedbStore {
            db,
            path,
            feed: Feed::new(0),
            users_recorded: AtomicBool::new(false),
        };
        // `limit` 0: only the head is wanted.
        store.feed.publish(store.changes(0, 0)?.head);
        Ok(store)
    }

    /// Path of the database file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl BackendStore for RedbStore {
    fn apply(&self, ops: &[ValidOp]) -> Result<Vec<Outcome>, StoreError> {
        self.apply_as(ops, &Caller::Single)
    }

    fn content_refs(&self) -> Result<std::collections::HashSet<String>, StoreError> {
        let txn = self.db.begin_read().ctx("begin read")?;
        let t = txn.open_table(RECORDS).ctx("open records")?;
        let mut out = std::collections::HashSet::new();
        for item in t.iter().ctx("read records")? {
            let (_, v) = item.ctx("read records")?;
            let r: StoredRecord = decode(v.value())?;
            if !r.record.deleted && r.record.data.contains_key(crate::domain::attachment::KEY) {
                let refs = crate::domain::attachment::refs(&r.record.data).unwrap_or_default();
                out.extend(refs.into_values().map(|a| a.sha256));
            }
        }
        Ok(out)
    }

    fn scope_of(&self, collection: &str, id: &str) -> Result<Option<String>, StoreError> {
        let txn = self.db.begin_read().ctx("begin read")?;
        let t = txn.open_table(RECORDS).ctx("open records")?;
        let got = t.get((collection, id)).ctx("read records")?;
        got.map(|g| decode::<StoredRecord>(g.value()).map(|r| r.scope))
            .transpose()
    }

    fn apply_as(&self, ops: &[ValidOp], caller: &Caller) -> Result<Vec<Outcome>, StoreError> {
        let mut outcomes = Vec::with_capacity(ops.len());
        if ops.is_empty() {
            return Ok(outcomes);
        }
        let txn = self.db.begin_write().ctx("begin write")?;
        let mut batch = Batch::open(&txn)?;
        for op in ops {
            let outcome = batch.apply_one(op, caller)?;
            let stop = !outcome.is_applied();
            outcomes.push(outcome);
            if stop {
                break;
            }
        }
        let (wrote, appended, head) = (
            batch.wrote,
            batch.appended,
            batch.next_seq.saturating_sub(1),
        );
        drop(batch);
        let record_users =
            wrote && caller.is_user() && !self.users_recorded.load(Ordering::Relaxed);
        if record_users {
            txn.open_table(META)
                .ctx("open meta")?
                .insert(USERS_KEY, 1)
                .ctx("write meta")?;
        }
        if wrote {
            txn.commit().ctx("commit")?;
            if record_users {
                self.users_recorded.store(true, Ordering::Relaxed);
            }
            if appended {
                self.feed.publish(head);
            }
        } else {
            txn.abort().ctx("abort")?;
        }
        Ok(outcomes)
    }

    fn changes(&self, since: u64, limit: usize) -> Result<ChangeSlice, StoreError> {
        let txn = self.db.begin_read().ctx("begin read")?;
        let table = txn.open_table(CHANGES).ctx("open changes")?;
        let head = table
            .last()
            .ctx("read changes")?
            .map(|(k, _)| k.value())
            .unwrap_or(0);
        let mut entries = Vec::new();
        let mut more = false;
        if since < head {
            for item in table.range(since + 1..).ctx("read changes")? {
                let (k, v) = item.ctx("read changes")?;
                if entries.len() >= limit {
                    more = true;
                    break;
                }
                entries.push((k.value(), decode::<Change>(v.value())?));
            }
        }
        Ok(ChangeSlice {
            read_to: entries.last().map(|(seq, _)| *seq),
            entries,
            more,
            head,
        })
    }

    fn pull(&self, scopes: &[(String, u64)], limit: usize) -> Result<Vec<ScopeSlice>, StoreError> {
        let txn = self.db.begin_read().ctx("begin read")?;
        let feeds = txn.open_table(SCOPE_FEEDS).ctx("open scope_feeds")?;
        let heads = txn.open_table(SCOPE_HEADS).ctx("open scope_heads")?;
        scopes
            .iter()
            .map(|(scope, since)| scope_slice(&feeds, &heads, scope, *since, limit))
            .collect()
    }

    fn check(&self) -> Result<(), StoreError> {
        let txn = self.db.begin_read().ctx("begin read")?;
        txn.open_table(CHANGES).ctx("open changes")?;
        Ok(())
    }

    fn held_users(&self) -> Result<bool, StoreError> {
        let txn = self.db.begin_read().ctx("begin read")?;
        let meta = txn.open_table(META).ctx("open meta")?;
        if meta.get(USERS_KEY).ctx("read meta")?.is_some() {
            return Ok(true);
        }
        let heads = txn.open_table(SCOPE_HEADS).ctx("open scope_heads")?;
        for item in heads.iter().ctx("read scope_heads")? {
            let (scope, _) = item.ctx("read scope_heads")?;
            if scope.value() != SINGLE_SCOPE {
                return Ok(true);
            }
        }
        Ok(false)
    }

    fn location(&self) -> String {
        format!(
            "data directory {}",
            self.path.parent().unwrap_or(&self.path).display()
        )
    }

    fn subscribe(&self) -> watch::Receiver<u64> {
        self.feed.subscribe()
    }
}

/// At most `limit` entries of `scope`'s feed after `since`.
fn scope_slice(
    feeds: &redb::ReadOnlyTable<(&'static str, u64), &'static [u8]>,
    heads: &redb::ReadOnlyTable<&'static str, u64>,
    scope: &str,
    since: u64,
    limit: usize,
) -> Result<ScopeSlice, StoreError> {
    let head = heads
        .get(scope)
        .ctx("read scope_heads")?
        .map(|g| g.value())
        .unwrap_or(0);
    let mut entries = Vec::new();
    let mut more = false;
    if since < head {
        let range = (scope, since.saturating_add(1))..=(scope, head);
        for item in feeds.range(range).ctx("read scope_feeds")? {
            let (k, v) = item.ctx("read scope_feeds")?;
            if entries.len() >= limit {
                more = true;
                break;
            }
            let entry = with_scope(decode::<ScopedChange>(v.value())?, scope);
            entries.push((k.value().1, entry));
        }
    }
    Ok(ScopeSlice {
        entries,
        more,
        head,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::protocol::Document;
    use crate::backend::server::ops::Action;
    use serde_json::json;

    fn doc(v: serde_json::Value) -> Document {
        match v {
            serde_json::Value::Object(m) => m,
            _ => Document::new(),
        }
    }

    fn op(op_id: &str, collection: &str, action: Action) -> ValidOp {
        ValidOp {
            op_id: op_id.into(),
            client_id: "c1".into(),
            collection: collection.into(),
            local_id: "l".into(),
            client_ts: 1000,
            action,
            scope: None,
        }
    }

    fn create(op_id: &str, title: &str) -> ValidOp {
        op(
            op_id,
            "todos",
            Action::Create {
                id: None,
                data: doc(json!({ "title": title })),
            },
        )
    }

    fn update(op_id: &str, id: &str, base: u64, title: &str) -> ValidOp {
        op(
            op_id,
            "todos",
            Action::Update {
                id: id.into(),
                base_version: base,
                data: doc(json!({ "title": title })),
            },
        )
    }

    fn delete(op_id: &str, id: &str, base: u64) -> ValidOp {
        op(
            op_id,
            "todos",
            Action::Delete {
                id: id.into(),
                base_version: base,
            },
        )
    }

    fn one(store: &RedbStore, o: ValidOp) -> Outcome {
        let mut out = store.apply(&[o]).expect("apply");
        assert_eq!(out.len(), 1);
        out.remove(0)
    }

    fn applied(o: Outcome) -> ServerRecord {
        match o {
            Outcome::Applied { record, .. } => record,
            other => panic!("expected applied, got {other:?}"),
        }
    }

    fn open() -> (tempfile::TempDir, RedbStore) {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = RedbStore::open(&dir.path().join("nested")).expect("open");
        (dir, store)
    }

    #[test]
    fn create_update_conflict_delete() {
        let (_d, s) = open();
        let r = applied(one(&s, create("o1", "a")));
        assert_eq!(r.version, 1);
        assert_eq!(r.updated_at, 1000);
        assert!(!r.deleted);
        assert_eq!(r.data["title"], "a");

        let r2 = applied(one(&s, update("o2", &r.id, 1, "b")));
        assert_eq!((r2.version, r2.data["title"].as_str()), (2, Some("b")));

        match one(&s, update("o3", &r.id, 1, "c")) {
            Outcome::Conflict(cur) => assert_eq!(cur, r2),
            other => panic!("{other:?}"),
        }

        let t = applied(one(&s, delete("o4", &r.id, 2)));
        assert!(t.deleted);
        assert_eq!(t.version, 3);
        assert!(t.data.is_empty());

        // Update of a tombstone at a stale version: conflict carrying it.
        match one(&s, update("o5", &r.id, 2, "d")) {
            Outcome::Conflict(cur) => assert_eq!(cur, t),
            other => panic!("{other:?}"),
        }
        // Delete of a tombstone at its version: 200, unchanged, no new change.
        let again = applied(one(&s, delete("o6", &r.id, 3)));
        assert_eq!(again, t);
        assert_eq!(s.changes(0, 100).expect("changes").head, 3);
        // Update of a tombstone at its version re-creates the record.
        let back = applied(one(&s, update("o7b", &r.id, 3, "d")));
        assert_eq!((back.version, back.deleted), (4, false));
        assert_eq!(s.changes(0, 100).expect("changes").head, 4);

        assert!(matches!(
            one(&s, update("o7", "nope", 1, "x")),
            Outcome::NotFound(_)
        ));
        // Same id, other collection: unknown there.
        let mut wrong = update("o8", &r.id, 3, "x");
        wrong.collection = "notes".into();
        assert!(matches!(one(&s, wrong), Outcome::NotFound(_)));
    }

    #[test]
    fn idempotent_replay() {
        let (_d, s) = open();
        let r = applied(one(&s, create("o1", "a")));
        match one(&s, create("o1", "a")) {
            Outcome::Applied { record, replayed } => {
                assert!(replayed);
                assert_eq!(record, r);
            }
            other => panic!("{other:?}"),
        }
        let u = applied(one(&s, update("o2", &r.id, 1, "b")));
        applied(one(&s, update("o3", &u.id, 2, "c")));
        // Replaying o2 returns what o2 produced, not the current record.
        assert_eq!(applied(one(&s, update("o2", &r.id, 1, "b"))), u);
        let page = s.changes(0, 100).expect("changes");
        assert_eq!(page.entries.len(), 3);
        // Rejected ops are not remembered: after fixing the state, the same op_id applies.
        assert!(matches!(
            one(&s, update("o9", &r.id, 9, "z")),
            Outcome::Conflict(_)
        ));
        assert_eq!(applied(one(&s, update("o9", &r.id, 3, "z"))).version, 4);
    }

    #[test]
    fn batch_stops_at_first_failure_and_commits_prefix() {
        let (_d, s) = open();
        let out = s
            .apply(&[
                create("b1", "a"),
                create("b2", "b"),
                update("b3", "missing", 1, "x"),
                create("b4", "never"),
            ])
            .expect("apply");
        assert_eq!(out.len(), 3);
        assert!(out[0].is_applied() && out[1].is_applied());
        assert!(matches!(out[2], Outcome::NotFound(_)));
        let page = s.changes(0, 100).expect("changes");
        assert_eq!(page.entries.len(), 2);
        // Ops inside one batch see each other's writes.
        let r = applied(one(&s, create("c1", "x")));
        let out = s
            .apply(&[
                update("c2", &r.id, 1, "y"),
                update("c3", &r.id, 2, "z"),
                update("c4", &r.id, 2, "stale"),
            ])
            .expect("apply");
        assert_eq!(out.len(), 3);
        assert!(matches!(&out[2], Outcome::Conflict(cur) if cur.version == 3));
        // A duplicate op_id inside one batch is a replay.
        let out = s
            .apply(&[create("d1", "x"), create("d1", "x")])
            .expect("apply");
        assert!(matches!(&out[1], Outcome::Applied { replayed: true, .. }));
    }

    #[test]
    fn changes_paging_and_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let s = RedbStore::open(dir.path()).expect("open");
            for i in 0..5 {
                applied(one(&s, create(&format!("o{i}"), &format!("t{i}"))));
            }
        }
        let s = RedbStore::open(dir.path()).expect("reopen");
        let p1 = s.changes(0, 2).expect("p1");
        assert_eq!(p1.entries.iter().map(|e| e.0).collect::<Vec<_>>(), [1, 2]);
        assert!(p1.more);
        let p2 = s.changes(2, 2).expect("p2");
        assert_eq!(p2.entries.iter().map(|e| e.0).collect::<Vec<_>>(), [3, 4]);
        assert!(p2.more);
        let p3 = s.changes(4, 2).expect("p3");
        assert_eq!(p3.entries.len(), 1);
        assert!(!p3.more);
        assert_eq!(p3.entries[0].1.record.data["title"], "t4");
        assert_eq!(p3.entries[0].1.collection, "todos");
        let p4 = s.changes(5, 2).expect("p4");
        assert!(p4.entries.is_empty() && !p4.more);
        assert_eq!(p4.head, 5);
        // Replays survive a restart.
        assert!(matches!(
            one(&s, create("o0", "t0")),
            Outcome::Applied { replayed: true, .. }
        ));
    }

    fn create_as(op_id: &str, collection: &str, id: &str, title: &str) -> ValidOp {
        op(
            op_id,
            collection,
            Action::Create {
                id: Some(id.into()),
                data: doc(json!({ "title": title })),
            },
        )
    }

    #[test]
    fn client_chosen_ids_are_per_collection() {
        let (_d, s) = open();
        let r = applied(one(&s, create_as("o1", "todos", "theme", "a")));
        assert_eq!((r.id.as_str(), r.version), ("theme", 1));
        // Same (collection, id): 409 with the record, nothing applied.
        match one(&s, create_as("o2", "todos", "theme", "b")) {
            Outcome::Conflict(cur) => assert_eq!(cur, r),
            other => panic!("{other:?}"),
        }
        // Same id, other collection: another record.
        let n = applied(one(&s, create_as("o3", "notes", "theme", "n")));
        assert_eq!(
            (n.id.as_str(), n.data["title"].as_str()),
            ("theme", Some("n"))
        );
        // Updating one leaves the other alone.
        applied(one(&s, update("o4", "theme", 1, "a2")));
        let t = applied(one(&s, delete("o5", "theme", 2)));
        // A create over the tombstone: 409 with the tombstone.
        match one(&s, create_as("o6", "todos", "theme", "c")) {
            Outcome::Conflict(cur) => assert_eq!(cur, t),
            other => panic!("{other:?}"),
        }
        let page = s.changes(0, 100).expect("changes");
        let ids: Vec<_> = page
            .entries
            .iter()
            .map(|(_, c)| (c.collection.as_str(), c.record.version))
            .collect();
        assert_eq!(
            ids,
            [("todos", 1), ("notes", 1), ("todos", 2), ("todos", 3)]
        );
        // Replay of the first create: its original record.
        assert_eq!(applied(one(&s, create_as("o1", "todos", "theme", "a"))), r);
    }

    #[test]
    fn commits_publish_the_head() {
        let (_d, s) = open();
        let rx = s.subscribe();
        assert_eq!(*rx.borrow(), 0);
        applied(one(&s, create("o1", "a")));
        assert!(rx.has_changed().unwrap_or(false));
        assert_eq!(*rx.borrow(), 1);
        // A replay or a conflict appends nothing: no wake-up.
        let mut rx = s.subscribe();
        rx.borrow_and_update();
        applied(one(&s, create("o1", "a")));
        assert!(matches!(
            one(&s, update("o2", "nope", 1, "x")),
            Outcome::NotFound(_)
        ));
        assert!(!rx.has_changed().unwrap_or(true));
    }

    #[test]
    fn reopen_starts_the_feed_at_the_head() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let s = RedbStore::open(dir.path()).expect("open");
            applied(one(&s, create("o1", "a")));
            applied(one(&s, create("o2", "b")));
        }
        let s = RedbStore::open(dir.path()).expect("reopen");
        assert_eq!(*s.subscribe().borrow(), 2);
    }

    #[test]
    fn refuses_a_schema_1_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            // The schema 1 layout: records keyed by id alone, no meta table.
            const OLD: TableDefinition<&str, &[u8]> = TableDefinition::new("records");
            let db = Database::create(dir.path().join(DB_FILE)).expect("create");
            let txn = db.begin_write().expect("write");
            txn.open_table(OLD).expect("records");
            txn.open_table(CHANGES).expect("changes");
            txn.commit().expect("commit");
        }
        let err = RedbStore::open(dir.path()).expect_err("refused");
        assert!(err.message().contains("schema 1"), "{err}");
        assert!(err.message().contains("--data"), "{err}");
    }

    #[test]
    fn refuses_an_unknown_schema() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let db = Database::create(dir.path().join(DB_FILE)).expect("create");
            let txn = db.begin_write().expect("write");
            txn.open_table(META)
                .expect("meta")
                .insert(SCHEMA_KEY, 9)
                .expect("insert");
            txn.commit().expect("commit");
        }
        let err = RedbStore::open(dir.path()).expect_err("refused");
        assert!(err.message().contains("unknown schema version 9"), "{err}");
    }

    fn user(scopes: &[&str]) -> Caller {
        let claims = crate::backend::server::auth::Claims {
            sub: "alice".into(),
            exp: 1,
            scopes: scopes.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        };
        Caller::User(crate::backend::server::auth::Principal::from_claims(claims).expect("claims"))
    }

    fn pull(s: &RedbStore, scope: &str, since: u64) -> ScopeSlice {
        s.pull(&[(scope.to_owned(), since)], 100)
            .expect("pull")
            .remove(0)
    }

    #[test]
    fn moves_leave_a_gone_entry_and_feeds_are_per_scope() {
        let (_d, s) = open();
        let alice = user(&["team-1"]);
        let mut o = create("o1", "a");
        let r = applied(s.apply_as(&[o.clone()], &alice).expect("apply").remove(0));
        assert_eq!(r.scope.as_deref(), Some("user:alice"));
        o = update("o2", &r.id, 1, "b");
        o.scope = Some("team-1".into());
        let moved = applied(s.apply_as(&[o], &alice).expect("apply").remove(0));
        assert_eq!((moved.version, moved.scope.as_deref()), (2, Some("team-1")));
        let mine = pull(&s, "user:alice", 0);
        assert_eq!(mine.head, 2);
        assert!(matches!(&mine.entries[1].1,
            ScopedChange::Gone { gone, .. } if gone.id == r.id && gone.version == 2));
        let team = pull(&s, "team-1", 0);
        assert_eq!(team.entries.len(), 1);
        assert!(matches!(&team.entries[0],
            (1, ScopedChange::Record { record, .. }) if record.scope.as_deref() == Some("team-1")));
        assert_eq!(pull(&s, "nobody", 0).head, 0);
        // A single-tenant caller writes to the default scope, unseen.
        let t = applied(one(&s, create("o3", "c")));
        assert_eq!(t.scope, None);
        assert_eq!(pull(&s, SINGLE_SCOPE, 0).head, 1);
    }

    /// A move on a stale base is a 409 whose record is where it stands
    /// (the move did not happen), not in the scope the move asked for: a
    /// device that takes the server's side stores that scope, and a wrong
    /// one would keep the record out of the scope's revocation.
    #[test]
    fn a_refused_move_conflicts_with_the_record_in_its_own_scope() {
        let (_d, s) = open();
        let alice = user(&["team-1"]);
        let mut o = create("o1", "a");
        o.scope = Some("team-1".into());
        let r = applied(s.apply_as(&[o], &alice).expect("apply").remove(0));
        applied(
            s.apply_as(&[update("o2", &r.id, 1, "b")], &alice)
                .expect("apply")
                .remove(0),
        );
        let mut stale = update("o3", &r.id, 1, "c");
        stale.scope = Some("user:alice".into());
        let out = s.apply_as(&[stale], &alice).expect("apply").remove(0);
        let Outcome::Conflict(current) = out else {
            panic!("not a conflict: {out:?}");
        };
        assert_eq!(
            (current.version, current.scope.as_deref()),
            (2, Some("team-1"))
        );
        assert_eq!(pull(&s, "user:alice", 0).head, 0, "nothing moved");
    }

    #[test]
    fn a_users_mode_write_marks_the_store_as_having_held_users() {
        let (_d, s) = open();
        applied(one(&s, create("o1", "a")));
        assert!(!s.held_users().expect("held_users"), "single-tenant writes");
        // Even into `default`: the meta says a users-mode server wrote.
        let mut o = create("o2", "b");
        o.scope = Some(SINGLE_SCOPE.into());
        let alice = user(&[SINGLE_SCOPE]);
        applied(s.apply_as(&[o], &alice).expect("apply").remove(0));
        assert_eq!(pull(&s, SINGLE_SCOPE, 0).head, 2);
        assert!(s.held_users().expect("held_users"));
    }

    #[test]
    fn a_record_outside_default_counts_as_having_held_users() {
        // A store written before the meta key existed.
        let (_d, s) = open();
        applied(
            s.apply_as(&[create("o1", "a")], &user(&[]))
                .expect("apply")
                .remove(0),
        );
        {
            let txn = s.db.begin_write().expect("write");
            txn.open_table(META)
                .expect("meta")
                .remove(USERS_KEY)
                .expect("remove");
            txn.commit().expect("commit");
        }
        assert!(s.held_users().expect("held_users"));
    }

    #[test]
    fn a_single_tenant_update_keeps_the_records_scope() {
        let (_d, s) = open();
        let r = applied(
            s.apply_as(&[create("o1", "a")], &user(&["team-1"]))
                .expect("apply")
                .remove(0),
        );
        let mut mv = update("o2", &r.id, 1, "b");
        mv.scope = Some("team-1".into());
        applied(
            s.apply_as(&[mv], &user(&["team-1"]))
                .expect("apply")
                .remove(0),
        );
        let t = applied(one(&s, update("o3", &r.id, 2, "c")));
        assert_eq!((t.version, t.scope), (3, None));
        let team = pull(&s, "team-1", 0);
        assert_eq!(team.head, 2, "the single-tenant update stays in team-1");
        assert_eq!(pull(&s, SINGLE_SCOPE, 0).head, 0);
    }

    #[test]
    fn a_conflicting_move_shows_the_stored_scope() {
        let (_d, s) = open();
        let alice = user(&["team-1"]);
        let r = applied(
            s.apply_as(&[create("o1", "a")], &alice)
                .expect("apply")
                .remove(0),
        );
        let mut mv = update("o2", &r.id, 5, "b");
        mv.scope = Some("team-1".into());
        match s.apply_as(&[mv], &alice).expect("apply").remove(0) {
            Outcome::Conflict(cur) => assert_eq!(cur.scope.as_deref(), Some("user:alice")),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_schema_2_file_is_upgraded_into_the_default_scope() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            // A schema 2 file as schema 2 wrote it: values without scopes,
            // no scope tables.
            let rec = |v: u64, t: &str| {
                json!({"id": "r1", "version": v, "updated_at": 1,
                "deleted": false, "data": {"title": t}})
            };
            let db = Database::create(dir.path().join(DB_FILE)).expect("db");
            let txn = db.begin_write().expect("write");
            txn.open_table(META)
                .expect("meta")
                .insert(SCHEMA_KEY, SCHEMA_BEFORE_SCOPES)
                .expect("insert");
            let current = json!({"collection": "todos", "record": rec(2, "b")});
            txn.open_table(RECORDS)
                .expect("records")
                .insert(("todos", "r1"), current.to_string().as_bytes())
                .expect("insert");
            let mut ops = txn.open_table(APPLIED_OPS).expect("applied_ops");
            let mut log = txn.open_table(CHANGES).expect("changes");
            for (seq, op_id, t) in [(1, "o1", "a"), (2, "o2", "b")] {
                let memo = json!({"record": rec(seq, t), "applied_at": 1});
                ops.insert(op_id, memo.to_string().as_bytes())
                    .expect("insert");
                let change = json!({"collection": "todos", "record": rec(seq, t)});
                log.insert(seq, change.to_string().as_bytes())
                    .expect("insert");
            }
            drop((ops, log));
            txn.commit().expect("commit");
        }
        let s = RedbStore::open(dir.path()).expect("upgraded");
        let feed = pull(&s, SINGLE_SCOPE, 0);
        let log = s.changes(0, 100).expect("changes");
        assert_eq!(feed.head, 2);
        assert_eq!(feed.entries.len(), log.entries.len());
        for ((seq, entry), (log_seq, change)) in feed.entries.iter().zip(&log.entries) {
            assert_eq!(seq, log_seq);
            assert!(matches!(entry, ScopedChange::Record { record, .. }
                if record.version == change.record.version
                    && record.scope.as_deref() == Some(SINGLE_SCOPE)));
        }
        // New writes continue the default feed without a gap.
        let r = &log.entries[0].1.record;
        applied(one(&s, update("o3", &r.id, 2, "c")));
        assert_eq!(pull(&s, SINGLE_SCOPE, 2).entries[0].0, 3);
        // The records and the remembered ops read as being in `default`.
        let reader = user(&[SINGLE_SCOPE]);
        let replay = applied(
            s.apply_as(&[update("o2", "r1", 1, "b")], &reader)
                .expect("apply")
                .remove(0),
        );
        assert_eq!(
            (replay.version, replay.scope.as_deref()),
            (2, Some(SINGLE_SCOPE))
        );
        assert!(matches!(
            s.apply_as(&[update("o1", "r1", 0, "a")], &user(&[]))
                .expect("apply")
                .remove(0),
            Outcome::Refused(_)
        ));
        let next = applied(
            s.apply_as(&[update("o4", "r1", 3, "d")], &reader)
                .expect("apply")
                .remove(0),
        );
        assert_eq!(
            (next.version, next.scope.as_deref()),
            (4, Some(SINGLE_SCOPE))
        );
    }
}
