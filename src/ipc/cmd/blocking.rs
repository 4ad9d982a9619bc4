//! Store reads off the async runtime. A redb read may touch the disk (a
//! page not in the cache) and must not stall the runtime's few threads,
//! which also run every other connection: [`read`] runs it where blocking
//! is allowed (see [`in_place_or_pool`]), so each call site stays one line.

use crate::ipc::context::Ctx;
use crate::ipc::wire::{ApiError, ErrorCode};
use crate::store::{Store, StoreError};

/// How long a read waits for a re-open of the store (after a failed
/// commit) to finish before it reports [`StoreError::Reopening`]: a little
/// longer than the re-open itself may take.
const REOPEN_PATIENCE: std::time::Duration = std::time::Duration::from_secs(6);

/// Runs `f` against the store where it may block. While the store is
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
        match in_place_or_pool(move || f(&store)).await {
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
                if let OffRuntime::Panicked(what) = &e {
                    ctx.store.read_panicked(what);
                }
                return Err(ApiError::new(
                    ErrorCode::Internal,
                    format!("a store read failed: {e}"),
                ));
            }
        }
    }
}

/// Why a read off the runtime gave no answer.
#[derive(Debug)]
enum OffRuntime {
    /// The read panicked (in the storage engine, say): the message.
    Panicked(String),
    /// The runtime is shutting down and dropped the read.
    Cancelled,
}

impl std::fmt::Display for OffRuntime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            OffRuntime::Panicked(what) => write!(f, "it panicked: {what}"),
            OffRuntime::Cancelled => f.write_str("the daemon is shutting down"),
        }
    }
}

/// Runs `f` where it may block. On the daemon's multi-thread runtime that
/// is this very thread, with `block_in_place`: the runtime hands this
/// thread's other tasks to another thread while `f` runs, so none of them
/// waits, and the read starts at once instead of waiting for a
/// blocking-pool thread to wake and then for this task to be woken again.
/// Those two thread switches cost more than a small read itself on a
/// small VM (docs/performance.md, "Local queries"). Elsewhere (a
/// current-thread runtime in a test) it goes to the blocking pool. A panic
/// in `f` is caught either way.
async fn in_place_or_pool<T, F>(f: F) -> Result<T, OffRuntime>
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    use tokio::runtime::{Handle, RuntimeFlavor};
    let multi =
        Handle::try_current().is_ok_and(|h| h.runtime_flavor() == RuntimeFlavor::MultiThread);
    if multi {
        let caught = tokio::task::block_in_place(|| {
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(f))
        });
        return caught.map_err(|p| OffRuntime::Panicked(panic_text(p.as_ref())));
    }
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| match e.try_into_panic() {
            Ok(p) => OffRuntime::Panicked(panic_text(p.as_ref())),
            Err(_) => OffRuntime::Cancelled,
        })
}

/// A panic's message, when it has one.
fn panic_text(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(no message)".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A read runs in place on the daemon's runtime and on the blocking
    /// pool elsewhere, and a panic in it is caught with its message on
    /// both, so a storage engine panic is reported, not a dead session.
    #[test]
    fn reads_run_off_the_runtime_and_a_panic_is_caught() {
        let multi = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .build()
            .unwrap();
        let single = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        for rt in [&multi, &single] {
            let in_place =
                rt.handle().runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread;
            rt.block_on(async move {
                let ran = tokio::spawn(async {
                    let caller = std::thread::current().id();
                    let on = in_place_or_pool(|| std::thread::current().id()).await;
                    (caller, on.unwrap())
                })
                .await
                .unwrap();
                // In place on the multi-thread runtime; on the pool (never
                // the runtime's only thread) on the current-thread one.
                assert_eq!(ran.0 == ran.1, in_place, "{ran:?}");
                let failed = tokio::spawn(in_place_or_pool(|| -> u32 { panic!("page 7 is torn") }))
                    .await
                    .unwrap();
                match failed {
                    Err(OffRuntime::Panicked(what)) => assert_eq!(what, "page 7 is torn"),
                    other => panic!("{other:?}"),
                }
            });
        }
    }
}
