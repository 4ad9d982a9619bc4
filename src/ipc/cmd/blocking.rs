//! Store reads off the async runtime. A redb read may touch the disk (a
//! page not in the cache) and must not stall the runtime's few threads,
//! which also run every other connection: [`read`] runs it on tokio's
//! blocking pool, so each call site stays one line.

use crate::ipc::context::Ctx;
use crate::ipc::wire::{ApiError, ErrorCode};
use crate::store::{Store, StoreError};

/// Runs `f` against the store on the blocking pool.
pub async fn read<T, F>(ctx: &Ctx, f: F) -> Result<T, ApiError>
where
    F: FnOnce(&Store) -> Result<T, StoreError> + Send + 'static,
    T: Send + 'static,
{
    let store = ctx.store.clone();
    match tokio::task::spawn_blocking(move || f(&store)).await {
        Ok(r) => r.map_err(ApiError::from),
        Err(e) => Err(ApiError::new(
            ErrorCode::Internal,
            format!("a store read failed: {e}"),
        )),
    }
}
