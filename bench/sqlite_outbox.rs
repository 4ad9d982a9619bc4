//! Baseline for `writes`: the outbox an app would build itself with SQLite
//! instead of using syncd. WAL, `synchronous = FULL`, and per write one
//! transaction holding the record row and the outbox row. One connection
//! per client thread, as many threads as syncd has clients: SQLite lets one
//! writer in at a time (the others wait in its busy handler), which is the
//! point of the comparison.

use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{params, Connection, TransactionBehavior};

use crate::loops::{doc, run_threads};
use crate::stats::Run;
use crate::COLLECTION;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS records (
    collection TEXT NOT NULL, id TEXT NOT NULL, data TEXT NOT NULL,
    updated_at INTEGER NOT NULL, PRIMARY KEY (collection, id));
CREATE TABLE IF NOT EXISTS outbox (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, op_id TEXT NOT NULL UNIQUE,
    kind TEXT NOT NULL, collection TEXT NOT NULL, record_id TEXT NOT NULL,
    data TEXT NOT NULL, created_at INTEGER NOT NULL);";

pub(crate) struct SqliteOutbox {
    path: PathBuf,
}

fn open(path: &Path) -> Connection {
    let c = Connection::open(path).expect("sqlite open");
    c.pragma_update(None, "journal_mode", "WAL")
        .expect("journal_mode");
    c.pragma_update(None, "synchronous", "FULL")
        .expect("synchronous");
    c.busy_timeout(Duration::from_secs(60))
        .expect("busy_timeout");
    c
}

fn put(c: &mut Connection, client: usize, i: u64) {
    let id = ulid::Ulid::generate().to_string();
    let op_id = ulid::Ulid::generate().to_string();
    let data = doc(client, i).to_string();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0);
    let tx = c
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .expect("sqlite begin");
    tx.prepare_cached(
        "INSERT INTO records (collection, id, data, updated_at) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT (collection, id) DO UPDATE SET data = excluded.data, updated_at = excluded.updated_at",
    )
    .expect("prepare record")
    .execute(params![COLLECTION, id, data, now])
    .expect("insert record");
    tx.prepare_cached(
        "INSERT INTO outbox (op_id, kind, collection, record_id, data, created_at)
         VALUES (?1, 'put', ?2, ?3, ?4, ?5)",
    )
    .expect("prepare outbox")
    .execute(params![op_id, COLLECTION, id, data, now])
    .expect("insert outbox");
    tx.commit().expect("sqlite commit");
}

impl SqliteOutbox {
    /// Creates the database file and its tables in `dir`.
    pub(crate) fn create(dir: &Path) -> SqliteOutbox {
        let path = dir.join("outbox.sqlite");
        open(&path).execute_batch(SCHEMA).expect("sqlite schema");
        SqliteOutbox { path }
    }

    /// `threads` threads, one connection each, doing durable writes for
    /// `dur`.
    pub(crate) fn run(&self, threads: usize, dur: Duration) -> Run {
        let conns: Vec<Connection> = (0..threads).map(|_| open(&self.path)).collect();
        run_threads(conns, dur, put).1
    }
}
