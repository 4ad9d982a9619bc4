//! Upgrades of the on-disk schema, run once when an older file is opened,
//! inside the same transaction that records the new schema version (a crash
//! part-way leaves the old version, and the upgrade runs again).

use redb::{ReadableTable, WriteTransaction};

use super::encoding::from_store;
use super::tables::*;
use crate::domain::{DeadLetter, QueuedOp, StoreError};

/// Schema 1 -> 2: builds the record -> queued seqs index and the dead
/// letters' op_id index from the queue and the dead-letter table.
pub fn v1_to_v2(txn: &WriteTransaction) -> Result<(), StoreError> {
    let queue = txn.open_table(QUEUE)?;
    let mut by_record = txn.open_table(RECORD_QUEUE)?;
    for item in queue.iter()? {
        let (k, v) = item?;
        let op: QueuedOp = from_store(v.value())?;
        by_record.insert(
            (op.collection.as_str(), op.local_id.as_str(), k.value()),
            (),
        )?;
    }
    let dead = txn.open_table(DEAD)?;
    let mut by_op = txn.open_table(DEAD_BY_OP)?;
    for item in dead.iter()? {
        let (k, v) = item?;
        let d: DeadLetter = from_store(v.value())?;
        by_op.insert(d.op.op_id.as_str(), k.value())?;
    }
    tracing::info!("store upgraded to schema 2 (record and dead-letter indexes)");
    Ok(())
}
