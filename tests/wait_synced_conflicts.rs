//! `wait_synced` of a local change that lost a conflict answers `conflict`
//! (protocol §14), whether the client was already waiting when the
//! conflict was settled or asks afterwards: under server-wins, under a
//! last-write-wins the server's newer change won, and after a manual
//! `resolve --take server`. Two real daemons and the reference backend.

mod common;

use std::time::Duration;

use common::{eventually, Backend, Daemon};
use serde_json::{json, Value};
use syncd::client::{Client, ClientError};
use syncd::ipc::wire::{ErrorCode, Response};

fn device(backend: &Backend, tables: &str) -> Daemon {
    Daemon::start(&format!(
        "[backend]\nurl = {:?}\n[sync]\npull_interval_s = 1\nbackoff_initial_ms = 100\nbackoff_max_ms = 1000\n{tables}",
        backend.url()
    ))
}

fn set_paused(d: &Daemon, paused: bool) {
    d.ok(&[if paused { "pause" } else { "resume" }]);
    eventually(10, "pause state", || {
        (d.status()["state"] == json!("paused")) == paused
    });
}

/// A record made on A and pulled by B; returns (id on A, id on B).
fn shared_record(a: &Daemon, b: &Daemon) -> (String, String) {
    let la = a.ok(&["put", "todos", r#"{"v":"base"}"#]).trim().to_owned();
    a.ok(&["sync", "--wait"]);
    let sid = a.json(&["get", "todos", &la])["server_id"]
        .as_str()
        .expect("server id")
        .to_owned();
    eventually(10, "B pulls the record", || {
        b.ok(&["sync", "--wait"]);
        b.cli(&["get", "todos", &sid]).status.success()
    });
    (la, sid)
}

async fn patch(d: &Daemon, id: &str, v: Value) -> String {
    let mut c = Client::connect(&d.socket, "t").await.expect("connect");
    c.patch("todos", id, v).await.expect("patch").1
}

fn expect_conflict(r: Result<Response, ClientError>, what: &str) {
    match r {
        Err(ClientError::Api(e)) if e.code == ErrorCode::Conflict => {}
        other => panic!("{what}: expected a conflict error, got {other:?}"),
    }
}

async fn wait_synced(d: &Daemon, op_id: &str) -> Result<Response, ClientError> {
    let mut c = Client::connect(&d.socket, "waiter").await.expect("connect");
    tokio::time::timeout(Duration::from_secs(20), c.wait_synced(op_id))
        .await
        .expect("wait_synced did not answer")
}

/// B's change `op` loses once B syncs: a waiter started before that and
/// one started after both get `conflict`.
async fn lost_on_resume(b: &Daemon, op: &str) {
    let waiting = {
        let (socket, op) = (b.socket.clone(), op.to_owned());
        tokio::spawn(async move {
            let mut c = Client::connect(&socket, "waiter").await.expect("connect");
            // Sent before the resume: the wait is under way.
            c.status().await.expect("status");
            tokio::time::timeout(Duration::from_secs(20), c.wait_synced(&op))
                .await
                .expect("wait_synced did not answer")
        })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    set_paused(b, false);
    b.ok(&["sync", "--wait"]);
    expect_conflict(waiting.await.expect("task"), "waiting");
    expect_conflict(wait_synced(b, op).await, "asked afterwards");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_wins_loss_answers_conflict() {
    let backend = Backend::start(&[]);
    let a = device(&backend, "[collections.todos]\nconflict = \"server-wins\"");
    let b = device(&backend, "[collections.todos]\nconflict = \"server-wins\"");
    let (la, lb) = shared_record(&a, &b);
    set_paused(&b, true);
    let op = patch(&b, &lb, json!({"v": "from b"})).await;
    patch(&a, &la, json!({"v": "from a"})).await;
    a.ok(&["sync", "--wait"]);
    lost_on_resume(&b, &op).await;
    assert_eq!(
        b.json(&["get", "todos", &lb])["data"],
        json!({"v": "from a"})
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_last_write_wins_answers_conflict() {
    let backend = Backend::start(&[]);
    let lww = "[collections.todos]\nconflict = \"last-write-wins\"";
    let (a, b) = (device(&backend, lww), device(&backend, lww));
    let (la, lb) = shared_record(&a, &b);
    set_paused(&b, true);
    // B writes first, so A's later write is the last one.
    let op = patch(&b, &lb, json!({"v": "older, from b"})).await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    patch(&a, &la, json!({"v": "newer, from a"})).await;
    a.ok(&["sync", "--wait"]);
    lost_on_resume(&b, &op).await;
    assert_eq!(
        b.json(&["get", "todos", &lb])["data"],
        json!({"v": "newer, from a"})
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resolve_take_server_answers_conflict() {
    let backend = Backend::start(&[]);
    let manual = "[collections.todos]\nconflict = \"manual\"";
    let (a, b) = (device(&backend, manual), device(&backend, manual));
    let (la, lb) = shared_record(&a, &b);
    set_paused(&b, true);
    let op = patch(&b, &lb, json!({"v": "from b"})).await;
    patch(&a, &la, json!({"v": "from a"})).await;
    a.ok(&["sync", "--wait"]);
    set_paused(&b, false);
    b.ok(&["sync", "--wait"]);
    eventually(10, "B's change parked", || {
        b.json(&["conflicts", "--json"]).as_array().map(Vec::len) == Some(1)
    });
    let waiting = {
        let (socket, op) = (b.socket.clone(), op.clone());
        tokio::spawn(async move {
            let mut c = Client::connect(&socket, "waiter").await.expect("connect");
            tokio::time::timeout(Duration::from_secs(20), c.wait_synced(&op))
                .await
                .expect("wait_synced did not answer")
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!waiting.is_finished(), "a parked change is not settled yet");
    b.ok(&["resolve", "todos", &lb, "--take", "server"]);
    expect_conflict(waiting.await.expect("task"), "waiting");
    expect_conflict(wait_synced(&b, &op).await, "asked afterwards");
}

/// A resolution that keeps the local change still answers `synced`, once
/// the re-sent change is on the server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resolve_take_local_answers_synced() {
    let backend = Backend::start(&[]);
    let manual = "[collections.todos]\nconflict = \"manual\"";
    let (a, b) = (device(&backend, manual), device(&backend, manual));
    let (la, lb) = shared_record(&a, &b);
    set_paused(&b, true);
    let op = patch(&b, &lb, json!({"v": "from b"})).await;
    patch(&a, &la, json!({"v": "from a"})).await;
    a.ok(&["sync", "--wait"]);
    set_paused(&b, false);
    b.ok(&["sync", "--wait"]);
    eventually(10, "B's change parked", || {
        b.json(&["conflicts", "--json"]).as_array().map(Vec::len) == Some(1)
    });
    b.ok(&["resolve", "todos", &lb, "--take", "local"]);
    match wait_synced(&b, &op).await {
        Ok(Response::Synced { op_id, .. }) => assert_eq!(op_id, op),
        other => panic!("expected synced, got {other:?}"),
    }
    eventually(10, "the server has B's change", || {
        a.ok(&["sync", "--wait"]);
        a.json(&["get", "todos", &la])["data"] == json!({"v": "from b"})
    });
}
