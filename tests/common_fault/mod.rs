//! Scripted HTTP servers for fault tests: a tiny blocking HTTP/1.1 server
//! on 127.0.0.1:0 whose every reply comes from a closure, bounded in time
//! and request count, that logs each request's arrival and reply times; and
//! [`MiniBackend`], a minimal in-memory implementation of the backend
//! protocol (docs/backend-protocol.md) for those closures to build on.
#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// One request as the scripted server read it.
#[derive(Debug, Clone)]
pub struct Req {
    /// When its head and body had been read.
    pub at: Instant,
    pub method: String,
    /// Path with the query.
    pub target: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Req {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn path(&self) -> &str {
        self.target.split('?').next().unwrap_or("")
    }

    pub fn query(&self) -> &str {
        self.target.split_once('?').map(|x| x.1).unwrap_or("")
    }

    /// The protocol endpoint: "health", "ops", "batch", "changes", or "".
    pub fn route(&self) -> &'static str {
        let p = self.path().trim_end_matches('/');
        if p.ends_with("/v1/health") {
            "health"
        } else if p.ends_with("/v1/ops/batch") {
            "batch"
        } else if p.ends_with("/v1/ops") {
            "ops"
        } else if p.ends_with("/v1/changes") {
            "changes"
        } else {
            ""
        }
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }
}

/// A reply to send.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Reply {
    pub fn json(status: u16, v: Value) -> Reply {
        Reply {
            status,
            headers: Vec::new(),
            body: v.to_string(),
        }
    }

    pub fn with_header(mut self, k: &str, v: &str) -> Reply {
        self.headers.push((k.to_owned(), v.to_owned()));
        self
    }
}

/// One handled request in the log.
#[derive(Debug, Clone)]
pub struct Logged {
    pub req: Req,
    pub status: u16,
    /// When the reply had been written and flushed.
    pub replied_at: Instant,
}

type Handler = Box<dyn FnMut(&Req) -> Reply + Send>;

/// A scripted server; stops accepting on drop, after `max_time`, or after
/// `max_requests` requests.
pub struct Scripted {
    pub addr: String,
    log: Arc<Mutex<Vec<Logged>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Scripted {
    pub fn start(
        max_time: Duration,
        max_requests: usize,
        handler: impl FnMut(&Req) -> Reply + Send + 'static,
    ) -> Scripted {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind scripted server");
        listener.set_nonblocking(true).expect("nonblocking");
        let addr = listener.local_addr().expect("addr").to_string();
        let log = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let handler: Arc<Mutex<Handler>> = Arc::new(Mutex::new(Box::new(handler)));
        let count = Arc::new(AtomicUsize::new(0));
        let thread = {
            let (log, stop) = (log.clone(), stop.clone());
            std::thread::spawn(move || {
                let started = Instant::now();
                while !stop.load(Ordering::SeqCst)
                    && started.elapsed() < max_time
                    && count.load(Ordering::SeqCst) < max_requests
                {
                    match listener.accept() {
                        Ok((s, _)) => {
                            let (log, handler, count) =
                                (log.clone(), handler.clone(), count.clone());
                            std::thread::spawn(move || {
                                serve_conn(s, &log, &handler, &count, max_requests)
                            });
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                            std::thread::sleep(Duration::from_millis(2))
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(10)),
                    }
                }
            })
        };
        Scripted {
            addr,
            log,
            stop,
            thread: Some(thread),
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}/", self.addr)
    }

    pub fn log(&self) -> Vec<Logged> {
        self.log.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

impl Drop for Scripted {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Serves requests on one connection (keep-alive) until the peer closes,
/// 10 s of idleness, or the request budget is spent.
fn serve_conn(
    s: TcpStream,
    log: &Mutex<Vec<Logged>>,
    handler: &Mutex<Handler>,
    count: &AtomicUsize,
    max_requests: usize,
) {
    let _ = s.set_nonblocking(false);
    let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
    let _ = s.set_nodelay(true);
    let mut w = match s.try_clone() {
        Ok(w) => w,
        Err(_) => return,
    };
    let mut r = BufReader::new(s);
    loop {
        let Some(req) = read_request(&mut r) else {
            return;
        };
        if count.fetch_add(1, Ordering::SeqCst) >= max_requests {
            return;
        }
        let close = req
            .header("connection")
            .is_some_and(|v| v.eq_ignore_ascii_case("close"));
        let reply = {
            let mut h = handler.lock().unwrap_or_else(|p| p.into_inner());
            (*h)(&req)
        };
        let mut head = format!(
            "HTTP/1.1 {} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\n",
            reply.status,
            reply.body.len()
        );
        for (k, v) in &reply.headers {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        if close {
            head.push_str("Connection: close\r\n");
        }
        head.push_str("\r\n");
        let ok = w.write_all(head.as_bytes()).is_ok()
            && w.write_all(reply.body.as_bytes()).is_ok()
            && w.flush().is_ok();
        log.lock().unwrap_or_else(|p| p.into_inner()).push(Logged {
            req,
            status: reply.status,
            replied_at: Instant::now(),
        });
        if !ok || close {
            return;
        }
    }
}

fn read_request(r: &mut BufReader<TcpStream>) -> Option<Req> {
    let mut line = String::new();
    if r.read_line(&mut line).ok()? == 0 {
        return None;
    }
    let mut parts = line.split_whitespace();
    let method = parts.next()?.to_owned();
    let target = parts.next()?.to_owned();
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        if r.read_line(&mut h).ok()? == 0 {
            return None;
        }
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        let (k, v) = h.split_once(':')?;
        headers.push((k.trim().to_owned(), v.trim().to_owned()));
    }
    let get = |name: &str| {
        headers
            .iter()
            .find(|(k, _): &&(String, String)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.clone())
    };
    let mut body = Vec::new();
    if get("transfer-encoding").is_some_and(|v| v.to_ascii_lowercase().contains("chunked")) {
        loop {
            let mut size = String::new();
            r.read_line(&mut size).ok()?;
            let n = usize::from_str_radix(size.trim().split(';').next()?, 16).ok()?;
            let mut chunk = vec![0; n + 2];
            r.read_exact(&mut chunk).ok()?;
            if n == 0 {
                break;
            }
            body.extend_from_slice(&chunk[..n]);
        }
    } else if let Some(n) = get("content-length").and_then(|v| v.parse::<usize>().ok()) {
        if n > 16 * 1024 * 1024 {
            return None;
        }
        body = vec![0; n];
        r.read_exact(&mut body).ok()?;
    }
    Some(Req {
        at: Instant::now(),
        method,
        target,
        headers,
        body,
    })
}

/// Decides whether an op is refused for good: `Some((status, reason))`.
pub type Validator = Box<dyn Fn(&Value) -> Option<(u16, String)> + Send>;

/// A minimal protocol-following backend kept in memory: ids `s-N`,
/// versions, tombstones, remembered op_ids, a change log whose cursor is
/// its length, optional batch support.
pub struct MiniBackend {
    pub batch: bool,
    pub validate: Option<Validator>,
    records: HashMap<String, (String, Value)>,
    applied: HashMap<String, Value>,
    changes: Vec<Value>,
    next_id: u64,
}

impl MiniBackend {
    pub fn new(batch: bool) -> MiniBackend {
        MiniBackend {
            batch,
            validate: None,
            records: HashMap::new(),
            applied: HashMap::new(),
            changes: Vec::new(),
            next_id: 1,
        }
    }

    /// The current records: server id -> (collection, record).
    pub fn records(&self) -> HashMap<String, (String, Value)> {
        self.records.clone()
    }

    /// Loses a record (a server restored from an old backup, say).
    pub fn forget(&mut self, id: &str) {
        self.records.remove(id);
    }

    /// Every applied change, in order.
    pub fn changes(&self) -> Vec<Value> {
        self.changes.clone()
    }

    pub fn handle(&mut self, req: &Req) -> Reply {
        match (req.method.as_str(), req.route()) {
            ("GET", "health") => Reply::json(200, json!({"ok": true})),
            ("GET", "changes") => {
                let since = req
                    .query()
                    .split('&')
                    .find_map(|kv| kv.strip_prefix("since="))
                    .and_then(|v| v.parse::<usize>().ok())
                    .unwrap_or(0)
                    .min(self.changes.len());
                Reply::json(
                    200,
                    json!({"changes": self.changes[since..], "cursor": self.changes.len().to_string(), "more": false}),
                )
            }
            ("POST", "ops") => {
                let (status, body) = self.apply(&req.json());
                Reply::json(status, body)
            }
            ("POST", "batch") if self.batch => {
                let ops = req.json()["ops"].as_array().cloned().unwrap_or_default();
                if ops.is_empty() {
                    return Reply::json(422, json!({"error": "empty batch"}));
                }
                let mut results = Vec::new();
                for op in &ops {
                    let (status, mut body) = self.apply(op);
                    body["status"] = json!(status);
                    results.push(body);
                    if status != 200 {
                        break;
                    }
                }
                Reply::json(200, json!({ "results": results }))
            }
            _ => Reply::json(404, json!({"error": "not found"})),
        }
    }

    /// Applies one op: (status, body) as `POST v1/ops` would answer.
    pub fn apply(&mut self, op: &Value) -> (u16, Value) {
        let Some(op_id) = op["op_id"].as_str() else {
            return (400, json!({"error": "op_id missing"}));
        };
        if let Some(r) = self.applied.get(op_id) {
            return (200, json!({ "record": r }));
        }
        if let Some((status, reason)) = self.validate.as_ref().and_then(|v| v(op)) {
            return (status, json!({ "error": reason }));
        }
        let collection = op["collection"].as_str().unwrap_or_default().to_owned();
        let ts = op["client_ts"].as_i64().unwrap_or(0);
        let rec = match op["kind"].as_str() {
            Some("create") => {
                let id = format!("s-{}", self.next_id);
                self.next_id += 1;
                json!({"id": id, "version": 1, "updated_at": ts, "deleted": false, "data": op["data"]})
            }
            Some(kind @ ("update" | "delete")) => {
                let id = op["id"].as_str().unwrap_or_default();
                let Some((_, cur)) = self.records.get(id) else {
                    return (404, json!({"error": format!("no record {id}")}));
                };
                if op["base_version"] != cur["version"] || (cur["deleted"] == json!(true)) {
                    return (409, json!({"error": "conflict", "record": cur}));
                }
                let v = cur["version"].as_u64().unwrap_or(0) + 1;
                if kind == "update" {
                    json!({"id": id, "version": v, "updated_at": ts, "deleted": false, "data": op["data"]})
                } else {
                    json!({"id": id, "version": v, "updated_at": ts, "deleted": true, "data": {}})
                }
            }
            _ => return (400, json!({"error": "bad kind"})),
        };
        let id = rec["id"].as_str().unwrap_or_default().to_owned();
        self.records.insert(id, (collection.clone(), rec.clone()));
        self.applied.insert(op_id.to_owned(), rec.clone());
        self.changes
            .push(json!({"collection": collection, "record": rec}));
        (200, json!({ "record": rec }))
    }
}
