//! Coalesces the identical change-log reads of waiters woken together.
//!
//! Why a file of its own: a single-tenant node holding thousands of waiting
//! `GET v1/changes` (every device at the head of the same log) is woken by
//! each commit, and every waiter then asks the store for the same page from
//! the same cursor. Without sharing, one commit costs one store read per
//! waiter (about 130 µs each on PostgreSQL, measured with 10,000 waiters in
//! `bench/fleet_wait.rs`); with it, one read per distinct cursor.
//!
//! Sharing is sound only between readers that may see the same data: a read
//! is keyed by `(since, limit, woken, unscoped)`, the wake-up value and the
//! count of unscoped wake-ups (see [`Feed`](super::feed::Feed)) the reader
//! saw before reading. Any read started under that key started after both
//! were published, so it sees every commit they announced; a later commit
//! publishes a greater value, which wakes the reader again and, being past
//! what the shared read saw, sends it back to the store.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};

use tokio::sync::OnceCell;

use super::store::{ChangeSlice, StoreError};

type Key = (u64, usize, u64, u64);
type Cell = Arc<OnceCell<Result<ChangeSlice, StoreError>>>;

/// What a reader saw before reading: the wake-up value and the count of
/// unscoped wake-ups.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Seen {
    pub woken: u64,
    pub unscoped: u64,
}

/// The reads in flight, by key.
#[derive(Debug, Default)]
pub struct SharedReads {
    inflight: Mutex<HashMap<Key, Cell>>,
}

impl SharedReads {
    /// The page `(since, limit)` for a reader that saw wake-up `woken` and
    /// `unscoped` unscoped wake-ups ([`Seen`]): `read` runs once among the
    /// readers that ask for the same key while it runs; each gets a copy.
    pub async fn read<F, Fut>(
        &self,
        since: u64,
        limit: usize,
        seen: Seen,
        read: F,
    ) -> Result<ChangeSlice, StoreError>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<ChangeSlice, StoreError>>,
    {
        let key = (since, limit, seen.woken, seen.unscoped);
        let (cell, _guard) = {
            let mut map = self.inflight.lock().unwrap_or_else(|e| e.into_inner());
            match map.get(&key) {
                Some(cell) => (Arc::clone(cell), None),
                None => {
                    let cell: Cell = Arc::new(OnceCell::new());
                    map.insert(key, Arc::clone(&cell));
                    let guard = Forget {
                        reads: self,
                        key,
                        cell: Arc::clone(&cell),
                    };
                    (cell, Some(guard))
                }
            }
        };
        // If the first reader is cancelled mid-read, the next one in the
        // cell runs its own `read` (OnceCell hands initialisation on).
        cell.get_or_init(read).await.clone()
    }

    /// Reads in flight (for tests).
    pub fn in_flight(&self) -> usize {
        self.inflight
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .len()
    }
}

/// Removes the first reader's entry when it is done (or cancelled), so that
/// readers arriving afterwards read afresh.
struct Forget<'a> {
    reads: &'a SharedReads,
    key: Key,
    cell: Cell,
}

impl Drop for Forget<'_> {
    fn drop(&mut self) {
        let mut map = self
            .reads
            .inflight
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if map
            .get(&self.key)
            .is_some_and(|c| Arc::ptr_eq(c, &self.cell))
        {
            map.remove(&self.key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn seen(woken: u64) -> Seen {
        Seen { woken, unscoped: 0 }
    }

    fn page(head: u64) -> Result<ChangeSlice, StoreError> {
        Ok(ChangeSlice {
            entries: Vec::new(),
            read_to: None,
            more: false,
            head,
        })
    }

    #[tokio::test]
    async fn readers_of_one_key_share_one_read_and_later_ones_read_afresh() {
        let reads = Arc::new(SharedReads::default());
        let runs = Arc::new(AtomicUsize::new(0));
        let (release, wait) = tokio::sync::watch::channel(false);
        let mut tasks = Vec::new();
        for _ in 0..50 {
            let (reads, runs, mut wait) = (Arc::clone(&reads), Arc::clone(&runs), wait.clone());
            tasks.push(tokio::spawn(async move {
                reads
                    .read(7, 100, seen(3), || async move {
                        runs.fetch_add(1, Ordering::SeqCst);
                        let _ = wait.wait_for(|go| *go).await;
                        page(9)
                    })
                    .await
            }));
        }
        // Every reader has joined the one read before it is let go.
        while reads.in_flight() != 1 {
            tokio::task::yield_now().await;
        }
        for _ in 0..100 {
            tokio::task::yield_now().await;
        }
        release.send_replace(true);
        for t in tasks {
            assert_eq!(t.await.expect("task").expect("read").head, 9);
        }
        assert_eq!(runs.load(Ordering::SeqCst), 1);
        assert_eq!(reads.in_flight(), 0, "forgotten once done");
        // Another wake-up value, or the same key later: a read of its own.
        let again = reads.read(7, 100, seen(3), || async { page(10) }).await;
        assert_eq!(again.expect("read").head, 10);
        let other = reads.read(7, 100, seen(4), || async { page(11) }).await;
        assert_eq!(other.expect("read").head, 11);
    }
}
