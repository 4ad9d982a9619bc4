//! Records: as the server has them ([`ServerRecord`]), as this device
//! stores them ([`StoredRecord`]) and as apps see them ([`RecordView`]).
//!
//! One file so that the three shapes of a record, and the conversions
//! between them, are read side by side.

use serde::{Deserialize, Serialize};

use super::document::{parse_doc_text, Doc, DocText, Document};
pub use syncd_client::view::RecordView;

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
    /// The record's scope (revision 3, feature `scopes`). Absent from
    /// servers without users; never sent by them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
}

fn de_doc_or_null<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Document, D::Error> {
    Ok(Option::<Document>::deserialize(d)?.unwrap_or_default())
}

/// One entry of `GET v1/changes`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Change {
    pub collection: String,
    pub record: ServerRecord,
}

/// A record as stored. Documents are kept as JSON text.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredRecord {
    /// The current local document (`{}` once deleted).
    pub data: String,
    /// Deleted locally (the delete may still be queued).
    pub deleted: bool,
    pub server_id: Option<String>,
    /// The last server version this record was known at.
    pub version: Option<u64>,
    pub updated_at: Option<i64>,
    /// The server document at `version`: the base of a three-way merge.
    pub base: Option<String>,
    /// Ops for this record still queued or parked in a conflict.
    pub pending: u32,
    /// client_ts of the last local write.
    pub local_ts: i64,
    /// The record's scope as the server last said (revision 3, feature
    /// `scopes`); `None` until then, and always with a server without it.
    pub scope: Option<String>,
    /// The server said the record left this scope (a `gone` entry) while
    /// it had pending ops: it is purged if they settle without reaching
    /// the server (dead-lettered, or a conflict resolved by taking the
    /// server's record while it is still in that scope). A server record
    /// taken since in another scope clears it.
    pub gone_from: Option<String>,
}

impl StoredRecord {
    /// A record that exists only on this device so far.
    pub fn local(data: String, pending: u32, local_ts: i64) -> Self {
        StoredRecord {
            data,
            deleted: false,
            server_id: None,
            version: None,
            updated_at: None,
            base: None,
            pending,
            local_ts,
            scope: None,
            gone_from: None,
        }
    }

    /// Records that the server has `r` as this record's current version
    /// (also the new merge base); returns the server document as text.
    pub fn stand_on(&mut self, r: &ServerRecord) -> String {
        let text = serde_json::Value::Object(r.data.clone()).to_string();
        self.server_id = Some(r.id.clone());
        self.version = Some(r.version);
        self.updated_at = Some(r.updated_at);
        self.base = Some(text.clone());
        if r.scope.is_some() {
            self.scope = r.scope.clone();
        }
        // A copy still in the scope the record was said to have left
        // predates the move: the mark stays (see the writer's scopes.rs).
        if self.gone_from.is_some() && self.gone_from != r.scope {
            self.gone_from = None;
        }
        text
    }

    /// Drops the link to a server record (it was deleted there): the next
    /// op of this record creates a new one.
    pub fn forget_server(&mut self) {
        self.server_id = None;
        self.version = None;
        self.updated_at = None;
        self.base = None;
    }

    pub fn view(&self, collection: &str, id: &str) -> RecordView {
        self.view_with(collection, id, Doc(parse_doc_text(&self.data)))
    }

    /// The view a query page sends: the stored document text moved as it
    /// is, never parsed.
    pub fn into_text_view(mut self, collection: &str, id: &str) -> RecordView<DocText> {
        let text = DocText::from_trusted(std::mem::take(&mut self.data));
        self.view_with(collection, id, text)
    }

    /// The view of this record with `data` as its document.
    fn view_with<D>(&self, collection: &str, id: &str, data: D) -> RecordView<D> {
        RecordView {
            collection: collection.to_owned(),
            id: id.to_owned(),
            data,
            server_id: self.server_id.clone(),
            version: self.version,
            updated_at: self.updated_at,
            pending: self.pending > 0,
            local_only: self.server_id.is_none() && self.pending == 0 && !self.deleted,
            scope: self.scope.clone(),
            attachments: Vec::new(),
        }
    }
}

/// [`ServerRecord`] with its document as JSON text (bincode-friendly).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServerRecordStored {
    pub id: String,
    pub version: u64,
    pub updated_at: i64,
    pub deleted: bool,
    pub data: String,
    /// The record's scope (revision 3); `None` from a server without it.
    pub scope: Option<String>,
}

impl From<&ServerRecord> for ServerRecordStored {
    fn from(r: &ServerRecord) -> Self {
        ServerRecordStored {
            id: r.id.clone(),
            version: r.version,
            updated_at: r.updated_at,
            deleted: r.deleted,
            data: serde_json::Value::Object(r.data.clone()).to_string(),
            scope: r.scope.clone(),
        }
    }
}

impl ServerRecordStored {
    pub fn to_record(&self) -> ServerRecord {
        ServerRecord {
            scope: self.scope.clone(),
            id: self.id.clone(),
            version: self.version,
            updated_at: self.updated_at,
            deleted: self.deleted,
            data: match parse_doc_text(&self.data) {
                serde_json::Value::Object(m) => m,
                _ => Default::default(),
            },
        }
    }
}
