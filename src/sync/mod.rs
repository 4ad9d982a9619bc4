//! The sync engine: a worker that drains the queue to the backend, with its
//! decisions kept in pure modules ([`backoff`], [`machine`]; the conflict strategies are
//! [`crate::domain::conflict`])
//! so they can be tested and simulated without sockets or clocks.

pub mod attachments;
pub mod backoff;
pub mod channel;
pub mod couch_transport;
pub mod downloader;
pub mod machine;
pub mod netwatch;
pub mod pull;
pub mod reads;
pub mod scoped_pull;
pub mod transport;
pub mod uploader;
pub mod worker;

#[cfg(test)]
mod scoped_pull_tests;
#[cfg(test)]
mod sim_tests;
#[cfg(test)]
mod worker_sim_tests;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::{watch, Notify};

/// What `syncd status` calls the worker's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Online,
    Offline,
    Backoff,
    Paused,
    AuthError,
    /// The backend's replies are not the protocol's (a redirect, an HTML
    /// page, an unlisted status): the URL is probably wrong. Every op is
    /// kept; retried with backoff.
    BackendError,
    /// This device's store failed during a sync round (a full disk, an
    /// I/O error, wrong permissions): nothing is wrong with the backend.
    /// Every op is kept; retried with backoff (at most a few seconds
    /// apart, so sync resumes soon after the disk has room again).
    LocalStoreError,
}

impl State {
    /// The name `syncd status` shows.
    pub fn as_str(self) -> &'static str {
        match self {
            State::Online => "online",
            State::Offline => "offline",
            State::Backoff => "backoff",
            State::Paused => "paused",
            State::AuthError => "auth_error",
            State::BackendError => "backend_error",
            State::LocalStoreError => "local_store_error",
        }
    }
}

/// The worker's externally visible condition.
#[derive(Debug, Clone, PartialEq)]
pub struct SyncStatus {
    pub state: State,
    pub last_error: Option<String>,
    pub next_retry_at: Option<i64>,
    /// How remote changes arrive: `live` or `polling every Ns`; `None`
    /// without a backend.
    pub remote_changes: Option<String>,
    /// When the last pull succeeded (ms since the epoch).
    pub last_pull_at: Option<i64>,
}

/// Shared between the worker and the request handlers: they read status
/// and poke the worker; only the worker changes the state.
pub struct SyncControl {
    status: Mutex<SyncStatus>,
    paused: AtomicBool,
    /// Held by a pause or resume from its durable write until the
    /// in-memory flag is set, so racing ones cannot leave the two
    /// disagreeing.
    pub pause_order: tokio::sync::Mutex<()>,
    /// Wakes the worker: new work, `syncd sync`, pause/resume, config change.
    pub wake: Notify,
    /// The app subscribed to or unsubscribed from a scope: the running
    /// pull asks for the old set and is started again.
    pub scopes_changed: Notify,
    /// Whether the backend announced `scopes` at its last probe; `None`
    /// before the first probe of the current backend (or without one).
    /// `subscribe --wait` refuses at once a wait that could never end.
    backend_scopes: watch::Sender<Option<bool>>,
}

impl SyncControl {
    pub fn new(paused: bool) -> Arc<Self> {
        Arc::new(SyncControl {
            status: Mutex::new(SyncStatus {
                state: if paused {
                    State::Paused
                } else {
                    State::Offline
                },
                last_error: None,
                next_retry_at: None,
                remote_changes: None,
                last_pull_at: None,
            }),
            paused: AtomicBool::new(paused),
            pause_order: tokio::sync::Mutex::new(()),
            wake: Notify::new(),
            scopes_changed: Notify::new(),
            backend_scopes: watch::Sender::new(None),
        })
    }

    /// See [`SyncControl::set_backend_scopes`].
    pub fn backend_scopes(&self) -> watch::Receiver<Option<bool>> {
        self.backend_scopes.subscribe()
    }

    /// The worker's word on the backend's `scopes` feature: `Some` after
    /// each probe, `None` when the backend changed and is not probed yet.
    pub fn set_backend_scopes(&self, scopes: Option<bool>) {
        self.backend_scopes.send_if_modified(|v| {
            let changed = *v != scopes;
            *v = scopes;
            changed
        });
    }

    pub fn status(&self) -> SyncStatus {
        match self.status.lock() {
            Ok(s) => s.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    /// Publishes the worker's status. The paused flag has the last word
    /// on paused: a round that read the status before a `pause` (or a
    /// `resume`) finishes after it, and must not undo what the app was
    /// just told (seen under load: `/health` healthy right after `pause`).
    pub fn set_status(&self, mut s: SyncStatus) {
        let mut g = match self.status.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        if self.is_paused() {
            s.state = State::Paused;
            s.next_retry_at = None;
        } else if s.state == State::Paused {
            s.state = State::Offline;
        }
        *g = s;
    }

    pub fn is_paused(&self) -> bool {
        self.paused.load(Ordering::SeqCst)
    }

    /// Pauses or resumes; the state shows at once, before the worker has
    /// woken up to act on it.
    pub fn set_paused(&self, p: bool) {
        self.paused.store(p, Ordering::SeqCst);
        let mut s = self.status();
        s.state = if p {
            State::Paused
        } else if s.state == State::Paused {
            State::Offline
        } else {
            s.state
        };
        s.next_retry_at = None;
        self.set_status(s);
        self.wake.notify_one();
    }

    pub fn wake(&self) {
        self.wake.notify_one();
    }
}

/// A store or writer failure inside a push or pull round: not the
/// backend's fault, so it is a state of its own ([`State::LocalStoreError`]),
/// never shown as backend backoff.
pub(crate) fn local(e: impl std::fmt::Display) -> crate::backend::client::Failure {
    crate::backend::client::Failure::LocalStore {
        reason: format!("local store: {e}"),
    }
}

#[cfg(test)]
mod pause_tests {
    use super::*;

    /// A worker round that read the status before a `pause` (or `resume`)
    /// and publishes after it does not undo it: the flag decides.
    #[test]
    fn a_stale_publish_does_not_undo_a_pause_or_a_resume() {
        let c = SyncControl::new(false);
        let mut stale = c.status();
        stale.state = State::Online;
        stale.next_retry_at = Some(5);
        c.set_paused(true);
        c.set_status(stale.clone());
        assert_eq!(c.status().state, State::Paused);
        assert_eq!(c.status().next_retry_at, None);
        stale.state = State::Paused;
        c.set_paused(false);
        c.set_status(stale);
        assert_eq!(c.status().state, State::Offline);
    }
}
