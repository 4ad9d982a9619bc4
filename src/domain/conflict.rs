//! Conflict resolution: what to do when the server answers 409. Pure: the
//! op, the local base and the server record in, a [`Resolution`] out.
//!
//! Rules per strategy (docs/guarantees.md repeats them):
//!
//! - `server-wins`: always take the server record; the op is dropped.
//! - `last-write-wins`: the local change wins when its `client_ts` is
//!   later than the server's `updated_at`; on a tie the server wins (every
//!   device sees the same tie and keeps the same copy). A winning update
//!   against a tombstone re-creates the record; a winning delete against a
//!   live record re-sends the delete on top of it.
//! - `merge`: three-way over top-level keys with the stored base (the last
//!   server version this device saw). A key changed on one side takes that
//!   side; changed on both takes the per-field rule (default
//!   last-write-wins by timestamp, server on a tie). Edits beat deletes
//!   either way round: a local update against a server delete re-creates
//!   the record with the local document; a local delete against a server
//!   update is dropped and the server's record is kept. When the merge
//!   equals the server's document nothing is re-sent.
//! - `manual`: the op is parked with the server record until an app or a
//!   person resolves it.
//!
//! Under every strategy a delete meeting a tombstone needs nothing more: the
//! server's tombstone is taken.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::Value;

use super::document::Document;
use super::op::OpKind;
use super::record::ServerRecord;

/// Conflict strategies (docs/backend-protocol.md, "Conflict strategies").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Strategy {
    ServerWins,
    LastWriteWins,
    Merge,
    Manual,
}

impl Strategy {
    pub fn as_str(self) -> &'static str {
        match self {
            Strategy::ServerWins => "server-wins",
            Strategy::LastWriteWins => "last-write-wins",
            Strategy::Merge => "merge",
            Strategy::Manual => "manual",
        }
    }
}

/// How `merge` settles a top-level key changed on both sides.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FieldRule {
    /// The later of the local op's client_ts and the server's updated_at.
    LastWriteWins,
    Local,
    Server,
}

/// What a conflict resolution does.
#[derive(Debug, Clone, PartialEq)]
pub enum Resolution {
    /// Take the server's record locally; the op is dropped.
    TakeServer,
    /// Re-send the local change on top of the server record as a new op at
    /// the head of the queue. `data` is `None` for a delete.
    Resend {
        kind: OpKind,
        data: Option<Document>,
    },
    /// Park for a person or an app to decide (`manual`).
    Park,
}

impl Resolution {
    /// A name for logs: never the document.
    pub fn name(&self) -> &'static str {
        match self {
            Resolution::TakeServer => "take-server",
            Resolution::Resend { .. } => "re-send",
            Resolution::Park => "park",
        }
    }
}

/// Whether one of a record's later writes that sit behind another
/// record's op in the queue (its *tail*) still goes to the server once the
/// head op's 409 was decided with `resolution`. `local_kind` is what the
/// decided change was; `op_ts` is the tail write's client_ts.
/// - A re-send: the local side won, and the tail is newer still.
/// - Both sides had deleted the record: nothing was lost, and a write made
///   after the delete is a new one; it goes, and meets the server (and, if
///   it conflicts, the strategy) on its own.
/// - Otherwise, server-wins and manual (park) send nothing of the record.
/// - Last-write-wins, head lost: a tail write goes only if it is newer than
///   the server's change; the older ones lost to it like the head.
/// - Merge: the tail is rebased onto what the server has.
pub fn tail_op_survives(
    strategy: Strategy,
    resolution: &Resolution,
    local_kind: OpKind,
    op_ts: i64,
    server: &ServerRecord,
) -> bool {
    match resolution {
        Resolution::Resend { .. } => true,
        Resolution::Park => false,
        Resolution::TakeServer if local_kind == OpKind::Delete && server.deleted => true,
        Resolution::TakeServer => match strategy {
            Strategy::ServerWins | Strategy::Manual => false,
            Strategy::LastWriteWins => op_ts > server.updated_at,
            Strategy::Merge => true,
        },
    }
}

/// Carries one local edit over to a new base: the keys `next` changed
/// relative to `prev` (set, changed or removed) are applied to `onto`;
/// every other key keeps `onto`'s value. Used to keep a later queued edit
/// after its record's conflict was merged.
pub fn rebase(prev: &Document, next: &Document, onto: &Document) -> Document {
    let mut out = onto.clone();
    for (k, v) in next {
        if prev.get(k) != Some(v) {
            out.insert(k.clone(), v.clone());
        }
    }
    for k in prev.keys() {
        if !next.contains_key(k) {
            out.remove(k);
        }
    }
    out
}

/// The local side of a conflict.
#[derive(Debug, Clone)]
pub struct LocalChange<'a> {
    pub kind: OpKind,
    pub data: Option<&'a Document>,
    pub client_ts: i64,
    /// The server document this change was made on (the merge base).
    pub base: Option<&'a Document>,
}

/// Decides a 409.
pub fn resolve(
    strategy: Strategy,
    rules: &BTreeMap<String, FieldRule>,
    local: &LocalChange<'_>,
    server: &ServerRecord,
) -> Resolution {
    if local.kind == OpKind::Delete && server.deleted {
        return Resolution::TakeServer;
    }
    let local_newer = local.client_ts > server.updated_at;
    match strategy {
        Strategy::ServerWins => Resolution::TakeServer,
        Strategy::Manual => Resolution::Park,
        Strategy::LastWriteWins => {
            if !local_newer {
                return Resolution::TakeServer;
            }
            match (local.kind, local.data) {
                (OpKind::Delete, _) => Resolution::Resend {
                    kind: OpKind::Delete,
                    data: None,
                },
                (_, Some(d)) => Resolution::Resend {
                    kind: if server.deleted {
                        OpKind::Create
                    } else {
                        OpKind::Update
                    },
                    data: Some(d.clone()),
                },
                (_, None) => Resolution::TakeServer,
            }
        }
        Strategy::Merge => match (local.kind, local.data) {
            (OpKind::Delete, _) => Resolution::TakeServer,
            (_, None) => Resolution::TakeServer,
            (_, Some(d)) if server.deleted => Resolution::Resend {
                kind: OpKind::Create,
                data: Some(d.clone()),
            },
            (_, Some(d)) => {
                let empty = Document::new();
                let merged = merge3(
                    local.base.unwrap_or(&empty),
                    d,
                    &server.data,
                    rules,
                    local_newer,
                );
                if merged == server.data {
                    Resolution::TakeServer
                } else {
                    Resolution::Resend {
                        kind: OpKind::Update,
                        data: Some(merged),
                    }
                }
            }
        },
    }
}

/// Three-way merge of top-level keys. `local_newer` settles keys changed on
/// both sides under the last-write-wins field rule.
pub fn merge3(
    base: &Document,
    local: &Document,
    server: &Document,
    rules: &BTreeMap<String, FieldRule>,
    local_newer: bool,
) -> Document {
    let mut keys: Vec<&String> = base
        .keys()
        .chain(local.keys())
        .chain(server.keys())
        .collect();
    keys.sort();
    keys.dedup();
    let mut out = Document::new();
    for k in keys {
        let (b, l, s) = (base.get(k), local.get(k), server.get(k));
        let pick: Option<&Value> = if l == s {
            l
        } else if l == b {
            s
        } else if s == b {
            l
        } else {
            match rules.get(k).copied().unwrap_or(FieldRule::LastWriteWins) {
                FieldRule::Local => l,
                FieldRule::Server => s,
                FieldRule::LastWriteWins => {
                    if local_newer {
                        l
                    } else {
                        s
                    }
                }
            }
        };
        if let Some(v) = pick {
            out.insert(k.clone(), v.clone());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn doc(v: Value) -> Document {
        match v {
            Value::Object(m) => m,
            _ => panic!("not an object"),
        }
    }

    fn server(data: Value, ts: i64, deleted: bool) -> ServerRecord {
        ServerRecord {
            scope: None,
            id: "r1".into(),
            version: 3,
            updated_at: ts,
            deleted,
            data: doc(data),
        }
    }

    #[test]
    fn merge_takes_each_side_and_rules() {
        let base = doc(json!({"a": 1, "b": 1, "c": 1, "d": 1}));
        let local = doc(json!({"a": 2, "b": 1, "c": 5, "e": 1}));
        let srv = doc(json!({"a": 1, "b": 3, "c": 6, "d": 1}));
        let mut rules = BTreeMap::new();
        let m = merge3(&base, &local, &srv, &rules, true);
        // a: local only; b: server only; c: both -> lww (local newer);
        // d: removed locally; e: added locally.
        assert_eq!(Value::Object(m), json!({"a": 2, "b": 3, "c": 5, "e": 1}));
        rules.insert("c".into(), FieldRule::Server);
        let m = merge3(&base, &local, &srv, &rules, true);
        assert_eq!(m["c"], json!(6));
        let m = merge3(&base, &local, &srv, &BTreeMap::new(), false);
        assert_eq!(m["c"], json!(6));
    }

    #[test]
    fn a_tail_survives_only_where_it_can_still_reach_the_server() {
        use Strategy::*;
        let srv = server(json!({"x": 1}), 200, false);
        let tomb = server(json!({}), 200, true);
        let take = Resolution::TakeServer;
        let resend = Resolution::Resend {
            kind: OpKind::Update,
            data: None,
        };
        let survives =
            |s, r: &Resolution, kind, ts, srv: &ServerRecord| tail_op_survives(s, r, kind, ts, srv);
        assert!(survives(LastWriteWins, &take, OpKind::Update, 201, &srv));
        assert!(
            !survives(LastWriteWins, &take, OpKind::Update, 200, &srv),
            "a tie goes to the server"
        );
        assert!(!survives(LastWriteWins, &take, OpKind::Update, 150, &srv));
        assert!(survives(Merge, &take, OpKind::Update, 150, &srv));
        assert!(!survives(ServerWins, &take, OpKind::Update, 999, &srv));
        assert!(!survives(
            Manual,
            &Resolution::Park,
            OpKind::Update,
            999,
            &srv
        ));
        for s in [ServerWins, LastWriteWins, Merge, Manual] {
            assert!(survives(s, &resend, OpKind::Update, 0, &srv));
            // Both sides deleted it: a write made after the delete is new.
            assert!(survives(s, &take, OpKind::Delete, 0, &tomb), "{s:?}");
        }
    }

    #[test]
    fn lww_ties_go_to_server() {
        let d = doc(json!({"x": 1}));
        let l = LocalChange {
            kind: OpKind::Update,
            data: Some(&d),
            client_ts: 10,
            base: None,
        };
        let r = resolve(
            Strategy::LastWriteWins,
            &BTreeMap::new(),
            &l,
            &server(json!({"x": 2}), 10, false),
        );
        assert_eq!(r, Resolution::TakeServer);
        let l = LocalChange { client_ts: 11, ..l };
        let r = resolve(
            Strategy::LastWriteWins,
            &BTreeMap::new(),
            &l,
            &server(json!({"x": 2}), 10, false),
        );
        assert_eq!(
            r,
            Resolution::Resend {
                kind: OpKind::Update,
                data: Some(d.clone())
            }
        );
        // Newer update against a tombstone re-creates.
        let r = resolve(
            Strategy::LastWriteWins,
            &BTreeMap::new(),
            &l,
            &server(json!({}), 10, true),
        );
        assert_eq!(
            r,
            Resolution::Resend {
                kind: OpKind::Create,
                data: Some(d)
            }
        );
    }

    #[test]
    fn delete_rules() {
        let del = LocalChange {
            kind: OpKind::Delete,
            data: None,
            client_ts: 20,
            base: None,
        };
        let live = server(json!({"x": 2}), 10, false);
        let tomb = server(json!({}), 10, true);
        let none = BTreeMap::new();
        for s in [
            Strategy::ServerWins,
            Strategy::LastWriteWins,
            Strategy::Merge,
            Strategy::Manual,
        ] {
            assert_eq!(
                resolve(s, &none, &del, &tomb),
                Resolution::TakeServer,
                "{s:?}"
            );
        }
        assert_eq!(
            resolve(Strategy::LastWriteWins, &none, &del, &live),
            Resolution::Resend {
                kind: OpKind::Delete,
                data: None
            }
        );
        assert_eq!(
            resolve(Strategy::Merge, &none, &del, &live),
            Resolution::TakeServer
        );
        assert_eq!(
            resolve(Strategy::ServerWins, &none, &del, &live),
            Resolution::TakeServer
        );
        assert_eq!(
            resolve(Strategy::Manual, &none, &del, &live),
            Resolution::Park
        );
        let d = doc(json!({"y": 1}));
        let upd = LocalChange {
            kind: OpKind::Update,
            data: Some(&d),
            client_ts: 1,
            base: None,
        };
        assert_eq!(
            resolve(Strategy::Merge, &none, &upd, &tomb),
            Resolution::Resend {
                kind: OpKind::Create,
                data: Some(d.clone())
            }
        );
        assert_eq!(
            resolve(Strategy::ServerWins, &none, &upd, &tomb),
            Resolution::TakeServer
        );
    }
}

#[cfg(test)]
mod rebase_tests {
    use super::*;
    use serde_json::json;

    fn d(v: Value) -> Document {
        v.as_object().cloned().unwrap_or_default()
    }

    #[test]
    fn rebase_carries_only_the_edit() {
        let prev = d(json!({"a": 1, "b": 1, "gone": 1}));
        let next = d(json!({"a": 1, "b": 2, "new": 3}));
        let onto = d(json!({"a": 9, "b": 1, "gone": 1, "srv": 5}));
        assert_eq!(
            rebase(&prev, &next, &onto),
            d(json!({"a": 9, "b": 2, "new": 3, "srv": 5}))
        );
    }
}
