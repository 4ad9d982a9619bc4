//! syncd's CouchDB mode living beside a PouchDB app on the same database
//! (issue 25). PouchDB apps keep a document's fields at its top level and
//! replicate whole revision trees; syncd stores records in the native shape
//! (fields top-level, its bookkeeping in `syncd`) so both read the same
//! documents. These tests run a real pouchdb-server, a PouchDB app
//! (tests/pouch_app.js: a memory database with a live two-way sync, driven
//! by tests/common_couch/pouch_app.rs) and two syncd devices, and check
//! what the app and the devices see of each other's writes: live edits both
//! ways, an edit made offline on each side, deletes both ways, and an app
//! document that is none of syncd's business. Skips with a note when
//! node/npm are missing (`.ci/run` installs them).

mod common;
mod common_couch;

use common::{eventually, Daemon};
use common_couch::pouch_app::PouchApp;
use common_couch::{
    depth, device, fields, generation, get, put, record_gen, rev_version, Couch, DB,
};
use serde_json::{json, Value};

/// Seconds any one wait may take; only detects a hang.
const WAIT: u64 = 90;

/// A server, an app syncing live with it and two devices; `None` (after a
/// printed note) when node/npm are missing.
fn setup() -> Option<(Couch, PouchApp, Daemon, Daemon)> {
    let couch = Couch::start()?;
    let app = PouchApp::start(&couch.url())?;
    let d1 = device(&couch.url());
    let d2 = device(&couch.url());
    Some((couch, app, d1, d2))
}

/// A `todos` record's document on a device.
fn data(d: &Daemon, id: &str) -> Option<Value> {
    get(d, "todos", id).map(|r| r["data"].clone())
}

/// Panics unless `doc` (as the app reads it) is in the native shape: no
/// `data` or top-level `updated_at`, syncd's bookkeeping in `syncd`.
fn assert_native(doc: &Value) {
    assert!(doc.get("data").is_none(), "fields under `data`: {doc}");
    assert!(
        doc.get("updated_at").is_none(),
        "top-level updated_at: {doc}"
    );
    assert!(
        doc["syncd"]["updated_at"].is_u64(),
        "no syncd.updated_at: {doc}"
    );
}

/// Waits until `check` answers `Ok` and returns its value; when the wait
/// times out, what `check` last found is printed after the panic.
fn wait_for<T>(what: &str, mut check: impl FnMut() -> Result<T, String>) -> T {
    /// Prints the last finding if the wait panics.
    struct Last(String);
    impl Drop for Last {
        fn drop(&mut self) {
            if std::thread::panicking() {
                eprintln!("while waiting for it, last seen:\n{}", self.0);
            }
        }
    }
    let mut last = Last("not checked yet".to_owned());
    let mut found = None;
    eventually(WAIT, what, || match check() {
        Ok(v) => {
            found = Some(v);
            true
        }
        Err(e) => {
            last.0 = e;
            false
        }
    });
    found.expect("eventually returned on a success")
}

/// What every party holds of `todos:{id}`, if they all hold the same: the
/// app's and CouchDB's winning revision (same `_rev`, same fields) and
/// each device's record (same fields, the version of the winner's revision).
fn agreement(
    couch: &Couch,
    app: &PouchApp,
    devices: &[&Daemon],
    id: &str,
) -> Result<Value, String> {
    let c = couch.doc("todos", id);
    let a = app.get(&format!("todos:{id}"));
    let ds: Vec<Option<Value>> = devices.iter().map(|d| get(d, "todos", id)).collect();
    let show = |v: &Option<Value>| v.as_ref().map_or("none".to_owned(), Value::to_string);
    let seen = || {
        let ds: Vec<String> = ds.iter().map(show).collect();
        format!(
            "couchdb {}\napp {}\ndevices {}",
            show(&c),
            show(&a),
            ds.join("\n        ")
        )
    };
    let (Some(c), Some(a)) = (&c, &a) else {
        return Err(seen());
    };
    let winner = fields(c);
    let same = a["_rev"] == c["_rev"]
        && fields(a) == winner
        && ds.iter().all(|r| {
            r.as_ref().is_some_and(|r| {
                r["data"] == winner && r["version"].as_u64() == Some(rev_version(c))
            })
        });
    if same {
        Ok(c.clone())
    } else {
        Err(seen())
    }
}

/// `revs` (a `_conflicts` array or nothing) as a sorted list.
fn sorted(revs: &Value) -> Vec<String> {
    let mut v: Vec<String> = revs
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|r| r.as_str().map(str::to_owned))
        .collect();
    v.sort();
    v
}

/// A document the app writes reaches both devices, its top-level fields
/// being the record's data.
#[test]
fn app_doc_reaches_both_devices() {
    let Some((_couch, app, d1, d2)) = setup() else {
        return;
    };
    app.put(json!({"_id": "todos:w1", "title": "buy milk", "done": false}));
    for d in [&d1, &d2] {
        wait_for("the app's doc on a device", || {
            let r = get(d, "todos", "w1").ok_or("no record")?;
            (r["data"] == json!({"title": "buy milk", "done": false}) && record_gen(&r) == 1)
                .then_some(())
                .ok_or(format!("{r}"))
        });
    }
}

/// A device's patch of an app document reaches the app at the top level:
/// `done: true` beside the app's other fields, untouched, not under `data`.
#[test]
fn device_patch_reaches_app_at_top_level() {
    let Some((_couch, app, d1, _d2)) = setup() else {
        return;
    };
    let id = "todos:w1";
    app.put(json!({"_id": id, "title": "buy milk", "done": false, "tags": ["home"]}));
    eventually(WAIT, "the device has the app's doc", || {
        data(&d1, "w1").is_some()
    });
    d1.ok(&["patch", "todos", "w1", r#"{"done":true}"#]);
    let doc = wait_for("the device's patch in the app", || {
        let doc = app.get(id).ok_or("no doc")?;
        (doc["done"] == json!(true))
            .then(|| doc.clone())
            .ok_or(format!("{doc}"))
    });
    assert_eq!(
        fields(&doc),
        json!({"title": "buy milk", "done": true, "tags": ["home"]}),
        "{doc}"
    );
    assert_eq!(generation(&doc), 2, "{doc}");
    assert_native(&doc);
}

/// A record created on a device reaches the app as a native document: its
/// fields at the top level, syncd's bookkeeping in the `syncd` object.
#[test]
fn device_create_reaches_app_in_native_shape() {
    let Some((_couch, app, d1, _d2)) = setup() else {
        return;
    };
    put(
        &d1,
        "todos",
        "d1",
        json!({"title": "call mum", "done": false}),
    );
    let doc = wait_for("the device's record in the app", || {
        app.get("todos:d1").ok_or_else(|| "no doc".to_owned())
    });
    assert_eq!(
        fields(&doc),
        json!({"title": "call mum", "done": false}),
        "{doc}"
    );
    assert_eq!(generation(&doc), 1, "{doc}");
    assert_native(&doc);
}

/// Records created on device 2 and seen by every party, then edited on
/// device 1 (paused) and in the app (offline), the app the way a PouchDB
/// app edits: read the doc, change a field, put it back (`syncd` kept as
/// read). Returns the ids and the two edits' fields of each.
fn offline_edits(
    couch: &Couch,
    app: &PouchApp,
    d1: &Daemon,
    d2: &Daemon,
    n: usize,
) -> Vec<(String, Value, Value)> {
    let ids: Vec<String> = (0..n).map(|i| format!("c{i}")).collect();
    for id in &ids {
        put(
            d2,
            "todos",
            id,
            json!({"title": id, "done": false, "note": "orig"}),
        );
    }
    for id in &ids {
        wait_for("every party has the record", || {
            agreement(couch, app, &[d1, d2], id)
        });
    }
    app.offline();
    d1.ok(&["pause"]);
    let mut edits = Vec::new();
    for id in &ids {
        let mut doc = app.get(&format!("todos:{id}")).expect("app doc");
        doc["note"] = json!("app");
        app.put(doc);
        d1.ok(&["patch", "todos", id, r#"{"done":true}"#]);
        edits.push((
            id.clone(),
            json!({"title": id, "done": false, "note": "app"}),
            json!({"title": id, "done": true, "note": "orig"}),
        ));
    }
    edits
}

/// Offline edits of the same documents in the app and on a device, the
/// device's reaching CouchDB first: the app's replication then adds its
/// revision as a second leaf of the same generation, and CouchDB picks a
/// winner by revision id. Every party must end on the winner, whichever
/// edit it is (several documents, so that either kind of winner occurs).
#[test]
fn offline_edits_device_first_leave_couchdb_leaves_but_one_winner() {
    let Some((couch, app, d1, d2)) = setup() else {
        return;
    };
    // Each winner is a coin flip between two random revision ids: with 16
    // documents the app's edit wins at least one but for 1 run in 65,536.
    let edits = offline_edits(&couch, &app, &d1, &d2, 16);
    d1.ok(&["resume"]);
    eventually(WAIT, "device 1 pushed its edits", || depth(&d1) == 0);
    for (id, _, device_edit) in &edits {
        let doc = couch.doc("todos", id).expect("doc");
        assert_eq!(
            (generation(&doc), fields(&doc)),
            (2, device_edit.clone()),
            "{doc}"
        );
    }
    app.online();
    app.settle();
    let mut app_won = 0;
    for (id, app_edit, device_edit) in &edits {
        let doc = wait_for("every party on CouchDB's winner", || {
            agreement(&couch, &app, &[&d1, &d2], id)
        });
        let won = fields(&doc);
        assert!(
            won == *app_edit || won == *device_edit,
            "the winner is neither edit: {doc}"
        );
        app_won += usize::from(won == *app_edit);
        // The losing edit is a leaf in CouchDB and in the app alike.
        assert_eq!(sorted(&doc["_conflicts"]).len(), 1, "{doc}");
        let app_doc = app.get(&format!("todos:{id}")).expect("app doc");
        assert_eq!(
            sorted(&app_doc["_conflicts"]),
            sorted(&doc["_conflicts"]),
            "app {app_doc}\ncouchdb {doc}"
        );
    }
    // The case versions hold the revision hash for: devices that held
    // their own (losing) leaf moved to the app's.
    assert!(
        app_won > 0,
        "the app's edit never won: the case is untested"
    );
}

/// Offline edits of the same document in the app and on a device, the
/// app's reaching CouchDB first: the device's update then meets a newer
/// generation, the collection's strategy settles it, and every party ends
/// on the result, with no conflicting leaf left in CouchDB.
#[test]
fn offline_edits_app_first_are_settled_by_the_strategy() {
    let Some((couch, app, d1, d2)) = setup() else {
        return;
    };
    let edits = offline_edits(&couch, &app, &d1, &d2, 1);
    let (id, app_edit, device_edit) = &edits[0];
    app.online();
    app.settle();
    let doc = couch.doc("todos", id).expect("doc");
    assert_eq!(
        (generation(&doc), fields(&doc)),
        (2, app_edit.clone()),
        "{doc}"
    );
    d1.ok(&["resume"]);
    eventually(WAIT, "device 1 pushed its edit", || depth(&d1) == 0);
    let doc = wait_for("every party on the settled document", || {
        agreement(&couch, &app, &[&d1, &d2], id)
    });
    // `todos` is last-write-wins (the default). The app's edit kept the
    // `syncd` it read, so it carries the time of the create before it
    // (docs/backends.md "Beside PouchDB apps"): the device's later edit
    // wins, as a third revision on top of the app's.
    assert_eq!(
        (generation(&doc), fields(&doc)),
        (3, device_edit.clone()),
        "{doc}"
    );
    assert!(doc.get("_conflicts").is_none(), "{doc}");
    let app_doc = app.get(&format!("todos:{id}")).expect("app doc");
    assert!(app_doc.get("_conflicts").is_none(), "{app_doc}");
}

/// The app deletes a document: both devices lose the record.
#[test]
fn app_delete_reaches_devices() {
    let Some((couch, app, d1, d2)) = setup() else {
        return;
    };
    app.put(json!({"_id": "todos:x", "title": "old"}));
    for d in [&d1, &d2] {
        eventually(WAIT, "a device has the app's doc", || {
            data(d, "x").is_some()
        });
    }
    app.delete("todos:x");
    for d in [&d1, &d2] {
        eventually(WAIT, "a device lost the record", || data(d, "x").is_none());
    }
    assert!(couch.doc("todos", "x").is_none());
}

/// A device deletes a record: the app's document is deleted.
#[test]
fn device_delete_reaches_app() {
    let Some((_couch, app, d1, _d2)) = setup() else {
        return;
    };
    put(&d1, "todos", "y", json!({"title": "old"}));
    eventually(WAIT, "the app has the device's record", || {
        app.get("todos:y").is_some()
    });
    d1.ok(&["delete", "todos", "y"]);
    eventually(WAIT, "the app's doc deleted", || {
        app.get("todos:y").is_none()
    });
    let leaves = app.leaves("todos:y");
    assert!(
        !leaves.is_empty() && leaves.iter().all(|l| l["ok"]["_deleted"] == json!(true)),
        "{leaves:?}"
    );
    assert!(
        app.all().iter().all(|d| d["_id"] != "todos:y"),
        "{:?}",
        app.all()
    );
}

/// App documents whose id has no valid collection prefix are none of
/// syncd's business: devices pull past them (later documents still
/// arrive), push as before, and never touch them.
#[test]
fn unprefixed_app_docs_are_left_alone() {
    let Some((couch, app, d1, d2)) = setup() else {
        return;
    };
    let plain = json!({"_id": "plain", "title": "not a record", "n": 1});
    let spaced = json!({"_id": "my notes:1", "title": "nor this", "n": 2});
    let revs = [app.put(plain.clone()), app.put(spaced.clone())];
    app.settle(); // in CouchDB's feed before what follows
    app.put(json!({"_id": "todos:p1", "title": "after"}));
    for d in [&d1, &d2] {
        eventually(WAIT, "a device has the doc after them", || {
            data(d, "p1") == Some(json!({"title": "after"}))
        });
    }
    put(&d1, "todos", "p2", json!({"title": "from a device"}));
    eventually(WAIT, "the app has the device's record", || {
        app.get("todos:p2").is_some()
    });
    app.settle();
    for (doc, rev) in [plain, spaced].iter().zip(revs) {
        let id = doc["_id"].as_str().expect("id");
        let path = format!("/{DB}/{}", id.replace(' ', "%20").replace(':', "%3A"));
        let (s, in_couch) = couch.req("GET", &path, None);
        assert_eq!(s, 200, "{id}: {in_couch}");
        let in_app = app.get(id).expect("app doc");
        for seen in [&in_couch, &in_app] {
            assert_eq!(seen["_rev"], json!(rev), "{id} rewritten: {seen}");
            assert_eq!(fields(seen), fields(doc), "{seen}");
            assert!(seen.get("syncd").is_none(), "{seen}");
        }
    }
    for d in [&d1, &d2] {
        let st = d.status();
        assert_eq!(
            (&st["dead_letters"], &st["last_error"]),
            (&json!(0), &Value::Null),
            "{st}"
        );
    }
}
