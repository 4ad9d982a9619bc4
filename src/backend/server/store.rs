//! The storage interface of the reference backend.
//!
//! [`BackendStore`] knows nothing about HTTP nor about any database: the redb
//! implementation is [`RedbStore`](super::redb_store::RedbStore); a PostgreSQL
//! one can implement the same trait. Implementations must apply
//! [`plan`](super::ops::plan) to each operation so that every store follows the
//! same rules, after the [`access`](super::access) rules of revision 3
//! (users and scopes) for [`BackendStore::apply_as`].
//!
//! Calls are blocking; the HTTP layer runs them on tokio's blocking pool.
//! The one exception is [`BackendStore::subscribe`], which is cheap and
//! returns a receiver the HTTP layer awaits without holding anything of the
//! store (see [`feed`](super::feed)).
//!
//! Records are identified by `(collection, id)`: the same id in two
//! collections names two records.

use std::fmt;

use tokio::sync::watch;

use crate::backend::protocol::{Change, ScopedChange, ServerRecord};

use super::access::{Caller, Refusal};
use super::ops::ValidOp;

/// The result of one operation passed to [`BackendStore::apply`].
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// 200: the record the operation produced. `replayed` is true when the
    /// `op_id` had been applied before and nothing was applied now.
    Applied {
        record: ServerRecord,
        replayed: bool,
    },
    /// 409: the current record (possibly a tombstone); for a create with a
    /// client-chosen id, the record that already holds the id.
    Conflict(ServerRecord),
    /// 404: the target id of an update or delete is unknown in the
    /// operation's collection.
    NotFound(String),
    /// Revision 3: refused by the [`access`](super::access) rules (403 with
    /// a code, or 422 for a bad scope name). Never [`Refusal::NotFound`]:
    /// that is [`Outcome::NotFound`].
    Refused(Refusal),
}

impl Outcome {
    pub fn is_applied(&self) -> bool {
        matches!(self, Outcome::Applied { .. })
    }

    /// The outcome of an operation the access rules refused.
    pub fn refused(r: Refusal) -> Outcome {
        match r {
            Refusal::NotFound(reason) => Outcome::NotFound(reason),
            other => Outcome::Refused(other),
        }
    }
}

/// A slice of one scope's feed (`POST v1/pull`).
#[derive(Debug, Clone, PartialEq)]
pub struct ScopeSlice {
    /// `(sequence, change)` in commit order, all with sequence > the
    /// cursor asked for; records carry the scope.
    pub entries: Vec<(u64, ScopedChange)>,
    /// Whether the feed has entries after the last one returned.
    pub more: bool,
    /// The sequence of the scope's newest entry (0 when it has none).
    pub head: u64,
}

/// A feed entry as served: a record carries its scope.
pub fn with_scope(entry: ScopedChange, scope: &str) -> ScopedChange {
    match entry {
        ScopedChange::Record {
            collection,
            mut record,
        } => {
            record.scope = Some(scope.to_owned());
            ScopedChange::Record { collection, record }
        }
        gone => gone,
    }
}

/// A slice of the change log.
#[derive(Debug, Clone)]
pub struct ChangeSlice {
    /// `(sequence, change)` in commit order, all with sequence > `since`.
    pub entries: Vec<(u64, Change)>,
    /// The sequence of the last entry read, served or not (a store that
    /// serves the log from a scope's feed skips its `gone` entries, and the
    /// cursor must still move past them). `None`: nothing was read.
    pub read_to: Option<u64>,
    /// Whether the log has entries after the last one returned.
    pub more: bool,
    /// The sequence of the newest entry in the log (0 when empty).
    pub head: u64,
}

/// A storage failure. The HTTP layer answers `Unavailable` with 503 and a
/// short `Retry-After` (the store comes back by itself: devices should
/// return within seconds of it), and `Failed` with 500.
#[derive(Debug, Clone)]
pub enum StoreError {
    /// The store cannot be reached now: its database is down, restarting
    /// or refusing connections.
    Unavailable(String),
    /// Any other failure: I/O, a corrupt value, a bug.
    Failed(String),
}

impl StoreError {
    /// What went wrong, without the kind.
    pub fn message(&self) -> &str {
        match self {
            StoreError::Unavailable(m) | StoreError::Failed(m) => m,
        }
    }
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "backend store: {}", self.message())
    }
}

impl std::error::Error for StoreError {}

/// Durable storage of records, the change log and the applied-op index.
pub trait BackendStore: Send + Sync + 'static {
    /// Applies `ops` in order, stopping after the first outcome that is not
    /// [`Outcome::Applied`]; returns the outcomes of that prefix (at least one
    /// when `ops` is non-empty). Before returning, all applied ops are
    /// durably committed together (all or nothing): an `Err` means none was.
    ///
    /// An op whose `op_id` was applied before yields the remembered record
    /// (`replayed: true`) and changes nothing.
    fn apply(&self, ops: &[ValidOp]) -> Result<Vec<Outcome>, StoreError>;

    /// [`apply`](Self::apply) on behalf of `caller`, under the
    /// [`access`](super::access) rules, writing each record's scope and
    /// appending to the scopes' feeds. The default serves only
    /// [`Caller::Single`] (a store without scopes, as test doubles are).
    fn apply_as(&self, ops: &[ValidOp], caller: &Caller) -> Result<Vec<Outcome>, StoreError> {
        match caller {
            Caller::Single => self.apply(ops),
            Caller::User(_) => Err(StoreError::Failed("this store has no scopes".into())),
        }
    }

    /// For each `(scope, since)`, at most `limit` entries of that scope's
    /// feed with sequence > `since`, in the order asked. The default: a
    /// store without scopes.
    fn pull(&self, scopes: &[(String, u64)], limit: usize) -> Result<Vec<ScopeSlice>, StoreError> {
        let _ = (scopes, limit);
        Err(StoreError::Failed("this store has no scopes".into()))
    }

    /// At most `limit` change-log entries with sequence > `since`.
    fn changes(&self, since: u64, limit: usize) -> Result<ChangeSlice, StoreError>;

    /// The scope of the stored record `(collection, id)`, if there is one
    /// (an op's content must be held there before it applies).
    fn scope_of(&self, collection: &str, id: &str) -> Result<Option<String>, StoreError> {
        let _ = (collection, id);
        Ok(None)
    }

    /// Every content hash a live record references (`_attachments`): the
    /// content the blob collector keeps.
    fn content_refs(&self) -> Result<std::collections::HashSet<String>, StoreError>;

    /// Where this store keeps attachment content, when it keeps it itself
    /// (PostgreSQL); `None`: in files beside it (`data_dir/blobs`).
    fn blob_backend(
        self: std::sync::Arc<Self>,
    ) -> Option<std::sync::Arc<dyn super::blobs::BlobBackend>> {
        None
    }

    /// Cheap readiness probe used by `v1/health`.
    fn check(&self) -> Result<(), StoreError>;

    /// Whether this store has held users-mode data: a users-mode server
    /// recorded a write in its meta, or a scope other than
    /// [`SINGLE_SCOPE`](crate::domain::scope::SINGLE_SCOPE) has a feed.
    /// A single-tenant server refuses to start over such a store (it would
    /// serve every user's records to whoever holds its token). The
    /// default: a store without scopes.
    fn held_users(&self) -> Result<bool, StoreError> {
        Ok(false)
    }

    /// Where the data is, for messages ("data directory X", "PostgreSQL
    /// database Y" without its password).
    fn location(&self) -> String {
        "the backend store".to_owned()
    }

    /// Subscribes to "head moved" notifications: the receiver's value is the
    /// change log's committed head (the newest sequence) and changes after
    /// every durable commit that appended to the log.
    ///
    /// A wake-up only: the reader re-reads the log with
    /// [`changes`](Self::changes); values may be coalesced or skipped, and a
    /// notification may be spurious. Must not block (called on the async
    /// runtime). Implementations usually own a [`Feed`](super::feed::Feed).
    fn subscribe(&self) -> watch::Receiver<u64>;

    /// How many unscoped wake-ups there were ([`Feed::unscoped`](super::feed::Feed::unscoped)):
    /// read before a waiter reads its feeds. Must not block.
    fn unscoped_wakes(&self) -> u64 {
        0
    }

    /// Whether a woken waiter that read `read` (scope, head) after
    /// `unscoped_seen` unscoped wake-ups may find more, so must re-read
    /// ([`Feed::may_have_moved`](super::feed::Feed::may_have_moved)). The
    /// default, for stores whose wake-ups name no scope: always. Must not
    /// block.
    fn may_have_moved(&self, _unscoped_seen: u64, _read: &[(String, u64)]) -> bool {
        true
    }
}
