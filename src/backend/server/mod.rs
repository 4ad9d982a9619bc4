//! The reference backend server (`syncd backend`): an HTTP/1.1 implementation
//! of the backend protocol, version 1, revision 2, with the optional features
//! `batch` (unless `--no-batch`), `wait` and `client_ids`; with users
//! ([`ServerOptions::users`]) revision 3 and the feature `scopes`.
//!
//! It exists so that the daemon can be demonstrated and tested end to end
//! against a server that follows the contract exactly (and, with
//! [`Faults`], against one that misbehaves).
//!
//! # Design
//!
//! - **Layers.** [`http`] routes requests, checks auth and injects faults;
//!   [`handler`] turns a request body and the store's outcomes into the JSON
//!   reply (pure and blocking, so tests can serve the same replies without
//!   hyper); [`ops`] validates operations and holds the
//!   apply rules as a pure function ([`ops::plan`]); [`store::BackendStore`]
//!   is the storage interface (blocking, database-agnostic), implemented on
//!   redb by [`redb_store::RedbStore`]; [`feed`] carries "the log moved"
//!   wake-ups from a store's commits to waiting pulls. Store calls run on
//!   tokio's blocking pool (`spawn_blocking`). [`pg_store::PgStore`]
//!   implements the same trait on PostgreSQL (`--postgres`), for several
//!   nodes on one database, driving its [`feed::Feed`] from LISTEN/NOTIFY.
//! - **HTTP.** hyper 1, `http1` connections with keep-alive, one task per
//!   connection. Endpoints match on the path *suffix*, so any base-URL prefix
//!   works (`/v1/ops`, `/sync/v1/ops`; one trailing `/` is ignored). Unknown
//!   path: 404; wrong method: 405 with `Allow`. Every reply is JSON;
//!   errors are `{"error": reason}`.
//! - **Auth.** With a token configured, every endpoint but `v1/health` needs
//!   `Authorization: Bearer <token>` (scheme case-insensitive, constant-time
//!   compare), else 401 `{"error":"unauthorized"}`. The token is never
//!   logged; `ServerOptions`' `Debug` redacts it.
//! - **Users and scopes (revision 3).** With [`ServerOptions::users`],
//!   every endpoint but `v1/health` needs a JWT ([`auth`]: HS256, EdDSA or
//!   RS256; `sub` and `exp` required, no expiry leeway; `nbf` when present;
//!   `aud`/`iss` when configured); a refusal is 401
//!   `{"error": why}` with `WWW-Authenticate: Bearer`. [`access`] holds the
//!   rules both stores apply (private scope `user:<sub>`, 403 `scope_denied`
//!   / `id_taken`, 404 for what the token cannot read); [`pull`] serves
//!   `POST v1/pull` from per-scope feeds (gap-free per scope, `gone`
//!   entries on moves) and `GET v1/session`; `GET v1/changes` is a 400.
//!   Without users, records are created in scope `default` (updates keep a
//!   record's scope) and the wire is revision 2's, byte for byte; a store
//!   that has held users is refused in that mode unless
//!   [`ServerOptions::allow_single_tenant_over_users`].
//! - **Bodies.** At most `max_body_bytes` (declared `Content-Length` checked
//!   first, then the stream is limited): else 413. `Content-Type` is not
//!   enforced. Malformed JSON or a wrong shape (missing `op_id`, unknown
//!   `kind`, wrong field type): 400 naming the problem. Unknown fields are
//!   ignored; `client_id` and `local_id` are optional. Semantic rejections:
//!   422 (create with a `base_version`; update/delete without `id` or
//!   `base_version`; create/update `data` missing or not an object; empty or
//!   over-256-byte `op_id`/`collection`; an `id` breaking the id rule). A
//!   delete's `data` is ignored.
//! - **Health.** `v1/health` answers `{"ok": true, "features": [...]}` (503
//!   when the store cannot be read).
//!
//! # Apply rules
//!
//! - Records are identified by `(collection, id)`: the same id in two
//!   collections names two records.
//! - Id rule ([`ops::check_id`]): 1 to 256 bytes of UTF-8 without control
//!   characters, compared byte for byte; else 422.
//! - Create with `id: null`: new server id (a ULID string), version 1,
//!   `updated_at = client_ts`. Create with an `id` (feature `client_ids`):
//!   the record is created under exactly that id; if the collection already
//!   holds it, a tombstone included, 409 `{"error":"conflict","record":R}`
//!   with that record and nothing applied.
//! - Update/delete of an id unknown in the op's collection: 404 with a
//!   reason.
//! - `base_version` != current version: 409 `{"error":"conflict","record":R}`.
//! - Update of a tombstone at its current version re-creates the record
//!   under its id (version + 1, `deleted: false`, the new data): the writer
//!   saw the delete (protocol section 9); at an older version, 409 with the
//!   tombstone.
//! - Delete: `deleted = true`, version + 1, `data = {}` (a tombstone keeps no
//!   content), `updated_at = client_ts`. Delete of a tombstone at its current
//!   version: 200 with the tombstone unchanged (no new version, no change-log
//!   entry; the op_id is remembered).
//! - Idempotency: every applied `op_id` is remembered forever with the record
//!   its first application produced; a repeat answers 200 with that record,
//!   whatever the op now contains, and applies nothing. 4xx/409 results are not
//!   remembered.
//! - Batch: ops apply in order in one redb write transaction, stopping after
//!   the first non-200 result; the applied prefix is committed before the
//!   reply. A malformed or invalid op inside a batch is reported at its
//!   position (`{"status":400|422,"error":..}`) after the ops before it
//!   applied; an empty `ops` array is 422; a malformed envelope is 400.
//!
//! # Change log (`v1/changes`)
//!
//! Each applied change (create, update, delete; not replays nor no-op
//! deletes) appends `{collection, record}` at the next sequence number
//! (1, 2, ...). Every change is listed, so a record changed several times
//! appears several times, in commit order. The cursor is the decimal sequence
//! of the last change returned. Without `since` (or with `since=`), from the
//! beginning. With no new change, the cursor is the input cursor, or the head
//! when no cursor was given or the given one is past the head (a reset
//! server). The query is form-encoded: percent-decoded, `+` is a space
//! ([`handler::parse_changes_query`]). `limit` defaults to 100 and is clamped
//! to 1..=1000, a negative `since` to 0; a `since`, `limit` or `wait` that is
//! not a decimal integer is 400. `more` tells whether further changes exist
//! after this page.
//!
//! `wait=S` (feature `wait`; whole seconds, clamped to 1..=60, a non-numeric
//! value is 400): when nothing follows `since` (and `since` is
//! not past the head), the request is held until a commit appends to the log
//! ([`feed`]), `S` seconds pass, or the server stops, then answered as
//! above, possibly empty with the same cursor. A held request holds no
//! store transaction and no blocking-pool thread. Without `wait`, the reply
//! is immediate.
//!
//! # Faults ([`Faults`])
//!
//! `v1/health` and requests to unknown paths or with wrong methods are never
//! faulted; `no_batch` answers 404 to `v1/ops/batch`. Otherwise, per request,
//! in this order, before auth: with probability `fail_503`, 503 with
//! `Retry-After: retry_after_s`; with probability `hang`, sleep `hang_ms`, then
//! handle normally. For `v1/ops` and `v1/ops/batch`, with probability
//! `drop_after_apply`, the request is handled and committed (if its body got to
//! the store) and then the connection is closed without any response bytes.

pub mod access;
pub mod auth;
pub mod auth_key;
pub mod blob_http;
pub mod blobs;
pub mod fd_limit;
pub mod feed;
pub mod handler;
pub mod http;
pub mod log_limit;
pub mod ops;
pub mod pg_apply;
pub mod pg_blobs;
pub mod pg_group;
pub mod pg_listen;
pub mod pg_store;
pub mod pg_url;
pub mod pull;
pub mod redb_store;
pub mod shared_read;
pub mod store;

use std::fmt;
use std::future::Future;
use std::io::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;

use self::http::AppState;
use self::pg_store::PgStore;
use self::redb_store::RedbStore;
use self::shared_read::SharedReads;
use self::store::BackendStore;

/// Largest attachment content the server takes: 4 GiB.
pub const MAX_BLOB_BYTES: u64 = 4 << 30;

/// Default `max_body_bytes`: 8 MiB.
pub const DEFAULT_MAX_BODY_BYTES: usize = 8 * 1024 * 1024;

/// How long shutdown waits for in-flight requests before closing connections.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// Boxed error returned by [`run`] and [`serve`].
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Injected faults, for testing clients against a misbehaving server.
#[derive(Debug, Clone, Default)]
pub struct Faults {
    /// Fraction (0.0 to 1.0) of requests answered 503 with `Retry-After`.
    pub fail_503: f64,
    /// Value of that `Retry-After` header (seconds).
    pub retry_after_s: u64,
    /// Fraction of requests that hang (sleep `hang_ms`) before being handled.
    pub hang: f64,
    pub hang_ms: u64,
    /// Fraction of op requests (`v1/ops`, `v1/ops/batch`) that are applied and
    /// then the connection is dropped with no reply.
    pub drop_after_apply: f64,
    /// Answer 404 to `v1/ops/batch` (a server without batch support).
    pub no_batch: bool,
}

/// Server configuration.
#[derive(Clone)]
pub struct ServerOptions {
    pub listen: SocketAddr,
    /// Directory of the database; created if missing. Unused with `postgres`.
    pub data_dir: PathBuf,
    /// Store data in this PostgreSQL database (a `postgres://` URL or a
    /// `key=value` string) instead of redb in `data_dir`.
    pub postgres: Option<String>,
    /// Bearer token required by all endpoints but `v1/health`.
    pub token: Option<String>,
    /// Users and scopes (protocol revision 3): verify a JWT on every
    /// request but `v1/health`. Not together with `token`.
    pub users: Option<auth::Verifier>,
    /// Start single-tenant (no `users`) even over a store that has held
    /// users ([`BackendStore::held_users`]); else such a start is refused.
    pub allow_single_tenant_over_users: bool,
    pub faults: Faults,
    /// Largest accepted request body; default [`DEFAULT_MAX_BODY_BYTES`].
    pub max_body_bytes: usize,
    /// Serve https with this certificate chain and key, else plain http.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// Attachment content no record references (and unfinished uploads)
    /// is kept this long, then collected; default [`DEFAULT_BLOB_RETENTION`].
    pub blob_retention: Duration,
}

/// Default `blob_retention`: a day, so that a device that uploaded content
/// and went offline before sending the op that references it has a day to
/// come back before uploading it again.
pub const DEFAULT_BLOB_RETENTION: Duration = Duration::from_secs(24 * 3600);

/// Loads a PEM certificate chain and private key into a TLS server config.
pub fn load_tls(
    cert: &std::path::Path,
    key: &std::path::Path,
) -> Result<Arc<rustls::ServerConfig>, BoxError> {
    let read = |p: &std::path::Path| {
        std::fs::read(p)
            .map_err(|e| -> BoxError { format!("cannot read {}: {e}", p.display()).into() })
    };
    let certs = rustls_pemfile::certs(&mut read(cert)?.as_slice())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| -> BoxError { format!("{}: {e}", cert.display()).into() })?;
    if certs.is_empty() {
        return Err(format!("{}: no PEM certificates", cert.display()).into());
    }
    let key_der = rustls_pemfile::private_key(&mut read(key)?.as_slice())
        .map_err(|e| -> BoxError { format!("{}: {e}", key.display()).into() })?
        .ok_or_else(|| -> BoxError { format!("{}: no PEM private key", key.display()).into() })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key_der)?;
    Ok(Arc::new(cfg))
}

impl ServerOptions {
    /// Options with no token, no faults and the default body limit.
    pub fn new(listen: SocketAddr, data_dir: impl Into<PathBuf>) -> Self {
        ServerOptions {
            listen,
            data_dir: data_dir.into(),
            postgres: None,
            token: None,
            users: None,
            allow_single_tenant_over_users: false,
            faults: Faults::default(),
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            tls: None,
            blob_retention: DEFAULT_BLOB_RETENTION,
        }
    }
}

/// Redacts the token.
impl fmt::Debug for ServerOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerOptions")
            .field("listen", &self.listen)
            .field("data_dir", &self.data_dir)
            .field("postgres", &self.postgres.as_deref().map(pg_url::redact))
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("users", &self.users)
            .field(
                "allow_single_tenant_over_users",
                &self.allow_single_tenant_over_users,
            )
            .field("faults", &self.faults)
            .field("max_body_bytes", &self.max_body_bytes)
            .field("tls", &self.tls.is_some())
            .finish()
    }
}

/// The flag that starts single-tenant over a store that held users.
pub const ALLOW_SINGLE_TENANT_FLAG: &str = "--allow-single-tenant-over-users";

async fn open_store(opts: &ServerOptions) -> Result<Arc<dyn BackendStore>, BoxError> {
    let store: Arc<dyn BackendStore> = if let Some(url) = &opts.postgres {
        let store = PgStore::connect(url).await?;
        tracing::info!(database = %store.url(), "backend store open (PostgreSQL)");
        Arc::new(store)
    } else {
        let dir = opts.data_dir.clone();
        let store = tokio::task::spawn_blocking(move || RedbStore::open(&dir)).await??;
        tracing::info!(path = %store.path().display(), "backend store open");
        Arc::new(store)
    };
    check_mode(opts, &store).await?;
    Ok(store)
}

/// Refuses a single-tenant start over a store that held users (its token
/// would read and write every user's records), unless allowed.
async fn check_mode(opts: &ServerOptions, store: &Arc<dyn BackendStore>) -> Result<(), BoxError> {
    if opts.users.is_some() {
        return Ok(());
    }
    let s = Arc::clone(store);
    if !tokio::task::spawn_blocking(move || s.held_users()).await?? {
        return Ok(());
    }
    let place = store.location();
    if opts.allow_single_tenant_over_users {
        tracing::warn!(
            "{place} has held users and scopes; serving it single-tenant \
             ({ALLOW_SINGLE_TENANT_FLAG}): every user's records are open to this server's clients"
        );
        return Ok(());
    }
    Err(format!(
        "{place} has held users and scopes (protocol revision 3); a single-tenant \
         server (--token or no auth) would serve every user's records to anyone: start it \
         with --auth-secret-file or --auth-public-key, or pass {ALLOW_SINGLE_TENANT_FLAG} \
         to serve it single-tenant anyway"
    )
    .into())
}

/// Below this open-file limit a node warns at start (see [`fd_limit`]).
const LOW_FD_LIMIT: u64 = 4096;

/// Binds, prints exactly one line `listening on <actual addr>` to stdout
/// (flushed) once bound and the store is open (`listen` may use port 0),
/// serves until SIGINT/SIGTERM, then returns.
pub async fn run(opts: ServerOptions) -> Result<(), BoxError> {
    if let Some(limit) = fd_limit::raise() {
        // Each held pull is a socket: this bounds the waiting devices.
        if limit < LOW_FD_LIMIT {
            tracing::warn!(limit, "the open-file limit bounds this node to about {limit} connected devices; raise it (LimitNOFILE= in the systemd unit, ulimit -Hn)");
        } else {
            tracing::info!(limit, "open-file limit");
        }
    }
    let store = open_store(&opts).await?;
    let listener = TcpListener::bind(opts.listen).await?;
    let addr = listener.local_addr()?;
    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "listening on {addr}")?;
        out.flush()?;
    }
    serve_with_store(opts, store, listener, shutdown_signal()).await
}

/// Resolves on SIGINT or (on Unix) SIGTERM. If a handler cannot be
/// installed, that signal is simply not awaited.
async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::warn!(error = %e, "cannot listen for SIGINT");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => tracing::info!("SIGINT received, shutting down"),
        _ = term => tracing::info!("SIGTERM received, shutting down"),
    }
}

/// Serves on `listener` until `shutdown` resolves, with the redb store in
/// `opts.data_dir`. For in-process use.
pub async fn serve(
    opts: ServerOptions,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), BoxError> {
    let store = open_store(&opts).await?;
    serve_with_store(opts, store, listener, shutdown).await
}

/// Like [`serve`] with any [`BackendStore`] (`opts.data_dir` is unused).
///
/// On shutdown: stops accepting, answers held waiting pulls at once, lets
/// in-flight requests finish (keep-alive connections close after their
/// current request), and after `SHUTDOWN_GRACE` (10 s) aborts the remaining
/// connections.
pub async fn serve_with_store(
    opts: ServerOptions,
    store: Arc<dyn BackendStore>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), BoxError> {
    if opts.token.is_some() && opts.users.is_some() {
        return Err("a backend has either one --token (single-tenant) or users \
                    (--auth-secret-file / --auth-public-key), not both"
            .into());
    }
    let (stop_tx, stop_rx) = watch::channel(false);
    let blobs = match Arc::clone(&store).blob_backend() {
        Some(b) => b,
        None => {
            let dir = opts.data_dir.join("blobs");
            let files = blobs::FsBlobs::open(&dir, MAX_BLOB_BYTES)
                .map_err(|e| format!("cannot open the blob directory {}: {e}", dir.display()))?;
            Arc::new(files) as Arc<dyn blobs::BlobBackend>
        }
    };
    let collector = tokio::spawn(collect_blobs(
        Arc::clone(&store),
        Arc::clone(&blobs),
        opts.blob_retention,
        stop_rx.clone(),
    ));
    let state = Arc::new(AppState {
        blobs,
        store,
        token: opts.token,
        users: opts.users,
        faults: opts.faults,
        max_body_bytes: opts.max_body_bytes,
        stopping: stop_rx.clone(),
        shared_reads: SharedReads::default(),
    });
    let tls = opts.tls.map(tokio_rustls::TlsAcceptor::from);
    let mut conns = JoinSet::new();
    let mut builder = http1::Builder::new();
    builder.keep_alive(true).timer(TokioTimer::new());
    let builder = Arc::new(builder);

    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let state = Arc::clone(&state);
                    let builder = Arc::clone(&builder);
                    let stop = stop_rx.clone();
                    let tls = tls.clone();
                    conns.spawn(async move {
                        match tls {
                            Some(acceptor) => match acceptor.accept(stream).await {
                                Ok(s) => serve_conn(s, peer, state, builder, stop).await,
                                Err(e) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                            },
                            None => serve_conn(stream, peer, state, builder, stop).await,
                        }
                    });
                }
                Err(e) => {
                    // E.g. EMFILE: back off a little instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }

    drop(listener);
    let _ = stop_tx.send(true);
    let drained = tokio::time::timeout(SHUTDOWN_GRACE, async {
        while conns.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            remaining = conns.len(),
            "shutdown grace period over, closing connections"
        );
        conns.shutdown().await;
    }
    collector.abort();
    tracing::info!("backend stopped");
    Ok(())
}

/// Collects attachment content no record references and uploads left
/// unfinished, once they are older than `retention`: at start, then every
/// tenth of `retention` (at least a second, at most an hour).
async fn collect_blobs(
    store: Arc<dyn BackendStore>,
    blobs: Arc<dyn blobs::BlobBackend>,
    retention: Duration,
    mut stop: watch::Receiver<bool>,
) {
    let every = (retention / 10).clamp(Duration::from_secs(1), Duration::from_secs(3600));
    loop {
        let (s, b) = (Arc::clone(&store), Arc::clone(&blobs));
        let swept = tokio::task::spawn_blocking(move || {
            let referenced = s.content_refs()?;
            b.collect(&referenced, retention)
        })
        .await;
        match swept {
            Ok(Ok(0)) => {}
            Ok(Ok(n)) => tracing::info!(removed = n, "collected unreferenced attachment content"),
            Ok(Err(e)) => tracing::warn!(error = %e, "attachment content not collected"),
            Err(e) => tracing::warn!(error = %e, "attachment collector failed"),
        }
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}

/// Serves one connection (plain or TLS) until it ends or shutdown.
async fn serve_conn<I>(
    io: I,
    peer: SocketAddr,
    state: Arc<AppState>,
    builder: Arc<http1::Builder>,
    mut stop: watch::Receiver<bool>,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let svc = service_fn(move |req| http::handle(Arc::clone(&state), req));
    let conn = builder.serve_connection(TokioIo::new(io), svc);
    tokio::pin!(conn);
    let res = tokio::select! {
        res = conn.as_mut() => res,
        _ = stop.changed() => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = res {
        tracing::debug!(%peer, error = %e, "connection ended with error");
    }
}
