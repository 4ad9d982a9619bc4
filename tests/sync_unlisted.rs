//! Replies the backend protocol's table does not list (a redirect, an HTML
//! 404, 405, another 4xx, a 200 with an HTML page) must never dead-letter
//! the queue: the daemon keeps every op, shows `backend_error`, backs off,
//! and syncs everything exactly once when the backend heals. Real daemon,
//! real sockets: a scripted server misbehaves, then hands over to
//! `RefBackend`.

mod common;
mod common_fault;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{eventually, Daemon};
use common_fault::{RefBackend, Reply, Req, Scripted};
use serde_json::{json, Value};

/// Records created, each then patched once: 20 ops in all.
const RECORDS: usize = 10;
/// How long the server keeps misbehaving once the daemon shows the error.
const FAULTY_FOR: Duration = Duration::from_secs(2);
/// Most requests the server may see while faulty: a client that retries
/// without backoff sends hundreds a second.
const MAX_FAULTY_REQUESTS: usize = 40;

const HTML: &str = "<!DOCTYPE html>\n<html><head><title>Login</title></head>\n<body><h1>Welcome to Hotel WiFi</h1><form action=\"/portal/login\"></form></body></html>\n";

/// The faulty reply to a request, or `None` to let the backend answer.
type Fault = fn(&Req) -> Option<Reply>;

fn html(status: u16) -> Reply {
    Reply {
        status,
        headers: Vec::new(),
        body: HTML.to_owned(),
    }
}

fn on_ops(req: &Req) -> bool {
    matches!(req.route(), "ops" | "batch")
}

/// A server that answers with `fault` until healed, then as `RefBackend`.
struct FaultServer {
    srv: Scripted,
    mini: Arc<Mutex<RefBackend>>,
    healed: Arc<AtomicBool>,
    faulty: Arc<AtomicUsize>,
}

impl FaultServer {
    fn start(fault: Fault) -> FaultServer {
        let mini = Arc::new(Mutex::new(RefBackend::new(true)));
        let healed = Arc::new(AtomicBool::new(false));
        let faulty = Arc::new(AtomicUsize::new(0));
        let srv = {
            let (mini, healed, faulty) = (mini.clone(), healed.clone(), faulty.clone());
            Scripted::start(Duration::from_secs(90), 5000, move |req| {
                if !healed.load(Ordering::SeqCst) {
                    if let Some(reply) = fault(req) {
                        faulty.fetch_add(1, Ordering::SeqCst);
                        return reply;
                    }
                }
                mini.lock().unwrap().handle(req)
            })
        };
        FaultServer {
            srv,
            mini,
            healed,
            faulty,
        }
    }

    fn faulty_replies(&self) -> usize {
        self.faulty.load(Ordering::SeqCst)
    }
}

/// Daemon config for `url`, with backoff short enough for a test.
fn config(url: &str) -> String {
    format!(
        "[backend]\nurl = {url:?}\ntimeout_ms = 2000\n[sync]\nbackoff_initial_ms = 100\nbackoff_max_ms = 1000\n"
    )
}

fn state(d: &Daemon) -> String {
    d.status()["state"].as_str().unwrap_or_default().to_owned()
}

fn dead_letters(d: &Daemon) -> Vec<Value> {
    d.json_lines(&["dead-letters", "--json"])
}

/// Runs async client calls against the daemon on a private runtime.
fn with_client<T>(d: &Daemon, f: impl AsyncFnOnce(&mut syncd::client::Client) -> T) -> T {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let mut c = syncd::client::Client::connect(&d.socket, "sync-unlisted-test")
            .await
            .expect("connect");
        f(&mut c).await
    })
}

/// `n` creates `{"n": i, "v": 1}`; returns the local ids.
fn create_many(d: &Daemon, n: usize) -> Vec<String> {
    with_client(d, async |c| {
        let mut ids = Vec::new();
        for i in 0..n {
            let (id, _) = c
                .put("todos", None, json!({"n": i, "v": 1}))
                .await
                .expect("put");
            ids.push(id);
        }
        ids
    })
}

/// Patches every record to `{"v": 2}`.
fn patch_each(d: &Daemon, ids: &[String]) {
    with_client(d, async |c| {
        for id in ids {
            c.patch("todos", id, json!({"v": 2})).await.expect("patch");
        }
    })
}

/// Asserts the status shows the backend error for `status` with the
/// setting to check, and that nothing was dropped.
fn assert_backend_error(d: &Daemon, status: u16, ops: u64) {
    let st = d.status();
    assert_eq!(st["state"], json!("backend_error"), "{st}");
    let err = st["last_error"].as_str().unwrap_or_default();
    assert!(err.contains(&format!("HTTP {status}")), "{st}");
    assert!(err.contains("[backend] url"), "{st}");
    assert_eq!(st["dead_letters"], json!(0), "{st}");
    assert_eq!(st["queue_depth"], json!(ops), "{st}");
}

/// The backend holds every record exactly once: each `n` created once, at
/// versions 1 and 2, ending as `{"n": n, "v": 2}`.
fn assert_synced_exactly_once(mini: &RefBackend) {
    let mut versions: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for ch in mini.changes() {
        let rec = &ch["record"];
        let id = rec["id"].as_str().expect("id").to_owned();
        versions
            .entry(id)
            .or_default()
            .push(rec["version"].as_u64().unwrap_or(0));
    }
    let records = mini.records();
    assert_eq!(records.len(), RECORDS, "{records:?}");
    let mut ns: Vec<u64> = Vec::new();
    for (id, (collection, rec)) in &records {
        assert_eq!(collection, "todos");
        assert_eq!(versions[id], vec![1, 2], "changes of {id}");
        let n = rec["data"]["n"].as_u64().expect("n");
        assert_eq!(rec["data"], json!({"n": n, "v": 2}), "{rec}");
        ns.push(n);
    }
    ns.sort_unstable();
    assert_eq!(ns, (0..RECORDS as u64).collect::<Vec<_>>());
}

/// The scenario: the server answers `fault` (HTTP `status`) from the
/// start; 20 ops are queued before and while it misbehaves; for a while
/// status shows `backend_error`, nothing is dead-lettered and requests are
/// spaced by backoff; then it heals and every op syncs exactly once.
fn survives(fault: Fault, status: u16) -> FaultServer {
    let f = FaultServer::start(fault);
    let d = Daemon::start(&config(&f.srv.url()));
    let ids = create_many(&d, RECORDS);
    eventually(15, "state backend_error", || state(&d) == "backend_error");
    patch_each(&d, &ids);
    let ops = (2 * RECORDS) as u64;

    let until = Instant::now() + FAULTY_FOR;
    while Instant::now() < until {
        assert_backend_error(&d, status, ops);
        assert!(dead_letters(&d).is_empty());
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_backend_error(&d, status, ops);
    let queued = d.json_lines(&["queue", "--json"]);
    assert_eq!(queued.len(), ops as usize, "{queued:?}");
    let faulty = f.faulty_replies();
    assert!(
        faulty >= 2,
        "the fault never happened ({faulty} faulty replies)"
    );
    assert!(
        faulty <= MAX_FAULTY_REQUESTS,
        "{faulty} faulty replies: retries are not spaced by backoff"
    );

    f.healed.store(true, Ordering::SeqCst);
    eventually(30, "queue drained after healing", || {
        d.status()["queue_depth"] == json!(0)
    });
    eventually(10, "online after healing", || state(&d) == "online");
    assert!(dead_letters(&d).is_empty(), "{:?}", dead_letters(&d));
    assert_eq!(d.status()["dead_letters"], json!(0));
    assert_synced_exactly_once(&f.mini.lock().unwrap());
    for id in &ids {
        let r = d.json(&["get", "todos", id]);
        assert_eq!(r["pending"], json!(false), "{r}");
        assert!(r["server_id"].is_string(), "{r}");
    }
    f
}

/// An http→https style redirect on the API paths. It is not followed: no
/// request ever reaches the redirect target.
#[test]
fn redirect_is_backend_error_and_not_followed() {
    let f = survives(
        |req| {
            (req.route() != "health")
                .then(|| html(302).with_header("Location", "/portal/login?from=syncd"))
        },
        302,
    );
    let followed: Vec<_> = f
        .srv
        .log()
        .into_iter()
        .filter(|l| l.req.path().starts_with("/portal"))
        .map(|l| l.req.target)
        .collect();
    assert!(followed.is_empty(), "redirect followed: {followed:?}");
}

/// A redirect on the health probe too: not reachable, so backend_error.
#[test]
fn redirected_health_probe_is_backend_error() {
    survives(
        |_| Some(html(307).with_header("Location", "https://login.example.net/")),
        307,
    );
}

/// A routing mistake: an HTML 404 for the ops paths (batch included, which
/// first reads as "no batch support").
#[test]
fn html_404_on_ops_path_is_backend_error() {
    survives(|req| on_ops(req).then(|| html(404)), 404);
}

/// 405 on the ops paths.
#[test]
fn method_not_allowed_is_backend_error() {
    survives(
        |req| {
            on_ops(req).then(|| {
                Reply::json(405, json!({"error": "method not allowed"})).with_header("Allow", "GET")
            })
        },
        405,
    );
}

/// A captive portal: 200 with an HTML page on every path (health too,
/// which a revision-1 server may answer without JSON).
#[test]
fn html_200_is_backend_error() {
    survives(|_| Some(html(200)), 200);
}

/// Another 4xx, even with a JSON error body, is not a rejection.
#[test]
fn unlisted_4xx_with_json_body_is_backend_error() {
    survives(
        |req| on_ops(req).then(|| Reply::json(418, json!({"error": "I'm a teapot"}))),
        418,
    );
}
