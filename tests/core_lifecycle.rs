//! The daemon's life: signals, the socket file, the data_dir lock, config
//! errors and hot reload, and what it does with bad frames.

mod common;

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use common::{bin, eventually, path_str, Daemon};
use serde_json::{json, Value};

/// A daemon that is configured but not started (for start-up failures).
fn unstarted(extra: &str) -> Daemon {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = Daemon {
        socket: dir.path().join("syncd.sock"),
        data_dir: dir.path().join("data"),
        config: dir.path().join("daemon.toml"),
        log: dir.path().join("daemon.log"),
        child: None,
        dir,
        bin: bin(),
        log_level: "debug",
    };
    d.write_config(extra);
    d
}

/// Runs `syncd run --config FILE`, which must exit by itself within 10 s.
fn run_to_exit(config: &Path) -> (ExitStatus, String) {
    let mut child = Command::new(bin())
        .arg("run")
        .arg("--config")
        .arg(config)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            let mut err = String::new();
            child
                .stderr
                .take()
                .unwrap()
                .read_to_string(&mut err)
                .unwrap();
            return (st, err);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("syncd run --config {} did not exit", config.display());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn mode_of(p: &Path) -> u32 {
    std::fs::metadata(p)
        .expect("socket file")
        .permissions()
        .mode()
        & 0o777
}

/// Replaces `d.config` in one rename, as editors do (the daemon never sees a
/// half-written file).
fn replace_config(d: &Daemon, extra: &str) {
    let tmp = d.dir.path().join("daemon.toml.tmp");
    let text = format!(
        "[daemon]\nsocket = {:?}\ndata_dir = {:?}\nlog_level = \"debug\"\n{extra}\n",
        path_str(&d.socket),
        path_str(&d.data_dir),
    );
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, &d.config).unwrap();
}

fn backend(d: &Daemon) -> Value {
    d.status()["backend"].clone()
}

#[test]
fn sigterm_exits_0_quickly_and_removes_socket() {
    let mut d = Daemon::start("");
    let id = d
        .ok(&["put", "todos", r#"{"keep":true}"#])
        .trim()
        .to_owned();
    // An idle connection and a watcher must not hold shutdown up.
    let idle = raw_hello(&d.socket);
    // Subscribed once the `watching` reply is in.
    let mut watcher = raw_hello(&d.socket);
    write_frame(&mut watcher, br#"{"id":1,"request":{"watch":{}}}"#);
    let r = read_json(&mut watcher);
    assert_eq!(r["reply"]["body"], json!({"watching": {}}), "{r}");

    let (st, took) = d.terminate();
    assert_eq!(
        st.code(),
        Some(0),
        "exit status after SIGTERM: {st}; log:\n{}",
        d.log_text()
    );
    assert!(took < Duration::from_secs(5), "SIGTERM took {took:?}");
    assert!(!d.socket.exists(), "socket file left behind after SIGTERM");
    drop(idle);
    drop(watcher);

    // The data survives an orderly stop.
    d.spawn();
    assert_eq!(
        d.json(&["get", "todos", &id])["data"],
        json!({"keep": true})
    );
    assert_eq!(d.status()["queue_depth"], json!(1));

    // SIGINT is an orderly stop too.
    let mut c = d.child.take().unwrap();
    common::unsafe_kill(c.id(), 2);
    let t = Instant::now();
    let st = c.wait().unwrap();
    assert_eq!(st.code(), Some(0), "exit status after SIGINT: {st}");
    assert!(t.elapsed() < Duration::from_secs(5));
    assert!(!d.socket.exists());
}

#[test]
fn stale_socket_file_is_replaced() {
    let mut d = Daemon::start("");
    d.ok(&["put", "todos", "--id", "a", "{}"]);
    let (st, _) = d.terminate();
    assert!(st.success());
    assert!(!d.socket.exists());

    // A socket file nobody listens on (what a crashed daemon leaves).
    {
        let _l = std::os::unix::net::UnixListener::bind(&d.socket).unwrap();
    }
    assert!(
        d.socket.exists(),
        "listener drop removed the file: cannot set up the test"
    );
    d.spawn();
    d.ok(&["get", "todos", "a"]);
    assert_eq!(mode_of(&d.socket), 0o600);

    // And what kill -9 leaves.
    d.kill9();
    assert!(d.socket.exists(), "kill -9 should leave the socket file");
    d.spawn();
    d.ok(&["get", "todos", "a"]);
}

#[test]
fn second_daemon_on_same_data_dir_refuses() {
    let d = Daemon::start("");
    let other = tempfile::tempdir().unwrap();
    let sock2 = other.path().join("second.sock");
    let cfg2 = other.path().join("daemon.toml");
    std::fs::write(
        &cfg2,
        format!(
            "[daemon]\nsocket = {:?}\ndata_dir = {:?}\n",
            path_str(&sock2),
            path_str(&d.data_dir)
        ),
    )
    .unwrap();
    let (st, err) = run_to_exit(&cfg2);
    assert!(!st.success(), "second daemon started on the same data_dir");
    let lower = err.to_lowercase();
    assert!(
        lower.contains("already running") || lower.contains("lock"),
        "message should mention the lock: {err}"
    );
    assert!(
        err.contains(&path_str(&d.data_dir)),
        "message should name the data_dir: {err}"
    );
    assert!(!sock2.exists(), "refused daemon left a socket");
    // The first one is unharmed.
    d.ok(&["put", "todos", "{}"]);

    // A second daemon on the same socket (different data_dir) refuses too,
    // without taking the socket from the running one.
    let cfg3 = other.path().join("third.toml");
    std::fs::write(
        &cfg3,
        format!(
            "[daemon]\nsocket = {:?}\ndata_dir = {:?}\n",
            path_str(&d.socket),
            path_str(&other.path().join("data3"))
        ),
    )
    .unwrap();
    let (st, err) = run_to_exit(&cfg3);
    assert!(
        !st.success(),
        "second daemon took over a live socket: {err}"
    );
    assert!(err.contains(&path_str(&d.socket)), "{err}");
    d.ok(&["status"]);
}

#[test]
fn socket_mode_default_is_0600() {
    let d = Daemon::start("");
    assert_eq!(mode_of(&d.socket), 0o600, "default socket mode");
}

#[test]
fn socket_mode_0660_is_honoured() {
    let d = Daemon::start("socket_mode = \"0660\"");
    assert_eq!(mode_of(&d.socket), 0o660, "socket_mode = \"0660\"");
    d.ok(&["status"]);
}

#[test]
fn config_errors_name_file_and_key() {
    for (extra, key) in [
        ("[sync]\nbatchsize = 3", "sync.batchsize"),
        ("[sync]\nbackoff_initial_ms = 0", "sync.backoff_initial_ms"),
        ("[backend]\ntimeout_ms = \"soon\"", "backend.timeout_ms"),
        ("[backend]\nurl = \"ftp://example.com/\"", "backend.url"),
        ("socket_mode = \"rwx\"", "daemon.socket_mode"),
        ("bogus = 1", "bogus"),
        ("[sync]\nconflict = \"coin-flip\"", "sync.conflict"),
    ] {
        let d = unstarted(extra);
        let (st, err) = run_to_exit(&d.config);
        assert!(!st.success(), "{extra:?} was accepted");
        assert!(
            err.contains(&path_str(&d.config)),
            "{extra:?}: message should name the file: {err}"
        );
        assert!(
            err.contains(key),
            "{extra:?}: message should name the key {key}: {err}"
        );
        assert!(!d.socket.exists(), "{extra:?}: a socket was created");
    }
}

#[test]
fn hot_reload_through_file_watcher() {
    let d = Daemon::start("");
    assert_eq!(backend(&d), Value::Null);

    // A valid change (written in place) takes effect.
    d.write_config("[backend]\nurl = \"http://127.0.0.1:9/\"");
    eventually(5, "backend url picked up from the changed file", || {
        backend(&d) == json!("http://127.0.0.1:9/")
    });

    // An invalid one is logged, naming the key, and the old config stays.
    replace_config(
        &d,
        "[backend]\nurl = \"http://127.0.0.1:10/\"\n[sync]\nbackoff_initial_ms = 0",
    );
    eventually(5, "reload error in the log", || {
        d.log_text()
            .lines()
            .any(|l| l.contains("sync.backoff_initial_ms"))
    });
    let line = d
        .log_text()
        .lines()
        .rfind(|l| l.contains("sync.backoff_initial_ms"))
        .unwrap()
        .to_owned();
    assert!(
        line.contains("ERROR"),
        "should be logged as an error: {line}"
    );
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        backend(&d),
        json!("http://127.0.0.1:9/"),
        "invalid config took effect"
    );
    d.ok(&["put", "todos", "{}"]);

    // An unknown key is rejected the same way.
    replace_config(&d, "[backend]\nurl = \"http://127.0.0.1:11/\"\nretries = 3");
    eventually(5, "unknown key in the log", || {
        d.log_text().contains("backend.retries")
    });
    assert_eq!(backend(&d), json!("http://127.0.0.1:9/"));

    // Fixing the file (replaced by rename, like an editor) works again.
    replace_config(&d, "[backend]\nurl = \"http://127.0.0.1:12/\"");
    eventually(5, "the fixed config picked up", || {
        backend(&d) == json!("http://127.0.0.1:12/")
    });
}

#[test]
fn sighup_reloads() {
    // The config is a symlink to a file in another directory: the file
    // watcher (on the symlink's directory) does not see edits of the
    // target, so only SIGHUP can pick them up.
    let dir = tempfile::tempdir().unwrap();
    let real_dir = dir.path().join("real");
    std::fs::create_dir(&real_dir).unwrap();
    let real = real_dir.join("actual.toml");
    let link = dir.path().join("daemon.toml");
    std::fs::write(&real, "").unwrap();
    std::os::unix::fs::symlink(&real, &link).unwrap();
    let mut d = Daemon {
        socket: dir.path().join("syncd.sock"),
        data_dir: dir.path().join("data"),
        config: link,
        log: dir.path().join("daemon.log"),
        child: None,
        dir,
        bin: bin(),
        log_level: "debug",
    };
    d.write_config("");
    d.spawn();
    assert_eq!(backend(&d), Value::Null);

    d.write_config("[backend]\nurl = \"http://127.0.0.1:9/\"");
    std::thread::sleep(Duration::from_millis(700));
    assert_eq!(
        backend(&d),
        Value::Null,
        "changed without SIGHUP (watcher saw the target?)"
    );
    d.signal(1);
    eventually(5, "SIGHUP reload", || {
        backend(&d) == json!("http://127.0.0.1:9/")
    });

    d.write_config("[backend]\nurl = \"http://127.0.0.1:10/\"\n[sync]\nbatch_size = 0");
    d.signal(1);
    eventually(5, "SIGHUP reload error in the log", || {
        d.log_text().contains("sync.batch_size")
    });
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(
        backend(&d),
        json!("http://127.0.0.1:9/"),
        "invalid config took effect"
    );
    assert!(
        d.child.as_mut().unwrap().try_wait().unwrap().is_none(),
        "daemon died on SIGHUP"
    );

    d.write_config("");
    d.signal(1);
    eventually(5, "SIGHUP reload back to no backend", || {
        backend(&d) == Value::Null
    });
}

// ---------------------------------------------------------------------------
// Raw frames.

const MAX_FRAME: u32 = 16 * 1024 * 1024;

fn write_frame(s: &mut UnixStream, body: &[u8]) {
    let mut b = (body.len() as u32).to_be_bytes().to_vec();
    b.extend_from_slice(body);
    s.write_all(&b).expect("write frame");
}

/// One frame, or `None` on a clean end of stream.
fn read_frame(s: &mut UnixStream) -> Option<Vec<u8>> {
    let mut len = [0u8; 4];
    match s.read_exact(&mut len) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return None,
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return None,
        Err(e) => panic!("reading a frame: {e}"),
    }
    let mut body = vec![0u8; u32::from_be_bytes(len) as usize];
    s.read_exact(&mut body).expect("frame body");
    Some(body)
}

fn read_json(s: &mut UnixStream) -> Value {
    let b = read_frame(s).expect("a frame, got end of stream");
    serde_json::from_slice(&b)
        .unwrap_or_else(|e| panic!("frame is not JSON ({e}): {:?}", String::from_utf8_lossy(&b)))
}

fn connect(path: &Path) -> UnixStream {
    let s = UnixStream::connect(path).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s
}

/// A connection after a successful JSON hello.
fn raw_hello(path: &Path) -> UnixStream {
    let mut s = connect(path);
    write_frame(&mut s, br#"{"app":"t","protocol":1,"encoding":"json"}"#);
    let h = read_json(&mut s);
    assert_eq!(h["ok"], json!(true), "hello refused: {h}");
    assert_eq!(h["max_frame_bytes"], json!(MAX_FRAME));
    s
}

/// Sends a status request and expects its reply.
fn status_ok(s: &mut UnixStream, id: u64) {
    write_frame(
        s,
        format!(r#"{{"id":{id},"request":{{"status":{{}}}}}}"#).as_bytes(),
    );
    let r = read_json(s);
    assert_eq!(r["reply"]["id"], json!(id), "{r}");
    assert!(r["reply"]["body"]["status"]["state"].is_string(), "{r}");
}

/// Expects an error frame; returns (id, code, message).
fn expect_error(s: &mut UnixStream) -> (u64, String, String) {
    let r = read_json(s);
    let e = &r["error"];
    assert!(e.is_object(), "expected an error frame, got {r}");
    (
        e["id"].as_u64().unwrap(),
        e["error"]["code"].as_str().unwrap().to_owned(),
        e["error"]["message"].as_str().unwrap().to_owned(),
    )
}

fn expect_closed(s: &mut UnixStream) {
    assert!(read_frame(s).is_none(), "connection should be closed");
}

/// A bystander connection: opened first, checked after each abuse.
struct Bystander {
    s: UnixStream,
    n: u64,
}

impl Bystander {
    fn check(&mut self, d: &Daemon) {
        self.n += 1;
        status_ok(&mut self.s, self.n);
        d.ok(&["status"]);
    }
}

fn daemon_with_bystander() -> (Daemon, Bystander) {
    let d = Daemon::start("");
    let s = raw_hello(&d.socket);
    (d, Bystander { s, n: 0 })
}

#[test]
fn json_requests_over_raw_socket() {
    let (d, mut by) = daemon_with_bystander();
    let mut s = raw_hello(&d.socket);
    status_ok(&mut s, 1);
    write_frame(
        &mut s,
        br#"{"id":2,"request":{"put":{"collection":"t","id":"r1","data":{"x":1}}}}"#,
    );
    let r = read_json(&mut s);
    assert_eq!(r["reply"]["id"], json!(2), "{r}");
    assert_eq!(r["reply"]["body"]["written"]["id"], json!("r1"), "{r}");
    write_frame(
        &mut s,
        br#"{"id":3,"request":{"get":{"collection":"t","id":"r1"}}}"#,
    );
    let r = read_json(&mut s);
    assert_eq!(r["reply"]["body"]["record"]["data"], json!({"x": 1}), "{r}");
    by.check(&d);
}

#[test]
fn garbage_frames_get_errors() {
    let (d, mut by) = daemon_with_bystander();

    // Garbage as the hello: a refused hello that says why.
    let mut s = connect(&d.socket);
    write_frame(&mut s, b"\x00\xffnot json at all");
    let h = read_json(&mut s);
    assert_eq!(h["ok"], json!(false), "{h}");
    assert_eq!(h["error"]["code"], json!("bad_frame"), "{h}");
    assert!(
        h["error"]["message"].as_str().unwrap().contains("hello"),
        "{h}"
    );
    expect_closed(&mut s);
    by.check(&d);

    // A hello with an unknown protocol version.
    let mut s = connect(&d.socket);
    write_frame(&mut s, br#"{"app":"t","protocol":99,"encoding":"json"}"#);
    let h = read_json(&mut s);
    assert_eq!(h["ok"], json!(false), "{h}");
    assert_eq!(h["error"]["code"], json!("unsupported_protocol"), "{h}");
    by.check(&d);

    // After the hello: garbage, invalid JSON, unknown requests and
    // documents that are not objects all get error frames and the
    // connection stays usable.
    let mut s = raw_hello(&d.socket);
    write_frame(&mut s, b"\x01\x02\x03garbage");
    let (id, code, _) = expect_error(&mut s);
    assert_eq!((id, code.as_str()), (0, "invalid_json"));
    status_ok(&mut s, 10);

    write_frame(&mut s, br#"{"id":11,"request":"#);
    let (id, code, msg) = expect_error(&mut s);
    assert_eq!((id, code.as_str()), (0, "invalid_json"), "{msg}");
    status_ok(&mut s, 12);

    write_frame(&mut s, br#"{"id":13,"request":{"frobnicate":{}}}"#);
    let (_, _, msg) = expect_error(&mut s);
    assert!(
        msg.contains("frobnicate"),
        "message should name the unknown request: {msg}"
    );
    status_ok(&mut s, 14);

    write_frame(
        &mut s,
        br#"{"id":15,"request":{"put":{"collection":"t","data":[1,2]}}}"#,
    );
    let (id, code, msg) = expect_error(&mut s);
    assert_eq!((id, code.as_str()), (15, "not_an_object"), "{msg}");
    write_frame(
        &mut s,
        br#"{"id":16,"request":{"put":{"collection":"a/b","data":{}}}}"#,
    );
    let (id, code, _) = expect_error(&mut s);
    assert_eq!((id, code.as_str()), (16, "bad_collection"));
    write_frame(&mut s, b"");
    let (id, _, _) = expect_error(&mut s);
    assert_eq!(id, 0, "empty frame");
    status_ok(&mut s, 17);
    by.check(&d);

    // Bincode garbage on a bincode connection: an error frame (in bincode).
    let mut s = connect(&d.socket);
    write_frame(&mut s, br#"{"app":"t","protocol":4,"encoding":"bincode"}"#);
    assert_eq!(read_json(&mut s)["ok"], json!(true));
    write_frame(&mut s, &[0xff; 40]);
    let b = read_frame(&mut s).expect("an error frame for bincode garbage");
    let f: syncd::ipc::wire::ServerFrame =
        syncd::ipc::codec::decode(syncd::ipc::codec::Encoding::Bincode, &b).expect("bincode frame");
    match f {
        syncd::ipc::wire::ServerFrame::Error { id: 0, error } => {
            assert_eq!(
                error.code,
                syncd::ipc::wire::ErrorCode::BadFrame,
                "{error:?}"
            )
        }
        other => panic!("expected an error frame, got {other:?}"),
    }
    by.check(&d);

    // Nothing of it was written.
    assert_eq!(d.status()["queue_depth"], json!(0));
}

#[test]
fn oversized_frames_get_too_large() {
    let (d, mut by) = daemon_with_bystander();

    let mut s = raw_hello(&d.socket);
    s.write_all(&(MAX_FRAME + 1).to_be_bytes()).unwrap();
    let (id, code, msg) = expect_error(&mut s);
    assert_eq!((id, code.as_str()), (0, "too_large"), "{msg}");
    assert!(
        msg.contains(&(MAX_FRAME + 1).to_string()),
        "message should give the size: {msg}"
    );
    expect_closed(&mut s);
    by.check(&d);

    let mut s = raw_hello(&d.socket);
    s.write_all(&u32::MAX.to_be_bytes()).unwrap();
    let (_, code, _) = expect_error(&mut s);
    assert_eq!(code, "too_large");
    by.check(&d);

    // An oversized hello is refused with `too_large`, the size and the
    // limit (docs/ipc-protocol.md §3).
    let mut s = connect(&d.socket);
    s.write_all(&(MAX_FRAME + 1).to_be_bytes()).unwrap();
    let h = read_json(&mut s);
    assert_eq!(h["ok"], json!(false), "{h}");
    assert_eq!(h["error"]["code"], json!("too_large"), "{h}");
    let msg = h["error"]["message"].as_str().unwrap();
    assert!(
        msg.contains(&(MAX_FRAME + 1).to_string()) && msg.contains(&MAX_FRAME.to_string()),
        "{h}"
    );
    expect_closed(&mut s);
    by.check(&d);

    // A frame within the limit carrying a document over max_document_bytes
    // (1 MiB) is answered, not dropped.
    let mut s = raw_hello(&d.socket);
    let big = "y".repeat(1024 * 1024 + 10);
    let req = json!({"id": 5, "request": {"put": {"collection": "t", "data": {"big": big}}}});
    write_frame(&mut s, req.to_string().as_bytes());
    let (id, code, msg) = expect_error(&mut s);
    assert_eq!((id, code.as_str()), (5, "too_large"), "{msg}");
    status_ok(&mut s, 6);
    by.check(&d);
}

#[test]
fn truncated_hello_gets_an_error() {
    let (d, mut by) = daemon_with_bystander();
    let mut s = connect(&d.socket);
    s.write_all(&100u32.to_be_bytes()).unwrap();
    s.write_all(br#"{"app":"#).unwrap();
    s.shutdown(std::net::Shutdown::Write).unwrap();
    let h = read_json(&mut s);
    assert_eq!(h["ok"], json!(false), "{h}");
    assert_eq!(h["error"]["code"], json!("bad_frame"), "{h}");
    by.check(&d);

    // Half a length prefix, then the client hangs up: no harm done.
    let mut s = connect(&d.socket);
    s.write_all(&[0, 0]).unwrap();
    drop(s);
    by.check(&d);
}

#[test]
fn truncated_request_frame_gets_an_error() {
    let (d, mut by) = daemon_with_bystander();
    let mut s = raw_hello(&d.socket);
    s.write_all(&100u32.to_be_bytes()).unwrap();
    s.write_all(br#"{"id":1,"req"#).unwrap();
    s.shutdown(std::net::Shutdown::Write).unwrap();
    let (id, code, msg) = expect_error(&mut s);
    assert_eq!((id, code.as_str()), (0, "bad_frame"), "{msg}");
    by.check(&d);
}

#[test]
fn connections_survive_an_abusive_neighbour() {
    // Many bad connections in a row, a good client working throughout.
    let (d, mut by) = daemon_with_bystander();
    for i in 0..20u32 {
        let mut s = connect(&d.socket);
        match i % 4 {
            0 => write_frame(&mut s, b"nonsense"),
            1 => s.write_all(&(MAX_FRAME + i).to_be_bytes()).unwrap(),
            2 => s.write_all(&[0, 0, 0]).unwrap(),
            _ => {
                write_frame(&mut s, br#"{"app":"t","protocol":1,"encoding":"json"}"#);
                s.write_all(&[0xde, 0xad, 0xbe, 0xef, 1, 2, 3]).unwrap();
            }
        }
        drop(s);
        by.check(&d);
    }
    let n = by.n;
    by.s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    status_ok(&mut by.s, n + 1);
}

#[test]
fn a_regular_file_at_the_socket_path_is_not_deleted() {
    let d = unstarted("");
    std::fs::write(&d.socket, b"precious").unwrap();
    let (st, err) = run_to_exit(&d.config);
    assert!(!st.success());
    assert!(err.contains("not a stale socket"), "{err}");
    assert_eq!(std::fs::read(&d.socket).unwrap(), b"precious");
}
