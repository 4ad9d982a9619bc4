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
//! are at work, starts one. A runner takes the oldest waiting job and every
//! waiting job of the same caller (up to [`GROUP_OPS`] ops: a group never
//! mixes users, so one user's requests never wait on another user's scope
//! heads), runs them in one transaction
//! ([`pg_apply::apply`]), answers each and looks again; it stops when
//! nothing waits. At low load every request runs alone at once, as before;
//! under load, the groups grow by themselves.
//!
//! # What a group keeps of each request
//!
//! The jobs of a group run one after another in the transaction, in the
//! order they arrived, each under its own caller and each stopping at its
//! own first op that is not applied: every reply is the one the request
//! would have got alone at that point of the commit order. A transaction
//! that fails runs again whole ([`ApplyError::is_retryable`]) or fails
//! every job of the group with the same error; nothing of it is committed
//! either way.

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

/// Runner tasks (so transactions in flight) per node at most. Few, so that
/// requests queue and share a transaction rather than each holding a
/// connection and queueing on a scope's head inside PostgreSQL; more than
/// one, so that a group is read and planned while another commits.
pub const RUNNERS: usize = 4;
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
    reply: oneshot::Sender<Reply>,
}

#[derive(Default)]
struct Queue {
    jobs: VecDeque<Waiting>,
    runners: usize,
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
            let mut q = self.queue.lock().unwrap_or_else(|p| p.into_inner());
            q.jobs.push_back(Waiting {
                ops: ops.to_vec(),
                caller: caller.clone(),
                reply,
            });
            let start = q.runners < RUNNERS;
            q.runners += usize::from(start);
            start
        };
        if start {
            self.rt.spawn(Arc::clone(self).run());
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

    /// A runner: groups until nothing waits.
    async fn run(self: Arc<Self>) {
        while let Some(group) = self.take() {
            let reply = self.apply_group(&group).await;
            answer(group, reply);
        }
    }

    /// The next group, or `None` (and one runner fewer) when nothing waits:
    /// the oldest job and the jobs of the same caller after it (so one
    /// user's requests never wait on another's scope heads), in order.
    fn take(&self) -> Option<Vec<Waiting>> {
        let mut q = self.queue.lock().unwrap_or_else(|p| p.into_inner());
        let Some(first) = q.jobs.pop_front() else {
            q.runners -= 1;
            return None;
        };
        let mut ops = first.ops.len();
        let mut group = vec![first];
        let mut rest = VecDeque::with_capacity(q.jobs.len());
        while let Some(next) = q.jobs.pop_front() {
            let fits = ops + next.ops.len() <= GROUP_OPS;
            if fits && next.caller == group[0].caller {
                ops += next.ops.len();
                group.push(next);
            } else {
                rest.push_back(next);
            }
        }
        q.jobs = rest;
        Some(group)
    }

    /// Requests waiting for a transaction (tests wait on it).
    pub fn waiting(&self) -> usize {
        self.queue
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .jobs
            .len()
    }

    /// One transaction for the whole group (run again while PostgreSQL
    /// says it may be): each job's outcomes, or the error for all.
    async fn apply_group(&self, group: &[Waiting]) -> Result<Vec<Vec<Outcome>>, StoreError> {
        let jobs: Vec<Job<'_>> = group
            .iter()
            .map(|w| Job {
                ops: &w.ops,
                caller: &w.caller,
            })
            .collect();
        let mut attempt = 0;
        loop {
            let mut client = self.client().await?;
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
                Err(e) => return Err(self.failed(&e)),
            }
        }
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
        self.pool.get().await.map_err(|e| {
            StoreError::Unavailable(format!(
                "PostgreSQL {}: no connection: {}",
                self.url,
                super::pg_store::chain(&e)
            ))
        })
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

/// Sends each job its outcomes, or the group's error.
fn answer(group: Vec<Waiting>, reply: Result<Vec<Vec<Outcome>>, StoreError>) {
    match reply {
        Ok(outcomes) => {
            debug_assert_eq!(outcomes.len(), group.len(), "one answer per job");
            for (w, o) in group.into_iter().zip(outcomes) {
                // A request that went away (its client hung up) needs no answer.
                let _ = w.reply.send(Ok(o));
            }
        }
        Err(e) => {
            for w in group {
                let _ = w.reply.send(Err(e.clone()));
            }
        }
    }
}
