//! The blob endpoints of the backend protocol (feature `blobs`): what the
//! sync worker's uploads and downloads of attachment content send, and how
//! each reply is read.
//!
//! A child of the client module so that it shares its request path and
//! reply classification ([`common_failure`], [`unlisted`]) instead of
//! keeping a second copy.

use bytes::Bytes;
use hyper::{header, Method, Request};

use super::{
    common_failure, percent_encode, send_bounded, unlisted, BackendClient, Failure, Oddity,
    RawReply,
};
use crate::backend::protocol::{BlobOffset, UPLOAD_OFFSET};

/// Where a content is attached: backends that keep content per document
/// (CouchDB) fetch it from there; content-addressed ones ignore it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlobPlace {
    pub collection: String,
    pub id: String,
    pub name: String,
}

/// How much of a content the server holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BlobHeld {
    /// All of it, checked against its hash.
    Complete,
    /// The first `n` bytes of an upload (0: none).
    Partial(u64),
    /// The server will not take this content from us, with its reason: a
    /// `403` with a `code` (no write access to the scope) or a `413` (over
    /// its size limit). Retrying cannot help; the op that references the
    /// content is dead-lettered with the reason.
    Refused(String),
}

/// A `403` with a `code` (a scoped server's refusal of this scope) or a
/// `413`: the content is refused, not the credentials.
fn refusal(r: &RawReply<'_>) -> Option<BlobHeld> {
    #[derive(serde::Deserialize)]
    struct Coded {
        error: String,
        code: Option<String>,
    }
    let body = serde_json::from_slice::<Coded>(r.body).ok();
    match (r.status, body) {
        (
            403,
            Some(Coded {
                error,
                code: Some(code),
            }),
        ) => Some(BlobHeld::Refused(format!("HTTP 403 {code}: {error}"))),
        (413, b) => Some(BlobHeld::Refused(format!(
            "HTTP 413: {}",
            b.map_or_else(
                || "the content is over the backend's size limit".into(),
                |b| b.error
            )
        ))),
        _ => None,
    }
}

fn blob_path(sha256: &str, scope: Option<&str>, extra: &str) -> String {
    let mut p = format!("v1/blobs/{sha256}");
    let mut sep = '?';
    if let Some(s) = scope {
        p.push_str(&format!("{sep}scope={}", percent_encode(s)));
        sep = '&';
    }
    if !extra.is_empty() {
        p.push(sep);
        p.push_str(extra);
    }
    p
}

fn offset_header(r: &RawReply<'_>) -> u64 {
    r.headers
        .get(UPLOAD_OFFSET)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

impl BackendClient {
    async fn blob_call(
        &self,
        method: Method,
        path: &str,
        body: Bytes,
        range: Option<String>,
    ) -> Result<super::RawResponse, Failure> {
        let url = format!("{}{}", self.base, path);
        let mut req = Request::builder()
            .method(method)
            .uri(&url)
            .header("X-Syncd-Client", &self.client_id);
        if let Some(t) = &self.token {
            req = req.header(header::AUTHORIZATION, format!("Bearer {t}"));
        }
        if !body.is_empty() {
            req = req.header(header::CONTENT_TYPE, "application/octet-stream");
        }
        if let Some(r) = range {
            req = req.header(header::RANGE, r);
        }
        let req = req
            .body(http_body_util::Full::new(body))
            .map_err(|e| Failure::Transient {
                reason: format!("building request to {path}: {e}"),
                retry_after_ms: None,
            })?;
        send_bounded(&self.http, req, self.timeout).await
    }

    /// `HEAD v1/blobs/{sha256}`: how much of the content the server holds.
    pub async fn blob_held(&self, scope: Option<&str>, sha256: &str) -> Result<BlobHeld, Failure> {
        let path = blob_path(sha256, scope, "");
        let (status, headers, body) = self
            .blob_call(Method::HEAD, &path, Bytes::new(), None)
            .await?;
        classify_held(&RawReply::new(status, &headers, &body))
    }

    /// `PUT v1/blobs/{sha256}?offset=N&length=L`: the next chunk of an
    /// upload; answers what the server holds after it.
    pub async fn blob_put(
        &self,
        scope: Option<&str>,
        sha256: &str,
        offset: u64,
        length: u64,
        chunk: Bytes,
    ) -> Result<BlobHeld, Failure> {
        let path = blob_path(sha256, scope, &format!("offset={offset}&length={length}"));
        let (status, headers, body) = self.blob_call(Method::PUT, &path, chunk, None).await?;
        classify_put(&RawReply::new(status, &headers, &body))
    }

    /// `GET v1/blobs/{sha256}` with `Range: bytes=offset-(offset+max-1)`;
    /// `None`: the server does not hold the content.
    pub async fn blob_get(
        &self,
        scope: Option<&str>,
        sha256: &str,
        offset: u64,
        max: u64,
    ) -> Result<Option<Bytes>, Failure> {
        let path = blob_path(sha256, scope, "");
        let range = format!("bytes={offset}-{}", offset + max.max(1) - 1);
        let (status, headers, body) = self
            .blob_call(Method::GET, &path, Bytes::new(), Some(range))
            .await?;
        let r = RawReply::new(status, &headers, &body);
        classify_get(&r, offset).map(|held| held.then_some(body))
    }
}

/// `HEAD`: 200 all of it, 404 with `Upload-Offset` (0 if absent) a part.
pub fn classify_held(r: &RawReply<'_>) -> Result<BlobHeld, Failure> {
    const ENDPOINT: &str = "HEAD v1/blobs";
    if let Some(refused) = refusal(r) {
        return Ok(refused);
    }
    if let Some(f) = common_failure(ENDPOINT, r) {
        return Err(f);
    }
    match r.status {
        200 => Ok(BlobHeld::Complete),
        404 => Ok(BlobHeld::Partial(offset_header(r))),
        _ => Err(unlisted(ENDPOINT, r, Oddity::Status)),
    }
}

/// `PUT`: 200/201 `{"offset","complete"}`; 409 the server holds another
/// offset (resume from it); 422 the content did not hash to its name
/// (the server dropped what it held: send it again).
pub fn classify_put(r: &RawReply<'_>) -> Result<BlobHeld, Failure> {
    const ENDPOINT: &str = "PUT v1/blobs";
    if let Some(refused) = refusal(r) {
        return Ok(refused);
    }
    if let Some(f) = common_failure(ENDPOINT, r) {
        return Err(f);
    }
    let held = |b: BlobOffset| {
        if b.complete {
            BlobHeld::Complete
        } else {
            BlobHeld::Partial(b.offset)
        }
    };
    match r.status {
        200 | 201 => serde_json::from_slice::<BlobOffset>(r.body)
            .map(held)
            .map_err(|_| unlisted(ENDPOINT, r, Oddity::NotProtocolJson)),
        409 => Ok(serde_json::from_slice::<BlobOffset>(r.body)
            .map(held)
            .unwrap_or(BlobHeld::Partial(offset_header(r)))),
        422 => Err(Failure::Transient {
            reason: format!(
                "the backend refused the attachment content: {} (it is sent again)",
                super::reason_of(r.body)
            ),
            retry_after_ms: None,
        }),
        _ => Err(unlisted(ENDPOINT, r, Oddity::Status)),
    }
}

/// `GET`: 206 from `offset` (200 only for offset 0: the whole); `false`
/// for a 404 (not held).
fn classify_get(r: &RawReply<'_>, offset: u64) -> Result<bool, Failure> {
    const ENDPOINT: &str = "GET v1/blobs";
    if let Some(f) = common_failure(ENDPOINT, r) {
        return Err(f);
    }
    match r.status {
        206 => Ok(true),
        200 if offset == 0 => Ok(true),
        404 => Ok(false),
        _ => Err(unlisted(ENDPOINT, r, Oddity::Status)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(
        status: u16,
        headers: &[(&'static str, &str)],
        body: &str,
    ) -> (u16, hyper::HeaderMap, String) {
        let mut h = hyper::HeaderMap::new();
        for (k, v) in headers {
            h.insert(*k, v.parse().unwrap());
        }
        (status, h, body.to_owned())
    }

    fn raw<'a>(r: &'a (u16, hyper::HeaderMap, String)) -> RawReply<'a> {
        RawReply::new(
            hyper::StatusCode::from_u16(r.0).unwrap(),
            &r.1,
            r.2.as_bytes(),
        )
    }

    #[test]
    fn held_and_put_replies() {
        let r = reply(404, &[("upload-offset", "4096")], "");
        assert_eq!(classify_held(&raw(&r)).unwrap(), BlobHeld::Partial(4096));
        let r = reply(404, &[], "");
        assert_eq!(classify_held(&raw(&r)).unwrap(), BlobHeld::Partial(0));
        let r = reply(200, &[], "");
        assert_eq!(classify_held(&raw(&r)).unwrap(), BlobHeld::Complete);
        let r = reply(200, &[], r#"{"offset":10,"complete":false}"#);
        assert_eq!(classify_put(&raw(&r)).unwrap(), BlobHeld::Partial(10));
        let r = reply(409, &[], r#"{"error":"offset","offset":7}"#);
        assert_eq!(classify_put(&raw(&r)).unwrap(), BlobHeld::Partial(7));
        let r = reply(422, &[], r#"{"error":"hash mismatch"}"#);
        assert!(matches!(
            classify_put(&raw(&r)),
            Err(Failure::Transient { .. })
        ));
        let r = reply(503, &[], "");
        assert!(matches!(
            classify_held(&raw(&r)),
            Err(Failure::Transient { .. })
        ));
        let r = reply(302, &[], "");
        assert!(matches!(
            classify_put(&raw(&r)),
            Err(Failure::Unlisted { .. })
        ));
    }

    #[test]
    fn a_whole_body_answers_only_a_read_from_the_start() {
        let r = reply(200, &[], "abc");
        assert!(classify_get(&raw(&r), 0).unwrap());
        assert!(classify_get(&raw(&r), 5).is_err());
        let r = reply(404, &[], "");
        assert!(!classify_get(&raw(&r), 0).unwrap());
    }
}
