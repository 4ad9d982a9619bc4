//! End-to-end tests of the reference backend: the real server in-process on
//! 127.0.0.1:0, spoken to with hand-written HTTP/1.1 over a TcpStream.

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::{json, Value};
use syncd::backend::server::{serve, Faults, ServerOptions};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

const TOKEN: &str = "s3cret-token";

struct Server {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), String>>>,
    _dir: tempfile::TempDir,
}

impl Server {
    async fn start(token: Option<&str>, faults: Faults, max_body_bytes: usize) -> Server {
        let dir = tempfile::tempdir().expect("tempdir");
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let mut opts = ServerOptions::new(addr, dir.path().join("data"));
        opts.token = token.map(str::to_owned);
        opts.faults = faults;
        opts.max_body_bytes = max_body_bytes;
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            serve(opts, listener, async {
                let _ = rx.await;
            })
            .await
            .map_err(|e| e.to_string())
        });
        Server {
            addr,
            stop: Some(tx),
            task: Some(task),
            _dir: dir,
        }
    }

    async fn plain() -> Server {
        Server::start(None, Faults::default(), 8 << 20).await
    }

    async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            let res = tokio::time::timeout(Duration::from_secs(15), task)
                .await
                .expect("server stops in time")
                .expect("server task");
            res.expect("serve returned Ok");
        }
    }
}

#[derive(Debug)]
struct Resp {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Resp {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "body is not JSON ({e}): {:?}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

fn encode_request(
    method: &str,
    path: &str,
    auth: Option<&str>,
    body: &[u8],
    close: bool,
) -> Vec<u8> {
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: test\r\nX-Syncd-Client: c-test\r\nContent-Length: {}\r\n",
        body.len()
    );
    if !body.is_empty() {
        head.push_str("Content-Type: application/json\r\n");
    }
    if let Some(t) = auth {
        head.push_str(&format!("Authorization: Bearer {t}\r\n"));
    }
    if close {
        head.push_str("Connection: close\r\n");
    }
    head.push_str("\r\n");
    let mut bytes = head.into_bytes();
    bytes.extend_from_slice(body);
    bytes
}

/// Reads one response (Content-Length framed). `None` if the server closed
/// the connection before sending anything.
async fn read_response<R: AsyncBufReadExt + Unpin>(r: &mut R) -> Option<Resp> {
    let mut line = String::new();
    match r.read_line(&mut line).await {
        Ok(0) | Err(_) => return None,
        Ok(_) => {}
    }
    let status: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line {line:?}"));
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        r.read_line(&mut h).await.expect("header line");
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        let (k, v) = h.split_once(':').expect("header colon");
        headers.push((k.trim().to_owned(), v.trim().to_owned()));
    }
    let len: usize = headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.parse().ok())
        .expect("content-length");
    let mut body = vec![0; len];
    r.read_exact(&mut body).await.expect("body");
    Some(Resp {
        status,
        headers,
        body,
    })
}

/// One request on a fresh connection. `None` if the connection was dropped
/// without a response.
async fn try_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    auth: Option<&str>,
    body: &[u8],
) -> Option<Resp> {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream
        .write_all(&encode_request(method, path, auth, body, true))
        .await
        .expect("write request");
    let mut r = BufReader::new(stream);
    tokio::time::timeout(Duration::from_secs(10), read_response(&mut r))
        .await
        .expect("response in time")
}

async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    auth: Option<&str>,
    body: &[u8],
) -> Resp {
    try_request(addr, method, path, auth, body)
        .await
        .expect("a response")
}

async fn post(addr: SocketAddr, path: &str, body: &Value) -> Resp {
    request(
        addr,
        "POST",
        path,
        None,
        &serde_json::to_vec(body).expect("json"),
    )
    .await
}

async fn get(addr: SocketAddr, path: &str) -> Resp {
    request(addr, "GET", path, None, b"").await
}

fn create_op(op_id: &str, title: &str) -> Value {
    json!({"op_id": op_id, "client_id": "c-test", "collection": "todos", "kind": "create",
           "id": null, "local_id": format!("l-{op_id}"), "base_version": null,
           "data": {"title": title}, "client_ts": 1_732_450_000_123_i64})
}

fn update_op(op_id: &str, id: &str, base: u64, title: &str) -> Value {
    json!({"op_id": op_id, "client_id": "c-test", "collection": "todos", "kind": "update",
           "id": id, "local_id": "l", "base_version": base,
           "data": {"title": title}, "client_ts": 1_732_450_000_500_i64})
}

fn delete_op(op_id: &str, id: &str, base: u64) -> Value {
    json!({"op_id": op_id, "client_id": "c-test", "collection": "todos", "kind": "delete",
           "id": id, "local_id": "l", "base_version": base, "data": null,
           "client_ts": 1_732_450_000_900_i64})
}

fn record_id(resp: &Resp) -> String {
    resp.json()["record"]["id"]
        .as_str()
        .expect("record id")
        .to_owned()
}

#[tokio::test]
async fn health_routing_and_methods() {
    let s = Server::plain().await;
    let r = get(s.addr, "/v1/health").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(
        r.json(),
        json!({"ok": true, "features": ["batch", "wait", "client_ids", "blobs"]})
    );
    assert_eq!(get(s.addr, "/sync/api/v1/health").await.status, 200);
    let r = get(s.addr, "/v1/nope").await;
    assert_eq!(r.status, 404);
    assert!(r.json()["error"].is_string());
    let r = get(s.addr, "/v1/ops").await;
    assert_eq!(r.status, 405);
    assert_eq!(r.header("allow"), Some("POST"));
    assert_eq!(post(s.addr, "/v1/changes", &json!({})).await.status, 405);
    s.stop().await;
}

#[tokio::test]
async fn keep_alive_serves_several_requests_per_connection() {
    let s = Server::plain().await;
    let stream = TcpStream::connect(s.addr).await.expect("connect");
    let mut r = BufReader::new(stream);
    for i in 0..3 {
        let body = serde_json::to_vec(&create_op(&format!("ka{i}"), "x")).expect("json");
        r.get_mut()
            .write_all(&encode_request("POST", "/v1/ops", None, &body, false))
            .await
            .expect("write");
        let resp = read_response(&mut r).await.expect("response");
        assert_eq!(resp.status, 200);
    }
    s.stop().await;
}

#[tokio::test]
async fn auth_required_except_health() {
    let s = Server::start(Some(TOKEN), Faults::default(), 8 << 20).await;
    let body = serde_json::to_vec(&create_op("a1", "x")).expect("json");
    let r = request(s.addr, "POST", "/v1/ops", None, &body).await;
    assert_eq!(r.status, 401);
    assert_eq!(r.json(), json!({"error": "unauthorized"}));
    let r = request(s.addr, "POST", "/v1/ops", Some("wrong"), &body).await;
    assert_eq!(r.status, 401);
    let r = request(s.addr, "GET", "/v1/changes", None, b"").await;
    assert_eq!(r.status, 401);
    assert_eq!(
        request(s.addr, "GET", "/v1/health", None, b"").await.status,
        200
    );
    let r = request(s.addr, "POST", "/v1/ops", Some(TOKEN), &body).await;
    assert_eq!(r.status, 200);
    let r = request(s.addr, "GET", "/v1/changes", Some(TOKEN), b"").await;
    assert_eq!(r.status, 200);
    s.stop().await;
}

#[tokio::test]
async fn oversized_body_is_413() {
    let s = Server::start(None, Faults::default(), 1024).await;
    let big = create_op("big", &"x".repeat(4000));
    let r = post(s.addr, "/v1/ops", &big).await;
    assert_eq!(r.status, 413);
    assert!(r.json()["error"].as_str().expect("error").contains("1024"));
    // A small one still works.
    assert_eq!(
        post(s.addr, "/v1/ops", &create_op("small", "x"))
            .await
            .status,
        200
    );
    s.stop().await;
}

#[tokio::test]
async fn bad_json_is_400_and_semantic_errors_422() {
    let s = Server::plain().await;
    let r = request(s.addr, "POST", "/v1/ops", None, b"{\"op_id\": ").await;
    assert_eq!(r.status, 400);
    assert!(r.json()["error"].as_str().expect("reason").contains("JSON"));
    let r = post(s.addr, "/v1/ops", &json!({"op_id": "x"})).await;
    assert_eq!(r.status, 400);
    assert!(r.json()["error"]
        .as_str()
        .expect("reason")
        .contains("missing field"));
    let mut bad = create_op("c", "x");
    bad["base_version"] = json!(1);
    assert_eq!(post(s.addr, "/v1/ops", &bad).await.status, 422);
    let mut bad = create_op("c", "x");
    bad["data"] = json!("text");
    assert_eq!(post(s.addr, "/v1/ops", &bad).await.status, 422);
    let r = post(s.addr, "/v1/ops", &update_op("u", "never-existed", 1, "x")).await;
    assert_eq!(r.status, 404);
    assert!(r.json()["error"].is_string());
    s.stop().await;
}

#[tokio::test]
async fn create_update_conflict_delete() {
    let s = Server::plain().await;
    let r = post(s.addr, "/sync/v1/ops", &create_op("o1", "milk")).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("application/json"));
    let rec = r.json()["record"].clone();
    assert_eq!(rec["version"], 1);
    assert_eq!(rec["updated_at"], 1_732_450_000_123_i64);
    assert_eq!(rec["deleted"], false);
    assert_eq!(rec["data"], json!({"title": "milk"}));
    let id = record_id(&r);

    let r = post(s.addr, "/v1/ops", &update_op("o2", &id, 1, "bread")).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["record"]["version"], 2);

    let r = post(s.addr, "/v1/ops", &update_op("o3", &id, 1, "eggs")).await;
    assert_eq!(r.status, 409);
    let body = r.json();
    assert_eq!(body["error"], "conflict");
    assert_eq!(body["record"]["version"], 2);
    assert_eq!(body["record"]["data"]["title"], "bread");

    let r = post(s.addr, "/v1/ops", &delete_op("o4", &id, 2)).await;
    assert_eq!(r.status, 200);
    let t = r.json()["record"].clone();
    assert_eq!(
        (t["version"].clone(), t["deleted"].clone()),
        (json!(3), json!(true))
    );
    assert_eq!(t["data"], json!({}));

    // An update on a stale base meets the tombstone; one made on the
    // tombstone's own version re-creates the record under its id.
    let r = post(s.addr, "/v1/ops", &update_op("o5", &id, 2, "zombie")).await;
    assert_eq!(r.status, 409);
    assert_eq!(r.json()["record"]["deleted"], true);
    let r = post(s.addr, "/v1/ops", &update_op("o6", &id, 3, "again")).await;
    assert_eq!(r.status, 200);
    let back = r.json()["record"].clone();
    assert_eq!(
        (back["version"].clone(), back["deleted"].clone()),
        (json!(4), json!(false))
    );
    assert_eq!(back["data"]["title"], "again");
    s.stop().await;
}

#[tokio::test]
async fn same_op_id_twice_returns_same_body() {
    let s = Server::plain().await;
    let first = post(s.addr, "/v1/ops", &create_op("dup", "x")).await;
    assert_eq!(first.status, 200);
    let id = record_id(&first);
    let u1 = post(s.addr, "/v1/ops", &update_op("dup-u", &id, 1, "y")).await;
    assert_eq!(u1.status, 200);
    let u2 = post(s.addr, "/v1/ops", &update_op("dup-u", &id, 1, "y")).await;
    assert_eq!(u2.status, 200);
    assert_eq!(u1.body, u2.body);
    assert_eq!(u2.json()["record"]["version"], 2);
    let again = post(s.addr, "/v1/ops", &create_op("dup", "x")).await;
    assert_eq!(again.body, first.body);
    // Only two changes were recorded.
    let page = get(s.addr, "/v1/changes").await.json();
    assert_eq!(page["changes"].as_array().expect("changes").len(), 2);
    // The record is still at version 2.
    let r = post(s.addr, "/v1/ops", &update_op("after", &id, 2, "z")).await;
    assert_eq!(r.json()["record"]["version"], 3);
    s.stop().await;
}

#[tokio::test]
async fn batch_stops_at_first_failure() {
    let s = Server::plain().await;
    let id = record_id(&post(s.addr, "/v1/ops", &create_op("base", "x")).await);
    let batch = json!({"ops": [
        create_op("b1", "one"),
        update_op("b2", &id, 1, "two"),
        update_op("b3", &id, 1, "stale"),
        create_op("b4", "never"),
    ]});
    let r = post(s.addr, "/v1/ops/batch", &batch).await;
    assert_eq!(r.status, 200);
    let results = r.json()["results"].as_array().expect("results").clone();
    assert_eq!(results.len(), 3);
    assert_eq!(results[0]["status"], 200);
    assert_eq!(results[1]["status"], 200);
    assert_eq!(results[1]["record"]["version"], 2);
    assert_eq!(results[2]["status"], 409);
    assert_eq!(results[2]["error"], "conflict");
    assert_eq!(results[2]["record"]["version"], 2);

    // An invalid op is reported at its position after the valid ones applied.
    let mut bad = create_op("b6", "x");
    bad["id"] = json!("");
    let r = post(
        s.addr,
        "/v1/ops/batch",
        &json!({"ops": [create_op("b5", "ok"), bad, create_op("b7", "no")]}),
    )
    .await;
    let results = r.json()["results"].as_array().expect("results").clone();
    assert_eq!(results.len(), 2);
    assert_eq!(results[0]["status"], 200);
    assert_eq!(results[1]["status"], 422);
    assert!(results[1]["error"].is_string());

    // base, b1, b2, b5: four changes; b4/b7 never applied.
    let page = get(s.addr, "/v1/changes").await.json();
    assert_eq!(page["changes"].as_array().expect("changes").len(), 4);
    assert_eq!(
        post(s.addr, "/v1/ops/batch", &json!({"ops": []}))
            .await
            .status,
        422
    );
    assert_eq!(
        post(s.addr, "/v1/ops/batch", &json!({"nope": 1}))
            .await
            .status,
        400
    );
    s.stop().await;
}

#[tokio::test]
async fn no_batch_answers_404() {
    let faults = Faults {
        no_batch: true,
        ..Faults::default()
    };
    let s = Server::start(None, faults, 8 << 20).await;
    let r = post(
        s.addr,
        "/v1/ops/batch",
        &json!({"ops": [create_op("x", "y")]}),
    )
    .await;
    assert_eq!(r.status, 404);
    assert!(r.json()["error"].is_string());
    assert_eq!(
        post(s.addr, "/v1/ops", &create_op("x", "y")).await.status,
        200
    );
    // A server without batch does not announce it.
    let health = get(s.addr, "/v1/health").await.json();
    assert_eq!(health["features"], json!(["wait", "client_ids", "blobs"]));
    s.stop().await;
}

#[tokio::test]
async fn drop_after_apply_applies_without_reply() {
    let faults = Faults {
        drop_after_apply: 1.0,
        ..Faults::default()
    };
    let s = Server::start(None, faults, 8 << 20).await;
    let body = serde_json::to_vec(&create_op("lost", "x")).expect("json");
    assert!(try_request(s.addr, "POST", "/v1/ops", None, &body)
        .await
        .is_none());
    let batch = serde_json::to_vec(&json!({"ops": [create_op("lost2", "y")]})).expect("json");
    assert!(try_request(s.addr, "POST", "/v1/ops/batch", None, &batch)
        .await
        .is_none());
    // Changes are not faulted: both ops were applied and committed.
    let page = get(s.addr, "/v1/changes").await.json();
    let changes = page["changes"].as_array().expect("changes");
    assert_eq!(changes.len(), 2);
    assert_eq!(changes[0]["record"]["data"]["title"], "x");
    assert_eq!(changes[1]["record"]["data"]["title"], "y");
    // A retry is still applied once only (and dropped again).
    assert!(try_request(s.addr, "POST", "/v1/ops", None, &body)
        .await
        .is_none());
    let page = get(s.addr, "/v1/changes").await.json();
    assert_eq!(page["changes"].as_array().expect("changes").len(), 2);
    s.stop().await;
}

#[tokio::test]
async fn fault_503_carries_retry_after_and_spares_health() {
    let faults = Faults {
        fail_503: 1.0,
        retry_after_s: 7,
        ..Faults::default()
    };
    let s = Server::start(None, faults, 8 << 20).await;
    let r = post(s.addr, "/v1/ops", &create_op("f", "x")).await;
    assert_eq!(r.status, 503);
    assert_eq!(r.header("retry-after"), Some("7"));
    assert!(r.json()["error"].is_string());
    assert_eq!(get(s.addr, "/v1/changes").await.status, 503);
    assert_eq!(get(s.addr, "/v1/health").await.status, 200);
    s.stop().await;
}

#[tokio::test]
async fn hang_delays_reply() {
    let faults = Faults {
        hang: 1.0,
        hang_ms: 300,
        ..Faults::default()
    };
    let s = Server::start(None, faults, 8 << 20).await;
    let t0 = std::time::Instant::now();
    assert_eq!(get(s.addr, "/v1/changes").await.status, 200);
    assert!(t0.elapsed() >= Duration::from_millis(300));
    s.stop().await;
}

#[tokio::test]
async fn changes_paging_with_cursor() {
    let s = Server::plain().await;
    let empty = get(s.addr, "/v1/changes").await.json();
    assert_eq!(empty["changes"], json!([]));
    assert_eq!(empty["more"], false);
    let start = empty["cursor"].as_str().expect("cursor").to_owned();

    for i in 0..5 {
        let r = post(
            s.addr,
            "/v1/ops",
            &create_op(&format!("p{i}"), &format!("t{i}")),
        )
        .await;
        assert_eq!(r.status, 200);
    }
    let mut cursor = start;
    let mut titles = Vec::new();
    let mut pages = 0;
    loop {
        let page = get(s.addr, &format!("/v1/changes?since={cursor}&limit=2")).await;
        assert_eq!(page.status, 200);
        let page = page.json();
        pages += 1;
        for c in page["changes"].as_array().expect("changes") {
            assert_eq!(c["collection"], "todos");
            titles.push(
                c["record"]["data"]["title"]
                    .as_str()
                    .expect("title")
                    .to_owned(),
            );
        }
        cursor = page["cursor"].as_str().expect("cursor").to_owned();
        if page["more"] == false {
            break;
        }
        assert!(pages < 10);
    }
    assert_eq!(pages, 3);
    assert_eq!(titles, ["t0", "t1", "t2", "t3", "t4"]);
    // Nothing new: empty page, same cursor.
    let page = get(s.addr, &format!("/v1/changes?since={cursor}"))
        .await
        .json();
    assert_eq!(page["changes"], json!([]));
    assert_eq!(page["cursor"], cursor.as_str());
    assert_eq!(page["more"], false);
    // A bad cursor is a 400.
    assert_eq!(get(s.addr, "/v1/changes?since=garbage").await.status, 400);
    s.stop().await;
}

// ---- revision 2: waiting pulls (`wait`) ----

fn cursor_of(page: &Value) -> String {
    page["cursor"].as_str().expect("cursor").to_owned()
}

#[tokio::test]
async fn wait_without_changes_is_held_then_answers_empty() {
    let s = Server::plain().await;
    post(s.addr, "/v1/ops", &create_op("w0", "x")).await;
    let cursor = cursor_of(&get(s.addr, "/v1/changes").await.json());
    let t0 = std::time::Instant::now();
    let r = get(s.addr, &format!("/v1/changes?since={cursor}&wait=1")).await;
    let held = t0.elapsed();
    assert_eq!(r.status, 200);
    let page = r.json();
    assert_eq!(page["changes"], json!([]));
    assert_eq!(page["cursor"], cursor.as_str());
    assert_eq!(page["more"], false);
    assert!(
        held >= Duration::from_millis(950) && held < Duration::from_secs(3),
        "held {held:?}"
    );
    // From an empty log, without `since`: held too, cursor "0".
    let s2 = Server::plain().await;
    let t0 = std::time::Instant::now();
    let page = get(s2.addr, "/v1/changes?wait=1").await.json();
    assert!(t0.elapsed() >= Duration::from_millis(950));
    assert_eq!(
        (page["changes"].clone(), cursor_of(&page)),
        (json!([]), "0".into())
    );
    s.stop().await;
    s2.stop().await;
}

#[tokio::test]
async fn held_wait_is_woken_by_a_commit() {
    let s = Server::plain().await;
    let cursor = cursor_of(&get(s.addr, "/v1/changes").await.json());
    let addr = s.addr;
    let path = format!("/v1/changes?since={cursor}&wait=30");
    let waiter = tokio::spawn(async move {
        let r = get(addr, &path).await;
        (r, std::time::Instant::now())
    });
    // Let the request reach the server and start waiting.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!waiter.is_finished(), "the pull must be held");
    let t_write = std::time::Instant::now();
    let w = post(s.addr, "/v1/ops", &create_op("wake", "now")).await;
    assert_eq!(w.status, 200);
    let (r, t_woken) = tokio::time::timeout(Duration::from_secs(5), waiter)
        .await
        .expect("woken in time")
        .expect("waiter task");
    let latency = t_woken.saturating_duration_since(t_write);
    eprintln!("wait wake-up latency (write sent -> pull answered): {latency:?}");
    assert!(latency < Duration::from_secs(1), "latency {latency:?}");
    assert_eq!(r.status, 200);
    let page = r.json();
    let changes = page["changes"].as_array().expect("changes");
    assert_eq!(changes.len(), 1);
    assert_eq!(changes[0]["record"]["data"]["title"], "now");
    assert_ne!(cursor_of(&page), cursor);
    s.stop().await;
}

#[tokio::test]
async fn wait_with_changes_available_answers_at_once() {
    let s = Server::plain().await;
    post(s.addr, "/v1/ops", &create_op("a1", "x")).await;
    let t0 = std::time::Instant::now();
    let page = get(s.addr, "/v1/changes?since=0&wait=30").await.json();
    assert!(t0.elapsed() < Duration::from_secs(1), "{:?}", t0.elapsed());
    assert_eq!(page["changes"].as_array().expect("changes").len(), 1);
    // A cursor past the head (a reset server) is answered at once too.
    let t0 = std::time::Instant::now();
    let page = get(s.addr, "/v1/changes?since=99&wait=30").await.json();
    assert!(t0.elapsed() < Duration::from_secs(1));
    assert_eq!(cursor_of(&page), "1");
    s.stop().await;
}

#[tokio::test]
async fn invalid_wait_is_400() {
    let s = Server::plain().await;
    for bad in ["soon", "1.5", "%2D%2D1"] {
        let r = get(s.addr, &format!("/v1/changes?wait={bad}")).await;
        assert_eq!(r.status, 400, "wait={bad}");
        assert!(r.json()["error"].as_str().expect("reason").contains("wait"));
    }
    s.stop().await;
}

#[tokio::test]
async fn shutdown_is_not_blocked_by_a_held_wait() {
    let s = Server::plain().await;
    let addr = s.addr;
    let waiter = tokio::spawn(async move { get(addr, "/v1/changes?wait=60").await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let t0 = std::time::Instant::now();
    s.stop().await;
    assert!(t0.elapsed() < Duration::from_secs(2), "{:?}", t0.elapsed());
    let r = waiter.await.expect("waiter");
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["changes"], json!([]));
}

// ---- revision 2: client-chosen ids (`client_ids`) ----

fn create_as(op_id: &str, collection: &str, id: Value, title: &str) -> Value {
    let mut op = create_op(op_id, title);
    op["collection"] = json!(collection);
    op["id"] = id;
    op
}

#[tokio::test]
async fn client_chosen_ids() {
    let s = Server::plain().await;
    let first = post(
        s.addr,
        "/v1/ops",
        &create_as("c1", "settings", json!("theme"), "dark"),
    )
    .await;
    assert_eq!(first.status, 200);
    let rec = first.json()["record"].clone();
    assert_eq!(
        (rec["id"].clone(), rec["version"].clone()),
        (json!("theme"), json!(1))
    );

    // The same (collection, id) again: 409 with the existing record.
    let r = post(
        s.addr,
        "/v1/ops",
        &create_as("c2", "settings", json!("theme"), "light"),
    )
    .await;
    assert_eq!(r.status, 409);
    assert_eq!(r.json(), json!({"error": "conflict", "record": rec}));

    // The same id in another collection is another record.
    let other = post(
        s.addr,
        "/v1/ops",
        &create_as("c3", "prefs", json!("theme"), "blue"),
    )
    .await;
    assert_eq!(other.status, 200);
    assert_eq!(other.json()["record"]["data"]["title"], "blue");
    assert_eq!(other.json()["record"]["version"], 1);

    // Over a tombstone: 409 with the tombstone.
    let mut del = delete_op("c4", "theme", 1);
    del["collection"] = json!("settings");
    let tomb = post(s.addr, "/v1/ops", &del).await.json()["record"].clone();
    assert_eq!(tomb["deleted"], true);
    let r = post(
        s.addr,
        "/v1/ops",
        &create_as("c5", "settings", json!("theme"), "again"),
    )
    .await;
    assert_eq!(r.status, 409);
    assert_eq!(r.json()["record"], tomb);
    // "prefs/theme" was untouched by the delete.
    let mut upd = update_op("c6", "theme", 1, "green");
    upd["collection"] = json!("prefs");
    assert_eq!(
        post(s.addr, "/v1/ops", &upd).await.json()["record"]["version"],
        2
    );

    // A replayed op_id answers its original body, even after the delete.
    let again = post(
        s.addr,
        "/v1/ops",
        &create_as("c1", "settings", json!("theme"), "dark"),
    )
    .await;
    assert_eq!(
        (again.status, again.body.clone()),
        (200, first.body.clone())
    );

    // A create with id null still gets a server id.
    let r = post(
        s.addr,
        "/v1/ops",
        &create_as("c7", "settings", Value::Null, "x"),
    )
    .await;
    assert_eq!(r.status, 200);
    let id = record_id(&r);
    assert!(!id.is_empty() && id != "theme");

    // In a batch, a taken id stops the batch with a 409 result.
    let r = post(
        s.addr,
        "/v1/ops/batch",
        &json!({"ops": [
            create_as("b1", "settings", json!("font"), "mono"),
            create_as("b2", "settings", json!("font"), "serif"),
        ]}),
    )
    .await;
    let results = r.json()["results"].clone();
    assert_eq!(results[0]["status"], 200);
    assert_eq!(results[1]["status"], 409);
    assert_eq!(results[1]["record"]["data"]["title"], "mono");
    // Applied: c1, c3, c4, c6, c7, b1 (no conflicts, no replays).
    let page = get(s.addr, "/v1/changes").await.json();
    assert_eq!(page["changes"].as_array().expect("changes").len(), 6);
    s.stop().await;
}

#[tokio::test]
async fn unstorable_client_ids_are_422() {
    let s = Server::plain().await;
    for bad in [
        json!(""),
        json!("x".repeat(257)),
        json!("tab\there"),
        json!("nul\u{0}"),
    ] {
        let r = post(
            s.addr,
            "/v1/ops",
            &create_as("bad", "todos", bad.clone(), "x"),
        )
        .await;
        assert_eq!(r.status, 422, "id {bad}");
        assert!(r.json()["error"].as_str().expect("reason").contains("id"));
    }
    let ok = post(
        s.addr,
        "/v1/ops",
        &create_as("ok", "todos", json!("x".repeat(256)), "x"),
    )
    .await;
    assert_eq!(ok.status, 200);
    s.stop().await;
}
