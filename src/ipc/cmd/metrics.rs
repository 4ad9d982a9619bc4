//! `metrics`: every series of [`crate::metrics::Metrics`] as OpenMetrics
//! text, with the store's gauges read fresh for this scrape. The HTTP
//! `/metrics` endpoint ([`crate::ipc::metrics_http`]) serves the same text.

use crate::ipc::server::Ctx;
use crate::ipc::wire::{ApiError, Response};
use crate::metrics::Snapshot;

/// The current metrics text.
pub fn text(ctx: &Ctx) -> Result<String, ApiError> {
    let now = crate::domain::clock::now_ms();
    let snap = Snapshot {
        queue_depth: ctx.store.queue_depth()?,
        oldest_pending_age_s: ctx
            .store
            .oldest_pending()?
            .map(|t| (now - t).max(0) as f64 / 1000.0)
            .unwrap_or(0.0),
        dead_letters: ctx.store.dead_letter_count()?,
        conflicts_parked: ctx.store.conflict_count()?,
        store_bytes: ctx.store.store_bytes(),
        state: ctx.sync.status().state.as_str().to_owned(),
    };
    Ok(ctx.metrics.render(&snap))
}

pub fn apply(ctx: &Ctx) -> Result<Response, ApiError> {
    text(ctx).map(|text| Response::Metrics { text })
}
