//! The pouchdb-server both sides of `couch` talk to, so that syncd and
//! PouchDB meet the same CouchDB implementation on the same loopback: one
//! server per scenario, started by the CouchDB tests' harness
//! (`tests/common_couch`: in memory, a free port), and the few raw requests
//! the harness makes to it (a fresh database per run, its document count,
//! the last document of its feed).

use std::path::PathBuf;

use crate::common_couch::{self, Couch};

/// The pouchdb-server launcher. The smoke run only uses one already
/// installed (an `npm install` would not take a few seconds); a measured
/// run installs it as the tests do when node and npm exist.
pub(crate) fn launcher(smoke: bool) -> Result<PathBuf, String> {
    let bin = common_couch::npm_dir().join("node_modules/.bin/pouchdb-server");
    if smoke && !bin.exists() {
        return Err(format!(
            "pouchdb-server is not installed ({})",
            bin.display()
        ));
    }
    common_couch::pouchdb_server()
}

/// Starts the server (the launcher must exist).
pub(crate) fn start() -> Result<Couch, String> {
    Couch::start().ok_or_else(|| "pouchdb-server did not start".to_owned())
}

pub(crate) fn db_url(c: &Couch, db: &str) -> String {
    format!("http://{}/{db}", c.addr)
}

/// An empty database `db` (deleted first if a previous run left it);
/// returns its URL.
pub(crate) fn fresh_db(c: &Couch, db: &str) -> String {
    drop_db(c, db);
    let (s, v) = c.req("PUT", &format!("/{db}"), None);
    assert_eq!(s, 201, "create database {db}: {v}");
    db_url(c, db)
}

/// Deletes `db` if it exists (the server holds every database in memory).
pub(crate) fn drop_db(c: &Couch, db: &str) {
    let (s, v) = c.req("DELETE", &format!("/{db}"), None);
    assert!(s == 200 || s == 404, "delete database {db}: {s} {v}");
}

/// Live documents in `db`.
pub(crate) fn doc_count(c: &Couch, db: &str) -> u64 {
    let (s, v) = c.req("GET", &format!("/{db}"), None);
    assert_eq!(s, 200, "database {db}: {v}");
    v["doc_count"].as_u64().expect("doc_count")
}

/// The id of the last document in `db`'s `_changes` feed.
pub(crate) fn last_change_id(c: &Couch, db: &str) -> String {
    let (s, v) = c.req(
        "GET",
        &format!("/{db}/_changes?descending=true&limit=1"),
        None,
    );
    assert_eq!(s, 200, "_changes of {db}: {v}");
    v["results"][0]["id"]
        .as_str()
        .unwrap_or_else(|| panic!("_changes of {db} is empty: {v}"))
        .to_owned()
}
