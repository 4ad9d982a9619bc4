//! Group commit for the PostgreSQL store's applies: requests that arrive
//! while this node's apply transactions are all busy wait together and go
//! into the next transaction as one group, each with its own outcomes.
//!
//! Why a file of its own: with one op per request, a transaction's cost is
//! nearly all fixed (two round trips, a handful of statements, a WAL
//! flush), and in one scope the head row serialises the commits, flush
//! included. One transaction per request therefore capped a busy scope at
//! one request per flush. Grouping spends that fixed cost once for every
//! request waiting (docs/performance.md, issue 21).
//!
//! # How
//!
//! A request queues its job and, when fewer than [`RUNNERS`] runner tasks
//! are at work and its user is under its own cap, starts one. A runner
//! takes the oldest job whose user is under the cap, and the waiting jobs
//! of the same user after it (up to [`GROUP_OPS`] ops), runs them in one
//! transaction ([`pg_apply::apply`]), answers each and looks again; it
//! stops when nothing it may take waits. At low load every request runs
//! alone at once, as before; under load, the groups grow by themselves.
//!
//! # Isolation between users
//!
//! A group never mixes users, and one user (by `sub`: all of the user's
//! devices together) has at most [`USER_RUNNERS`] transactions in flight.
//! A user whose private scope's head is slow or held ties up at most that
//! many runners, and the others keep serving other users. A shared scope's
//! head is another matter: each member writing there holds up to their
//! share, so enough members of one held team scope can still fill the
//! node. A single-tenant node has one caller and one scope, so its cap is
//! [`SINGLE_RUNNERS`].
//!
//! # What a group keeps of each request
//!
//! The jobs of a group run one after another in the transaction, in the
//! order they arrived, each under its own caller and each stopping at its
//! own first op that is not applied: every reply is the one the request
//! would have got alone at that point of the commit order. A transaction
//! that fails is run again whole while PostgreSQL says it may be
//! ([`ApplyError::is_retryable`]); nothing of a failed one is committed.
//! When a group of several still fails on data one request may have
//! brought ([`ApplyError::is_data`]: a stored value it reads that cannot be
//! decoded, a constraint it breaks), each request is run again alone, so
//! that its failure is its own; a failure of the database itself (a
//! timeout, a full disk, an outage) fails the whole group.
//!
//! # Runners that end early
//!
//! A runner holds a [`Runner`] guard. If its task ends without finishing
//! (a panic, or a runtime shutting down before it ran), the guard gives
//! back its place and its user's, and when no runner is left, answers the
//! requests still waiting with 503 instead of leaving them waiting
//! forever.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use deadpool_postgres::Pool;
use tokio::runtime::Handle;
use tokio::sync::oneshot;

use super::access::Caller;
use super::feed::Feed;
use super::ops::ValidOp;
use super::pg_apply::{self, ApplyError, Job};
use super::store::{Outcome, StoreError};

/// Runner tasks (so apply transactions in flight) per node at most.
/// Few, so that requests queue and share a transaction rather than each
/// holding a connection and queueing on a scope's head inside PostgreSQL;
/// several, so that groups are read and planned while another commits.
pub const RUNNERS: usize = 8;
/// Runners one user may hold (users mode).
pub const USER_RUNNERS: usize = 2;
/// Runners of a single-tenant node (one caller, one scope).
pub const SINGLE_RUNNERS: usize = 4;
/// Ops per group at most (a request's batch is never split: a larger one
/// runs alone).
pub const GROUP_OPS: usize = 100;
/// Times a failed transaction is run again when PostgreSQL says it may be
/// (serialization failure, deadlock, a unique violation from a concurrent
/// insert).
const RETRIES: usize = 5;

type Reply = Result<Vec<Outcome>, StoreError>;

/// One request waiting for a transaction.
struct Waiting {
    ops: Vec<ValidOp>,
    caller: Caller,
    /// Whose request it is, for the caps and the grouping.
    who: Who,
    reply: oneshot::Sender<Reply>,
}

/// Whose requests a cap counts and a group gathers: the user (by `sub`,
/// whatever the token's expiry or scopes, so that one user's devices
/// share one cap), or the single tenant.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Who {
    Single,
    User(String),
}

impl Who {
    fn of(caller: &Caller) -> Who {
        match caller {
            Caller::Single => Who::Single,
            Caller::User(p) => Who::User(p.sub.clone()),
        }
    }

    /// Groups in flight this one may have.
    fn cap(&self) -> usize {
        match self {
            Who::Single => SINGLE_RUNNERS,
            Who::User(_) => USER_RUNNERS,
        }
    }
}

#[derive(Default)]
struct Queue {
    jobs: VecDeque<Waiting>,
    runners: usize,
    /// Groups in flight per [`Who`] (those with none are left out).
    busy: Vec<(Who, usize)>,
}

impl Queue {
    fn busy(&self, who: &Who) -> usize {
        self.busy
            .iter()
            .find(|(w, _)| w == who)
            .map_or(0, |(_, n)| *n)
    }

    /// Whether `who` may have one more group in flight.
    fn under_cap(&self, who: &Who) -> bool {
        self.busy(who) < who.cap()
    }

    fn acquire(&mut self, who: &Who) {
        match self.busy.iter_mut().find(|(w, _)| w == who) {
            Some((_, n)) => *n += 1,
            None => self.busy.push((who.clone(), 1)),
        }
    }

    fn release(&mut self, who: &Who) {
        if let Some(i) = self.busy.iter().position(|(w, _)| w == who) {
            self.busy[i].1 -= 1;
            if self.busy[i].1 == 0 {
                self.busy.swap_remove(i);
            }
        }
    }

    /// The oldest job whose [`Who`] is under its cap, and the jobs of the
    /// same one after it while they fit in [`GROUP_OPS`] (in order: the
    /// first that does not fit ends the group).
    fn next_group(&mut self) -> Option<(Who, Vec<Waiting>)> {
        let i = self.jobs.iter().position(|w| self.under_cap(&w.who))?;
        let first = self.jobs.remove(i)?;
        let who = first.who.clone();
        let mut ops = first.ops.len();
        let mut group = vec![first];
        let mut k = i;
        while k < self.jobs.len() {
            if self.jobs[k].who != who {
                k += 1;
                continue;
            }
            ops += self.jobs[k].ops.len();
            if ops > GROUP_OPS {
                break;
            }
            group.extend(self.jobs.remove(k));
        }
        self.acquire(&who);
        Some((who, group))
    }
}

/// A runner's place in the [`Queue`]: given back by [`Grouper::take`]
/// when the runner finds nothing to do, or by `Drop` when its task ends
/// any other way (see the module doc).
struct Runner {
    grouper: Arc<Grouper>,
    /// Whose group is in flight.
    group: Option<Who>,
    finished: bool,
}

impl Drop for Runner {
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        let stranded = {
            let mut q = self.grouper.lock();
            if let Some(c) = self.group.take() {
                q.release(&c);
            }
            q.runners -= 1;
            if q.runners == 0 {
                std::mem::take(&mut q.jobs)
            } else {
                VecDeque::new()
            }
        };
        for w in stranded {
            let _ = w.reply.send(Err(StoreError::Unavailable(
                "the node's apply task ended; try again".into(),
            )));
        }
    }
}

/// The node's write side: the apply pool and what a commit updates.
pub struct Grouper {
    pool: Pool,
    feed: Arc<Feed>,
    /// The connection string without its password, for errors.
    url: String,
    rt: Handle,
    queue: Mutex<Queue>,
    /// Whether `syncd_meta` is known to say `users` (saves a statement per
    /// users-mode commit).
    users_recorded: AtomicBool,
    /// Statements sent by applies that ended cleanly.
    statements: AtomicU64,
    /// Transactions that ended cleanly, and the requests they carried.
    transactions: AtomicU64,
    requests: AtomicU64,
}

impl Grouper {
    pub fn new(pool: Pool, feed: Arc<Feed>, url: String, rt: Handle) -> Arc<Grouper> {
        Arc::new(Grouper {
            pool,
            feed,
            url,
            rt,
            queue: Mutex::new(Queue::default()),
            users_recorded: AtomicBool::new(false),
            statements: AtomicU64::new(0),
            transactions: AtomicU64::new(0),
            requests: AtomicU64::new(0),
        })
    }

    /// Applies `ops` for `caller` in the next transaction that has room.
    pub async fn apply(self: &Arc<Self>, ops: &[ValidOp], caller: &Caller) -> Reply {
        let (reply, answer) = oneshot::channel();
        let start = {
            let mut q = self.lock();
            let who = Who::of(caller);
            let start = q.runners < RUNNERS && q.under_cap(&who);
            q.jobs.push_back(Waiting {
                ops: ops.to_vec(),
                caller: caller.clone(),
                who,
                reply,
            });
            q.runners += usize::from(start);
            start
        };
        if start {
            let runner = Runner {
                grouper: Arc::clone(self),
                group: None,
                finished: false,
            };
            self.rt.spawn(runner.run());
        }
        answer
            .await
            .unwrap_or_else(|_| Err(StoreError::Failed("the apply task ended".into())))
    }

    /// Statements sent by applies that ended cleanly.
    pub fn statements(&self) -> u64 {
        self.statements.load(Ordering::Relaxed)
    }

    /// `(transactions, requests)` that ended cleanly: requests per
    /// transaction is the grouping achieved.
    pub fn grouping(&self) -> (u64, u64) {
        (
            self.transactions.load(Ordering::Relaxed),
            self.requests.load(Ordering::Relaxed),
        )
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The next group, after giving back `done`'s place; `None` (and one
    /// runner fewer) when nothing this runner may take waits.
    fn take(&self, done: Option<Who>) -> Option<(Who, Vec<Waiting>)> {
        let mut q = self.lock();
        if let Some(c) = done {
            q.release(&c);
        }
        let next = q.next_group();
        if next.is_none() {
            q.runners -= 1;
        }
        next
    }

    /// Requests waiting for a transaction (tests wait on it).
    pub fn waiting(&self) -> usize {
        self.lock().jobs.len()
    }

    /// One transaction for the whole group (run again while PostgreSQL
    /// says it may be): each job's outcomes, or the error for all, and
    /// whether one job's data may have caused it ([`ApplyError::is_data`]).
    async fn apply_group(
        &self,
        group: &[Waiting],
    ) -> Result<Vec<Vec<Outcome>>, (StoreError, bool)> {
        let jobs: Vec<Job<'_>> = group
            .iter()
            .map(|w| Job {
                ops: &w.ops,
                caller: &w.caller,
            })
            .collect();
        let mut attempt = 0;
        loop {
            let mut client = self.client().await.map_err(|e| (e, false))?;
            let record_users = !self.users_recorded.load(Ordering::Relaxed);
            match pg_apply::apply(&mut client, &jobs, record_users).await {
                Ok(applied) => {
                    self.committed(&applied, group.len(), record_users);
                    return Ok(applied.outcomes);
                }
                Err(e) if e.is_retryable() && attempt < RETRIES => {
                    attempt += 1;
                    tracing::debug!(error = %e, attempt, "apply transaction retried");
                }
                Err(e) => return Err((self.failed(&e), e.is_data())),
            }
        }
    }

    /// Each job's reply: the group in one transaction, or, when that
    /// failed on data one job may have brought (a value it reads that
    /// cannot be decoded, a constraint it breaks), each job alone, so that
    /// its failure is not the others'. A failure of the database itself (a
    /// timeout, a full disk, an outage) fails the whole group at once.
    async fn replies(&self, group: &[Waiting]) -> Vec<Reply> {
        let (err, data) = match self.apply_group(group).await {
            Ok(outcomes) => return outcomes.into_iter().map(Ok).collect(),
            Err(e) => e,
        };
        if group.len() == 1 || !data {
            return group.iter().map(|_| Err(err.clone())).collect();
        }
        let mut out = Vec::with_capacity(group.len());
        for w in group {
            let alone = self.apply_group(std::slice::from_ref(w)).await;
            // One job, so one list of outcomes.
            out.push(
                alone
                    .map(|mut o| o.pop().unwrap_or_default())
                    .map_err(|(e, _)| e),
            );
        }
        out
    }

    /// Counts a transaction that ended cleanly and wakes the pulls waiting
    /// on the scopes it wrote.
    fn committed(&self, applied: &pg_apply::Applied, requests: usize, record_users: bool) {
        let sent = u64::try_from(applied.statements).unwrap_or(u64::MAX);
        self.statements.fetch_add(sent, Ordering::Relaxed);
        self.transactions.fetch_add(1, Ordering::Relaxed);
        let requests = u64::try_from(requests).unwrap_or(u64::MAX);
        self.requests.fetch_add(requests, Ordering::Relaxed);
        if record_users && applied.users_written {
            self.users_recorded.store(true, Ordering::Relaxed);
        }
        if applied.appended && applied.heads.is_empty() {
            self.feed.bump();
        } else if applied.appended {
            self.feed.publish_scopes(&applied.heads);
        }
    }

    async fn client(&self) -> Result<deadpool_postgres::Object, StoreError> {
        super::pg_store::pooled(&self.url, &self.pool).await
    }

    fn failed(&self, e: &ApplyError) -> StoreError {
        let text = format!(
            "PostgreSQL {}: apply: {}",
            self.url,
            super::pg_store::chain(e)
        );
        if e.is_unavailable() {
            StoreError::Unavailable(text)
        } else {
            StoreError::Failed(text)
        }
    }
}

impl Runner {
    /// Groups until nothing this runner may take waits.
    async fn run(mut self) {
        let grouper = Arc::clone(&self.grouper);
        loop {
            let Some((who, group)) = grouper.take(self.group.take()) else {
                self.finished = true;
                return;
            };
            self.group = Some(who);
            let replies = grouper.replies(&group).await;
            debug_assert_eq!(replies.len(), group.len(), "one reply per job");
            for (w, reply) in group.into_iter().zip(replies) {
                // A request that went away (its client hung up) needs no answer.
                let _ = w.reply.send(reply);
            }
        }
    }
}
