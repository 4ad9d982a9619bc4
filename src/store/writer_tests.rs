//! Store + writer logic without sockets: a temp redb, the real writer
//! thread, jobs submitted as the server and the worker would.

use std::sync::Arc;

use serde_json::{json, Value};
use tokio::sync::{broadcast, Notify};

use super::writer::{spawn, WriteCmd, WriteOutcome, WriterHandle};
use super::{OpState, Store};
use crate::domain::conflict::Strategy;
use crate::domain::{Change, Document, Event, OpKind, Origin, ServerRecord, Side, WriteError};

fn doc(v: Value) -> Document {
    match v {
        Value::Object(m) => m,
        _ => panic!("not an object"),
    }
}

struct Fx {
    _dir: tempfile::TempDir,
    store: Store,
    w: WriterHandle,
    events: broadcast::Receiver<Arc<Event>>,
}

fn fx() -> Fx {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), 4 << 20).unwrap();
    super::index::seed_ready(&store, &super::index::test_declared()).unwrap();
    let (tx, rx) = broadcast::channel(1024);
    let (w, _join) = spawn(store.clone(), tx, Arc::new(Notify::new())).unwrap();
    Fx {
        _dir: dir,
        store,
        w,
        events: rx,
    }
}

/// Returns once the events of every job answered so far have been sent:
/// the writer answers a batch's jobs before it broadcasts their events,
/// and a later job is answered only after that.
async fn events_flushed(f: &Fx) {
    f.w.submit(WriteCmd::Claim { upto: 0 }).await.unwrap();
}

/// Marks every op queued so far as sent (as the worker does before it
/// sends them), so that later writes queue ops of their own instead of
/// folding into these.
async fn claim(f: &Fx) {
    if let Some((upto, _)) = f.store.queue_head(usize::MAX).unwrap().last() {
        f.w.submit(WriteCmd::Claim { upto: *upto }).await.unwrap();
    }
}

/// A put whose op then counts as sent (see [`claim`]): the tests below
/// that predate coalescing see one op per write.
async fn put(f: &Fx, id: &str, v: Value) -> String {
    let op_id = put_unclaimed(f, id, v).await;
    claim(f).await;
    op_id
}

async fn put_unclaimed(f: &Fx, id: &str, v: Value) -> String {
    match f
        .w
        .submit(WriteCmd::Put {
            collection: "c".into(),
            id: Some(id.into()),
            data: doc(v),
            client_ts: 100,
            scope: None,
        })
        .await
        .unwrap()
    {
        WriteOutcome::Written { op_id, .. } => op_id,
        o => panic!("{o:?}"),
    }
}

fn srec(id: &str, version: u64, ts: i64, v: Value) -> ServerRecord {
    ServerRecord {
        scope: None,
        id: id.into(),
        version,
        updated_at: ts,
        deleted: false,
        data: doc(v),
    }
}

async fn ack_head(f: &Fx, r: ServerRecord) {
    let (seq, _) = f.store.queue_head(1).unwrap().remove(0);
    f.w.submit(WriteCmd::Ack { seq, record: r }).await.unwrap();
}

#[tokio::test]
async fn write_and_queue_in_one_place() {
    let f = fx();
    put(&f, "a", json!({"x": 1})).await;
    patch_ts(&f, "a", json!({"y": 2, "x": null}), 101).await;
    claim(&f).await;
    // The limit applies to the merged document, not just the patch.
    let e =
        f.w.submit(WriteCmd::Patch {
            collection: "c".into(),
            id: "a".into(),
            data: doc(json!({"big": "x".repeat(100)})),
            client_ts: 101,
            max_bytes: 50,
        })
        .await
        .unwrap_err();
    assert!(matches!(e, WriteError::TooLarge { limit: 50, .. }), "{e}");
    delete_ts(&f, "a", 102).await;
    let q = f.store.queue_head(10).unwrap();
    let kinds: Vec<_> = q.iter().map(|(_, o)| o.kind).collect();
    assert_eq!(kinds, vec![OpKind::Create, OpKind::Update, OpKind::Delete]);
    assert_eq!(q[1].1.data.as_deref(), Some(r#"{"y":2}"#));
    assert!(q.windows(2).all(|w| w[0].0 < w[1].0));
    assert!(f.store.get("c", "a").unwrap().is_none(), "deleted locally");
    assert_eq!(f.store.record("c", "a").unwrap().unwrap().pending, 3);
    // Patch/delete of a missing record: error, nothing written.
    let e =
        f.w.submit(WriteCmd::Delete {
            collection: "c".into(),
            id: "zz".into(),
            client_ts: 1,
        })
        .await
        .unwrap_err();
    assert!(
        matches!(&e, WriteError::NotFound { id, .. } if id == "zz"),
        "{e}"
    );
    assert_eq!(f.store.queue_depth().unwrap(), 3);
}

#[tokio::test]
async fn acks_carry_server_id_to_later_ops_and_delete_removes() {
    let f = fx();
    put(&f, "a", json!({"x": 1})).await;
    put(&f, "a", json!({"x": 2})).await;
    ack_head(&f, srec("S1", 1, 100, json!({"x": 1}))).await;
    let r = f.store.record("c", "a").unwrap().unwrap();
    assert_eq!(
        (r.server_id.as_deref(), r.version, r.pending),
        (Some("S1"), Some(1), 1)
    );
    // Local data stays the newer local write while an op is pending.
    assert_eq!(r.data, r#"{"x":2}"#);
    assert_eq!(
        f.store.local_id_for("c", "S1").unwrap().as_deref(),
        Some("a")
    );
    ack_head(&f, srec("S1", 2, 100, json!({"x": 2}))).await;
    let v = f.store.get("c", "a").unwrap().unwrap();
    assert!(!v.pending);
    assert_eq!(v.version, Some(2));
    delete_ts(&f, "a", 1).await;
    let mut tomb = srec("S1", 3, 1, json!({}));
    tomb.deleted = true;
    ack_head(&f, tomb).await;
    assert!(f.store.record("c", "a").unwrap().is_none());
    assert_eq!(f.store.queue_depth().unwrap(), 0);
}

#[tokio::test]
async fn dead_letter_takes_dependents_and_retry_requeues() {
    let f = fx();
    put(&f, "a", json!({"x": 1})).await;
    put(&f, "b", json!({"x": 1})).await;
    put(&f, "a", json!({"x": 2})).await;
    let (seq, op) = f.store.queue_head(1).unwrap().remove(0);
    f.w.submit(WriteCmd::DeadLetter {
        seq,
        error: "HTTP 422: no".into(),
    })
    .await
    .unwrap();
    let q = f.store.queue_head(10).unwrap();
    assert_eq!(q.len(), 1);
    assert_eq!(q[0].1.local_id, "b");
    let dead = f.store.dead_letters().unwrap();
    assert_eq!(dead.len(), 2);
    assert!(dead[1].1.error.contains("depends on"));
    // The rejected op was sent once; its dependent never was.
    assert_eq!(dead[0].1.op.attempts, 1);
    assert_eq!(dead[1].1.op.attempts, 0);
    assert_eq!(
        f.store.op_state(&op.op_id).unwrap(),
        OpState::DeadLettered("HTTP 422: no".into())
    );
    f.w.submit(WriteCmd::RetryDead {
        op_id: op.op_id.clone(),
    })
    .await
    .unwrap();
    assert_eq!(f.store.op_state(&op.op_id).unwrap(), OpState::Queued);
    let other = dead[1].1.op.op_id.clone();
    f.w.submit(WriteCmd::DiscardDead {
        op_id: other.clone(),
    })
    .await
    .unwrap();
    assert_eq!(f.store.op_state(&other).unwrap(), OpState::Done);
    assert_eq!(f.store.dead_letter_count().unwrap(), 0);
}

#[tokio::test]
async fn resend_goes_to_head_with_new_op_id() {
    let f = fx();
    put(&f, "a", json!({"x": 1})).await;
    ack_head(&f, srec("S1", 1, 100, json!({"x": 1}))).await;
    let old = put(&f, "a", json!({"x": 2})).await;
    put(&f, "b", json!({"y": 1})).await;
    conflict_head(
        &f,
        srec("S1", 5, 50, json!({"x": 9})),
        Strategy::LastWriteWins,
    )
    .await;
    let q = f.store.queue_head(10).unwrap();
    assert_eq!(q[0].1.local_id, "a");
    assert_ne!(q[0].1.op_id, old);
    assert_eq!(q[1].1.local_id, "b");
    let r = f.store.record("c", "a").unwrap().unwrap();
    assert_eq!(r.version, Some(5), "re-sent on top of the server version");
    assert_eq!(r.base.as_deref(), Some(r#"{"x":9}"#));
}

#[tokio::test]
async fn take_server_and_park_and_resolve() {
    let mut f = fx();
    put(&f, "a", json!({"x": 1})).await;
    ack_head(&f, srec("S1", 1, 100, json!({"x": 1}))).await;
    put(&f, "a", json!({"x": 2})).await;
    let (seq, op) = f.store.queue_head(1).unwrap().remove(0);
    f.w.submit(WriteCmd::Conflict {
        seq,
        server: srec("S1", 2, 200, json!({"x": 3})),
        strategy: Strategy::Manual,
        rules: Default::default(),
    })
    .await
    .unwrap();
    assert_eq!(f.store.op_state(&op.op_id).unwrap(), OpState::Parked);
    let cs = f.store.conflicts().unwrap();
    assert_eq!(cs.len(), 1);
    assert_eq!(cs[0].local.as_ref().unwrap().0, json!({"x": 2}));
    assert!(f.store.get("c", "a").unwrap().unwrap().pending);
    f.w.submit(WriteCmd::ResolveParked {
        collection: "c".into(),
        id: "a".into(),
        take: Some(Side::Server),
        data: None,
    })
    .await
    .unwrap();
    let v = f.store.get("c", "a").unwrap().unwrap();
    assert_eq!(v.data.0, json!({"x": 3}));
    assert!(!v.pending);
    assert_eq!(f.store.conflict_count().unwrap(), 0);
    let mut saw_conflict = false;
    events_flushed(&f).await;
    while let Ok(e) = f.events.try_recv() {
        saw_conflict |= matches!(&*e, Event::Conflict { .. });
    }
    assert!(saw_conflict);
}

#[tokio::test]
async fn pull_applies_remote_but_not_over_pending() {
    let f = fx();
    put(&f, "mine", json!({"x": 1})).await;
    ack_head(&f, srec("S1", 1, 100, json!({"x": 1}))).await;
    put(&f, "mine", json!({"x": 2})).await; // pending
    let changes = vec![
        Change {
            collection: "c".into(),
            record: srec("S1", 2, 300, json!({"x": 7})),
        },
        Change {
            collection: "c".into(),
            record: srec("S2", 1, 300, json!({"n": 1})),
        },
    ];
    f.w.submit(WriteCmd::ApplyChanges {
        changes,
        cursor: "2".into(),
    })
    .await
    .unwrap();
    let mine = f.store.record("c", "mine").unwrap().unwrap();
    assert_eq!(mine.data, r#"{"x":2}"#, "pending local change kept");
    assert_eq!(
        mine.version,
        Some(1),
        "its op keeps the base it was made on"
    );
    let remote = f.store.get("c", "S2").unwrap().unwrap();
    assert_eq!(remote.server_id.as_deref(), Some("S2"));
    assert!(!remote.pending);
    assert_eq!(
        f.store.meta(super::tables::META_CURSOR).unwrap().as_deref(),
        Some(&b"2"[..])
    );
    // A remote tombstone removes a clean local record.
    let mut t = srec("S2", 2, 400, json!({}));
    t.deleted = true;
    f.w.submit(WriteCmd::ApplyChanges {
        changes: vec![Change {
            collection: "c".into(),
            record: t,
        }],
        cursor: "3".into(),
    })
    .await
    .unwrap();
    assert!(f.store.record("c", "S2").unwrap().is_none());
}

#[tokio::test]
async fn restart_keeps_sequence_and_client_id() {
    let dir = tempfile::tempdir().unwrap();
    let (cid, last) = {
        let store = Store::open(dir.path(), 4 << 20).unwrap();
        let (tx, _) = broadcast::channel(16);
        let (w, join) = spawn(store.clone(), tx, Arc::new(Notify::new())).unwrap();
        for i in 0..3 {
            w.submit(WriteCmd::Put {
                collection: "c".into(),
                id: Some(format!("r{i}")),
                data: Document::new(),
                client_ts: 1,
                scope: None,
            })
            .await
            .unwrap();
        }
        let last = store.queue_head(10).unwrap().last().unwrap().0;
        drop(w);
        join.join().unwrap();
        (store.client_id().to_owned(), last)
    };
    let store = Store::open(dir.path(), 4 << 20).unwrap();
    assert_eq!(store.client_id(), cid);
    let (tx, _) = broadcast::channel(16);
    let (w, _) = spawn(store.clone(), tx, Arc::new(Notify::new())).unwrap();
    w.submit(WriteCmd::Put {
        collection: "c".into(),
        id: None,
        data: Document::new(),
        client_ts: 1,
        scope: None,
    })
    .await
    .unwrap();
    let q = store.queue_head(10).unwrap();
    assert_eq!(q.len(), 4);
    assert!(q[3].0 > last);
}

/// A put's commit leaves the stored queue tail alone (it is a bound,
/// rewritten once per many appends), and a restart on a queue emptied by
/// acks still numbers new ops above every sequence used before.
#[tokio::test]
async fn puts_leave_the_stored_tail_alone_and_a_restart_numbers_above_it() {
    use super::tables::META_QUEUE_TAIL;
    let put = |i: usize| WriteCmd::Put {
        collection: "c".into(),
        id: Some(format!("r{i}")),
        data: Document::new(),
        client_ts: 1,
        scope: None,
    };
    let dir = tempfile::tempdir().unwrap();
    let last = {
        let store = Store::open(dir.path(), 4 << 20).unwrap();
        let (tx, _) = broadcast::channel(16);
        let (w, join) = spawn(store.clone(), tx, Arc::new(Notify::new())).unwrap();
        w.submit(put(0)).await.unwrap();
        let stored = store.meta(META_QUEUE_TAIL).unwrap();
        for i in 1..5 {
            w.submit(put(i)).await.unwrap();
        }
        assert_eq!(store.meta(META_QUEUE_TAIL).unwrap(), stored);
        let queued = store.queue_head(10).unwrap();
        assert_eq!(queued.len(), 5);
        let last = queued.last().unwrap().0;
        for (i, (seq, _)) in queued.into_iter().enumerate() {
            let record = srec(&format!("s{i}"), 1, 1, json!({}));
            w.submit(WriteCmd::Ack { seq, record }).await.unwrap();
        }
        assert!(store.queue_head(10).unwrap().is_empty());
        drop(w);
        join.join().unwrap();
        last
    };
    let store = Store::open(dir.path(), 4 << 20).unwrap();
    let (tx, _) = broadcast::channel(16);
    let (w, _) = spawn(store.clone(), tx, Arc::new(Notify::new())).unwrap();
    w.submit(put(9)).await.unwrap();
    let q = store.queue_head(10).unwrap();
    assert_eq!(q.len(), 1);
    assert!(q[0].0 > last);
}

#[tokio::test]
async fn conflict_folds_later_ops_of_the_record() {
    let f = fx();
    put(&f, "a", json!({"x": 1})).await;
    ack_head(&f, srec("S1", 1, 100, json!({"x": 1}))).await;
    put(&f, "a", json!({"x": 2})).await;
    put(&f, "a", json!({"x": 3})).await;
    let (seq, _) = f.store.queue_head(1).unwrap().remove(0);
    // server-wins: every op of the record made on the stale base goes.
    f.w.submit(WriteCmd::Conflict {
        seq,
        server: srec("S1", 4, 900, json!({"x": 9})),
        strategy: Strategy::ServerWins,
        rules: Default::default(),
    })
    .await
    .unwrap();
    assert_eq!(f.store.queue_depth().unwrap(), 0);
    let v = f.store.get("c", "a").unwrap().unwrap();
    assert_eq!(
        (v.data.0.clone(), v.version, v.pending),
        (json!({"x": 9}), Some(4), false)
    );
    // last-write-wins with a newer local change: one re-send of the latest state.
    f.w.submit(WriteCmd::Put {
        collection: "c".into(),
        id: Some("a".into()),
        data: doc(json!({"x": 10})),
        client_ts: 1000,
        scope: None,
    })
    .await
    .unwrap();
    f.w.submit(WriteCmd::Put {
        collection: "c".into(),
        id: Some("a".into()),
        data: doc(json!({"x": 11})),
        client_ts: 1001,
        scope: None,
    })
    .await
    .unwrap();
    conflict_head(
        &f,
        srec("S1", 6, 950, json!({"x": 8})),
        Strategy::LastWriteWins,
    )
    .await;
    let q = f.store.queue_head(10).unwrap();
    assert_eq!(q.len(), 1);
    assert_eq!(q[0].1.data.as_deref(), Some(r#"{"x":11}"#));
    assert_eq!(q[0].1.client_ts, 1001);
    let r = f.store.record("c", "a").unwrap().unwrap();
    assert_eq!((r.version, r.pending), (Some(6), 1));
}

#[tokio::test]
async fn resolve_settles_writes_made_after_the_park_and_takes_the_newest_server() {
    let f = fx();
    put(&f, "a", json!({"x": 1})).await;
    ack_head(&f, srec("S1", 1, 100, json!({"x": 1}))).await;
    put(&f, "a", json!({"x": 2})).await;
    conflict_head(&f, srec("S1", 2, 200, json!({"x": 3})), Strategy::Manual).await;
    // The app writes again while the conflict is parked, and a pull brings
    // a newer server version.
    put(&f, "a", json!({"x": 4})).await;
    f.w.submit(WriteCmd::ApplyChanges {
        changes: vec![Change {
            collection: "c".into(),
            record: srec("S1", 3, 300, json!({"x": 5})),
        }],
        cursor: "9".into(),
    })
    .await
    .unwrap();
    assert_eq!(f.store.conflicts().unwrap()[0].server_version, 3);
    f.w.submit(WriteCmd::ResolveParked {
        collection: "c".into(),
        id: "a".into(),
        take: Some(Side::Server),
        data: None,
    })
    .await
    .unwrap();
    // Nothing left to overwrite the server's version.
    assert_eq!(f.store.queue_depth().unwrap(), 0);
    let v = f.store.get("c", "a").unwrap().unwrap();
    assert_eq!(
        (v.data.0.clone(), v.version, v.pending),
        (json!({"x": 5}), Some(3), false)
    );
}

#[tokio::test]
async fn a_dead_lettered_update_keeps_the_base_it_was_made_on() {
    let f = fx();
    put(&f, "a", json!({"x": 1})).await;
    ack_head(&f, srec("S1", 1, 100, json!({"x": 1}))).await;
    let op_id = put(&f, "a", json!({"x": 2})).await;
    let (seq, _) = f.store.queue_head(1).unwrap().remove(0);
    f.w.submit(WriteCmd::DeadLetter {
        seq,
        error: "HTTP 422: no".into(),
    })
    .await
    .unwrap();
    // Another device's change arrives meanwhile.
    f.w.submit(WriteCmd::ApplyChanges {
        changes: vec![Change {
            collection: "c".into(),
            record: srec("S1", 2, 300, json!({"x": 7})),
        }],
        cursor: "1".into(),
    })
    .await
    .unwrap();
    assert_eq!(f.store.record("c", "a").unwrap().unwrap().version, Some(2));
    f.w.submit(WriteCmd::RetryDead { op_id }).await.unwrap();
    let (_, op) = f.store.queue_head(1).unwrap().remove(0);
    // Sent on version 1, it meets version 2 as a conflict instead of
    // silently overwriting it.
    assert_eq!(op.base, Some(("S1".to_string(), 1)));
}

/// Queue X1, Y1, X2 and a 409 for X1: the resolution must not move X2's
/// state ahead of Y1 (a later op may depend on an earlier one in another
/// record). Under merge the re-send carries X1's merged state at the head,
/// and X2 stays behind Y1, rebased onto the merge.
#[tokio::test]
async fn conflict_resend_never_moves_a_later_op_ahead_of_another_record() {
    for strategy in [Strategy::Merge, Strategy::LastWriteWins] {
        let f = fx();
        put(&f, "x", json!({"a": 1, "b": 1})).await;
        ack_head(&f, srec("SX", 1, 50, json!({"a": 1, "b": 1}))).await;
        put(&f, "x", json!({"a": 2, "b": 1})).await; // X1: a changed
        put(&f, "y", json!({"n": 1})).await; // Y1
        patch_ts(&f, "x", json!({"c": 3}), 101).await; // X2: c added
        let (seq, x1) = f.store.queue_head(1).unwrap().remove(0);
        // The server changed b meanwhile.
        f.w.submit(WriteCmd::Conflict {
            seq,
            server: srec("SX", 2, 60, json!({"a": 1, "b": 7})),
            strategy,
            rules: Default::default(),
        })
        .await
        .unwrap();
        let q = f.store.queue_head(10).unwrap();
        let order: Vec<&str> = q.iter().map(|(_, o)| o.local_id.as_str()).collect();
        assert_eq!(order, ["x", "y", "x"], "{strategy:?}: {q:?}");
        assert_ne!(q[0].1.op_id, x1.op_id, "the re-send is a new op");
        let sent: Value = serde_json::from_str(q[0].1.data.as_deref().unwrap()).unwrap();
        let tail: Value = serde_json::from_str(q[2].1.data.as_deref().unwrap()).unwrap();
        let rec = f.store.record("c", "x").unwrap().unwrap();
        assert_eq!(rec.pending, 2);
        let local: Value = serde_json::from_str(&rec.data).unwrap();
        match strategy {
            Strategy::Merge => {
                assert_eq!(sent, json!({"a": 2, "b": 7}), "X1 merged, not X2");
                assert_eq!(tail, json!({"a": 2, "b": 7, "c": 3}), "X2 rebased");
                assert_eq!(local, tail);
            }
            _ => {
                assert_eq!(sent, json!({"a": 2, "b": 1}), "X1's state, not X2's");
                assert_eq!(tail, json!({"a": 2, "b": 1, "c": 3}), "X2 as written");
                assert_eq!(local, tail);
            }
        }
    }
}

/// Server-wins takes the server's record: nothing is sent, so the whole
/// record's queue goes, tail included, and the other record's op stays.
#[tokio::test]
async fn conflict_take_server_drops_the_tail_too() {
    let f = fx();
    put(&f, "x", json!({"a": 1})).await;
    ack_head(&f, srec("SX", 1, 50, json!({"a": 1}))).await;
    put(&f, "x", json!({"a": 2})).await;
    put(&f, "y", json!({"n": 1})).await;
    put(&f, "x", json!({"a": 3})).await;
    conflict_head(&f, srec("SX", 2, 60, json!({"a": 9})), Strategy::ServerWins).await;
    let q = f.store.queue_head(10).unwrap();
    let order: Vec<&str> = q.iter().map(|(_, o)| o.local_id.as_str()).collect();
    assert_eq!(order, ["y"]);
    let rec = f.store.record("c", "x").unwrap().unwrap();
    assert_eq!((rec.pending, rec.data.as_str()), (0, r#"{"a":9}"#));
}

async fn patch(f: &Fx, id: &str, v: Value) -> String {
    match f
        .w
        .submit(WriteCmd::Patch {
            collection: "c".into(),
            id: id.into(),
            data: doc(v),
            client_ts: 200,
            max_bytes: 1 << 20,
        })
        .await
        .unwrap()
    {
        WriteOutcome::Written { op_id, .. } => op_id,
        o => panic!("{o:?}"),
    }
}

async fn delete(f: &Fx, id: &str) -> String {
    match f
        .w
        .submit(WriteCmd::Delete {
            collection: "c".into(),
            id: id.into(),
            client_ts: 300,
        })
        .await
        .unwrap()
    {
        WriteOutcome::Written { op_id, .. } => op_id,
        o => panic!("{o:?}"),
    }
}

fn queue(f: &Fx) -> Vec<(OpKind, String, Option<String>)> {
    f.store
        .queue_head(100)
        .unwrap()
        .into_iter()
        .map(|(_, o)| (o.kind, o.local_id, o.data))
        .collect()
}

#[tokio::test]
async fn coalescing_folds_unsent_edits_at_the_tail() {
    // create + update -> one create with the final document.
    let f = fx();
    let a = put_unclaimed(&f, "a", json!({"x": 1})).await;
    assert_eq!(patch(&f, "a", json!({"y": 2})).await, a, "same op");
    assert_eq!(
        queue(&f),
        vec![(OpKind::Create, "a".into(), Some(r#"{"x":1,"y":2}"#.into()))]
    );
    assert_eq!(f.store.record("c", "a").unwrap().unwrap().pending, 1);
    // update + update -> one update.
    claim(&f).await;
    let u = patch(&f, "a", json!({"z": 3})).await;
    assert_eq!(patch(&f, "a", json!({"z": 4})).await, u);
    assert_eq!(queue(&f).len(), 2);
    assert_eq!(queue(&f)[1].2.as_deref(), Some(r#"{"x":1,"y":2,"z":4}"#));
    // update + delete -> one delete.
    assert_eq!(delete(&f, "a").await, u);
    assert_eq!(queue(&f)[1], (OpKind::Delete, "a".into(), None));
    assert_eq!(f.store.record("c", "a").unwrap().unwrap().pending, 2);
    // create + delete -> nothing is sent and the record is gone.
    let b = put_unclaimed(&f, "b", json!({"n": 1})).await;
    assert_eq!(delete(&f, "b").await, b);
    assert_eq!(queue(&f).len(), 2, "b never reaches the queue");
    assert!(f.store.record("c", "b").unwrap().is_none());
    assert_eq!(f.store.op_state(&b).unwrap(), OpState::Done);
}

#[tokio::test]
async fn coalescing_never_folds_across_order_or_into_sent_ops() {
    // An op in flight (claimed by the worker) is never changed.
    let f = fx();
    put_unclaimed(&f, "a", json!({"x": 1})).await;
    claim(&f).await;
    patch(&f, "a", json!({"x": 2})).await;
    assert_eq!(queue(&f).len(), 2);
    // Another record's op in between: no fold (the queue's order holds).
    put_unclaimed(&f, "b", json!({"n": 1})).await;
    patch(&f, "a", json!({"x": 3})).await;
    let q = queue(&f);
    let ids: Vec<&str> = q.iter().map(|(_, id, _)| id.as_str()).collect();
    assert_eq!(ids, ["a", "a", "b", "a"]);
    // A re-send after a conflict never takes later writes in.
    let g = fx();
    put(&g, "r", json!({"v": 1})).await;
    ack_head(&g, srec("SR", 1, 50, json!({"v": 1}))).await;
    put(&g, "r", json!({"v": 2})).await;
    let (seq, _) = g.store.queue_head(1).unwrap().remove(0);
    g.w.submit(WriteCmd::Conflict {
        seq,
        server: srec("SR", 2, 60, json!({"v": 9})),
        strategy: Strategy::LastWriteWins,
        rules: Default::default(),
    })
    .await
    .unwrap();
    assert_eq!(queue(&g).len(), 1, "the re-send");
    patch(&g, "r", json!({"w": 1})).await;
    assert_eq!(
        queue(&g).len(),
        2,
        "a write after a re-send queues its own op"
    );
}

#[tokio::test]
async fn wait_on_a_folded_op_sees_the_folded_result() {
    let f = fx();
    let a = put_unclaimed(&f, "a", json!({"x": 1})).await;
    let again = patch(&f, "a", json!({"x": 2})).await;
    assert_eq!(a, again, "both writes answer with the op that carries them");
    assert_eq!(f.store.op_state(&a).unwrap(), OpState::Queued);
    let (seq, op) = f.store.queue_head(1).unwrap().remove(0);
    assert_eq!(op.data.as_deref(), Some(r#"{"x":2}"#));
    f.w.submit(WriteCmd::Ack {
        seq,
        record: srec("S1", 1, 100, json!({"x": 2})),
    })
    .await
    .unwrap();
    assert_eq!(f.store.op_state(&a).unwrap(), OpState::Done);
    let r = f.store.get("c", "a").unwrap().unwrap();
    assert_eq!((r.server_id.as_deref(), r.pending), (Some("S1"), false));
}

/// A device's own change coming back through the feed, before or after its
/// ack, changes nothing and emits no `changed` event. (Without client ids
/// the pull-first order cannot happen: the worker's round lock lands a
/// pulled page only after the push round's verdicts.)
#[tokio::test]
async fn own_change_racing_its_ack_emits_nothing() {
    for (client_ids, pull_first) in [(true, true), (true, false), (false, false)] {
        let mut f = fx();
        f.store.set_backend_client_ids(client_ids);
        put(&f, "milk", json!({"t": 1})).await;
        let sid = if client_ids { "milk" } else { "S9" };
        let r = srec(sid, 1, 100, json!({"t": 1}));
        let pull = WriteCmd::ApplyChanges {
            changes: vec![Change {
                collection: "c".into(),
                record: r.clone(),
            }],
            cursor: "1".into(),
        };
        events_flushed(&f).await;
        while f.events.try_recv().is_ok() {}
        if pull_first {
            f.w.submit(pull).await.unwrap();
            ack_head(&f, r.clone()).await;
        } else {
            ack_head(&f, r.clone()).await;
            f.w.submit(pull).await.unwrap();
        }
        events_flushed(&f).await;
        while let Ok(e) = f.events.try_recv() {
            // The put's own (local) event may come late; nothing else may.
            assert!(
                !matches!(&*e, Event::Changed { origin, .. } if *origin != Origin::Local),
                "client_ids {client_ids}, pull first {pull_first}: {e:?}"
            );
        }
        let rec = f.store.get("c", "milk").unwrap().unwrap();
        assert_eq!(rec.server_id.as_deref(), Some(sid));
        assert_eq!((rec.version, rec.pending), (Some(1), false));
        if !client_ids {
            assert!(f.store.get("c", sid).unwrap().is_none(), "no duplicate");
        }
    }
}

/// With client ids, a pulled record lands on the local record of the same
/// id, even one that has a pending create of its own (it keeps its local
/// state until its op meets the server); a tombstone of a record this
/// device never had is ignored without an event.
#[tokio::test]
async fn client_ids_pulled_id_is_the_local_id() {
    let mut f = fx();
    f.store.set_backend_client_ids(true);
    put(&f, "milk", json!({"mine": true})).await;
    let mut gone = srec("never", 3, 100, json!({}));
    gone.deleted = true;
    events_flushed(&f).await;
    while f.events.try_recv().is_ok() {}
    f.w.submit(WriteCmd::ApplyChanges {
        changes: vec![
            Change {
                collection: "c".into(),
                record: srec("milk", 1, 50, json!({"theirs": true})),
            },
            Change {
                collection: "c".into(),
                record: gone,
            },
        ],
        cursor: "2".into(),
    })
    .await
    .unwrap();
    events_flushed(&f).await;
    while let Ok(e) = f.events.try_recv() {
        assert!(
            !matches!(&*e, Event::Changed { origin, .. } if *origin != Origin::Local),
            "{e:?}"
        );
    }
    let rec = f.store.record("c", "milk").unwrap().unwrap();
    assert_eq!(rec.data, r#"{"mine":true}"#);
    assert_eq!(rec.pending, 1);
    assert_eq!(f.store.queue_depth().unwrap(), 1);
    assert!(f.store.record("c", "never").unwrap().is_none());
}

/// Last-write-wins: a head op older than the server's change loses, but a
/// later write of the same record queued behind another record's op is
/// newer than the server's change and must still be sent.
#[tokio::test]
async fn last_write_wins_keeps_a_newer_tail_when_the_head_loses() {
    let f = fx();
    put(&f, "x", json!({"a": 1})).await;
    ack_head(&f, srec("SX", 1, 50, json!({"a": 1}))).await;
    put(&f, "x", json!({"a": 2})).await; // X1, ts 100
    put(&f, "y", json!({"n": 1})).await; // Y1
    patch_ts(&f, "x", json!({"b": 3}), 300).await; // X2, ts 300
    conflict_head(
        &f,
        srec("SX", 2, 200, json!({"a": 9})),
        Strategy::LastWriteWins,
    )
    .await;
    let q = f.store.queue_head(10).unwrap();
    let order: Vec<&str> = q.iter().map(|(_, o)| o.local_id.as_str()).collect();
    assert_eq!(order, ["y", "x"], "X1 lost; X2 stays behind Y1");
    let rec = f.store.record("c", "x").unwrap().unwrap();
    assert_eq!(rec.version, Some(2), "stands on the server's version");
    assert_eq!(rec.pending, 1);
    assert_eq!(rec.data, r#"{"a":2,"b":3}"#, "X2's document, as written");
}

/// Last-write-wins: when the head op loses and the record's later write
/// behind another record's op is older than the server's change too, the
/// server's change is the last write of all: the tail goes with the head.
#[tokio::test]
async fn last_write_wins_drops_a_tail_older_than_the_server() {
    let f = fx();
    put(&f, "x", json!({"a": 1})).await;
    ack_head(&f, srec("SX", 1, 50, json!({"a": 1}))).await;
    put(&f, "x", json!({"a": 2})).await; // X1, ts 100
    put(&f, "y", json!({"n": 1})).await; // Y1
    patch_ts(&f, "x", json!({"b": 3}), 150).await; // X2, ts 150: older than the server's 200
    conflict_head(
        &f,
        srec("SX", 2, 200, json!({"a": 9})),
        Strategy::LastWriteWins,
    )
    .await;
    let q = f.store.queue_head(10).unwrap();
    let order: Vec<&str> = q.iter().map(|(_, o)| o.local_id.as_str()).collect();
    assert_eq!(
        order,
        ["y"],
        "X1 and X2 both lost to the newer server change"
    );
    let rec = f.store.record("c", "x").unwrap().unwrap();
    assert_eq!((rec.version, rec.pending), (Some(2), 0));
    assert_eq!(rec.data, r#"{"a":9}"#, "the server's document");
}

/// A change pulled while the record had a pending op is not applied then;
/// when the op is confirmed at an older version (another device wrote
/// after it), the device takes the newer record instead of standing on
/// the older one.
#[tokio::test]
async fn a_pulled_change_newer_than_the_ack_is_taken_after_it() {
    let f = fx();
    put(&f, "a", json!({"x": 1})).await;
    ack_head(&f, srec("S1", 1, 100, json!({"x": 1}))).await;
    put(&f, "a", json!({"x": 2})).await; // pending
    let changes = vec![Change {
        collection: "c".into(),
        record: srec("S1", 3, 300, json!({"x": 3, "by": "other"})),
    }];
    f.w.submit(WriteCmd::ApplyChanges {
        changes,
        cursor: "7".into(),
    })
    .await
    .unwrap();
    assert_eq!(
        f.store.record("c", "a").unwrap().unwrap().data,
        r#"{"x":2}"#
    );
    ack_head(&f, srec("S1", 2, 200, json!({"x": 2}))).await;
    let r = f.store.record("c", "a").unwrap().unwrap();
    assert_eq!((r.version, r.pending), (Some(3), 0));
    assert_eq!(r.data, r#"{"by":"other","x":3}"#);
}

/// The same for a delete: a change pulled while the delete was pending
/// (another device wrote the record again after the tombstone) is taken
/// once the delete is confirmed at the tombstone's older version; the
/// record is not left deleted.
#[tokio::test]
async fn a_pulled_change_newer_than_a_delete_ack_is_taken_after_it() {
    let f = fx();
    put(&f, "a", json!({"x": 1})).await;
    ack_head(&f, srec("S1", 1, 100, json!({"x": 1}))).await;
    delete_ts(&f, "a", 200).await;
    let changes = vec![Change {
        collection: "c".into(),
        record: srec("S1", 3, 300, json!({"x": 3, "by": "other"})),
    }];
    f.w.submit(WriteCmd::ApplyChanges {
        changes,
        cursor: "7".into(),
    })
    .await
    .unwrap();
    assert!(
        f.store.record("c", "a").unwrap().unwrap().deleted,
        "the local delete stands while pending"
    );
    let mut tombstone = srec("S1", 2, 200, json!({}));
    tombstone.deleted = true;
    ack_head(&f, tombstone).await;
    let r = f
        .store
        .record("c", "a")
        .unwrap()
        .expect("record taken from the pulled change");
    assert_eq!((r.version, r.pending, r.deleted), (Some(3), 0, false));
    assert_eq!(r.data, r#"{"by":"other","x":3}"#);
}

/// A parked conflict keeps a bounded number of writes: past the bound a
/// write to that record is refused, with an error that says to resolve
/// the conflict first, and the parked ops carry no documents.
#[tokio::test]
async fn a_parked_conflict_holds_a_bounded_number_of_writes() {
    let f = fx();
    put(&f, "a", json!({"x": 1})).await;
    ack_head(&f, srec("S1", 1, 100, json!({"x": 1}))).await;
    let bound = super::writer::MAX_PARKED_OPS;
    for i in 0..bound {
        put(&f, "a", json!({"x": i + 2})).await;
        conflict_head(&f, srec("S1", 2, 200, json!({"x": 9})), Strategy::Manual).await;
    }
    let e =
        f.w.submit(WriteCmd::Put {
            collection: "c".into(),
            id: Some("a".into()),
            data: doc(json!({"x": 99})),
            client_ts: 999,
            scope: None,
        })
        .await
        .unwrap_err();
    assert!(
        matches!(&e, WriteError::ConflictPending { parked, .. } if *parked == bound),
        "{e}"
    );
    assert!(e.to_string().contains("syncd resolve"), "{e}");
    // Resolving frees the record for writes again.
    f.w.submit(WriteCmd::ResolveParked {
        collection: "c".into(),
        id: "a".into(),
        take: Some(Side::Server),
        data: None,
    })
    .await
    .unwrap();
    put(&f, "a", json!({"x": 100})).await;
}

/// Any strategy (here manual): a local delete that meets the server's
/// tombstone lost nothing, so a write made after the delete, queued behind
/// another record's op, still goes to the server (and meets its own 409
/// there). It used to be dropped silently with the delete.
#[tokio::test]
async fn a_write_after_a_delete_that_met_a_tombstone_is_kept() {
    for strategy in [
        Strategy::Manual,
        Strategy::ServerWins,
        Strategy::LastWriteWins,
        Strategy::Merge,
    ] {
        let f = fx();
        put(&f, "x", json!({"a": 1})).await;
        ack_head(&f, srec("x", 1, 50, json!({"a": 1}))).await;
        delete_ts(&f, "x", 100).await;
        claim(&f).await;
        put(&f, "y", json!({"n": 1})).await; // Y1
        put(&f, "x", json!({"a": "again"})).await; // X re-created, behind Y1
        let (seq, _) = f.store.queue_head(1).unwrap().remove(0);
        let mut tomb = srec("x", 2, 80, json!({}));
        tomb.deleted = true;
        f.w.submit(WriteCmd::Conflict {
            seq,
            server: tomb,
            strategy,
            rules: Default::default(),
        })
        .await
        .unwrap();
        let q = f.store.queue_head(10).unwrap();
        let order: Vec<&str> = q.iter().map(|(_, o)| o.local_id.as_str()).collect();
        assert_eq!(order, ["y", "x"], "{strategy:?}");
        let rec = f.store.record("c", "x").unwrap().expect("x kept");
        assert_eq!(rec.data, r#"{"a":"again"}"#, "{strategy:?}");
        assert_eq!(rec.pending, 1, "{strategy:?}");
    }
}

/// A change pulled while the record's op was pending (another device wrote
/// between the server's 409 and this device's verdict) is newer than the
/// 409's record: the conflict is decided against it, so the device does
/// not end on the older version with its cursor past the newer one.
#[tokio::test]
async fn a_conflict_is_decided_against_a_newer_pulled_change() {
    let f = fx();
    put(&f, "a", json!({"x": 1})).await;
    ack_head(&f, srec("a", 1, 100, json!({"x": 1}))).await;
    put(&f, "a", json!({"x": 2})).await; // pending, base v1
    f.w.submit(WriteCmd::ApplyChanges {
        changes: vec![Change {
            collection: "c".into(),
            record: srec("a", 3, 300, json!({"x": 3, "by": "other"})),
        }],
        cursor: "9".into(),
    })
    .await
    .unwrap();
    conflict_head(&f, srec("a", 2, 200, json!({"x": 9})), Strategy::ServerWins).await;
    let r = f.store.record("c", "a").unwrap().unwrap();
    assert_eq!((r.version, r.pending), (Some(3), 0));
    assert_eq!(r.data, r#"{"by":"other","x":3}"#);
}

/// After a 409 whose head loses while a newer tail stays queued, the last
/// `changed` event for the record carries what the record holds (the
/// tail's document), not the server's document the decision took first.
#[tokio::test]
async fn the_last_event_after_a_kept_tail_is_the_record_held() {
    let mut f = fx();
    put(&f, "x", json!({"a": 1})).await;
    ack_head(&f, srec("SX", 1, 50, json!({"a": 1}))).await;
    put(&f, "x", json!({"a": 2})).await; // X1, ts 100
    put(&f, "y", json!({"n": 1})).await; // Y1
    patch_ts(&f, "x", json!({"b": 3}), 300).await; // X2, ts 300
    events_flushed(&f).await;
    while f.events.try_recv().is_ok() {}
    conflict_head(
        &f,
        srec("SX", 2, 200, json!({"a": 9})),
        Strategy::LastWriteWins,
    )
    .await;
    let mut last = None;
    events_flushed(&f).await;
    while let Ok(e) = f.events.try_recv() {
        if let Event::Changed { id, data, .. } = &*e {
            if id == "x" {
                last = Some(data.clone());
            }
        }
    }
    let rec = f.store.record("c", "x").unwrap().unwrap();
    let shown = last.flatten().map(|d| d.0.to_string());
    assert_eq!(shown.as_deref(), Some(rec.data.as_str()));
}

/// Last-write-wins keeps only the tail writes newer than the server's
/// change: an older one lost like the head and is not sent (it would
/// overwrite the newer change on the other devices for a moment).
#[tokio::test]
async fn last_write_wins_keeps_only_the_newer_tail_writes() {
    let f = fx();
    put(&f, "x", json!({"a": 1})).await;
    ack_head(&f, srec("SX", 1, 50, json!({"a": 1}))).await;
    put(&f, "x", json!({"a": 2})).await; // X1, ts 100
    put(&f, "y", json!({"n": 1})).await; // Y1
    for (ts, b) in [(150, 1), (160, 2)] {
        f.w.submit(WriteCmd::Patch {
            collection: "c".into(),
            id: "x".into(),
            data: doc(json!({ "b": b })),
            client_ts: ts,
            max_bytes: 1 << 20,
        })
        .await
        .unwrap();
        claim(&f).await; // no folding: each is its own op
        put(&f, "y", json!({ "n": b + 1 })).await;
    }
    patch_ts(&f, "x", json!({"b": 3}), 300).await; // ts 300: newer than the server's 200
    conflict_head(
        &f,
        srec("SX", 2, 200, json!({"a": 9})),
        Strategy::LastWriteWins,
    )
    .await;
    let q = f.store.queue_head(10).unwrap();
    let xs: Vec<i64> = q
        .iter()
        .filter(|(_, o)| o.local_id == "x")
        .map(|(_, o)| o.client_ts)
        .collect();
    assert_eq!(xs, [300], "only the write newer than the server's is sent");
    let rec = f.store.record("c", "x").unwrap().unwrap();
    assert_eq!((rec.version, rec.pending), (Some(2), 1));
    assert_eq!(rec.data, r#"{"a":2,"b":3}"#);
}

/// Manual: a parked conflict keeps the newest server record. A later
/// write's 409 that carries an older record than one pulled meanwhile does
/// not move it back, so `--take server` takes the newest.
#[tokio::test]
async fn a_later_409_does_not_move_a_parked_conflict_back() {
    let f = fx();
    put(&f, "a", json!({"x": 1})).await;
    ack_head(&f, srec("S1", 1, 100, json!({"x": 1}))).await;
    put(&f, "a", json!({"x": 2})).await;
    conflict_head(&f, srec("S1", 2, 200, json!({"x": 20})), Strategy::Manual).await;
    put(&f, "a", json!({"x": 3})).await;
    f.w.submit(WriteCmd::ApplyChanges {
        changes: vec![Change {
            collection: "c".into(),
            record: srec("S1", 4, 400, json!({"x": 40})),
        }],
        cursor: "9".into(),
    })
    .await
    .unwrap();
    conflict_head(&f, srec("S1", 3, 300, json!({"x": 30})), Strategy::Manual).await;
    f.w.submit(WriteCmd::ResolveParked {
        collection: "c".into(),
        id: "a".into(),
        take: Some(Side::Server),
        data: None,
    })
    .await
    .unwrap();
    let r = f.store.record("c", "a").unwrap().unwrap();
    assert_eq!((r.version, r.data.as_str()), (Some(4), r#"{"x":40}"#));
}

/// With client ids, a record pulled while this device's create of the same
/// id was still unsent is deferred; when the app then deletes its record
/// (the create and the delete fold away, nothing is sent), the pulled
/// record becomes the device's: its cursor is already past it.
#[tokio::test]
async fn a_deferred_record_is_taken_when_an_unsent_create_folds_away() {
    let mut f = fx();
    f.store.set_backend_client_ids(true);
    put_unclaimed(&f, "x", json!({"mine": 1})).await;
    f.w.submit(WriteCmd::ApplyChanges {
        changes: vec![Change {
            collection: "c".into(),
            record: srec("x", 1, 50, json!({"theirs": 1})),
        }],
        cursor: "1".into(),
    })
    .await
    .unwrap();
    events_flushed(&f).await;
    while f.events.try_recv().is_ok() {}
    delete_ts(&f, "x", 200).await;
    assert_eq!(f.store.queue_depth().unwrap(), 0);
    let r = f
        .store
        .record("c", "x")
        .unwrap()
        .expect("the pulled record");
    assert_eq!((r.data.as_str(), r.version), (r#"{"theirs":1}"#, Some(1)));
    events_flushed(&f).await;
    let mut last = None;
    while let Ok(e) = f.events.try_recv() {
        if let Event::Changed { data, .. } = &*e {
            last = Some(data.clone());
        }
    }
    let shown = last.flatten().map(|d| d.0);
    assert_eq!(shown, Some(json!({"theirs": 1})), "watchers end on it");
}

/// Decides a 409 for the op at the head of the queue.
async fn conflict_head(f: &Fx, server: ServerRecord, strategy: Strategy) {
    let (seq, _) = f.store.queue_head(1).unwrap().remove(0);
    f.w.submit(WriteCmd::Conflict {
        seq,
        server,
        strategy,
        rules: Default::default(),
    })
    .await
    .unwrap();
}

/// Against a server tombstone, a put made after a local delete is a new
/// write in whatever order the queue holds the record's ops (the delete at
/// the head, in the run, or behind another record's op; the put folded
/// into the run or behind another op): it is never decided away with the
/// delete, and goes on to meet the server itself.
#[tokio::test]
async fn a_put_after_a_delete_survives_a_tombstone_in_any_queue_order() {
    // (update first, another op before the delete, another op before the put)
    let orders = [
        (false, false, true),
        (false, false, false),
        (true, false, true),
        (true, true, true),
        (true, false, false),
    ];
    for (with_update, y_before_delete, z_before_put) in orders {
        let f = fx();
        put(&f, "x", json!({"a": 1})).await;
        ack_head(&f, srec("SX", 1, 50, json!({"a": 1}))).await;
        if with_update {
            patch_ts(&f, "x", json!({"a": 2}), 100).await;
            claim(&f).await;
        }
        if y_before_delete {
            put(&f, "y", json!({"n": 1})).await;
        }
        delete_ts(&f, "x", 150).await;
        claim(&f).await;
        if z_before_put {
            put(&f, "z", json!({"n": 1})).await;
        }
        put_ts(&f, "x", json!({"new": true}), 300).await;
        claim(&f).await;
        let mut t = srec("SX", 2, 120, json!({}));
        t.deleted = true;
        conflict_head(&f, t, Strategy::ServerWins).await;
        let order = (with_update, y_before_delete, z_before_put);
        let r = f.store.record("c", "x").unwrap().expect("x");
        assert_eq!(
            (r.data.as_str(), r.deleted),
            (r#"{"new":true}"#, false),
            "{order:?}"
        );
        let q = f.store.queue_head(10).unwrap();
        let last_x = q.iter().rev().find(|(_, o)| o.local_id == "x");
        assert_eq!(
            last_x.map(|(_, o)| o.client_ts),
            Some(300),
            "{order:?}: the put is queued"
        );
    }
}

/// Merge: a put made after a local delete is a whole new document; kept
/// behind another record's op, it is not rebased onto the server's
/// document (keys the app did not write must not appear).
#[tokio::test]
async fn merge_does_not_rebase_a_put_made_after_a_delete() {
    let f = fx();
    put(&f, "x", json!({"a": 1, "s": 1})).await;
    ack_head(&f, srec("SX", 1, 50, json!({"a": 1, "s": 1}))).await;
    delete_ts(&f, "x", 100).await;
    claim(&f).await;
    put(&f, "y", json!({"n": 1})).await;
    put_ts(&f, "x", json!({"b": 1}), 300).await;
    conflict_head(
        &f,
        srec("SX", 2, 200, json!({"a": 9, "s": 1})),
        Strategy::Merge,
    )
    .await;
    let q = f.store.queue_head(10).unwrap();
    let x = q
        .iter()
        .find(|(_, o)| o.local_id == "x")
        .expect("the put is queued");
    assert_eq!(x.1.data.as_deref(), Some(r#"{"b":1}"#));
    let r = f.store.record("c", "x").unwrap().unwrap();
    assert_eq!(r.data, r#"{"b":1}"#);
}

async fn patch_ts(f: &Fx, id: &str, v: Value, ts: i64) {
    f.w.submit(WriteCmd::Patch {
        collection: "c".into(),
        id: id.into(),
        data: doc(v),
        client_ts: ts,
        max_bytes: 1 << 20,
    })
    .await
    .unwrap();
}

async fn delete_ts(f: &Fx, id: &str, ts: i64) {
    f.w.submit(WriteCmd::Delete {
        collection: "c".into(),
        id: id.into(),
        client_ts: ts,
    })
    .await
    .unwrap();
}

async fn put_ts(f: &Fx, id: &str, v: Value, ts: i64) {
    f.w.submit(WriteCmd::Put {
        collection: "c".into(),
        id: Some(id.into()),
        data: doc(v),
        client_ts: ts,
        scope: None,
    })
    .await
    .unwrap();
}

/// The invariant check is not a check that cannot fail: each kind of drift
/// written into the tables behind the writer's back is named.
#[tokio::test]
async fn the_invariant_check_names_each_drift() {
    use super::check::Problem;
    use super::encoding::{from_store, to_store};
    use super::tables::*;
    use redb::ReadableTable;
    let f = fx();
    put(&f, "a", json!({"n": 1})).await;
    put(&f, "b", json!({"n": 2})).await;
    assert!(f.store.check_invariants().unwrap().is_clean());
    {
        let db = f.store.db().unwrap();
        let txn = db.begin_write().unwrap();
        {
            let mut records = txn.open_table(RECORDS).unwrap();
            let mut rec: crate::domain::StoredRecord =
                from_store(records.get(("c", "a")).unwrap().unwrap().value()).unwrap();
            rec.pending = 3;
            records
                .insert(("c", "a"), to_store(&rec).unwrap().as_slice())
                .unwrap();
            let q = txn.open_table(QUEUE).unwrap();
            let (_, v) = q.last().unwrap().unwrap();
            let op: crate::domain::QueuedOp = from_store(v.value()).unwrap();
            drop(v);
            txn.open_table(OP_INDEX)
                .unwrap()
                .remove(op.op_id.as_str())
                .unwrap();
            txn.open_table(SERVER_IDS)
                .unwrap()
                .insert(("c", "srv-9"), "b")
                .unwrap();
        }
        txn.commit().unwrap();
    }
    let r = f.store.check_invariants().unwrap();
    assert_eq!(r.count, 3, "{:#?}", r.problems);
    assert!(r.problems.contains(&Problem::Pending {
        record: "c/a".into(),
        pending: 3,
        ops: 1
    }));
    assert!(r.problems.iter().any(|p| matches!(
        p,
        Problem::IndexMissing {
            index: "op_index",
            ..
        }
    )));
    assert!(r.problems.iter().any(
        |p| matches!(p, Problem::IndexMissing { index: "server_ids", key, .. } if key == "c/srv-9")
    ));
    assert!(!r.problems.iter().any(Problem::is_damage));
}

/// A store the engine reported damaged takes no more writes, with an
/// error that says so; what was written before stays readable.
#[tokio::test]
async fn a_damaged_store_takes_no_more_writes() {
    let f = fx();
    put(&f, "a", json!({"n": 1})).await;
    f.store.set_damaged("checksum mismatch in page 7".into());
    let r =
        f.w.submit(WriteCmd::Put {
            collection: "c".into(),
            id: Some("b".into()),
            data: doc(json!({"n": 2})),
            client_ts: 2,
            scope: None,
        })
        .await;
    match r {
        Err(WriteError::Storage(e)) => {
            assert!(
                matches!(*e, crate::domain::StoreError::DamagedInUse { .. }),
                "{e}"
            );
            assert!(e.to_string().contains("syncd check"), "{e}");
        }
        other => panic!("a write went through: {other:?}"),
    }
    assert!(f.store.record("c", "b").unwrap().is_none());
    assert!(f.store.record("c", "a").unwrap().is_some());
}

/// `wait_synced` looks again on the writer's `settled` signal: it moves
/// whenever an op leaves the queue, also by the paths that emit no event
/// (a delete done locally, here), and not for a write that queues one.
#[tokio::test]
async fn every_op_that_leaves_the_queue_moves_settled() {
    let f = fx();
    let mut settled = f.w.settled();
    put(&f, "a", json!({"v": 1})).await;
    assert!(!settled.has_changed().unwrap(), "a write leaves nothing");
    let del = delete(&f, "a").await;
    let (seq, _) = f.store.queue_head(usize::MAX).unwrap()[1].clone();
    settled.borrow_and_update();
    f.w.submit(WriteCmd::DropLocal { seq }).await.unwrap();
    assert!(settled.has_changed().unwrap(), "a delete done locally");
    assert_eq!(f.store.op_state(&del).unwrap(), OpState::Done);
}

#[tokio::test]
async fn the_invariant_check_names_dead_letter_sub_and_gone_mark_drift() {
    use super::check::Problem;
    use super::encoding::{from_store, to_store};
    use super::tables::*;
    use redb::ReadableTable;
    let f = fx();
    put(&f, "a", json!({"n": 1})).await;
    put(&f, "b", json!({"n": 2})).await;
    let mark = |id: &str, gone: &str| {
        let db = f.store.db().unwrap();
        let txn = db.begin_write().unwrap();
        {
            let mut records = txn.open_table(RECORDS).unwrap();
            let mut rec: crate::domain::StoredRecord =
                from_store(records.get(("c", id)).unwrap().unwrap().value()).unwrap();
            rec.gone_from = Some(gone.to_owned());
            records
                .insert(("c", id), to_store(&rec).unwrap().as_slice())
                .unwrap();
        }
        txn.commit().unwrap();
    };
    mark("a", "team-1");
    assert!(f.store.check_invariants().unwrap().is_clean());
    mark("b", "team 1");
    {
        let db = f.store.db().unwrap();
        let txn = db.begin_write().unwrap();
        txn.open_table(DEAD_SUB)
            .unwrap()
            .insert("01NOSUCHOP", "alice")
            .unwrap();
        txn.commit().unwrap();
    }
    let r = f.store.check_invariants().unwrap();
    let scope_problems: Vec<String> = r
        .problems
        .iter()
        .filter_map(|p| match p {
            Problem::Scope { table, detail } => Some(format!("{table}: {detail}")),
            _ => None,
        })
        .collect();
    assert_eq!(scope_problems.len(), 2, "{:#?}", r.problems);
    let has = |want: &[&str]| {
        scope_problems
            .iter()
            .any(|p| want.iter().all(|w| p.contains(w)))
    };
    assert!(has(&["dead_letter_sub", "01NOSUCHOP", "no dead letter"]));
    assert!(has(&["records", "c/b", "not a scope name"]));
}

/// A retried dead letter whose record was deleted meanwhile brings the
/// record back, and says so with a `changed` event: watchers and live
/// queries saw it go (the review of issue 22 found it silent).
#[tokio::test]
async fn retry_that_brings_a_record_back_announces_it() {
    let mut f = fx();
    put(&f, "a", json!({"x": 1})).await;
    let (seq, op) = f.store.queue_head(1).unwrap().remove(0);
    f.w.submit(WriteCmd::DeadLetter {
        seq,
        error: "HTTP 403: scope_denied".into(),
    })
    .await
    .unwrap();
    delete(&f, "a").await;
    while let Some((seq, _)) = f.store.queue_head(1).unwrap().first().cloned() {
        f.w.submit(WriteCmd::DropLocal { seq }).await.unwrap();
    }
    assert!(f.store.get("c", "a").unwrap().is_none());
    events_flushed(&f).await;
    while f.events.try_recv().is_ok() {}
    f.w.submit(WriteCmd::RetryDead {
        op_id: op.op_id.clone(),
    })
    .await
    .unwrap();
    events_flushed(&f).await;
    let mut back = Vec::new();
    while let Ok(e) = f.events.try_recv() {
        if let Event::Changed { id, data, .. } = &*e {
            back.push((id.clone(), data.as_ref().map(|d| d.0.clone())));
        }
    }
    assert_eq!(back, vec![("a".to_owned(), Some(json!({"x": 1})))]);
    assert!(f.store.get("c", "a").unwrap().is_some());
}
