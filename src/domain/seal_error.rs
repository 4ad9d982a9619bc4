//! What can go wrong with encryption at rest: the key (a file, a
//! credential) and the sealed store. These errors name the file and what
//! to do; none ever holds key bytes (ids only, see `store::crypt::KeyId`).

use std::fmt;
use std::path::PathBuf;

/// The key could not be had.
#[derive(Debug)]
pub enum KeyError {
    /// The key file (or credential) cannot be read.
    Unreadable {
        path: PathBuf,
        source: std::io::Error,
    },
    /// Not 32 bytes.
    WrongLength { path: PathBuf, len: usize },
    /// Group or others may read the key file.
    NotPrivate { path: PathBuf, mode: u32 },
    /// `key_credential` is set but the daemon was not started with
    /// credentials (no `$CREDENTIALS_DIRECTORY`).
    NoCredentialsDirectory { name: String },
    /// `syncd key generate` never replaces a file.
    Exists { path: PathBuf },
    /// The new key file could not be written.
    Unwritable {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The operating system gave no random bytes.
    Random(String),
}

impl fmt::Display for KeyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeyError::Unreadable { path, source } => write!(
                f,
                "cannot read the store key {}: {source}; point [store] key_file at the key the store was encrypted with (restore it from your copy), and make it readable by the user syncd runs as",
                path.display()
            ),
            KeyError::WrongLength { path, len } => write!(
                f,
                "the store key {} holds {len} bytes, not 32 random bytes (make one with `syncd key generate PATH`)",
                path.display()
            ),
            KeyError::NotPrivate { path, mode } => write!(
                f,
                "the store key {} may be read by others (mode {mode:04o}); run `chmod 600 {}`",
                path.display(),
                path.display()
            ),
            KeyError::NoCredentialsDirectory { name } => write!(
                f,
                "[store] key_credential = \"{name}\" but $CREDENTIALS_DIRECTORY is not set: start syncd from a systemd unit with LoadCredential= or LoadCredentialEncrypted={name}:PATH, or use key_file"
            ),
            KeyError::Exists { path } => write!(
                f,
                "{} exists; a key file is never overwritten (losing a key loses the store): choose another path",
                path.display()
            ),
            KeyError::Unwritable { path, source } => {
                write!(f, "cannot write the key file {}: {source}", path.display())
            }
            KeyError::Random(e) => write!(f, "no random bytes from the operating system: {e}"),
        }
    }
}

impl std::error::Error for KeyError {}

/// The sealed store and the key disagree, or a sealed value is not what
/// was sealed.
#[derive(Debug)]
pub enum SealError {
    Key(KeyError),
    /// The store was sealed with another key.
    WrongKey {
        path: PathBuf,
        sealed_with: String,
        given: String,
        origin: String,
    },
    /// `[store] encryption = "off"` but the store is encrypted.
    Encrypted {
        path: PathBuf,
        sealed_with: String,
    },
    /// `[store] encryption = "on"` but the store holds plain data.
    NotEncrypted {
        path: PathBuf,
    },
    /// A value or file fails authentication: changed on disk, or moved
    /// from another place.
    Tampered {
        what: String,
    },
}

impl fmt::Display for SealError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SealError::Key(e) => e.fmt(f),
            SealError::WrongKey {
                path,
                sealed_with,
                given,
                origin,
            } => write!(
                f,
                "{} is encrypted with key {sealed_with}, but the {origin} is key {given}: nothing was opened or changed. Give the key the store was encrypted with ([store] key_file or key_credential; after `syncd rekey`, the new key)",
                path.display()
            ),
            SealError::Encrypted { path, sealed_with } => write!(
                f,
                "{} is encrypted (key {sealed_with}) but [store] encryption is \"off\": set encryption = \"on\" and key_file or key_credential",
                path.display()
            ),
            SealError::NotEncrypted { path } => write!(
                f,
                "{} is not encrypted but [store] encryption is \"on\": stop syncd and run `syncd store encrypt` to convert it, or set encryption = \"off\"",
                path.display()
            ),
            SealError::Tampered { what } => write!(
                f,
                "{what} fails authentication: it was changed on disk or moved from elsewhere; restore the store from a backup"
            ),
        }
    }
}

impl std::error::Error for SealError {}

impl From<KeyError> for SealError {
    fn from(e: KeyError) -> Self {
        SealError::Key(e)
    }
}
