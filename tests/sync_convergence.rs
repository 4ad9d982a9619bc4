//! Convergence of two devices (two daemons) and one reference backend, all
//! real processes on loopback: concurrent offline edits under each conflict
//! strategy, delete against update, an offline create with queued updates
//! and delete, and rapid edits while an earlier op is in flight.
//!
//! Each record carries a `k` field naming it, so a collection's state on a
//! device or on the server can be compared as a map `k -> document` even
//! when a conflict re-creates a record under a new server id.

mod common;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{eventually, Backend, Daemon};
use serde_json::{json, Value};
use syncd::client::Client;

/// Starts one device syncing to `backend`. `sync_keys` go into `[sync]`,
/// `tables` after it (e.g. `[collections.NAME]`).
fn device(backend: &Backend, sync_keys: &str, tables: &str) -> Daemon {
    Daemon::start(&format!(
        "[backend]\nurl = {:?}\n[sync]\npull_interval_s = 1\nbackoff_initial_ms = 100\nbackoff_max_ms = 1000\n{sync_keys}\n{tables}",
        backend.url()
    ))
}

/// A backend and two devices with the same configuration.
fn two_devices(sync_keys: &str, tables: &str) -> (Backend, Daemon, Daemon) {
    let backend = Backend::start(&[]);
    let a = device(&backend, sync_keys, tables);
    let b = device(&backend, sync_keys, tables);
    (backend, a, b)
}

fn put(d: &Daemon, coll: &str, doc: &Value) -> String {
    d.ok(&["put", coll, &doc.to_string()]).trim().to_owned()
}

fn patch(d: &Daemon, coll: &str, id: &str, doc: &Value) {
    d.ok(&["patch", coll, id, &doc.to_string()]);
}

/// The record as `syncd get` prints it, or `None` when it is not there.
fn get(d: &Daemon, coll: &str, id: &str) -> Option<Value> {
    let o = d.cli(&["get", coll, id]);
    if !o.status.success() {
        return None;
    }
    serde_json::from_slice(&o.stdout).ok()
}

fn sync_wait(d: &Daemon) {
    d.ok(&["sync", "--wait"]);
}

fn pause(d: &Daemon) {
    d.ok(&["pause"]);
    eventually(10, "state paused", || {
        d.status()["state"] == json!("paused")
    });
}

/// Resumes and waits until the worker has left the paused state, so that a
/// following `sync --wait` does not see a stale "paused".
fn resume(d: &Daemon) {
    d.ok(&["resume"]);
    eventually(10, "state not paused", || {
        d.status()["state"] != json!("paused")
    });
}

/// A device's live records of `coll` as `k -> document`.
fn local_docs(d: &Daemon, coll: &str) -> BTreeMap<String, Value> {
    d.json_lines(&["list", coll])
        .into_iter()
        .map(|r| {
            (
                r["data"]["k"].as_str().unwrap_or_default().to_owned(),
                r["data"].clone(),
            )
        })
        .collect()
}

/// The server's live records of `coll` as `k -> document`.
fn server_docs(backend: &Backend, coll: &str) -> BTreeMap<String, Value> {
    backend
        .records()
        .into_iter()
        .filter(|((c, _), r)| c == coll && r["deleted"] != json!(true))
        .map(|(_, r)| {
            (
                r["data"]["k"].as_str().unwrap_or_default().to_owned(),
                r["data"].clone(),
            )
        })
        .collect()
}

/// Every change of `coll` in the server's log, grouped by server id: the
/// records in commit order.
fn server_log(backend: &Backend, coll: &str) -> BTreeMap<String, Vec<Value>> {
    let mut m: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    for ch in backend.all_changes() {
        if ch["collection"] == json!(coll) {
            let id = ch["record"]["id"].as_str().unwrap_or_default().to_owned();
            m.entry(id).or_default().push(ch["record"].clone());
        }
    }
    m
}

/// Polls until `f` returns `Ok`; on timeout the panic shows its last `Err`.
fn wait_for(secs: u64, what: &str, mut f: impl FnMut() -> Result<(), String>) {
    let mut last = String::new();
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        eventually(secs, what, || match f() {
            Ok(()) => true,
            Err(e) => {
                last = e;
                false
            }
        })
    }));
    if r.is_err() {
        panic!("timed out after {secs}s waiting for: {what}\nlast observation: {last}");
    }
}

/// Waits until both devices and the server hold exactly `expected` in `coll`.
fn assert_converges(
    backend: &Backend,
    a: &Daemon,
    b: &Daemon,
    coll: &str,
    expected: &BTreeMap<String, Value>,
) {
    wait_for(
        20,
        &format!("devices and server converge on {coll}"),
        || {
            let (sa, sb, ss) = (
                local_docs(a, coll),
                local_docs(b, coll),
                server_docs(backend, coll),
            );
            if &sa == expected && &sb == expected && &ss == expected {
                Ok(())
            } else {
                Err(format!(
                "\n expected {expected:?}\n device A {sa:?}\n device B {sb:?}\n server   {ss:?}"
            ))
            }
        },
    );
}

/// The ids of a record on both devices.
struct Rec {
    k: &'static str,
    /// Local id on A (where it was created).
    a: String,
    /// Local id on B: the server id.
    b: String,
}

/// A creates `docs` and syncs; B pulls them and sees each under its server
/// id. Then both devices are paused.
fn create_on_a_pull_on_b(
    a: &Daemon,
    b: &Daemon,
    coll: &str,
    docs: &[(&'static str, Value)],
) -> Vec<Rec> {
    let ids: Vec<(&'static str, String)> =
        docs.iter().map(|(k, d)| (*k, put(a, coll, d))).collect();
    sync_wait(a);
    let mut recs = Vec::new();
    for (k, la) in ids {
        let ra = get(a, coll, &la).expect("record on A");
        let sid = ra["server_id"]
            .as_str()
            .expect("A knows the server id")
            .to_owned();
        assert_eq!(ra["version"], json!(1), "{ra}");
        assert_eq!(ra["pending"], json!(false), "{ra}");
        recs.push(Rec { k, a: la, b: sid });
    }
    sync_wait(b);
    for (r, (_, doc)) in recs.iter().zip(docs) {
        // A record made on another device appears under its server id.
        wait_for(10, &format!("B pulls {}", r.k), || {
            match get(b, coll, &r.b) {
                Some(rb)
                    if &rb["data"] == doc
                        && rb["server_id"] == json!(r.b)
                        && rb["version"] == json!(1) =>
                {
                    Ok(())
                }
                other => Err(format!("{other:?}")),
            }
        });
    }
    pause(a);
    pause(b);
    recs
}

/// A watching connection (the Rust client on a thread of its own)
/// collecting the events it receives as JSON.
struct Watcher {
    events: Arc<Mutex<Vec<Value>>>,
}

impl Watcher {
    /// Returns once the daemon answered `watching`: every event of a
    /// commit that completes from then on is collected.
    fn start(d: &Daemon) -> Watcher {
        let events = Arc::new(Mutex::new(Vec::new()));
        let sink = events.clone();
        let socket = d.socket.clone();
        let (ready_tx, ready) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                let mut c = Client::connect(&socket, "watcher").await.expect("connect");
                c.watch(&[]).await.expect("watch");
                let _ = ready_tx.send(());
                // Ends when the daemon goes away.
                while let Ok(ev) = c.next_event().await {
                    let v = serde_json::to_value(&ev).expect("event as JSON");
                    sink.lock().expect("lock").push(v);
                }
            });
        });
        ready
            .recv_timeout(Duration::from_secs(10))
            .expect("watch subscription answered");
        Watcher { events }
    }

    fn events(&self) -> Vec<Value> {
        self.events.lock().expect("lock").clone()
    }

    /// The `conflict` events for `coll`/`id`.
    fn conflicts(&self, coll: &str, id: &str) -> Vec<Value> {
        self.events()
            .into_iter()
            .filter(|e| {
                e["conflict"]["collection"] == json!(coll) && e["conflict"]["id"] == json!(id)
            })
            .map(|e| e["conflict"].clone())
            .collect()
    }
}

fn resolved(d: &Daemon) -> u64 {
    d.status()["conflicts_resolved"]
        .as_u64()
        .expect("conflicts_resolved")
}

/// A small gap so that the next write has a strictly later `client_ts`
/// (milliseconds) than the previous one, on whichever device.
fn tick() {
    std::thread::sleep(Duration::from_millis(5));
}

fn base_doc(k: &str) -> Value {
    json!({"k": k, "title": "t0", "done": false, "note": "n0"})
}

/// `doc` with the top-level keys of `p` set.
fn patched(doc: &Value, p: &Value) -> Value {
    let mut d = doc.clone();
    for (k, v) in p.as_object().expect("object") {
        d[k] = v.clone();
    }
    d
}

// ---------------------------------------------------------------------------
// 1. Concurrent offline edits of the same records, per strategy.
// ---------------------------------------------------------------------------

/// What a strategy test does between "both paused" and "converged".
struct Edits {
    /// Local id on A, local id on B, in the order the records were made.
    recs: Vec<Rec>,
    a_doc: BTreeMap<&'static str, Value>,
    b_doc: BTreeMap<&'static str, Value>,
}

/// Creates `keys` on A, pulls them on B, pauses both, then edits each on
/// both devices: for a key starting with "a-first" A edits before B, else B
/// edits before A. A edits `title` and `done`, B edits `title` and `note`
/// (in two separate patches for "a-first-twice").
fn concurrent_edits(a: &Daemon, b: &Daemon, coll: &str, keys: &[&'static str]) -> Edits {
    let docs: Vec<(&'static str, Value)> = keys.iter().map(|k| (*k, base_doc(k))).collect();
    let recs = create_on_a_pull_on_b(a, b, coll, &docs);
    let ae = json!({"title": "A", "done": true});
    let be = json!({"title": "B", "note": "nB"});
    let mut a_doc = BTreeMap::new();
    let mut b_doc = BTreeMap::new();
    for r in &recs {
        if r.k.starts_with("a-first-twice") {
            // B's edit as two queued ops of the same record.
            patch(a, coll, &r.a, &ae);
            tick();
            patch(b, coll, &r.b, &json!({"title": "B"}));
            tick();
            patch(b, coll, &r.b, &json!({"note": "nB"}));
        } else if r.k.starts_with("a-first") {
            patch(a, coll, &r.a, &ae);
            tick();
            patch(b, coll, &r.b, &be);
        } else {
            patch(b, coll, &r.b, &be);
            tick();
            patch(a, coll, &r.a, &ae);
        }
        tick();
        a_doc.insert(r.k, patched(&base_doc(r.k), &ae));
        b_doc.insert(r.k, patched(&base_doc(r.k), &be));
    }
    Edits { recs, a_doc, b_doc }
}

/// The strategy tests for server-wins, last-write-wins and merge: A syncs
/// first, then B (which meets the conflicts), then A pulls B's result.
fn automatic_strategy(
    sync_keys: &str,
    tables: &str,
    strategy: &str,
    expect: impl Fn(&Edits, &Rec) -> Value,
) {
    let coll = "todos";
    let (backend, a, b) = two_devices(sync_keys, tables);
    let watch = Watcher::start(&b);
    let e = concurrent_edits(&a, &b, coll, &["a-first-1", "b-first-2", "a-first-twice-3"]);
    let before = resolved(&b);

    resume(&a);
    sync_wait(&a);
    // A synced first: its edits are on the server, unconditionally.
    for r in &e.recs {
        let got = get(&a, coll, &r.a).expect("A's record");
        assert_eq!(got["version"], json!(2), "{got}");
        assert_eq!(got["data"], e.a_doc[r.k]);
    }
    resume(&b);
    sync_wait(&b);
    sync_wait(&a);

    let expected: BTreeMap<String, Value> = e
        .recs
        .iter()
        .map(|r| (r.k.to_owned(), expect(&e, r)))
        .collect();
    assert_converges(&backend, &a, &b, coll, &expected);
    // The same server record everywhere, under the ids each device uses.
    for r in &e.recs {
        let ra = get(&a, coll, &r.a).expect("on A");
        let rb = get(&b, coll, &r.b).expect("on B");
        assert_eq!(ra["server_id"], json!(r.b), "{ra}");
        assert_eq!(rb["server_id"], json!(r.b), "{rb}");
        let srv = &backend.records()[&(coll.to_owned(), r.b.clone())];
        assert_eq!(ra["data"], srv["data"]);
        assert_eq!(rb["data"], srv["data"]);
        wait_for(10, "A and B at the server's version", || {
            let (va, vb) = (
                get(&a, coll, &r.a).map(|x| x["version"].clone()),
                get(&b, coll, &r.b).map(|x| x["version"].clone()),
            );
            if va.as_ref() == Some(&srv["version"]) && vb.as_ref() == Some(&srv["version"]) {
                Ok(())
            } else {
                Err(format!("A {va:?} B {vb:?} server {}", srv["version"]))
            }
        });
        let events = watch.conflicts(coll, &r.b);
        assert!(
            events.iter().any(|c| c["strategy"] == json!(strategy)),
            "B's watch feed has no {strategy} conflict event for {}: {:?}",
            r.k,
            watch.events()
        );
    }
    // Each conflict resolved on B is counted; A met none.
    assert_eq!(resolved(&b) - before, e.recs.len() as u64, "{}", b.status());
    assert_eq!(resolved(&a), 0);
    for d in [&a, &b] {
        let s = d.status();
        assert_eq!(s["conflicts"], json!(0), "{s}");
        assert_eq!(s["dead_letters"], json!(0), "{s}");
        assert_eq!(s["queue_depth"], json!(0), "{s}");
    }
}

#[test]
fn server_wins_first_to_sync_wins() {
    automatic_strategy("conflict = \"server-wins\"", "", "server-wins", |e, r| {
        e.a_doc[r.k].clone()
    });
}

#[test]
fn last_write_wins_later_edit_wins() {
    // Set per collection, over a different default.
    automatic_strategy(
        "conflict = \"server-wins\"",
        "[collections.todos]\nconflict = \"last-write-wins\"",
        "last-write-wins",
        |e, r| {
            if r.k.starts_with("a-first") {
                e.b_doc[r.k].clone() // B edited later
            } else {
                e.a_doc[r.k].clone()
            }
        },
    );
}

#[test]
fn merge_keeps_each_sides_fields() {
    automatic_strategy("conflict = \"merge\"", "", "merge", |_, r| {
        // done: only A changed it; note: only B; title: both, later writer.
        let title = if r.k.starts_with("a-first") { "B" } else { "A" };
        json!({"k": r.k, "title": title, "done": true, "note": "nB"})
    });
}

#[test]
fn manual_parks_then_resolves() {
    let coll = "todos";
    let (backend, a, b) = two_devices(
        "conflict = \"server-wins\"",
        "[collections.todos]\nconflict = \"manual\"",
    );
    let watch = Watcher::start(&b);
    let e = concurrent_edits(
        &a,
        &b,
        coll,
        &["a-first-twice-local", "b-first-server", "a-first-data"],
    );

    resume(&a);
    sync_wait(&a);
    resume(&b);
    sync_wait(&b);
    // Every one of B's edits is parked; B keeps its local data meanwhile.
    wait_for(10, "three parked conflicts on B", || {
        let n = b
            .json(&["conflicts", "--json"])
            .as_array()
            .map(Vec::len)
            .unwrap_or(0);
        if n == 3 {
            Ok(())
        } else {
            Err(format!("{n} parked"))
        }
    });
    let parked = b.json(&["conflicts", "--json"]);
    for r in &e.recs {
        let c = parked
            .as_array()
            .and_then(|cs| cs.iter().find(|c| c["id"] == json!(r.b)))
            .unwrap_or_else(|| panic!("no parked conflict for {}: {parked}", r.k));
        assert_eq!(c["collection"], json!(coll));
        assert_eq!(c["local"], e.b_doc[r.k], "{c}");
        assert_eq!(c["server"], e.a_doc[r.k], "{c}");
        assert_eq!(c["server_version"], json!(2), "{c}");
        assert_eq!(c["server_deleted"], json!(false), "{c}");
        assert_eq!(get(&b, coll, &r.b).expect("on B")["data"], e.b_doc[r.k]);
        assert!(
            !watch.conflicts(coll, &r.b).is_empty(),
            "no conflict event for {}: {:?}",
            r.k,
            watch.events()
        );
    }
    assert_eq!(b.status()["conflicts"], json!(3));
    // Parked records stay as they are on the server and on A meanwhile.
    sync_wait(&a);
    for r in &e.recs {
        assert_eq!(
            backend.records()[&(coll.to_owned(), r.b.clone())]["version"],
            json!(2)
        );
    }

    let before = resolved(&b);
    let merged = json!({"k": "a-first-data", "title": "M", "done": false, "note": "m"});
    b.ok(&["resolve", coll, &e.recs[0].b, "--take", "local"]);
    b.ok(&["resolve", coll, &e.recs[1].b, "--take", "server"]);
    b.ok(&["resolve", coll, &e.recs[2].b, "--data", &merged.to_string()]);
    // Resolving twice is an error: nothing is parked any more.
    let again = b.cli(&["resolve", coll, &e.recs[0].b, "--take", "server"]);
    assert!(
        !again.status.success(),
        "second resolve of the same conflict succeeded"
    );
    sync_wait(&b);
    sync_wait(&a);

    let expected: BTreeMap<String, Value> = [
        (
            "a-first-twice-local".to_owned(),
            e.b_doc["a-first-twice-local"].clone(),
        ),
        (
            "b-first-server".to_owned(),
            e.a_doc["b-first-server"].clone(),
        ),
        ("a-first-data".to_owned(), merged),
    ]
    .into_iter()
    .collect();
    assert_converges(&backend, &a, &b, coll, &expected);
    let srv = backend.records();
    assert_eq!(
        srv[&(coll.to_owned(), e.recs[0].b.clone())]["version"],
        json!(3)
    );
    assert_eq!(
        srv[&(coll.to_owned(), e.recs[1].b.clone())]["version"],
        json!(2)
    );
    assert_eq!(
        srv[&(coll.to_owned(), e.recs[2].b.clone())]["version"],
        json!(3)
    );
    let s = b.status();
    assert_eq!(s["conflicts"], json!(0), "{s}");
    assert_eq!(
        resolved(&b) - before,
        3,
        "each manual resolution counted once: {s}"
    );
    assert_eq!(b.json(&["conflicts", "--json"]), json!([]));
    for r in &e.recs {
        let evs = watch.conflicts(coll, &r.b);
        assert!(
            evs.len() >= 2,
            "parked and resolved events for {}: {evs:?}",
            r.k
        );
    }
}

/// Parking a conflict is not resolving it: `conflicts_resolved` counts
/// resolutions, and a parked one is counted once, when it is resolved.
#[test]
fn manual_park_is_not_counted_as_resolved() {
    let coll = "todos";
    let (_backend, a, b) = two_devices("conflict = \"manual\"", "");
    let e = concurrent_edits(&a, &b, coll, &["a-first-1"]);
    resume(&a);
    sync_wait(&a);
    resume(&b);
    sync_wait(&b);
    wait_for(10, "a parked conflict on B", || {
        match b.status()["conflicts"].as_u64() {
            Some(1) => Ok(()),
            n => Err(format!("{n:?}")),
        }
    });
    assert_eq!(resolved(&b), 0, "nothing is resolved yet: {}", b.status());
    b.ok(&["resolve", coll, &e.recs[0].b, "--take", "server"]);
    assert_eq!(resolved(&b), 1, "{}", b.status());
}

// ---------------------------------------------------------------------------
// 2. Delete against update, per strategy.
// ---------------------------------------------------------------------------

/// The four delete/update races on records `d1`..`d4`, A always syncing
/// first:
/// - d1: A deletes, then B updates (B's update is later);
/// - d2: A updates, then B deletes (B's delete is later);
/// - d3: B updates, then A deletes (A's delete is later);
/// - d4: B deletes, then A updates (A's update is later).
struct DeleteRaces {
    recs: BTreeMap<&'static str, Rec>,
    /// A's patch.
    upd_a: Value,
    b_doc: BTreeMap<&'static str, Value>,
}

fn delete_races(a: &Daemon, b: &Daemon, coll: &str) -> DeleteRaces {
    let keys = ["d1", "d2", "d3", "d4"];
    let docs: Vec<(&'static str, Value)> = keys.iter().map(|k| (*k, base_doc(k))).collect();
    let recs: BTreeMap<&'static str, Rec> = create_on_a_pull_on_b(a, b, coll, &docs)
        .into_iter()
        .map(|r| (r.k, r))
        .collect();
    let upd_a = json!({"title": "A"});
    let upd_b = json!({"note": "B"});
    let del = |d: &Daemon, id: &str| {
        d.ok(&["delete", coll, id]);
    };
    let steps: [(&str, bool, bool); 4] = [
        // (key, A first?, A deletes?)
        ("d1", true, true),
        ("d2", true, false),
        ("d3", false, true),
        ("d4", false, false),
    ];
    for (k, a_first, a_deletes) in steps {
        let r = &recs[k];
        let a_step = || {
            if a_deletes {
                del(a, &r.a)
            } else {
                patch(a, coll, &r.a, &upd_a)
            }
        };
        let b_step = || {
            if a_deletes {
                patch(b, coll, &r.b, &upd_b)
            } else {
                del(b, &r.b)
            }
        };
        if a_first {
            a_step();
            tick();
            b_step();
        } else {
            b_step();
            tick();
            a_step();
        }
        tick();
    }
    let b_doc = keys
        .iter()
        .map(|k| (*k, patched(&base_doc(k), &upd_b)))
        .collect();
    DeleteRaces { recs, upd_a, b_doc }
}

impl DeleteRaces {
    fn a_doc(&self, k: &str) -> Value {
        patched(&base_doc(k), &self.upd_a)
    }
}

/// Runs the races under `strategy` (set for the collection, over another
/// default) and checks the documented outcome: `live` names the records
/// that survive and with which document.
fn delete_vs_update(
    strategy: &str,
    default: &str,
    live: impl Fn(&DeleteRaces) -> Vec<(&'static str, Value)>,
) {
    let coll = "items";
    let (backend, a, b) = two_devices(
        &format!("conflict = {default:?}"),
        &format!("[collections.items]\nconflict = {strategy:?}"),
    );
    let r = delete_races(&a, &b, coll);
    resume(&a);
    sync_wait(&a);
    resume(&b);
    sync_wait(&b);
    if strategy == "manual" {
        wait_for(10, "four parked conflicts on B", || {
            match b.status()["conflicts"].as_u64() {
                Some(4) => Ok(()),
                n => Err(format!("{n:?}: {}", b.json(&["conflicts", "--json"]))),
            }
        });
        let parked = b.json(&["conflicts", "--json"]);
        let find = |k: &str| {
            parked
                .as_array()
                .and_then(|cs| cs.iter().find(|c| c["id"] == json!(r.recs[k].b)).cloned())
                .unwrap_or_else(|| panic!("no parked conflict for {k}: {parked}"))
        };
        // A's delete reached the server first for d1/d3, A's update for d2/d4.
        for k in ["d1", "d3"] {
            let c = find(k);
            assert_eq!(c["server_deleted"], json!(true), "{c}");
            assert_eq!(c["local"], r.b_doc[k], "{c}");
        }
        for k in ["d2", "d4"] {
            let c = find(k);
            assert_eq!(c["server_deleted"], json!(false), "{c}");
            assert_eq!(c["server"], r.a_doc(k), "{c}");
            assert_eq!(c["local"], Value::Null, "{c}");
        }
        b.ok(&["resolve", coll, &r.recs["d1"].b, "--take", "local"]); // re-create
        b.ok(&["resolve", coll, &r.recs["d2"].b, "--take", "local"]); // delete again
        b.ok(&["resolve", coll, &r.recs["d3"].b, "--take", "server"]); // stays deleted
        b.ok(&["resolve", coll, &r.recs["d4"].b, "--take", "server"]); // A's update
        sync_wait(&b);
    }
    sync_wait(&a);
    let expected: BTreeMap<String, Value> = live(&r)
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
    assert_converges(&backend, &a, &b, coll, &expected);

    // A surviving record is either the original server record (A's update
    // won) or, when B's update beat A's delete, a new server record that B
    // keeps under its old local id.
    let srv = backend.records();
    for (k, doc) in &expected {
        let rec = &r.recs[k.as_str()];
        let orig = &srv[&(coll.to_owned(), rec.b.clone())];
        let rb = get(&b, coll, &rec.b).unwrap_or_else(|| panic!("{k} missing on B"));
        assert_eq!(&rb["data"], doc);
        if orig["deleted"] == json!(true) {
            let sid = rb["server_id"]
                .as_str()
                .expect("B's record has a server id")
                .to_owned();
            assert_ne!(sid, rec.b, "{k}: re-created under a new server id");
            assert_eq!(&srv[&(coll.to_owned(), sid.clone())]["data"], doc);
            // A has it under the new server id; its old record is gone.
            assert_eq!(
                &get(&a, coll, &sid).expect("A pulled the re-created record")["data"],
                doc
            );
            assert!(
                get(&a, coll, &rec.a).is_none(),
                "{k}: A's deleted record came back"
            );
        } else {
            assert_eq!(&orig["data"], doc, "{k}");
            assert_eq!(&get(&a, coll, &rec.a).expect("on A")["data"], doc);
        }
    }
    for (k, rec) in &r.recs {
        if !expected.contains_key(*k) {
            assert!(
                get(&a, coll, &rec.a).is_none(),
                "{k} should be deleted on A"
            );
            assert!(
                get(&b, coll, &rec.b).is_none(),
                "{k} should be deleted on B"
            );
            assert_eq!(
                srv[&(coll.to_owned(), rec.b.clone())]["deleted"],
                json!(true),
                "{k}"
            );
        }
    }
    for d in [&a, &b] {
        let s = d.status();
        assert_eq!(s["conflicts"], json!(0), "{s}");
        assert_eq!(s["dead_letters"], json!(0), "{s}");
        assert_eq!(s["queue_depth"], json!(0), "{s}");
    }
}

#[test]
fn delete_vs_update_server_wins() {
    // The first to reach the server wins: A's delete or A's update.
    delete_vs_update("server-wins", "merge", |r| {
        vec![("d2", r.a_doc("d2")), ("d4", r.a_doc("d4"))]
    });
}

#[test]
fn delete_vs_update_last_write_wins() {
    // The later change wins: B's update re-creates d1, B's delete removes
    // d2; A's later delete (d3) and update (d4) stand.
    delete_vs_update("last-write-wins", "server-wins", |r| {
        vec![("d1", r.b_doc["d1"].clone()), ("d4", r.a_doc("d4"))]
    });
}

#[test]
fn delete_vs_update_merge() {
    // Edits beat deletes either way round, whatever the timestamps.
    delete_vs_update("merge", "server-wins", |r| {
        vec![
            ("d1", r.b_doc["d1"].clone()),
            ("d2", r.a_doc("d2")),
            ("d3", r.b_doc["d3"].clone()),
            ("d4", r.a_doc("d4")),
        ]
    });
}

#[test]
fn delete_vs_update_manual() {
    // Resolved as: d1 take local (re-create), d2 take local (delete),
    // d3 take server (deleted), d4 take server (A's update).
    delete_vs_update("manual", "server-wins", |r| {
        vec![("d1", r.b_doc["d1"].clone()), ("d4", r.a_doc("d4"))]
    });
}

// ---------------------------------------------------------------------------
// 3. An offline create, then updates (and a delete) of the same record.
// ---------------------------------------------------------------------------

#[test]
fn offline_create_updates_delete_reach_server_as_one_record() {
    let coll = "notes";
    let backend = Backend::start(&[]);
    let d = device(&backend, "", "");
    pause(&d);
    // `gone`: create, 3 updates, delete. `kept`: create, 3 updates.
    let gone = put(&d, coll, &json!({"k": "gone", "v": 0}));
    let kept = put(&d, coll, &json!({"k": "kept", "v": 0}));
    for v in 1..=3 {
        patch(&d, coll, &gone, &json!({"v": v}));
        patch(&d, coll, &kept, &json!({"v": v, "extra": format!("x{v}")}));
    }
    d.ok(&["delete", coll, &gone]);
    assert_eq!(d.status()["queue_depth"], json!(9));
    let last_local = get(&d, coll, &kept).expect("kept")["data"].clone();
    assert_eq!(last_local, json!({"k": "kept", "v": 3, "extra": "x3"}));
    assert!(
        server_log(&backend, coll).is_empty(),
        "nothing sent while paused"
    );

    resume(&d);
    sync_wait(&d);

    let log = server_log(&backend, coll);
    assert_eq!(
        log.len(),
        2,
        "exactly two server records, no extra creates: {log:?}"
    );
    let by_k = |k: &str| {
        log.iter()
            .find(|(_, recs)| recs[0]["data"]["k"] == json!(k))
            .map(|(id, recs)| (id.clone(), recs.clone()))
            .unwrap_or_else(|| panic!("no server record for {k}: {log:?}"))
    };
    // gone: versions 1..5 of one id; v0..v3, then the tombstone.
    let (gid, grecs) = by_k("gone");
    let versions: Vec<u64> = grecs.iter().filter_map(|r| r["version"].as_u64()).collect();
    assert_eq!(versions, vec![1, 2, 3, 4, 5], "{grecs:?}");
    for (i, r) in grecs.iter().take(4).enumerate() {
        assert_eq!(r["id"], json!(gid));
        assert_eq!(r["data"]["v"], json!(i), "{r}");
        assert_eq!(r["deleted"], json!(false), "{r}");
    }
    assert_eq!(
        grecs[4]["deleted"],
        json!(true),
        "final state is the tombstone: {:?}",
        grecs[4]
    );
    // kept: versions 1..4, final data the last local write.
    let (kid, krecs) = by_k("kept");
    let versions: Vec<u64> = krecs.iter().filter_map(|r| r["version"].as_u64()).collect();
    assert_eq!(versions, vec![1, 2, 3, 4], "{krecs:?}");
    assert_eq!(krecs[3]["data"], last_local);
    assert_eq!(
        backend.records()[&(coll.to_owned(), kid.clone())]["data"],
        last_local
    );

    // Locally: `kept` is synced at the server's version under its local id;
    // `gone` is gone.
    let rk = get(&d, coll, &kept).expect("kept");
    assert_eq!(rk["server_id"], json!(kid));
    assert_eq!(rk["version"], json!(4));
    assert_eq!(rk["pending"], json!(false));
    assert_eq!(rk["data"], last_local);
    assert!(get(&d, coll, &gone).is_none());
    let s = d.status();
    assert_eq!(s["queue_depth"], json!(0), "{s}");
    assert_eq!(s["dead_letters"], json!(0), "{s}");
    assert_eq!(s["conflicts_resolved"], json!(0), "{s}");
    // A later pull does not resurrect or duplicate anything.
    d.ok(&["sync"]);
    wait_for(10, "pull settles", || {
        let ks: Vec<String> = local_docs(&d, coll).into_keys().collect();
        if ks == vec!["kept".to_owned()] {
            Ok(())
        } else {
            Err(format!("{ks:?}"))
        }
    });
}

// ---------------------------------------------------------------------------
// 4. Rapid edits while an earlier op of the same record is in flight.
// ---------------------------------------------------------------------------

#[test]
fn rapid_edits_while_in_flight() {
    let coll = "rapid";
    // Every request (but health) takes 300 ms: the patches below are made
    // while an earlier op of the same record is on the wire.
    let backend = Backend::start(&["--hang", "1.0", "--hang-ms", "300"]);
    let d = device(&backend, "", "");
    const N: u64 = 8;
    let r1 = put(&d, coll, &json!({"k": "r1", "n": 0}));
    let r2 = put(&d, coll, &json!({"k": "r2", "n": 0}));
    for i in 1..=N {
        patch(&d, coll, &r1, &json!({"n": i}));
        patch(&d, coll, &r2, &json!({"n": i, "last": format!("w{i}")}));
        std::thread::sleep(Duration::from_millis(60));
    }
    let want1 = get(&d, coll, &r1).expect("r1")["data"].clone();
    let want2 = get(&d, coll, &r2).expect("r2")["data"].clone();
    assert_eq!(want1, json!({"k": "r1", "n": N}));
    sync_wait(&d);

    let log = server_log(&backend, coll);
    assert_eq!(log.len(), 2, "one server record per local record: {log:?}");
    for (lid, want) in [(&r1, &want1), (&r2, &want2)] {
        let rec = get(&d, coll, lid).expect("local");
        let sid = rec["server_id"].as_str().expect("server id").to_owned();
        let changes = &log[&sid];
        let versions: Vec<u64> = changes
            .iter()
            .filter_map(|r| r["version"].as_u64())
            .collect();
        let expected: Vec<u64> = (1..=N + 1).collect();
        assert_eq!(
            versions, expected,
            "every update applied once, in order: {changes:?}"
        );
        let ns: Vec<Value> = changes.iter().map(|r| r["data"]["n"].clone()).collect();
        let expected_ns: Vec<Value> = (0..=N).map(|i| json!(i)).collect();
        assert_eq!(ns, expected_ns, "none lost or reordered");
        let srv = &backend.records()[&(coll.to_owned(), sid.clone())];
        assert_eq!(srv["version"], json!(N + 1));
        assert_eq!(&srv["data"], want);
        assert_eq!(rec["version"], json!(N + 1));
        assert_eq!(&rec["data"], want);
        assert_eq!(rec["pending"], json!(false));
    }
    let s = d.status();
    assert_eq!(s["dead_letters"], json!(0), "{s}");
    assert_eq!(s["conflicts"], json!(0), "{s}");
    assert_eq!(s["conflicts_resolved"], json!(0), "{s}");
    assert_eq!(s["queue_depth"], json!(0), "{s}");
}
