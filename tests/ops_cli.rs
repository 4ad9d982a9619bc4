//! The CLI fixes of the operability issue: `sync --wait --timeout` (exit 4,
//! distinct from a daemon error), `watch` timestamps and `--reconnect`
//! across a daemon restart, and a permission-denied socket that does not
//! advise starting the daemon. (Hints, `--check` and `--config` on a
//! rejected file are in tests/ops_status.rs.)

mod common;

use std::io::BufRead;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::{bin, Daemon};
use serde_json::Value;

#[test]
fn sync_wait_timeout_exits_4_and_keeps_the_queue() {
    let d = Daemon::start("[backend]\nurl = \"http://127.0.0.1:9/\"\n");
    d.ok(&["put", "todos", "{}"]);
    let t = Instant::now();
    let o = d.cli(&["sync", "--wait", "--timeout", "1"]);
    assert_eq!(o.status.code(), Some(4), "{o:?}");
    // Generous bound: it must not wait for the 60 s outage patience.
    assert!(t.elapsed() < Duration::from_secs(20), "{:?}", t.elapsed());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("1 op(s) still queued"), "{err}");
    assert_eq!(d.status()["queue_depth"], 1);
    // --timeout needs --wait; a bad number is a usage error.
    assert_eq!(d.cli(&["sync", "--timeout", "1"]).status.code(), Some(2));
    let bad = d.cli(&["sync", "--wait", "--timeout", "-1"]);
    assert_eq!(bad.status.code(), Some(2), "{bad:?}");
}

/// `--timeout 0` ends the wait while its first status request is in
/// flight: the count printed must still be the real one (it read the
/// abandoned request's reply on the same connection, failed, and said 0).
#[test]
fn sync_wait_timeout_cut_mid_request_reports_the_real_queue() {
    let d = Daemon::start("[backend]\nurl = \"http://127.0.0.1:9/\"\n");
    d.ok(&["put", "todos", "{}"]);
    let o = d.cli(&["sync", "--wait", "--timeout", "0"]);
    assert_eq!(o.status.code(), Some(4), "{o:?}");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("1 op(s) still queued"), "{err}");
}

#[test]
fn sync_wait_timeout_is_not_hit_when_drained() {
    let d = Daemon::start("");
    d.ok(&["sync", "--wait", "--timeout", "5"]);
}

/// Lines of a spawned `syncd watch`, as they come.
fn watch(d: &Daemon, extra: &[&str]) -> (std::process::Child, mpsc::Receiver<String>) {
    let mut child = Command::new(bin())
        .arg("--socket")
        .arg(&d.socket)
        .arg("watch")
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let out = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(out).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    (child, rx)
}

/// Writes into `coll` until the watcher prints a `changed` event for it.
fn next_change(d: &Daemon, rx: &mpsc::Receiver<String>, coll: &str) -> Value {
    for _ in 0..100 {
        d.ok(&["put", coll, "{}"]);
        while let Ok(l) = rx.recv_timeout(Duration::from_millis(200)) {
            let v: Value = serde_json::from_str(&l).unwrap_or_else(|e| panic!("{l}: {e}"));
            if v["changed"]["collection"] == coll {
                return v;
            }
        }
    }
    panic!("no event for {coll}");
}

#[test]
fn watch_stamps_events_and_reconnects_after_a_restart() {
    let mut d = Daemon::start("");
    let (mut child, rx) = watch(&d, &["--reconnect"]);
    let v = next_change(&d, &rx, "before");
    let at = v["at"].as_str().unwrap_or_else(|| panic!("no at: {v}"));
    assert!(humantime::parse_rfc3339(at).is_ok(), "{at}");

    d.restart();
    let v = next_change(&d, &rx, "after");
    assert!(v["at"].is_string(), "{v}");
    assert!(child.try_wait().unwrap().is_none(), "watch exited");
    let _ = child.kill();
    let _ = child.wait();

    // Without --reconnect a restart ends the watch with an error.
    let (mut plain, rx) = watch(&d, &[]);
    next_change(&d, &rx, "plain");
    d.stop();
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(s) = plain.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "watch still running");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_ne!(status.code(), Some(0));
}

#[test]
fn permission_denied_does_not_suggest_starting_the_daemon() {
    let d = Daemon::start("");
    // SAFETY: getuid has no preconditions.
    let root = unsafe { libc::getuid() } == 0;
    let mut cmd = if root {
        // Root passes every file permission check: ask as nobody.
        let mut c = Command::new("setpriv");
        c.args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(bin());
        c
    } else {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&d.socket, std::fs::Permissions::from_mode(0o000)).unwrap();
        Command::new(bin())
    };
    let o = match cmd.arg("--socket").arg(&d.socket).arg("status").output() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("SKIPPED: cannot run as another user here: {e}");
            return;
        }
    };
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(3), "{err}");
    assert!(
        err.contains("Permission denied") || err.contains("permission denied"),
        "{err}"
    );
    assert!(!err.contains("syncd run"), "{err}");
    assert!(err.contains("does not let this user in"), "{err}");
}
