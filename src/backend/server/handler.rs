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

use super::access::{Caller, Refusal};
use super::log_limit::LogLimit;
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
    /// The `Retry-After` header (seconds), if any.
    pub retry_after_s: Option<u64>,
}

/// The `Retry-After` of a 503 while the store is unreachable: short, so
/// devices return within a second or two of the database (the protocol's
/// clients would otherwise back off up to their `backoff_max_ms`).
pub const UNAVAILABLE_RETRY_AFTER_S: u64 = 1;

/// Failed health probes are logged once per this interval (probes come
/// every second or two from every device and load balancer).
pub const HEALTH_LOG_INTERVAL_MS: i64 = 30_000;

static HEALTH_LOG: LogLimit = LogLimit::new(HEALTH_LOG_INTERVAL_MS);

impl JsonReply {
    /// `body` serialised; a body that cannot be serialised is a 500
    /// `{"error":"internal error"}`.
    pub fn json<T: Serialize>(status: u16, body: &T) -> JsonReply {
        match serde_json::to_vec(body) {
            Ok(body) => JsonReply {
                status,
                body,
                retry_after_s: None,
            },
            Err(_) => JsonReply {
                status: 500,
                body: br#"{"error":"internal error"}"#.to_vec(),
                retry_after_s: None,
            },
        }
    }

    /// `{"error": reason}`.
    pub fn error(status: u16, reason: impl Into<String>) -> JsonReply {
        JsonReply::json(
            status,
            &ErrorBody {
                code: None,
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

/// The reply to a store failure, logged once, at the level it deserves:
/// an unreachable store is a WARN and a 503 with a short `Retry-After`
/// (it comes back by itself); anything else an ERROR and a 500.
pub fn store_error(e: &StoreError) -> JsonReply {
    match e {
        StoreError::Unavailable(_) => {
            tracing::warn!(error = %e, retry_after_s = UNAVAILABLE_RETRY_AFTER_S, "backend store unreachable; answered 503");
            unavailable()
        }
        StoreError::Failed(_) => {
            tracing::error!(error = %e, "backend store failure; answered 500");
            JsonReply::error(500, "storage error")
        }
    }
}

fn unavailable() -> JsonReply {
    JsonReply {
        retry_after_s: Some(UNAVAILABLE_RETRY_AFTER_S),
        ..JsonReply::error(503, "storage unavailable")
    }
}

/// `GET v1/health`: 200 `{"ok": true, "features": [...]}`, or 503 (with
/// a short `Retry-After`) when the store's readiness probe fails. Failures
/// are logged at most once per [`HEALTH_LOG_INTERVAL_MS`], with how many
/// were left out; the first success after them is logged too.
pub fn health(store: &dyn BackendStore, features: &Features) -> JsonReply {
    match store.check() {
        Ok(()) => {
            if HEALTH_LOG.reset() {
                tracing::info!("backend store reachable again; health probes succeed");
            }
            JsonReply::json(
                200,
                &HealthBody {
                    ok: true,
                    features: features.names(),
                },
            )
        }
        Err(e) => {
            if let Some(left_out) = HEALTH_LOG.admit(crate::now_ms()) {
                match &e {
                    StoreError::Unavailable(_) => {
                        tracing::warn!(error = %e, left_out, "health probe failed: backend store unreachable")
                    }
                    StoreError::Failed(_) => {
                        tracing::error!(error = %e, left_out, "health probe failed")
                    }
                }
            }
            unavailable()
        }
    }
}

/// The status, reason and code of an access refusal.
fn refusal_parts(r: Refusal) -> (u16, String, Option<String>) {
    match r {
        Refusal::NotFound(reason) => (404, reason, None),
        Refusal::Denied { code, reason } => (403, reason, Some(code.as_str().to_owned())),
        Refusal::Invalid(reason) => (422, reason, None),
    }
}

/// `POST v1/ops` with this body, on a single-tenant server.
pub fn op(store: &dyn BackendStore, body: &[u8], check: Check<'_>) -> OpsReply {
    op_as(store, body, check, &Caller::Single)
}

/// `POST v1/ops` with this body on behalf of `caller`.
pub fn op_as(store: &dyn BackendStore, body: &[u8], check: Check<'_>, caller: &Caller) -> OpsReply {
    let op = match parse_op(body).and_then(|op| check(&op).map(|()| op)) {
        Ok(op) => op,
        Err(r) => {
            return OpsReply {
                reply: rejection(r),
                reached_store: false,
            }
        }
    };
    let reply = match store
        .apply_as(std::slice::from_ref(&op), caller)
        .map(|mut v| v.pop())
    {
        Ok(Some(Outcome::Applied { record, .. })) => JsonReply::json(200, &OpOk { record }),
        Ok(Some(Outcome::Conflict(record))) => JsonReply::json(
            409,
            &ErrorBody {
                code: None,
                error: "conflict".into(),
                record: Some(record),
            },
        ),
        Ok(Some(Outcome::NotFound(reason))) => JsonReply::error(404, reason),
        Ok(Some(Outcome::Refused(r))) => {
            let (status, error, code) = refusal_parts(r);
            JsonReply::json(
                status,
                &ErrorBody {
                    error,
                    record: None,
                    code,
                },
            )
        }
        Ok(None) => store_error(&StoreError::Failed("apply returned no outcome".into())),
        Err(e) => store_error(&e),
    };
    OpsReply {
        reply,
        reached_store: true,
    }
}

/// `POST v1/ops/batch` with this body, on a single-tenant server.
pub fn batch(store: &dyn BackendStore, body: &[u8], check: Check<'_>) -> OpsReply {
    batch_as(store, body, check, &Caller::Single)
}

/// `POST v1/ops/batch` with this body on behalf of `caller`.
pub fn batch_as(
    store: &dyn BackendStore,
    body: &[u8],
    check: Check<'_>,
    caller: &Caller,
) -> OpsReply {
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
    // The store behind the check is unavailable: nothing at all (the whole
    // batch is tried again), or the valid prefix alone.
    let unavailable = first_invalid.as_ref().is_some_and(|r| r.status >= 500);
    if unavailable && valid.is_empty() {
        if let Some(r) = first_invalid {
            return OpsReply {
                reply: rejection(r),
                reached_store: false,
            };
        }
    }
    let n_valid = valid.len();
    let outcomes = if valid.is_empty() {
        Vec::new()
    } else {
        match store.apply_as(&valid, caller) {
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
                code: None,
                status: 200,
                record: Some(record),
                error: None,
            },
            Outcome::Conflict(record) => BatchResult {
                code: None,
                status: 409,
                record: Some(record),
                error: Some("conflict".into()),
            },
            Outcome::NotFound(reason) => BatchResult {
                code: None,
                status: 404,
                record: None,
                error: Some(reason),
            },
            Outcome::Refused(r) => {
                let (status, error, code) = refusal_parts(r);
                BatchResult {
                    code,
                    status,
                    record: None,
                    error: Some(error),
                }
            }
        })
        .collect();
    if all_applied && !unavailable {
        if let Some(r) = first_invalid {
            results.push(BatchResult {
                code: None,
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

/// Why a `v1/changes` query is answered `400`; `Display` is the reason sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChangesQueryError {
    /// `since` (percent-decoded) is not a decimal integer.
    Since(String),
    /// `limit` (percent-decoded) is not a decimal integer.
    Limit(String),
    /// `wait` (percent-decoded) is not a decimal integer.
    Wait(String),
}

impl std::fmt::Display for ChangesQueryError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ChangesQueryError::Since(v) => write!(
                f,
                "invalid since cursor {v:?}: expected the cursor of an earlier reply"
            ),
            ChangesQueryError::Limit(v) => write!(
                f,
                "invalid limit {v:?}: expected an integer (kept within 1 to {MAX_CHANGES_LIMIT})"
            ),
            ChangesQueryError::Wait(v) => write!(
                f,
                "invalid wait {v:?}: expected whole seconds (kept within {MIN_WAIT_S} to {MAX_WAIT_S})"
            ),
        }
    }
}

impl std::error::Error for ChangesQueryError {}

/// A decimal integer (an optional sign, then ASCII digits), brought into
/// `lo..=hi`: a negative number gives `lo`, one too large for `u64` gives
/// `hi`. `None`: not an integer at all.
fn clamped_int(s: &str, lo: u64, hi: u64) -> Option<u64> {
    let (negative, digits) = match s.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, s.strip_prefix('+').unwrap_or(s)),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    if negative {
        return Some(lo);
    }
    // Only digits, so the parse can fail only by overflowing.
    Some(digits.parse::<u64>().unwrap_or(u64::MAX).clamp(lo, hi))
}

/// Parses the query string of `v1/changes` (without the `?`).
///
/// The query is `application/x-www-form-urlencoded`: names and values are
/// percent-decoded and `+` stands for a space (so a literal `+` must be sent
/// as `%2B`; the daemon encodes every byte but `A-Za-z0-9-._~`). `since`,
/// `limit` and `wait` are decimal integers; a value outside a parameter's
/// range is brought to the nearest end of it (`since` >= 0, `limit`
/// 1..=[`MAX_CHANGES_LIMIT`], `wait` [`MIN_WAIT_S`]..=[`MAX_WAIT_S`]). A
/// value that is not an integer is an `Err` (a 400 naming the parameter).
/// An empty value counts as absent, unknown names are ignored, and of a
/// name given twice the last one counts.
pub fn parse_changes_query(query: &str) -> Result<ChangesQuery, ChangesQueryError> {
    let mut q = ChangesQuery {
        since: 0,
        since_given: false,
        limit: DEFAULT_CHANGES_LIMIT,
        wait_s: None,
    };
    for (key, value) in form_urlencoded::parse(query.as_bytes()) {
        if value.is_empty() {
            continue;
        }
        match key.as_ref() {
            "since" => {
                q.since = clamped_int(&value, 0, u64::MAX)
                    .ok_or_else(|| ChangesQueryError::Since(value.clone().into_owned()))?;
                q.since_given = true;
            }
            "limit" => {
                let n = clamped_int(&value, 1, MAX_CHANGES_LIMIT as u64)
                    .ok_or_else(|| ChangesQueryError::Limit(value.clone().into_owned()))?;
                // Within 1..=MAX_CHANGES_LIMIT, so it fits a usize.
                q.limit = usize::try_from(n).unwrap_or(MAX_CHANGES_LIMIT);
            }
            "wait" => {
                let s = clamped_int(&value, MIN_WAIT_S, MAX_WAIT_S)
                    .ok_or_else(|| ChangesQueryError::Wait(value.clone().into_owned()))?;
                q.wait_s = Some(s);
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
    let cursor = match slice.read_to {
        Some(seq) => seq,
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
        Err(e) => return JsonReply::error(400, e.to_string()),
    };
    match store.changes(q.since, q.limit) {
        Ok(slice) => changes_page(&q, slice),
        Err(e) => store_error(&e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(query: &str) -> (u64, bool, usize, Option<u64>) {
        let q = parse_changes_query(query).unwrap_or_else(|e| panic!("{query:?}: {e}"));
        (q.since, q.since_given, q.limit, q.wait_s)
    }

    /// An unreachable store is a 503 with a short `Retry-After`, so
    /// devices come back within a second of it; other failures a 500.
    #[test]
    fn store_errors_say_when_to_come_back() {
        let down = store_error(&StoreError::Unavailable("connection refused".into()));
        assert_eq!((down.status, down.retry_after_s), (503, Some(1)));
        let broken = store_error(&StoreError::Failed("corrupt".into()));
        assert_eq!((broken.status, broken.retry_after_s), (500, None));
    }

    #[test]
    fn changes_query_defaults_and_plain_values() {
        assert_eq!(parsed(""), (0, false, 100, None));
        assert_eq!(
            parsed("since=12&limit=50&wait=25"),
            (12, true, 50, Some(25))
        );
        // Empty values count as absent; unknown names are ignored; the last
        // of a repeated name counts.
        assert_eq!(parsed("since=&limit=&wait=&x=y&&z"), (0, false, 100, None));
        assert_eq!(parsed("limit=3&limit=4"), (0, false, 4, None));
    }

    #[test]
    fn changes_query_out_of_range_numbers_are_clamped() {
        for (query, limit) in [
            ("limit=0", 1),
            ("limit=-5", 1),
            ("limit=-0", 1),
            ("limit=5000", 1000),
            ("limit=1000", 1000),
            ("limit=99999999999999999999999999", 1000),
            ("limit=-99999999999999999999999999", 1),
            ("limit=%2B7", 7),
        ] {
            assert_eq!(parsed(query).2, limit, "{query}");
        }
        for (query, wait) in [
            ("wait=0", 1),
            ("wait=-1", 1),
            ("wait=3600", 60),
            ("wait=99999999999999999999999", 60),
        ] {
            assert_eq!(parsed(query).3, Some(wait), "{query}");
        }
        assert_eq!(parsed("since=-5"), (0, true, 100, None));
        assert_eq!(
            parsed("since=99999999999999999999999"),
            (u64::MAX, true, 100, None)
        );
    }

    #[test]
    fn changes_query_is_percent_decoded() {
        assert_eq!(
            parsed("since=%31%30&limit=%35&wait=%32"),
            (10, true, 5, Some(2))
        );
        assert_eq!(parsed("%73ince=7"), (7, true, 100, None));
        assert_eq!(parsed("limit=%2D5"), (0, false, 1, None));
    }

    #[test]
    fn changes_query_non_numbers_are_refused_by_name() {
        use ChangesQueryError::{Limit, Since, Wait};
        for (query, err) in [
            ("since=abc", Since("abc".into())),
            ("since=1.5", Since("1.5".into())),
            ("since=%zz", Since("%zz".into())),
            ("since=%61", Since("a".into())),
            ("limit=abc", Limit("abc".into())),
            ("limit=1e3", Limit("1e3".into())),
            ("limit=-", Limit("-".into())),
            ("limit=--5", Limit("--5".into())),
            // `+` is a space in form encoding: "+5" is " 5", not a number.
            ("limit=+5", Limit(" 5".into())),
            ("limit=5%20", Limit("5 ".into())),
            ("wait=soon", Wait("soon".into())),
            ("wait=1.5", Wait("1.5".into())),
        ] {
            assert_eq!(parse_changes_query(query), Err(err), "{query}");
        }
        let reason = Limit("x".into()).to_string();
        assert!(
            reason.contains("limit") && reason.contains("\"x\""),
            "{reason}"
        );
        assert!(Since("x".into()).to_string().contains("since"));
        assert!(Wait("x".into()).to_string().contains("wait"));
    }
}
