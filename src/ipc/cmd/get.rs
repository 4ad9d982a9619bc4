//! `get`: one record by its local id, read straight from the store (reads
//! never go through the writer). A missing record is `not_found`.

use crate::ipc::server::Ctx;
use crate::ipc::wire::{ApiError, ErrorCode, Response};

use super::check::check_names;

pub fn apply(ctx: &Ctx, collection: String, id: String) -> Result<Response, ApiError> {
    check_names(&collection, Some(&id))?;
    match ctx.store.get(&collection, &id)? {
        Some(r) => Ok(Response::Record(r)),
        None => Err(ApiError::new(
            ErrorCode::NotFound,
            format!("no record {id:?} in collection {collection:?}"),
        )),
    }
}
