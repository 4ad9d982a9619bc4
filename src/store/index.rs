//! Secondary indexes: what an index is on disk, and the one function that
//! turns a document into its index key.
//!
//! An index is declared per collection (`[collections.NAME] indexes`) as a
//! list of fields. Its entries live in [`INDEX_ENTRIES`] as
//! `(collection, name, key, id)`, where the key is the record's values of
//! those fields, each encoded by [`collate::encode`] (a missing field
//! included, below `null`), so every live record has exactly one entry and
//! a range of keys is a range of values in the collation order.
//!
//! Invariant (checked by [`super::check`] and `syncd check`): for every
//! index that is `Ready`, the entries are exactly one per live record of
//! the collection, at the key of its current document; while `Building`,
//! the same holds for the records whose id is below `next`, and no entry
//! exists that is not the key of a live record. The writer keeps entries
//! in the transaction that writes the record ([`super::writer`]), and the
//! index's state row moves in the transaction that builds its last part,
//! so a query never sees a record without its entry.

use std::collections::BTreeMap;
use std::sync::Arc;

use redb::ReadableTable;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::domain::query::{collate, field_path, lookup};
use crate::domain::StoreError;

use super::encoding::from_store;
use super::tables::{INDEXES, INDEX_ENTRIES};
use super::Store;

/// Where an index stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum IndexState {
    /// Entries exist for the records with an id below `next`; `done` of
    /// them so far. Writes keep entries for every record meanwhile.
    Building {
        next: String,
        done: u64,
    },
    Ready,
    /// No longer declared: its entries are being removed.
    Dropping,
}

/// One index's row in [`INDEXES`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IndexMeta {
    /// Dotted field paths, in key order.
    pub fields: Vec<String>,
    pub state: IndexState,
}

/// An index the writer keeps entries for (building or ready).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexDef {
    pub name: String,
    pub paths: Vec<Vec<String>>,
}

impl IndexDef {
    /// The index over `fields` (dotted paths); `None` if one is not a path.
    pub fn new(fields: &[String]) -> Option<IndexDef> {
        Some(IndexDef {
            name: name_of(fields),
            paths: fields
                .iter()
                .map(|f| field_path(f))
                .collect::<Option<_>>()?,
        })
    }

    /// The key of `doc` in this index.
    pub fn key(&self, doc: &Value) -> Vec<u8> {
        let mut out = Vec::with_capacity(16 * self.paths.len());
        for p in &self.paths {
            collate::encode(lookup(doc, p), &mut out);
        }
        out
    }
}

/// An index's name: its fields joined by commas (`done,due`).
pub fn name_of(fields: &[String]) -> String {
    fields.join(",")
}

/// The indexes declared in the config, per collection: field lists.
pub use crate::domain::query::DeclaredIndexes as Declared;

/// The indexes the writer keeps entries for, per collection.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Maintained(pub BTreeMap<String, Vec<IndexDef>>);

impl Maintained {
    /// The indexes of `collection` (empty for most).
    pub fn of(&self, collection: &str) -> &[IndexDef] {
        self.0.get(collection).map(Vec::as_slice).unwrap_or(&[])
    }

    /// From the index rows: those building or ready.
    pub fn from_rows(rows: &[(String, String, IndexMeta)]) -> Maintained {
        let mut m: BTreeMap<String, Vec<IndexDef>> = BTreeMap::new();
        for (c, _, meta) in rows {
            if meta.state == IndexState::Dropping {
                continue;
            }
            if let Some(def) = IndexDef::new(&meta.fields) {
                m.entry(c.clone()).or_default().push(def);
            }
        }
        Maintained(m)
    }
}

/// Every index row of a table (of a read or a write transaction).
pub fn rows(
    t: &impl ReadableTable<(&'static str, &'static str), &'static [u8]>,
) -> Result<Vec<(String, String, IndexMeta)>, StoreError> {
    let mut out = Vec::new();
    for item in t.iter()? {
        let (k, v) = item?;
        let (c, name) = k.value();
        out.push((c.to_owned(), name.to_owned(), from_store(v.value())?));
    }
    Ok(out)
}

/// How one index stands, for `status`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexStatus {
    pub collection: String,
    pub name: String,
    pub state: IndexState,
}

impl Store {
    /// Every index row, in one read.
    pub fn index_rows(&self) -> Result<Vec<(String, String, IndexMeta)>, StoreError> {
        let (_db, txn) = self.read()?;
        rows(&txn.open_table(INDEXES)?)
    }

    /// The indexes the writer starts with.
    pub(crate) fn maintained_indexes(&self) -> Result<Arc<Maintained>, StoreError> {
        Ok(Arc::new(Maintained::from_rows(&self.index_rows()?)))
    }

    /// How many entries the index `collection`/`name` has (for tests and
    /// the check).
    pub fn index_entry_count(&self, collection: &str, name: &str) -> Result<u64, StoreError> {
        let (_db, txn) = self.read()?;
        let t = txn.open_table(INDEX_ENTRIES)?;
        let mut n = 0;
        for item in t.range(index_range(collection, name))? {
            item?;
            n += 1;
        }
        Ok(n)
    }
}

/// Bytes above every encoded key (whose first byte is a type rank < 0x10).
pub const KEY_CEILING: &[u8] = &[0xFF];

/// Every entry of one index.
pub fn index_range<'a>(
    collection: &'a str,
    name: &'a str,
) -> std::ops::Range<(&'a str, &'a str, &'a [u8], &'a str)> {
    (collection, name, &[][..], "")..(collection, name, KEY_CEILING, "")
}

/// Test builds: declares `declared` as ready indexes on a store that has
/// no records and no index rows yet (a fresh one), so that a writer
/// started on it keeps them from its first job, and the invariant check
/// it runs after every batch in test builds covers the indexes too.
#[cfg(test)]
pub fn seed_ready(store: &Store, declared: &Declared) -> Result<(), StoreError> {
    use super::encoding::to_store;
    use super::tables::RECORDS;
    use redb::ReadableTableMetadata;
    let db = store.db()?;
    let txn = db.begin_write()?;
    {
        let records = txn.open_table(RECORDS)?;
        let mut meta = txn.open_table(INDEXES)?;
        if records.len()? > 0 || meta.len()? > 0 {
            return Ok(());
        }
        for (c, lists) in declared {
            for fields in lists {
                let m = IndexMeta {
                    fields: fields.clone(),
                    state: IndexState::Ready,
                };
                meta.insert(
                    (c.as_str(), name_of(fields).as_str()),
                    to_store(&m)?.as_slice(),
                )?;
            }
        }
    }
    txn.commit()?;
    Ok(())
}

/// Test builds: the indexes the store tests keep on collection `c`, over
/// fields the tests write and one they never do.
#[cfg(test)]
pub fn test_declared() -> Declared {
    let f = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    [(
        "c".to_owned(),
        vec![f(&["x"]), f(&["v", "k0"]), f(&["never.there"])],
    )]
    .into_iter()
    .collect()
}
