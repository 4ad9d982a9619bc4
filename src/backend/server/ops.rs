//! Operation validation and the storage-independent apply rules.
//!
//! Everything here is pure: parsing a request body into [`ValidOp`]s, and
//! [`plan`], which decides what one operation does to the current record.
//! Every [`BackendStore`](super::store::BackendStore) implementation applies
//! [`plan`], so the protocol semantics live in exactly one place.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::backend::protocol::{Document, OpKind, ServerRecord};

/// Longest accepted `op_id`, `id` and `collection`, in bytes.
pub const MAX_KEY_BYTES: usize = 256;

/// A request or an operation refused before it reached the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// HTTP status: 400 (malformed) or 422 (well-formed but semantically wrong).
    pub status: u16,
    /// Human-readable reason, sent as `{"error": reason}`.
    pub reason: String,
}

impl Rejection {
    pub fn bad_request(reason: impl Into<String>) -> Self {
        Rejection {
            status: 400,
            reason: reason.into(),
        }
    }

    pub fn unprocessable(reason: impl Into<String>) -> Self {
        Rejection {
            status: 422,
            reason: reason.into(),
        }
    }
}

/// What an operation does, with the fields its kind needs.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    Create {
        data: Document,
    },
    Update {
        id: String,
        base_version: u64,
        data: Document,
    },
    Delete {
        id: String,
        base_version: u64,
    },
}

impl Action {
    /// The server id the operation targets (`None` for create).
    pub fn target_id(&self) -> Option<&str> {
        match self {
            Action::Create { .. } => None,
            Action::Update { id, .. } | Action::Delete { id, .. } => Some(id),
        }
    }
}

/// An operation that passed validation.
#[derive(Debug, Clone, PartialEq)]
pub struct ValidOp {
    pub op_id: String,
    pub client_id: String,
    pub collection: String,
    pub local_id: String,
    pub client_ts: i64,
    pub action: Action,
}

/// A record as a store keeps it: the wire record plus its collection.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredRecord {
    pub collection: String,
    pub record: ServerRecord,
}

/// The lenient shape an operation is first parsed into, so that a wrong
/// `data` type or a missing `id` is a 422 with a precise reason rather than a
/// generic deserialisation error.
#[derive(Debug, Deserialize)]
struct LooseOp {
    op_id: String,
    #[serde(default)]
    client_id: Option<String>,
    collection: String,
    kind: OpKind,
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    local_id: Option<String>,
    #[serde(default)]
    base_version: Option<u64>,
    #[serde(default)]
    data: Option<Value>,
    client_ts: i64,
}

#[derive(Debug, Deserialize)]
struct LooseBatch {
    ops: Vec<Value>,
}

fn json_reason(what: &str, e: &serde_json::Error) -> String {
    use serde_json::error::Category;
    match e.classify() {
        Category::Syntax | Category::Eof => format!("malformed JSON: {e}"),
        Category::Data | Category::Io => format!("invalid {what}: {e}"),
    }
}

/// Parses and validates the body of `POST v1/ops`.
pub fn parse_op(body: &[u8]) -> Result<ValidOp, Rejection> {
    let loose: LooseOp = serde_json::from_slice(body)
        .map_err(|e| Rejection::bad_request(json_reason("operation", &e)))?;
    validate(loose)
}

/// Parses the body of `POST v1/ops/batch`.
///
/// The envelope must be well-formed (else `Err`, a whole-request 400/422).
/// Each operation is then validated on its own: a bad operation becomes an
/// `Err` entry at its position, so that the ops before it still apply and the
/// batch result names the bad one.
pub fn parse_batch(body: &[u8]) -> Result<Vec<Result<ValidOp, Rejection>>, Rejection> {
    let batch: LooseBatch = serde_json::from_slice(body)
        .map_err(|e| Rejection::bad_request(json_reason("batch", &e)))?;
    if batch.ops.is_empty() {
        return Err(Rejection::unprocessable("batch has no ops"));
    }
    Ok(batch
        .ops
        .into_iter()
        .enumerate()
        .map(|(i, v)| {
            serde_json::from_value::<LooseOp>(v)
                .map_err(|e| Rejection::bad_request(format!("invalid operation {i}: {e}")))
                .and_then(validate)
        })
        .collect())
}

fn check_key(field: &str, value: &str) -> Result<(), Rejection> {
    if value.is_empty() {
        return Err(Rejection::unprocessable(format!(
            "{field} must not be empty"
        )));
    }
    if value.len() > MAX_KEY_BYTES {
        return Err(Rejection::unprocessable(format!(
            "{field} is longer than {MAX_KEY_BYTES} bytes"
        )));
    }
    Ok(())
}

fn document(kind: &str, data: Option<Value>) -> Result<Document, Rejection> {
    match data {
        Some(Value::Object(map)) => Ok(map),
        None => Err(Rejection::unprocessable(format!(
            "{kind} needs data: a JSON object"
        ))),
        Some(_) => Err(Rejection::unprocessable(format!(
            "{kind} data must be a JSON object"
        ))),
    }
}

fn target(kind: &str, id: Option<String>, base: Option<u64>) -> Result<(String, u64), Rejection> {
    let id = id.ok_or_else(|| Rejection::unprocessable(format!("{kind} needs an id")))?;
    check_key("id", &id)?;
    let base =
        base.ok_or_else(|| Rejection::unprocessable(format!("{kind} needs base_version")))?;
    Ok((id, base))
}

fn validate(op: LooseOp) -> Result<ValidOp, Rejection> {
    check_key("op_id", &op.op_id)?;
    check_key("collection", &op.collection)?;
    let action = match op.kind {
        OpKind::Create => {
            if op.id.is_some() {
                return Err(Rejection::unprocessable(
                    "create must not carry an id: the server assigns it",
                ));
            }
            if op.base_version.is_some() {
                return Err(Rejection::unprocessable(
                    "create must not carry a base_version",
                ));
            }
            Action::Create {
                data: document("create", op.data)?,
            }
        }
        OpKind::Update => {
            let (id, base_version) = target("update", op.id, op.base_version)?;
            Action::Update {
                id,
                base_version,
                data: document("update", op.data)?,
            }
        }
        // `data` of a delete is ignored (the contract says null).
        OpKind::Delete => {
            let (id, base_version) = target("delete", op.id, op.base_version)?;
            Action::Delete { id, base_version }
        }
    };
    Ok(ValidOp {
        op_id: op.op_id,
        client_id: op.client_id.unwrap_or_default(),
        collection: op.collection,
        local_id: op.local_id.unwrap_or_default(),
        client_ts: op.client_ts,
        action,
    })
}

/// What applying one (not previously applied) operation does.
#[derive(Debug, Clone, PartialEq)]
pub enum Plan {
    /// Store this record (a new version) and append it to the change log.
    Write(ServerRecord),
    /// Applied without a change: reply 200 with this (current) record. Only a
    /// delete of a tombstone at its current version.
    Unchanged(ServerRecord),
    /// `base_version` is stale, or the target is deleted: 409 with the current record.
    Conflict(ServerRecord),
    /// The target id does not exist in the op's collection: 404 with this reason.
    NotFound(String),
}

/// Decides what `op` does given `current`, the stored record with the op's
/// target id (`None` if absent or for create). `new_id` makes a fresh server id.
pub fn plan(op: &ValidOp, current: Option<&StoredRecord>, new_id: impl FnOnce() -> String) -> Plan {
    let current = current.filter(|c| c.collection == op.collection);
    let not_found = |id: &str| {
        Plan::NotFound(format!(
            "no record {id:?} in collection {:?}",
            op.collection
        ))
    };
    match &op.action {
        Action::Create { data } => Plan::Write(ServerRecord {
            id: new_id(),
            version: 1,
            updated_at: op.client_ts,
            deleted: false,
            data: data.clone(),
        }),
        Action::Update {
            id,
            base_version,
            data,
        } => match current {
            None => not_found(id),
            Some(c) if c.record.version != *base_version || c.record.deleted => {
                Plan::Conflict(c.record.clone())
            }
            Some(c) => Plan::Write(ServerRecord {
                id: id.clone(),
                version: c.record.version.saturating_add(1),
                updated_at: op.client_ts,
                deleted: false,
                data: data.clone(),
            }),
        },
        Action::Delete { id, base_version } => match current {
            None => not_found(id),
            Some(c) if c.record.version != *base_version => Plan::Conflict(c.record.clone()),
            Some(c) if c.record.deleted => Plan::Unchanged(c.record.clone()),
            Some(c) => Plan::Write(ServerRecord {
                id: id.clone(),
                version: c.record.version.saturating_add(1),
                updated_at: op.client_ts,
                deleted: true,
                data: Document::new(),
            }),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn body(v: Value) -> Vec<u8> {
        serde_json::to_vec(&v).unwrap_or_default()
    }

    fn op(v: Value) -> Result<ValidOp, Rejection> {
        parse_op(&body(v))
    }

    fn create_json() -> Value {
        json!({"op_id": "o1", "client_id": "c", "collection": "todos", "kind": "create",
               "id": null, "local_id": "l1", "base_version": null,
               "data": {"title": "milk"}, "client_ts": 5})
    }

    #[test]
    fn valid_create() {
        let o = op(create_json()).expect("valid");
        assert_eq!(o.op_id, "o1");
        assert_eq!(o.client_ts, 5);
        assert!(matches!(o.action, Action::Create { ref data } if data["title"] == "milk"));
    }

    #[test]
    fn malformed_json_is_400() {
        let r = parse_op(b"{not json").unwrap_err();
        assert_eq!(r.status, 400);
        assert!(r.reason.contains("malformed JSON"), "{}", r.reason);
    }

    #[test]
    fn missing_field_is_400_naming_it() {
        let mut v = create_json();
        v.as_object_mut().map(|m| m.remove("op_id"));
        let r = op(v).unwrap_err();
        assert_eq!(r.status, 400);
        assert!(r.reason.contains("op_id"), "{}", r.reason);
        let mut v = create_json();
        v["kind"] = json!("upsert");
        assert_eq!(op(v).unwrap_err().status, 400);
    }

    #[test]
    fn semantic_rejections_are_422() {
        let mut v = create_json();
        v["id"] = json!("r-1");
        assert_eq!(op(v).unwrap_err().status, 422);
        let mut v = create_json();
        v["data"] = json!([1, 2]);
        assert_eq!(op(v).unwrap_err().status, 422);
        let mut v = create_json();
        v["data"] = Value::Null;
        assert_eq!(op(v).unwrap_err().status, 422);
        let mut v = create_json();
        v["collection"] = json!("");
        assert_eq!(op(v).unwrap_err().status, 422);
        let mut v = create_json();
        v["kind"] = json!("update");
        v["id"] = json!("r-1");
        let r = op(v).unwrap_err();
        assert_eq!(r.status, 422);
        assert!(r.reason.contains("base_version"), "{}", r.reason);
        let mut v = create_json();
        v["kind"] = json!("delete");
        v["base_version"] = json!(1);
        let r = op(v).unwrap_err();
        assert_eq!(r.status, 422);
        assert!(r.reason.contains("id"), "{}", r.reason);
    }

    #[test]
    fn batch_envelope_and_per_op_errors() {
        assert_eq!(parse_batch(b"{}").unwrap_err().status, 400);
        assert_eq!(parse_batch(br#"{"ops":[]}"#).unwrap_err().status, 422);
        let mut bad = create_json();
        bad["id"] = json!("x");
        let parsed = parse_batch(&body(json!({"ops": [create_json(), bad, {"x": 1}]})))
            .expect("envelope ok");
        assert!(parsed[0].is_ok());
        assert_eq!(parsed[1].as_ref().unwrap_err().status, 422);
        assert_eq!(parsed[2].as_ref().unwrap_err().status, 400);
    }

    fn stored(version: u64, deleted: bool) -> StoredRecord {
        StoredRecord {
            collection: "todos".into(),
            record: ServerRecord {
                id: "r-1".into(),
                version,
                updated_at: 1,
                deleted,
                data: Document::new(),
            },
        }
    }

    fn update(base: u64) -> ValidOp {
        ValidOp {
            op_id: "o".into(),
            client_id: String::new(),
            collection: "todos".into(),
            local_id: String::new(),
            client_ts: 9,
            action: Action::Update {
                id: "r-1".into(),
                base_version: base,
                data: Document::new(),
            },
        }
    }

    #[test]
    fn plan_rules() {
        let id = || "new".to_string();
        assert!(matches!(plan(&update(2), Some(&stored(2, false)), id),
            Plan::Write(r) if r.version == 3 && r.updated_at == 9 && !r.deleted));
        assert!(
            matches!(plan(&update(1), Some(&stored(2, false)), id), Plan::Conflict(r) if r.version == 2)
        );
        assert!(
            matches!(plan(&update(2), Some(&stored(2, true)), id), Plan::Conflict(r) if r.deleted)
        );
        assert!(matches!(plan(&update(2), None, id), Plan::NotFound(_)));
        let mut other = stored(2, false);
        other.collection = "notes".into();
        assert!(matches!(
            plan(&update(2), Some(&other), id),
            Plan::NotFound(_)
        ));

        let mut del = update(2);
        del.action = Action::Delete {
            id: "r-1".into(),
            base_version: 2,
        };
        assert!(matches!(plan(&del, Some(&stored(2, false)), id),
            Plan::Write(r) if r.version == 3 && r.deleted && r.data.is_empty()));
        assert!(
            matches!(plan(&del, Some(&stored(2, true)), id), Plan::Unchanged(r) if r.version == 2)
        );
        assert!(matches!(
            plan(&del, Some(&stored(3, true)), id),
            Plan::Conflict(_)
        ));
    }
}
