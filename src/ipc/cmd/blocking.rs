//! Store reads off the async runtime. A redb read may touch the disk (a
//! page not in the cache) and must not stall the runtime's few threads,
//! which also run every other connection: [`read`] runs it on tokio's
//! blocking pool, so each call site stays one line.

use crate::ipc::context::Ctx;
use crate::ipc::wire::{ApiError, ErrorCode};
use crate::store::{Store, StoreError};

/// How long a read waits for a re-open of the store (after a failed
/// commit) to finish before it reports [`StoreError::Reopening`]: a little
/// longer than the re-open itself may take.
const REOPEN_PATIENCE: std::time::Duration = std::time::Duration::from_secs(6);

/// Runs `f` against the store on the blocking pool. While the store is
/// being re-opened (a moment after a failed commit) the read is tried
/// again until it is back, so an app or `syncd status` does not get an
/// error for a state that lasts milliseconds; the runtime's threads are
/// never blocked meanwhile.
pub async fn read<T, F>(ctx: &Ctx, f: F) -> Result<T, ApiError>
where
    F: Fn(&Store) -> Result<T, StoreError> + Send + Sync + 'static,
    T: Send + 'static,
{
    let f = std::sync::Arc::new(f);
    let deadline = tokio::time::Instant::now() + REOPEN_PATIENCE;
    loop {
        let (store, f) = (ctx.store.clone(), f.clone());
        match tokio::task::spawn_blocking(move || f(&store)).await {
            Ok(Err(StoreError::Reopening)) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
            Ok(r) => {
                return r.map_err(|e| {
                    ctx.store.read_failed(&e);
                    ApiError::from(e)
                })
            }
            Err(e) => {
                if e.is_panic() {
                    ctx.store.read_panicked(&e.to_string());
                }
                return Err(ApiError::new(
                    ErrorCode::Internal,
                    format!("a store read failed: {e}"),
                ));
            }
        }
    }
}
