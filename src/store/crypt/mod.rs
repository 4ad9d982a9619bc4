//! Encryption at rest (`[store] encryption = "on"`): the key, the sealed
//! values of the store and the sealed attachment files.
//!
//! What is sealed and what stays in the clear is written down once, in
//! docs/guarantees.md ("Encryption at rest"): documents, queued ops,
//! conflicts, dead letters, deferred records and attachment content are
//! sealed; table keys (collection names, ids, op ids, sequence numbers),
//! the bookkeeping without user data (scope cursors and names, the
//! session's user and grants, settled outcomes, counters) and attachment
//! hashes are not: the store orders and finds rows by them.

pub mod blob_seal;
pub mod convert;
pub mod fault;
pub mod key;
pub mod state;
#[cfg(test)]
mod tests;
pub mod vault;
mod xchacha;

pub use blob_seal::{BlobSeal, FileSealer};
pub use key::{Key, KeyId, KeySource};
pub use vault::Vault;

use crate::config::StoreSection;
use crate::domain::StoreError;
use crate::store::blobs::BlobDir;

/// `dir` reading and writing its files sealed when `vault` is: with its
/// key, and, while a conversion is unfinished (`t`), the previous key or
/// plain files too.
pub fn seal_blobs(dir: BlobDir, vault: &Vault, t: &state::Transition) -> BlobDir {
    let Some(key) = vault.key() else {
        return dir;
    };
    let seal = blob_seal::BlobSeal::new(key, t.previous.as_ref(), t.blobs_plain);
    dir.sealed(std::sync::Arc::new(seal))
}

/// The vault `[store]` asks for: plain, or sealed with the key it names
/// (read now; a missing or unreadable key is an error that names it).
pub fn vault_for(section: &StoreSection) -> Result<Vault, StoreError> {
    match section.key_source() {
        None => Ok(Vault::Plain),
        Some(source) => {
            let key = Key::load(&source).map_err(crate::domain::seal_error::SealError::Key)?;
            Vault::sealed(key)
        }
    }
}
