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

#[cfg(test)]
mod tests {
    use crate::config::{Config, ConfigProblem, Place};

    fn refused(text: &str) -> (String, String) {
        let e = Config::parse(text).unwrap_err();
        let key = match &e.place {
            Some(Place::Key(k)) => k.clone(),
            other => panic!("no key in {e}: {other:?}"),
        };
        assert!(matches!(e.problem, ConfigProblem::Invalid(_)), "{e}");
        (key, e.to_string())
    }

    #[test]
    fn one_key_source_with_encryption_on_and_none_with_it_off() {
        let ok = Config::parse("[store]\nencryption = \"on\"\nkey_file = \"/k\"\n").unwrap();
        assert_eq!(
            ok.store.key_source(),
            Some(super::KeySource::File("/k".into()))
        );
        let ok = Config::parse("[store]\nencryption = \"on\"\nkey_credential = \"sk\"\n").unwrap();
        assert_eq!(
            ok.store.key_source(),
            Some(super::KeySource::Credential("sk".into()))
        );
        assert_eq!(Config::parse("[store]\n").unwrap().store.key_source(), None);
        let (k, e) = refused("[store]\nencryption = \"on\"\n");
        assert_eq!(k, "store.encryption");
        assert!(e.contains("syncd key generate"), "{e}");
        let (k, _) = refused("[store]\nkey_file = \"/k\"\n");
        assert_eq!(k, "store.encryption");
        let (k, _) =
            refused("[store]\nencryption = \"on\"\nkey_file = \"/k\"\nkey_credential = \"x\"\n");
        assert_eq!(k, "store.key_credential");
        let (k, _) = refused("[store]\nencryption = \"on\"\nkey_credential = \"../x\"\n");
        assert_eq!(k, "store.key_credential");
    }

    #[test]
    fn indexes_are_refused_with_encryption_on() {
        let (k, e) = refused(
            "[store]\nencryption = \"on\"\nkey_file = \"/k\"\n[collections.todos]\nindexes = [\"due\"]\n",
        );
        assert_eq!(k, "collections.todos.indexes");
        assert!(e.contains("in the clear"), "{e}");
    }
}
