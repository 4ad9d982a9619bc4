//! `get`: one record by its local id, read straight from the store (reads
//! never go through the writer). A missing record is `not_found`.

use crate::ipc::context::Ctx;
use crate::ipc::wire::{ApiError, ErrorCode, Response};

use super::blocking::read;
use super::check::check_names;

pub async fn apply(ctx: &Ctx, collection: String, id: String) -> Result<Response, ApiError> {
    check_names(&collection, Some(&id))?;
    let (c, i, t) = (collection.clone(), id.clone(), ctx.transfers.clone());
    // The attachments' states read files: on the blocking pool too.
    let got = read(ctx, move |s| {
        Ok(s.get(&c, &i)?.map(|mut r| {
            r.attachments = super::attach::views(&t, &r.data.0);
            r
        }))
    });
    match got.await? {
        Some(r) => Ok(Response::Record(r)),
        None => Err(ApiError::new(
            ErrorCode::NotFound,
            format!("no record {id:?} in collection {collection:?}"),
        )),
    }
}
