//! `put`: create or replace a record. Its own file because it is the one
//! write whose id may be minted by the daemon (when the app gives none).

use crate::ipc::context::Ctx;
use crate::ipc::wire::{ApiError, Doc, Response};
use crate::store::writer::WriteCmd;

use super::check::{check_doc, check_names, max_document_bytes, written};

pub async fn apply(
    ctx: &Ctx,
    collection: String,
    id: Option<String>,
    data: Doc,
    scope: Option<String>,
) -> Result<Response, ApiError> {
    check_names(&collection, id.as_deref())?;
    if let Some(s) = &scope {
        super::check::check_scope_name(s)?;
    }
    let data = check_doc(data, max_document_bytes(ctx))?;
    let cmd = WriteCmd::Put {
        collection,
        id,
        data,
        client_ts: crate::domain::clock::now_ms(),
        scope,
    };
    Ok(written(
        ctx.writer
            .submit(cmd)
            .await
            .inspect(|_| ctx.metrics.wrote())?,
    ))
}
