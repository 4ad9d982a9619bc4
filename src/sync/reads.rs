//! Where the sync worker's and the pull task's store reads run.
//!
//! A redb read may touch the disk (a page not in the cache, a slow or full
//! disk) and must not stall the runtime's few threads, which also serve
//! every app connection: in the daemon the reads run on tokio's blocking
//! pool, as the socket side's do (`ipc/cmd/blocking.rs`). The worker
//! simulation runs on one paused-clock thread and must replay a seed
//! exactly; a pool thread would make when a read ends depend on the OS, so
//! there the reads run inline, the way the simulation runs the writer as a
//! task. This seam is the one place that choice is made.

use crate::backend::client::Failure;
use crate::store::{Store, StoreError};
use crate::sync::local;

/// How the worker runs its store reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadMode {
    /// On tokio's blocking pool (the daemon).
    Pool,
    /// On the calling task (the deterministic simulation).
    Inline,
}

impl ReadMode {
    /// Runs `f` against the store; a store error is a
    /// [`Failure::LocalStore`], never taken for an answer.
    pub async fn read<T, F>(self, store: &Store, f: F) -> Result<T, Failure>
    where
        F: FnOnce(&Store) -> Result<T, StoreError> + Send + 'static,
        T: Send + 'static,
    {
        match self {
            ReadMode::Inline => f(store).map_err(local),
            ReadMode::Pool => {
                let store = store.clone();
                match tokio::task::spawn_blocking(move || f(&store)).await {
                    Ok(r) => r.map_err(local),
                    Err(e) => Err(local(format!("a store read failed: {e}"))),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The daemon's mode never runs a read on the runtime's thread.
    #[tokio::test(flavor = "current_thread")]
    async fn pool_reads_run_off_the_runtime_thread() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path(), 1 << 20).expect("open");
        let here = std::thread::current().id();
        let there = ReadMode::Pool
            .read(&store, |s| {
                s.queue_depth().map(|_| std::thread::current().id())
            })
            .await
            .expect("read");
        assert_ne!(here, there);
        let inline = ReadMode::Inline
            .read(&store, |_| Ok(std::thread::current().id()))
            .await
            .expect("read");
        assert_eq!(here, inline);
    }
}
