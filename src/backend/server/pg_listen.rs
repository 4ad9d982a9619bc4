//! Wake-ups from other nodes: a background task that `LISTEN`s on the
//! PostgreSQL store's channel and publishes the scopes and heads each
//! notification names to the store's [`Feed`], so a waiting pull on this
//! node re-reads when any node commits to one of its scopes.
//!
//! Why a file of its own: it is the one long-lived piece of the PostgreSQL
//! store, with its own connection (a pooled one cannot be kept listening)
//! and its own failure handling. Notifications are wake-ups only and can be
//! lost (the connection drops, the server restarts, a node dies between its
//! commit and its `NOTIFY`): every [`RECHECK`] the task compares the sum of
//! every scope's head in the database with the sum of the heads it knows,
//! and when they differ (and right after each (re)connection) reads every
//! head and publishes them, so a waiter is woken within that interval at
//! worst — never a busy poll. (The sum is one sequential scan of
//! `syncd_scope_heads`, one row per scope, per node per interval.)

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_postgres::{AsyncMessage, Client, NoTls};

use super::feed::Feed;
use super::log_limit::LogLimit;
use super::pg_apply::{parse_heads, CHANNEL};

/// While the database is down, the lost listener is logged once per this
/// interval (it retries every [`RECONNECT`]).
const LOG_INTERVAL_MS: i64 = 30_000;

/// The safety re-read interval of the head.
pub const RECHECK: Duration = Duration::from_secs(2);
/// Pause before reconnecting a lost listener connection.
const RECONNECT: Duration = Duration::from_secs(1);

/// Starts the listener task on the current runtime; abort the handle to stop it.
pub fn spawn(config: tokio_postgres::Config, feed: Arc<Feed>, url: String) -> JoinHandle<()> {
    tokio::spawn(async move {
        let log = LogLimit::new(LOG_INTERVAL_MS);
        loop {
            if let Err(e) = listen(&config, &feed, &log).await {
                if let Some(left_out) = log.admit(crate::now_ms()) {
                    tracing::warn!(database = %url, error = %e, left_out,
                        "change feed listener lost its connection; reconnecting every second");
                }
            }
            tokio::time::sleep(RECONNECT).await;
        }
    })
}

/// One listener connection's life: returns when it fails.
async fn listen(
    config: &tokio_postgres::Config,
    feed: &Feed,
    log: &LogLimit,
) -> Result<(), tokio_postgres::Error> {
    let (client, mut conn) = config.connect(NoTls).await?;
    let (tx, mut rx) = mpsc::unbounded_channel::<String>();
    // The connection must be polled for notifications to arrive.
    let driver = tokio::spawn(async move {
        loop {
            match std::future::poll_fn(|cx| conn.poll_message(cx)).await {
                Some(Ok(AsyncMessage::Notification(n))) => {
                    if tx.send(n.payload().to_owned()).is_err() {
                        return Ok(());
                    }
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(e),
                None => return Ok(()),
            }
        }
    });
    let result = serve(&client, feed, &mut rx, log).await;
    driver.abort();
    result
}

async fn serve(
    client: &Client,
    feed: &Feed,
    rx: &mut mpsc::UnboundedReceiver<String>,
    log: &LogLimit,
) -> Result<(), tokio_postgres::Error> {
    client.batch_execute(&format!("LISTEN {CHANNEL}")).await?;
    // Commits made while no connection listened are caught up here (and
    // heads that went back while it was away are taken as they are).
    let heads = all_heads(client).await?;
    feed.reset_scopes(heads);
    if log.reset() {
        tracing::info!("change feed listener reconnected");
    }
    let mut tick = tokio::time::interval(RECHECK);
    loop {
        tokio::select! {
            n = rx.recv() => match n {
                Some(payload) => match parse_heads(&payload) {
                    Some(heads) => feed.publish_scopes(&heads),
                    None => feed.bump(),
                },
                // The connection ended; the next query reports why.
                None => return heads_total(client).await.map(|_| ()),
            },
            _ = tick.tick() => {
                let known = i64::try_from(feed.known_total()).unwrap_or(i64::MAX);
                let total = heads_total(client).await?;
                if total < known {
                    // Heads went back (a restored database, a failover
                    // that lost commits): take them as they are now.
                    feed.reset_scopes(all_heads(client).await?);
                } else if total > known {
                    feed.publish_scopes(&all_heads(client).await?);
                }
            }
        }
    }
}

/// The sum of every scope's head: it grows with every appending commit.
async fn heads_total(client: &Client) -> Result<i64, tokio_postgres::Error> {
    let row = client
        .query_one(
            "SELECT COALESCE(sum(seq), 0)::bigint FROM syncd_scope_heads",
            &[],
        )
        .await?;
    row.try_get(0)
}

/// Every scope's head.
async fn all_heads(client: &Client) -> Result<Vec<(String, u64)>, tokio_postgres::Error> {
    let rows = client
        .query("SELECT scope, seq FROM syncd_scope_heads", &[])
        .await?;
    let mut heads = Vec::with_capacity(rows.len());
    for row in rows {
        let seq: i64 = row.try_get(1)?;
        heads.push((
            row.try_get::<_, String>(0)?,
            u64::try_from(seq).unwrap_or(0),
        ));
    }
    Ok(heads)
}
