//! One `apply` call as one PostgreSQL transaction (the PostgreSQL store's
//! write path; [`pg_store`](super::pg_store) owns the pool and the retries).
//!
//! Why a file of its own: this is where the protocol's multi-node
//! guarantees are made, and they deserve to be read in one place:
//!
//! - **Serialised at the feed head.** The transaction first locks the single
//!   row of `syncd_feed_head` (`SELECT ... FOR UPDATE`) and, if it appended,
//!   sets it to its last sequence before committing. Two apply transactions,
//!   from any nodes, therefore never overlap: sequence order is commit order,
//!   and a reader's snapshot always sees the log as a prefix `1..=head` — the
//!   protocol's gap-free rule. (Locking first, before any record row, also
//!   means two batches can never deadlock on each other's records.)
//! - **Version check + write + op_id in one transaction.** Because of that
//!   lock each statement (READ COMMITTED) sees every earlier commit, so the
//!   version check and the replay lookup are exact. The record row is still
//!   read `FOR UPDATE`, and new rows are inserted with `ON CONFLICT DO
//!   NOTHING` and re-read on a clash (a 409), so a writer that did not take
//!   the head lock could not produce two 200s either.
//! - **Per-scope feeds.** Each appended change also takes its scope's next
//!   sequence from `syncd_scope_heads` (an upsert) while the head lock is
//!   held, so each scope's feed is gap-free and in commit order as well; a
//!   move appends a gone entry to the old scope first.
//! - **Replays from any node.** `syncd_applied_ops` keeps every applied
//!   op_id with the record of its first application.
//!
//! [`plan`] decides what each operation does, as for every store.

use std::time::{SystemTime, UNIX_EPOCH};

use deadpool_postgres::{ClientWrapper, Transaction};

use crate::backend::protocol::{Change, Gone, ScopedChange, ServerRecord};

use super::access::{self, present, Caller};
use super::ops::{plan, Action, Plan, StoredRecord, ValidOp};
use super::store::Outcome;

/// The channel `NOTIFY`ed with the new head after each appending commit.
pub const CHANNEL: &str = "syncd_feed";

/// How many server ids to draw when a draw is taken (a client chose that ULID).
const ID_DRAWS: usize = 8;

const LOCK_HEAD: &str = "SELECT seq FROM syncd_feed_head WHERE one FOR UPDATE";
const SET_HEAD: &str = "UPDATE syncd_feed_head SET seq = $1 WHERE one";
const NOTIFY: &str = "SELECT pg_notify('syncd_feed', $1::text)";
const REMEMBERED: &str = "SELECT record, scope FROM syncd_applied_ops WHERE op_id = $1";
const CURRENT: &str =
    "SELECT record, scope FROM syncd_records WHERE collection = $1 AND id = $2 FOR UPDATE";
const INSERT_RECORD: &str = "INSERT INTO syncd_records (collection, id, record, scope) \
     VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING";
const UPDATE_RECORD: &str =
    "UPDATE syncd_records SET record = $3, scope = $4 WHERE collection = $1 AND id = $2";
const APPEND: &str = "INSERT INTO syncd_changes (seq, change) VALUES ($1, $2)";
/// The next sequence of a scope's feed: taken under the head lock, so the
/// per-scope feeds are gap-free too.
const SCOPE_NEXT: &str = "INSERT INTO syncd_scope_heads (scope, seq) VALUES ($1, 1) \
     ON CONFLICT (scope) DO UPDATE SET seq = syncd_scope_heads.seq + 1 RETURNING seq";
const SCOPE_APPEND: &str =
    "INSERT INTO syncd_scope_changes (scope, seq, change) VALUES ($1, $2, $3)";
/// Marks the database as having held users (see
/// [`BackendStore::held_users`](super::store::BackendStore::held_users)).
const RECORD_USERS: &str =
    "INSERT INTO syncd_meta (key, value) VALUES ('users', 1) ON CONFLICT DO NOTHING";
const REMEMBER: &str = "INSERT INTO syncd_applied_ops (op_id, record, applied_at, scope) \
     VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING";

/// Why an apply transaction failed (nothing of it was committed).
#[derive(Debug)]
pub enum ApplyError {
    Pg(tokio_postgres::Error),
    /// A stored value is not the JSON this code writes.
    Corrupt(serde_json::Error),
    /// Every drawn server id was taken.
    NoFreeId,
}

impl From<tokio_postgres::Error> for ApplyError {
    fn from(e: tokio_postgres::Error) -> Self {
        ApplyError::Pg(e)
    }
}

impl From<serde_json::Error> for ApplyError {
    fn from(e: serde_json::Error) -> Self {
        ApplyError::Corrupt(e)
    }
}

impl std::fmt::Display for ApplyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ApplyError::Pg(e) => write!(f, "{e}"),
            ApplyError::Corrupt(e) => write!(f, "corrupt stored value: {e}"),
            ApplyError::NoFreeId => write!(f, "no free record id after {ID_DRAWS} draws"),
        }
    }
}

impl std::error::Error for ApplyError {
    /// The driver's cause (its own text is already in `Display`).
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ApplyError::Pg(e) => std::error::Error::source(e),
            _ => None,
        }
    }
}

impl ApplyError {
    /// The database could not be reached or went away mid-transaction.
    pub fn is_unavailable(&self) -> bool {
        matches!(self, ApplyError::Pg(e) if super::pg_store::is_unavailable(e))
    }

    /// A serialization failure or deadlock: the whole transaction may simply
    /// be run again.
    pub fn is_retryable(&self) -> bool {
        use tokio_postgres::error::SqlState;
        match self {
            ApplyError::Pg(e) => matches!(
                e.code(),
                Some(c) if *c == SqlState::T_R_SERIALIZATION_FAILURE
                    || *c == SqlState::T_R_DEADLOCK_DETECTED
            ),
            _ => false,
        }
    }
}

/// What a committed (or rolled back, when nothing was written) apply did.
#[derive(Debug)]
pub struct Applied {
    pub outcomes: Vec<Outcome>,
    /// The new head when the log grew.
    pub head: Option<u64>,
    /// Whether anything was committed.
    pub wrote: bool,
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// Runs `ops` in one transaction on `client` (see the module doc). With
/// `record_users`, a users-mode write also marks `syncd_meta` (`users`).
pub async fn apply(
    client: &mut ClientWrapper,
    ops: &[ValidOp],
    caller: &Caller,
    record_users: bool,
) -> Result<Applied, ApplyError> {
    let tx = client.transaction().await?;
    let head: i64 = tx
        .query_one(&tx.prepare_cached(LOCK_HEAD).await?, &[])
        .await?
        .get(0);
    let mut batch = Batch {
        tx,
        head,
        applied_at: now_ms(),
        wrote: false,
    };
    let mut outcomes = Vec::with_capacity(ops.len());
    for op in ops {
        let outcome = batch.apply_one(op, caller).await?;
        let stop = !outcome.is_applied();
        outcomes.push(outcome);
        if stop {
            break;
        }
    }
    let grew = batch.head > head;
    if record_users && batch.wrote && caller.is_user() {
        let stmt = batch.tx.prepare_cached(RECORD_USERS).await?;
        batch.tx.execute(&stmt, &[]).await?;
    }
    let wrote = batch.wrote;
    let head = batch.finish(grew).await?;
    Ok(Applied {
        outcomes,
        wrote,
        head: grew.then_some(head),
    })
}

/// The open transaction of one [`apply`].
struct Batch<'a> {
    tx: Transaction<'a>,
    /// The newest sequence written so far (the locked head at first).
    head: i64,
    applied_at: i64,
    wrote: bool,
}

impl Batch<'_> {
    async fn apply_one(&mut self, op: &ValidOp, caller: &Caller) -> Result<Outcome, ApplyError> {
        let (remembered, current) = tokio::try_join!(
            self.remembered(&op.op_id),
            self.current(&op.collection, op.action.target_id())
        )?;
        if let Some((record, scope)) = remembered {
            if let Err(r) = access::replay(caller, &op.op_id, &scope) {
                return Ok(Outcome::refused(r));
            }
            return Ok(Outcome::Applied {
                record: present(caller, &scope, record),
                replayed: true,
            });
        }
        let scope = match access::target_scope(caller, op, current.as_ref()) {
            Ok(scope) => scope,
            Err(r) => return Ok(Outcome::refused(r)),
        };
        let record = match plan(op, current.as_ref(), || ulid::Ulid::generate().to_string()) {
            Plan::Write(record) => {
                let from = current.as_ref().map(|c| c.scope.as_str());
                match self.write(op, record, from, &scope).await? {
                    Ok(record) => record,
                    Err(taken) => return Ok(taken_outcome(caller, op, &taken)),
                }
            }
            Plan::Unchanged(record) => record,
            Plan::Conflict(record) => {
                return Ok(Outcome::Conflict(access::conflict(
                    caller,
                    current.as_ref(),
                    record,
                )))
            }
            Plan::NotFound(reason) => return Ok(Outcome::NotFound(reason)),
        };
        let stmt = self.tx.prepare_cached(REMEMBER).await?;
        let json = serde_json::to_string(&record)?;
        self.tx
            .execute(&stmt, &[&op.op_id, &json, &self.applied_at, &scope])
            .await?;
        self.wrote = true;
        Ok(Outcome::Applied {
            record: present(caller, &scope, record),
            replayed: false,
        })
    }

    async fn remembered(&self, op_id: &str) -> Result<Option<(ServerRecord, String)>, ApplyError> {
        let stmt = self.tx.prepare_cached(REMEMBERED).await?;
        let row = self.tx.query_opt(&stmt, &[&op_id]).await?;
        decode_row(row)
    }

    async fn current(
        &self,
        collection: &str,
        id: Option<&str>,
    ) -> Result<Option<StoredRecord>, ApplyError> {
        let Some(id) = id else { return Ok(None) };
        let stmt = self.tx.prepare_cached(CURRENT).await?;
        let row = self.tx.query_opt(&stmt, &[&collection, &id]).await?;
        Ok(decode_row(row)?.map(|(record, scope)| StoredRecord {
            collection: collection.to_owned(),
            record,
            scope,
        }))
    }

    /// Stores `record` in scope `to` and appends it to the global log and
    /// to `to`'s feed (a move from `from` adds a gone entry to `from`'s).
    /// `Ok(Err(current))`: a new client-chosen id was taken meanwhile.
    async fn write(
        &mut self,
        op: &ValidOp,
        mut record: ServerRecord,
        from: Option<&str>,
        to: &str,
    ) -> Result<Result<ServerRecord, StoredRecord>, ApplyError> {
        let server_id = matches!(op.action, Action::Create { id: None, .. });
        let mut draws = 0;
        loop {
            let json = serde_json::to_string(&record)?;
            let sql = if from.is_some() {
                UPDATE_RECORD
            } else {
                INSERT_RECORD
            };
            let stmt = self.tx.prepare_cached(sql).await?;
            let rows = self
                .tx
                .execute(&stmt, &[&op.collection, &record.id, &json, &to])
                .await?;
            if rows == 1 {
                break;
            }
            if !server_id {
                let taken = self.current(&op.collection, Some(&record.id)).await?;
                return taken.map(Err).ok_or(ApplyError::NoFreeId);
            }
            draws += 1;
            if draws >= ID_DRAWS {
                return Err(ApplyError::NoFreeId);
            }
            record.id = ulid::Ulid::generate().to_string();
        }
        self.head += 1;
        let change = serde_json::to_string(&Change {
            collection: op.collection.clone(),
            record: record.clone(),
        })?;
        let stmt = self.tx.prepare_cached(APPEND).await?;
        self.tx.execute(&stmt, &[&self.head, &change]).await?;
        if let Some(from) = from.filter(|f| *f != to) {
            let gone = serde_json::to_string(&ScopedChange::Gone {
                collection: op.collection.clone(),
                gone: Gone {
                    id: record.id.clone(),
                    version: record.version,
                },
            })?;
            self.append_to_scope(from, &gone).await?;
        }
        self.append_to_scope(to, &change).await?;
        self.wrote = true;
        Ok(Ok(record))
    }

    /// Appends `entry` to `scope`'s feed at its next sequence.
    async fn append_to_scope(&self, scope: &str, entry: &str) -> Result<(), ApplyError> {
        let next = self.tx.prepare_cached(SCOPE_NEXT).await?;
        let seq: i64 = self.tx.query_one(&next, &[&scope]).await?.try_get(0)?;
        let append = self.tx.prepare_cached(SCOPE_APPEND).await?;
        self.tx.execute(&append, &[&scope, &seq, &entry]).await?;
        Ok(())
    }

    /// Moves the head (and notifies) when the log grew, then commits, or
    /// rolls back when nothing was written. Returns the head.
    async fn finish(self, grew: bool) -> Result<u64, ApplyError> {
        if grew {
            let set = self.tx.prepare_cached(SET_HEAD).await?;
            let notify = self.tx.prepare_cached(NOTIFY).await?;
            let payload = self.head.to_string();
            let set_args: [&(dyn tokio_postgres::types::ToSql + Sync); 1] = [&self.head];
            let notify_args: [&(dyn tokio_postgres::types::ToSql + Sync); 1] = [&payload];
            tokio::try_join!(
                self.tx.execute(&set, &set_args),
                self.tx.execute(&notify, &notify_args),
            )?;
        }
        let head = u64::try_from(self.head).unwrap_or(0);
        if self.wrote {
            self.tx.commit().await?;
        } else {
            self.tx.rollback().await?;
        }
        Ok(head)
    }
}

/// A `(record, scope)` row.
fn decode_row(
    row: Option<tokio_postgres::Row>,
) -> Result<Option<(ServerRecord, String)>, ApplyError> {
    match row {
        Some(row) => {
            let text: String = row.try_get(0)?;
            Ok(Some((serde_json::from_str(&text)?, row.try_get(1)?)))
        }
        None => Ok(None),
    }
}

/// The outcome of a create whose new client-chosen id was taken by a
/// commit in between: the access rules' answer for the record found.
fn taken_outcome(caller: &Caller, op: &ValidOp, taken: &StoredRecord) -> Outcome {
    match access::target_scope(caller, op, Some(taken)) {
        Ok(scope) => Outcome::Conflict(present(caller, &scope, taken.record.clone())),
        Err(r) => Outcome::refused(r),
    }
}
