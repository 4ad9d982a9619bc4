//! HTTP client for the backend protocol: one keep-alive pool, http and
//! https (rustls with the system roots plus an optional CA file), a
//! per-request timeout, the bearer token and `X-Syncd-Client` on every
//! request. It classifies replies into the protocol's table so the sync
//! worker never looks at status codes itself.

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
}

impl Failure {
    pub fn reason(&self) -> &str {
        match self {
            Failure::Transient { reason, .. }
            | Failure::Unreachable { reason }
            | Failure::Auth { reason } => reason,
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
    /// This batch was refused as a whole (another 4xx): send its ops one
    /// at a time this round.
    Refused(String),
}

#[derive(Clone)]
pub struct BackendClient {
    http: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
    base: String,
    token: Option<String>,
    client_id: String,
    timeout: Duration,
}

impl std::fmt::Debug for BackendClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the token.
        f.debug_struct("BackendClient")
            .field("base", &self.base)
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

fn tls_config(ca_file: Option<&std::path::Path>) -> Result<rustls::ClientConfig, String> {
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
        let tls = tls_config(ca_file)?;
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_connect_timeout(Some(timeout));
        http.set_nodelay(true);
        let conn = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .build(conn);
        let mut base = base.trim().to_owned();
        if !base.ends_with('/') {
            base.push('/');
        }
        Ok(BackendClient {
            http: client,
            base,
            token,
            client_id: client_id.to_owned(),
            timeout,
        })
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
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
                reason: format!("building request to {url}: {e}"),
                retry_after_ms: None,
            })?;
        let fut = async {
            let resp = self
                .http
                .request(req)
                .await
                .map_err(|e| classify_error(&e))?;
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
        match tokio::time::timeout(self.timeout, fut).await {
            Ok(r) => r,
            Err(_) => Err(Failure::Transient {
                reason: format!("timed out after {} ms", self.timeout.as_millis()),
                retry_after_ms: None,
            }),
        }
    }

    /// `GET v1/health`.
    pub async fn health(&self) -> Result<(), Failure> {
        let (status, headers, body) = self.call(Method::GET, "v1/health", None).await?;
        if status.is_success() {
            Ok(())
        } else {
            Err(
                http_failure(status, &headers, &body).unwrap_or_else(|| Failure::Transient {
                    reason: format!("health: HTTP {status}"),
                    retry_after_ms: None,
                }),
            )
        }
    }

    /// `POST v1/ops`.
    pub async fn apply(&self, op: &WireOp) -> Result<OpResult, Failure> {
        let body = serde_json::to_vec(op).map_err(|e| Failure::Transient {
            reason: e.to_string(),
            retry_after_ms: None,
        })?;
        let (status, headers, body) = self.call(Method::POST, "v1/ops", Some(body)).await?;
        if let Some(f) = http_failure(status, &headers, &body) {
            return Err(f);
        }
        op_result(status.as_u16(), &body)
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
        if status == StatusCode::NOT_FOUND || status == StatusCode::METHOD_NOT_ALLOWED {
            return Ok(BatchOutcome::Unsupported);
        }
        if let Some(f) = http_failure(status, &headers, &body) {
            return Err(f);
        }
        if !status.is_success() {
            // A batch-level 4xx (413 for a large batch, say): this batch
            // was refused as a whole. Send these ops one at a time, where
            // each gets its own verdict; later rounds try batches again.
            return Ok(BatchOutcome::Refused(format!(
                "HTTP {status}: {}",
                reason_of(&body)
            )));
        }
        let reply: BatchReply = serde_json::from_slice(&body).map_err(|e| Failure::Transient {
            reason: format!("malformed batch reply: {e}"),
            retry_after_ms: None,
        })?;
        if reply.results.is_empty() || reply.results.len() > ops.len() {
            return Err(Failure::Transient {
                reason: format!(
                    "batch reply has {} results for {} ops",
                    reply.results.len(),
                    ops.len()
                ),
                retry_after_ms: None,
            });
        }
        let mut out = Vec::with_capacity(reply.results.len());
        for r in reply.results {
            let res = match (r.status, r.record) {
                (200, Some(rec)) => OpResult::Applied(rec),
                (409, Some(rec)) => OpResult::Conflict(rec),
                // A per-op failure that is not a verdict: keep the results
                // before it (those ops were applied and must be acked now),
                // and let the next round meet the failure at the head.
                (s @ (401 | 403), _) if out.is_empty() => {
                    return Err(Failure::Auth {
                        reason: format!("batch op refused: HTTP {s}"),
                    })
                }
                (s @ (408 | 429 | 500..=599), _) if out.is_empty() => {
                    return Err(Failure::Transient {
                        reason: format!("batch op: HTTP {s} {}", r.error.unwrap_or_default()),
                        retry_after_ms: None,
                    });
                }
                (200 | 409, None) if out.is_empty() => {
                    return Err(Failure::Transient {
                        reason: format!("batch result {} without a record", r.status),
                        retry_after_ms: None,
                    })
                }
                (401 | 403 | 408 | 429 | 500..=599, _) | (200 | 409, None) => break,
                (s, _) => OpResult::Rejected {
                    status: s,
                    reason: r.error.unwrap_or_else(|| format!("HTTP {s}")),
                },
            };
            let stop = !matches!(res, OpResult::Applied(_));
            out.push(res);
            if stop {
                break;
            }
        }
        Ok(BatchOutcome::Results(out))
    }

    /// `GET v1/changes`.
    pub async fn changes(&self, since: Option<&str>, limit: u32) -> Result<ChangesPage, Failure> {
        let mut path = format!("v1/changes?limit={limit}");
        if let Some(c) = since {
            path.push_str("&since=");
            path.push_str(&percent_encode(c));
        }
        let (status, headers, body) = self.call(Method::GET, &path, None).await?;
        if let Some(f) = http_failure(status, &headers, &body) {
            return Err(f);
        }
        if !status.is_success() {
            return Err(Failure::Transient {
                reason: format!("changes: HTTP {status}: {}", reason_of(&body)),
                retry_after_ms: None,
            });
        }
        serde_json::from_slice(&body).map_err(|e| Failure::Transient {
            reason: format!("malformed changes reply: {e}"),
            retry_after_ms: None,
        })
    }
}

fn percent_encode(s: &str) -> String {
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

fn classify_error(e: &hyper_util::client::legacy::Error) -> Failure {
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
    if let Ok(e) = serde_json::from_slice::<ErrorBody>(body) {
        return e.error;
    }
    let s = String::from_utf8_lossy(body);
    s.chars().take(200).collect()
}

/// Transient and auth failures by status; `None` for statuses that carry
/// an op verdict (2xx, 409, permanent 4xx).
fn http_failure(status: StatusCode, headers: &hyper::HeaderMap, body: &[u8]) -> Option<Failure> {
    let s = status.as_u16();
    match s {
        401 | 403 => Some(Failure::Auth {
            reason: format!("HTTP {s}: {}", reason_of(body)),
        }),
        408 | 429 | 500..=599 => Some(Failure::Transient {
            reason: format!("HTTP {s}: {}", reason_of(body)),
            retry_after_ms: if s == 429 || s == 503 {
                headers
                    .get(header::RETRY_AFTER)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| parse_retry_after(v, std::time::SystemTime::now()))
            } else {
                None
            },
        }),
        _ => None,
    }
}

/// The verdict for one op. A malformed 200 or 409 is transient: the op may
/// have been applied, and a retry with the same op_id is safe.
fn op_result(status: u16, body: &[u8]) -> Result<OpResult, Failure> {
    let malformed = |what: String| Failure::Transient {
        reason: what,
        retry_after_ms: None,
    };
    match status {
        200..=299 => serde_json::from_slice::<OpOk>(body)
            .map(|ok| OpResult::Applied(ok.record))
            .map_err(|e| malformed(format!("malformed {status} reply: {e}"))),
        409 => match serde_json::from_slice::<ErrorBody>(body) {
            Ok(ErrorBody {
                record: Some(r), ..
            }) => Ok(OpResult::Conflict(r)),
            _ => Err(malformed("409 without the current record".into())),
        },
        _ => Ok(OpResult::Rejected {
            status,
            reason: format!("HTTP {status}: {}", reason_of(body)),
        }),
    }
}
