//! Encryption at rest (`[store] encryption = "on"`): the key, the sealed
//! values of the store and the sealed attachment files.
//!
//! What is sealed and what stays in the clear is written down once, in
//! docs/guarantees.md ("Encryption at rest"): documents, queued ops,
//! conflicts, dead letters, deferred records, settled outcomes, the
//! session and attachment content are sealed; table keys (collection
//! names, ids, op ids, sequence numbers) and attachment hashes are not,
//! because the store orders and finds rows by them.

pub mod key;
pub mod vault;

pub use key::{Key, KeyId, KeySource};
pub use vault::Vault;
