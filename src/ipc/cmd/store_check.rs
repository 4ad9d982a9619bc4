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
        WriteOutcome::Checked(r) => Ok(Response::StoreCheck(view(ctx.store.path(), &r))),
        other => Err(ApiError::new(
            crate::ipc::wire::ErrorCode::Internal,
            format!("unexpected answer from the writer: {other:?}"),
        )),
    }
}

/// The wire view of `r`, a check of the store file at `path`.
pub fn view(path: &std::path::Path, r: &crate::store::check::Report) -> StoreCheckView {
    StoreCheckView {
        path: path.display().to_string(),
        store_bytes: std::fs::metadata(path).map(|m| m.len()).unwrap_or(0),
        problem_count: r.count,
        problems: r.problems.iter().map(|p| p.to_string()).collect(),
        damaged: r.problems.iter().any(|p| p.is_damage()),
        advice: r.advice().to_owned(),
        records: r.records,
        queued_ops: r.queued,
        conflicts: r.conflicts,
        dead_letters: r.dead,
    }
}
