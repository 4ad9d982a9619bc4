//! Index upkeep in the writer: the entries that move with every record
//! write ([`reindex`]), and the background job that brings the index rows
//! in line with the config, building a new index and dropping an old one
//! a slice at a time ([`step`]) so that app writes never wait long.

use std::sync::Arc;

use crate::domain::{parse_doc_text, StoreError, StoredRecord};
use crate::store::encoding::to_store;
use crate::store::index::{self, index_range, Declared, IndexMeta, IndexState, Maintained};
use crate::store::tables::RECORDS;

use super::txn::{JobResult, Txn};
use super::WriteOutcome;

/// Records indexed (or entries dropped) per step: a step is one slice of
/// a group commit, so app writes batched with it wait for at most this.
pub const STEP_BUDGET: usize = 2048;

/// Moves the entries of record `c/id` in every index of `c` from the key
/// of its old document to the key of its new one (`None`: no live record).
pub(super) fn reindex(
    x: &mut Txn<'_>,
    c: &str,
    id: &str,
    old: Option<&str>,
    new: Option<&str>,
) -> Result<(), StoreError> {
    if old == new {
        return Ok(());
    }
    let defs = x.indexes.clone();
    let (old, new) = (old.map(parse_doc_text), new.map(parse_doc_text));
    for d in defs.of(c) {
        let (ok, nk) = (
            old.as_ref().map(|v| d.key(v)),
            new.as_ref().map(|v| d.key(v)),
        );
        if ok == nk {
            continue;
        }
        if let Some(k) = ok {
            x.index_entries
                .remove((c, d.name.as_str(), k.as_slice(), id))?;
        }
        if let Some(k) = nk {
            x.index_entries
                .insert((c, d.name.as_str(), k.as_slice(), id), ())?;
        }
    }
    Ok(())
}

/// One step towards the declared indexes: rows for new ones (building),
/// rows of undeclared ones marked dropping, then one slice of work on the
/// first index dropping, else on the first building. Answers
/// [`WriteOutcome::IndexStep`] with whether work remains.
pub(super) fn step(x: &mut Txn<'_>, declared: &Declared) -> Result<JobResult, StoreError> {
    let mut rows = index::rows(x.index_meta.table()?)?;
    reconcile(x, &mut rows, declared)?;
    x.indexes = Arc::new(Maintained::from_rows(&rows));
    if let Some((c, name, _)) = rows.iter().find(|r| r.2.state == IndexState::Dropping) {
        drop_slice(x, c, name)?;
    } else if let Some((c, name, meta)) = rows
        .iter()
        .find(|r| matches!(r.2.state, IndexState::Building { .. }))
    {
        build_slice(x, c, name, meta)?;
    }
    // Work remains while an index is not ready, or one declared has no
    // row yet (its old self finished dropping just now).
    let rows = index::rows(x.index_meta.table()?)?;
    let has_row = |c: &str, f: &[String]| rows.iter().any(|r| r.0 == c && r.1 == index::name_of(f));
    let more = rows.iter().any(|r| r.2.state != IndexState::Ready)
        || declared
            .iter()
            .any(|(c, lists)| lists.iter().any(|f| !has_row(c, f)));
    Ok(Ok(WriteOutcome::IndexStep { more }))
}

/// Adds rows for declared indexes that have none and marks rows no longer
/// declared as dropping. A re-declared index that is still dropping
/// finishes its drop first (its entries stopped being kept), then comes
/// back as new.
fn reconcile(
    x: &mut Txn<'_>,
    rows: &mut Vec<(String, String, IndexMeta)>,
    declared: &Declared,
) -> Result<(), StoreError> {
    let wanted = |c: &str, name: &str| {
        declared
            .get(c)
            .is_some_and(|l| l.iter().any(|f| index::name_of(f) == name))
    };
    for (c, name, meta) in rows.iter_mut() {
        if meta.state != IndexState::Dropping && !wanted(c, name) {
            meta.state = IndexState::Dropping;
            put_meta(x, c, name, meta)?;
            tracing::info!(collection = %c, index = %name, "index no longer declared: dropping it");
        }
    }
    for (c, lists) in declared {
        for fields in lists {
            let name = index::name_of(fields);
            if rows.iter().any(|(rc, rn, _)| rc == c && *rn == name) {
                continue;
            }
            let meta = IndexMeta {
                fields: fields.clone(),
                state: IndexState::Building {
                    next: String::new(),
                    done: 0,
                },
            };
            put_meta(x, c, &name, &meta)?;
            tracing::info!(collection = %c, index = %name, "building a new index");
            rows.push((c.clone(), name, meta));
        }
    }
    Ok(())
}

fn put_meta(x: &mut Txn<'_>, c: &str, name: &str, meta: &IndexMeta) -> Result<(), StoreError> {
    x.index_meta.insert((c, name), to_store(meta)?.as_slice())?;
    Ok(())
}

/// Removes up to [`STEP_BUDGET`] entries of a dropping index; its row
/// goes with the last of them.
fn drop_slice(x: &mut Txn<'_>, c: &str, name: &str) -> Result<(), StoreError> {
    let doomed: Vec<(Vec<u8>, String)> = x
        .index_entries
        .range(index_range(c, name))?
        .take(STEP_BUDGET)
        .map(|item| item.map(|(k, _)| (k.value().2.to_vec(), k.value().3.to_owned())))
        .collect::<Result<_, _>>()?;
    for (key, id) in &doomed {
        x.index_entries
            .remove((c, name, key.as_slice(), id.as_str()))?;
    }
    if doomed.len() < STEP_BUDGET {
        x.index_meta.remove((c, name))?;
        tracing::info!(collection = %c, index = %name, "index dropped");
    }
    Ok(())
}

/// Adds the entries of up to [`STEP_BUDGET`] records of a building index,
/// from where it stands; marks it ready after the collection's last.
fn build_slice(x: &mut Txn<'_>, c: &str, name: &str, meta: &IndexMeta) -> Result<(), StoreError> {
    let IndexState::Building { next, done } = &meta.state else {
        return Ok(());
    };
    let Some(def) = x.indexes.of(c).iter().find(|d| d.name == name).cloned() else {
        return Ok(());
    };
    let mut batch: Vec<(String, Option<String>)> = Vec::with_capacity(STEP_BUDGET + 1);
    for item in x.records_from((c, next.as_str()))? {
        let (k, v) = item?;
        let (rc, id) = k.value();
        if rc != c || batch.len() > STEP_BUDGET {
            break;
        }
        let r: StoredRecord = x.vault.decode(RECORDS, &(rc, id), v.value())?;
        batch.push((id.to_owned(), (!r.deleted).then_some(r.data)));
    }
    let rest = (batch.len() > STEP_BUDGET).then(|| batch.remove(STEP_BUDGET).0);
    for (id, data) in &batch {
        if let Some(data) = data {
            let key = def.key(&parse_doc_text(data));
            x.index_entries
                .insert((c, name, key.as_slice(), id.as_str()), ())?;
        }
    }
    let state = match rest {
        Some(next) => IndexState::Building {
            next,
            done: done + batch.len() as u64,
        },
        None => {
            tracing::info!(collection = %c, index = %name, records = done + batch.len() as u64, "index built");
            IndexState::Ready
        }
    };
    let meta = IndexMeta {
        fields: meta.fields.clone(),
        state,
    };
    put_meta(x, c, name, &meta)
}
