//! Operability of `syncd status`: each non-normal state comes with a hint
//! saying what is happening and what to do, `status --check` exits with the
//! documented code for each kind of trouble, and status reports where the
//! daemon runs (config, reload error, socket, data_dir, pid, uptime,
//! pending per collection). Real daemons, real servers on loopback.

mod common;
mod common_fault;

use std::net::TcpListener;
use std::time::{Duration, Instant};

use common::{bin, eventually, path_str, Backend, Daemon};
use common_fault::{RefBackend, Reply, Scripted};
use serde_json::{json, Value};
use syncd::backend::server::ops::Rejection;

/// `status --check`: (exit code, stdout + stderr).
fn check(d: &Daemon) -> (i32, String) {
    let o = d.cli(&["status", "--check"]);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    (o.status.code().unwrap_or(-1), text)
}

fn state(d: &Daemon) -> String {
    d.status()["state"].as_str().unwrap_or_default().to_owned()
}

fn hint(st: &Value) -> String {
    st["hint"].as_str().unwrap_or_default().to_owned()
}

fn fast(url: &str, extra: &str) -> String {
    format!(
        "[backend]\nurl = {url:?}\ntimeout_ms = 2000\n{extra}\n[sync]\nbackoff_initial_ms = 50\nbackoff_max_ms = 400\n"
    )
}

#[test]
fn no_backend_is_healthy_and_reports_where_it_runs() {
    let d = Daemon::start("");
    d.ok(&["put", "todos", "{}"]);
    d.ok(&["put", "todos", "{}"]);
    d.ok(&["put", "notes", "{}"]);
    let (code, out) = check(&d);
    assert_eq!(code, 0, "{out}");
    assert!(out.starts_with("ok: offline"), "{out}");
    let st = d.status();
    assert!(hint(&st).contains("no backend configured"), "{st}");
    assert_eq!(st["pending_by_collection"], json!({"todos": 2, "notes": 1}));
    assert_eq!(st["pending_by_collection_complete"], json!(true));
    assert_eq!(st["socket"], json!(path_str(&d.socket)));
    assert_eq!(st["data_dir"], json!(path_str(&d.data_dir)));
    assert_eq!(st["config_path"], json!(path_str(&d.config)));
    assert_eq!(st["config_reload_error"], Value::Null);
    assert_eq!(st["pid"], json!(d.pid()));
    assert!(st["uptime_s"].as_u64().is_some(), "{st}");
    let human = d.ok(&["status"]);
    for want in [
        "hint:",
        "queue:          3 ops (notes 1, todos 2)",
        "pid:",
        "uptime:",
    ] {
        assert!(human.contains(want), "{want:?} missing in\n{human}");
    }
}

#[test]
fn offline_hint_counts_writes_and_names_the_real_retry() {
    let d = Daemon::start(&fast("http://127.0.0.1:9/", ""));
    d.ok(&["put", "todos", "{}"]);
    d.ok(&["put", "todos", "{}"]);
    eventually(10, "offline with an error", || {
        let st = d.status();
        st["state"] == json!("offline") && st["last_error"].is_string()
    });
    let st = d.status();
    let h = hint(&st);
    assert!(h.contains("2 write(s) are safe on disk"), "{st}");
    assert!(
        h.contains("retrying in ") || h.contains("retrying now"),
        "{st}"
    );
    let (code, out) = check(&d);
    assert_eq!(code, 10, "{out}");
    assert!(out.contains("safe on disk"), "{out}");
}

/// A backend that accepts connections and never answers: each attempt
/// lasts the whole timeout. Status must never show a retry time that has
/// already passed (it showed "next retry in 0s" for the whole attempt).
/// Polls until it has seen a retry time (a backoff) and, after it, a status
/// without one (the attempt that backoff led to, under way); the deadline
/// only detects a hang.
#[test]
fn next_retry_is_never_in_the_past_during_slow_attempts() {
    let hole = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/", hole.local_addr().unwrap());
    let d = Daemon::start(&format!(
        "[backend]\nurl = {url:?}\ntimeout_ms = 1500\n[sync]\nbackoff_initial_ms = 50\nbackoff_max_ms = 400\n"
    ));
    d.ok(&["put", "todos", "{}"]);
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut seen_future = false;
    let mut seen_attempt_after = false;
    while !(seen_future && seen_attempt_after) {
        assert!(
            Instant::now() < deadline,
            "no retry time followed by an attempt within 120 s \
             (saw a retry time: {seen_future}); log:\n{}",
            d.log_text()
        );
        // Taken before asking: the daemon's "now" is at least this.
        let before = syncd::now_ms();
        let st = d.status();
        match st["next_retry_at"].as_i64() {
            Some(at) => {
                assert!(
                    at > before,
                    "next retry {} ms in the past: {st}",
                    before - at
                );
                seen_future = true;
            }
            None if seen_future => seen_attempt_after = true,
            None => {}
        }
        let human = d.ok(&["status"]);
        assert!(!human.contains("next retry in:  0s"), "{human}");
        std::thread::sleep(Duration::from_millis(20));
    }
    drop(hole);
}

#[test]
fn auth_error_names_the_token_file() {
    let b = Backend::start(&["--token", "good"]);
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "bad\n").unwrap();
    let d = Daemon::start(&fast(
        &b.url(),
        &format!("token_file = {:?}", path_str(&token)),
    ));
    d.ok(&["put", "todos", "{}"]);
    eventually(10, "auth_error", || state(&d) == "auth_error");
    let st = d.status();
    assert!(hint(&st).contains(&path_str(&token)), "{st}");
    let (code, out) = check(&d);
    assert_eq!(code, 12, "{out}");
}

#[test]
fn backend_error_names_the_url_without_credentials() {
    let srv = Scripted::start(Duration::from_secs(60), 5000, |_| Reply {
        status: 200,
        headers: vec![("content-type".into(), "text/html".into())],
        body: "<html>login</html>".into(),
    });
    let url = format!("http://bob:s3cret@{}/", srv.addr);
    let d = Daemon::start(&fast(&url, ""));
    d.ok(&["put", "todos", "{}"]);
    eventually(15, "backend_error", || state(&d) == "backend_error");
    let st = d.status();
    let h = hint(&st);
    assert!(h.contains("check [backend] url"), "{st}");
    assert!(h.contains(&format!("http://***@{}/", srv.addr)), "{st}");
    assert!(!h.contains("s3cret"), "{st}");
    let human = d.ok(&["status"]);
    assert!(!human.contains("s3cret"), "{human}");
    assert_eq!(check(&d).0, 11);
}

#[test]
fn backoff_exits_11() {
    let srv = Scripted::start(Duration::from_secs(60), 5000, |req| match req.route() {
        "health" => Reply::json(200, json!({"ok": true})),
        _ => Reply::json(503, json!({"error": "busy"})),
    });
    let d = Daemon::start(&fast(&srv.url(), ""));
    d.ok(&["put", "todos", "{}"]);
    eventually(15, "backoff", || state(&d) == "backoff");
    let (code, out) = check(&d);
    assert_eq!(code, 11, "{out}");
    assert!(out.contains("safe on disk"), "{out}");
}

#[test]
fn paused_unreachable_and_reload_error() {
    let d = Daemon::start(&fast("http://127.0.0.1:9/", ""));
    d.ok(&["pause"]);
    let (code, out) = check(&d);
    assert_eq!(code, 15, "{out}");
    assert!(out.contains("syncd resume"), "{out}");
    d.ok(&["resume"]);

    // An invalid edit (not even valid TOML: a second [sync]): the daemon
    // keeps its config and says so; the CLI still finds it through --config.
    let good = std::fs::read_to_string(&d.config).unwrap();
    std::fs::write(&d.config, format!("{good}\n[sync]\nbogus_key = 1\n")).unwrap();
    d.signal(libc::SIGHUP);
    eventually(10, "reload error in status", || {
        d.status()["config_reload_error"].is_string()
    });
    let o = std::process::Command::new(bin())
        .arg("--config")
        .arg(&d.config)
        .args(["status", "--json"])
        .env_remove("SYNCD_SOCKET")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let st: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(
        st["config_reload_error"]
            .as_str()
            .unwrap()
            .contains("duplicate key"),
        "{st}"
    );
    assert!(st["hints"].to_string().contains("rejected"), "{st}");
    std::fs::write(&d.config, good).unwrap();
    d.signal(libc::SIGHUP);
    eventually(10, "reload error cleared", || {
        d.status()["config_reload_error"].is_null()
    });

    let mut d = d;
    d.stop();
    let (code, out) = check(&d);
    assert_eq!(code, 3, "{out}");
}

/// A backend that rejects every create for good (422).
fn rejecting_server() -> Scripted {
    let mut m = RefBackend::new(false);
    m.validate = Some(Box::new(|_| Err(Rejection::unprocessable("nope"))));
    let m = std::sync::Mutex::new(m);
    Scripted::start(Duration::from_secs(60), 5000, move |req| {
        m.lock().unwrap().handle(req)
    })
}

#[test]
fn dead_letters_hint_exit_13_and_discarded_create_is_local_only() {
    let srv = rejecting_server();
    let d = Daemon::start(&fast(&srv.url(), ""));
    let id = d.ok(&["put", "todos", r#"{"a":1}"#]).trim().to_owned();
    eventually(15, "dead-lettered", || {
        d.status()["dead_letters"] == json!(1)
    });
    let st = d.status();
    assert!(hint(&st).contains("syncd dead-letters"), "{st}");
    let (code, out) = check(&d);
    assert_eq!(code, 13, "{out}");

    // Dead-lettered, it is on this device only already.
    let r = d.json(&["get", "todos", &id]);
    assert_eq!(r["local_only"], json!(true), "{r}");
    let dl = d.json_lines(&["dead-letters", "--json"]);
    let op = dl[0]["op_id"].as_str().unwrap().to_owned();
    d.ok(&["discard", &op]);
    let r = d.json(&["get", "todos", &id]);
    assert_eq!(r["local_only"], json!(true), "{r}");
    assert_eq!(r["server_id"], Value::Null, "{r}");
    // A synced record is not local-only; a queued one is not either.
    let mut d = d;
    d.stop();
    let b = Backend::start(&[]);
    d.write_config(&fast(&b.url(), ""));
    d.spawn();
    let other = d.ok(&["put", "todos", "{}"]).trim().to_owned();
    d.ok(&["sync", "--wait", "--timeout", "20"]);
    let r = d.json(&["get", "todos", &other]);
    assert_eq!(r["local_only"], json!(false), "{r}");
    // Patching the discarded record queues it again: no longer local-only.
    d.ok(&["pause"]);
    d.ok(&["patch", "todos", &id, r#"{"b":2}"#]);
    assert_eq!(d.json(&["get", "todos", &id])["local_only"], json!(false));
}

#[test]
fn parked_conflict_hint_and_exit_14() {
    let b = Backend::start(&[]);
    let manual = "[collections.todos]\nconflict = \"manual\"";
    let a = Daemon::start(&format!("{}{manual}\n", fast(&b.url(), "")));
    let c = Daemon::start(&format!("{}{manual}\n", fast(&b.url(), "")));
    let id = a.ok(&["put", "todos", r#"{"v":0}"#]).trim().to_owned();
    a.ok(&["sync", "--wait", "--timeout", "20"]);
    c.ok(&["sync", "--wait", "--timeout", "20"]);
    eventually(15, "record pulled on the second device", || {
        !c.json_lines(&["list", "todos"]).is_empty()
    });
    let cid = c.json_lines(&["list", "todos"])[0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    c.ok(&["pause"]);
    a.ok(&["patch", "todos", &id, r#"{"v":1}"#]);
    a.ok(&["sync", "--wait", "--timeout", "20"]);
    c.ok(&["patch", "todos", &cid, r#"{"v":2}"#]);
    c.ok(&["resume"]);
    eventually(15, "conflict parked", || {
        c.status()["conflicts"] == json!(1)
    });
    let st = c.status();
    assert!(st["hints"].to_string().contains("syncd conflicts"), "{st}");
    let (code, out) = check(&c);
    assert_eq!(code, 14, "{out}");
}

/// Past the bounded scan, per-collection counts are lower bounds and say so.
#[test]
fn pending_by_collection_is_bounded_and_says_at_least() {
    let d = Daemon::start("");
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let mut c = syncd::client::Client::connect(&d.socket, "ops-test")
            .await
            .unwrap();
        for i in 0..1_100 {
            let coll = if i % 2 == 0 { "even" } else { "odd" };
            c.put(coll, None, json!({ "i": i })).await.unwrap();
        }
    });
    let st = d.status();
    assert_eq!(st["queue_depth"], json!(1_100));
    assert_eq!(st["pending_by_collection_complete"], json!(false), "{st}");
    let counted: u64 = st["pending_by_collection"]
        .as_object()
        .unwrap()
        .values()
        .map(|v| v.as_u64().unwrap())
        .sum();
    assert_eq!(counted, 1_000, "{st}");
    let human = d.ok(&["status"]);
    assert!(
        human.contains("1100 ops (even at least 500, odd at least 500)"),
        "{human}"
    );
}
