//! How a syncd record lives in a CouchDB database (`docs/backends.md`):
//! the document id (`{collection}:{id}`), the document's shape (native:
//! the record's fields at the top level and syncd's bookkeeping in
//! `syncd`; wrapped: the record under `data`), CouchDB's winner among
//! conflicting leaves, and the op_id check that makes a retried op
//! idempotent. Pure: no I/O, so all of it is unit-tested here.

use serde_json::{json, Map, Value};

use crate::backend::protocol::{OpKind, ServerRecord, WireOp};
pub use crate::config::DocShape;
use crate::domain::Document;

/// The one top-level field syncd keeps for itself in a native document.
pub const RESERVED: &str = "syncd";

/// The first field of `op`'s record that a native document cannot hold:
/// `syncd`, or a name starting with `_` (CouchDB's own) other than
/// `_attachments` (which becomes the document's attachments).
pub fn reserved_field(op: &WireOp, shape: DocShape) -> Option<&str> {
    if shape != DocShape::Native || op.kind == OpKind::Delete {
        return None;
    }
    op.data
        .as_ref()?
        .keys()
        .map(String::as_str)
        .find(|k| *k == RESERVED || (k.starts_with('_') && *k != crate::domain::attachment::KEY))
}

/// Whether `body` is in the wrapped shape: the record under `data`, and
/// nothing else of the app's beside it (only `_*`, `updated_at` and
/// `syncd`). A document syncd wrote says so itself: wrapped ones have
/// `syncd` without `syncd.updated_at`, native ones with it. One without
/// `syncd` (another program's) is read in `setting`'s shape, so that an
/// app's own `{"data": {...}}` is never unwrapped on a native database.
fn is_wrapped(body: &Map<String, Value>, setting: DocShape) -> bool {
    let looks_wrapped = body.get("data").is_some_and(Value::is_object)
        && body
            .keys()
            .all(|k| k.starts_with('_') || matches!(k.as_str(), "data" | "updated_at" | RESERVED));
    looks_wrapped
        && match body.get(RESERVED) {
            Some(s) => s.get("updated_at").is_none(),
            None => setting == DocShape::Wrapped,
        }
}

/// How many earlier `(op_id, generation)` pairs a document remembers, so a
/// retried op whose reply was lost is recognised after later writes.
pub const HISTORY: usize = 20;

/// The CouchDB document id of `(collection, id)`.
pub fn doc_id(collection: &str, id: &str) -> String {
    format!("{collection}:{id}")
}

/// `(collection, id)` of a CouchDB document id; `None` for design and
/// local documents and for ids without a valid collection prefix.
pub fn split_doc_id(doc_id: &str) -> Option<(&str, &str)> {
    if doc_id.starts_with('_') {
        return None;
    }
    let (c, id) = doc_id.split_once(':')?;
    (crate::domain::ids::validate_collection(c).is_ok() && !id.is_empty()).then_some((c, id))
}

/// The generation (`N` of `N-hash`) of a revision.
pub fn generation(rev: &str) -> Option<u64> {
    rev.split_once('-')?.0.parse().ok()
}

/// How many bits of a version hold the revision's hash.
const HASH_BITS: u32 = 32;

/// The protocol version of a revision: its generation in the high bits and
/// the first 32 bits of its hash below them. Two leaves of one generation
/// (an app's offline edit replicated beside a device's) so get different
/// versions, ordered as CouchDB orders them for its winner (the greater
/// revision id), and a base version names the exact revision it was read
/// at. A hash that is not hex counts as 0. `None` for a malformed
/// revision (a generation of 2^32 or more is one).
pub fn version(rev: &str) -> Option<u64> {
    let (g, hash) = rev.split_once('-')?;
    let g: u64 = g.parse().ok()?;
    let low = hash
        .get(..8)
        .and_then(|h| u32::from_str_radix(h, 16).ok())
        .unwrap_or(0);
    (g < 1 << HASH_BITS).then(|| g << HASH_BITS | u64::from(low))
}

/// Whether `base` (an op's `base_version`) names `c`: its version, or, for
/// a device synced before versions held the hash (they were the
/// generation alone, always below 2^32), its generation.
pub fn base_matches(base: Option<u64>, c: &Current) -> bool {
    match base {
        Some(b) if b < 1 << HASH_BITS => b == c.generation,
        b => b == Some(c.version),
    }
}

/// The version of a revision whose generation alone is known (an op's own
/// revision after later writes): below every revision of that generation.
pub fn version_of_generation(g: u64) -> u64 {
    g << HASH_BITS
}

/// The generation a version counts.
pub fn generation_of_version(v: u64) -> u64 {
    v >> HASH_BITS
}

/// One revision of a document as read from CouchDB.
#[derive(Debug, Clone, PartialEq)]
pub struct Current {
    pub rev: String,
    pub generation: u64,
    /// The protocol version ([`version`]).
    pub version: u64,
    pub deleted: bool,
    body: Map<String, Value>,
    /// Losing non-deleted leaves (CouchDB's `_conflicts`).
    pub conflicts: Vec<String>,
    /// The shape a document without syncd's bookkeeping is read in.
    setting: DocShape,
}

impl Current {
    /// A revision from a document body (with `_rev`, maybe `_deleted`
    /// and `_conflicts`); `None` if it has no valid `_rev`.
    pub fn from_body(body: Map<String, Value>) -> Option<Current> {
        let rev = body.get("_rev")?.as_str()?.to_owned();
        let generation = generation(&rev)?;
        let version = version(&rev)?;
        let deleted = body.get("_deleted").and_then(Value::as_bool) == Some(true);
        let conflicts = body
            .get("_conflicts")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default();
        Some(Current {
            rev,
            generation,
            version,
            deleted,
            body,
            conflicts,
            setting: DocShape::default(),
        })
    }

    /// Reads a document without syncd's bookkeeping in `setting`'s shape.
    pub fn read_as(mut self, setting: DocShape) -> Current {
        self.setting = setting;
        self
    }

    /// The winner among the leaves of `GET {doc}?open_revs=all`, with the
    /// other live leaves as its conflicts. CouchDB's rule: live beats
    /// deleted, then the higher generation, then the greater revision
    /// string.
    pub fn winner(leaves: Vec<Map<String, Value>>) -> Option<Current> {
        let mut all: Vec<Current> = leaves.into_iter().filter_map(Current::from_body).collect();
        all.sort_by(|a, b| {
            (!a.deleted, a.generation, &a.rev).cmp(&(!b.deleted, b.generation, &b.rev))
        });
        let mut win = all.pop()?;
        win.conflicts = all
            .into_iter()
            .rev() // best loser first
            .filter(|c| !c.deleted)
            .map(|c| c.rev)
            .collect();
        Some(win)
    }

    /// The record as the daemon sees it, from either shape: the `data`
    /// field of a wrapped document; else the top-level fields less `_*`
    /// and `syncd` (a native document, or one another program wrote).
    pub fn record(&self, id: &str) -> ServerRecord {
        let wrapped = is_wrapped(&self.body, self.setting);
        let data = match self.body.get("data") {
            _ if self.deleted => Document::new(),
            Some(Value::Object(m)) if wrapped => m.clone(),
            _ => self
                .body
                .iter()
                .filter(|(k, _)| !k.starts_with('_') && *k != RESERVED)
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        };
        let mut data = data;
        let refs = super::attach::of_document(&self.body);
        if !self.deleted && !refs.is_empty() {
            crate::domain::attachment::set_refs(&mut data, &refs);
        }
        let updated_at = if wrapped {
            self.body.get("updated_at")
        } else {
            self.body.get(RESERVED).and_then(|s| s.get("updated_at"))
        };
        ServerRecord {
            scope: None,
            id: id.to_owned(),
            version: self.version,
            updated_at: updated_at.and_then(Value::as_i64).unwrap_or(0),
            deleted: self.deleted,
            data,
        }
    }

    /// The `(op_id, generation)` pairs this document knows were applied:
    /// its own `syncd.op_id` at `syncd.gen`, then `syncd.prev`.
    fn applied_ops(&self) -> Vec<(String, u64)> {
        let Some(Value::Object(s)) = self.body.get("syncd") else {
            return Vec::new();
        };
        let mut out = Vec::new();
        if let (Some(op), Some(g)) = (
            s.get("op_id").and_then(Value::as_str),
            s.get("gen").and_then(Value::as_u64),
        ) {
            out.push((op.to_owned(), g));
        }
        for pair in s
            .get("prev")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            if let (Some(op), Some(g)) = (
                pair.get(0).and_then(Value::as_str),
                pair.get(1).and_then(Value::as_u64),
            ) {
                out.push((op.to_owned(), g));
            }
        }
        out
    }

    /// If `op` was applied already (its reply was lost), the record that
    /// application produced: this revision if it is the one the op wrote,
    /// else the op's own document at the generation it wrote.
    pub fn applied_as(&self, op: &WireOp, id: &str) -> Option<ServerRecord> {
        let (_, g) = self
            .applied_ops()
            .into_iter()
            .find(|(o, _)| *o == op.op_id)?;
        if g == self.generation {
            return Some(self.record(id));
        }
        Some(record_of(op, id, version_of_generation(g)))
    }
}

/// The record `op` produces at `version`.
pub fn record_of(op: &WireOp, id: &str, version: u64) -> ServerRecord {
    let deleted = op.kind == OpKind::Delete;
    ServerRecord {
        scope: None,
        id: id.to_owned(),
        version,
        updated_at: op.client_ts,
        deleted,
        data: if deleted {
            Document::new()
        } else {
            op.data.clone().unwrap_or_default()
        },
    }
}

/// The body to `PUT` for `op` on top of `base` (`None`: a new document),
/// in `shape`. The write produces generation `base + 1` (or 1), which is
/// recorded in `syncd.gen`; the op that wrote `base` moves into
/// `syncd.prev`. A native body needs [`reserved_field`] to be `None`.
pub fn body_for(op: &WireOp, base: Option<&Current>, shape: DocShape) -> Value {
    debug_assert!(
        reserved_field(op, shape).is_none(),
        "checked before the write"
    );
    let gen = base.map_or(1, |b| b.generation + 1);
    // Newest first, as `applied_ops` reads them.
    let mut known = base.map(Current::applied_ops).unwrap_or_default();
    known.truncate(HISTORY);
    let prev: Vec<Value> = known.into_iter().map(|(o, g)| json!([o, g])).collect();
    let deleted = op.kind == OpKind::Delete;
    let mut fields = match &op.data {
        Some(d) if !deleted => d.clone(),
        _ => Map::new(),
    };
    // The record's attachments become the document's.
    let refs = super::attach::take_refs(&mut fields);
    let (atts, book) = match deleted {
        true => (Map::new(), Map::new()),
        false => super::attach::for_write(&refs, base.map(|b| &b.body), gen),
    };
    let mut syncd = json!({"op_id": op.op_id, "client_id": op.client_id, "gen": gen, "prev": prev});
    if !book.is_empty() {
        syncd[super::attach::BOOK] = Value::Object(book);
    }
    let mut doc = match shape {
        DocShape::Native => {
            syncd["updated_at"] = json!(op.client_ts);
            let mut m = fields;
            m.insert(RESERVED.into(), syncd);
            m
        }
        DocShape::Wrapped => {
            let mut m = Map::new();
            m.insert("data".into(), Value::Object(fields));
            m.insert("updated_at".into(), json!(op.client_ts));
            m.insert(RESERVED.into(), syncd.take());
            m
        }
    };
    if !atts.is_empty() {
        doc.insert("_attachments".into(), Value::Object(atts));
    }
    if let Some(b) = base {
        doc.insert("_rev".into(), Value::String(b.rev.clone()));
        if deleted {
            doc.insert("_deleted".into(), Value::Bool(true));
        }
    }
    Value::Object(doc)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(kind: OpKind, op_id: &str, data: Option<Value>) -> WireOp {
        WireOp {
            scope: None,
            home: None,
            op_id: op_id.into(),
            client_id: "c1".into(),
            collection: "todos".into(),
            kind,
            id: None,
            local_id: "r1".into(),
            base_version: None,
            data: data.and_then(|d| d.as_object().cloned()),
            client_ts: 77,
        }
    }

    fn cur(v: Value) -> Current {
        Current::from_body(v.as_object().cloned().unwrap_or_default()).expect("rev")
    }

    #[test]
    fn doc_ids() {
        assert_eq!(doc_id("todos", "a:b"), "todos:a:b");
        assert_eq!(split_doc_id("todos:a:b"), Some(("todos", "a:b")));
        for bad in [
            "_design/x",
            "_local/x",
            "noprefix",
            "todos:",
            "bad name:x",
            ":x",
        ] {
            assert_eq!(split_doc_id(bad), None, "{bad}");
        }
        assert_eq!(generation("12-abc"), Some(12));
        assert_eq!(generation("x"), None);
    }

    #[test]
    fn versions_order_revisions_as_couchdb_picks_winners() {
        let app = version("2-db34a1c0ffee").expect("app");
        let device = version("2-1fc80000aaaa").expect("device");
        // Two leaves of one generation: different, the greater id higher.
        assert!(app > device && generation_of_version(app) == 2);
        assert!(version("3-00000000").expect("3") > app);
        assert_eq!(version("4-zz"), Some(version_of_generation(4)));
        assert!(version_of_generation(2) <= device);
        assert_eq!(version("x-1"), None);
        // A document written millions of times still has a version.
        assert!(version(&format!("{}-ffffffff", 1u64 << 22)).is_some_and(|v| v > 1 << 53));
        assert_eq!(version(&format!("{}-a", 1u64 << 32)), None);
    }

    #[test]
    fn bases_name_one_revision_and_legacy_bases_a_generation() {
        let winner = cur(json!({"_rev": "2-db34a1c0", "data": {}}));
        let loser = version("2-1fc80000").expect("loser");
        assert!(base_matches(Some(winner.version), &winner));
        // An edit made on the losing leaf of the same generation.
        assert!(!base_matches(Some(loser), &winner));
        // A device synced when versions were generations.
        assert!(base_matches(Some(2), &winner));
        assert!(!base_matches(Some(1), &winner));
        assert!(!base_matches(None, &winner));
    }

    #[test]
    fn body_chain_remembers_op_ids() {
        for shape in [DocShape::Native, DocShape::Wrapped] {
            body_chain(shape);
        }
    }

    fn body_chain(shape: DocShape) {
        let create = op(OpKind::Create, "o1", Some(json!({"t": 1})));
        let b1 = body_for(&create, None, shape);
        assert_eq!(b1["syncd"]["gen"], 1);
        assert!(b1.get("_rev").is_none());
        let mut v1 = b1.clone();
        v1["_rev"] = json!("1-a");
        let c1 = cur(v1);
        assert_eq!(c1.applied_as(&create, "r1"), Some(c1.record("r1")));
        assert_eq!(c1.record("r1").updated_at, 77);
        let update = op(OpKind::Update, "o2", Some(json!({"t": 2})));
        let mut v2 = body_for(&update, Some(&c1), shape);
        assert_eq!(v2["_rev"], "1-a");
        assert_eq!(v2["syncd"]["prev"], json!([["o1", 1]]));
        v2["_rev"] = json!("2-b");
        let c2 = cur(v2);
        // o1 was applied at generation 1: its own record, not the current one.
        let r = c2.applied_as(&create, "r1").expect("applied");
        assert_eq!((r.version, r.data.get("t")), (1 << 32, Some(&json!(1))));
        assert_eq!(
            c2.applied_as(&update, "r1").map(|r| r.version),
            Some(2 << 32)
        );
        assert_eq!(c2.applied_as(&op(OpKind::Update, "o9", None), "r1"), None);
        let del = op(OpKind::Delete, "o3", None);
        let v3 = body_for(&del, Some(&c2), shape);
        assert_eq!(v3["_deleted"], true);
        assert_eq!(v3["syncd"]["prev"], json!([["o2", 2], ["o1", 1]]));
    }

    #[test]
    fn native_and_wrapped_shapes() {
        let o = op(
            OpKind::Create,
            "o1",
            Some(json!({"title": "x", "data": {"n": 1}})),
        );
        let native = body_for(&o, None, DocShape::Native);
        assert_eq!(native["title"], "x");
        assert_eq!(native["syncd"]["updated_at"], 77);
        assert!(native.get("updated_at").is_none());
        let wrapped = body_for(&o, None, DocShape::Wrapped);
        assert_eq!(wrapped["data"]["title"], "x");
        assert_eq!(wrapped["updated_at"], 77);
        // Both read back as the same record, whatever the setting.
        for mut body in [native, wrapped] {
            body["_rev"] = json!("1-a");
            let r = cur(body).record("r1");
            assert_eq!(
                Value::Object(r.data),
                json!({"title": "x", "data": {"n": 1}})
            );
            assert_eq!(r.updated_at, 77);
        }
        // A native record whose only field is `data` stays native.
        let only = op(OpKind::Create, "o2", Some(json!({"data": {"n": 1}})));
        let mut b = body_for(&only, None, DocShape::Native);
        b["_rev"] = json!("1-a");
        assert_eq!(
            Value::Object(cur(b).record("r1").data),
            json!({"data": {"n": 1}})
        );
        // Fields a native document cannot hold.
        for (data, field) in [
            (json!({"syncd": 1}), Some("syncd")),
            (json!({"_x": 1}), Some("_x")),
            (json!({"a_": 1}), None),
        ] {
            let o = op(OpKind::Update, "o3", Some(data));
            assert_eq!(reserved_field(&o, DocShape::Native), field);
            assert_eq!(reserved_field(&o, DocShape::Wrapped), None);
        }
    }

    #[test]
    fn history_is_bounded() {
        let mut c = cur(json!({"_rev": "1-a", "syncd": {"op_id": "o0", "gen": 1}}));
        for i in 1..40u64 {
            let mut v = body_for(
                &op(OpKind::Update, &format!("o{i}"), Some(json!({}))),
                Some(&c),
                DocShape::Native,
            );
            v["_rev"] = json!(format!("{}-h", i + 1));
            c = cur(v);
        }
        assert!(c.applied_ops().len() <= HISTORY + 1);
        assert!(c
            .applied_as(&op(OpKind::Update, "o39", None), "r1")
            .is_some());
        assert!(c
            .applied_as(&op(OpKind::Update, "o0", None), "r1")
            .is_none());
    }

    #[test]
    fn foreign_documents_and_tombstones() {
        // An app's document (a PouchDB app): its fields, `updated_at` among
        // them; no time of syncd's (counts as 0).
        let c = cur(json!({"_id": "todos:r1", "_rev": "3-x", "title": "hi", "updated_at": 5}));
        let r = c.record("r1");
        assert_eq!((generation_of_version(r.version), r.updated_at), (3, 0));
        assert_eq!(
            Value::Object(r.data),
            json!({"title": "hi", "updated_at": 5})
        );
        // A document another program wrote in the wrapped shape (no
        // `syncd`) is read in the setting's shape: an app's own `data`
        // field is never unwrapped on a native database.
        let body = json!({"_rev": "2-x", "data": {"a": 1}, "updated_at": 5});
        let w = cur(body.clone()).read_as(DocShape::Wrapped).record("r1");
        assert_eq!((Value::Object(w.data), w.updated_at), (json!({"a": 1}), 5));
        let n = cur(body).record("r1");
        assert_eq!(
            Value::Object(n.data),
            json!({"data": {"a": 1}, "updated_at": 5})
        );
        let t = cur(json!({"_rev": "4-y", "_deleted": true, "data": {"a": 1}}));
        let r = t.record("r1");
        assert!(r.deleted && r.data.is_empty());
        // A revision a foreign writer made on top of ours keeps our op at
        // its own generation.
        let f = cur(json!({"_rev": "5-z", "data": {"t": 9}, "syncd": {"op_id": "o1", "gen": 4}}));
        let o1 = op(OpKind::Update, "o1", Some(json!({"t": 1})));
        assert_eq!(f.applied_as(&o1, "r1").map(|r| r.version), Some(4 << 32));
    }

    #[test]
    fn winner_follows_couchdb() {
        let leaves = |v: Value| {
            v.as_array()
                .into_iter()
                .flatten()
                .filter_map(|l| l.as_object().cloned())
                .collect::<Vec<_>>()
        };
        let w = Current::winner(leaves(json!([
            {"_rev": "3-aaa"}, {"_rev": "3-fff"}, {"_rev": "2-zzz"},
            {"_rev": "9-del", "_deleted": true}
        ])))
        .expect("winner");
        assert_eq!(w.rev, "3-fff");
        assert_eq!(w.conflicts, ["3-aaa", "2-zzz"]);
        let w = Current::winner(leaves(
            json!([{"_rev": "2-a", "_deleted": true}, {"_rev": "3-b", "_deleted": true}]),
        ))
        .expect("winner");
        assert!(w.deleted && w.rev == "3-b" && w.conflicts.is_empty());
        assert!(Current::winner(Vec::new()).is_none());
    }
}
