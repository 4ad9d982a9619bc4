//! The PouchDB baseline of `couch`: `bench/pouch_replicate.js` under node,
//! with the modules of pouchdb-server's npm install (no install of its
//! own), one process per run on a fresh leveldb db in a temp dir. The
//! script times the replication itself and prints it as JSON.

use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

use serde_json::Value;

use crate::common_couch::npm_dir;

const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/bench/pouch_replicate.js");
/// What the script requires.
const MODULES: [&str; 4] = [
    "pouchdb-core",
    "pouchdb-adapter-leveldb",
    "pouchdb-adapter-http",
    "pouchdb-replication",
];

/// node with PouchDB's modules.
pub(crate) struct Pouch {
    node_path: PathBuf,
}

/// One replication, as the script measured it.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct PouchRun {
    /// Documents on the receiving side after it.
    pub(crate) docs: u64,
    pub(crate) secs: f64,
    /// The node process's CPU over the replication.
    pub(crate) cpu_secs: f64,
}

impl Pouch {
    /// node, if it runs and loads every module the script needs (leveldown
    /// included, whose native build must fit this machine).
    pub(crate) fn find() -> Result<Pouch, String> {
        let node_path = npm_dir().join("node_modules");
        let requires: Vec<String> = MODULES.iter().map(|m| format!("require({m:?});")).collect();
        let out = Command::new("node")
            .arg("-e")
            .arg(requires.concat())
            .env("NODE_PATH", &node_path)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("cannot run node: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "node cannot load PouchDB from {}: {}",
                node_path.display(),
                error_line(&out.stderr)
            ));
        }
        Ok(Pouch { node_path })
    }

    /// `n` documents put into a fresh local db, then `replicate.to(url)`.
    pub(crate) fn push(&self, url: &str, n: u64) -> PouchRun {
        self.run("push", &[url, &n.to_string()])
    }

    /// `replicate.from(url)` into a fresh local db.
    pub(crate) fn pull(&self, url: &str) -> PouchRun {
        self.run("pull", &[url])
    }

    fn run(&self, op: &str, args: &[&str]) -> PouchRun {
        let dir = tempfile::Builder::new()
            .prefix("syncd-bench.")
            .tempdir()
            .expect("tempdir");
        let out = Command::new("node")
            .arg(SCRIPT)
            .arg(op)
            .arg(dir.path().join("db"))
            .args(args)
            .env("NODE_PATH", &self.node_path)
            .stdin(Stdio::null())
            .output()
            .expect("run node");
        parse(op, &out)
    }
}

/// The script's JSON line, or a panic that shows what it said.
fn parse(op: &str, out: &Output) -> PouchRun {
    let stdout = String::from_utf8_lossy(&out.stdout);
    let v: Value = match stdout.lines().last().map(serde_json::from_str) {
        Some(Ok(v)) if out.status.success() => v,
        _ => panic!(
            "PouchDB {op} ({SCRIPT}) failed ({}):\n{stdout}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ),
    };
    let num = |k: &str| {
        v[k].as_f64()
            .unwrap_or_else(|| panic!("PouchDB {op}: no {k:?} in {v}"))
    };
    PouchRun {
        docs: num("docs") as u64,
        secs: num("secs"),
        cpu_secs: num("cpu_secs"),
    }
}

/// The line of node's stderr that names the error (its first lines are
/// where it was thrown).
fn error_line(b: &[u8]) -> String {
    let text = String::from_utf8_lossy(b);
    let mut lines = text.lines().filter(|l| !l.trim().is_empty());
    let error = lines.clone().find(|l| l.contains("Error"));
    error
        .or(lines.next())
        .unwrap_or("(no output)")
        .trim()
        .to_owned()
}
