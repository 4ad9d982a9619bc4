//! The CouchDB adapter's HTTP layer: one keep-alive pool (http and https,
//! the same TLS setup as the protocol client), the credentials on every
//! request (bearer token or basic auth), a per-request deadline, and the
//! reply as status + headers + body. It never reads a status itself:
//! [`super::classify`] does.

use std::time::Duration;

use base64::Engine;
use bytes::Bytes;
use http_body_util::Full;
use hyper::{header, Method, Request};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::{connect::HttpConnector, Client};

use crate::backend::client::{https_client, send_bounded, tls_config, Failure};

/// How the adapter authenticates to CouchDB.
#[derive(Clone, Default)]
pub enum Credentials {
    #[default]
    None,
    /// `Authorization: Bearer <token>` (CouchDB's JWT auth, or a proxy).
    Bearer(String),
    /// `Authorization: Basic ...` from a user name and password.
    Basic { username: String, password: String },
}

impl Credentials {
    fn header_value(&self) -> Option<String> {
        match self {
            Credentials::None => None,
            Credentials::Bearer(t) => Some(format!("Bearer {t}")),
            Credentials::Basic { username, password } => {
                let raw = format!("{username}:{password}");
                Some(format!(
                    "Basic {}",
                    base64::engine::general_purpose::STANDARD.encode(raw)
                ))
            }
        }
    }
}

/// Why the adapter could not be set up.
#[derive(Debug, Clone, PartialEq)]
pub enum SetupError {
    /// The TLS configuration (ca_file) is unusable.
    Tls(String),
    /// The URL does not name a database.
    Url(String),
}

impl std::fmt::Display for SetupError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SetupError::Tls(e) => write!(f, "TLS setup: {e}"),
            SetupError::Url(e) => write!(f, "CouchDB url: {e}"),
        }
    }
}

impl std::error::Error for SetupError {}

/// A reply as read off the wire.
pub struct Reply {
    pub status: u16,
    pub headers: hyper::HeaderMap,
    pub body: Bytes,
    /// The database (or server) URL the request went to, credentials
    /// masked: what a "database does not exist" names.
    pub db: String,
}

/// The HTTP side of the adapter, rooted at a database URL (or at the
/// server's, with scopes).
#[derive(Clone)]
pub struct CouchHttp {
    http: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
    /// The database (or server) URL with a trailing `/`.
    db: String,
    auth: Option<String>,
    client_id: String,
    pub timeout: Duration,
}

impl CouchHttp {
    /// Rooted at `url`: a database, or the server itself (scopes: one
    /// database per scope, reached with [`CouchHttp::under`]).
    pub fn new(
        url: &str,
        creds: &Credentials,
        client_id: &str,
        timeout: Duration,
        ca_file: Option<&std::path::Path>,
    ) -> Result<Self, SetupError> {
        let tls = tls_config(ca_file).map_err(SetupError::Tls)?;
        let http = https_client(tls, timeout);
        let mut db = url.trim().trim_end_matches('/').to_owned();
        db.push('/');
        Ok(CouchHttp {
            http,
            db,
            auth: creds.header_value(),
            client_id: client_id.to_owned(),
            timeout,
        })
    }

    /// The same connection pool and credentials, rooted at `segment`
    /// (a database name) below this root.
    pub fn under(&self, segment: &str) -> CouchHttp {
        let mut c = self.clone();
        c.db = format!(
            "{}{}/",
            self.db,
            crate::backend::client::percent_encode(segment)
        );
        c
    }

    /// `method` on `path` (relative to the database URL, already encoded;
    /// `""` is the database itself), with a JSON body if given. `deadline`
    /// bounds the whole exchange (defaults to the configured timeout).
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
        deadline: Option<Duration>,
    ) -> Result<Reply, Failure> {
        self.call_with(method, path, body, deadline, None).await
    }

    /// [`Self::call`] with a `Range` header (an attachment's bytes).
    pub async fn call_with(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
        deadline: Option<Duration>,
        range: Option<String>,
    ) -> Result<Reply, Failure> {
        let url = if path.is_empty() {
            self.db.trim_end_matches('/').to_owned()
        } else {
            format!("{}{path}", self.db)
        };
        let mut req = Request::builder()
            .method(method)
            .uri(&url)
            .header("X-Syncd-Client", &self.client_id)
            .header(header::ACCEPT, "application/json");
        if let Some(a) = &self.auth {
            req = req.header(header::AUTHORIZATION, a);
        }
        if body.is_some() {
            req = req.header(header::CONTENT_TYPE, "application/json");
        }
        if let Some(r) = range {
            req = req.header(header::RANGE, r);
        }
        let req = req
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|e| Failure::Transient {
                reason: format!("building request: {e}"),
                retry_after_ms: None,
            })?;
        let limit = deadline.unwrap_or(self.timeout);
        let (status, headers, body) = send_bounded(&self.http, req, limit).await?;
        Ok(Reply {
            status: status.as_u16(),
            headers,
            body,
            db: crate::config::redact_url(self.db.trim_end_matches('/')),
        })
    }
}

/// Whether `url` has a path below the server (`http://host:5984/todos`
/// does; `http://host:5984` does not).
pub fn names_database(url: &str) -> bool {
    url.trim()
        .parse::<hyper::Uri>()
        .map(|u| !u.path().trim_matches('/').is_empty())
        .unwrap_or(false)
}
