//! Routing, auth, fault injection and the endpoint handlers.
//!
//! Why: the HTTP concerns (paths, status codes, headers, query strings,
//! waiting pulls) stay here so that [`ops`](super::ops) and the stores know
//! nothing about HTTP.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, ALLOW, AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE, RETRY_AFTER};
use hyper::{Method, Request, Response, StatusCode};
use serde::Serialize;

use tokio::sync::watch;

use crate::backend::protocol::{ErrorBody, Features};
use crate::domain::scope::SINGLE_SCOPE;

use super::access::Caller;
use super::auth::{AuthError, Malformed, Verifier};
use super::feed::{wait_past, WaitEnd};
use super::handler::{self, parse_changes_query, JsonReply, OpsReply};
use super::pull::{self, PullQuery, CHANGES_IN_USERS_MODE};
use super::shared_read::{Seen, SharedReads};
use super::store::{BackendStore, ChangeSlice, ScopeSlice, StoreError};
use super::Faults;

/// Shared state of all connections.
pub(crate) struct AppState {
    pub store: Arc<dyn BackendStore>,
    /// Attachment content (`v1/blobs`).
    pub blobs: Arc<dyn super::blobs::BlobBackend>,
    pub token: Option<String>,
    /// Users mode (revision 3): verifies each request's JWT.
    pub users: Option<Verifier>,
    pub faults: Faults,
    pub max_body_bytes: usize,
    /// Becomes `true` when the server stops: held waiting pulls answer then.
    pub stopping: watch::Receiver<bool>,
    /// The re-reads of woken `v1/changes` waiters, shared.
    pub shared_reads: SharedReads,
}

impl AppState {
    /// The optional features this server announces in `v1/health`.
    fn features(&self) -> Features {
        Features {
            scopes: self.users.is_some(),
            batch: !self.faults.no_batch,
            wait: true,
            client_ids: true,
            blobs: true,
        }
    }

    /// Resolves once the server is stopping (at once if it already is, or
    /// if the signal's sender is gone).
    async fn stopped(&self) {
        let mut rx = self.stopping.clone();
        let _ = rx.wait_for(|stop| *stop).await;
    }
}

/// Returned from the service to make hyper drop the connection without
/// writing a response (the `drop_after_apply` fault).
#[derive(Debug)]
pub(crate) struct DropConnection;

impl fmt::Display for DropConnection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("connection dropped after apply (injected fault)")
    }
}

impl std::error::Error for DropConnection {}

pub(crate) type Reply = Response<Full<Bytes>>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route {
    Ops,
    Batch,
    Changes,
    Health,
    /// Revision 3, users mode only.
    Session,
    Pull,
}

impl Route {
    fn method(self) -> (Method, &'static str) {
        match self {
            Route::Ops | Route::Batch | Route::Pull => (Method::POST, "POST"),
            Route::Changes | Route::Health | Route::Session => (Method::GET, "GET"),
        }
    }
}

/// Matches on the path's suffix so any base-URL prefix works
/// (`/v1/ops`, `/sync/v1/ops`, `/sync/v1/ops/`).
fn route(path: &str) -> Option<Route> {
    let p = path.strip_suffix('/').unwrap_or(path);
    if p.ends_with("/v1/ops/batch") {
        Some(Route::Batch)
    } else if p.ends_with("/v1/ops") {
        Some(Route::Ops)
    } else if p.ends_with("/v1/changes") {
        Some(Route::Changes)
    } else if p.ends_with("/v1/health") {
        Some(Route::Health)
    } else if p.ends_with("/v1/session") {
        Some(Route::Session)
    } else if p.ends_with("/v1/pull") {
        Some(Route::Pull)
    } else {
        None
    }
}

fn json_reply<T: Serialize>(status: StatusCode, body: &T) -> Reply {
    to_reply(JsonReply::json(status.as_u16(), body))
}

/// A [`handler`] reply as a hyper response.
fn to_reply(r: JsonReply) -> Reply {
    let mut resp = Response::new(Full::new(Bytes::from(r.body)));
    *resp.status_mut() =
        StatusCode::from_u16(r.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    if let Some(s) = r.retry_after_s {
        resp.headers_mut().insert(RETRY_AFTER, HeaderValue::from(s));
    }
    resp
}

fn error_reply(status: StatusCode, reason: impl Into<String>) -> Reply {
    json_reply(
        status,
        &ErrorBody {
            code: None,
            error: reason.into(),
            record: None,
        },
    )
}

/// A store failure, logged once (by [`handler::store_error`]).
fn store_error_reply(e: &StoreError) -> Reply {
    to_reply(handler::store_error(e))
}

/// Constant-time comparison, so the token cannot be guessed by timing.
fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The bytes after `Bearer ` (scheme case-insensitive), if any.
fn bearer(req: &Request<Incoming>) -> Option<&[u8]> {
    let value = req.headers().get(AUTHORIZATION)?;
    let (scheme, given) = value.as_bytes().split_first_chunk::<7>()?;
    scheme.eq_ignore_ascii_case(b"bearer ").then_some(given)
}

fn authorized(req: &Request<Incoming>, token: &str) -> bool {
    bearer(req).is_some_and(|given| ct_eq(given, token.as_bytes()))
}

/// 401 with `WWW-Authenticate: Bearer`.
fn unauthorized(reason: impl Into<String>) -> Reply {
    let mut resp = error_reply(StatusCode::UNAUTHORIZED, reason);
    resp.headers_mut()
        .insert("www-authenticate", HeaderValue::from_static("Bearer"));
    resp
}

/// Who sends `req`, or why it is refused (a 401).
fn authenticate(state: &AppState, req: &Request<Incoming>) -> Result<Caller, AuthError> {
    if let Some(verifier) = &state.users {
        let token = bearer(req).ok_or(AuthError::Missing).and_then(|t| {
            std::str::from_utf8(t)
                .map_err(|_| AuthError::Malformed(Malformed::Utf8))
                .and_then(|t| verifier.verify(t.trim()))
        });
        return token.map(Caller::User);
    }
    match &state.token {
        Some(token) if !authorized(req, token) => Err(AuthError::WrongToken),
        _ => Ok(Caller::Single),
    }
}

/// Draws a fault with probability `p`.
fn draw(p: f64) -> bool {
    p > 0.0 && fastrand::f64() < p
}

/// The service function: one request in, one response out (or
/// [`DropConnection`]).
pub(crate) async fn handle(
    state: Arc<AppState>,
    req: Request<Incoming>,
) -> Result<Reply, DropConnection> {
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let result = dispatch(&state, req).await;
    match &result {
        Ok(resp) => tracing::debug!(%method, %path, status = resp.status().as_u16(), "request"),
        Err(_) => tracing::debug!(%method, %path, "request applied, connection dropped (fault)"),
    }
    result
}

async fn dispatch(state: &AppState, req: Request<Incoming>) -> Result<Reply, DropConnection> {
    if super::blob_http::blob_hash(req.uri().path()).is_some() {
        return Ok(blobs(state, req).await);
    }
    let Some(route) = route(req.uri().path()) else {
        return Ok(error_reply(StatusCode::NOT_FOUND, "not found"));
    };
    if route == Route::Batch && state.faults.no_batch {
        return Ok(error_reply(StatusCode::NOT_FOUND, "not found"));
    }
    let (allowed, allow_name) = route.method();
    if req.method() != allowed {
        let mut resp = error_reply(StatusCode::METHOD_NOT_ALLOWED, "method not allowed");
        resp.headers_mut()
            .insert(ALLOW, HeaderValue::from_static(allow_name));
        return Ok(resp);
    }
    if route == Route::Health {
        return Ok(health(state).await);
    }
    if matches!(route, Route::Session | Route::Pull) && state.users.is_none() {
        return Ok(error_reply(StatusCode::NOT_FOUND, "not found"));
    }

    let faults = &state.faults;
    if draw(faults.fail_503) {
        let mut resp = error_reply(
            StatusCode::SERVICE_UNAVAILABLE,
            "service unavailable (injected fault)",
        );
        resp.headers_mut()
            .insert(RETRY_AFTER, HeaderValue::from(faults.retry_after_s));
        return Ok(resp);
    }
    if draw(faults.hang) {
        tokio::time::sleep(Duration::from_millis(faults.hang_ms)).await;
    }

    let caller = match authenticate(state, &req) {
        Ok(c) => c,
        Err(e) => {
            tracing::debug!(reason = %e, "bearer token refused");
            return Ok(unauthorized(e.to_string()));
        }
    };

    match (route, caller) {
        (Route::Changes, Caller::User(_)) => {
            Ok(error_reply(StatusCode::BAD_REQUEST, CHANGES_IN_USERS_MODE))
        }
        (Route::Changes, Caller::Single) => {
            Ok(changes(state, req.uri().query().unwrap_or("")).await)
        }
        (Route::Session, Caller::User(p)) => Ok(json_reply(StatusCode::OK, &p.session())),
        (Route::Pull, caller @ Caller::User(_)) => {
            let body = match read_body(req, state.max_body_bytes).await {
                Ok(b) => b,
                Err(resp) => return Ok(resp),
            };
            Ok(pull(state, &body, caller).await)
        }
        (Route::Session | Route::Pull, Caller::Single) => {
            Ok(error_reply(StatusCode::NOT_FOUND, "not found"))
        }
        (Route::Ops | Route::Batch, caller) => {
            let body = match read_body(req, state.max_body_bytes).await {
                Ok(b) => b,
                Err(resp) => return Ok(resp),
            };
            let drop_after = draw(faults.drop_after_apply);
            let (resp, reached_store) = if route == Route::Ops {
                ops(state, body, handler::op_as, caller).await
            } else {
                ops(state, body, handler::batch_as, caller).await
            };
            if drop_after && reached_store {
                Err(DropConnection)
            } else {
                Ok(resp)
            }
        }
        (Route::Health, _) => Ok(health(state).await),
    }
}

pub(super) async fn read_body(req: Request<Incoming>, max: usize) -> Result<Bytes, Reply> {
    let too_large = || {
        error_reply(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("request body exceeds {max} bytes"),
        )
    };
    let declared = req
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > max as u64) {
        return Err(too_large());
    }
    match Limited::new(req.into_body(), max).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => Err(too_large()),
        Err(e) => Err(error_reply(
            StatusCode::BAD_REQUEST,
            format!("could not read request body: {e}"),
        )),
    }
}

/// `v1/blobs/{sha256}`: authenticated like every endpoint, with the
/// injected 503s (a transfer must survive them too).
async fn blobs(state: &AppState, req: Request<Incoming>) -> Reply {
    if draw(state.faults.fail_503) {
        let mut resp = error_reply(
            StatusCode::SERVICE_UNAVAILABLE,
            "service unavailable (injected fault)",
        );
        resp.headers_mut()
            .insert(RETRY_AFTER, HeaderValue::from(state.faults.retry_after_s));
        return resp;
    }
    match authenticate(state, &req) {
        Ok(caller) => {
            super::blob_http::handle(&state.blobs, &caller, req, state.max_body_bytes).await
        }
        Err(e) => unauthorized(e.to_string()),
    }
}

async fn run_store<T, F>(state: &AppState, f: F) -> Result<T, StoreError>
where
    T: Send + 'static,
    F: FnOnce(&dyn BackendStore) -> Result<T, StoreError> + Send + 'static,
{
    let store = Arc::clone(&state.store);
    tokio::task::spawn_blocking(move || f(store.as_ref()))
        .await
        .map_err(|e| StoreError::Failed(format!("store task failed: {e}")))?
}

async fn health(state: &AppState) -> Reply {
    let features = state.features();
    match run_store(state, move |s| Ok(handler::health(s, &features))).await {
        Ok(r) => to_reply(r),
        Err(e) => {
            tracing::error!(error = %e, "health check failed");
            error_reply(StatusCode::SERVICE_UNAVAILABLE, "storage unavailable")
        }
    }
}

/// `v1/ops` or `v1/ops/batch` through `f` ([`handler::op`] or
/// [`handler::batch`]); returns the reply and whether the store was reached
/// (ops may have applied).
async fn ops(
    state: &AppState,
    body: Bytes,
    f: fn(&dyn BackendStore, &[u8], handler::Check<'_>, &Caller) -> OpsReply,
    caller: Caller,
) -> (Reply, bool) {
    let blobs = Arc::clone(&state.blobs);
    let stored = run_store(state, move |s| {
        let check = |op: &super::ops::ValidOp| {
            super::blob_http::content_held(s, blobs.as_ref(), &caller, op)
        };
        Ok(f(s, &body, &check, &caller))
    });
    match stored.await {
        Ok(r) => (to_reply(r.reply), r.reached_store),
        Err(e) => (store_error_reply(&e), true),
    }
}

/// `GET v1/changes`: one page of the log; with `wait`, held (without any
/// store resource) until a commit moves the head past `since`, the wait
/// ends, or the server stops.
async fn changes(state: &AppState, query: &str) -> Reply {
    let q = match parse_changes_query(query) {
        Ok(q) => q,
        Err(e) => return error_reply(StatusCode::BAD_REQUEST, e.to_string()),
    };
    let deadline = q
        .wait_s
        .map(|s| tokio::time::Instant::now() + Duration::from_secs(s));
    // Subscribe before the first read, so a commit in between is not missed.
    let mut head = deadline.map(|_| state.store.subscribe());
    let mut seen = head.as_mut().map_or(0, |h| *h.borrow_and_update());
    let mut unscoped = state.store.unscoped_wakes();
    let mut slice = match read_changes(state, q.since, q.limit).await {
        Ok(s) => s,
        Err(e) => return store_error_reply(&e),
    };
    // Wait only when nothing is after `since`; a cursor past the head (a
    // reset server) is answered at once so the client can move back. A
    // wake-up for a commit this read cannot see (another scope, on
    // PostgreSQL) does not send it back to the store.
    if let (Some(deadline), Some(head)) = (deadline, head.as_mut()) {
        while slice.entries.is_empty() && q.since == slice.head {
            let read = [(SINGLE_SCOPE.to_owned(), slice.head)];
            let Some(now) = wait_for_news(state, head, seen, unscoped, &read, deadline).await
            else {
                break;
            };
            seen = now;
            unscoped = state.store.unscoped_wakes();
            let read = || read_changes(state, q.since, q.limit);
            let key = Seen {
                woken: seen,
                unscoped,
            };
            slice = match state.shared_reads.read(q.since, q.limit, key, read).await {
                Ok(s) => s,
                Err(e) => return store_error_reply(&e),
            };
        }
    }
    to_reply(handler::changes_page(&q, slice))
}

/// `POST v1/pull`: a page of each readable scope's feed; with `wait`,
/// held (without any store resource) while none of them has anything
/// after its cursor, until a commit (any: the reply is re-read and the
/// wait resumes if it was for another scope), the deadline, or shutdown.
async fn pull(state: &AppState, body: &[u8], caller: Caller) -> Reply {
    let q = match pull::parse_pull(body) {
        Ok(q) => q,
        Err(r) => return error_reply(status_of(r.status), r.reason),
    };
    let caller = Arc::new(caller);
    let deadline = q
        .wait_s
        .map(|s| tokio::time::Instant::now() + Duration::from_secs(s));
    // Subscribe before the first read, so a commit in between is not missed.
    let mut head = state.store.subscribe();
    let mut seen = *head.borrow_and_update();
    loop {
        let unscoped = state.store.unscoped_wakes();
        let slices = match read_scopes(state, &caller, &q).await {
            Ok(s) => s,
            Err(e) => return store_error_reply(&e),
        };
        let Some(deadline) = deadline else {
            return to_reply(pull::pull_reply(&caller, &q, slices));
        };
        if !pull::is_idle(&caller, &q, &slices) {
            return to_reply(pull::pull_reply(&caller, &q, slices));
        }
        let read: Vec<(String, u64)> = pull::readable(&caller, &q)
            .into_iter()
            .zip(&slices)
            .map(|((scope, _), slice)| (scope, slice.head))
            .collect();
        match wait_for_news(state, &mut head, seen, unscoped, &read, deadline).await {
            Some(now) => seen = now,
            None => return to_reply(pull::pull_reply(&caller, &q, slices)),
        }
    }
}

/// Waits for a wake-up after which a waiter that read `read` (scope, head)
/// may find more ([`BackendStore::may_have_moved`]): returns the wake-up
/// value seen, or `None` at the deadline or shutdown. Wake-ups for other
/// scopes are waited through without touching the store.
async fn wait_for_news(
    state: &AppState,
    head: &mut watch::Receiver<u64>,
    mut seen: u64,
    unscoped: u64,
    read: &[(String, u64)],
    deadline: tokio::time::Instant,
) -> Option<u64> {
    loop {
        if wait_past(head, seen, deadline, state.stopped()).await != WaitEnd::Moved {
            return None;
        }
        seen = *head.borrow_and_update();
        if state.store.may_have_moved(unscoped, read) {
            return Some(seen);
        }
    }
}

async fn read_scopes(
    state: &AppState,
    caller: &Arc<Caller>,
    q: &PullQuery,
) -> Result<Vec<ScopeSlice>, StoreError> {
    let scopes = pull::readable(caller, q);
    if scopes.is_empty() {
        return Ok(Vec::new());
    }
    let limit = q.limit;
    run_store(state, move |s| s.pull(&scopes, limit)).await
}

fn status_of(code: u16) -> StatusCode {
    StatusCode::from_u16(code).unwrap_or(StatusCode::BAD_REQUEST)
}

async fn read_changes(
    state: &AppState,
    since: u64,
    limit: usize,
) -> Result<ChangeSlice, StoreError> {
    run_store(state, move |s| s.changes(since, limit)).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_by_suffix() {
        assert_eq!(route("/v1/ops"), Some(Route::Ops));
        assert_eq!(route("/sync/v1/ops/"), Some(Route::Ops));
        assert_eq!(route("/a/b/v1/ops/batch"), Some(Route::Batch));
        assert_eq!(route("/v1/changes"), Some(Route::Changes));
        assert_eq!(route("/x/v1/health"), Some(Route::Health));
        assert_eq!(route("/xv1/ops"), None);
        assert_eq!(route("/v1/opsx"), None);
        assert_eq!(route("/"), None);
    }

    #[test]
    fn constant_time_eq() {
        assert!(ct_eq(b"abc", b"abc"));
        assert!(!ct_eq(b"abc", b"abd"));
        assert!(!ct_eq(b"abc", b"ab"));
    }
}
