//! Shared harness for integration tests: real `syncd` processes on temp
//! dirs and sockets, driven through the CLI.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_syncd"))
}

/// A daemon under test. Killed (SIGKILL) on drop if still running.
pub struct Daemon {
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
    pub socket: PathBuf,
    pub data_dir: PathBuf,
    pub child: Option<Child>,
    pub log: PathBuf,
}

impl Daemon {
    /// Writes `daemon.toml` (socket and data_dir filled in, `extra` appended)
    /// and starts the daemon; waits until the socket answers.
    pub fn start(extra: &str) -> Daemon {
        let dir = tempfile::tempdir().expect("tempdir");
        let socket = dir.path().join("syncd.sock");
        let data_dir = dir.path().join("data");
        let config = dir.path().join("daemon.toml");
        let log = dir.path().join("daemon.log");
        let mut d = Daemon { dir, config, socket, data_dir, child: None, log };
        d.write_config(extra);
        d.spawn();
        d
    }

    pub fn write_config(&self, extra: &str) {
        let (daemon_extra, rest) = split_daemon_section(extra);
        let text = format!(
            "[daemon]\nsocket = {:?}\ndata_dir = {:?}\nlog_level = \"debug\"\n{daemon_extra}\n{rest}\n",
            self.socket.display().to_string(),
            self.data_dir.display().to_string(),
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
        let child = Command::new(bin())
            .arg("run")
            .arg("--config")
            .arg(&self.config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn syncd");
        self.child = Some(child);
        self.wait_ready();
    }

    pub fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(20);
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
        Command::new(bin())
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
        serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("bad JSON from {args:?}: {e}: {out}"))
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
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill9();
    }
}

pub fn unsafe_kill(pid: u32, sig: i32) {
    let _ = Command::new("kill").arg(format!("-{sig}")).arg(pid.to_string()).status();
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
