//! Trust on the local socket, tested across real users: the daemon admits
//! only its own uid, root and (with a group `socket_mode`) members of the
//! socket's group, supplementary groups included; the socket directory,
//! data dir and store file are private; the CLI refuses a daemon of an
//! unexpected uid before sending anything; credentials in `backend.url`
//! never show. Cross-user tests need root (`runuser -u nobody`); without
//! it they print a note and pass.

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{bin, is_root, output_text, Daemon};

fn skip(what: &str) -> bool {
    if !is_root() {
        println!("note: skipping {what}: needs root (runuser -u nobody)");
        return true;
    }
    false
}

const NOBODY: u32 = 65534;

fn chmod(p: &Path, mode: u32) {
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// `syncd --socket S ARGS` run as nobody, with `extra` runuser flags.
fn cli_as_nobody(socket: &Path, runuser: &[&str], args: &[&str]) -> Output {
    Command::new("runuser")
        .args(runuser)
        .args(["-u", "nobody", "--"])
        .arg(bin())
        .arg("--socket")
        .arg(socket)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("runuser")
}

/// A daemon whose temp dir nobody may traverse (0711), socket made 0666 by
/// hand so the kernel lets nobody connect and only the daemon's own check
/// decides.
fn open_to_kernel(extra: &str) -> Daemon {
    let d = Daemon::start(extra);
    chmod(d.dir.path(), 0o711);
    chmod(&d.socket, 0o666);
    d
}

#[test]
fn other_uid_is_refused_by_the_daemon_itself() {
    if skip("other_uid_is_refused_by_the_daemon_itself") {
        return;
    }
    let d = open_to_kernel("");
    let o = cli_as_nobody(&d.socket, &[], &["put", "todos", r#"{"a":1}"#]);
    assert_eq!(o.status.code(), Some(1), "{}", output_text(&o));
    assert!(
        output_text(&o).contains("uid 65534 may not use"),
        "{}",
        output_text(&o)
    );
    assert_eq!(d.status()["queue_depth"], 0);
}

#[test]
fn group_mode_admits_only_members_counting_supplementary_groups() {
    if skip("group_mode_admits_only_members_counting_supplementary_groups") {
        return;
    }
    let d = open_to_kernel("socket_mode = \"0660\"");
    let gid = std::fs::metadata(&d.socket).unwrap().gid();
    let entry = Command::new("getent")
        .args(["group", &gid.to_string()])
        .output()
        .unwrap();
    let entry = String::from_utf8_lossy(&entry.stdout).into_owned();
    let group = entry.split(':').next().unwrap_or_default().to_owned();
    assert!(!group.is_empty(), "no name for group {gid}");
    // Not a member: refused, nothing written.
    let o = cli_as_nobody(&d.socket, &[], &["put", "todos", r#"{"a":1}"#]);
    assert_eq!(o.status.code(), Some(1), "{}", output_text(&o));
    assert!(
        output_text(&o).contains("not a member of group"),
        "{}",
        output_text(&o)
    );
    assert_eq!(d.status()["queue_depth"], 0);
    // A supplementary member: admitted.
    let o = cli_as_nobody(&d.socket, &["-G", &group], &["put", "todos", r#"{"a":2}"#]);
    assert!(o.status.success(), "{}", output_text(&o));
    // Primary group: admitted.
    let o = cli_as_nobody(&d.socket, &["-g", &group], &["put", "todos", r#"{"a":3}"#]);
    assert!(o.status.success(), "{}", output_text(&o));
    assert_eq!(d.status()["queue_depth"], 2);
}

#[test]
fn world_socket_mode_stops_startup_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("daemon.toml");
    std::fs::write(
        &cfg,
        format!(
            "[daemon]\nsocket = {:?}\ndata_dir = {:?}\nsocket_mode = \"0666\"\n",
            dir.path().join("s.sock"),
            dir.path().join("data")
        ),
    )
    .unwrap();
    let o = Command::new(bin())
        .args(["run", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2), "{}", output_text(&o));
    assert!(
        output_text(&o).contains("daemon.socket_mode"),
        "{}",
        output_text(&o)
    );
}

/// Starts `sh -c "PREFIX syncd run --config CFG"` (PREFIX ends in `exec`
/// or a command that runs the rest) and returns once it exited or its
/// socket file appeared.
fn start_raw(prefix: &str, cfg: &Path, socket: &Path, log: &Path) -> std::process::Child {
    let cmd = format!(
        "{prefix} '{}' run --config '{}' 2>>'{}'",
        bin().display(),
        cfg.display(),
        log.display()
    );
    let mut child = Command::new("sh")
        .args(["-c", &cmd])
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return child;
        }
        if socket.exists() {
            return child;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
    panic!("daemon neither started nor exited");
}

fn stop(mut c: std::process::Child) {
    common::unsafe_kill(c.id(), 15);
    let _ = c.wait();
}

#[test]
fn dirs_and_store_are_private_whatever_the_umask() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("run/deep/syncd.sock");
    let data = dir.path().join("state/syncd");
    let cfg = dir.path().join("daemon.toml");
    let log = dir.path().join("log");
    std::fs::write(
        &cfg,
        format!("[daemon]\nsocket = {socket:?}\ndata_dir = {data:?}\n"),
    )
    .unwrap();
    let child = start_raw("umask 000; exec", &cfg, &socket, &log);
    let mode = |p: &Path| std::fs::metadata(p).unwrap().mode() & 0o777;
    let log_text = || std::fs::read_to_string(&log).unwrap_or_default();
    assert!(socket.exists(), "{}", log_text());
    assert_eq!(mode(socket.parent().unwrap()), 0o700, "socket dir");
    assert_eq!(mode(&dir.path().join("run")), 0o700, "socket dir parent");
    assert_eq!(mode(&data), 0o700, "data_dir");
    assert_eq!(mode(&data.join("syncd.redb")), 0o600, "store file");
    assert_eq!(mode(&data.join("syncd.lock")), 0o600, "lock file");
    assert_eq!(mode(&socket), 0o600, "socket");
    stop(child);
}

/// The daemon refuses a socket directory it cannot trust, naming it.
#[test]
fn untrusted_socket_directory_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut cases: Vec<(std::path::PathBuf, &str)> = Vec::new();
    let open = dir.path().join("open");
    std::fs::create_dir(&open).unwrap();
    chmod(&open, 0o1777);
    cases.push((open, "write into it"));
    let group_w = dir.path().join("groupw");
    std::fs::create_dir(&group_w).unwrap();
    chmod(&group_w, 0o770);
    cases.push((group_w, "write into it"));
    let link = dir.path().join("link");
    let target = dir.path().join("target");
    std::fs::create_dir(&target).unwrap();
    chmod(&target, 0o700);
    std::os::unix::fs::symlink(&target, &link).unwrap();
    cases.push((link, "symbolic link"));
    if is_root() {
        let theirs = dir.path().join("theirs");
        std::fs::create_dir(&theirs).unwrap();
        chmod(&theirs, 0o700);
        std::os::unix::fs::chown(&theirs, Some(NOBODY), Some(NOBODY)).unwrap();
        cases.push((theirs, "owned by uid 65534"));
    } else {
        println!("note: not root: the foreign-owner case is left to the unit test");
    }
    for (sock_dir, why) in cases {
        let cfg = dir.path().join("daemon.toml");
        let socket = sock_dir.join("syncd.sock");
        std::fs::write(
            &cfg,
            format!("[daemon]\nsocket = {socket:?}\ndata_dir = {data:?}\n"),
        )
        .unwrap();
        let o = Command::new(bin())
            .args(["run", "--config"])
            .arg(&cfg)
            .output()
            .unwrap();
        let t = output_text(&o);
        assert!(!o.status.success(), "{}: started: {t}", sock_dir.display());
        assert!(
            t.contains(&sock_dir.display().to_string()) && t.contains(why),
            "{why}: {t}"
        );
        assert!(!socket.exists());
    }
}

/// The CLI checks who listens before it sends anything.
#[test]
fn cli_refuses_a_daemon_of_another_uid() {
    if skip("cli_refuses_a_daemon_of_another_uid") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    chmod(dir.path(), 0o711);
    let own = dir.path().join("nobody");
    std::fs::create_dir(&own).unwrap();
    std::os::unix::fs::chown(&own, Some(NOBODY), Some(NOBODY)).unwrap();
    chmod(&own, 0o711);
    let socket = own.join("run/syncd.sock");
    let cfg = dir.path().join("daemon.toml");
    std::fs::write(
        &cfg,
        format!(
            "[daemon]\nsocket = {socket:?}\ndata_dir = {:?}\nlog_level = \"debug\"\n",
            own.join("data")
        ),
    )
    .unwrap();
    chmod(&cfg, 0o644);
    let log = dir.path().join("log");
    let child = start_raw("exec runuser -u nobody --", &cfg, &socket, &log);
    // The socket dir is nobody's 0700 and the socket 0600: root gets in.
    let deadline = Instant::now() + Duration::from_secs(30);
    let ask = |extra: &[&str]| {
        Command::new(bin())
            .arg("--socket")
            .arg(&socket)
            .args(extra)
            .arg("status")
            .env_remove("SYNCD_DAEMON_USER")
            .output()
            .unwrap()
    };
    while !ask(&["--daemon-user", "nobody"]).status.success() {
        assert!(Instant::now() < deadline, "daemon as nobody did not answer");
        std::thread::sleep(Duration::from_millis(50));
    }
    let before = std::fs::read_to_string(&log).unwrap_or_default();
    let o = ask(&[]);
    assert_eq!(o.status.code(), Some(1), "{}", output_text(&o));
    let t = output_text(&o);
    assert!(
        t.contains("uid 65534") && t.contains("nothing was sent"),
        "{t}"
    );
    std::thread::sleep(Duration::from_millis(200));
    let after = std::fs::read_to_string(&log).unwrap_or_default();
    let new = &after[before.len()..];
    assert!(!new.contains("client connected"), "hello was sent: {new}");
    let o = ask(&["--daemon-user", "65534"]);
    assert!(o.status.success(), "{}", output_text(&o));
    stop(child);
}

#[test]
fn backend_credentials_never_show() {
    let url = "http://user:sekrit@127.0.0.1:9/sync/?token=t0k&access_token=a1c&key=k3y&x=1";
    let mut d = Daemon::start(&format!(
        "[backend]\nurl = {url:?}\ntimeout_ms = 200\n[sync]\nbackoff_initial_ms = 50\nbackoff_max_ms = 100\n"
    ));
    d.ok(&["put", "todos", r#"{"a":1}"#]);
    let _ = d.cli(&["sync"]);
    std::thread::sleep(Duration::from_millis(800));
    let st = d.status();
    let shown = st["backend"].as_str().unwrap_or_default().to_owned();
    assert_eq!(
        shown,
        "http://***@127.0.0.1:9/sync/?token=***&access_token=***&key=***&x=1"
    );
    // Reload with another secret URL: the worker logs the change.
    d.write_config(
        "[backend]\nurl = \"http://u2:pw2sekrit@127.0.0.1:9/?token=t0k\"\ntimeout_ms = 200\n",
    );
    d.signal(1);
    std::thread::sleep(Duration::from_millis(800));
    let human = d.ok(&["status"]);
    d.stop();
    let all = format!("{}{}{}", d.log_text(), st, human);
    for secret in ["sekrit", "t0k", "a1c", "k3y"] {
        assert!(!all.contains(secret), "{secret} leaked:\n{all}");
    }
}
