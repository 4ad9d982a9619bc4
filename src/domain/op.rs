//! Operations: what the mutation queue holds ([`QueuedOp`]), where an op
//! can end up (dead letters, parked conflicts) and how apps see them.
//!
//! The queue's rules (order, one op per write, op ids minted once) are the
//! store's; this file only names the values it keeps.

use serde::{Deserialize, Serialize};

use super::document::{parse_doc_text, Doc};
use super::record::ServerRecordStored;
pub use syncd_client::view::{ConflictView, OpView};

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

/// An operation waiting in the queue.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QueuedOp {
    pub op_id: String,
    pub collection: String,
    pub local_id: String,
    pub kind: OpKind,
    /// The full document (JSON text) for create/update; `None` for delete.
    pub data: Option<String>,
    pub client_ts: i64,
    pub attempts: u32,
    pub last_error: Option<String>,
    pub enqueued_at: i64,
    /// The server id and version this op must be sent on, when that is not
    /// the record's current one: set when the op is dead-lettered, so that
    /// a retry meets any server change made meanwhile as a 409.
    pub base: Option<(String, u64)>,
    /// The scope the app asked for (revision 3): a create's target scope,
    /// or the scope an update moves the record to. `None`: the user's
    /// private scope (a create) or where the record is (an update). Sent
    /// as `WireOp.scope` only to a server that announced `scopes`.
    pub scope: Option<String>,
}

impl QueuedOp {
    pub fn view(&self, seq: u64) -> OpView {
        OpView {
            seq,
            op_id: self.op_id.clone(),
            collection: self.collection.clone(),
            id: self.local_id.clone(),
            kind: self.kind.as_str().to_owned(),
            data: self.data.as_deref().map(|d| Doc(parse_doc_text(d))),
            client_ts: self.client_ts,
            attempts: self.attempts,
            last_error: self.last_error.clone(),
            scope: self.scope.clone(),
        }
    }
}

/// An op the server rejected for good.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeadLetter {
    pub op: QueuedOp,
    pub error: String,
    pub dead_at: i64,
}

/// A conflict parked by the `manual` strategy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ParkedConflict {
    /// The server's record as the 409 reported it.
    pub server: ServerRecordStored,
    /// Ops taken out of the queue for this record, in order.
    pub ops: Vec<QueuedOp>,
    pub detected_at: i64,
}

/// Where an op is now, for `wait synced`.
#[derive(Debug, Clone, PartialEq)]
pub enum OpState {
    Queued,
    /// Parked in a manual conflict.
    Parked,
    DeadLettered(String),
    /// Not in the queue, the conflicts or the dead letters: confirmed, or
    /// superseded by a conflict resolution.
    Done,
}
