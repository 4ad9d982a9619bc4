//! `queue`: the pending operations in the order they will be sent, cut to
//! the reply budget. Read-only; for people and tools watching the sync.

use crate::ipc::context::Ctx;
use crate::ipc::wire::{ApiError, Response};

use super::blocking::read;
use super::check::{reply_budget, within_budget};
use super::MAX_LIST;

/// Ops listed when the app names no limit.
const DEFAULT_LIMIT: u32 = 1000;

pub async fn apply(ctx: &Ctx, limit: Option<u32>) -> Result<Response, ApiError> {
    let limit = limit.unwrap_or(DEFAULT_LIMIT).clamp(1, MAX_LIST) as usize;
    let ops = read(ctx, move |s| s.queue_head(limit)).await?;
    Ok(Response::Ops(within_budget(
        reply_budget(ctx),
        ops.into_iter().map(|(seq, op)| op.view(seq)),
    )))
}
