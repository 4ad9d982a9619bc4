//! The store key: 32 random bytes from a key file or a systemd credential,
//! and what is derived from it. The key itself is never printed: its
//! `Debug` is redacted, it is wiped from memory when dropped, and errors
//! name the file it came from, never its bytes.

use std::io::Write;
use std::path::Path;

use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use crate::domain::seal_error::KeyError;

/// Length of a key, bytes.
pub const KEY_BYTES: usize = 32;

/// A store key. Cloning copies the secret (each copy is wiped on drop).
#[derive(Clone)]
pub struct Key {
    bytes: Zeroizing<[u8; KEY_BYTES]>,
    /// Where it came from, for messages.
    origin: String,
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Key({}, id {})", self.origin, self.id())
    }
}

/// A key's public name: the first 8 bytes of a hash of it. Stored in the
/// clear beside sealed data, so that the wrong key is told apart from
/// damage, and shown in messages so a person can tell keys apart.
#[derive(Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct KeyId(pub [u8; 8]);

impl std::fmt::Display for KeyId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl std::fmt::Debug for KeyId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "KeyId({self})")
    }
}

pub use crate::config::KeySource;

impl Key {
    /// Reads the key from `source`. A key file must be exactly 32 bytes
    /// and readable by its owner only; a credential is trusted to be
    /// protected by systemd (its directory is private to the service).
    pub fn load(source: &KeySource) -> Result<Key, KeyError> {
        match source {
            KeySource::File(path) => {
                check_private(path)?;
                Key::read(path, source.to_string())
            }
            KeySource::Credential(name) => {
                let dir = std::env::var_os("CREDENTIALS_DIRECTORY")
                    .ok_or_else(|| KeyError::NoCredentialsDirectory { name: name.clone() })?;
                Key::read(&Path::new(&dir).join(name), source.to_string())
            }
        }
    }

    fn read(path: &Path, origin: String) -> Result<Key, KeyError> {
        let raw = Zeroizing::new(std::fs::read(path).map_err(|e| KeyError::Unreadable {
            path: path.to_owned(),
            source: e,
        })?);
        let bytes: [u8; KEY_BYTES] =
            raw.as_slice()
                .try_into()
                .map_err(|_| KeyError::WrongLength {
                    path: path.to_owned(),
                    len: raw.len(),
                })?;
        Ok(Key {
            bytes: Zeroizing::new(bytes),
            origin,
        })
    }

    /// A new random key (not written anywhere).
    pub fn random() -> Result<Key, KeyError> {
        let mut bytes = Zeroizing::new([0u8; KEY_BYTES]);
        getrandom::fill(bytes.as_mut()).map_err(|e| KeyError::Random(e.to_string()))?;
        Ok(Key {
            bytes,
            origin: "a new key".into(),
        })
    }

    /// Writes a new random key to `path` (mode 0600), refusing to replace
    /// an existing file; returns its id.
    pub fn generate_file(path: &Path) -> Result<KeyId, KeyError> {
        let key = Key::random()?;
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
        let io = |e| KeyError::Unwritable {
            path: path.to_owned(),
            source: e,
        };
        let mut f = opts.open(path).map_err(|e| match e.kind() {
            std::io::ErrorKind::AlreadyExists => KeyError::Exists {
                path: path.to_owned(),
            },
            _ => io(e),
        })?;
        f.write_all(key.bytes.as_ref()).map_err(io)?;
        f.sync_all().map_err(io)?;
        Ok(key.id())
    }

    /// A key from its bytes (kept sealed inside a store during a rekey).
    pub(super) fn from_secret(bytes: &[u8; KEY_BYTES], origin: &str) -> Key {
        let mut key = Key {
            bytes: Zeroizing::new([0; KEY_BYTES]),
            origin: origin.to_owned(),
        };
        key.bytes.copy_from_slice(bytes);
        key
    }

    /// The secret bytes, for sealing them inside the store (a rekey).
    pub(super) fn secret(&self) -> &[u8] {
        self.bytes.as_ref()
    }

    /// The key's public id.
    pub fn id(&self) -> KeyId {
        let d = self.derive(b"syncd key id v1");
        let mut id = [0u8; 8];
        id.copy_from_slice(&d[..8]);
        KeyId(id)
    }

    /// Where the key came from ("key file /etc/syncd/store.key").
    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// A subkey for one purpose: SHA-256 over the purpose and the key, so
    /// that values, files and the id never share a key.
    pub(super) fn derive(&self, purpose: &[u8]) -> Zeroizing<[u8; 32]> {
        let mut h = Sha256::new();
        h.update(purpose);
        h.update([0u8]);
        h.update(self.bytes.as_ref());
        Zeroizing::new(h.finalize().into())
    }
}

/// Refuses a key file that its group or others may read (or that is not a
/// regular file).
fn check_private(path: &Path) -> Result<(), KeyError> {
    let meta = std::fs::metadata(path).map_err(|e| KeyError::Unreadable {
        path: path.to_owned(),
        source: e,
    })?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(KeyError::NotPrivate {
                path: path.to_owned(),
                mode,
            });
        }
    }
    if !meta.is_file() {
        return Err(KeyError::WrongLength {
            path: path.to_owned(),
            len: 0,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_generated_key_loads_and_is_never_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k");
        let id = Key::generate_file(&path).unwrap();
        let key = Key::load(&KeySource::File(path.clone())).unwrap();
        assert_eq!(key.id(), id);
        assert!(!format!("{key:?}").contains(&format!("{:?}", key.bytes.as_ref())));
        let e = Key::generate_file(&path).unwrap_err();
        assert!(matches!(e, KeyError::Exists { .. }), "{e}");
        assert_eq!(Key::load(&KeySource::File(path)).unwrap().id(), id);
    }

    #[test]
    fn a_readable_or_short_key_file_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k");
        Key::generate_file(&path).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
        let e = Key::load(&KeySource::File(path.clone())).unwrap_err();
        assert!(matches!(e, KeyError::NotPrivate { mode: 0o640, .. }), "{e}");
        assert!(e.to_string().contains("chmod 600"), "{e}");
        std::fs::write(&path, b"short").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        let e = Key::load(&KeySource::File(path)).unwrap_err();
        assert!(matches!(e, KeyError::WrongLength { len: 5, .. }), "{e}");
    }
}
