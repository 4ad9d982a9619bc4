//! Invariant 14 of [`super::check`]: the secondary indexes agree with the
//! records. Its own file because it rebuilds each index's expected keys
//! from the documents, which is the index's business, not the queue's.

use std::collections::BTreeMap;

use redb::{ReadTransaction, ReadableTable};

use super::check::{open, Problem, Report};
use super::crypt::Vault;
use super::index::{index_range, rows, IndexDef, IndexState};
use super::tables::{INDEXES, INDEX_ENTRIES, RECORDS};
use crate::domain::{parse_doc_text, StoreError, StoredRecord};

/// Checks every index that is building or ready, and that no entry
/// belongs to an index without a row.
pub(super) fn indexes(
    txn: &ReadTransaction,
    vault: &Vault,
    r: &mut Report,
) -> Result<(), StoreError> {
    let rows = match open(txn, INDEXES)? {
        Some(meta) => rows(&meta)?,
        None => Vec::new(),
    };
    orphans(txn, &rows, r)?;
    for (c, name, m) in rows {
        let upto = match &m.state {
            IndexState::Ready => None,
            IndexState::Building { next, .. } => Some(next.clone()),
            IndexState::Dropping => continue,
        };
        let Some(def) = IndexDef::new(&m.fields) else {
            problem(
                r,
                &c,
                &name,
                format!("fields {:?} are not field paths", m.fields),
            );
            continue;
        };
        one(txn, vault, &c, &def, upto.as_deref(), r)?;
    }
    Ok(())
}

/// Entries under a (collection, index) that has no row: nothing keeps or
/// drops them.
fn orphans(
    txn: &ReadTransaction,
    rows: &[(String, String, super::index::IndexMeta)],
    r: &mut Report,
) -> Result<(), StoreError> {
    let Some(t) = open(txn, INDEX_ENTRIES)? else {
        return Ok(());
    };
    let mut seen: BTreeMap<(String, String), u64> = BTreeMap::new();
    for item in t.iter()? {
        let (k, _) = item?;
        let (c, name, _, _) = k.value();
        if !rows.iter().any(|(rc, rn, _)| rc == c && rn == name) {
            *seen.entry((c.to_owned(), name.to_owned())).or_default() += 1;
        }
    }
    for ((c, name), n) in seen {
        problem(r, &c, &name, format!("{n} entries, but no such index"));
    }
    Ok(())
}

fn problem(r: &mut Report, c: &str, index: &str, detail: String) {
    r.push(Problem::SecondaryIndex {
        collection: c.to_owned(),
        index: index.to_owned(),
        detail,
    });
}

/// One index against its collection's live records; `upto`: building,
/// with entries owed only below that id.
fn one(
    txn: &ReadTransaction,
    vault: &Vault,
    c: &str,
    def: &IndexDef,
    upto: Option<&str>,
    r: &mut Report,
) -> Result<(), StoreError> {
    let mut expected: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    if let Some(t) = open(txn, RECORDS)? {
        for item in t.range((c, "")..)? {
            let (k, v) = item?;
            let (rc, id) = k.value();
            if rc != c {
                break;
            }
            let rec: StoredRecord = vault.decode(RECORDS, &(rc, id), v.value())?;
            if !rec.deleted {
                expected.insert(id.to_owned(), def.key(&parse_doc_text(&rec.data)));
            }
        }
    }
    let mut found: BTreeMap<String, u32> = BTreeMap::new();
    if let Some(t) = open(txn, INDEX_ENTRIES)? {
        for item in t.range(index_range(c, &def.name))? {
            let (k, _) = item?;
            let (_, _, key, id) = k.value();
            *found.entry(id.to_owned()).or_default() += 1;
            match expected.get(id) {
                Some(want) if want.as_slice() == key => {}
                Some(_) => problem(
                    r,
                    c,
                    &def.name,
                    format!("the entry of {id} is not the key of its document"),
                ),
                None => problem(
                    r,
                    c,
                    &def.name,
                    format!("an entry for {id}, which is not a live record"),
                ),
            }
        }
    }
    for (id, n) in &found {
        if *n > 1 {
            problem(r, c, &def.name, format!("{n} entries for {id}"));
        }
    }
    for id in expected.keys() {
        let owed = upto.is_none_or(|next| id.as_str() < next);
        if owed && !found.contains_key(id) {
            problem(
                r,
                c,
                &def.name,
                format!("no entry for the live record {id}"),
            );
        }
    }
    Ok(())
}
