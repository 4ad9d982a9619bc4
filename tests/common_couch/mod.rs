//! Harness for the CouchDB backend tests: a throwaway pouchdb-server (npm;
//! it speaks CouchDB's HTTP API) on a free loopback port, in memory, plus a
//! small forwarding proxy that can drop a reply after the request went
//! through (a lost reply). `.ci/run` pre-installs pouchdb-server; locally,
//! [`Couch::start`] installs it with npm into a cache dir, or returns
//! `None` (the test prints why and skips) when node/npm are missing.
#![allow(dead_code)]

pub mod pouch_app;
pub mod users;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::common::Daemon;

/// Where the npm package is installed: `$SYNCD_TEST_NPM_DIR`, else
/// `$HOME/.cache/syncd-test-npm`.
pub fn npm_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("SYNCD_TEST_NPM_DIR") {
        return PathBuf::from(d);
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    home.join(".cache/syncd-test-npm")
}

fn has(cmd: &str) -> bool {
    Command::new(cmd)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// The pouchdb-server launcher, installing it if node and npm exist.
///
/// Test threads, test binaries and other checkouts share the cache dir, so
/// the install is serialized by an exclusive lock on `<dir>/.install.lock`
/// and made in a staging dir whose `node_modules` is then renamed into
/// place: the launcher exists only once a whole install does (concurrent
/// `npm install`s into one dir used to break each other's files).
pub fn pouchdb_server() -> Result<PathBuf, String> {
    let dir = npm_dir();
    let bin = dir.join("node_modules/.bin/pouchdb-server");
    if bin.exists() {
        return Ok(bin);
    }
    if !has("node") || !has("npm") {
        return Err("node/npm not found (`.ci/run` installs them)".into());
    }
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let lock_path = dir.join(".install.lock");
    let lock =
        std::fs::File::create(&lock_path).map_err(|e| format!("{}: {e}", lock_path.display()))?;
    // Blocks while another test (or process) installs.
    lock.lock()
        .map_err(|e| format!("lock {}: {e}", lock_path.display()))?;
    if bin.exists() {
        return Ok(bin); // installed while we waited
    }
    let staging = dir.join(".staging");
    let _ = std::fs::remove_dir_all(&staging); // a killed install's leftovers
    std::fs::create_dir_all(&staging).map_err(|e| format!("{}: {e}", staging.display()))?;
    // Without a package.json of its own npm would walk up and install into
    // the cache dir itself.
    std::fs::write(staging.join("package.json"), "{}\n")
        .map_err(|e| format!("{}: {e}", staging.display()))?;
    let st = Command::new("npm")
        .args([
            "install",
            "--no-audit",
            "--no-fund",
            "--loglevel=error",
            "pouchdb-server",
        ])
        .current_dir(&staging)
        .status()
        .map_err(|e| format!("npm: {e}"))?;
    if !st.success() || !staging.join("node_modules/.bin/pouchdb-server").exists() {
        return Err(format!(
            "npm install pouchdb-server failed in {}",
            staging.display()
        ));
    }
    // No launcher, so no complete install: whatever is there is a partial
    // one (an interrupted install); replace it.
    let modules = dir.join("node_modules");
    let _ = std::fs::remove_dir_all(&modules);
    std::fs::rename(staging.join("node_modules"), &modules)
        .map_err(|e| format!("install into {}: {e}", modules.display()))?;
    for f in ["package.json", "package-lock.json"] {
        let _ = std::fs::rename(staging.join(f), dir.join(f));
    }
    let _ = std::fs::remove_dir_all(&staging);
    Ok(bin)
}

/// A free loopback port (bound and released).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

// Devices and their records, as the CouchDB tests use them.

/// One collection per conflict strategy.
pub const STRATEGIES: &str = "[collections.sw]\nconflict = \"server-wins\"\n[collections.lww]\nconflict = \"last-write-wins\"\n[collections.mg]\nconflict = \"merge\"\n[collections.man]\nconflict = \"manual\"\n";

/// A device syncing to the CouchDB database at `url`; `backend` adds keys
/// to `[backend]`, `tables` goes after `[sync]`.
pub fn device_with(url: &str, backend: &str, tables: &str) -> Daemon {
    Daemon::start(&format!(
        "[backend]\nkind = \"couchdb\"\nurl = {url:?}\ntimeout_ms = 3000\n{backend}\n[sync]\npull_interval_s = 1\nbackoff_initial_ms = 100\nbackoff_max_ms = 1000\n{tables}"
    ))
}

pub fn device(url: &str) -> Daemon {
    device_with(url, "", STRATEGIES)
}

pub fn get(d: &Daemon, coll: &str, id: &str) -> Option<Value> {
    let o = d.cli(&["get", coll, id]);
    o.status
        .success()
        .then(|| serde_json::from_slice(&o.stdout).ok())
        .flatten()
}

pub fn put(d: &Daemon, coll: &str, id: &str, doc: Value) {
    d.ok(&["put", coll, &doc.to_string(), "--id", id]);
}

pub fn sync(d: &Daemon) {
    d.ok(&["sync", "--wait"]);
}

pub fn depth(d: &Daemon) -> u64 {
    d.status()["queue_depth"].as_u64().unwrap_or(u64::MAX)
}

pub fn generation(doc: &Value) -> u64 {
    doc["_rev"]
        .as_str()
        .and_then(|r| r.split('-').next())
        .and_then(|g| g.parse().ok())
        .unwrap_or(0)
}

/// The generation a device's record version counts (docs/backends.md
/// "Versions": the generation sits above 32 bits of the revision's hash).
pub fn record_gen(rec: &Value) -> u64 {
    rec["version"].as_u64().unwrap_or(0) >> 32
}

/// The version syncd gives a CouchDB document's revision.
pub fn rev_version(doc: &Value) -> u64 {
    syncd::backend::couch::doc::version(doc["_rev"].as_str().unwrap_or_default()).unwrap_or(0)
}

/// The record's fields of a native document: all but `_*` and `syncd`.
pub fn fields(doc: &Value) -> Value {
    let m: serde_json::Map<String, Value> = doc
        .as_object()
        .into_iter()
        .flatten()
        .filter(|(k, _)| !k.starts_with('_') && *k != "syncd")
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    Value::Object(m)
}

/// `doc` (native) with its record's fields replaced by `fields` and
/// `syncd.updated_at` set to `updated_at`, as another client's edit.
pub fn edited(doc: &Value, fields: Value, updated_at: i64) -> Value {
    let mut out = fields;
    for k in ["_id", "_rev", "syncd"] {
        out[k] = doc[k].clone();
    }
    out["syncd"]["updated_at"] = Value::from(updated_at);
    out
}

/// A running pouchdb-server, killed on drop.
pub struct Couch {
    pub port: u16,
    pub addr: String,
    child: Option<Child>,
    dir: tempfile::TempDir,
}

/// The database the tests use.
pub const DB: &str = "todos";

impl Couch {
    /// Starts a server on a free port with database [`DB`]; `None` (with
    /// a printed note) when pouchdb-server is unavailable.
    pub fn start() -> Option<Couch> {
        Couch::start_on(free_port(), true)
    }

    /// Starts a server on `port`, creating [`DB`] if `create_db`.
    pub fn start_on(port: u16, create_db: bool) -> Option<Couch> {
        let bin = match pouchdb_server() {
            Ok(b) => b,
            Err(e) => {
                eprintln!("SKIPPED: CouchDB backend tests need pouchdb-server: {e}");
                return None;
            }
        };
        let dir = tempfile::tempdir().expect("tempdir");
        let stderr_path = dir.path().join("stderr.txt");
        let stderr = std::fs::File::create(&stderr_path).expect("stderr file");
        let child = Command::new(bin)
            .args([
                "--in-memory",
                "--host",
                "127.0.0.1",
                "--no-stdout-logs",
                "--port",
            ])
            .arg(port.to_string())
            .current_dir(dir.path()) // its config.json and log.txt go here
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(stderr))
            .spawn()
            .expect("start pouchdb-server");
        let mut c = Couch {
            port,
            addr: format!("127.0.0.1:{port}"),
            child: Some(child),
            dir,
        };
        // Waits for the server to answer or exit; the deadline only
        // detects a hang.
        let deadline = Instant::now() + Duration::from_secs(120);
        while TcpStream::connect(&c.addr).is_err() || c.req("GET", "/", None).0 != 200 {
            let stderr = || std::fs::read_to_string(&stderr_path).unwrap_or_default();
            if let Some(st) = c.child.as_mut().and_then(|ch| ch.try_wait().ok().flatten()) {
                panic!(
                    "pouchdb-server exited ({st}) before answering; a broken install? \
                     (remove {} to reinstall)\n{}",
                    npm_dir().display(),
                    stderr()
                );
            }
            assert!(
                Instant::now() < deadline,
                "pouchdb-server did not answer within 120 s\n{}",
                stderr()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        if create_db {
            c.create_db();
        }
        Some(c)
    }

    pub fn create_db(&self) {
        let (s, v) = self.req("PUT", &format!("/{DB}"), None);
        assert!(s == 201 || s == 412, "create db: {s} {v}");
    }

    /// The database URL the daemon is configured with.
    pub fn url(&self) -> String {
        format!("http://{}/{DB}", self.addr)
    }

    /// A request straight to CouchDB's HTTP API.
    pub fn req(&self, method: &str, path: &str, body: Option<&str>) -> (u16, Value) {
        crate::common::http(&self.addr, method, path, body)
    }

    /// The winning revision of `collection:id` (404 → `None`).
    pub fn doc(&self, collection: &str, id: &str) -> Option<Value> {
        let (s, v) = self.req(
            "GET",
            &format!("/{DB}/{collection}:{id}?conflicts=true"),
            None,
        );
        (s == 200).then_some(v)
    }

    /// Every leaf of `collection:id`, tombstones included.
    pub fn leaves(&self, collection: &str, id: &str) -> Vec<Value> {
        let (_, v) = self.req(
            "GET",
            &format!("/{DB}/{collection}:{id}?open_revs=all"),
            None,
        );
        v.as_array().cloned().unwrap_or_default()
    }

    /// The `_changes` rows (ids in feed order).
    pub fn change_ids(&self) -> Vec<String> {
        let (_, v) = self.req("GET", &format!("/{DB}/_changes"), None);
        v["results"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|r| r["id"].as_str().map(str::to_owned))
            .collect()
    }
}

impl Drop for Couch {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// One request seen by the [`Proxy`]: method, path, how many documents a
/// `_bulk_docs` body held, whether its reply was dropped.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub path: String,
    pub docs: usize,
    pub dropped: bool,
}

impl Seen {
    pub fn is_bulk_write(&self) -> bool {
        self.method == "POST" && self.path.contains("/_bulk_docs")
    }

    pub fn is_bulk_read(&self) -> bool {
        self.method == "POST" && self.path.contains("/_all_docs")
    }
}

/// Something another client does between the adapter's read and its
/// `_bulk_docs` write.
pub type Hook = Box<dyn FnOnce() + Send>;

/// What the proxy's connection threads share.
#[derive(Clone, Default)]
struct Shared {
    drop_puts: Arc<Mutex<u32>>,
    drop_bulk: Arc<Mutex<u32>>,
    refuse_bulk: Arc<Mutex<u32>>,
    before_bulk: Arc<Mutex<Option<Hook>>>,
    seen: Arc<Mutex<Vec<Seen>>>,
}

/// A forwarding proxy in front of a server. Each request is forwarded on a
/// fresh connection. While `drop_puts` (or `drop_bulk`) is above zero, the
/// reply to a PUT (or a `POST _bulk_docs`) is thrown away after the server
/// handled it (the client's connection is closed instead): a lost reply.
/// A hook set with [`Proxy::before_bulk`] runs when the next `_bulk_docs`
/// arrives, before it is forwarded.
pub struct Proxy {
    pub addr: String,
    pub drop_puts: Arc<Mutex<u32>>,
    pub drop_bulk: Arc<Mutex<u32>>,
    /// While above zero, a `_bulk_docs` is answered `413` (a JSON
    /// `too_large`, as CouchDB answers a request over its size limit)
    /// without reaching the server.
    pub refuse_bulk: Arc<Mutex<u32>>,
    shared: Shared,
}

impl Proxy {
    pub fn start(upstream: &str) -> Proxy {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind proxy");
        let addr = l.local_addr().expect("addr").to_string();
        let shared = Shared::default();
        let p = Proxy {
            addr,
            drop_puts: shared.drop_puts.clone(),
            drop_bulk: shared.drop_bulk.clone(),
            refuse_bulk: shared.refuse_bulk.clone(),
            shared: shared.clone(),
        };
        let up = upstream.to_owned();
        std::thread::spawn(move || {
            for conn in l.incoming().flatten() {
                let (up, shared) = (up.clone(), shared.clone());
                std::thread::spawn(move || serve(conn, &up, &shared));
            }
        });
        p
    }

    pub fn url(&self) -> String {
        format!("http://{}/{DB}", self.addr)
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.shared
            .seen
            .lock()
            .map(|s| s.clone())
            .unwrap_or_default()
    }

    pub fn clear_seen(&self) {
        self.shared.seen.lock().expect("lock").clear();
    }

    /// Runs `hook` when the next `_bulk_docs` arrives, before forwarding it.
    pub fn before_bulk(&self, hook: Hook) {
        *self.shared.before_bulk.lock().expect("lock") = Some(hook);
    }
}

/// Takes one from `counter` if it is above zero.
fn take_one(counter: &Mutex<u32>) -> bool {
    let mut d = counter.lock().expect("lock");
    let hit = *d > 0;
    *d = d.saturating_sub(1);
    hit
}

/// How many documents a `_bulk_docs` body holds.
fn doc_count(body: &[u8]) -> usize {
    serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|v| v["docs"].as_array().map(Vec::len))
        .unwrap_or(0)
}

/// Reads one HTTP request: the head (without the final blank line) and body.
fn read_request(s: &mut TcpStream) -> Option<(String, Vec<u8>)> {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        if s.read(&mut byte).ok()? == 0 {
            return None;
        }
        buf.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&buf[..buf.len() - 4]).into_owned();
    let len = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse::<usize>().ok())?
        })
        .unwrap_or(0);
    let mut body = vec![0u8; len];
    s.read_exact(&mut body).ok()?;
    Some((head, body))
}

/// `head` with its Connection header replaced by `Connection: close`.
fn closing(head: &str) -> String {
    let mut out: Vec<&str> = head
        .split("\r\n")
        .filter(|l| !l.to_ascii_lowercase().starts_with("connection:"))
        .collect();
    out.push("Connection: close");
    out.join("\r\n") + "\r\n\r\n"
}

/// Serves one request per connection (the reply says `Connection: close`).
fn serve(mut client: TcpStream, up: &str, shared: &Shared) {
    let Some((head, body)) = read_request(&mut client) else {
        return;
    };
    let mut words = head.split_whitespace();
    let method = words.next().unwrap_or_default().to_owned();
    let path = words.next().unwrap_or_default().to_owned();
    let mut seen = Seen {
        method,
        path,
        docs: 0,
        dropped: false,
    };
    if seen.is_bulk_write() {
        seen.docs = doc_count(&body);
        if take_one(&shared.refuse_bulk) {
            let body = r#"{"error":"too_large","reason":"the request entity is too large"}"#;
            let reply = format!(
                "HTTP/1.1 413 Request Entity Too Large\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = client.write_all(reply.as_bytes());
            if let Ok(mut s) = shared.seen.lock() {
                s.push(seen);
            }
            return;
        }
        let hook = shared.before_bulk.lock().expect("lock").take();
        if let Some(h) = hook {
            h();
        }
    }
    let Ok(mut server) = TcpStream::connect(up) else {
        return;
    };
    let _ = server.write_all(closing(&head).as_bytes());
    let _ = server.write_all(&body);
    let mut reply = Vec::new();
    let _ = server.read_to_end(&mut reply);
    seen.dropped = (seen.method == "PUT" && take_one(&shared.drop_puts))
        || (seen.is_bulk_write() && take_one(&shared.drop_bulk));
    let dropped = seen.dropped;
    if let Ok(mut s) = shared.seen.lock() {
        s.push(seen);
    }
    if dropped {
        return; // the server applied it; the client never hears
    }
    let split = reply
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or(reply.len());
    let head = String::from_utf8_lossy(&reply[..split]).into_owned();
    let _ = client.write_all(closing(&head).as_bytes());
    let _ = client.write_all(reply.get(split + 4..).unwrap_or_default());
}
