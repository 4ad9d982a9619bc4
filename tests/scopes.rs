//! Users and scopes end to end (protocol revision 3): real daemons with
//! per-user JWTs against a real reference backend that verifies them.
//!
//! What each test proves is in its name; "never arrives" is shown without
//! timing: a later change in a scope the device does read arrives, and the
//! feed of each scope is ordered, so whatever came before it was seen.

mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::{bin, eventually, http_bearer, output_text, path_str, Backend, Daemon};
use serde_json::{json, Value};

/// A backend with users: HS256 tokens signed with a secret in `dir`.
struct Users {
    backend: Backend,
    secret: PathBuf,
    dir: tempfile::TempDir,
}

impl Users {
    fn start() -> Users {
        let dir = tempfile::tempdir().expect("tempdir");
        let secret = dir.path().join("jwt.secret");
        std::fs::write(&secret, b"a test secret that is long enough for HS256").expect("secret");
        let backend = Backend::start(&["--auth-secret-file", &path_str(&secret)]);
        Users {
            backend,
            secret,
            dir,
        }
    }

    /// `syncd backend token` for `sub` with read-write `scopes` and
    /// read-only `read`.
    fn token(&self, sub: &str, scopes: &[&str], read: &[&str]) -> String {
        let mut cmd = std::process::Command::new(bin());
        cmd.args(["backend", "token", "--secret-file"])
            .arg(&self.secret)
            .args(["--sub", sub, "--ttl", "1h"]);
        for s in scopes {
            cmd.args(["--scope", s]);
        }
        for s in read {
            cmd.args(["--read-scope", s]);
        }
        let out = cmd.output().expect("syncd backend token");
        assert!(out.status.success(), "token: {}", output_text(&out));
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// A device of `sub`, its token in a file of its own.
    fn device(&self, sub: &str, scopes: &[&str], read: &[&str], extra: &str) -> Device {
        let token_file = self
            .dir
            .path()
            .join(format!("{sub}-{}.token", rand_suffix()));
        std::fs::write(&token_file, self.token(sub, scopes, read)).expect("token file");
        let cfg = format!(
            "[backend]\nurl = {:?}\ntoken_file = {:?}\n{extra}",
            self.backend.url(),
            path_str(&token_file)
        );
        Device {
            d: Daemon::start(&cfg),
            token_file,
        }
    }

    /// A raw request with `token`.
    fn http(&self, token: &str, method: &str, path: &str, body: Option<&Value>) -> (u16, Value) {
        let body = body.map(Value::to_string);
        http_bearer(
            &self.backend.addr,
            Some(token),
            method,
            path,
            body.as_deref(),
        )
    }

    /// Every change of `scope` readable with `token`, following the cursor.
    fn pull_all(&self, token: &str, scope: &str) -> Result<Vec<Value>, Value> {
        let mut out = Vec::new();
        let mut cursor = Value::Null;
        loop {
            let req = json!({"scopes": {scope: cursor}, "limit": 1000});
            let (st, body) = self.http(token, "POST", "/v1/pull", Some(&req));
            assert_eq!(st, 200, "pull: {body}");
            let page = &body["scopes"][scope];
            if page.get("error").is_some() {
                return Err(page.clone());
            }
            out.extend(page["changes"].as_array().cloned().unwrap_or_default());
            cursor = page["cursor"].clone();
            if !page["more"].as_bool().unwrap_or(false) {
                return Ok(out);
            }
        }
    }
}

struct Device {
    d: Daemon,
    token_file: PathBuf,
}

impl Device {
    fn put(&self, id: &str, data: Value, scope: Option<&str>) {
        let data = data.to_string();
        let mut args = vec!["put", "todos", "--id", id, &data];
        if let Some(s) = scope {
            args.extend(["--scope", s]);
        }
        self.d.ok(&args);
    }

    fn get(&self, id: &str) -> Option<Value> {
        let o = self.d.cli(&["get", "todos", id]);
        o.status
            .success()
            .then(|| serde_json::from_slice(&o.stdout).expect("get json"))
    }

    fn ids(&self) -> Vec<String> {
        self.d
            .json_lines(&["list", "todos"])
            .iter()
            .map(|r| r["id"].as_str().unwrap_or_default().to_owned())
            .collect()
    }

    fn synced(&self) {
        self.d.ok(&["sync", "--wait", "--timeout", "60"]);
    }

    fn scope(&self, name: &str) -> Option<Value> {
        self.d
            .json_lines(&["scopes", "--json"])
            .into_iter()
            .find(|s| s["name"] == name)
    }
}

fn rand_suffix() -> String {
    syncd::ids::IdGen::new().next()
}

fn ids_of(changes: &[Value]) -> Vec<String> {
    changes
        .iter()
        .filter_map(|c| c["record"]["id"].as_str().map(str::to_owned))
        .collect()
}

#[test]
fn alices_private_records_never_reach_bob() {
    let u = Users::start();
    let alice = u.device("alice", &["team-1"], &[], "");
    let bob = u.device("bob", &["team-1"], &[], "");
    alice.put("alice-diary", json!({"secret": true}), None);
    alice.put("alice-note", json!({"for": "team"}), Some("team-1"));
    alice.synced();
    // team-1's feed is ordered: once bob has alice's team note, which she
    // wrote after her diary, anything that would leak has been pulled.
    eventually(30, "bob receives the team-1 note", || {
        bob.get("alice-note").is_some()
    });
    assert_eq!(bob.get("alice-diary"), None);
    assert!(!bob.ids().contains(&"alice-diary".to_owned()));
    let note = bob.get("alice-note").expect("note");
    assert_eq!(note["scope"], "team-1", "{note}");
    assert_eq!(
        alice.get("alice-diary").expect("diary")["scope"],
        "user:alice"
    );
    assert_eq!(alice.d.status()["user"], "alice");
    assert!(alice.d.ok(&["status"]).contains("alice"));

    // bob's raw HTTP: his own scope holds nothing of alice's, hers is denied.
    let bob_token = u.token("bob", &["team-1"], &[]);
    let mine = u.pull_all(&bob_token, "user:bob").expect("own scope");
    assert!(!ids_of(&mine).contains(&"alice-diary".to_owned()));
    let denied = u
        .pull_all(&bob_token, "user:alice")
        .expect_err("alice's scope");
    assert_eq!(denied["code"], "scope_denied", "{denied}");
    let (st, body) = u.http(&bob_token, "GET", "/v1/changes", None);
    assert_eq!(st, 400, "{body}");
}

#[test]
fn a_shared_scope_flows_both_ways_live() {
    let u = Users::start();
    let alice = u.device("alice", &["team-1"], &[], "");
    let bob = u.device("bob", &["team-1"], &[], "");
    alice.put(
        "t1",
        json!({"title": "order paper", "by": "alice"}),
        Some("team-1"),
    );
    eventually(30, "bob receives t1", || bob.get("t1").is_some());
    bob.put("t1", json!({"title": "order paper", "by": "bob"}), None);
    eventually(30, "alice receives bob's edit", || {
        alice.get("t1").is_some_and(|r| r["data"]["by"] == "bob")
    });
    // bob's edit without --scope keeps the record in team-1.
    assert_eq!(alice.get("t1").expect("t1")["scope"], "team-1");
}

#[test]
fn a_write_into_a_read_only_scope_is_dead_lettered_and_changes_nothing() {
    let u = Users::start();
    let editor = u.device("editor", &["news"], &[], "");
    let alice = u.device("alice", &[], &["news"], "");
    editor.put("n1", json!({"headline": "hello"}), Some("news"));
    eventually(30, "alice receives the news", || alice.get("n1").is_some());
    alice.put("n1", json!({"headline": "defaced"}), None);
    alice.put("a2", json!({"x": 1}), Some("news"));
    eventually(30, "alice's two writes are dead letters", || {
        alice.d.json_lines(&["dead-letters", "--json"]).len() == 2
    });
    let dead = alice.d.ok(&["dead-letters"]);
    assert!(dead.contains("no write access to scope 'news'"), "{dead}");
    let editor_token = u.token("editor", &["news"], &[]);
    let news = u.pull_all(&editor_token, "news").expect("news");
    assert_eq!(ids_of(&news), ["n1"], "{news:?}");
    assert_eq!(news[0]["record"]["data"]["headline"], "hello");
    // The queue goes on: a private write still syncs.
    alice.put("a3", json!({"x": 3}), None);
    alice.synced();
    let alice_token = u.token("alice", &[], &["news"]);
    let own = u.pull_all(&alice_token, "user:alice").expect("own");
    assert_eq!(ids_of(&own), ["a3"]);
}

#[test]
fn losing_a_scope_purges_its_records_and_nothing_else() {
    let u = Users::start();
    let bob = u.device("bob", &["team-1"], &[], "");
    let alice = u.device("alice", &["team-1"], &[], "");
    bob.put("shared", json!({"n": 1}), Some("team-1"));
    alice.put("mine", json!({"n": 2}), None);
    eventually(30, "alice has team-1's record", || {
        alice.get("shared").is_some()
    });
    alice.synced();
    std::fs::write(&alice.token_file, u.token("alice", &[], &[])).expect("new token");
    eventually(30, "team-1's record is purged", || {
        alice.get("shared").is_none()
    });
    assert!(alice.get("mine").is_some());
    let t = alice.scope("team-1");
    assert!(
        t.is_none()
            || t.as_ref()
                .is_some_and(|s| s["access"].is_null() || s["state"] == "denied"),
        "{t:?}"
    );
    // bob's record is untouched on the server.
    let bob_token = u.token("bob", &["team-1"], &[]);
    assert_eq!(
        ids_of(&u.pull_all(&bob_token, "team-1").expect("team-1")),
        ["shared"]
    );
}

#[test]
fn unsubscribe_purges_and_subscribe_wait_backfills() {
    let u = Users::start();
    let bob = u.device("bob", &["team-1"], &[], "");
    for i in 0..20 {
        bob.put(&format!("s{i}"), json!({"i": i}), Some("team-1"));
    }
    bob.synced();
    let alice = u.device("alice", &["team-1"], &[], "");
    alice
        .d
        .ok(&["subscribe", "team-1", "--wait", "--timeout", "60"]);
    assert_eq!(alice.ids().len(), 20);
    let s = alice.scope("team-1").expect("team-1 listed");
    assert_eq!(s["first_sync_done"], true, "{s}");
    assert_eq!(s["records"], 20, "{s}");
    alice.d.ok(&["unsubscribe", "team-1"]);
    eventually(30, "team-1 purged", || alice.ids().is_empty());
    assert_eq!(
        alice.scope("team-1").expect("still listed")["subscribed"],
        false
    );
    alice
        .d
        .ok(&["subscribe", "team-1", "--wait", "--timeout", "60"]);
    assert_eq!(alice.ids().len(), 20);
}

#[test]
fn a_new_scope_backfills_with_progress_while_other_scopes_stay_live() {
    let u = Users::start();
    let seeder = u.token("seeder", &["big"], &[]);
    seed(&u, &seeder, "big", 10_000);
    let alice = u.device(
        "alice",
        &["big", "team-1"],
        &[],
        "[sync]\nscopes = [\"team-1\", \"user:alice\"]\nbatch_size = 200\n",
    );
    let bob = u.device("bob", &["team-1"], &[], "");
    alice.synced();

    // What the device relies on: one pull carries a page of the scope being
    // back-filled and, in the same reply, the other scopes' new changes,
    // with the back-fill's progress.
    let alice_token = u.token("alice", &["big", "team-1"], &[]);
    let team = u.pull_all(&alice_token, "team-1").expect("team-1");
    assert!(team.is_empty());
    let bob_token = u.token("bob", &["team-1"], &[]);
    let op = json!({"op_id": "bob-raw-1", "client_id": "bob-raw", "collection": "todos",
                    "kind": "create", "id": null, "local_id": "raw-1", "base_version": null,
                    "data": {"raw": true}, "client_ts": 2, "scope": "team-1"});
    let (st, body) = u.http(&bob_token, "POST", "/v1/ops", Some(&op));
    assert_eq!(st, 200, "{body}");
    let req = json!({"scopes": {"big": null, "team-1": "0"}, "limit": 200});
    let (st, body) = u.http(&alice_token, "POST", "/v1/pull", Some(&req));
    assert_eq!(st, 200, "{body}");
    let big = &body["scopes"]["big"];
    assert_eq!(big["changes"].as_array().map(Vec::len), Some(200));
    assert_eq!(
        (big["more"].as_bool(), big["remaining"].as_u64()),
        (Some(true), Some(9_800))
    );
    assert_eq!(
        ids_of(
            body["scopes"]["team-1"]["changes"]
                .as_array()
                .expect("team-1 page")
        )
        .len(),
        1
    );

    let mut watch = Watch::start(&alice.d);
    // The watch is subscribed once it shows a write made after it started.
    alice.put("sentinel", json!({}), None);
    watch.until("the sentinel's event", |l| l.contains("\"sentinel\""));
    alice.d.ok(&["subscribe", "big"]);
    bob.put("live-1", json!({"during": "backfill"}), Some("team-1"));
    eventually(60, "alice receives bob's live change", || {
        alice.get("live-1").is_some()
    });
    alice
        .d
        .ok(&["subscribe", "big", "--wait", "--timeout", "120"]);
    let big = alice.scope("big").expect("big");
    assert_eq!(big["records"], 10_000, "{big}");
    assert_eq!(big["first_sync_done"], true, "{big}");
    assert_eq!(big["state"], "live", "{big}");
    let line = watch.until("scope_synced for big", |l| l.contains("scope_synced"));
    let ev: Value = serde_json::from_str(&line).expect("event json");
    assert_eq!(ev["scope_synced"]["scope"], "big", "{line}");
}

/// `syncd watch` on a device, its lines read on a thread of their own.
struct Watch {
    child: std::process::Child,
    lines: std::sync::mpsc::Receiver<String>,
}

impl Watch {
    fn start(d: &Daemon) -> Watch {
        use std::io::BufRead;
        let mut child = std::process::Command::new(bin())
            .arg("--socket")
            .arg(&d.socket)
            .arg("watch")
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("syncd watch");
        let out = child.stdout.take().expect("watch stdout");
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        Watch { child, lines }
    }

    /// The first line from now on that `f` accepts (120 s at most).
    fn until(&mut self, what: &str, f: impl Fn(&str) -> bool) -> String {
        loop {
            match self.lines.recv_timeout(Duration::from_secs(120)) {
                Ok(l) if f(&l) => return l,
                Ok(_) => {}
                Err(e) => panic!("watch: no {what}: {e}"),
            }
        }
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `n` records in `scope`, written straight to the backend in batches.
fn seed(u: &Users, token: &str, scope: &str, n: usize) {
    for chunk in (0..n).collect::<Vec<_>>().chunks(500) {
        let ops: Vec<Value> = chunk
            .iter()
            .map(|i| {
                json!({"op_id": format!("seed-{scope}-{i}"), "client_id": "seeder",
                       "collection": "todos", "kind": "create", "id": null,
                       "local_id": format!("seed-{i}"), "base_version": null,
                       "data": {"i": i}, "client_ts": 1, "scope": scope})
            })
            .collect();
        let (st, body) = u.http(token, "POST", "/v1/ops/batch", Some(&json!({"ops": ops})));
        assert_eq!(st, 200, "{body}");
        assert_eq!(body["results"].as_array().map(Vec::len), Some(chunk.len()));
    }
}

#[test]
fn a_subscribed_scope_the_token_does_not_grant_is_a_status_hint() {
    let u = Users::start();
    let alice = u.device("alice", &["news"], &[], "[sync]\nscopes = [\"newz\"]\n");
    alice.synced();
    eventually(30, "newz shown denied", || {
        alice.scope("newz").is_some_and(|s| s["state"] == "denied")
    });
    let hints = alice.d.status()["hints"].to_string();
    assert!(
        hints.contains("not granted by the token")
            && hints.contains("newz")
            && hints.contains("news"),
        "{hints}"
    );
}
