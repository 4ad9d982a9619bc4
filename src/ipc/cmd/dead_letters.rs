//! `dead_letters`, `retry` and `discard`: the operations the server
//! rejected for good, and the two ways out for each (queue it again, or
//! drop it). One file because the three share one store table.

use crate::ipc::context::Ctx;
use crate::ipc::wire::{ApiError, Response};
use crate::store::writer::WriteCmd;

use super::blocking::read;
use super::check::{reply_budget, within_budget, written};

/// The dead letters, each with its server error, cut to the reply budget.
pub async fn list(ctx: &Ctx) -> Result<Response, ApiError> {
    let dead = read(ctx, |s| s.dead_letters()).await?;
    Ok(Response::Ops(within_budget(
        reply_budget(ctx),
        dead.into_iter().map(|(seq, dl)| {
            let mut v = dl.op.view(seq);
            v.last_error = Some(dl.error);
            v
        }),
    )))
}

/// Queues a dead letter again.
pub async fn retry(ctx: &Ctx, op_id: String) -> Result<Response, ApiError> {
    Ok(written(
        ctx.writer.submit(WriteCmd::RetryDead { op_id }).await?,
    ))
}

/// Drops a dead letter for good.
pub async fn discard(ctx: &Ctx, op_id: String) -> Result<Response, ApiError> {
    Ok(written(
        ctx.writer.submit(WriteCmd::DiscardDead { op_id }).await?,
    ))
}
