//! `resolve`: settles a parked conflict with one side (`take`) or a new
//! document (`data`). Its own file because the request has a rule of its
//! own: it needs at least one of the two.

use crate::ipc::context::Ctx;
use crate::ipc::wire::{ApiError, Doc, ErrorCode, Response, Side};
use crate::store::writer::WriteCmd;

use super::check::{check_doc, check_names, max_document_bytes, written};

pub async fn apply(
    ctx: &Ctx,
    collection: String,
    id: String,
    take: Option<Side>,
    data: Option<Doc>,
) -> Result<Response, ApiError> {
    check_names(&collection, Some(&id))?;
    let data = match data {
        Some(d) => Some(check_doc(d, max_document_bytes(ctx))?),
        None => None,
    };
    if take.is_none() && data.is_none() {
        return Err(ApiError::new(
            ErrorCode::BadRequest,
            "resolve needs take (local or server) or data",
        ));
    }
    let cmd = WriteCmd::ResolveParked {
        collection,
        id,
        take,
        data,
    };
    Ok(written(ctx.writer.submit(cmd).await?))
}
