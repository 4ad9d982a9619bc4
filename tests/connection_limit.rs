//! `daemon.max_connections`: a connection beyond the limit gets a hello
//! reply refusing it with `too_many_connections` and is closed; once one
//! closes, a new one is admitted. Real daemon, raw socket.

mod common;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use common::{eventually, Daemon};
use serde_json::{json, Value};

fn write_frame(s: &mut UnixStream, body: &[u8]) {
    let mut out = (body.len() as u32).to_be_bytes().to_vec();
    out.extend_from_slice(body);
    s.write_all(&out).unwrap();
}

fn read_frame(s: &mut UnixStream) -> Option<Vec<u8>> {
    let mut len = [0u8; 4];
    s.read_exact(&mut len).ok()?;
    let mut body = vec![0u8; u32::from_be_bytes(len) as usize];
    s.read_exact(&mut body).ok()?;
    Some(body)
}

/// Connects and says hello; returns the stream and the hello reply.
fn hello(d: &Daemon) -> (UnixStream, Value) {
    let mut s = UnixStream::connect(&d.socket).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let body = br#"{"app":"t","protocol":1,"encoding":"json"}"#;
    let mut out = (body.len() as u32).to_be_bytes().to_vec();
    out.extend_from_slice(body);
    // A refused connection may be answered and closed before our hello is
    // written (a broken pipe then): its refusal is still there to read.
    if let Err(e) = s.write_all(&out) {
        assert_eq!(e.kind(), std::io::ErrorKind::BrokenPipe, "{e}");
    }
    let reply = read_frame(&mut s).expect("a hello reply");
    (s, serde_json::from_slice(&reply).unwrap())
}

/// A connection admitted once the daemon has let go of earlier ones: the
/// CLI's readiness checks close their connections, but the daemon counts
/// each until its session has ended, which may be a moment later.
fn admitted(d: &Daemon) -> (UnixStream, Value) {
    let mut got = None;
    eventually(30, "a connection admitted", || {
        let (s, h) = hello(d);
        let ok = h["ok"] == json!(true);
        if ok {
            got = Some((s, h));
        }
        ok
    });
    got.expect("admitted")
}

#[test]
fn connections_beyond_the_limit_are_refused_with_a_reason() {
    let d = Daemon::start("max_connections = 2");
    let (mut a, ha) = admitted(&d);
    let (_b, hb) = admitted(&d);
    assert_eq!(
        (ha["ok"].clone(), hb["ok"].clone()),
        (json!(true), json!(true))
    );

    let (mut c, hc) = hello(&d);
    assert_eq!(hc["ok"], json!(false), "{hc}");
    assert_eq!(hc["error"]["code"], json!("too_many_connections"), "{hc}");
    let msg = hc["error"]["message"].as_str().unwrap_or_default();
    assert!(
        msg.contains("daemon.max_connections") && msg.contains('2'),
        "{msg}"
    );
    assert!(
        read_frame(&mut c).is_none(),
        "the refused connection stays open"
    );

    // The admitted ones still work.
    write_frame(&mut a, br#"{"id":1,"request":{"status":{}}}"#);
    let r: Value = serde_json::from_slice(&read_frame(&mut a).unwrap()).unwrap();
    assert_eq!(r["reply"]["id"], json!(1), "{r}");

    // A freed slot is taken again, and then the limit holds again.
    drop(a);
    let mut kept = None;
    eventually(10, "a slot is free again", || {
        let (s, h) = hello(&d);
        let ok = h["ok"] == json!(true);
        if ok {
            kept = Some(s);
        }
        ok
    });
    let (_y, hy) = hello(&d);
    assert_eq!(hy["error"]["code"], json!("too_many_connections"), "{hy}");
    drop(kept);
}
