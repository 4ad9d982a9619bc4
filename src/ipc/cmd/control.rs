//! `sync`, `pause` and `resume`: the app's hands on the sync worker. One
//! file for the three because they touch the same thing; pause/resume
//! are stored first (so they survive a restart), then told to the worker,
//! both under one lock so that the stored flag and the worker's agree
//! however pauses and resumes race.

use crate::ipc::context::Ctx;
use crate::ipc::wire::{ApiError, Response};
use crate::store::tables::META_PAUSED;
use crate::store::writer::WriteCmd;

/// Wakes the worker now (push, then pull).
pub fn sync(ctx: &Ctx) -> Response {
    ctx.sync.wake();
    Response::Ok {}
}

/// Stores the paused flag, then applies it to the worker, as one step.
pub async fn set_paused(ctx: &Ctx, paused: bool) -> Result<Response, ApiError> {
    let _one_at_a_time = ctx.sync.pause_order.lock().await;
    let value = if paused { b"1" } else { b"0" };
    ctx.writer
        .submit(WriteCmd::SetMeta {
            key: META_PAUSED,
            value: value.to_vec(),
        })
        .await?;
    ctx.sync.set_paused(paused);
    Ok(Response::Ok {})
}
