//! The request kinds, one file each (tokio's mini-redis `cmd/` is the
//! model): [`apply`] sends a decoded [`Request`] to the file that answers
//! it, so adding a request kind means adding a file and a match arm here.
//! `watch` and the waiting part of `wait_synced` also need the session
//! (a subscription outlives its request; a wait ends when the client
//! leaves), which calls into them directly.

pub mod attach;
pub mod blocking;
pub mod check;
pub mod conflicts;
pub mod control;
pub mod dead_letters;
pub mod delete;
pub mod get;
pub mod list;
pub mod live_query;
pub mod metrics;
pub mod patch;
pub mod put;
pub mod query;
pub mod queue;
pub mod resolve;
pub mod scopes;
pub mod status;
pub mod store_check;
pub mod wait_synced;
pub mod watch;

use crate::ipc::context::Ctx;
use crate::ipc::wire::{ApiError, ErrorCode, Request, Response};

/// Most records one `list` returns (and ops one `queue` returns).
pub const MAX_LIST: u32 = 10_000;

/// Answers one request. `watch` is refused here: it needs the session.
pub async fn apply(ctx: &Ctx, req: Request) -> Result<Response, ApiError> {
    match req {
        Request::Put {
            collection,
            id,
            data,
            scope,
        } => put::apply(ctx, collection, id, data, scope).await,
        Request::Patch {
            collection,
            id,
            data,
        } => patch::apply(ctx, collection, id, data).await,
        Request::Delete { collection, id } => delete::apply(ctx, collection, id).await,
        Request::Get { collection, id } => get::apply(ctx, collection, id).await,
        Request::List {
            collection,
            start,
            limit,
        } => list::apply(ctx, collection, start, limit).await,
        Request::Status {} => status::status(ctx)
            .await
            .map(|s| Response::Status(Box::new(s))),
        Request::Queue { limit } => queue::apply(ctx, limit).await,
        Request::Watch { .. } | Request::WatchQuery { .. } => Err(ApiError::new(
            ErrorCode::BadRequest,
            "watch and watch_query are handled by the session",
        )),
        Request::AttachBegin { .. }
        | Request::AttachChunk { .. }
        | Request::AttachEnd { .. }
        | Request::AttachAbort { .. } => Err(ApiError::new(
            ErrorCode::BadRequest,
            "uploads are handled by the session",
        )),
        Request::Detach {
            collection,
            id,
            name,
        } => attach::detach(ctx, collection, id, name).await,
        Request::ReadAttachment {
            collection,
            id,
            name,
            offset,
            length,
        } => attach::read_range(ctx, collection, id, name, offset, length).await,
        Request::Query {
            collection,
            selector,
            sort,
            limit,
            cursor,
        } => query::apply(ctx, collection, selector, sort, limit, cursor).await,
        Request::Sync {} => Ok(control::sync(ctx)),
        Request::Pause {} => control::set_paused(ctx, true).await,
        Request::Resume {} => control::set_paused(ctx, false).await,
        Request::Conflicts {} => conflicts::apply(ctx).await,
        Request::Resolve {
            collection,
            id,
            take,
            data,
        } => resolve::apply(ctx, collection, id, take, data).await,
        Request::DeadLetters {} => dead_letters::list(ctx).await,
        Request::Retry { op_id } => dead_letters::retry(ctx, op_id).await,
        Request::Discard { op_id } => dead_letters::discard(ctx, op_id).await,
        Request::WaitSynced { op_id } => wait_synced::apply(ctx, op_id).await,
        Request::Metrics {} => metrics::apply(ctx).await,
        Request::CheckStore {} => store_check::apply(ctx).await,
        Request::Subscribe { scope, wait } => scopes::subscribe(ctx, scope, wait).await,
        Request::Unsubscribe { scope } => scopes::unsubscribe(ctx, scope).await,
        Request::Scopes {} => scopes::list(ctx).await,
    }
}
