//! A 409: the writer decides it with the collection's strategy inside the
//! transaction, against the record's latest local state, and carries the
//! decision out. [`apply_resolution`] is shared with a manual `resolve`.

use std::collections::BTreeMap;

use serde_json::Value;

use crate::domain::conflict::{self, FieldRule, LocalChange, Resolution, Strategy};
use crate::domain::{
    ConflictOutcome, Doc, Document, Event, OpKind, Origin, QueuedOp, ServerRecord, StoreError,
    StoredRecord,
};
use crate::store::settled::{self, Settled};
use crate::store::tables::*;
use crate::store::{parse_doc_text, ParkedConflict, ServerRecordStored};

use super::txn::{bump_resolved, fewer, prepend_op, take_server, JobResult, Txn};
use super::verdict::take_deferred;
use super::WriteOutcome;

/// Decides the 409 for the op at `seq`. The record's later queued ops were
/// made on the same stale base, so they take part in the decision, without
/// ever moving ahead of another record's op (the queue's global order):
/// - the *run*, its ops queued right after it with no other record's op in
///   between, is folded into the decision;
/// - the *tail*, its ops behind another record's op, stays where it is.
///   Which of them still go to the server is
///   [`conflict::tail_op_survives`]'s rule; the others are settled with
///   the head. Under `merge` the kept ones' documents are rebased onto the
///   merged (or the server's) document.
///
/// The decision is made against the newest server record this device has
/// seen: the 409's, or a newer one pulled while the op was pending (held in
/// the `deferred` table), which would otherwise be lost.
pub(super) fn conflict(
    x: &mut Txn<'_>,
    seq: u64,
    server: &ServerRecord,
    strategy: Strategy,
    rules: &BTreeMap<String, FieldRule>,
) -> Result<JobResult, StoreError> {
    let Some(op) = x.take_op(seq)? else {
        return Ok(Ok(WriteOutcome::Done));
    };
    let (c, lid) = (op.collection.clone(), op.local_id.clone());
    let pulled = take_deferred(x, &c, &lid, server)?;
    let server = pulled.as_ref().unwrap_or(server);
    let (run, tail) = run_and_tail(x, seq, &c, &lid)?;
    let (run, tail, fresh) = split_fresh(server, (seq, &op), run, tail);
    let rec = x.record(&c, &lid)?;
    // A collection that no longer queues writes (now `local` or `pull`)
    // may hold writes made since, which must never reach the server (a
    // local delete included): the decision is about what the queued ops
    // themselves carry, as when later ops are left queued.
    let later = !tail.is_empty() || !fresh.is_empty() || !x.directions.of(&c).queues_writes();
    let (kind, data) = local_state(&op, &run, later, rec.as_ref());
    let base = rec
        .as_ref()
        .and_then(|r| r.base.as_deref())
        .map(parse_doc_text);
    let local = LocalChange {
        kind,
        data: data.as_ref().and_then(Value::as_object),
        client_ts: newest_ts(&op, &run),
        base: base.as_ref().and_then(Value::as_object),
    };
    let resolution = conflict::resolve(strategy, rules, &local, server);
    // merge takes the server's record for an update only when
    // the merge equals it: every local change is already there.
    let merged_in = strategy == Strategy::Merge
        && local.kind == OpKind::Update
        && !server.deleted
        && resolution == Resolution::TakeServer;
    let (mut kept, dropped): (OpRun, OpRun) = tail.into_iter().partition(|(_, o)| {
        conflict::tail_op_survives(strategy, &resolution, local.kind, o.client_ts, server)
    });
    kept.extend(fresh);
    kept.sort_by_key(|(s, _)| *s);
    tracing::info!(collection = %c, id = %lid, strategy = strategy.as_str(), ops = 1 + run.len(), tail_kept = kept.len(), tail_dropped = dropped.len(), outcome = resolution.name(), "conflict");
    let mut ops = vec![op];
    for (s, _) in run.iter().chain(dropped.iter()) {
        ops.extend(x.take_op(*s)?);
    }
    let run_state = data.as_ref().and_then(Value::as_object).cloned();
    let name = strategy.as_str();
    apply_resolution(x, &c, &lid, ops, server, name, &resolution, merged_in)?;
    if !kept.is_empty() {
        // After a local delete the kept writes are a new document:
        // nothing to rebase them onto.
        let onto = match &resolution {
            _ if local.kind == OpKind::Delete => None,
            Resolution::Resend { data, .. } => data.clone(),
            _ => (!server.deleted).then(|| server.data.clone()),
        };
        let rebase = strategy == Strategy::Merge;
        rebase_tail(x, &c, &lid, &kept, run_state, onto, rebase)?;
    }
    // A parked conflict counts as resolved when it is resolved.
    if resolution != Resolution::Park {
        bump_resolved(x)?;
    }
    Ok(Ok(WriteOutcome::Done))
}

/// The newest client_ts of the head op and its run.
fn newest_ts(op: &QueuedOp, run: &OpRun) -> i64 {
    run.iter()
        .map(|(_, o)| o.client_ts)
        .fold(op.client_ts, i64::max)
}

/// Queued ops of this record after `seq`, split into its run (before any
/// other record's op) and its tail (behind one).
fn run_and_tail(x: &Txn<'_>, seq: u64, c: &str, lid: &str) -> Result<(OpRun, OpRun), StoreError> {
    let others = x.pending_besides(c, lid, 1)?;
    let later = x.ops_of_record_after(seq, c, lid, others)?;
    let foreign = x.first_foreign_after(seq, c, lid)?;
    Ok(later
        .into_iter()
        .partition(|(s, _)| foreign.is_none_or(|f| *s < f)))
}

/// Some of a record's queued ops, with their sequences.
type OpRun = Vec<(u64, QueuedOp)>;

/// Against a server tombstone, the record's ops after its last local
/// delete are new writes (a re-creation): nothing of the deleted record is
/// in them, so they take no part in the decision, whatever the queue order,
/// and go on to meet the server (and the strategy) on their own. Splits
/// them off the run and the tail: `(run, tail, fresh)`.
fn split_fresh(
    server: &ServerRecord,
    (seq, op): (u64, &QueuedOp),
    run: OpRun,
    tail: OpRun,
) -> (OpRun, OpRun, OpRun) {
    let head = std::iter::once((seq, op));
    let last_delete = head
        .chain(run.iter().chain(tail.iter()).map(|(s, o)| (*s, o)))
        .filter(|(_, o)| o.kind == OpKind::Delete)
        .map(|(s, _)| s)
        .next_back();
    let Some(after) = last_delete.filter(|_| server.deleted) else {
        return (run, tail, Vec::new());
    };
    let (run, mut fresh): (OpRun, OpRun) = run.into_iter().partition(|(s, _)| *s <= after);
    let (tail, fresh_tail): (OpRun, OpRun) = tail.into_iter().partition(|(s, _)| *s <= after);
    fresh.extend(fresh_tail);
    (run, tail, fresh)
}

/// The local state the decision is about, as an update or a delete: the
/// record's latest, or, with `later` ops of the record left queued, the
/// state after the run.
fn local_state(
    op: &QueuedOp,
    run: &OpRun,
    later: bool,
    rec: Option<&StoredRecord>,
) -> (OpKind, Option<Value>) {
    let last = run.last().map(|(_, o)| o).unwrap_or(op);
    let (kind, data) = if !later {
        match rec.filter(|r| !r.deleted) {
            Some(r) => (OpKind::Update, Some(parse_doc_text(&r.data))),
            None => (OpKind::Delete, None),
        }
    } else {
        (last.kind, last.data.as_deref().map(parse_doc_text))
    };
    match kind {
        OpKind::Delete => (OpKind::Delete, None),
        _ => (OpKind::Update, data),
    }
}

/// The tail of a conflict stays queued behind other records' ops.
/// Under `merge` each tail op's document is rebased: the keys it changed
/// relative to the op before it are applied on top of the merged document,
/// so the server's changes that the merge kept are not overwritten. The
/// record's document becomes the last tail op's.
fn rebase_tail(
    x: &mut Txn<'_>,
    c: &str,
    lid: &str,
    tail: &[(u64, QueuedOp)],
    run_state: Option<Document>,
    sent: Option<Document>,
    rebase: bool,
) -> Result<(), StoreError> {
    let (mut prev, mut onto) = (run_state.unwrap_or_default(), sent.unwrap_or_default());
    let mut last: Option<Option<String>> = None;
    for (s, _) in tail {
        let Some(mut op) = x.op(*s)? else { continue };
        if op.kind == OpKind::Delete {
            // What follows a delete is a new document: nothing to rebase.
            (prev, onto) = (Document::new(), Document::new());
        }
        if let (true, Some(text)) = (rebase, op.data.as_deref()) {
            let next = match parse_doc_text(text) {
                Value::Object(m) => m,
                _ => Document::new(),
            };
            let rebased = conflict::rebase(&prev, &next, &onto);
            op.data = Some(Value::Object(rebased.clone()).to_string());
            let bytes = x.vault.encode(QUEUE, s, &op)?;
            x.queue.insert(*s, bytes.as_slice())?;
            (prev, onto) = (next, rebased);
        }
        last = Some(op.data.clone());
    }
    let (Some(final_state), Some(mut rec)) = (last, x.record(c, lid)?) else {
        return Ok(());
    };
    rec.deleted = final_state.is_none();
    rec.data = final_state.unwrap_or_else(|| "{}".into());
    x.put_record(c, lid, &rec)?;
    // After the decision's own event: watchers end on what the record
    // holds (the last kept write), not on the server's document.
    x.ev.push(Event::Changed {
        collection: c.to_owned(),
        id: lid.to_owned(),
        op_id: tail.last().map(|(_, o)| o.op_id.clone()),
        origin: Origin::Conflict,
        data: (!rec.deleted).then(|| Doc(parse_doc_text(&rec.data))),
    });
    Ok(())
}

/// Carries out a conflict decision for `ops` (already out of the queue)
/// of one record, and records how each op was settled.
#[allow(clippy::too_many_arguments)] // the decision's parts, all needed
pub(super) fn apply_resolution(
    x: &mut Txn<'_>,
    c: &str,
    lid: &str,
    ops: Vec<QueuedOp>,
    server: &ServerRecord,
    strategy: &str,
    resolution: &Resolution,
    merged_in: bool,
) -> Result<(), StoreError> {
    let op_ids: Vec<String> = ops.iter().map(|o| o.op_id.clone()).collect();
    for op in &ops {
        x.ops.remove(op.op_id.as_str())?;
    }
    x.ops_left = true;
    let (outcome, resent_as) = match resolution {
        Resolution::TakeServer => (
            settle_take_server(x, c, lid, &ops, server, merged_in)?,
            None,
        ),
        Resolution::Resend { kind, data } => {
            let (o, id) = settle_resend(x, c, lid, &ops, server, *kind, data)?;
            (o, Some(id))
        }
        Resolution::Park => (settle_park(x, c, lid, ops, server)?, None),
    };
    if outcome.0 != ConflictOutcome::Parked {
        let s = Settled {
            result: outcome.0,
            resent_as,
        };
        settled::record(
            x.settled.table_mut()?,
            x.settled_order.table_mut()?,
            &op_ids,
            &s,
        )?;
    }
    x.ev.push(Event::Conflict {
        collection: c.to_owned(),
        id: lid.to_owned(),
        strategy: strategy.to_owned(),
        result: outcome.0,
        outcome: outcome.1,
    });
    Ok(())
}

/// What a resolution did, for programs and for people.
type Outcome = (ConflictOutcome, String);

/// The server's record becomes the local one; the ops are dropped.
fn settle_take_server(
    x: &mut Txn<'_>,
    c: &str,
    lid: &str,
    ops: &[QueuedOp],
    server: &ServerRecord,
    merged_in: bool,
) -> Result<Outcome, StoreError> {
    let n = ops.len() as u32;
    let rec = match x.record(c, lid)? {
        Some(mut r) => {
            r.pending = fewer(c, lid, r.pending, n)?;
            Some(r)
        }
        None => None,
    };
    let deleted_both = server.deleted && ops.last().is_some_and(|o| o.kind == OpKind::Delete);
    take_server(x, c, lid, rec, server, Origin::Conflict)?;
    // The record left its scope meanwhile and its ops never reached the
    // server: what was taken is the stale copy of a record gone elsewhere.
    super::scopes::purge_if_gone(x, c, lid)?;
    Ok(if deleted_both {
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
    })
}

/// The local (or merged) change goes again, as a new op at the head of
/// the queue, on top of the server's version; returns the new op's id.
fn settle_resend(
    x: &mut Txn<'_>,
    c: &str,
    lid: &str,
    ops: &[QueuedOp],
    server: &ServerRecord,
    kind: OpKind,
    data: &Option<Document>,
) -> Result<(Outcome, String), StoreError> {
    let n = ops.len() as u32;
    let now = crate::domain::clock::now_ms;
    let client_ts = ops.iter().map(|o| o.client_ts).max().unwrap_or_else(now);
    let enqueued_at = ops.first().map(|o| o.enqueued_at).unwrap_or_else(now);
    let mut rec = x
        .record(c, lid)?
        .unwrap_or(StoredRecord::local("{}".into(), n, client_ts));
    rec.pending = fewer(c, lid, rec.pending, n)? + 1;
    // The record now stands on the server's version. With client-chosen
    // ids a record's id is taken for good once the server holds it, a
    // tombstone included: re-creating it is an update of the tombstone
    // (`base_version` = its version), never a create that would meet the
    // same tombstone again.
    if server.deleted && !x.client_ids {
        x.server_ids.remove((c, server.id.as_str()))?;
        rec.forget_server();
    } else {
        x.server_ids.insert((c, server.id.as_str()), lid)?;
        rec.stand_on(server);
    }
    let text = data.as_ref().map(|d| Value::Object(d.clone()).to_string());
    rec.deleted = text.is_none();
    rec.data = text.clone().unwrap_or_else(|| "{}".into());
    x.put_record(c, lid, &rec)?;
    let new_op = QueuedOp {
        op_id: x.ids.next(),
        collection: c.to_owned(),
        local_id: lid.to_owned(),
        kind,
        data: text,
        client_ts,
        attempts: 0,
        last_error: None,
        enqueued_at,
        base: None,
        // A move among the ops still moves: the last scope asked for.
        scope: ops.iter().rev().find_map(|o| o.scope.clone()),
    };
    prepend_op(x, &new_op)?;
    x.ev.push(Event::Changed {
        collection: c.to_owned(),
        id: lid.to_owned(),
        op_id: Some(new_op.op_id.clone()),
        origin: Origin::Conflict,
        data: data.clone().map(|d| Doc(Value::Object(d))),
    });
    let outcome = (
        ConflictOutcome::Resent,
        format!("re-sent as {} (op {})", kind.as_str(), new_op.op_id),
    );
    Ok((outcome, new_op.op_id))
}

/// The ops wait, with the server's record, for a person or an app.
fn settle_park(
    x: &mut Txn<'_>,
    c: &str,
    lid: &str,
    ops: Vec<QueuedOp>,
    server: &ServerRecord,
) -> Result<Outcome, StoreError> {
    let mut parked = match x.conflicts.get((c, lid))? {
        Some(v) => x
            .vault
            .decode::<_, ParkedConflict>(CONFLICTS, &(c, lid), v.value())?,
        None => ParkedConflict {
            server: ServerRecordStored::from(server),
            ops: Vec::new(),
            detected_at: crate::domain::clock::now_ms(),
        },
    };
    // Keep the newest server record: a later write's 409 can carry an
    // older one than a change pulled meanwhile.
    if parked.server.id != server.id || parked.server.version < server.version {
        parked.server = ServerRecordStored::from(server);
    }
    for mut op in ops {
        x.ops.insert(op.op_id.as_str(), PARKED_SEQ)?;
        // A resolution uses the record's document (or the one supplied),
        // never a parked op's: keep each op small.
        op.data = None;
        parked.ops.push(op);
    }
    let bytes = x.vault.encode(CONFLICTS, &(c, lid), &parked)?;
    x.conflicts.insert((c, lid), bytes.as_slice())?;
    Ok((
        ConflictOutcome::Parked,
        "parked for manual resolution".to_owned(),
    ))
}
