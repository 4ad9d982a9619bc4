//! `conflicts`: the conflicts parked for manual resolution, as the store
//! holds them. Read-only; `resolve` settles one.

use crate::ipc::server::Ctx;
use crate::ipc::wire::{ApiError, Response};

pub fn apply(ctx: &Ctx) -> Result<Response, ApiError> {
    Ok(Response::Conflicts(ctx.store.conflicts()?))
}
