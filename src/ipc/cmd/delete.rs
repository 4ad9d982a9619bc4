//! `delete`: remove a record (and queue the delete for the server). Its
//! own file so each request kind reads on its own, as in mini-redis.

use crate::ipc::context::Ctx;
use crate::ipc::wire::{ApiError, Response};
use crate::store::writer::WriteCmd;

use super::check::{check_names, written};

pub async fn apply(ctx: &Ctx, collection: String, id: String) -> Result<Response, ApiError> {
    check_names(&collection, Some(&id))?;
    let cmd = WriteCmd::Delete {
        collection,
        id,
        client_ts: crate::domain::clock::now_ms(),
    };
    Ok(written(
        ctx.writer
            .submit(cmd)
            .await
            .inspect(|_| ctx.metrics.wrote())?,
    ))
}
