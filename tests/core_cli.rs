//! The CLI and the Rust client against a real daemon: round trips, errors,
//! exit codes, socket discovery, status and watch.

mod common;

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use common::{bin, path_str, Daemon};
use serde_json::{json, Value};
use syncd::client::{Client, ClientError};
use syncd::ipc::codec::Encoding;
use syncd::ipc::wire::{ErrorCode, Event, Origin};

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Asserts the exit code and returns stderr.
fn expect_exit(o: &Output, code: i32, what: &str) -> String {
    assert_eq!(
        o.status.code(),
        Some(code),
        "{what}: expected exit {code}, got {}; stdout: {} stderr: {}",
        o.status,
        stdout(o),
        stderr(o)
    );
    stderr(o)
}

/// `syncd` with exactly these arguments and no ambient SYNCD_SOCKET.
fn raw_cli(args: &[&str], env_socket: Option<&Path>, xdg_runtime: Option<&Path>) -> Output {
    let mut c = Command::new(bin());
    c.args(args).stdin(Stdio::null()).env_remove("SYNCD_SOCKET");
    if let Some(s) = env_socket {
        c.env("SYNCD_SOCKET", s);
    }
    if let Some(x) = xdg_runtime {
        c.env("XDG_RUNTIME_DIR", x);
    }
    c.output().expect("run syncd")
}

fn put(d: &Daemon, collection: &str, data: &str) -> String {
    let id = d.ok(&["put", collection, data]).trim().to_owned();
    assert!(!id.is_empty(), "put printed no id");
    id
}

#[test]
fn cli_round_trips() {
    let d = Daemon::start("");

    // put with a minted id; get shows the record, unsynced and pending.
    let id = put(&d, "todos", r#"{"title":"milk","n":1}"#);
    let r = d.json(&["get", "todos", &id]);
    assert_eq!(r["id"], json!(id));
    assert_eq!(r["data"], json!({"title": "milk", "n": 1}));
    assert_eq!(r["server_id"], Value::Null);
    assert!(r.get("server_id").is_some(), "server_id key missing: {r}");
    assert_eq!(r["version"], Value::Null);
    assert!(r.get("version").is_some(), "version key missing: {r}");
    assert_eq!(r["pending"], json!(true));

    // put --id uses the given id; a second put replaces the whole document.
    let out = d.ok(&["put", "todos", "--id", "my-id", r#"{"a":1,"b":2}"#]);
    assert_eq!(out.trim(), "my-id");
    assert_eq!(
        d.json(&["get", "todos", "my-id"])["data"],
        json!({"a": 1, "b": 2})
    );
    d.ok(&["put", "todos", "--id", "my-id", r#"{"c":3}"#]);
    assert_eq!(d.json(&["get", "todos", "my-id"])["data"], json!({"c": 3}));

    // patch merges top-level fields; null removes a key.
    d.ok(&[
        "patch",
        "todos",
        &id,
        r#"{"n":2,"title":null,"extra":{"x":[1,2]}}"#,
    ]);
    let r = d.json(&["get", "todos", &id]);
    assert_eq!(r["data"], json!({"n": 2, "extra": {"x": [1, 2]}}));
    assert_eq!(r["pending"], json!(true));

    // delete: the record is gone for get and list.
    d.ok(&["delete", "todos", &id]);
    let o = d.cli(&["get", "todos", &id]);
    let e = expect_exit(&o, 1, "get after delete");
    assert!(e.contains(&id), "message should name the id {id}: {e}");
    let listed: Vec<String> = d
        .json_lines(&["list", "todos"])
        .iter()
        .map(|r| r["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(listed, vec!["my-id".to_owned()]);

    // The queue holds the session's ops in order. Nothing was sent, so a
    // write folds into its record's op at the tail of the queue
    // (coalescing): my-id's second put into its create, and the delete of
    // `id` into the patch queued just before it.
    let ops = d.json_lines(&["queue", "--json"]);
    let kinds: Vec<(&str, &str)> = ops
        .iter()
        .map(|o| (o["id"].as_str().unwrap(), o["kind"].as_str().unwrap()))
        .collect();
    assert_eq!(
        kinds,
        vec![
            (id.as_str(), "create"),
            ("my-id", "create"),
            (id.as_str(), "delete"),
        ]
    );
    for o in &ops {
        assert_eq!(o["collection"], json!("todos"));
        assert_eq!(o["attempts"], json!(0));
    }
    // Full documents travel with the op; a delete has none.
    assert_eq!(ops[1]["data"], json!({"c": 3}));
    assert_eq!(ops[2]["data"], Value::Null);
    let op_ids: Vec<&str> = ops.iter().map(|o| o["op_id"].as_str().unwrap()).collect();
    let seqs: Vec<u64> = ops.iter().map(|o| o["seq"].as_u64().unwrap()).collect();
    for w in op_ids.windows(2) {
        assert!(w[0] < w[1], "op_ids not unique and increasing: {op_ids:?}");
    }
    for w in seqs.windows(2) {
        assert!(w[0] < w[1], "seqs not increasing: {seqs:?}");
    }

    // The readable queue listing and status agree.
    let text = d.ok(&["queue"]);
    assert_eq!(text.lines().count(), 3, "{text}");
    assert!(text.contains("delete"), "{text}");
    assert_eq!(d.status()["queue_depth"], json!(3));
}

#[test]
fn cli_list_order_and_limit() {
    let d = Daemon::start("");
    for id in ["c3", "a1", "e5", "b2", "d4"] {
        d.ok(&["put", "items", "--id", id, &format!(r#"{{"k":"{id}"}}"#)]);
    }
    // Another collection does not leak into the listing.
    d.ok(&["put", "items2", "--id", "a0", "{}"]);
    d.ok(&["put", "item", "--id", "zz", "{}"]);

    let all = d.json_lines(&["list", "items"]);
    let ids: Vec<&str> = all.iter().map(|r| r["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["a1", "b2", "c3", "d4", "e5"]);
    for r in &all {
        assert_eq!(r["data"]["k"], r["id"]);
        assert_eq!(r["pending"], json!(true));
        assert_eq!(r["server_id"], Value::Null);
    }
    let two = d.json_lines(&["list", "items", "--limit", "2"]);
    let ids: Vec<&str> = two.iter().map(|r| r["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["a1", "b2"]);
    let from = d.json_lines(&["list", "items", "--start", "c3", "--limit", "2"]);
    let ids: Vec<&str> = from.iter().map(|r| r["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["c3", "d4"]);
    assert!(d.json_lines(&["list", "nothing-here"]).is_empty());

    // Minted ids are time-ordered: list order is creation order.
    let minted: Vec<String> = (0..5)
        .map(|i| put(&d, "minted", &format!(r#"{{"i":{i}}}"#)))
        .collect();
    let listed: Vec<String> = d
        .json_lines(&["list", "minted"])
        .iter()
        .map(|r| r["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(listed, minted);

    // A deleted record drops out of the list.
    d.ok(&["delete", "items", "c3"]);
    let ids: Vec<String> = d
        .json_lines(&["list", "items"])
        .iter()
        .map(|r| r["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(ids, ["a1", "b2", "d4", "e5"]);
}

#[test]
fn cli_errors() {
    let d = Daemon::start("");

    for (doc, word) in [
        ("[1,2]", "array"),
        ("\"text\"", "string"),
        ("42", "number"),
        ("null", "null"),
    ] {
        let o = d.cli(&["put", "todos", doc]);
        let e = expect_exit(&o, 1, &format!("put {doc}"));
        assert!(
            e.contains("object"),
            "put {doc}: message should say not an object: {e}"
        );
        assert!(
            e.contains(word),
            "put {doc}: message should say what it got: {e}"
        );
    }

    let o = d.cli(&["put", "todos", "{bad json"]);
    let e = expect_exit(&o, 2, "invalid JSON argument");
    assert!(e.to_lowercase().contains("invalid json"), "{e}");
    let o = d.cli(&["patch", "todos", "x", "{\"a\":"]);
    expect_exit(&o, 2, "invalid JSON argument to patch");

    let o = d.cli(&["put", "bad/name", "{}"]);
    let e = expect_exit(&o, 1, "bad collection");
    assert!(e.contains("bad collection name"), "{e}");
    assert!(e.contains("bad/name"), "{e}");
    let o = d.cli(&["put", "-leading-dash", "{}"]);
    assert!(!o.status.success(), "collection starting with - accepted");
    let long = "c".repeat(65);
    let o = d.cli(&["put", &long, "{}"]);
    let e = expect_exit(&o, 1, "overlong collection");
    assert!(e.contains("bad collection name"), "{e}");

    let o = d.cli(&["put", "todos", "--id", "a b", "{}"]);
    let e = expect_exit(&o, 1, "bad id");
    assert!(e.contains("bad id"), "{e}");
    let o = d.cli(&["get", "todos", "x/y"]);
    let e = expect_exit(&o, 1, "bad id on get");
    assert!(e.contains("bad id"), "{e}");

    let o = d.cli(&["get", "todos", "no-such-record"]);
    let e = expect_exit(&o, 1, "get missing");
    assert!(
        e.contains("no-such-record"),
        "message should name the id: {e}"
    );
    let o = d.cli(&["patch", "todos", "no-such-record", "{}"]);
    let e = expect_exit(&o, 1, "patch missing");
    assert!(e.contains("no-such-record"), "{e}");
    let o = d.cli(&["delete", "todos", "no-such-record"]);
    let e = expect_exit(&o, 1, "delete missing");
    assert!(e.contains("no-such-record"), "{e}");

    // Usage errors from clap are exit 2 too.
    let o = d.cli(&["put"]);
    expect_exit(&o, 2, "missing arguments");
    let o = d.cli(&["list", "todos", "--limit", "many"]);
    expect_exit(&o, 2, "bad --limit");

    // Nothing of the failed writes was queued.
    assert_eq!(d.status()["queue_depth"], json!(0));
}

#[test]
fn cli_unreachable_is_exit_3() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("nobody-home.sock");
    for args in [
        vec!["status", "--json"],
        vec!["put", "todos", "{}"],
        vec!["get", "todos", "x"],
        vec!["list", "todos"],
        vec!["queue"],
    ] {
        let mut full = vec!["--socket", sock.to_str().unwrap()];
        full.extend(args.iter().copied());
        let o = raw_cli(&full, None, None);
        let e = expect_exit(&o, 3, &format!("{args:?} without a daemon"));
        assert!(
            e.contains(&path_str(&sock)),
            "message should name the socket path: {e}"
        );
        assert!(
            e.contains("syncd run"),
            "message should say how to start the daemon: {e}"
        );
    }
    // A socket file nobody listens on is unreachable too.
    {
        let _l = std::os::unix::net::UnixListener::bind(&sock).unwrap();
    }
    assert!(sock.exists());
    let o = raw_cli(&["--socket", sock.to_str().unwrap(), "status"], None, None);
    expect_exit(&o, 3, "stale socket file");
}

#[test]
fn socket_discovery_order() {
    let d = Daemon::start("");
    let good = d.socket.clone();
    let good_cfg = d.config.clone();
    let other = tempfile::tempdir().unwrap();
    let bad_env = other.path().join("env.sock");
    let bad_flag = other.path().join("flag.sock");
    let bad_cfg_sock = other.path().join("cfg.sock");
    let bad_cfg = other.path().join("other.toml");
    std::fs::write(
        &bad_cfg,
        format!("[daemon]\nsocket = {:?}\n", path_str(&bad_cfg_sock)),
    )
    .unwrap();
    let s = |p: &Path| p.to_str().unwrap().to_owned();

    let ok = |o: Output, what: &str| {
        assert!(o.status.success(), "{what}: {}{}", stdout(&o), stderr(&o));
    };
    let unreachable = |o: Output, path: &Path, what: &str| {
        let e = expect_exit(&o, 3, what);
        assert!(
            e.contains(&path_str(path)),
            "{what}: should have tried {}: {e}",
            path.display()
        );
    };

    // --socket beats SYNCD_SOCKET and --config.
    ok(
        raw_cli(
            &["--socket", &s(&good), "--config", &s(&bad_cfg), "status"],
            Some(&bad_env),
            None,
        ),
        "--socket good, env and config bad",
    );
    unreachable(
        raw_cli(
            &[
                "--socket",
                &s(&bad_flag),
                "--config",
                &s(&good_cfg),
                "status",
            ],
            Some(&good),
            None,
        ),
        &bad_flag,
        "--socket bad, env and config good",
    );
    // --config beats SYNCD_SOCKET: a flag typed now wins over a variable
    // exported long ago (as in docker, kubectl and git).
    ok(
        raw_cli(&["--config", &s(&good_cfg), "status"], Some(&bad_env), None),
        "config good, env bad",
    );
    unreachable(
        raw_cli(&["--config", &s(&bad_cfg), "status"], Some(&good), None),
        &bad_cfg_sock,
        "config bad, env good",
    );
    // SYNCD_SOCKET alone.
    ok(raw_cli(&["status"], Some(&good), None), "env good");
    unreachable(
        raw_cli(&["status"], Some(&bad_env), None),
        &bad_env,
        "env bad",
    );
    // --config alone.
    ok(
        raw_cli(&["--config", &s(&good_cfg), "status"], None, None),
        "config good",
    );
    unreachable(
        raw_cli(&["--config", &s(&bad_cfg), "status"], None, None),
        &bad_cfg_sock,
        "config bad",
    );
    // Nothing given: the default path ($XDG_RUNTIME_DIR/syncd/syncd.sock).
    let xdg = tempfile::tempdir().unwrap();
    unreachable(
        raw_cli(&["status"], None, Some(xdg.path())),
        &xdg.path().join("syncd").join("syncd.sock"),
        "default path",
    );
    // --config is read only for its socket, leniently: a file the daemon
    // would reject (as after an invalid edit it is ignoring) still leads
    // to the socket it names.
    let broken = other.path().join("broken.toml");
    std::fs::write(
        &broken,
        format!(
            "[daemon]\nsocket = {:?}\nno_such_key = 1\n",
            s(&bad_cfg_sock)
        ),
    )
    .unwrap();
    unreachable(
        raw_cli(&["--config", &s(&broken), "status"], None, None),
        &bad_cfg_sock,
        "config rejected by the daemon",
    );
    // A --config file that cannot be read is a usage error, not "unreachable".
    let missing = other.path().join("missing.toml");
    let o = raw_cli(&["--config", &s(&missing), "status"], None, None);
    assert_eq!(o.status.code(), Some(2), "missing config: {}", stderr(&o));
}

#[test]
fn status_json_has_every_key() {
    let mut d = Daemon::start("");
    let s = d.status();
    for key in [
        "state",
        "queue_depth",
        "oldest_pending_age_ms",
        "dead_letters",
        "conflicts",
        "last_sync_at",
        "last_error",
        "backend",
        "client_id",
        "store_bytes",
    ] {
        assert!(s.get(key).is_some(), "status --json lacks {key}: {s}");
    }
    assert_eq!(s["state"], json!("offline"), "no backend configured: {s}");
    assert_eq!(s["queue_depth"], json!(0));
    assert_eq!(s["oldest_pending_age_ms"], Value::Null);
    assert_eq!(s["dead_letters"], json!(0));
    assert_eq!(s["conflicts"], json!(0));
    assert_eq!(s["last_sync_at"], Value::Null);
    assert_eq!(s["backend"], Value::Null);
    let client_id = s["client_id"]
        .as_str()
        .expect("client_id string")
        .to_owned();
    assert!(!client_id.is_empty());
    assert!(s["store_bytes"].as_u64().expect("store_bytes number") > 0);

    put(&d, "todos", r#"{"x":1}"#);
    put(&d, "todos", r#"{"x":2}"#);
    std::thread::sleep(Duration::from_millis(20));
    let s = d.status();
    assert_eq!(s["queue_depth"], json!(2));
    assert!(
        s["oldest_pending_age_ms"]
            .as_i64()
            .expect("age once queued")
            >= 0,
        "{s}"
    );
    assert_eq!(s["state"], json!("offline"));

    // The readable form says the same.
    let text = d.ok(&["status"]);
    assert!(text.contains("offline"), "{text}");
    assert!(text.contains(&client_id), "{text}");

    // client_id is made once per install: the same after a restart.
    d.kill9();
    d.spawn();
    let s = d.status();
    assert_eq!(s["client_id"], json!(client_id));
    assert_eq!(s["queue_depth"], json!(2));
}

/// The next watch event, or `Err` after 5 s without one.
async fn next(w: &mut Client) -> Result<Result<Event, ClientError>, tokio::time::error::Elapsed> {
    tokio::time::timeout(Duration::from_secs(5), w.next_event()).await
}

fn api_code(e: &ClientError) -> Option<ErrorCode> {
    match e {
        ClientError::Api(a) => Some(a.code),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rust_client_round_trips() {
    let d = Daemon::start("");
    let mut c = Client::connect(&d.socket, "test").await.expect("connect");
    assert!(!c.client_id().is_empty());

    let (id, op1) = c
        .put("todos", None, json!({"title": "milk"}))
        .await
        .unwrap();
    let r = c.get("todos", &id).await.unwrap();
    assert_eq!(r.id, id);
    assert_eq!(r.collection, "todos");
    assert_eq!(r.data.0, json!({"title": "milk"}));
    assert_eq!(r.server_id, None);
    assert_eq!(r.version, None);
    assert!(r.pending);

    let (id2, op2) = c
        .put("todos", Some("fixed"), json!({"a": 1, "b": 2}))
        .await
        .unwrap();
    assert_eq!(id2, "fixed");
    let (pid, op3) = c
        .patch("todos", "fixed", json!({"a": null, "c": 3}))
        .await
        .unwrap();
    assert_eq!(pid, "fixed");
    assert_eq!(
        c.get("todos", "fixed").await.unwrap().data.0,
        json!({"b": 2, "c": 3})
    );
    let (_, op4) = c.delete("todos", &id).await.unwrap();
    let e = c.get("todos", &id).await.unwrap_err();
    assert_eq!(api_code(&e), Some(ErrorCode::NotFound), "{e}");
    assert!(e.to_string().contains(&id), "{e}");

    let (recs, next) = c.list("todos", None, None).await.unwrap();
    assert_eq!(
        recs.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(),
        ["fixed"]
    );
    assert_eq!(next, None);

    let ops = c.queue(None).await.unwrap();
    let got: Vec<(&str, &str, &str)> = ops
        .iter()
        .map(|o| (o.op_id.as_str(), o.id.as_str(), o.kind.as_str()))
        .collect();
    assert_eq!(
        got,
        vec![
            (op1.as_str(), id.as_str(), "create"),
            (op2.as_str(), "fixed", "create"),
            (op4.as_str(), id.as_str(), "delete"),
        ]
    );
    // The patch folded into the unsent create at the tail of the queue:
    // it answered with the op that carries it.
    assert_eq!(op3, op2);

    let s = c.status().await.unwrap();
    assert_eq!(s.state, "offline");
    assert_eq!(s.queue_depth, 3);
    assert_eq!(s.backend, None);
    assert_eq!(s.client_id, c.client_id());

    // Typed errors; the connection keeps working after each.
    let e = c.put("todos", None, json!([1])).await.unwrap_err();
    assert_eq!(api_code(&e), Some(ErrorCode::NotAnObject), "{e}");
    let e = c.put("no/slash", None, json!({})).await.unwrap_err();
    assert_eq!(api_code(&e), Some(ErrorCode::BadCollection), "{e}");
    let e = c.put("todos", Some("sp ace"), json!({})).await.unwrap_err();
    assert_eq!(api_code(&e), Some(ErrorCode::BadId), "{e}");
    let e = c.patch("todos", "missing", json!({})).await.unwrap_err();
    assert_eq!(api_code(&e), Some(ErrorCode::NotFound), "{e}");
    assert_eq!(c.status().await.unwrap().queue_depth, 3);

    // The JSON encoding of the same client sees the same data.
    let mut j = Client::connect_with(&d.socket, "test-json", Encoding::Json)
        .await
        .unwrap();
    assert_eq!(
        j.get("todos", "fixed").await.unwrap().data.0,
        json!({"b": 2, "c": 3})
    );
    let (jid, _) = j
        .put("todos", None, json!({"nested": {"n": [1, null, "x"]}}))
        .await
        .unwrap();
    assert_eq!(
        c.get("todos", &jid).await.unwrap().data.0,
        json!({"nested": {"n": [1, null, "x"]}})
    );

    // No daemon: Unreachable names the path.
    let gone = d.dir.path().join("gone.sock");
    match Client::connect(&gone, "test").await {
        Err(e @ ClientError::Unreachable { .. }) => {
            assert!(e.to_string().contains(&path_str(&gone)), "{e}")
        }
        Err(e) => panic!("expected Unreachable, got {e}"),
        Ok(_) => panic!("connected to nothing"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_delivers_other_connections_writes() {
    let d = Daemon::start("");
    let mut w = Client::connect(&d.socket, "test").await.expect("connect");
    w.watch(&["todos".to_owned()]).await.expect("watch");

    let e = Client::connect(&d.socket, "test")
        .await
        .unwrap()
        .watch(&["bad/name".to_owned()])
        .await
        .unwrap_err();
    assert_eq!(api_code(&e), Some(ErrorCode::BadCollection), "{e}");

    // Another connection (the CLI) writes: first to another collection,
    // then to the watched one.
    let socket = d.socket.clone();
    let cli = move |args: &[&str]| {
        let o = Command::new(bin())
            .arg("--socket")
            .arg(&socket)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(o.status.success(), "{args:?}: {}", stderr(&o));
        stdout(&o).trim().to_owned()
    };
    let run = |args: Vec<&'static str>| {
        let cli = cli.clone();
        tokio::task::spawn_blocking(move || cli(&args))
    };
    run(vec!["put", "other", "--id", "o1", r#"{"no":1}"#])
        .await
        .unwrap();
    run(vec!["put", "todos", "--id", "t1", r#"{"yes":1}"#])
        .await
        .unwrap();

    let ev = next(&mut w)
        .await
        .expect("event within 5 s")
        .expect("event");
    match ev {
        Event::Changed {
            collection,
            id,
            op_id,
            origin,
            data,
        } => {
            assert_eq!(
                collection, "todos",
                "event of an unwatched collection delivered"
            );
            assert_eq!(id, "t1");
            assert!(op_id.is_some());
            assert_eq!(origin, Origin::Local);
            assert_eq!(data.unwrap().0, json!({"yes": 1}));
        }
        other => panic!("expected changed, got {other:?}"),
    }

    run(vec!["patch", "todos", "t1", r#"{"yes":null,"more":2}"#])
        .await
        .unwrap();
    run(vec!["put", "other", "--id", "o2", "{}"]).await.unwrap();
    run(vec!["delete", "todos", "t1"]).await.unwrap();
    let ev = next(&mut w).await.expect("patch event").expect("event");
    assert!(
        matches!(&ev, Event::Changed { id, data: Some(doc), origin: Origin::Local, .. }
            if id == "t1" && doc.0 == json!({"more": 2})),
        "{ev:?}"
    );
    let ev = next(&mut w).await.expect("delete event").expect("event");
    assert!(
        matches!(&ev, Event::Changed { collection, id, data: None, origin: Origin::Local, .. }
            if collection == "todos" && id == "t1"),
        "{ev:?}"
    );
    // Nothing else: the writes to `other` never arrive.
    let extra = tokio::time::timeout(Duration::from_secs(1), w.next_event()).await;
    assert!(
        extra.is_err(),
        "an extra event arrived for an unwatched collection: {extra:?}"
    );

    // A watcher of every collection sees both; requests on the watching
    // connection still work between events.
    let mut all = Client::connect(&d.socket, "test").await.unwrap();
    all.watch(&[]).await.unwrap();
    run(vec!["put", "other", "--id", "o3", "{}"]).await.unwrap();
    assert_eq!(all.status().await.unwrap().state, "offline");
    let ev = next(&mut all).await.expect("event").expect("event");
    assert!(
        matches!(&ev, Event::Changed { collection, id, .. } if collection == "other" && id == "o3"),
        "{ev:?}"
    );
    run(vec!["put", "todos", "--id", "t2", "{}"]).await.unwrap();
    let ev = next(&mut all).await.expect("event").expect("event");
    assert!(
        matches!(&ev, Event::Changed { collection, id, .. } if collection == "todos" && id == "t2"),
        "{ev:?}"
    );
}

#[test]
fn cli_watch_prints_json_lines() {
    let d = Daemon::start("");
    let mut child = Command::new(bin())
        .arg("--socket")
        .arg(&d.socket)
        .args(["watch", "todos"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let out = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(out).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    // The subscription is in place once a write shows up; keep writing
    // until one does (the watch process may still be connecting).
    let mut first = None;
    for i in 0..100 {
        d.ok(&["put", "other", "{}"]);
        d.ok(&[
            "put",
            "todos",
            "--id",
            &format!("w{i}"),
            &format!(r#"{{"i":{i}}}"#),
        ]);
        if let Ok(l) = rx.recv_timeout(Duration::from_millis(200)) {
            first = Some(l);
            break;
        }
    }
    let line = first.expect("syncd watch printed nothing");
    let v: Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON: {line}: {e}"));
    let ch = &v["changed"];
    assert_eq!(ch["collection"], json!("todos"), "{v}");
    assert_eq!(ch["origin"], json!("local"), "{v}");
    let _ = child.kill();
    let _ = child.wait();
}

#[test]
fn wait_synced_with_timeout_gives_up_but_keeps_the_write() {
    // A backend nobody listens on: the write can never sync.
    let d = Daemon::start("[backend]\nurl = \"http://127.0.0.1:9/\"\n");
    let o = d.cli(&[
        "put",
        "todos",
        "--id",
        "w1",
        r#"{"a":1}"#,
        "--wait",
        "synced",
        "--timeout",
        "0.5",
    ]);
    // 4: a --wait that ran out of time, not a daemon error (1).
    assert_eq!(o.status.code(), Some(4));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("not on the server") && err.contains("queued"),
        "{err}"
    );
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), "w1");
    let rec = d.json(&["get", "todos", "w1"]);
    assert_eq!(rec["pending"], true);
    assert_eq!(d.status()["queue_depth"], 1);
    // Clients that gave up leave nothing behind in the daemon.
    let fds = || {
        std::fs::read_dir(format!("/proc/{}/fd", d.pid()))
            .unwrap()
            .count()
    };
    let before = fds();
    for _ in 0..10 {
        let o = d.cli(&[
            "put",
            "todos",
            "{}",
            "--wait",
            "synced",
            "--timeout",
            "0.05",
        ]);
        assert_eq!(o.status.code(), Some(4));
    }
    common::eventually(5, "abandoned waits released", || fds() <= before);
    // --timeout without --wait is a usage error.
    assert_eq!(
        d.cli(&["put", "todos", "{}", "--timeout", "1"])
            .status
            .code(),
        Some(2)
    );
}
