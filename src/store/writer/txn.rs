//! One write transaction as the jobs see it: every table opened once, the
//! sequence counters, the id generator and the events the job emits. The
//! small helpers every kind of job shares (queue appends, taking the
//! server's record) live here too.

use redb::{ReadableTable, Table, WriteTransaction};
use serde_json::Value;

use crate::domain::ids::IdGen;
use crate::domain::{
    DeadLetter, Doc, Event, Origin, QueuedOp, ServerRecord, StoreError, StoredRecord, WriteError,
};
use crate::store::encoding::{from_store, to_store};
use crate::store::tables::*;

use super::{Counters, WriteOutcome};

/// Result of one job inside a batch: its answer, or its own error (nothing
/// of it written).
pub(super) type JobResult = Result<WriteOutcome, WriteError>;

/// Counts one more resolved conflict, for status.
pub(super) fn bump_resolved(x: &mut Txn<'_>) -> Result<(), StoreError> {
    let n = u64_be(
        x.meta
            .get(META_RESOLVED)?
            .map(|v| v.value().to_vec())
            .as_deref(),
    )
    .unwrap_or(0);
    x.meta
        .insert(META_RESOLVED, (n + 1).to_be_bytes().as_slice())?;
    Ok(())
}

pub(super) fn not_found(collection: &str, id: &str) -> WriteError {
    WriteError::NotFound {
        collection: collection.to_owned(),
        id: id.to_owned(),
    }
}

/// Every table, opened once per transaction, and what the jobs share.
pub(super) struct Txn<'txn> {
    /// The backend keeps client-chosen ids (see `Store::backend_client_ids`).
    pub client_ids: bool,
    pub records: Table<'txn, (&'static str, &'static str), &'static [u8]>,
    pub queue: Table<'txn, u64, &'static [u8]>,
    pub ops: Table<'txn, &'static str, u64>,
    pub server_ids: Table<'txn, (&'static str, &'static str), &'static str>,
    pub dead: Table<'txn, u64, &'static [u8]>,
    pub conflicts: Table<'txn, (&'static str, &'static str), &'static [u8]>,
    pub meta: Table<'txn, &'static str, &'static [u8]>,
    pub record_queue: Table<'txn, (&'static str, &'static str, u64), ()>,
    pub dead_by_op: Table<'txn, &'static str, u64>,
    pub deferred: Table<'txn, (&'static str, &'static str), &'static [u8]>,
    pub settled: Table<'txn, &'static str, &'static [u8]>,
    pub settled_order: Table<'txn, u64, &'static str>,
    pub ids: &'txn IdGen,
    pub counters: &'txn mut Counters,
    /// Events of the job being applied.
    pub ev: Vec<Event>,
    /// An op left the queue (by any path): `wait_synced` must look again.
    pub ops_left: bool,
}

impl<'txn> Txn<'txn> {
    pub fn open(
        txn: &'txn WriteTransaction,
        ids: &'txn IdGen,
        counters: &'txn mut Counters,
    ) -> Result<Self, StoreError> {
        Ok(Txn {
            ids,
            counters,
            client_ids: false,
            ev: Vec::new(),
            ops_left: false,
            records: txn.open_table(RECORDS)?,
            queue: txn.open_table(QUEUE)?,
            ops: txn.open_table(OP_INDEX)?,
            server_ids: txn.open_table(SERVER_IDS)?,
            dead: txn.open_table(DEAD)?,
            conflicts: txn.open_table(CONFLICTS)?,
            meta: txn.open_table(META)?,
            record_queue: txn.open_table(RECORD_QUEUE)?,
            dead_by_op: txn.open_table(DEAD_BY_OP)?,
            deferred: txn.open_table(DEFERRED)?,
            settled: txn.open_table(SETTLED)?,
            settled_order: txn.open_table(SETTLED_ORDER)?,
        })
    }

    pub fn record(&self, c: &str, id: &str) -> Result<Option<StoredRecord>, StoreError> {
        match self.records.get((c, id))? {
            Some(v) => Ok(Some(from_store(v.value())?)),
            None => Ok(None),
        }
    }

    pub fn put_record(&mut self, c: &str, id: &str, r: &StoredRecord) -> Result<(), StoreError> {
        self.records.insert((c, id), to_store(r)?.as_slice())?;
        Ok(())
    }

    pub fn op(&self, seq: u64) -> Result<Option<QueuedOp>, StoreError> {
        match self.queue.get(seq)? {
            Some(v) => Ok(Some(from_store(v.value())?)),
            None => Ok(None),
        }
    }

    /// Removes the op at `seq` from the queue and the op index.
    pub fn take_op(&mut self, seq: u64) -> Result<Option<QueuedOp>, StoreError> {
        let Some(bytes) = self.queue.remove(seq)?.map(|v| v.value().to_vec()) else {
            return Ok(None);
        };
        let op: QueuedOp = from_store(&bytes)?;
        self.ops.remove(op.op_id.as_str())?;
        self.ops_left = true;
        self.record_queue
            .remove((op.collection.as_str(), op.local_id.as_str(), seq))?;
        Ok(Some(op))
    }

    /// The record's count of pending ops (0 if it is gone), less `n`: ops
    /// of it that are in hand (taken or about to be).
    pub fn pending_besides(&self, c: &str, lid: &str, n: u32) -> Result<u32, StoreError> {
        fewer(c, lid, self.pending_of(c, lid)?, n)
    }

    /// The record's count of pending ops (0 if it is gone).
    pub fn pending_of(&self, c: &str, lid: &str) -> Result<u32, StoreError> {
        Ok(self.record(c, lid)?.map(|r| r.pending).unwrap_or(0))
    }

    /// Queued ops of one record with a sequence above `seq`, in order: a
    /// range of the record's index, never a scan of the queue. `expected`
    /// (the record's pending count) bounds it.
    pub fn ops_of_record_after(
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
        let seqs: Vec<u64> = self
            .record_queue
            .range((c, lid, seq.saturating_add(1))..=(c, lid, u64::MAX))?
            .take(expected as usize)
            .map(|item| item.map(|(k, _)| k.value().2))
            .collect::<Result<_, _>>()?;
        for s in seqs {
            if let Some(op) = self.op(s)? {
                out.push((s, op));
            }
        }
        Ok(out)
    }

    /// The last op of the queue.
    pub fn last_op(&self) -> Result<Option<(u64, QueuedOp)>, StoreError> {
        match self.queue.last()? {
            Some((k, v)) => Ok(Some((k.value(), from_store(v.value())?))),
            None => Ok(None),
        }
    }

    /// The first queued op after `seq` that belongs to another record: the
    /// end of the record's run (a scan that stops there).
    pub fn first_foreign_after(
        &self,
        seq: u64,
        c: &str,
        lid: &str,
    ) -> Result<Option<u64>, StoreError> {
        for item in self.queue.range(seq.saturating_add(1)..)? {
            let (k, v) = item?;
            let op: QueuedOp = from_store(v.value())?;
            if op.collection != c || op.local_id != lid {
                return Ok(Some(k.value()));
            }
        }
        Ok(None)
    }

    /// Puts `op` in the queue at `seq`, with its op index and record index.
    pub fn insert_op(&mut self, seq: u64, op: &QueuedOp) -> Result<(), StoreError> {
        self.queue.insert(seq, to_store(op)?.as_slice())?;
        self.ops.insert(op.op_id.as_str(), seq)?;
        self.record_queue
            .insert((op.collection.as_str(), op.local_id.as_str(), seq), ())?;
        Ok(())
    }

    /// Adds a dead letter (and its op_id index entry).
    pub fn insert_dead(&mut self, seq: u64, d: &DeadLetter) -> Result<(), StoreError> {
        self.dead.insert(seq, to_store(d)?.as_slice())?;
        self.dead_by_op.insert(d.op.op_id.as_str(), seq)?;
        Ok(())
    }

    /// Removes the dead letter with `op_id`, if there is one.
    pub fn take_dead(&mut self, op_id: &str) -> Result<Option<DeadLetter>, StoreError> {
        let Some(seq) = self.dead_by_op.remove(op_id)?.map(|v| v.value()) else {
            return Ok(None);
        };
        let Some(bytes) = self.dead.remove(seq)?.map(|v| v.value().to_vec()) else {
            return Ok(None);
        };
        Ok(Some(from_store(&bytes)?))
    }
}

/// `pending - n` for the record `c/lid`: the count after `n` of its ops
/// left. Below zero is a broken invariant: an error that abandons the
/// transaction, never a count clamped to zero that hides the drift.
pub(super) fn fewer(c: &str, lid: &str, pending: u32, n: u32) -> Result<u32, StoreError> {
    pending
        .checked_sub(n)
        .ok_or_else(|| StoreError::PendingUnderflow {
            collection: c.to_owned(),
            id: lid.to_owned(),
            pending,
            leaving: n,
        })
}

/// Appends `op` at the tail of the queue.
pub(super) fn append_op(x: &mut Txn<'_>, op: &QueuedOp) -> Result<u64, StoreError> {
    let seq = x.counters.queue_tail;
    x.counters.queue_tail += 1;
    x.insert_op(seq, op)?;
    Ok(seq)
}

/// Puts `op` at the head of the queue (a re-send after a conflict).
pub(super) fn prepend_op(x: &mut Txn<'_>, op: &QueuedOp) -> Result<u64, StoreError> {
    let seq = match x.queue.first()? {
        Some((k, _)) => k.value() - 1,
        None => {
            let s = x.counters.queue_tail;
            x.counters.queue_tail += 1;
            s
        }
    };
    // A re-send never takes in later writes: they may depend on seeing
    // its result first.
    x.counters.claim(seq);
    x.insert_op(seq, op)?;
    Ok(seq)
}

pub(super) fn take_server(
    x: &mut Txn<'_>,
    c: &str,
    lid: &str,
    rec: Option<StoredRecord>,
    r: &ServerRecord,
    origin: Origin,
) -> Result<(), StoreError> {
    let pending = rec.as_ref().map(|r| r.pending).unwrap_or(0);
    if r.deleted {
        x.server_ids.remove((c, r.id.as_str()))?;
        if pending == 0 {
            x.records.remove((c, lid))?;
        } else if let Some(mut rec) = rec {
            rec.deleted = true;
            rec.data = "{}".into();
            rec.forget_server();
            x.put_record(c, lid, &rec)?;
        }
        x.ev.push(Event::Changed {
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
    x.server_ids.insert((c, r.id.as_str()), lid)?;
    x.put_record(c, lid, &new)?;
    x.ev.push(Event::Changed {
        collection: c.to_owned(),
        id: lid.to_owned(),
        op_id: None,
        origin,
        data: Some(Doc(Value::Object(r.data.clone()))),
    });
    Ok(())
}
