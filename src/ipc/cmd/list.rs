//! `list`: one page of a collection in id order. Its own file because of
//! paging: a page stops at `limit` records or at the reply budget, and
//! then names the `next` key.

use crate::ipc::context::Ctx;
use crate::ipc::wire::{ApiError, Response};

use super::blocking::read;
use super::check::{check_names, reply_budget};
use super::MAX_LIST;

/// Records per page when the app names no limit.
const DEFAULT_LIMIT: u32 = 100;

pub async fn apply(
    ctx: &Ctx,
    collection: String,
    start: Option<String>,
    limit: Option<u32>,
) -> Result<Response, ApiError> {
    check_names(&collection, None)?;
    let limit = limit.unwrap_or(DEFAULT_LIMIT).clamp(1, MAX_LIST) as usize;
    let budget = reply_budget(ctx);
    let (records, next) = read(ctx, move |s| {
        s.list(&collection, start.as_deref(), limit, budget)
    })
    .await?;
    Ok(Response::Records { records, next })
}
