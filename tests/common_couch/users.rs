//! CouchDB users and database security for the tests that map syncd's
//! scopes onto CouchDB databases: a private scope `user:<name>` is the
//! couch_peruser database `userdb-<hex of name>`, shared scopes are
//! configured databases, and access is whatever CouchDB's `_users` and each
//! database's `_security` allow. These helpers set that up on a [`Couch`]
//! (pouchdb-server, whose pouchdb-auth and pouchdb-security plugins enforce
//! it) and make requests as a given user with basic auth.
//!
//! How pouchdb-server behaves (found by experiment, pouchdb-server 4.2.0),
//! and what the helpers therefore do or avoid:
//! - It starts in "admin party" (anonymous is `_admin`).
//!   `PUT /_config/admins/NAME` with a JSON string password ends it at once;
//!   the admin lives in `config.json` in the server's working directory
//!   (kept across a restart in the same directory), users live in the
//!   in-memory `_users` (lost on restart). Users and databases made during
//!   admin party keep working afterwards.
//! - With no `_security` members, a database is open to everyone,
//!   anonymous included (CouchDB 3 would make it admin-only), so every
//!   protected database needs members set ([`set_members`]).
//! - A non-member gets 401 `unauthorized` ("You are not authorized to
//!   access this db.") on reads and single-document writes, whether
//!   authenticated or not (CouchDB answers 403 `forbidden` to an
//!   authenticated non-member), but `POST _bulk_docs` answers **201** with a
//!   per-document `{"error": "unauthorized"}` for each document.
//! - Membership and roles are read on every request: a revocation applies
//!   to the next request (a `_changes` longpoll already waiting still
//!   delivers).
//! - **A non-admin `PUT /{db}` (creating a database) kills the server**
//!   (an uncaught TypeError in express-pouchdb), and so does a member's
//!   `PUT /{db}/_local/_security` with its `_rev`; [`http_basic`] refuses
//!   both for non-admin credentials rather than let a test take the server
//!   down (anonymous requests are not checked: in admin party they are
//!   the admin's). Create databases with [`create_db`] (as the admin).
//! - A missing database is 404 `{"error":"not_found","reason":"no_db_file"}`
//!   for everyone (CouchDB says "Database does not exist.").
//! - Users can change their own `roles` in `_users` (CouchDB forbids it);
//!   anonymous sign-up (`PUT /_users/org.couchdb.user:x` with no roles) is
//!   allowed; a wrong password is 401 "Name or password is incorrect."
//!   even for requests that would be open anonymously.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::Duration;

use base64::Engine as _;
use serde_json::{json, Value};

use super::Couch;

/// A name and password for basic auth; `admin` when it is a server admin
/// (made by [`leave_admin_party`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Creds {
    pub name: String,
    pub password: String,
    pub admin: bool,
}

impl Creds {
    /// Writes the password to a file in `dir` and returns the `[backend]`
    /// lines (`username`, `password_file`) for a device logging in as this
    /// user, to pass as the `backend` argument of
    /// [`super::device_with`].
    pub fn backend_toml(&self, dir: &Path) -> String {
        let file = dir.join(format!("couch-password-{}", hex(&self.name)));
        std::fs::write(&file, &self.password)
            .unwrap_or_else(|e| panic!("write {}: {e}", file.display()));
        format!(
            "username = {:?}\npassword_file = {:?}\n",
            self.name,
            file.display().to_string()
        )
    }
}

/// Lowercase hex of the UTF-8 bytes of `s`.
fn hex(s: &str) -> String {
    s.bytes().map(|b| format!("{b:02x}")).collect()
}

/// The couch_peruser database of user `name`: `userdb-` + lowercase hex of
/// the UTF-8 name (`alice` → `userdb-616c696365`). pouchdb-server does not
/// create it; use [`create_db`] and [`set_members`].
pub fn userdb_name(name: &str) -> String {
    format!("userdb-{}", hex(name))
}

/// The URL of database `db` on `couch`, as a device's `[backend] url`.
pub fn db_url(couch: &Couch, db: &str) -> String {
    format!("http://{}/{}", couch.addr, enc(db))
}

/// Percent-encodes one path segment (a database name, a document id).
pub fn enc(segment: &str) -> String {
    segment
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Ends admin party: makes `name` a server admin with `password` and
/// checks that anonymous requests lost admin rights and the admin's basic
/// auth works. Must run while the server is still in admin party (once an
/// admin exists an anonymous `PUT /_config/admins/…` is 401). Returns the
/// admin's credentials, which every later admin request takes.
pub fn leave_admin_party(couch: &Couch, name: &str, password: &str) -> Creds {
    let (s, v) = couch.req(
        "PUT",
        &format!("/_config/admins/{}", enc(name)),
        Some(&json!(password).to_string()),
    );
    assert_eq!(s, 200, "create server admin {name:?}: {s} {v}");
    let admin = Creds {
        name: name.to_owned(),
        password: password.to_owned(),
        admin: true,
    };
    let (s, v) = couch.req("GET", "/_session", None);
    assert!(
        s == 200 && v["userCtx"]["roles"] == json!([]),
        "still admin party after creating {name:?}: {s} {v}"
    );
    let (s, v) = session(couch, Some(&admin));
    assert!(
        s == 200 && v["userCtx"]["roles"] == json!(["_admin"]),
        "admin {name:?} cannot log in: {s} {v}"
    );
    admin
}

/// Creates user `name` in `_users` with `password` and `roles` (as
/// `admin`), checks it can log in with exactly those roles, and returns
/// its credentials. Names cannot contain `:` (basic auth and CouchDB both
/// refuse it); a user that already exists is a test bug (409, panics).
pub fn create_user(
    couch: &Couch,
    admin: &Creds,
    name: &str,
    password: &str,
    roles: &[&str],
) -> Creds {
    assert!(
        !name.contains(':'),
        "user names cannot contain ':': {name:?}"
    );
    let doc = json!({"name": name, "password": password, "roles": roles, "type": "user"});
    let (s, v) = req_as(
        couch,
        Some(admin),
        "PUT",
        &user_path(name),
        Some(&doc.to_string()),
    );
    assert_eq!(s, 201, "create user {name:?}: {s} {v}");
    let user = Creds {
        name: name.to_owned(),
        password: password.to_owned(),
        admin: false,
    };
    assert_eq!(
        session_of(couch, &user),
        (
            name.to_owned(),
            roles.iter().map(|r| r.to_string()).collect()
        ),
        "user {name:?} as seen by _session"
    );
    user
}

/// The `_users` document path of user `name`.
fn user_path(name: &str) -> String {
    format!("/_users/{}", enc(&format!("org.couchdb.user:{name}")))
}

/// Replaces the roles of existing user `name` (as `admin`), keeping its
/// password; takes effect on the user's next request (a role revocation).
pub fn set_roles(couch: &Couch, admin: &Creds, name: &str, roles: &[&str]) {
    let path = user_path(name);
    let (s, mut doc) = req_as(couch, Some(admin), "GET", &path, None);
    assert_eq!(s, 200, "read user {name:?}: {s} {doc}");
    doc["roles"] = json!(roles);
    let (s, v) = req_as(couch, Some(admin), "PUT", &path, Some(&doc.to_string()));
    assert_eq!(s, 201, "set roles of {name:?} to {roles:?}: {s} {v}");
}

/// Creates database `db` (as `admin`); it must not exist yet (412 panics).
/// Until [`set_members`] gives it members, pouchdb-server lets everyone,
/// anonymous included, read and write it.
pub fn create_db(couch: &Couch, admin: &Creds, db: &str) {
    let (s, v) = req_as(couch, Some(admin), "PUT", &format!("/{}", enc(db)), None);
    assert_eq!(s, 201, "create database {db:?}: {s} {v}");
}

/// Sets the `_security` of `db` (as `admin`): members are the users
/// `names` plus every user with one of `roles`; no database admins (server
/// admins always have access). Replaces the whole object, so calling it
/// again with fewer names or roles revokes access from the next request
/// on. Both lists empty would open the database to everyone, so that
/// panics; use a name no user has to lock everyone but admins out.
pub fn set_members(couch: &Couch, admin: &Creds, db: &str, names: &[&str], roles: &[&str]) {
    assert!(
        !(names.is_empty() && roles.is_empty()),
        "no members would open {db:?} to everyone, anonymous included"
    );
    let sec = json!({
        "admins": {"names": [], "roles": []},
        "members": {"names": names, "roles": roles},
    });
    let path = format!("/{}/_security", enc(db));
    let (s, v) = req_as(couch, Some(admin), "PUT", &path, Some(&sec.to_string()));
    assert_eq!(s, 200, "set _security of {db:?}: {s} {v}");
    let (s, v) = req_as(couch, Some(admin), "GET", &path, None);
    assert!(
        s == 200 && v == sec,
        "_security of {db:?} reads back as {s} {v}"
    );
}

/// [`create_db`] then [`set_members`].
pub fn create_db_with_members(
    couch: &Couch,
    admin: &Creds,
    db: &str,
    names: &[&str],
    roles: &[&str],
) {
    create_db(couch, admin, db);
    set_members(couch, admin, db, names, roles);
}

/// `GET /_session` as `who` (anonymous when `None`): 200 with
/// `{"ok":true,"userCtx":{"name":…,"roles":[…]},…}` for good credentials
/// (and anonymous: name null, roles `[]`, or `["_admin"]` in admin party),
/// 401 `{"error":"unauthorized","reason":"Name or password is
/// incorrect."}` for bad ones.
pub fn session(couch: &Couch, who: Option<&Creds>) -> (u16, Value) {
    req_as(couch, who, "GET", "/_session", None)
}

/// The name and roles the server sees for `who`; panics unless the
/// credentials are accepted.
pub fn session_of(couch: &Couch, who: &Creds) -> (String, Vec<String>) {
    let (s, v) = session(couch, Some(who));
    assert_eq!(s, 200, "_session as {:?}: {s} {v}", who.name);
    let name = v["userCtx"]["name"].as_str().unwrap_or_default().to_owned();
    let roles = v["userCtx"]["roles"]
        .as_array()
        .unwrap_or_else(|| panic!("_session as {:?} has no roles: {v}", who.name))
        .iter()
        .map(|r| r.as_str().unwrap_or_default().to_owned())
        .collect();
    (name, roles)
}

/// A request to `couch` as `who` (basic auth; anonymous when `None`). See
/// [`http_basic`].
pub fn req_as(
    couch: &Couch,
    who: Option<&Creds>,
    method: &str,
    path: &str,
    body: Option<&str>,
) -> (u16, Value) {
    http_basic(&couch.addr, who, method, path, body)
}

/// One HTTP/1.1 request to `addr` with `Connection: close`, a JSON
/// content type and, when `who` is given, `Authorization: Basic`. Returns
/// the status and the body: its JSON, else the raw text as a string (for
/// assertion messages), `Null` when empty. Chunked replies (longpoll
/// `_changes`) are decoded. `path` must already be percent-encoded
/// ([`enc`]).
///
/// Panics, without sending, on requests that crash pouchdb-server when made
/// with non-admin credentials: `PUT /{db}`, and a write of
/// `/{db}/_local/_security` (see the module docs).
pub fn http_basic(
    addr: &str,
    who: Option<&Creds>,
    method: &str,
    path: &str,
    body: Option<&str>,
) -> (u16, Value) {
    if let Some(w) = who.filter(|w| !w.admin) {
        assert!(
            !crashes_server(method, path),
            "refusing {method} {path} as non-admin {:?}: it crashes pouchdb-server",
            w.name
        );
    }
    let mut s = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(60))).ok();
    let body = body.unwrap_or("");
    let auth = who
        .map(|w| {
            let token = base64::engine::general_purpose::STANDARD
                .encode(format!("{}:{}", w.name, w.password));
            format!("Authorization: Basic {token}\r\n")
        })
        .unwrap_or_default();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n{auth}\
         Content-Type: application/json\r\nAccept: application/json\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes())
        .unwrap_or_else(|e| panic!("{method} {path} to {addr}: write: {e}"));
    let mut resp = Vec::new();
    if let Err(e) = s.read_to_end(&mut resp) {
        panic!(
            "{method} {path} to {addr}: read: {e} (after {} bytes)",
            resp.len()
        );
    }
    let split = resp
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| {
            panic!(
                "{method} {path} to {addr}: no complete reply (did the server die?): {:?}",
                String::from_utf8_lossy(&resp)
            )
        });
    let head = String::from_utf8_lossy(&resp[..split]).into_owned();
    let raw = &resp[split + 4..];
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("{method} {path}: bad status line: {head}"));
    let chunked = head.lines().any(|l| {
        l.split_once(':').is_some_and(|(k, v)| {
            k.trim().eq_ignore_ascii_case("transfer-encoding")
                && v.to_ascii_lowercase().contains("chunked")
        })
    });
    let bytes = if chunked { dechunk(raw) } else { raw.to_vec() };
    let text = String::from_utf8_lossy(&bytes);
    let value = if text.trim().is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).unwrap_or_else(|_| Value::String(text.into_owned()))
    };
    (status, value)
}

/// Whether `method path` from a non-admin crashes pouchdb-server: creating
/// a database (`PUT /{db}`), or writing a database's `_local/_security`.
fn crashes_server(method: &str, path: &str) -> bool {
    let bare = path.split(['?', '#']).next().unwrap_or_default();
    let Some(rest) = bare.strip_prefix('/') else {
        return false;
    };
    let put = method.eq_ignore_ascii_case("PUT");
    let write = put || method.eq_ignore_ascii_case("DELETE");
    (put && !rest.is_empty() && !rest.contains('/'))
        || (write && (rest.ends_with("/_local/_security") || rest.ends_with("/_local%2F_security")))
}

/// Decodes a chunked body (stops at the last chunk or at truncation).
fn dechunk(mut raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(eol) = raw.windows(2).position(|w| w == b"\r\n") {
        let size_text = String::from_utf8_lossy(&raw[..eol]);
        let size_hex = size_text.split(';').next().unwrap_or_default().trim();
        let Ok(size) = usize::from_str_radix(size_hex, 16) else {
            break;
        };
        raw = &raw[eol + 2..];
        if size == 0 {
            break;
        }
        let take = size.min(raw.len());
        out.extend_from_slice(&raw[..take]);
        raw = raw.get(take + 2..).unwrap_or_default();
    }
    out
}
