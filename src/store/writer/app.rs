//! App writes: `put`, `patch` and `delete`. Each changes a record and
//! appends its op to the queue in the same transaction, which is the
//! store's first invariant; [`local_write`] is the one place that does both.

use serde_json::{Map, Value};

use crate::domain::{
    Doc, Document, Event, OpKind, Origin, QueuedOp, StoreError, StoredRecord, WriteError,
};
use crate::store::parse_doc_text;

use super::txn::{append_op, not_found, JobResult, Txn};
use super::WriteOutcome;

/// Creates or replaces a record (a put after a delete starts a new server record).
pub(super) fn put(
    x: &mut Txn<'_>,
    collection: &str,
    id: Option<&str>,
    data: &Document,
    client_ts: i64,
) -> Result<JobResult, StoreError> {
    let id = match id {
        Some(id) => id.to_owned(),
        None => x.ids.next(),
    };
    let existing = x.record(collection, &id)?;
    let text = Value::Object(data.clone()).to_string();
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
    let op_id = local_write(x, collection, &id, &rec, kind, Some(text), client_ts)?;
    // Nobody listening (the common case under load): skip the
    // event and its copy of the document.
    if x.emit {
        x.ev.push(Event::Changed {
            collection: collection.to_owned(),
            id: id.to_owned(),
            op_id: Some(op_id.to_owned()),
            origin: Origin::Local,
            data: Some(Doc(Value::Object(data.clone()))),
        });
    }
    Ok(Ok(WriteOutcome::Written { id, op_id }))
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
    let Some(mut rec) = x.record(collection, id)?.filter(|r| !r.deleted) else {
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
    if text.len() > max_bytes as usize {
        return Ok(Err(WriteError::TooLarge {
            bytes: text.len(),
            limit: max_bytes,
        }));
    }
    rec.data = text.clone();
    rec.pending += 1;
    rec.local_ts = client_ts;
    let op_id = local_write(
        x,
        collection,
        id,
        &rec,
        OpKind::Update,
        Some(text),
        client_ts,
    )?;
    x.ev.push(Event::Changed {
        collection: collection.to_owned(),
        id: id.to_owned(),
        op_id: Some(op_id.to_owned()),
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
    let Some(mut rec) = x.record(collection, id)?.filter(|r| !r.deleted) else {
        return Ok(Err(not_found(collection, id)));
    };
    rec.deleted = true;
    rec.data = "{}".into();
    rec.pending += 1;
    rec.local_ts = client_ts;
    let op_id = local_write(x, collection, id, &rec, OpKind::Delete, None, client_ts)?;
    x.ev.push(Event::Changed {
        collection: collection.to_owned(),
        id: id.to_owned(),
        op_id: Some(op_id.to_owned()),
        origin: Origin::Local,
        data: None,
    });
    Ok(Ok(WriteOutcome::Written {
        id: id.to_owned(),
        op_id,
    }))
}

/// Writes `rec` and appends its op: the one place where an app write
/// becomes a record change plus a queue entry.
pub(super) fn local_write(
    x: &mut Txn<'_>,
    collection: &str,
    id: &str,
    rec: &StoredRecord,
    kind: OpKind,
    data: Option<String>,
    client_ts: i64,
) -> Result<String, StoreError> {
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
    };
    append_op(x, &op)?;
    Ok(op.op_id)
}
