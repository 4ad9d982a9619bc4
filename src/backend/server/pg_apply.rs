//! One `apply` call as one PostgreSQL transaction of a constant number of
//! statements (the PostgreSQL store's write path). A call carries one or
//! more requests' batches ([`Job`]s), run one after another as if each were
//! alone; [`pg_group`](super::pg_group) forms the groups and owns the
//! retries.
//!
//! Why a file of its own: this is where the protocol's multi-node
//! guarantees are made, and they deserve to be read in one place.
//!
//! # Two round trips, whatever the batch's size
//!
//! 1. `BEGIN`, the batch's records, locked `FOR UPDATE` in key order, and
//!    then the op_ids already applied (`= ANY`): in that order, so that the
//!    op_ids read sees every commit the records read saw. Pipelined: one
//!    round trip.
//! 2. [`plan`] runs for every op in memory, over the rows read and the
//!    batch's own earlier results ([`Overlay`]). Then, pipelined again: the
//!    new records (one multi-row `INSERT`), the changed records (one
//!    `UPDATE ... FROM unnest`), the applied op_ids (one `INSERT`), the feed
//!    entries with their scopes' heads (one statement, [`APPEND`]),
//!    `COMMIT`, and after it the `NOTIFY` wake-up.
//!
//! # Ordering without a cluster-wide lock
//!
//! - **Per-scope feeds, locked only at the end.** [`APPEND`] bumps each
//!   touched scope's row of `syncd_scope_heads` (an upsert, in scope order,
//!   so two batches never deadlock on heads) and writes the entries at the
//!   sequences it reserved. The row lock is held from that statement to the
//!   end of `COMMIT`, which follows it in the same pipeline: no client round
//!   trip happens under it. Batches writing different scopes never wait on
//!   each other; in one scope, sequence order is commit order, so a reader's
//!   snapshot always sees each feed as a prefix `1..=head` (gap-free).
//! - **Version check + write + op_id in one transaction.** The records read
//!   in step 1 stay locked until `COMMIT`, so the version checks stay true.
//!   A record or op_id that did not exist at step 1 but is inserted by a
//!   concurrent batch meanwhile makes step 2's `INSERT` fail with a unique
//!   violation; the whole transaction is then run again
//!   ([`ApplyError::is_retryable`]) and sees it (a 409, a 403 `id_taken`, or
//!   the remembered reply), so two 200s for one id or op_id are impossible.
//! - **No deadlock between records and heads.** A transaction takes record
//!   locks only before its heads, and after taking a head it only commits.
//! - **NOTIFY outside the transaction.** `pg_notify` inside a transaction
//!   serialises every notifying commit of the cluster on one lock; it is
//!   sent after `COMMIT`, in its own implicit transaction, as a wake-up only
//!   (listeners re-read; a lost one is caught by their periodic re-check).
//!
//! The global log of schema 1 and 2 (`syncd_changes`, `syncd_feed_head`) is
//! no longer written: `v1/changes` serves the `default` scope's feed, which
//! holds the same entries at the same sequences (see `pg_store`).

use std::collections::HashMap;
use std::time::{SystemTime, UNIX_EPOCH};

use deadpool_postgres::ClientWrapper;
use tokio_postgres::types::ToSql;

use crate::backend::protocol::{Change, Gone, ScopedChange, ServerRecord};

use super::access::{self, present, Caller};
use super::ops::{plan, Plan, StoredRecord, ValidOp};
use super::store::Outcome;

/// The channel `NOTIFY`ed after each appending commit. The payload names
/// the scopes written and their heads, one `scope seq` a line (see
/// [`parse_heads`]); an empty payload (too many scopes for one
/// notification) says only that some feed moved.
pub const CHANNEL: &str = "syncd_feed";

/// After the commit: the written scopes' committed heads, announced on
/// [`CHANNEL`] and returned (scope names cannot hold a space or a newline).
/// PostgreSQL caps a payload below 8,000 bytes; a longer one is sent empty.
const NOTIFY: &str = "WITH x AS ( \
       SELECT COALESCE(string_agg(scope || ' ' || seq, E'\\n'), '') AS p \
       FROM syncd_scope_heads WHERE scope = ANY($1::text[])), \
     y AS (SELECT CASE WHEN length(p) > 7000 THEN '' ELSE p END AS p FROM x) \
     SELECT y.p FROM y, LATERAL (SELECT pg_notify('syncd_feed', y.p)) n";
const REMEMBERED: &str =
    "SELECT op_id, record, scope FROM syncd_applied_ops WHERE op_id = ANY($1::text[])";
/// The batch's records, locked in key order (two batches lock shared
/// records in the same order, so they queue rather than deadlock).
const CURRENT: &str = "SELECT r.collection, r.id, r.record, r.scope FROM syncd_records r \
     JOIN unnest($1::text[], $2::text[]) AS k(collection, id) USING (collection, id) \
     ORDER BY r.collection, r.id FOR UPDATE OF r";
/// New records. No `ON CONFLICT`: an id inserted by a concurrent batch since
/// step 1 is a unique violation, and the batch is run again.
const INSERT_RECORDS: &str = "INSERT INTO syncd_records (collection, id, record, scope) \
     SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[])";
const UPDATE_RECORDS: &str = "UPDATE syncd_records r SET record = u.record, scope = u.scope \
     FROM unnest($1::text[], $2::text[], $3::text[], $4::text[]) AS u(collection, id, record, scope) \
     WHERE r.collection = u.collection AND r.id = u.id";
const REMEMBER: &str = "INSERT INTO syncd_applied_ops (op_id, record, scope, applied_at) \
     SELECT o.op_id, o.record, o.scope, $4 \
     FROM unnest($1::text[], $2::text[], $3::text[]) AS o(op_id, record, scope)";
/// Appends entries (`$1` scopes, `$2` entries, in batch order) to their
/// scopes' feeds: reserves each scope's next `n` sequences by bumping its
/// head (locking the head row until commit), then numbers the scope's
/// entries in batch order from the first reserved one.
const APPEND: &str = "WITH e AS ( \
       SELECT * FROM unnest($1::text[], $2::text[]) WITH ORDINALITY AS e(scope, change, ord)), \
     n AS (SELECT scope, count(*) AS n FROM e GROUP BY scope), \
     h AS ( \
       INSERT INTO syncd_scope_heads AS s (scope, seq) SELECT scope, n FROM n ORDER BY scope \
       ON CONFLICT (scope) DO UPDATE SET seq = s.seq + EXCLUDED.seq \
       RETURNING s.scope, s.seq) \
     INSERT INTO syncd_scope_changes (scope, seq, change) \
     SELECT e.scope, h.seq - n.n + row_number() OVER (PARTITION BY e.scope ORDER BY e.ord), e.change \
     FROM e JOIN n USING (scope) JOIN h USING (scope)";
/// Marks the database as having held users (see
/// [`BackendStore::held_users`](super::store::BackendStore::held_users)).
const RECORD_USERS: &str =
    "INSERT INTO syncd_meta (key, value) VALUES ('users', 1) ON CONFLICT DO NOTHING";

/// Why an apply transaction failed (nothing of it was committed).
#[derive(Debug)]
pub enum ApplyError {
    Pg(tokio_postgres::Error),
    /// A stored value is not the JSON this code writes.
    Corrupt(serde_json::Error),
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
        }
    }
}

impl std::error::Error for ApplyError {
    /// The driver's cause (its own text is already in `Display`).
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ApplyError::Pg(e) => std::error::Error::source(e),
            ApplyError::Corrupt(_) => None,
        }
    }
}

impl ApplyError {
    /// The database could not be reached or went away mid-transaction.
    pub fn is_unavailable(&self) -> bool {
        matches!(self, ApplyError::Pg(e) if super::pg_store::is_unavailable(e))
    }

    /// The failure may come from one op's data rather than from the
    /// database: a stored value that cannot be decoded, or a data or
    /// integrity error (SQLSTATE classes 22 and 23). Group commit runs each
    /// request of a failed group alone on these ([`pg_group`](super::pg_group)).
    pub fn is_data(&self) -> bool {
        match self {
            ApplyError::Corrupt(_) => true,
            ApplyError::Pg(e) => e
                .code()
                .is_some_and(|c| c.code().starts_with("22") || c.code().starts_with("23")),
        }
    }

    /// The whole transaction may simply be run again: a serialization
    /// failure, a deadlock, or a unique violation (a record id or op_id
    /// inserted by a concurrent batch after this one read; see the module
    /// doc).
    pub fn is_retryable(&self) -> bool {
        use tokio_postgres::error::SqlState;
        match self {
            ApplyError::Pg(e) => matches!(
                e.code(),
                Some(c) if *c == SqlState::T_R_SERIALIZATION_FAILURE
                    || *c == SqlState::T_R_DEADLOCK_DETECTED
                    || *c == SqlState::UNIQUE_VIOLATION
            ),
            ApplyError::Corrupt(_) => false,
        }
    }
}

/// One request's part of an apply: its ops, applied in order under its
/// caller until the first that is not applied.
pub struct Job<'a> {
    pub ops: &'a [ValidOp],
    pub caller: &'a Caller,
}

/// What a committed (or rolled back, when nothing was written) apply did.
#[derive(Debug)]
pub struct Applied {
    /// Each job's outcomes, in the order of the jobs.
    pub outcomes: Vec<Vec<Outcome>>,
    /// Whether a feed grew (waiting pulls should look).
    pub appended: bool,
    /// Whether a user's job wrote (`syncd_meta` then says `users`).
    pub users_written: bool,
    /// Statements sent (constant in the batch's size: see the module doc).
    pub statements: usize,
    /// The written scopes' heads after the commit, as announced (empty when
    /// the announcement failed or named no scope: wake everyone).
    pub heads: Vec<(String, u64)>,
}

/// The `(scope, head)` pairs of a [`CHANNEL`] payload; `None` when it names
/// none or is not one this code sends.
pub fn parse_heads(payload: &str) -> Option<Vec<(String, u64)>> {
    let heads: Option<Vec<_>> = payload
        .lines()
        .map(|line| {
            let (scope, seq) = line.split_once(' ')?;
            Some((scope.to_owned(), seq.parse().ok()?))
        })
        .collect();
    heads.filter(|h| !h.is_empty())
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// Runs `jobs` one after another in one transaction on `client` (see the
/// module doc): each job's ops in order, under its caller, until its first
/// op that is not applied. With `record_users`, a user's write also marks
/// `syncd_meta` (`users`).
pub async fn apply(
    client: &mut ClientWrapper,
    jobs: &[Job<'_>],
    record_users: bool,
) -> Result<Applied, ApplyError> {
    let all: Vec<&ValidOp> = jobs.iter().flat_map(|j| j.ops).collect();
    let (remembered, current) = match read(client, &all).await {
        Ok(read) => read,
        Err(e) => return Err(rollback(client, e).await),
    };
    let mut overlay = Overlay {
        remembered,
        current,
    };
    let mut writes = Writes::default();
    let mut outcomes = Vec::with_capacity(jobs.len());
    let mut users_written = false;
    for job in jobs {
        let before = writes.ops.len();
        match overlay.apply_job(job, &mut writes) {
            Ok(out) => outcomes.push(out),
            Err(e) => return Err(rollback(client, e).await),
        }
        users_written |= job.caller.is_user() && writes.ops.len() > before;
    }
    let record_users = record_users && users_written;
    match writes.send(client, &overlay, record_users).await {
        Ok((statements, heads)) => Ok(Applied {
            outcomes,
            appended: !writes.entries.is_empty(),
            users_written,
            statements: statements + READ_STATEMENTS,
            heads,
        }),
        Err(e) => Err(rollback(client, e).await),
    }
}

/// `BEGIN` and the two reads of step 1.
const READ_STATEMENTS: usize = 3;

/// Rolls back whatever is open (ignoring a failure: the connection may be
/// gone, and then the pool drops it) and returns `e`.
async fn rollback(client: &ClientWrapper, e: ApplyError) -> ApplyError {
    if let Err(r) = client.batch_execute("ROLLBACK").await {
        tracing::debug!(error = %r, "rollback after a failed apply");
    }
    e
}

/// A `(collection, id)` key.
type Key = (String, String);

/// Step 1: `BEGIN`, the remembered op_ids and the locked records, in one
/// round trip.
async fn read(
    client: &ClientWrapper,
    ops: &[&ValidOp],
) -> Result<
    (
        HashMap<String, (ServerRecord, String)>,
        HashMap<Key, StoredRecord>,
    ),
    ApplyError,
> {
    let remembered_stmt = client.prepare_cached(REMEMBERED).await?;
    let current_stmt = client.prepare_cached(CURRENT).await?;
    let op_ids: Vec<&str> = ops.iter().map(|o| o.op_id.as_str()).collect();
    let mut keys: Vec<(&str, &str)> = ops
        .iter()
        .filter_map(|o| Some((o.collection.as_str(), o.action.target_id()?)))
        .collect();
    keys.sort_unstable();
    keys.dedup();
    let (colls, ids): (Vec<&str>, Vec<&str>) = keys.into_iter().unzip();
    let remembered_args: [&(dyn ToSql + Sync); 1] = [&op_ids];
    let current_args: [&(dyn ToSql + Sync); 2] = [&colls, &ids];
    // The records first, then the op_ids: each statement has its own
    // snapshot (READ COMMITTED), and a batch that committed an op and its
    // record between the two must be seen as a replay, never as a record
    // that exists without its op (a 409 for the re-sent op itself). Read in
    // this order, whatever the records read saw, the op_ids read sees too.
    let (begin, current, remembered) = tokio::join!(
        client.batch_execute("BEGIN"),
        client.query(&current_stmt, &current_args),
        client.query(&remembered_stmt, &remembered_args),
    );
    begin?;
    let mut by_op = HashMap::new();
    for row in remembered? {
        let op_id: String = row.try_get(0)?;
        let record: String = row.try_get(1)?;
        by_op.insert(op_id, (serde_json::from_str(&record)?, row.try_get(2)?));
    }
    let mut by_key = HashMap::new();
    for row in current? {
        let collection: String = row.try_get(0)?;
        let id: String = row.try_get(1)?;
        let record: String = row.try_get(2)?;
        let stored = StoredRecord {
            collection: collection.clone(),
            record: serde_json::from_str(&record)?,
            scope: row.try_get(3)?,
        };
        by_key.insert((collection, id), stored);
    }
    Ok((by_op, by_key))
}

/// What the database holds as far as this batch knows: the rows read in
/// step 1, with the batch's own results so far on top.
struct Overlay {
    remembered: HashMap<String, (ServerRecord, String)>,
    current: HashMap<Key, StoredRecord>,
}

impl Overlay {
    /// One job's ops in order, until the first that is not applied.
    fn apply_job(
        &mut self,
        job: &Job<'_>,
        writes: &mut Writes,
    ) -> Result<Vec<Outcome>, ApplyError> {
        let mut outcomes = Vec::with_capacity(job.ops.len());
        for op in job.ops {
            let outcome = self.apply_one(op, job.caller, writes)?;
            let stop = !outcome.is_applied();
            outcomes.push(outcome);
            if stop {
                break;
            }
        }
        Ok(outcomes)
    }

    fn apply_one(
        &mut self,
        op: &ValidOp,
        caller: &Caller,
        writes: &mut Writes,
    ) -> Result<Outcome, ApplyError> {
        if let Some((record, scope)) = self.remembered.get(&op.op_id) {
            if let Err(r) = access::replay(caller, &op.op_id, scope) {
                return Ok(Outcome::refused(r));
            }
            return Ok(Outcome::Applied {
                record: present(caller, scope, record.clone()),
                replayed: true,
            });
        }
        let key = op
            .action
            .target_id()
            .map(|id| (op.collection.clone(), id.to_owned()));
        let current = key.as_ref().and_then(|k| self.current.get(k));
        let scope = match access::target_scope(caller, op, current) {
            Ok(scope) => scope,
            Err(r) => return Ok(Outcome::refused(r)),
        };
        let record = match plan(op, current, || ulid::Ulid::generate().to_string()) {
            Plan::Write(record) => {
                let from = current.map(|c| c.scope.clone());
                writes.record(op, &record, from.as_deref(), &scope)?;
                let key = (op.collection.clone(), record.id.clone());
                self.current.insert(
                    key,
                    StoredRecord {
                        collection: op.collection.clone(),
                        record: record.clone(),
                        scope: scope.clone(),
                    },
                );
                record
            }
            Plan::Unchanged(record) => record,
            Plan::Conflict(record) => {
                return Ok(Outcome::Conflict(access::conflict(caller, current, record)))
            }
            Plan::NotFound(reason) => return Ok(Outcome::NotFound(reason)),
        };
        writes.remember(op, &record, &scope)?;
        self.remembered
            .insert(op.op_id.clone(), (record.clone(), scope.clone()));
        Ok(Outcome::Applied {
            record: present(caller, &scope, record),
            replayed: false,
        })
    }
}

/// Step 2's rows, gathered while planning.
#[derive(Default)]
struct Writes {
    /// Keys that were not in the database at step 1 (inserted).
    new: std::collections::HashSet<Key>,
    /// Every key written, in key order (its final state is in the
    /// [`Overlay`]).
    written: std::collections::BTreeSet<Key>,
    /// Feed entries in batch order: `(scope, entry JSON)`.
    entries: Vec<(String, String)>,
    /// Applied op_ids: `(op_id, record JSON, scope)`.
    ops: Vec<(String, String, String)>,
}

impl Writes {
    /// Notes `record` written in scope `to` (moved from `from`, if another).
    fn record(
        &mut self,
        op: &ValidOp,
        record: &ServerRecord,
        from: Option<&str>,
        to: &str,
    ) -> Result<(), ApplyError> {
        let key = (op.collection.clone(), record.id.clone());
        if from.is_none() {
            self.new.insert(key.clone());
        }
        self.written.insert(key);
        let change = serde_json::to_string(&Change {
            collection: op.collection.clone(),
            record: record.clone(),
        })?;
        if let Some(from) = from.filter(|f| *f != to) {
            let gone = serde_json::to_string(&ScopedChange::Gone {
                collection: op.collection.clone(),
                gone: Gone {
                    id: record.id.clone(),
                    version: record.version,
                },
            })?;
            self.entries.push((from.to_owned(), gone));
        }
        self.entries.push((to.to_owned(), change));
        Ok(())
    }

    fn remember(
        &mut self,
        op: &ValidOp,
        record: &ServerRecord,
        scope: &str,
    ) -> Result<(), ApplyError> {
        let json = serde_json::to_string(record)?;
        self.ops.push((op.op_id.clone(), json, scope.to_owned()));
        Ok(())
    }

    /// Step 2: every write, `COMMIT` and the wake-up in one round trip
    /// (`ROLLBACK` when nothing is written). Returns the statements sent
    /// and the announced heads.
    async fn send(
        &self,
        client: &ClientWrapper,
        overlay: &Overlay,
        record_users: bool,
    ) -> Result<(usize, Vec<(String, u64)>), ApplyError> {
        if self.ops.is_empty() {
            client.batch_execute("ROLLBACK").await?;
            return Ok((1, Vec::new()));
        }
        let rows = RecordRows::of(self, overlay)?;
        let applied_at = now_ms();
        // In key order, like the records: two batches inserting the same
        // new keys wait on each other in the same order.
        let mut ops: Vec<&(String, String, String)> = self.ops.iter().collect();
        ops.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        let (op_ids, records, scopes) = columns3(&ops);
        let (entry_scopes, entries): (Vec<&str>, Vec<&str>) = self
            .entries
            .iter()
            .map(|(s, e)| (s.as_str(), e.as_str()))
            .unzip();
        let insert = client.prepare_cached(INSERT_RECORDS).await?;
        let update = client.prepare_cached(UPDATE_RECORDS).await?;
        let remember = client.prepare_cached(REMEMBER).await?;
        let append = client.prepare_cached(APPEND).await?;
        let users = client.prepare_cached(RECORD_USERS).await?;
        let notify_stmt = client.prepare_cached(NOTIFY).await?;
        let mut written: Vec<&str> = entry_scopes.clone();
        written.sort_unstable();
        written.dedup();
        let notify_args: [&(dyn ToSql + Sync); 1] = [&written];
        let (new_args, changed_args) = (rows.new.args(), rows.changed.args());
        let remember_args: [&(dyn ToSql + Sync); 4] = [&op_ids, &records, &scopes, &applied_at];
        let append_args: [&(dyn ToSql + Sync); 2] = [&entry_scopes, &entries];
        let (i, u, r, a, us, commit, notify) = tokio::join!(
            exec_if(client, &insert, &new_args, !rows.new.is_empty()),
            exec_if(client, &update, &changed_args, !rows.changed.is_empty()),
            exec_if(client, &remember, &remember_args, true),
            exec_if(client, &append, &append_args, !entries.is_empty()),
            exec_if(client, &users, &[], record_users),
            client.batch_execute("COMMIT"),
            async {
                if entries.is_empty() {
                    Ok(None)
                } else {
                    client.query_opt(&notify_stmt, &notify_args).await
                }
            },
        );
        i?;
        u?;
        r?;
        a?;
        us?;
        commit?;
        let heads = match notify {
            Ok(Some(row)) => row
                .try_get::<_, String>(0)
                .ok()
                .and_then(|p| parse_heads(&p))
                .unwrap_or_default(),
            Ok(None) => Vec::new(),
            Err(e) => {
                // Committed: only the wake-up is lost; listeners re-check.
                tracing::debug!(error = %e, "NOTIFY after commit failed");
                Vec::new()
            }
        };
        let sent = [
            !rows.new.is_empty(),
            !rows.changed.is_empty(),
            true,
            !entries.is_empty(),
            record_users,
            true,
            !entries.is_empty(),
        ];
        Ok((sent.iter().filter(|s| **s).count(), heads))
    }
}

/// Runs `stmt` when `wanted` (so that a pipeline can leave a statement out).
async fn exec_if(
    client: &ClientWrapper,
    stmt: &tokio_postgres::Statement,
    args: &[&(dyn ToSql + Sync)],
    wanted: bool,
) -> Result<u64, tokio_postgres::Error> {
    if wanted {
        client.execute(stmt, args).await
    } else {
        Ok(0)
    }
}

/// The `(op_id, record, scope)` columns of the applied ops.
fn columns3<'a>(
    rows: &[&'a (String, String, String)],
) -> (Vec<&'a str>, Vec<&'a str>, Vec<&'a str>) {
    let mut a = Vec::with_capacity(rows.len());
    let mut b = Vec::with_capacity(rows.len());
    let mut c = Vec::with_capacity(rows.len());
    for (x, y, z) in rows {
        a.push(x.as_str());
        b.push(y.as_str());
        c.push(z.as_str());
    }
    (a, b, c)
}

/// The `(collection, id, record, scope)` columns of one records statement.
#[derive(Default)]
struct Columns {
    collections: Vec<String>,
    ids: Vec<String>,
    records: Vec<String>,
    scopes: Vec<String>,
}

impl Columns {
    fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    fn args(&self) -> [&(dyn ToSql + Sync); 4] {
        [&self.collections, &self.ids, &self.records, &self.scopes]
    }
}

/// Each written key's final state, split into inserts and updates.
struct RecordRows {
    new: Columns,
    changed: Columns,
}

impl RecordRows {
    fn of(writes: &Writes, overlay: &Overlay) -> Result<RecordRows, ApplyError> {
        let mut rows = RecordRows {
            new: Columns::default(),
            changed: Columns::default(),
        };
        // In key order, as step 1 locked them (see `send`).
        for key in &writes.written {
            // Every written key is in the overlay (written with it).
            let Some(stored) = overlay.current.get(key) else {
                debug_assert!(false, "a written key is missing from the overlay");
                continue;
            };
            let json = serde_json::to_string(&stored.record)?;
            let target = if writes.new.contains(key) {
                &mut rows.new
            } else {
                &mut rows.changed
            };
            target.collections.push(key.0.clone());
            target.ids.push(key.1.clone());
            target.records.push(json);
            target.scopes.push(stored.scope.clone());
        }
        Ok(rows)
    }
}
