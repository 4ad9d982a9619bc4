//! The daemon's side of users and scopes (protocol revision 3) against
//! servers that are not the reference backend: a scripted revision-3 server
//! for one user (`MiniScoped` below: session, per-scope feeds, `POST v1/pull`
//! pages and the enforcement rules of docs/backend-protocol.md §13), and a
//! revision-2 server, which must see exactly the bytes it always saw.
//!
//! `MiniScoped` keeps its grants on the server, as a server whose access
//! lists live in its own database would: a scope is revoked there without
//! the device's token changing, and the device learns it from a refused
//! pull. The reference backend cannot show that (its grants are the JWT's
//! claims); everything else is also tested against the real backend, with
//! real tokens, in `tests/scopes.rs`.

mod common;
mod common_fault;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{eventually, Daemon};
use common_fault::{RefBackend, Reply, Req, Scripted};
use serde_json::{json, Value};

/// One record as the mini server keeps it.
#[derive(Clone)]
struct Rec {
    scope: String,
    version: u64,
    deleted: bool,
    data: Value,
}

/// A revision-3 server for the user `alice`, in memory.
struct MiniScoped {
    /// scope -> write access.
    grants: BTreeMap<String, bool>,
    /// (collection, id) -> record.
    records: HashMap<(String, String), Rec>,
    /// scope -> its feed.
    feeds: HashMap<String, Vec<Value>>,
    /// op_id -> the reply given.
    replayed: HashMap<String, Reply>,
    /// Every op body received.
    ops: Vec<Value>,
}

const PRIVATE: &str = "user:alice";

fn error(status: u16, msg: &str, code: Option<&str>) -> Reply {
    let mut body = json!({ "error": msg });
    if let Some(c) = code {
        body["code"] = json!(c);
    }
    Reply::json(status, body)
}

impl MiniScoped {
    fn new(grants: &[(&str, bool)]) -> MiniScoped {
        MiniScoped {
            grants: grants.iter().map(|(s, w)| ((*s).to_owned(), *w)).collect(),
            records: HashMap::new(),
            feeds: HashMap::new(),
            replayed: HashMap::new(),
            ops: Vec::new(),
        }
    }

    fn wire(&self, id: &str, r: &Rec) -> Value {
        json!({"id": id, "version": r.version, "updated_at": 1000 + r.version,
               "deleted": r.deleted, "data": r.data, "scope": r.scope})
    }

    fn readable(&self, s: &str) -> bool {
        self.grants.contains_key(s)
    }

    fn writable(&self, s: &str) -> bool {
        self.grants.get(s).copied().unwrap_or(false)
    }

    /// Stores `r` and appends it to its scope's feed (and a gone entry to
    /// the feed it left).
    fn commit(&mut self, c: &str, id: &str, r: Rec, from: Option<String>) -> Value {
        let w = self.wire(id, &r);
        if let Some(old) = from.filter(|o| *o != r.scope) {
            self.feeds
                .entry(old)
                .or_default()
                .push(json!({"collection": c, "gone": {"id": id, "version": r.version}}));
        }
        self.feeds
            .entry(r.scope.clone())
            .or_default()
            .push(json!({"collection": c, "record": w.clone()}));
        self.records.insert((c.to_owned(), id.to_owned()), r);
        w
    }

    fn seed(&mut self, scope: &str, c: &str, id: &str, data: Value) {
        let r = Rec {
            scope: scope.into(),
            version: 1,
            deleted: false,
            data,
        };
        self.commit(c, id, r, None);
    }

    fn handle(&mut self, req: &Req) -> Reply {
        let path = req.path().trim_end_matches('/');
        if path.ends_with("/v1/health") {
            return Reply::json(
                200,
                json!({"ok": true, "features": ["client_ids", "scopes"]}),
            );
        }
        if path.ends_with("/v1/session") {
            let scopes: Vec<Value> = self
                .grants
                .iter()
                .map(|(n, w)| json!({"name": n, "access": if *w { "write" } else { "read" }}))
                .collect();
            return Reply::json(200, json!({"sub": "alice", "scopes": scopes}));
        }
        if path.ends_with("/v1/pull") {
            return self.pull(&req.json());
        }
        if path.ends_with("/v1/ops") {
            let op = req.json();
            self.ops.push(op.clone());
            let key = op["op_id"].as_str().unwrap_or_default().to_owned();
            if let Some(r) = self.replayed.get(&key) {
                return r.clone();
            }
            let r = self.apply(&op);
            self.replayed.insert(key, r.clone());
            return r;
        }
        error(404, "no such endpoint", None)
    }

    fn pull(&self, body: &Value) -> Reply {
        let limit = body["limit"].as_u64().unwrap_or(100) as usize;
        let mut out = serde_json::Map::new();
        for (scope, cursor) in body["scopes"].as_object().cloned().unwrap_or_default() {
            if !self.readable(&scope) {
                let msg = format!("no read access to scope '{scope}'");
                out.insert(scope, json!({"error": msg, "code": "scope_denied"}));
                continue;
            }
            let feed = self.feeds.get(&scope).cloned().unwrap_or_default();
            let from: usize = cursor
                .as_str()
                .and_then(|c| c.parse().ok())
                .unwrap_or(0)
                .min(feed.len());
            let to = (from + limit).min(feed.len());
            out.insert(
                scope,
                json!({"changes": feed[from..to], "cursor": to.to_string(),
                       "more": to < feed.len(), "remaining": feed.len() - to}),
            );
        }
        Reply::json(200, json!({ "scopes": out }))
    }

    fn apply(&mut self, op: &Value) -> Reply {
        let c = op["collection"].as_str().unwrap_or_default().to_owned();
        let id = op["id"].as_str().unwrap_or_default().to_owned();
        let asked = op["scope"].as_str().map(str::to_owned);
        let data = op["data"].clone();
        let existing = self.records.get(&(c.clone(), id.clone())).cloned();
        let denied = |s: &str| {
            error(
                403,
                &format!("no write access to scope '{s}'"),
                Some("scope_denied"),
            )
        };
        match op["kind"].as_str() {
            Some("create") => {
                let target = asked.unwrap_or_else(|| PRIVATE.to_owned());
                if let Some(e) = existing {
                    if !self.readable(&e.scope) {
                        let msg = format!("id '{id}' is taken in collection '{c}'");
                        return error(403, &msg, Some("id_taken"));
                    }
                    let rec = self.wire(&id, &e);
                    return Reply::json(409, json!({"error": "exists", "record": rec}));
                }
                if !self.writable(&target) {
                    return denied(&target);
                }
                let r = Rec {
                    scope: target,
                    version: 1,
                    deleted: false,
                    data,
                };
                Reply::json(200, json!({"record": self.commit(&c, &id, r, None)}))
            }
            Some(kind) => {
                let Some(e) = existing.filter(|e| self.readable(&e.scope)) else {
                    return error(404, "no such record", None);
                };
                if !self.writable(&e.scope) {
                    return denied(&e.scope);
                }
                let target = asked.unwrap_or_else(|| e.scope.clone());
                if !self.writable(&target) {
                    return denied(&target);
                }
                if op["base_version"].as_u64() != Some(e.version) {
                    let rec = self.wire(&id, &e);
                    return Reply::json(409, json!({"error": "version", "record": rec}));
                }
                let r = Rec {
                    scope: if kind == "delete" {
                        e.scope.clone()
                    } else {
                        target
                    },
                    version: e.version + 1,
                    deleted: kind == "delete",
                    data: if kind == "delete" { json!({}) } else { data },
                };
                Reply::json(
                    200,
                    json!({"record": self.commit(&c, &id, r, Some(e.scope))}),
                )
            }
            None => error(422, "no kind", None),
        }
    }
}

fn config(url: &str) -> String {
    format!(
        "[backend]\nurl = {url:?}\ntimeout_ms = 2000\n[sync]\nlive = false\npull_interval_s = 1\nbackoff_initial_ms = 100\nbackoff_max_ms = 1000\n"
    )
}

#[test]
fn scoped_sync_subscriptions_refusals_and_revocation() {
    let mut mini = MiniScoped::new(&[(PRIVATE, true), ("team-1", true), ("news", false)]);
    mini.seed("team-1", "notes", "t1", json!({"t": 1}));
    mini.seed("news", "notes", "n1", json!({"n": 1}));
    let mini = Arc::new(Mutex::new(mini));
    let srv = {
        let mini = mini.clone();
        Scripted::start(Duration::from_secs(120), 20_000, move |req| {
            mini.lock().unwrap().handle(req)
        })
    };
    let d = Daemon::start(&config(&srv.url()));

    // Every readable scope is synced by default.
    eventually(20, "three scopes live", || {
        let s = d.scopes();
        s.len() == 3 && s.values().all(|v| v["state"] == "live")
    });
    let s = d.scopes();
    assert_eq!(s["news"]["access"], "read");
    assert_eq!(s["team-1"]["records"], 1);
    assert_eq!(s["team-1"]["first_sync_done"], true);
    let t1 = d.json(&["get", "notes", "t1"]);
    assert_eq!(t1["scope"], "team-1");
    let st = d.status();
    assert_eq!(st["scopes"].as_array().map(Vec::len), Some(3));
    let table = d.ok(&["scopes"]);
    assert!(
        table.contains("news") && table.contains("read") && table.contains("live"),
        "{table}"
    );
    let human = d.ok(&["status"]);
    assert!(
        human.contains("scope:") && human.contains("team-1"),
        "{human}"
    );

    // A put without a scope goes to the private scope, one with a scope
    // there; a scope the token cannot write is refused for that op only.
    d.ok(&[
        "put",
        "notes",
        "--id",
        "p1",
        "{\"a\":1}",
        "--wait",
        "synced",
    ]);
    d.ok(&[
        "put",
        "notes",
        "--id",
        "s1",
        "--scope",
        "team-1",
        "{\"b\":1}",
        "--wait",
        "synced",
    ]);
    let refused = d.cli(&[
        "put",
        "notes",
        "--id",
        "x1",
        "--scope",
        "news",
        "{\"x\":1}",
        "--wait",
        "synced",
    ]);
    assert_eq!(
        refused.status.code(),
        Some(1),
        "{}",
        common::output_text(&refused)
    );
    assert_eq!(d.json(&["get", "notes", "p1"])["scope"], PRIVATE);
    assert_eq!(d.json(&["get", "notes", "s1"])["scope"], "team-1");
    let dead = d.json_lines(&["dead-letters", "--json"]);
    assert_eq!(dead.len(), 1);
    let why = dead[0]["last_error"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(
        why.contains("scope_denied") && why.contains("news"),
        "{why}"
    );
    {
        let m = mini.lock().unwrap();
        let sent: Vec<Option<&str>> = m.ops.iter().map(|o| o["scope"].as_str()).collect();
        assert_eq!(sent, [None, Some("team-1"), Some("news")]);
    }
    let bad = d.cli(&["put", "notes", "--scope", "team 1", "{}"]);
    assert_eq!(bad.status.code(), Some(2));
    assert!(common::output_text(&bad).contains("team 1"));

    // Revocation: the next pull of team-1 is refused; the daemon fetches
    // the session again and purges team-1's records, nothing else.
    mini.lock().unwrap().grants.remove("team-1");
    eventually(20, "team-1 purged", || {
        !d.has("notes", "t1") && !d.has("notes", "s1")
    });
    assert!(d.has("notes", "p1") && d.has("notes", "n1"));
    assert!(!d.scopes().contains_key("team-1"));

    // Unsubscribe purges; subscribe --wait back-fills from the start.
    d.ok(&["unsubscribe", "news"]);
    assert!(!d.has("notes", "n1"));
    assert_eq!(d.scopes()["news"]["state"], "unsubscribed");
    d.ok(&["subscribe", "news", "--wait", "--timeout", "30"]);
    assert!(d.has("notes", "n1"));
    assert_eq!(d.scopes()["news"]["state"], "live");
    let config = d.config.display().to_string();
    let report = d.ok(&["check", "--config", &config]);
    assert!(report.contains("no problem"), "{report}");

    // A revocation during `subscribe --wait` ends it with
    // permission_denied: the session applied after the refused pull wakes
    // the wait. Paused meanwhile, so that the scope cannot finish its first
    // sync before the server revokes it.
    d.ok(&["unsubscribe", "news"]);
    d.ok(&["pause"]);
    let waiting = std::process::Command::new(&d.bin)
        .arg("--socket")
        .arg(&d.socket)
        .args(["subscribe", "news", "--wait", "--timeout", "60"])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn syncd subscribe --wait");
    eventually(20, "news subscribed again", || {
        d.scopes()["news"]["state"] != "unsubscribed"
    });
    mini.lock().unwrap().grants.remove("news");
    d.ok(&["resume"]);
    let out = waiting.wait_with_output().expect("subscribe --wait ends");
    let text = common::output_text(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains("permission_denied") && text.contains("news"),
        "{text}"
    );
    assert!(!d.has("notes", "n1"));
}

#[test]
fn a_server_without_scopes_sees_revision_2_ops() {
    let backend = Arc::new(Mutex::new(RefBackend::new(false)));
    let srv = {
        let b = backend.clone();
        Scripted::start(Duration::from_secs(60), 1000, move |req| {
            b.lock().unwrap().handle(req)
        })
    };
    let d = Daemon::start(&config(&srv.url()));
    d.ok(&[
        "put",
        "notes",
        "--id",
        "a",
        "--scope",
        "team-1",
        "{\"a\":1}",
        "--wait",
        "synced",
    ]);
    let ops: Vec<Value> = srv
        .log()
        .into_iter()
        .filter(|l| l.req.route() == "ops")
        .map(|l| l.req.json())
        .collect();
    assert_eq!(ops.len(), 1);
    assert!(ops[0].get("scope").is_none(), "{}", ops[0]);
    assert!(srv
        .log()
        .iter()
        .all(|l| !l.req.path().contains("session") && !l.req.path().contains("pull")));
    assert_eq!(d.json(&["get", "notes", "a"])["scope"], Value::Null);
    assert!(d.json_lines(&["scopes", "--json"]).is_empty());
    assert_eq!(d.status()["scopes"], json!([]));

    // The backend was probed (the put above reached it) and announced no
    // `scopes`: a wait for a first sync that can never come is refused at
    // once, not left to its timeout (which would answer exit 4).
    let refused = d.cli(&["subscribe", "team-1", "--wait", "--timeout", "30"]);
    let text = common::output_text(&refused);
    assert_eq!(refused.status.code(), Some(1), "{text}");
    assert!(
        text.contains("no_scopes") && text.contains("team-1"),
        "{text}"
    );
    // Without --wait the choice is stored, as always.
    d.ok(&["subscribe", "team-1"]);
}
