//! `conflicts`: the conflicts parked for manual resolution, as the store
//! holds them. Read-only; `resolve` settles one.

use crate::ipc::context::Ctx;
use crate::ipc::wire::{ApiError, Response};

use super::blocking::read;

pub async fn apply(ctx: &Ctx) -> Result<Response, ApiError> {
    Ok(Response::Conflicts(read(ctx, |s| s.conflicts()).await?))
}
