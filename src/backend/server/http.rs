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

use crate::backend::protocol::{
    BatchReply, BatchResult, Change, ChangesPage, ErrorBody, Features, HealthBody, OpOk,
    ServerRecord,
};

use super::feed::{wait_past, WaitEnd};
use super::ops::{parse_batch, parse_op, Rejection, ValidOp};
use super::store::{BackendStore, ChangeSlice, Outcome, StoreError};
use super::Faults;

/// Default and maximum `limit` of `v1/changes`.
pub const DEFAULT_CHANGES_LIMIT: usize = 100;
pub const MAX_CHANGES_LIMIT: usize = 1000;
/// Bounds of `wait` (seconds) on `v1/changes`; other values are clamped.
pub const MIN_WAIT_S: u64 = 1;
pub const MAX_WAIT_S: u64 = 60;

/// Shared state of all connections.
pub(crate) struct AppState {
    pub store: Arc<dyn BackendStore>,
    pub token: Option<String>,
    pub faults: Faults,
    pub max_body_bytes: usize,
    /// Becomes `true` when the server stops: held waiting pulls answer then.
    pub stopping: watch::Receiver<bool>,
}

impl AppState {
    /// The optional features this server announces in `v1/health`.
    fn features(&self) -> Features {
        Features {
            batch: !self.faults.no_batch,
            wait: true,
            client_ids: true,
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
}

impl Route {
    fn method(self) -> (Method, &'static str) {
        match self {
            Route::Ops | Route::Batch => (Method::POST, "POST"),
            Route::Changes | Route::Health => (Method::GET, "GET"),
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
    } else {
        None
    }
}

fn json_reply<T: Serialize>(status: StatusCode, body: &T) -> Reply {
    let (status, bytes) = match serde_json::to_vec(body) {
        Ok(b) => (status, b),
        Err(_) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            br#"{"error":"internal error"}"#.to_vec(),
        ),
    };
    let mut resp = Response::new(Full::new(Bytes::from(bytes)));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

fn error_reply(status: StatusCode, reason: impl Into<String>) -> Reply {
    json_reply(
        status,
        &ErrorBody {
            error: reason.into(),
            record: None,
        },
    )
}

fn status_of(code: u16) -> StatusCode {
    StatusCode::from_u16(code).unwrap_or(StatusCode::BAD_REQUEST)
}

fn rejection_reply(r: Rejection) -> Reply {
    error_reply(status_of(r.status), r.reason)
}

fn store_error_reply(e: &StoreError) -> Reply {
    tracing::error!(error = %e, "backend store failure");
    error_reply(StatusCode::INTERNAL_SERVER_ERROR, "storage error")
}

/// Constant-time comparison, so the token cannot be guessed by timing.
fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn authorized(req: &Request<Incoming>, token: &str) -> bool {
    let Some(value) = req.headers().get(AUTHORIZATION) else {
        return false;
    };
    let Some((scheme, given)) = value.as_bytes().split_first_chunk::<7>() else {
        return false;
    };
    scheme.eq_ignore_ascii_case(b"bearer ") && ct_eq(given, token.as_bytes())
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

    if let Some(token) = &state.token {
        if !authorized(&req, token) {
            let mut resp = error_reply(StatusCode::UNAUTHORIZED, "unauthorized");
            resp.headers_mut()
                .insert("www-authenticate", HeaderValue::from_static("Bearer"));
            return Ok(resp);
        }
    }

    match route {
        Route::Changes => Ok(changes(state, req.uri().query().unwrap_or("")).await),
        Route::Ops | Route::Batch => {
            let body = match read_body(req, state.max_body_bytes).await {
                Ok(b) => b,
                Err(resp) => return Ok(resp),
            };
            let drop_after = draw(faults.drop_after_apply);
            let (resp, reached_store) = if route == Route::Ops {
                single_op(state, &body).await
            } else {
                batch(state, &body).await
            };
            if drop_after && reached_store {
                Err(DropConnection)
            } else {
                Ok(resp)
            }
        }
        Route::Health => Ok(health(state).await),
    }
}

async fn read_body(req: Request<Incoming>, max: usize) -> Result<Bytes, Reply> {
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

async fn run_store<T, F>(state: &AppState, f: F) -> Result<T, StoreError>
where
    T: Send + 'static,
    F: FnOnce(&dyn BackendStore) -> Result<T, StoreError> + Send + 'static,
{
    let store = Arc::clone(&state.store);
    tokio::task::spawn_blocking(move || f(store.as_ref()))
        .await
        .map_err(|e| StoreError(format!("store task failed: {e}")))?
}

async fn health(state: &AppState) -> Reply {
    match run_store(state, |s| s.check()).await {
        Ok(()) => json_reply(
            StatusCode::OK,
            &HealthBody {
                ok: true,
                features: state.features().names(),
            },
        ),
        Err(e) => {
            tracing::error!(error = %e, "health check failed");
            error_reply(StatusCode::SERVICE_UNAVAILABLE, "storage unavailable")
        }
    }
}

/// Returns the reply and whether the store was reached (ops may have applied).
async fn single_op(state: &AppState, body: &[u8]) -> (Reply, bool) {
    let op = match parse_op(body) {
        Ok(op) => op,
        Err(r) => return (rejection_reply(r), false),
    };
    let outcome = run_store(state, move |s| s.apply(std::slice::from_ref(&op))).await;
    let reply = match outcome.map(|mut v| v.pop()) {
        Ok(Some(Outcome::Applied { record, .. })) => json_reply(StatusCode::OK, &OpOk { record }),
        Ok(Some(Outcome::Conflict(record))) => conflict_reply(record),
        Ok(Some(Outcome::NotFound(reason))) => error_reply(StatusCode::NOT_FOUND, reason),
        Ok(None) => store_error_reply(&StoreError("apply returned no outcome".into())),
        Err(e) => store_error_reply(&e),
    };
    (reply, true)
}

fn conflict_reply(record: ServerRecord) -> Reply {
    json_reply(
        StatusCode::CONFLICT,
        &ErrorBody {
            error: "conflict".into(),
            record: Some(record),
        },
    )
}

async fn batch(state: &AppState, body: &[u8]) -> (Reply, bool) {
    let parsed = match parse_batch(body) {
        Ok(p) => p,
        Err(r) => return (rejection_reply(r), false),
    };
    // The valid prefix goes to the store; the first invalid op (if any) is
    // reported after it, provided the whole prefix applied.
    let mut valid: Vec<ValidOp> = Vec::with_capacity(parsed.len());
    let mut first_invalid = None;
    for item in parsed {
        match item {
            Ok(op) => valid.push(op),
            Err(r) => {
                first_invalid = Some(r);
                break;
            }
        }
    }
    let n_valid = valid.len();
    let outcomes = if valid.is_empty() {
        Vec::new()
    } else {
        match run_store(state, move |s| s.apply(&valid)).await {
            Ok(o) => o,
            Err(e) => return (store_error_reply(&e), true),
        }
    };
    let all_applied = outcomes.len() == n_valid && outcomes.iter().all(Outcome::is_applied);
    let mut results: Vec<BatchResult> = outcomes
        .into_iter()
        .map(|o| match o {
            Outcome::Applied { record, .. } => BatchResult {
                status: 200,
                record: Some(record),
                error: None,
            },
            Outcome::Conflict(record) => BatchResult {
                status: 409,
                record: Some(record),
                error: Some("conflict".into()),
            },
            Outcome::NotFound(reason) => BatchResult {
                status: 404,
                record: None,
                error: Some(reason),
            },
        })
        .collect();
    if all_applied {
        if let Some(r) = first_invalid {
            results.push(BatchResult {
                status: r.status,
                record: None,
                error: Some(r.reason),
            });
        }
    }
    (
        json_reply(StatusCode::OK, &BatchReply { results }),
        n_valid > 0,
    )
}

/// Parsed query of `v1/changes`.
#[derive(Debug, PartialEq, Eq)]
struct ChangesQuery {
    since: u64,
    /// Whether `since` was given (non-empty).
    since_given: bool,
    limit: usize,
    /// `wait` in seconds, clamped to `MIN_WAIT_S..=MAX_WAIT_S`; `None`: answer at once.
    wait_s: Option<u64>,
}

fn parse_changes_query(query: &str) -> Result<ChangesQuery, String> {
    let mut q = ChangesQuery {
        since: 0,
        since_given: false,
        limit: DEFAULT_CHANGES_LIMIT,
        wait_s: None,
    };
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        match key {
            "since" if !value.is_empty() => {
                q.since = value
                    .parse()
                    .map_err(|_| format!("invalid since cursor {value:?}"))?;
                q.since_given = true;
            }
            "limit" if !value.is_empty() => {
                let n: usize = value
                    .parse()
                    .map_err(|_| format!("invalid limit {value:?}: expected a positive integer"))?;
                q.limit = n.clamp(1, MAX_CHANGES_LIMIT);
            }
            "wait" if !value.is_empty() => {
                let s: u64 = value.parse().map_err(|_| {
                    format!(
                        "invalid wait {value:?}: expected seconds, {MIN_WAIT_S} to {MAX_WAIT_S}"
                    )
                })?;
                q.wait_s = Some(s.clamp(MIN_WAIT_S, MAX_WAIT_S));
            }
            _ => {}
        }
    }
    Ok(q)
}

/// `GET v1/changes`: one page of the log; with `wait`, held (without any
/// store resource) until a commit moves the head past `since`, the wait
/// ends, or the server stops.
async fn changes(state: &AppState, query: &str) -> Reply {
    let q = match parse_changes_query(query) {
        Ok(q) => q,
        Err(reason) => return error_reply(StatusCode::BAD_REQUEST, reason),
    };
    let deadline = q
        .wait_s
        .map(|s| tokio::time::Instant::now() + Duration::from_secs(s));
    // Subscribe before the first read, so a commit in between is not missed.
    let mut head = deadline.map(|_| state.store.subscribe());
    let mut slice = match read_changes(state, q.since, q.limit).await {
        Ok(s) => s,
        Err(e) => return store_error_reply(&e),
    };
    // Wait only when nothing is after `since`; a cursor past the head (a
    // reset server) is answered at once so the client can move back.
    if let (Some(deadline), Some(head)) = (deadline, head.as_mut()) {
        if slice.entries.is_empty() && q.since == slice.head {
            let end = wait_past(head, q.since, deadline, state.stopped()).await;
            if end == WaitEnd::Moved {
                slice = match read_changes(state, q.since, q.limit).await {
                    Ok(s) => s,
                    Err(e) => return store_error_reply(&e),
                };
            }
        }
    }
    changes_reply(&q, slice)
}

async fn read_changes(
    state: &AppState,
    since: u64,
    limit: usize,
) -> Result<ChangeSlice, StoreError> {
    run_store(state, move |s| s.changes(since, limit)).await
}

/// The page for `slice`. Cursor: the last sequence returned; with nothing
/// new, the input cursor, or the head when the input is past it (the log
/// was reset).
fn changes_reply(q: &ChangesQuery, slice: ChangeSlice) -> Reply {
    let cursor = match slice.entries.last() {
        Some((seq, _)) => *seq,
        None if q.since_given && q.since <= slice.head => q.since,
        None => slice.head,
    };
    let changes: Vec<Change> = slice.entries.into_iter().map(|(_, c)| c).collect();
    json_reply(
        StatusCode::OK,
        &ChangesPage {
            changes,
            cursor: cursor.to_string(),
            more: slice.more,
        },
    )
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
    fn changes_query() {
        let q = parse_changes_query("").expect("empty");
        assert_eq!((q.since, q.since_given, q.limit), (0, false, 100));
        let q = parse_changes_query("since=12&limit=5000&x=y").expect("ok");
        assert_eq!((q.since, q.since_given, q.limit), (12, true, 1000));
        let q = parse_changes_query("since=&limit=0").expect("ok");
        assert_eq!((q.since, q.since_given, q.limit), (0, false, 1));
        assert!(parse_changes_query("since=abc").is_err());
        assert!(parse_changes_query("limit=-1").is_err());
        assert_eq!(parse_changes_query("since=3").map(|q| q.wait_s), Ok(None));
        assert_eq!(parse_changes_query("wait=").map(|q| q.wait_s), Ok(None));
        assert_eq!(parse_changes_query("wait=0").map(|q| q.wait_s), Ok(Some(1)));
        assert_eq!(
            parse_changes_query("wait=25").map(|q| q.wait_s),
            Ok(Some(25))
        );
        assert_eq!(
            parse_changes_query("wait=3600").map(|q| q.wait_s),
            Ok(Some(60))
        );
        assert!(parse_changes_query("wait=-1").is_err());
        assert!(parse_changes_query("wait=1.5").is_err());
        assert!(parse_changes_query("wait=soon").is_err());
    }

    #[test]
    fn constant_time_eq() {
        assert!(ct_eq(b"abc", b"abc"));
        assert!(!ct_eq(b"abc", b"abd"));
        assert!(!ct_eq(b"abc", b"ab"));
    }
}
