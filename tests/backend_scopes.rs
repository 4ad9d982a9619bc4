//! Users and scopes (protocol revision 3) on the reference backend: the real
//! `syncd backend` binary with `--auth-secret-file`, on redb and on a real
//! throwaway PostgreSQL (two nodes on one database), spoken to with raw
//! HTTP/1.1. Tokens come from `syncd backend token`.
//!
//! One scenario ([`scope_rules`]) runs on both stores: private records stay
//! private, 404/403 refusals reveal nothing, read-only scopes refuse writes,
//! moves show as gone in the old scope, `remaining` counts down, and a
//! waiting pull wakes on a change in one of its scopes.

mod common;
mod common_pg;

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use common::{bin, Backend};
use common_pg::{runtime, whole_feed, writer, Pg, PgNode};
use serde_json::{json, Value};
use syncd::backend::protocol::{ScopedChange, ServerRecord};
use syncd::backend::server::access::Caller;
use syncd::backend::server::auth::{Claims, Principal, Verifier};
use syncd::backend::server::ops::{Action, ValidOp};
use syncd::backend::server::pg_store::PgStore;
use syncd::backend::server::store::{BackendStore, Outcome};

const SECRET: &str = "a-test-secret-of-at-least-32-bytes";

/// A reply: status, raw head (for headers) and JSON body.
struct Resp {
    status: u16,
    head: String,
    body: Value,
    raw: String,
}

/// One HTTP/1.1 request with `Connection: close`.
fn call(addr: &str, method: &str, path: &str, token: Option<&str>, body: Option<&Value>) -> Resp {
    let mut s = std::net::TcpStream::connect(addr).expect("connect backend");
    s.set_read_timeout(Some(Duration::from_secs(90))).ok();
    let body = body.map(Value::to_string).unwrap_or_default();
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n{auth}\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).expect("write");
    let mut resp = Vec::new();
    let _ = s.read_to_end(&mut resp);
    let text = String::from_utf8_lossy(&resp).into_owned();
    let (head, raw) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    Resp {
        status,
        head: head.to_owned(),
        body: serde_json::from_str(raw).unwrap_or(Value::Null),
        raw: raw.to_owned(),
    }
}

fn secret_file(dir: &Path) -> PathBuf {
    let f = dir.join("secret");
    std::fs::write(&f, format!("{SECRET}\n")).expect("write secret");
    f
}

/// `syncd backend token --secret-file F --sub SUB [--scope S].. [--read-scope S]..`
fn mint(secret: &Path, sub: &str, scopes: &[&str], read: &[&str]) -> String {
    let mut cmd = Command::new(bin());
    cmd.args(["backend", "token", "--secret-file"])
        .arg(secret)
        .args(["--sub", sub, "--ttl", "1h"]);
    for s in scopes {
        cmd.args(["--scope", s]);
    }
    for s in read {
        cmd.args(["--read-scope", s]);
    }
    let out = cmd.output().expect("syncd backend token");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).expect("utf-8");
    assert_eq!(text.lines().count(), 1, "one line: {text:?}");
    text.trim().to_owned()
}

struct Users {
    alice: String,
    bob: String,
}

/// alice: W = {user:alice, team-1}, R + {news}.
/// bob: W = {user:bob, news}, R + {team-1}.
fn users(secret: &Path) -> Users {
    Users {
        alice: mint(secret, "alice", &["team-1"], &["news"]),
        bob: mint(secret, "bob", &["news"], &["team-1"]),
    }
}

fn op(op_id: &str, kind: &str, id: Option<&str>, base: Option<u64>, scope: Option<&str>) -> Value {
    let mut v = json!({"op_id": op_id, "client_id": "c", "collection": "todos", "kind": kind,
        "id": id, "local_id": op_id, "base_version": base, "data": {"t": op_id},
        "client_ts": 1});
    if let Some(s) = scope {
        v["scope"] = json!(s);
    }
    v
}

fn post_op(addr: &str, token: &str, body: &Value) -> Resp {
    call(addr, "POST", "/v1/ops", Some(token), Some(body))
}

fn pull(addr: &str, token: &str, req: Value) -> Value {
    let r = call(addr, "POST", "/v1/pull", Some(token), Some(&req));
    assert_eq!(r.status, 200, "{}", r.raw);
    r.body
}

/// The scope rules, writing through `w` and reading through `r` (the same
/// server, or two nodes on one database).
fn scope_rules(w: &str, r: &str, u: &Users) {
    let (alice, bob) = (u.alice.as_str(), u.bob.as_str());
    health_and_session(r, alice);
    private_records_stay_private(w, r, alice, bob);
    read_only_scopes_refuse_writes(w, r, alice, bob);
    moves_show_as_gone(w, r, alice, bob);
    remaining_counts_down(w, r, alice, bob);
    a_waiting_pull_wakes_on_one_of_its_scopes(w, r, alice, bob);
    changes_is_refused_in_users_mode(r, alice);
    a_conflicting_move_shows_the_stored_scope(w, r, alice);
    more_refusals(w, r, alice, bob);
}

/// A 409 on a move shows the record where it is, not where it was sent.
fn a_conflicting_move_shows_the_stored_scope(w: &str, r: &str, alice: &str) {
    let c = post_op(w, alice, &op("a-c1", "create", Some("cf"), None, None));
    assert_eq!(c.status, 200, "{}", c.raw);
    let stale = post_op(
        r,
        alice,
        &op("a-c2", "update", Some("cf"), Some(7), Some("team-1")),
    );
    assert_eq!(stale.status, 409, "{}", stale.raw);
    assert_eq!(
        (
            &stale.body["record"]["scope"],
            &stale.body["record"]["version"]
        ),
        (&json!("user:alice"), &json!(1)),
        "{}",
        stale.raw
    );
}

/// Every endpoint but health needs a token; a bad scope name is a 422; an
/// id taken by an unreadable record is refused inside a batch too.
fn more_refusals(w: &str, r: &str, alice: &str, bob: &str) {
    let one = op("n-1", "create", None, None, None);
    for (method, path, body) in [
        ("POST", "/v1/ops", Some(one.clone())),
        ("POST", "/v1/ops/batch", Some(json!({"ops": [one.clone()]}))),
        (
            "POST",
            "/v1/pull",
            Some(json!({"scopes": {"user:alice": null}})),
        ),
        ("GET", "/v1/changes", None),
        ("GET", "/v1/session", None),
    ] {
        let resp = call(r, method, path, None, body.as_ref());
        assert_eq!(resp.status, 401, "{path}: {}", resp.raw);
        assert_eq!(
            resp.body,
            json!({"error": "missing bearer token"}),
            "{path}"
        );
    }
    let bad = post_op(w, alice, &op("a-b1", "create", None, None, Some("a b")));
    assert_eq!(bad.status, 422, "{}", bad.raw);
    assert!(
        bad.body["error"]
            .as_str()
            .unwrap_or_default()
            .contains("scope"),
        "{}",
        bad.raw
    );
    let batch = call(
        w,
        "POST",
        "/v1/ops/batch",
        Some(bob),
        Some(&json!({"ops": [op("b-i1", "create", None, None, None),
            op("b-i2", "create", Some("secret-1"), None, None),
            op("b-i3", "create", None, None, None)]})),
    );
    assert_eq!(batch.status, 200, "{}", batch.raw);
    let results = &batch.body["results"];
    assert_eq!(results.as_array().map(Vec::len), Some(2), "{}", batch.raw);
    assert_eq!(results[0]["status"], 200);
    assert_eq!(
        results[1],
        json!({"status": 403, "error": "id 'secret-1' is taken in collection 'todos'",
               "code": "id_taken"})
    );
}

/// Health announces scopes; the session lists the token's scopes.
fn health_and_session(r: &str, alice: &str) {
    let health = call(r, "GET", "/v1/health", None, None).body;
    assert_eq!(
        health["features"],
        json!(["batch", "wait", "client_ids", "scopes", "blobs"])
    );
    let session = call(r, "GET", "/v1/session", Some(alice), None).body;
    assert_eq!(session["sub"], "alice");
    assert_eq!(
        session["scopes"],
        json!([{"name": "news", "access": "read"}, {"name": "team-1", "access": "write"},
               {"name": "user:alice", "access": "write"}])
    );
    assert!(session["expires_at"].as_i64().unwrap_or(0) > 0);
}

/// Private records stay private: refusals reveal nothing of them.
fn private_records_stay_private(w: &str, r: &str, alice: &str, bob: &str) {
    // alice: a private record and a team record.
    let mine = post_op(w, alice, &op("a-1", "create", Some("secret-1"), None, None));
    assert_eq!(mine.status, 200, "{}", mine.raw);
    assert_eq!(mine.body["record"]["scope"], "user:alice");
    let team = post_op(
        w,
        alice,
        &op("a-2", "create", Some("t1"), None, Some("team-1")),
    );
    assert_eq!(team.body["record"]["scope"], "team-1", "{}", team.raw);

    // bob's pull: the team record, nothing of alice's private scope.
    let p = pull(
        r,
        bob,
        json!({"scopes": {"user:bob": null, "team-1": null, "user:alice": null}}),
    );
    assert_eq!(
        p["scopes"]["user:alice"],
        json!({"error": "no read access to scope 'user:alice'", "code": "scope_denied"})
    );
    assert_eq!(
        p["scopes"]["user:bob"],
        json!({"changes": [], "cursor": "0", "more": false, "remaining": 0})
    );
    let changes = &p["scopes"]["team-1"]["changes"];
    assert_eq!(changes.as_array().map(Vec::len), Some(1), "{p}");
    assert_eq!(changes[0]["record"]["id"], "t1");
    assert!(!p.to_string().contains("secret-1"), "{p}");

    // bob cannot touch alice's record: the same 404 as an unknown id.
    for (kind, id) in [("update", "secret-1"), ("delete", "secret-1")] {
        let hidden = post_op(r, bob, &op("b-x", kind, Some(id), Some(1), None));
        assert_eq!(hidden.status, 404, "{}", hidden.raw);
        assert_eq!(
            hidden.body,
            json!({"error": "no record \"secret-1\" in collection \"todos\""})
        );
    }
    let taken = post_op(r, bob, &op("b-1", "create", Some("secret-1"), None, None));
    assert_eq!(taken.status, 403);
    assert_eq!(
        taken.body,
        json!({"error": "id 'secret-1' is taken in collection 'todos'", "code": "id_taken"})
    );
    // A replay of alice's op_id by bob reveals nothing either.
    let replay = post_op(r, bob, &op("a-1", "create", Some("secret-1"), None, None));
    assert_eq!(
        (replay.status, &replay.body["code"]),
        (403, &json!("scope_denied"))
    );
    assert!(!replay.raw.contains("version"), "{}", replay.raw);
    let own = post_op(r, alice, &op("a-1", "create", Some("secret-1"), None, None));
    assert_eq!(own.body, mine.body, "alice's replay: her record");
}

/// A read-only scope refuses writes (alone and in a batch) and keeps its feed.
fn read_only_scopes_refuse_writes(w: &str, r: &str, alice: &str, bob: &str) {
    // Read-only for bob: refused, and nothing changed.
    let ro = post_op(w, bob, &op("b-2", "update", Some("t1"), Some(1), None));
    assert_eq!(
        ro.body,
        json!({"error": "no write access to scope 'team-1'", "code": "scope_denied"})
    );
    assert_eq!(ro.status, 403);
    let batch = call(
        w,
        "POST",
        "/v1/ops/batch",
        Some(bob),
        Some(&json!({"ops": [op("b-3", "create", None, None, None),
            op("b-4", "create", None, None, Some("team-1")),
            op("b-5", "create", None, None, None)]})),
    );
    let results = &batch.body["results"];
    assert_eq!(results.as_array().map(Vec::len), Some(2), "{}", batch.raw);
    assert_eq!(results[0]["status"], 200);
    assert_eq!(
        results[1],
        json!({"status": 403, "error": "no write access to scope 'team-1'", "code": "scope_denied"})
    );
    let team_feed = pull(r, alice, json!({"scopes": {"team-1": null}}));
    assert_eq!(team_feed["scopes"]["team-1"]["cursor"], "1", "{team_feed}");
}

/// A move leaves a gone entry in the old scope and the record in the new one.
fn moves_show_as_gone(w: &str, r: &str, alice: &str, bob: &str) {
    // A move team-1 -> user:alice: gone in team-1, the record in user:alice.
    let private_cursor = pull(r, alice, json!({"scopes": {"user:alice": null}}))["scopes"]
        ["user:alice"]["cursor"]
        .clone();
    let moved = post_op(
        w,
        alice,
        &op("a-3", "update", Some("t1"), Some(1), Some("user:alice")),
    );
    assert_eq!(moved.body["record"]["scope"], "user:alice", "{}", moved.raw);
    assert_eq!(moved.body["record"]["version"], 2);
    let p = pull(r, bob, json!({"scopes": {"team-1": "1"}}));
    assert_eq!(
        p["scopes"]["team-1"]["changes"],
        json!([{"collection": "todos", "gone": {"id": "t1", "version": 2}}])
    );
    let p = pull(r, alice, json!({"scopes": {"user:alice": private_cursor}}));
    let entry = &p["scopes"]["user:alice"]["changes"][0];
    assert_eq!(
        (&entry["record"]["id"], &entry["record"]["scope"]),
        (&json!("t1"), &json!("user:alice"))
    );
}

/// `remaining` counts down page by page.
fn remaining_counts_down(w: &str, r: &str, alice: &str, bob: &str) {
    // `remaining` counts down (team-1: the create, the gone, 3 more).
    for i in 0..3 {
        let c = post_op(
            w,
            alice,
            &op(&format!("a-t{i}"), "create", None, None, Some("team-1")),
        );
        assert_eq!(c.status, 200);
    }
    let mut cursor = Value::Null;
    let mut seen = Vec::new();
    loop {
        let p = pull(r, bob, json!({"scopes": {"team-1": cursor}, "limit": 2}));
        let page = &p["scopes"]["team-1"];
        seen.push((page["remaining"].clone(), page["more"].clone()));
        cursor = page["cursor"].clone();
        if page["more"] == json!(false) {
            break;
        }
    }
    assert_eq!(
        seen,
        [
            (json!(3), json!(true)),
            (json!(1), json!(true)),
            (json!(0), json!(false))
        ]
    );
}

/// A waiting pull wakes on a change in one of its scopes.
fn a_waiting_pull_wakes_on_one_of_its_scopes(w: &str, r: &str, alice: &str, bob: &str) {
    // A waiting pull on two scopes, from their current cursors, is answered
    // with the change in one of them and nothing else, although commits in
    // other scopes (one alice can read, one she cannot) come first. The
    // reply is checked, not the time it took: whether those commits land
    // before the pull is held or while it is held (then they wake it and it
    // waits again), the only correct reply is the same, and a pull that
    // missed the wake-up would come back empty after its `wait`.
    let heads = pull(
        r,
        alice,
        json!({"scopes": {"user:alice": null, "team-1": null}}),
    );
    let (c1, c2) = (
        heads["scopes"]["user:alice"]["cursor"].clone(),
        heads["scopes"]["team-1"]["cursor"].clone(),
    );
    let (addr, token) = (r.to_owned(), alice.to_owned());
    let waiting = std::thread::spawn(move || {
        pull(
            &addr,
            &token,
            json!({"scopes": {"user:alice": c1, "team-1": c2}, "wait": 60}),
        )
    });
    for (token, op_id, scope) in [(bob, "b-w1", None), (bob, "b-w2", Some("news"))] {
        let c = post_op(w, token, &op(op_id, "create", None, None, scope));
        assert_eq!(c.status, 200, "{}", c.raw);
    }
    let woke = post_op(
        w,
        alice,
        &op("a-w", "create", Some("woke"), None, Some("team-1")),
    );
    assert_eq!(woke.status, 200, "{}", woke.raw);
    let p = waiting.join().expect("waiting pull");
    assert_eq!(p["scopes"]["user:alice"]["changes"], json!([]), "{p}");
    let team = &p["scopes"]["team-1"]["changes"];
    assert_eq!(team.as_array().map(Vec::len), Some(1), "{p}");
    assert_eq!(team[0]["record"]["id"], "woke", "{p}");
}

/// `GET v1/changes` answers the hint to pull instead.
fn changes_is_refused_in_users_mode(r: &str, alice: &str) {
    // v1/changes is for single-tenant servers.
    let ch = call(r, "GET", "/v1/changes", Some(alice), None);
    assert_eq!(ch.status, 400);
    assert_eq!(
        ch.body["error"],
        "this server has users and scopes (protocol revision 3): pull with POST v1/pull"
    );
}

/// 401 with `WWW-Authenticate: Bearer` and the reason.
fn refused(addr: &str, token: Option<&str>, reason: &str) {
    let r = call(addr, "GET", "/v1/session", token, None);
    assert_eq!(r.status, 401, "{}", r.raw);
    assert!(
        r.head
            .to_ascii_lowercase()
            .contains("www-authenticate: bearer"),
        "{}",
        r.head
    );
    assert_eq!(r.body, json!({ "error": reason }));
}

fn b64(v: &Value) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
}

fn bad_tokens(addr: &str) {
    refused(addr, None, "missing bearer token");
    let exp = jsonwebtoken::get_current_timestamp();
    let key = jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes());
    let sign = |claims: Value| {
        jsonwebtoken::encode(&jsonwebtoken::Header::default(), &claims, &key).expect("encode")
    };
    refused(
        addr,
        Some(&sign(json!({"sub": "alice", "exp": exp - 10}))),
        "token expired",
    );
    refused(
        addr,
        Some(&sign(json!({"sub": "alice"}))),
        "token has no 'exp' claim",
    );
    refused(
        addr,
        Some(&sign(json!({"exp": exp + 60}))),
        "token has no 'sub' claim",
    );
    let none = format!(
        "{}.{}.",
        b64(&json!({"alg": "none"})),
        b64(&json!({"sub": "alice", "exp": exp + 60}))
    );
    refused(addr, Some(&none), "unsigned token (alg none) refused");
    let other = jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &json!({"sub": "alice", "exp": exp + 60}),
        &jsonwebtoken::EncodingKey::from_secret(b"another secret"),
    )
    .expect("encode");
    refused(addr, Some(&other), "invalid token signature");
}

#[test]
fn scope_rules_on_redb() {
    let dir = tempfile::tempdir().expect("tempdir");
    let secret = secret_file(dir.path());
    let b = Backend::start(&["--auth-secret-file", &secret.display().to_string()]);
    scope_rules(&b.addr, &b.addr, &users(&secret));
    bad_tokens(&b.addr);
}

/// `syncd backend` with `args` over `--data DIR`, expected to refuse to start.
fn refused_start(data: &[&str], args: &[&str]) -> String {
    let out = Command::new(bin())
        .args(["backend", "--listen", "127.0.0.1:0"])
        .args(data)
        .args(args)
        .output()
        .expect("run");
    assert!(!out.status.success(), "started: {args:?}");
    assert!(out.stdout.is_empty(), "listening: {args:?}");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn a_store_that_held_users_is_not_served_single_tenant() {
    let dir = tempfile::tempdir().expect("tempdir");
    let secret = secret_file(dir.path());
    let users_flags = [
        "--auth-secret-file".to_owned(),
        secret.display().to_string(),
    ];
    let mut b = Backend::start(&[&users_flags[0], &users_flags[1]]);
    let alice = mint(&secret, "alice", &["team-1"], &[]);
    let c = post_op(
        &b.addr,
        &alice,
        &op("a-1", "create", Some("t1"), None, Some("team-1")),
    );
    assert_eq!(c.status, 200, "{}", c.raw);
    b.stop();
    let data = b.dir.path().join("data").display().to_string();
    for args in [&["--token", "t"][..], &[][..]] {
        let err = refused_start(&["--data", &data], args);
        assert!(err.contains(&data), "{err}");
        assert!(err.contains("--allow-single-tenant-over-users"), "{err}");
        assert!(err.contains("--auth-secret-file"), "{err}");
    }
    // With the override: served, and a single-tenant update leaves the
    // record in its scope.
    b.args = ["--token", "t", "--allow-single-tenant-over-users"]
        .map(str::to_owned)
        .to_vec();
    b.spawn_on("127.0.0.1:0");
    let up = post_op(
        &b.addr,
        "t",
        &op("s-1", "update", Some("t1"), Some(1), None),
    );
    assert_eq!(up.status, 200, "{}", up.raw);
    assert!(!up.raw.contains("scope"), "{}", up.raw);
    b.stop();
    b.args = users_flags.to_vec();
    b.spawn_on("127.0.0.1:0");
    let p = pull(&b.addr, &alice, json!({"scopes": {"team-1": null}}));
    let changes = &p["scopes"]["team-1"]["changes"];
    assert_eq!(changes.as_array().map(Vec::len), Some(2), "{p}");
    assert_eq!(
        (
            &changes[1]["record"]["version"],
            &changes[1]["record"]["scope"]
        ),
        (&json!(2), &json!("team-1")),
        "{p}"
    );
}

#[test]
fn token_mode_is_revision_2_unchanged() {
    let b = Backend::start(&["--token", "t0k"]);
    let health = call(&b.addr, "GET", "/v1/health", None, None).body;
    // Revision 2's features, plus the optional `blobs` a revision-2
    // client ignores.
    assert_eq!(
        health["features"],
        json!(["batch", "wait", "client_ids", "blobs"])
    );
    let created = post_op(
        &b.addr,
        "t0k",
        &op("o1", "create", Some("r1"), None, Some("team-1")),
    );
    assert_eq!(created.status, 200);
    assert!(!created.raw.contains("scope"), "{}", created.raw);
    let ch = call(&b.addr, "GET", "/v1/changes", Some("t0k"), None);
    assert_eq!(ch.status, 200);
    assert!(!ch.raw.contains("scope"), "{}", ch.raw);
    assert_eq!(ch.body["changes"][0]["record"]["id"], "r1");
    for (method, path) in [("GET", "/v1/session"), ("POST", "/v1/pull")] {
        let r = call(&b.addr, method, path, Some("t0k"), Some(&json!({})));
        assert_eq!(r.status, 404, "{path}");
    }
    let no = call(&b.addr, "GET", "/v1/changes", Some("wrong"), None);
    assert_eq!(
        (no.status, &no.body),
        (401, &json!({"error": "unauthorized"}))
    );
}

#[test]
fn token_and_users_options_do_not_mix() {
    let dir = tempfile::tempdir().expect("tempdir");
    let secret = secret_file(dir.path());
    let out = Command::new(bin())
        .args(["backend", "--listen", "127.0.0.1:0", "--data"])
        .arg(dir.path().join("data"))
        .args(["--token", "t", "--auth-secret-file"])
        .arg(&secret)
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--token") && err.contains("--auth-secret-file"),
        "{err}"
    );
}

#[test]
fn backend_token_prints_a_verifiable_hs256_token() {
    let dir = tempfile::tempdir().expect("tempdir");
    let secret = secret_file(dir.path());
    let t = mint(&secret, "alice", &["team-1", "team-2"], &["news"]);
    let v = Verifier::from_secret_file(&secret).expect("verifier");
    let p = v.verify(&t).expect("valid token");
    assert_eq!(p.sub, "alice");
    assert!(p.write.contains("team-2") && p.read.contains("news"));
    let now = jsonwebtoken::get_current_timestamp();
    assert!((now + 3590..=now + 3610).contains(&p.exp), "1h ttl");
    for (args, what) in [
        (&["--sub", "a b"][..], "--sub"),
        (&["--sub", "a", "--scope", "x/y"][..], "x/y"),
        (&["--sub", "a", "--ttl", "1w"][..], "ttl"),
    ] {
        let out = Command::new(bin())
            .args(["backend", "token", "--secret-file"])
            .arg(&secret)
            .args(args)
            .output()
            .expect("run");
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert!(out.stdout.is_empty());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(what), "{args:?}: {err}");
    }
}

#[test]
fn scope_rules_on_two_postgres_nodes() {
    let pg = Pg::start();
    let url = pg.url("postgres");
    let dir = tempfile::tempdir().expect("tempdir");
    let secret = secret_file(dir.path());
    let flag = secret.display().to_string();
    let n1 = PgNode::start_with(&bin(), &url, &["--auth-secret-file", &flag], None);
    let n2 = PgNode::start_with(&bin(), &url, &["--auth-secret-file", &flag], None);
    scope_rules(&n1.addr, &n2.addr, &users(&secret));
    bad_tokens(&n2.addr);
}

#[test]
fn a_postgres_database_that_held_users_is_not_served_single_tenant() {
    let pg = Pg::start();
    let url = pg.url("postgres");
    let rt = runtime();
    let s = rt.block_on(PgStore::connect(&url)).expect("connect");
    s.apply(&[create("o1")]).expect("apply");
    assert!(!s.held_users().expect("held_users"), "single-tenant writes");
    // A users-mode write, even into `default`, marks the database.
    let alice = Caller::User(
        Principal::from_claims(Claims {
            sub: "alice".into(),
            exp: u64::MAX,
            scopes: vec!["default".into()],
            ..Claims::default()
        })
        .expect("claims"),
    );
    let mut o = create("o2");
    o.scope = Some("default".into());
    assert!(s.apply_as(&[o], &alice).expect("apply")[0].is_applied());
    assert!(s.held_users().expect("held_users"));
    assert_eq!(
        pg.scalar(
            "postgres",
            "SELECT value FROM syncd_meta WHERE key = 'users'"
        ),
        1
    );
    drop(s);
    let err = refused_start(&["--postgres", &url], &["--token", "t"]);
    assert!(err.contains("PostgreSQL database"), "{err}");
    assert!(err.contains("--allow-single-tenant-over-users"), "{err}");
}

fn create(op_id: &str) -> ValidOp {
    ValidOp {
        op_id: op_id.into(),
        client_id: "c".into(),
        collection: "todos".into(),
        local_id: "l".into(),
        client_ts: 1,
        action: Action::Create {
            id: None,
            data: serde_json::Map::new(),
        },
        scope: None,
    }
}

#[test]
fn a_schema_1_postgres_database_is_upgraded_into_the_default_scope() {
    let pg = Pg::start();
    let url = pg.url("postgres");
    let rt = runtime();
    let mut created = Vec::new();
    {
        let s = rt.block_on(PgStore::connect(&url)).expect("connect");
        for i in 0..3 {
            match s
                .apply(&[create(&format!("o{i}"))])
                .expect("apply")
                .remove(0)
            {
                Outcome::Applied { record, .. } => created.push(record.id),
                other => panic!("{other:?}"),
            }
        }
    }
    // Back to schema 1: the global log (syncd_changes, its head) holds the
    // changes, and there are no scope columns nor tables.
    rt.block_on(async {
        let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
            .await
            .expect("connect");
        tokio::spawn(conn);
        client
            .batch_execute(
                "INSERT INTO syncd_changes (seq, change) SELECT seq, change \
                   FROM syncd_scope_changes WHERE scope = 'default'; \
                 UPDATE syncd_feed_head SET seq = 3 WHERE one; \
                 ALTER TABLE syncd_records DROP COLUMN scope; \
                 ALTER TABLE syncd_applied_ops DROP COLUMN scope; \
                 DROP TABLE syncd_scope_changes; DROP TABLE syncd_scope_heads; \
                 UPDATE syncd_meta SET value = 1 WHERE key = 'schema'",
            )
            .await
            .expect("downgrade");
    });
    let s = rt.block_on(PgStore::connect(&url)).expect("upgraded");
    let schema = "SELECT value FROM syncd_meta WHERE key = 'schema'";
    assert_eq!(pg.scalar("postgres", schema), 3);
    let feed = s
        .pull(&[("default".to_owned(), 0)], 100)
        .expect("pull")
        .remove(0);
    assert_eq!(feed.head, 3);
    let ids: Vec<_> = feed
        .entries
        .iter()
        .map(|(seq, e)| match e {
            ScopedChange::Record { record, .. } => (*seq, record.id.clone()),
            other => panic!("{other:?}"),
        })
        .collect();
    let expected: Vec<_> = (1..).zip(created).collect();
    assert_eq!(ids, expected, "the global log, at the same sequences");
    // Revision 2's log is that feed, and the next write continues it
    // (and no longer the old global log).
    let log = s.changes(0, 100).expect("changes");
    assert_eq!(log.entries.len(), 3);
    s.apply(&[create("o9")]).expect("apply");
    let next = s.changes(3, 100).expect("changes");
    assert_eq!(next.entries.first().map(|e| e.0), Some(4));
    assert_eq!(next.head, 4);
    let old_log = "SELECT count(*) FROM syncd_changes";
    assert_eq!(
        pg.scalar("postgres", old_log),
        3,
        "the old log is not written"
    );
}

#[test]
fn a_schema_2_postgres_database_is_upgraded_without_moving_a_row() {
    let pg = Pg::start();
    let url = pg.url("postgres");
    let rt = runtime();
    {
        let s = rt.block_on(PgStore::connect(&url)).expect("connect");
        s.apply(&[create("o1"), create("o2")]).expect("apply");
    }
    let schema = "SELECT value FROM syncd_meta WHERE key = 'schema'";
    pg.scalar(
        "postgres",
        "UPDATE syncd_meta SET value = 2 WHERE key = 'schema' RETURNING 0",
    );
    let s = rt.block_on(PgStore::connect(&url)).expect("upgraded");
    assert_eq!(pg.scalar("postgres", schema), 3);
    s.apply(&[create("o3")]).expect("apply");
    let log = s.changes(0, 100).expect("changes");
    let seqs: Vec<u64> = log.entries.iter().map(|e| e.0).collect();
    assert_eq!((seqs, log.head), (vec![1, 2, 3], 3));
}

#[test]
fn an_ed25519_public_key_verifies_eddsa_tokens_only() {
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data");
    let public = data.join("jwt_ed25519_public.pem").display().to_string();
    let b = Backend::start(&["--auth-public-key", &public]);
    let private = std::fs::read(data.join("jwt_ed25519_private.pem")).expect("key");
    let key = jsonwebtoken::EncodingKey::from_ed_pem(&private).expect("ed25519");
    let claims = json!({"sub": "carol", "exp": jsonwebtoken::get_current_timestamp() + 60});
    let header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::EdDSA);
    let token = jsonwebtoken::encode(&header, &claims, &key).expect("sign");
    let s = call(&b.addr, "GET", "/v1/session", Some(&token), None);
    assert_eq!(s.status, 200, "{}", s.raw);
    assert_eq!(
        s.body["scopes"],
        json!([{"name": "user:carol", "access": "write"}])
    );
    let hs = jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(b"guess"),
    )
    .expect("sign");
    refused(
        &b.addr,
        Some(&hs),
        "token algorithm HS256 is not the one this server verifies",
    );
    // A file that is no public key: refused at start (usage, exit 2).
    let out = Command::new(bin())
        .args(["backend", "--listen", "127.0.0.1:0", "--data"])
        .arg(b.dir.path().join("other"))
        .args([
            "--auth-public-key",
            &data.join("README.md").display().to_string(),
        ])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not a PEM Ed25519 or RSA public key"), "{err}");
}

#[test]
fn an_rsa_public_key_server_with_an_audience_end_to_end() {
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data");
    let public = data.join("jwt_rsa_public.pem").display().to_string();
    let b = Backend::start(&[
        "--auth-public-key",
        &public,
        "--auth-audience",
        "syncd",
        "--auth-issuer",
        "https://auth.example",
    ]);
    let private = std::fs::read(data.join("jwt_rsa_private.pem")).expect("key");
    let key = jsonwebtoken::EncodingKey::from_rsa_pem(&private).expect("rsa");
    let header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
    let exp = jsonwebtoken::get_current_timestamp() + 600;
    let sign = |claims: Value| jsonwebtoken::encode(&header, &claims, &key).expect("sign");
    let token = sign(json!({"sub": "dave", "exp": exp, "scopes": ["team-9"],
        "aud": "syncd", "iss": "https://auth.example"}));
    let c = post_op(
        &b.addr,
        &token,
        &op("d-1", "create", Some("r1"), None, Some("team-9")),
    );
    assert_eq!(c.status, 200, "{}", c.raw);
    assert_eq!(c.body["record"]["scope"], "team-9");
    let p = pull(
        &b.addr,
        &token,
        json!({"scopes": {"team-9": null, "user:dave": null}}),
    );
    assert_eq!(
        p["scopes"]["team-9"]["changes"][0]["record"]["id"], "r1",
        "{p}"
    );
    assert_eq!(p["scopes"]["user:dave"]["cursor"], "0", "{p}");
    // A token of the same key for another service, or without an audience.
    let billing = sign(json!({"sub": "dave", "exp": exp, "aud": "billing",
        "iss": "https://auth.example"}));
    refused(
        &b.addr,
        Some(&billing),
        "token audience ('aud') is not this server",
    );
    let no_aud = sign(json!({"sub": "dave", "exp": exp, "iss": "https://auth.example"}));
    refused(&b.addr, Some(&no_aud), "token has no 'aud' claim");
    let other_iss = sign(json!({"sub": "dave", "exp": exp, "aud": "syncd", "iss": "x"}));
    refused(
        &b.addr,
        Some(&other_iss),
        "token issuer ('iss') is not the one this server trusts",
    );
    let early = sign(
        json!({"sub": "dave", "exp": exp, "nbf": exp, "aud": "syncd",
        "iss": "https://auth.example"}),
    );
    refused(
        &b.addr,
        Some(&early),
        "token not yet valid ('nbf' is in the future)",
    );
}

#[test]
fn backend_token_mints_audience_and_issuer() {
    let dir = tempfile::tempdir().expect("tempdir");
    let secret = secret_file(dir.path());
    let b = Backend::start(&[
        "--auth-secret-file",
        &secret.display().to_string(),
        "--auth-audience",
        "syncd",
        "--auth-issuer",
        "me",
    ]);
    let plain = mint(&secret, "erin", &[], &[]);
    refused(&b.addr, Some(&plain), "token has no 'aud' claim");
    let out = Command::new(bin())
        .args(["backend", "token", "--secret-file"])
        .arg(&secret)
        .args(["--sub", "erin", "--audience", "syncd", "--issuer", "me"])
        .output()
        .expect("run");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = String::from_utf8(out.stdout).expect("utf-8");
    let s = call(&b.addr, "GET", "/v1/session", Some(token.trim()), None);
    assert_eq!(
        (s.status, &s.body["sub"]),
        (200, &json!("erin")),
        "{}",
        s.raw
    );
}

#[test]
fn unusable_key_files_are_refused_at_start() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data_dir = dir.path().join("data").display().to_string();
    let short = dir.path().join("short");
    std::fs::write(&short, "only-31-bytes-of-secret-here-xx\n").expect("write");
    let err = refused_start(
        &["--data", &data_dir],
        &["--auth-secret-file", &short.display().to_string()],
    );
    assert!(
        err.contains("the secret is 31 bytes; HS256 needs at least 32"),
        "{err}"
    );
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data");
    for key in ["jwt_rsa_private.pem", "jwt_ed25519_private.pem"] {
        let err = refused_start(
            &["--data", &data_dir],
            &["--auth-public-key", &data.join(key).display().to_string()],
        );
        assert!(
            err.contains("this is a private key; give the public key"),
            "{err}"
        );
    }
}

#[test]
fn per_scope_feeds_stay_gap_free_under_concurrent_moves_on_two_nodes() {
    const WRITERS: usize = 4;
    const ROUNDS: usize = 40;
    const SCOPES: [&str; 2] = ["s-a", "s-b"];
    let pg = Pg::start();
    let url = pg.url("postgres");
    let rt = runtime();
    let nodes = [
        Arc::new(rt.block_on(PgStore::connect(&url)).expect("node 1")),
        Arc::new(rt.block_on(PgStore::connect(&url)).expect("node 2")),
    ];
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            let s = Arc::clone(&nodes[w % 2]);
            std::thread::spawn(move || {
                let who = writer(&format!("w{w}"), &SCOPES);
                let apply = |o: ValidOp| -> ServerRecord {
                    match s.apply_as(&[o], &who).expect("apply").remove(0) {
                        Outcome::Applied { record, .. } => record,
                        other => panic!("{other:?}"),
                    }
                };
                let mut writes = 0;
                for i in 0..ROUNDS {
                    // A create in one scope, then moves to the other and back.
                    let mut c = create(&format!("w{w}-{i}-c"));
                    c.scope = Some(SCOPES[i % 2].into());
                    let mut r = apply(c);
                    for m in 0..2 {
                        let mut mv = create(&format!("w{w}-{i}-m{m}"));
                        mv.action = Action::Update {
                            id: r.id.clone(),
                            base_version: r.version,
                            data: serde_json::Map::new(),
                        };
                        mv.scope = Some(SCOPES[(i + m + 1) % 2].into());
                        r = apply(mv);
                    }
                    writes += 3;
                }
                writes
            })
        })
        .collect();
    let writes: usize = writers.into_iter().map(|w| w.join().expect("writer")).sum();
    let feeds: Vec<_> = SCOPES.iter().map(|s| whole_feed(&nodes[1], s)).collect();
    // Each write is one record entry; each move also one gone entry.
    let records = |f: &[ScopedChange]| -> std::collections::BTreeSet<(String, u64)> {
        f.iter()
            .filter_map(|e| match e {
                ScopedChange::Record { record, .. } => Some((record.id.clone(), record.version)),
                _ => None,
            })
            .collect()
    };
    let (in_a, in_b) = (records(&feeds[0]), records(&feeds[1]));
    assert_eq!(
        in_a.len() + in_b.len(),
        writes,
        "one record entry per write"
    );
    let mut gones = 0;
    for (i, feed) in feeds.iter().enumerate() {
        let target = if i == 0 { &in_b } else { &in_a };
        for e in feed {
            if let ScopedChange::Gone { gone, .. } = e {
                gones += 1;
                assert!(
                    target.contains(&(gone.id.clone(), gone.version)),
                    "gone {} v{} from {} has no record entry in the other scope",
                    gone.id,
                    gone.version,
                    SCOPES[i]
                );
            }
        }
    }
    assert_eq!(gones, WRITERS * ROUNDS * 2, "one gone entry per move");
}
