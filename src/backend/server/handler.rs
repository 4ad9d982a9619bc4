//! The endpoints' work without HTTP or async: a request body (or query
//! string) and a [`BackendStore`] in, the protocol's JSON reply out, as a
//! status code and the exact body bytes.
//!
//! [`http`](super::http) runs these functions (on tokio's blocking pool, as
//! they call the store) and only adds what is HTTP's own: routing, methods,
//! auth, body limits and injected faults. Anything else that must answer
//! like the reference backend — the scripted fault servers of the
//! integration tests, say — calls them too, so the replies are byte for byte
//! those of `syncd backend` (the protocol is in `docs/backend-protocol.md`).

use serde::Serialize;

use crate::backend::protocol::{
    BatchReply, BatchResult, Change, ChangesPage, ErrorBody, Features, HealthBody, OpOk,
};

use super::ops::{parse_batch, parse_op, Rejection, ValidOp};
use super::store::{BackendStore, ChangeSlice, Outcome, StoreError};

/// Default and maximum `limit` of `v1/changes`.
pub const DEFAULT_CHANGES_LIMIT: usize = 100;
pub const MAX_CHANGES_LIMIT: usize = 1000;
/// Bounds of `wait` (seconds) on `v1/changes`; other values are clamped.
pub const MIN_WAIT_S: u64 = 1;
pub const MAX_WAIT_S: u64 = 60;

/// A JSON reply: HTTP status code and body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JsonReply {
    pub status: u16,
    pub body: Vec<u8>,
}

impl JsonReply {
    /// `body` serialised; a body that cannot be serialised is a 500
    /// `{"error":"internal error"}`.
    pub fn json<T: Serialize>(status: u16, body: &T) -> JsonReply {
        match serde_json::to_vec(body) {
            Ok(body) => JsonReply { status, body },
            Err(_) => JsonReply {
                status: 500,
                body: br#"{"error":"internal error"}"#.to_vec(),
            },
        }
    }

    /// `{"error": reason}`.
    pub fn error(status: u16, reason: impl Into<String>) -> JsonReply {
        JsonReply::json(
            status,
            &ErrorBody {
                error: reason.into(),
                record: None,
            },
        )
    }
}

/// The reply to `POST v1/ops` or `POST v1/ops/batch`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpsReply {
    pub reply: JsonReply,
    /// Whether the request got to the store (so ops may have been applied):
    /// false when it was refused before, e.g. for a malformed body.
    pub reached_store: bool,
}

/// Extra validation of an operation that passed the protocol's own checks,
/// applied just before it would reach the store: an `Err` refuses the op
/// exactly like an invalid one (alone: that status and `{"error": reason}`;
/// in a batch: reported at its position once the ops before it applied).
/// The reference backend has none ([`no_check`]); tests use it to script
/// refusals by content.
pub type Check<'a> = &'a dyn Fn(&ValidOp) -> Result<(), Rejection>;

/// The [`Check`] that accepts every operation.
pub fn no_check(_: &ValidOp) -> Result<(), Rejection> {
    Ok(())
}

fn rejection(r: Rejection) -> JsonReply {
    JsonReply::error(r.status, r.reason)
}

fn store_error(e: &StoreError) -> JsonReply {
    tracing::error!(error = %e, "backend store failure");
    JsonReply::error(500, "storage error")
}

/// `GET v1/health`: 200 `{"ok": true, "features": [...]}`, or 503 when the
/// store's readiness probe fails.
pub fn health(store: &dyn BackendStore, features: &Features) -> JsonReply {
    match store.check() {
        Ok(()) => JsonReply::json(
            200,
            &HealthBody {
                ok: true,
                features: features.names(),
            },
        ),
        Err(e) => {
            tracing::error!(error = %e, "health check failed");
            JsonReply::error(503, "storage unavailable")
        }
    }
}

/// `POST v1/ops` with this body.
pub fn op(store: &dyn BackendStore, body: &[u8], check: Check<'_>) -> OpsReply {
    let op = match parse_op(body).and_then(|op| check(&op).map(|()| op)) {
        Ok(op) => op,
        Err(r) => {
            return OpsReply {
                reply: rejection(r),
                reached_store: false,
            }
        }
    };
    let reply = match store.apply(std::slice::from_ref(&op)).map(|mut v| v.pop()) {
        Ok(Some(Outcome::Applied { record, .. })) => JsonReply::json(200, &OpOk { record }),
        Ok(Some(Outcome::Conflict(record))) => JsonReply::json(
            409,
            &ErrorBody {
                error: "conflict".into(),
                record: Some(record),
            },
        ),
        Ok(Some(Outcome::NotFound(reason))) => JsonReply::error(404, reason),
        Ok(None) => store_error(&StoreError("apply returned no outcome".into())),
        Err(e) => store_error(&e),
    };
    OpsReply {
        reply,
        reached_store: true,
    }
}

/// `POST v1/ops/batch` with this body.
pub fn batch(store: &dyn BackendStore, body: &[u8], check: Check<'_>) -> OpsReply {
    let parsed = match parse_batch(body) {
        Ok(p) => p,
        Err(r) => {
            return OpsReply {
                reply: rejection(r),
                reached_store: false,
            }
        }
    };
    // The valid prefix goes to the store; the first invalid op (if any) is
    // reported after it, provided the whole prefix applied.
    let mut valid: Vec<ValidOp> = Vec::with_capacity(parsed.len());
    let mut first_invalid = None;
    for item in parsed {
        match item.and_then(|op| check(&op).map(|()| op)) {
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
        match store.apply(&valid) {
            Ok(o) => o,
            Err(e) => {
                return OpsReply {
                    reply: store_error(&e),
                    reached_store: true,
                }
            }
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
    OpsReply {
        reply: JsonReply::json(200, &BatchReply { results }),
        reached_store: n_valid > 0,
    }
}

/// Parsed query of `v1/changes`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChangesQuery {
    pub since: u64,
    /// Whether `since` was given (non-empty).
    pub since_given: bool,
    pub limit: usize,
    /// `wait` in seconds, clamped to `MIN_WAIT_S..=MAX_WAIT_S`; `None`:
    /// answer at once.
    pub wait_s: Option<u64>,
}

/// Parses the query string of `v1/changes`: `Err` is the reason of a 400.
pub fn parse_changes_query(query: &str) -> Result<ChangesQuery, String> {
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

/// The 200 reply of `v1/changes` for query `q`, given what the store
/// returned for `(q.since, q.limit)`.
pub fn changes_page(q: &ChangesQuery, slice: ChangeSlice) -> JsonReply {
    // Cursor: the last sequence returned; with nothing new, the input cursor,
    // or the head when the input is past it (the log was reset).
    let cursor = match slice.entries.last() {
        Some((seq, _)) => *seq,
        None if q.since_given && q.since <= slice.head => q.since,
        None => slice.head,
    };
    let changes: Vec<Change> = slice.entries.into_iter().map(|(_, c)| c).collect();
    JsonReply::json(
        200,
        &ChangesPage {
            changes,
            cursor: cursor.to_string(),
            more: slice.more,
        },
    )
}

/// `GET v1/changes` with this query string (without the `?`).
pub fn changes(store: &dyn BackendStore, query: &str) -> JsonReply {
    let q = match parse_changes_query(query) {
        Ok(q) => q,
        Err(reason) => return JsonReply::error(400, reason),
    };
    match store.changes(q.since, q.limit) {
        Ok(slice) => changes_page(&q, slice),
        Err(e) => store_error(&e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
