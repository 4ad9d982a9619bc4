//! The CouchDB backend (`[backend] kind = "couchdb"`): devices sync to a
//! CouchDB database the user already runs, with no syncd server code.
//! [`CouchClient`] answers the worker's four calls (health, apply, batch,
//! changes) with the same verdicts as the protocol client, so the sync
//! worker's logic is unchanged. The mapping (ids, revisions, conflicts,
//! idempotency, the feed) is specified in `docs/backends.md`.

pub mod attach;
pub mod batch;
pub mod classify;
pub mod doc;
pub mod http;
pub mod scopes;

use std::time::Duration;

use hyper::Method;
use serde_json::Value;

use crate::backend::client::{percent_encode, BatchOutcome, Failure, OpResult};
use crate::backend::protocol::{Change, ChangesPage, OpKind, WireOp};
use classify::{Put, Raw};
use doc::Current;
pub use http::{Credentials, SetupError};

/// How the reason of a "database does not exist" failure starts, so that
/// `syncd status` can give that case its own hint.
pub const DB_MISSING: &str = "CouchDB database does not exist";

/// What the adapter offers in protocol terms: batches (`_bulk_docs`),
/// waiting pulls (`feed=longpoll`) and one id everywhere.
pub const FEATURES: crate::backend::protocol::Features = crate::backend::protocol::Features {
    scopes: false,
    batch: true,
    wait: true,
    client_ids: true,
    blobs: true,
};

/// The same, with one database per scope (`[backend.scopes]`).
pub const FEATURES_SCOPED: crate::backend::protocol::Features =
    crate::backend::protocol::Features {
        scopes: true,
        ..FEATURES
    };

/// Extra time a waiting pull gets beyond its wait before it counts as
/// having waited in vain (CouchDB's own `timeout` should end it first).
const WAIT_MARGIN: Duration = Duration::from_secs(2);

/// A CouchDB database as the sync worker's backend.
#[derive(Clone)]
pub struct CouchClient {
    /// The database, or with scopes the server.
    http: http::CouchHttp,
    shown: String,
    shape: doc::DocShape,
    /// With scopes: which database holds which scope, and who we are.
    scopes: Option<std::sync::Arc<scopes::Scopes>>,
    /// This device's attachment files, for content written inline.
    blobs: Option<crate::store::blobs::BlobDir>,
}

impl CouchClient {
    /// `db_url` names the database, e.g. `http://127.0.0.1:5984/todos`.
    pub fn new(
        db_url: &str,
        creds: &Credentials,
        client_id: &str,
        timeout: Duration,
        ca_file: Option<&std::path::Path>,
    ) -> Result<Self, SetupError> {
        if !http::names_database(db_url) {
            return Err(SetupError::Url(format!(
                "{} names no database; use e.g. http://127.0.0.1:5984/todos (or, for one database per scope, add [backend.scopes])",
                crate::config::redact_url(db_url)
            )));
        }
        Ok(CouchClient {
            http: http::CouchHttp::new(db_url, creds, client_id, timeout, ca_file)?,
            shown: crate::config::redact_url(db_url),
            shape: doc::DocShape::default(),
            scopes: None,
            blobs: None,
        })
    }

    /// One database per scope (`docs/backends.md` "Scopes"): `server_url`
    /// names the CouchDB server; `shared` maps shared scopes to databases.
    pub fn scoped(
        server_url: &str,
        shared: std::collections::BTreeMap<String, String>,
        creds: &Credentials,
        client_id: &str,
        timeout: Duration,
        ca_file: Option<&std::path::Path>,
    ) -> Result<Self, SetupError> {
        Ok(CouchClient {
            http: http::CouchHttp::new(server_url, creds, client_id, timeout, ca_file)?,
            shown: crate::config::redact_url(server_url),
            shape: doc::DocShape::default(),
            scopes: Some(std::sync::Arc::new(scopes::Scopes::new(shared))),
            blobs: None,
        })
    }

    /// Writes documents in `shape` (both shapes are always read).
    pub fn with_shape(mut self, shape: doc::DocShape) -> Self {
        self.shape = shape;
        self
    }

    /// Reads attachment content from `blobs` (this device's files) when a
    /// write carries new attachments.
    pub fn with_blobs(mut self, blobs: crate::store::blobs::BlobDir) -> Self {
        self.blobs = Some(blobs);
        self
    }

    /// Puts the content of a body's new attachments inline; content that
    /// is not on this device is a local failure (the op stays queued).
    pub(crate) fn inline(&self, body: &mut Value) -> Result<(), Failure> {
        if !attach::needs_content(body) {
            return Ok(());
        }
        attach::fill_inline(body, self.blobs.as_ref()).map_err(|m| Failure::LocalStore {
            reason: format!("attachment content for CouchDB: {}", m.0),
        })
    }

    /// The database URL with credentials masked.
    pub fn shown(&self) -> &str {
        &self.shown
    }

    /// `GET /db`: the database exists and answers. It is never created.
    /// With scopes, `GET /_session`: the server answers and knows us.
    pub async fn health(&self) -> Result<crate::backend::protocol::Features, Failure> {
        if let Some(s) = &self.scopes {
            s.set_user(self.whoami().await?);
            return Ok(FEATURES_SCOPED);
        }
        let r = self.http.call(Method::GET, "", None, None).await?;
        classify::database(&raw(&r))?;
        Ok(FEATURES)
    }

    /// One op, in its scope's database when there are scopes.
    pub async fn apply(&self, op: &WireOp) -> Result<OpResult, Failure> {
        match &self.scopes {
            Some(s) => self.apply_scoped(s, op).await,
            None => self.apply_in_db(op).await,
        }
    }

    /// One op in this client's database: read the document, check
    /// idempotency and the base revision, write on top of the exact
    /// revision read.
    async fn apply_in_db(&self, op: &WireOp) -> Result<OpResult, Failure> {
        let id = match target(op) {
            Ok(id) => id,
            Err(verdict) => return Ok(verdict),
        };
        let path = percent_encode(&doc::doc_id(&op.collection, id));
        let current = self.load(&path).await?;
        match decide(op, id, current, self.shape) {
            Step::Verdict(v) => Ok(v),
            Step::Write(base) => self.write(op, id, &path, base.as_ref()).await,
        }
    }

    /// `PUT` the op's document on top of `base`; a `409` (someone wrote in
    /// between) re-reads: our op, or a conflict with what is there now.
    async fn write(
        &self,
        op: &WireOp,
        id: &str,
        path: &str,
        base: Option<&Current>,
    ) -> Result<OpResult, Failure> {
        let mut body = doc::body_for(op, base, self.shape);
        self.inline(&mut body)?;
        let body = encode(&body)?;
        let r = self.http.call(Method::PUT, path, Some(body), None).await?;
        match classify::put(&raw(&r))? {
            Put::Written(rev) => {
                let version = doc::version(&rev).unwrap_or_default();
                Ok(OpResult::Applied(doc::record_of(op, id, version)))
            }
            Put::Rejected { status, reason } => Ok(OpResult::Rejected { status, reason }),
            Put::Conflict => self.after_conflict(op, id, path).await,
        }
    }

    /// CouchDB refused a write of `op` with a revision conflict: someone
    /// wrote the document between our read and our write. Read it again:
    /// our own op (a retry whose first reply was lost), or a conflict with
    /// what is there now, tombstones included.
    async fn after_conflict(&self, op: &WireOp, id: &str, path: &str) -> Result<OpResult, Failure> {
        match self.load(path).await? {
            Some(c) => Ok(match c.applied_as(op, id) {
                Some(r) => OpResult::Applied(r),
                None if op.kind == OpKind::Create && c.deleted => {
                    return Err(Failure::Transient {
                        reason: "document deleted while being created; retrying".into(),
                        retry_after_ms: None,
                    })
                }
                None => OpResult::Conflict(c.record(id)),
            }),
            None => Err(Failure::Transient {
                reason: "CouchDB answered 409 for a document it does not have".into(),
                retry_after_ms: None,
            }),
        }
    }

    /// The winning revision of a document (tombstones included), with its
    /// conflicting leaves; `None` if the database never had it.
    async fn load(&self, path: &str) -> Result<Option<Current>, Failure> {
        let q = format!("{path}?open_revs=all");
        let r = self.http.call(Method::GET, &q, None, None).await?;
        let winner = classify::leaves(&raw(&r))?.and_then(Current::winner);
        Ok(winner.map(|c| c.read_as(self.shape)))
    }

    /// Bytes `offset..offset+max` of attachment `p` (`GET /db/doc/name`
    /// with a `Range`; a server that ignores the range sends it all, and
    /// the part asked for is cut from it); `None`: no such attachment.
    /// With scopes, in the scope's database.
    pub async fn attachment(
        &self,
        scope: Option<&str>,
        p: &crate::backend::client::blobs::BlobPlace,
        offset: u64,
        max: u64,
    ) -> Result<Option<bytes::Bytes>, Failure> {
        let db = match (&self.scopes, scope) {
            (Some(s), Some(scope)) => match s.database(scope) {
                Some(db) => Some(self.at(&db)),
                None => return Ok(None),
            },
            _ => None,
        };
        let c = db.as_ref().unwrap_or(self);
        let path = format!(
            "{}/{}",
            percent_encode(&doc::doc_id(&p.collection, &p.id)),
            percent_encode(&p.name)
        );
        let range = format!("bytes={offset}-{}", offset + max.max(1) - 1);
        let r = c
            .http
            .call_with(Method::GET, &path, None, None, Some(range))
            .await?;
        classify::attachment(&raw(&r), offset, max)
    }

    /// Several ops of different documents in two requests: one
    /// `_all_docs` read, one `_bulk_docs` write ([`batch`]).
    /// With scopes, the ops of the head's database (a prefix).
    pub async fn apply_batch(&self, ops: &[WireOp]) -> Result<BatchOutcome, Failure> {
        match &self.scopes {
            Some(s) => self.apply_batch_scoped(s, ops).await,
            None => batch::apply(self, ops).await,
        }
    }

    /// `GET /db/_changes` from `since`; with `wait`, a long poll of up to
    /// that many seconds.
    pub async fn changes(
        &self,
        since: Option<&str>,
        limit: u32,
        wait: Option<u32>,
    ) -> Result<ChangesPage, Failure> {
        if self.scopes.is_some() {
            return Err(Failure::Unlisted {
                status: 400,
                reason: "with [backend.scopes] the CouchDB adapter pulls per scope, not one feed"
                    .into(),
            });
        }
        Ok(self.feed(since, limit, wait).await?.0)
    }

    /// `_changes` of this client's database as a page, with CouchDB's
    /// `pending` (how many changes lie after it) when the server says.
    async fn feed(
        &self,
        since: Option<&str>,
        limit: u32,
        wait: Option<u32>,
    ) -> Result<(ChangesPage, Option<u64>), Failure> {
        let mut q = format!("_changes?include_docs=true&conflicts=true&limit={limit}");
        if let Some(s) = since {
            q.push_str("&since=");
            q.push_str(&percent_encode(s));
        }
        let mut deadline = None;
        if let Some(w) = wait {
            let ms = u64::from(w.clamp(1, 60)) * 1000;
            q.push_str(&format!("&feed=longpoll&timeout={ms}"));
            deadline = Some(Duration::from_millis(ms) + WAIT_MARGIN);
        }
        let r = match self.http.call(Method::GET, &q, None, deadline).await {
            // A server that ignores `timeout` (pouchdb-server) held the
            // poll for the whole wait: nothing changed.
            Err(Failure::Transient { .. }) if wait.is_some() => {
                return Ok((empty_page(since), None));
            }
            r => r?,
        };
        let reply = classify::changes(&raw(&r))?;
        let pending = reply.get("pending").and_then(Value::as_u64);
        Ok((self.page(reply, since, limit), pending))
    }

    /// A `_changes` reply as a page of the protocol's feed.
    fn page(
        &self,
        reply: serde_json::Map<String, Value>,
        since: Option<&str>,
        limit: u32,
    ) -> ChangesPage {
        let results = reply
            .get("results")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        let n = results.len();
        let changes = results
            .iter()
            .filter_map(|row| change_of(row, self.shape))
            .collect();
        let cursor = match reply.get("last_seq") {
            Some(Value::String(s)) => s.clone(),
            Some(Value::Number(n)) => n.to_string(),
            _ => since.unwrap_or("0").to_owned(),
        };
        ChangesPage {
            changes,
            cursor,
            more: n > 0 && n >= limit as usize,
        }
    }
}

/// The document id `op` writes (one id everywhere: a create is stored
/// under the device's id), or the verdict for an op that names none.
fn target(op: &WireOp) -> Result<&str, OpResult> {
    match (op.kind, op.id.as_deref()) {
        (OpKind::Create, id) => Ok(id.unwrap_or(&op.local_id)),
        (_, Some(id)) => Ok(id),
        (_, None) => Err(OpResult::Rejected {
            status: 422,
            reason: format!("{} without an id", op.kind.as_str()),
        }),
    }
}

/// What an op comes to once its document's current revision is known.
#[derive(Debug, Clone, PartialEq)]
enum Step {
    /// Decided without a write: applied already (a retry after a lost
    /// reply), a conflict, or a rejection.
    Verdict(OpResult),
    /// Write on top of this revision (`None`: a new document).
    Write(Option<Current>),
}

/// The op_id check, then the base revision check, of `op` against the
/// document's current revision (`None`: never written). A record with a
/// field that a `shape` document cannot hold is rejected.
fn decide(op: &WireOp, id: &str, current: Option<Current>, shape: doc::DocShape) -> Step {
    if let Some(r) = current.as_ref().and_then(|c| c.applied_as(op, id)) {
        tracing::debug!(op_id = %op.op_id, "op found applied in CouchDB (retry after a lost reply)");
        return Step::Verdict(OpResult::Applied(r));
    }
    if let Some(field) = doc::reserved_field(op, shape) {
        return Step::Verdict(OpResult::Rejected {
            status: 422,
            reason: format!(
                "field {field:?} cannot be stored in a native CouchDB document (`syncd` and names starting with `_` are reserved); rename it, or set [backend] doc_shape = \"wrapped\""
            ),
        });
    }
    if let Some(c) = current.as_ref().filter(|c| !c.conflicts.is_empty()) {
        warn_conflicts(&op.collection, id, c);
    }
    match (op.kind, current) {
        (OpKind::Create, None) => Step::Write(None),
        // A create over a tombstone re-creates the record (as a protocol
        // server without client_ids makes a new one).
        (OpKind::Create, Some(c)) if c.deleted => Step::Write(Some(c)),
        (OpKind::Create, Some(c)) => Step::Verdict(OpResult::Conflict(c.record(id))),
        (_, None) => Step::Verdict(OpResult::Rejected {
            status: 404,
            reason: format!(
                "no document {} in the CouchDB database",
                doc::doc_id(&op.collection, id)
            ),
        }),
        (_, Some(c)) if !doc::base_matches(op.base_version, &c) => {
            Step::Verdict(OpResult::Conflict(c.record(id)))
        }
        (_, Some(c)) => Step::Write(Some(c)),
    }
}

fn empty_page(since: Option<&str>) -> ChangesPage {
    ChangesPage {
        changes: Vec::new(),
        cursor: since.unwrap_or("0").to_owned(),
        more: false,
    }
}

/// A request body as JSON bytes.
fn encode(v: &Value) -> Result<Vec<u8>, Failure> {
    serde_json::to_vec(v).map_err(|e| Failure::Transient {
        reason: format!("encoding request: {e}"),
        retry_after_ms: None,
    })
}

fn raw(r: &http::Reply) -> Raw<'_> {
    Raw {
        status: r.status,
        headers: &r.headers,
        body: &r.body,
        db: &r.db,
    }
}

/// One `_changes` row as a change, if it is a record of ours.
fn change_of(row: &Value, shape: doc::DocShape) -> Option<Change> {
    let (collection, id) = doc::split_doc_id(row.get("id")?.as_str()?)?;
    let current = match row.get("doc") {
        Some(Value::Object(d)) => Current::from_body(d.clone()),
        _ => None,
    };
    let current = match current {
        Some(c) => c.read_as(shape),
        // No body (a purge, or a server that omits deleted docs' bodies).
        None => {
            let rev = row.pointer("/changes/0/rev")?.as_str()?;
            let mut body = serde_json::Map::new();
            body.insert("_rev".into(), Value::String(rev.into()));
            let deleted = row.get("deleted").and_then(Value::as_bool) == Some(true);
            body.insert("_deleted".into(), Value::Bool(deleted));
            Current::from_body(body)?
        }
    };
    if !current.conflicts.is_empty() {
        warn_conflicts(collection, id, &current);
    }
    Some(Change {
        collection: collection.to_owned(),
        record: current.record(id),
    })
}

/// CouchDB kept conflicting revisions (replication between nodes): the
/// adapter follows CouchDB's winner and says which leaves lost.
fn warn_conflicts(collection: &str, id: &str, c: &Current) {
    tracing::warn!(
        collection,
        id,
        winner = %c.rev,
        losers = ?c.conflicts,
        "CouchDB document has conflicting revisions: syncd uses CouchDB's winner; resolve the losing revisions in CouchDB (delete them) to silence this"
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn feed_rows() {
        let row = json!({"id": "todos:a", "seq": 3, "changes": [{"rev": "2-x"}],
            "doc": {"_id": "todos:a", "_rev": "2-x", "data": {"k": 1}, "updated_at": 9, "syncd": {"op_id": "o", "gen": 2}}});
        let ch = change_of(&row, doc::DocShape::Native).expect("change");
        assert_eq!(
            (ch.collection.as_str(), ch.record.id.as_str()),
            ("todos", "a")
        );
        assert_eq!((ch.record.version, ch.record.updated_at), (2 << 32, 9));
        let gone = json!({"id": "todos:b", "seq": 4, "deleted": true, "changes": [{"rev": "3-y"}]});
        let ch = change_of(&gone, doc::DocShape::Native).expect("tombstone");
        assert!(ch.record.deleted && ch.record.version == 3 << 32);
        for skip in [
            json!({"id": "_design/v", "changes": [{"rev": "1-a"}]}),
            json!({"id": "plain", "changes": [{"rev": "1-a"}]}),
        ] {
            assert!(change_of(&skip, doc::DocShape::Native).is_none(), "{skip}");
        }
    }
}
