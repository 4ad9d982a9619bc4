//! The store's errors, as values a caller can branch on.
//!
//! Two kinds, kept apart because callers treat them differently (redb's
//! error.rs is the model):
//! - [`StoreError`]: the storage itself failed (I/O, a full disk, a damaged
//!   file). Nothing in the failed transaction was committed; it is never the
//!   app's fault.
//! - [`WriteError`]: one write job was refused for a reason of its own (the
//!   record does not exist, the document is too large, ...). Nothing of that
//!   job was written; the other jobs of its group commit still were.
//!
//! The socket protocol maps each variant to an error code in one place
//! (`ipc::error`); nothing anywhere decides by the text of a message.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

/// The storage layer failed.
#[derive(Debug)]
#[non_exhaustive]
pub enum StoreError {
    /// An I/O error from the file system (a full disk among them).
    Io(std::io::Error),
    /// The storage engine failed for a reason other than plain I/O.
    Engine(Box<dyn std::error::Error + Send + Sync>),
    /// A stored value could not be read back: the file is damaged.
    Corrupt { what: &'static str, detail: String },
    /// A value could not be encoded for storage.
    Encode { what: &'static str, detail: String },
    /// The store file fails its integrity check (truncated, overwritten):
    /// it was not opened, nothing in it was changed.
    Damaged { path: PathBuf, detail: String },
    /// The database is being re-opened after a failed commit; try again.
    Reopening,
    /// An earlier commit failed with an I/O error (a full disk): the
    /// database takes no write until it is re-opened.
    NeedsReopen,
    /// The store is still in use (a transaction is open): not closed.
    InUse,
    /// The store was found damaged during work (a checksum error, a value
    /// that does not decode, a panic in the storage engine): the daemon
    /// takes no more writes until it is restarted on a sound store.
    DamagedInUse { path: PathBuf, detail: String },
    /// A record's count of pending ops would go below zero: the store's
    /// tables disagree (a syncd bug, which `syncd check` names). The
    /// transaction is abandoned rather than the count clamped to zero.
    PendingUnderflow {
        collection: String,
        id: String,
        pending: u32,
        leaving: u32,
    },
    /// The file was written by a syncd with another schema.
    SchemaMismatch {
        path: PathBuf,
        found: u64,
        expected: u64,
    },
    /// Encryption at rest: a missing or wrong key, a store in the other
    /// mode, or a sealed value that fails authentication (damage).
    Seal(super::seal_error::SealError),
}

impl StoreError {
    /// Whether the failure is a full disk (or quota): the write may succeed
    /// once space is freed.
    pub fn is_disk_full(&self) -> bool {
        match self {
            StoreError::Io(e) => is_storage_full(e),
            StoreError::NeedsReopen => true,
            _ => false,
        }
    }
}

fn is_storage_full(e: &std::io::Error) -> bool {
    e.kind() == std::io::ErrorKind::StorageFull
        || e.kind() == std::io::ErrorKind::QuotaExceeded
        || e.raw_os_error() == Some(28) // ENOSPC
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreError::Io(e) if is_storage_full(e) => {
                write!(
                    f,
                    "store: disk full ({e}); free space and the write can be retried"
                )
            }
            StoreError::Io(e) => write!(f, "store: I/O error: {e}"),
            StoreError::Engine(e) => write!(f, "store: {e}"),
            StoreError::Corrupt { what, detail } => {
                write!(f, "store: damaged {what}: {detail}")
            }
            StoreError::Reopening => write!(f, "store: re-opening after a failed write; try again"),
            StoreError::NeedsReopen => write!(
                f,
                "store: an earlier write failed (disk full?); writes resume once space is free"
            ),
            StoreError::Damaged { path, detail } => write!(
                f,
                "{} is damaged ({detail}); syncd will not start on it and has changed nothing in it. Restore it from a backup, or move it aside (mv {} {}.damaged) to start with an empty store",
                path.display(),
                path.display(),
                path.display()
            ),
            StoreError::PendingUnderflow {
                collection,
                id,
                pending,
                leaving,
            } => write!(
                f,
                "store: {collection}/{id} counts {pending} pending op(s) but {leaving} left the queue; its tables disagree (a syncd bug): run `syncd check` and report it"
            ),
            StoreError::InUse => write!(f, "store: still in use; not closed"),
            StoreError::DamagedInUse { path, detail } => write!(
                f,
                "{} was found damaged while the daemon ran ({detail}); syncd takes no more writes on it. Run `syncd check`, then stop syncd and restore the store from a backup",
                path.display()
            ),
            StoreError::Encode { what, detail } => {
                write!(f, "store: cannot encode {what}: {detail}")
            }
            StoreError::SchemaMismatch {
                path,
                found,
                expected,
            } => write!(
                f,
                "{}: schema version {found}, this syncd understands {expected}",
                path.display()
            ),
            StoreError::Seal(e) => e.fmt(f),
        }
    }
}

impl From<super::seal_error::SealError> for StoreError {
    fn from(e: super::seal_error::SealError) -> Self {
        StoreError::Seal(e)
    }
}

impl std::error::Error for StoreError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            StoreError::Io(e) => Some(e),
            StoreError::Engine(e) => Some(e.as_ref()),
            _ => None,
        }
    }
}

impl From<std::io::Error> for StoreError {
    fn from(e: std::io::Error) -> Self {
        StoreError::Io(e)
    }
}

/// Why one write job was not applied.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum WriteError {
    /// The record does not exist (or is deleted).
    NotFound { collection: String, id: String },
    /// The document after a patch exceeds the size limit.
    TooLarge { bytes: usize, limit: u32 },
    /// `resolve` for a record that has no parked conflict.
    NoParkedConflict { collection: String, id: String },
    /// `resolve` without a side to take or a document.
    ResolveNeedsChoice,
    /// `retry` / `discard` of an op that is not a dead letter.
    NoDeadLetter { op_id: String },
    /// The record's parked conflict holds as many writes as it may: resolve
    /// it first (`syncd conflicts`, `syncd resolve`).
    ConflictPending {
        collection: String,
        id: String,
        parked: usize,
    },
    /// A write to a collection this device only pulls
    /// (`[collections.NAME] sync = "pull"`).
    ReadOnlyCollection { collection: String },
    /// An op for the server in a collection that never leaves this device
    /// (`[collections.NAME] sync = "local"`): a dead letter's retry.
    LocalCollection { collection: String },
    /// `retry` of a dead letter another user queued: the token belongs to
    /// someone else now (`now`: the current session's user, if known).
    QueuedByAnotherUser {
        op_id: String,
        queued_by: String,
        now: Option<String>,
    },
    /// A put or patch that changes `_attachments`: attachments change only
    /// through `attach` and `detach`, which queue their bytes too.
    AttachmentsManaged { collection: String, id: String },
    /// `detach` (or a read) of an attachment the record does not have.
    NoAttachment {
        collection: String,
        id: String,
        name: String,
    },
    /// A bad attachment name, content type, hash or reference.
    BadAttachment(super::attachment::AttachmentError),
    /// The writer is gone: the daemon is stopping.
    ShuttingDown,
    /// The transaction that carried the job failed; nothing was committed.
    Storage(Arc<StoreError>),
}

impl fmt::Display for WriteError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WriteError::NotFound { collection, id } => {
                write!(f, "no record {id:?} in collection {collection:?}")
            }
            WriteError::TooLarge { bytes, limit } => write!(
                f,
                "document too large after this patch or attach: {bytes} bytes of JSON, the limit is {limit} (daemon.max_document_bytes)"
            ),
            WriteError::NoParkedConflict { collection, id } => {
                write!(f, "no parked conflict for {collection}/{id}")
            }
            WriteError::ResolveNeedsChoice => {
                write!(f, "resolve needs take (local or server) or data")
            }
            WriteError::NoDeadLetter { op_id } => write!(f, "no dead letter with op_id {op_id}"),
            WriteError::ConflictPending {
                collection,
                id,
                parked,
            } => write!(
                f,
                "{collection}/{id} has a conflict waiting for a decision with {parked} unsynced writes; resolve it first (syncd conflicts, syncd resolve)"
            ),
            WriteError::ReadOnlyCollection { collection } => write!(
                f,
                "collection {collection:?} is read-only on this device: daemon.toml sets [collections.{collection}] sync = \"pull\", so it only receives the server's records; write to it on a device where it syncs both ways or pushes"
            ),
            WriteError::LocalCollection { collection } => write!(
                f,
                "collection {collection:?} is local on this device: daemon.toml sets [collections.{collection}] sync = \"local\", so nothing of it is sent to the server; discard the dead letter, or make the collection sync again to retry it"
            ),
            WriteError::QueuedByAnotherUser {
                op_id,
                queued_by,
                now,
            } => write!(
                f,
                "dead letter {op_id} was queued by user '{queued_by}' and the token now belongs to {}: it is only retried under '{queued_by}''s token (discard it, or switch the token back)",
                now.as_deref().map_or("another user".to_owned(), |n| format!("'{n}'"))
            ),
            WriteError::AttachmentsManaged { collection, id } => write!(
                f,
                "{collection}/{id}: `_attachments` is kept by attach and detach (syncd attach, syncd detach); leave it out of put and patch, or send it unchanged"
            ),
            WriteError::NoAttachment {
                collection,
                id,
                name,
            } => write!(f, "{collection}/{id} has no attachment {name:?}"),
            WriteError::BadAttachment(e) => write!(f, "{e}"),
            WriteError::ShuttingDown => write!(f, "the daemon is shutting down"),
            WriteError::Storage(e) => write!(f, "write not committed: {e}"),
        }
    }
}

impl std::error::Error for WriteError {}

impl From<StoreError> for WriteError {
    fn from(e: StoreError) -> Self {
        WriteError::Storage(Arc::new(e))
    }
}
