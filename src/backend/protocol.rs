//! Wire types of the backend protocol, version 1 revision 2 (`docs/backend-protocol.md`).
//!
//! Both sides use these: the sync worker's HTTP client and the reference
//! backend server. They are plain serde types over JSON; nothing here does I/O.
//! [`parse_features`] reads the optional features a server announces in its
//! `v1/health` body (revision 2), so both sides agree on their spelling.

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

/// `GET v1/changes` reply.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ChangesPage {
    pub changes: Vec<Change>,
    pub cursor: String,
    #[serde(default)]
    pub more: bool,
}

/// Feature name: `POST v1/ops/batch` is supported.
pub const FEATURE_BATCH: &str = "batch";
/// Feature name: `GET v1/changes` honours `wait` (live pulls).
pub const FEATURE_WAIT: &str = "wait";
/// Feature name: a `create` may carry its record id (client-chosen ids).
pub const FEATURE_CLIENT_IDS: &str = "client_ids";

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
}

impl Features {
    /// The feature names, in the order the protocol lists them.
    pub fn names(self) -> Vec<String> {
        [
            (self.batch, FEATURE_BATCH),
            (self.wait, FEATURE_WAIT),
            (self.client_ids, FEATURE_CLIENT_IDS),
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
                client_ids: true
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
        };
        assert_eq!(all.names(), ["batch", "wait", "client_ids"]);
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
