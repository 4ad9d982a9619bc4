//! The pull side of the sync worker, as its own task so that it runs beside
//! the push rounds: a pull the server holds for up to `wait` seconds (live
//! sync) must never delay a push, nor a slow push a pull.
//!
//! One [`PullTask`] fetches every page from the stored cursor and hands each
//! to the writer, which applies it and moves the cursor in one transaction.
//! The [`Machine`](crate::sync::machine::Machine) decides when a pull starts
//! and what its end means; this file only does the I/O.

use std::sync::Arc;

use tokio::sync::{OwnedRwLockReadGuard, OwnedRwLockWriteGuard, RwLock};
use tokio::task::JoinHandle;

use crate::backend::client::Failure;
use crate::store::tables::META_CURSOR;
use crate::store::writer::{WriteCmd, WriterHandle};
use crate::store::Store;
use crate::sync::local;
use crate::sync::machine::PullDone;
use crate::sync::reads::ReadMode;
use crate::sync::transport::Transport;

/// Orders a pulled page after the verdict of a push round in flight.
///
/// Without client ids, a create this device sent may come back in a pulled
/// page before its ack has recorded the server id; applied then, it would
/// look like another device's record and become a duplicate. A push round
/// holds this lock from its request to its recorded verdicts, and a pull
/// without client ids takes it only to apply a page: the page then lands
/// after the ack, as an old version that changes nothing. With client ids
/// the page is harmless either way (the record has the same id and queued
/// ops, so it keeps its local state), and pulls do not wait for it.
///
/// Push rounds share it (a read lock): they may overlap, one sending while
/// the previous one's verdicts are recorded. A pull takes it alone.
#[derive(Clone, Default)]
pub struct RoundLock(Arc<RwLock<()>>);

/// Held by a push round until its verdicts are recorded.
pub type RoundGuard = OwnedRwLockReadGuard<()>;

impl RoundLock {
    /// For a pull: waits until no push round is in flight.
    pub async fn hold(&self) -> OwnedRwLockWriteGuard<()> {
        self.0.clone().write_owned().await
    }

    /// For a push round.
    pub async fn push(&self) -> RoundGuard {
        self.0.clone().read_owned().await
    }
}

/// What one pull needs.
pub struct PullJob {
    pub client: Arc<dyn Transport>,
    pub store: Store,
    pub writer: WriterHandle,
    /// Changes per page.
    pub limit: u32,
    /// Ask the server to hold the pull this long (live); `None`: poll.
    pub wait_s: Option<u32>,
    /// The server keeps client-chosen ids.
    pub client_ids: bool,
    pub lock: RoundLock,
    /// Where the cursor is read (see [`ReadMode`]).
    pub reads: ReadMode,
    /// The backend has scopes (revision 3): pull per scope
    /// ([`crate::sync::scoped_pull`]); `None`: `GET v1/changes`.
    pub scoped: Option<crate::sync::scoped_pull::Scoped>,
}

/// A running pull.
pub struct PullTask {
    handle: JoinHandle<Result<PullDone, Failure>>,
}

impl PullTask {
    pub fn spawn(job: PullJob) -> Self {
        PullTask {
            handle: tokio::spawn(job.run()),
        }
    }

    pub fn is_finished(&self) -> bool {
        self.handle.is_finished()
    }

    /// Waits for the end of the pull; call once.
    pub async fn done(&mut self) -> Result<PullDone, Failure> {
        match (&mut self.handle).await {
            Ok(r) => r,
            Err(e) => Err(local(format!("pull task: {e}"))),
        }
    }

    /// Stops it (as dropping it does): a page already handed to the writer
    /// still lands whole (page and cursor are one transaction), and a page
    /// applied twice changes nothing the second time.
    pub fn abort(self) {
        drop(self);
    }
}

impl Drop for PullTask {
    /// A pull never outlives its worker (a restarted worker starts its own).
    fn drop(&mut self) {
        self.handle.abort();
    }
}

impl PullJob {
    /// Runs the pull on the calling task (tests).
    #[cfg(test)]
    pub async fn run_for_test(self) -> Result<PullDone, Failure> {
        self.run().await
    }

    /// Every page from the stored cursor.
    async fn run(mut self) -> Result<PullDone, Failure> {
        if let Some(scoped) = self.scoped.take() {
            return self.run_scoped(scoped).await;
        }
        let start = tokio::time::Instant::now();
        let mut total = 0;
        loop {
            let cursor = self
                .reads
                .read(&self.store, |s| s.meta(META_CURSOR))
                .await?
                .map(|b| String::from_utf8_lossy(&b).into_owned());
            let page = self
                .client
                .changes(cursor.as_deref(), self.limit, self.wait_s)
                .await?;
            let more = page.more && !page.changes.is_empty();
            let n = page.changes.len();
            let _round = match self.client_ids {
                true => None,
                false => Some(self.lock.hold().await),
            };
            self.writer
                .submit(WriteCmd::ApplyChanges {
                    changes: page.changes,
                    cursor: page.cursor,
                })
                .await
                .map_err(local)?;
            if n > 0 {
                tracing::debug!(changes = n, "pulled");
            }
            total += n;
            if !more {
                return Ok(PullDone {
                    changes: total,
                    elapsed_ms: start.elapsed().as_millis() as i64,
                    waited: self.wait_s.is_some(),
                });
            }
        }
    }
}
