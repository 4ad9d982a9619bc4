//! The sync worker's timing promises, end to end (issue 30): a `sync` is
//! never forgotten, a push's `Retry-After` or auth error is never cut short
//! by the pulls, every `wait_synced` is answered once its op has left the
//! queue, and a reload that switches to live opens a waiting pull at once.
//!
//! Its own file because each test is one row of the issue's table, run
//! against the real daemon and a scripted server (tests/common_fault) that
//! holds or refuses requests on cue, so the interleaving that used to lose
//! a request happens on purpose, not by luck.

mod common;
mod common_fault;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{eventually, http, Backend, Daemon};
use common_fault::{RefBackend, Reply, Req, Scripted};
use serde_json::{json, Value};
use syncd::backend::protocol::{OpKind, WireOp};
use syncd::backend::server::ops::{Action, Rejection, ValidOp};

fn config(url: &str, sync: &str) -> String {
    format!("[backend]\nurl = {url:?}\ntimeout_ms = 2000\n[sync]\n{sync}\n")
}

fn depth(d: &Daemon) -> u64 {
    d.status()["queue_depth"].as_u64().expect("queue_depth")
}

/// An update of `server_id` made by another device, straight on the
/// scripted server's store.
fn remote_update(mini: &RefBackend, server_id: &str, version: u64, data: Value) {
    let op = WireOp {
        op_id: syncd::ids::IdGen::new().next(),
        client_id: "another-device".into(),
        collection: "todos".into(),
        kind: OpKind::Update,
        id: Some(server_id.to_owned()),
        local_id: server_id.to_owned(),
        base_version: Some(version),
        data: data.as_object().cloned(),
        client_ts: syncd::now_ms(),
        scope: None,
        home: None,
    };
    let req = Req {
        at: Instant::now(),
        method: "POST".into(),
        target: "/v1/ops".into(),
        headers: Vec::new(),
        body: serde_json::to_vec(&op).expect("op as JSON"),
    };
    let r = mini.handle(&req);
    assert_eq!(r.status, 200, "remote update: {}", r.body);
}

/// A pull that arrived and waits for the test's go before its reply
/// (computed on arrival, so it does not carry what the test does meanwhile).
struct HeldPull {
    arrived: mpsc::Receiver<()>,
    release: mpsc::Sender<()>,
}

/// Row 1: against a server without `wait`, a `sync` made while a pull is
/// in flight gets a pull of its own, at once (not a `pull_interval_s`
/// later). The pull that follows each push is held until the remote change
/// is made and `sync` has been answered, 20 rounds.
#[test]
fn a_sync_during_a_pull_brings_the_change_at_once() {
    let mini = Arc::new(Mutex::new(RefBackend::new(true)));
    let hold = Arc::new(AtomicBool::new(false));
    let (arrived_tx, arrived) = mpsc::channel();
    let (release, release_rx) = mpsc::channel::<()>();
    let release_rx = Mutex::new(release_rx);
    let srv = {
        let (mini, hold) = (mini.clone(), hold.clone());
        Scripted::start(Duration::from_secs(300), 100_000, move |req| {
            let reply = mini.lock().unwrap().handle(req);
            if req.route() == "changes" && hold.swap(false, Ordering::SeqCst) {
                let _ = arrived_tx.send(());
                let _ = release_rx.lock().unwrap().recv();
            }
            reply
        })
    };
    let held = HeldPull { arrived, release };
    let d = Daemon::start(&config(&srv.url(), "pull_interval_s = 3600"));
    eventually(10, "online", || d.status()["state"] == json!("online"));
    for round in 0..20 {
        hold.store(true, Ordering::SeqCst);
        let id = format!("r{round}");
        d.ok(&[
            "put",
            "todos",
            "--id",
            &id,
            r#"{"v":0}"#,
            "--wait",
            "synced",
        ]);
        held.arrived
            .recv_timeout(Duration::from_secs(10))
            .expect("the pull after the push");
        let rec = d.json(&["get", "todos", &id]);
        let sid = rec["server_id"].as_str().expect("server id").to_owned();
        remote_update(&mini.lock().unwrap(), &sid, 1, json!({"v": 1}));
        d.ok(&["sync"]);
        held.release.send(()).expect("release");
        eventually(10, &format!("round {round}: the change pulled"), || {
            d.json(&["get", "todos", &id])["data"] == json!({"v": 1})
        });
    }
}

/// A scripted server that refuses every push with `refusal` and answers
/// everything else as the reference backend; returns the times of the
/// refusals.
fn refusing_pushes(refusal: Reply) -> (Scripted, Arc<Mutex<RefBackend>>) {
    let mini = Arc::new(Mutex::new(RefBackend::new(true)));
    let creates = Arc::new(AtomicUsize::new(0));
    let srv = {
        let mini = mini.clone();
        Scripted::start(Duration::from_secs(120), 100_000, move |req| {
            // The first push (the create of `seed_record`) goes through;
            // every later one is refused.
            if req.method == "POST" && creates.fetch_add(1, Ordering::SeqCst) > 0 {
                return refusal.clone();
            }
            mini.lock().unwrap().handle(req)
        })
    };
    (srv, mini)
}

/// A record the server has, then an edit of it queued: the op that meets
/// the refusals is an update. (A refused *create* on a backend without
/// client ids holds pulls back on purpose until it is settled, so that
/// its lost reply cannot come back as another device's record: see
/// `hold_if_create` in src/sync/worker.rs. These tests are about the
/// timing of an ordinary refused push.)
fn seed_record_then_edit(d: &Daemon) {
    d.ok(&[
        "put",
        "todos",
        "--id",
        "x",
        r#"{"v":0}"#,
        "--wait",
        "synced",
        "--timeout",
        "60",
    ]);
    d.ok(&["patch", "todos", "x", r#"{"v":1}"#]);
}

/// The gaps between pushes, and how many pulls came between them.
fn push_gaps(srv: &Scripted) -> Vec<(Duration, usize)> {
    let log = srv.log();
    // The first push was the accepted create: the gaps are between refusals.
    let pushes: Vec<Instant> = log
        .iter()
        .filter(|l| l.req.method == "POST")
        .skip(1)
        .map(|l| l.req.at)
        .collect();
    pushes
        .windows(2)
        .map(|w| {
            let pulls = log
                .iter()
                .filter(|l| l.req.route() == "changes" && l.req.at > w[0] && l.req.at < w[1])
                .count();
            (w[1] - w[0], pulls)
        })
        .collect()
}

/// Row 2: a push refused with `429` and `Retry-After: 3` is not sent again
/// before 3 s, although pulls succeed every second meanwhile; status says
/// `backoff` with the refusal as the reason.
#[test]
fn pulls_do_not_cut_a_push_retry_after_short() {
    let refusal = Reply::json(429, json!({"error": "slow down"})).with_header("Retry-After", "3");
    let (srv, _mini) = refusing_pushes(refusal);
    let d = Daemon::start(&config(
        &srv.url(),
        "pull_interval_s = 1\nbackoff_initial_ms = 50\nbackoff_max_ms = 400",
    ));
    seed_record_then_edit(&d);
    eventually(20, "three refused pushes", || {
        srv.log().iter().filter(|l| l.req.method == "POST").count() >= 4
    });
    let st = d.status();
    assert_eq!(st["state"], json!("backoff"), "{st}");
    assert!(
        st["last_error"].as_str().unwrap_or("").contains("429"),
        "{st}"
    );
    let gaps = push_gaps(&srv);
    assert!(
        gaps.iter().any(|(_, pulls)| *pulls > 0),
        "no pull between two pushes: the test did not test anything {gaps:?}\nserver saw: {:?}\ndaemon log:\n{}",
        srv.log().iter().map(|l| (l.req.method.clone(), l.req.route().to_owned())).collect::<Vec<_>>(),
        d.log_text()
    );
    for (gap, pulls) in gaps {
        assert!(
            gap >= Duration::from_millis(2_950),
            "a push {gap:?} after a 429 asking for 3 s ({pulls} pulls between)"
        );
    }
}

/// Row 2 with `403`: one push per `backoff_max_ms` while pulls succeed,
/// and status stays `auth_error`.
#[test]
fn pulls_do_not_cut_a_push_auth_error_short() {
    let (srv, _mini) = refusing_pushes(Reply::json(403, json!({"error": "forbidden"})));
    let d = Daemon::start(&config(
        &srv.url(),
        "pull_interval_s = 1\nbackoff_initial_ms = 50\nbackoff_max_ms = 2500",
    ));
    seed_record_then_edit(&d);
    eventually(20, "three refused pushes", || {
        srv.log().iter().filter(|l| l.req.method == "POST").count() >= 4
    });
    d.ok(&["sync"]);
    assert_eq!(d.status()["state"], json!("auth_error"));
    let gaps = push_gaps(&srv);
    assert!(
        gaps.iter().any(|(_, pulls)| *pulls > 0),
        "no pull between two pushes {gaps:?}"
    );
    for (gap, pulls) in gaps {
        assert!(
            gap >= Duration::from_millis(2_450),
            "a push {gap:?} after a 403 ({pulls} pulls between)"
        );
    }
}

/// Row 3: `delete --wait synced` of a record the server never had (its
/// create was dead-lettered and discarded) answers `synced` once the
/// delete is done locally, not at the next unrelated commit.
#[test]
fn wait_synced_answers_a_delete_done_locally() {
    let mut m = RefBackend::new(false);
    m.validate = Some(Box::new(|op: &ValidOp| match &op.action {
        Action::Create { .. } => Err(Rejection::unprocessable("no creates today")),
        _ => Ok(()),
    }));
    let mini = Arc::new(Mutex::new(m));
    let srv = {
        let mini = mini.clone();
        Scripted::start(Duration::from_secs(60), 10_000, move |req| {
            mini.lock().unwrap().handle(req)
        })
    };
    let d = Daemon::start(&config(&srv.url(), "backoff_initial_ms = 50"));
    d.ok(&["put", "todos", "--id", "x", r#"{"v":0}"#]);
    eventually(10, "dead-lettered", || {
        !d.json_lines(&["dead-letters", "--json"]).is_empty()
    });
    let dead = d.json_lines(&["dead-letters", "--json"]);
    let op_id = dead[0]["op_id"].as_str().expect("op_id").to_owned();
    d.ok(&["discard", &op_id]);
    // The waiter starts while the delete is queued (paused), so that it is
    // waiting when the delete leaves the queue.
    d.ok(&["pause"]);
    let socket = d.socket.clone();
    let (op_tx, op_rx) = mpsc::channel();
    let (answer_tx, answer_rx) = mpsc::channel();
    // Detached: should the answer never come, the test fails on its
    // deadline instead of hanging on the thread.
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async {
            let mut c = syncd::client::Client::connect(&socket, "waiter")
                .await
                .expect("connect");
            let (_, op_id) = c.delete("todos", "x").await.expect("delete");
            op_tx.send(()).expect("tell the test");
            let _ = answer_tx.send(format!("{:?}", c.wait_synced(&op_id).await));
        })
    });
    op_rx
        .recv_timeout(Duration::from_secs(10))
        .expect("the delete was written");
    assert_eq!(depth(&d), 1, "the delete waits while paused");
    d.ok(&["resume"]);
    let answer = answer_rx
        .recv_timeout(Duration::from_secs(10))
        .expect("wait_synced answered once the delete left the queue");
    assert!(answer.contains("Synced"), "{answer}");
    assert_eq!(depth(&d), 0);
}

/// Row 4: a reload from `live = false` to `live = true` opens a waiting
/// pull at once: a change made on the server right after shows up within
/// seconds, with `pull_interval_s` an hour.
#[test]
fn reload_to_live_opens_a_waiting_pull_at_once() {
    let b = Backend::start(&[]);
    let polling = "pull_interval_s = 3600\nlive = false";
    let d = Daemon::start(&config(&b.url(), polling));
    eventually(10, "online and pulled", || {
        let st = d.status();
        st["state"] == json!("online") && st["last_pull_at"].is_i64()
    });
    assert_eq!(d.status()["remote_changes"], json!("polling every 3600s"));
    d.write_config(&config(&b.url(), "pull_interval_s = 3600\nlive = true"));
    eventually(10, "live", || d.status()["remote_changes"] == json!("live"));
    let op = json!({
        "op_id": syncd::ids::IdGen::new().next(),
        "client_id": "another-device",
        "collection": "todos",
        "kind": "create",
        "local_id": "from-b",
        "data": {"title": "from b"},
        "client_ts": 1,
    });
    let (st, body) = http(&b.addr, "POST", "/v1/ops", Some(&op.to_string()));
    assert_eq!(st, 200, "{body}");
    eventually(10, "the change arrived", || {
        d.json_lines(&["list", "todos"]).len() == 1
    });
}
