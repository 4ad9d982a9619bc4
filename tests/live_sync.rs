//! Live sync between devices (backend protocol revision 2): two daemons on
//! one backend, a change on one showing up on the other's `watch` at once
//! through the waiting pull, client-chosen ids that are the same on every
//! device, and what happens with servers that announce fewer features (a
//! revision-1 server is polled; one that ignores `wait` is not hammered).
//!
//! Speed is the benchmark's business: the bounds here only catch hangs, and
//! the measured latency is printed.

mod common;
mod common_fault;

use std::io::BufRead;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{channel, Receiver};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{bin, eventually, Backend, Daemon};
use common_fault::{RefBackend, Reply, Scripted};
use serde_json::{json, Value};

/// A device on `url` with default sync settings but quick backoff.
fn device(url: &str, sync: &str) -> Daemon {
    Daemon::start(&format!(
        "[backend]\nurl = {url:?}\ntimeout_ms = 3000\n[sync]\nbackoff_initial_ms = 50\nbackoff_max_ms = 500\n{sync}"
    ))
}

fn put(d: &Daemon, coll: &str, id: Option<&str>, doc: &Value) -> String {
    let text = doc.to_string();
    let mut args = vec!["put", coll];
    if let Some(id) = id {
        args.extend(["--id", id]);
    }
    args.push(&text);
    d.ok(&args).trim().to_owned()
}

fn get(d: &Daemon, coll: &str, id: &str) -> Option<Value> {
    let o = d.cli(&["get", coll, id]);
    if !o.status.success() {
        return None;
    }
    serde_json::from_slice(&o.stdout).ok()
}

fn wait_remote_changes(d: &Daemon, how: &str) {
    eventually(15, &format!("remote_changes = {how}"), || {
        let st = d.status();
        st["state"] == json!("online") && st["remote_changes"] == json!(how)
    });
}

/// `syncd watch COLLECTION` on a device, its lines on a channel.
struct Watch {
    child: Child,
    lines: Receiver<Value>,
}

impl Watch {
    fn start(d: &Daemon, coll: &str) -> Watch {
        let mut child = Command::new(bin())
            .arg("--socket")
            .arg(&d.socket)
            .args(["watch", coll])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn watch");
        let out = child.stdout.take().expect("stdout");
        let (tx, lines) = channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                let v: Value = serde_json::from_str(&line).unwrap_or(Value::Null);
                if tx.send(v).is_err() {
                    break;
                }
            }
        });
        // The subscription is in place once the watch process is connected:
        // give it a moment (a missed event would only make the test fail).
        std::thread::sleep(Duration::from_millis(300));
        Watch { child, lines }
    }

    /// The next `changed` event whose data satisfies `pred`, within `secs`.
    fn changed(&self, secs: u64, pred: impl Fn(&Value) -> bool) -> Option<Value> {
        let deadline = Instant::now() + Duration::from_secs(secs);
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            let Ok(ev) = self.lines.recv_timeout(left) else {
                return None;
            };
            let ch = ev
                .get("changed")
                .or_else(|| ev.get("event").and_then(|e| e.get("changed")));
            if let Some(ch) = ch {
                if pred(ch) {
                    return Some(ch.clone());
                }
            }
        }
        None
    }

    /// Every `changed` event that arrives within `ms`.
    fn drain_changed(&self, ms: u64) -> Vec<Value> {
        let deadline = Instant::now() + Duration::from_millis(ms);
        let mut out = Vec::new();
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match self.lines.recv_timeout(left) {
                Ok(ev) => {
                    if let Some(ch) = ev
                        .get("changed")
                        .or_else(|| ev.get("event").and_then(|e| e.get("changed")))
                    {
                        out.push(ch.clone());
                    }
                }
                Err(_) => break,
            }
        }
        out
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn a_write_on_a_shows_up_on_b_watch_at_once() {
    let backend = Backend::start(&[]);
    let a = device(&backend.url(), "");
    let b = device(&backend.url(), "");
    wait_remote_changes(&a, "live");
    wait_remote_changes(&b, "live");
    let w = Watch::start(&b, "todos");
    let mut lat = Vec::new();
    for n in 0..20 {
        let t0 = Instant::now();
        put(&a, "todos", None, &json!({"n": n}));
        let ev = w
            .changed(5, |c| c["data"]["n"] == json!(n))
            .unwrap_or_else(|| panic!("B saw no change for write {n} within 5 s"));
        assert_eq!(ev["origin"], json!("remote"), "{ev}");
        lat.push(t0.elapsed());
    }
    lat.sort();
    println!(
        "A put -> B changed (incl. the CLI's process start): median {:?}, max {:?}",
        lat[lat.len() / 2],
        lat[lat.len() - 1]
    );
    // A's own writes coming back through the feed change nothing on A.
    let st = b.status();
    assert!(st["last_pull_at"].as_i64().is_some(), "{st}");
}

#[test]
fn own_changes_coming_back_emit_nothing() {
    let backend = Backend::start(&[]);
    let a = device(&backend.url(), "");
    wait_remote_changes(&a, "live");
    let w = Watch::start(&a, "todos");
    for n in 0..20 {
        put(&a, "todos", Some(&format!("r{n}")), &json!({"n": n}));
    }
    a.ok(&["sync", "--wait"]);
    // Let the live pull bring every one of them back (racing the acks).
    std::thread::sleep(Duration::from_millis(800));
    let evs = w.drain_changed(500);
    let foreign: Vec<&Value> = evs
        .iter()
        .filter(|e| e["origin"] != json!("local"))
        .collect();
    assert!(
        foreign.is_empty(),
        "own writes came back as events: {foreign:?}"
    );
    assert_eq!(evs.len(), 20, "one local event a write: {evs:?}");
}

#[test]
fn a_busy_writer_still_receives_the_other_devices_changes() {
    let backend = Backend::start(&[]);
    let a = device(&backend.url(), "");
    let b = device(&backend.url(), "");
    wait_remote_changes(&a, "live");
    wait_remote_changes(&b, "live");
    let stop = Arc::new(AtomicBool::new(false));
    let socket = a.socket.clone();
    let writer = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut n = 0u64;
            while !stop.load(Ordering::SeqCst) {
                let _ = Command::new(bin())
                    .arg("--socket")
                    .arg(&socket)
                    .args(["put", "log", &json!({"n": n}).to_string()])
                    .output();
                n += 1;
            }
            n
        })
    };
    std::thread::sleep(Duration::from_millis(300));
    let w = Watch::start(&a, "todos");
    let t0 = Instant::now();
    put(&b, "todos", Some("from-b"), &json!({"from": "b"}));
    let got = w.changed(5, |c| c["id"] == json!("from-b"));
    let waited = t0.elapsed();
    stop.store(true, Ordering::SeqCst);
    let writes = writer.join().unwrap_or(0);
    assert!(got.is_some(), "A, writing all along, never got B's change");
    println!("B's change reached busy A in {waited:?} ({writes} writes on A meanwhile)");
}

#[test]
fn after_an_outage_b_pulls_right_after_reconnecting() {
    let mut backend = Backend::start(&[]);
    let a = device(&backend.url(), "");
    let b = device(&backend.url(), "");
    wait_remote_changes(&a, "live");
    wait_remote_changes(&b, "live");
    backend.stop();
    eventually(15, "B offline", || b.status()["state"] == json!("offline"));
    put(&a, "todos", Some("while-down"), &json!({"t": 1}));
    backend.restart();
    // pull_interval_s is 60: only the pull after the reconnect brings it.
    let t0 = Instant::now();
    eventually(10, "B has A's change after the outage", || {
        get(&b, "todos", "while-down").is_some()
    });
    println!(
        "B had A's change {:?} after the backend returned",
        t0.elapsed()
    );
}

#[test]
fn an_id_chosen_on_a_is_the_id_on_b() {
    let backend = Backend::start(&[]);
    let a = device(&backend.url(), "");
    let b = device(&backend.url(), "");
    wait_remote_changes(&b, "live");
    put(&a, "todos", Some("milk"), &json!({"title": "buy milk"}));
    eventually(10, "get todos milk on B", || {
        get(&b, "todos", "milk").is_some_and(|r| r["data"]["title"] == json!("buy milk"))
    });
    let rb = get(&b, "todos", "milk").unwrap_or_default();
    assert_eq!(rb["server_id"], json!("milk"), "{rb}");
    let recs = backend.records();
    assert!(
        recs.contains_key(&("todos".to_owned(), "milk".to_owned())),
        "{recs:?}"
    );
}

// ---------------------------------------------------------------------------
// Servers with fewer features, scripted around the reference backend's rules.
// ---------------------------------------------------------------------------

/// A scripted server over the reference backend's store and rules that
/// announces `features` (and answers every pull at once, whatever `wait`).
fn scripted(features: &'static [&'static str]) -> (Scripted, Arc<Mutex<RefBackend>>) {
    let mini = Arc::new(Mutex::new(RefBackend::new(true)));
    let srv = {
        let mini = mini.clone();
        Scripted::start(Duration::from_secs(120), 100_000, move |req| {
            if req.route() == "health" {
                return Reply::json(200, json!({"ok": true, "features": features}));
            }
            mini.lock().unwrap_or_else(|p| p.into_inner()).handle(req)
        })
    };
    (srv, mini)
}

fn count(srv: &Scripted, route: &str) -> usize {
    srv.log().iter().filter(|l| l.req.route() == route).count()
}

#[test]
fn a_revision_1_server_is_polled_and_ids_are_mapped() {
    // RefBackend announces neither wait nor client_ids.
    let mini = Arc::new(Mutex::new(RefBackend::new(true)));
    let srv = {
        let mini = mini.clone();
        Scripted::start(Duration::from_secs(120), 100_000, move |req| {
            mini.lock().unwrap_or_else(|p| p.into_inner()).handle(req)
        })
    };
    let a = device(&srv.url(), "pull_interval_s = 1");
    let b = device(&srv.url(), "pull_interval_s = 1");
    wait_remote_changes(&a, "polling every 1s");
    wait_remote_changes(&b, "polling every 1s");
    put(&a, "todos", Some("milk"), &json!({"title": "buy milk"}));
    eventually(10, "B polled A's record", || {
        b.json_lines(&["list", "todos"])
            .iter()
            .any(|r| r["data"]["title"] == json!("buy milk"))
    });
    let ra = get(&a, "todos", "milk").unwrap_or_default();
    let sid = ra["server_id"].as_str().unwrap_or_default().to_owned();
    assert!(!sid.is_empty() && sid != "milk", "server-assigned id: {ra}");
    for l in srv.log() {
        assert!(
            !l.req.target.contains("wait="),
            "wait sent to a rev-1 server: {}",
            l.req.target
        );
        if l.req.route() == "ops" || l.req.route() == "batch" {
            assert!(!l.req.body.is_empty());
        }
    }
    // Idle: about one pull a second per device, no spinning.
    let before = count(&srv, "changes");
    std::thread::sleep(Duration::from_secs(3));
    let pulls = count(&srv, "changes") - before;
    assert!(
        pulls <= 10,
        "{pulls} pulls in 3 s from two devices polling every 1 s"
    );
}

#[test]
fn a_server_that_ignores_wait_is_not_hammered() {
    let (srv, _mini) = scripted(&["batch", "wait", "client_ids"]);
    let d = device(&srv.url(), "pull_interval_s = 2");
    eventually(10, "online", || d.status()["state"] == json!("online"));
    std::thread::sleep(Duration::from_millis(500));
    let before = count(&srv, "changes");
    std::thread::sleep(Duration::from_secs(4));
    let pulls = count(&srv, "changes") - before;
    assert!(
        (1..=4).contains(&pulls),
        "{pulls} pulls in 4 s with pull_interval_s = 2"
    );
    assert!(srv
        .log()
        .iter()
        .any(|l| l.req.route() == "changes" && l.req.target.contains("wait=")));
}

#[test]
fn an_idle_live_daemon_holds_one_pull_per_wait_period() {
    let backend = Backend::start(&[]);
    let d = device(&backend.url(), "wait_s = 2");
    wait_remote_changes(&d, "live");
    let mut seen = std::collections::BTreeSet::new();
    let until = Instant::now() + Duration::from_secs(5);
    while Instant::now() < until {
        if let Some(t) = d.status()["last_pull_at"].as_i64() {
            seen.insert(t);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    // Held 2 s each: about 3 pulls end in 5 s; a spinning daemon, hundreds.
    assert!(
        seen.len() <= 4,
        "{} pulls ended in 5 s with wait_s = 2",
        seen.len()
    );
}

// ---------------------------------------------------------------------------
// Client-chosen ids meeting on the server.
// ---------------------------------------------------------------------------

/// Two devices on a server announcing `client_ids`, both creating
/// `todos/milk` offline (A first, then B); A syncs first.
fn same_id_offline(strategy: &str) -> (Scripted, Arc<Mutex<RefBackend>>, Daemon, Daemon) {
    let (srv, mini) = scripted(&["batch", "client_ids"]);
    let sync = format!("pull_interval_s = 1\nconflict = {strategy:?}");
    let a = device(&srv.url(), &sync);
    let b = device(&srv.url(), &sync);
    for d in [&a, &b] {
        d.ok(&["pause"]);
    }
    put(&a, "todos", Some("milk"), &json!({"title": "A", "a": 1}));
    std::thread::sleep(Duration::from_millis(20));
    put(&b, "todos", Some("milk"), &json!({"title": "B", "b": 2}));
    a.ok(&["resume"]);
    a.ok(&["sync", "--wait"]);
    b.ok(&["resume"]);
    b.ok(&["sync", "--wait"]);
    (srv, mini, a, b)
}

fn server_milk(mini: &Arc<Mutex<RefBackend>>) -> Value {
    let recs = mini.lock().unwrap_or_else(|p| p.into_inner()).records();
    recs.get("milk").map(|(_, r)| r.clone()).unwrap_or_default()
}

fn converge(a: &Daemon, b: &Daemon, mini: &Arc<Mutex<RefBackend>>, want: &Value) {
    eventually(
        10,
        &format!("both devices and the server hold {want}"),
        || {
            let srv = server_milk(mini);
            [a, b]
                .iter()
                .all(|d| get(d, "todos", "milk").is_some_and(|r| &r["data"] == want))
                && &srv["data"] == want
        },
    );
}

#[test]
fn same_id_server_wins() {
    let (_srv, mini, a, b) = same_id_offline("server-wins");
    converge(&a, &b, &mini, &json!({"title": "A", "a": 1}));
}

#[test]
fn same_id_last_write_wins() {
    let (_srv, mini, a, b) = same_id_offline("last-write-wins");
    converge(&a, &b, &mini, &json!({"title": "B", "b": 2}));
    assert_eq!(server_milk(&mini)["version"], json!(2));
}

#[test]
fn same_id_merge() {
    let (_srv, mini, a, b) = same_id_offline("merge");
    converge(&a, &b, &mini, &json!({"title": "B", "a": 1, "b": 2}));
}

#[test]
fn same_id_manual() {
    let (_srv, mini, a, b) = same_id_offline("manual");
    eventually(10, "a parked conflict on B", || {
        b.status()["conflicts"] == json!(1)
    });
    b.ok(&["resolve", "todos", "milk", "--take", "local"]);
    b.ok(&["sync", "--wait"]);
    converge(&a, &b, &mini, &json!({"title": "B", "b": 2}));
}

/// A on a server with client ids creates `todos/milk` and deletes it; B,
/// offline all along, created `todos/milk` later: its create meets the
/// tombstone. Returns the devices (A, B) on the server, and the number of op
/// requests B sent to settle it.
fn recreate_over_tombstone(strategy: &str, refuse_revival: bool) -> Tombstoned {
    let mini = Arc::new(Mutex::new(RefBackend::new(false)));
    let ops = Arc::new(AtomicUsize::new(0));
    let srv = {
        let (mini, ops) = (mini.clone(), ops.clone());
        Scripted::start(Duration::from_secs(120), 100_000, move |req| {
            if req.route() == "health" {
                return Reply::json(200, json!({"ok": true, "features": ["client_ids"]}));
            }
            let m = mini.lock().unwrap_or_else(|p| p.into_inner());
            if req.route() == "ops" {
                ops.fetch_add(1, Ordering::SeqCst);
                let op = req.json();
                let cur = m
                    .records()
                    .get(op["id"].as_str().unwrap_or_default())
                    .cloned();
                if let Some((_, rec)) = cur {
                    // A server that never lets a deleted id come back.
                    if refuse_revival
                        && op["kind"] == json!("update")
                        && rec["deleted"] == json!(true)
                    {
                        return Reply::json(409, json!({"error": "conflict", "record": rec}));
                    }
                }
            }
            m.handle(req)
        })
    };
    let sync = format!("pull_interval_s = 1\nconflict = {strategy:?}");
    let a = device(&srv.url(), &sync);
    let b = device(&srv.url(), &sync);
    b.ok(&["pause"]);
    put(&a, "todos", Some("milk"), &json!({"title": "A"}));
    a.ok(&["sync", "--wait"]);
    a.ok(&["delete", "todos", "milk"]);
    a.ok(&["sync", "--wait"]);
    assert_eq!(server_milk(&mini)["deleted"], json!(true));
    put(&b, "todos", Some("milk"), &json!({"title": "B again"}));
    let before = ops.load(Ordering::SeqCst);
    b.ok(&["resume"]);
    b.ok(&["sync", "--wait"]);
    std::thread::sleep(Duration::from_millis(500));
    let sent = ops.load(Ordering::SeqCst) - before;
    Tombstoned {
        _srv: srv,
        mini,
        a,
        b,
        sent,
    }
}

struct Tombstoned {
    _srv: Scripted,
    mini: Arc<Mutex<RefBackend>>,
    a: Daemon,
    b: Daemon,
    sent: usize,
}

#[test]
fn recreate_over_a_tombstone_is_an_update_of_it_and_never_loops() {
    for strategy in ["last-write-wins", "merge"] {
        let t = recreate_over_tombstone(strategy, false);
        let n = t.sent;
        assert!(n <= 3, "{strategy}: {n} op requests for one re-create");
        converge(&t.a, &t.b, &t.mini, &json!({"title": "B again"}));
        let srv = server_milk(&t.mini);
        assert_eq!(
            (srv["version"].clone(), srv["deleted"].clone()),
            (json!(3), json!(false)),
            "{strategy}: {srv}"
        );
    }
}

#[test]
fn recreate_over_a_tombstone_server_wins_takes_the_delete() {
    let t = recreate_over_tombstone("server-wins", false);
    assert!(t.sent <= 2, "{} op requests", t.sent);
    eventually(10, "B took the tombstone", || {
        get(&t.b, "todos", "milk").is_none()
    });
    assert_eq!(server_milk(&t.mini)["deleted"], json!(true));
}

#[test]
fn a_server_that_refuses_revival_dead_letters_instead_of_looping() {
    let t = recreate_over_tombstone("last-write-wins", true);
    assert!(t.sent <= 3, "{} op requests: a loop", t.sent);
    let dead = t.b.json_lines(&["dead-letters", "--json"]);
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert!(dead[0].to_string().contains("tombstone"), "{dead:?}");
    assert_eq!(server_milk(&t.mini)["deleted"], json!(true));
    // Nothing more is sent for it later either.
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(t.b.status()["queue_depth"], json!(0));
}

#[test]
fn a_failing_pull_backs_off_and_recovers() {
    // Announces `wait` but answers every pull 503 until allowed.
    let mini = Arc::new(Mutex::new(RefBackend::new(true)));
    let allow = Arc::new(AtomicBool::new(false));
    let srv = {
        let (mini, allow) = (mini.clone(), allow.clone());
        Scripted::start(Duration::from_secs(120), 100_000, move |req| {
            match req.route() {
                "health" => Reply::json(200, json!({"ok": true, "features": ["wait"]})),
                "changes" if !allow.load(Ordering::SeqCst) => {
                    Reply::json(503, json!({"error": "feed down"}))
                }
                _ => mini.lock().unwrap_or_else(|p| p.into_inner()).handle(req),
            }
        })
    };
    let d = device(&srv.url(), "");
    eventually(10, "backoff after failed pulls", || {
        d.status()["state"] == json!("backoff")
    });
    let before = count(&srv, "changes");
    std::thread::sleep(Duration::from_secs(2));
    let pulls = count(&srv, "changes") - before;
    // backoff_initial_ms = 50, max 500: at most a few a second, not a spin.
    assert!(pulls <= 25, "{pulls} failed pulls in 2 s");
    assert!(d.status()["last_error"].to_string().contains("503"));
    allow.store(true, Ordering::SeqCst);
    eventually(10, "online again, pulling", || {
        let st = d.status();
        st["state"] == json!("online") && st["last_pull_at"].as_i64().is_some()
    });
}
