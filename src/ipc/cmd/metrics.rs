//! `metrics`: every series of [`crate::metrics::Metrics`] as OpenMetrics
//! text, with the store's gauges read fresh for this scrape. The HTTP
//! `/metrics` endpoint ([`crate::ipc::metrics_http`]) serves the same text.

use crate::ipc::context::Ctx;
use crate::ipc::wire::{ApiError, Response};
use crate::metrics::Snapshot;

use super::blocking::read;

/// The current metrics text.
pub async fn text(ctx: &Ctx) -> Result<String, ApiError> {
    let now = crate::domain::clock::now_ms();
    let snap = read(ctx, move |s| {
        Ok(Snapshot {
            queue_depth: s.queue_depth()?,
            oldest_pending_age_s: s
                .oldest_pending()?
                .map(|t| (now - t).max(0) as f64 / 1000.0)
                .unwrap_or(0.0),
            dead_letters: s.dead_letter_count()?,
            conflicts_parked: s.conflict_count()?,
            store_bytes: s.store_bytes(),
            state: String::new(),
            store_damaged: s.damage().is_some(),
            attachment_bytes: (0, 0),
        })
    })
    .await;
    // A damaged store may fail the reads: the damage is still exported.
    let mut snap = match snap {
        Ok(s) => s,
        Err(_) if ctx.store.damage().is_some() => Snapshot {
            store_damaged: true,
            ..Snapshot::default()
        },
        Err(e) => return Err(e),
    };
    snap.state = ctx.sync.status().state.as_str().to_owned();
    snap.attachment_bytes = ctx.transfers.totals();
    Ok(ctx.metrics.render(&snap))
}

pub async fn apply(ctx: &Ctx) -> Result<Response, ApiError> {
    text(ctx).await.map(|text| Response::Metrics { text })
}
