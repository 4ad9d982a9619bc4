//! The CouchDB backend (`[backend] kind = "couchdb"`, docs/backends.md)
//! end to end: real `syncd` daemons syncing to a real pouchdb-server
//! (CouchDB's HTTP API) on loopback. An ordered drain of offline ops, a lost
//! reply applied once, a conflict under each strategy with the server edit
//! made through CouchDB's API, two devices converging, a pull after being
//! offline, CouchDB's own conflicting revisions, and the failure states (no
//! database, refused credentials). Skips with a note when node/npm are
//! missing (`.ci/run` installs them).

mod common;
mod common_couch;

use std::time::{Duration, Instant};

use common::eventually;
use common_couch::{
    depth, device, device_with, edited, fields, free_port, generation, get, put, record_gen, sync,
    Couch, Proxy, DB,
};
use serde_json::json;

/// Ops queued while the database is not reachable arrive, in queue order,
/// once it is; versions are CouchDB generations.
#[test]
fn ordered_drain_after_the_server_comes_up() {
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}/{DB}");
    let d = device(&url);
    put(&d, "todos", "a", json!({"t": "a1"}));
    put(&d, "todos", "b", json!({"t": "b1"}));
    d.ok(&["patch", "todos", "a", r#"{"t":"a2"}"#]);
    d.ok(&["delete", "todos", "b"]);
    put(&d, "todos", "c", json!({"t": "c1"}));
    assert_eq!(depth(&d), 5);
    let Some(couch) = Couch::start_on(port, true) else {
        return;
    };
    eventually(30, "queue drained", || depth(&d) == 0);
    let a = couch.doc("todos", "a").expect("a");
    assert_eq!((generation(&a), fields(&a)), (2, json!({"t": "a2"})));
    assert!(couch.doc("todos", "b").is_none(), "b deleted");
    let b = &couch.leaves("todos", "b")[0]["ok"];
    assert_eq!((generation(b), &b["_deleted"]), (2, &json!(true)));
    let c = couch.doc("todos", "c").expect("c");
    assert_eq!(generation(&c), 1);
    // The last write of each record, in the order they were queued.
    assert_eq!(couch.change_ids(), ["todos:a", "todos:b", "todos:c"]);
    assert_eq!(record_gen(&get(&d, "todos", "a").expect("a")), 2);
    assert_eq!(record_gen(&get(&d, "todos", "c").expect("c")), 1);
    assert!(get(&d, "todos", "b").is_none());
}

/// The reply to a PUT is lost after CouchDB applied it: the retry finds
/// its op_id in the document and the op is applied exactly once.
#[test]
fn lost_reply_is_applied_once() {
    let Some(couch) = Couch::start() else {
        return;
    };
    let proxy = Proxy::start(&couch.addr);
    let d = device(&proxy.url());
    *proxy.drop_puts.lock().expect("lock") = 1;
    put(&d, "todos", "r", json!({"n": 1}));
    eventually(30, "create confirmed", || depth(&d) == 0);
    *proxy.drop_puts.lock().expect("lock") = 1;
    d.ok(&["patch", "todos", "r", r#"{"n":2}"#]);
    eventually(30, "update confirmed", || depth(&d) == 0);
    let doc = couch.doc("todos", "r").expect("doc");
    assert_eq!((generation(&doc), fields(&doc)), (2, json!({"n": 2})));
    let puts: Vec<_> = proxy
        .seen()
        .into_iter()
        .filter(|s| s.method == "PUT")
        .collect();
    assert_eq!(
        puts.len(),
        2,
        "one PUT per op, no second application: {puts:?}"
    );
    assert!(puts.iter().all(|p| p.dropped), "{puts:?}");
    assert_eq!(record_gen(&get(&d, "todos", "r").expect("r")), 2);
    assert!(d.log_text().contains("found applied in CouchDB"));
}

/// A record edited on the device and, meanwhile, through CouchDB's API:
/// each collection's strategy decides.
#[test]
fn conflicts_under_each_strategy() {
    let Some(couch) = Couch::start() else {
        return;
    };
    let d = device(&couch.url());
    for c in ["sw", "lww", "mg", "man"] {
        put(&d, c, "r", json!({"a": 1, "b": 1}));
    }
    sync(&d);
    eventually(15, "all created", || depth(&d) == 0);
    d.ok(&["pause"]);
    for c in ["sw", "lww", "mg", "man"] {
        let cur = couch.doc(c, "r").expect("doc");
        // Older than any device write.
        let edited = edited(&cur, json!({"a": 2, "b": 1}), 1);
        let (s, v) = couch.req("PUT", &format!("/{DB}/{c}:r"), Some(&edited.to_string()));
        assert_eq!(s, 201, "{v}");
        put(&d, c, "r", json!({"a": 1, "b": 2}));
    }
    d.ok(&["resume"]);
    eventually(30, "conflicts settled", || depth(&d) == 0);
    let data = |c: &str| couch.doc(c, "r").map(|v| (generation(&v), fields(&v)));
    assert_eq!(data("sw"), Some((2, json!({"a": 2, "b": 1}))));
    assert_eq!(data("lww"), Some((3, json!({"a": 1, "b": 2}))));
    assert_eq!(data("mg"), Some((3, json!({"a": 2, "b": 2}))));
    assert_eq!(data("man"), Some((2, json!({"a": 2, "b": 1}))));
    assert_eq!(
        get(&d, "sw", "r").expect("sw")["data"],
        json!({"a": 2, "b": 1})
    );
    assert_eq!(
        get(&d, "mg", "r").expect("mg")["data"],
        json!({"a": 2, "b": 2})
    );
    let parked = d.json(&["conflicts", "--json"]);
    assert_eq!(parked.as_array().map(Vec::len), Some(1), "{parked}");
    assert_eq!(parked[0]["collection"], "man", "{parked}");
}

/// A change on device A reaches device B through CouchDB.
#[test]
fn two_devices_converge() {
    let Some(couch) = Couch::start() else {
        return;
    };
    let a = device(&couch.url());
    let b = device(&couch.url());
    let t = Instant::now();
    put(&a, "todos", "shared", json!({"from": "a"}));
    eventually(10, "B sees A's record", || {
        get(&b, "todos", "shared").is_some()
    });
    // Speed is the harness's business (bench `live`); this only says it.
    println!(
        "A -> B latency through CouchDB: {} ms",
        t.elapsed().as_millis()
    );
    b.ok(&["patch", "todos", "shared", r#"{"from":"b"}"#]);
    eventually(10, "A sees B's edit", || {
        get(&a, "todos", "shared").is_some_and(|r| r["data"]["from"] == "b")
    });
}

/// A device that was stopped catches up on creates, updates and deletes.
#[test]
fn pull_after_offline() {
    let Some(couch) = Couch::start() else {
        return;
    };
    let a = device(&couch.url());
    let mut b = device(&couch.url());
    put(&a, "todos", "x", json!({"v": 1}));
    put(&a, "todos", "y", json!({"v": 1}));
    eventually(10, "B has x and y", || get(&b, "todos", "y").is_some());
    b.stop();
    a.ok(&["patch", "todos", "x", r#"{"v":2}"#]);
    a.ok(&["delete", "todos", "y"]);
    put(&a, "todos", "z", json!({"v": 1}));
    eventually(10, "A pushed", || depth(&a) == 0);
    b.spawn();
    eventually(15, "B caught up", || {
        get(&b, "todos", "z").is_some()
            && get(&b, "todos", "y").is_none()
            && get(&b, "todos", "x").is_some_and(|r| r["data"]["v"] == 2)
    });
    assert_eq!(record_gen(&get(&b, "todos", "x").expect("x")), 2);
}

/// Conflicting revisions made inside CouchDB (as replication between
/// nodes does, here with `new_edits: false`): the device follows CouchDB's
/// winner and the daemon warns about the losing revision.
#[test]
fn couchdb_conflicts_follow_the_winner_and_warn() {
    let Some(couch) = Couch::start() else {
        return;
    };
    let d = device(&couch.url());
    put(&d, "todos", "k", json!({"v": "device"}));
    eventually(10, "created", || depth(&d) == 0);
    let branches = json!({"new_edits": false, "docs": [
        {"_id": "todos:k", "_rev": "2-aaaa", "v": "node1", "syncd": {"updated_at": 10}},
        {"_id": "todos:k", "_rev": "2-ffff", "v": "node2", "syncd": {"updated_at": 10}}
    ]});
    let (s, v) = couch.req(
        "POST",
        &format!("/{DB}/_bulk_docs"),
        Some(&branches.to_string()),
    );
    assert_eq!(s, 201, "{v}");
    eventually(10, "device took the winner", || {
        get(&d, "todos", "k").is_some_and(|r| r["data"]["v"] == "node2")
    });
    eventually(5, "warning logged", || {
        d.log_text().contains("conflicting revisions") && d.log_text().contains("2-aaaa")
    });
    // An edit on the device lands on the winner; the loser stays for a
    // person to resolve in CouchDB.
    d.ok(&["patch", "todos", "k", r#"{"v":"edited"}"#]);
    eventually(10, "edit pushed", || depth(&d) == 0);
    let doc = couch.doc("todos", "k").expect("doc");
    assert_eq!(
        (generation(&doc), &fields(&doc)["v"]),
        (3, &json!("edited"))
    );
    // Branches sent without `_revisions` hang off no parent, so the
    // device's own first revision is a losing leaf too.
    let losers = doc["_conflicts"].as_array().cloned().unwrap_or_default();
    assert!(losers.contains(&json!("2-aaaa")), "{doc}");
    assert!(!losers.contains(&json!("2-ffff")), "{doc}");
}

/// A URL whose database does not exist is a `backend_error` naming the
/// problem (nothing is created, nothing dead-lettered); refused
/// credentials are an `auth_error`.
#[test]
fn missing_database_and_refused_credentials() {
    let Some(couch) = Couch::start() else {
        return;
    };
    let d = device(&format!("http://{}/nosuchdb", couch.addr));
    put(&d, "todos", "q", json!({"v": 1}));
    eventually(10, "backend_error", || {
        let st = d.status();
        st["state"] == "backend_error"
            && st["last_error"]
                .as_str()
                .is_some_and(|e| e.contains("does not exist"))
    });
    assert_eq!(depth(&d), 1);
    assert_eq!(couch.req("GET", "/nosuchdb", None).0, 404, "not created");
    // The hint names the missing database and what to do, not "does not
    // answer the syncd protocol".
    let hint = d.status()["hint"].as_str().unwrap_or_default().to_owned();
    assert!(
        hint.contains("database") && hint.contains("nosuchdb") && hint.contains("syncd sync"),
        "{hint}"
    );
    assert!(!hint.contains("syncd protocol"), "{hint}");
    // Once the database exists, `syncd sync` sends the write at once.
    assert_eq!(couch.req("PUT", "/nosuchdb", None).0, 201);
    d.ok(&["sync", "--wait", "--timeout", "60"]);
    assert_eq!(depth(&d), 0);
    assert_eq!(d.status()["state"], "online");

    let pw = d.dir.path().join("pw");
    std::fs::write(&pw, "wrong\n").expect("pw");
    let auth = format!(
        "username = \"nobody\"\npassword_file = {:?}",
        pw.display().to_string()
    );
    let e = device_with(&couch.url(), &auth, "");
    put(&e, "todos", "q", json!({"v": 1}));
    eventually(10, "auth_error", || e.status()["state"] == "auth_error");
    assert_eq!(depth(&e), 1);
}

/// The adapter's waiting pull (`feed=longpoll`, for live pulls): a change
/// made during the wait ends it with that change; a wait with nothing new
/// ends empty at the same cursor (pouchdb-server ignores CouchDB's
/// `timeout`, so the adapter ends it itself).
#[test]
fn waiting_pull() {
    use syncd::backend::couch::{CouchClient, Credentials};
    let Some(couch) = Couch::start() else {
        return;
    };
    let c = CouchClient::new(
        &couch.url(),
        &Credentials::None,
        "t",
        Duration::from_secs(3),
        None,
    )
    .expect("client");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let first = rt.block_on(c.changes(None, 10, None)).expect("changes");
    assert!(first.changes.is_empty());
    let addr = couch.addr.clone();
    let writer = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(500));
        common::http(
            &addr,
            "PUT",
            &format!("/{DB}/todos:w"),
            Some(r#"{"x":1,"syncd":{"updated_at":5}}"#),
        )
    });
    // A wait that ran out would end empty: the page holding the write
    // says the wait ended with it (60 s: no clock race on a busy machine).
    let page = rt
        .block_on(c.changes(Some(&first.cursor), 10, Some(60)))
        .expect("wait");
    assert_eq!(writer.join().expect("writer").0, 201);
    assert_eq!(page.changes.len(), 1, "{page:?}");
    assert_eq!(page.changes[0].record.id, "w");
    assert_eq!(page.changes[0].record.updated_at, 5);
    let t = Instant::now();
    let idle = rt
        .block_on(c.changes(Some(&page.cursor), 10, Some(1)))
        .expect("idle wait");
    assert!(
        idle.changes.is_empty() && idle.cursor == page.cursor,
        "{idle:?}"
    );
    assert!(t.elapsed() >= Duration::from_secs(1), "{:?}", t.elapsed());
}

/// `doc_shape = "wrapped"` writes the first shape (the record under
/// `data`); a device on the default native shape reads those documents,
/// and its first write turns one native with nothing lost, which the
/// wrapped device reads in turn.
#[test]
fn both_shapes_are_read_whatever_the_setting() {
    let Some(couch) = Couch::start() else {
        return;
    };
    let old = device_with(&couch.url(), "doc_shape = \"wrapped\"", "");
    put(&old, "todos", "w", json!({"title": "t", "n": 1}));
    eventually(10, "pushed", || depth(&old) == 0);
    let doc = couch.doc("todos", "w").expect("doc");
    assert_eq!(doc["data"], json!({"title": "t", "n": 1}), "{doc}");
    assert!(doc["updated_at"].is_i64(), "{doc}");
    let new = device(&couch.url());
    eventually(10, "the native device reads it", || {
        get(&new, "todos", "w").is_some_and(|r| r["data"] == json!({"title": "t", "n": 1}))
    });
    new.ok(&["patch", "todos", "w", r#"{"n":2}"#]);
    eventually(10, "pushed", || depth(&new) == 0);
    let doc = couch.doc("todos", "w").expect("doc");
    assert_eq!(fields(&doc), json!({"title": "t", "n": 2}), "{doc}");
    assert!(doc["syncd"]["updated_at"].is_i64(), "{doc}");
    eventually(10, "the wrapped device reads the native document", || {
        get(&old, "todos", "w").is_some_and(|r| r["data"] == json!({"title": "t", "n": 2}))
    });
    // An app's own document with a field named `data` is not taken for a
    // wrapped one on a native database: a device edit keeps that field.
    let (s, v) = couch.req(
        "PUT",
        &format!("/{DB}/todos:app"),
        Some(r#"{"data":{"x":1}}"#),
    );
    assert_eq!(s, 201, "{v}");
    eventually(10, "the app's document", || {
        get(&new, "todos", "app").is_some_and(|r| r["data"] == json!({"data": {"x": 1}}))
    });
    new.ok(&["patch", "todos", "app", r#"{"y":2}"#]);
    eventually(10, "pushed", || depth(&new) == 0);
    let doc = couch.doc("todos", "app").expect("app");
    assert_eq!(fields(&doc), json!({"data": {"x": 1}, "y": 2}), "{doc}");
}

/// A record with a field a native document cannot hold (`syncd`, or a
/// name starting with `_`) is refused with a reason naming the field and
/// the way out; the daemon goes on syncing the next record.
#[test]
fn a_reserved_field_is_a_dead_letter_that_names_it() {
    let Some(couch) = Couch::start() else {
        return;
    };
    let d = device(&couch.url());
    put(&d, "todos", "bad", json!({"syncd": 1, "t": 1}));
    put(&d, "todos", "good", json!({"t": 1}));
    eventually(10, "queue settled", || depth(&d) == 0);
    let dead = d.json_lines(&["dead-letters", "--json"]);
    assert_eq!(dead.len(), 1, "{dead:?}");
    let error = dead[0]["last_error"].as_str().unwrap_or_default();
    assert!(
        error.contains("\"syncd\"") && error.contains("doc_shape"),
        "{dead:?}"
    );
    assert!(couch.doc("todos", "bad").is_none());
    assert_eq!(
        fields(&couch.doc("todos", "good").expect("good")),
        json!({"t": 1})
    );
}
