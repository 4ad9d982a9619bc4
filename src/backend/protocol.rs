//! Wire types of the backend protocol, version 1 revision 3 (`docs/backend-protocol.md`).
//!
//! Both sides use these: the sync worker's HTTP client and the reference
//! backend server. They are plain serde types over JSON; nothing here does I/O.
//! [`parse_features`] reads the optional features a server announces in its
//! `v1/health` body (revision 2), so both sides agree on their spelling.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

pub use crate::domain::{Change, Document, OpKind, ServerRecord};

/// One operation as sent to `POST v1/ops` / inside `v1/ops/batch`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WireOp {
    pub op_id: String,
    pub client_id: String,
    pub collection: String,
    pub kind: OpKind,
    /// Server id; `None` for a create whose id the server assigns. With the
    /// `client_ids` feature a create may carry the id to create.
    pub id: Option<String>,
    pub local_id: String,
    /// The server version this change was made on; `None` for create.
    pub base_version: Option<u64>,
    /// Full new document for create/update; `None` for delete.
    pub data: Option<Document>,
    pub client_ts: i64,
    /// Revision 3 (feature `scopes`): for a create, the scope to create the
    /// record in (absent: the user's private scope); for an update, the
    /// scope to move the record to (absent: it stays where it is). Ignored
    /// on a delete. Never sent to a server without the feature.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
    /// The scope the device last knew the record in, for a backend that
    /// finds a record by its scope (CouchDB: one database per scope). Never
    /// sent: a protocol server knows where its records are.
    #[serde(skip)]
    pub home: Option<String>,
}

/// `200 {"record": R}` from `POST v1/ops`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OpOk {
    pub record: ServerRecord,
}

/// An error body: `{"error": "...", "record": R?, "code": "..."?}` (409
/// carries the record; a revision-3 `403` that refuses one operation, not
/// the credentials, carries a [`DenyCode`]).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub record: Option<ServerRecord>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
}

/// Why a revision-3 server refused one operation (or one scope of a pull)
/// with `403`, sent as `"code"` beside `"error"`. A `403` without a code
/// still means the credentials were refused (revision 2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DenyCode {
    /// The token has no write access to a scope the operation writes (its
    /// record's scope, or the scope it creates in or moves to); on a pull,
    /// no read access to the scope.
    ScopeDenied,
    /// A create names an id that exists in a scope the token cannot read.
    /// Nothing else of that record is revealed.
    IdTaken,
}

impl DenyCode {
    pub fn as_str(self) -> &'static str {
        match self {
            DenyCode::ScopeDenied => "scope_denied",
            DenyCode::IdTaken => "id_taken",
        }
    }

    /// Reads a `code`; unknown codes are `None` (a client treats a `403`
    /// with an unknown code as a per-operation refusal all the same).
    pub fn parse(code: &str) -> Option<DenyCode> {
        match code {
            "scope_denied" => Some(DenyCode::ScopeDenied),
            "id_taken" => Some(DenyCode::IdTaken),
            _ => None,
        }
    }
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
    /// Revision 3: the [`DenyCode`] of a per-operation `403`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
}

/// `POST v1/ops/batch` reply.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BatchReply {
    pub results: Vec<BatchResult>,
}

/// `GET v1/changes` reply.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ChangesPage {
    pub changes: Vec<Change>,
    pub cursor: String,
    #[serde(default)]
    pub more: bool,
}

/// What a token may do in one scope (`GET v1/session`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Access {
    Read,
    Write,
}

/// One scope a token can reach.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScopeGrant {
    pub name: String,
    pub access: Access,
}

/// `GET v1/session` reply (revision 3): who the token belongs to and what it
/// may reach. `scopes` always holds the user's private scope, with `write`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Session {
    pub sub: String,
    pub scopes: Vec<ScopeGrant>,
    /// When the token expires, in milliseconds since the Unix epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<i64>,
}

/// `POST v1/pull` request (revision 3): one cursor per scope (`null` reads
/// the scope from its beginning); `limit` caps the changes per scope,
/// `wait` as in `v1/changes`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PullRequest {
    pub scopes: BTreeMap<String, Option<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wait: Option<u32>,
}

/// `POST v1/pull` reply: one entry for every scope of the request.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PullReply {
    pub scopes: BTreeMap<String, ScopeResult>,
}

/// One scope's part of a pull: a page of its feed, or a refusal (the token
/// cannot read it: `{"error": ..., "code": "scope_denied"}`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ScopeResult {
    Page(ScopePage),
    Denied(ErrorBody),
}

/// A page of one scope's feed.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ScopePage {
    pub changes: Vec<ScopedChange>,
    /// The position after this page in this scope's feed.
    pub cursor: String,
    #[serde(default)]
    pub more: bool,
    /// Roughly how many changes of this scope lie after `cursor` (for
    /// progress); absent when the server cannot tell.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remaining: Option<u64>,
}

/// One entry of a scope's feed: the record as it now stands in this scope,
/// or word that it left the scope (moved to a scope that is not named, so
/// that nothing is revealed to a reader of this scope only).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ScopedChange {
    Record {
        collection: String,
        record: ServerRecord,
    },
    Gone {
        collection: String,
        gone: Gone,
    },
}

/// A record that left a scope at `version` (the version of the move).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Gone {
    pub id: String,
    pub version: u64,
}

/// Feature name: `POST v1/ops/batch` is supported.
pub const FEATURE_BATCH: &str = "batch";
/// Feature name: `GET v1/changes` honours `wait` (live pulls).
pub const FEATURE_WAIT: &str = "wait";
/// Feature name: a `create` may carry its record id (client-chosen ids).
pub const FEATURE_CLIENT_IDS: &str = "client_ids";
/// Feature name (revision 3): users and scopes: `GET v1/session`,
/// `POST v1/pull`, the `scope` of records and ops, and `403` codes.
pub const FEATURE_SCOPES: &str = "scopes";
/// Feature name: attachment content, `HEAD`/`PUT`/`GET v1/blobs/{sha256}`
/// (resumable chunked upload, ranged download); ops whose documents
/// reference content (`_attachments`) are applied only once it is held.
pub const FEATURE_BLOBS: &str = "blobs";

/// The reply to `PUT v1/blobs/{sha256}` (200), and the body of its 409:
/// how many bytes of the content the server holds now, and whether that
/// is all of it (checked against the hash).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlobOffset {
    pub offset: u64,
    #[serde(default)]
    pub complete: bool,
}

/// The header of `HEAD v1/blobs/{sha256}` (and of a 409 to a `PUT`): the
/// bytes of the content the server holds.
pub const UPLOAD_OFFSET: &str = "upload-offset";

/// `GET v1/health` body (revision 2): `{"ok": true, "features": [...]}`.
///
/// A revision-1 server sends no `features` (or no JSON at all); see
/// [`parse_features`] for the lenient reading a client should use.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthBody {
    #[serde(default)]
    pub ok: bool,
    #[serde(default)]
    pub features: Vec<String>,
}

/// The optional protocol features a server announced. The default is none:
/// a revision-1 server.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Features {
    pub batch: bool,
    pub wait: bool,
    pub client_ids: bool,
    pub scopes: bool,
    pub blobs: bool,
}

impl Features {
    /// The feature names, in the order the protocol lists them.
    pub fn names(self) -> Vec<String> {
        [
            (self.batch, FEATURE_BATCH),
            (self.wait, FEATURE_WAIT),
            (self.client_ids, FEATURE_CLIENT_IDS),
            (self.scopes, FEATURE_SCOPES),
            (self.blobs, FEATURE_BLOBS),
        ]
        .into_iter()
        .filter(|(on, _)| *on)
        .map(|(_, name)| name.to_owned())
        .collect()
    }

    /// Sets the feature called `name`; unknown names are ignored.
    fn set(&mut self, name: &str) {
        match name {
            FEATURE_BATCH => self.batch = true,
            FEATURE_WAIT => self.wait = true,
            FEATURE_CLIENT_IDS => self.client_ids = true,
            FEATURE_SCOPES => self.scopes = true,
            FEATURE_BLOBS => self.blobs = true,
            _ => {}
        }
    }
}

/// Reads the features announced by a `v1/health` body.
///
/// Lenient by design, since any server may answer: a body that is not a JSON
/// object, or has no `features` array, announces none (a revision-1 server);
/// entries that are not strings, and unknown names, are ignored.
pub fn parse_features(body: &[u8]) -> Features {
    let mut features = Features::default();
    let Ok(Value::Object(map)) = serde_json::from_slice::<Value>(body) else {
        return features;
    };
    if let Some(Value::Array(names)) = map.get("features") {
        names
            .iter()
            .filter_map(Value::as_str)
            .for_each(|n| features.set(n));
    }
    features
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn features_of_a_revision_2_server() {
        let f = parse_features(br#"{"ok": true, "features": ["batch", "wait", "client_ids"]}"#);
        assert_eq!(
            f,
            Features {
                batch: true,
                wait: true,
                client_ids: true,
                scopes: false,
                blobs: false,
            }
        );
        let f = parse_features(br#"{"ok": true, "features": ["wait", 3, "future-thing"]}"#);
        assert_eq!(
            f,
            Features {
                wait: true,
                ..Features::default()
            }
        );
    }

    #[test]
    fn revision_1_bodies_mean_no_features() {
        for body in [
            &br#"{"status": "ok"}"#[..],
            br#"{"ok": true}"#,
            br#"{"ok": true, "features": "batch"}"#,
            br#"["batch"]"#,
            b"<html>ok</html>",
            b"",
        ] {
            assert_eq!(parse_features(body), Features::default(), "{body:?}");
        }
    }

    #[test]
    fn names_round_trip() {
        let all = Features {
            batch: true,
            wait: true,
            client_ids: true,
            scopes: true,
            blobs: true,
        };
        assert_eq!(
            all.names(),
            ["batch", "wait", "client_ids", "scopes", "blobs"]
        );
        let body = serde_json::to_vec(&HealthBody {
            ok: true,
            features: all.names(),
        })
        .unwrap_or_default();
        assert_eq!(parse_features(&body), all);
        let back: HealthBody = serde_json::from_slice(br#"{"ok": true}"#).expect("health");
        assert!(back.features.is_empty());
    }
}
