//! How apps see records and operations: the views the daemon answers
//! `get`, `list`, `query`, `queue`, `dead_letters` and `conflicts` with.
//!
//! They live in the client crate because both ends need them: the daemon's
//! store builds them (`StoredRecord::view`, `QueuedOp::view` in its
//! `domain`, which re-exports them) and apps read them.

use serde::{Deserialize, Serialize};

use crate::document::{Doc, DocText};

/// A record as apps see it. `D` is how its document travels: parsed
/// ([`Doc`], as `get`, `list` and events carry it), or as the stored text
/// ([`DocText`], as query pages carry it; the same bytes on the wire).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RecordView<D = Doc> {
    pub collection: String,
    pub id: String,
    pub data: D,
    pub server_id: Option<String>,
    pub version: Option<u64>,
    pub updated_at: Option<i64>,
    pub pending: bool,
    /// Exists only on this device and nothing queued will send it: no
    /// server id and no pending op (its create was dead-lettered, or
    /// dead-lettered and discarded). `syncd retry` the dead letter, or
    /// `patch`/`put` the record again, to sync it.
    #[serde(default)]
    pub local_only: bool,
    /// The record's scope (protocol revision 3) as the server last said;
    /// `None` until it has (and always with a server without scopes).
    #[serde(default)]
    pub scope: Option<String>,
    /// The record's attachments and where their bytes are (`get` fills
    /// it; `list` and `query` leave it empty: their documents hold the
    /// references in `_attachments`).
    #[serde(default)]
    pub attachments: Vec<AttachmentView>,
}

impl<D> RecordView<D> {
    /// The same record with its document turned by `f`.
    pub fn map_data<E>(self, f: impl FnOnce(D) -> E) -> RecordView<E> {
        RecordView {
            collection: self.collection,
            id: self.id,
            data: f(self.data),
            server_id: self.server_id,
            version: self.version,
            updated_at: self.updated_at,
            pending: self.pending,
            local_only: self.local_only,
            scope: self.scope,
            attachments: self.attachments,
        }
    }
}

impl RecordView<DocText> {
    /// The same record with its document parsed.
    pub fn parsed(self) -> RecordView {
        self.map_data(Doc::from)
    }
}

/// One attachment of a record, as `get` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttachmentView {
    pub name: String,
    pub content_type: String,
    pub length: u64,
    pub sha256: String,
    /// `local` (here, not yet on the server), `uploading`, `synced` (here
    /// and on the server), `remote` (on the server, not downloaded) or
    /// `downloading`.
    pub state: String,
    /// While `uploading` or `downloading`: bytes moved so far.
    #[serde(default)]
    pub bytes_done: Option<u64>,
}

/// A queued (or dead-lettered) operation as apps see it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OpView {
    pub seq: u64,
    pub op_id: String,
    pub collection: String,
    pub id: String,
    pub kind: String,
    pub data: Option<Doc>,
    pub client_ts: i64,
    pub attempts: u32,
    pub last_error: Option<String>,
    /// The scope the app asked for (a create's target, a move's target);
    /// `None`: the server's default (a create) or unchanged (an update).
    #[serde(default)]
    pub scope: Option<String>,
}

/// A parked manual conflict.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConflictView {
    pub collection: String,
    pub id: String,
    pub local: Option<Doc>,
    pub server: Option<Doc>,
    pub server_version: u64,
    pub server_deleted: bool,
    pub detected_at: i64,
}
