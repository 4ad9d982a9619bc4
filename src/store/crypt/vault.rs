//! How the store's values are sealed: every value that holds user data
//! (records, queued ops, conflicts, dead letters, deferred server records,
//! settled outcomes, the session) goes through [`Vault::encode`] and
//! [`Vault::decode`]. With encryption off those are plain bincode; with it
//! on, the bincode bytes are sealed with XChaCha20-Poly1305 under a fresh
//! nonce, with the table's name and the row's key as associated data, so
//! that a value moved to another row (or table) fails authentication like
//! a changed byte does.
//!
//! Sealed value layout: `[1][nonce: 24][ciphertext + tag: 16]`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use redb::{Key as RedbKey, TableDefinition, TableHandle};
use serde::{de::DeserializeOwned, Serialize};

use super::key::{Key, KeyId};
use crate::domain::seal_error::SealError;
use crate::domain::StoreError;
use crate::store::encoding::{from_store, to_store};

const VERSION: u8 = 1;
const NONCE: usize = 24;
/// Bytes a sealed value adds to its plain encoding.
pub const OVERHEAD: usize = 1 + NONCE + 16;

/// Plain or sealed values; cheap to clone.
#[derive(Clone, Default)]
pub enum Vault {
    #[default]
    Plain,
    Sealed(Arc<Sealer>),
}

impl std::fmt::Debug for Vault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Vault::Plain => write!(f, "Vault::Plain"),
            Vault::Sealed(s) => write!(f, "Vault::Sealed({})", s.id),
        }
    }
}

/// The value cipher of one key.
pub struct Sealer {
    key: Key,
    id: KeyId,
    cipher: XChaCha20Poly1305,
    /// Random per process: nonces are this prefix and a counter, unique
    /// without a system call per value.
    prefix: [u8; 16],
    counter: AtomicU64,
}

impl Vault {
    /// A vault that seals with `key`.
    pub fn sealed(key: Key) -> Result<Vault, StoreError> {
        let sub = key.derive(b"syncd store values v1");
        let mut prefix = [0u8; 16];
        getrandom::fill(&mut prefix).map_err(|e| {
            SealError::Key(crate::domain::seal_error::KeyError::Random(e.to_string()))
        })?;
        Ok(Vault::Sealed(Arc::new(Sealer {
            id: key.id(),
            cipher: XChaCha20Poly1305::new(sub.as_ref().into()),
            key,
            prefix,
            counter: AtomicU64::new(0),
        })))
    }

    pub fn is_sealed(&self) -> bool {
        matches!(self, Vault::Sealed(_))
    }

    /// The key's id (`None`: plain).
    pub fn key_id(&self) -> Option<KeyId> {
        match self {
            Vault::Plain => None,
            Vault::Sealed(s) => Some(s.id),
        }
    }

    /// The key (`None`: plain), for the attachment files.
    pub fn key(&self) -> Option<&Key> {
        match self {
            Vault::Plain => None,
            Vault::Sealed(s) => Some(&s.key),
        }
    }

    /// Encodes `value` for row `key` of `table`.
    pub fn encode<K: RedbKey, T: Serialize>(
        &self,
        table: TableDefinition<K, &[u8]>,
        key: &K::SelfType<'_>,
        value: &T,
    ) -> Result<Vec<u8>, StoreError> {
        let plain = to_store(value)?;
        match self {
            Vault::Plain => Ok(plain),
            Vault::Sealed(s) => Ok(s.seal(table.name(), K::as_bytes(key).as_ref(), &plain)),
        }
    }

    /// Decodes the value at row `key` of `table`; a sealed value that fails
    /// authentication is [`SealError::Tampered`].
    pub fn decode<K: RedbKey, T: DeserializeOwned>(
        &self,
        table: TableDefinition<K, &[u8]>,
        key: &K::SelfType<'_>,
        bytes: &[u8],
    ) -> Result<T, StoreError> {
        match self {
            Vault::Plain => from_store(bytes),
            Vault::Sealed(s) => {
                from_store(&s.open(table.name(), K::as_bytes(key).as_ref(), bytes)?)
            }
        }
    }

    /// Re-encodes raw stored bytes from `self` to `to` (a conversion):
    /// the value's plain encoding is never decoded into types.
    pub fn recode(
        &self,
        to: &Vault,
        table: &str,
        key: &[u8],
        bytes: &[u8],
    ) -> Result<Vec<u8>, StoreError> {
        let plain = match self {
            Vault::Plain => zeroize::Zeroizing::new(bytes.to_vec()),
            Vault::Sealed(s) => zeroize::Zeroizing::new(s.open(table, key, bytes)?),
        };
        Ok(match to {
            Vault::Plain => plain.to_vec(),
            Vault::Sealed(s) => s.seal(table, key, &plain),
        })
    }
}

impl Sealer {
    pub fn id(&self) -> KeyId {
        self.id
    }

    fn nonce(&self) -> [u8; NONCE] {
        let mut n = [0u8; NONCE];
        n[..16].copy_from_slice(&self.prefix);
        let c = self.counter.fetch_add(1, Ordering::Relaxed);
        n[16..].copy_from_slice(&c.to_be_bytes());
        n
    }

    /// Seals `plain` for row `key` of `table`.
    pub fn seal(&self, table: &str, key: &[u8], plain: &[u8]) -> Vec<u8> {
        let nonce = self.nonce();
        let aad = aad(table, key);
        let sealed = self
            .cipher
            .encrypt(
                XNonce::from_slice(&nonce),
                Payload {
                    msg: plain,
                    aad: &aad,
                },
            )
            .unwrap_or_default();
        debug_assert_eq!(sealed.len(), plain.len() + 16);
        let mut out = Vec::with_capacity(OVERHEAD + plain.len());
        out.push(VERSION);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&sealed);
        out
    }

    /// Opens a value sealed by [`Sealer::seal`] for the same row.
    pub fn open(&self, table: &str, key: &[u8], sealed: &[u8]) -> Result<Vec<u8>, StoreError> {
        let tampered = || {
            StoreError::Seal(SealError::Tampered {
                what: format!("a sealed value in table `{table}`"),
            })
        };
        if sealed.len() < OVERHEAD || sealed[0] != VERSION {
            return Err(tampered());
        }
        let (nonce, body) = sealed[1..].split_at(NONCE);
        let aad = aad(table, key);
        self.cipher
            .decrypt(
                XNonce::from_slice(nonce),
                Payload {
                    msg: body,
                    aad: &aad,
                },
            )
            .map_err(|_| tampered())
    }
}

/// Associated data: the table's name, a separator, and the row's key.
fn aad(table: &str, key: &[u8]) -> Vec<u8> {
    let mut a = Vec::with_capacity(table.len() + 1 + key.len());
    a.extend_from_slice(table.as_bytes());
    a.push(0);
    a.extend_from_slice(key);
    a
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::tables::{QUEUE, RECORDS};

    #[test]
    fn a_sealed_value_opens_only_in_its_own_row() {
        let v = Vault::sealed(Key::random().unwrap()).unwrap();
        let doc = "secret marker text".to_string();
        let sealed = v.encode(RECORDS, &("todos", "a"), &doc).unwrap();
        assert!(!sealed.windows(6).any(|w| w == b"secret"));
        let back: String = v.decode(RECORDS, &("todos", "a"), &sealed).unwrap();
        assert_eq!(back, doc);
        let moved = v.decode::<_, String>(RECORDS, &("todos", "b"), &sealed);
        assert!(matches!(
            moved,
            Err(StoreError::Seal(SealError::Tampered { .. }))
        ));
        let other = v.decode::<_, String>(QUEUE, &1u64, &sealed);
        assert!(matches!(
            other,
            Err(StoreError::Seal(SealError::Tampered { .. }))
        ));
        for i in 0..sealed.len() {
            let mut bad = sealed.clone();
            bad[i] ^= 1;
            assert!(v
                .decode::<_, String>(RECORDS, &("todos", "a"), &bad)
                .is_err());
        }
        let again = v.encode(RECORDS, &("todos", "a"), &doc).unwrap();
        assert_ne!(again, sealed, "a fresh nonce per value");
    }

    #[test]
    fn another_key_cannot_open() {
        let a = Vault::sealed(Key::random().unwrap()).unwrap();
        let b = Vault::sealed(Key::random().unwrap()).unwrap();
        let sealed = a.encode(QUEUE, &7u64, &"x".to_string()).unwrap();
        assert!(b.decode::<_, String>(QUEUE, &7u64, &sealed).is_err());
        let moved = a.recode(&b, "queue", &7u64.to_le_bytes(), &sealed).unwrap();
        assert_eq!(b.decode::<_, String>(QUEUE, &7u64, &moved).unwrap(), "x");
    }
}
