//! The background task that keeps the store's indexes in line with the
//! config: at start and after every reload it submits index steps to the
//! writer until no index is building or dropping. Each step is a slice
//! (see `writer::indexes::STEP_BUDGET`), so app writes keep flowing
//! between them; queries scan until an index is ready.

use std::sync::Arc;

use tokio::sync::watch;

use crate::config::Config;
use crate::domain::query::DeclaredIndexes;

use super::writer::{WriteCmd, WriteOutcome, WriterHandle};
use super::Store;

/// Runs until `shutdown`; a failed step is retried after a pause (a full
/// disk, say), and logged.
pub async fn run(
    store: Store,
    writer: WriterHandle,
    mut config: watch::Receiver<Arc<Config>>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let declared = config.borrow_and_update().declared_indexes();
        if declared.is_empty() && no_index_rows(&store).await {
            // Nothing declared, nothing to drop: no write transaction (and
            // no fsync) at every start of a daemon without indexes.
            tokio::select! {
                r = config.changed() => if r.is_err() { return },
                _ = shutdown.changed() => return,
            }
            continue;
        }
        let settled = tokio::select! {
            r = catch_up(&writer, &declared, &config) => r,
            _ = shutdown.changed() => return,
        };
        if matches!(settled, Ok(false)) {
            // A reload came in mid-way: start over on the new config.
            continue;
        }
        if let Err(e) = settled {
            tracing::warn!(error = %e, "index build step failed; trying again in 5 s");
            tokio::select! {
                _ = tokio::time::sleep(std::time::Duration::from_secs(5)) => continue,
                _ = shutdown.changed() => return,
            }
        }
        tokio::select! {
            r = config.changed() => if r.is_err() { return },
            _ = shutdown.changed() => return,
        }
    }
}

/// Whether the store has no index rows (read on the blocking pool; a
/// failed read counts as "some", so the writer's step decides).
async fn no_index_rows(store: &Store) -> bool {
    let store = store.clone();
    tokio::task::spawn_blocking(move || store.index_rows().map(|r| r.is_empty()))
        .await
        .is_ok_and(|r| r.unwrap_or(false))
}

/// Steps until the indexes match `declared` (`true`), or until the
/// config changes (`false`: a build or drop no longer declared so stops
/// at once, instead of running to its end first).
async fn catch_up(
    writer: &WriterHandle,
    declared: &DeclaredIndexes,
    config: &watch::Receiver<Arc<Config>>,
) -> Result<bool, crate::domain::WriteError> {
    loop {
        if config.has_changed().unwrap_or(false) {
            return Ok(false);
        }
        let cmd = WriteCmd::IndexStep {
            declared: declared.clone(),
        };
        match writer.submit(cmd).await? {
            WriteOutcome::IndexStep { more: true } => tokio::task::yield_now().await,
            _ => return Ok(true),
        }
    }
}
