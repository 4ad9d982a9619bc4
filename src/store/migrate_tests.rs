//! The schema 2 -> 3 upgrade: a file written by the previous release (no
//! scopes in its bincode values) opens, every value decodes with scope
//! `None`, and the store's invariants hold.

use redb::Database;
use serde::Serialize;

use super::encoding::to_store;
use super::tables::*;
use super::{OpState, Store, SCHEMA_VERSION};

#[derive(Serialize)]
struct RecordV2 {
    data: String,
    deleted: bool,
    server_id: Option<String>,
    version: Option<u64>,
    updated_at: Option<i64>,
    base: Option<String>,
    pending: u32,
    local_ts: i64,
}

#[derive(Serialize, Clone)]
struct OpV2 {
    op_id: String,
    collection: String,
    local_id: String,
    kind: crate::domain::OpKind,
    data: Option<String>,
    client_ts: i64,
    attempts: u32,
    last_error: Option<String>,
    enqueued_at: i64,
    base: Option<(String, u64)>,
}

#[derive(Serialize)]
struct DeadV2 {
    op: OpV2,
    error: String,
    dead_at: i64,
}

fn op(op_id: &str, id: &str) -> OpV2 {
    OpV2 {
        op_id: op_id.into(),
        collection: "c".into(),
        local_id: id.into(),
        kind: crate::domain::OpKind::Update,
        data: Some("{\"x\":2}".into()),
        client_ts: 3,
        attempts: 0,
        last_error: None,
        enqueued_at: 4,
        base: None,
    }
}

/// Writes a small schema-2 store: one record with a queued op, one dead
/// letter.
fn write_v2(path: &std::path::Path) -> Result<(), Box<dyn std::error::Error>> {
    let db = Database::create(path)?;
    let txn = db.begin_write()?;
    {
        for_each_table(&txn)?;
        let mut meta = txn.open_table(META)?;
        meta.insert(META_CLIENT_ID, b"01TESTCLIENT".as_slice())?;
        meta.insert(META_SCHEMA, 2u64.to_be_bytes().as_slice())?;
        meta.insert(
            META_QUEUE_TAIL,
            (QUEUE_ORIGIN + 10).to_be_bytes().as_slice(),
        )?;
        meta.insert(META_DEAD_TAIL, 2u64.to_be_bytes().as_slice())?;
        let rec = RecordV2 {
            data: "{\"x\":2}".into(),
            deleted: false,
            server_id: Some("a".into()),
            version: Some(1),
            updated_at: Some(1),
            base: Some("{\"x\":1}".into()),
            pending: 1,
            local_ts: 3,
        };
        txn.open_table(RECORDS)?
            .insert(("c", "a"), to_store(&rec)?.as_slice())?;
        txn.open_table(SERVER_IDS)?.insert(("c", "a"), "a")?;
        let seq = QUEUE_ORIGIN;
        txn.open_table(QUEUE)?
            .insert(seq, to_store(&op("op1", "a"))?.as_slice())?;
        txn.open_table(OP_INDEX)?.insert("op1", seq)?;
        txn.open_table(RECORD_QUEUE)?.insert(("c", "a", seq), ())?;
        let dead = DeadV2 {
            op: op("op2", "gone"),
            error: "HTTP 422: no".into(),
            dead_at: 9,
        };
        txn.open_table(DEAD)?
            .insert(1, to_store(&dead)?.as_slice())?;
        txn.open_table(DEAD_BY_OP)?.insert("op2", 1)?;
    }
    txn.commit()?;
    Ok(())
}

#[test]
fn a_schema_2_store_is_upgraded_in_place() {
    let dir = tempfile::tempdir().expect("tempdir");
    write_v2(&dir.path().join("syncd.redb")).expect("write a schema-2 file");
    let store = Store::open(dir.path(), 1 << 20).expect("open upgrades");
    let schema = store.meta(META_SCHEMA).expect("meta");
    assert_eq!(u64_be(schema.as_deref()), Some(SCHEMA_VERSION));
    let rec = store.record("c", "a").expect("read").expect("record");
    assert_eq!((rec.scope, rec.pending), (None, 1));
    let q = store.queue_head(10).expect("queue");
    assert_eq!(q.len(), 1);
    assert_eq!((q[0].1.op_id.as_str(), q[0].1.scope.clone()), ("op1", None));
    let dead = store.dead_letters().expect("dead");
    assert_eq!(dead[0].1.op.scope, None);
    assert_eq!(
        store.op_state("op2").expect("state"),
        OpState::DeadLettered("HTTP 422: no".into())
    );
    let report = store.check_invariants().expect("check");
    assert!(report.is_clean(), "{:#?}", report.problems);
    drop(store);
    // Opening again finds schema 3 and changes nothing.
    let store = Store::open(dir.path(), 1 << 20).expect("reopen");
    assert_eq!(store.queue_depth().expect("depth"), 1);
}
