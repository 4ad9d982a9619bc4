//! Converting a store between plain and sealed, or from one key to
//! another (`syncd store encrypt`, `syncd store decrypt`, `syncd rekey`),
//! with the daemon stopped.
//!
//! Why a copy and not an update in place: redb keeps freed pages until
//! they are reused, so values rewritten in place would leave their old
//! bytes (plain text, or text sealed with a key that may be compromised)
//! in the file. Every conversion writes a new file beside the store,
//! syncs it, and renames it over the old one: a kill at any moment leaves
//! either the old store or the new one, whole.
//!
//! Attachment files are converted one by one after (before, for decrypt)
//! the store, each by its own rename; while they are mixed, the store
//! carries a mark (see [`super::state`]) that lets the daemon read both
//! kinds, and running the same command again finishes the work.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use redb::{
    Database, Durability, Key as RedbKey, ReadableDatabase, ReadableTable, TableDefinition,
    TableHandle,
};

use super::blob_seal::{BlobSeal, FileSealer};
use super::key::{Key, KeyId};
use super::state::{self, Found, META_BLOBS_PLAIN, META_ENCRYPTION, META_PREVIOUS_KEY};
use super::vault::Vault;
use crate::domain::seal_error::SealError;
use crate::domain::StoreError;
use crate::store::blobs::{BlobDir, BlobError};
use crate::store::tables::*;

/// Why a conversion stopped (what it finished stays finished; running it
/// again goes on from there).
#[derive(Debug)]
pub enum ConvertError {
    /// The store file: the wrong key, damage, I/O.
    Store(StoreError),
    /// An attachment file.
    Files(BlobError),
    /// Another conversion was cut short: it must finish first.
    Unfinished { path: PathBuf },
}

impl std::fmt::Display for ConvertError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConvertError::Store(e) => e.fmt(f),
            ConvertError::Files(e) => write!(f, "attachment files: {e}"),
            ConvertError::Unfinished { path } => write!(
                f,
                "{}: an earlier `syncd store encrypt` or `syncd rekey` did not finish; run it again first",
                path.display()
            ),
        }
    }
}

impl std::error::Error for ConvertError {}

impl From<StoreError> for ConvertError {
    fn from(e: StoreError) -> Self {
        ConvertError::Store(e)
    }
}

impl From<BlobError> for ConvertError {
    fn from(e: BlobError) -> Self {
        ConvertError::Files(e)
    }
}

/// What a conversion did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Converted {
    /// The store file was rewritten (false: it was already in the target
    /// form, from an earlier run that was cut short).
    pub store_rewritten: bool,
    /// Attachment files converted.
    pub files: usize,
    /// The key the store is sealed with now (`None`: plain).
    pub key: Option<KeyId>,
}

fn store_path(data_dir: &Path) -> PathBuf {
    data_dir.join("syncd.redb")
}

fn open(path: &Path) -> Result<Database, StoreError> {
    if !path.exists() {
        return Err(StoreError::Io(std::io::Error::new(
            std::io::ErrorKind::NotFound,
            format!("no store at {}", path.display()),
        )));
    }
    let check = crate::store::mark::take(path).is_err();
    crate::store::open_db(path, 1 << 24, check)
}

/// `syncd store encrypt`: seals a plain store and its attachment files
/// with `key`. Resumes an encryption cut short.
pub fn encrypt(data_dir: &Path, key: &Key) -> Result<Converted, ConvertError> {
    let path = store_path(data_dir);
    let db = open(&path)?;
    let to = Vault::sealed(key.clone())?;
    let (db, rewritten) = match state::found(&db)? {
        Found::Sealed(id) if id == key.id() => (db, false),
        Found::Sealed(id) => return Err(encrypted(&path, id).into()),
        Found::Plain | Found::Fresh => {
            rewrite(db, &path, &Vault::Plain, &to, Marks::BlobsPlain)?;
            (open(&path)?, true)
        }
    };
    state::verify(&db, &to, &path)?;
    let seal = BlobSeal::new(key, None, true);
    let files = reseal(data_dir, seal, Some(&FileSealer::new(key)))?;
    clear_marks(&db)?;
    Ok(Converted {
        store_rewritten: rewritten,
        files,
        key: Some(key.id()),
    })
}

/// `syncd store decrypt`: makes a store sealed with `key`, and its
/// attachment files, plain. Resumes a decryption cut short.
pub fn decrypt(data_dir: &Path, key: &Key) -> Result<Converted, ConvertError> {
    let path = store_path(data_dir);
    let db = open(&path)?;
    let from = Vault::sealed(key.clone())?;
    match state::found(&db)? {
        // Done already (a rerun after the last step).
        Found::Plain | Found::Fresh => {
            return Ok(Converted {
                store_rewritten: false,
                files: 0,
                key: None,
            })
        }
        Found::Sealed(_) => state::verify(&db, &from, &path)?,
    };
    let previous = state::transition(&db, &from)?.previous;
    set_mark(&db, META_BLOBS_PLAIN, b"1")?;
    let seal = BlobSeal::new(key, previous.as_ref(), true);
    let files = reseal(data_dir, seal, None)?;
    rewrite(db, &path, &from, &Vault::Plain, Marks::None)?;
    Ok(Converted {
        store_rewritten: true,
        files,
        key: None,
    })
}

/// `syncd rekey`: re-seals a store sealed with `old` (or already with
/// `new`, from a rekey cut short) and its attachment files with `new`.
pub fn rekey(data_dir: &Path, old: &Key, new: &Key) -> Result<Converted, ConvertError> {
    let path = store_path(data_dir);
    let db = open(&path)?;
    let to = Vault::sealed(new.clone())?;
    let resume = match state::found(&db)? {
        // Cut short after the new store was renamed in: the config names
        // the old key still, or the new one already.
        Found::Sealed(id) if id == new.id() => {
            id != old.id() || state::transition(&db, &to)?.previous.is_some()
        }
        _ => false,
    };
    let (db, rewritten) = match resume {
        true => (db, false),
        false => {
            let from = Vault::sealed(old.clone())?;
            state::verify(&db, &from, &path)?;
            let left = state::transition(&db, &from)?;
            if left.blobs_plain || left.previous.is_some() {
                return Err(ConvertError::Unfinished { path });
            }
            rewrite(db, &path, &from, &to, Marks::Previous(old))?;
            (open(&path)?, true)
        }
    };
    state::verify(&db, &to, &path)?;
    let previous = state::transition(&db, &to)?.previous;
    let seal = BlobSeal::new(new, previous.as_ref(), false);
    let files = reseal(data_dir, seal, Some(&FileSealer::new(new)))?;
    clear_marks(&db)?;
    Ok(Converted {
        store_rewritten: rewritten,
        files,
        key: Some(new.id()),
    })
}

fn encrypted(path: &Path, id: KeyId) -> StoreError {
    SealError::Encrypted {
        path: path.to_owned(),
        sealed_with: id.to_string(),
    }
    .into()
}

/// Converts the attachment files (none: no `blobs/` yet).
fn reseal(data_dir: &Path, seal: BlobSeal, to: Option<&FileSealer>) -> Result<usize, BlobError> {
    let dir = BlobDir::at(data_dir);
    if !dir.root().exists() {
        return Ok(0);
    }
    dir.sealed(Arc::new(seal)).reseal_all(to)
}

/// Which conversion marks the new file carries.
enum Marks<'k> {
    None,
    BlobsPlain,
    Previous(&'k Key),
}

/// Copies `db` (read with `from`) into a new file sealed with `to`, and
/// renames it over `path`.
fn rewrite(
    db: Database,
    path: &Path,
    from: &Vault,
    to: &Vault,
    marks: Marks<'_>,
) -> Result<(), StoreError> {
    let tmp = path.with_extension("redb.converting");
    let _ = std::fs::remove_file(&tmp);
    crate::store::create_private_file(&tmp)?;
    let new = Database::builder().create(&tmp)?;
    let mut txn = new.begin_write()?;
    txn.set_durability(Durability::Immediate)?;
    {
        let read = db.begin_read()?;
        let c = Copy {
            read: &read,
            write: &txn,
            from,
            to,
        };
        c.sealed(RECORDS)?;
        c.sealed(QUEUE)?;
        c.sealed(DEAD)?;
        c.sealed(CONFLICTS)?;
        c.sealed(DEFERRED)?;
        c.plain(OP_INDEX)?;
        c.plain(SERVER_IDS)?;
        c.plain(RECORD_QUEUE)?;
        c.plain(DEAD_BY_OP)?;
        c.plain(SETTLED)?;
        c.plain(SETTLED_ORDER)?;
        c.plain(SCOPE_STATE)?;
        c.plain(SCOPE_CHOICES)?;
        c.plain(DEAD_SUB)?;
        // Index keys hold indexed values in the clear: a sealed store has
        // none (`[store] encryption` refuses declared indexes).
        if !to.is_sealed() {
            c.plain(INDEXES)?;
            c.plain(INDEX_ENTRIES)?;
        }
        c.meta()?;
        let mut meta = txn.open_table(META)?;
        state::stamp(&mut meta, to)?;
        match marks {
            Marks::None => {}
            Marks::BlobsPlain => {
                meta.insert(META_BLOBS_PLAIN, b"1".as_slice())?;
            }
            Marks::Previous(k) => state::keep_previous(&mut meta, to, k)?,
        }
    }
    txn.commit()?;
    drop(new);
    drop(db);
    std::fs::File::open(&tmp)?.sync_all()?;
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// One copy from a read transaction into a write transaction.
struct Copy<'a> {
    read: &'a redb::ReadTransaction,
    write: &'a redb::WriteTransaction,
    from: &'a Vault,
    to: &'a Vault,
}

impl Copy<'_> {
    /// A table whose values hold user data: each value re-encoded.
    fn sealed<K: RedbKey + 'static>(
        &self,
        def: TableDefinition<K, &'static [u8]>,
    ) -> Result<(), StoreError> {
        let src = match self.read.open_table(def) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(()),
            Err(e) => return Err(e.into()),
        };
        let mut dst = self.write.open_table(def)?;
        for item in src.iter()? {
            let (k, v) = item?;
            let key = k.value();
            let bytes =
                self.from
                    .recode(self.to, def.name(), K::as_bytes(&key).as_ref(), v.value())?;
            dst.insert(key, bytes.as_slice())?;
        }
        Ok(())
    }

    /// A table without user data in its values: copied as it is.
    fn plain<K: RedbKey + 'static, V: redb::Value + 'static>(
        &self,
        def: TableDefinition<K, V>,
    ) -> Result<(), StoreError> {
        let src = match self.read.open_table(def) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(()),
            Err(e) => return Err(e.into()),
        };
        let mut dst = self.write.open_table(def)?;
        for item in src.iter()? {
            let (k, v) = item?;
            dst.insert(k.value(), v.value())?;
        }
        Ok(())
    }

    /// `meta` without the encryption marks (the new file gets its own).
    fn meta(&self) -> Result<(), StoreError> {
        let src = self.read.open_table(META)?;
        let mut dst = self.write.open_table(META)?;
        for item in src.iter()? {
            let (k, v) = item?;
            let key = k.value();
            if [META_ENCRYPTION, META_PREVIOUS_KEY, META_BLOBS_PLAIN].contains(&key) {
                continue;
            }
            dst.insert(key, v.value())?;
        }
        Ok(())
    }
}

fn set_mark(db: &Database, key: &str, value: &[u8]) -> Result<(), StoreError> {
    let txn = db.begin_write()?;
    txn.open_table(META)?.insert(key, value)?;
    txn.commit()?;
    Ok(())
}

/// The conversion is complete: the marks go.
fn clear_marks(db: &Database) -> Result<(), StoreError> {
    let txn = db.begin_write()?;
    {
        let mut meta = txn.open_table(META)?;
        meta.remove(META_PREVIOUS_KEY)?;
        meta.remove(META_BLOBS_PLAIN)?;
    }
    txn.commit()?;
    Ok(())
}
