//! Uploads beside the push: the content an op references goes to the
//! backend in a task of its own, while the ops that do not wait for it
//! are sent.
//!
//! Why: a 1 GB attachment takes minutes to upload, and the ops queued
//! behind it on other records must not wait that long. The worker asks
//! [`Uploader::ready`] for each op's content while it builds a batch: the
//! content the backend holds is ready; other content gets an upload task
//! (at most [`PARALLEL`] at a time), and the op and every later op of its
//! record stay queued until the next round after the upload. A failed
//! upload is started again after a backoff; when nothing else can be
//! sent, the worker sleeps until an upload ends (it wakes the worker as
//! new work does), pulling meanwhile.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Notify, Semaphore};
use tokio::task::JoinHandle;

use crate::backend::client::Failure;
use crate::domain::attachment::AttachmentRef;
use crate::sync::attachments::{Transfers, UploadError};
use crate::sync::transport::Transport;

/// Uploads that run at once.
pub const PARALLEL: usize = 2;

const FIRST_RETRY: Duration = Duration::from_millis(500);
const MAX_RETRY: Duration = Duration::from_secs(30);

/// Content in a scope.
type Key = (Option<String>, String);

/// Whether an op's content is on the backend.
#[derive(Debug, PartialEq, Eq)]
pub enum Ready {
    Yes,
    /// An upload runs (or was just started, or waits for its retry).
    Uploading,
    /// The backend will not take it, with its reason.
    Refused(String),
}

struct Task {
    handle: JoinHandle<()>,
    /// Set when the task ends: `Ok` uploaded, `Err` why not.
    outcome: Arc<std::sync::Mutex<Option<Result<(), UploadError>>>>,
    /// Backoff before the next start, after a failure.
    retry: Duration,
    /// Why the previous attempt at this content failed, while this one
    /// waits or runs: what the waiting op shows.
    failed: Option<Failure>,
}

impl Task {
    fn outcome(&self) -> Option<Result<(), UploadError>> {
        self.outcome
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

/// The worker's upload tasks.
pub struct Uploader {
    transfers: Arc<Transfers>,
    tasks: HashMap<Key, Task>,
    slots: Arc<Semaphore>,
    /// Woken when an upload ends: the worker's "new work" signal.
    wake: Arc<Notify>,
}

impl Uploader {
    pub fn new(transfers: Arc<Transfers>, wake: Arc<Notify>) -> Uploader {
        Uploader {
            transfers,
            tasks: HashMap::new(),
            slots: Arc::new(Semaphore::new(PARALLEL)),
            wake,
        }
    }

    /// Whether the backend holds `r` in `scope`; if not, an upload runs.
    pub fn ready(
        &mut self,
        client: &Arc<dyn Transport>,
        scope: Option<&str>,
        r: &AttachmentRef,
    ) -> Ready {
        let key = (scope.map(str::to_owned), r.sha256.clone());
        if self.transfers.is_confirmed(scope, &r.sha256) {
            self.tasks.remove(&key);
            return Ready::Yes;
        }
        let (retry, failed) = match self.tasks.get(&key).map(|t| (t, t.outcome())) {
            Some((_, None)) => return Ready::Uploading,
            // Refused: the op is dead-lettered now; a retry asks again.
            Some((_, Some(Err(UploadError::Refused(why))))) => {
                self.tasks.remove(&key);
                return Ready::Refused(why);
            }
            Some((t, Some(Err(UploadError::Failed(f))))) => (t.retry, Some(f)),
            Some((t, Some(Ok(())))) => (t.retry, t.failed.clone()),
            None => (Duration::ZERO, None),
        };
        let outcome = Arc::new(std::sync::Mutex::new(None));
        let handle = self.spawn(
            client.clone(),
            key.clone(),
            r.clone(),
            retry,
            outcome.clone(),
        );
        let retry = (retry * 2).clamp(FIRST_RETRY, MAX_RETRY);
        self.tasks.insert(
            key,
            Task {
                handle,
                outcome,
                retry,
                failed,
            },
        );
        Ready::Uploading
    }

    fn spawn(
        &self,
        client: Arc<dyn Transport>,
        key: Key,
        r: AttachmentRef,
        delay: Duration,
        outcome: Arc<std::sync::Mutex<Option<Result<(), UploadError>>>>,
    ) -> JoinHandle<()> {
        let (transfers, slots) = (self.transfers.clone(), self.slots.clone());
        let wake = self.wake.clone();
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            let _slot = slots.acquire_owned().await;
            let result = transfers
                .upload(client.as_ref(), key.0.as_deref(), &r)
                .await;
            match &result {
                Err(UploadError::Failed(f)) => {
                    tracing::warn!(sha256 = %r.sha256, reason = f.reason(), "attachment upload failed; it is tried again");
                }
                Err(UploadError::Refused(why)) => {
                    tracing::warn!(sha256 = %r.sha256, reason = %why, "the backend refuses the attachment content");
                }
                Ok(()) => {}
            }
            *outcome.lock().unwrap_or_else(|p| p.into_inner()) = Some(result);
            wake.notify_one();
        })
    }

    /// The failure of an upload that ended without success (it starts
    /// again, after its backoff, at the next [`Uploader::ready`]).
    pub fn failure(&self) -> Option<Failure> {
        self.tasks.values().find_map(|t| match t.outcome() {
            Some(Err(UploadError::Failed(f))) => Some(f),
            None => t.failed.clone(),
            _ => None,
        })
    }

    /// Whether uploads run or wait for their retry: the worker then looks
    /// further down the queue for ops that need none.
    pub fn busy(&self) -> bool {
        !self.tasks.is_empty()
    }

    /// Drops every upload (another backend or other credentials).
    pub fn clear(&mut self) {
        for (_, t) in self.tasks.drain() {
            t.handle.abort();
        }
    }
}

impl Drop for Uploader {
    fn drop(&mut self) {
        self.clear();
    }
}
