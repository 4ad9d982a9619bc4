//! `status`: one view of the daemon's health, put together from the store
//! (queue, dead letters, conflicts, last sync) and the sync worker (state,
//! next retry, last error). Public so other front ends can show the same.

use crate::ipc::server::Ctx;
use crate::ipc::wire::{ApiError, StatusView};
use crate::store::tables::{i64_be, u64_be, META_LAST_SYNC, META_RESOLVED};

/// Builds the status view from the store and the worker.
pub fn status(ctx: &Ctx) -> Result<StatusView, ApiError> {
    let s = ctx.sync.status();
    let cfg = ctx.config.borrow().clone();
    let now = crate::domain::clock::now_ms();
    Ok(StatusView {
        state: s.state.as_str().to_owned(),
        queue_depth: ctx.store.queue_depth()?,
        oldest_pending_age_ms: ctx.store.oldest_pending()?.map(|t| (now - t).max(0)),
        dead_letters: ctx.store.dead_letter_count()?,
        conflicts: ctx.store.conflict_count()?,
        conflicts_resolved: u64_be(ctx.store.meta(META_RESOLVED)?.as_deref()).unwrap_or(0),
        last_sync_at: i64_be(ctx.store.meta(META_LAST_SYNC)?.as_deref()),
        next_retry_at: s.next_retry_at,
        last_error: s.last_error,
        backend: cfg.backend_url().map(str::to_owned),
        client_id: ctx.store.client_id().to_owned(),
        store_bytes: ctx.store.store_bytes(),
        version: env!("CARGO_PKG_VERSION").to_owned(),
        remote_changes: s.remote_changes,
        last_pull_at: s.last_pull_at,
    })
}
