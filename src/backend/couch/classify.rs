//! CouchDB replies read with the protocol's table (`docs/backends.md`):
//! 401/403 auth; 408/429/5xx transient (with `Retry-After`); a JSON
//! `400`/`413`/`422` to a write rejects that op (dead letter); `409` is
//! CouchDB's revision conflict; anything else, including a `404` for the
//! database itself, is unlisted (`backend_error`, never a dead letter).
//! Pure functions over a reply, so tests call them directly.

use serde_json::{Map, Value};

use crate::backend::client::Failure;
use crate::backend::retry_after::parse_retry_after;

/// The parts of a reply classification reads.
#[derive(Debug, Clone, Copy)]
pub struct Raw<'a> {
    pub status: u16,
    pub headers: &'a hyper::HeaderMap,
    pub body: &'a [u8],
    /// The database URL the request went to (credentials masked).
    pub db: &'a str,
}

/// What a document `PUT` did.
#[derive(Debug, Clone, PartialEq)]
pub enum Put {
    /// Written: the new revision.
    Written(String),
    /// `409`: the revision sent is not the current one.
    Conflict,
    /// Refused for good: status and reason.
    Rejected { status: u16, reason: String },
}

/// `{"error": e, "reason": r}` of a CouchDB error body.
fn couch_error(body: &[u8]) -> Option<String> {
    let Ok(Value::Object(m)) = serde_json::from_slice::<Value>(body) else {
        return None;
    };
    let e = m.get("error")?.as_str()?;
    Some(match m.get("reason").and_then(Value::as_str) {
        Some(r) => format!("{e}: {r}"),
        None => e.to_owned(),
    })
}

fn excerpt(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let line = text.split_whitespace().collect::<Vec<_>>().join(" ");
    line.chars().take(80).collect()
}

/// A reply the table does not list for `what`.
pub fn unlisted(what: &str, r: &Raw<'_>, detail: &str) -> Failure {
    Failure::Unlisted {
        status: r.status,
        reason: format!(
            "CouchDB {what} answered HTTP {}{detail} ({:?}): not a CouchDB reply this adapter knows; check [backend] url",
            r.status,
            excerpt(r.body)
        ),
    }
}

/// A `404` naming the database, not a document.
fn db_missing(r: &Raw<'_>) -> Failure {
    Failure::Unlisted {
        status: 404,
        reason: format!(
            "{}: {} (HTTP 404 {:?}): create it (a PUT on that URL, as a CouchDB admin) or fix [backend] url; syncd does not create it",
            super::DB_MISSING,
            r.db,
            excerpt(r.body)
        ),
    }
}

/// Replies that mean the same everywhere; `None` for 2xx and 4xx other
/// than 401/403/408/429, which each call reads itself.
pub fn common(what: &str, r: &Raw<'_>) -> Option<Failure> {
    let why = || couch_error(r.body).unwrap_or_else(|| excerpt(r.body));
    match r.status {
        401 | 403 => Some(Failure::Auth {
            reason: format!("CouchDB HTTP {}: {}", r.status, why()),
        }),
        408 | 429 | 500..=599 => Some(Failure::Transient {
            reason: format!("CouchDB HTTP {}: {}", r.status, why()),
            retry_after_ms: retry_after(r),
        }),
        200..=299 | 400..=499 => None,
        300..=399 => Some(unlisted(what, r, ", a redirect (not followed)")),
        _ => Some(unlisted(what, r, "")),
    }
}

fn retry_after(r: &Raw<'_>) -> Option<u64> {
    if r.status != 429 && r.status != 503 {
        return None;
    }
    let v = r.headers.get(hyper::header::RETRY_AFTER)?.to_str().ok()?;
    parse_retry_after(v, std::time::SystemTime::now())
}

/// `GET /db`: `200` with a JSON object means the database is there.
pub fn database(r: &Raw<'_>) -> Result<(), Failure> {
    if let Some(f) = common("GET database", r) {
        return Err(f);
    }
    match r.status {
        200 if matches!(serde_json::from_slice(r.body), Ok(Value::Object(_))) => Ok(()),
        404 => Err(db_missing(r)),
        _ => Err(unlisted("GET database", r, "")),
    }
}

/// `GET /db/{doc}/{attachment}` with a `Range` from `offset`: the bytes
/// asked for (a `200` is the whole attachment, a server that ignores
/// ranges: the part asked for is cut from it); `None` for a `404` (no
/// such document or attachment) or a range past the end.
pub fn attachment(r: &Raw<'_>, offset: u64, max: u64) -> Result<Option<bytes::Bytes>, Failure> {
    const WHAT: &str = "GET attachment";
    if let Some(f) = common(WHAT, r) {
        return Err(f);
    }
    let cut = |b: &[u8]| {
        let from = (offset as usize).min(b.len());
        let to = from.saturating_add(max as usize).min(b.len());
        bytes::Bytes::copy_from_slice(&b[from..to])
    };
    match r.status {
        206 => Ok(Some(bytes::Bytes::copy_from_slice(r.body))),
        200 => Ok(Some(cut(r.body))),
        404 | 416 => Ok(None),
        _ => Err(unlisted(WHAT, r, "")),
    }
}

/// `PUT /db/{doc}`.
pub fn put(r: &Raw<'_>) -> Result<Put, Failure> {
    const WHAT: &str = "PUT document";
    if let Some(f) = common(WHAT, r) {
        return Err(f);
    }
    match r.status {
        201 | 202 => match serde_json::from_slice::<Value>(r.body) {
            Ok(v) => match v.get("rev").and_then(Value::as_str) {
                Some(rev) if super::doc::version(rev).is_some() => Ok(Put::Written(rev.into())),
                _ => Err(unlisted(WHAT, r, " without a revision")),
            },
            Err(_) => Err(unlisted(WHAT, r, " with a body that is not JSON")),
        },
        409 => Ok(Put::Conflict),
        400 | 413 | 422 => match couch_error(r.body) {
            Some(e) => Ok(Put::Rejected {
                status: r.status,
                reason: format!("CouchDB HTTP {}: {e}", r.status),
            }),
            None => Err(unlisted(WHAT, r, " without a JSON error")),
        },
        404 => Err(db_missing(r)),
        _ => Err(unlisted(WHAT, r, "")),
    }
}

/// `GET /db/{doc}?open_revs=all`: the leaves, or `None` when the
/// document was never there.
pub fn leaves(r: &Raw<'_>) -> Result<Option<Vec<Map<String, Value>>>, Failure> {
    const WHAT: &str = "GET document";
    if let Some(f) = common(WHAT, r) {
        return Err(f);
    }
    match r.status {
        200 => match serde_json::from_slice::<Value>(r.body) {
            Ok(Value::Array(items)) => Ok(Some(
                items
                    .into_iter()
                    .filter_map(|i| match i {
                        Value::Object(mut m) => match m.remove("ok") {
                            Some(Value::Object(doc)) => Some(doc),
                            _ => None, // {"missing": rev}
                        },
                        _ => None,
                    })
                    .collect(),
            )),
            _ => Err(unlisted(
                WHAT,
                r,
                " with a body that is not a list of revisions",
            )),
        },
        404 => {
            let reason = couch_error(r.body).unwrap_or_default();
            if reason.ends_with(": missing") || reason.ends_with(": deleted") {
                Ok(None)
            } else {
                Err(db_missing(r))
            }
        }
        _ => Err(unlisted(WHAT, r, "")),
    }
}

/// `GET /db/_changes`: the reply object.
pub fn changes(r: &Raw<'_>) -> Result<Map<String, Value>, Failure> {
    const WHAT: &str = "GET _changes";
    if let Some(f) = common(WHAT, r) {
        return Err(f);
    }
    match r.status {
        200 => match serde_json::from_slice::<Value>(r.body) {
            Ok(Value::Object(m)) if m.get("results").is_some_and(Value::is_array) => Ok(m),
            _ => Err(unlisted(WHAT, r, " with a body that is not a changes feed")),
        },
        404 => Err(db_missing(r)),
        _ => Err(unlisted(WHAT, r, "")),
    }
}

/// `POST /db/_all_docs` (`keys`, `include_docs`): its rows, one per key
/// in the order asked.
pub fn all_docs(r: &Raw<'_>, keys: usize) -> Result<Vec<Map<String, Value>>, Failure> {
    const WHAT: &str = "POST _all_docs";
    if let Some(f) = common(WHAT, r) {
        return Err(f);
    }
    match r.status {
        200 => {
            let rows = match serde_json::from_slice::<Value>(r.body) {
                Ok(Value::Object(mut m)) => match m.remove("rows") {
                    Some(Value::Array(rows)) => rows,
                    _ => return Err(unlisted(WHAT, r, " without rows")),
                },
                _ => return Err(unlisted(WHAT, r, " with a body that is not JSON")),
            };
            let rows: Vec<_> = rows
                .into_iter()
                .filter_map(|v| match v {
                    Value::Object(m) => Some(m),
                    _ => None,
                })
                .collect();
            if rows.len() != keys {
                return Err(unlisted(
                    WHAT,
                    r,
                    &format!(" with {} rows for {keys} keys", rows.len()),
                ));
            }
            Ok(rows)
        }
        404 => Err(db_missing(r)),
        _ => Err(unlisted(WHAT, r, "")),
    }
}

/// `GET /_session`: the reply object, with its `userCtx`.
pub fn session(r: &Raw<'_>) -> Result<Map<String, Value>, Failure> {
    const WHAT: &str = "GET /_session";
    if let Some(f) = common(WHAT, r) {
        return Err(f);
    }
    match (r.status, serde_json::from_slice::<Value>(r.body)) {
        (200, Ok(Value::Object(m))) if m.get("userCtx").is_some_and(Value::is_object) => Ok(m),
        (200, _) => Err(unlisted(WHAT, r, " without a userCtx")),
        _ => Err(unlisted(
            WHAT,
            r,
            " (with [backend.scopes], url names the CouchDB server, not a database)",
        )),
    }
}

/// What a `_bulk_docs` request did as a whole.
#[derive(Debug, Clone, PartialEq)]
pub enum Bulk {
    /// One result object per document, in the order sent.
    Results(Vec<Map<String, Value>>),
    /// Refused as a whole with a JSON `400`/`413`/`417`/`422` (too large,
    /// or a document CouchDB will not take): send the ops one at a time,
    /// so each gets its own verdict.
    Refused(String),
}

/// `POST /db/_bulk_docs` for `docs` documents.
pub fn bulk_docs(r: &Raw<'_>, docs: usize) -> Result<Bulk, Failure> {
    const WHAT: &str = "POST _bulk_docs";
    if let Some(f) = common(WHAT, r) {
        return Err(f);
    }
    match r.status {
        201 | 202 => match serde_json::from_slice::<Value>(r.body) {
            Ok(Value::Array(items))
                if items.len() == docs && items.iter().all(Value::is_object) =>
            {
                Ok(Bulk::Results(
                    items
                        .into_iter()
                        .filter_map(|v| match v {
                            Value::Object(m) => Some(m),
                            _ => None,
                        })
                        .collect(),
                ))
            }
            _ => Err(unlisted(WHAT, r, &format!(" without {docs} results"))),
        },
        400 | 413 | 417 | 422 => match couch_error(r.body) {
            Some(e) => Ok(Bulk::Refused(format!("CouchDB HTTP {}: {e}", r.status))),
            None => Err(unlisted(WHAT, r, " without a JSON error")),
        },
        404 => Err(db_missing(r)),
        _ => Err(unlisted(WHAT, r, "")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw<'a>(status: u16, h: &'a hyper::HeaderMap, body: &'a str) -> Raw<'a> {
        Raw {
            status,
            headers: h,
            body: body.as_bytes(),
            db: "http://127.0.0.1:5984/todos",
        }
    }

    #[test]
    fn put_replies() {
        let h = hyper::HeaderMap::new();
        let ok = r#"{"ok":true,"id":"t:1","rev":"2-ab"}"#;
        assert_eq!(put(&raw(201, &h, ok)), Ok(Put::Written("2-ab".into())));
        assert_eq!(put(&raw(202, &h, ok)), Ok(Put::Written("2-ab".into())));
        assert_eq!(put(&raw(409, &h, "")), Ok(Put::Conflict));
        let bad = r#"{"error":"bad_request","reason":"Document must be a JSON object"}"#;
        assert_eq!(
            put(&raw(400, &h, bad)),
            Ok(Put::Rejected {
                status: 400,
                reason: "CouchDB HTTP 400: bad_request: Document must be a JSON object".into()
            })
        );
        assert!(matches!(put(&raw(401, &h, "")), Err(Failure::Auth { .. })));
        assert!(matches!(put(&raw(403, &h, "")), Err(Failure::Auth { .. })));
        assert!(matches!(
            put(&raw(503, &h, "")),
            Err(Failure::Transient { .. })
        ));
        // Never a rejection: HTML, unlisted statuses, a missing database.
        for (s, body) in [
            (400, "<html>bad</html>"),
            (
                404,
                r#"{"error":"not_found","reason":"Database does not exist."}"#,
            ),
            (302, ""),
            (405, r#"{"error":"method_not_allowed"}"#),
            (200, ok),
            (201, "<html>"),
            (201, r#"{"ok":true}"#),
            (418, r#"{"error":"teapot"}"#),
        ] {
            assert!(
                matches!(put(&raw(s, &h, body)), Err(Failure::Unlisted { status, .. }) if status == s),
                "{s} {body}"
            );
        }
    }

    #[test]
    fn retry_after_on_429() {
        let mut h = hyper::HeaderMap::new();
        h.insert(
            hyper::header::RETRY_AFTER,
            hyper::header::HeaderValue::from_static("3"),
        );
        match put(&raw(429, &h, "")) {
            Err(Failure::Transient { retry_after_ms, .. }) => {
                assert_eq!(retry_after_ms, Some(3000))
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn database_and_documents() {
        let h = hyper::HeaderMap::new();
        assert_eq!(database(&raw(200, &h, r#"{"db_name":"todos"}"#)), Ok(()));
        match database(&raw(
            404,
            &h,
            r#"{"error":"not_found","reason":"no_db_file"}"#,
        )) {
            Err(Failure::Unlisted { reason, .. }) => {
                assert!(reason.contains("does not exist"), "{reason}")
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            database(&raw(200, &h, "<html>")),
            Err(Failure::Unlisted { .. })
        ));
        let missing = r#"{"error":"not_found","reason":"missing"}"#;
        assert_eq!(leaves(&raw(404, &h, missing)), Ok(None));
        let two = r#"[{"ok":{"_rev":"1-a"}},{"missing":"2-b"}]"#;
        assert_eq!(
            leaves(&raw(200, &h, two)).map(|l| l.map(|v| v.len())),
            Ok(Some(1))
        );
        assert!(matches!(
            leaves(&raw(
                404,
                &h,
                r#"{"error":"not_found","reason":"Database does not exist."}"#
            )),
            Err(Failure::Unlisted { .. })
        ));
        assert!(changes(&raw(200, &h, r#"{"results":[],"last_seq":0}"#)).is_ok());
        assert!(matches!(
            changes(&raw(200, &h, "{}")),
            Err(Failure::Unlisted { .. })
        ));
    }

    #[test]
    fn bulk_replies() {
        let h = hyper::HeaderMap::new();
        let two = r#"[{"ok":true,"id":"t:a","rev":"1-x"},{"id":"t:b","error":"conflict","reason":"Document update conflict."}]"#;
        match bulk_docs(&raw(201, &h, two), 2) {
            Ok(Bulk::Results(v)) => assert_eq!(v[1]["error"], "conflict"),
            other => panic!("{other:?}"),
        }
        // A count that does not match what was sent is never trusted.
        assert!(matches!(
            bulk_docs(&raw(201, &h, two), 3),
            Err(Failure::Unlisted { .. })
        ));
        let big = r#"{"error":"too_large","reason":"the request entity is too large"}"#;
        assert!(
            matches!(bulk_docs(&raw(413, &h, big), 2), Ok(Bulk::Refused(r)) if r.contains("too_large"))
        );
        assert!(matches!(
            bulk_docs(&raw(413, &h, "<html>"), 2),
            Err(Failure::Unlisted { .. })
        ));
        assert!(matches!(
            bulk_docs(&raw(503, &h, ""), 2),
            Err(Failure::Transient { .. })
        ));
        assert!(matches!(
            bulk_docs(&raw(401, &h, ""), 2),
            Err(Failure::Auth { .. })
        ));
        let rows = r#"{"total_rows":1,"rows":[{"key":"t:a","id":"t:a","value":{"rev":"1-x"},"doc":{"_id":"t:a","_rev":"1-x"}},{"key":"t:b","error":"not_found"}]}"#;
        assert_eq!(all_docs(&raw(200, &h, rows), 2).map(|r| r.len()), Ok(2));
        assert!(matches!(
            all_docs(&raw(200, &h, rows), 3),
            Err(Failure::Unlisted { .. })
        ));
        assert!(matches!(
            all_docs(&raw(200, &h, "[]"), 0),
            Err(Failure::Unlisted { .. })
        ));
        let gone = r#"{"error":"not_found","reason":"Database does not exist."}"#;
        assert!(
            matches!(all_docs(&raw(404, &h, gone), 1), Err(Failure::Unlisted { reason, .. }) if reason.contains("does not exist"))
        );
    }
}
