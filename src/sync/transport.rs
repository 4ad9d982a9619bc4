//! The worker's seam to the backend. The worker talks to a [`Transport`];
//! in the daemon that is the HTTP [`BackendClient`], in a simulation it can
//! be anything that answers like a server (see `worker_sim_tests`).

use std::future::Future;
use std::pin::Pin;

use bytes::Bytes;

use crate::backend::client::blobs::{BlobHeld, BlobPlace};
use crate::backend::client::{BackendClient, BatchOutcome, Failure, OpResult};
use crate::backend::protocol::{ChangesPage, Features, PullReply, PullRequest, Session, WireOp};

pub type BoxFut<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The backend protocol's four calls, already classified per the
/// protocol's reply table.
pub trait Transport: Send + Sync {
    /// For logs: the backend's URL or name.
    fn name(&self) -> &str;
    /// `GET v1/health`: reachable, with the features the server announces.
    fn health(&self) -> BoxFut<'_, Result<Features, Failure>>;
    /// `POST v1/ops`.
    fn apply<'a>(&'a self, op: &'a WireOp) -> BoxFut<'a, Result<OpResult, Failure>>;
    /// `POST v1/ops/batch`.
    fn apply_batch<'a>(&'a self, ops: &'a [WireOp]) -> BoxFut<'a, Result<BatchOutcome, Failure>>;
    /// `GET v1/changes`; `wait_s`: a live pull the server may hold.
    fn changes<'a>(
        &'a self,
        since: Option<&'a str>,
        limit: u32,
        wait_s: Option<u32>,
    ) -> BoxFut<'a, Result<ChangesPage, Failure>>;
    /// `GET v1/session` (revision 3, feature `scopes`). A transport of a
    /// backend without scopes never gets asked; its default says so.
    fn session(&self) -> BoxFut<'_, Result<Session, Failure>> {
        Box::pin(async { Err(no_scopes("GET v1/session")) })
    }
    /// `POST v1/pull` (revision 3, feature `scopes`).
    fn pull<'a>(&'a self, req: &'a PullRequest) -> BoxFut<'a, Result<PullReply, Failure>> {
        let _ = req;
        Box::pin(async { Err(no_scopes("POST v1/pull")) })
    }
    /// `HEAD v1/blobs/{sha256}` (feature `blobs`).
    fn blob_held<'a>(
        &'a self,
        scope: Option<&'a str>,
        sha256: &'a str,
    ) -> BoxFut<'a, Result<BlobHeld, Failure>> {
        let _ = (scope, sha256);
        Box::pin(async { Err(no_blobs("HEAD v1/blobs")) })
    }
    /// `PUT v1/blobs/{sha256}` (feature `blobs`): one chunk at `offset`.
    fn blob_put<'a>(
        &'a self,
        scope: Option<&'a str>,
        sha256: &'a str,
        offset: u64,
        length: u64,
        chunk: Bytes,
    ) -> BoxFut<'a, Result<BlobHeld, Failure>> {
        let _ = (scope, sha256, offset, length, chunk);
        Box::pin(async { Err(no_blobs("PUT v1/blobs")) })
    }
    /// `GET v1/blobs/{sha256}` from `offset`, at most `max` bytes; `None`:
    /// the server does not hold it. `place`: where it is attached.
    fn blob_get<'a>(
        &'a self,
        scope: Option<&'a str>,
        sha256: &'a str,
        offset: u64,
        max: u64,
        place: Option<&'a BlobPlace>,
    ) -> BoxFut<'a, Result<Option<Bytes>, Failure>> {
        let _ = (scope, sha256, offset, max, place);
        Box::pin(async { Err(no_blobs("GET v1/blobs")) })
    }
}

/// What a transport without blobs answers to a blob call.
fn no_blobs(endpoint: &str) -> Failure {
    Failure::Unlisted {
        status: 404,
        reason: format!("{endpoint}: this backend does not take attachments"),
    }
}

/// What a transport without scopes answers to a revision-3 call.
fn no_scopes(endpoint: &str) -> Failure {
    Failure::Unlisted {
        status: 404,
        reason: format!("{endpoint}: this backend has no scopes"),
    }
}

impl Transport for BackendClient {
    fn name(&self) -> &str {
        self.shown_base()
    }

    fn health(&self) -> BoxFut<'_, Result<Features, Failure>> {
        Box::pin(BackendClient::health(self))
    }

    fn apply<'a>(&'a self, op: &'a WireOp) -> BoxFut<'a, Result<OpResult, Failure>> {
        Box::pin(BackendClient::apply(self, op))
    }

    fn apply_batch<'a>(&'a self, ops: &'a [WireOp]) -> BoxFut<'a, Result<BatchOutcome, Failure>> {
        Box::pin(BackendClient::apply_batch(self, ops))
    }

    fn changes<'a>(
        &'a self,
        since: Option<&'a str>,
        limit: u32,
        wait_s: Option<u32>,
    ) -> BoxFut<'a, Result<ChangesPage, Failure>> {
        Box::pin(BackendClient::changes(self, since, limit, wait_s))
    }

    fn session(&self) -> BoxFut<'_, Result<Session, Failure>> {
        Box::pin(BackendClient::session(self))
    }

    fn pull<'a>(&'a self, req: &'a PullRequest) -> BoxFut<'a, Result<PullReply, Failure>> {
        Box::pin(BackendClient::pull(self, req))
    }

    fn blob_held<'a>(
        &'a self,
        scope: Option<&'a str>,
        sha256: &'a str,
    ) -> BoxFut<'a, Result<BlobHeld, Failure>> {
        Box::pin(BackendClient::blob_held(self, scope, sha256))
    }

    fn blob_put<'a>(
        &'a self,
        scope: Option<&'a str>,
        sha256: &'a str,
        offset: u64,
        length: u64,
        chunk: Bytes,
    ) -> BoxFut<'a, Result<BlobHeld, Failure>> {
        Box::pin(BackendClient::blob_put(
            self, scope, sha256, offset, length, chunk,
        ))
    }

    fn blob_get<'a>(
        &'a self,
        scope: Option<&'a str>,
        sha256: &'a str,
        offset: u64,
        max: u64,
        _place: Option<&'a BlobPlace>,
    ) -> BoxFut<'a, Result<Option<Bytes>, Failure>> {
        Box::pin(BackendClient::blob_get(self, scope, sha256, offset, max))
    }
}
