//! [`BackendStore`] on a redb database file (`<data_dir>/backend.redb`).
//!
//! Tables (values are JSON):
//! - `records`: server id -> [`StoredRecord`] (collection + current record);
//! - `applied_ops`: op_id -> `AppliedOp` (the reply record, kept forever);
//! - `changes`: sequence (u64, from 1, gap-free) -> [`Change`].
//!
//! `apply` runs one write transaction per call (one per request or batch) and
//! commits with redb's default, durable, commit.

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{de::DeserializeOwned, Deserialize, Serialize};

use crate::backend::protocol::{Change, ServerRecord};

use super::ops::{plan, Plan, StoredRecord, ValidOp};
use super::store::{BackendStore, ChangeSlice, Outcome, StoreError};

const RECORDS: TableDefinition<&str, &[u8]> = TableDefinition::new("records");
const APPLIED_OPS: TableDefinition<&str, &[u8]> = TableDefinition::new("applied_ops");
const CHANGES: TableDefinition<u64, &[u8]> = TableDefinition::new("changes");

/// File name of the database inside the data directory.
pub const DB_FILE: &str = "backend.redb";
/// redb page cache size.
pub const CACHE_BYTES: usize = 32 * 1024 * 1024;

/// What `applied_ops` remembers about an applied op.
#[derive(Debug, Serialize, Deserialize)]
struct AppliedOp {
    record: ServerRecord,
    /// Server clock (ms since epoch) at application; kept so a retention
    /// policy can prune later.
    applied_at: i64,
}

/// The redb-backed store.
pub struct RedbStore {
    db: Database,
    path: PathBuf,
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
        self.map_err(|e| StoreError(format!("{what}: {}", e.into())))
    }
}

fn encode<T: Serialize>(v: &T) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(v).map_err(|e| StoreError(format!("encode: {e}")))
}

fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, StoreError> {
    serde_json::from_slice(bytes).map_err(|e| StoreError(format!("corrupt stored value: {e}")))
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

impl RedbStore {
    /// Opens (creating if missing) the database in `data_dir`, creating the
    /// directory too. Blocking.
    pub fn open(data_dir: &Path) -> Result<RedbStore, StoreError> {
        std::fs::create_dir_all(data_dir)
            .map_err(|e| StoreError(format!("create {}: {e}", data_dir.display())))?;
        let path = data_dir.join(DB_FILE);
        let db = Database::builder()
            .set_cache_size(CACHE_BYTES)
            .create(&path)
            .map_err(|e| StoreError(format!("open {}: {e}", path.display())))?;
        let txn = db.begin_write().ctx("begin write")?;
        {
            txn.open_table(RECORDS).ctx("open records")?;
            txn.open_table(APPLIED_OPS).ctx("open applied_ops")?;
            txn.open_table(CHANGES).ctx("open changes")?;
        }
        txn.commit().ctx("commit")?;
        Ok(RedbStore { db, path })
    }

    /// Path of the database file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl BackendStore for RedbStore {
    fn apply(&self, ops: &[ValidOp]) -> Result<Vec<Outcome>, StoreError> {
        let mut outcomes = Vec::with_capacity(ops.len());
        if ops.is_empty() {
            return Ok(outcomes);
        }
        let txn = self.db.begin_write().ctx("begin write")?;
        let mut wrote = false;
        {
            let mut records = txn.open_table(RECORDS).ctx("open records")?;
            let mut applied = txn.open_table(APPLIED_OPS).ctx("open applied_ops")?;
            let mut changes = txn.open_table(CHANGES).ctx("open changes")?;
            let mut next_seq = match changes.last().ctx("read changes")? {
                Some((k, _)) => k.value().saturating_add(1),
                None => 1,
            };
            let applied_at = now_ms();
            for op in ops {
                let remembered = applied
                    .get(op.op_id.as_str())
                    .ctx("read applied_ops")?
                    .map(|g| decode::<AppliedOp>(g.value()))
                    .transpose()?;
                if let Some(prev) = remembered {
                    outcomes.push(Outcome::Applied {
                        record: prev.record,
                        replayed: true,
                    });
                    continue;
                }
                let current = match op.action.target_id() {
                    Some(id) => records
                        .get(id)
                        .ctx("read records")?
                        .map(|g| decode::<StoredRecord>(g.value()))
                        .transpose()?,
                    None => None,
                };
                let record = match plan(op, current.as_ref(), || ulid::Ulid::generate().to_string())
                {
                    Plan::Write(record) => {
                        let stored = StoredRecord {
                            collection: op.collection.clone(),
                            record,
                        };
                        records
                            .insert(stored.record.id.as_str(), encode(&stored)?.as_slice())
                            .ctx("write records")?;
                        let change = Change {
                            collection: stored.collection,
                            record: stored.record,
                        };
                        changes
                            .insert(next_seq, encode(&change)?.as_slice())
                            .ctx("write changes")?;
                        next_seq = next_seq.saturating_add(1);
                        change.record
                    }
                    Plan::Unchanged(record) => record,
                    Plan::Conflict(record) => {
                        outcomes.push(Outcome::Conflict(record));
                        break;
                    }
                    Plan::NotFound(reason) => {
                        outcomes.push(Outcome::NotFound(reason));
                        break;
                    }
                };
                let memo = AppliedOp { record, applied_at };
                applied
                    .insert(op.op_id.as_str(), encode(&memo)?.as_slice())
                    .ctx("write applied_ops")?;
                wrote = true;
                outcomes.push(Outcome::Applied {
                    record: memo.record,
                    replayed: false,
                });
            }
        }
        if wrote {
            txn.commit().ctx("commit")?;
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
            entries,
            more,
            head,
        })
    }

    fn check(&self) -> Result<(), StoreError> {
        let txn = self.db.begin_read().ctx("begin read")?;
        txn.open_table(CHANGES).ctx("open changes")?;
        Ok(())
    }
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
        }
    }

    fn create(op_id: &str, title: &str) -> ValidOp {
        op(
            op_id,
            "todos",
            Action::Create {
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

        // Update of a tombstone at its version: conflict carrying the tombstone.
        match one(&s, update("o5", &r.id, 3, "d")) {
            Outcome::Conflict(cur) => assert_eq!(cur, t),
            other => panic!("{other:?}"),
        }
        // Delete of a tombstone at its version: 200, unchanged, no new change.
        let again = applied(one(&s, delete("o6", &r.id, 3)));
        assert_eq!(again, t);
        assert_eq!(s.changes(0, 100).expect("changes").head, 3);

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
}
