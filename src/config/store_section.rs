//! `[store]`: encryption at rest. Its own file because it is the one
//! section whose mistakes cost data (a key lost is a store lost), and its
//! checks (one key source, no secondary index in the clear) are its own.

use std::path::PathBuf;

use serde::Deserialize;

use super::ConfigError;

/// `[store] encryption`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Encryption {
    #[default]
    Off,
    /// Every value with user data and every attachment file is sealed
    /// with the key (XChaCha20-Poly1305).
    On,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreSection {
    pub encryption: Encryption,
    /// A file of 32 random bytes, mode 0600 (`syncd key generate PATH`).
    pub key_file: Option<PathBuf>,
    /// The name of a systemd credential (`LoadCredentialEncrypted=`), read
    /// from `$CREDENTIALS_DIRECTORY/NAME`.
    pub key_credential: Option<String>,
}

/// Where the store key comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    File(PathBuf),
    /// `$CREDENTIALS_DIRECTORY/NAME`, as systemd's `LoadCredential=` and
    /// `LoadCredentialEncrypted=` provide it.
    Credential(String),
}

impl std::fmt::Display for KeySource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KeySource::File(p) => write!(f, "key file {}", p.display()),
            KeySource::Credential(n) => write!(f, "credential {n}"),
        }
    }
}

impl StoreSection {
    /// The key's source when encryption is on (`None`: off).
    pub fn key_source(&self) -> Option<KeySource> {
        if self.encryption == Encryption::Off {
            return None;
        }
        match (&self.key_file, &self.key_credential) {
            (Some(p), _) => Some(KeySource::File(p.clone())),
            (None, Some(n)) => Some(KeySource::Credential(n.clone())),
            (None, None) => None,
        }
    }

    /// One key source with encryption on, none with it off.
    pub(super) fn validate(&self, indexed: Option<&str>) -> Result<(), ConfigError> {
        let bad = |key: &str, why: &str| Err(ConfigError::invalid(key, why));
        match (self.encryption, &self.key_file, &self.key_credential) {
            (Encryption::On, None, None) => bad(
                "store.encryption",
                "\"on\" needs key_file or key_credential (make a key with `syncd key generate PATH`)",
            ),
            (_, Some(_), Some(_)) => bad(
                "store.key_credential",
                "set key_file or key_credential, not both",
            ),
            (Encryption::Off, Some(_), _) | (Encryption::Off, _, Some(_)) => bad(
                "store.encryption",
                "a key is set but encryption is \"off\": set encryption = \"on\", or remove the key",
            ),
            (Encryption::On, Some(p), _) if p.as_os_str().is_empty() => {
                bad("store.key_file", "must not be empty")
            }
            (Encryption::On, _, Some(n)) if !valid_credential(n) => bad(
                "store.key_credential",
                "a credential name: letters, digits, '-', '_' and '.', not a path",
            ),
            (Encryption::On, _, _) if indexed.is_some() => Err(ConfigError::invalid(
                &format!("collections.{}.indexes", indexed.unwrap_or_default()),
                "secondary indexes keep the indexed values in the clear (they are ordered by them), which [store] encryption = \"on\" does not allow; remove the indexes (queries still work, by scanning)",
            )),
            _ => Ok(()),
        }
    }
}

fn valid_credential(n: &str) -> bool {
    !n.is_empty()
        && n != "."
        && n != ".."
        && n.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}
