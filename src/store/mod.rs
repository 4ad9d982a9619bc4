//! The embedded store: records, the mutation queue and metadata in one redb
//! file.
//!
//! Invariants (the rest of the daemon relies on these):
//! - Every change to `records` made for an app write is committed in the same
//!   write transaction as the queue entry that carries it to the server. There
//!   is never a record change without its op, nor an op without its record.
//! - Only the writer thread ([`writer`]) opens write transactions. Everything
//!   else reads through redb read transactions, which never wait for it.
//! - Queue keys are a monotonic `u64` sequence. Appends take `tail + 1`;
//!   re-sends after a conflict go to the head with `head - 1`. Numbering
//!   starts at 2^52 so the head can always move down.
//! - `pending` on a record counts its ops that are in the queue or parked in
//!   a manual conflict; a record shows `pending: true` while it is non-zero.
//! - An op's `op_id` is minted once when it is queued and never changes.

pub mod attachment_reads;
pub mod blobs;
pub mod check;
pub mod crypt;
#[cfg(test)]
mod direction_tests;
pub mod encoding;
pub mod index;
mod index_check;
pub mod index_keeper;
#[cfg(test)]
mod index_tests;
pub mod mark;
mod migrate;
#[cfg(test)]
mod migrate_tests;
pub mod overlay;
pub mod query;
#[cfg(test)]
mod reopen_tests;
mod scope_check;
#[cfg(test)]
mod scope_tests;
pub mod scopes;
pub mod settled;
pub mod tables;
pub mod writer;
#[cfg(test)]
mod writer_tests;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata};

pub use crate::domain::{
    parse_doc_text, DeadLetter, OpState, ParkedConflict, QueuedOp, ServerRecordStored, StoreError,
    StoredRecord,
};
use crate::domain::{ConflictView, Doc, RecordView};
use tables::*;

/// Most dead letters or conflicts one listing returns (memory stays
/// bounded however many there are).
pub const MAX_LISTED: usize = 10_000;

/// Rough encoded size of a record view beyond its document and id, for
/// keeping list replies within the frame limit.
pub const RECORD_OVERHEAD: usize = 256;

/// Schema version written at creation; bumped on incompatible changes.
pub const SCHEMA_VERSION: u64 = 4;

macro_rules! engine_err_from {
    ($($t:ty),*) => {$(
        impl From<$t> for StoreError {
            fn from(e: $t) -> Self { engine_error(e.into()) }
        }
    )*};
}
engine_err_from!(
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError,
    redb::SetDurabilityError
);

/// Keeps plain I/O errors (a full disk) visible as [`StoreError::Io`].
fn engine_error(e: redb::Error) -> StoreError {
    match e {
        redb::Error::Io(io) => StoreError::Io(io),
        redb::Error::PreviousIo => StoreError::NeedsReopen,
        other => StoreError::Engine(Box::new(other)),
    }
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// Creates `path` empty with mode 0600 if it does not exist (redb would
/// create it with the umask's leftovers of 0666).
fn create_private_file(path: &Path) -> std::io::Result<()> {
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    match opts.open(path) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(e),
    }
}

/// Read access to the store, cheap to clone. Writes go through
/// [`writer::WriterHandle`].
#[derive(Clone)]
pub struct Store {
    /// `None` only while [`Store::reopen`] swaps the database.
    db: Arc<RwLock<Option<Arc<Database>>>>,
    path: PathBuf,
    client_id: Arc<str>,
    pub(crate) cache_bytes: usize,
    /// The backend keeps client-chosen ids (its `client_ids` feature, as
    /// the sync worker last read it): the writer then treats a server id as
    /// the local id and re-creates over a tombstone as an update of it.
    backend_client_ids: Arc<AtomicBool>,
    /// Which way each collection syncs (`[collections.NAME] sync`, as the
    /// daemon last loaded it): the writer reads it in every transaction.
    directions: Arc<RwLock<Arc<crate::domain::direction::Directions>>>,
    /// Damage found during work ([`Store::set_damaged`]).
    damage: Arc<Mutex<Option<String>>>,
    open_check: Arc<OpenCheck>,
    /// Held by the writer from a commit until its events are sent (see
    /// [`Store::publish_gate`]).
    publish: Arc<Mutex<()>>,
    /// Seals and opens user data (plain with encryption off).
    vault: crypt::Vault,
    /// What an unfinished conversion left, as the open found it.
    transition: Arc<crypt::state::Transition>,
}

/// What [`Store::open`] checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OpenCheck {
    /// The clean-shutdown mark matched: no page was read.
    Trusted,
    /// Every page was checked, for `reason`, in `took`.
    Full {
        reason: mark::FullCheckReason,
        took: std::time::Duration,
    },
}

/// Whether `e` means the file is damaged (as opposed to a full disk or a
/// busy store): a checksum error from redb, or a value that does not
/// decode.
pub(crate) fn is_damage(e: &StoreError) -> bool {
    match e {
        StoreError::Corrupt { .. } | StoreError::Damaged { .. } => true,
        StoreError::Seal(crate::domain::seal_error::SealError::Tampered { .. }) => true,
        StoreError::Engine(inner) => matches!(
            inner.downcast_ref::<redb::Error>(),
            Some(redb::Error::Corrupted(_))
        ),
        _ => false,
    }
}

/// Opens the database file; with `check`, redb's integrity check reads and
/// verifies every page first. Damage is [`StoreError::Damaged`].
fn open_db(path: &Path, cache_bytes: usize, check: bool) -> Result<Database> {
    let damaged = |detail: String| StoreError::Damaged {
        path: path.to_owned(),
        detail,
    };
    let opened = std::panic::catch_unwind(|| {
        Database::builder()
            .set_cache_size(cache_bytes)
            .set_check_integrity_on_open(check)
            .set_repair_callback(|_| {})
            .create(path)
    });
    match opened {
        Ok(Ok(db)) => Ok(db),
        Ok(Err(e)) => Err(damaged(describe_open_error(e)?)),
        Err(_) => Err(damaged("the storage engine failed reading it".into())),
    }
}

/// The damage an open error describes; `Err` for errors that are not
/// damage (I/O, a lock).
pub(crate) fn describe_open_error(e: redb::DatabaseError) -> Result<String> {
    match e {
        redb::DatabaseError::Storage(redb::StorageError::Corrupted(d)) => Ok(d),
        redb::DatabaseError::Storage(redb::StorageError::Io(io))
            if io.kind() == std::io::ErrorKind::UnexpectedEof =>
        {
            Ok(format!("shorter than its contents say ({io})"))
        }
        other => Err(other.into()),
    }
}

/// The database inside `db` once no transaction holds it any more;
/// `Err` gives `db` back when one still did after `wait`.
fn wait_unshared(
    db: Arc<Database>,
    wait: std::time::Duration,
) -> std::result::Result<Database, Arc<Database>> {
    let deadline = std::time::Instant::now() + wait;
    let mut db = db;
    loop {
        match Arc::try_unwrap(db) {
            Ok(d) => return Ok(d),
            Err(shared) if std::time::Instant::now() > deadline => return Err(shared),
            Err(shared) => db = shared,
        }
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
}

impl Store {
    /// Opens (creating if needed) `data_dir/syncd.redb` with a bounded cache.
    ///
    /// A new file is created 0600 whatever the umask. When the store was
    /// closed cleanly and nothing touched it since (its clean-shutdown
    /// mark matches, see [`mark`]), the open trusts it and does only the
    /// cheap work. Otherwise every page is checked against its checksum
    /// first: a truncated or overwritten file is refused
    /// ([`StoreError::Damaged`]), never opened and never "repaired" by
    /// dropping what cannot be read.
    pub fn open(data_dir: &Path, cache_bytes: usize) -> Result<Store> {
        Store::open_with(data_dir, cache_bytes, crypt::Vault::Plain)
    }

    /// [`Store::open`] with encryption at rest: `vault` seals the values
    /// ([`crypt`]). The key is checked against the store before anything
    /// is read or written: a sealed store is never opened with another
    /// key or without one, and a plain store with data is not opened
    /// sealed (`syncd store encrypt` converts it).
    pub fn open_with(data_dir: &Path, cache_bytes: usize, vault: crypt::Vault) -> Result<Store> {
        std::fs::create_dir_all(data_dir)?;
        let path = data_dir.join("syncd.redb");
        create_private_file(&path)?;
        crypt::convert::remove_converting(data_dir)?;
        let check = mark::take(&path).err();
        // After a clean stop the key is checked on a read-only view
        // first, so that a wrong key (or encryption off on a sealed store)
        // changes nothing, not even the clean-shutdown mark. After a crash
        // the storage engine's recovery rewrites its own bookkeeping at
        // any open, so the key is checked right after it, before any
        // value is read: the view would repeat the whole recovery.
        if check.is_none() {
            if let Err(e) = crypt::state::verify_untouched(&path, &vault) {
                let _ = mark::leave(&path);
                return Err(e);
            }
        }
        let started = std::time::Instant::now();
        let db = open_db(&path, cache_bytes, check.is_some())?;
        let open_check = match check {
            None => {
                tracing::info!(path = %path.display(), "store closed cleanly and untouched since: page check skipped");
                OpenCheck::Trusted
            }
            Some(reason) => {
                let took = started.elapsed();
                let bytes = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
                tracing::info!(path = %path.display(), reason = %reason, ms = took.as_millis() as u64, mib = bytes / (1024 * 1024), "store: checked every page at open");
                OpenCheck::Full { reason, took }
            }
        };
        let fresh = crypt::state::verify(&db, &vault, &path)?;
        let txn = db.begin_write()?;
        let client_id;
        {
            for_each_table(&txn)?;
            let mut meta = txn.open_table(META)?;
            if fresh {
                crypt::state::stamp(&mut meta, &vault)?;
            }
            let existing = meta.get(META_CLIENT_ID)?.map(|v| v.value().to_vec());
            client_id = match existing {
                Some(v) => String::from_utf8(v).map_err(|e| StoreError::Corrupt {
                    what: "client id",
                    detail: e.to_string(),
                })?,
                None => {
                    let id = ulid::Ulid::generate().to_string();
                    meta.insert(META_CLIENT_ID, id.as_bytes())?;
                    id
                }
            };
            let schema = meta.get(META_SCHEMA)?.map(|v| v.value().to_vec());
            match schema {
                None => {
                    meta.insert(META_SCHEMA, SCHEMA_VERSION.to_be_bytes().as_slice())?;
                }
                Some(v) => {
                    let found = u64::from_be_bytes(v.try_into().unwrap_or([0xff; 8]));
                    if found != SCHEMA_VERSION && migrate::upgrade(&txn, found)? {
                        meta.insert(META_SCHEMA, SCHEMA_VERSION.to_be_bytes().as_slice())?;
                    } else if found != SCHEMA_VERSION {
                        return Err(StoreError::SchemaMismatch {
                            path,
                            found,
                            expected: SCHEMA_VERSION,
                        });
                    }
                }
            }
        }
        txn.commit()?;
        let transition = Arc::new(crypt::state::transition(&db, &vault)?);
        if !transition.is_done() {
            tracing::warn!(path = %path.display(), "an encryption conversion of the store did not finish: attachment files are read in either form until the command that was cut short runs again (`syncd status` names it)");
        }
        Ok(Store {
            db: Arc::new(RwLock::new(Some(Arc::new(db)))),
            path,
            client_id: client_id.into(),
            cache_bytes,
            backend_client_ids: Arc::new(AtomicBool::new(false)),
            directions: Arc::default(),
            damage: Arc::new(Mutex::new(None)),
            open_check: Arc::new(open_check),
            publish: Arc::default(),
            vault,
            transition,
        })
    }

    /// `dir` reading and writing its files sealed when the store is: with
    /// the store's key, and, while a conversion is unfinished, the
    /// previous key or plain files too (see [`crypt::state`]).
    pub fn seal_blobs(&self, dir: blobs::BlobDir) -> blobs::BlobDir {
        crypt::seal_blobs(dir, &self.vault, &self.transition)
    }

    /// Encryption at rest as `status` says it: `off`, or `on (key ID)`.
    pub fn encryption_text(&self) -> String {
        match self.vault.key_id() {
            None => "off".into(),
            Some(id) if self.transition.is_done() => format!("on (key {id})"),
            Some(id) if self.transition.previous.is_some() => {
                format!("on (key {id}); `syncd rekey` was cut short: stop syncd and run it again")
            }
            Some(id) => format!(
                "on (key {id}); `syncd store {}` was cut short: stop syncd and run it again",
                if self.transition.decrypting {
                    "decrypt"
                } else {
                    "encrypt"
                }
            ),
        }
    }

    /// How values are sealed (plain with encryption off).
    pub fn vault(&self) -> &crypt::Vault {
        &self.vault
    }

    /// Checks the store's cross-table invariants on its committed state
    /// (see [`check`]); the pages' checksums are [`check::full`]'s.
    pub fn check_invariants(&self) -> Result<check::Report> {
        let db = self.db()?;
        check::invariants(&db, &self.vault)
    }

    /// What the open checked (for status).
    pub fn open_check(&self) -> &OpenCheck {
        &self.open_check
    }

    /// Damage the storage engine reported during work, if any (see
    /// [`Store::set_damaged`]).
    pub fn damage(&self) -> Option<String> {
        self.damage
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Records that the storage engine failed in a way only a damaged file
    /// explains (a checksum error, a value that does not decode, a panic
    /// inside the engine): the writer takes no more writes, and status,
    /// the log and the metrics say so. The first report is kept.
    /// A read that failed: damage (a checksum error, a value that does not
    /// decode) marks the store damaged, as a failed write does, so that
    /// writes stop and `syncd status` says so at once, not at the next
    /// write that happens to touch the page.
    pub fn read_failed(&self, e: &StoreError) {
        if is_damage(e) {
            self.set_damaged(e.to_string());
        }
    }

    /// A read that panicked inside the storage engine (redb panics on some
    /// damaged pages): the store is taken for damaged.
    pub fn read_panicked(&self, what: &str) {
        self.set_damaged(format!("the storage engine panicked in a read: {what}"));
    }

    pub fn set_damaged(&self, detail: String) {
        let mut d = self.damage.lock().unwrap_or_else(|p| p.into_inner());
        if d.is_none() {
            tracing::error!(path = %self.path.display(), detail = %detail, "the store is damaged: writes stopped; reads may fail; run `syncd check`, then restore the store from a backup");
            *d = Some(detail);
        }
    }

    /// Closes the database and leaves the clean-shutdown mark, so that the
    /// next open can skip the page check. Waits (up to `wait`) for open
    /// transactions to end; every later read fails with
    /// [`StoreError::Reopening`]. No mark is left when the store was found
    /// damaged during work or the close did not complete.
    pub fn close(&self, wait: std::time::Duration) -> Result<()> {
        // Out of the slot first (the lock only for the swap, as in
        // reopen): a reader that comes now fails at once instead of
        // waiting on the lock while open transactions end.
        let Some(db) = self.swap_db(None) else {
            return Ok(());
        };
        let db = wait_unshared(db, wait).map_err(|_| StoreError::InUse)?;
        db.close()?;
        if self.damage().is_some() {
            return Ok(());
        }
        mark::leave(&self.path)?;
        Ok(())
    }

    /// The database, for one transaction: hold the returned `Arc` for as
    /// long as the transaction lives, so that [`Store::reopen`] can tell
    /// when no transaction is open.
    pub(crate) fn db(&self) -> Result<Arc<Database>> {
        let slot = self.db.read().unwrap_or_else(|p| p.into_inner());
        slot.clone().ok_or(StoreError::Reopening)
    }

    /// A read transaction and the database it belongs to (drop the
    /// transaction first, as `let (_db, txn)` does).
    fn read(&self) -> Result<(Arc<Database>, redb::ReadTransaction)> {
        let db = self.db()?;
        let txn = db.begin_read()?;
        Ok((db, txn))
    }

    /// Free bytes on the file system that holds the store (`None`: unknown).
    pub(crate) fn free_bytes(&self) -> Option<u64> {
        let dir = self.path.parent()?;
        let c = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes()).ok()?;
        let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
        // SAFETY: `c` is a valid NUL-terminated path and `st` a valid out
        // pointer for the duration of the call.
        let rc = unsafe { libc::statvfs(c.as_ptr(), &mut st) };
        (rc == 0).then(|| st.f_bavail as u64 * st.f_frsize as u64)
    }

    /// Closes and re-opens the database file. redb refuses every write
    /// after a commit failed with an I/O error (a full disk) until the
    /// database is re-opened; the writer calls this once space is back.
    ///
    /// The slot's lock is held only to swap the database out and back in,
    /// never across a wait: from the swap on, a reader gets
    /// [`StoreError::Reopening`] at once instead of blocking while open
    /// transactions end (up to a few seconds) and the open is retried.
    pub(crate) fn reopen(&self) -> Result<()> {
        self.reopen_waiting(std::time::Duration::from_secs(5))
    }

    fn reopen_waiting(&self, wait: std::time::Duration) -> Result<()> {
        let Some(old) = self.swap_db(None) else {
            return Err(StoreError::Reopening);
        };
        let old = match wait_unshared(old, wait) {
            Ok(db) => db,
            Err(still_used) => {
                // Not closed: reads go on on it; the next write retries.
                self.swap_db(Some(still_used));
                return Err(StoreError::Reopening);
            }
        };
        // Closing the file first: redb holds a lock on it.
        drop(old);
        let db = self.open_retrying()?;
        self.swap_db(Some(Arc::new(db)));
        tracing::info!(path = %self.path.display(), "store re-opened after a failed commit");
        Ok(())
    }

    /// Puts `db` in the slot and returns what was there; the lock is held
    /// for the swap only.
    fn swap_db(&self, db: Option<Arc<Database>>) -> Option<Arc<Database>> {
        let mut slot = self.db.write().unwrap_or_else(|p| p.into_inner());
        std::mem::replace(&mut *slot, db)
    }

    /// Opens the file again, a few tries apart. A failed open leaves the
    /// slot empty (reads fail at once until the next write retries).
    fn open_retrying(&self) -> Result<Database> {
        let mut tries = 0;
        loop {
            match Database::builder()
                .set_cache_size(self.cache_bytes)
                .create(&self.path)
            {
                Ok(db) => return Ok(db),
                Err(e) if tries >= 2 => return Err(e.into()),
                Err(_) => {
                    tries += 1;
                    std::thread::sleep(std::time::Duration::from_millis(50));
                }
            }
        }
    }

    /// Whether the backend keeps client-chosen ids (see the field).
    pub fn backend_client_ids(&self) -> bool {
        self.backend_client_ids.load(Ordering::SeqCst)
    }

    /// The gate between commits and their events. The writer holds it from
    /// before a commit until the commit's events are in the broadcast
    /// channel; whoever holds it sees, in a read transaction begun then,
    /// exactly the commits whose events are already sent (a live query's
    /// snapshot, [`crate::store::query`]).
    pub fn publish_gate(&self) -> Arc<Mutex<()>> {
        self.publish.clone()
    }

    /// Set by the sync worker at every probe.
    pub fn set_backend_client_ids(&self, on: bool) {
        self.backend_client_ids.store(on, Ordering::SeqCst);
    }

    /// Which way each collection syncs (see the field).
    pub fn directions(&self) -> Arc<crate::domain::direction::Directions> {
        self.directions
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Set by the daemon at start and on every config reload; the next
    /// write transaction decides by it.
    pub fn set_directions(&self, d: crate::domain::direction::Directions) {
        *self.directions.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(d);
    }

    pub fn client_id(&self) -> &str {
        &self.client_id
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Size of the store file on disk.
    pub fn store_bytes(&self) -> u64 {
        std::fs::metadata(&self.path).map(|m| m.len()).unwrap_or(0)
    }

    /// The raw stored record, deleted ones included.
    pub fn record(&self, collection: &str, id: &str) -> Result<Option<StoredRecord>> {
        let (_db, txn) = self.read()?;
        let t = txn.open_table(RECORDS)?;
        match t.get((collection, id))? {
            Some(v) => Ok(Some(self.vault.decode(
                RECORDS,
                &(collection, id),
                v.value(),
            )?)),
            None => Ok(None),
        }
    }

    /// Several stored records in one read transaction, in the order asked.
    pub fn records(&self, keys: &[(String, String)]) -> Result<Vec<Option<StoredRecord>>> {
        let (_db, txn) = self.read()?;
        let t = txn.open_table(RECORDS)?;
        let mut out = Vec::with_capacity(keys.len());
        for (c, id) in keys {
            let key = (c.as_str(), id.as_str());
            out.push(match t.get(key)? {
                Some(v) => Some(self.vault.decode(RECORDS, &key, v.value())?),
                None => None,
            });
        }
        Ok(out)
    }

    /// A live (not deleted) record as apps see it.
    pub fn get(&self, collection: &str, id: &str) -> Result<Option<RecordView>> {
        Ok(self
            .record(collection, id)?
            .filter(|r| !r.deleted)
            .map(|r| r.view(collection, id)))
    }

    /// Live records of `collection` in id order from `start`, at most
    /// `limit` and about `max_bytes` of documents (at least one record);
    /// also returns the id to start the next page from.
    pub fn list(
        &self,
        collection: &str,
        start: Option<&str>,
        limit: usize,
        max_bytes: usize,
    ) -> Result<(Vec<RecordView>, Option<String>)> {
        let mut bytes = 0usize;
        let (_db, txn) = self.read()?;
        let t = txn.open_table(RECORDS)?;
        let mut out = Vec::new();
        let from = (collection, start.unwrap_or(""));
        for item in t.range(from..)? {
            let (k, v) = item?;
            let (c, id) = k.value();
            if c != collection {
                break;
            }
            if out.len() == limit {
                return Ok((out, Some(id.to_owned())));
            }
            let r: StoredRecord = self.vault.decode(RECORDS, &(c, id), v.value())?;
            if !r.deleted {
                let size = r.data.len() + id.len() + RECORD_OVERHEAD;
                if !out.is_empty() && bytes + size > max_bytes {
                    return Ok((out, Some(id.to_owned())));
                }
                bytes += size;
                out.push(r.view(c, id));
            }
        }
        Ok((out, None))
    }

    /// The first `limit` queued ops, in order, with their sequence numbers.
    pub fn queue_head(&self, limit: usize) -> Result<Vec<(u64, QueuedOp)>> {
        let (_db, txn) = self.read()?;
        let t = txn.open_table(QUEUE)?;
        let mut out = Vec::with_capacity(limit.min(1024));
        for item in t.iter()? {
            if out.len() >= limit {
                break;
            }
            let (k, v) = item?;
            out.push((k.value(), self.vault.decode(QUEUE, &k.value(), v.value())?));
        }
        Ok(out)
    }

    /// Number of queued ops (O(1): redb keeps table lengths).
    pub fn queue_depth(&self) -> Result<u64> {
        let (_db, txn) = self.read()?;
        Ok(txn.open_table(QUEUE)?.len()?)
    }

    /// `enqueued_at` of the oldest queued op.
    pub fn oldest_pending(&self) -> Result<Option<i64>> {
        let (_db, txn) = self.read()?;
        let t = txn.open_table(QUEUE)?;
        let first = t.first()?;
        let r = match first {
            Some((k, v)) => Some(
                self.vault
                    .decode::<_, QueuedOp>(QUEUE, &k.value(), v.value())?
                    .enqueued_at,
            ),
            None => None,
        };
        Ok(r)
    }

    pub fn dead_letters(&self) -> Result<Vec<(u64, DeadLetter)>> {
        let (_db, txn) = self.read()?;
        let t = txn.open_table(DEAD)?;
        let mut out = Vec::new();
        for item in t.iter()?.take(MAX_LISTED) {
            let (k, v) = item?;
            out.push((k.value(), self.vault.decode(DEAD, &k.value(), v.value())?));
        }
        Ok(out)
    }

    pub fn dead_letter_count(&self) -> Result<u64> {
        let (_db, txn) = self.read()?;
        Ok(txn.open_table(DEAD)?.len()?)
    }

    pub fn conflicts(&self) -> Result<Vec<ConflictView>> {
        let (_db, txn) = self.read()?;
        let t = txn.open_table(CONFLICTS)?;
        let rt = txn.open_table(RECORDS)?;
        let mut out = Vec::new();
        for item in t.iter()?.take(MAX_LISTED) {
            let (k, v) = item?;
            let (c, id) = k.value();
            let p: ParkedConflict = self.vault.decode(CONFLICTS, &(c, id), v.value())?;
            let local = match rt.get((c, id))? {
                Some(r) => {
                    let r: StoredRecord = self.vault.decode(RECORDS, &(c, id), r.value())?;
                    (!r.deleted).then(|| Doc(parse_doc_text(&r.data)))
                }
                None => None,
            };
            out.push(ConflictView {
                collection: c.to_owned(),
                id: id.to_owned(),
                local,
                server: (!p.server.deleted).then(|| Doc(parse_doc_text(&p.server.data))),
                server_version: p.server.version,
                server_deleted: p.server.deleted,
                detected_at: p.detected_at,
            });
        }
        Ok(out)
    }

    pub fn conflict_count(&self) -> Result<u64> {
        let (_db, txn) = self.read()?;
        Ok(txn.open_table(CONFLICTS)?.len()?)
    }

    /// Where `op_id` is now.
    pub fn op_state(&self, op_id: &str) -> Result<OpState> {
        let (_db, txn) = self.read()?;
        let ops = txn.open_table(OP_INDEX)?;
        if let Some(loc) = ops.get(op_id)? {
            return Ok(if loc.value() == PARKED_SEQ {
                OpState::Parked
            } else {
                OpState::Queued
            });
        }
        let by_op = txn.open_table(DEAD_BY_OP)?;
        let Some(seq) = by_op.get(op_id)?.map(|v| v.value()) else {
            return Ok(OpState::Done);
        };
        let dead = txn.open_table(DEAD)?;
        match dead.get(seq)? {
            Some(v) => Ok(OpState::DeadLettered(
                self.vault
                    .decode::<_, DeadLetter>(DEAD, &seq, v.value())?
                    .error,
            )),
            None => Ok(OpState::Done),
        }
    }

    /// How a conflict resolution settled `op_id`, if one did recently
    /// (see [`settled`]).
    pub fn settled(&self, op_id: &str) -> Result<Option<settled::Settled>> {
        let (_db, txn) = self.read()?;
        let t = txn.open_table(SETTLED)?;
        let found = t.get(op_id)?.map(|v| settled::decode(v.value()));
        found.transpose()
    }

    /// The (collection, local id) an op in the queue or in a parked
    /// conflict writes to.
    pub fn op_target(&self, op_id: &str) -> Result<Option<(String, String)>> {
        let (_db, txn) = self.read()?;
        let ops = txn.open_table(OP_INDEX)?;
        let Some(seq) = ops.get(op_id)?.map(|v| v.value()) else {
            return Ok(None);
        };
        if seq != PARKED_SEQ {
            let q = txn.open_table(QUEUE)?;
            let found = q
                .get(seq)?
                .map(|v| self.vault.decode::<_, QueuedOp>(QUEUE, &seq, v.value()));
            return Ok(match found {
                Some(op) => {
                    let op = op?;
                    Some((op.collection, op.local_id))
                }
                None => None,
            });
        }
        let t = txn.open_table(CONFLICTS)?;
        for item in t.iter()? {
            let (k, v) = item?;
            let (c, id) = k.value();
            let p: ParkedConflict = self.vault.decode(CONFLICTS, &(c, id), v.value())?;
            if p.ops.iter().any(|o| o.op_id == op_id) {
                return Ok(Some((c.to_owned(), id.to_owned())));
            }
        }
        Ok(None)
    }

    /// A metadata value.
    pub fn meta(&self, key: &str) -> Result<Option<Vec<u8>>> {
        let (_db, txn) = self.read()?;
        let t = txn.open_table(META)?;
        Ok(t.get(key)?.map(|v| v.value().to_vec()))
    }

    /// Local id of the record that has server id `server_id`.
    pub fn local_id_for(&self, collection: &str, server_id: &str) -> Result<Option<String>> {
        let (_db, txn) = self.read()?;
        let t = txn.open_table(SERVER_IDS)?;
        Ok(t.get((collection, server_id))?
            .map(|v| v.value().to_owned()))
    }
}
