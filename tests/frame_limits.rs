//! Frames from the daemon stay within `daemon.max_frame_bytes`: a `get` of
//! a document of the largest allowed size fits, in both encodings, and a
//! config whose document limit leaves no room for the rest of a frame is
//! refused. Real daemon, raw socket (the frame lengths are the point).

mod common;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;

use common::{bin, Daemon};
use serde_json::{json, Value};
use syncd::domain::limits::FRAME_OVERHEAD;
use syncd::ipc::codec::{decode, encode, Encoding};
use syncd::ipc::wire::{ClientFrame, Doc, Request, Response, ServerFrame};

const MAX_FRAME: u32 = 65_536;

fn write_frame(s: &mut UnixStream, body: &[u8]) {
    let mut out = (body.len() as u32).to_be_bytes().to_vec();
    out.extend_from_slice(body);
    s.write_all(&out).unwrap();
}

fn read_frame(s: &mut UnixStream) -> Vec<u8> {
    let mut len = [0u8; 4];
    s.read_exact(&mut len).unwrap();
    let mut body = vec![0u8; u32::from_be_bytes(len) as usize];
    s.read_exact(&mut body).unwrap();
    body
}

fn connect(d: &Daemon, enc: Encoding) -> UnixStream {
    let mut s = UnixStream::connect(&d.socket).unwrap();
    let hello = json!({"app": "t", "protocol": 4, "encoding": enc.as_str()});
    write_frame(&mut s, hello.to_string().as_bytes());
    let h: Value = serde_json::from_slice(&read_frame(&mut s)).unwrap();
    assert_eq!(h["max_frame_bytes"], json!(MAX_FRAME), "{h}");
    s
}

fn ask(s: &mut UnixStream, enc: Encoding, request: Request) -> (usize, ServerFrame) {
    write_frame(s, &encode(enc, &ClientFrame { id: 7, request }).unwrap());
    let body = read_frame(s);
    (body.len(), decode(enc, &body).unwrap())
}

/// A document whose compact JSON is exactly `size` bytes.
fn doc_of(size: usize) -> Value {
    let empty = json!({"pad": ""}).to_string().len();
    let v = json!({"pad": "x".repeat(size - empty)});
    assert_eq!(v.to_string().len(), size);
    v
}

#[test]
fn a_largest_document_fits_in_a_frame_in_both_encodings() {
    let max_doc = MAX_FRAME - FRAME_OVERHEAD;
    let d = Daemon::start(&format!(
        "max_frame_bytes = {MAX_FRAME}\nmax_document_bytes = {max_doc}\n"
    ));
    let coll = "c".repeat(64);
    let id = "i".repeat(128);
    let data = doc_of(max_doc as usize);
    for enc in [Encoding::Json, Encoding::Bincode] {
        let mut s = connect(&d, enc);
        let put = Request::Put {
            collection: coll.clone(),
            id: Some(id.clone()),
            data: Doc(data.clone()),
            scope: None,
        };
        let (_, r) = ask(&mut s, enc, put);
        assert!(matches!(r, ServerFrame::Reply { .. }), "{r:?}");
        let get = Request::Get {
            collection: coll.clone(),
            id: id.clone(),
        };
        let (len, r) = ask(&mut s, enc, get);
        assert!(
            len <= MAX_FRAME as usize,
            "{}: a {len}-byte reply frame, the limit is {MAX_FRAME}",
            enc.as_str()
        );
        match r {
            ServerFrame::Reply {
                body: Response::Record(rec),
                ..
            } => assert_eq!(rec.data.0, data),
            other => panic!("{other:?}"),
        }
    }
}

#[test]
fn a_document_limit_without_room_for_the_frame_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("daemon.toml");
    let (sock, data) = (dir.path().join("s.sock"), dir.path().join("data"));
    std::fs::write(
        &cfg,
        format!(
            "[daemon]\nsocket = {sock:?}\ndata_dir = {data:?}\nmax_frame_bytes = {MAX_FRAME}\nmax_document_bytes = {MAX_FRAME}\n"
        ),
    )
    .unwrap();
    let mut child = std::process::Command::new(bin())
        .args(["run", "--config"])
        .arg(&cfg)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the daemon started with a document limit equal to the frame limit");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert!(!status.success(), "{err}");
    assert!(err.contains("daemon.max_document_bytes"), "{err}");
}

/// A document too large for a frame, piped to `syncd put`: the CLI says
/// `too_large`, with the limit and the key that sets it, instead of a
/// broken pipe; nothing is written and the daemon keeps serving.
#[test]
fn an_oversized_request_is_refused_by_the_client_with_the_limit() {
    use std::io::Write as _;
    let max_doc = MAX_FRAME - FRAME_OVERHEAD;
    let d = Daemon::start(&format!(
        "max_frame_bytes = {MAX_FRAME}\nmax_document_bytes = {max_doc}\n"
    ));
    let mut child = std::process::Command::new(bin())
        .arg("--socket")
        .arg(&d.socket)
        .args(["put", "todos", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let doc = doc_of(2 * MAX_FRAME as usize).to_string();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(doc.as_bytes())
        .unwrap();
    let o = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("too_large"), "{err}");
    assert!(err.contains(&MAX_FRAME.to_string()), "{err}");
    assert!(err.contains("daemon.max_frame_bytes"), "{err}");
    assert!(!err.contains("Broken pipe"), "{err}");
    assert_eq!(d.status()["queue_depth"], 0);
    d.ok(&["put", "todos", "{}"]);
}
