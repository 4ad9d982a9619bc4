//! Scripted HTTP servers for fault tests: a tiny blocking HTTP/1.1 server
//! on 127.0.0.1:0 whose every reply comes from a closure, bounded in time
//! and request count, that logs each request's arrival and reply times; and
//! [`RefBackend`], the reference backend's own store and rules (the
//! protocol is in docs/backend-protocol.md) for those closures to build on.
#![allow(dead_code)]

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::Value;
use syncd::backend::protocol::Features;
use syncd::backend::server::handler::{self, JsonReply};
use syncd::backend::server::ops::{plan, Plan, Rejection, ValidOp};
use syncd::backend::server::redb_store::RedbStore;
use syncd::backend::server::store::{BackendStore, ChangeSlice, Outcome, StoreError};

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

    /// No reply at all: the server closes the connection after handling
    /// the request (logged with status 0). With a handler that applied the
    /// op first, this is the lost reply.
    pub fn drop_connection() -> Reply {
        Reply {
            status: 0,
            headers: Vec::new(),
            body: String::new(),
        }
    }

    pub fn with_header(mut self, k: &str, v: &str) -> Reply {
        self.headers.push((k.to_owned(), v.to_owned()));
        self
    }
}

impl From<JsonReply> for Reply {
    fn from(r: JsonReply) -> Reply {
        Reply {
            status: r.status,
            headers: r
                .retry_after_s
                .map(|s| ("Retry-After".to_owned(), s.to_string()))
                .into_iter()
                .collect(),
            body: String::from_utf8(r.body).expect("JSON is UTF-8"),
        }
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
        if reply.status == 0 {
            log.lock().unwrap_or_else(|p| p.into_inner()).push(Logged {
                req,
                status: 0,
                replied_at: Instant::now(),
            });
            return; // dropping both halves closes the socket unanswered
        }
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

/// Refuses an op that passed the protocol's own checks: the scripted
/// server answers it like an invalid op (see [`handler::Check`]).
pub type Validator = Box<dyn Fn(&ValidOp) -> Result<(), Rejection> + Send>;

/// The reference backend behind a scripted server: its redb store (in a
/// temp dir) and its rules, answered through the same [`handler`] functions
/// as `syncd backend`, so every reply is the reference backend's byte for
/// byte. Scripted on top, for what the reference backend cannot do on
/// demand: no batch endpoint, content-based refusals (`validate`) and
/// losing a record ([`RefBackend::forget`]).
pub struct RefBackend {
    /// Whether `v1/ops/batch` exists (else 404, like `--no-batch`).
    pub batch: bool,
    pub validate: Option<Validator>,
    store: Forgetful,
    _dir: tempfile::TempDir,
}

impl RefBackend {
    pub fn new(batch: bool) -> RefBackend {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = RedbStore::open(dir.path()).expect("open backend store");
        RefBackend {
            batch,
            validate: None,
            store: Forgetful {
                inner: store,
                lost: Mutex::new(HashSet::new()),
            },
            _dir: dir,
        }
    }

    /// The current records, from the change log: server id -> (collection,
    /// record as JSON). Tombstones included; lost records not.
    pub fn records(&self) -> HashMap<String, (String, Value)> {
        let lost = self.store.lost();
        let mut out = HashMap::new();
        let mut since = 0;
        loop {
            let slice = self.store.changes(since, 1000).expect("backend changes");
            for (seq, ch) in slice.entries {
                since = seq;
                if !lost.contains(&ch.record.id) {
                    let rec = serde_json::to_value(&ch.record).expect("record as JSON");
                    out.insert(ch.record.id.clone(), (ch.collection, rec));
                }
            }
            if !slice.more {
                return out;
            }
        }
    }

    /// Every entry of the change log, in order, as JSON
    /// (`{"collection", "record"}`).
    pub fn changes(&self) -> Vec<Value> {
        let mut out = Vec::new();
        let mut since = 0;
        loop {
            let slice = self.store.changes(since, 1000).expect("backend changes");
            for (seq, ch) in slice.entries {
                since = seq;
                out.push(serde_json::to_value(&ch).expect("change as JSON"));
            }
            if !slice.more {
                return out;
            }
        }
    }

    /// Loses a record (a server restored from an old backup, say): from now
    /// on every op on `id` meets the rules as if it did not exist (404).
    pub fn forget(&mut self, id: &str) {
        self.store
            .lost
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id.to_owned());
    }

    pub fn handle(&self, req: &Req) -> Reply {
        let store: &dyn BackendStore = &self.store;
        let check = |op: &ValidOp| self.validate.as_ref().map_or(Ok(()), |v| v(op));
        let r = match (req.method.as_str(), req.route()) {
            ("GET", "health") => {
                // The scripted server never holds a pull, and mints ids.
                let features = Features {
                    batch: self.batch,
                    wait: false,
                    client_ids: false,
                    scopes: false,
                    blobs: false,
                };
                handler::health(store, &features)
            }
            ("GET", "changes") => handler::changes(store, req.query()),
            ("POST", "ops") => handler::op(store, &req.body, &check).reply,
            ("POST", "batch") if self.batch => handler::batch(store, &req.body, &check).reply,
            _ => JsonReply::error(404, "not found"),
        };
        r.into()
    }
}

/// The redb store with records that can be lost: an op on a lost record
/// gets what [`plan`] decides with no current record (404), and the ops
/// after it in a batch are not applied, as the store itself would do.
struct Forgetful {
    inner: RedbStore,
    lost: Mutex<HashSet<String>>,
}

impl Forgetful {
    fn lost(&self) -> HashSet<String> {
        self.lost.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

impl BackendStore for Forgetful {
    fn apply(&self, ops: &[ValidOp]) -> Result<Vec<Outcome>, StoreError> {
        let lost = self.lost();
        let on_lost = ops
            .iter()
            .position(|op| op.action.target_id().is_some_and(|id| lost.contains(id)));
        let Some(k) = on_lost else {
            return self.inner.apply(ops);
        };
        let mut out = self.inner.apply(&ops[..k])?;
        if out.len() == k && out.iter().all(Outcome::is_applied) {
            match plan(&ops[k], None, String::new) {
                Plan::NotFound(reason) => out.push(Outcome::NotFound(reason)),
                other => unreachable!("an op on a lost record planned as {other:?}"),
            }
        }
        Ok(out)
    }

    fn changes(&self, since: u64, limit: usize) -> Result<ChangeSlice, StoreError> {
        self.inner.changes(since, limit)
    }

    fn check(&self) -> Result<(), StoreError> {
        self.inner.check()
    }

    fn content_refs(&self) -> Result<std::collections::HashSet<String>, StoreError> {
        self.inner.content_refs()
    }

    fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.inner.subscribe()
    }
}
