//! `[collections.NAME] sync` in the writer: a local collection's writes
//! queue nothing, a pull collection's writes are refused, and pulled
//! changes of push and local collections are not applied. (The writer
//! checks the store's invariants after every job in test builds.)

use std::sync::Arc;

use serde_json::{json, Value};
use tokio::sync::{broadcast, Notify};

use super::writer::{spawn, WriteCmd, WriteOutcome, WriterHandle};
use super::Store;
use crate::domain::direction::{Direction, Directions};
use crate::domain::{Change, Document, Event, ServerRecord, WriteError};

struct Fx {
    _dir: tempfile::TempDir,
    store: Store,
    w: WriterHandle,
    events: broadcast::Receiver<Arc<Event>>,
}

fn fx(dirs: &[(&str, Direction)]) -> Fx {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), 4 << 20).unwrap();
    store.set_directions(directions(dirs));
    let (tx, rx) = broadcast::channel(1024);
    let (w, _join) = spawn(store.clone(), tx, Arc::new(Notify::new())).unwrap();
    Fx {
        _dir: dir,
        store,
        w,
        events: rx,
    }
}

fn directions(dirs: &[(&str, Direction)]) -> Directions {
    Directions::new(dirs.iter().map(|(c, d)| (c.to_string(), *d)))
}

fn doc(v: Value) -> Document {
    match v {
        Value::Object(m) => m,
        _ => panic!("not an object"),
    }
}

fn srec(id: &str, version: u64, v: Value) -> ServerRecord {
    ServerRecord {
        scope: None,
        id: id.into(),
        version,
        updated_at: 100,
        deleted: false,
        data: doc(v),
    }
}

async fn put(f: &Fx, c: &str, id: &str, v: Value) -> Result<WriteOutcome, WriteError> {
    f.w.submit(WriteCmd::Put {
        collection: c.into(),
        id: Some(id.into()),
        data: doc(v),
        client_ts: 100,
        scope: None,
    })
    .await
}

async fn patch(f: &Fx, c: &str, id: &str, v: Value) -> Result<WriteOutcome, WriteError> {
    f.w.submit(WriteCmd::Patch {
        collection: c.into(),
        id: id.into(),
        data: doc(v),
        client_ts: 100,
        max_bytes: 1 << 20,
    })
    .await
}

async fn delete(f: &Fx, c: &str, id: &str) -> Result<WriteOutcome, WriteError> {
    f.w.submit(WriteCmd::Delete {
        collection: c.into(),
        id: id.into(),
        client_ts: 100,
    })
    .await
}

fn op_id(o: Result<WriteOutcome, WriteError>) -> String {
    match o {
        Ok(WriteOutcome::Written { op_id, .. }) => op_id,
        o => panic!("{o:?}"),
    }
}

async fn pull(f: &Fx, changes: Vec<(&str, ServerRecord)>, cursor: &str) {
    let changes = changes
        .into_iter()
        .map(|(c, record)| Change {
            collection: c.into(),
            record,
        })
        .collect();
    f.w.submit(WriteCmd::ApplyChanges {
        changes,
        cursor: cursor.into(),
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn a_local_collection_keeps_its_writes_and_queues_nothing() {
    let mut f = fx(&[("drafts", Direction::Local)]);
    assert_eq!(op_id(put(&f, "drafts", "d1", json!({"a": 1})).await), "");
    assert_eq!(op_id(patch(&f, "drafts", "d1", json!({"b": 2})).await), "");
    assert_eq!(op_id(put(&f, "drafts", "d2", json!({"x": 1})).await), "");
    assert_eq!(f.store.queue_depth().unwrap(), 0);
    let d1 = f.store.record("drafts", "d1").unwrap().unwrap();
    assert_eq!(d1.data, r#"{"a":1,"b":2}"#);
    assert_eq!(d1.pending, 0);
    assert_eq!(op_id(delete(&f, "drafts", "d2").await), "");
    assert!(f.store.record("drafts", "d2").unwrap().is_none());
    // A collection that syncs beside it still queues.
    assert_ne!(op_id(put(&f, "todos", "t1", json!({"n": 1})).await), "");
    assert_eq!(f.store.queue_depth().unwrap(), 1);
    // Watchers see the local writes, without an op id.
    let ev = f.events.recv().await.unwrap();
    assert!(
        matches!(&*ev, Event::Changed { collection, op_id: None, .. } if collection == "drafts"),
        "{ev:?}"
    );
    assert!(f.store.check_invariants().unwrap().is_clean());
}

#[tokio::test]
async fn a_pull_collection_refuses_writes_and_takes_the_servers_records() {
    let f = fx(&[("prices", Direction::Pull)]);
    for r in [
        put(&f, "prices", "p1", json!({"eur": 3})).await,
        patch(&f, "prices", "p1", json!({"eur": 4})).await,
        delete(&f, "prices", "p1").await,
    ] {
        match r {
            Err(WriteError::ReadOnlyCollection { collection }) => assert_eq!(collection, "prices"),
            r => panic!("{r:?}"),
        }
    }
    assert_eq!(f.store.queue_depth().unwrap(), 0);
    pull(&f, vec![("prices", srec("p1", 1, json!({"eur": 5})))], "1").await;
    let p1 = f.store.record("prices", "p1").unwrap().unwrap();
    assert_eq!(p1.data, r#"{"eur":5}"#);
    // The record exists now, and is still read-only.
    assert!(matches!(
        patch(&f, "prices", "p1", json!({"eur": 6})).await,
        Err(WriteError::ReadOnlyCollection { .. })
    ));
}

#[tokio::test]
async fn push_and_local_collections_ignore_pulled_changes() {
    let f = fx(&[("logs", Direction::Push), ("drafts", Direction::Local)]);
    op_id(put(&f, "logs", "l1", json!({"m": "mine"})).await);
    op_id(put(&f, "drafts", "d1", json!({"m": "mine"})).await);
    pull(
        &f,
        vec![
            ("logs", srec("l2", 1, json!({"m": "theirs"}))),
            ("drafts", srec("d1", 3, json!({"m": "theirs"}))),
            ("drafts", srec("d9", 1, json!({"m": "theirs"}))),
            ("todos", srec("t1", 1, json!({"m": "theirs"}))),
        ],
        "7",
    )
    .await;
    assert!(f.store.record("logs", "l2").unwrap().is_none());
    assert!(f.store.record("drafts", "d9").unwrap().is_none());
    let d1 = f.store.record("drafts", "d1").unwrap().unwrap();
    assert_eq!(d1.data, r#"{"m":"mine"}"#);
    assert_eq!(d1.version, None);
    assert!(f.store.record("todos", "t1").unwrap().is_some());
    // The cursor moves past the whole page.
    assert_eq!(
        f.store.meta(super::tables::META_CURSOR).unwrap().as_deref(),
        Some(&b"7"[..])
    );
}

#[tokio::test]
async fn ops_queued_before_a_collection_became_local_still_go_out() {
    let f = fx(&[]);
    op_id(put(&f, "notes", "n1", json!({"v": 1})).await);
    f.store
        .set_directions(directions(&[("notes", Direction::Local)]));
    // The queued op is not claimed: a write would fold into it if the
    // collection still synced. Local, it leaves the op as it was.
    op_id(put(&f, "notes", "n1", json!({"v": 2})).await);
    let head = f.store.queue_head(10).unwrap();
    assert_eq!(head.len(), 1);
    assert_eq!(head[0].1.data.as_deref(), Some(r#"{"v":1}"#));
    let n1 = f.store.record("notes", "n1").unwrap().unwrap();
    assert_eq!((n1.pending, n1.data.as_str()), (1, r#"{"v":2}"#));
    // Its ack records the server id but keeps the local document.
    f.w.submit(WriteCmd::Ack {
        seq: head[0].0,
        record: srec("n1", 1, json!({"v": 1})),
    })
    .await
    .unwrap();
    let n1 = f.store.record("notes", "n1").unwrap().unwrap();
    assert_eq!(n1.pending, 0);
    assert_eq!(n1.data, r#"{"v":2}"#);
    assert_eq!(n1.server_id.as_deref(), Some("n1"));
    // A local delete of it queues nothing and forgets it whole (its server
    // id mapping too: the invariant check would name a dangling one).
    assert_eq!(op_id(delete(&f, "notes", "n1").await), "");
    assert!(f.store.record("notes", "n1").unwrap().is_none());
    assert_eq!(f.store.queue_depth().unwrap(), 0);
    assert!(f.store.check_invariants().unwrap().is_clean());
}

#[tokio::test]
async fn ops_queued_before_a_collection_became_pull_still_go_out() {
    let f = fx(&[]);
    let first = op_id(put(&f, "prices", "p1", json!({"eur": 1})).await);
    f.store
        .set_directions(directions(&[("prices", Direction::Pull)]));
    assert!(matches!(
        put(&f, "prices", "p1", json!({"eur": 2})).await,
        Err(WriteError::ReadOnlyCollection { .. })
    ));
    let head = f.store.queue_head(10).unwrap();
    assert_eq!(head.len(), 1);
    assert_eq!(head[0].1.op_id, first);
}

fn scoped(id: &str, version: u64, v: Value, scope: &str) -> ServerRecord {
    ServerRecord {
        scope: Some(scope.into()),
        ..srec(id, version, v)
    }
}

/// Acks the head op with `record`.
async fn ack_head(f: &Fx, record: ServerRecord) {
    let head = f.store.queue_head(1).unwrap();
    f.w.submit(WriteCmd::Ack {
        seq: head[0].0,
        record,
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn scope_purges_leave_push_and_local_collections_alone() {
    let f = fx(&[("logs", Direction::Push)]);
    op_id(put(&f, "logs", "l1", json!({"m": 1})).await);
    ack_head(&f, scoped("l1", 1, json!({"m": 1}), "team-1")).await;
    op_id(put(&f, "notes", "n1", json!({"m": 1})).await);
    ack_head(&f, scoped("n1", 1, json!({"m": 1}), "team-1")).await;
    f.store.set_directions(directions(&[
        ("logs", Direction::Push),
        ("notes", Direction::Local),
    ]));
    let t1 = scoped("t1", 1, json!({"m": 1}), "team-1");
    let page =
        |records: Vec<Change>, gone: Vec<(String, String, u64)>| super::writer::ScopePageIn {
            scope: "team-1".into(),
            records,
            gone,
            cursor: "1".into(),
            more: false,
            remaining: None,
        };
    let change = Change {
        collection: "todos".into(),
        record: t1,
    };
    f.w.submit(WriteCmd::ApplyScopePages {
        pages: vec![page(vec![change], vec![])],
    })
    .await
    .unwrap();
    assert!(f.store.record("todos", "t1").unwrap().is_some());
    let gone = ["logs", "notes", "todos"]
        .map(|c| (c.to_owned(), format!("{}1", &c[..1]), 1))
        .to_vec();
    f.w.submit(WriteCmd::ApplyScopePages {
        pages: vec![page(vec![], gone)],
    })
    .await
    .unwrap();
    assert!(f.store.record("todos", "t1").unwrap().is_none(), "gone");
    assert!(f.store.record("logs", "l1").unwrap().is_some(), "push");
    assert!(f.store.record("notes", "n1").unwrap().is_some(), "local");
    f.w.submit(WriteCmd::SetScopeChoice {
        scope: "team-1".into(),
        subscribe: false,
    })
    .await
    .unwrap();
    assert!(f.store.record("logs", "l1").unwrap().is_some(), "push");
    assert!(f.store.record("notes", "n1").unwrap().is_some(), "local");
    assert!(f.store.check_invariants().unwrap().is_clean());
}

#[tokio::test]
async fn a_resend_after_a_conflict_in_a_local_collection_carries_the_queued_write_only() {
    let f = fx(&[]);
    op_id(put(&f, "notes", "n1", json!({"v": 1})).await);
    ack_head(&f, srec("n1", 1, json!({"v": 1}))).await;
    op_id(put(&f, "notes", "n1", json!({"v": 2})).await);
    f.store
        .set_directions(directions(&[("notes", Direction::Local)]));
    // Written after the collection became local: never for the server.
    assert_eq!(op_id(put(&f, "notes", "n1", json!({"v": 3})).await), "");
    assert_eq!(op_id(delete(&f, "notes", "n1").await), "");
    let (seq, _) = f.store.queue_head(1).unwrap().remove(0);
    let server = ServerRecord {
        updated_at: 50,
        ..srec("n1", 2, json!({"v": 9}))
    };
    f.w.submit(WriteCmd::Conflict {
        seq,
        server,
        strategy: crate::domain::conflict::Strategy::LastWriteWins,
        rules: Default::default(),
    })
    .await
    .unwrap();
    let q = f.store.queue_head(10).unwrap();
    assert_eq!(q.len(), 1, "{q:?}");
    assert_eq!(q[0].1.kind, crate::domain::OpKind::Update);
    assert_eq!(q[0].1.data.as_deref(), Some(r#"{"v":2}"#));
    assert!(f.store.check_invariants().unwrap().is_clean());
}

#[tokio::test]
async fn a_dead_letter_is_not_retried_into_a_pull_or_local_collection() {
    let f = fx(&[]);
    for c in ["prices", "notes"] {
        op_id(put(&f, c, "r1", json!({"v": 1})).await);
        let (seq, _) = f.store.queue_head(1).unwrap().remove(0);
        f.w.submit(WriteCmd::DeadLetter {
            seq,
            error: "HTTP 422: no".into(),
        })
        .await
        .unwrap();
    }
    f.store.set_directions(directions(&[
        ("prices", Direction::Pull),
        ("notes", Direction::Local),
    ]));
    let dead = f.store.dead_letters().unwrap();
    assert_eq!(dead.len(), 2);
    for (_, d) in &dead {
        let r =
            f.w.submit(WriteCmd::RetryDead {
                op_id: d.op.op_id.clone(),
            })
            .await;
        match (d.op.collection.as_str(), r) {
            ("prices", Err(WriteError::ReadOnlyCollection { .. })) => {}
            ("notes", Err(WriteError::LocalCollection { .. })) => {}
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(f.store.queue_depth().unwrap(), 0);
    assert_eq!(f.store.dead_letters().unwrap().len(), 2, "kept");
}
