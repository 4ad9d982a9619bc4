//! Wake-ups from other nodes: a background task that `LISTEN`s on the
//! PostgreSQL store's channel and publishes the head to the store's
//! [`Feed`], so a waiting pull on this node is answered when any node
//! commits.
//!
//! Why a file of its own: it is the one long-lived piece of the PostgreSQL
//! store, with its own connection (a pooled one cannot be kept listening)
//! and its own failure handling. Notifications are wake-ups only and can be
//! lost (the connection drops, the server restarts): the task also re-reads
//! the head every [`RECHECK`] and right after each (re)connection, so a
//! waiter is woken within that interval at worst — never a busy poll.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_postgres::{AsyncMessage, Client, NoTls};

use super::feed::Feed;
use super::log_limit::LogLimit;
use super::pg_apply::CHANNEL;

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
    let (tx, mut rx) = mpsc::unbounded_channel::<Option<u64>>();
    // The connection must be polled for notifications to arrive.
    let driver = tokio::spawn(async move {
        loop {
            match std::future::poll_fn(|cx| conn.poll_message(cx)).await {
                Some(Ok(AsyncMessage::Notification(n))) => {
                    if tx.send(n.payload().parse().ok()).is_err() {
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
    rx: &mut mpsc::UnboundedReceiver<Option<u64>>,
    log: &LogLimit,
) -> Result<(), tokio_postgres::Error> {
    client.batch_execute(&format!("LISTEN {CHANNEL}")).await?;
    // Commits made while no connection listened are caught up here.
    refresh(client, feed).await?;
    if log.reset() {
        tracing::info!("change feed listener reconnected");
    }
    let mut tick = tokio::time::interval(RECHECK);
    loop {
        tokio::select! {
            n = rx.recv() => match n {
                Some(Some(head)) => feed.publish(head),
                Some(None) => refresh(client, feed).await?,
                // The connection ended; the next query reports why.
                None => return refresh(client, feed).await,
            },
            _ = tick.tick() => refresh(client, feed).await?,
        }
    }
}

async fn refresh(client: &Client, feed: &Feed) -> Result<(), tokio_postgres::Error> {
    let row = client
        .query_one("SELECT seq FROM syncd_feed_head WHERE one", &[])
        .await?;
    let head: i64 = row.try_get(0)?;
    feed.publish(u64::try_from(head).unwrap_or(0));
    Ok(())
}
