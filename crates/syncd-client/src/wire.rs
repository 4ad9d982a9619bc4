//! The local API's message types (docs/ipc-protocol.md is their prose twin).
//!
//! Every message is a frame: a 4-byte big-endian length, then that many bytes
//! of body. The first frame each way is a JSON hello ([`Hello`],
//! [`HelloReply`]); after it both sides use the encoding the client chose.
//! Enums are externally tagged (`{"put": {...}}`) because that is the one
//! serde shape both JSON and bincode can carry.

use serde::{Deserialize, Serialize};

pub use crate::chunk::Chunk;
use crate::codec::Encoding;
pub use crate::document::{Doc, DocText};
pub use crate::event::{ConflictOutcome, Event, Origin, QueryEvent, Side};
pub use crate::view::{AttachmentView, ConflictView, OpView, RecordView};

/// Version of this local protocol, carried in the hello. 2: the fields and
/// variants of users and scopes (backend protocol revision 3) and sync
/// directions; 3: local queries (`query`, `watch_query`, the status
/// view's `indexes`); 4: attachments (the `attach_*`, `detach` and
/// `read_attachment` requests, the record view's `attachments`). A daemon
/// takes older versions only over JSON (docs/ipc-protocol.md §3).
pub const PROTOCOL_VERSION: u32 = 4;

/// First frame from the client; always JSON.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Hello {
    /// Free-form name of the app, for logs.
    pub app: String,
    pub protocol: u32,
    pub encoding: Encoding,
}

/// First frame from the daemon; always JSON.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HelloReply {
    pub ok: bool,
    #[serde(default)]
    pub server: String,
    #[serde(default)]
    pub protocol: u32,
    #[serde(default)]
    pub client_id: String,
    #[serde(default)]
    pub max_frame_bytes: u32,
    #[serde(default)]
    pub error: Option<ApiError>,
}

/// A request frame: `id` is echoed in the reply so clients can pipeline.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClientFrame {
    pub id: u64,
    pub request: Request,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Request {
    /// Create or replace a record; `id` is minted by the daemon when absent.
    Put {
        collection: String,
        #[serde(default)]
        id: Option<String>,
        data: Doc,
        /// Revision-3 backends: the scope to create the record in, or to
        /// move it to; absent: the user's private scope for a new record,
        /// the record's own scope otherwise.
        #[serde(default)]
        scope: Option<String>,
    },
    /// Top-level field merge into an existing record; a `null` value removes
    /// the key.
    Patch {
        collection: String,
        id: String,
        data: Doc,
    },
    Get {
        collection: String,
        id: String,
    },
    Delete {
        collection: String,
        id: String,
    },
    /// Records in id order, from `start` (inclusive).
    List {
        collection: String,
        #[serde(default)]
        start: Option<String>,
        #[serde(default)]
        limit: Option<u32>,
    },
    Status {},
    /// Pending operations in queue order.
    Queue {
        #[serde(default)]
        limit: Option<u32>,
    },
    /// Subscribe this connection to change events; empty = every collection.
    Watch {
        #[serde(default)]
        collections: Vec<String>,
    },
    /// Wake the sync worker now (push, then pull).
    Sync {},
    Pause {},
    Resume {},
    Conflicts {},
    Resolve {
        collection: String,
        id: String,
        #[serde(default)]
        take: Option<Side>,
        #[serde(default)]
        data: Option<Doc>,
    },
    DeadLetters {},
    Retry {
        op_id: String,
    },
    Discard {
        op_id: String,
    },
    /// Completes when the op is on the server (or fails permanently).
    WaitSynced {
        op_id: String,
    },
    /// Every metric in the Prometheus (OpenMetrics) text format.
    Metrics {},
    /// The full check of the store (`syncd check`): every page's checksum
    /// and every cross-table invariant. Writes wait while it runs.
    CheckStore {},
    /// Revision-3 backends: sync this scope (overrides `[sync] scopes`).
    /// With `wait`, answers once its first sync is done.
    Subscribe {
        scope: String,
        #[serde(default)]
        wait: bool,
    },
    /// Stop syncing this scope: its records without pending ops leave
    /// this device, and its cursor is forgotten.
    Unsubscribe {
        scope: String,
    },
    /// Every scope the daemon knows of, and how it stands.
    Scopes {},
    /// A local query: the records of `collection` that match a Mango
    /// `selector`, in `sort` order (id order without one), one page of at
    /// most `limit`, from `cursor` (the `next` of the previous page).
    Query {
        collection: String,
        selector: Doc,
        #[serde(default)]
        sort: Vec<SortField>,
        #[serde(default)]
        limit: Option<u32>,
        #[serde(default)]
        cursor: Option<String>,
    },
    /// A live query: the reply is `watching`, then a `query` `result`
    /// event with the first result, then `added` / `changed` / `removed`
    /// events as commits change what matches (docs/ipc-protocol.md).
    /// Replaces the connection's `watch` or earlier live query.
    WatchQuery {
        collection: String,
        selector: Doc,
        #[serde(default)]
        sort: Vec<SortField>,
        #[serde(default)]
        limit: Option<u32>,
    },
    /// Starts streaming the content of attachment `name` of a record
    /// (docs/ipc-protocol.md §18): the reply is `upload`, whose handle
    /// the `attach_chunk`s and the `attach_end` name.
    AttachBegin {
        collection: String,
        id: String,
        name: String,
        #[serde(default)]
        content_type: Option<String>,
    },
    /// The next bytes of an upload, at most `max_frame_bytes` with the
    /// frame around them.
    AttachChunk {
        upload: u64,
        data: Chunk,
    },
    /// Ends an upload: the content is stored, and the record's attachment
    /// set and queued in one write (`written`). With `sha256`, the
    /// content must hash to it.
    AttachEnd {
        upload: u64,
        #[serde(default)]
        sha256: Option<String>,
    },
    /// Drops an upload that will not be finished.
    AttachAbort {
        upload: u64,
    },
    /// Removes attachment `name` from a record (`written`).
    Detach {
        collection: String,
        id: String,
        name: String,
    },
    /// Up to `length` bytes of an attachment's content from `offset`
    /// (`attachment_chunk`); when the content is not on this device yet,
    /// it is downloaded first.
    ReadAttachment {
        collection: String,
        id: String,
        name: String,
        #[serde(default)]
        offset: u64,
        #[serde(default)]
        length: Option<u32>,
    },
}

/// One sort field of a query: a dotted path, ascending unless `desc`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SortField {
    pub field: String,
    #[serde(default)]
    pub desc: bool,
}

/// How the daemon answered a query (`syncd query --explain`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueryPlanView {
    /// The index read (its fields joined by commas); `None`: a scan of
    /// the collection.
    pub index: Option<String>,
    /// The index's order is the query's: no sort in memory, and the read
    /// stops after one page.
    pub ordered: bool,
    /// What the index narrowed by (`done = false, due >= "2026-12-07"`).
    pub bounds: String,
    /// Records read (and matched against the selector, unless the index
    /// range alone decides the selector: §17 of docs/ipc-protocol.md).
    pub examined: u64,
}

/// Machine-readable error kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    BadFrame,
    InvalidJson,
    NotAnObject,
    BadCollection,
    BadId,
    BadRequest,
    TooLarge,
    NotFound,
    UnsupportedProtocol,
    PermissionDenied,
    DeadLettered,
    ShuttingDown,
    Internal,
    /// `wait_synced`: a conflict resolution discarded the local change.
    Conflict,
    /// Hello reply: the daemon serves `daemon.max_connections` already.
    TooManyConnections,
    /// A write to a collection this device only pulls
    /// (`[collections.NAME] sync = "pull"`).
    ReadOnlyCollection,
    /// A scope name that is not one (empty, too long, a bad character).
    BadScope,
    /// An op for the server in a collection that never leaves this device
    /// (`[collections.NAME] sync = "local"`): `retry` of its dead letter.
    LocalCollection,
    /// `subscribe --wait` that could never end: no backend is configured,
    /// or the backend did not announce `scopes` (protocol revision 3).
    NoScopes,
    /// A query that is not one: a bad selector (the message says what and
    /// where, e.g. `at $.due.$gtx`), a bad sort field or a foreign cursor.
    BadQuery,
    /// `read_attachment` of content this device does not have and cannot
    /// get now: no backend, the backend is unreachable, or it does not
    /// hold the content (the message says which).
    Unavailable,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ApiError {
    pub code: ErrorCode,
    pub message: String,
}

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ApiError {
            code,
            message: message.into(),
        }
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let code = serde_json::to_value(self.code)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default();
        write!(f, "{code}: {}", self.message)
    }
}

impl std::error::Error for ApiError {}

/// A frame from the daemon.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ServerFrame {
    Reply {
        id: u64,
        body: Response,
    },
    /// `id` 0: the request frame could not be decoded, so it has no id.
    Error {
        id: u64,
        error: ApiError,
    },
    Event(Event),
}

/// What `status` reports.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatusView {
    /// online, offline, backoff, paused, auth_error or backend_error.
    pub state: String,
    pub queue_depth: u64,
    pub oldest_pending_age_ms: Option<i64>,
    pub dead_letters: u64,
    pub conflicts: u64,
    pub conflicts_resolved: u64,
    pub last_sync_at: Option<i64>,
    pub next_retry_at: Option<i64>,
    pub last_error: Option<String>,
    /// The most pressing of `hints` (what is happening, what to do), or
    /// `None` when all is well.
    #[serde(default)]
    pub hint: Option<String>,
    /// One line per thing that needs a person's attention, most pressing
    /// first.
    #[serde(default)]
    pub hints: Vec<String>,
    /// The config file the daemon runs on; `None`: embedded defaults.
    #[serde(default)]
    pub config_path: Option<String>,
    /// Why the config file's latest edit was rejected (the daemon runs on
    /// the previous config); `None` when the file is the config in force.
    #[serde(default)]
    pub config_reload_error: Option<String>,
    #[serde(default)]
    pub socket: String,
    #[serde(default)]
    pub data_dir: String,
    #[serde(default)]
    pub pid: u32,
    #[serde(default)]
    pub uptime_s: u64,
    /// Queued ops per collection, counted over at most the first
    /// `PENDING_SCAN_LIMIT` (1,000) ops of the queue; when
    /// `pending_by_collection_complete` is false the counts are lower
    /// bounds ("at least").
    #[serde(default)]
    pub pending_by_collection: std::collections::BTreeMap<String, u64>,
    #[serde(default)]
    pub pending_by_collection_complete: bool,
    pub backend: Option<String>,
    pub client_id: String,
    pub store_bytes: u64,
    pub version: String,
    /// How remote changes arrive: `live` (a waiting pull is kept open) or
    /// `polling every Ns`; `None` without a backend.
    #[serde(default)]
    pub remote_changes: Option<String>,
    /// When the last pull succeeded, ms since the epoch.
    #[serde(default)]
    pub last_pull_at: Option<i64>,
    /// What the storage engine reported when it found the store damaged
    /// during work (writes are refused since); `None`: no damage seen.
    #[serde(default)]
    pub store_damaged: Option<String>,
    /// What the daemon's open checked: `skipped` (closed cleanly and
    /// untouched since) or `full: REASON (N ms)`.
    #[serde(default)]
    pub store_open_check: Option<String>,
    /// The collections that do not sync both ways, with their
    /// `[collections.NAME] sync` setting: `local` (never leaves this
    /// device), `push` (the server's changes are not pulled) or `pull`
    /// (read-only here). Collections not listed sync both ways.
    #[serde(default)]
    pub sync_directions: std::collections::BTreeMap<String, String>,
    /// Revision-3 backends: every scope known, as `scopes` shows them;
    /// empty with a backend without scopes.
    #[serde(default)]
    pub scopes: Vec<ScopeView>,
    /// Revision-3 backends: the user the token belongs to (`sub`), as the
    /// last session said; null before one, or while the backend is not
    /// known to have scopes.
    #[serde(default)]
    pub user: Option<String>,
    /// The secondary indexes (`[collections.NAME] indexes`) and how each
    /// stands; empty when none is declared.
    #[serde(default)]
    pub indexes: Vec<IndexView>,
    /// Encryption at rest: `off`, or `on (key ID)` with the public id of
    /// the store key (never the key), and a note while a conversion
    /// (`syncd store encrypt`, `syncd rekey`) is unfinished.
    #[serde(default)]
    pub encryption: String,
}

/// One secondary index as `status` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IndexView {
    pub collection: String,
    /// Its fields, joined by commas (`done,due`).
    pub index: String,
    /// `ready`, `building` (queries do not use it meanwhile: another
    /// ready index, or a scan) or `dropping` (no longer declared).
    pub state: String,
    /// While `building`: records indexed so far.
    pub indexed: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Response {
    /// A write was durably committed with its queue entry.
    Written {
        id: String,
        op_id: String,
    },
    Record(RecordView),
    Records {
        records: Vec<RecordView>,
        /// Start key for the next page, if there is more.
        next: Option<String>,
    },
    Status(Box<StatusView>),
    Ops(Vec<OpView>),
    Conflicts(Vec<ConflictView>),
    Watching {},
    Ok {},
    Synced {
        op_id: String,
        server_id: Option<String>,
        version: Option<u64>,
    },
    /// The reply to `metrics`: OpenMetrics text.
    Metrics {
        text: String,
    },
    /// The reply to `check_store`.
    StoreCheck(StoreCheckView),
    /// The reply to `scopes`.
    Scopes(Vec<ScopeView>),
    /// The reply to `attach_begin`.
    Upload {
        upload: u64,
    },
    /// The reply to `read_attachment`: `data` from `offset` of `length`
    /// bytes in all; the read is complete when `offset + data` reaches it.
    AttachmentChunk {
        data: Chunk,
        offset: u64,
        length: u64,
        content_type: String,
        sha256: String,
    },
    /// The reply to `query`.
    QueryResult {
        /// Documents as the stored text (see [`DocText`]).
        records: Vec<RecordView<DocText>>,
        /// The cursor for the next page, if there may be more.
        next: Option<String>,
        plan: QueryPlanView,
    },
}

/// One scope as `scopes` and `status` show it (protocol revision 3).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScopeView {
    pub name: String,
    /// `read` or `write` as the last session granted; `None`: no access
    /// (or no session yet).
    pub access: Option<String>,
    /// Synced: listed in `[sync] scopes` (or every readable scope when
    /// there is no list), or subscribed, and not unsubscribed.
    pub subscribed: bool,
    /// `initial` (back-filling), `live`, `denied` (subscribed but not
    /// readable) or `unsubscribed`.
    pub state: String,
    /// While `initial`: changes still to fetch, as the server last said.
    pub remaining: Option<u64>,
    /// Live records of this scope on this device.
    pub records: u64,
    pub first_sync_done: bool,
}

/// What a full check of the store found (`syncd check`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoreCheckView {
    /// The store file checked.
    pub path: String,
    pub store_bytes: u64,
    /// How many problems in all (`problems` lists at most 100).
    pub problem_count: u64,
    /// One line per problem found.
    pub problems: Vec<String>,
    /// Some problem is damage to the file (as opposed to tables that
    /// disagree).
    pub damaged: bool,
    /// What to do, for a person.
    pub advice: String,
    pub records: u64,
    pub queued_ops: u64,
    pub conflicts: u64,
    pub dead_letters: u64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::{decode, encode};
    use serde_json::Value;

    #[test]
    fn doc_travels_in_both_encodings() {
        let f = ClientFrame {
            id: 3,
            request: Request::Put {
                collection: "todos".into(),
                id: None,
                data: Doc(serde_json::json!({"a": [1, 2, {"b": null}]})),
                scope: Some("team-1".into()),
            },
        };
        for enc in [Encoding::Json, Encoding::Bincode] {
            let bytes = encode(enc, &f).unwrap();
            let back: ClientFrame = decode(enc, &bytes).unwrap();
            match back.request {
                Request::Put { data, .. } => assert_eq!(data.0["a"][2]["b"], Value::Null),
                other => panic!("{other:?}"),
            }
        }
    }

    /// A record whose document travels as stored text is, byte for byte,
    /// the record with its document parsed: apps that read query pages
    /// with another client (Python, JSON frames) see no change.
    #[test]
    fn a_document_as_text_is_the_same_bytes_as_a_parsed_one() {
        let doc = serde_json::json!({"a": [1, 2.5, {"b": null}], "s": "é\"\u{0}"});
        fn view<D>(data: D) -> RecordView<D> {
            RecordView {
                collection: "t".into(),
                id: "x".into(),
                data,
                server_id: Some("s1".into()),
                version: Some(3),
                updated_at: None,
                pending: true,
                local_only: false,
                scope: None,
                attachments: Vec::new(),
            }
        }
        let parsed = view(Doc(doc.clone()));
        let text = view(DocText::from(&doc));
        for enc in [Encoding::Json, Encoding::Bincode] {
            let bytes = encode(enc, &text).unwrap();
            assert_eq!(bytes, encode(enc, &parsed).unwrap(), "{enc:?}");
            let back: RecordView<DocText> = decode(enc, &bytes).unwrap();
            assert_eq!(back.data.value(), doc);
            assert_eq!(back.clone().parsed(), parsed);
            let as_parsed: RecordView = decode(enc, &bytes).unwrap();
            assert_eq!(as_parsed, parsed);
        }
        #[derive(serde::Deserialize)]
        struct Mine {
            a: Vec<Value>,
        }
        let mine: Mine = text.data.parse().unwrap();
        assert_eq!(mine.a.len(), 3);
        // Text that is not JSON (a damaged store) reads as null and goes
        // out as null in JSON frames, as `get` sends it: the page is not
        // lost for one record.
        let bad = DocText::from_trusted("{nope".into());
        assert_eq!(bad.value(), Value::Null);
        let json: Value =
            serde_json::from_slice(&encode(Encoding::Json, &view(bad)).unwrap()).unwrap();
        assert_eq!(json["data"], Value::Null);
        assert_eq!(json["id"], "x");
    }

    #[test]
    fn json_shape_is_documented_one() {
        let f: ClientFrame =
            serde_json::from_str(r#"{"id":1,"request":{"put":{"collection":"t","data":{"x":1}}}}"#)
                .unwrap();
        assert!(matches!(f.request, Request::Put { id: None, .. }));
        let s: ClientFrame = serde_json::from_str(r#"{"id":2,"request":{"status":{}}}"#).unwrap();
        assert!(matches!(s.request, Request::Status {}));
    }

    #[test]
    fn scope_requests_and_replies_travel_in_both_encodings() {
        let reqs = [
            Request::Subscribe {
                scope: "team-1".into(),
                wait: true,
            },
            Request::Unsubscribe {
                scope: "team-1".into(),
            },
            Request::Scopes {},
        ];
        let reply = ServerFrame::Reply {
            id: 9,
            body: Response::Scopes(vec![ScopeView {
                name: "team-1".into(),
                access: Some("write".into()),
                subscribed: true,
                state: "initial".into(),
                remaining: Some(12),
                records: 3,
                first_sync_done: false,
            }]),
        };
        for enc in [Encoding::Json, Encoding::Bincode] {
            for r in &reqs {
                let f = ClientFrame {
                    id: 1,
                    request: r.clone(),
                };
                let back: ClientFrame = decode(enc, &encode(enc, &f).unwrap()).unwrap();
                assert_eq!(format!("{:?}", back.request), format!("{r:?}"));
            }
            let back: ServerFrame = decode(enc, &encode(enc, &reply).unwrap()).unwrap();
            assert_eq!(format!("{back:?}"), format!("{reply:?}"));
            let ev = ServerFrame::Event(Event::ScopeSynced {
                scope: "team-1".into(),
            });
            let back: ServerFrame = decode(enc, &encode(enc, &ev).unwrap()).unwrap();
            assert_eq!(format!("{back:?}"), format!("{ev:?}"));
        }
        let f: ClientFrame =
            serde_json::from_str(r#"{"id":1,"request":{"subscribe":{"scope":"news"}}}"#).unwrap();
        assert!(matches!(f.request, Request::Subscribe { wait: false, .. }));
    }
}
