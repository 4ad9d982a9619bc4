//! `check_store`: the full check of the store (`syncd check` against a
//! running daemon).
//!
//! Exists because a running daemon holds the store file open and writes
//! it: only the daemon can check it at a moment when no commit is under
//! way. The writer runs the check between two commits (writes wait
//! meanwhile); it reads the file through a read-only overlay and changes
//! nothing.

use crate::ipc::context::Ctx;
use crate::ipc::wire::{ApiError, Response, StoreCheckView};
use crate::store::writer::{WriteCmd, WriteOutcome};

pub async fn apply(ctx: &Ctx) -> Result<Response, ApiError> {
    match ctx.writer.submit(WriteCmd::CheckStore).await? {
        WriteOutcome::Checked(r) => Ok(Response::StoreCheck(StoreCheckView::new(
            ctx.store.path(),
            &r,
        ))),
        other => Err(ApiError::new(
            crate::ipc::wire::ErrorCode::Internal,
            format!("unexpected answer from the writer: {other:?}"),
        )),
    }
}
