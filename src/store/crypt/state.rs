//! Which key a store is sealed with, checked before anything else is read
//! or written, and the marks a conversion leaves while it runs.
//!
//! A sealed store holds, in `meta`:
//! - [`META_ENCRYPTION`]: the key's id and a check value sealed with it,
//!   so that a wrong key is refused at open, by name, before any value is
//!   read and before anything is written;
//! - [`META_PREVIOUS_KEY`] (during `syncd rekey` only): the previous key,
//!   sealed with the current one, until every attachment file is re-sealed;
//! - [`META_BLOBS_PLAIN`] (during `syncd store encrypt` and `decrypt`
//!   only): attachment files may still be (or already be) plain.
//!
//! A plain store has none of them.

use redb::{Database, ReadableDatabase, Table};

use super::key::{Key, KeyId, KEY_BYTES};
use super::vault::Vault;
use crate::domain::seal_error::SealError;
use crate::domain::StoreError;
use crate::store::tables::{META, META_CLIENT_ID};

pub const META_ENCRYPTION: &str = "encryption";
pub const META_PREVIOUS_KEY: &str = "encryption_previous_key";
pub const META_BLOBS_PLAIN: &str = "encryption_blobs_plain";
/// [`META_BLOBS_PLAIN`]'s value during `syncd store encrypt`.
pub const ENCRYPTING: &[u8] = b"encrypt";
/// [`META_BLOBS_PLAIN`]'s value during `syncd store decrypt`.
pub const DECRYPTING: &[u8] = b"decrypt";

/// What a store file is, by its `meta` table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Found {
    /// New: nothing written yet.
    Fresh,
    Plain,
    Sealed(KeyId),
}

/// Reads what `db` is, without writing.
pub fn found(db: &Database) -> Result<Found, StoreError> {
    let txn = db.begin_read()?;
    let meta = match txn.open_table(META) {
        Ok(t) => t,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Found::Fresh),
        Err(e) => return Err(e.into()),
    };
    if let Some(v) = meta.get(META_ENCRYPTION)? {
        let id = v.value().get(..8).and_then(|b| b.try_into().ok());
        return match id {
            Some(id) => Ok(Found::Sealed(KeyId(id))),
            None => Err(tampered()),
        };
    }
    Ok(if meta.get(META_CLIENT_ID)?.is_some() {
        Found::Plain
    } else {
        Found::Fresh
    })
}

fn tampered() -> StoreError {
    StoreError::Seal(SealError::Tampered {
        what: format!("the store's `{META_ENCRYPTION}` mark"),
    })
}

/// Checks that `vault` is the right one for `db` (at `path`, for the
/// messages); `Ok(true)`: the store is fresh and must be stamped with
/// [`stamp`] in its first transaction.
pub fn verify(db: &Database, vault: &Vault, path: &std::path::Path) -> Result<bool, StoreError> {
    let found = found(db)?;
    match (found, vault) {
        (Found::Fresh, _) => Ok(true),
        (Found::Plain, Vault::Plain) => Ok(false),
        (Found::Plain, Vault::Sealed(_)) => Err(SealError::NotEncrypted {
            path: path.to_owned(),
        }
        .into()),
        (Found::Sealed(id), Vault::Plain) => Err(SealError::Encrypted {
            path: path.to_owned(),
            sealed_with: id.to_string(),
        }
        .into()),
        (Found::Sealed(id), Vault::Sealed(s)) if id != s.id() => Err(SealError::WrongKey {
            path: path.to_owned(),
            sealed_with: id.to_string(),
            given: s.id().to_string(),
            origin: vault
                .key()
                .map(|k| k.origin().to_owned())
                .unwrap_or_default(),
        }
        .into()),
        (Found::Sealed(_), Vault::Sealed(s)) => {
            let txn = db.begin_read()?;
            let meta = txn.open_table(META)?;
            let v = meta.get(META_ENCRYPTION)?.ok_or_else(tampered)?;
            let check = s.open("meta", META_ENCRYPTION.as_bytes(), &v.value()[8..]);
            match check {
                Ok(c) if c == CHECK => Ok(false),
                _ => Err(tampered()),
            }
        }
    }
}

/// [`verify`] without writing a byte to the file: redb marks a file it
/// opens (and its clean-shutdown mark is consumed), so a sealed store is
/// first checked through a read-only overlay, and a wrong key leaves it
/// exactly as it was. A file that will not open here is left for the real
/// open to report.
pub fn verify_untouched(path: &std::path::Path, vault: &Vault) -> Result<(), StoreError> {
    match overlay(path)? {
        Some(db) => verify(&db, vault, path).map(|_| ()),
        None => Ok(()),
    }
}

/// [`found`] without writing a byte to the file (`None`: no store file,
/// or one the storage engine will not open; the real open reports it).
pub fn peek(path: &std::path::Path) -> Result<Option<Found>, StoreError> {
    match overlay(path)? {
        Some(db) => found(&db).map(Some),
        None => Ok(None),
    }
}

/// [`transition`] without writing a byte to the file (`None`: as for
/// [`peek`]).
pub fn transition_untouched(
    path: &std::path::Path,
    vault: &Vault,
) -> Result<Option<Transition>, StoreError> {
    match overlay(path)? {
        Some(db) => transition(&db, vault).map(Some),
        None => Ok(None),
    }
}

/// The store file opened over a read-only overlay.
fn overlay(path: &std::path::Path) -> Result<Option<Database>, StoreError> {
    let Ok(file) = std::fs::File::open(path) else {
        return Ok(None);
    };
    if file.metadata().map(|m| m.len()).unwrap_or(0) == 0 {
        return Ok(None);
    }
    let backend = crate::store::overlay::Overlay::new(file)?;
    let opened = std::panic::catch_unwind(move || {
        Database::builder()
            .set_repair_callback(|_| {})
            .create_with_backend(backend)
    });
    match opened {
        Ok(Ok(db)) => Ok(Some(db)),
        _ => Ok(None),
    }
}

const CHECK: &[u8] = b"syncd store key check v1";

/// Marks a fresh (or converted) store as sealed by `vault`'s key; nothing
/// for a plain vault.
pub fn stamp(
    meta: &mut Table<'_, &'static str, &'static [u8]>,
    vault: &Vault,
) -> Result<(), StoreError> {
    let Vault::Sealed(s) = vault else {
        return Ok(());
    };
    let mut v = s.id().0.to_vec();
    v.extend_from_slice(&s.seal("meta", META_ENCRYPTION.as_bytes(), CHECK)?);
    meta.insert(META_ENCRYPTION, v.as_slice())?;
    Ok(())
}

/// Keeps `previous` (sealed with `vault`'s key) until the attachment files
/// are re-sealed.
pub fn keep_previous(
    meta: &mut Table<'_, &'static str, &'static [u8]>,
    vault: &Vault,
    previous: &Key,
) -> Result<(), StoreError> {
    if let Vault::Sealed(s) = vault {
        let v = s.seal("meta", META_PREVIOUS_KEY.as_bytes(), previous.secret())?;
        meta.insert(META_PREVIOUS_KEY, v.as_slice())?;
    }
    Ok(())
}

/// A conversion's state: the key the attachment files may still be sealed
/// with, and whether they may be plain.
#[derive(Debug, Default)]
pub struct Transition {
    pub previous: Option<Key>,
    pub blobs_plain: bool,
    /// The plain files are from a `syncd store decrypt` (else an
    /// encrypt): which command to run again.
    pub decrypting: bool,
}

impl Transition {
    pub fn is_done(&self) -> bool {
        self.previous.is_none() && !self.blobs_plain
    }
}

/// Reads the marks a conversion left (none on a plain store).
pub fn transition(db: &Database, vault: &Vault) -> Result<Transition, StoreError> {
    let Vault::Sealed(s) = vault else {
        return Ok(Transition::default());
    };
    let txn = db.begin_read()?;
    let meta = txn.open_table(META)?;
    let previous = match meta.get(META_PREVIOUS_KEY)? {
        Some(v) => {
            let raw =
                zeroize::Zeroizing::new(s.open("meta", META_PREVIOUS_KEY.as_bytes(), v.value())?);
            let bytes: &[u8; KEY_BYTES] = raw.as_slice().try_into().map_err(|_| tampered())?;
            Some(Key::from_secret(bytes, "previous key (rekey in progress)"))
        }
        None => None,
    };
    let mark = meta.get(META_BLOBS_PLAIN)?.map(|v| v.value().to_vec());
    let blobs_plain = mark.is_some();
    let decrypting = mark.as_deref() == Some(DECRYPTING);
    Ok(Transition {
        previous,
        blobs_plain,
        decrypting,
    })
}
