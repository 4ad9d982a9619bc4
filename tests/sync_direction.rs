//! `[collections.NAME] sync`: two devices on one reference backend, each
//! with its own settings. A `local` collection's writes never reach the
//! backend nor the other device; a `push` collection's writes reach the
//! server but the server's changes to it never reach that device; a `pull`
//! collection refuses writes (`read_only_collection`, exit 1) and receives
//! the other device's records; status lists them.
//!
//! "Never arrives" is checked without a clock: the other device writes a
//! sentinel record after the change that must not arrive, and the change
//! log is ordered, so once the sentinel is here the change was seen (and
//! ignored).

mod common;

use std::process::{Command, Stdio};

use common::{bin, eventually, output_text, Backend, Daemon};
use serde_json::{json, Value};

fn device(url: &str, collections: &str) -> Daemon {
    Daemon::start(&format!(
        "[backend]\nurl = {url:?}\ntimeout_ms = 3000\n[sync]\nbackoff_initial_ms = 50\nbackoff_max_ms = 500\n{collections}"
    ))
}

fn put(d: &Daemon, coll: &str, id: &str, doc: Value) -> String {
    d.ok(&["put", coll, "--id", id, &doc.to_string()])
        .trim()
        .to_owned()
}

fn get(d: &Daemon, coll: &str, id: &str) -> Option<Value> {
    let o = d.cli(&["get", coll, id]);
    o.status
        .success()
        .then(|| serde_json::from_slice(&o.stdout).expect("get JSON"))
}

/// Waits until `d` has `coll/id`, and returns its data.
fn arrives(d: &Daemon, coll: &str, id: &str) -> Value {
    let mut got = None;
    eventually(30, &format!("{coll}/{id} arrives"), || {
        got = get(d, coll, id);
        got.is_some()
    });
    got.map(|r| r["data"].clone()).unwrap_or_default()
}

/// The (collection, id) of every change in the backend's log.
fn on_server(b: &Backend) -> Vec<(String, String)> {
    b.all_changes()
        .iter()
        .map(|c| {
            (
                c["collection"].as_str().unwrap_or_default().to_owned(),
                c["record"]["id"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect()
}

fn has(changes: &[(String, String)], coll: &str, id: &str) -> bool {
    changes.iter().any(|(c, i)| c == coll && i == id)
}

#[test]
fn a_local_collection_never_leaves_the_device() {
    let backend = Backend::start(&[]);
    let a = device(&backend.url(), "[collections.drafts]\nsync = \"local\"\n");
    let b = device(&backend.url(), "");

    // Paused, the queue shows what the writes queued: only the todo.
    a.ok(&["pause"]);
    put(&a, "drafts", "d1", json!({"secret": 1}));
    a.ok(&["patch", "drafts", "d1", "{\"more\":2}"]);
    put(&a, "drafts", "d2", json!({"gone": true}));
    a.ok(&["delete", "drafts", "d2"]);
    put(&a, "todos", "t1", json!({"n": 1}));
    let queued = a.json_lines(&["queue", "--json"]);
    assert_eq!(queued.len(), 1, "{queued:?}");
    assert_eq!(queued[0]["collection"], json!("todos"), "{queued:?}");
    a.ok(&["resume"]);
    // Waiting for a local write to be synced is refused, not a hang.
    let o = a.cli(&["put", "drafts", "--id", "d3", "{}", "--wait", "synced"]);
    assert_eq!(o.status.code(), Some(1), "{}", output_text(&o));
    assert!(output_text(&o).contains("local"), "{}", output_text(&o));
    a.ok(&["sync", "--wait", "--timeout", "30"]);
    assert_eq!(a.status()["queue_depth"], json!(0));

    // The synced collection arrives at B; the local one was never sent.
    arrives(&b, "todos", "t1");
    let changes = on_server(&backend);
    assert!(has(&changes, "todos", "t1"), "{changes:?}");
    assert!(
        !changes.iter().any(|(c, _)| c == "drafts"),
        "a local collection reached the backend: {changes:?}"
    );
    assert!(get(&b, "drafts", "d1").is_none());
    let d1 = get(&a, "drafts", "d1").expect("kept on A");
    assert_eq!(d1["data"], json!({"secret": 1, "more": 2}));

    // B syncs `drafts` both ways; its record of it is never applied on A.
    put(&b, "drafts", "d1", json!({"from": "b"}));
    put(&b, "drafts", "b1", json!({"from": "b"}));
    put(&b, "todos", "sentinel", json!({}));
    b.ok(&["sync", "--wait", "--timeout", "30"]);
    arrives(&a, "todos", "sentinel");
    assert!(get(&a, "drafts", "b1").is_none());
    assert_eq!(
        get(&a, "drafts", "d1").expect("still A's")["data"],
        json!({"secret": 1, "more": 2})
    );

    // Status says so, as JSON and for a person.
    let st = a.status();
    assert_eq!(st["sync_directions"], json!({"drafts": "local"}), "{st}");
    let text = a.ok(&["status"]);
    let line = text
        .lines()
        .find(|l| l.starts_with("not synced:"))
        .unwrap_or_else(|| panic!("no 'not synced' line:\n{text}"));
    assert!(
        line.contains("drafts") && line.contains("never leave"),
        "{line}"
    );
    assert_eq!(b.status()["sync_directions"], json!({}));
}

#[test]
fn a_push_collection_sends_its_writes_but_takes_nothing_back() {
    let backend = Backend::start(&[]);
    let a = device(&backend.url(), "[collections.logs]\nsync = \"push\"\n");
    let b = device(&backend.url(), "");

    put(&a, "logs", "l1", json!({"line": "started"}));
    a.ok(&["sync", "--wait", "--timeout", "30"]);
    assert!(has(&on_server(&backend), "logs", "l1"));
    // B receives it (B syncs logs both ways), changes it and adds one.
    arrives(&b, "logs", "l1");
    b.ok(&["patch", "logs", "l1", "{\"line\":\"edited on b\"}"]);
    put(&b, "logs", "l2", json!({"line": "b's own"}));
    put(&b, "todos", "sentinel", json!({}));
    b.ok(&["sync", "--wait", "--timeout", "30"]);
    let changes = on_server(&backend);
    assert!(has(&changes, "logs", "l2"), "{changes:?}");

    arrives(&a, "todos", "sentinel");
    assert!(
        get(&a, "logs", "l2").is_none(),
        "a pulled change was applied"
    );
    assert_eq!(
        get(&a, "logs", "l1").expect("A's own")["data"],
        json!({"line": "started"})
    );
    let st = a.status();
    assert_eq!(st["sync_directions"], json!({"logs": "push"}), "{st}");
    assert!(a.ok(&["status"]).contains("push only:"));
}

#[test]
fn a_pull_collection_refuses_writes_and_receives_the_servers_records() {
    let backend = Backend::start(&[]);
    let a = device(&backend.url(), "[collections.prices]\nsync = \"pull\"\n");
    let b = device(&backend.url(), "");

    for args in [
        vec!["put", "prices", "--id", "p1", "{\"eur\":1}"],
        vec!["patch", "prices", "p1", "{\"eur\":2}"],
        vec!["delete", "prices", "p1"],
    ] {
        let o = a.cli(&args);
        let text = output_text(&o);
        assert_eq!(o.status.code(), Some(1), "{args:?}: {text}");
        for want in ["read_only_collection", "\"prices\"", "sync = \"pull\""] {
            assert!(text.contains(want), "{args:?}: {want}: {text}");
        }
    }
    assert_eq!(a.status()["queue_depth"], json!(0));

    put(&b, "prices", "p1", json!({"eur": 3}));
    assert_eq!(arrives(&a, "prices", "p1"), json!({"eur": 3}));
    b.ok(&["patch", "prices", "p1", "{\"eur\":4}"]);
    eventually(30, "the update arrives", || {
        get(&a, "prices", "p1").is_some_and(|r| r["data"] == json!({"eur": 4}))
    });
    // Still read-only once the record is here.
    let o = a.cli(&["patch", "prices", "p1", "{\"eur\":5}"]);
    assert_eq!(o.status.code(), Some(1), "{}", output_text(&o));
    assert!(output_text(&o).contains("read_only_collection"));
    let st = a.status();
    assert_eq!(st["sync_directions"], json!({"prices": "pull"}), "{st}");
    assert!(a.ok(&["status"]).contains("pull only:"));
}

/// A collection that becomes `local` by a reload: what was queued before
/// still goes out, later writes stay.
#[test]
fn ops_queued_before_a_reload_to_local_are_still_sent() {
    let backend = Backend::start(&[]);
    let url = backend.url();
    let base = format!(
        "[backend]\nurl = {url:?}\ntimeout_ms = 3000\n[sync]\nbackoff_initial_ms = 50\nbackoff_max_ms = 500\n"
    );
    let a = Daemon::start(&base);
    a.ok(&["pause"]);
    put(&a, "notes", "n1", json!({"v": 1}));
    assert_eq!(a.status()["queue_depth"], json!(1));

    let reloads = a.log_text().matches("config reloaded").count();
    a.write_config(&format!("{base}[collections.notes]\nsync = \"local\"\n"));
    a.signal(libc::SIGHUP);
    eventually(30, "reloaded", || {
        a.log_text().matches("config reloaded").count() > reloads
    });
    assert_eq!(a.status()["sync_directions"], json!({"notes": "local"}));
    assert!(a
        .log_text()
        .contains("config reload changes a collection's sync direction"));
    put(&a, "notes", "n2", json!({"v": 2}));
    a.ok(&["patch", "notes", "n1", "{\"v\":3}"]);
    assert_eq!(a.status()["queue_depth"], json!(1), "n2 queued nothing");

    a.ok(&["resume"]);
    a.ok(&["sync", "--wait", "--timeout", "30"]);
    let server = backend.records();
    let n1 = server
        .get(&("notes".to_owned(), "n1".to_owned()))
        .expect("the op queued before the reload went out");
    assert_eq!(n1["data"], json!({"v": 1}), "as it was queued");
    assert!(!server.contains_key(&("notes".to_owned(), "n2".to_owned())));
    assert_eq!(get(&a, "notes", "n1").expect("n1")["data"], json!({"v": 3}));
}

/// A bad value stops the start with the file, the key (so the collection)
/// and the accepted values.
#[test]
fn a_bad_sync_value_names_the_file_the_collection_and_the_values() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("daemon.toml");
    std::fs::write(
        &cfg,
        format!(
            "[daemon]\nsocket = {:?}\ndata_dir = {:?}\n[collections.drafts]\nsync = \"sideways\"\n",
            dir.path().join("s.sock").display().to_string(),
            dir.path().join("data").display().to_string(),
        ),
    )
    .unwrap();
    let o = Command::new(bin())
        .args(["run", "--config"])
        .arg(&cfg)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let text = output_text(&o);
    assert!(!o.status.success(), "{text}");
    for want in [
        cfg.display().to_string().as_str(),
        "collections.drafts.sync",
        "sideways",
        "both",
        "push",
        "pull",
        "local",
    ] {
        assert!(text.contains(want), "{want}: {text}");
    }
}
