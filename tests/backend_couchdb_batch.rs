//! The CouchDB adapter's batched drain (`_all_docs` + `_bulk_docs`,
//! docs/backends.md "Batches") end to end: real daemons, a real
//! pouchdb-server, and a forwarding proxy that counts the requests, drops a
//! reply, or lets another client write between the adapter's read and its
//! write. A batch mixing creates, updates and deletes; a conflict in the
//! middle of a batch under every strategy; a lost `_bulk_docs` reply; a
//! document deleted by another client between the read and the write.
//! Skips with a note when node/npm are missing (`.ci/run` installs them).

mod common;
mod common_couch;

use common::{eventually, Daemon};
use common_couch::{
    depth, device, edited, fields, generation, get, put, record_gen, sync, Couch, Proxy, DB,
};
use serde_json::{json, Value};

/// A device behind a proxy in front of `couch`, with `records` created
/// and synced in collection `coll`, then paused so that what follows
/// queues up and leaves as one batch at `resume`.
fn paused_with(couch: &Couch, coll: &str, records: &[&str]) -> (Proxy, Daemon) {
    let proxy = Proxy::start(&couch.addr);
    let d = device(&proxy.url());
    for r in records {
        put(&d, coll, r, json!({"v": 1}));
    }
    sync(&d);
    eventually(15, "created", || depth(&d) == 0);
    d.ok(&["pause"]);
    (proxy, d)
}

/// Resumes `d` and waits for an empty queue; the requests of that drain.
fn drain(proxy: &Proxy, d: &Daemon) -> Vec<common_couch::Seen> {
    proxy.clear_seen();
    d.ok(&["resume"]);
    eventually(30, "queue drained", || depth(d) == 0);
    proxy.seen()
}

fn bulk_sizes(seen: &[common_couch::Seen]) -> Vec<usize> {
    seen.iter()
        .filter(|s| s.is_bulk_write())
        .map(|s| s.docs)
        .collect()
}

/// Creates, updates and deletes of different documents leave in one read
/// and one write, and each lands as its own op would.
#[test]
fn a_mixed_batch_is_one_read_and_one_write() {
    let Some(couch) = Couch::start() else {
        return;
    };
    let (proxy, d) = paused_with(&couch, "t", &["a", "b", "c", "d"]);
    d.ok(&["patch", "t", "a", r#"{"v":2}"#]);
    d.ok(&["delete", "t", "b"]);
    put(&d, "t", "e", json!({"v": 1}));
    put(&d, "t", "f", json!({"v": 1}));
    d.ok(&["patch", "t", "c", r#"{"v":2}"#]);
    d.ok(&["delete", "t", "d"]);
    let seen = drain(&proxy, &d);
    assert_eq!(bulk_sizes(&seen), [6], "{seen:?}");
    assert_eq!(seen.iter().filter(|s| s.is_bulk_read()).count(), 1);
    assert!(!seen.iter().any(|s| s.method == "PUT"), "{seen:?}");
    for (id, gen) in [("a", 2), ("c", 2), ("e", 1), ("f", 1)] {
        let doc = couch.doc("t", id).expect(id);
        assert_eq!(generation(&doc), gen, "{id}: {doc}");
        assert_eq!(record_gen(&get(&d, "t", id).expect(id)), gen, "{id}");
    }
    assert_eq!(fields(&couch.doc("t", "a").expect("a")), json!({"v": 2}));
    for id in ["b", "d"] {
        assert!(couch.doc("t", id).is_none(), "{id} deleted");
        assert!(get(&d, "t", id).is_none(), "{id} deleted locally");
    }
    // The queue order survives: CouchDB's feed lists the writes in it.
    let tail: Vec<String> = couch.change_ids().into_iter().rev().take(6).collect();
    let want = ["t:d", "t:c", "t:f", "t:e", "t:b", "t:a"];
    assert_eq!(tail, want);
}

/// In each strategy's collection, the middle one of three edits meets an
/// edit made through CouchDB's API. The batch ends at it: the edit after
/// it is not sent with the edit before it, the strategy settles it, and
/// every other edit is applied exactly once.
#[test]
fn a_conflict_mid_batch_under_every_strategy() {
    let Some(couch) = Couch::start() else {
        return;
    };
    let proxy = Proxy::start(&couch.addr);
    let d = device(&proxy.url());
    let strategies = ["sw", "lww", "mg", "man"];
    for c in strategies {
        for r in ["x", "y", "z"] {
            put(&d, c, r, json!({"a": 1, "b": 1}));
        }
    }
    sync(&d);
    eventually(15, "created", || depth(&d) == 0);
    d.ok(&["pause"]);
    for c in strategies {
        // Older than any device write.
        let edited = edited(&couch.doc(c, "y").expect("y"), json!({"a": 2, "b": 1}), 1);
        let (s, v) = couch.req("PUT", &format!("/{DB}/{c}:y"), Some(&edited.to_string()));
        assert_eq!(s, 201, "{v}");
        for r in ["x", "y", "z"] {
            put(&d, c, r, json!({"a": 1, "b": 2}));
        }
    }
    let seen = drain(&proxy, &d);
    // The first batch reads all twelve and writes only sw:x, before the
    // conflict on sw:y.
    assert_eq!(bulk_sizes(&seen).first(), Some(&1), "{seen:?}");
    for c in strategies {
        for r in ["x", "z"] {
            let doc = couch.doc(c, r).expect("doc");
            assert_eq!(generation(&doc), 2, "{c}:{r} applied once: {doc}");
            assert_eq!(fields(&doc), json!({"a": 1, "b": 2}), "{c}:{r}");
        }
    }
    let y = |c: &str| couch.doc(c, "y").map(|v| (generation(&v), fields(&v)));
    assert_eq!(y("sw"), Some((2, json!({"a": 2, "b": 1}))));
    assert_eq!(y("lww"), Some((3, json!({"a": 1, "b": 2}))));
    assert_eq!(y("mg"), Some((3, json!({"a": 2, "b": 2}))));
    assert_eq!(y("man"), Some((2, json!({"a": 2, "b": 1}))));
    eventually(15, "device agrees", || {
        ["sw", "lww", "mg"]
            .iter()
            .all(|c| get(&d, c, "y").map(|r| r["data"].clone()) == y(c).map(|v| v.1))
    });
    let parked = d.json(&["conflicts", "--json"]);
    assert_eq!(parked.as_array().map(Vec::len), Some(1), "{parked}");
    assert_eq!(parked[0]["collection"], "man", "{parked}");
    assert_eq!(parked[0]["id"], "y", "{parked}");
}

/// The reply to a `_bulk_docs` is lost after CouchDB applied it: the
/// retry's read finds every op_id applied and writes nothing again.
#[test]
fn a_lost_bulk_docs_reply_applies_each_op_once() {
    let Some(couch) = Couch::start() else {
        return;
    };
    let (proxy, d) = paused_with(&couch, "t", &["a"]);
    d.ok(&["patch", "t", "a", r#"{"v":2}"#]);
    for r in ["n1", "n2", "n3"] {
        put(&d, "t", r, json!({"v": 1}));
    }
    *proxy.drop_bulk.lock().expect("lock") = 1;
    let seen = drain(&proxy, &d);
    let writes: Vec<_> = seen.iter().filter(|s| s.is_bulk_write()).collect();
    assert_eq!(writes.len(), 1, "nothing written twice: {seen:?}");
    assert!(writes[0].dropped && writes[0].docs == 4, "{seen:?}");
    assert!(seen.iter().filter(|s| s.is_bulk_read()).count() >= 2);
    assert_eq!(generation(&couch.doc("t", "a").expect("a")), 2);
    for r in ["n1", "n2", "n3"] {
        assert_eq!(generation(&couch.doc("t", r).expect(r)), 1, "{r}");
        assert_eq!(record_gen(&get(&d, "t", r).expect(r)), 1, "{r}");
    }
    assert_eq!(record_gen(&get(&d, "t", "a").expect("a")), 2);
    assert!(d.log_text().contains("found applied in CouchDB"));
}

/// Another client deletes a document after the adapter read it and before
/// its `_bulk_docs`: that op alone meets the conflict (server-wins: the
/// device deletes it too); the op written after it in the same request is
/// recognised by its op_id when it is sent again, not written twice.
#[test]
fn a_document_deleted_between_the_read_and_the_write() {
    let Some(couch) = Couch::start() else {
        return;
    };
    let (proxy, d) = paused_with(&couch, "sw", &["a", "b", "c"]);
    for r in ["a", "b", "c"] {
        d.ok(&["patch", "sw", r, r#"{"v":2}"#]);
    }
    let addr = couch.addr.clone();
    proxy.before_bulk(Box::new(move || {
        let (_, cur) = common::http(&addr, "GET", &format!("/{DB}/sw:b"), None);
        let rev = cur["_rev"].as_str().unwrap_or_default().to_owned();
        let (s, v) = common::http(&addr, "DELETE", &format!("/{DB}/sw:b?rev={rev}"), None);
        assert_eq!(s, 200, "{v}");
    }));
    let seen = drain(&proxy, &d);
    assert_eq!(bulk_sizes(&seen), [3], "c is not written again: {seen:?}");
    assert!(couch.doc("sw", "b").is_none(), "b stays deleted");
    eventually(15, "the device follows the server", || {
        get(&d, "sw", "b").is_none()
    });
    for r in ["a", "c"] {
        let doc: Value = couch.doc("sw", r).expect(r);
        assert_eq!(
            (generation(&doc), fields(&doc)),
            (2, json!({"v": 2})),
            "{r}"
        );
        assert_eq!(record_gen(&get(&d, "sw", r).expect(r)), 2, "{r}");
    }
    assert!(d.log_text().contains("found applied in CouchDB"));
}

/// A `_bulk_docs` refused as a whole (`413`, too large): that batch's ops
/// go one at a time, each a `PUT` with its own verdict, and batches resume
/// after them.
#[test]
fn a_batch_refused_as_a_whole_goes_one_op_at_a_time() {
    let Some(couch) = Couch::start() else {
        return;
    };
    let (proxy, d) = paused_with(&couch, "t", &[]);
    for r in ["a", "b", "c", "d"] {
        put(&d, "t", r, json!({"v": 1}));
    }
    *proxy.refuse_bulk.lock().expect("lock") = 1;
    let seen = drain(&proxy, &d);
    assert_eq!(bulk_sizes(&seen), [4], "only the refused batch: {seen:?}");
    let puts: Vec<_> = seen.iter().filter(|s| s.method == "PUT").collect();
    assert_eq!(puts.len(), 4, "one PUT per op: {seen:?}");
    for r in ["a", "b", "c", "d"] {
        assert_eq!(generation(&couch.doc("t", r).expect(r)), 1, "{r}");
    }
    // Batches resume.
    d.ok(&["pause"]);
    for r in ["e", "f"] {
        put(&d, "t", r, json!({"v": 1}));
    }
    let seen = drain(&proxy, &d);
    assert_eq!(bulk_sizes(&seen), [2], "{seen:?}");
}
