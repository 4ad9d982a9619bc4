//! Users and scopes on CouchDB (`[backend.scopes]`, docs/backends.md
//! "Scopes"): one database per scope, access as CouchDB's users and
//! `_security` allow. Real daemons log in as real users of a pouchdb-server
//! that has left admin party: each user's private scope is their
//! `userdb-<hex>` database, a shared scope is a mapped database, a mapped
//! database the user is no member of is neither pulled nor written, and
//! removing a member revokes the scope (its records purged, its queued ops
//! dead letters). Skips with a note when node/npm are missing.

mod common;
mod common_couch;

use common::{eventually, Daemon};
use common_couch::users::{self, Creds};
use common_couch::{fields, put, Couch};
use serde_json::{json, Value};

/// A server with users alice and bob, their per-user databases, `team1`
/// (both members) and `vault` (bob only).
struct World {
    couch: Couch,
    /// The devices' password files.
    dir: tempfile::TempDir,
    admin: Creds,
    alice: Creds,
    bob: Creds,
}

fn world() -> Option<World> {
    let couch = Couch::start_on(common_couch::free_port(), false)?;
    let admin = users::leave_admin_party(&couch, "admin", "admin-secret");
    let alice = users::create_user(&couch, &admin, "alice", "alice-pw", &[]);
    let bob = users::create_user(&couch, &admin, "bob", "bob-pw", &[]);
    for u in ["alice", "bob"] {
        users::create_db_with_members(&couch, &admin, &users::userdb_name(u), &[u], &[]);
    }
    users::create_db_with_members(&couch, &admin, "team1", &["alice", "bob"], &[]);
    users::create_db_with_members(&couch, &admin, "vault", &["bob"], &[]);
    Some(World {
        couch,
        dir: tempfile::tempdir().expect("dir"),
        admin,
        alice,
        bob,
    })
}

/// A device logged in as `who`, with team-1 and vault mapped. Its waiting
/// pulls wait 60 s, so a change seen within the tests' 30 s waits was
/// delivered by a pull that woke, not by the next poll.
fn device_as(w: &World, who: &Creds) -> Daemon {
    let login = who.backend_toml(w.dir.path());
    Daemon::start(&format!(
        "[backend]\nkind = \"couchdb\"\nurl = \"http://{}\"\ntimeout_ms = 3000\n{login}\n[backend.scopes]\nteam-1 = \"team1\"\nvault = \"vault\"\n[sync]\nwait_s = 60\npull_interval_s = 1\nbackoff_initial_ms = 100\nbackoff_max_ms = 1000\n",
        w.couch.addr
    ))
}

/// The document `todos:{id}` in database `db`, read as the admin.
fn doc_in(w: &World, db: &str, id: &str) -> Option<Value> {
    let (s, v) = users::req_as(
        &w.couch,
        Some(&w.admin),
        "GET",
        &format!("/{db}/todos:{id}"),
        None,
    );
    (s == 200).then_some(v)
}

/// Each record lands in its scope's database; each user sees their own
/// private scope and the shared scope, never the other's private data nor a
/// database they are no member of.
#[test]
fn each_scope_is_its_database() {
    let Some(w) = world() else {
        return;
    };
    let a = device_as(&w, &w.alice);
    let b = device_as(&w, &w.bob);
    eventually(30, "alice's scopes live", || {
        let s = a.scopes();
        s.len() == 2
            && s.values()
                .all(|v| v["state"] == "live" && v["first_sync_done"] == true)
    });
    let s = a.scopes();
    assert!(
        s.contains_key("user:alice") && s.contains_key("team-1"),
        "{s:?}"
    );
    assert!(
        !s.contains_key("vault"),
        "alice is no member of vault: {s:?}"
    );

    put(&a, "todos", "mine", json!({"t": "alice's"}));
    a.ok(&[
        "put",
        "todos",
        "--id",
        "shared",
        "--scope",
        "team-1",
        r#"{"t":"team"}"#,
    ]);
    put(&b, "todos", "bobs", json!({"t": "bob's"}));
    b.ok(&[
        "put",
        "todos",
        "--id",
        "locked",
        "--scope",
        "vault",
        r#"{"t":"vault"}"#,
    ]);
    a.ok(&["sync", "--wait"]);
    b.ok(&["sync", "--wait"]);

    let alice_db = users::userdb_name("alice");
    assert_eq!(
        fields(&doc_in(&w, &alice_db, "mine").expect("mine")),
        json!({"t": "alice's"})
    );
    assert!(doc_in(&w, "team1", "shared").is_some());
    assert!(doc_in(&w, &users::userdb_name("bob"), "bobs").is_some());
    assert!(doc_in(&w, "vault", "locked").is_some());
    assert!(doc_in(&w, "team1", "mine").is_none() && doc_in(&w, &alice_db, "shared").is_none());

    eventually(30, "bob sees the team's record", || {
        b.has("todos", "shared")
    });
    assert_eq!(b.json(&["get", "todos", "shared"])["scope"], "team-1");
    assert_eq!(a.json(&["get", "todos", "mine"])["scope"], "user:alice");
    // A change bob makes in the team reaches alice, also behind a change
    // that is no record (an app's document without a collection prefix,
    // which ends the team's wait but moves its cursor); nothing private
    // crosses.
    let (s, v) = users::req_as(&w.couch, Some(&w.admin), "PUT", "/team1/plain", Some("{}"));
    assert_eq!(s, 201, "{v}");
    b.ok(&["patch", "todos", "shared", r#"{"by":"bob"}"#]);
    eventually(30, "alice sees bob's edit", || {
        a.json(&["get", "todos", "shared"])["data"]["by"] == "bob"
    });
    assert!(!a.has("todos", "bobs") && !a.has("todos", "locked"));
    assert!(!b.has("todos", "mine"));
    assert_eq!(a.scopes()["team-1"]["records"], 1);
}

/// A write into a mapped scope whose database refuses the user is that
/// op's dead letter, naming the scope; the credentials stay good and the
/// next op syncs.
#[test]
fn a_scope_without_access_refuses_the_op_not_the_credentials() {
    let Some(w) = world() else {
        return;
    };
    let a = device_as(&w, &w.alice);
    eventually(30, "online", || a.status()["state"] == "online");
    a.ok(&[
        "put",
        "todos",
        "--id",
        "x",
        "--scope",
        "vault",
        r#"{"t":1}"#,
    ]);
    put(&a, "todos", "after", json!({"t": 2}));
    eventually(30, "queue settled", || a.status()["queue_depth"] == 0);
    let dead = a.json_lines(&["dead-letters", "--json"]);
    assert_eq!(dead.len(), 1, "{dead:?}");
    let why = dead[0]["last_error"].as_str().unwrap_or_default();
    assert!(why.contains("vault"), "{why}");
    assert!(doc_in(&w, "vault", "x").is_none());
    assert!(doc_in(&w, &users::userdb_name("alice"), "after").is_some());
    assert_eq!(a.status()["state"], "online");
}

/// Removing alice from team1's members revokes team-1 on her device: its
/// records go, an op she queued into it becomes a dead letter, and her
/// private scope is untouched.
#[test]
fn removing_a_member_revokes_the_scope() {
    let Some(w) = world() else {
        return;
    };
    let a = device_as(&w, &w.alice);
    a.ok(&[
        "put",
        "todos",
        "--id",
        "t1",
        "--scope",
        "team-1",
        r#"{"t":1}"#,
    ]);
    put(&a, "todos", "p1", json!({"p": 1}));
    a.ok(&["sync", "--wait"]);
    eventually(30, "team-1 live", || {
        a.scopes().get("team-1").is_some_and(|s| s["records"] == 1)
    });
    a.ok(&["pause"]);
    a.ok(&["patch", "todos", "t1", r#"{"t":2}"#]);
    users::set_members(&w.couch, &w.admin, "team1", &["bob"], &[]);
    a.ok(&["resume"]);
    eventually(30, "team-1 revoked and purged", || {
        !a.has("todos", "t1") && !a.scopes().contains_key("team-1")
    });
    assert!(a.has("todos", "p1"));
    eventually(30, "the queued op is a dead letter", || {
        a.json_lines(&["dead-letters", "--json"]).len() == 1
    });
    let dead = a.json_lines(&["dead-letters", "--json"]);
    let why = dead[0]["last_error"].as_str().unwrap_or_default();
    // Refused by CouchDB when the push comes before the session is read
    // again, or dead-lettered by the revocation itself: either way it names
    // the scope and the lack of write access.
    assert!(why.contains("no write access to scope 'team-1'"), "{why}");
    assert_eq!(
        fields(&doc_in(&w, "team1", "t1").expect("t1")),
        json!({"t": 1})
    );
    // Bob, still a member, goes on syncing the team.
    let b = device_as(&w, &w.bob);
    eventually(30, "bob has the team's record", || b.has("todos", "t1"));
}

/// A user whose per-user database does not exist (a server without
/// `couch_peruser`): the write waits, and status says which database is
/// missing; once it exists, the write goes through.
#[test]
fn a_missing_user_database_is_named() {
    let Some(w) = world() else {
        return;
    };
    let carol = users::create_user(&w.couch, &w.admin, "carol", "carol-pw", &[]);
    let d = device_as(&w, &carol);
    put(&d, "todos", "c1", json!({"c": 1}));
    let db = users::userdb_name("carol");
    eventually(30, "backend_error naming the database", || {
        let st = d.status();
        st["state"] == "backend_error" && st["hint"].as_str().is_some_and(|h| h.contains(&db))
    });
    assert_eq!(d.status()["queue_depth"], 1);
    users::create_db_with_members(&w.couch, &w.admin, &db, &["carol"], &[]);
    d.ok(&["sync", "--wait", "--timeout", "60"]);
    assert!(doc_in(&w, &db, "c1").is_some());
}
