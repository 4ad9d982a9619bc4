//! Sync verdicts: what the server said about queued ops (applied, not
//! needed, failed for now, rejected for good) and pages of remote changes.
//! The sync worker reports each; the op leaves the queue in the same
//! transaction that records its result.

use serde_json::Value;

use crate::domain::ids::{validate_collection, validate_id};
use crate::domain::{
    Change, DeadLetter, Doc, Event, OpKind, Origin, QueuedOp, ServerRecord, StoreError,
};
use crate::store::tables::*;
use crate::store::{parse_doc_text, ParkedConflict, ServerRecordStored};

use super::txn::{fewer, take_server, JobResult, Txn};
use super::WriteOutcome;

/// The server applied the op at `seq`.
pub(super) fn ack(
    x: &mut Txn<'_>,
    seq: u64,
    record: &ServerRecord,
) -> Result<JobResult, StoreError> {
    let Some(op) = x.take_op(seq)? else {
        return Ok(Ok(WriteOutcome::Done));
    };
    apply_ack(x, &op, record)?;
    x.meta.insert(
        META_LAST_SYNC,
        crate::domain::clock::now_ms().to_be_bytes().as_slice(),
    )?;
    Ok(Ok(WriteOutcome::Done))
}

/// The op at `seq` needs no server: a delete of a record the server never had.
pub(super) fn drop_local(x: &mut Txn<'_>, seq: u64) -> Result<JobResult, StoreError> {
    let Some(op) = x.take_op(seq)? else {
        return Ok(Ok(WriteOutcome::Done));
    };
    if let Some(mut rec) = x.record(&op.collection, &op.local_id)? {
        rec.pending = fewer(&op.collection, &op.local_id, rec.pending, 1)?;
        if rec.pending == 0 && rec.deleted {
            x.remove_record(&op.collection, &op.local_id)?;
        } else {
            x.put_record(&op.collection, &op.local_id, &rec)?;
        }
    }
    settle_deferred(x, &op.collection, &op.local_id)?;
    Ok(Ok(WriteOutcome::Done))
}

/// A transient failure of the op at `seq`: counted, the op stays.
pub(super) fn attempt(x: &mut Txn<'_>, seq: u64, error: &str) -> Result<JobResult, StoreError> {
    if let Some(mut op) = x.op(seq)? {
        op.attempts = op.attempts.saturating_add(1);
        op.last_error = Some(error.to_owned());
        let bytes = x.vault.encode(QUEUE, &seq, &op)?;
        x.queue.insert(seq, bytes.as_slice())?;
    }
    Ok(Ok(WriteOutcome::Done))
}

/// The server rejected the op at `seq` for good: it and the later ops of
/// the same record go to the dead letters.
pub(super) fn dead_letter(x: &mut Txn<'_>, seq: u64, error: &str) -> Result<JobResult, StoreError> {
    let Some(mut op) = x.take_op(seq)? else {
        return Ok(Ok(WriteOutcome::Done));
    };
    // The rejection was an attempt: it was sent and answered. (Its
    // dependents were never sent, so theirs stay as they were.)
    op.attempts = op.attempts.saturating_add(1);
    let mut dead = vec![(op.clone(), error.to_owned())];
    let others = x.pending_besides(&op.collection, &op.local_id, 1)?;
    let dependents = x.ops_of_record_after(seq, &op.collection, &op.local_id, others)?;
    for (s, _) in &dependents {
        if let Some(d) = x.take_op(*s)? {
            dead.push((
                d,
                format!("depends on dead-lettered op {}: {error}", op.op_id),
            ));
        }
    }
    let mut base = None;
    if let Some(mut rec) = x.record(&op.collection, &op.local_id)? {
        rec.pending = fewer(&op.collection, &op.local_id, rec.pending, dead.len() as u32)?;
        base = rec.server_id.clone().zip(rec.version);
        x.put_record(&op.collection, &op.local_id, &rec)?;
    }
    for (mut d, err) in dead {
        if d.kind != OpKind::Create {
            d.base = base.clone();
        }
        x.ev.push(Event::DeadLettered {
            op_id: d.op_id.to_owned(),
            collection: d.collection.to_owned(),
            id: d.local_id.clone(),
            error: err.clone(),
        });
        let seq = x.counters.dead_tail;
        x.counters.dead_tail += 1;
        let entry = DeadLetter {
            op: d,
            error: err,
            dead_at: crate::domain::clock::now_ms(),
        };
        x.insert_dead(seq, &entry)?;
    }
    super::scopes::purge_if_gone(x, &op.collection, &op.local_id)?;
    Ok(Ok(WriteOutcome::Done))
}

/// A page of remote changes and the cursor after it. With a backend that
/// keeps client-chosen ids, a record's server id is its local id.
///
/// A page may arrive while ops are in flight (pulls run beside pushes): a
/// record with queued ops keeps its local state (its ops meet the server's
/// version as a 409), and a change this device made itself, coming back
/// before or after its ack, changes nothing and emits no event.
pub(super) fn apply_changes(
    x: &mut Txn<'_>,
    changes: &[Change],
    cursor: &str,
) -> Result<JobResult, StoreError> {
    let client_ids = x.client_ids;
    for ch in changes {
        apply_remote(x, ch, client_ids)?;
    }
    x.meta.insert(META_CURSOR, cursor.as_bytes())?;
    x.meta.insert(
        META_LAST_SYNC,
        crate::domain::clock::now_ms().to_be_bytes().as_slice(),
    )?;
    Ok(Ok(WriteOutcome::Done))
}

fn apply_ack(x: &mut Txn<'_>, op: &QueuedOp, r: &ServerRecord) -> Result<(), StoreError> {
    let (c, lid) = (op.collection.as_str(), op.local_id.as_str());
    x.ev.push(Event::Synced {
        op_id: op.op_id.clone(),
        collection: c.to_owned(),
        id: lid.to_owned(),
        server_id: r.id.clone(),
        version: r.version,
    });
    let Some(mut rec) = x.record(c, lid)? else {
        return Ok(());
    };
    rec.pending = fewer(c, lid, rec.pending, 1)?;
    if let Some(old) = rec.server_id.as_deref() {
        if old != r.id {
            x.server_ids.remove((c, old))?;
        }
    }
    if rec.pending == 0 {
        if let Some(newer) = take_deferred(x, c, lid, r)? {
            // A change pulled while this op was pending is newer than
            // what the op produced (a delete's tombstone included: another
            // device may have written the record again since): that is
            // the server's state now.
            return take_server(x, c, lid, Some(rec), &newer, Origin::Remote);
        }
    }
    if op.kind == OpKind::Delete || r.deleted {
        x.server_ids.remove((c, r.id.as_str()))?;
        if rec.pending == 0 && rec.deleted {
            x.remove_record(c, lid)?;
            return Ok(());
        }
        // Later ops of this record start a new server record.
        rec.forget_server();
        x.put_record(c, lid, &rec)?;
        return super::scopes::purge_if_gone(x, c, lid);
    }
    x.server_ids.insert((c, r.id.as_str()), lid)?;
    if let Some(scope) = r.scope.as_deref() {
        super::scopes::note_unpulled(x, scope)?;
    }
    let server_text = rec.stand_on(r);
    if rec.pending == 0
        && !rec.deleted
        && x.directions.of(c).applies_pulled()
        && parse_doc_text(&rec.data) != Value::Object(r.data.clone())
    {
        // The server normalised the document: it is the truth now.
        rec.data = server_text;
        x.ev.push(Event::Changed {
            collection: c.to_owned(),
            id: lid.to_owned(),
            op_id: None,
            origin: Origin::Remote,
            data: Some(Doc(Value::Object(r.data.clone()))),
        });
    }
    x.put_record(c, lid, &rec)?;
    // An ack in the scope the record was said to have left predates the
    // move (a later op would have met a 409): once nothing is pending,
    // the record goes.
    super::scopes::purge_if_gone(x, c, lid)
}

pub(super) fn apply_remote(
    x: &mut Txn<'_>,
    ch: &Change,
    client_ids: bool,
) -> Result<(), StoreError> {
    let c = ch.collection.as_str();
    let r = &ch.record;
    if validate_collection(c).is_err() {
        tracing::warn!(
            collection = c,
            "pulled change for an invalid collection name ignored"
        );
        return Ok(());
    }
    if !x.directions.of(c).applies_pulled() {
        // `sync = "push"` or `"local"`: the server's records of this
        // collection are never applied here (the cursor still moves past).
        return Ok(());
    }
    let Some(lid) = local_id_for(x, c, r, client_ids)? else {
        return Ok(());
    };
    let rec = x.record(c, &lid)?;
    if rec.is_none() && r.deleted {
        return Ok(()); // never had it, nothing to delete
    }
    if let Some(existing) = &rec {
        if existing.version == Some(r.version) && r.scope.is_some() && existing.scope != r.scope {
            // The version this device holds, and the server's word on its
            // scope is news (a record held from before scopes, back-filled
            // now): kept, so that scope purges find it. No event: the
            // document is the same.
            let mut updated = existing.clone();
            updated.scope = r.scope.clone();
            x.put_record(c, &lid, &updated)?;
        }
        if existing.pending > 0 {
            // Local changes win locally until their ops meet the server:
            // they keep their base version and hit the 409 path there.
            // A parked conflict keeps the newest server record, so that
            // "take server" takes what the server has now.
            let parked = x
                .conflicts
                .get((c, lid.as_str()))?
                .map(|v| v.value().to_vec());
            if let Some(bytes) = parked {
                let key = (c, lid.as_str());
                let mut p: ParkedConflict = x.vault.decode(CONFLICTS, &key, &bytes)?;
                if r.version > p.server.version {
                    p.server = ServerRecordStored::from(r);
                    let bytes = x.vault.encode(CONFLICTS, &key, &p)?;
                    x.conflicts.insert(key, bytes.as_slice())?;
                }
            } else if existing.version.is_none_or(|v| v < r.version) {
                defer(x, c, &lid, r)?;
            }
            return Ok(());
        }
        if existing.version.is_some_and(|v| v >= r.version) {
            return Ok(()); // our own write coming back, or older
        }
    }
    take_server(x, c, &lid, rec, r, Origin::Remote)
}

/// Remembers `r`, pulled while the record had pending ops, if it is the
/// newest such record.
fn defer(x: &mut Txn<'_>, c: &str, lid: &str, r: &ServerRecord) -> Result<(), StoreError> {
    if deferred(x, c, lid)?.is_none_or(|d| d.version < r.version) {
        let bytes = x
            .vault
            .encode(DEFERRED, &(c, lid), &ServerRecordStored::from(r))?;
        x.deferred.insert((c, lid), bytes.as_slice())?;
    }
    Ok(())
}

/// Forgets the record's deferred server record if it is `known`'s (the
/// same server record) and returns it when it is newer. A deferred record
/// of another server id is left for whoever settles that one.
pub(super) fn take_deferred(
    x: &mut Txn<'_>,
    c: &str,
    lid: &str,
    known: &ServerRecord,
) -> Result<Option<ServerRecord>, StoreError> {
    let Some(d) = deferred(x, c, lid)?.filter(|d| d.id == known.id) else {
        return Ok(None);
    };
    x.deferred.remove((c, lid))?;
    Ok((d.version > known.version).then(|| d.to_record()))
}

/// The record's last pending op left the queue without a reply from the
/// server (an unsent create cancelled by a delete, a delete of a record
/// the server never had): a server record pulled meanwhile and deferred is
/// what the server has, so it becomes the record; without it the device
/// would miss it for good (its cursor is past it).
pub(super) fn settle_deferred(x: &mut Txn<'_>, c: &str, lid: &str) -> Result<(), StoreError> {
    let rec = x.record(c, lid)?;
    if rec
        .as_ref()
        .is_some_and(|r| r.pending > 0 || r.server_id.is_some())
    {
        return Ok(());
    }
    let Some(d) = deferred(x, c, lid)? else {
        return Ok(());
    };
    x.deferred.remove((c, lid))?;
    take_server(x, c, lid, rec, &d.to_record(), Origin::Remote)
}

/// The record's deferred server record, if any.
pub(super) fn deferred(
    x: &Txn<'_>,
    c: &str,
    lid: &str,
) -> Result<Option<ServerRecordStored>, StoreError> {
    match x.deferred.get((c, lid))? {
        Some(v) => Ok(Some(x.vault.decode(DEFERRED, &(c, lid), v.value())?)),
        None => Ok(None),
    }
}

/// The local id a pulled record lands on; `None`: nothing to do (a
/// tombstone of a record this device never had).
fn local_id_for(
    x: &mut Txn<'_>,
    c: &str,
    r: &ServerRecord,
    client_ids: bool,
) -> Result<Option<String>, StoreError> {
    if let Some(l) = x.server_ids.get((c, r.id.as_str()))? {
        return Ok(Some(l.value().to_owned()));
    }
    let usable = validate_id(&r.id).is_ok();
    let local = if usable { x.record(c, &r.id)? } else { None };
    if client_ids && usable {
        // One id on every device: the local record of that id is this
        // record, unless it is linked to another server record.
        if local.as_ref().is_none_or(|l| l.server_id.is_none()) {
            return Ok(Some(r.id.clone()));
        }
    }
    if r.deleted {
        return Ok(None); // never had it, nothing to delete
    }
    // A record another device made: the server id doubles as the local id
    // when it is a valid, unused one.
    Ok(Some(if usable && local.is_none() {
        r.id.clone()
    } else {
        x.ids.next()
    }))
}
