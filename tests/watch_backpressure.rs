//! A watcher that stops reading never holds writers back: it falls behind,
//! and when it reads again it is told to resync.

mod common;

use syncd::client::Client;
use syncd::ipc::wire::Event;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_watcher_gets_resync_needed_and_writers_go_on() {
    let d = common::Daemon::start("");
    let mut watcher = Client::connect(&d.socket, "slow-watcher").await.unwrap();
    // `watch` returns once the daemon sent its `watching` reply: from then
    // on every change is delivered or counted, so no sleep is needed here.
    watcher.watch(&["flood".to_string()]).await.unwrap();

    // 16 writers, 8,000 writes: more than the socket buffer plus the
    // daemon's event buffer (4,096) can hold for a watcher that reads
    // nothing meanwhile. Every write must still be acknowledged.
    let mut tasks = Vec::new();
    for w in 0..16 {
        let socket = d.socket.clone();
        tasks.push(tokio::spawn(async move {
            let mut c = Client::connect(&socket, "writer").await.unwrap();
            for i in 0..500 {
                c.put(
                    "flood",
                    Some(&format!("w{w}-{i}")),
                    serde_json::json!({"i": i, "pad": "x".repeat(64)}),
                )
                .await
                .unwrap();
            }
        }));
    }
    for t in tasks {
        tokio::time::timeout(std::time::Duration::from_secs(120), t)
            .await
            .expect("writers were held back by a slow watcher")
            .unwrap();
    }
    let status = d.status();
    assert_eq!(status["queue_depth"], 8000);

    // Now the watcher reads: somewhere in its feed is resync_needed.
    let mut missed = None;
    for _ in 0..9000 {
        let ev = tokio::time::timeout(std::time::Duration::from_secs(10), watcher.next_event())
            .await
            .expect("watch feed stalled")
            .unwrap();
        if let Event::ResyncNeeded { missed: n } = ev {
            missed = Some(n);
            break;
        }
    }
    let n = missed.expect("a lagging watcher must get resync_needed");
    assert!(n > 0);

    // The same connection keeps working afterwards.
    let s = watcher.status().await.unwrap();
    assert_eq!(s.queue_depth, 8000);
}
