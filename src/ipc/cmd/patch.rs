//! `patch`: a top-level merge into an existing record. Its own file
//! because the size limit applies twice: to the patch here and to the
//! merged document in the writer (which gets the limit in the job).

use crate::ipc::context::Ctx;
use crate::ipc::wire::{ApiError, Doc, Response};
use crate::store::writer::WriteCmd;

use super::check::{check_doc, check_names, max_document_bytes, written};

pub async fn apply(
    ctx: &Ctx,
    collection: String,
    id: String,
    data: Doc,
) -> Result<Response, ApiError> {
    check_names(&collection, Some(&id))?;
    let max_bytes = max_document_bytes(ctx);
    let data = check_doc(data, max_bytes)?;
    let cmd = WriteCmd::Patch {
        collection,
        id,
        data,
        client_ts: crate::domain::clock::now_ms(),
        max_bytes,
    };
    Ok(written(
        ctx.writer
            .submit(cmd)
            .await
            .inspect(|_| ctx.metrics.wrote())?,
    ))
}
