//! [`BackendStore`] on PostgreSQL (`syncd backend --postgres URL`), so that
//! several stateless backend nodes can serve the same devices from one
//! database (see `docs/scaling.md`).
//!
//! - **Writes**: [`pg_apply`](super::pg_apply) — one transaction of two
//!   round trips whatever the batch's size, ordered per scope at the end of
//!   the transaction only (no cluster-wide lock); requests that arrive while
//!   the node's transactions are busy share the next one
//!   ([`pg_group`](super::pg_group)).
//! - **Reads**: `changes` (revision 2, single-tenant) reads the `default`
//!   scope's feed, where a single-tenant server keeps every record; `pull`
//!   reads each scope's head and a page of its feed in one statement (one
//!   snapshot), so the page and the head always agree.
//! - **Wake-ups**: [`pg_listen`](super::pg_listen) turns other nodes'
//!   commits (`NOTIFY`, naming the scopes written and their heads) into
//!   scoped [`Feed`] wake-ups; this node's own commits publish theirs
//!   directly after they commit. A waiter goes back to the database only
//!   when one of its scopes moved.
//! - **Schema**: `pg_schema.sql`, applied at every start under an advisory
//!   lock (nodes may start together), plus a `schema` row in `syncd_meta`.
//!   Schema 2 added scopes; a schema 1 database is upgraded at start (its
//!   rows get scope `default`, whose feed is filled from the global log).
//!   Schema 3 stops writing the global log (`syncd_changes` and its
//!   `syncd_feed_head`, whose lock serialised every write of the cluster):
//!   the upgrade from 2 only moves the version, since a single-tenant
//!   database's `default` feed already holds the global log's entries at
//!   the same sequences. Stop every older node first: an older node refuses
//!   to start on a newer schema, but one still running would keep locking
//!   the old head and writing a log nobody reads.
//! - **Scoped pulls**: `pull` reads each scope's head and page in one
//!   statement; scopes are read one after another (each page is consistent
//!   with its own head, which is all a per-scope cursor needs).
//!
//! # Blocking bridge
//!
//! [`BackendStore`] is blocking and the HTTP layer calls it on tokio's
//! blocking pool; the driver (tokio-postgres, pooled by deadpool-postgres)
//! is async. Each method runs its future with the runtime [`Handle`] captured
//! at [`PgStore::connect`] (`Handle::block_on`), which is allowed on
//! blocking-pool threads and plain threads (not on an async worker). This
//! keeps the trait, the handler and the redb store untouched, at the cost of
//! one parked blocking thread per in-flight store call — the same cost the
//! redb store has.

use std::collections::HashSet;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use tokio::runtime::Handle;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_postgres::NoTls;

use crate::backend::protocol::{Change, ScopedChange};
use crate::domain::scope::SINGLE_SCOPE;

use super::access::Caller;
use super::feed::Feed;
use super::ops::ValidOp;
use super::pg_group::Grouper;
use super::pg_listen;
use super::pg_url::redact;
use super::store::{with_scope, BackendStore, ChangeSlice, Outcome, ScopeSlice, StoreError};

/// The schema this code reads and writes (`syncd_meta.schema`).
pub const SCHEMA_VERSION: i64 = 3;
/// The schema before scopes, upgraded at start.
const SCHEMA_BEFORE_SCOPES: i64 = 1;
/// The schema with scopes and the global log, upgraded at start.
const SCHEMA_WITH_GLOBAL_LOG: i64 = 2;
/// Schema 1 → 2: the `default` scope's feed is the global log so far (a
/// `Change` is a record entry of a scope feed, byte for byte).
const UPGRADE_TO_SCOPES: &str = "INSERT INTO syncd_scope_changes (scope, seq, change) \
     SELECT 'default', seq, change FROM syncd_changes ON CONFLICT DO NOTHING; \
     INSERT INTO syncd_scope_heads (scope, seq) SELECT 'default', max(seq) FROM syncd_changes \
     HAVING count(*) > 0 ON CONFLICT (scope) DO UPDATE SET seq = EXCLUDED.seq";
/// Schema 2 → 3: nothing moves (see the module doc).
const UPGRADE_TO_3: &str = "UPDATE syncd_meta SET value = 3 WHERE key = 'schema'";
/// The idempotent schema script.
const SCHEMA_SQL: &str = include_str!("pg_schema.sql");
/// Advisory lock key taken while migrating ("syncd" in ASCII).
const MIGRATION_LOCK: i64 = 0x0073_796e_6364;
/// Connections per node for writes: applies (at most
/// [`pg_group::RUNNERS`](super::pg_group::RUNNERS) at a time) and attachment uploads.
pub const POOL_SIZE: usize = 16;
/// Connections per node for reads (on top of [`POOL_SIZE`] and the one
/// `LISTEN` connection).
pub const READ_POOL_SIZE: usize = 8;
/// Connect, and wait-for-a-connection, timeout.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Whether a users-mode server wrote here, or a scope but `default` has a feed.
const HELD_USERS: &str = "SELECT EXISTS (SELECT 1 FROM syncd_meta WHERE key = 'users') \
     OR EXISTS (SELECT 1 FROM syncd_scope_heads WHERE scope <> 'default')";

/// One scope's head and a page of its feed, in one statement (one snapshot).
const READ_SCOPE: &str = "SELECT h.seq, c.seq, c.change FROM \
     (SELECT COALESCE(max(seq), 0) AS seq FROM syncd_scope_heads WHERE scope = $1) h \
     LEFT JOIN LATERAL (SELECT seq, change FROM syncd_scope_changes WHERE scope = $1 \
     AND seq > $2 ORDER BY seq LIMIT $3) c ON true ORDER BY c.seq";

/// The PostgreSQL-backed store of one node.
pub struct PgStore {
    /// Connections for applies.
    pool: Pool,
    /// Connections for reads (pulls, `changes`, health): a pull never waits
    /// for a connection behind applies queued at a busy scope's head.
    read_pool: Pool,
    rt: Handle,
    feed: Arc<Feed>,
    /// The connection string without its password.
    url: String,
    listener: JoinHandle<()>,
    /// The write side: applies, grouped into transactions
    /// ([`pg_group`](super::pg_group)).
    writes: Arc<Grouper>,
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgStore").field("url", &self.url).finish()
    }
}

impl Drop for PgStore {
    fn drop(&mut self) {
        self.listener.abort();
    }
}

impl PgStore {
    /// Connects to `url` (a `postgres://` URL or a `key=value` string),
    /// applies the schema and starts the change listener on the current
    /// runtime. Errors name the database without its password.
    pub async fn connect(url: &str) -> Result<PgStore, StoreError> {
        let shown = redact(url);
        let err = |what: &str, e: &dyn std::fmt::Display| {
            StoreError::Failed(format!("PostgreSQL {shown}: {what}: {e}"))
        };
        let mut config: tokio_postgres::Config = url
            .parse()
            .map_err(|e| err("invalid connection string", &e))?;
        config.connect_timeout(CONNECT_TIMEOUT);
        let build = |size| {
            Pool::builder(Manager::from_config(
                config.clone(),
                NoTls,
                ManagerConfig {
                    recycling_method: RecyclingMethod::Fast,
                },
            ))
            .max_size(size)
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(CONNECT_TIMEOUT))
            .create_timeout(Some(CONNECT_TIMEOUT))
            .recycle_timeout(Some(CONNECT_TIMEOUT))
            .build()
            .map_err(|e| err("cannot build the connection pool", &e))
        };
        let pool = build(POOL_SIZE)?;
        let read_pool = build(READ_POOL_SIZE)?;
        migrate(&pool).await.map_err(|e| err("cannot open", &e))?;
        let feed = Arc::new(Feed::new(0));
        let listener = pg_listen::spawn(config, Arc::clone(&feed), shown.clone());
        let writes = Grouper::new(
            pool.clone(),
            Arc::clone(&feed),
            shown.clone(),
            Handle::current(),
        );
        Ok(PgStore {
            pool,
            read_pool,
            rt: Handle::current(),
            feed,
            url: shown,
            listener,
            writes,
        })
    }

    /// How many statements this node's applies have sent so far (those
    /// that committed or rolled back cleanly): a batch costs the same
    /// handful whatever its size (see [`pg_apply`](super::pg_apply)).
    pub fn apply_statements(&self) -> u64 {
        self.writes.statements()
    }

    /// `(transactions, requests)` of this node's applies that ended
    /// cleanly: how many requests a transaction carried on average
    /// ([`pg_group`](super::pg_group)).
    pub fn apply_grouping(&self) -> (u64, u64) {
        self.writes.grouping()
    }

    /// Requests waiting for one of this node's apply transactions.
    pub fn apply_waiting(&self) -> usize {
        self.writes.waiting()
    }

    /// The connection string, password hidden.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// A failure of this store, with the whole chain of causes (the
    /// driver's own text often only says "connection closed").
    fn error(&self, what: &str, e: &(dyn std::error::Error + 'static)) -> StoreError {
        StoreError::Failed(format!("PostgreSQL {}: {what}: {}", self.url, chain(e)))
    }

    /// A PostgreSQL error: `Unavailable` when the database is down or went
    /// away, else `Failed`.
    pub(super) fn pg_error(&self, what: &str, e: &tokio_postgres::Error) -> StoreError {
        match self.error(what, e) {
            StoreError::Failed(m) if is_unavailable(e) => StoreError::Unavailable(m),
            other => other,
        }
    }

    /// Runs `f` to completion from a blocking context (see the module doc).
    pub(super) fn block<T>(&self, f: impl Future<Output = T>) -> T {
        self.rt.block_on(f)
    }

    /// A connection for an apply.
    pub(super) async fn client(&self) -> Result<deadpool_postgres::Object, StoreError> {
        self.pooled(&self.pool).await
    }

    /// A connection for a read.
    pub(super) async fn reader(&self) -> Result<deadpool_postgres::Object, StoreError> {
        self.pooled(&self.read_pool).await
    }

    async fn pooled(&self, pool: &Pool) -> Result<deadpool_postgres::Object, StoreError> {
        pooled(&self.url, pool).await
    }
}

/// A connection from `pool` of the database at `url` (password hidden);
/// none to be had means the database is unavailable, not that the request
/// failed.
pub(super) async fn pooled(
    url: &str,
    pool: &Pool,
) -> Result<deadpool_postgres::Object, StoreError> {
    pool.get().await.map_err(|e| {
        StoreError::Unavailable(format!("PostgreSQL {url}: no connection: {}", chain(&e)))
    })
}

/// Whether a driver error means the database cannot be reached now: the
/// connection is closed or failed, or the server refuses or ends sessions
/// (SQLSTATE class 08, and 57P01-57P03: shutdown, crash recovery, startup).
pub(super) fn is_unavailable(e: &tokio_postgres::Error) -> bool {
    use tokio_postgres::error::SqlState;
    if e.is_closed() {
        return true;
    }
    match e.code() {
        Some(c) => {
            c.code().starts_with("08")
                || [
                    SqlState::ADMIN_SHUTDOWN,
                    SqlState::CRASH_SHUTDOWN,
                    SqlState::CANNOT_CONNECT_NOW,
                ]
                .contains(c)
        }
        // No SQLSTATE: an I/O error talking to the server.
        None => std::error::Error::source(e).is_some_and(|s| s.is::<std::io::Error>()),
    }
}

/// `e` and its sources, joined by ": ", each said once.
pub(super) fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut next = e.source();
    while let Some(s) = next {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        next = s.source();
    }
    out
}

/// Why opening the database failed.
#[derive(Debug)]
enum OpenError {
    Pool(deadpool_postgres::PoolError),
    Pg(tokio_postgres::Error),
    /// The database holds another schema version.
    Schema(i64),
}

impl std::fmt::Display for OpenError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            OpenError::Pool(e) => write!(f, "{e}"),
            OpenError::Pg(e) => write!(f, "{e}"),
            OpenError::Schema(v) => write!(
                f,
                "schema version {v} is not the {SCHEMA_VERSION} this syncd backend uses"
            ),
        }
    }
}

impl From<tokio_postgres::Error> for OpenError {
    fn from(e: tokio_postgres::Error) -> Self {
        OpenError::Pg(e)
    }
}

/// Applies the schema (idempotent, under an advisory lock), upgrading an
/// older one.
async fn migrate(pool: &Pool) -> Result<(), OpenError> {
    let mut client = pool.get().await.map_err(OpenError::Pool)?;
    let tx = client.transaction().await?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await?;
    // On a database that already has the schema, every `CREATE ... IF NOT
    // EXISTS` would send a NOTICE ("relation ... already exists, skipping"),
    // which the driver logs: five lines at each start of every node but the
    // first. Only warnings and errors matter here; `SET LOCAL` ends with this
    // transaction, so the pooled connection keeps the server's default.
    tx.batch_execute("SET LOCAL client_min_messages = warning")
        .await?;
    tx.batch_execute(SCHEMA_SQL).await?;
    let found = tx
        .query_opt("SELECT value FROM syncd_meta WHERE key = 'schema'", &[])
        .await?
        .map(|r| r.try_get::<_, i64>(0))
        .transpose()?;
    match found {
        Some(SCHEMA_VERSION) => {}
        Some(SCHEMA_BEFORE_SCOPES) => {
            tx.batch_execute(UPGRADE_TO_SCOPES).await?;
            tx.batch_execute(UPGRADE_TO_3).await?;
            tracing::info!("PostgreSQL schema upgraded to {SCHEMA_VERSION}: every record is in scope 'default'");
        }
        Some(SCHEMA_WITH_GLOBAL_LOG) => {
            tx.batch_execute(UPGRADE_TO_3).await?;
            tracing::info!(
                "PostgreSQL schema upgraded to {SCHEMA_VERSION}: writes are ordered per scope"
            );
        }
        Some(v) => return Err(OpenError::Schema(v)),
        None => {
            tx.execute(
                "INSERT INTO syncd_meta (key, value) VALUES ('schema', $1)",
                &[&SCHEMA_VERSION],
            )
            .await?;
        }
    }
    tx.commit().await?;
    Ok(())
}

impl PgStore {
    /// Revision 2's log: the `default` scope's feed (a single-tenant
    /// server creates every record there and never moves one; a gone entry,
    /// possible only on a store that once held users, is skipped).
    async fn changes_async(&self, since: u64, limit: usize) -> Result<ChangeSlice, StoreError> {
        let mut slices = self
            .pull_async(&[(SINGLE_SCOPE.to_owned(), since)], limit)
            .await?;
        let Some(slice) = slices.pop() else {
            return Ok(ChangeSlice {
                entries: Vec::new(),
                read_to: None,
                more: false,
                head: 0,
            });
        };
        let read_to = slice.entries.last().map(|(seq, _)| *seq);
        let entries = slice
            .entries
            .into_iter()
            .filter_map(|(seq, entry)| match entry {
                ScopedChange::Record {
                    collection,
                    mut record,
                } => {
                    record.scope = None;
                    Some((seq, Change { collection, record }))
                }
                ScopedChange::Gone { .. } => None,
            })
            .collect();
        Ok(ChangeSlice {
            entries,
            read_to,
            more: slice.more,
            head: slice.head,
        })
    }

    async fn pull_async(
        &self,
        scopes: &[(String, u64)],
        limit: usize,
    ) -> Result<Vec<ScopeSlice>, StoreError> {
        let client = self.reader().await?;
        let stmt = client
            .prepare_cached(READ_SCOPE)
            .await
            .map_err(|e| self.pg_error("read scope feed", &e))?;
        let fetch = i64::try_from(limit.saturating_add(1)).unwrap_or(i64::MAX);
        let mut out = Vec::with_capacity(scopes.len());
        for (scope, since) in scopes {
            let since_i = i64::try_from(*since).unwrap_or(i64::MAX);
            let rows = client
                .query(&stmt, &[scope, &since_i, &fetch])
                .await
                .map_err(|e| self.pg_error("read scope feed", &e))?;
            out.push(self.scope_slice(scope, rows, limit)?);
        }
        Ok(out)
    }

    fn scope_slice(
        &self,
        scope: &str,
        rows: Vec<tokio_postgres::Row>,
        limit: usize,
    ) -> Result<ScopeSlice, StoreError> {
        let mut head = 0;
        let mut entries = Vec::with_capacity(rows.len());
        for row in rows {
            let (h, seq, change) =
                change_row(&row).map_err(|e| self.error("read scope feed", &e))?;
            head = u64::try_from(h).unwrap_or(0);
            if let (Some(seq), Some(change)) = (seq, change) {
                let entry: ScopedChange = serde_json::from_str(&change)
                    .map_err(|e| self.error("corrupt scope feed entry", &e))?;
                entries.push((u64::try_from(seq).unwrap_or(0), with_scope(entry, scope)));
            }
        }
        let more = entries.len() > limit;
        entries.truncate(limit);
        Ok(ScopeSlice {
            entries,
            more,
            head,
        })
    }

    async fn held_users_async(&self) -> Result<bool, StoreError> {
        let client = self.reader().await?;
        let row = client
            .query_one(HELD_USERS, &[])
            .await
            .map_err(|e| self.pg_error("read syncd_meta", &e))?;
        row.try_get(0)
            .map_err(|e| self.error("read syncd_meta", &e))
    }

    async fn content_refs_async(&self) -> Result<HashSet<String>, StoreError> {
        let client = self.reader().await?;
        let rows = client
            .query(
                "SELECT record FROM syncd_records WHERE strpos(record, '\"_attachments\"') > 0",
                &[],
            )
            .await
            .map_err(|e| self.pg_error("read syncd_records", &e))?;
        let mut out = HashSet::new();
        for row in rows {
            let text: String = row.get(0);
            if let Ok(r) = serde_json::from_str::<crate::domain::ServerRecord>(&text) {
                if !r.deleted {
                    let refs = crate::domain::attachment::refs(&r.data).unwrap_or_default();
                    out.extend(refs.into_values().map(|a| a.sha256));
                }
            }
        }
        Ok(out)
    }

    async fn scope_of_async(
        &self,
        collection: &str,
        id: &str,
    ) -> Result<Option<String>, StoreError> {
        let client = self.reader().await?;
        let row = client
            .query_opt(
                "SELECT scope FROM syncd_records WHERE collection = $1 AND id = $2",
                &[&collection, &id],
            )
            .await
            .map_err(|e| self.pg_error("read syncd_records", &e))?;
        row.map(|r| r.try_get(0))
            .transpose()
            .map_err(|e| self.error("read syncd_records", &e))
    }

    async fn check_async(&self) -> Result<(), StoreError> {
        let client = self.reader().await?;
        client
            .simple_query("SELECT 1")
            .await
            .map_err(|e| self.pg_error("health check", &e))?;
        Ok(())
    }
}

/// `(head, seq, change)` of a [`READ_SCOPE`] row (no change: `None`s).
type ChangeRow = (i64, Option<i64>, Option<String>);

fn change_row(row: &tokio_postgres::Row) -> Result<ChangeRow, tokio_postgres::Error> {
    Ok((row.try_get(0)?, row.try_get(1)?, row.try_get(2)?))
}

impl BackendStore for PgStore {
    fn apply(&self, ops: &[ValidOp]) -> Result<Vec<Outcome>, StoreError> {
        self.apply_as(ops, &Caller::Single)
    }

    fn apply_as(&self, ops: &[ValidOp], caller: &Caller) -> Result<Vec<Outcome>, StoreError> {
        if ops.is_empty() {
            return Ok(Vec::new());
        }
        self.block(self.writes.apply(ops, caller))
    }

    fn pull(&self, scopes: &[(String, u64)], limit: usize) -> Result<Vec<ScopeSlice>, StoreError> {
        self.block(self.pull_async(scopes, limit))
    }

    fn changes(&self, since: u64, limit: usize) -> Result<ChangeSlice, StoreError> {
        self.block(self.changes_async(since, limit))
    }

    fn check(&self) -> Result<(), StoreError> {
        self.block(self.check_async())
    }

    fn held_users(&self) -> Result<bool, StoreError> {
        self.block(self.held_users_async())
    }

    fn scope_of(&self, collection: &str, id: &str) -> Result<Option<String>, StoreError> {
        self.block(self.scope_of_async(collection, id))
    }

    fn content_refs(&self) -> Result<HashSet<String>, StoreError> {
        self.block(self.content_refs_async())
    }

    fn blob_backend(self: Arc<Self>) -> Option<Arc<dyn super::blobs::BlobBackend>> {
        Some(self)
    }

    fn location(&self) -> String {
        format!("PostgreSQL database {}", self.url)
    }

    fn subscribe(&self) -> watch::Receiver<u64> {
        self.feed.subscribe()
    }

    fn unscoped_wakes(&self) -> u64 {
        self.feed.unscoped()
    }

    fn may_have_moved(&self, unscoped_seen: u64, read: &[(String, u64)]) -> bool {
        self.feed.may_have_moved(unscoped_seen, read)
    }
}
