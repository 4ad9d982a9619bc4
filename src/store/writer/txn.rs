//! One write transaction as the jobs see it: every table (opened on first
//! use), the sequence counters, the id generator and the events the job
//! emits. The small helpers every kind of job shares (queue appends, taking
//! the server's record) live here too.

use std::borrow::Borrow;
use std::cell::OnceCell;
use std::ops::RangeBounds;
use std::sync::Arc;

use redb::{
    AccessGuard, Key, Range, ReadableTable, Table, TableDefinition, Value as RedbValue,
    WriteTransaction,
};
use serde_json::Value;

use crate::domain::direction::Directions;
use crate::domain::ids::IdGen;
use crate::domain::{
    DeadLetter, Doc, Event, Origin, QueuedOp, ServerRecord, StoreError, StoredRecord, WriteError,
};
use crate::store::crypt::Vault;
use crate::store::index::Maintained;
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

/// A table of the transaction, opened on its first use. A batch of app
/// writes uses 5 of the 12 tables; opening the others anyway cost a
/// lookup and a decode in redb's table tree at the open and again at the
/// commit, about a fifth of the writer's instructions per put (issue 19,
/// item 7). The methods are the [`Table`] methods the jobs use.
pub(super) struct Lazy<'txn, K: Key + 'static, V: RedbValue + 'static> {
    txn: &'txn WriteTransaction,
    def: TableDefinition<'static, K, V>,
    table: OnceCell<Table<'txn, K, V>>,
}

impl<'txn, K: Key + 'static, V: RedbValue + 'static> Lazy<'txn, K, V> {
    fn new(txn: &'txn WriteTransaction, def: TableDefinition<'static, K, V>) -> Self {
        Lazy {
            txn,
            def,
            table: OnceCell::new(),
        }
    }

    /// The table, opened now if this is its first use.
    pub fn table(&self) -> Result<&Table<'txn, K, V>, StoreError> {
        if let Some(t) = self.table.get() {
            return Ok(t);
        }
        let t = self.txn.open_table(self.def)?;
        Ok(self.table.get_or_init(|| t))
    }

    /// The table for writing, opened now if this is its first use.
    pub fn table_mut(&mut self) -> Result<&mut Table<'txn, K, V>, StoreError> {
        self.table()?;
        self.table
            .get_mut()
            .ok_or_else(|| StoreError::Engine("a table opened just now is not open".into()))
    }

    pub fn get<'a>(
        &self,
        key: impl Borrow<K::SelfType<'a>>,
    ) -> Result<Option<AccessGuard<'_, V>>, StoreError> {
        Ok(self.table()?.get(key)?)
    }

    pub fn insert<'k, 'v>(
        &mut self,
        key: impl Borrow<K::SelfType<'k>>,
        value: impl Borrow<V::SelfType<'v>>,
    ) -> Result<Option<AccessGuard<'_, V>>, StoreError> {
        Ok(self.table_mut()?.insert(key, value)?)
    }

    pub fn remove<'a>(
        &mut self,
        key: impl Borrow<K::SelfType<'a>>,
    ) -> Result<Option<AccessGuard<'_, V>>, StoreError> {
        Ok(self.table_mut()?.remove(key)?)
    }

    pub fn range<'a, KR>(
        &self,
        range: impl RangeBounds<KR> + 'a,
    ) -> Result<Range<'_, K, V>, StoreError>
    where
        KR: Borrow<K::SelfType<'a>> + 'a,
    {
        Ok(self.table()?.range(range)?)
    }

    #[allow(clippy::type_complexity)]
    pub fn first(&self) -> Result<Option<(AccessGuard<'_, K>, AccessGuard<'_, V>)>, StoreError> {
        Ok(self.table()?.first()?)
    }

    #[allow(clippy::type_complexity)]
    pub fn last(&self) -> Result<Option<(AccessGuard<'_, K>, AccessGuard<'_, V>)>, StoreError> {
        Ok(self.table()?.last()?)
    }
}

/// Every table (each opened on first use) and what the jobs share.
pub(super) struct Txn<'txn> {
    /// The backend keeps client-chosen ids (see `Store::backend_client_ids`).
    pub client_ids: bool,
    /// Which way each collection syncs (see `Store::directions`).
    pub directions: Arc<Directions>,
    /// Seals the values of records, the queue, conflicts, dead letters
    /// and deferred records (plain with encryption off).
    pub vault: Vault,
    /// Private: every write of a record goes through [`Txn::put_record`]
    /// or [`Txn::remove_record`], which keep its index entries with it.
    records: Lazy<'txn, (&'static str, &'static str), &'static [u8]>,
    pub queue: Lazy<'txn, u64, &'static [u8]>,
    pub ops: Lazy<'txn, &'static str, u64>,
    pub server_ids: Lazy<'txn, (&'static str, &'static str), &'static str>,
    pub dead: Lazy<'txn, u64, &'static [u8]>,
    pub conflicts: Lazy<'txn, (&'static str, &'static str), &'static [u8]>,
    pub meta: Lazy<'txn, &'static str, &'static [u8]>,
    pub record_queue: Lazy<'txn, (&'static str, &'static str, u64), ()>,
    pub dead_by_op: Lazy<'txn, &'static str, u64>,
    pub deferred: Lazy<'txn, (&'static str, &'static str), &'static [u8]>,
    pub settled: Lazy<'txn, &'static str, &'static [u8]>,
    pub settled_order: Lazy<'txn, u64, &'static str>,
    pub scope_state: Lazy<'txn, &'static str, &'static [u8]>,
    pub scope_choices: Lazy<'txn, &'static str, u8>,
    pub dead_sub: Lazy<'txn, &'static str, &'static str>,
    pub index_meta: Lazy<'txn, (&'static str, &'static str), &'static [u8]>,
    pub index_entries: Lazy<'txn, (&'static str, &'static str, &'static [u8], &'static str), ()>,
    /// The indexes kept with every record write (see [`super::indexes`]).
    pub indexes: Arc<Maintained>,
    pub ids: &'txn IdGen,
    pub counters: &'txn mut Counters,
    /// Events of the job being applied.
    pub ev: Vec<Event>,
    /// An op left the queue (by any path): `wait_synced` must look again.
    pub ops_left: bool,
    /// Test builds: the records whose live document this job changed
    /// (written, deleted or gone), for the check that each one has its
    /// `changed` event (watchers and live queries rely on it).
    #[cfg(test)]
    pub doc_changes: Vec<(String, String)>,
}

impl<'txn> Txn<'txn> {
    pub fn open(
        txn: &'txn WriteTransaction,
        ids: &'txn IdGen,
        counters: &'txn mut Counters,
        vault: Vault,
    ) -> Result<Self, StoreError> {
        Ok(Txn {
            vault,
            ids,
            counters,
            client_ids: false,
            directions: Arc::default(),
            ev: Vec::new(),
            ops_left: false,
            #[cfg(test)]
            doc_changes: Vec::new(),
            records: Lazy::new(txn, RECORDS),
            queue: Lazy::new(txn, QUEUE),
            ops: Lazy::new(txn, OP_INDEX),
            server_ids: Lazy::new(txn, SERVER_IDS),
            dead: Lazy::new(txn, DEAD),
            conflicts: Lazy::new(txn, CONFLICTS),
            meta: Lazy::new(txn, META),
            record_queue: Lazy::new(txn, RECORD_QUEUE),
            dead_by_op: Lazy::new(txn, DEAD_BY_OP),
            deferred: Lazy::new(txn, DEFERRED),
            settled: Lazy::new(txn, SETTLED),
            settled_order: Lazy::new(txn, SETTLED_ORDER),
            scope_state: Lazy::new(txn, SCOPE_STATE),
            scope_choices: Lazy::new(txn, SCOPE_CHOICES),
            dead_sub: Lazy::new(txn, DEAD_SUB),
            index_meta: Lazy::new(txn, INDEXES),
            index_entries: Lazy::new(txn, INDEX_ENTRIES),
            indexes: Arc::default(),
        })
    }

    pub fn record(&self, c: &str, id: &str) -> Result<Option<StoredRecord>, StoreError> {
        match self.records.get((c, id))? {
            Some(v) => Ok(Some(self.vault.decode(RECORDS, &(c, id), v.value())?)),
            None => Ok(None),
        }
    }

    /// Writes a record, and its entries in the collection's indexes.
    pub fn put_record(&mut self, c: &str, id: &str, r: &StoredRecord) -> Result<(), StoreError> {
        let indexed = !self.indexes.of(c).is_empty() || cfg!(test);
        let bytes = self.vault.encode(RECORDS, &(c, id), r)?;
        let old: Option<StoredRecord> = match self.records.insert((c, id), bytes.as_slice())? {
            Some(v) if indexed => Some(self.vault.decode(RECORDS, &(c, id), v.value())?),
            _ => None,
        };
        if !indexed {
            return Ok(());
        }
        let live = |r: &StoredRecord| (!r.deleted).then(|| r.data.clone());
        let old = old.as_ref().and_then(live);
        self.note_doc_change(c, id, old.as_deref(), live(r).as_deref());
        super::indexes::reindex(self, c, id, old.as_deref(), live(r).as_deref())
    }

    #[cfg(test)]
    fn note_doc_change(&mut self, c: &str, id: &str, old: Option<&str>, new: Option<&str>) {
        if old != new {
            self.doc_changes.push((c.to_owned(), id.to_owned()));
        }
    }

    #[cfg(not(test))]
    fn note_doc_change(&mut self, _: &str, _: &str, _: Option<&str>, _: Option<&str>) {}

    /// Removes a record, and its entries in the collection's indexes.
    pub fn remove_record(&mut self, c: &str, id: &str) -> Result<(), StoreError> {
        let indexed = !self.indexes.of(c).is_empty() || cfg!(test);
        let old: Option<StoredRecord> = match self.records.remove((c, id))? {
            Some(v) if indexed => Some(self.vault.decode(RECORDS, &(c, id), v.value())?),
            _ => None,
        };
        let Some(old) = old.filter(|r| !r.deleted) else {
            return Ok(());
        };
        self.note_doc_change(c, id, Some(&old.data), None);
        super::indexes::reindex(self, c, id, Some(&old.data), None)
    }

    /// Every record from `from` on, in key order (read only).
    pub fn records_from<'a>(
        &self,
        from: (&'a str, &'a str),
    ) -> Result<Range<'_, (&'static str, &'static str), &'static [u8]>, StoreError> {
        self.records.range(from..)
    }

    pub fn op(&self, seq: u64) -> Result<Option<QueuedOp>, StoreError> {
        match self.queue.get(seq)? {
            Some(v) => Ok(Some(self.vault.decode(QUEUE, &seq, v.value())?)),
            None => Ok(None),
        }
    }

    /// Removes the op at `seq` from the queue and the op index.
    pub fn take_op(&mut self, seq: u64) -> Result<Option<QueuedOp>, StoreError> {
        let Some(bytes) = self.queue.remove(seq)?.map(|v| v.value().to_vec()) else {
            return Ok(None);
        };
        let op: QueuedOp = self.vault.decode(QUEUE, &seq, &bytes)?;
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
            Some((k, v)) => Ok(Some((
                k.value(),
                self.vault.decode(QUEUE, &k.value(), v.value())?,
            ))),
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
            let op: QueuedOp = self.vault.decode(QUEUE, &k.value(), v.value())?;
            if op.collection != c || op.local_id != lid {
                return Ok(Some(k.value()));
            }
        }
        Ok(None)
    }

    /// Puts `op` in the queue at `seq`, with its op index and record index.
    pub fn insert_op(&mut self, seq: u64, op: &QueuedOp) -> Result<(), StoreError> {
        let bytes = self.vault.encode(QUEUE, &seq, op)?;
        self.queue.insert(seq, bytes.as_slice())?;
        self.ops.insert(op.op_id.as_str(), seq)?;
        self.record_queue
            .insert((op.collection.as_str(), op.local_id.as_str(), seq), ())?;
        Ok(())
    }

    /// Adds a dead letter (and its op_id index entry).
    pub fn insert_dead(&mut self, seq: u64, d: &DeadLetter) -> Result<(), StoreError> {
        let bytes = self.vault.encode(DEAD, &seq, d)?;
        self.dead.insert(seq, bytes.as_slice())?;
        self.dead_by_op.insert(d.op.op_id.as_str(), seq)?;
        Ok(())
    }

    /// The dead letter with `op_id`, if there is one (left in place).
    pub fn peek_dead(&self, op_id: &str) -> Result<Option<DeadLetter>, StoreError> {
        let Some(seq) = self.dead_by_op.get(op_id)?.map(|v| v.value()) else {
            return Ok(None);
        };
        match self.dead.get(seq)? {
            Some(v) => Ok(Some(self.vault.decode(DEAD, &seq, v.value())?)),
            None => Ok(None),
        }
    }

    /// Removes the dead letter with `op_id`, if there is one.
    pub fn take_dead(&mut self, op_id: &str) -> Result<Option<DeadLetter>, StoreError> {
        let Some(seq) = self.dead_by_op.remove(op_id)?.map(|v| v.value()) else {
            return Ok(None);
        };
        let Some(bytes) = self.dead.remove(seq)?.map(|v| v.value().to_vec()) else {
            return Ok(None);
        };
        self.dead_sub.remove(op_id)?;
        Ok(Some(self.vault.decode(DEAD, &seq, &bytes)?))
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
            x.remove_record(c, lid)?;
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
    // A record that left its scope while it had pending ops stays marked
    // when the record taken is still in that scope: a conflict hands over
    // the server's record as it stood before the move (a 409's, a parked
    // one's), so taking it says nothing new about where the record is.
    let left = rec.as_ref().and_then(|o| o.gone_from.clone());
    if left.is_some() && left == new.scope {
        new.gone_from = left;
    }
    x.server_ids.insert((c, r.id.as_str()), lid)?;
    x.put_record(c, lid, &new)?;
    x.ev.push(Event::Changed {
        collection: c.to_owned(),
        id: lid.to_owned(),
        op_id: None,
        origin,
        data: Some(Doc(Value::Object(r.data.clone()))),
    });
    // Nothing pending keeps a record that left its scope any more.
    super::scopes::purge_if_gone(x, c, lid)
}
