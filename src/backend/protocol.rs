//! Wire types of the backend protocol, version 1 (`docs/backend-protocol.md`).
//!
//! Both sides use these: the sync worker's HTTP client and the reference
//! backend server. They are plain serde types over JSON; nothing here does I/O.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// A JSON document: always an object at the top level.
pub type Document = Map<String, Value>;

/// The kind of a queued mutation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OpKind {
    Create,
    Update,
    Delete,
}

impl OpKind {
    pub fn as_str(self) -> &'static str {
        match self {
            OpKind::Create => "create",
            OpKind::Update => "update",
            OpKind::Delete => "delete",
        }
    }
}

/// A server record (`R` in the protocol).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServerRecord {
    pub id: String,
    pub version: u64,
    pub updated_at: i64,
    #[serde(default)]
    pub deleted: bool,
    /// `null` is accepted for tombstones from lenient servers and read as `{}`.
    #[serde(default, deserialize_with = "de_doc_or_null")]
    pub data: Document,
}

fn de_doc_or_null<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Document, D::Error> {
    Ok(Option::<Document>::deserialize(d)?.unwrap_or_default())
}

/// One operation as sent to `POST v1/ops` / inside `v1/ops/batch`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WireOp {
    pub op_id: String,
    pub client_id: String,
    pub collection: String,
    pub kind: OpKind,
    /// Server id; `None` for create.
    pub id: Option<String>,
    pub local_id: String,
    /// The server version this change was made on; `None` for create.
    pub base_version: Option<u64>,
    /// Full new document for create/update; `None` for delete.
    pub data: Option<Document>,
    pub client_ts: i64,
}

/// `200 {"record": R}` from `POST v1/ops`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OpOk {
    pub record: ServerRecord,
}

/// An error body: `{"error": "...", "record": R?}` (409 carries the record).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub record: Option<ServerRecord>,
}

/// `POST v1/ops/batch` request.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BatchRequest {
    pub ops: Vec<WireOp>,
}

/// One entry of a batch reply.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BatchResult {
    pub status: u16,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub record: Option<ServerRecord>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// `POST v1/ops/batch` reply.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BatchReply {
    pub results: Vec<BatchResult>,
}

/// One entry of `GET v1/changes`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Change {
    pub collection: String,
    pub record: ServerRecord,
}

/// `GET v1/changes` reply.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ChangesPage {
    pub changes: Vec<Change>,
    pub cursor: String,
    #[serde(default)]
    pub more: bool,
}
