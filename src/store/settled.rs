//! What became of ops that a conflict resolution settled, kept for a while
//! after they left the queue.
//!
//! Exists for `wait_synced`: an op that lost a conflict is gone from the
//! queue like one the server acknowledged, so without this record a waiter
//! (or one that asks later) could only answer `synced`. The writer records
//! each settled op in the same transaction as the resolution; the table is
//! bounded ([`MAX_SETTLED`] entries, the oldest dropped first), so an op
//! settled long ago reads as done, as the protocol says.

use redb::{ReadableTable, ReadableTableMetadata, Table};
use serde::{Deserialize, Serialize};

use crate::domain::{ConflictOutcome, StoreError};
use crate::store::encoding::{from_store, to_store};

/// Most settled ops remembered.
pub const MAX_SETTLED: u64 = 10_000;

/// How a conflict resolution settled one op.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Settled {
    pub result: ConflictOutcome,
    /// The op that carries the local (or merged) change on, when re-sent.
    pub resent_as: Option<String>,
}

/// Remembers `op_ids` as settled by `s`, dropping the oldest entries
/// beyond [`MAX_SETTLED`]. `by_op`: op_id -> encoded [`Settled`];
/// `order`: insertion sequence -> op_id.
pub fn record(
    by_op: &mut Table<'_, &'static str, &'static [u8]>,
    order: &mut Table<'_, u64, &'static str>,
    op_ids: &[String],
    s: &Settled,
) -> Result<(), StoreError> {
    let bytes = to_store(s)?;
    let first = order.last()?.map(|(k, _)| k.value() + 1).unwrap_or(0);
    for (seq, op_id) in (first..).zip(op_ids) {
        by_op.insert(op_id.as_str(), bytes.as_slice())?;
        order.insert(seq, op_id.as_str())?;
    }
    while order.len()? > MAX_SETTLED {
        let Some((_, old)) = order.pop_first()? else {
            break;
        };
        by_op.remove(old.value())?;
    }
    Ok(())
}

/// Reads an entry written by [`record`].
pub fn decode(bytes: &[u8]) -> Result<Settled, StoreError> {
    from_store(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::tables::{SETTLED, SETTLED_ORDER};

    #[test]
    fn the_table_keeps_only_the_newest() {
        let dir = tempfile::tempdir().unwrap();
        let db = redb::Database::create(dir.path().join("t.redb")).unwrap();
        let txn = db.begin_write().unwrap();
        {
            let mut by_op = txn.open_table(SETTLED).unwrap();
            let mut order = txn.open_table(SETTLED_ORDER).unwrap();
            let s = Settled {
                result: ConflictOutcome::TookServer,
                resent_as: None,
            };
            let ids: Vec<String> = (0..MAX_SETTLED + 5).map(|i| format!("op{i}")).collect();
            for chunk in ids.chunks(1000) {
                record(&mut by_op, &mut order, chunk, &s).unwrap();
            }
            assert_eq!(by_op.len().unwrap(), MAX_SETTLED);
            assert_eq!(order.len().unwrap(), MAX_SETTLED);
            assert!(by_op.get("op4").unwrap().is_none());
            let kept = by_op
                .get("op5")
                .unwrap()
                .map(|v| decode(v.value()).unwrap());
            assert_eq!(kept, Some(s));
        }
        txn.commit().unwrap();
    }
}
