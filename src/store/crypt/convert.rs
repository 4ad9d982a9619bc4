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
    /// No store in the data dir (a new one is created sealed or plain as
    /// the config says: nothing to convert).
    NoStore { path: PathBuf },
    /// `rekey` to the key the store is sealed with already (with no rekey
    /// to finish).
    SameKey { path: PathBuf },
    /// The store was written by an older syncd: a conversion copies
    /// values as they are, so the store is upgraded first.
    OldSchema { path: PathBuf, found: u64 },
}

impl std::fmt::Display for ConvertError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConvertError::Store(e) => e.fmt(f),
            ConvertError::Files(e) => write!(f, "attachment files: {e}"),
            ConvertError::NoStore { path } => write!(
                f,
                "no store at {}: nothing to convert (a new store is created as [store] encryption says)",
                path.display()
            ),
            ConvertError::SameKey { path } => write!(
                f,
                "{} is encrypted with that key already: give `--new-key-file` a new key (`syncd key generate PATH`)",
                path.display()
            ),
            ConvertError::OldSchema { path, found } => write!(
                f,
                "{} has schema {found}, written by an older syncd: start this syncd once with encryption off (it upgrades the store), stop it, then convert",
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

/// The new file a conversion writes beside the store before renaming it
/// in.
pub fn converting_path(store: &Path) -> PathBuf {
    store.with_extension("redb.converting")
}

/// Removes the half-written new store file of a conversion cut short: it
/// may hold every document in the clear (during a decrypt). The daemon's
/// open calls this too.
pub fn remove_converting(data_dir: &Path) -> std::io::Result<()> {
    let tmp = converting_path(&store_path(data_dir));
    match std::fs::remove_file(&tmp) {
        Ok(()) => std::fs::File::open(data_dir)?.sync_all(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// [`remove_converting`], and the attachment writes in `blobs/tmp` of an
/// attach cut short (the daemon's `BlobDir::open` removes those).
fn remove_leftovers(data_dir: &Path) -> std::io::Result<()> {
    remove_converting(data_dir)?;
    if let Ok(entries) = std::fs::read_dir(data_dir.join("blobs").join("tmp")) {
        for e in entries.flatten() {
            std::fs::remove_file(e.path())?;
        }
    }
    Ok(())
}

/// What the store is, read without changing a byte of it; a missing
/// store is [`ConvertError::NoStore`].
fn peek(data_dir: &Path) -> Result<Found, ConvertError> {
    let path = store_path(data_dir);
    remove_leftovers(data_dir).map_err(StoreError::Io)?;
    match state::peek(&path)? {
        Some(found) => Ok(found),
        None if path.exists() => Ok(Found::Fresh),
        None => Err(ConvertError::NoStore { path }),
    }
}

fn open(path: &Path) -> Result<Database, StoreError> {
    let check = crate::store::mark::take(path).is_err();
    crate::store::open_db(path, 1 << 24, check)
}

/// The store's schema must be this syncd's: a conversion copies values
/// as they are, and an upgrade reads them as plain.
fn current_schema(db: &Database, path: &Path) -> Result<(), ConvertError> {
    let txn = db.begin_read().map_err(StoreError::from)?;
    let found = match txn.open_table(META) {
        Ok(meta) => {
            let v = meta.get(META_SCHEMA).map_err(StoreError::from)?;
            u64_be(v.map(|v| v.value().to_vec()).as_deref())
        }
        Err(redb::TableError::TableDoesNotExist(_)) => None,
        Err(e) => return Err(StoreError::from(e).into()),
    };
    match found {
        Some(v) if v != crate::store::SCHEMA_VERSION => Err(ConvertError::OldSchema {
            path: path.to_owned(),
            found: v,
        }),
        _ => Ok(()),
    }
}

/// `syncd store encrypt`: seals a plain store and its attachment files
/// with `key`. Resumes an encryption cut short, and finishes any other
/// conversion of a store sealed with `key` that was.
pub fn encrypt(data_dir: &Path, key: &Key) -> Result<Converted, ConvertError> {
    let path = store_path(data_dir);
    let to = Vault::sealed(key.clone())?;
    if let Found::Sealed(id) = peek(data_dir)? {
        if id != key.id() {
            // Refused by name (both key ids), the file untouched.
            state::verify_untouched(&path, &to)?;
        }
    }
    let db = open(&path)?;
    let (db, rewritten) = match state::found(&db)? {
        Found::Sealed(_) => (db, false),
        Found::Plain | Found::Fresh => {
            current_schema(&db, &path)?;
            rewrite(db, &path, &Vault::Plain, &to, Marks::BlobsPlain)?;
            (open(&path)?, true)
        }
    };
    let files = finish(data_dir, &db, &to, &path)?;
    closed(db, &path)?;
    Ok(Converted {
        store_rewritten: rewritten,
        files,
        key: Some(key.id()),
    })
}

/// Closes the converted store and leaves its clean-shutdown mark: the
/// file is exactly what the conversion committed, so the daemon's next
/// open need not check every page.
fn closed(db: Database, path: &Path) -> Result<(), StoreError> {
    drop(db);
    // Best effort: without the mark the next open checks every page.
    let _ = crate::store::mark::leave(path);
    Ok(())
}

/// Seals every attachment file with `vault`'s key (reading them as the
/// store's marks allow) and clears the marks: the end of every
/// conversion to a sealed store. Returns how many files it converted.
fn finish(
    data_dir: &Path,
    db: &Database,
    vault: &Vault,
    path: &Path,
) -> Result<usize, ConvertError> {
    state::verify(db, vault, path)?;
    let left = state::transition(db, vault)?;
    let Some(key) = vault.key() else {
        return Ok(0);
    };
    let seal = BlobSeal::new(key, left.previous.as_ref(), left.blobs_plain);
    let files = reseal(data_dir, seal, Some(&FileSealer::new(key)))?;
    clear_marks(db)?;
    Ok(files)
}

/// `syncd store decrypt`: makes a store sealed with `key`, and its
/// attachment files, plain. Resumes a decryption cut short.
pub fn decrypt(data_dir: &Path, key: &Key) -> Result<Converted, ConvertError> {
    let path = store_path(data_dir);
    let from = Vault::sealed(key.clone())?;
    match peek(data_dir)? {
        // Done already (a rerun after the last step).
        Found::Plain | Found::Fresh => {
            return Ok(Converted {
                store_rewritten: false,
                files: 0,
                key: None,
            })
        }
        Found::Sealed(_) => state::verify_untouched(&path, &from)?,
    }
    let db = open(&path)?;
    state::verify(&db, &from, &path)?;
    let left = state::transition(&db, &from)?;
    if !left.blobs_plain {
        set_mark(&db, META_BLOBS_PLAIN, state::DECRYPTING)?;
    }
    let previous = left.previous;
    let seal = BlobSeal::new(key, previous.as_ref(), true);
    let files = reseal(data_dir, seal, None)?;
    rewrite(db, &path, &from, &Vault::Plain, Marks::None)?;
    // Best effort: without the mark the next open checks every page.
    let _ = crate::store::mark::leave(&path);
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
    let from = Vault::sealed(old.clone())?;
    let to = Vault::sealed(new.clone())?;
    match peek(data_dir)? {
        Found::Sealed(id) if id == new.id() || id == old.id() => {}
        // Refused by name, the file untouched: another key, or plain.
        _ => state::verify_untouched(&path, &from)?,
    }
    if old.id() == new.id() {
        // Only a rekey to finish is taken: otherwise nothing would change.
        let left = state::transition_untouched(&path, &to)?;
        if left.is_none_or(|t| t.previous.is_none()) {
            return Err(ConvertError::SameKey { path });
        }
    }
    let db = open(&path)?;
    let resume = match state::found(&db)? {
        // Cut short after the new store was renamed in: the config names
        // the old key still, or the new one already.
        Found::Sealed(id) if id == new.id() => true,
        _ => false,
    };
    let db = if resume {
        db
    } else {
        // Another conversion cut short is finished under the old key
        // first, so that every file is in one form before the copy.
        finish(data_dir, &db, &from, &path)?;
        rewrite(db, &path, &from, &to, Marks::Previous(old))?;
        open(&path)?
    };
    let files = finish(data_dir, &db, &to, &path)?;
    closed(db, &path)?;
    Ok(Converted {
        store_rewritten: !resume,
        files,
        key: Some(new.id()),
    })
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
    let tmp = converting_path(path);
    let _ = std::fs::remove_file(&tmp);
    let written = copy_into(db, &tmp, from, to, marks);
    if written.is_err() {
        // Never left behind: it may hold the store in the clear.
        let _ = std::fs::remove_file(&tmp);
    }
    written?;
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    super::fault::step();
    Ok(())
}

/// Writes the copy of `db` (read with `from`, sealed with `to`) into
/// the new file `tmp`, synced.
fn copy_into(
    db: Database,
    tmp: &Path,
    from: &Vault,
    to: &Vault,
    marks: Marks<'_>,
) -> Result<(), StoreError> {
    crate::store::create_private_file(tmp)?;
    let new = Database::builder().create(tmp)?;
    let mut txn = new.begin_write()?;
    txn.set_durability(Durability::Immediate)?;
    {
        let read = db.begin_read()?;
        known_tables(&read)?;
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
                meta.insert(META_BLOBS_PLAIN, state::ENCRYPTING)?;
            }
            Marks::Previous(k) => state::keep_previous(&mut meta, to, k)?,
        }
    }
    txn.commit()?;
    drop(new);
    drop(db);
    std::fs::File::open(tmp)?.sync_all()?;
    Ok(())
}

/// Every table [`rewrite`] copies (or, sealing, leaves out on purpose).
const COPIED: [&str; 17] = [
    "records",
    "queue",
    "dead_letters",
    "conflicts",
    "deferred",
    "op_index",
    "server_ids",
    "record_queue",
    "dead_by_op",
    "settled",
    "settled_order",
    "scope_state",
    "scope_choices",
    "dead_letter_sub",
    "indexes",
    "index_entries",
    "meta",
];

/// A table the copy does not know would be lost by it: refused instead
/// (a table added to the schema must be added to [`rewrite`]).
fn known_tables(read: &redb::ReadTransaction) -> Result<(), StoreError> {
    for t in read.list_tables()? {
        if !COPIED.contains(&t.name()) {
            return Err(StoreError::Corrupt {
                what: "store tables",
                detail: format!(
                    "table `{}` is unknown to the conversion: nothing was converted",
                    t.name()
                ),
            });
        }
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
        let Some(src) = crate::store::check::open(self.read, def)? else {
            return Ok(());
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
        let Some(src) = crate::store::check::open(self.read, def)? else {
            return Ok(());
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
    super::fault::step();
    Ok(())
}

/// The conversion is complete: the marks go (nothing is written when
/// there are none).
fn clear_marks(db: &Database) -> Result<(), StoreError> {
    let txn = db.begin_write()?;
    let mut removed = false;
    {
        let mut meta = txn.open_table(META)?;
        removed |= meta.remove(META_PREVIOUS_KEY)?.is_some();
        removed |= meta.remove(META_BLOBS_PLAIN)?.is_some();
    }
    if !removed {
        txn.abort()?;
        return Ok(());
    }
    txn.commit()?;
    super::fault::step();
    Ok(())
}
