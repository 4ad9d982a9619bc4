//! The pull of a backend with users and scopes (protocol revision 3,
//! feature `scopes`): `GET v1/session` when it is due, then `POST v1/pull`
//! for every subscribed, readable scope at its own cursor, each scope's
//! page applied with its cursor in one writer transaction.
//!
//! Beside [`crate::sync::pull`] (which keeps the revision-2 `GET
//! v1/changes` path untouched) because the two pulls share only their
//! ending: what the worker's machine is told.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::backend::client::Failure;
use crate::backend::protocol::{
    Access, PullRequest, ScopePage, ScopeResult, ScopedChange, Session,
};
use crate::domain::scope_state::{pulled, Grant, Grants, ScopeState};
use crate::domain::Change;
use crate::store::writer::{ScopePageIn, WriteCmd};
use crate::sync::local;
use crate::sync::machine::PullDone;
use crate::sync::pull::PullJob;

/// How often the session is fetched again while online.
pub const SESSION_EVERY: Duration = Duration::from_secs(60);

/// When the session was last fetched, and whether the current
/// credentials' session has been applied. The worker makes it due on every
/// (re)connect, and starts a new generation on every change of
/// credentials; a pull makes it due when a scope is refused. Shared
/// because the pull runs as its own task.
#[derive(Clone, Default)]
pub struct SessionClock(Arc<Mutex<ClockState>>, Arc<tokio::sync::Notify>);

#[derive(Default)]
struct ClockState {
    at: Option<tokio::time::Instant>,
    /// Bumped for new credentials.
    generation: u64,
    /// The generation whose session was last applied; `None`: none yet.
    applied: Option<u64>,
}

impl SessionClock {
    fn state(&self) -> std::sync::MutexGuard<'_, ClockState> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The next pull fetches the session first.
    pub fn make_due(&self) {
        self.state().at = None;
    }

    /// New credentials: their session is due, and unknown until applied.
    pub fn new_credentials(&self) {
        let mut st = self.state();
        st.at = None;
        st.generation += 1;
    }

    /// Whether the session of the current credentials has been applied.
    pub fn applied_current(&self) -> bool {
        let st = self.state();
        st.applied == Some(st.generation)
    }

    /// Resolves when a session is applied (maybe of older credentials:
    /// ask [`Self::applied_current`]).
    pub async fn applied(&self) {
        self.1.notified().await
    }

    fn generation(&self) -> u64 {
        self.state().generation
    }

    fn due(&self) -> bool {
        self.state().at.is_none_or(|t| t.elapsed() >= SESSION_EVERY)
    }

    /// The session fetched with the credentials of `generation` was
    /// applied. One of older credentials changes nothing.
    fn fetched(&self, generation: u64) {
        let mut st = self.state();
        if st.generation != generation {
            return;
        }
        st.at = Some(tokio::time::Instant::now());
        st.applied = Some(generation);
        drop(st);
        self.1.notify_one();
    }
}

/// What a scoped pull needs beside a [`PullJob`].
#[derive(Clone)]
pub struct Scoped {
    pub session: SessionClock,
    /// `[sync] scopes`.
    pub wanted: Option<Vec<String>>,
}

/// The session's grants in the store's terms.
pub fn grants_of(s: &Session) -> Grants {
    Grants {
        sub: s.sub.clone(),
        scopes: s
            .scopes
            .iter()
            .map(|g| Grant {
                name: g.name.clone(),
                write: g.access == Access::Write,
            })
            .collect(),
    }
}

/// One scope's page in the writer's terms.
fn page_in(scope: String, p: ScopePage) -> ScopePageIn {
    let mut records = Vec::new();
    let mut gone = Vec::new();
    for ch in p.changes {
        match ch {
            ScopedChange::Record { collection, record } => {
                records.push(Change { collection, record })
            }
            ScopedChange::Gone {
                collection,
                gone: g,
            } => gone.push((collection, g.id, g.version)),
        }
    }
    ScopePageIn {
        scope,
        records,
        gone,
        cursor: p.cursor,
        more: p.more,
        remaining: p.remaining,
    }
}

/// What one `POST v1/pull` reply comes to.
struct Reply {
    pages: Vec<ScopePageIn>,
    changes: usize,
    /// Some scope has more to fetch now.
    more: bool,
    /// Some scope was refused: the session has changed.
    denied: bool,
}

/// Sorts a reply into pages for the scopes asked for (anything else in it
/// is ignored) and refusals.
fn sort_reply(asked: &BTreeSet<String>, reply: BTreeMap<String, ScopeResult>) -> Reply {
    let mut out = Reply {
        pages: Vec::new(),
        changes: 0,
        more: false,
        denied: false,
    };
    for (scope, res) in reply {
        if !asked.contains(&scope) {
            continue;
        }
        match res {
            ScopeResult::Page(p) => {
                out.changes += p.changes.len();
                out.more |= p.more && !p.changes.is_empty();
                out.pages.push(page_in(scope, p));
            }
            ScopeResult::Denied(e) => {
                tracing::info!(%scope, error = %e.error, "pull refused for a scope; fetching the session again");
                out.denied = true;
            }
        }
    }
    out
}

impl PullJob {
    /// `GET v1/session`, then the writer records it (and purges what the
    /// device may no longer hold).
    async fn refresh_session(&self, scoped: &Scoped) -> Result<(), Failure> {
        let generation = scoped.session.generation();
        let session = self.client.session().await?;
        let grants = grants_of(&session);
        let choices = self.reads.read(&self.store, |s| s.scope_choices()).await?;
        let set = pulled(&grants, scoped.wanted.as_deref(), &choices);
        self.writer
            .submit(WriteCmd::ApplySession {
                grants,
                pulled: set,
            })
            .await
            .map_err(local)?;
        scoped.session.fetched(generation);
        Ok(())
    }

    /// The scopes to pull now, with their cursors.
    async fn cursors(&self, scoped: &Scoped) -> Result<BTreeMap<String, Option<String>>, Failure> {
        let wanted = scoped.wanted.clone();
        self.reads
            .read(&self.store, move |s| {
                let Some(grants) = s.session_grants()? else {
                    return Ok(BTreeMap::new());
                };
                let choices = s.scope_choices()?;
                let states = s.scope_states()?;
                Ok(pulled(&grants, wanted.as_deref(), &choices)
                    .into_iter()
                    .map(|scope| {
                        let cursor = states
                            .get(&scope)
                            .and_then(|st: &ScopeState| st.cursor.clone());
                        (scope, cursor)
                    })
                    .collect())
            })
            .await
    }

    /// Every page of every subscribed scope; a refusal fetches the session
    /// once and goes on with what it then allows.
    ///
    /// A request that reads a scope from its start is answered at once,
    /// even when nothing is there (protocol §13): a live pull then asks once
    /// more, from the cursors it now has, so that this pull is held like
    /// any other. Without that, an answer that quick would read as a server
    /// that ignores `wait`, and remote changes would be polled.
    pub(super) async fn run_scoped(self, scoped: Scoped) -> Result<PullDone, Failure> {
        let start = tokio::time::Instant::now();
        let mut total = 0;
        let mut refetched = false;
        let mut asked_fresh = false;
        loop {
            if scoped.session.due() {
                self.refresh_session(&scoped).await?;
            }
            let scopes = self.cursors(&scoped).await?;
            if scopes.is_empty() {
                // Nothing to pull (an empty request is refused): a live
                // pull waits as the server would have, so that the machine
                // does not start the next one at once.
                if let Some(w) = self.wait_s {
                    tokio::time::sleep(Duration::from_secs(u64::from(w))).await;
                }
                return Ok(self.done(start, total));
            }
            let asked: BTreeSet<String> = scopes.keys().cloned().collect();
            let fresh = scopes.values().any(Option::is_none);
            let req = PullRequest {
                scopes,
                limit: Some(self.limit),
                wait: self.wait_s,
            };
            let reply = sort_reply(&asked, self.client.pull(&req).await?.scopes);
            let _round = match self.client_ids {
                true => None,
                false => Some(self.lock.hold().await),
            };
            self.writer
                .submit(WriteCmd::ApplyScopePages { pages: reply.pages })
                .await
                .map_err(local)?;
            total += reply.changes;
            if reply.denied && !refetched {
                refetched = true;
                scoped.session.make_due();
                continue;
            }
            if fresh && self.wait_s.is_some() && !asked_fresh {
                asked_fresh = true;
                continue;
            }
            if !reply.more {
                return Ok(self.done(start, total));
            }
        }
    }

    fn done(&self, start: tokio::time::Instant, changes: usize) -> PullDone {
        PullDone {
            changes,
            elapsed_ms: start.elapsed().as_millis() as i64,
            waited: self.wait_s.is_some(),
        }
    }
}
