//! The blob endpoints (feature `blobs`): `HEAD`, `PUT` and `GET
//! v1/blobs/{sha256}`, over a [`BlobBackend`](super::blobs::BlobBackend).
//!
//! Why apart from http.rs: these move bytes, not JSON ops, and have their
//! own access rule (the content's scope, from `?scope=`; a single-tenant
//! server has one) and their own statuses (206 ranges, the upload offset
//! header, 409 for a resume at the wrong offset). And the rule that ties
//! them to ops: [`content_held`] refuses an op whose document references
//! content its record's scope does not hold.

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{HeaderValue, CONTENT_LENGTH, CONTENT_RANGE, CONTENT_TYPE, RANGE};
use hyper::{Method, Request, Response, StatusCode};

use crate::backend::protocol::{BlobOffset, DenyCode, ErrorBody, UPLOAD_OFFSET};
use crate::domain::attachment::{self, is_sha256};
use crate::domain::scope::SINGLE_SCOPE;

use super::access::Caller;
use super::blobs::{BlobBackend, Held, PutError};
use super::http::Reply;
use super::ops::{Action, Rejection, ValidOp};
use super::store::BackendStore;

/// The content hash of a `…/v1/blobs/{sha256}` path.
pub(super) fn blob_hash(path: &str) -> Option<&str> {
    let p = path.strip_suffix('/').unwrap_or(path);
    let (_, rest) = p.rsplit_once("/v1/blobs/")?;
    Some(rest)
}

fn reply(status: StatusCode, body: Vec<u8>, json: bool) -> Reply {
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    if json {
        resp.headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    }
    resp
}

fn error(status: StatusCode, reason: impl Into<String>, code: Option<DenyCode>) -> Reply {
    let body = ErrorBody {
        code: code.map(|c| c.as_str().to_owned()),
        error: reason.into(),
        record: None,
    };
    reply(status, serde_json::to_vec(&body).unwrap_or_default(), true)
}

fn with_offset(mut r: Reply, offset: u64) -> Reply {
    r.headers_mut()
        .insert(UPLOAD_OFFSET, HeaderValue::from(offset));
    r
}

/// `?scope=` of the query, percent-decoded.
fn scope_param(query: &str) -> Option<String> {
    form_urlencoded::parse(query.as_bytes())
        .find(|(k, _)| k == "scope")
        .map(|(_, v)| v.into_owned())
}

fn u64_param(query: &str, name: &str) -> Option<u64> {
    form_urlencoded::parse(query.as_bytes())
        .find(|(k, _)| k == name)
        .and_then(|(_, v)| v.parse().ok())
}

/// The scope a blob request is about: a single-tenant server has one; a
/// user names it (`?scope=`), else their private scope.
fn scope_of(caller: &Caller, query: &str) -> String {
    match caller {
        Caller::Single => SINGLE_SCOPE.to_owned(),
        Caller::User(_) => scope_param(query).unwrap_or_else(|| caller.home().to_owned()),
    }
}

/// One blob request, already authenticated; `body` for a `PUT`.
pub(super) async fn handle(
    blobs: &std::sync::Arc<dyn BlobBackend>,
    caller: &Caller,
    req: Request<hyper::body::Incoming>,
    max_body: usize,
) -> Reply {
    let sha = match blob_hash(req.uri().path()) {
        Some(s) if is_sha256(s) => s.to_owned(),
        Some(s) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("{s:?} is not a SHA-256 (64 lowercase hex digits)"),
                None,
            )
        }
        None => return error(StatusCode::NOT_FOUND, "not found", None),
    };
    let query = req.uri().query().unwrap_or("").to_owned();
    let scope = scope_of(caller, &query);
    let writes = req.method() == Method::PUT;
    let allowed = if writes {
        caller.can_write(&scope)
    } else {
        caller.can_read(&scope)
    };
    if !allowed {
        let what = if writes { "write" } else { "read" };
        return error(
            StatusCode::FORBIDDEN,
            format!("no {what} access to scope '{scope}'"),
            Some(DenyCode::ScopeDenied),
        );
    }
    match *req.method() {
        Method::HEAD => head(blobs.clone(), scope, sha).await,
        Method::GET => {
            let range = req
                .headers()
                .get(RANGE)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            get(blobs.clone(), scope, sha, range).await
        }
        Method::PUT => {
            let body = match super::http::read_body(req, max_body).await {
                Ok(b) => b,
                Err(resp) => return resp,
            };
            put(blobs.clone(), scope, sha, &query, body).await
        }
        _ => {
            let mut r = error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed", None);
            r.headers_mut().insert(
                hyper::header::ALLOW,
                HeaderValue::from_static("HEAD, GET, PUT"),
            );
            r
        }
    }
}

/// Off the runtime's threads: the stores read files or the database.
async fn head(blobs: std::sync::Arc<dyn BlobBackend>, scope: String, sha: String) -> Reply {
    let held = tokio::task::spawn_blocking(move || blobs.held(&scope, &sha))
        .await
        .unwrap_or_else(|e| {
            Err(crate::backend::server::store::StoreError::Failed(
                e.to_string(),
            ))
        });
    match held {
        Err(e) => {
            tracing::error!(error = %e, "blob storage failed");
            error(
                StatusCode::SERVICE_UNAVAILABLE,
                "blob storage unavailable",
                None,
            )
        }
        Ok(Held::Complete { length }) => {
            with_offset(reply(StatusCode::OK, Vec::new(), false), length)
        }
        Ok(Held::Partial(n)) => with_offset(reply(StatusCode::NOT_FOUND, Vec::new(), false), n),
    }
}

async fn put(
    blobs: std::sync::Arc<dyn BlobBackend>,
    scope: String,
    sha: String,
    query: &str,
    body: Bytes,
) -> Reply {
    let (Some(offset), Some(length)) = (u64_param(query, "offset"), u64_param(query, "length"))
    else {
        return error(
            StatusCode::BAD_REQUEST,
            "PUT v1/blobs needs ?offset=N&length=L (the chunk's place and the content's length)",
            None,
        );
    };
    let done =
        tokio::task::spawn_blocking(move || blobs.put(&scope, &sha, offset, length, &body)).await;
    let ok = |b: BlobOffset| {
        reply(
            StatusCode::OK,
            serde_json::to_vec(&b).unwrap_or_default(),
            true,
        )
    };
    match done {
        Ok(Ok(Held::Complete { length })) => ok(BlobOffset {
            offset: length,
            complete: true,
        }),
        Ok(Ok(Held::Partial(n))) => ok(BlobOffset {
            offset: n,
            complete: false,
        }),
        Ok(Err(PutError::Offset(n))) => {
            let body =
                serde_json::json!({"error": format!("the upload is at offset {n}"), "offset": n});
            with_offset(
                reply(StatusCode::CONFLICT, body.to_string().into_bytes(), true),
                n,
            )
        }
        Ok(Err(e @ (PutError::HashMismatch { .. } | PutError::TooLong { .. }))) => {
            error(StatusCode::UNPROCESSABLE_ENTITY, e.to_string(), None)
        }
        Ok(Err(e @ PutError::TooLarge { .. })) => {
            error(StatusCode::PAYLOAD_TOO_LARGE, e.to_string(), None)
        }
        Ok(Err(PutError::Storage(e))) => {
            tracing::error!(error = %e, "blob storage failed");
            error(
                StatusCode::SERVICE_UNAVAILABLE,
                "blob storage unavailable",
                None,
            )
        }
        Ok(Err(PutError::Io(e))) => {
            tracing::error!(error = %e, "blob storage failed");
            error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "blob storage failed",
                None,
            )
        }
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string(), None),
    }
}

/// `bytes=N-M` or `bytes=N-`: the start and the end (exclusive).
fn parse_range(v: &str) -> Option<(u64, Option<u64>)> {
    let spec = v.trim().strip_prefix("bytes=")?;
    let (a, b) = spec.split_once('-')?;
    let start = a.trim().parse().ok()?;
    let end = match b.trim() {
        "" => None,
        e => Some(e.parse::<u64>().ok()?.checked_add(1)?),
    };
    Some((start, end))
}

async fn get(
    blobs: std::sync::Arc<dyn BlobBackend>,
    scope: String,
    sha: String,
    range: Option<String>,
) -> Reply {
    let parsed = match range.as_deref().map(parse_range) {
        Some(None) => {
            return error(
                StatusCode::BAD_REQUEST,
                "Range must be bytes=N-M or bytes=N-",
                None,
            )
        }
        Some(Some(r)) => Some(r),
        None => None,
    };
    let (start, end) = parsed.unwrap_or((0, None));
    let read = tokio::task::spawn_blocking(move || blobs.read(&scope, &sha, start, end)).await;
    let (bytes, length) = match read {
        Ok(Ok(Some(x))) => x,
        Ok(Ok(None)) => {
            return error(
                StatusCode::NOT_FOUND,
                "content not held in this scope",
                None,
            )
        }
        Ok(Err(e)) => {
            tracing::error!(error = %e, "blob read failed");
            return error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "blob storage failed",
                None,
            );
        }
        Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string(), None),
    };
    if parsed.is_none() {
        return reply(StatusCode::OK, bytes, false);
    }
    if start >= length && length > 0 {
        let mut r = error(
            StatusCode::RANGE_NOT_SATISFIABLE,
            "range starts past the content",
            None,
        );
        r.headers_mut().insert(
            CONTENT_RANGE,
            HeaderValue::from_str(&format!("bytes */{length}"))
                .unwrap_or(HeaderValue::from_static("bytes */0")),
        );
        return r;
    }
    let last = start + bytes.len() as u64;
    let n = bytes.len();
    let mut r = reply(StatusCode::PARTIAL_CONTENT, bytes, false);
    let cr = format!("bytes {start}-{}/{length}", last.saturating_sub(1));
    if let Ok(v) = HeaderValue::from_str(&cr) {
        r.headers_mut().insert(CONTENT_RANGE, v);
    }
    r.headers_mut().insert(CONTENT_LENGTH, HeaderValue::from(n));
    r
}

/// The check every op passes before it reaches the store: each content
/// its document references must be held by the scope the record will be
/// in. Refused (422) otherwise, so no device ever pulls a record whose
/// attachments it cannot download.
pub fn content_held(
    store: &dyn BackendStore,
    blobs: &dyn BlobBackend,
    caller: &Caller,
    op: &ValidOp,
) -> Result<(), Rejection> {
    let data = match &op.action {
        Action::Create { data, .. } | Action::Update { data, .. } => data,
        Action::Delete { .. } => return Ok(()),
    };
    if !data.contains_key(attachment::KEY) {
        return Ok(());
    }
    let refs = attachment::refs(data).map_err(|e| Rejection {
        status: 422,
        reason: e.to_string(),
    })?;
    let scope = match (caller, &op.scope) {
        (Caller::Single, _) => SINGLE_SCOPE.to_owned(),
        (Caller::User(_), Some(s)) => s.clone(),
        (Caller::User(_), None) => op
            .action
            .target_id()
            .and_then(|id| store.scope_of(&op.collection, id).ok().flatten())
            .unwrap_or_else(|| caller.home().to_owned()),
    };
    // A scope the caller may not write (or read): the store refuses the op
    // as it refuses any, without naming the scope here.
    if !caller.can_write(&scope) {
        return Ok(());
    }
    for (name, r) in refs {
        // Storage that cannot say is not "missing": the op is tried again.
        let held = blobs.held(&scope, &r.sha256).map_err(|e| Rejection {
            status: 503,
            reason: format!("attachment storage unavailable: {e}"),
        })?;
        if !matches!(held, Held::Complete { .. }) {
            return Err(Rejection {
                status: 422,
                reason: format!(
                    "attachment {name:?} references content {} that scope '{scope}' does not hold: upload it first (PUT v1/blobs/{})",
                    r.sha256, r.sha256
                ),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_and_ranges() {
        let sha = "a".repeat(64);
        assert_eq!(blob_hash(&format!("/v1/blobs/{sha}")), Some(sha.as_str()));
        assert_eq!(
            blob_hash(&format!("/sync/v1/blobs/{sha}/")),
            Some(sha.as_str())
        );
        assert_eq!(blob_hash("/v1/ops"), None);
        assert_eq!(parse_range("bytes=0-9"), Some((0, Some(10))));
        assert_eq!(parse_range("bytes=5-"), Some((5, None)));
        assert_eq!(parse_range("items=1-2"), None);
        assert_eq!(parse_range("bytes=x-2"), None);
    }
}
