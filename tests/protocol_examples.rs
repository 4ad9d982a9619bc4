//! The worked examples of `docs/backend-protocol.md` (section 12), replayed
//! against the real `syncd backend` binary on both stores (redb and
//! PostgreSQL), and the query-string rules of `v1/changes` end to end.
//!
//! Why: the document is the contract other servers are written against, and
//! it had drifted from the server. The examples are read from the markdown
//! itself (fenced blocks whose first line is `METHOD path` or `STATUS
//! Reason`), so changing either side alone fails here.
//!
//! How one section (`### ...`) is replayed, on a fresh server:
//! - The server gets `--token T` when a request of the section carries
//!   `Authorization: Bearer T`.
//! - Before each request the server is brought into the state its documented
//!   reply presupposes: the record of every `409` (created under the
//!   documented id with the `client_ids` feature, then updated or deleted up
//!   to the documented version), and, before the first feed read, the whole
//!   change log the section's feed pages show, at the positions their
//!   cursors give (the reference backend's cursor is the position of the
//!   last change), with filler changes in between where no page shows one.
//! - The reply must have the documented status line, headers and JSON body,
//!   exactly, except that an `id` the server assigned may differ from the
//!   document's: it is bound at first sight and must be the same from then
//!   on (later requests send the bound value).
//! - A second reply to one request is the answer of a server without batch
//!   support (`--no-batch`); a `wait` longer than one second is sent as
//!   `wait=1` (the reply is the same, the test just does not sit there).
//! - A `v1/ops` request answered `200` is sent again and must get the very
//!   same body (idempotency, section 5).
//! - The sections in [`NOT_FROM_THE_SERVER`] show replies of something that
//!   is not a protocol server (a captive portal): they are checked to be
//!   just that, and not sent.

mod common;
mod common_pg;

use std::collections::{BTreeMap, HashMap};
use std::io::{Read, Write};
use std::time::Duration;

use common::{bin, http, Backend};
use common_pg::{Pg, PgNode};
use serde_json::{json, Value};

const PROTOCOL_MD: &str = include_str!("../docs/backend-protocol.md");
const SECTION: &str = "## 12. Worked examples";
/// Example sections whose replies come from something other than a protocol
/// server; their blocks must be replies with a `3xx` status and no request.
const NOT_FROM_THE_SERVER: &[&str] = &["A reply that is not from the protocol"];

// ---------------------------------------------------------------------------
// Parsing the markdown.
// ---------------------------------------------------------------------------

#[derive(Debug, Clone)]
struct Request {
    method: String,
    path: String,
    headers: Vec<(String, String)>,
    body: Option<Value>,
}

#[derive(Debug, Clone)]
struct Reply {
    status: u16,
    reason: String,
    headers: Vec<(String, String)>,
    /// The body as written.
    text: String,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_str(&self.text)
            .unwrap_or_else(|e| panic!("documented reply body is not JSON ({e}):\n{}", self.text))
    }
}

#[derive(Debug, Clone)]
enum Block {
    Request(Request),
    Reply(Reply),
}

#[derive(Debug)]
struct Example {
    heading: String,
    blocks: Vec<Block>,
}

/// `Name: value` (a header line), else `None`.
fn header_line(line: &str) -> Option<(String, String)> {
    let (name, value) = line.split_once(": ")?;
    let is_name = !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
    is_name.then(|| (name.to_owned(), value.trim().to_owned()))
}

/// Header lines after the first line, up to a blank line or the first line
/// that is not a header; the rest is the body.
fn head_and_body(lines: &[&str]) -> (Vec<(String, String)>, String) {
    let mut headers = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        if lines[i].trim().is_empty() {
            i += 1;
            break;
        }
        match header_line(lines[i]) {
            Some(h) => headers.push(h),
            None => break,
        }
        i += 1;
    }
    (headers, lines[i..].join("\n").trim().to_owned())
}

fn parse_block(heading: &str, text: &str) -> Block {
    let lines: Vec<&str> = text.lines().collect();
    let first = lines.first().copied().unwrap_or_default();
    let (head, rest) = first.split_once(' ').unwrap_or((first, ""));
    let (headers, body) = head_and_body(&lines[1..]);
    if let Ok(status) = head.parse::<u16>() {
        return Block::Reply(Reply {
            status,
            reason: rest.trim().to_owned(),
            headers,
            text: body,
        });
    }
    let methods = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD"];
    assert!(
        methods.contains(&head) && !rest.trim().is_empty() && !rest.contains(' '),
        "example {heading:?}: a block that is neither `METHOD path` nor `STATUS Reason`:\n{text}"
    );
    let body = (!body.is_empty()).then(|| {
        serde_json::from_str(&body).unwrap_or_else(|e| {
            panic!("example {heading:?}: request body is not JSON ({e}):\n{body}")
        })
    });
    Block::Request(Request {
        method: head.to_owned(),
        path: rest.trim().to_owned(),
        headers,
        body,
    })
}

/// The `###` sections of section 12 with their fenced blocks.
fn examples() -> Vec<Example> {
    let start = PROTOCOL_MD
        .find(SECTION)
        .unwrap_or_else(|| panic!("{SECTION:?} not found in docs/backend-protocol.md"));
    let text = &PROTOCOL_MD[start + SECTION.len()..];
    let text = text.find("\n## ").map_or(text, |end| &text[..end]);
    let mut out: Vec<Example> = Vec::new();
    let mut fence: Option<Vec<&str>> = None;
    for line in text.lines() {
        if let Some(body) = fence.as_mut() {
            if line.trim_start().starts_with("```") {
                let block = body.join("\n");
                let ex = out
                    .last_mut()
                    .expect("a fenced block before any ### heading");
                ex.blocks.push(parse_block(&ex.heading, &block));
                fence = None;
            } else {
                body.push(line);
            }
        } else if line.trim_start().starts_with("```") {
            fence = Some(Vec::new());
        } else if let Some(h) = line.strip_prefix("### ") {
            out.push(Example {
                heading: h.trim().to_owned(),
                blocks: Vec::new(),
            });
        }
    }
    assert!(fence.is_none(), "unclosed fenced block in section 12");
    out
}

// ---------------------------------------------------------------------------
// Servers.
// ---------------------------------------------------------------------------

#[derive(Clone, Copy)]
enum Store<'a> {
    Redb,
    Postgres(&'a Pg),
}

/// One `syncd backend` process; stopped on drop.
enum Node {
    Redb(Backend),
    Postgres(PgNode),
}

impl Node {
    fn addr(&self) -> &str {
        match self {
            Node::Redb(b) => &b.addr,
            Node::Postgres(n) => &n.addr,
        }
    }
}

/// A fresh server (its own redb directory, or its own PostgreSQL database).
fn fresh_node(store: Store<'_>, extra: &[&str], n: &mut usize) -> Node {
    *n += 1;
    match store {
        Store::Redb => Node::Redb(Backend::start(extra)),
        Store::Postgres(pg) => {
            let db = format!("examples{n}");
            pg.create_db(&db);
            Node::Postgres(PgNode::start_with(&bin(), &pg.url(&db), extra, None))
        }
    }
}

// ---------------------------------------------------------------------------
// HTTP.
// ---------------------------------------------------------------------------

#[derive(Debug)]
struct Got {
    status: u16,
    reason: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Got {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "reply body is not JSON ({e}): {}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }
}

/// One request with `Connection: close`; `path` relative to the server root.
fn send(addr: &str, method: &str, path: &str, headers: &[(String, String)], body: &[u8]) -> Got {
    let path = if path.starts_with('/') {
        path.to_owned()
    } else {
        format!("/{path}")
    };
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
    let mut s = std::net::TcpStream::connect(addr).expect("connect backend");
    s.set_read_timeout(Some(Duration::from_secs(30))).ok();
    s.write_all(req.as_bytes()).expect("write request");
    s.write_all(body).expect("write body");
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).expect("read reply");
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no header end in {:?}", String::from_utf8_lossy(&raw)));
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let mut parts = status_line.splitn(3, ' ');
    let _version = parts.next();
    let status = parts
        .next()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
    let reason = parts.next().unwrap_or_default().to_owned();
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect();
    Got {
        status,
        reason,
        headers,
        body: raw[split + 4..].to_vec(),
    }
}

// ---------------------------------------------------------------------------
// Replaying one example section.
// ---------------------------------------------------------------------------

/// One section's server and what the test knows of its state.
struct Replay<'a> {
    heading: &'a str,
    node: Node,
    /// `Authorization` for every request the test itself makes.
    auth: Vec<(String, String)>,
    /// Document id -> id the server assigned.
    ids: HashMap<String, String>,
    /// (collection, server id) -> the record as the server now has it.
    records: BTreeMap<(String, String), Value>,
    /// Numbers the test's own ops (op_ids, filler ids).
    seq: usize,
    log_built: bool,
}

impl Replay<'_> {
    fn actual_id(&self, doc_id: &str) -> String {
        self.ids
            .get(doc_id)
            .cloned()
            .unwrap_or_else(|| doc_id.to_owned())
    }

    /// Replaces every document id that has been bound by the server's.
    fn bind_ids(&self, v: &Value) -> Value {
        match v {
            Value::String(s) => Value::String(self.actual_id(s)),
            Value::Array(a) => Value::Array(a.iter().map(|x| self.bind_ids(x)).collect()),
            Value::Object(m) => Value::Object(
                m.iter()
                    .map(|(k, x)| (k.clone(), self.bind_ids(x)))
                    .collect(),
            ),
            other => other.clone(),
        }
    }

    /// Records the records of a 200 reply to `ops` (one op, or a batch).
    fn note_applied(&mut self, ops: &[Value], reply: &Value) {
        let mut note = |op: &Value, record: &Value| {
            let coll = op["collection"].as_str().unwrap_or_default().to_owned();
            let id = record["id"].as_str().unwrap_or_default().to_owned();
            self.records.insert((coll, id), record.clone());
        };
        if let Some(results) = reply["results"].as_array() {
            for (op, res) in ops.iter().zip(results) {
                if res["status"] == 200 {
                    note(op, &res["record"]);
                }
            }
        } else if reply["record"].is_object() {
            note(&ops[0], &reply["record"]);
        }
    }

    /// Applies one op of the test's own (state the example presupposes).
    fn given(&mut self, op: Value) {
        let body = serde_json::to_vec(&op).expect("json");
        let got = send(self.node.addr(), "POST", "v1/ops", &self.auth, &body);
        assert_eq!(
            got.status,
            200,
            "{}: setting up with {op}: {}",
            self.heading,
            String::from_utf8_lossy(&got.body)
        );
        let reply = got.json();
        self.note_applied(std::slice::from_ref(&op), &reply);
    }

    fn given_op(
        &mut self,
        coll: &str,
        kind: &str,
        id: &str,
        base: Option<u64>,
        data: Value,
        ts: &Value,
    ) {
        self.seq += 1;
        let n = self.seq;
        self.given(json!({
            "op_id": format!("given-{n}"), "client_id": "given", "collection": coll,
            "kind": kind, "id": id, "local_id": id, "base_version": base,
            "data": data, "client_ts": ts,
        }));
    }

    /// Makes (collection, record.id) exactly `record` on the server: created
    /// under its id if absent, then updated (and deleted) version by version.
    fn ensure_record(&mut self, coll: &str, record: &Value) {
        let doc_id = record["id"].as_str().expect("record id");
        let id = self.actual_id(doc_id);
        let want = self.bind_ids(record);
        let version = record["version"].as_u64().expect("record version");
        let deleted = record["deleted"] == true;
        let ts = &record["updated_at"];
        let key = (coll.to_owned(), id.clone());
        let current = |s: &Self| s.records.get(&key).and_then(|r| r["version"].as_u64());
        if self.records.get(&key) == Some(&want) {
            return;
        }
        assert!(
            current(self).is_none_or(|v| v < version) && (version > 1 || !deleted),
            "{}: the example presupposes {coll}/{doc_id} = {record}, which the steps before contradict ({:?})",
            self.heading,
            self.records.get(&key)
        );
        if current(self).is_none() {
            let data = if version == 1 {
                record["data"].clone()
            } else {
                json!({"given": 1})
            };
            self.given_op(coll, "create", &id, None, data, ts);
        }
        while let Some(v) = current(self).filter(|v| *v < version) {
            let last = v + 1 == version;
            match (last, deleted) {
                (true, true) => self.given_op(coll, "delete", &id, Some(v), Value::Null, ts),
                (true, false) => {
                    self.given_op(coll, "update", &id, Some(v), record["data"].clone(), ts)
                }
                (false, _) => {
                    self.given_op(coll, "update", &id, Some(v), json!({"given": v + 1}), ts)
                }
            }
        }
        assert_eq!(
            self.records.get(&key),
            Some(&want),
            "{}: building {coll}/{doc_id}",
            self.heading
        );
    }

    /// Builds the change log that the feed pages of this section show
    /// (`pages`: (documented reply, in document order)).
    fn build_log(&mut self, pages: &[Value]) {
        let mut at: BTreeMap<u64, Value> = BTreeMap::new();
        let mut head = 0;
        for page in pages {
            let cursor: u64 = page["cursor"]
                .as_str()
                .and_then(|c| c.parse().ok())
                .unwrap_or_else(|| {
                    panic!(
                        "{}: a reference-backend cursor is a decimal position: {page}",
                        self.heading
                    )
                });
            let changes = page["changes"].as_array().expect("changes");
            let first = cursor + 1 - changes.len() as u64;
            for (i, c) in changes.iter().enumerate() {
                let seq = first + i as u64;
                if let Some(prev) = at.insert(seq, c.clone()) {
                    assert_eq!(
                        &prev, c,
                        "{}: two pages put different changes at {seq}",
                        self.heading
                    );
                }
            }
            head = head.max(cursor);
        }
        for seq in 1..=head {
            match at.get(&seq) {
                Some(change) => {
                    let coll = change["collection"]
                        .as_str()
                        .expect("collection")
                        .to_owned();
                    self.ensure_record(&coll, &change["record"]);
                }
                None => {
                    let id = format!("filler-{seq}");
                    self.given_op("fillers", "create", &id, None, json!({}), &json!(1));
                }
            }
        }
    }

    /// Checks `got` against the documented `doc`, binding server ids.
    fn matches(&mut self, doc: &Value, got: &Value, key: &str, at: &str) -> Result<(), String> {
        match (doc, got) {
            (Value::String(d), Value::String(g)) if key == "id" => match self.ids.get(d) {
                Some(bound) if bound == g => Ok(()),
                Some(bound) => Err(format!("{at}: id {g:?}, but {d:?} is {bound:?}")),
                None if self.ids.values().any(|v| v == g) => {
                    Err(format!("{at}: id {g:?} is already another document id"))
                }
                None => {
                    self.ids.insert(d.clone(), g.clone());
                    Ok(())
                }
            },
            (Value::Object(d), Value::Object(g)) => {
                let (dk, gk): (Vec<_>, Vec<_>) = (d.keys().collect(), g.keys().collect());
                let mut dk_sorted = dk.clone();
                let mut gk_sorted = gk.clone();
                dk_sorted.sort();
                gk_sorted.sort();
                if dk_sorted != gk_sorted {
                    return Err(format!(
                        "{at}: keys {gk_sorted:?}, documented {dk_sorted:?}"
                    ));
                }
                for (k, dv) in d {
                    self.matches(dv, &g[k], k, &format!("{at}.{k}"))?;
                }
                Ok(())
            }
            (Value::Array(d), Value::Array(g)) => {
                if d.len() != g.len() {
                    return Err(format!("{at}: {} entries, documented {}", g.len(), d.len()));
                }
                for (i, (dv, gv)) in d.iter().zip(g).enumerate() {
                    self.matches(dv, gv, key, &format!("{at}[{i}]"))?;
                }
                Ok(())
            }
            (d, g) if d == g => Ok(()),
            (d, g) => Err(format!("{at}: {g}, documented {d}")),
        }
    }

    /// Sends `req` and checks the reply against `doc`.
    fn exchange(&mut self, req: &Request, doc: &Reply) -> Got {
        let body = req.body.as_ref().map(|b| self.bind_ids(b));
        let bytes = body
            .as_ref()
            .map(|b| serde_json::to_vec(b).expect("json"))
            .unwrap_or_default();
        let path = shorten_wait(&req.path);
        let got = send(self.node.addr(), &req.method, &path, &req.headers, &bytes);
        let what = format!("{}: {} {}", self.heading, req.method, req.path);
        assert_eq!(
            (got.status, got.reason.as_str()),
            (doc.status, doc.reason.as_str()),
            "{what}: {}",
            String::from_utf8_lossy(&got.body)
        );
        for (k, v) in &doc.headers {
            let actual = got
                .headers
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case(k))
                .map(|(_, v)| v.as_str());
            assert_eq!(actual, Some(v.as_str()), "{what}: header {k}");
        }
        let actual = got.json();
        if let Err(e) = self.matches(&doc.json(), &actual, "", "body") {
            panic!(
                "{what}: reply differs from the document: {e}\nreply: {actual}\ndocumented: {}",
                doc.text
            );
        }
        if got.status == 200 {
            let ops = match &body {
                Some(b) if b["ops"].is_array() => b["ops"].as_array().cloned().unwrap_or_default(),
                Some(b) => vec![b.clone()],
                None => Vec::new(),
            };
            self.note_applied(&ops, &actual);
        }
        got
    }
}

/// `wait=N` with N > 1 becomes `wait=1`: the reply at the end of a wait is
/// the same, and the test need not sit through it.
fn shorten_wait(path: &str) -> String {
    let Some((base, query)) = path.split_once('?') else {
        return path.to_owned();
    };
    let query: Vec<String> = query
        .split('&')
        .map(|p| match p.strip_prefix("wait=") {
            Some(n) if n.parse::<u64>().is_ok_and(|n| n > 1) => "wait=1".to_owned(),
            _ => p.to_owned(),
        })
        .collect();
    format!("{base}?{}", query.join("&"))
}

/// The state-building the documented reply to `req` presupposes.
fn prepare(r: &mut Replay<'_>, ex: &Example, req: &Request, reply: &Reply) {
    if req
        .path
        .split('?')
        .next()
        .is_some_and(|p| p.ends_with("v1/changes"))
        && !r.log_built
    {
        let pages: Vec<Value> = ex
            .blocks
            .iter()
            .zip(ex.blocks.iter().skip(1))
            .filter_map(|pair| match pair {
                (Block::Request(q), Block::Reply(a))
                    if q.path
                        .split('?')
                        .next()
                        .is_some_and(|p| p.ends_with("v1/changes")) =>
                {
                    Some(a.json())
                }
                _ => None,
            })
            .collect();
        r.build_log(&pages);
        r.log_built = true;
    }
    let Some(body) = &req.body else { return };
    let doc = reply.json();
    if reply.status == 409 {
        let coll = body["collection"].as_str().expect("collection");
        r.ensure_record(coll, &doc["record"]);
    }
    if let (Some(ops), Some(results)) = (body["ops"].as_array(), doc["results"].as_array()) {
        for (op, res) in ops.iter().zip(results) {
            if res["status"] == 409 {
                let coll = op["collection"].as_str().expect("collection");
                r.ensure_record(coll, &res["record"]);
            }
        }
    }
}

/// The bearer token the section's requests carry, if any.
fn section_token(ex: &Example) -> Option<String> {
    ex.blocks.iter().find_map(|b| match b {
        Block::Request(q) => q.headers.iter().find_map(|(k, v)| {
            let v = v.strip_prefix("Bearer ")?;
            k.eq_ignore_ascii_case("authorization")
                .then(|| v.to_owned())
        }),
        Block::Reply(_) => None,
    })
}

fn replay_all(store: Store<'_>) {
    let all = examples();
    for heading in NOT_FROM_THE_SERVER {
        assert!(
            all.iter().any(|e| e.heading == *heading),
            "section 12 has no example {heading:?} any more: update NOT_FROM_THE_SERVER"
        );
    }
    let (mut servers, mut exchanges) = (0, 0);
    for ex in &all {
        if NOT_FROM_THE_SERVER.contains(&ex.heading.as_str()) {
            for b in &ex.blocks {
                match b {
                    Block::Reply(a) => {
                        assert!((300..400).contains(&a.status), "{}: {a:?}", ex.heading)
                    }
                    Block::Request(q) => panic!(
                        "{}: a request in a section that is not replayed: {q:?}",
                        ex.heading
                    ),
                }
            }
            continue;
        }
        let token = section_token(ex);
        let extra: Vec<&str> = token.iter().flat_map(|t| ["--token", t.as_str()]).collect();
        let auth = token
            .iter()
            .map(|t| ("Authorization".to_owned(), format!("Bearer {t}")))
            .collect();
        let mut r = Replay {
            heading: &ex.heading,
            node: fresh_node(store, &extra, &mut servers),
            auth,
            ids: HashMap::new(),
            records: BTreeMap::new(),
            seq: 0,
            log_built: false,
        };
        let mut last: Option<(&Request, usize)> = None;
        for b in &ex.blocks {
            match b {
                Block::Request(q) => last = Some((q, 0)),
                Block::Reply(a) => {
                    let Some((q, answered)) = last.as_mut() else {
                        panic!("{}: a reply with no request before it: {a:?}", ex.heading)
                    };
                    if *answered == 0 {
                        prepare(&mut r, ex, q, a);
                        let got = r.exchange(q, a);
                        if q.method == "POST" && q.path.ends_with("v1/ops") && got.status == 200 {
                            let again = r.exchange(q, a);
                            assert_eq!(again.body, got.body, "{}: a repeated op_id", ex.heading);
                        }
                    } else {
                        // Another server's answer to the same request.
                        assert!(
                            q.path.ends_with("v1/ops/batch") && a.status == 404,
                            "{}: a second reply to one request is only understood as that of a \
                             server without batch support: {a:?}",
                            ex.heading
                        );
                        let mut other = Replay {
                            heading: &ex.heading,
                            node: fresh_node(
                                store,
                                &[&extra[..], &["--no-batch"]].concat(),
                                &mut servers,
                            ),
                            auth: r.auth.clone(),
                            ids: r.ids.clone(),
                            records: BTreeMap::new(),
                            seq: 0,
                            log_built: true,
                        };
                        other.exchange(q, a);
                    }
                    *answered += 1;
                    exchanges += 1;
                }
            }
        }
    }
    // The parser must keep finding the examples (10 exchanges when written).
    assert!(
        exchanges >= 10,
        "only {exchanges} exchanges found in section 12"
    );
}

#[test]
fn worked_examples_hold_on_redb() {
    replay_all(Store::Redb);
}

#[test]
fn worked_examples_hold_on_postgres() {
    let pg = Pg::start();
    replay_all(Store::Postgres(&pg));
}

// ---------------------------------------------------------------------------
// The query string of v1/changes, end to end.
// ---------------------------------------------------------------------------

fn changes_query_rules(store: Store<'_>) {
    let node = fresh_node(store, &[], &mut 0);
    let addr = node.addr().to_owned();
    for i in 0..3 {
        let op = json!({"op_id": format!("q{i}"), "collection": "todos", "kind": "create",
            "id": null, "base_version": null, "data": {"i": i}, "client_ts": 1});
        let (st, _) = http(&addr, "POST", "/v1/ops", Some(&op.to_string()));
        assert_eq!(st, 200);
    }
    let page = |q: &str| {
        let (st, body) = http(&addr, "GET", &format!("/v1/changes?{q}"), None);
        assert_eq!(st, 200, "{q}: {body}");
        let n = body["changes"].as_array().map_or(0, Vec::len);
        (
            n,
            body["cursor"].as_str().unwrap_or_default().to_owned(),
            body["more"] == true,
        )
    };
    // Percent-decoded, names too.
    assert_eq!(page("since=%31"), (2, "3".into(), false));
    assert_eq!(page("%73ince=%32&limit=%31"), (1, "3".into(), false));
    assert_eq!(page("limit=%32"), (2, "2".into(), true));
    // Out-of-range numbers are clamped.
    assert_eq!(page("limit=-5"), (1, "1".into(), true));
    assert_eq!(page("limit=0"), (1, "1".into(), true));
    assert_eq!(page("limit=5000"), (3, "3".into(), false));
    assert_eq!(
        page("limit=99999999999999999999999999"),
        (3, "3".into(), false)
    );
    assert_eq!(page("since=-5"), (3, "3".into(), false));
    assert_eq!(
        page("since=99999999999999999999999"),
        (0, "3".into(), false)
    );
    // Changes are there, so a clamped wait answers at once.
    assert_eq!(page("since=2&wait=%2D1"), (1, "3".into(), false));
    // Not a number: 400 naming the parameter; `+` is a space.
    for (q, name) in [
        ("limit=abc", "limit"),
        ("limit=+5", "limit"),
        ("since=%61", "since"),
        ("since=1.5", "since"),
        ("wait=soon", "wait"),
    ] {
        let (st, body) = http(&addr, "GET", &format!("/v1/changes?{q}"), None);
        assert_eq!(st, 400, "{q}: {body}");
        let reason = body["error"].as_str().unwrap_or_default();
        assert!(reason.contains(name), "{q}: {reason}");
    }
}

#[test]
fn changes_query_is_decoded_and_clamped_on_redb() {
    changes_query_rules(Store::Redb);
}

#[test]
fn changes_query_is_decoded_and_clamped_on_postgres() {
    let pg = Pg::start();
    changes_query_rules(Store::Postgres(&pg));
}
