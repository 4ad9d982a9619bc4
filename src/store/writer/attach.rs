//! `attach` and `detach`: the writes that change a record's attachments,
//! and the rule that no other write does.
//!
//! An attachment is a reference in the record's document (`_attachments`,
//! see `domain::attachment`), so attaching is an update of the record like
//! any other: it goes through [`local_write`] and the queue, in order with
//! the record's other writes, and conflicts, pulls and scopes treat it as
//! they treat any member. The bytes are already in the data dir's blob
//! files when the job runs (the socket wrote them first), so the commit
//! never references a file that is not complete here.

use serde_json::{Map, Value};

use crate::domain::attachment::{self, AttachmentRef, Attachments};
use crate::domain::{Document, StoreError, WriteError};

use super::app::edit_live;
use super::txn::{JobResult, Txn};

/// The document a put stores: `None` when it is the app's own, or the
/// app's with the record's current attachments carried in. A put that
/// names `_attachments` must name them as they are.
pub(super) fn carry(
    collection: &str,
    id: &str,
    given: &Document,
    current: Option<&str>,
) -> Result<Option<Map<String, Value>>, WriteError> {
    let now = current.map(attachment::refs_of_text).unwrap_or_default();
    if given.contains_key(attachment::KEY) {
        return match attachment::refs(given) {
            Ok(r) if r == now => Ok(None),
            _ => Err(managed(collection, id)),
        };
    }
    if now.is_empty() {
        return Ok(None);
    }
    let mut doc = given.clone();
    attachment::set_refs(&mut doc, &now);
    Ok(Some(doc))
}

/// A patch may name `_attachments` only to leave them as they are.
pub(super) fn patch_keeps(
    collection: &str,
    id: &str,
    patch: &Document,
    current: &str,
) -> Result<(), WriteError> {
    let Some(v) = patch.get(attachment::KEY) else {
        return Ok(());
    };
    let now = attachment::refs_of_text(current);
    let mut m = Map::new();
    m.insert(attachment::KEY.to_owned(), v.clone());
    match attachment::refs(&m) {
        Ok(r) if r == now && !v.is_null() => Ok(()),
        _ if v.is_null() && now.is_empty() => Ok(()),
        _ => Err(managed(collection, id)),
    }
}

fn managed(collection: &str, id: &str) -> WriteError {
    WriteError::AttachmentsManaged {
        collection: collection.to_owned(),
        id: id.to_owned(),
    }
}

/// Adds (or replaces) the attachment `name` of a live record.
pub(super) fn attach(
    x: &mut Txn<'_>,
    collection: &str,
    id: &str,
    name: &str,
    r: &AttachmentRef,
    client_ts: i64,
    max_bytes: u32,
) -> Result<JobResult, StoreError> {
    if let Err(e) = attachment::check_name(name) {
        return Ok(Err(WriteError::BadAttachment(e)));
    }
    change(x, collection, id, client_ts, max_bytes, |refs| {
        refs.insert(name.to_owned(), r.clone());
        Ok(())
    })
}

/// Removes the attachment `name` of a live record.
pub(super) fn detach(
    x: &mut Txn<'_>,
    collection: &str,
    id: &str,
    name: &str,
    client_ts: i64,
) -> Result<JobResult, StoreError> {
    change(x, collection, id, client_ts, u32::MAX, |refs| {
        refs.remove(name)
            .map(|_| ())
            .ok_or(WriteError::NoAttachment {
                collection: collection.to_owned(),
                id: id.to_owned(),
                name: name.to_owned(),
            })
    })
}

/// Applies `edit` to a live record's attachments and queues the record's
/// new document as an update.
fn change(
    x: &mut Txn<'_>,
    collection: &str,
    id: &str,
    client_ts: i64,
    max_bytes: u32,
    edit: impl FnOnce(&mut Attachments) -> Result<(), WriteError>,
) -> Result<JobResult, StoreError> {
    edit_live(x, collection, id, client_ts, max_bytes, |doc, current| {
        let mut refs = attachment::refs_of_text(current);
        edit(&mut refs)?;
        attachment::set_refs(doc, &refs);
        Ok(())
    })
}
