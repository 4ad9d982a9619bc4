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

use std::sync::Arc;

use redb::{Durability, ReadableTable, Table, WriteTransaction};
use serde_json::{Map, Value};
use tokio::sync::{broadcast, mpsc, oneshot, Notify};

use super::encoding::{from_store, to_store};
use super::tables::*;
use super::{
    parse_doc_text, DeadLetter, ParkedConflict, QueuedOp, ServerRecordStored, Store, StoreError,
    StoredRecord,
};
use std::collections::BTreeMap;

use crate::domain::conflict::{self, FieldRule, LocalChange, Strategy};
use crate::domain::ids::{validate_id, IdGen};
use crate::domain::{
    Change, ConflictOutcome, Doc, Document, Event, OpKind, Origin, ServerRecord, Side, WriteError,
};

/// Most jobs folded into one transaction.
const MAX_BATCH: usize = 4096;

pub use crate::domain::conflict::Resolution;

/// A write job.
#[derive(Debug)]
pub enum WriteCmd {
    Put {
        collection: String,
        id: Option<String>,
        data: Document,
        client_ts: i64,
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
}

/// A job's answer.
#[derive(Debug, Clone, PartialEq)]
pub enum WriteOutcome {
    Written { id: String, op_id: String },
    Done,
}

struct Job {
    cmd: WriteCmd,
    reply: oneshot::Sender<Result<WriteOutcome, WriteError>>,
}

/// Sends jobs to the writer thread. Cheap to clone.
#[derive(Clone)]
pub struct WriterHandle {
    tx: mpsc::Sender<Job>,
}

impl WriterHandle {
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
    let counters = Counters::load(&store)?;
    let mut w = Writer {
        emit: true,
        store,
        events,
        queue_changed,
        ids: IdGen::new(),
        counters,
    };
    let join = std::thread::Builder::new()
        .name("syncd-writer".into())
        .spawn(move || w.run(rx))?;
    Ok((WriterHandle { tx }, join))
}

/// Sequence counters, kept in memory by the only writer and persisted in
/// every transaction that moves them.
#[derive(Clone, Copy)]
struct Counters {
    queue_tail: u64,
    dead_tail: u64,
}

impl Counters {
    fn load(store: &Store) -> Result<Self, StoreError> {
        Ok(Counters {
            queue_tail: u64_be(store.meta(META_QUEUE_TAIL)?.as_deref()).unwrap_or(QUEUE_ORIGIN),
            dead_tail: u64_be(store.meta(META_DEAD_TAIL)?.as_deref()).unwrap_or(1),
        })
    }
}

struct Writer {
    /// Whether anyone subscribes to events during this batch.
    emit: bool,
    store: Store,
    events: broadcast::Sender<Arc<Event>>,
    queue_changed: Arc<Notify>,
    ids: IdGen,
    counters: Counters,
}

/// Result of one job inside a batch: its answer, or its own error (nothing
/// of it written).
type JobResult = Result<WriteOutcome, WriteError>;

impl Writer {
    fn run(&mut self, mut rx: mpsc::Receiver<Job>) {
        let mut jobs: Vec<Job> = Vec::with_capacity(64);
        while let Some(first) = rx.blocking_recv() {
            jobs.push(first);
            while jobs.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(j) => jobs.push(j),
                    Err(_) => break,
                }
            }
            let before = self.counters;
            let mut events = Vec::new();
            match self.run_batch(&mut jobs, &mut events) {
                Ok(results) => {
                    let enqueued = self.counters.queue_tail != before.queue_tail
                        || jobs.iter().any(|j| {
                            matches!(
                                j.cmd,
                                WriteCmd::Conflict { .. }
                                    | WriteCmd::ResolveParked { .. }
                                    | WriteCmd::RetryDead { .. }
                            )
                        });
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
                    tracing::error!(error = %e, jobs = jobs.len(), "write transaction failed; nothing in it was acknowledged");
                    self.counters = before;
                    let e = Arc::new(e);
                    for job in jobs.drain(..) {
                        let _ = job.reply.send(Err(WriteError::Storage(e.clone())));
                    }
                }
            }
        }
        tracing::debug!("writer thread exiting: all handles dropped");
    }

    fn run_batch(
        &mut self,
        jobs: &mut [Job],
        events: &mut Vec<Event>,
    ) -> Result<Vec<JobResult>, StoreError> {
        self.emit = self.events.receiver_count() > 0;
        let mut txn = self.store.db().begin_write()?;
        txn.set_durability(Durability::Immediate)?;
        let mut results = Vec::with_capacity(jobs.len());
        {
            let mut t = Tables::open(&txn)?;
            for job in jobs.iter_mut() {
                let mut job_events = Vec::new();
                let r = self.apply(&mut t, &job.cmd, &mut job_events)?;
                if r.is_ok() {
                    events.append(&mut job_events);
                }
                results.push(r);
            }
            t.meta.insert(
                META_QUEUE_TAIL,
                self.counters.queue_tail.to_be_bytes().as_slice(),
            )?;
            t.meta.insert(
                META_DEAD_TAIL,
                self.counters.dead_tail.to_be_bytes().as_slice(),
            )?;
        }
        txn.commit()?;
        Ok(results)
    }

    /// Applies one job. `Ok(Err(_))`: the job's own error, nothing written.
    /// `Err(_)`: storage failure, the transaction must be abandoned.
    fn apply(
        &mut self,
        t: &mut Tables<'_>,
        cmd: &WriteCmd,
        ev: &mut Vec<Event>,
    ) -> Result<JobResult, StoreError> {
        match cmd {
            WriteCmd::Put {
                collection,
                id,
                data,
                client_ts,
            } => {
                let id = match id {
                    Some(id) => id.clone(),
                    None => self.ids.next(),
                };
                let existing = t.record(collection, &id)?;
                let text = Value::Object(data.clone()).to_string();
                let (rec, kind) = match existing {
                    Some(mut r) if !r.deleted => {
                        r.data = text.clone();
                        r.pending += 1;
                        r.local_ts = *client_ts;
                        (r, OpKind::Update)
                    }
                    // A put after a delete starts a new server record: the
                    // old one is (or will be) a tombstone. The old server id
                    // stays until the queued delete has used it.
                    Some(mut r) => {
                        r.data = text.clone();
                        r.deleted = false;
                        r.pending += 1;
                        r.local_ts = *client_ts;
                        (r, OpKind::Create)
                    }
                    None => (
                        StoredRecord::local(text.clone(), 1, *client_ts),
                        OpKind::Create,
                    ),
                };
                let op_id =
                    self.local_write(t, collection, &id, &rec, kind, Some(text), *client_ts)?;
                // Nobody listening (the common case under load): skip the
                // event and its copy of the document.
                if self.emit {
                    ev.push(Event::Changed {
                        collection: collection.clone(),
                        id: id.clone(),
                        op_id: Some(op_id.clone()),
                        origin: Origin::Local,
                        data: Some(Doc(Value::Object(data.clone()))),
                    });
                }
                Ok(Ok(WriteOutcome::Written { id, op_id }))
            }
            WriteCmd::Patch {
                collection,
                id,
                data,
                client_ts,
                max_bytes,
            } => {
                let Some(mut rec) = t.record(collection, id)?.filter(|r| !r.deleted) else {
                    return Ok(Err(not_found(collection, id)));
                };
                let mut doc = match parse_doc_text(&rec.data) {
                    Value::Object(m) => m,
                    _ => Map::new(),
                };
                for (k, v) in data {
                    if v.is_null() {
                        doc.remove(k);
                    } else {
                        doc.insert(k.clone(), v.clone());
                    }
                }
                let merged = Value::Object(doc);
                let text = merged.to_string();
                if text.len() > *max_bytes as usize {
                    return Ok(Err(WriteError::TooLarge {
                        bytes: text.len(),
                        limit: *max_bytes,
                    }));
                }
                rec.data = text.clone();
                rec.pending += 1;
                rec.local_ts = *client_ts;
                let op_id = self.local_write(
                    t,
                    collection,
                    id,
                    &rec,
                    OpKind::Update,
                    Some(text),
                    *client_ts,
                )?;
                ev.push(Event::Changed {
                    collection: collection.clone(),
                    id: id.clone(),
                    op_id: Some(op_id.clone()),
                    origin: Origin::Local,
                    data: Some(Doc(merged)),
                });
                Ok(Ok(WriteOutcome::Written {
                    id: id.clone(),
                    op_id,
                }))
            }
            WriteCmd::Delete {
                collection,
                id,
                client_ts,
            } => {
                let Some(mut rec) = t.record(collection, id)?.filter(|r| !r.deleted) else {
                    return Ok(Err(not_found(collection, id)));
                };
                rec.deleted = true;
                rec.data = "{}".into();
                rec.pending += 1;
                rec.local_ts = *client_ts;
                let op_id =
                    self.local_write(t, collection, id, &rec, OpKind::Delete, None, *client_ts)?;
                ev.push(Event::Changed {
                    collection: collection.clone(),
                    id: id.clone(),
                    op_id: Some(op_id.clone()),
                    origin: Origin::Local,
                    data: None,
                });
                Ok(Ok(WriteOutcome::Written {
                    id: id.clone(),
                    op_id,
                }))
            }
            WriteCmd::Ack { seq, record } => {
                let Some(op) = t.take_op(*seq)? else {
                    return Ok(Ok(WriteOutcome::Done));
                };
                self.apply_ack(t, &op, record, ev)?;
                t.meta.insert(
                    META_LAST_SYNC,
                    crate::domain::clock::now_ms().to_be_bytes().as_slice(),
                )?;
                Ok(Ok(WriteOutcome::Done))
            }
            WriteCmd::DropLocal { seq } => {
                let Some(op) = t.take_op(*seq)? else {
                    return Ok(Ok(WriteOutcome::Done));
                };
                if let Some(mut rec) = t.record(&op.collection, &op.local_id)? {
                    rec.pending = rec.pending.saturating_sub(1);
                    if rec.pending == 0 && rec.deleted {
                        t.records
                            .remove((op.collection.as_str(), op.local_id.as_str()))?;
                    } else {
                        t.put_record(&op.collection, &op.local_id, &rec)?;
                    }
                }
                Ok(Ok(WriteOutcome::Done))
            }
            WriteCmd::Attempt { seq, error } => {
                if let Some(mut op) = t.op(*seq)? {
                    op.attempts = op.attempts.saturating_add(1);
                    op.last_error = Some(error.clone());
                    t.queue.insert(*seq, to_store(&op)?.as_slice())?;
                }
                Ok(Ok(WriteOutcome::Done))
            }
            WriteCmd::DeadLetter { seq, error } => {
                let Some(op) = t.take_op(*seq)? else {
                    return Ok(Ok(WriteOutcome::Done));
                };
                let mut dead = vec![(op.clone(), error.clone())];
                let others = t
                    .pending_of(&op.collection, &op.local_id)?
                    .saturating_sub(1);
                let dependents =
                    t.ops_of_record_after(*seq, &op.collection, &op.local_id, others)?;
                for (s, _) in &dependents {
                    if let Some(d) = t.take_op(*s)? {
                        dead.push((
                            d,
                            format!("depends on dead-lettered op {}: {error}", op.op_id),
                        ));
                    }
                }
                let mut base = None;
                if let Some(mut rec) = t.record(&op.collection, &op.local_id)? {
                    rec.pending = rec.pending.saturating_sub(dead.len() as u32);
                    base = rec.server_id.clone().zip(rec.version);
                    t.put_record(&op.collection, &op.local_id, &rec)?;
                }
                for (mut d, err) in dead {
                    if d.kind != OpKind::Create {
                        d.base = base.clone();
                    }
                    ev.push(Event::DeadLettered {
                        op_id: d.op_id.clone(),
                        collection: d.collection.clone(),
                        id: d.local_id.clone(),
                        error: err.clone(),
                    });
                    let seq = self.counters.dead_tail;
                    self.counters.dead_tail += 1;
                    let entry = DeadLetter {
                        op: d,
                        error: err,
                        dead_at: crate::domain::clock::now_ms(),
                    };
                    t.dead.insert(seq, to_store(&entry)?.as_slice())?;
                }
                Ok(Ok(WriteOutcome::Done))
            }
            WriteCmd::Conflict {
                seq,
                server,
                strategy,
                rules,
            } => {
                let Some(op) = t.take_op(*seq)? else {
                    return Ok(Ok(WriteOutcome::Done));
                };
                let (c, lid) = (op.collection.clone(), op.local_id.clone());
                let mut ops = vec![op];
                let others = t.pending_of(&c, &lid)?.saturating_sub(1);
                for (s, _) in t.ops_of_record_after(*seq, &c, &lid, others)? {
                    if let Some(o) = t.take_op(s)? {
                        ops.push(o);
                    }
                }
                let rec = t.record(&c, &lid)?;
                let data = rec
                    .as_ref()
                    .filter(|r| !r.deleted)
                    .map(|r| parse_doc_text(&r.data));
                let base = rec
                    .as_ref()
                    .and_then(|r| r.base.as_deref())
                    .map(parse_doc_text);
                let local = LocalChange {
                    kind: if data.is_some() {
                        OpKind::Update
                    } else {
                        OpKind::Delete
                    },
                    data: data.as_ref().and_then(Value::as_object),
                    client_ts: ops.iter().map(|o| o.client_ts).max().unwrap_or(0),
                    base: base.as_ref().and_then(Value::as_object),
                };
                let resolution = conflict::resolve(*strategy, rules, &local, server);
                tracing::info!(collection = %c, id = %lid, strategy = strategy.as_str(), ops = ops.len(), ?resolution, "conflict");
                // merge takes the server's record for an update only when
                // the merge equals it: every local change is already there.
                let merged_in = *strategy == Strategy::Merge
                    && local.kind == OpKind::Update
                    && !server.deleted
                    && resolution == Resolution::TakeServer;
                self.apply_resolution(
                    t,
                    &c,
                    &lid,
                    ops,
                    server,
                    strategy.as_str(),
                    &resolution,
                    merged_in,
                    ev,
                )?;
                // A parked conflict counts as resolved when it is resolved.
                if resolution != Resolution::Park {
                    bump_resolved(t)?;
                }
                Ok(Ok(WriteOutcome::Done))
            }
            WriteCmd::ApplyChanges { changes, cursor } => {
                for ch in changes {
                    self.apply_remote(t, ch, ev)?;
                }
                t.meta.insert(META_CURSOR, cursor.as_bytes())?;
                t.meta.insert(
                    META_LAST_SYNC,
                    crate::domain::clock::now_ms().to_be_bytes().as_slice(),
                )?;
                Ok(Ok(WriteOutcome::Done))
            }
            WriteCmd::ResolveParked {
                collection,
                id,
                take,
                data,
            } => self.resolve_parked(t, collection, id, *take, data.as_ref(), ev),
            WriteCmd::RetryDead { op_id } => {
                let Some((dseq, dl)) = t.find_dead(op_id)? else {
                    return Ok(Err(WriteError::NoDeadLetter {
                        op_id: op_id.clone(),
                    }));
                };
                t.dead.remove(dseq)?;
                let mut op = dl.op;
                op.attempts = 0;
                op.last_error = Some(format!("retried after: {}", dl.error));
                if let Some(mut rec) = t.record(&op.collection, &op.local_id)? {
                    rec.pending += 1;
                    t.put_record(&op.collection, &op.local_id, &rec)?;
                }
                self.append_op(t, &op)?;
                Ok(Ok(WriteOutcome::Done))
            }
            WriteCmd::DiscardDead { op_id } => {
                let Some((dseq, _)) = t.find_dead(op_id)? else {
                    return Ok(Err(WriteError::NoDeadLetter {
                        op_id: op_id.clone(),
                    }));
                };
                t.dead.remove(dseq)?;
                Ok(Ok(WriteOutcome::Done))
            }
            WriteCmd::SetMeta { key, value } => {
                t.meta.insert(*key, value.as_slice())?;
                Ok(Ok(WriteOutcome::Done))
            }
        }
    }

    /// Writes `rec` and appends its op: the one place where an app write
    /// becomes a record change plus a queue entry.
    #[allow(clippy::too_many_arguments)]
    fn local_write(
        &mut self,
        t: &mut Tables<'_>,
        collection: &str,
        id: &str,
        rec: &StoredRecord,
        kind: OpKind,
        data: Option<String>,
        client_ts: i64,
    ) -> Result<String, StoreError> {
        t.put_record(collection, id, rec)?;
        let op = QueuedOp {
            op_id: self.ids.next(),
            collection: collection.to_owned(),
            local_id: id.to_owned(),
            kind,
            data,
            client_ts,
            attempts: 0,
            last_error: None,
            enqueued_at: crate::domain::clock::now_ms(),
            base: None,
        };
        self.append_op(t, &op)?;
        Ok(op.op_id)
    }

    fn append_op(&mut self, t: &mut Tables<'_>, op: &QueuedOp) -> Result<u64, StoreError> {
        let seq = self.counters.queue_tail;
        self.counters.queue_tail += 1;
        t.queue.insert(seq, to_store(op)?.as_slice())?;
        t.ops.insert(op.op_id.as_str(), seq)?;
        Ok(seq)
    }

    fn prepend_op(&mut self, t: &mut Tables<'_>, op: &QueuedOp) -> Result<u64, StoreError> {
        let seq = match t.queue.first()? {
            Some((k, _)) => k.value() - 1,
            None => {
                let s = self.counters.queue_tail;
                self.counters.queue_tail += 1;
                s
            }
        };
        t.queue.insert(seq, to_store(op)?.as_slice())?;
        t.ops.insert(op.op_id.as_str(), seq)?;
        Ok(seq)
    }

    fn apply_ack(
        &mut self,
        t: &mut Tables<'_>,
        op: &QueuedOp,
        r: &ServerRecord,
        ev: &mut Vec<Event>,
    ) -> Result<(), StoreError> {
        let (c, lid) = (op.collection.as_str(), op.local_id.as_str());
        ev.push(Event::Synced {
            op_id: op.op_id.clone(),
            collection: c.to_owned(),
            id: lid.to_owned(),
            server_id: r.id.clone(),
            version: r.version,
        });
        let Some(mut rec) = t.record(c, lid)? else {
            return Ok(());
        };
        rec.pending = rec.pending.saturating_sub(1);
        if op.kind == OpKind::Delete || r.deleted {
            t.server_ids.remove((c, r.id.as_str()))?;
            if rec.pending == 0 && rec.deleted {
                t.records.remove((c, lid))?;
                return Ok(());
            }
            // Later ops of this record start a new server record.
            rec.forget_server();
            t.put_record(c, lid, &rec)?;
            return Ok(());
        }
        if let Some(old) = rec.server_id.as_deref() {
            if old != r.id {
                t.server_ids.remove((c, old))?;
            }
        }
        t.server_ids.insert((c, r.id.as_str()), lid)?;
        let server_text = rec.stand_on(r);
        if rec.pending == 0
            && !rec.deleted
            && parse_doc_text(&rec.data) != Value::Object(r.data.clone())
        {
            // The server normalised the document: it is the truth now.
            rec.data = server_text;
            ev.push(Event::Changed {
                collection: c.to_owned(),
                id: lid.to_owned(),
                op_id: None,
                origin: Origin::Remote,
                data: Some(Doc(Value::Object(r.data.clone()))),
            });
        }
        t.put_record(c, lid, &rec)?;
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    /// Sets the local record to the server's, or removes it for a
    /// tombstone. Keeps `pending` as it is.
    fn take_server(
        &mut self,
        t: &mut Tables<'_>,
        c: &str,
        lid: &str,
        rec: Option<StoredRecord>,
        r: &ServerRecord,
        origin: Origin,
        ev: &mut Vec<Event>,
    ) -> Result<(), StoreError> {
        let pending = rec.as_ref().map(|r| r.pending).unwrap_or(0);
        if r.deleted {
            t.server_ids.remove((c, r.id.as_str()))?;
            if pending == 0 {
                t.records.remove((c, lid))?;
            } else if let Some(mut rec) = rec {
                rec.deleted = true;
                rec.data = "{}".into();
                rec.forget_server();
                t.put_record(c, lid, &rec)?;
            }
            ev.push(Event::Changed {
                collection: c.to_owned(),
                id: lid.to_owned(),
                op_id: None,
                origin,
                data: None,
            });
            return Ok(());
        }
        let mut new = StoredRecord::local(
            String::new(),
            pending,
            rec.as_ref().map(|r| r.local_ts).unwrap_or(r.updated_at),
        );
        new.data = new.stand_on(r);
        t.server_ids.insert((c, r.id.as_str()), lid)?;
        t.put_record(c, lid, &new)?;
        ev.push(Event::Changed {
            collection: c.to_owned(),
            id: lid.to_owned(),
            op_id: None,
            origin,
            data: Some(Doc(Value::Object(r.data.clone()))),
        });
        Ok(())
    }

    /// Carries out a conflict decision for `ops` (already out of the
    /// queue) of one record.
    #[allow(clippy::too_many_arguments)]
    fn apply_resolution(
        &mut self,
        t: &mut Tables<'_>,
        c: &str,
        lid: &str,
        ops: Vec<QueuedOp>,
        server: &ServerRecord,
        strategy: &str,
        resolution: &Resolution,
        merged_in: bool,
        ev: &mut Vec<Event>,
    ) -> Result<(), StoreError> {
        let n = ops.len() as u32;
        for op in &ops {
            t.ops.remove(op.op_id.as_str())?;
        }
        let client_ts = ops
            .iter()
            .map(|o| o.client_ts)
            .max()
            .unwrap_or_else(crate::domain::clock::now_ms);
        let enqueued_at = ops
            .first()
            .map(|o| o.enqueued_at)
            .unwrap_or_else(crate::domain::clock::now_ms);
        let rec = t.record(c, lid)?;
        let outcome;
        match resolution {
            Resolution::TakeServer => {
                let rec = rec.map(|mut r| {
                    r.pending = r.pending.saturating_sub(n);
                    r
                });
                let deleted_both =
                    server.deleted && ops.last().is_some_and(|o| o.kind == OpKind::Delete);
                self.take_server(t, c, lid, rec, server, Origin::Conflict, ev)?;
                outcome = if deleted_both {
                    (
                        ConflictOutcome::AlreadyDeleted,
                        "already deleted on the server".to_owned(),
                    )
                } else if merged_in {
                    (
                        ConflictOutcome::Merged,
                        "merged: the server already has every change".to_owned(),
                    )
                } else {
                    (ConflictOutcome::TookServer, "took server".to_owned())
                };
            }
            Resolution::Resend { kind, data } => {
                let mut rec = rec.unwrap_or(StoredRecord::local("{}".into(), n, client_ts));
                rec.pending = rec.pending.saturating_sub(n) + 1;
                // The record now stands on the server's version.
                if server.deleted {
                    t.server_ids.remove((c, server.id.as_str()))?;
                    rec.forget_server();
                } else {
                    t.server_ids.insert((c, server.id.as_str()), lid)?;
                    rec.stand_on(server);
                }
                let text = data.as_ref().map(|d| Value::Object(d.clone()).to_string());
                match &text {
                    Some(tx) => {
                        rec.data = tx.clone();
                        rec.deleted = false;
                    }
                    None => {
                        rec.data = "{}".into();
                        rec.deleted = true;
                    }
                }
                t.put_record(c, lid, &rec)?;
                let new_op = QueuedOp {
                    op_id: self.ids.next(),
                    collection: c.to_owned(),
                    local_id: lid.to_owned(),
                    kind: *kind,
                    data: text,
                    client_ts,
                    attempts: 0,
                    last_error: None,
                    enqueued_at,
                    base: None,
                };
                self.prepend_op(t, &new_op)?;
                ev.push(Event::Changed {
                    collection: c.to_owned(),
                    id: lid.to_owned(),
                    op_id: Some(new_op.op_id.clone()),
                    origin: Origin::Conflict,
                    data: data.clone().map(|d| Doc(Value::Object(d))),
                });
                outcome = (
                    ConflictOutcome::Resent,
                    format!("re-sent as {} (op {})", kind.as_str(), new_op.op_id),
                );
            }
            Resolution::Park => {
                let mut parked = match t.conflicts.get((c, lid))? {
                    Some(v) => from_store::<ParkedConflict>(v.value())?,
                    None => ParkedConflict {
                        server: ServerRecordStored::from(server),
                        ops: Vec::new(),
                        detected_at: crate::domain::clock::now_ms(),
                    },
                };
                parked.server = ServerRecordStored::from(server);
                for op in ops {
                    t.ops.insert(op.op_id.as_str(), PARKED_SEQ)?;
                    parked.ops.push(op);
                }
                t.conflicts
                    .insert((c, lid), to_store(&parked)?.as_slice())?;
                outcome = (
                    ConflictOutcome::Parked,
                    "parked for manual resolution".to_owned(),
                );
            }
        }
        ev.push(Event::Conflict {
            collection: c.to_owned(),
            id: lid.to_owned(),
            strategy: strategy.to_owned(),
            result: outcome.0,
            outcome: outcome.1,
        });
        Ok(())
    }

    fn resolve_parked(
        &mut self,
        t: &mut Tables<'_>,
        c: &str,
        lid: &str,
        take: Option<Side>,
        data: Option<&Document>,
        ev: &mut Vec<Event>,
    ) -> Result<JobResult, StoreError> {
        if take.is_none() && data.is_none() {
            return Ok(Err(WriteError::ResolveNeedsChoice));
        }
        let Some(parked) = t.conflicts.get((c, lid))?.map(|v| v.value().to_vec()) else {
            return Ok(Err(WriteError::NoParkedConflict {
                collection: c.to_owned(),
                id: lid.to_owned(),
            }));
        };
        let parked: ParkedConflict = from_store(&parked)?;
        let server = parked.server.to_record();
        t.conflicts.remove((c, lid))?;
        // Writes the app made after the park were made on the same stale
        // base: they are settled by this resolution too.
        let mut ops = parked.ops;
        let queued = t.pending_of(c, lid)?.saturating_sub(ops.len() as u32);
        for (s, _) in t.ops_of_record_after(0, c, lid, queued)? {
            if let Some(o) = t.take_op(s)? {
                ops.push(o);
            }
        }
        let rec = t.record(c, lid)?;
        // What to re-send, if anything.
        let resend: Option<(OpKind, Option<Document>)> = match (take, data) {
            (_, Some(d)) => Some((OpKind::Update, Some(d.clone()))),
            (Some(Side::Local), None) => match &rec {
                Some(r) if !r.deleted => match parse_doc_text(&r.data) {
                    Value::Object(m) => Some((OpKind::Update, Some(m))),
                    _ => Some((OpKind::Update, Some(Map::new()))),
                },
                _ => Some((OpKind::Delete, None)),
            },
            _ => None,
        };
        let resolution = match resend {
            // The server deleted it: an update must re-create it.
            Some((OpKind::Update, d)) if server.deleted => Resolution::Resend {
                kind: OpKind::Create,
                data: d,
            },
            // Both sides deleted: nothing left to send.
            Some((OpKind::Delete, _)) if server.deleted => Resolution::TakeServer,
            Some((kind, data)) => Resolution::Resend { kind, data },
            None => Resolution::TakeServer,
        };
        self.apply_resolution(t, c, lid, ops, &server, "manual", &resolution, false, ev)?;
        bump_resolved(t)?;
        Ok(Ok(WriteOutcome::Done))
    }

    /// One change from `v1/changes`.
    fn apply_remote(
        &mut self,
        t: &mut Tables<'_>,
        ch: &Change,
        ev: &mut Vec<Event>,
    ) -> Result<(), StoreError> {
        let c = ch.collection.as_str();
        let r = &ch.record;
        if crate::domain::ids::validate_collection(c).is_err() {
            tracing::warn!(
                collection = c,
                "pulled change for an invalid collection name ignored"
            );
            return Ok(());
        }
        let lid = t
            .server_ids
            .get((c, r.id.as_str()))?
            .map(|v| v.value().to_owned());
        let lid = match lid {
            Some(l) => l,
            None => {
                if r.deleted {
                    return Ok(()); // never had it, nothing to delete
                }
                // A record another device made: the server id doubles as the
                // local id when it is a valid, unused one.
                if validate_id(&r.id).is_ok() && t.record(c, &r.id)?.is_none() {
                    r.id.clone()
                } else {
                    self.ids.next()
                }
            }
        };
        let rec = t.record(c, &lid)?;
        if let Some(existing) = &rec {
            if existing.pending > 0 {
                // Local changes win locally until their ops meet the server:
                // they keep their base version and hit the 409 path there.
                // A parked conflict keeps the newest server record, so that
                // "take server" takes what the server has now.
                let parked = t
                    .conflicts
                    .get((c, lid.as_str()))?
                    .map(|v| v.value().to_vec());
                if let Some(bytes) = parked {
                    let mut p: ParkedConflict = from_store(&bytes)?;
                    if r.version > p.server.version {
                        p.server = ServerRecordStored::from(r);
                        t.conflicts
                            .insert((c, lid.as_str()), to_store(&p)?.as_slice())?;
                    }
                }
                return Ok(());
            }
            if existing.version.is_some_and(|v| v >= r.version) {
                return Ok(()); // our own write coming back, or older
            }
        }
        self.take_server(t, c, &lid, rec, r, Origin::Remote, ev)
    }
}

fn bump_resolved(t: &mut Tables<'_>) -> Result<(), StoreError> {
    let n = u64_be(
        t.meta
            .get(META_RESOLVED)?
            .map(|v| v.value().to_vec())
            .as_deref(),
    )
    .unwrap_or(0);
    t.meta
        .insert(META_RESOLVED, (n + 1).to_be_bytes().as_slice())?;
    Ok(())
}

fn not_found(collection: &str, id: &str) -> WriteError {
    WriteError::NotFound {
        collection: collection.to_owned(),
        id: id.to_owned(),
    }
}

/// Every table, opened once per transaction.
struct Tables<'txn> {
    records: Table<'txn, (&'static str, &'static str), &'static [u8]>,
    queue: Table<'txn, u64, &'static [u8]>,
    ops: Table<'txn, &'static str, u64>,
    server_ids: Table<'txn, (&'static str, &'static str), &'static str>,
    dead: Table<'txn, u64, &'static [u8]>,
    conflicts: Table<'txn, (&'static str, &'static str), &'static [u8]>,
    meta: Table<'txn, &'static str, &'static [u8]>,
}

impl<'txn> Tables<'txn> {
    fn open(txn: &'txn WriteTransaction) -> Result<Self, StoreError> {
        Ok(Tables {
            records: txn.open_table(RECORDS)?,
            queue: txn.open_table(QUEUE)?,
            ops: txn.open_table(OP_INDEX)?,
            server_ids: txn.open_table(SERVER_IDS)?,
            dead: txn.open_table(DEAD)?,
            conflicts: txn.open_table(CONFLICTS)?,
            meta: txn.open_table(META)?,
        })
    }

    fn record(&self, c: &str, id: &str) -> Result<Option<StoredRecord>, StoreError> {
        match self.records.get((c, id))? {
            Some(v) => Ok(Some(from_store(v.value())?)),
            None => Ok(None),
        }
    }

    fn put_record(&mut self, c: &str, id: &str, r: &StoredRecord) -> Result<(), StoreError> {
        self.records.insert((c, id), to_store(r)?.as_slice())?;
        Ok(())
    }

    fn op(&self, seq: u64) -> Result<Option<QueuedOp>, StoreError> {
        match self.queue.get(seq)? {
            Some(v) => Ok(Some(from_store(v.value())?)),
            None => Ok(None),
        }
    }

    /// Removes the op at `seq` from the queue and the op index.
    fn take_op(&mut self, seq: u64) -> Result<Option<QueuedOp>, StoreError> {
        let Some(bytes) = self.queue.remove(seq)?.map(|v| v.value().to_vec()) else {
            return Ok(None);
        };
        let op: QueuedOp = from_store(&bytes)?;
        self.ops.remove(op.op_id.as_str())?;
        Ok(Some(op))
    }

    /// The record's count of pending ops (0 if it is gone).
    fn pending_of(&self, c: &str, lid: &str) -> Result<u32, StoreError> {
        Ok(self.record(c, lid)?.map(|r| r.pending).unwrap_or(0))
    }

    /// Queued ops of one record with a sequence above `seq`, at most
    /// `expected` of them (the record's pending count says how many there
    /// can be). Usually that is none and nothing is read; otherwise it is a
    /// scan of the queue that stops at the last one, on the dead-letter and
    /// conflict paths only.
    fn ops_of_record_after(
        &self,
        seq: u64,
        c: &str,
        lid: &str,
        expected: u32,
    ) -> Result<Vec<(u64, QueuedOp)>, StoreError> {
        let mut out = Vec::new();
        if expected == 0 {
            return Ok(out);
        }
        for item in self.queue.range(seq.saturating_add(1)..)? {
            if out.len() >= expected as usize {
                break;
            }
            let (k, v) = item?;
            let op: QueuedOp = from_store(v.value())?;
            if op.collection == c && op.local_id == lid {
                out.push((k.value(), op));
            }
        }
        Ok(out)
    }

    fn find_dead(&self, op_id: &str) -> Result<Option<(u64, DeadLetter)>, StoreError> {
        for item in self.dead.iter()? {
            let (k, v) = item?;
            let d: DeadLetter = from_store(v.value())?;
            if d.op.op_id == op_id {
                return Ok(Some((k.value(), d)));
            }
        }
        Ok(None)
    }
}
