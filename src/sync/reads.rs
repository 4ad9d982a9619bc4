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
        let noted = |r: Result<T, StoreError>| {
            r.map_err(|e| {
                store.read_failed(&e);
                local(e)
            })
        };
        match self {
            ReadMode::Inline => noted(f(store)),
            ReadMode::Pool => {
                let owned = store.clone();
                match tokio::task::spawn_blocking(move || f(&owned)).await {
                    Ok(r) => noted(r),
                    Err(e) => {
                        if e.is_panic() {
                            store.read_panicked(&e.to_string());
                        }
                        Err(local(format!("a store read failed: {e}")))
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A read that meets damage (a value that does not decode, or a panic
    /// in the engine) marks the store damaged, so writes stop and status
    /// says so at once; a read that fails otherwise does not.
    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn damage_met_by_a_read_marks_the_store() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path(), 1 << 20).expect("open");
        let r: Result<(), _> = ReadMode::Pool
            .read(&store, |_| Err(StoreError::NeedsReopen))
            .await;
        assert!(r.is_err());
        assert_eq!(store.damage(), None, "not damage");
        let r: Result<(), _> = ReadMode::Pool
            .read(&store, |_| -> Result<(), StoreError> {
                panic!("unreachable page")
            })
            .await;
        assert!(r.is_err());
        assert!(store.damage().is_some_and(|d| d.contains("panicked")));
        let other = tempfile::tempdir().expect("tempdir");
        let store = Store::open(other.path(), 1 << 20).expect("open");
        let r: Result<(), _> = ReadMode::Inline
            .read(&store, |_| {
                Err(StoreError::Corrupt {
                    what: "record",
                    detail: "bad bytes".into(),
                })
            })
            .await;
        assert!(r.is_err());
        assert!(store.damage().is_some_and(|d| d.contains("bad bytes")));
    }

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
