//! The store's cross-table invariants, written down once and checked by one
//! function, [`invariants`].
//!
//! Exists because the tables must move together and a drift between them
//! is otherwise found only when it hurts (an op that is never sent, a
//! record that shows `pending` for ever). The writer runs the check after
//! every job in test builds, the worker simulation at the end of every
//! seed, and `syncd check` on a user's store, after redb's page checksums
//! ([`full`]).
//!
//! The invariants, for a committed state:
//!
//! 1. Every value of every table decodes (records, queued ops, dead
//!    letters, parked conflicts, deferred records, settled ops).
//! 2. `meta` holds the client id, and the schema version this syncd writes.
//! 3. Queue sequences are below `queue_tail`, dead-letter sequences below
//!    `dead_tail`.
//! 4. `op_index`: each queued op's `op_id` maps to its sequence, each
//!    parked op's to [`PARKED_SEQ`], and there is no other entry (so an
//!    op_id is in the queue or parked at most once).
//! 5. `record_queue`: each queued op has its `(collection, local id, seq)`
//!    entry, and there is no other entry.
//! 6. Each parked conflict's ops belong to its record.
//! 7. Every queued or parked op's record exists in `records`, and each
//!    record's `pending` equals its queued ops plus its parked ops.
//! 8. `server_ids`: a record with a server id is mapped from it, and each
//!    mapping points at a record that has that server id.
//! 9. `dead_by_op`: each dead letter's `op_id` maps to its sequence, and
//!    there is no other entry.
//! 10. `settled` and `settled_order` hold the same op_ids, at most
//!     [`MAX_SETTLED`] of them.
//! 11. Scopes (revision 3): every `scope_state` and `scope_choices` key,
//!     and every record's, queued op's and dead letter's scope, is a valid
//!     scope name; a scope whose first sync is done has a cursor; a choice
//!     is 0 or 1.
//! 12. `dead_letter_sub`: each entry's op_id is a dead letter's (in
//!     `dead_by_op`), and its user is not empty.
//! 13. A record's `gone_from` mark is a valid scope name, and the record
//!     has pending ops (the mark only keeps a record whose ops are not
//!     settled; the users simulation found a path that left one behind).
//! 14. Secondary indexes ([`super::index`]): every entry of an index that
//!     is building or ready is the key of a live record's current document
//!     (one entry per record at most); a ready index has an entry for every
//!     live record of its collection, a building one for every live record
//!     whose id is below its `next`.
//! 15. Attachments ([`crate::domain::attachment`]): the content every
//!     queued op references is in the data dir's `blobs/`, complete (its
//!     length as referenced), unless the backend is known to hold it: it
//!     is what the op uploads. Checked by [`full`], which knows the data
//!     dir.

use std::fmt;

use redb::{
    Database, ReadOnlyTable, ReadTransaction, ReadableDatabase, ReadableTable,
    ReadableTableMetadata, TableDefinition, TableError,
};

use super::crypt::Vault;
use super::settled::MAX_SETTLED;
use super::tables::*;
use super::SCHEMA_VERSION;
use crate::domain::StoredRecord;
use crate::domain::{DeadLetter, ParkedConflict, QueuedOp, ServerRecordStored, StoreError};

/// Most problems one check lists (the count is still exact).
const MAX_LISTED: usize = 100;

/// One thing wrong with the store.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Problem {
    /// redb found pages that fail their checksum, or failed reading them.
    Damaged { detail: String },
    /// A stored value does not decode.
    Undecodable {
        table: &'static str,
        key: String,
        detail: String,
    },
    /// A metadata value is missing or wrong.
    Meta { key: &'static str, detail: String },
    /// A sequence at or past its table's tail counter.
    PastTail {
        table: &'static str,
        seq: u64,
        tail: u64,
    },
    /// An index entry that should exist does not, or says something else.
    IndexMissing {
        index: &'static str,
        key: String,
        expected: String,
    },
    /// An index holds more entries than the table it indexes.
    IndexExtra {
        index: &'static str,
        entries: u64,
        expected: u64,
    },
    /// A parked op that belongs to another record.
    ParkedForeign {
        record: String,
        op_id: String,
        belongs_to: String,
    },
    /// An op (queued or parked) whose record does not exist.
    OpWithoutRecord { record: String, ops: u64 },
    /// A record's `pending` is not its count of queued and parked ops.
    Pending {
        record: String,
        pending: u32,
        ops: u64,
    },
    /// `settled` and `settled_order` disagree, or hold too many.
    Settled { detail: String },
    /// A scope name or per-scope row that breaks invariant 11.
    Scope { table: &'static str, detail: String },
    /// A secondary index that disagrees with the records (invariant 14).
    SecondaryIndex {
        collection: String,
        index: String,
        detail: String,
    },
    /// Content a queued or parked op references is not in `blobs/`
    /// (invariant 15).
    Content {
        record: String,
        op_id: String,
        sha256: String,
        detail: String,
    },
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Problem::Damaged { detail } => write!(f, "damaged pages: {detail}"),
            Problem::Undecodable { table, key, detail } => {
                write!(f, "{table} {key}: value does not decode ({detail})")
            }
            Problem::Meta { key, detail } => write!(f, "meta {key}: {detail}"),
            Problem::PastTail { table, seq, tail } => {
                write!(f, "{table} {seq}: at or past its tail counter {tail}")
            }
            Problem::IndexMissing {
                index,
                key,
                expected,
            } => write!(f, "{index} {key}: expected {expected}"),
            Problem::IndexExtra {
                index,
                entries,
                expected,
            } => write!(f, "{index}: {entries} entries, expected {expected}"),
            Problem::ParkedForeign {
                record,
                op_id,
                belongs_to,
            } => write!(
                f,
                "conflict {record}: parked op {op_id} belongs to {belongs_to}"
            ),
            Problem::OpWithoutRecord { record, ops } => {
                write!(f, "{ops} op(s) of {record}, which has no record")
            }
            Problem::Pending {
                record,
                pending,
                ops,
            } => write!(
                f,
                "record {record}: pending = {pending}, but {ops} op(s) queued or parked"
            ),
            Problem::Settled { detail } => write!(f, "settled ops: {detail}"),
            Problem::Scope { table, detail } => write!(f, "{table}: {detail}"),
            Problem::SecondaryIndex {
                collection,
                index,
                detail,
            } => write!(f, "index {index} of {collection}: {detail}"),
            Problem::Content {
                record,
                op_id,
                sha256,
                detail,
            } => write!(
                f,
                "op {op_id} of {record}: attachment content {sha256} {detail}"
            ),
        }
    }
}

impl Problem {
    /// The pages themselves are bad (as opposed to tables that disagree).
    pub fn is_damage(&self) -> bool {
        matches!(self, Problem::Damaged { .. } | Problem::Undecodable { .. })
    }
}

/// What a check found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    /// The first [`MAX_LISTED`] problems.
    pub problems: Vec<Problem>,
    /// How many there are in all.
    pub count: u64,
    /// Records, queued ops, parked conflicts and dead letters looked at.
    pub records: u64,
    pub queued: u64,
    pub conflicts: u64,
    pub dead: u64,
}

impl Report {
    pub fn is_clean(&self) -> bool {
        self.count == 0
    }

    pub(super) fn push(&mut self, p: Problem) {
        self.count += 1;
        if self.problems.len() < MAX_LISTED {
            self.problems.push(p);
        }
    }

    /// What to do about it, for a person.
    pub fn advice(&self) -> &'static str {
        if self.is_clean() {
            "no problem found"
        } else if self
            .problems
            .iter()
            .all(|p| matches!(p, Problem::Content { .. }))
        {
            "attachment content a queued write must upload is missing from the data dir's blobs/ (deleted, or lost with a disk) and the backend is not known to hold it: restore the file into blobs/ from a backup (it is named by its SHA-256); until then that write cannot be sent"
        } else if self.problems.iter().any(Problem::is_damage) {
            "the store file is damaged: stop syncd, keep a copy of the file, and restore it from a backup (or move it aside to start with an empty store; its queued writes are then lost)"
        } else {
            "the store's tables disagree (a syncd bug, not a disk fault): keep a copy of the store file and report it; the daemon keeps running on it"
        }
    }
}

/// `(collection, id)` as people read it.
pub(super) fn rec_name(c: &str, id: &str) -> String {
    format!("{c}/{id}")
}

pub(super) type Ro<K, V> = ReadOnlyTable<K, V>;

/// Opens `def`; a table never created reads as empty (`None`).
pub(super) fn open<K: redb::Key + 'static, V: redb::Value + 'static>(
    txn: &ReadTransaction,
    def: TableDefinition<K, V>,
) -> Result<Option<Ro<K, V>>, StoreError> {
    match txn.open_table(def) {
        Ok(t) => Ok(Some(t)),
        Err(TableError::TableDoesNotExist(_)) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Checks every invariant of the module doc on the committed state of
/// `db`. `Err` only when the store cannot be read at all.
pub fn invariants(db: &Database, vault: &Vault) -> Result<Report, StoreError> {
    invariants_of(&db.begin_read()?, vault)
}

/// [`invariants`] over one read transaction.
pub fn invariants_of(txn: &ReadTransaction, vault: &Vault) -> Result<Report, StoreError> {
    let mut r = Report::default();
    let tails = meta(txn, &mut r)?;
    let parked = conflicts(txn, vault, &mut r)?;
    queue(txn, vault, tails.0, &mut r)?;
    op_index_size(txn, parked, &mut r)?;
    pending(txn, vault, &mut r)?;
    server_ids(txn, vault, &mut r)?;
    dead(txn, vault, tails.1, &mut r)?;
    settled(txn, &mut r)?;
    deferred(txn, vault, &mut r)?;
    super::scope_check::scopes(txn, vault, &mut r)?;
    super::index_check::indexes(txn, vault, &mut r)?;
    Ok(r)
}

/// Invariants 2 and the tails (for 3).
fn meta(txn: &ReadTransaction, r: &mut Report) -> Result<(u64, u64), StoreError> {
    let Some(t) = open(txn, META)? else {
        r.push(Problem::Meta {
            key: "meta",
            detail: "the table is missing".into(),
        });
        return Ok((u64::MAX, u64::MAX));
    };
    let get = |k: &str| -> Result<Option<Vec<u8>>, StoreError> {
        Ok(t.get(k)?.map(|v| v.value().to_vec()))
    };
    if get(META_CLIENT_ID)?.is_none_or(|v| String::from_utf8(v).is_err()) {
        r.push(Problem::Meta {
            key: META_CLIENT_ID,
            detail: "missing or not text".into(),
        });
    }
    let schema = u64_be(get(META_SCHEMA)?.as_deref());
    if schema != Some(SCHEMA_VERSION) {
        r.push(Problem::Meta {
            key: META_SCHEMA,
            detail: format!("{schema:?}, expected {SCHEMA_VERSION}"),
        });
    }
    let queue_tail = u64_be(get(META_QUEUE_TAIL)?.as_deref()).unwrap_or(QUEUE_ORIGIN);
    let dead_tail = u64_be(get(META_DEAD_TAIL)?.as_deref()).unwrap_or(1);
    Ok((queue_tail, dead_tail))
}

/// Invariants 1 (queue), 3, 4 and 5 for queued ops.
fn queue(
    txn: &ReadTransaction,
    vault: &Vault,
    tail: u64,
    r: &mut Report,
) -> Result<(), StoreError> {
    let (Some(q), ops, rq) = (
        open(txn, QUEUE)?,
        open(txn, OP_INDEX)?,
        open(txn, RECORD_QUEUE)?,
    ) else {
        return Ok(());
    };
    for item in q.iter()? {
        let (k, v) = item?;
        let seq = k.value();
        r.queued += 1;
        let op: QueuedOp = match vault.decode(QUEUE, &seq, v.value()) {
            Ok(op) => op,
            Err(e) => {
                r.push(undecodable("queue", seq, e));
                continue;
            }
        };
        if seq >= tail {
            r.push(Problem::PastTail {
                table: "queue",
                seq,
                tail,
            });
        }
        let indexed = match &ops {
            Some(t) => t.get(op.op_id.as_str())?.map(|v| v.value()),
            None => None,
        };
        if indexed != Some(seq) {
            r.push(Problem::IndexMissing {
                index: "op_index",
                key: op.op_id.clone(),
                expected: format!("queue sequence {seq}, found {indexed:?}"),
            });
        }
        let key = (op.collection.as_str(), op.local_id.as_str(), seq);
        let in_rq = match &rq {
            Some(t) => t.get(key)?.is_some(),
            None => false,
        };
        if !in_rq {
            r.push(Problem::IndexMissing {
                index: "record_queue",
                key: format!("{}/{} {seq}", op.collection, op.local_id),
                expected: "an entry for the queued op".into(),
            });
        }
    }
    let rq_len = match &rq {
        Some(t) => t.len()?,
        None => 0,
    };
    if rq_len > r.queued {
        r.push(Problem::IndexExtra {
            index: "record_queue",
            entries: rq_len,
            expected: r.queued,
        });
    }
    Ok(())
}

pub(super) fn undecodable(table: &'static str, key: impl fmt::Display, e: StoreError) -> Problem {
    Problem::Undecodable {
        table,
        key: key.to_string(),
        detail: e.to_string(),
    }
}

/// Invariants 1 (conflicts), 4 and 6 for parked ops; returns how many
/// ops are parked.
fn conflicts(txn: &ReadTransaction, vault: &Vault, r: &mut Report) -> Result<u64, StoreError> {
    let Some(t) = open(txn, CONFLICTS)? else {
        return Ok(0);
    };
    let ops = open(txn, OP_INDEX)?;
    let mut parked = 0;
    for item in t.iter()? {
        let (k, v) = item?;
        let (c, id) = k.value();
        r.conflicts += 1;
        let p: ParkedConflict = match vault.decode(CONFLICTS, &(c, id), v.value()) {
            Ok(p) => p,
            Err(e) => {
                r.push(undecodable("conflicts", rec_name(c, id), e));
                continue;
            }
        };
        for op in &p.ops {
            parked += 1;
            if op.collection != c || op.local_id != id {
                r.push(Problem::ParkedForeign {
                    record: rec_name(c, id),
                    op_id: op.op_id.clone(),
                    belongs_to: rec_name(&op.collection, &op.local_id),
                });
            }
            let indexed = match &ops {
                Some(t) => t.get(op.op_id.as_str())?.map(|v| v.value()),
                None => None,
            };
            if indexed != Some(PARKED_SEQ) {
                r.push(Problem::IndexMissing {
                    index: "op_index",
                    key: op.op_id.clone(),
                    expected: format!("the parked marker, found {indexed:?}"),
                });
            }
        }
    }
    Ok(parked)
}

/// Invariant 4: no entries beyond the queued and parked ops.
fn op_index_size(txn: &ReadTransaction, parked: u64, r: &mut Report) -> Result<(), StoreError> {
    let len = match open(txn, OP_INDEX)? {
        Some(t) => t.len()?,
        None => 0,
    };
    if len > r.queued + parked {
        r.push(Problem::IndexExtra {
            index: "op_index",
            entries: len,
            expected: r.queued + parked,
        });
    }
    Ok(())
}

/// (collection, local id).
type RecordKey = (String, String);

/// Ops per record, from `record_queue` (queued) and `conflicts` (parked),
/// in key order.
fn ops_per_record(
    txn: &ReadTransaction,
    vault: &Vault,
) -> Result<Vec<(RecordKey, u64)>, StoreError> {
    let mut counts: std::collections::BTreeMap<RecordKey, u64> = Default::default();
    if let Some(t) = open(txn, CONFLICTS)? {
        for item in t.iter()? {
            let (k, v) = item?;
            let (c, id) = k.value();
            // Undecodable values are reported by `conflicts`.
            if let Ok(p) = vault.decode::<_, ParkedConflict>(CONFLICTS, &(c, id), v.value()) {
                *counts.entry((c.to_owned(), id.to_owned())).or_default() += p.ops.len() as u64;
            }
        }
    }
    let mut queued: Vec<(RecordKey, u64)> = Vec::new();
    if let Some(t) = open(txn, RECORD_QUEUE)? {
        for item in t.iter()? {
            let (k, _) = item?;
            let (c, id, _) = k.value();
            match queued.last_mut() {
                Some((key, n)) if key.0 == c && key.1 == id => *n += 1,
                _ => queued.push(((c.to_owned(), id.to_owned()), 1)),
            }
        }
    }
    for (key, n) in queued {
        *counts.entry(key).or_default() += n;
    }
    Ok(counts.into_iter().collect())
}

/// Invariants 1 (records) and 7: a merge of the records with their op
/// counts, both in key order.
fn pending(txn: &ReadTransaction, vault: &Vault, r: &mut Report) -> Result<(), StoreError> {
    let counts = ops_per_record(txn, vault)?;
    let mut counts = counts.into_iter().peekable();
    if let Some(t) = open(txn, RECORDS)? {
        for item in t.iter()? {
            let (k, v) = item?;
            let (c, id) = k.value();
            r.records += 1;
            while let Some(((oc, oid), n)) =
                counts.next_if(|((oc, oid), _)| (oc.as_str(), oid.as_str()) < (c, id))
            {
                r.push(Problem::OpWithoutRecord {
                    record: rec_name(&oc, &oid),
                    ops: n,
                });
            }
            let ops = match counts.next_if(|((oc, oid), _)| oc == c && oid == id) {
                Some((_, n)) => n,
                None => 0,
            };
            match vault.decode::<_, StoredRecord>(RECORDS, &(c, id), v.value()) {
                Ok(rec) if u64::from(rec.pending) != ops => r.push(Problem::Pending {
                    record: rec_name(c, id),
                    pending: rec.pending,
                    ops,
                }),
                Ok(_) => {}
                Err(e) => r.push(undecodable("records", rec_name(c, id), e)),
            }
        }
    }
    for ((oc, oid), n) in counts {
        r.push(Problem::OpWithoutRecord {
            record: rec_name(&oc, &oid),
            ops: n,
        });
    }
    Ok(())
}

/// Invariant 8.
fn server_ids(txn: &ReadTransaction, vault: &Vault, r: &mut Report) -> Result<(), StoreError> {
    let (Some(records), map) = (open(txn, RECORDS)?, open(txn, SERVER_IDS)?) else {
        return Ok(());
    };
    for item in records.iter()? {
        let (k, v) = item?;
        let (c, id) = k.value();
        let Ok(rec) = vault.decode::<_, StoredRecord>(RECORDS, &(c, id), v.value()) else {
            continue; // reported by `pending`
        };
        let Some(sid) = rec.server_id.as_deref() else {
            continue;
        };
        let mapped = match &map {
            Some(t) => t.get((c, sid))?.map(|v| v.value().to_owned()),
            None => None,
        };
        if mapped.as_deref() != Some(id) {
            r.push(Problem::IndexMissing {
                index: "server_ids",
                key: rec_name(c, sid),
                expected: format!("local id {id}, found {mapped:?}"),
            });
        }
    }
    let Some(map) = map else { return Ok(()) };
    for item in map.iter()? {
        let (k, v) = item?;
        let (c, sid) = k.value();
        let lid = v.value();
        let rec = records
            .get((c, lid))?
            .map(|v| vault.decode::<_, StoredRecord>(RECORDS, &(c, lid), v.value()));
        let has = matches!(&rec, Some(Ok(rec)) if rec.server_id.as_deref() == Some(sid));
        if !has {
            r.push(Problem::IndexMissing {
                index: "server_ids",
                key: rec_name(c, sid),
                expected: format!("record {} with that server id", rec_name(c, lid)),
            });
        }
    }
    Ok(())
}

/// Invariants 1 (dead letters), 3 and 9.
fn dead(txn: &ReadTransaction, vault: &Vault, tail: u64, r: &mut Report) -> Result<(), StoreError> {
    let (Some(t), by_op) = (open(txn, DEAD)?, open(txn, DEAD_BY_OP)?) else {
        return Ok(());
    };
    for item in t.iter()? {
        let (k, v) = item?;
        let seq = k.value();
        r.dead += 1;
        let d: DeadLetter = match vault.decode(DEAD, &seq, v.value()) {
            Ok(d) => d,
            Err(e) => {
                r.push(undecodable("dead_letters", seq, e));
                continue;
            }
        };
        if seq >= tail {
            r.push(Problem::PastTail {
                table: "dead_letters",
                seq,
                tail,
            });
        }
        let indexed = match &by_op {
            Some(t) => t.get(d.op.op_id.as_str())?.map(|v| v.value()),
            None => None,
        };
        if indexed != Some(seq) {
            r.push(Problem::IndexMissing {
                index: "dead_by_op",
                key: d.op.op_id.clone(),
                expected: format!("dead-letter sequence {seq}, found {indexed:?}"),
            });
        }
    }
    let len = match &by_op {
        Some(t) => t.len()?,
        None => 0,
    };
    if len > r.dead {
        r.push(Problem::IndexExtra {
            index: "dead_by_op",
            entries: len,
            expected: r.dead,
        });
    }
    Ok(())
}

/// Invariants 1 (settled) and 10.
fn settled(txn: &ReadTransaction, r: &mut Report) -> Result<(), StoreError> {
    let (Some(by_op), Some(order)) = (open(txn, SETTLED)?, open(txn, SETTLED_ORDER)?) else {
        return Ok(());
    };
    let (n, m) = (by_op.len()?, order.len()?);
    if n != m || n > MAX_SETTLED {
        r.push(Problem::Settled {
            detail: format!("{n} settled, {m} in order, at most {MAX_SETTLED}"),
        });
    }
    for item in order.iter()? {
        let (k, v) = item?;
        match by_op.get(v.value())? {
            None => r.push(Problem::Settled {
                detail: format!(
                    "order {} names {}, which is not settled",
                    k.value(),
                    v.value()
                ),
            }),
            Some(s) => {
                if let Err(e) = super::settled::decode(s.value()) {
                    r.push(undecodable("settled", v.value(), e));
                }
            }
        }
    }
    Ok(())
}

/// Invariant 1 (deferred records).
fn deferred(txn: &ReadTransaction, vault: &Vault, r: &mut Report) -> Result<(), StoreError> {
    let Some(t) = open(txn, DEFERRED)? else {
        return Ok(());
    };
    for item in t.iter()? {
        let (k, v) = item?;
        let (c, id) = k.value();
        if let Err(e) = vault.decode::<_, ServerRecordStored>(DEFERRED, &(c, id), v.value()) {
            r.push(undecodable("deferred", rec_name(c, id), e));
        }
    }
    Ok(())
}

/// The full check of the store file at `path`, as `syncd check` runs it:
/// every page's checksum (redb's integrity check, never the clean-shutdown
/// mark), then [`invariants`]. The file is opened read-only and never
/// changed (see [`super::overlay`]). `Err`: the file cannot be read.
pub fn full(
    path: &std::path::Path,
    cache_bytes: usize,
    vault: &Vault,
) -> Result<Report, StoreError> {
    let file = std::fs::File::open(path)?;
    let backend = super::overlay::Overlay::new(file)?;
    let opened = std::panic::catch_unwind(move || {
        Database::builder()
            .set_cache_size(cache_bytes)
            .set_check_integrity_on_open(true)
            .set_repair_callback(|_| {})
            .create_with_backend(backend)
    });
    let db = match opened {
        Ok(Ok(db)) => db,
        Ok(Err(e)) => return Ok(damaged(super::describe_open_error(e)?)),
        Err(_) => return Ok(damaged("the storage engine failed reading it".into())),
    };
    // The wrong key is not damage: said as itself, before any value is read.
    super::crypt::state::verify(&db, vault, path)?;
    let transition = super::crypt::state::transition(&db, vault)?;
    let dir = path.parent().unwrap_or(std::path::Path::new("."));
    let blobs = super::crypt::seal_blobs(super::blobs::BlobDir::at(dir), vault, &transition);
    let checked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let mut r = invariants(&db, vault)?;
        content(&db.begin_read()?, vault, &blobs, &mut r)?;
        Ok::<_, StoreError>(r)
    }));
    match checked {
        Ok(Ok(r)) => Ok(r),
        Ok(Err(e)) => Ok(damaged(e.to_string())),
        Err(_) => Ok(damaged("the storage engine failed reading a table".into())),
    }
}

/// Invariant 15: the content every queued op references is here, or
/// the backend is known to hold it (downloaded from it or confirmed by
/// it: the `.remote` mark; or referenced by the record's server version).
/// Parked ops keep no document (the record's holds the local version).
fn content(
    txn: &ReadTransaction,
    vault: &Vault,
    blobs: &super::blobs::BlobDir,
    r: &mut Report,
) -> Result<(), StoreError> {
    let (Some(queue), Some(records)) = (open(txn, QUEUE)?, open(txn, RECORDS)?) else {
        return Ok(());
    };
    for item in queue.iter()? {
        let (k, v) = item?;
        let Ok(op) = vault.decode::<_, QueuedOp>(QUEUE, &k.value(), v.value()) else {
            continue;
        };
        let Some(data) = op
            .data
            .as_deref()
            .filter(|d| d.contains(crate::domain::attachment::KEY))
        else {
            continue;
        };
        let base = records
            .get((op.collection.as_str(), op.local_id.as_str()))?
            .and_then(|v| {
                let key = (op.collection.as_str(), op.local_id.as_str());
                vault
                    .decode::<_, StoredRecord>(RECORDS, &key, v.value())
                    .ok()
            })
            .and_then(|rec| rec.base)
            .map(|b| crate::domain::attachment::refs_of_text(&b))
            .unwrap_or_default();
        for a in crate::domain::attachment::refs_of_text(data).into_values() {
            let on_server =
                blobs.is_remote(&a.sha256) || base.values().any(|b| b.sha256 == a.sha256);
            let detail = match blobs.len(&a.sha256) {
                Some(n) if n == a.length => continue,
                None if on_server => continue,
                Some(n) => format!("is {n} bytes in blobs/, the op references {}", a.length),
                None => "is not in blobs/, and the backend is not known to hold it".to_owned(),
            };
            r.push(Problem::Content {
                record: rec_name(&op.collection, &op.local_id),
                op_id: op.op_id.clone(),
                sha256: a.sha256,
                detail,
            });
        }
    }
    Ok(())
}

fn damaged(detail: String) -> Report {
    let mut r = Report::default();
    r.push(Problem::Damaged { detail });
    r
}
