//! Operation validation and the storage-independent apply rules.
//!
//! Everything here is pure: parsing a request body into [`ValidOp`]s, and
//! [`plan`], which decides what one operation does to the current record.
//! Every [`BackendStore`](super::store::BackendStore) implementation applies
//! [`plan`], so the protocol semantics live in exactly one place.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::backend::protocol::{Document, OpKind, ServerRecord};
use crate::domain::scope::SINGLE_SCOPE;

/// Longest accepted `op_id`, `id` and `collection`, in bytes.
pub const MAX_KEY_BYTES: usize = 256;

/// Why a record id cannot be stored (a 422).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BadId {
    Empty,
    TooLong,
    /// Contains a control character (U+0000..U+001F, U+007F..U+009F).
    ControlChar,
}

impl std::fmt::Display for BadId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BadId::Empty => f.write_str("id must not be empty"),
            BadId::TooLong => write!(f, "id is longer than {MAX_KEY_BYTES} bytes"),
            BadId::ControlChar => f.write_str("id must not contain control characters"),
        }
    }
}

/// The rule for record ids the server stores: 1 to [`MAX_KEY_BYTES`] bytes
/// of UTF-8 with no control character. Any other string is accepted as is
/// (case-sensitive, no normalisation): `settings/theme`, a ULID, a UUID.
pub fn check_id(id: &str) -> Result<(), BadId> {
    if id.is_empty() {
        Err(BadId::Empty)
    } else if id.len() > MAX_KEY_BYTES {
        Err(BadId::TooLong)
    } else if id.chars().any(char::is_control) {
        Err(BadId::ControlChar)
    } else {
        Ok(())
    }
}

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
    /// `id`: the client-chosen id, or `None` for a server-assigned one.
    Create {
        id: Option<String>,
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
    /// The record id the operation targets within its collection (`None`
    /// for a create whose id the server assigns).
    pub fn target_id(&self) -> Option<&str> {
        match self {
            Action::Create { id, .. } => id.as_deref(),
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
    /// Revision 3: the scope to create in or move to (checked by
    /// [`access`](super::access) in users mode; ignored by a single-tenant
    /// server and on a delete).
    pub scope: Option<String>,
}

/// A record as a store keeps it: the wire record (whose own `scope` is
/// not used) plus its collection and scope.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredRecord {
    pub collection: String,
    pub record: ServerRecord,
    /// The record's scope; records written before scopes existed are in
    /// [`SINGLE_SCOPE`].
    #[serde(default = "single_scope")]
    pub scope: String,
}

/// [`SINGLE_SCOPE`], owned (a serde default).
pub fn single_scope() -> String {
    SINGLE_SCOPE.to_owned()
}

/// The 404 reason for an id unknown (or unreadable) in a collection.
pub fn not_found_reason(id: &str, collection: &str) -> String {
    format!("no record {id:?} in collection {collection:?}")
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
    #[serde(default)]
    scope: Option<String>,
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

/// Validates a record id with [`check_id`]; a bad one is a 422.
fn valid_id(id: String) -> Result<String, Rejection> {
    check_id(&id).map_err(|e| Rejection::unprocessable(e.to_string()))?;
    Ok(id)
}

fn target(kind: &str, id: Option<String>, base: Option<u64>) -> Result<(String, u64), Rejection> {
    let id = id.ok_or_else(|| Rejection::unprocessable(format!("{kind} needs an id")))?;
    let id = valid_id(id)?;
    let base =
        base.ok_or_else(|| Rejection::unprocessable(format!("{kind} needs base_version")))?;
    Ok((id, base))
}

fn validate(op: LooseOp) -> Result<ValidOp, Rejection> {
    check_key("op_id", &op.op_id)?;
    check_key("collection", &op.collection)?;
    let action = match op.kind {
        OpKind::Create => {
            if op.base_version.is_some() {
                return Err(Rejection::unprocessable(
                    "create must not carry a base_version",
                ));
            }
            Action::Create {
                id: op.id.map(valid_id).transpose()?,
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
        scope: op.scope,
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
    /// `base_version` is stale, or a create's id is taken (a tombstone
    /// included): 409 with the current record.
    Conflict(ServerRecord),
    /// The target id does not exist in the op's collection: 404 with this reason.
    NotFound(String),
}

/// Decides what `op` does given `current`, the stored record with the op's
/// `(collection, target id)` (`None` if absent, or for a create whose id the
/// server assigns). `new_id` makes a fresh server id, one not in use in the
/// collection; it is called only for such a create.
pub fn plan(op: &ValidOp, current: Option<&StoredRecord>, new_id: impl FnOnce() -> String) -> Plan {
    let current = current.filter(|c| c.collection == op.collection);
    let not_found = |id: &str| Plan::NotFound(not_found_reason(id, &op.collection));
    match &op.action {
        // A create meets any record with its id, a tombstone included.
        Action::Create { id, data } => match current {
            Some(c) => Plan::Conflict(c.record.clone()),
            None => Plan::Write(ServerRecord {
                scope: None,
                id: id.clone().unwrap_or_else(new_id),
                version: 1,
                updated_at: op.client_ts,
                deleted: false,
                data: data.clone(),
            }),
        },
        Action::Update {
            id,
            base_version,
            data,
        } => match current {
            None => not_found(id),
            // An update made on a tombstone's own version re-creates the
            // record under its id: the writer saw the delete and chose to
            // bring the record back (with client ids, the one way to do so).
            Some(c) if c.record.version != *base_version => Plan::Conflict(c.record.clone()),
            Some(c) => Plan::Write(ServerRecord {
                scope: None,
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
                scope: None,
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
        assert!(
            matches!(o.action, Action::Create { id: None, ref data } if data["title"] == "milk")
        );
    }

    #[test]
    fn create_with_client_chosen_id() {
        let mut v = create_json();
        v["id"] = json!("settings/theme");
        let o = op(v).expect("valid");
        assert_eq!(o.action.target_id(), Some("settings/theme"));
        for bad in [
            json!(""),
            json!("x".repeat(257)),
            json!("a\nb"),
            json!("\u{7f}"),
        ] {
            let mut v = create_json();
            v["id"] = bad.clone();
            let r = op(v).unwrap_err();
            assert_eq!(r.status, 422, "{bad}");
            assert!(r.reason.contains("id"), "{}", r.reason);
        }
        let mut v = create_json();
        v["id"] = json!("x".repeat(256));
        assert!(op(v).is_ok());
    }

    #[test]
    fn id_rule() {
        assert_eq!(check_id(""), Err(BadId::Empty));
        assert_eq!(check_id(&"é".repeat(129)), Err(BadId::TooLong));
        assert_eq!(check_id("a\u{0}"), Err(BadId::ControlChar));
        assert_eq!(check_id("a\u{85}"), Err(BadId::ControlChar));
        assert_eq!(check_id("settings/theme ünï"), Ok(()));
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
        v["base_version"] = json!(1);
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
        bad["id"] = json!("");
        let parsed = parse_batch(&body(json!({"ops": [create_json(), bad, {"x": 1}]})))
            .expect("envelope ok");
        assert!(parsed[0].is_ok());
        assert_eq!(parsed[1].as_ref().unwrap_err().status, 422);
        assert_eq!(parsed[2].as_ref().unwrap_err().status, 400);
    }

    fn stored(version: u64, deleted: bool) -> StoredRecord {
        StoredRecord {
            scope: single_scope(),
            collection: "todos".into(),
            record: ServerRecord {
                scope: None,
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
            scope: None,
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
        // On a tombstone: stale base, 409; its own version revives it.
        assert!(
            matches!(plan(&update(1), Some(&stored(2, true)), id), Plan::Conflict(r) if r.deleted)
        );
        assert!(matches!(plan(&update(2), Some(&stored(2, true)), id),
            Plan::Write(r) if r.version == 3 && !r.deleted && r.updated_at == 9));
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

    fn create(id: Option<&str>) -> ValidOp {
        let mut o = update(0);
        o.action = Action::Create {
            id: id.map(str::to_owned),
            data: Document::new(),
        };
        o
    }

    #[test]
    fn plan_create() {
        let fresh = || "fresh".to_string();
        assert!(matches!(plan(&create(None), None, fresh),
            Plan::Write(r) if r.id == "fresh" && r.version == 1));
        let never = || -> String { panic!("no server id for a client-chosen id") };
        assert!(matches!(plan(&create(Some("r-1")), None, never),
            Plan::Write(r) if r.id == "r-1" && r.version == 1 && r.updated_at == 9));
        // The id is taken: 409 with the record, a tombstone included.
        assert!(
            matches!(plan(&create(Some("r-1")), Some(&stored(2, false)), never),
            Plan::Conflict(r) if r.version == 2 && !r.deleted)
        );
        assert!(
            matches!(plan(&create(Some("r-1")), Some(&stored(3, true)), never),
            Plan::Conflict(r) if r.deleted)
        );
    }
}
