//! App writes: `put`, `patch` and `delete`. Each changes a record and
//! appends its op to the queue in the same transaction, which is the
//! store's first invariant; [`local_write`] is the one place that does both.

use serde_json::{Map, Value};

use crate::domain::{
    Doc, Document, Event, OpKind, Origin, QueuedOp, StoreError, StoredRecord, WriteError,
};
use crate::store::parse_doc_text;

use super::txn::{append_op, fewer, not_found, JobResult, Txn};
use super::WriteOutcome;
use crate::store::tables::{CONFLICTS, QUEUE};
use crate::store::ParkedConflict;

/// Creates or replaces a record (a put after a delete starts a new server record).
pub(super) fn put(
    x: &mut Txn<'_>,
    collection: &str,
    id: Option<&str>,
    data: &Document,
    client_ts: i64,
    scope: Option<&str>,
) -> Result<JobResult, StoreError> {
    if let Some(e) = read_only(x, collection) {
        return Ok(Err(e));
    }
    let id = match id {
        Some(id) => id.to_owned(),
        None => x.ids.next(),
    };
    if let Some(e) = parked_full(x, collection, &id)? {
        return Ok(Err(e));
    }
    let existing = x.record(collection, &id)?;
    let live = existing.as_ref().filter(|r| !r.deleted);
    // Attachments stay through a put: carried over, never changed by it.
    let carried = match super::attach::carry(collection, &id, data, live.map(|r| r.data.as_str())) {
        Ok(c) => c,
        Err(e) => return Ok(Err(e)),
    };
    let text = Value::Object(carried.clone().unwrap_or_else(|| data.clone())).to_string();
    let (rec, kind) = match existing {
        Some(mut r) if !r.deleted => {
            r.data = text.clone();
            r.pending += 1;
            r.local_ts = client_ts;
            (r, OpKind::Update)
        }
        // A put after a delete starts a new server record: the
        // old one is (or will be) a tombstone. The old server id
        // stays until the queued delete has used it.
        Some(mut r) => {
            r.data = text.clone();
            r.deleted = false;
            r.pending += 1;
            r.local_ts = client_ts;
            (r, OpKind::Create)
        }
        None => (
            StoredRecord::local(text.clone(), 1, client_ts),
            OpKind::Create,
        ),
    };
    let write = Write {
        kind,
        data: Some(text),
        client_ts,
        scope: scope.map(str::to_owned),
    };
    let op_id = local_write(x, collection, &id, &rec, write)?;
    // Its `changed` event is built after the commit ([`put_event`]),
    // unless the stored document is not the app's (it carries the
    // record's attachments): then it is built here, from that document.
    if let Some(doc) = carried {
        x.ev.push(put_event(collection, &id, &op_id, &doc));
    }
    Ok(Ok(WriteOutcome::Written { id, op_id }))
}

/// The `changed` event of a put that committed.
pub(super) fn put_event(collection: &str, id: &str, op_id: &str, data: &Document) -> Event {
    Event::Changed {
        collection: collection.to_owned(),
        id: id.to_owned(),
        op_id: queued(op_id),
        origin: Origin::Local,
        data: Some(Doc(Value::Object(data.clone()))),
    }
}

/// The op id a `changed` event names: none for a write that queued no op
/// (a local collection's, see [`keep_local`]).
fn queued(op_id: &str) -> Option<String> {
    (!op_id.is_empty()).then(|| op_id.to_owned())
}

/// `Some(error)` when apps may not write to `collection` on this device:
/// it only pulls (`sync = "pull"`).
pub(super) fn read_only(x: &Txn<'_>, collection: &str) -> Option<WriteError> {
    (!x.directions.of(collection).accepts_writes()).then(|| WriteError::ReadOnlyCollection {
        collection: collection.to_owned(),
    })
}

/// Merges top-level keys into a live record; `null` removes a key.
pub(super) fn patch(
    x: &mut Txn<'_>,
    collection: &str,
    id: &str,
    data: &Document,
    client_ts: i64,
    max_bytes: u32,
) -> Result<JobResult, StoreError> {
    edit_live(x, collection, id, client_ts, max_bytes, |doc, current| {
        super::attach::patch_keeps(collection, id, data, current)?;
        for (k, v) in data {
            if v.is_null() {
                doc.remove(k);
            } else {
                doc.insert(k.clone(), v.clone());
            }
        }
        Ok(())
    })
}

/// The one shape of a write that edits a live record's document (a patch,
/// an attach, a detach): `edit` changes the document (it gets the stored
/// text too), the result must fit `max_bytes`, and it is queued as an
/// update with its `changed` event.
pub(super) fn edit_live(
    x: &mut Txn<'_>,
    collection: &str,
    id: &str,
    client_ts: i64,
    max_bytes: u32,
    edit: impl FnOnce(&mut Map<String, Value>, &str) -> Result<(), WriteError>,
) -> Result<JobResult, StoreError> {
    if let Some(e) = read_only(x, collection) {
        return Ok(Err(e));
    }
    if let Some(e) = parked_full(x, collection, id)? {
        return Ok(Err(e));
    }
    let Some(mut rec) = x.record(collection, id)?.filter(|r| !r.deleted) else {
        return Ok(Err(not_found(collection, id)));
    };
    let mut doc = match parse_doc_text(&rec.data) {
        Value::Object(m) => m,
        _ => Map::new(),
    };
    if let Err(e) = edit(&mut doc, &rec.data) {
        return Ok(Err(e));
    }
    let merged = Value::Object(doc);
    let text = merged.to_string();
    if text.len() > max_bytes as usize {
        return Ok(Err(WriteError::TooLarge {
            bytes: text.len(),
            limit: max_bytes,
        }));
    }
    rec.data = text.clone();
    rec.pending += 1;
    rec.local_ts = client_ts;
    let write = Write {
        kind: OpKind::Update,
        data: Some(text),
        client_ts,
        scope: None,
    };
    let op_id = local_write(x, collection, id, &rec, write)?;
    x.ev.push(Event::Changed {
        collection: collection.to_owned(),
        id: id.to_owned(),
        op_id: queued(&op_id),
        origin: Origin::Local,
        data: Some(Doc(merged)),
    });
    Ok(Ok(WriteOutcome::Written {
        id: id.to_owned(),
        op_id,
    }))
}

/// Deletes a live record locally and queues the delete.
pub(super) fn delete(
    x: &mut Txn<'_>,
    collection: &str,
    id: &str,
    client_ts: i64,
) -> Result<JobResult, StoreError> {
    if let Some(e) = read_only(x, collection) {
        return Ok(Err(e));
    }
    if let Some(e) = parked_full(x, collection, id)? {
        return Ok(Err(e));
    }
    let Some(mut rec) = x.record(collection, id)?.filter(|r| !r.deleted) else {
        return Ok(Err(not_found(collection, id)));
    };
    rec.deleted = true;
    rec.data = "{}".into();
    rec.pending += 1;
    rec.local_ts = client_ts;
    let write = Write {
        kind: OpKind::Delete,
        data: None,
        client_ts,
        scope: None,
    };
    let op_id = local_write(x, collection, id, &rec, write)?;
    x.ev.push(Event::Changed {
        collection: collection.to_owned(),
        id: id.to_owned(),
        op_id: queued(&op_id),
        origin: Origin::Local,
        data: None,
    });
    // A delete that cancelled an unsent create leaves nothing queued: a
    // server record of this id pulled meanwhile is the record now (after
    // the delete's own event, so watchers end on it).
    super::verdict::settle_deferred(x, collection, id)?;
    Ok(Ok(WriteOutcome::Written {
        id: id.to_owned(),
        op_id,
    }))
}

/// Most ops a parked conflict keeps for one record. Every write to a
/// record whose conflict waits for a person meets the server's newer
/// version and is parked too; past this bound further writes are refused
/// until the conflict is resolved, instead of one stored value growing
/// without end.
pub const MAX_PARKED_OPS: usize = if cfg!(test) { 32 } else { 1000 };

/// `Some(error)` when the record's parked conflict already holds
/// [`MAX_PARKED_OPS`] ops.
pub(super) fn parked_full(
    x: &Txn<'_>,
    c: &str,
    id: &str,
) -> Result<Option<WriteError>, StoreError> {
    let Some(v) = x.conflicts.get((c, id))? else {
        return Ok(None);
    };
    let parked: ParkedConflict = x.vault.decode(CONFLICTS, &(c, id), v.value())?;
    Ok(
        (parked.ops.len() >= MAX_PARKED_OPS).then(|| WriteError::ConflictPending {
            collection: c.to_owned(),
            id: id.to_owned(),
            parked: parked.ops.len(),
        }),
    )
}

/// One app write as its op will carry it.
pub(super) struct Write {
    pub kind: OpKind,
    /// The document (JSON text); `None` for a delete.
    pub data: Option<String>,
    pub client_ts: i64,
    /// The scope asked for: a create's target, an update's move target.
    pub scope: Option<String>,
}

/// Writes `rec` and queues its op: the one place where an app write
/// becomes a record change plus a queue entry. The write folds into the
/// record's latest op instead when [`fold_target`] allows it. A write to a
/// collection that stays on the device queues nothing ([`keep_local`]).
pub(super) fn local_write(
    x: &mut Txn<'_>,
    collection: &str,
    id: &str,
    rec: &StoredRecord,
    w: Write,
) -> Result<String, StoreError> {
    if !x.directions.of(collection).queues_writes() {
        return keep_local(x, collection, id, rec);
    }
    if let Some((seq, tail)) = fold_target(x, collection, id)? {
        if let Some(op_id) = fold(x, rec, seq, tail, &w)? {
            return Ok(op_id);
        }
    }
    let Write {
        kind,
        data,
        client_ts,
        scope,
    } = w;
    x.put_record(collection, id, rec)?;
    let op = QueuedOp {
        op_id: x.ids.next(),
        collection: collection.to_owned(),
        local_id: id.to_owned(),
        kind,
        data,
        client_ts,
        attempts: 0,
        last_error: None,
        enqueued_at: crate::domain::clock::now_ms(),
        base: None,
        scope,
    };
    append_op(x, &op)?;
    Ok(op.op_id)
}

/// A write to a local collection (`sync = "local"`): the record changes,
/// no op is queued and none is folded into (an op queued before the
/// collection became local goes out as it was). `rec` counts the write as
/// a new pending op; that is taken back, so `pending` still counts exactly
/// the record's queued ops. A deleted record with nothing queued is gone.
/// Returns the empty op id: there is no op.
fn keep_local(
    x: &mut Txn<'_>,
    collection: &str,
    id: &str,
    rec: &StoredRecord,
) -> Result<String, StoreError> {
    let mut rec = rec.clone();
    rec.pending = fewer(collection, id, rec.pending, 1)?;
    if rec.deleted && rec.pending == 0 {
        if let Some(sid) = rec.server_id.as_deref() {
            x.server_ids.remove((collection, sid))?;
        }
        x.remove_record(collection, id)?;
    } else {
        x.put_record(collection, id, &rec)?;
    }
    Ok(String::new())
}

/// The op a write to `(collection, id)` may fold into: the last op of the
/// whole queue (so no other record's op comes after it and the queue's
/// order is kept), of this record, never possibly sent (at or above the
/// fold floor: not claimed by the worker, not from before a restart, not a
/// conflict re-send) and not a retried dead letter.
fn fold_target(
    x: &Txn<'_>,
    collection: &str,
    id: &str,
) -> Result<Option<(u64, QueuedOp)>, StoreError> {
    let Some((seq, op)) = x.last_op()? else {
        return Ok(None);
    };
    let ok = seq >= x.counters.fold_floor
        && op.collection == collection
        && op.local_id == id
        && op.last_error.is_none()
        && op.base.is_none();
    Ok(ok.then_some((seq, op)))
}

/// Folds a write of `kind` into the queued `tail` op (same op_id, so a
/// `wait_synced` on it is answered with the folded op's result):
/// create+update = create, update+update = update, update+delete = delete,
/// create+delete = nothing to send. `rec` counts the write as a new pending
/// op; folding takes that back. `None`: this pair does not fold. A write
/// that asks for a scope other than the tail's does not fold (each keeps
/// the scope it asked for); one that asks for none keeps the tail's.
fn fold(
    x: &mut Txn<'_>,
    rec: &StoredRecord,
    seq: u64,
    mut tail: QueuedOp,
    w: &Write,
) -> Result<Option<String>, StoreError> {
    if w.scope.is_some() && w.scope != tail.scope {
        return Ok(None);
    }
    let (kind, data, client_ts) = (w.kind, &w.data, w.client_ts);
    let folded = match (tail.kind, kind) {
        (OpKind::Create | OpKind::Update, OpKind::Update) => tail.kind,
        (OpKind::Update, OpKind::Delete) => OpKind::Delete,
        (OpKind::Create, OpKind::Delete) => return drop_unsent_create(x, rec, seq).map(Some),
        _ => return Ok(None),
    };
    let mut rec = rec.clone();
    rec.pending = fewer(&tail.collection, &tail.local_id, rec.pending, 1)?;
    x.put_record(&tail.collection, &tail.local_id, &rec)?;
    tail.kind = folded;
    tail.data = data.clone();
    tail.client_ts = client_ts;
    let bytes = x.vault.encode(QUEUE, &seq, &tail)?;
    x.queue.insert(seq, bytes.as_slice())?;
    Ok(Some(tail.op_id))
}

/// A delete of a record whose create was never sent: neither op goes to
/// the server. The record disappears unless other ops of it remain.
fn drop_unsent_create(x: &mut Txn<'_>, rec: &StoredRecord, seq: u64) -> Result<String, StoreError> {
    let Some(tail) = x.take_op(seq)? else {
        return Ok(String::new());
    };
    let mut rec = rec.clone();
    rec.pending = fewer(&tail.collection, &tail.local_id, rec.pending, 2)?;
    if rec.pending == 0 {
        x.remove_record(&tail.collection, &tail.local_id)?;
    } else {
        x.put_record(&tail.collection, &tail.local_id, &rec)?;
    }
    Ok(tail.op_id)
}
