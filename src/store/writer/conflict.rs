//! A 409: the writer decides it with the collection's strategy inside the
//! transaction, against the record's latest local state, and carries the
//! decision out. [`apply_resolution`] is shared with a manual `resolve`.

use std::collections::BTreeMap;

use serde_json::Value;

use redb::ReadableTable;

use crate::domain::conflict::{self, FieldRule, LocalChange, Resolution, Strategy};
use crate::domain::{
    ConflictOutcome, Doc, Event, OpKind, Origin, QueuedOp, ServerRecord, StoreError, StoredRecord,
};
use crate::store::encoding::{from_store, to_store};
use crate::store::tables::*;
use crate::store::{parse_doc_text, ParkedConflict, ServerRecordStored};

use super::txn::{bump_resolved, prepend_op, take_server, JobResult, Txn};
use super::WriteOutcome;

/// Decides the 409 for the op at `seq` and folds the record's later
/// queued ops into the decision (they were made on the same stale base).
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
    let (c, lid) = (op.collection.to_owned(), op.local_id.clone());
    let mut ops = vec![op];
    let others = x.pending_of(&c, &lid)?.saturating_sub(1);
    for (s, _) in x.ops_of_record_after(seq, &c, &lid, others)? {
        if let Some(o) = x.take_op(s)? {
            ops.push(o);
        }
    }
    let rec = x.record(&c, &lid)?;
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
    let resolution = conflict::resolve(strategy, rules, &local, server);
    tracing::info!(collection = %c, id = %lid, strategy = strategy.as_str(), ops = ops.len(), ?resolution, "conflict");
    // merge takes the server's record for an update only when
    // the merge equals it: every local change is already there.
    let merged_in = strategy == Strategy::Merge
        && local.kind == OpKind::Update
        && !server.deleted
        && resolution == Resolution::TakeServer;
    apply_resolution(
        x,
        &c,
        &lid,
        ops,
        server,
        strategy.as_str(),
        &resolution,
        merged_in,
    )?;
    // A parked conflict counts as resolved when it is resolved.
    if resolution != Resolution::Park {
        bump_resolved(x)?;
    }
    Ok(Ok(WriteOutcome::Done))
}

/// Carries out a conflict decision for `ops` (already out of the queue)
/// of one record.
#[allow(clippy::too_many_arguments)]
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
    let n = ops.len() as u32;
    for op in &ops {
        x.ops.remove(op.op_id.as_str())?;
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
    let rec = x.record(c, lid)?;
    let outcome;
    match resolution {
        Resolution::TakeServer => {
            let rec = rec.map(|mut r| {
                r.pending = r.pending.saturating_sub(n);
                r
            });
            let deleted_both =
                server.deleted && ops.last().is_some_and(|o| o.kind == OpKind::Delete);
            take_server(x, c, lid, rec, server, Origin::Conflict)?;
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
            // The record now stands on the server's version. With
            // client-chosen ids a record's id is taken for good once the
            // server holds it, a tombstone included: re-creating it is an
            // update of the tombstone (`base_version` = its version), never
            // a create that would meet the same tombstone again.
            if server.deleted && !x.client_ids {
                x.server_ids.remove((c, server.id.as_str()))?;
                rec.forget_server();
            } else {
                x.server_ids.insert((c, server.id.as_str()), lid)?;
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
            x.put_record(c, lid, &rec)?;
            let new_op = QueuedOp {
                op_id: x.ids.next(),
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
            prepend_op(x, &new_op)?;
            x.ev.push(Event::Changed {
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
            let mut parked = match x.conflicts.get((c, lid))? {
                Some(v) => from_store::<ParkedConflict>(v.value())?,
                None => ParkedConflict {
                    server: ServerRecordStored::from(server),
                    ops: Vec::new(),
                    detected_at: crate::domain::clock::now_ms(),
                },
            };
            parked.server = ServerRecordStored::from(server);
            for op in ops {
                x.ops.insert(op.op_id.as_str(), PARKED_SEQ)?;
                parked.ops.push(op);
            }
            x.conflicts
                .insert((c, lid), to_store(&parked)?.as_slice())?;
            outcome = (
                ConflictOutcome::Parked,
                "parked for manual resolution".to_owned(),
            );
        }
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
