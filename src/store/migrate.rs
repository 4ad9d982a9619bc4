//! Upgrades of the on-disk schema, run once when an older file is opened,
//! inside the same transaction that records the new schema version (a crash
//! part-way leaves the old version, and the upgrade runs again).
//!
//! bincode is not self-describing: a value written before a field was added
//! does not decode as the new type. So the shapes each upgrade reads are
//! kept here, frozen, as private copies ([`v2`]).

use redb::{ReadableTable, TableDefinition, WriteTransaction};
use serde::{de::DeserializeOwned, Serialize};

use super::encoding::{from_store, to_store};
use super::tables::*;
use crate::domain::{DeadLetter, ParkedConflict, QueuedOp, StoreError, StoredRecord};

/// Upgrades a file of schema `found` to the current one; `false`: not a
/// version this build can upgrade.
pub fn upgrade(txn: &WriteTransaction, found: u64) -> Result<bool, StoreError> {
    match found {
        1 => {
            v1_to_v2(txn)?;
            v2_to_v3(txn)?;
        }
        2 => v2_to_v3(txn)?,
        // 3 -> 4: the secondary index tables, created empty at open. An
        // older build refuses schema 4, so it never writes records without
        // their index entries.
        3 => {}
        _ => return Ok(false),
    }
    Ok(true)
}

/// Schema 1 -> 2: builds the record -> queued seqs index and the dead
/// letters' op_id index from the queue and the dead-letter table.
fn v1_to_v2(txn: &WriteTransaction) -> Result<(), StoreError> {
    let queue = txn.open_table(QUEUE)?;
    let mut by_record = txn.open_table(RECORD_QUEUE)?;
    for item in queue.iter()? {
        let (k, v) = item?;
        let op: v2::QueuedOp = from_store(v.value())?;
        by_record.insert(
            (op.collection.as_str(), op.local_id.as_str(), k.value()),
            (),
        )?;
    }
    let dead = txn.open_table(DEAD)?;
    let mut by_op = txn.open_table(DEAD_BY_OP)?;
    for item in dead.iter()? {
        let (k, v) = item?;
        let d: v2::DeadLetter = from_store(v.value())?;
        by_op.insert(d.op.op_id.as_str(), k.value())?;
    }
    tracing::info!("store upgraded to schema 2 (record and dead-letter indexes)");
    Ok(())
}

/// Schema 2 -> 3 (protocol revision 3): records, queued ops, dead letters,
/// parked conflicts and deferred server records gain a `scope`, `None`
/// for everything written before (the server has not said it yet). The
/// per-scope tables start empty.
fn v2_to_v3(txn: &WriteTransaction) -> Result<(), StoreError> {
    rewrite(txn, RECORDS, |r: v2::StoredRecord| r.into_v3())?;
    rewrite(txn, QUEUE, |o: v2::QueuedOp| o.into_v3())?;
    rewrite(txn, DEAD, |d: v2::DeadLetter| d.into_v3())?;
    rewrite(txn, CONFLICTS, |p: v2::ParkedConflict| p.into_v3())?;
    rewrite(txn, DEFERRED, |s: v2::ServerRecordStored| s.into_v3())?;
    tracing::info!("store upgraded to schema 3 (scopes)");
    Ok(())
}

/// Re-encodes every value of `def` from the old shape `Old` to the new one.
fn rewrite<K, Old, New>(
    txn: &WriteTransaction,
    def: TableDefinition<'static, K, &'static [u8]>,
    convert: impl Fn(Old) -> New,
) -> Result<(), StoreError>
where
    K: redb::Key + 'static,
    Old: DeserializeOwned,
    New: Serialize,
{
    let mut table = txn.open_table(def)?;
    let mut items: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
    for item in table.iter()? {
        let (k, v) = item?;
        let new = convert(from_store(v.value())?);
        items.push((K::as_bytes(&k.value()).as_ref().to_vec(), to_store(&new)?));
    }
    for (k, v) in items {
        table.insert(K::from_bytes(&k), v.as_slice())?;
    }
    Ok(())
}

/// The shapes of schema 2, as they were written.
mod v2 {
    use serde::Deserialize;

    #[derive(Deserialize)]
    pub struct StoredRecord {
        data: String,
        deleted: bool,
        server_id: Option<String>,
        version: Option<u64>,
        updated_at: Option<i64>,
        base: Option<String>,
        pending: u32,
        local_ts: i64,
    }

    impl StoredRecord {
        pub fn into_v3(self) -> super::StoredRecord {
            super::StoredRecord {
                data: self.data,
                deleted: self.deleted,
                server_id: self.server_id,
                version: self.version,
                updated_at: self.updated_at,
                base: self.base,
                pending: self.pending,
                local_ts: self.local_ts,
                scope: None,
                gone_from: None,
            }
        }
    }

    #[derive(Deserialize)]
    pub struct QueuedOp {
        pub op_id: String,
        pub collection: String,
        pub local_id: String,
        kind: crate::domain::OpKind,
        data: Option<String>,
        client_ts: i64,
        attempts: u32,
        last_error: Option<String>,
        enqueued_at: i64,
        base: Option<(String, u64)>,
    }

    impl QueuedOp {
        pub fn into_v3(self) -> super::QueuedOp {
            super::QueuedOp {
                op_id: self.op_id,
                collection: self.collection,
                local_id: self.local_id,
                kind: self.kind,
                data: self.data,
                client_ts: self.client_ts,
                attempts: self.attempts,
                last_error: self.last_error,
                enqueued_at: self.enqueued_at,
                base: self.base,
                scope: None,
            }
        }
    }

    #[derive(Deserialize)]
    pub struct DeadLetter {
        pub op: QueuedOp,
        error: String,
        dead_at: i64,
    }

    impl DeadLetter {
        pub fn into_v3(self) -> super::DeadLetter {
            super::DeadLetter {
                op: self.op.into_v3(),
                error: self.error,
                dead_at: self.dead_at,
            }
        }
    }

    #[derive(Deserialize)]
    pub struct ServerRecordStored {
        id: String,
        version: u64,
        updated_at: i64,
        deleted: bool,
        data: String,
    }

    impl ServerRecordStored {
        pub fn into_v3(self) -> crate::domain::ServerRecordStored {
            crate::domain::ServerRecordStored {
                id: self.id,
                version: self.version,
                updated_at: self.updated_at,
                deleted: self.deleted,
                data: self.data,
                scope: None,
            }
        }
    }

    #[derive(Deserialize)]
    pub struct ParkedConflict {
        server: ServerRecordStored,
        ops: Vec<QueuedOp>,
        detected_at: i64,
    }

    impl ParkedConflict {
        pub fn into_v3(self) -> super::ParkedConflict {
            super::ParkedConflict {
                server: self.server.into_v3(),
                ops: self.ops.into_iter().map(QueuedOp::into_v3).collect(),
                detected_at: self.detected_at,
            }
        }
    }
}
