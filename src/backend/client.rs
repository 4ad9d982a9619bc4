//! HTTP client for the backend protocol: one keep-alive pool, http and
//! https (rustls with the system roots plus an optional CA file), a
//! per-request timeout, the bearer token and `X-Syncd-Client` on every
//! request. It classifies replies into the protocol's table so the sync
//! worker never looks at status codes itself; the `classify_*` functions
//! are pure, so tests call them directly. Redirects are never followed
//! (hyper's client has no redirect support): a `3xx` is an unlisted reply.

pub mod blobs;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::{header, Method, Request, StatusCode};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;

use super::protocol::*;
use super::retry_after::parse_retry_after;

/// Largest reply body we read.
const MAX_REPLY_BYTES: usize = 64 * 1024 * 1024;

/// Why a request did not produce a usable answer, per the protocol table.
#[derive(Debug, Clone, PartialEq)]
pub enum Failure {
    /// 408, 429, 5xx, a reset, a timeout, a malformed reply: retry later.
    /// `retry_after_ms` from `Retry-After` on 429/503.
    Transient {
        reason: String,
        retry_after_ms: Option<u64>,
    },
    /// The backend could not be reached at all (refused, unreachable, DNS).
    Unreachable { reason: String },
    /// 401/403.
    Auth { reason: String },
    /// A reply the protocol's table does not list: a redirect, an HTML
    /// page, `405`, another `4xx`, a `2xx` other than `200`, a body that is
    /// not the JSON described. The request never reached a backend of this
    /// protocol, or its reply cannot be trusted: it is never a verdict on
    /// an op. `reason` names the status and says to check the URL.
    Unlisted { status: u16, reason: String },
    /// Not the backend's: this device's own store failed during the round
    /// (a full disk, an I/O error, a store being re-opened). Transports
    /// never return it; the sync worker does, so that status names the
    /// local disk instead of blaming the backend. The ops stay queued.
    LocalStore { reason: String },
}

impl Failure {
    /// What went wrong, for status and logs.
    pub fn reason(&self) -> &str {
        match self {
            Failure::Transient { reason, .. }
            | Failure::Unreachable { reason }
            | Failure::Auth { reason }
            | Failure::Unlisted { reason, .. }
            | Failure::LocalStore { reason } => reason,
        }
    }
}

/// The answer for one op.
#[derive(Debug, Clone, PartialEq)]
pub enum OpResult {
    Applied(ServerRecord),
    Conflict(ServerRecord),
    /// Permanently rejected: status and the server's reason.
    Rejected {
        status: u16,
        reason: String,
    },
}

/// The answer to a batch.
#[derive(Debug, Clone, PartialEq)]
pub enum BatchOutcome {
    /// Results for a prefix of the ops.
    Results(Vec<OpResult>),
    /// The server has no batch endpoint (404/405): use `v1/ops`.
    Unsupported,
    /// This batch was refused as a whole (400, 413, 422): send its ops one
    /// at a time this round.
    Refused(String),
}

#[derive(Clone)]
pub struct BackendClient {
    http: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
    base: String,
    /// `base` with credentials masked ([`crate::config::redact_url`]): the
    /// only form of it that is ever shown.
    shown_base: String,
    token: Option<String>,
    client_id: String,
    timeout: Duration,
    /// The server announced `scopes` (its health said so, or it answered
    /// `GET v1/session`): only then is a `403` with a `code` a refusal of
    /// one op rather than refused credentials.
    scoped: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl std::fmt::Debug for BackendClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the token.
        f.debug_struct("BackendClient")
            .field("base", &self.shown_base)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

/// Reads the token file: trimmed contents, `None` when empty.
pub fn read_token(path: &std::path::Path) -> Result<Option<String>, String> {
    let s = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read token_file {}: {e}", path.display()))?;
    let t = s.trim();
    Ok((!t.is_empty()).then(|| t.to_owned()))
}

/// What a request got back: status, headers and the whole (bounded) body.
pub(crate) type RawResponse = (hyper::StatusCode, hyper::HeaderMap, Bytes);

/// Sends `req` and reads the reply's body (at most 64 MiB), all within
/// `timeout`; every failure is classified for the sync engine.
pub(crate) async fn send_bounded(
    http: &Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
    req: Request<Full<Bytes>>,
    timeout: Duration,
) -> Result<RawResponse, Failure> {
    let fut = async {
        let resp = http.request(req).await.map_err(|e| classify_error(&e))?;
        let status = resp.status();
        let headers = resp.headers().clone();
        let body = Limited::new(resp.into_body(), MAX_REPLY_BYTES)
            .collect()
            .await
            .map_err(|e| Failure::Transient {
                reason: format!("reading reply: {e}"),
                retry_after_ms: None,
            })?
            .to_bytes();
        Ok((status, headers, body))
    };
    match tokio::time::timeout(timeout, fut).await {
        Ok(r) => r,
        Err(_) => Err(Failure::Transient {
            reason: format!("timed out after {} ms", timeout.as_millis()),
            retry_after_ms: None,
        }),
    }
}

/// The HTTP/1.1 client every backend adapter uses: http or https (with
/// `tls`), connect timeout, no Nagle, idle connections kept 30 s.
pub(crate) fn https_client(
    tls: rustls::ClientConfig,
    timeout: Duration,
) -> Client<HttpsConnector<HttpConnector>, Full<Bytes>> {
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_connect_timeout(Some(timeout));
    http.set_nodelay(true);
    let conn = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .wrap_connector(http);
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(30))
        .build(conn)
}

pub(crate) fn tls_config(
    ca_file: Option<&std::path::Path>,
) -> Result<rustls::ClientConfig, String> {
    let mut roots = rustls::RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    for c in native.certs {
        let _ = roots.add(c);
    }
    if let Some(p) = ca_file {
        let pem =
            std::fs::read(p).map_err(|e| format!("cannot read ca_file {}: {e}", p.display()))?;
        let mut n = 0;
        for c in rustls_pemfile::certs(&mut pem.as_slice()) {
            let c = c.map_err(|e| format!("ca_file {}: {e}", p.display()))?;
            roots
                .add(c)
                .map_err(|e| format!("ca_file {}: {e}", p.display()))?;
            n += 1;
        }
        if n == 0 {
            return Err(format!(
                "ca_file {}: no PEM certificates in it",
                p.display()
            ));
        }
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS setup: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

impl BackendClient {
    /// `base` is the configured URL; a trailing `/` is added if missing so
    /// that a path prefix is kept.
    pub fn new(
        base: &str,
        token: Option<String>,
        client_id: &str,
        timeout: Duration,
        ca_file: Option<&std::path::Path>,
    ) -> Result<Self, String> {
        let client = https_client(tls_config(ca_file)?, timeout);
        let mut base = base.trim().to_owned();
        if !base.ends_with('/') {
            base.push('/');
        }
        Ok(BackendClient {
            http: client,
            shown_base: crate::config::redact_url(&base),
            base,
            token,
            client_id: client_id.to_owned(),
            timeout,
            scoped: std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false)),
        })
    }

    /// The base URL with credentials masked, for logs and status.
    pub fn shown_base(&self) -> &str {
        &self.shown_base
    }

    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<(StatusCode, hyper::HeaderMap, Bytes), Failure> {
        self.call_within(method, path, body, self.timeout).await
    }

    /// [`Self::call`] with its own timeout (a held pull needs longer).
    async fn call_within(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
        timeout: Duration,
    ) -> Result<(StatusCode, hyper::HeaderMap, Bytes), Failure> {
        let url = format!("{}{}", self.base, path);
        let mut req = Request::builder()
            .method(method)
            .uri(&url)
            .header("X-Syncd-Client", &self.client_id)
            .header(header::ACCEPT, "application/json");
        if let Some(t) = &self.token {
            req = req.header(header::AUTHORIZATION, format!("Bearer {t}"));
        }
        if body.is_some() {
            req = req.header(header::CONTENT_TYPE, "application/json");
        }
        let req = req
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|e| Failure::Transient {
                reason: format!(
                    "building request to {}: {e}",
                    crate::config::redact_url(&url)
                ),
                retry_after_ms: None,
            })?;
        send_bounded(&self.http, req, timeout).await
    }

    /// `GET v1/health`: reachable, with the features the server announces.
    pub async fn health(&self) -> Result<Features, Failure> {
        let (status, headers, body) = self.call(Method::GET, "v1/health", None).await?;
        let f = classify_health(&RawReply::new(status, &headers, &body))?;
        self.scoped
            .store(f.scopes, std::sync::atomic::Ordering::Relaxed);
        Ok(f)
    }

    /// Whether the server is known to have `scopes`.
    fn scoped(&self) -> bool {
        self.scoped.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// `POST v1/ops`.
    pub async fn apply(&self, op: &WireOp) -> Result<OpResult, Failure> {
        let body = serde_json::to_vec(op).map_err(|e| Failure::Transient {
            reason: e.to_string(),
            retry_after_ms: None,
        })?;
        let (status, headers, body) = self.call(Method::POST, "v1/ops", Some(body)).await?;
        classify_op(
            op.kind,
            self.scoped(),
            &RawReply::new(status, &headers, &body),
        )
    }

    /// `POST v1/ops/batch`.
    pub async fn apply_batch(&self, ops: &[WireOp]) -> Result<BatchOutcome, Failure> {
        let body = serde_json::to_vec(&BatchRequest { ops: ops.to_vec() }).map_err(|e| {
            Failure::Transient {
                reason: e.to_string(),
                retry_after_ms: None,
            }
        })?;
        let (status, headers, body) = self.call(Method::POST, "v1/ops/batch", Some(body)).await?;
        classify_batch(
            ops.len(),
            self.scoped(),
            &RawReply::new(status, &headers, &body),
        )
    }

    /// `GET v1/changes`; with `wait_s`, a pull the server may hold that
    /// long, so the request's timeout is the wait plus the usual timeout.
    pub async fn changes(
        &self,
        since: Option<&str>,
        limit: u32,
        wait_s: Option<u32>,
    ) -> Result<ChangesPage, Failure> {
        let mut path = format!("v1/changes?limit={limit}");
        if let Some(c) = since {
            path.push_str("&since=");
            path.push_str(&percent_encode(c));
        }
        let mut timeout = self.timeout;
        if let Some(w) = wait_s {
            path.push_str(&format!("&wait={w}"));
            timeout += Duration::from_secs(u64::from(w));
        }
        let (status, headers, body) = self.call_within(Method::GET, &path, None, timeout).await?;
        classify_changes(&RawReply::new(status, &headers, &body))
    }
}

impl BackendClient {
    /// `GET v1/session` (revision 3): who the token is and what it reaches.
    pub async fn session(&self) -> Result<Session, Failure> {
        let (status, headers, body) = self.call(Method::GET, "v1/session", None).await?;
        let session = classify_session(&RawReply::new(status, &headers, &body))?;
        // A session is a revision-3 server's answer: it has scopes.
        self.scoped
            .store(true, std::sync::atomic::Ordering::Relaxed);
        Ok(session)
    }

    /// `POST v1/pull` (revision 3); with `wait`, a pull the server may hold
    /// that long, so the request's timeout is the wait plus the usual one.
    pub async fn pull(&self, req: &PullRequest) -> Result<PullReply, Failure> {
        let body = serde_json::to_vec(req).map_err(|e| Failure::Transient {
            reason: e.to_string(),
            retry_after_ms: None,
        })?;
        let timeout = self.timeout + Duration::from_secs(u64::from(req.wait.unwrap_or(0)));
        let (status, headers, body) = self
            .call_within(Method::POST, "v1/pull", Some(body), timeout)
            .await?;
        classify_pull(&RawReply::new(status, &headers, &body))
    }
}

pub(crate) fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

pub(crate) fn classify_error(e: &hyper_util::client::legacy::Error) -> Failure {
    let text = error_chain(e);
    if e.is_connect() {
        Failure::Unreachable { reason: text }
    } else {
        Failure::Transient {
            reason: text,
            retry_after_ms: None,
        }
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// The server's reason from an error body, or a short excerpt of it.
fn reason_of(body: &[u8]) -> String {
    match error_field(body) {
        Some(e) => e,
        None => String::from_utf8_lossy(body).chars().take(200).collect(),
    }
}

/// The parts of an HTTP reply that classification reads.
#[derive(Debug, Clone, Copy)]
pub struct RawReply<'a> {
    pub status: u16,
    pub headers: &'a hyper::HeaderMap,
    pub body: &'a [u8],
}

impl<'a> RawReply<'a> {
    /// A reply as hyper gives it.
    pub fn new(status: StatusCode, headers: &'a hyper::HeaderMap, body: &'a [u8]) -> Self {
        RawReply {
            status: status.as_u16(),
            headers,
            body,
        }
    }
}

/// What made a reply one the protocol's table does not list.
#[derive(Debug, Clone, Copy)]
enum Oddity {
    /// A 3xx; redirects are not followed.
    Redirect,
    /// A listed status whose body is not the JSON described for it.
    NotProtocolJson,
    /// A 404 for a create: the endpoint itself was not found.
    CreateNotFound,
    /// A status the protocol does not list for this endpoint.
    Status,
}

/// Longest excerpt of a redirect target or a foreign body in a reason.
const EXCERPT_CHARS: usize = 80;

/// One line of at most [`EXCERPT_CHARS`] characters of `bytes`.
fn excerpt(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let words: Vec<&str> = text.split_whitespace().collect();
    let line = words.join(" ");
    let mut out: String = line.chars().take(EXCERPT_CHARS).collect();
    if line.chars().count() > EXCERPT_CHARS {
        out.push('…');
    }
    out
}

/// The `Failure::Unlisted` for reply `r` to `endpoint`: names the status,
/// what was wrong with it, and what to check.
fn unlisted(endpoint: &str, r: &RawReply<'_>, oddity: Oddity) -> Failure {
    let detail = match oddity {
        Oddity::Redirect => match r.headers.get(header::LOCATION) {
            Some(loc) => format!(", a redirect to {} (not followed)", excerpt(loc.as_bytes())),
            None => ", a redirect (not followed)".to_owned(),
        },
        Oddity::NotProtocolJson => format!(
            " with a body that is not protocol JSON ({:?})",
            excerpt(r.body)
        ),
        Oddity::CreateNotFound => " for a create: the endpoint itself was not found".to_owned(),
        Oddity::Status => " (a status the protocol does not list here)".to_owned(),
    };
    Failure::Unlisted {
        status: r.status,
        reason: format!(
            "{endpoint} answered HTTP {}{detail}: not a syncd backend protocol reply; check [backend] url",
            r.status
        ),
    }
}

/// Whether `body` is a JSON object (its first non-blank byte is `{`), the
/// only shape the protocol uses for replies. serde reads a struct from a
/// JSON array too; this keeps `["reason"]` from passing as `{"error": ...}`.
fn is_json_object(body: &[u8]) -> bool {
    body.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{')
}

/// `body` as the reply type `T`, if it is a JSON object of that shape.
fn parse_object<T: serde::de::DeserializeOwned>(body: &[u8]) -> Option<T> {
    if !is_json_object(body) {
        return None;
    }
    serde_json::from_slice(body).ok()
}

/// The `error` string of a `{"error": "..."}` body; other fields ignored.
fn error_field(body: &[u8]) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Reason {
        error: String,
    }
    parse_object::<Reason>(body).map(|r| r.error)
}

/// The `Retry-After` of a 429 or 503, in ms.
fn retry_after_ms(r: &RawReply<'_>) -> Option<u64> {
    if r.status != 429 && r.status != 503 {
        return None;
    }
    let value = r.headers.get(header::RETRY_AFTER)?.to_str().ok()?;
    parse_retry_after(value, std::time::SystemTime::now())
}

/// Replies that mean the same on every endpoint: 401/403 (auth), 408, 429
/// and 5xx (transient), and any 1xx/3xx or out-of-range status (unlisted).
/// `None` for the statuses each endpoint reads itself (2xx, other 4xx).
fn common_failure(endpoint: &str, r: &RawReply<'_>) -> Option<Failure> {
    match r.status {
        401 | 403 => Some(Failure::Auth {
            reason: format!("HTTP {}: {}", r.status, reason_of(r.body)),
        }),
        408 | 429 | 500..=599 => Some(Failure::Transient {
            reason: format!("HTTP {}: {}", r.status, reason_of(r.body)),
            retry_after_ms: retry_after_ms(r),
        }),
        300..=399 => Some(unlisted(endpoint, r, Oddity::Redirect)),
        200..=299 | 400..=499 => None,
        _ => Some(unlisted(endpoint, r, Oddity::Status)),
    }
}

/// Classifies a `GET v1/health` reply. Any `200` means reachable, with the
/// features its body announces (a body that is not JSON, or has no
/// `features`, is a revision-1 server: none). A redirect or another status
/// means the URL does not reach a backend of this protocol.
pub fn classify_health(r: &RawReply<'_>) -> Result<Features, Failure> {
    const ENDPOINT: &str = "GET v1/health";
    if let Some(f) = common_failure(ENDPOINT, r) {
        return Err(f);
    }
    match r.status {
        200 => Ok(parse_features(r.body)),
        _ => Err(unlisted(ENDPOINT, r, Oddity::Status)),
    }
}

/// Classifies a `POST v1/ops` reply to an op of `kind`, per the protocol's
/// table. Only a JSON `{"error": ...}` body with 400, 413, 422, or 404 for
/// an update or delete, is a permanent rejection, and (`scoped`: the
/// server announced `scopes`) a `403` with `error` and `code`; every reply
/// the table does not list is [`Failure::Unlisted`], which keeps the op.
pub fn classify_op(kind: OpKind, scoped: bool, r: &RawReply<'_>) -> Result<OpResult, Failure> {
    const ENDPOINT: &str = "POST v1/ops";
    if let Some(refused) = refused_op(scoped, r.status, r.body) {
        return Ok(refused);
    }
    if let Some(f) = common_failure(ENDPOINT, r) {
        return Err(f);
    }
    let not_json = || unlisted(ENDPOINT, r, Oddity::NotProtocolJson);
    match r.status {
        200 => parse_object::<OpOk>(r.body)
            .map(|ok| OpResult::Applied(ok.record))
            .ok_or_else(not_json),
        409 => match parse_object::<ErrorBody>(r.body) {
            Some(ErrorBody {
                record: Some(rec), ..
            }) => Ok(OpResult::Conflict(rec)),
            _ => Err(not_json()),
        },
        404 if kind == OpKind::Create => Err(unlisted(ENDPOINT, r, Oddity::CreateNotFound)),
        400 | 404 | 413 | 422 => match error_field(r.body) {
            Some(error) => Ok(OpResult::Rejected {
                status: r.status,
                reason: format!("HTTP {}: {error}", r.status),
            }),
            None => Err(not_json()),
        },
        _ => Err(unlisted(ENDPOINT, r, Oddity::Status)),
    }
}

/// A revision-3 `403` that refuses one operation: its body carries a
/// `code` ([`DenyCode`]; unknown codes count too) beside the `error`. It
/// is a permanent verdict on that op (a dead letter with the server's
/// reason), not refused credentials: a `403` without a code still is, and
/// so is any `403` from a server that did not announce `scopes` (an auth
/// proxy in front of an older server may well answer `{"error","code"}`:
/// read as a refusal, it would dead-letter the whole queue).
fn refused_op(scoped: bool, status: u16, body: &[u8]) -> Option<OpResult> {
    if !scoped || status != 403 {
        return None;
    }
    let e: ErrorBody = parse_object(body)?;
    let code = e.code?;
    Some(refusal(&e.error, &code))
}

/// The verdict for a per-operation `403` with `code`.
fn refusal(error: &str, code: &str) -> OpResult {
    // Known or not, the code is shown as the server sent it.
    OpResult::Rejected {
        status: 403,
        reason: format!("HTTP 403 ({code}): {error}"),
    }
}

const BATCH: &str = "POST v1/ops/batch";

/// Classifies a `POST v1/ops/batch` reply to `n_ops` ops. `404`/`405`
/// (any body) means no batch support; `400`/`413`/`422` refuse the batch
/// as a whole (its ops then go one at a time and get their own verdicts);
/// a `200` must be `{"results": [...]}` with 1..=`n_ops` valid entries.
///
/// `scoped`: the server announced `scopes`, so an entry's `403` with
/// `error` and `code` refuses that op (as for a single op).
pub fn classify_batch(
    n_ops: usize,
    scoped: bool,
    r: &RawReply<'_>,
) -> Result<BatchOutcome, Failure> {
    if r.status == 404 || r.status == 405 {
        return Ok(BatchOutcome::Unsupported);
    }
    if let Some(f) = common_failure(BATCH, r) {
        return Err(f);
    }
    match r.status {
        200 => batch_results(n_ops, scoped, r),
        400 | 413 | 422 => Ok(BatchOutcome::Refused(format!(
            "HTTP {}: {}",
            r.status,
            reason_of(r.body)
        ))),
        _ => Err(unlisted(BATCH, r, Oddity::Status)),
    }
}

/// The verdicts in a batch's `200` reply, up to the first that is not
/// `Applied`. An entry that is not a valid result makes the whole reply
/// untrustworthy: nothing in it is acted on (the applied ops are re-sent
/// with the same op_ids, which is safe).
fn batch_results(n_ops: usize, scoped: bool, r: &RawReply<'_>) -> Result<BatchOutcome, Failure> {
    let reply: BatchReply =
        parse_object(r.body).ok_or_else(|| unlisted(BATCH, r, Oddity::NotProtocolJson))?;
    if reply.results.is_empty() || reply.results.len() > n_ops {
        return Err(unlisted(BATCH, r, Oddity::NotProtocolJson));
    }
    let mut out = Vec::with_capacity(reply.results.len());
    for entry in reply.results {
        match batch_entry(scoped, entry) {
            Ok(res) => {
                let stop = !matches!(res, OpResult::Applied(_));
                out.push(res);
                if stop {
                    break;
                }
            }
            Err(EntryError::Invalid) => return Err(unlisted(BATCH, r, Oddity::NotProtocolJson)),
            // A 404 is a rejection only for an update or delete, which the
            // batch reply does not say: the single-op path decides, with
            // the op's kind (applied ops are replayed by their op ids).
            Err(EntryError::AskSingly(reason)) => return Ok(BatchOutcome::Refused(reason)),
            // A per-op failure that is not a verdict: keep the results
            // before it (those ops were applied and must be acked now),
            // and let the next round meet the failure at the head.
            Err(EntryError::Failed(f)) if out.is_empty() => return Err(f),
            Err(EntryError::Failed(_)) => break,
        }
    }
    Ok(BatchOutcome::Results(out))
}

/// Why a batch entry is not a verdict.
enum EntryError {
    /// Not a result the protocol describes.
    Invalid,
    /// An auth or transient failure for this op.
    Failed(Failure),
    /// A verdict that depends on the op's kind (a `404`).
    AskSingly(String),
}

/// One batch entry: `200`/`409` with a record, or `400`/`413`/`422` with an
/// error (a permanent rejection of that op, as for a single op); a `404`
/// is sent again singly; auth and transient statuses are failures;
/// anything else (another `4xx` among them) is invalid: never a dead letter.
fn batch_entry(scoped: bool, e: BatchResult) -> Result<OpResult, EntryError> {
    if let (true, 403, Some(code), Some(error)) =
        (scoped, e.status, e.code.as_deref(), e.error.as_deref())
    {
        return Ok(refusal(error, code));
    }
    match (e.status, e.record, e.error) {
        (200, Some(rec), _) => Ok(OpResult::Applied(rec)),
        (409, Some(rec), _) => Ok(OpResult::Conflict(rec)),
        (s @ (401 | 403), _, _) => Err(EntryError::Failed(Failure::Auth {
            reason: format!("batch op refused: HTTP {s}"),
        })),
        (s @ (408 | 429 | 500..=599), _, error) => Err(EntryError::Failed(Failure::Transient {
            reason: format!("batch op: HTTP {s} {}", error.unwrap_or_default()),
            retry_after_ms: None,
        })),
        // The same statuses as a single op's permanent rejection.
        (s @ (400 | 413 | 422), _, Some(error)) => Ok(OpResult::Rejected {
            status: s,
            reason: error,
        }),
        (404, _, Some(error)) => Err(EntryError::AskSingly(format!(
            "batch entry 404 ({error}); sending the ops one at a time"
        ))),
        _ => Err(EntryError::Invalid),
    }
}

/// Classifies a `GET v1/session` reply (revision 3): a `200` with the
/// session, or a failure (a server without users answers `404`: unlisted).
pub fn classify_session(r: &RawReply<'_>) -> Result<Session, Failure> {
    const ENDPOINT: &str = "GET v1/session";
    if let Some(f) = common_failure(ENDPOINT, r) {
        return Err(f);
    }
    match r.status {
        200 => parse_object(r.body).ok_or_else(|| unlisted(ENDPOINT, r, Oddity::NotProtocolJson)),
        _ => Err(unlisted(ENDPOINT, r, Oddity::Status)),
    }
}

/// Classifies a `POST v1/pull` reply (revision 3): a `200` with one entry
/// per scope asked for; anything else is a failure of the whole pull.
pub fn classify_pull(r: &RawReply<'_>) -> Result<PullReply, Failure> {
    const ENDPOINT: &str = "POST v1/pull";
    if let Some(f) = common_failure(ENDPOINT, r) {
        return Err(f);
    }
    match r.status {
        200 => parse_object(r.body).ok_or_else(|| unlisted(ENDPOINT, r, Oddity::NotProtocolJson)),
        400 | 422 => Err(Failure::Unlisted {
            status: r.status,
            reason: format!(
                "{ENDPOINT} answered HTTP {}: {}",
                r.status,
                reason_of(r.body)
            ),
        }),
        _ => Err(unlisted(ENDPOINT, r, Oddity::Status)),
    }
}

/// Classifies a `GET v1/changes` reply: a `200` with the page described,
/// or a failure.
pub fn classify_changes(r: &RawReply<'_>) -> Result<ChangesPage, Failure> {
    const ENDPOINT: &str = "GET v1/changes";
    if let Some(f) = common_failure(ENDPOINT, r) {
        return Err(f);
    }
    match r.status {
        200 => parse_object(r.body).ok_or_else(|| unlisted(ENDPOINT, r, Oddity::NotProtocolJson)),
        _ => Err(unlisted(ENDPOINT, r, Oddity::Status)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RECORD: &str = r#"{"id":"r1","version":2,"updated_at":5,"deleted":false,"data":{"a":1}}"#;
    const HTML: &str = "<!doctype html>\n<html><body><h1>Welcome to Hotel WiFi</h1></body></html>";

    fn headers(pairs: &[(&'static str, &str)]) -> hyper::HeaderMap {
        let mut h = hyper::HeaderMap::new();
        for (k, v) in pairs {
            if let Ok(v) = header::HeaderValue::from_str(v) {
                h.insert(*k, v);
            }
        }
        h
    }

    fn op(kind: OpKind, status: u16, body: &str) -> Result<OpResult, Failure> {
        let h = headers(&[]);
        classify_op(
            kind,
            true,
            &RawReply {
                status,
                headers: &h,
                body: body.as_bytes(),
            },
        )
    }

    fn batch(n: usize, status: u16, body: &str) -> Result<BatchOutcome, Failure> {
        let h = headers(&[]);
        classify_batch(
            n,
            true,
            &RawReply {
                status,
                headers: &h,
                body: body.as_bytes(),
            },
        )
    }

    fn health(status: u16, body: &str) -> Result<Features, Failure> {
        let h = headers(&[]);
        classify_health(&RawReply {
            status,
            headers: &h,
            body: body.as_bytes(),
        })
    }

    /// Asserts an unlisted failure with this status whose reason names the
    /// status and the setting to check.
    fn assert_unlisted<T: std::fmt::Debug>(r: Result<T, Failure>, status: u16) {
        match r {
            Err(Failure::Unlisted { status: s, reason }) => {
                assert_eq!(s, status, "{reason}");
                assert!(reason.contains(&format!("HTTP {status}")), "{reason}");
                assert!(reason.contains("[backend] url"), "{reason}");
            }
            other => panic!("expected unlisted {status}, got {other:?}"),
        }
    }

    #[test]
    fn listed_op_replies() {
        assert!(matches!(
            op(OpKind::Create, 200, &format!(r#"{{"record":{RECORD}}}"#)),
            Ok(OpResult::Applied(_))
        ));
        assert!(matches!(
            op(
                OpKind::Update,
                409,
                &format!(r#"{{"error":"conflict","record":{RECORD}}}"#)
            ),
            Ok(OpResult::Conflict(_))
        ));
        for s in [400, 413, 422] {
            assert_eq!(
                op(OpKind::Create, s, r#"{"error":"bad title","extra":1}"#),
                Ok(OpResult::Rejected {
                    status: s,
                    reason: format!("HTTP {s}: bad title")
                })
            );
        }
        for k in [OpKind::Update, OpKind::Delete] {
            assert!(matches!(
                op(k, 404, r#"{"error":"no record r1"}"#),
                Ok(OpResult::Rejected { status: 404, .. })
            ));
        }
        assert!(matches!(
            op(OpKind::Create, 401, HTML),
            Err(Failure::Auth { .. })
        ));
        assert!(matches!(
            op(OpKind::Create, 502, HTML),
            Err(Failure::Transient { .. })
        ));
    }

    #[test]
    fn unlisted_op_replies_are_never_rejections() {
        let record = format!(r#"{{"record":{RECORD}}}"#);
        let cases: Vec<(OpKind, u16, &str)> = vec![
            (OpKind::Create, 302, ""),
            (OpKind::Update, 301, HTML),
            (OpKind::Create, 404, HTML),
            (OpKind::Create, 404, r#"{"error":"not found"}"#),
            (OpKind::Update, 404, HTML),
            (OpKind::Delete, 404, ""),
            (OpKind::Create, 405, r#"{"error":"method not allowed"}"#),
            (OpKind::Create, 418, r#"{"error":"I'm a teapot"}"#),
            (OpKind::Create, 410, r#"{"error":"gone"}"#),
            (OpKind::Create, 200, HTML),
            (OpKind::Create, 200, r#"{"ok":true}"#),
            (OpKind::Create, 200, ""),
            (OpKind::Create, 201, &record),
            (OpKind::Create, 204, ""),
            (OpKind::Update, 409, r#"{"error":"conflict"}"#),
            (OpKind::Create, 422, HTML),
            (OpKind::Create, 400, r#"["bad"]"#),
            (OpKind::Create, 413, "request entity too large"),
            (OpKind::Create, 100, ""),
            (OpKind::Create, 600, ""),
        ];
        for (kind, status, body) in cases {
            assert_unlisted(op(kind, status, body), status);
        }
    }

    #[test]
    fn reasons_name_the_redirect_target_or_the_body() {
        let h = headers(&[("location", "https://portal.example/login?x=1")]);
        let r = RawReply {
            status: 302,
            headers: &h,
            body: b"",
        };
        let reason = classify_op(OpKind::Create, true, &r)
            .map(|_| ())
            .unwrap_err();
        assert!(
            reason
                .reason()
                .contains("redirect to https://portal.example/login?x=1 (not followed)"),
            "{reason:?}"
        );
        let f = op(OpKind::Create, 200, &HTML.repeat(50)).unwrap_err();
        assert!(f.reason().contains("not protocol JSON"), "{f:?}");
        assert!(f.reason().contains("Welcome to Hotel"), "{f:?}");
        assert!(f.reason().len() < 400, "{f:?}");
    }

    #[test]
    fn retry_after_on_503_only() {
        let h = headers(&[("retry-after", "7")]);
        let reply = |status| RawReply {
            status,
            headers: &h,
            body: b"",
        };
        let ra = |f: Result<OpResult, Failure>| match f {
            Err(Failure::Transient { retry_after_ms, .. }) => retry_after_ms,
            other => panic!("{other:?}"),
        };
        assert_eq!(
            ra(classify_op(OpKind::Create, true, &reply(503))),
            Some(7000)
        );
        assert_eq!(ra(classify_op(OpKind::Create, true, &reply(500))), None);
    }

    #[test]
    fn batch_replies() {
        let applied = format!(r#"{{"status":200,"record":{RECORD}}}"#);
        for s in [404, 405] {
            assert_eq!(batch(3, s, HTML), Ok(BatchOutcome::Unsupported));
        }
        assert!(matches!(batch(3, 413, HTML), Ok(BatchOutcome::Refused(_))));
        match batch(
            3,
            200,
            &format!(r#"{{"results":[{applied},{{"status":422,"error":"no"}}]}}"#),
        ) {
            Ok(BatchOutcome::Results(v)) => {
                assert!(matches!(v[0], OpResult::Applied(_)));
                assert_eq!(
                    v[1],
                    OpResult::Rejected {
                        status: 422,
                        reason: "no".into()
                    }
                );
            }
            other => panic!("{other:?}"),
        }
        // A failure after applied entries: keep the prefix.
        match batch(
            3,
            200,
            &format!(r#"{{"results":[{applied},{{"status":503}}]}}"#),
        ) {
            Ok(BatchOutcome::Results(v)) => assert_eq!(v.len(), 1),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            batch(3, 200, r#"{"results":[{"status":503}]}"#),
            Err(Failure::Transient { .. })
        ));
    }

    #[test]
    fn unlisted_batch_replies_are_never_rejections() {
        let applied = format!(r#"{{"status":200,"record":{RECORD}}}"#);
        let too_many = format!(r#"{{"results":[{applied},{applied},{applied}]}}"#);
        let bad_entry = format!(r#"{{"results":[{applied},{{"status":302,"error":"moved"}}]}}"#);
        let cases: Vec<(u16, &str)> = vec![
            (302, ""),
            (418, r#"{"error":"teapot"}"#),
            (201, r#"{"results":[]}"#),
            (200, HTML),
            (200, r#"{"results":[]}"#),
            (200, r#"{"results":"all good"}"#),
            (200, &too_many),
            (200, &bad_entry),
            (200, r#"{"results":[{"status":422}]}"#),
            (200, r#"{"results":[{"status":200}]}"#),
            (200, r#"{"results":[{"status":409,"error":"conflict"}]}"#),
            // Statuses a single op never dead-letters for, inside a batch.
            (200, r#"{"results":[{"status":405,"error":"method"}]}"#),
            (200, r#"{"results":[{"status":410,"error":"gone"}]}"#),
        ];
        for (status, body) in cases {
            assert_unlisted(batch(2, status, body), status);
        }
        // A 404 entry is a rejection only for an update or a delete, which
        // the batch reply cannot say: the ops go one at a time.
        let nf = batch(
            2,
            200,
            r#"{"results":[{"status":404,"error":"no record"}]}"#,
        );
        assert!(matches!(nf, Ok(BatchOutcome::Refused(_))), "{nf:?}");
    }

    #[test]
    fn health_and_changes_replies() {
        assert_eq!(
            health(200, r#"{"ok":true,"features":["batch"]}"#),
            Ok(Features {
                batch: true,
                ..Features::default()
            })
        );
        // A body that is not JSON is a revision-1 server.
        assert_eq!(health(200, HTML), Ok(Features::default()));
        assert_unlisted(health(302, ""), 302);
        assert_unlisted(health(404, HTML), 404);
        assert_unlisted(health(204, ""), 204);
        assert!(matches!(health(503, ""), Err(Failure::Transient { .. })));
        assert!(matches!(health(401, ""), Err(Failure::Auth { .. })));

        let h = headers(&[]);
        let changes = |status, body: &'static str| {
            classify_changes(&RawReply {
                status,
                headers: &h,
                body: body.as_bytes(),
            })
        };
        assert!(changes(200, r#"{"changes":[],"cursor":"3","more":false}"#).is_ok());
        assert_unlisted(changes(200, HTML), 200);
        assert_unlisted(changes(404, HTML), 404);
        assert_unlisted(changes(307, ""), 307);
    }

    /// Whatever the status and body, a rejection only ever comes from a
    /// listed status with a JSON `{"error": ...}` object.
    #[test]
    fn rejection_needs_a_listed_status_and_a_json_error() {
        let bodies = [
            "",
            HTML,
            r#"{"error":"x"}"#,
            r#"["x"]"#,
            r#"{"error":1}"#,
            "null",
        ];
        for status in 100..=600u16 {
            for body in bodies {
                for kind in [OpKind::Create, OpKind::Update] {
                    if let Ok(OpResult::Rejected { .. }) = op(kind, status, body) {
                        assert!(matches!(status, 400 | 404 | 413 | 422), "{status}");
                        assert!(kind != OpKind::Create || status != 404);
                        assert_eq!(body, r#"{"error":"x"}"#, "{status}");
                    }
                }
            }
        }
    }

    #[test]
    fn a_403_with_a_code_refuses_one_op_and_one_without_refuses_the_token() {
        let denied = r#"{"error": "no write access to scope 'team-1'", "code": "scope_denied"}"#;
        match op(OpKind::Create, 403, denied) {
            Ok(OpResult::Rejected {
                status: 403,
                reason,
            }) => {
                assert!(
                    reason.contains("scope_denied") && reason.contains("team-1"),
                    "{reason}"
                )
            }
            other => panic!("{other:?}"),
        }
        let odd = r#"{"error": "nope", "code": "future_code"}"#;
        assert!(matches!(
            op(OpKind::Update, 403, odd),
            Ok(OpResult::Rejected { status: 403, .. })
        ));
        assert!(matches!(
            op(OpKind::Create, 403, r#"{"error": "bad token"}"#),
            Err(Failure::Auth { .. })
        ));
        assert!(matches!(
            op(OpKind::Create, 403, HTML),
            Err(Failure::Auth { .. })
        ));
        let body = format!(
            r#"{{"results": [{{"status": 200, "record": {RECORD}}}, {{"status": 403, "error": "id 'x' is taken in collection 'c'", "code": "id_taken"}}]}}"#
        );
        match batch(3, 200, &body) {
            Ok(BatchOutcome::Results(r)) => {
                assert_eq!(r.len(), 2);
                assert!(
                    matches!(&r[1], OpResult::Rejected { status: 403, reason } if reason.contains("id_taken"))
                );
            }
            other => panic!("{other:?}"),
        }
        let body = r#"{"results": [{"status": 403, "error": "forbidden"}]}"#;
        assert!(matches!(batch(1, 200, body), Err(Failure::Auth { .. })));
    }

    #[test]
    fn a_coded_403_refuses_an_op_only_from_a_server_with_scopes() {
        // An auth proxy in front of a server without scopes may answer
        // `{"error","code"}` with 403: refused credentials, never a dead
        // letter (that would empty the queue into the dead letters).
        let h = headers(&[]);
        let raw = |status, body: &'static str| RawReply {
            status,
            headers: &h,
            body: body.as_bytes(),
        };
        let proxy = r#"{"error": "token expired", "code": "expired"}"#;
        for kind in [OpKind::Create, OpKind::Update, OpKind::Delete] {
            assert!(matches!(
                classify_op(kind, false, &raw(403, proxy)),
                Err(Failure::Auth { .. })
            ));
        }
        let body = r#"{"results": [{"status": 403, "error": "token expired", "code": "expired"}]}"#;
        assert!(matches!(
            classify_batch(1, false, &raw(200, body)),
            Err(Failure::Auth { .. })
        ));
        // Batch and single op alike need the `error` beside the `code`.
        let body = r#"{"results": [{"status": 403, "code": "scope_denied"}]}"#;
        assert!(matches!(
            classify_batch(1, true, &raw(200, body)),
            Err(Failure::Auth { .. })
        ));
        assert!(matches!(
            classify_op(
                OpKind::Create,
                true,
                &raw(403, r#"{"code": "scope_denied"}"#)
            ),
            Err(Failure::Auth { .. })
        ));
    }

    #[test]
    fn session_and_pull_replies() {
        let h = headers(&[]);
        let raw = |status, body: &'static str| RawReply {
            status,
            headers: &h,
            body: body.as_bytes(),
        };
        let s = classify_session(&raw(
            200,
            r#"{"sub": "alice", "scopes": [{"name": "news", "access": "read"}, {"name": "user:alice", "access": "write"}], "expires_at": 5000}"#,
        ))
        .expect("session");
        assert_eq!(s.scopes[0].access, Access::Read);
        assert_unlisted(classify_session(&raw(404, r#"{"error": "no"}"#)), 404);
        assert!(matches!(
            classify_session(&raw(401, r#"{"error": "expired"}"#)),
            Err(Failure::Auth { .. })
        ));
        let p = classify_pull(&raw(
            200,
            r#"{"scopes": {"a": {"changes": [{"collection": "c", "gone": {"id": "x", "version": 3}}], "cursor": "4", "more": false, "remaining": 0}, "b": {"error": "no read access to scope 'b'", "code": "scope_denied"}}}"#,
        ))
        .expect("pull");
        match (&p.scopes["a"], &p.scopes["b"]) {
            (ScopeResult::Page(page), ScopeResult::Denied(d)) => {
                assert!(
                    matches!(&page.changes[0], ScopedChange::Gone { gone, .. } if gone.version == 3)
                );
                assert_eq!(d.code.as_deref(), Some("scope_denied"));
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            classify_pull(&raw(422, r#"{"error": "empty"}"#)),
            Err(Failure::Unlisted { status: 422, .. })
        ));
    }
}
