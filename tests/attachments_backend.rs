//! The blob endpoints of the reference backend on both of its stores:
//! chunked `bytea` rows in PostgreSQL (one content written through one
//! node is served by another, resumed uploads, a wrong hash dropped,
//! grants per scope), files beside redb, and the collector that removes
//! content no record references once it is older than `--blob-retention`
//! (content a record references stays).

mod common;
mod common_pg;

use std::io::{Read, Write};
use std::sync::Arc;

use common::{bin, eventually, Backend, Daemon};
use common_pg::{runtime, Pg, PgNode};
use sha2::{Digest, Sha256};
use syncd::backend::server::blobs::{BlobBackend, Held, PutError};
use syncd::backend::server::pg_store::PgStore;

fn sha(bytes: &[u8]) -> String {
    syncd::domain::attachment::hex(&Sha256::digest(bytes))
}

fn content(len: usize, seed: u64) -> Vec<u8> {
    let mut rng = fastrand::Rng::with_seed(seed);
    (0..len).map(|_| rng.u8(..)).collect()
}

/// One raw request; (status, headers, body).
fn raw(addr: &str, method: &str, path: &str, body: &[u8]) -> (u16, String, Vec<u8>) {
    let mut s = std::net::TcpStream::connect(addr).expect("connect");
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).expect("write");
    s.write_all(body).expect("write");
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
    (
        status,
        head,
        resp.get(split + 4..).unwrap_or_default().to_vec(),
    )
}

#[test]
fn postgres_keeps_content_in_chunks_served_by_every_node() {
    let pg = Pg::start();
    let url = pg.url("postgres");
    let rt = runtime();
    let a = Arc::new(rt.block_on(PgStore::connect(&url)).expect("node A"));
    let b = Arc::new(rt.block_on(PgStore::connect(&url)).expect("node B"));
    let body = content(300_000, 1);
    let h = sha(&body);
    // Run the blocking calls off the runtime's threads, as the server does.
    let (a2, b2, h2, body2) = (a.clone(), b.clone(), h.clone(), body.clone());
    std::thread::spawn(move || {
        let (a, b, h, body) = (a2, b2, h2, body2);
        assert_eq!(a.held("s", &h).unwrap(), Held::Partial(0));
        assert_eq!(
            a.put("s", &h, 0, 300_000, &body[..100_000]).unwrap(),
            Held::Partial(100_000)
        );
        // Another node resumes where the first left off; a wrong offset is
        // answered with the right one.
        assert!(matches!(
            b.put("s", &h, 0, 300_000, &body[..10]),
            Err(PutError::Offset(100_000))
        ));
        assert_eq!(
            b.put("s", &h, 100_000, 300_000, &body[100_000..250_000])
                .unwrap(),
            Held::Partial(250_000)
        );
        assert_eq!(
            a.put("s", &h, 250_000, 300_000, &body[250_000..]).unwrap(),
            Held::Complete { length: 300_000 }
        );
        let (got, len) = b.read("s", &h, 99_990, Some(250_010)).unwrap().unwrap();
        assert_eq!(len, 300_000);
        assert_eq!(got, body[99_990..250_010]);
        // Granted to its scope only.
        assert_eq!(b.held("t", &h).unwrap(), Held::Partial(0));
        assert!(b.read("t", &h, 0, None).unwrap().is_none());
        // Content that does not match its name is dropped.
        let other = "0".repeat(64);
        let e = a.put("s", &other, 0, 5, b"hello").unwrap_err();
        assert!(matches!(e, PutError::HashMismatch { .. }), "{e}");
        assert_eq!(a.held("s", &other).unwrap(), Held::Partial(0));
        // Unreferenced and past the retention: collected; referenced: kept.
        let keep: std::collections::HashSet<String> = [h.clone()].into();
        assert_eq!(a.collect(&keep, std::time::Duration::ZERO).unwrap(), 0);
        assert!(a.has("s", &h));
        a.collect(&Default::default(), std::time::Duration::ZERO)
            .unwrap();
        assert!(!a.has("s", &h));
    })
    .join()
    .expect("store calls");
}

#[test]
fn devices_share_an_attachment_through_two_postgres_nodes() {
    let pg = Pg::start();
    let url = pg.url("postgres");
    let n1 = PgNode::start(&bin(), &url);
    let n2 = PgNode::start(&bin(), &url);
    let dev = |node: &PgNode| {
        Daemon::start(&format!(
            "[backend]\nurl = {:?}\n[sync]\npull_interval_s = 1\nbackoff_initial_ms = 100\nbackoff_max_ms = 1000",
            node.http_url()
        ))
    };
    let a = dev(&n1);
    let b = dev(&n2);
    let body = content(2_500_000, 2);
    let f = a.dir.path().join("f.bin");
    std::fs::write(&f, &body).unwrap();
    a.ok(&["put", "docs", "--id", "d", r#"{"v":1}"#]);
    let o = a.cli(&[
        "attach",
        "docs",
        "d",
        "f",
        &f.display().to_string(),
        "--wait",
        "synced",
        "--timeout",
        "20",
    ]);
    assert!(
        o.status.success(),
        "{}\n{}",
        common::output_text(&o),
        a.log_text()
    );
    eventually(60, "B downloaded it through the other node", || {
        let v = b.json(&["get", "docs", "d"]);
        v["attachments"][0]["state"] == "synced"
    });
    let out = b.dir.path().join("out");
    b.ok(&[
        "attachment",
        "docs",
        "d",
        "f",
        "-o",
        &out.display().to_string(),
    ]);
    assert_eq!(std::fs::read(out).unwrap(), body);
}

#[test]
fn the_collector_removes_unreferenced_content_and_keeps_the_rest() {
    let backend = Backend::start(&["--blob-retention", "1s"]);
    let body = content(1000, 3);
    let h = sha(&body);
    let (st, _, reply) = raw(
        &backend.addr,
        "PUT",
        &format!("/v1/blobs/{h}?offset=0&length=1000"),
        &body,
    );
    assert_eq!(st, 200, "{}", String::from_utf8_lossy(&reply));
    let (st, head, _) = raw(&backend.addr, "HEAD", &format!("/v1/blobs/{h}"), b"");
    assert_eq!(st, 200);
    assert!(
        head.to_ascii_lowercase().contains("upload-offset: 1000"),
        "{head}"
    );
    // A range, and one past the end.
    let (st, head, got) = raw(&backend.addr, "GET", &format!("/v1/blobs/{h}"), b"");
    assert_eq!((st, got.as_slice()), (200, body.as_slice()), "{head}");
    // Referenced by a record through a device: kept.
    let kept = content(2000, 4);
    let d = Daemon::start(&format!("[backend]\nurl = {:?}", backend.url()));
    let f = d.dir.path().join("k.bin");
    std::fs::write(&f, &kept).unwrap();
    d.ok(&["put", "docs", "--id", "k", "{}"]);
    d.ok(&[
        "attach",
        "docs",
        "k",
        "k",
        &f.display().to_string(),
        "--wait",
        "synced",
        "--timeout",
        "60",
    ]);
    eventually(30, "the unreferenced content is collected", || {
        raw(&backend.addr, "HEAD", &format!("/v1/blobs/{h}"), b"").0 == 404
    });
    let (st, _, _) = raw(
        &backend.addr,
        "HEAD",
        &format!("/v1/blobs/{}", sha(&kept)),
        b"",
    );
    assert_eq!(st, 200, "referenced content is kept");
    // Bad input is named.
    let (st, _, reply) = raw(
        &backend.addr,
        "PUT",
        "/v1/blobs/xyz?offset=0&length=1",
        b"x",
    );
    assert_eq!(st, 400);
    assert!(String::from_utf8_lossy(&reply).contains("SHA-256"));
    let (st, _, reply) = raw(&backend.addr, "PUT", &format!("/v1/blobs/{h}"), b"x");
    assert_eq!(st, 400);
    assert!(String::from_utf8_lossy(&reply).contains("offset"));
}
