//! Keeps docs/ipc-protocol.md honest: every request example in it is sent
//! to a real `syncd` daemon and every reply example is compared with what
//! the daemon answers, so an example that drifts from the code (or a code
//! change that leaves the doc behind) fails here.
//!
//! The convention (also stated at the top of the doc):
//!
//! - Examples are fenced blocks whose info string says how they are checked:
//!   - `ipc`: a transcript run against a daemon without a backend;
//!   - `ipc backend`: a transcript run against a daemon synced to the
//!     reference backend (`syncd backend`);
//!   - `ipc shape`: frames the test cannot provoke (an oversized frame, a
//!     conflict with another device); they are only checked against the
//!     wire types (`crates/syncd-client/src/wire.rs`).
//! - Every non-blank line of such a block is `→ FRAME` (the client sends
//!   FRAME) or `← FRAME` (the daemon sends FRAME). A fenced block holding
//!   such lines under any other info string is an error.
//! - A transcript is run line by line on one connection: `→` writes the
//!   line's text as a frame, byte for byte (so deliberately broken frames
//!   are possible), `←` reads the next frame and compares it. A `→` hello
//!   (a JSON object with a `protocol` key) opens a new connection; without
//!   one, the block's connection opens with a plain JSON hello.
//! - Blocks run in the order of the doc on one daemon per kind, so an
//!   example may use a record an earlier example wrote.
//! - A reply matches when it has the same keys (recursively, no key
//!   missing, none extra), the same JSON types, and the same values, except
//!   for what varies from run to run: numbers (times, sizes, sequence
//!   numbers) are matched by type, frame `id`s excepted; ULIDs (26
//!   characters of Crockford base32) by type, with one rule: the same ULID
//!   in the doc must be the same value in the daemon's frames and two
//!   different ULIDs two different values (a later `→` line gets the
//!   daemon's value substituted for the doc's); the strings under
//!   `VARYING_STRINGS` keys by type.
//! - Every `←` line, in every kind of block, must also survive a round trip
//!   through the wire types (`ServerFrame`, `HelloReply`) unchanged: no
//!   field missing, none undocumented.

mod common;

use std::collections::{BTreeSet, HashMap};
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use common::{Backend, Daemon};
use serde_json::Value;
use syncd::ipc::wire::{ClientFrame, Hello, HelloReply, ServerFrame};

const DOC_PATH: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/ipc-protocol.md");

/// String values that differ per daemon or per build: matched by type.
const VARYING_STRINGS: &[&str] = &[
    "server",
    "version",
    "socket",
    "data_dir",
    "config_path",
    "path",
    "store_open_check",
    "hint",
    "hints",
    "text",
];

/// A hang guard for reads: far longer than any answer takes.
const READ_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    Live,
    LiveBackend,
    Shape,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Dir {
    Send,
    Receive,
}

struct Line {
    no: usize,
    dir: Dir,
    text: String,
}

struct Block {
    kind: Kind,
    lines: Vec<Line>,
}

/// What a run found.
#[derive(Default)]
struct Report {
    problems: Vec<String>,
    /// `→` lines sent to a daemon.
    sent: usize,
    /// `←` lines compared with a daemon's frame.
    compared: usize,
    /// Request kinds sent to a daemon (`put`, `get`, ...).
    kinds: BTreeSet<String>,
}

fn frame_line(line: &str) -> Option<(Dir, &str)> {
    if let Some(t) = line.strip_prefix("→ ") {
        Some((Dir::Send, t))
    } else {
        line.strip_prefix("← ").map(|t| (Dir::Receive, t))
    }
}

/// A fenced code block of the doc, as written.
struct Fenced {
    /// Line number of the opening fence.
    start: usize,
    /// The info string (`ipc`, `text`, ...).
    info: String,
    /// The lines inside, with their numbers.
    lines: Vec<(usize, String)>,
}

/// The doc's example blocks; problems with the markup go to `report`.
fn parse(doc: &str, report: &mut Report) -> Vec<Block> {
    let mut blocks = Vec::new();
    let mut open: Option<Fenced> = None;
    for (i, line) in doc.lines().enumerate() {
        let no = i + 1;
        let Some(fence) = line.trim_start().strip_prefix("```") else {
            if let Some(f) = open.as_mut() {
                f.lines.push((no, line.to_owned()));
            }
            continue;
        };
        match open.take() {
            None => {
                open = Some(Fenced {
                    start: no,
                    info: fence.trim().to_owned(),
                    lines: Vec::new(),
                })
            }
            Some(f) => {
                if let Some(b) = block(f, report) {
                    blocks.push(b);
                }
            }
        }
    }
    if let Some(f) = open {
        report
            .problems
            .push(format!("line {}: code block never closed", f.start));
    }
    blocks
}

/// `f` as an example block, `None` if it is none (or a broken one).
fn block(f: Fenced, report: &mut Report) -> Option<Block> {
    let Fenced { start, info, lines } = f;
    let kind = match info.as_str() {
        "ipc" => Some(Kind::Live),
        "ipc backend" => Some(Kind::LiveBackend),
        "ipc shape" => Some(Kind::Shape),
        _ => None,
    };
    let mut frames = Vec::new();
    for (no, text) in lines {
        match frame_line(&text) {
            Some((dir, t)) => frames.push(Line {
                no,
                dir,
                text: t.to_owned(),
            }),
            None if kind.is_some() && !text.trim().is_empty() => report.problems.push(format!(
                "line {no}: in an `{info}` block every line must start with `→ ` or `← `: {text}"
            )),
            None => {}
        }
    }
    match kind {
        None if !frames.is_empty() => {
            report.problems.push(format!(
                "line {start}: a block of `→`/`←` frames must be marked `ipc`, `ipc backend` or `ipc shape` (it is `{info}`)"
            ));
            None
        }
        None => None,
        Some(_) if frames.is_empty() => {
            report
                .problems
                .push(format!("line {start}: an `{info}` block without frames"));
            None
        }
        Some(kind) => Some(Block {
            kind,
            lines: frames,
        }),
    }
}

/// A `←` line must be a frame of the wire types, and serialize back to
/// itself: a field the type has and the doc lacks (or the reverse) shows.
fn check_wire_shape(line: &Line, problems: &mut Vec<String>) {
    let doc: Value = match serde_json::from_str(&line.text) {
        Ok(v) => v,
        Err(e) => {
            if line.dir == Dir::Receive {
                problems.push(format!("line {}: not JSON ({e}): {}", line.no, line.text));
            }
            return;
        }
    };
    let is_hello = doc.get("protocol").is_some() || doc.get("ok").is_some();
    let back = match (line.dir, is_hello) {
        (Dir::Receive, true) => serde_json::from_value::<HelloReply>(doc.clone())
            .map(|v| serde_json::to_value(v).unwrap()),
        (Dir::Receive, false) => serde_json::from_value::<ServerFrame>(doc.clone())
            .map(|v| serde_json::to_value(v).unwrap()),
        // Requests may omit optional fields, so a round trip would add
        // them: they only have to decode.
        (Dir::Send, true) => serde_json::from_value::<Hello>(doc.clone()).map(|_| doc.clone()),
        (Dir::Send, false) => {
            serde_json::from_value::<ClientFrame>(doc.clone()).map(|_| doc.clone())
        }
    };
    match back {
        Ok(v) if v == doc => {}
        Ok(v) => problems.push(format!(
            "line {}: differs from the wire type's form\n   doc:  {}\n   type: {v}",
            line.no, line.text
        )),
        Err(e) => problems.push(format!(
            "line {}: does not decode as a wire frame ({e}): {}",
            line.no, line.text
        )),
    }
}

fn is_ulid(s: &str) -> bool {
    const CROCKFORD: &str = "0123456789ABCDEFGHJKMNPQRSTVWXYZ";
    s.len() == 26 && s.as_bytes()[0] <= b'7' && s.chars().all(|c| CROCKFORD.contains(c))
}

/// Doc ULIDs and the daemon's values for them, both ways.
#[derive(Default)]
struct Bindings {
    doc_to_real: HashMap<String, String>,
    real_to_doc: HashMap<String, String>,
}

impl Bindings {
    fn substitute(&self, text: &str) -> String {
        let mut t = text.to_owned();
        for (d, r) in &self.doc_to_real {
            t = t.replace(d.as_str(), r);
        }
        t
    }
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "bool",
        Value::Number(n) if n.is_f64() => "float",
        Value::Number(_) => "integer",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// Compares a doc value with the daemon's at `path`; differences go to
/// `out`.
fn matches(
    doc: &Value,
    real: &Value,
    path: &str,
    key: &str,
    b: &mut Bindings,
    out: &mut Vec<String>,
) {
    if type_name(doc) != type_name(real) {
        out.push(format!(
            "{path}: the doc has {} {doc}, the daemon {} {real}",
            type_name(doc),
            type_name(real)
        ));
        return;
    }
    match (doc, real) {
        (Value::Object(d), Value::Object(r)) => {
            for k in d.keys().filter(|k| !r.contains_key(*k)) {
                out.push(format!("{path}.{k}: in the doc, not sent by the daemon"));
            }
            for k in r.keys().filter(|k| !d.contains_key(*k)) {
                out.push(format!(
                    "{path}.{k}: sent by the daemon ({}), missing in the doc",
                    r[k]
                ));
            }
            for (k, dv) in d {
                if let Some(rv) = r.get(k) {
                    matches(dv, rv, &format!("{path}.{k}"), k, b, out);
                }
            }
        }
        (Value::Array(d), Value::Array(r)) => {
            if d.len() != r.len() {
                out.push(format!(
                    "{path}: the doc has {} items, the daemon {}: {real}",
                    d.len(),
                    r.len()
                ));
                return;
            }
            for (i, (dv, rv)) in d.iter().zip(r).enumerate() {
                matches(dv, rv, &format!("{path}[{i}]"), key, b, out);
            }
        }
        (Value::Number(_), Value::Number(_)) => {
            if key == "id" && doc != real {
                out.push(format!("{path}: the doc has {doc}, the daemon {real}"));
            }
        }
        (Value::String(d), Value::String(r)) if is_ulid(d) => {
            match (b.doc_to_real.get(d), b.real_to_doc.get(r)) {
                (Some(bound), _) if bound != r => out.push(format!(
                    "{path}: the doc's {d} stands for {bound} earlier, but here the daemon sent {r}"
                )),
                (None, Some(other)) => out.push(format!(
                    "{path}: the daemon sent {r}, which the doc wrote as {other} earlier, but here as {d}"
                )),
                _ => {
                    b.doc_to_real.insert(d.clone(), r.clone());
                    b.real_to_doc.insert(r.clone(), d.clone());
                }
            }
        }
        (Value::String(_), Value::String(_)) if VARYING_STRINGS.contains(&key) => {}
        _ => {
            if doc != real {
                out.push(format!("{path}: the doc has {doc}, the daemon {real}"));
            }
        }
    }
}

fn write_frame(s: &mut UnixStream, body: &[u8]) -> std::io::Result<()> {
    let mut b = (body.len() as u32).to_be_bytes().to_vec();
    b.extend_from_slice(body);
    s.write_all(&b)
}

fn read_frame(s: &mut UnixStream) -> Result<Value, String> {
    let mut len = [0u8; 4];
    s.read_exact(&mut len)
        .map_err(|e| format!("no frame from the daemon: {e}"))?;
    let mut body = vec![0u8; u32::from_be_bytes(len) as usize];
    s.read_exact(&mut body)
        .map_err(|e| format!("frame body: {e}"))?;
    serde_json::from_slice(&body).map_err(|e| {
        format!(
            "the daemon's frame is not JSON ({e}): {}",
            String::from_utf8_lossy(&body)
        )
    })
}

fn connect(d: &Daemon) -> UnixStream {
    let s = UnixStream::connect(&d.socket).expect("connect to the daemon");
    s.set_read_timeout(Some(READ_TIMEOUT)).unwrap();
    s
}

/// Runs one transcript against `d`; `Err` ends the block (the connection
/// is out of step).
fn run_block(
    d: &Daemon,
    block: &Block,
    b: &mut Bindings,
    report: &mut Report,
) -> Result<(), String> {
    let mut conn: Option<UnixStream> = None;
    for line in &block.lines {
        let where_ = format!("line {}", line.no);
        match line.dir {
            Dir::Send => {
                let text = b.substitute(&line.text);
                let json: Option<Value> = serde_json::from_str(&text).ok();
                let hello = json.as_ref().is_some_and(|v| v.get("protocol").is_some());
                if hello {
                    conn = Some(connect(d));
                } else if conn.is_none() {
                    let mut s = connect(d);
                    write_frame(&mut s, br#"{"app":"doc","protocol":3,"encoding":"json"}"#)
                        .map_err(|e| format!("{where_}: hello: {e}"))?;
                    let h = read_frame(&mut s).map_err(|e| format!("{where_}: hello: {e}"))?;
                    if h["ok"] != Value::Bool(true) {
                        return Err(format!("{where_}: hello refused: {h}"));
                    }
                    conn = Some(s);
                }
                if let Some(kind) = json
                    .as_ref()
                    .and_then(|v| v.get("request"))
                    .and_then(Value::as_object)
                    .and_then(|o| o.keys().next())
                {
                    report.kinds.insert(kind.clone());
                }
                let s = conn.as_mut().expect("connected");
                write_frame(s, text.as_bytes()).map_err(|e| format!("{where_}: send: {e}"))?;
                report.sent += 1;
            }
            Dir::Receive => {
                let Some(s) = conn.as_mut() else {
                    return Err(format!("{where_}: `←` before any `→` in a live block"));
                };
                let doc: Value = serde_json::from_str(&line.text)
                    .map_err(|e| format!("{where_}: not JSON: {e}"))?;
                let real = read_frame(s).map_err(|e| format!("{where_}: {e}"))?;
                report.compared += 1;
                let mut out = Vec::new();
                matches(&doc, &real, "", "", b, &mut out);
                if !out.is_empty() {
                    report.problems.push(format!(
                        "{where_}: the daemon's frame differs from the doc's\n   doc:    {}\n   daemon: {real}\n   - {}",
                        line.text,
                        out.join("\n   - ")
                    ));
                }
            }
        }
    }
    Ok(())
}

/// Parses `doc` and runs every example in it; the report lists what does
/// not match.
fn check_doc(doc: &str) -> Report {
    let mut report = Report::default();
    let blocks = parse(doc, &mut report);
    // Requests in live blocks may be broken on purpose: the daemon judges
    // them. Everything else must be a frame of the wire types.
    for b in &blocks {
        for line in &b.lines {
            if line.dir == Dir::Receive || b.kind == Kind::Shape {
                check_wire_shape(line, &mut report.problems);
            }
        }
    }
    let plain = Daemon::start("");
    let mut plain_bindings = Bindings::default();
    let mut synced: Option<(Backend, Daemon, Bindings)> = None;
    for block in &blocks {
        let r = match block.kind {
            Kind::Shape => continue,
            Kind::Live => run_block(&plain, block, &mut plain_bindings, &mut report),
            Kind::LiveBackend => {
                let (_, d, b) = synced.get_or_insert_with(|| {
                    let backend = Backend::start(&[]);
                    let d = Daemon::start(&format!("[backend]\nurl = {:?}\n", backend.url()));
                    (backend, d, Bindings::default())
                });
                run_block(d, block, b, &mut report)
            }
        };
        if let Err(e) = r {
            report.problems.push(e);
        }
    }
    report
}

fn read_doc() -> String {
    std::fs::read_to_string(DOC_PATH).unwrap_or_else(|e| panic!("{DOC_PATH}: {e}"))
}

/// Every request and reply example in docs/ipc-protocol.md is what a real
/// daemon does, and every request kind has one.
#[test]
fn every_ipc_doc_example_matches_the_daemon() {
    let report = check_doc(&read_doc());
    assert!(
        report.problems.is_empty(),
        "docs/ipc-protocol.md drifted from the daemon ({} problems):\n{}",
        report.problems.len(),
        report.problems.join("\n")
    );
    // Every request kind of the protocol has an example that ran.
    let all = [
        "put",
        "patch",
        "get",
        "delete",
        "list",
        "status",
        "queue",
        "watch",
        "sync",
        "pause",
        "resume",
        "conflicts",
        "resolve",
        "dead_letters",
        "retry",
        "discard",
        "wait_synced",
        "metrics",
    ];
    let missing: Vec<_> = all.iter().filter(|k| !report.kinds.contains(**k)).collect();
    assert!(
        missing.is_empty(),
        "request kinds without a checked example: {missing:?}"
    );
    assert!(
        report.compared >= report.sent,
        "{} frames sent, only {} replies compared",
        report.sent,
        report.compared
    );
}

/// The guard guards: a reply example edited away from what the daemon
/// sends (a field dropped, an error code changed, a field missing from a
/// shape-only event, two ops where the daemon has one) and a transcript
/// that lost its `ipc` mark are reported, each at its line.
#[test]
fn a_drifted_example_is_reported() {
    let doc = read_doc();
    let edits = [
        // A record view without `local_only`.
        (
            r#""pending":true,"local_only":false,"scope":null,"attachments":[]}}}}"#,
            r#""pending":true,"scope":null,"attachments":[]}}}}"#,
        ),
        // Another error code.
        (
            r#"{"code":"not_found","message":"no record \"nope\"#,
            r#"{"code":"bad_id","message":"no record \"nope\"#,
        ),
        // A shape-only conflict event without its `result`.
        (r#""result":"took_server","#, ""),
        // A patch answered with an op of its own, where the daemon folds
        // it into the record's queued create.
        (
            r#"{"id":3,"body":{"written":{"id":"t1","op_id":"01M89068N49BP4HC1V8QTN470S"#,
            r#"{"id":3,"body":{"written":{"id":"t1","op_id":"01M89068N5AJQPK20WJMNK7ZTX"#,
        ),
        // A transcript no longer marked as one.
        ("```ipc\n→ {\"id\":14,", "```text\n→ {\"id\":14,"),
    ];
    let mut drifted = doc.clone();
    let mut lines = Vec::new();
    for (from, to) in edits {
        let at = drifted
            .find(from)
            .unwrap_or_else(|| panic!("the doc no longer has {from}: update this test"));
        lines.push(drifted[..at].matches('\n').count() + 1);
        drifted = drifted.replacen(from, to, 1);
    }
    let report = check_doc(&drifted);
    for no in lines {
        let tag = format!("line {no}:");
        assert!(
            report.problems.iter().any(|p| p.starts_with(&tag)),
            "the edit on line {no} went unnoticed; problems:\n{}",
            report.problems.join("\n")
        );
    }
}
