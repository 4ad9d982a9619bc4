//! Config reload as a long-running daemon's users expect it: a file written
//! in place in several steps (as nano or `cat > daemon.toml` write it) is
//! read once it has settled, never half-written; an empty file is refused
//! and the running config stays; a reload that changes the backend or a
//! conflict strategy says so in the log; a rejected edit is a health
//! problem of its own (`status --check` 16). Real daemon, real backend.

mod common;

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{eventually, Backend, Daemon};
use serde_json::Value;

fn daemon_on(b: &Backend) -> Daemon {
    let d = Daemon::start(&format!(
        "[backend]\nurl = {:?}\ntimeout_ms = 3000\n[sync]\nconflict = \"manual\"\nbackoff_initial_ms = 50\nbackoff_max_ms = 500\n[collections.notes]\nconflict = \"merge\"\n",
        b.url()
    ));
    eventually(30, "online", || d.status()["state"] == "online");
    d
}

fn reloads(d: &Daemon) -> usize {
    d.log_text().matches("config reloaded").count()
}

/// Polls status in the background until stopped; returns every status
/// whose backend was not the expected one.
struct Watcher {
    stop: Arc<AtomicBool>,
    handle: std::thread::JoinHandle<(usize, Vec<Value>)>,
}

impl Watcher {
    fn start(d: &Daemon, want: Value) -> Watcher {
        let stop = Arc::new(AtomicBool::new(false));
        let (bin, socket) = (d.bin.clone(), d.socket.clone());
        let flag = stop.clone();
        let handle = std::thread::spawn(move || {
            let (mut polls, mut bad) = (0, Vec::new());
            while !flag.load(Ordering::SeqCst) {
                let o = std::process::Command::new(&bin)
                    .arg("--socket")
                    .arg(&socket)
                    .args(["status", "--json"])
                    .output()
                    .expect("status");
                let st: Value = serde_json::from_slice(&o.stdout).unwrap_or(Value::Null);
                polls += 1;
                if st["backend"] != want {
                    bad.push(st);
                }
            }
            (polls, bad)
        });
        Watcher { stop, handle }
    }

    fn finish(self) -> (usize, Vec<Value>) {
        self.stop.store(true, Ordering::SeqCst);
        self.handle.join().expect("watcher thread")
    }
}

/// The file truncated and written again in two parts with a pause between
/// them: the backend is set at every moment, and the log never shows it
/// (or a conflict strategy) changed.
#[test]
fn file_written_in_place_in_parts_is_read_once_settled() {
    let b = Backend::start(&[]);
    let d = daemon_on(&b);
    let want = Value::String(b.url());
    let saved = std::fs::read(&d.config).unwrap();
    let before = reloads(&d);
    let w = Watcher::start(&d, want.clone());
    {
        let mut f = std::fs::File::create(&d.config).unwrap(); // truncates
        std::thread::sleep(Duration::from_millis(300));
        let half = saved.len() / 2;
        f.write_all(&saved[..half]).unwrap();
        f.flush().unwrap();
        std::thread::sleep(Duration::from_millis(300));
        f.write_all(&saved[half..]).unwrap();
    }
    eventually(30, "the settled file reloaded", || reloads(&d) > before);
    let (polls, bad) = w.finish();
    assert!(polls > 3, "status polled only {polls} times");
    assert!(bad.is_empty(), "backend not set at some moment: {bad:?}");
    let log = d.log_text();
    assert!(!log.contains("(none)"), "backend dropped:\n{log}");
    assert!(
        !log.contains("config reload changes"),
        "the reload changed something:\n{log}"
    );
    assert_eq!(d.status()["config_reload_error"], Value::Null);
}

/// An empty file is refused like an invalid one: the running config stays
/// (backend and strategies), status says the file is empty, health says
/// the edit was rejected, and a valid file clears it; writes sync again.
#[test]
fn empty_file_is_refused_and_the_backend_kept() {
    let b = Backend::start(&[]);
    let d = daemon_on(&b);
    let want = Value::String(b.url());
    let saved = std::fs::read(&d.config).unwrap();
    let w = Watcher::start(&d, want.clone());
    std::fs::File::create(&d.config).unwrap();
    eventually(30, "empty file refused", || {
        d.status()["config_reload_error"]
            .as_str()
            .is_some_and(|e| e.contains("empty"))
    });
    // Comments and blank lines are no config either.
    std::fs::write(&d.config, "# nothing here yet\n\n   \n").unwrap();
    eventually(30, "comment-only file refused", || {
        d.log_text().matches("the file is empty").count() >= 2
    });
    // Such a file names no socket: the CLI refuses to guess (the default
    // socket may be another daemon) and says to use --socket.
    let o = std::process::Command::new(&d.bin)
        .arg("--config")
        .arg(&d.config)
        .args(["status", "--check"])
        .env_remove("SYNCD_SOCKET")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains("empty") && err.contains("--socket"), "{err}");
    let (_, bad) = w.finish();
    assert!(bad.is_empty(), "backend not set at some moment: {bad:?}");
    let st = d.status();
    assert_eq!(st["backend"], want);
    assert!(st["hints"].to_string().contains("rejected"), "{st}");
    let o = d.cli(&["status", "--check"]);
    assert_eq!(o.status.code(), Some(16), "{o:?}");

    std::fs::write(&d.config, &saved).unwrap();
    eventually(30, "reload error cleared", || {
        d.status()["config_reload_error"].is_null()
    });
    assert_eq!(d.cli(&["status", "--check"]).status.code(), Some(0));
    d.ok(&[
        "put",
        "todos",
        "--id",
        "after",
        "{\"v\":1}",
        "--wait",
        "synced",
        "--timeout",
        "60",
    ]);
    assert_eq!(d.status()["queue_depth"], 0);
    assert!(!d.log_text().contains("config reload changes"));
}

/// A reload that drops the backend or changes a conflict strategy says so
/// in one warn line each, with the old and the new value.
#[test]
fn dropping_the_backend_or_a_strategy_is_a_warning() {
    let b = Backend::start(&[]);
    let d = daemon_on(&b);
    let before = reloads(&d);
    d.write_config("[sync]\nconflict = \"server-wins\"\n");
    d.signal(libc::SIGHUP);
    eventually(30, "reloaded", || reloads(&d) > before);
    let log = d.log_text();
    let line = |what: &str| {
        log.lines()
            .find(|l| l.contains(what))
            .unwrap_or_else(|| panic!("no {what:?} line in:\n{log}"))
            .to_owned()
    };
    let backend = line("config reload changes the backend");
    assert!(backend.contains("WARN"), "{backend}");
    assert!(
        backend.contains(&b.url()) && backend.contains("(none)"),
        "{backend}"
    );
    let strategies: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("config reload changes a conflict strategy"))
        .collect();
    assert!(
        strategies
            .iter()
            .any(|l| l.contains("manual") && l.contains("server-wins") && l.contains('*')),
        "{log}"
    );
    assert!(
        strategies
            .iter()
            .any(|l| l.contains("notes") && l.contains("merge") && l.contains("server-wins")),
        "{log}"
    );
    assert!(strategies.iter().all(|l| l.contains("WARN")), "{log}");
    assert_eq!(d.status()["backend"], Value::Null);
}

/// A person who checks status in a loop through `--config` (which reads the
/// file every time) does not hold back the reload of an edit: reads are
/// not writes.
#[test]
fn reads_of_the_file_do_not_hold_back_a_reload() {
    let b = Backend::start(&[]);
    let d = daemon_on(&b);
    let stop = Arc::new(AtomicBool::new(false));
    let (bin, cfg, flag) = (d.bin.clone(), d.config.clone(), stop.clone());
    let reader = std::thread::spawn(move || {
        while !flag.load(Ordering::SeqCst) {
            let _ = std::process::Command::new(&bin)
                .arg("--config")
                .arg(&cfg)
                .args(["status", "--json"])
                .env_remove("SYNCD_SOCKET")
                .output();
            std::thread::sleep(Duration::from_millis(100));
        }
    });
    let text = std::fs::read_to_string(&d.config).unwrap();
    std::fs::write(&d.config, text.replace("\"manual\"", "\"server-wins\"")).unwrap();
    eventually(60, "the edit reloaded while the file is being read", || {
        d.log_text()
            .contains("config reload changes a conflict strategy")
    });
    stop.store(true, Ordering::SeqCst);
    reader.join().unwrap();
}

/// An empty file is refused at start too, like an invalid one: running
/// on the defaults would drop the backend without a word.
#[test]
fn an_empty_file_is_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("daemon.toml");
    std::fs::write(&cfg, "\n# to be written\n").unwrap();
    let o = std::process::Command::new(common::bin())
        .args(["run", "--config"])
        .arg(&cfg)
        .env("XDG_RUNTIME_DIR", dir.path())
        .env("XDG_DATA_HOME", dir.path())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(
        err.contains("empty") && err.contains("daemon.toml"),
        "{err}"
    );
}
