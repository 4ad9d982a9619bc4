//! A PouchDB app for the coexistence tests: `node tests/pouch_app.js URL`
//! (a local in-memory PouchDB with a live two-way sync to the CouchDB
//! database at URL), driven over its stdin/stdout JSON-line protocol (the
//! commands are listed at the top of tests/pouch_app.js). Uses the
//! PouchDB packages of pouchdb-server's install ([`super::npm_dir`]); skips
//! (`None`, with a printed note) when node or that install is missing.
//! The process is killed on drop.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::Mutex;
use std::time::Duration;

use serde_json::{json, Value};

/// How long one answer may take before the app counts as hung. Only a hang
/// detector: `settle` bounds its own wait (below) well inside it.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(120);
/// How long `settle` waits for the two sides to be in step.
const SETTLE_TIMEOUT_MS: u64 = 60_000;

/// The app's script.
pub fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/pouch_app.js")
}

struct Io {
    stdin: ChildStdin,
    lines: Receiver<String>,
    seq: u64,
}

/// A running PouchDB app process.
pub struct PouchApp {
    child: Child,
    io: Mutex<Io>,
    stderr_path: PathBuf,
    _dir: tempfile::TempDir,
}

/// A command the app refused: its `status`, `error` and `reason`.
#[derive(Debug, Clone)]
pub struct AppError {
    pub status: u64,
    pub error: String,
    pub reason: String,
}

impl PouchApp {
    /// Starts the app syncing live with the database at `url` and waits
    /// until it is ready; `None` (with a printed note) when node or
    /// pouchdb-server's PouchDB packages are missing.
    pub fn start(url: &str) -> Option<PouchApp> {
        let modules = super::npm_dir().join("node_modules");
        if !modules.join("pouchdb-core").exists() {
            eprintln!(
                "SKIPPED: the PouchDB app needs pouchdb-server's install in {} \
                 (`Couch::start` makes it)",
                modules.display()
            );
            return None;
        }
        let node_ok = Command::new("node")
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !node_ok {
            eprintln!("SKIPPED: the PouchDB app needs node (`.ci/run` installs it)");
            return None;
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let stderr_path = dir.path().join("pouch_app.stderr");
        let stderr = std::fs::File::create(&stderr_path).expect("stderr file");
        let mut child = Command::new("node")
            .arg(script())
            .arg(url)
            .env("NODE_PATH", &modules)
            .current_dir(dir.path())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(stderr))
            .spawn()
            .expect("start node tests/pouch_app.js");
        let stdin = child.stdin.take().expect("stdin");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let app = PouchApp {
            child,
            io: Mutex::new(Io {
                stdin,
                lines,
                seq: 0,
            }),
            stderr_path,
            _dir: dir,
        };
        let ready = app.read_line(&mut app.io.lock().expect("lock"));
        assert_eq!(
            ready["ready"],
            json!(true),
            "pouch app did not start: {ready}\n{}",
            app.stderr()
        );
        Some(app)
    }

    /// What the app wrote on stderr (its sync events), for messages.
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    /// The next line from the app as JSON; panics when it exits, hangs or
    /// writes something else.
    fn read_line(&self, io: &mut Io) -> Value {
        match io.lines.recv_timeout(ANSWER_TIMEOUT) {
            Ok(line) => serde_json::from_str(&line).unwrap_or_else(|e| {
                panic!(
                    "pouch app wrote a line that is not JSON ({e}): {line}\n{}",
                    self.stderr()
                )
            }),
            Err(RecvTimeoutError::Timeout) => panic!(
                "pouch app gave no answer within {ANSWER_TIMEOUT:?}\n{}",
                self.stderr()
            ),
            Err(RecvTimeoutError::Disconnected) => {
                panic!("pouch app exited\n{}", self.stderr())
            }
        }
    }

    /// Sends one command (an object with `cmd`) and returns the answer:
    /// `Ok` with its fields, or the app's error.
    pub fn call(&self, mut cmd: Value) -> Result<Value, AppError> {
        let mut io = self.io.lock().expect("lock");
        io.seq += 1;
        let seq = io.seq;
        cmd["seq"] = json!(seq);
        let sent = writeln!(io.stdin, "{cmd}").and_then(|()| io.stdin.flush());
        if let Err(e) = sent {
            panic!("pouch app: cannot send {cmd}: {e}\n{}", self.stderr());
        }
        let answer = self.read_line(&mut io);
        assert_eq!(
            answer["seq"],
            json!(seq),
            "pouch app answered another command than {cmd}: {answer}\n{}",
            self.stderr()
        );
        if answer["ok"] == json!(true) {
            Ok(answer)
        } else {
            Err(AppError {
                status: answer["status"].as_u64().unwrap_or(0),
                error: answer["error"].as_str().unwrap_or_default().to_owned(),
                reason: answer["reason"].as_str().unwrap_or_default().to_owned(),
            })
        }
    }

    /// [`PouchApp::call`] that must succeed.
    fn ok(&self, cmd: Value) -> Value {
        let what = cmd.to_string();
        self.call(cmd)
            .unwrap_or_else(|e| panic!("pouch app refused {what}: {e:?}\n{}", self.stderr()))
    }

    /// The winning revision of `id` in the app's database, with
    /// `_conflicts` when it has any; `None` when missing or deleted.
    pub fn get(&self, id: &str) -> Option<Value> {
        match self.call(json!({"cmd": "get", "id": id})) {
            Ok(a) => Some(a["doc"].clone()),
            Err(e) if e.status == 404 => None,
            Err(e) => panic!("pouch app get {id}: {e:?}\n{}", self.stderr()),
        }
    }

    /// Every leaf revision of `id` (open_revs=all: `{"ok": doc}` each,
    /// tombstones included).
    pub fn leaves(&self, id: &str) -> Vec<Value> {
        let a = self.ok(json!({"cmd": "leaves", "id": id}));
        a["leaves"].as_array().cloned().unwrap_or_default()
    }

    /// Writes `doc` as given (`_id`, and `_rev` for an update); returns the
    /// new revision.
    pub fn put(&self, doc: Value) -> String {
        self.try_put(doc)
            .unwrap_or_else(|e| panic!("pouch app put: {e:?}\n{}", self.stderr()))
    }

    /// [`PouchApp::put`] that returns the app's refusal (a `409`, say).
    pub fn try_put(&self, doc: Value) -> Result<String, AppError> {
        self.call(json!({"cmd": "put", "doc": doc}))
            .map(|a| a["rev"].as_str().unwrap_or_default().to_owned())
    }

    /// Deletes the current winner of `id`; returns the tombstone's revision.
    pub fn delete(&self, id: &str) -> String {
        let a = self.ok(json!({"cmd": "delete", "id": id}));
        a["rev"].as_str().unwrap_or_default().to_owned()
    }

    /// Every live document of the app's database.
    pub fn all(&self) -> Vec<Value> {
        let a = self.ok(json!({"cmd": "all"}));
        a["docs"].as_array().cloned().unwrap_or_default()
    }

    /// Stops the live sync (and waits until it has stopped).
    pub fn offline(&self) {
        self.ok(json!({"cmd": "offline"}));
    }

    /// Starts the live sync again.
    pub fn online(&self) {
        self.ok(json!({"cmd": "online"}));
    }

    /// Waits until the app's database and CouchDB hold the same leaf
    /// revisions of every document (panics after a minute, or offline).
    pub fn settle(&self) {
        self.ok(json!({"cmd": "settle", "timeout_ms": SETTLE_TIMEOUT_MS}));
    }

    /// The sync's state: `online`, `sync_state`, `last_error`.
    pub fn status(&self) -> Value {
        self.ok(json!({"cmd": "status"}))
    }

    /// Stops the sync and ends the process.
    pub fn quit(mut self) {
        self.ok(json!({"cmd": "quit"}));
        let _ = self.child.wait();
    }
}

impl Drop for PouchApp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
