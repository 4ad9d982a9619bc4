//! Pipelining on the local socket: requests sent right behind the hello
//! (even in the same write) are answered, in both encodings, and a client
//! that keeps reading can have a thousand requests in flight.
//!
//! These speak raw frames to a real daemon, like `core_lifecycle.rs`, with
//! bodies built by `syncd::ipc::codec` so both encodings are covered.

mod common;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use common::Daemon;
use serde_json::json;
use syncd::ipc::codec::{decode, encode, Encoding};
use syncd::ipc::wire::{ClientFrame, Doc, Request, Response, ServerFrame};

fn frame(body: &[u8]) -> Vec<u8> {
    let mut b = (body.len() as u32).to_be_bytes().to_vec();
    b.extend_from_slice(body);
    b
}

/// One frame; panics with `what` on a timeout or end of stream.
fn read_frame(s: &mut UnixStream, what: &str) -> Vec<u8> {
    let mut len = [0u8; 4];
    s.read_exact(&mut len)
        .unwrap_or_else(|e| panic!("no frame for {what}: {e}"));
    let mut body = vec![0u8; u32::from_be_bytes(len) as usize];
    s.read_exact(&mut body)
        .unwrap_or_else(|e| panic!("frame body for {what}: {e}"));
    body
}

fn connect(d: &Daemon) -> UnixStream {
    let s = UnixStream::connect(&d.socket).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("read timeout");
    s
}

fn hello(enc: Encoding) -> Vec<u8> {
    frame(
        json!({"app": "pipelining", "protocol": 4, "encoding": enc.as_str()})
            .to_string()
            .as_bytes(),
    )
}

fn request(enc: Encoding, id: u64, request: Request) -> Vec<u8> {
    frame(&encode(enc, &ClientFrame { id, request }).expect("encode request"))
}

fn put(i: u64) -> Request {
    Request::Put {
        collection: "pipe".into(),
        id: Some(format!("r{i}")),
        data: Doc(json!({ "i": i })),
        scope: None,
    }
}

fn read_hello_ok(s: &mut UnixStream) {
    let h: serde_json::Value =
        serde_json::from_slice(&read_frame(s, "the hello reply")).expect("JSON hello reply");
    assert_eq!(h["ok"], json!(true), "hello refused: {h}");
}

/// The reply to request `id`, which must be a success.
fn read_reply(s: &mut UnixStream, enc: Encoding, id: u64) -> Response {
    let b = read_frame(s, &format!("the reply to request {id}"));
    match decode::<ServerFrame>(enc, &b).expect("decodable server frame") {
        ServerFrame::Reply { id: got, body } => {
            assert_eq!(got, id, "replies out of order");
            body
        }
        other => panic!("expected the reply to {id}, got {other:?}"),
    }
}

/// The hello and two requests leave in ONE write: the daemon must not
/// lose what arrived together with the hello.
fn hello_and_requests_in_one_write(enc: Encoding) {
    let d = Daemon::start("");
    let mut s = connect(&d);
    let mut bytes = hello(enc);
    bytes.extend(request(enc, 1, put(1)));
    bytes.extend(request(enc, 2, Request::Status {}));
    s.write_all(&bytes).expect("write hello + requests");

    read_hello_ok(&mut s);
    match read_reply(&mut s, enc, 1) {
        Response::Written { id, .. } => assert_eq!(id, "r1"),
        other => panic!("put answered {other:?}"),
    }
    assert!(matches!(read_reply(&mut s, enc, 2), Response::Status(_)));
    let got = d.json(&["get", "pipe", "r1"]);
    assert_eq!(got["data"], json!({"i": 1}), "{got}");
}

#[test]
fn request_in_the_hello_write_is_answered_json() {
    hello_and_requests_in_one_write(Encoding::Json);
}

#[test]
fn request_in_the_hello_write_is_answered_bincode() {
    hello_and_requests_in_one_write(Encoding::Bincode);
}

/// A writer thread sends the hello and 1,000 requests without waiting for
/// anything, while this thread reads: every reply arrives, in id order.
fn thousand_pipelined(enc: Encoding) {
    const N: u64 = 1000;
    let d = Daemon::start("");
    let mut s = connect(&d);
    let mut w = s.try_clone().expect("clone stream");
    let writer = std::thread::spawn(move || {
        w.write_all(&hello(enc)).expect("write hello");
        for i in 1..=N {
            let req = if i % 10 == 0 {
                Request::Status {}
            } else {
                put(i)
            };
            w.write_all(&request(enc, i, req)).expect("write request");
        }
    });
    read_hello_ok(&mut s);
    for i in 1..=N {
        match read_reply(&mut s, enc, i) {
            Response::Written { id, .. } => assert_eq!(id, format!("r{i}")),
            Response::Status(_) => assert_eq!(i % 10, 0),
            other => panic!("request {i} answered {other:?}"),
        }
    }
    writer.join().expect("writer thread");
    let status = d.status();
    assert_eq!(status["queue_depth"], json!(N - N / 10), "{status}");
}

#[test]
fn thousand_pipelined_requests_json() {
    thousand_pipelined(Encoding::Json);
}

#[test]
fn thousand_pipelined_requests_bincode() {
    thousand_pipelined(Encoding::Bincode);
}

/// A client that writes without reading is pushed back: the daemon stops
/// reading that connection (its writes end up blocking) instead of
/// buffering without bound, other connections go on, and once the client
/// reads, every request it managed to send is answered in order.
#[test]
fn a_client_that_does_not_read_is_pushed_back() {
    let d = Daemon::start("");
    let mut s = connect(&d);
    s.write_all(&hello(Encoding::Json)).expect("write hello");
    read_hello_ok(&mut s);
    s.set_write_timeout(Some(Duration::from_millis(500)))
        .expect("write timeout");
    // Same-size frames (7-digit ids) so bytes written count requests.
    let first = 1_000_000u64;
    let frame_len = request(Encoding::Json, first, Request::Status {}).len();
    let mut pending: Vec<u8> = Vec::new();
    let mut sent = 0usize;
    let mut next = first;
    let blocked = loop {
        assert!(next < first + 1_000_000, "the daemon never pushed back");
        if pending.is_empty() {
            pending = request(Encoding::Json, next, Request::Status {});
            next += 1;
        }
        match s.write(&pending) {
            Ok(n) => {
                sent += n;
                pending.drain(..n);
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                break true
            }
            Err(e) => panic!("write: {e}"),
        }
    };
    assert!(blocked);
    // The daemon is fine and other connections are answered.
    assert!(d.status()["queue_depth"].is_number());

    // Finish the partial frame from another thread while this one reads.
    let mut w = s.try_clone().expect("clone stream");
    let writer = std::thread::spawn(move || {
        w.set_write_timeout(None).expect("no write timeout");
        w.write_all(&pending).expect("rest of the last frame");
    });
    let requests = sent.div_ceil(frame_len) as u64;
    for id in first..first + requests {
        assert!(matches!(
            read_reply(&mut s, Encoding::Json, id),
            Response::Status(_)
        ));
    }
    writer.join().expect("writer thread");
}
