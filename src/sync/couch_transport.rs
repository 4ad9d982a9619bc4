//! The CouchDB adapter behind the worker's [`Transport`] seam, and the
//! one place that builds it from `[backend]` (the worker calls
//! [`connect`] when `kind = "couchdb"`). Lives in `sync` because the
//! trait does; the adapter itself is `crate::backend::couch`.

use std::sync::Arc;
use std::time::Duration;

use crate::backend::client::blobs::{BlobHeld, BlobPlace};
use crate::backend::client::{BatchOutcome, Failure, OpResult};
use crate::backend::couch::{CouchClient, Credentials};
use crate::backend::protocol::{ChangesPage, Features, PullReply, PullRequest, Session, WireOp};
use crate::config::Config;
use crate::sync::transport::{BoxFut, Transport};

impl Transport for CouchClient {
    fn name(&self) -> &str {
        self.shown()
    }

    fn health(&self) -> BoxFut<'_, Result<Features, Failure>> {
        Box::pin(CouchClient::health(self))
    }

    fn apply<'a>(&'a self, op: &'a WireOp) -> BoxFut<'a, Result<OpResult, Failure>> {
        Box::pin(CouchClient::apply(self, op))
    }

    fn apply_batch<'a>(&'a self, ops: &'a [WireOp]) -> BoxFut<'a, Result<BatchOutcome, Failure>> {
        Box::pin(CouchClient::apply_batch(self, ops))
    }

    fn changes<'a>(
        &'a self,
        since: Option<&'a str>,
        limit: u32,
        wait_s: Option<u32>,
    ) -> BoxFut<'a, Result<ChangesPage, Failure>> {
        Box::pin(CouchClient::changes(self, since, limit, wait_s))
    }

    fn session(&self) -> BoxFut<'_, Result<Session, Failure>> {
        Box::pin(CouchClient::session(self))
    }

    fn pull<'a>(&'a self, req: &'a PullRequest) -> BoxFut<'a, Result<PullReply, Failure>> {
        Box::pin(CouchClient::pull(self, req))
    }

    /// Content travels inline with the write that attaches it (CouchDB
    /// has no separate, resumable upload): nothing to send beforehand.
    fn blob_held<'a>(
        &'a self,
        _scope: Option<&'a str>,
        _sha256: &'a str,
    ) -> BoxFut<'a, Result<BlobHeld, Failure>> {
        Box::pin(async { Ok(BlobHeld::Complete) })
    }

    fn blob_put<'a>(
        &'a self,
        _scope: Option<&'a str>,
        _sha256: &'a str,
        _offset: u64,
        _length: u64,
        _chunk: bytes::Bytes,
    ) -> BoxFut<'a, Result<BlobHeld, Failure>> {
        Box::pin(async { Ok(BlobHeld::Complete) })
    }

    /// The attachment of the document it is on, by range.
    fn blob_get<'a>(
        &'a self,
        scope: Option<&'a str>,
        _sha256: &'a str,
        offset: u64,
        max: u64,
        place: Option<&'a BlobPlace>,
    ) -> BoxFut<'a, Result<Option<bytes::Bytes>, Failure>> {
        Box::pin(async move {
            match place {
                Some(p) => self.attachment(scope, p, offset, max).await,
                None => Ok(None),
            }
        })
    }
}

/// The adapter for `cfg` (`url` names the database). `token` is the
/// already-read `token_file`; basic auth reads `password_file` here.
pub fn connect(
    cfg: &Config,
    url: &str,
    token: Option<String>,
    blobs: crate::store::blobs::BlobDir,
    client_id: &str,
) -> Result<Arc<dyn Transport>, String> {
    let b = &cfg.backend;
    let creds = match (&b.username, &b.password_file, token) {
        (Some(u), Some(p), _) => Credentials::Basic {
            username: u.clone(),
            password: crate::backend::client::read_token(p)
                .map_err(|e| e.replace("token_file", "password_file"))?
                .unwrap_or_default(),
        },
        (_, _, Some(t)) => Credentials::Bearer(t),
        _ => Credentials::None,
    };
    let timeout = Duration::from_millis(b.timeout_ms);
    let ca = b.ca_file.as_deref();
    let c = match &b.scopes {
        Some(shared) => CouchClient::scoped(url, shared.clone(), &creds, client_id, timeout, ca),
        None => CouchClient::new(url, &creds, client_id, timeout, ca),
    }
    .map_err(|e| e.to_string())?
    .with_shape(b.doc_shape.unwrap_or_default())
    .with_blobs(blobs);
    Ok(Arc::new(c))
}
