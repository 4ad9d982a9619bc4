//! Reads of the per-scope tables (protocol revision 3): each scope's pull
//! state, the app's choices, the last session's grants, and how many
//! records of each scope this device holds. The writes are the writer's
//! (`writer/scopes.rs`).

use std::collections::BTreeMap;

use redb::ReadableTable;

use super::encoding::from_store;
use super::tables::*;
use super::{Result, Store};
use crate::domain::scope_state::{Grants, ScopeState};
use crate::domain::StoredRecord;

impl Store {
    /// Every scope's stored pull state.
    pub fn scope_states(&self) -> Result<BTreeMap<String, ScopeState>> {
        let (_db, txn) = self.read()?;
        let t = txn.open_table(SCOPE_STATE)?;
        let mut out = BTreeMap::new();
        for item in t.iter()? {
            let (k, v) = item?;
            out.insert(k.value().to_owned(), from_store(v.value())?);
        }
        Ok(out)
    }

    /// The app's subscribe (`true`) and unsubscribe (`false`) choices.
    pub fn scope_choices(&self) -> Result<BTreeMap<String, bool>> {
        let (_db, txn) = self.read()?;
        let t = txn.open_table(SCOPE_CHOICES)?;
        let mut out = BTreeMap::new();
        for item in t.iter()? {
            let (k, v) = item?;
            out.insert(k.value().to_owned(), v.value() == 1);
        }
        Ok(out)
    }

    /// The grants of the last session acted on; `None`: none yet (or the
    /// backend has no scopes).
    pub fn session_grants(&self) -> Result<Option<Grants>> {
        Ok(self
            .meta(META_SESSION)?
            .and_then(|b| serde_json::from_slice(&b).ok()))
    }

    /// Live records per scope (records whose scope the server has not said
    /// yet are not counted). A scan of the records: for `syncd scopes` and
    /// status in scoped mode, not for hot paths.
    pub fn scope_record_counts(&self) -> Result<BTreeMap<String, u64>> {
        let (_db, txn) = self.read()?;
        let t = txn.open_table(RECORDS)?;
        let mut out = BTreeMap::new();
        for item in t.iter()? {
            let (k, v) = item?;
            let r: StoredRecord = self.vault.decode(RECORDS, &k.value(), v.value())?;
            if let (Some(s), false) = (r.scope, r.deleted) {
                *out.entry(s).or_insert(0) += 1;
            }
        }
        Ok(out)
    }
}
