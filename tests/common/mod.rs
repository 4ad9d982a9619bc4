//! Shared harness for integration tests and the benchmark harness
//! (`bench/harness.rs` includes this file): real `syncd` processes on temp
//! dirs and sockets, driven through the CLI.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Stdout then stderr of a finished command, as text.
pub fn output_text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Whether the tests run as root (tmpfs mounts, runuser).
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Mounts a tmpfs with `opts` on `dir`; `false` where that is not allowed.
pub fn mount_tmpfs(dir: &Path, opts: &str) -> bool {
    Command::new("mount")
        .args(["-t", "tmpfs", "-o", opts, "tmpfs"])
        .arg(dir)
        .status()
        .is_ok_and(|s| s.success())
}

/// Unmounts `dir` (best effort, for a test's drop).
pub fn umount(dir: &Path) {
    let _ = Command::new("umount").arg(dir).status();
}

/// The `syncd` binary cargo built for this profile.
pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_syncd"))
}

/// How a [`Daemon`] is set up. `Launch::default()` is what tests use; the
/// benchmark harness picks its own binary, a quieter log and a config
/// directory of its own.
#[derive(Clone, Debug)]
pub struct Launch {
    /// The `syncd` binary, for the daemon and for [`Daemon::cli`].
    pub bin: PathBuf,
    /// `[daemon] log_level`.
    pub log_level: &'static str,
    /// Prefix of the temp dir's name.
    pub prefix: &'static str,
    /// Put `daemon.toml` in `<dir>/cfg/` instead of `<dir>/`, so that the
    /// files written in `<dir>` (the daemon's log, say) never wake the
    /// daemon's config watcher.
    pub config_subdir: bool,
}

impl Default for Launch {
    fn default() -> Launch {
        Launch {
            bin: bin(),
            log_level: "debug",
            prefix: ".tmp",
            config_subdir: false,
        }
    }
}

/// A daemon under test. Killed (SIGKILL) on drop if still running.
pub struct Daemon {
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
    pub socket: PathBuf,
    pub data_dir: PathBuf,
    pub child: Option<Child>,
    pub log: PathBuf,
    /// The binary `spawn` and `cli` run.
    pub bin: PathBuf,
    /// `[daemon] log_level` written by `write_config`.
    pub log_level: &'static str,
}

impl Daemon {
    /// Writes `daemon.toml` (socket and data_dir filled in, `extra` appended)
    /// and starts the daemon; waits until the socket answers.
    pub fn start(extra: &str) -> Daemon {
        Daemon::start_with(&Launch::default(), extra)
    }

    /// [`Daemon::start`] set up by `launch`.
    pub fn start_with(launch: &Launch, extra: &str) -> Daemon {
        let dir = tempfile::Builder::new()
            .prefix(launch.prefix)
            .tempdir()
            .expect("tempdir");
        let socket = dir.path().join("syncd.sock");
        let data_dir = dir.path().join("data");
        let config = if launch.config_subdir {
            let cfg_dir = dir.path().join("cfg");
            std::fs::create_dir_all(&cfg_dir).expect("config dir");
            cfg_dir.join("daemon.toml")
        } else {
            dir.path().join("daemon.toml")
        };
        let log = dir.path().join("daemon.log");
        let mut d = Daemon {
            dir,
            config,
            socket,
            data_dir,
            child: None,
            log,
            bin: launch.bin.clone(),
            log_level: launch.log_level,
        };
        d.write_config(extra);
        d.spawn();
        d
    }

    pub fn write_config(&self, extra: &str) {
        let (daemon_extra, rest) = split_daemon_section(extra);
        let text = format!(
            "[daemon]\nsocket = {:?}\ndata_dir = {:?}\nlog_level = {:?}\n{daemon_extra}\n{rest}\n",
            self.socket.display().to_string(),
            self.data_dir.display().to_string(),
            self.log_level,
        );
        std::fs::write(&self.config, text).expect("write config");
    }

    /// Starts the process (again) on the same dirs.
    pub fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("log file");
        let child = Command::new(&self.bin)
            .arg("run")
            .arg("--config")
            .arg(&self.config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", self.bin.display()));
        self.child = Some(child);
        self.wait_ready();
    }

    pub fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Some(c) = self.child.as_mut() {
                if let Ok(Some(st)) = c.try_wait() {
                    panic!("syncd exited early ({st}); log:\n{}", self.log_text());
                }
            }
            if self.socket.exists() && self.cli(&["status", "--json"]).status.success() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("syncd did not become ready; log:\n{}", self.log_text());
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Runs a CLI command against this daemon.
    pub fn cli(&self, args: &[&str]) -> Output {
        Command::new(&self.bin)
            .arg("--socket")
            .arg(&self.socket)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run syncd cli")
    }

    /// Runs a CLI command that must succeed; returns its stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let o = self.cli(args);
        assert!(
            o.status.success(),
            "syncd {args:?} failed ({}): {}{}",
            o.status,
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    pub fn json(&self, args: &[&str]) -> serde_json::Value {
        let out = self.ok(args);
        serde_json::from_str(out.trim())
            .unwrap_or_else(|e| panic!("bad JSON from {args:?}: {e}: {out}"))
    }

    pub fn json_lines(&self, args: &[&str]) -> Vec<serde_json::Value> {
        self.ok(args)
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad JSON line {l}: {e}")))
            .collect()
    }

    pub fn status(&self) -> serde_json::Value {
        self.json(&["status", "--json"])
    }

    /// `syncd scopes --json`, by scope name.
    pub fn scopes(&self) -> std::collections::BTreeMap<String, serde_json::Value> {
        self.json_lines(&["scopes", "--json"])
            .into_iter()
            .map(|v| (v["name"].as_str().unwrap_or_default().to_owned(), v))
            .collect()
    }

    /// Whether `get COLLECTION ID` finds the record.
    pub fn has(&self, collection: &str, id: &str) -> bool {
        self.cli(&["get", collection, id]).status.success()
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM and wait; returns the exit status and how long it took.
    pub fn terminate(&mut self) -> (std::process::ExitStatus, Duration) {
        let mut c = self.child.take().expect("running");
        let t = Instant::now();
        unsafe_kill(c.id(), 15);
        let st = c.wait().expect("wait");
        (st, t.elapsed())
    }

    pub fn signal(&self, sig: i32) {
        unsafe_kill(self.pid(), sig);
    }

    /// SIGTERM, then wait; SIGKILL if it has not exited within 10 s.
    pub fn stop(&mut self) {
        let Some(mut c) = self.child.take() else {
            return;
        };
        unsafe_kill(c.id(), 15);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = c.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        eprintln!("syncd did not stop within 10 s of SIGTERM; killing it");
        let _ = c.kill();
        let _ = c.wait();
    }

    /// [`Daemon::stop`], then [`Daemon::spawn`] on the same dirs.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill9();
    }
}

pub fn unsafe_kill(pid: u32, sig: i32) {
    let _ = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status();
}

/// Lets tests pass extra `[daemon]` keys: lines before the first table
/// header in `extra` go into the `[daemon]` section.
fn split_daemon_section(extra: &str) -> (String, String) {
    let mut daemon = String::new();
    let mut rest = String::new();
    let mut in_rest = false;
    for line in extra.lines() {
        if line.trim_start().starts_with('[') {
            in_rest = true;
        }
        if in_rest {
            rest.push_str(line);
            rest.push('\n');
        } else {
            daemon.push_str(line);
            daemon.push('\n');
        }
    }
    (daemon, rest)
}

/// Polls `f` until it returns true or `secs` pass.
pub fn eventually(secs: u64, what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < deadline {
        if f() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("timed out after {secs}s waiting for: {what}");
}

pub fn path_str(p: &Path) -> String {
    p.display().to_string()
}

/// A reference backend (`syncd backend`) on 127.0.0.1 with a free port.
pub struct Backend {
    pub dir: tempfile::TempDir,
    pub addr: String,
    pub child: Option<Child>,
    pub args: Vec<String>,
}

impl Backend {
    /// Starts `syncd backend --listen 127.0.0.1:0 --data DIR` plus `extra`
    /// flags (e.g. `["--token", "t", "--fail-503", "0.5"]`).
    pub fn start(extra: &[&str]) -> Backend {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut b = Backend {
            dir,
            addr: String::new(),
            child: None,
            args: extra.iter().map(|s| s.to_string()).collect(),
        };
        b.spawn_on("127.0.0.1:0");
        b
    }

    /// (Re)starts on `listen` with the same data dir and flags.
    pub fn spawn_on(&mut self, listen: &str) {
        use std::io::BufRead;
        let mut child = Command::new(bin())
            .arg("backend")
            .arg("--listen")
            .arg(listen)
            .arg("--data")
            .arg(self.dir.path().join("data"))
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn backend");
        let stdout = child.stdout.take().expect("stdout");
        let mut line = String::new();
        std::io::BufReader::new(stdout)
            .read_line(&mut line)
            .expect("read backend stdout");
        let addr = line
            .trim()
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("unexpected backend output {line:?}"))
            .to_owned();
        self.addr = addr;
        self.child = Some(child);
    }

    pub fn url(&self) -> String {
        format!("http://{}/", self.addr)
    }

    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Restarts on the same address (for "backend comes back" tests).
    pub fn restart(&mut self) {
        self.stop();
        let addr = self.addr.clone();
        // The port may linger briefly; retry for a while.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.spawn_on(&addr)));
            if r.is_ok() || Instant::now() > deadline {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// GET a path on the backend; returns (status, body).
    pub fn get(&self, path: &str) -> (u16, serde_json::Value) {
        http(&self.addr, "GET", path, None)
    }

    /// Every change in the log, following the cursor.
    pub fn all_changes(&self) -> Vec<serde_json::Value> {
        all_changes_at(&self.addr)
    }

    /// The latest state of every server record: (collection, id) -> record.
    pub fn records(&self) -> std::collections::BTreeMap<(String, String), serde_json::Value> {
        let mut m = std::collections::BTreeMap::new();
        for ch in self.all_changes() {
            let c = ch["collection"].as_str().unwrap_or_default().to_owned();
            let id = ch["record"]["id"].as_str().unwrap_or_default().to_owned();
            m.insert((c, id), ch["record"].clone());
        }
        m
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A minimal HTTP/1.1 request with `Connection: close`; returns status and
/// the JSON body (Null if empty or not JSON).
/// Every change in the log of the backend at `addr` (token mode), following
/// the cursor.
pub fn all_changes_at(addr: &str) -> Vec<serde_json::Value> {
    let mut out = Vec::new();
    let mut since = String::new();
    loop {
        let path = if since.is_empty() {
            "/v1/changes?limit=1000".to_string()
        } else {
            format!("/v1/changes?limit=1000&since={since}")
        };
        let (st, body) = http(addr, "GET", &path, None);
        assert_eq!(st, 200, "changes: {body}");
        let changes = body["changes"].as_array().cloned().unwrap_or_default();
        out.extend(changes);
        since = body["cursor"].as_str().unwrap_or_default().to_owned();
        if !body["more"].as_bool().unwrap_or(false) {
            return out;
        }
    }
}

pub fn http(addr: &str, method: &str, path: &str, body: Option<&str>) -> (u16, serde_json::Value) {
    http_bearer(addr, None, method, path, body)
}

/// [`http`] with `Authorization: Bearer TOKEN` when `token` is given.
pub fn http_bearer(
    addr: &str,
    token: Option<&str>,
    method: &str,
    path: &str,
    body: Option<&str>,
) -> (u16, serde_json::Value) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).expect("connect backend");
    s.set_read_timeout(Some(Duration::from_secs(30))).ok();
    let body = body.unwrap_or("");
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).expect("write");
    let mut resp = Vec::new();
    let _ = s.read_to_end(&mut resp);
    let text = String::from_utf8_lossy(&resp).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text.split_once("\r\n\r\n").map(|x| x.1).unwrap_or("");
    let json = serde_json::from_str(body).unwrap_or(serde_json::Value::Null);
    (status, json)
}
