//! The store's reads about attachments: which content the records
//! reference (for eager downloads), and which content queued, parked and
//! dead-lettered ops still need (never evicted).
//!
//! Both scan their tables once, reading only documents that mention
//! `_attachments`; they run at start, after a missed event, and when the
//! attachment cache is over its bound, never per write.

use std::collections::HashSet;

use redb::ReadableTable;

use super::tables::{CONFLICTS, DEAD, QUEUE, RECORDS};
use super::{DeadLetter, ParkedConflict, QueuedOp, Result, Store, StoredRecord};
use crate::domain::attachment::{self, AttachmentRef, KEY};

/// One attachment a live record references.
#[derive(Debug, Clone)]
pub struct ContentRef {
    pub collection: String,
    pub id: String,
    /// The record's scope, as the server last said.
    pub scope: Option<String>,
    /// The attachment's name on the record.
    pub name: String,
    pub attachment: AttachmentRef,
}

fn mentions(text: &str) -> bool {
    text.contains(KEY)
}

impl Store {
    /// Every attachment the live records reference.
    pub fn content_refs(&self) -> Result<Vec<ContentRef>> {
        let (_db, txn) = self.read()?;
        let t = txn.open_table(RECORDS)?;
        let mut out = Vec::new();
        for item in t.iter()? {
            let (k, v) = item?;
            let r: StoredRecord = self.vault.decode(RECORDS, &k.value(), v.value())?;
            if r.deleted || !mentions(&r.data) {
                continue;
            }
            let (c, id) = k.value();
            for (name, a) in attachment::refs_of_text(&r.data) {
                out.push(ContentRef {
                    collection: c.to_owned(),
                    id: id.to_owned(),
                    scope: r.scope.clone(),
                    name,
                    attachment: a,
                });
            }
        }
        Ok(out)
    }

    /// The content every queued, parked or dead-lettered op references,
    /// and every record with pending ops (a parked conflict's local
    /// version is the record's document): what this device may still
    /// have to upload.
    pub fn content_of_ops(&self) -> Result<HashSet<String>> {
        let (_db, txn) = self.read()?;
        let mut out = HashSet::new();
        for item in txn.open_table(RECORDS)?.iter()? {
            let (k, v) = item?;
            let r: StoredRecord = self.vault.decode(RECORDS, &k.value(), v.value())?;
            if r.pending > 0 && mentions(&r.data) {
                out.extend(
                    attachment::refs_of_text(&r.data)
                        .into_values()
                        .map(|a| a.sha256),
                );
            }
        }
        let mut note = |data: Option<&str>| {
            if let Some(d) = data.filter(|d| mentions(d)) {
                out.extend(attachment::refs_of_text(d).into_values().map(|a| a.sha256));
            }
        };
        for item in txn.open_table(QUEUE)?.iter()? {
            let (k, v) = item?;
            let op: QueuedOp = self.vault.decode(QUEUE, &k.value(), v.value())?;
            note(op.data.as_deref());
        }
        for item in txn.open_table(CONFLICTS)?.iter()? {
            let (k, v) = item?;
            let p: ParkedConflict = self.vault.decode(CONFLICTS, &k.value(), v.value())?;
            for op in &p.ops {
                note(op.data.as_deref());
            }
        }
        for item in txn.open_table(DEAD)?.iter()? {
            let (k, v) = item?;
            let d: DeadLetter = self.vault.decode(DEAD, &k.value(), v.value())?;
            note(d.op.data.as_deref());
        }
        Ok(out)
    }
}
