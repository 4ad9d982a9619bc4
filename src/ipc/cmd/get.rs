//! `get`: one record by its local id, read straight from the store (reads
//! never go through the writer). A missing record is `not_found`.

use crate::ipc::context::Ctx;
use crate::ipc::wire::{ApiError, ErrorCode, Response};

use super::blocking::read;
use super::check::check_names;

pub async fn apply(ctx: &Ctx, collection: String, id: String) -> Result<Response, ApiError> {
    check_names(&collection, Some(&id))?;
    let (c, i) = (collection.clone(), id.clone());
    match read(ctx, move |s| s.get(&c, &i)).await? {
        Some(mut r) => {
            r.attachments = super::attach::views(ctx, &r.data.0);
            Ok(Response::Record(r))
        }
        None => Err(ApiError::new(
            ErrorCode::NotFound,
            format!("no record {id:?} in collection {collection:?}"),
        )),
    }
}
