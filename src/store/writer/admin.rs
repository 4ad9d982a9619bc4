//! Admin commands: pause/resume (a metadata flag), retry and discard of
//! dead letters, and the manual resolution of a parked conflict.

use serde_json::{Map, Value};

use crate::domain::conflict::Resolution;
use crate::domain::direction::Direction;
use crate::domain::{
    Doc, Document, Event, OpKind, Origin, Side, StoreError, StoredRecord, WriteError,
};
use crate::store::parse_doc_text;
use crate::store::tables::CONFLICTS;
use crate::store::ParkedConflict;

use super::conflict::apply_resolution;
use super::txn::{append_op, bump_resolved, JobResult, Txn};
use super::WriteOutcome;

/// Sets a metadata value (the paused flag).
pub(super) fn set_meta(
    x: &mut Txn<'_>,
    key: &'static str,
    value: &[u8],
) -> Result<JobResult, StoreError> {
    x.meta.insert(key, value)?;
    Ok(Ok(WriteOutcome::Done))
}

/// Moves a dead letter back to the tail of the queue.
///
/// Refused (the dead letter stays) when another user queued it (the token
/// changed since: it would go out with the new user's token), and in a
/// collection that does not queue
/// writes now: a `pull` collection is read-only here, and nothing of a
/// `local` one may reach the server.
pub(super) fn retry(x: &mut Txn<'_>, op_id: &str) -> Result<JobResult, StoreError> {
    if let Some(queued_by) = x.dead_sub.get(op_id)?.map(|v| v.value().to_owned()) {
        let now: Option<crate::domain::scope_state::Grants> = x
            .meta
            .get(crate::store::tables::META_SESSION)?
            .and_then(|v| serde_json::from_slice(v.value()).ok());
        let now = now.map(|g| g.sub);
        if now.as_deref() != Some(queued_by.as_str()) {
            return Ok(Err(WriteError::QueuedByAnotherUser {
                op_id: op_id.to_owned(),
                queued_by,
                now,
            }));
        }
    }
    if let Some(dl) = x.peek_dead(op_id)? {
        let collection = dl.op.collection;
        match x.directions.of(&collection) {
            Direction::Pull => return Ok(Err(WriteError::ReadOnlyCollection { collection })),
            Direction::Local => return Ok(Err(WriteError::LocalCollection { collection })),
            Direction::Both | Direction::Push => {}
        }
    }
    let Some(dl) = x.take_dead(op_id)? else {
        return Ok(Err(WriteError::NoDeadLetter {
            op_id: op_id.to_owned(),
        }));
    };
    let mut op = dl.op;
    op.attempts = 0;
    op.last_error = Some(format!("retried after: {}", dl.error));
    // The record may be gone meanwhile (a purged scope, a remote delete):
    // the retried op brings back the record it writes, as this device
    // last wrote it, so that no op is queued without its record.
    let (rec, came_back) = match x.record(&op.collection, &op.local_id)? {
        Some(mut rec) => {
            rec.pending += 1;
            (rec, false)
        }
        None => {
            let mut rec = StoredRecord::local(
                op.data.clone().unwrap_or_else(|| "{}".into()),
                1,
                op.client_ts,
            );
            rec.deleted = op.kind == OpKind::Delete;
            (rec, true)
        }
    };
    x.put_record(&op.collection, &op.local_id, &rec)?;
    if came_back && !rec.deleted {
        // Watchers and live queries saw it go: they see it come back.
        x.ev.push(Event::Changed {
            collection: op.collection.clone(),
            id: op.local_id.clone(),
            op_id: Some(op.op_id.clone()),
            origin: Origin::Local,
            data: Some(Doc(parse_doc_text(&rec.data))),
        });
    }
    append_op(x, &op)?;
    Ok(Ok(WriteOutcome::Done))
}

/// Drops a dead letter for good.
pub(super) fn discard(x: &mut Txn<'_>, op_id: &str) -> Result<JobResult, StoreError> {
    if x.take_dead(op_id)?.is_none() {
        return Ok(Err(WriteError::NoDeadLetter {
            op_id: op_id.to_owned(),
        }));
    }
    Ok(Ok(WriteOutcome::Done))
}

/// Settles a parked conflict by taking a side or a supplied document.
pub(super) fn resolve_parked(
    x: &mut Txn<'_>,
    c: &str,
    lid: &str,
    take: Option<Side>,
    data: Option<&Document>,
) -> Result<JobResult, StoreError> {
    if take.is_none() && data.is_none() {
        return Ok(Err(WriteError::ResolveNeedsChoice));
    }
    let Some(parked) = x.conflicts.get((c, lid))?.map(|v| v.value().to_vec()) else {
        return Ok(Err(WriteError::NoParkedConflict {
            collection: c.to_owned(),
            id: lid.to_owned(),
        }));
    };
    let parked: ParkedConflict = x.vault.decode(CONFLICTS, &(c, lid), &parked)?;
    let server = parked.server.to_record();
    x.conflicts.remove((c, lid))?;
    // Writes the app made after the park were made on the same stale
    // base: they are settled by this resolution too.
    let mut ops = parked.ops;
    let queued = x.pending_besides(c, lid, ops.len() as u32)?;
    for (s, _) in x.ops_of_record_after(0, c, lid, queued)? {
        if let Some(o) = x.take_op(s)? {
            ops.push(o);
        }
    }
    let rec = x.record(c, lid)?;
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
    apply_resolution(x, c, lid, ops, &server, "manual", &resolution, false)?;
    bump_resolved(x)?;
    Ok(Ok(WriteOutcome::Done))
}
