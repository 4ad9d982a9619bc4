//! The single writer: every write transaction of the daemon runs here.
//!
//! Group commit: the writer thread takes one job, then everything else that
//! queued up while it waited or while the previous commit was flushing, runs
//! them all in ONE redb write transaction, commits it durably, and only then
//! answers each job. Under load a single fsync covers many writes, so
//! throughput grows with the number of concurrent clients while every
//! acknowledgement still means "on disk".
//!
//! Each job validates (reads) before it writes, so a job that fails for a
//! reason of its own (patch of a missing record, say) leaves nothing behind
//! and the rest of the batch still commits. A storage error aborts the whole
//! transaction and every job in it gets the error: nothing is acknowledged
//! that was not committed.
//!
//! The thread is a plain OS thread: commits block on fsync and must not
//! stall the async runtime.
//!
//! This file is only the loop. The jobs live by concern: app writes in
//! [`app`], sync verdicts in [`verdict`] and [`conflict`], admin commands
//! in [`admin`]; each is a function of (transaction, job) -> outcome over
//! [`txn::Txn`].

use std::sync::Arc;

use std::collections::{BTreeMap, BTreeSet};

use redb::Durability;
use tokio::sync::{broadcast, mpsc, oneshot, watch, Notify};

use super::tables::*;
use super::{Store, StoreError};
use crate::domain::conflict::{FieldRule, Strategy};
use crate::domain::ids::IdGen;
use crate::domain::scope_state::Grants;
use crate::domain::{Change, Document, Event, ServerRecord, Side, WriteError};
use txn::{JobResult, Txn};

mod admin;
mod app;
mod attach;
mod conflict;
mod indexes;
mod scopes;
mod txn;
mod verdict;

/// Most jobs folded into one transaction.
const MAX_BATCH: usize = 4096;

pub use crate::domain::conflict::Resolution;
pub use app::MAX_PARKED_OPS;
pub use indexes::STEP_BUDGET as INDEX_STEP_BUDGET;

/// A write job.
#[derive(Debug)]
pub enum WriteCmd {
    Put {
        collection: String,
        id: Option<String>,
        data: Document,
        client_ts: i64,
        /// Revision 3: the scope to create the record in, or to move it
        /// to (checked with `check_scope` before it gets here).
        scope: Option<String>,
    },
    Patch {
        collection: String,
        id: String,
        data: Document,
        client_ts: i64,
        /// Limit on the merged document's JSON size.
        max_bytes: u32,
    },
    Delete {
        collection: String,
        id: String,
        client_ts: i64,
    },
    /// Adds or replaces an attachment of a live record; its bytes are in
    /// the blob files already.
    Attach {
        collection: String,
        id: String,
        name: String,
        attachment: crate::domain::attachment::AttachmentRef,
        client_ts: i64,
        /// Limit on the document's JSON size with the reference in it.
        max_bytes: u32,
    },
    Detach {
        collection: String,
        id: String,
        name: String,
        client_ts: i64,
    },
    /// The server applied the op at `seq`.
    Ack {
        seq: u64,
        record: ServerRecord,
    },
    /// The op at `seq` needs no server: a delete of a record the server
    /// never had. It leaves the queue and the local delete is final.
    DropLocal {
        seq: u64,
    },
    /// A transient failure of the op at `seq`.
    Attempt {
        seq: u64,
        error: String,
    },
    /// The server rejected the op at `seq` for good; it and the later ops of
    /// the same record go to the dead letters.
    DeadLetter {
        seq: u64,
        error: String,
    },
    /// A 409 for the op at `seq`. The writer decides it with `strategy`
    /// inside the transaction, against the record's latest local state, and
    /// folds the record's later queued ops into the decision: they were made
    /// on the same stale base, so sending them after the resolution would
    /// overwrite the server's change unseen.
    Conflict {
        seq: u64,
        server: ServerRecord,
        strategy: Strategy,
        rules: BTreeMap<String, FieldRule>,
    },
    /// A page of remote changes and the cursor after it.
    ApplyChanges {
        changes: Vec<Change>,
        cursor: String,
    },
    /// Pages of several scopes' feeds (revision 3), each with the cursor
    /// after it: applied, and each scope's cursor moved, in one
    /// transaction.
    ApplyScopePages {
        pages: Vec<ScopePageIn>,
    },
    /// The session just fetched and the scopes that will be pulled (see
    /// [`scopes::apply_session`]: revocation purges and dead letters).
    ApplySession {
        grants: Grants,
        pulled: BTreeSet<String>,
    },
    /// The app subscribed to or unsubscribed from a scope.
    SetScopeChoice {
        scope: String,
        subscribe: bool,
    },
    /// A manual resolution of a parked conflict.
    ResolveParked {
        collection: String,
        id: String,
        take: Option<Side>,
        data: Option<Document>,
    },
    RetryDead {
        op_id: String,
    },
    DiscardDead {
        op_id: String,
    },
    SetMeta {
        key: &'static str,
        value: Vec<u8>,
    },
    /// The worker is about to send the queued ops up to `upto`: from now on
    /// no write folds into them (their content is what the server gets).
    /// Touches no table.
    Claim {
        upto: u64,
    },
    /// The full check of the store file ([`super::check::full`]), run
    /// between two commits; answered with [`WriteOutcome::Checked`].
    CheckStore,
    /// One step towards the indexes the config declares (see
    /// [`indexes::step`]); answered with [`WriteOutcome::IndexStep`].
    IndexStep {
        declared: crate::store::index::Declared,
    },
    /// Several sync verdicts (one pushed batch's results), applied in order
    /// in one transaction: the drain pays one durable commit per batch, not
    /// one per op.
    Verdicts(Vec<WriteCmd>),
}

/// One scope's page of a pull (protocol revision 3), in the store's
/// terms: the records as they now stand in the scope, the records that
/// left it (`(collection, server id, version of the move)`), and where the
/// scope's feed continues.
#[derive(Debug, Clone)]
pub struct ScopePageIn {
    pub scope: String,
    pub records: Vec<Change>,
    pub gone: Vec<(String, String, u64)>,
    pub cursor: String,
    pub more: bool,
    pub remaining: Option<u64>,
}

/// A job's answer.
#[derive(Debug, Clone, PartialEq)]
pub enum WriteOutcome {
    Written {
        id: String,
        op_id: String,
    },
    Done,
    /// What a [`WriteCmd::CheckStore`] found.
    Checked(Box<super::check::Report>),
    /// A [`WriteCmd::IndexStep`] done; `more`: an index is still building
    /// or dropping.
    IndexStep {
        more: bool,
    },
}

struct Job {
    cmd: WriteCmd,
    reply: oneshot::Sender<Result<WriteOutcome, WriteError>>,
}

/// Sends jobs to the writer thread. Cheap to clone.
#[derive(Clone)]
pub struct WriterHandle {
    tx: mpsc::Sender<Job>,
    settled: watch::Receiver<u64>,
    sessions: watch::Receiver<u64>,
}

impl WriterHandle {
    /// Moves after every commit in which an op left the queue, by any
    /// path: acknowledged, dead-lettered, folded into a conflict
    /// resolution, cancelled, done locally. Most of those paths emit an
    /// event, but not all (a delete the server never needed emits none),
    /// so `wait_synced` looks again on this, not only on events.
    pub fn settled(&self) -> watch::Receiver<u64> {
        self.settled.clone()
    }

    /// Moves after every commit that applied a session
    /// ([`WriteCmd::ApplySession`]): `subscribe --wait` looks again at
    /// whether the session still lets it read its scope.
    pub fn sessions(&self) -> watch::Receiver<u64> {
        self.sessions.clone()
    }

    /// Runs `cmd` in the next group commit and waits until it is durable.
    pub async fn submit(&self, cmd: WriteCmd) -> Result<WriteOutcome, WriteError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Job { cmd, reply })
            .await
            .map_err(|_| WriteError::ShuttingDown)?;
        rx.await.map_err(|_| WriteError::ShuttingDown)?
    }
}

/// Starts the writer thread. It exits (after finishing its current batch)
/// once every [`WriterHandle`] is dropped; join the returned handle to know
/// that the last commit is done.
pub fn spawn(
    store: Store,
    events: broadcast::Sender<Arc<Event>>,
    queue_changed: Arc<Notify>,
) -> Result<(WriterHandle, std::thread::JoinHandle<()>), StoreError> {
    let (tx, rx) = mpsc::channel::<Job>(MAX_BATCH * 4);
    let (settled_tx, settled) = watch::channel(0);
    let (sessions_tx, sessions) = watch::channel(0);
    let mut w = Writer::new(store, events, queue_changed, settled_tx, sessions_tx)?;
    let join = std::thread::Builder::new()
        .name("syncd-writer".into())
        .spawn(move || w.run(rx))?;
    Ok((
        WriterHandle {
            tx,
            settled,
            sessions,
        },
        join,
    ))
}

/// Test builds: the same writer as a task on the current runtime instead of
/// a thread. On a single-threaded runtime with a paused clock every commit
/// then happens at a fixed point of the schedule (the clock cannot move
/// while it runs), so a simulation seed replays exactly.
#[cfg(test)]
pub fn spawn_task(
    store: Store,
    events: broadcast::Sender<Arc<Event>>,
    queue_changed: Arc<Notify>,
) -> Result<WriterHandle, StoreError> {
    let (tx, mut rx) = mpsc::channel::<Job>(MAX_BATCH * 4);
    let (settled_tx, settled) = watch::channel(0);
    let (sessions_tx, sessions) = watch::channel(0);
    let mut w = Writer::new(store, events, queue_changed, settled_tx, sessions_tx)?;
    tokio::spawn(async move {
        let mut jobs: Vec<Job> = Vec::with_capacity(64);
        while let Some(first) = rx.recv().await {
            gather(first, &mut rx, &mut jobs);
            w.process(&mut jobs);
        }
    });
    Ok(WriterHandle {
        tx,
        settled,
        sessions,
    })
}

/// `first` and whatever else is already queued, up to [`MAX_BATCH`].
fn gather(first: Job, rx: &mut mpsc::Receiver<Job>, jobs: &mut Vec<Job>) {
    jobs.push(first);
    while jobs.len() < MAX_BATCH {
        match rx.try_recv() {
            Ok(j) => jobs.push(j),
            Err(_) => break,
        }
    }
}

/// How far ahead of the queue tail its stored bound is written: the
/// stored `queue_tail` is rewritten only once every this many appends, so
/// an app write's commit leaves the `meta` table alone (one B-tree fewer
/// to copy, checksum and flush per commit; issue 19 item 7). A restart
/// skips at most this many sequence numbers, out of 2^52.
const QUEUE_TAIL_RESERVE: u64 = 4096;

/// Sequence counters, kept in memory by the only writer. The stored tails
/// are upper bounds: every sequence in use is below them (invariant 3 of
/// [`super::check`]), and a restart continues from them.
#[derive(Clone, Copy)]
pub(crate) struct Counters {
    pub queue_tail: u64,
    pub dead_tail: u64,
    /// The stored `queue_tail`: the queue's sequences stay below it.
    stored_queue_tail: u64,
    /// The stored `dead_tail`.
    stored_dead_tail: u64,
    /// Ops below this sequence may have been sent (the worker claimed
    /// them, or they were queued before this process started): a write
    /// never folds into them. In memory only: at start every queued op
    /// counts as possibly sent.
    pub fold_floor: u64,
}

impl Counters {
    /// The ops up to `upto` may have been sent: no write folds into them.
    pub fn claim(&mut self, upto: u64) {
        self.fold_floor = self.fold_floor.max(upto.saturating_add(1));
    }

    fn load(store: &Store) -> Result<Self, StoreError> {
        let queue_tail = u64_be(store.meta(META_QUEUE_TAIL)?.as_deref()).unwrap_or(QUEUE_ORIGIN);
        let dead_tail = u64_be(store.meta(META_DEAD_TAIL)?.as_deref()).unwrap_or(1);
        Ok(Counters {
            queue_tail,
            dead_tail,
            stored_queue_tail: queue_tail,
            stored_dead_tail: dead_tail,
            fold_floor: queue_tail,
        })
    }

    /// Writes the tails that moved past what is stored, in the batch's
    /// transaction: the queue tail with [`QUEUE_TAIL_RESERVE`] to spare,
    /// the dead-letter tail (which moves rarely) as it is. Most batches
    /// write neither.
    fn persist(
        &mut self,
        meta: &mut txn::Lazy<'_, &'static str, &'static [u8]>,
    ) -> Result<(), StoreError> {
        if self.queue_tail > self.stored_queue_tail {
            let bound = self.queue_tail.saturating_add(QUEUE_TAIL_RESERVE);
            meta.insert(META_QUEUE_TAIL, bound.to_be_bytes().as_slice())?;
            self.stored_queue_tail = bound;
        }
        if self.dead_tail != self.stored_dead_tail {
            meta.insert(META_DEAD_TAIL, self.dead_tail.to_be_bytes().as_slice())?;
            self.stored_dead_tail = self.dead_tail;
        }
        Ok(())
    }
}

struct Writer {
    /// A commit failed with an I/O error: re-open the database (once there
    /// is space again) before the next transaction.
    poisoned: bool,
    store: Store,
    events: broadcast::Sender<Arc<Event>>,
    queue_changed: Arc<Notify>,
    /// See [`WriterHandle::settled`].
    settled: watch::Sender<u64>,
    /// See [`WriterHandle::sessions`].
    sessions: watch::Sender<u64>,
    ids: IdGen,
    counters: Counters,
    /// The indexes kept with every record write, as the last commit left
    /// them (a failed transaction's changes to them are dropped with it).
    indexes: Arc<super::index::Maintained>,
}

impl Writer {
    fn new(
        store: Store,
        events: broadcast::Sender<Arc<Event>>,
        queue_changed: Arc<Notify>,
        settled: watch::Sender<u64>,
        sessions: watch::Sender<u64>,
    ) -> Result<Self, StoreError> {
        let counters = Counters::load(&store)?;
        let indexes = store.maintained_indexes()?;
        Ok(Writer {
            indexes,
            poisoned: false,
            store,
            events,
            queue_changed,
            settled,
            sessions,
            ids: IdGen::new(),
            counters,
        })
    }

    fn run(&mut self, mut rx: mpsc::Receiver<Job>) {
        let mut jobs: Vec<Job> = Vec::with_capacity(64);
        while let Some(first) = rx.blocking_recv() {
            gather(first, &mut rx, &mut jobs);
            self.process(&mut jobs);
        }
        tracing::debug!("writer thread exiting: all handles dropped");
    }

    /// Answers `jobs` (emptying it): the writes in one transaction, then
    /// any store checks.
    fn process(&mut self, jobs: &mut Vec<Job>) {
        let (checks, rest): (Vec<Job>, Vec<Job>) = jobs
            .drain(..)
            .partition(|j| matches!(j.cmd, WriteCmd::CheckStore));
        *jobs = rest;
        if !jobs.is_empty() {
            self.commit(jobs);
        }
        for job in checks {
            let r = self.check_file();
            let _ = job.reply.send(r);
        }
    }

    /// The full check of the store file, between two commits: the file is
    /// what the last commit left (`Durability::Immediate`).
    fn check_file(&self) -> Result<WriteOutcome, WriteError> {
        let started = std::time::Instant::now();
        let r = super::check::full(
            self.store.path(),
            self.store.cache_bytes,
            self.store.vault(),
        )?;
        // Damage found on request is damage: stop taking writes, as when
        // a write meets it.
        if let Some(p) = r.problems.iter().find(|p| p.is_damage()) {
            self.store
                .set_damaged(format!("`syncd check` found the file damaged: {p}"));
        }
        tracing::info!(
            ms = started.elapsed().as_millis() as u64,
            problems = r.count,
            "store checked on request"
        );
        Ok(WriteOutcome::Checked(Box::new(r)))
    }

    /// Commits `jobs` as one transaction and answers each (emptying `jobs`).
    /// A store found damaged takes no more writes: every job gets the
    /// error at once.
    fn commit(&mut self, jobs: &mut Vec<Job>) {
        let before = self.counters;
        // Held from before the commit until its events are sent: a live
        // query that starts takes it to read a snapshot that matches
        // exactly the events it has not seen yet.
        let publish = self.store.publish_gate();
        let _published = publish.lock().unwrap_or_else(|p| p.into_inner());
        let outcome = match self.store.damage() {
            Some(detail) => Err(StoreError::DamagedInUse {
                path: self.store.path().to_owned(),
                detail,
            }),
            None => self.run_caught(jobs),
        };
        match outcome {
            Ok(Batch {
                results,
                events: per_job,
                ops_left,
            }) => {
                #[cfg(test)]
                self.assert_invariants(jobs);
                let enqueued = self.counters.queue_tail != before.queue_tail
                    || jobs.iter().any(|j| j.cmd.may_enqueue());
                // Decided after the commit: whoever subscribed before
                // it completed gets its events, even mid-batch.
                let events = if self.events.receiver_count() > 0 {
                    batch_events(jobs, &results, per_job)
                } else {
                    Vec::new()
                };
                // Signalled before the replies: whoever hears its reply
                // also sees the ops it settled as gone.
                if ops_left {
                    self.settled.send_modify(|n| *n = n.wrapping_add(1));
                }
                if jobs
                    .iter()
                    .any(|j| matches!(j.cmd, WriteCmd::ApplySession { .. }))
                {
                    self.sessions.send_modify(|n| *n = n.wrapping_add(1));
                }
                for (job, r) in jobs.drain(..).zip(results) {
                    let _ = job.reply.send(r);
                }
                for e in events {
                    // No subscribers is fine.
                    let _ = self.events.send(Arc::new(e));
                }
                if enqueued {
                    self.queue_changed.notify_one();
                }
            }
            Err(e) => {
                if super::is_damage(&e) {
                    self.store.set_damaged(e.to_string());
                }
                self.poisoned |= matches!(e, StoreError::Io(_) | StoreError::NeedsReopen);
                tracing::error!(error = %e, jobs = jobs.len(), "write transaction failed; nothing in it was acknowledged");
                self.counters = before;
                let e = Arc::new(e);
                for job in jobs.drain(..) {
                    let _ = job.reply.send(Err(WriteError::Storage(e.clone())));
                }
            }
        }
    }

    /// [`Writer::run_batch`], with a panic inside the storage engine (which
    /// redb documents for a file changed outside it) caught: the daemon
    /// stops taking writes instead of dying and crash-looping on it.
    fn run_caught(&mut self, jobs: &[Job]) -> Result<Batch, StoreError> {
        let before = self.counters;
        let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.run_batch(jobs)));
        run.unwrap_or_else(|panic| {
            self.counters = before;
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            let detail = format!("the storage engine panicked in a write transaction: {what}");
            self.store.set_damaged(detail.clone());
            Err(StoreError::DamagedInUse {
                path: self.store.path().to_owned(),
                detail,
            })
        })
    }

    /// Test builds: every committed batch leaves the store's cross-table
    /// invariants ([`super::check`]) true.
    #[cfg(test)]
    fn assert_invariants(&self, jobs: &[Job]) {
        let report = self.store.check_invariants().expect("read the store");
        assert!(
            report.is_clean(),
            "store invariants broken after {:?}: {:#?}",
            jobs.iter().map(|j| &j.cmd).collect::<Vec<_>>(),
            report.problems
        );
    }

    /// Runs `jobs` in one durable transaction; returns each job's result and
    /// the events of each job (none for one that failed; a put's event is
    /// built after the commit, see [`batch_events`]).
    fn run_batch(&mut self, jobs: &[Job]) -> Result<Batch, StoreError> {
        if jobs.iter().all(|j| matches!(j.cmd, WriteCmd::Claim { .. })) {
            // Claims change only memory: no transaction, no fsync.
            for j in jobs {
                if let WriteCmd::Claim { upto } = j.cmd {
                    self.counters.claim(upto);
                }
            }
            return Ok(Batch {
                results: jobs.iter().map(|_| Ok(WriteOutcome::Done)).collect(),
                events: jobs.iter().map(|_| Vec::new()).collect(),
                ops_left: false,
            });
        }
        self.recover()?;
        let db = self.store.db()?;
        let mut txn = db.begin_write()?;
        txn.set_durability(Durability::Immediate)?;
        let mut results = Vec::with_capacity(jobs.len());
        let mut events = Vec::with_capacity(jobs.len());
        let ops_left;
        let indexes;
        {
            let mut x = Txn::open(
                &txn,
                &self.ids,
                &mut self.counters,
                self.store.vault.clone(),
            )?;
            x.client_ids = self.store.backend_client_ids();
            x.directions = self.store.directions();
            x.indexes = self.indexes.clone();
            for job in jobs {
                let r = apply(&mut x, &job.cmd)?;
                let job_events = std::mem::take(&mut x.ev);
                #[cfg(test)]
                assert_changes_have_events(
                    &job.cmd,
                    &r,
                    &job_events,
                    std::mem::take(&mut x.doc_changes),
                );
                events.push(if r.is_ok() { job_events } else { Vec::new() });
                results.push(r);
            }
            ops_left = x.ops_left;
            indexes = x.indexes.clone();
            x.counters.persist(&mut x.meta)?;
        }
        txn.commit()?;
        self.indexes = indexes;
        Ok(Batch {
            results,
            events,
            ops_left,
        })
    }
}

/// Test builds: every record whose live document a job changed has a
/// `changed` event from that job (a put's is built after the commit, from
/// its answer): watchers and live queries see every change.
#[cfg(test)]
fn assert_changes_have_events(
    cmd: &WriteCmd,
    r: &JobResult,
    events: &[Event],
    changes: Vec<(String, String)>,
) {
    if r.is_err() {
        return;
    }
    let put = match (cmd, r) {
        (WriteCmd::Put { collection, .. }, Ok(WriteOutcome::Written { id, .. })) => {
            Some((collection.as_str(), id.as_str()))
        }
        _ => None,
    };
    for (c, id) in changes {
        let evented = put == Some((c.as_str(), id.as_str()))
            || events.iter().any(|e| matches!(e, Event::Changed { collection, id: i, .. } if *collection == c && *i == id));
        assert!(
            evented,
            "{c}/{id} changed without a `changed` event in {cmd:?}"
        );
    }
}

/// What one committed transaction did.
struct Batch {
    results: Vec<JobResult>,
    /// Each job's events.
    events: Vec<Vec<Event>>,
    /// An op left the queue.
    ops_left: bool,
}

/// The batch's events in job order, once it committed and someone
/// listens. A put's `changed` event is built only here, from the job: with
/// nobody listening (the common case under load) the writer never copies
/// the document for it.
fn batch_events(jobs: &[Job], results: &[JobResult], per_job: Vec<Vec<Event>>) -> Vec<Event> {
    let mut out = Vec::new();
    for ((job, r), evs) in jobs.iter().zip(results).zip(per_job) {
        // A put that carried the record's attachments built its own.
        let evented = !evs.is_empty();
        out.extend(evs);
        if evented {
            continue;
        }
        if let (
            WriteCmd::Put {
                collection, data, ..
            },
            Ok(WriteOutcome::Written { id, op_id }),
        ) = (&job.cmd, r)
        {
            out.push(app::put_event(collection, id, op_id, data));
        }
    }
    out
}

/// Below this much free space a poisoned writer does not try to re-open
/// the database: the next commit would fail again.
const MIN_FREE_BYTES: u64 = 256 * 1024;

impl Writer {
    /// After a commit failed with an I/O error, redb refuses every write
    /// until the database is re-opened. Re-open once the disk has room
    /// again; until then every write fails at once with a disk-full error
    /// (reads keep working on the open database).
    fn recover(&mut self) -> Result<(), StoreError> {
        if !self.poisoned {
            return Ok(());
        }
        if self.store.free_bytes().is_some_and(|b| b < MIN_FREE_BYTES) {
            return Err(StoreError::NeedsReopen);
        }
        self.store.reopen()?;
        self.poisoned = false;
        Ok(())
    }
}

impl WriteCmd {
    /// Whether the job can put an op in the queue other than by appending
    /// (which moves the tail counter): the worker must look again.
    fn may_enqueue(&self) -> bool {
        match self {
            WriteCmd::Conflict { .. }
            | WriteCmd::ResolveParked { .. }
            | WriteCmd::RetryDead { .. } => true,
            WriteCmd::Verdicts(v) => v.iter().any(WriteCmd::may_enqueue),
            _ => false,
        }
    }
}

/// Applies one job. `Ok(Err(_))`: the job's own error, nothing written.
/// `Err(_)`: storage failure, the transaction must be abandoned.
fn apply(x: &mut Txn<'_>, cmd: &WriteCmd) -> Result<JobResult, StoreError> {
    match cmd {
        WriteCmd::Put {
            collection,
            id,
            data,
            client_ts,
            scope,
        } => app::put(
            x,
            collection,
            id.as_deref(),
            data,
            *client_ts,
            scope.as_deref(),
        ),
        WriteCmd::Patch {
            collection,
            id,
            data,
            client_ts,
            max_bytes,
        } => app::patch(x, collection, id, data, *client_ts, *max_bytes),
        WriteCmd::Delete {
            collection,
            id,
            client_ts,
        } => app::delete(x, collection, id, *client_ts),
        WriteCmd::Attach {
            collection,
            id,
            name,
            attachment,
            client_ts,
            max_bytes,
        } => attach::attach(x, collection, id, name, attachment, *client_ts, *max_bytes),
        WriteCmd::Detach {
            collection,
            id,
            name,
            client_ts,
        } => attach::detach(x, collection, id, name, *client_ts),
        WriteCmd::Ack { seq, record } => verdict::ack(x, *seq, record),
        WriteCmd::DropLocal { seq } => verdict::drop_local(x, *seq),
        WriteCmd::Attempt { seq, error } => verdict::attempt(x, *seq, error),
        WriteCmd::DeadLetter { seq, error } => verdict::dead_letter(x, *seq, error),
        WriteCmd::Conflict {
            seq,
            server,
            strategy,
            rules,
        } => conflict::conflict(x, *seq, server, *strategy, rules),
        WriteCmd::ApplyChanges { changes, cursor } => verdict::apply_changes(x, changes, cursor),
        WriteCmd::ApplyScopePages { pages } => scopes::apply_pages(x, pages),
        WriteCmd::ApplySession { grants, pulled } => scopes::apply_session(x, grants, pulled),
        WriteCmd::SetScopeChoice { scope, subscribe } => scopes::set_choice(x, scope, *subscribe),
        WriteCmd::ResolveParked {
            collection,
            id,
            take,
            data,
        } => admin::resolve_parked(x, collection, id, *take, data.as_ref()),
        WriteCmd::RetryDead { op_id } => admin::retry(x, op_id),
        WriteCmd::DiscardDead { op_id } => admin::discard(x, op_id),
        WriteCmd::SetMeta { key, value } => admin::set_meta(x, key, value),
        WriteCmd::IndexStep { declared } => indexes::step(x, declared),
        WriteCmd::Claim { upto } => {
            x.counters.claim(*upto);
            Ok(Ok(WriteOutcome::Done))
        }
        // Taken out of the batch by `Writer::process`.
        WriteCmd::CheckStore => Ok(Ok(WriteOutcome::Done)),
        WriteCmd::Verdicts(cmds) => {
            for c in cmds {
                if let Err(e) = apply(x, c)? {
                    // Verdicts never fail on their own; should one, the
                    // ones before it still stand.
                    return Ok(Err(e));
                }
            }
            Ok(Ok(WriteOutcome::Done))
        }
    }
}
