//! Attachments on the CouchDB backend (issue 23): a record's attachments
//! are the document's CouchDB attachments, so a PouchDB app (or anyone
//! reading the database) gets them as its own. A real pouchdb-server and
//! real daemons: a file attached on one device is on the document, with
//! its bytes, in the revision that names it; another device downloads it
//! from the document; an attachment another program added stays when
//! syncd writes the document; detach removes syncd's. Skips with a note
//! when node/npm are missing (`.ci/run` installs them).

mod common;
mod common_couch;

use common::eventually;
use common_couch::{device, put, rev_version, Couch, DB};
use serde_json::{json, Value};

const WAIT: u64 = 90;

fn bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut rng = fastrand::Rng::with_seed(seed);
    (0..len).map(|_| rng.u8(..)).collect()
}

/// The raw bytes of `GET path` on the server.
fn raw_get(couch: &Couch, path: &str) -> (u16, Vec<u8>) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(&couch.addr).expect("connect");
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
        couch.addr
    );
    s.write_all(req.as_bytes()).expect("write");
    let mut resp = Vec::new();
    let _ = s.read_to_end(&mut resp);
    let split = resp
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or(resp.len());
    let head = String::from_utf8_lossy(&resp[..split]).into_owned();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let mut body = resp.get(split + 4..).unwrap_or_default().to_vec();
    if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        body = dechunk(&body);
    }
    (status, body)
}

fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let Some(nl) = b.windows(2).position(|w| w == b"\r\n") else {
            return out;
        };
        let size = usize::from_str_radix(String::from_utf8_lossy(&b[..nl]).trim(), 16).unwrap_or(0);
        if size == 0 {
            return out;
        }
        out.extend_from_slice(&b[nl + 2..nl + 2 + size]);
        b = &b[nl + 2 + size + 2..];
    }
}

fn state(d: &common::Daemon, id: &str, name: &str) -> Option<String> {
    let v = d.json(&["get", "docs", id]);
    v["attachments"]
        .as_array()?
        .iter()
        .find(|a| a["name"] == name)
        .and_then(|a| a["state"].as_str().map(str::to_owned))
}

#[test]
fn attachments_are_the_documents_couchdb_attachments() {
    let Some(couch) = Couch::start() else {
        return;
    };
    let a = device(&couch.url());
    let b = device(&couch.url());
    let body = bytes(700_000, 1);
    let f = a.dir.path().join("photo.jpg");
    std::fs::write(&f, &body).unwrap();
    put(&a, "docs", "d", json!({"title": "report"}));
    a.ok(&[
        "attach",
        "docs",
        "d",
        "photo.jpg",
        &f.display().to_string(),
        "--type",
        "image/jpeg",
        "--wait",
        "synced",
        "--timeout",
        "60",
    ]);

    // On the document as CouchDB attachments, bytes and all.
    let doc = couch.doc("docs", "d").expect("document");
    let stub = &doc["_attachments"]["photo.jpg"];
    assert_eq!(stub["content_type"], "image/jpeg", "{doc}");
    assert_eq!(stub["length"], 700_000);
    assert_eq!(doc["title"], "report");
    assert!(doc.get("data").is_none(), "native shape: {doc}");
    let (st, got) = raw_get(&couch, &format!("/{DB}/docs:d/photo.jpg"));
    assert_eq!(st, 200);
    assert_eq!(got, body, "CouchDB serves the attachment's bytes");

    // Another device downloads it from the document.
    eventually(WAIT, "B has the content", || {
        state(&b, "d", "photo.jpg").as_deref() == Some("synced")
    });
    let out = b.dir.path().join("out");
    b.ok(&[
        "attachment",
        "docs",
        "d",
        "photo.jpg",
        "-o",
        &out.display().to_string(),
    ]);
    assert_eq!(std::fs::read(&out).unwrap(), body);

    // Another program adds an attachment of its own (a PouchDB app, say):
    // syncd's next write keeps it, and the record does not show it.
    let rev = doc["_rev"].as_str().unwrap().to_owned();
    let mut theirs = doc.clone();
    theirs["_attachments"]["note.txt"] = json!({"content_type": "text/plain", "data": "aGVsbG8="});
    theirs["_rev"] = Value::String(rev);
    let (st, v) = couch.req("PUT", &format!("/{DB}/docs:d"), Some(&theirs.to_string()));
    assert!(st == 201 || st == 200, "{st} {v}");
    a.ok(&["sync", "--wait", "--timeout", "60"]);
    let theirs_version = rev_version(&couch.doc("docs", "d").expect("document"));
    eventually(WAIT, "A pulled the other program's revision", || {
        a.json(&["get", "docs", "d"])["version"].as_u64() == Some(theirs_version)
    });
    let o = a.cli(&[
        "patch",
        "docs",
        "d",
        r#"{"title":"final"}"#,
        "--wait",
        "synced",
        "--timeout",
        "60",
    ]);
    assert!(
        o.status.success(),
        "{}\n{}",
        common::output_text(&o),
        a.log_text()
    );
    let doc = couch.doc("docs", "d").expect("document");
    assert_eq!(doc["title"], "final");
    assert!(
        doc["_attachments"]["note.txt"].is_object(),
        "the other program's attachment stays: {doc}"
    );
    assert!(doc["_attachments"]["photo.jpg"].is_object());
    let rec = a.json(&["get", "docs", "d"]);
    assert!(
        rec["data"]["_attachments"].get("note.txt").is_none(),
        "{rec}"
    );

    // Detach removes syncd's own, never the other's.
    a.ok(&[
        "detach",
        "docs",
        "d",
        "photo.jpg",
        "--wait",
        "synced",
        "--timeout",
        "60",
    ]);
    let doc = couch.doc("docs", "d").expect("document");
    assert!(doc["_attachments"].get("photo.jpg").is_none(), "{doc}");
    assert!(doc["_attachments"]["note.txt"].is_object(), "{doc}");
}
