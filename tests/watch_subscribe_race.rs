//! A subscriber that arrives while a batch is committing must still get
//! that batch's events: the protocol promises every event of a commit
//! that completes after the `watching` reply (the subscription exists
//! before that reply is sent). The store and the real writer thread on a
//! temp redb; the subscription is the same broadcast channel `watch`
//! subscribes to.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use syncd::domain::{Document, Event};
use syncd::store::writer::{spawn, WriteCmd, WriteOutcome};
use syncd::store::Store;
use tokio::sync::{broadcast, Notify};

fn big_doc(i: usize) -> Document {
    match json!({ "i": i, "pad": "x".repeat(256 * 1024) }) {
        Value::Object(m) => m,
        _ => unreachable!(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_arriving_mid_commit_gets_the_commits_events() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), 4 << 20).unwrap();
    let (tx, first_rx) = broadcast::channel::<Arc<Event>>(4096);
    // Nobody listens while each write starts.
    drop(first_rx);
    let (w, _join) = spawn(store.clone(), tx.clone(), Arc::new(Notify::new())).unwrap();
    let mut checked = 0;
    for i in 0..60usize {
        let id = format!("r{i}");
        let job = {
            let (w, id) = (w.clone(), id.clone());
            tokio::spawn(async move {
                w.submit(WriteCmd::Put {
                    collection: "c".into(),
                    id: Some(id),
                    data: big_doc(i),
                    client_ts: i as i64,
                    scope: None,
                })
                .await
            })
        };
        tokio::time::sleep(Duration::from_micros(fastrand::u64(0..3000))).await;
        let mut rx = tx.subscribe();
        // Not yet committed when the subscription existed: the commit
        // completes after it, so its event is owed.
        let owed = store.get("c", &id).unwrap().is_none();
        let done = job.await.unwrap().unwrap();
        let WriteOutcome::Written { op_id, .. } = done else {
            panic!("{done:?}")
        };
        if !owed {
            continue;
        }
        checked += 1;
        let ev = tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .unwrap_or_else(|_| panic!("write {i}: no event for a commit after subscribing"))
            .unwrap();
        match &*ev {
            Event::Changed {
                id: got,
                op_id: Some(got_op),
                ..
            } => assert_eq!((got, got_op), (&id, &op_id)),
            other => panic!("write {i}: unexpected event {other:?}"),
        }
    }
    assert!(
        checked > 0,
        "no write was caught mid-commit; the test proved nothing"
    );
}
