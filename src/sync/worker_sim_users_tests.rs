//! The worker simulation with users and scopes (protocol revision 3): the
//! same devices (real store, writer and worker), faults, paused clock and
//! promises as [`super`], against ONE backend in users mode.
//!
//! Each device belongs to one of 2-3 users (two devices may share one);
//! each user has a private scope, and the users share one or two team
//! scopes, one of them read-only for one user. The transport answers
//! `GET v1/session`, `POST v1/pull`, `POST v1/ops` and `POST v1/ops/batch`
//! through the reference backend's own functions ([`Principal::session`],
//! [`pull`]'s `parse_pull`/`readable`/`is_idle`/`pull_reply`,
//! [`handler::op_as`]/[`handler::batch_as`] with a [`Caller`]), and the
//! daemon reads the replies through the HTTP client's own `classify_*`:
//! only sockets and HTTP framing are left out. The access rules are the
//! backend's ([`access`](crate::backend::server::access)), never the test's.
//!
//! The app creates records in private and team scopes, updates them,
//! moves them (a put with another scope), deletes them, and now and then
//! writes into a scope its user may only read. In a third of the seeds a
//! user loses a team scope halfway (its session changes). Per seed:
//! - every device ends with exactly the records of the scopes its user can
//!   read, equal to the server's (data, version, deletion, scope); records
//!   that a dead letter left as this device wrote them (the documented
//!   fate of a refused op: the local change stays) are exempt from the
//!   equality, not from the next rule;
//! - no device holds a record of a scope its user cannot read (after a
//!   revocation: none of the lost scope);
//! - nothing acknowledged is lost: every op the app's writes produced was
//!   applied on the server, dead-lettered, or settled by a conflict
//!   resolution (following its re-sends), unless the write was a delete
//!   that cancelled it; and no op is applied twice;
//! - every dead letter is a refusal for scope reasons (403 with a code,
//!   404 of a record moved out of reach, a revocation) and never reached
//!   the server (except an op applied whose reply was lost, then met by
//!   the revocation of its scope: the device cannot learn that it applied,
//!   and a replay into a scope no longer readable is refused by design);
//!   a write into a scope the user cannot write is never
//!   applied and ends a dead letter (or settled by a conflict).
//!
//! `SYNCD_SIM_USERS_SEED=N` re-runs one seed (`SYNCD_SIM_LOG=1` adds the
//! daemon's log); `SYNCD_SIM_USERS_SEEDS=N` changes the count (default
//! [`DEFAULT_SEEDS`], kept small: the single-user test runs 1,000).

use crate::backend::client::{
    classify_batch, classify_changes, classify_op, classify_pull, classify_session, RawReply,
};
use crate::backend::protocol::{BatchRequest, PullRequest, ScopedChange, Session};
use crate::backend::server::access::Caller;
use crate::backend::server::auth::{Claims, Principal};
use crate::backend::server::handler::{self, no_check, JsonReply};
use crate::backend::server::ops::ValidOp;
use crate::backend::server::pull::{self, CHANGES_IN_USERS_MODE};
use crate::backend::server::store::{ChangeSlice, ScopeSlice, StoreError};
use crate::store::settled::Settled;

use super::*;

/// Seeds of the default run.
const DEFAULT_SEEDS: u64 = 120;

/// The users-mode server is the same [`Server`], reached as the HTTP
/// handler reaches its store: through [`BackendStore`], which records what
/// was applied for the checks.
impl BackendStore for Server {
    fn apply(&self, ops: &[ValidOp]) -> Result<Vec<Outcome>, StoreError> {
        self.store.apply(ops)
    }

    fn content_refs(&self) -> Result<std::collections::HashSet<String>, StoreError> {
        self.store.content_refs()
    }

    fn apply_as(&self, ops: &[ValidOp], caller: &Caller) -> Result<Vec<Outcome>, StoreError> {
        let outcomes = self.store.apply_as(ops, caller)?;
        let who = match caller {
            Caller::User(p) => p.sub.as_str(),
            Caller::Single => "single",
        };
        let mut log = self.log.lock().unwrap();
        for (o, op) in outcomes.iter().zip(ops) {
            let id = match o {
                Outcome::Applied { record, .. } => Some(record.id.clone()),
                Outcome::Conflict(r) => Some(r.id.clone()),
                _ => op.action.target_id().map(str::to_owned),
            };
            if let Some(id) = id {
                log.sent.entry(id).or_default().insert(op.op_id.clone());
            }
            match o {
                Outcome::Applied {
                    replayed: false, ..
                } => *log.fresh.entry(op.op_id.clone()).or_default() += 1,
                Outcome::Conflict(_) => log.conflicts += 1,
                _ => {}
            }
            let line = format!(
                "{who} {} {:?} scope {:?} ts {} -> {o:?}",
                op.op_id, op.action, op.scope, op.client_ts
            );
            tracing::debug!("server: {line}");
            log.trace.push(line);
        }
        Ok(outcomes)
    }

    fn pull(&self, scopes: &[(String, u64)], limit: usize) -> Result<Vec<ScopeSlice>, StoreError> {
        self.store.pull(scopes, limit)
    }

    fn changes(&self, since: u64, limit: usize) -> Result<ChangeSlice, StoreError> {
        self.store.changes(since, limit)
    }

    fn check(&self) -> Result<(), StoreError> {
        self.store.check()
    }

    fn subscribe(&self) -> watch::Receiver<u64> {
        self.store.subscribe()
    }
}

/// Every user's current token, as the server verified it: a revocation
/// replaces one.
struct Users(Mutex<Vec<Principal>>);

impl Users {
    fn of(&self, user: usize) -> Principal {
        self.0.lock().unwrap()[user].clone()
    }
}

/// One device's link in users mode: `link`'s faults and promises, this
/// device's user, and the backend's own endpoint functions.
struct UserLink {
    link: Arc<Link>,
    user: usize,
    users: Arc<Users>,
}

/// `r` read by one of the HTTP client's `classify_*` functions.
fn classified<T>(r: &JsonReply, f: impl FnOnce(&RawReply<'_>) -> T) -> T {
    let mut headers = hyper::HeaderMap::new();
    if let Some(s) = r.retry_after_s {
        headers.insert(hyper::header::RETRY_AFTER, s.into());
    }
    f(&RawReply {
        status: r.status,
        headers: &headers,
        body: &r.body,
    })
}

impl UserLink {
    fn caller(&self) -> Caller {
        Caller::User(self.users.of(self.user))
    }

    /// `POST v1/ops` or `v1/ops/batch` through `f`, with `link`'s faults;
    /// a reply lost after the store was reached is a transient failure.
    async fn ops<T>(
        &self,
        body: Vec<u8>,
        f: fn(&dyn BackendStore, &[u8], handler::Check<'_>, &Caller) -> handler::OpsReply,
        classify: impl FnOnce(&RawReply<'_>) -> Result<T, Failure>,
    ) -> Result<T, Failure> {
        let l = &self.link;
        let r = (|| {
            l.reach()?;
            l.push_gate()?;
            let r = f(&*l.server, &body, &no_check, &self.caller());
            if r.reached_store && l.roll(l.lose_reply) {
                l.server.log.lock().unwrap().lost_replies += 1;
                return Err(transient("sim: connection reset after apply"));
            }
            Ok(r.reply)
        })();
        l.maybe_slow().await;
        classified(&r?, classify)
    }

    /// `POST v1/pull` as the HTTP layer runs it; the wait looks again on a
    /// timer (see [`Link::page`]) with the caller of the request.
    async fn pull_reply(&self, body: &[u8]) -> JsonReply {
        let q = match pull::parse_pull(body) {
            Ok(q) => q,
            Err(r) => return JsonReply::error(r.status, r.reason),
        };
        let caller = self.caller();
        let server = &self.link.server;
        let read = || {
            let scopes = pull::readable(&caller, &q);
            match scopes.is_empty() {
                true => Ok(Vec::new()),
                false => BackendStore::pull(&**server, &scopes, q.limit),
            }
        };
        let deadline = q
            .wait_s
            .map(|s| tokio::time::Instant::now() + Duration::from_secs(s));
        loop {
            let slices = match read() {
                Ok(s) => s,
                Err(e) => return handler::store_error(&e),
            };
            let waiting = deadline.is_some_and(|d| tokio::time::Instant::now() < d);
            if !waiting || !pull::is_idle(&caller, &q, &slices) {
                return pull::pull_reply(&caller, &q, slices);
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

impl Transport for UserLink {
    fn name(&self) -> &str {
        "sim-users"
    }

    fn health(&self) -> BoxFut<'_, Result<Features, Failure>> {
        self.link.health()
    }

    fn apply<'a>(&'a self, op: &'a WireOp) -> BoxFut<'a, Result<OpResult, Failure>> {
        Box::pin(async move {
            let body = serde_json::to_vec(op).map_err(transient)?;
            self.ops(body, handler::op_as, |r| classify_op(op.kind, true, r))
                .await
        })
    }

    fn apply_batch<'a>(&'a self, ops: &'a [WireOp]) -> BoxFut<'a, Result<BatchOutcome, Failure>> {
        Box::pin(async move {
            if !self.link.features.batch {
                return Ok(BatchOutcome::Unsupported);
            }
            let body =
                serde_json::to_vec(&BatchRequest { ops: ops.to_vec() }).map_err(transient)?;
            self.ops(body, handler::batch_as, |r| {
                classify_batch(ops.len(), true, r)
            })
            .await
        })
    }

    fn changes<'a>(
        &'a self,
        _since: Option<&'a str>,
        _limit: u32,
        _wait_s: Option<u32>,
    ) -> BoxFut<'a, Result<ChangesPage, Failure>> {
        // What a users-mode backend answers: its clients pull per scope.
        Box::pin(async move {
            self.link.reach()?;
            classified(
                &JsonReply::error(400, CHANGES_IN_USERS_MODE),
                classify_changes,
            )
        })
    }

    fn session(&self) -> BoxFut<'_, Result<Session, Failure>> {
        Box::pin(async move {
            self.link.reach()?;
            let session = self.users.of(self.user).session();
            classified(&JsonReply::json(200, &session), classify_session)
        })
    }

    fn pull<'a>(
        &'a self,
        req: &'a PullRequest,
    ) -> BoxFut<'a, Result<crate::backend::protocol::PullReply, Failure>> {
        Box::pin(async move {
            self.link.pull_started();
            self.link.reach()?;
            let body = serde_json::to_vec(req).map_err(transient)?;
            let reply = self.pull_reply(&body).await;
            classified(&reply, classify_pull)
        })
    }
}

/// What a users seed sets up.
#[derive(Debug, Clone)]
struct UsersSetup {
    base: Setup,
    users: usize,
    /// Each device's user.
    user_of: Vec<usize>,
    /// Team scopes, each with every user's access: `true` write, `false`
    /// read only.
    teams: Vec<(String, Vec<bool>)>,
    /// At this step, this user loses this scope.
    revoke: Option<(usize, usize, String)>,
}

impl UsersSetup {
    fn of(seed: u64) -> UsersSetup {
        let mut rng = fastrand::Rng::with_seed(seed ^ 0x005c_0be5);
        let strategies = [
            Strategy::ServerWins,
            Strategy::LastWriteWins,
            Strategy::Merge,
            Strategy::Manual,
        ];
        let users = rng.usize(2..=3);
        let devices = rng.usize(users..=4);
        // The first `users` devices cover every user; the others share one.
        let user_of = (0..devices)
            .map(|d| if d < users { d } else { rng.usize(0..users) })
            .collect();
        let n_teams = rng.usize(1..=2);
        let read_only_user = rng.usize(0..users);
        let teams: Vec<(String, Vec<bool>)> = (0..n_teams)
            .map(|t| {
                let access = (0..users)
                    .map(|u| !(u == read_only_user && t == n_teams - 1))
                    .collect();
                (["team-a", "team-b"][t].to_owned(), access)
            })
            .collect();
        let ops_per_device = rng.usize(8..=12);
        let steps = devices * ops_per_device;
        let revoke = (rng.u8(0..3) == 0).then(|| {
            let (name, _) = &teams[rng.usize(0..n_teams)];
            (
                rng.usize(steps / 3..2 * steps / 3),
                rng.usize(0..users),
                name.clone(),
            )
        });
        UsersSetup {
            base: Setup {
                devices,
                ops_per_device,
                records: rng.u64(2..=4),
                strategy: strategies[seed as usize % 4],
                features: Features {
                    scopes: true,
                    batch: rng.bool(),
                    wait: rng.bool(),
                    client_ids: rng.bool(),
                    blobs: false,
                },
                batch_size: [1, 3, 10][rng.usize(0..3)],
                take_local: rng.bool(),
                sealed: seed % 2 == 1,
            },
            users,
            user_of,
            teams,
            revoke,
        }
    }

    /// User `u`'s token, before or after the revocation.
    fn principal(&self, u: usize, revoked: bool) -> Principal {
        let (mut scopes, mut read_scopes) = (Vec::new(), Vec::new());
        for (name, access) in &self.teams {
            let lost = self
                .revoke
                .as_ref()
                .is_some_and(|(_, who, s)| revoked && *who == u && s == name);
            match (lost, access[u]) {
                (true, _) => {}
                (false, true) => scopes.push(name.clone()),
                (false, false) => read_scopes.push(name.clone()),
            }
        }
        Principal::from_claims(Claims {
            sub: format!("u{u}"),
            exp: 4_000_000_000,
            scopes,
            read_scopes,
            aud: None,
            iss: None,
        })
        .unwrap()
    }

    /// Every scope any user ever had.
    fn all_scopes(&self) -> BTreeSet<String> {
        (0..self.users)
            .map(|u| format!("user:u{u}"))
            .chain(self.teams.iter().map(|(n, _)| n.clone()))
            .collect()
    }
}

/// One acknowledged app write.
#[derive(Debug, Clone)]
struct UWrite {
    device: usize,
    id: String,
    op_id: String,
    step: usize,
    delete: bool,
    /// The scope asked for (a put's create or move target).
    scope: Option<String>,
    /// Asked for a scope the user may not write: must never apply.
    denied: bool,
}

/// The app: creates, patches, moves and deletes, in private and team
/// scopes, with pauses while sync runs; the revocation at its step.
async fn script(seed: u64, setup: &UsersSetup, users: &Users, devices: &[Device]) -> Vec<UWrite> {
    let base = &setup.base;
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut writes = Vec::new();
    for step in 0..base.devices * base.ops_per_device {
        if let Some((at, u, scope)) = &setup.revoke {
            if *at == step {
                tracing::debug!("sim: user u{u} loses scope {scope}");
                users.0.lock().unwrap()[*u] = setup.principal(*u, true);
            }
        }
        let d = rng.usize(0..base.devices);
        let u = setup.user_of[d];
        let p = users.of(u);
        let pool = match base.features.client_ids {
            true => format!("u{u}r{}", rng.u64(0..base.records)),
            false => format!("d{d}r{}", rng.u64(0..base.records)),
        };
        let id = match base.features.client_ids && rng.bool() {
            true => {
                let (live, _) = devices[d]
                    .store
                    .list(COLL, None, 10_000, usize::MAX)
                    .unwrap();
                match live.is_empty() {
                    true => pool,
                    false => live[rng.usize(0..live.len())].id.clone(),
                }
            }
            false => pool,
        };
        let ts = 1_000 + step as i64;
        let pick = rng.u8(0..10);
        let mut scope = None;
        let cmd = match pick {
            0 => WriteCmd::Delete {
                collection: COLL.into(),
                id: id.clone(),
                client_ts: ts,
            },
            1..=4 => WriteCmd::Patch {
                collection: COLL.into(),
                id: id.clone(),
                data: obj(json!({format!("k{}", rng.u8(0..3)): format!("d{d}s{step}")})),
                client_ts: ts,
                max_bytes: 1 << 20,
            },
            _ => {
                if rng.u8(0..3) != 0 {
                    let readable: Vec<&String> = p.read.iter().collect();
                    scope = Some(readable[rng.usize(0..readable.len())].clone());
                }
                WriteCmd::Put {
                    collection: COLL.into(),
                    id: Some(id.clone()),
                    data: obj(json!({"v": format!("d{d}s{step}"), "k0": step})),
                    client_ts: ts,
                    scope: scope.clone(),
                }
            }
        };
        let denied = scope.as_ref().is_some_and(|s| !p.write.contains(s));
        match devices[d].writer.submit(cmd).await {
            Ok(WriteOutcome::Written { op_id, .. }) => {
                let dev = &devices[d];
                let waiter = wait_left(dev.store.clone(), dev.writer.settled(), op_id.clone());
                dev.waiters.lock().unwrap().push(tokio::spawn(waiter));
                writes.push(UWrite {
                    device: d,
                    id,
                    op_id,
                    step,
                    delete: pick == 0,
                    scope,
                    denied,
                });
            }
            Err(WriteError::NotFound { .. }) => {}
            other => panic!("seed {seed}: write failed: {other:?}"),
        }
        if rng.u8(0..8) == 0 {
            let dev = &devices[rng.usize(0..base.devices)];
            let now = tokio::time::Instant::now();
            dev.link.promises.lock().unwrap().wakes.push(now);
            dev.control.wake();
        }
        if rng.u8(0..3) == 0 {
            tokio::time::sleep(Duration::from_millis(rng.u64(0..400))).await;
        }
    }
    writes
}

/// The server's records as the scopes' feeds end them (each record's
/// newest entry over every feed), and how many moves (`gone` entries) the
/// feeds hold.
fn server_records(
    server: &Server,
    scopes: &BTreeSet<String>,
) -> (BTreeMap<String, ServerRecord>, u64) {
    let mut out: BTreeMap<String, ServerRecord> = BTreeMap::new();
    let mut moves = 0;
    for s in scopes {
        let mut since = 0;
        loop {
            let mut slices = server.store.pull(&[(s.clone(), since)], 1000).unwrap();
            let slice = slices.pop().unwrap();
            for (seq, ch) in slice.entries {
                since = seq;
                match ch {
                    ScopedChange::Record { record, .. } => {
                        if out
                            .get(&record.id)
                            .is_none_or(|r| r.version < record.version)
                        {
                            out.insert(record.id.clone(), record);
                        }
                    }
                    ScopedChange::Gone { .. } => moves += 1,
                }
            }
            if !slice.more {
                break;
            }
        }
    }
    (out, moves)
}

/// The local ids, and their server ids, of the records a dead letter on
/// this device left as the device wrote them.
fn dead_records(d: &Device) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for (_, dl) in d.store.dead_letters().unwrap() {
        let rec = d.store.record(COLL, &dl.op.local_id).unwrap();
        out.extend(rec.and_then(|r| r.server_id));
        out.insert(dl.op.local_id);
    }
    out
}

/// Where a device differs from what its user may read on the server:
/// `(device, what)`.
fn divergences(
    setup: &UsersSetup,
    server: &Server,
    users: &Users,
    devices: &[Device],
) -> Vec<(usize, String)> {
    let (records, _) = server_records(server, &setup.all_scopes());
    let mut out = Vec::new();
    for (i, d) in devices.iter().enumerate() {
        let p = users.of(setup.user_of[i]);
        let dead = dead_records(d);
        let (local, _) = d.store.list(COLL, None, 10_000, usize::MAX).unwrap();
        let mut held = BTreeSet::new();
        for r in &local {
            match (&r.scope, &r.server_id) {
                (Some(s), _) if !p.read.contains(s) => {
                    out.push((i, format!("{} held in unreadable scope {s}", r.id)));
                    continue;
                }
                (None, Some(_)) => out.push((i, format!("{} synced without a scope", r.id))),
                (None, None) if !dead.contains(&r.id) => {
                    out.push((i, format!("{} local only, not a dead letter", r.id)))
                }
                _ => {}
            }
            let Some(sid) = &r.server_id else { continue };
            if !held.insert(sid.clone()) {
                out.push((i, format!("{sid} held twice")));
            }
            if dead.contains(&r.id) {
                continue;
            }
            let same = records.get(sid).is_some_and(|s| {
                !s.deleted
                    && r.data.0 == Value::Object(s.data.clone())
                    && r.version == Some(s.version)
                    && r.scope == s.scope
            });
            if !same {
                out.push((i, format!("{} ({sid}) differs from the server", r.id)));
            }
        }
        for (id, s) in records.iter().filter(|(_, s)| !s.deleted) {
            let readable = s.scope.as_ref().is_some_and(|sc| p.read.contains(sc));
            if readable && !held.contains(id) && !dead.contains(id) {
                out.push((i, format!("{id} in {:?} missing", s.scope)));
            }
        }
    }
    out
}

/// What one users seed did, for the totals.
#[derive(Default)]
struct UsersRan {
    scope_denied: u64,
    moves: u64,
    revoked: u64,
    conflicts: u64,
}

/// Whether op `op_id` of `d` came to an end the app can see: applied once
/// on the server, a dead letter, or settled by a conflict resolution (then
/// what its re-send came to). `None`: it vanished.
fn fate(d: &Device, fresh: &BTreeMap<String, u32>, op_id: &str) -> Option<String> {
    let mut op_id = op_id.to_owned();
    for _ in 0..100 {
        if fresh.contains_key(&op_id) {
            return Some("applied".into());
        }
        match d.store.op_state(&op_id).unwrap() {
            OpState::DeadLettered(reason) => return Some(format!("dead: {reason}")),
            OpState::Queued | OpState::Parked => return Some("still queued".into()),
            _ => {}
        }
        match d.store.settled(&op_id).unwrap() {
            Some(Settled {
                resent_as: Some(next),
                ..
            }) => op_id = next,
            Some(s) => return Some(format!("settled: {:?}", s.result)),
            None => return None,
        }
    }
    Some("re-sent too often".into())
}

/// The checks after the devices converged (see the module doc).
fn check(
    seed: u64,
    setup: &UsersSetup,
    (server, devices): (&Server, &[Device]),
    writes: &[UWrite],
) -> UsersRan {
    let mut ran = UsersRan::default();
    let log = server.log.lock().unwrap();
    for (i, d) in devices.iter().enumerate() {
        let report = d.store.check_invariants().unwrap();
        assert!(
            report.is_clean(),
            "seed {seed}: device {i}: store invariants broken: {:#?}",
            report.problems
        );
        assert_eq!(d.store.queue_depth().unwrap(), 0, "seed {seed}: device {i}");
        assert_eq!(
            d.store.conflict_count().unwrap(),
            0,
            "seed {seed}: device {i}"
        );
        for (_, dl) in d.store.dead_letters().unwrap() {
            let e = &dl.error;
            let scoped = e.contains("HTTP 403 (scope_denied)")
                || e.contains("HTTP 403 (id_taken)")
                || e.contains("HTTP 404")
                || e.starts_with("no write access to scope ")
                || e.contains("depends on dead-lettered op");
            assert!(
                scoped,
                "seed {seed}: device {i}: a dead letter not for scopes: {dl:?}"
            );
            // The one exception, a limit of the protocol: an op applied
            // whose reply was lost, then met by the revocation of its
            // scope, is dead-lettered by the session (or refused on replay,
            // which by design does not say it was applied).
            let revoked = e.ends_with("(revoked)")
                || e.contains("was applied to a record this token cannot read");
            assert!(
                revoked || !log.fresh.contains_key(&dl.op.op_id),
                "seed {seed}: device {i}: dead letter {} was applied on the server",
                dl.op.op_id
            );
            ran.scope_denied += u64::from(e.contains("scope_denied"));
            ran.revoked += u64::from(e.starts_with("no write access to scope "));
        }
    }
    for (op_id, n) in &log.fresh {
        assert_eq!(*n, 1, "seed {seed}: op {op_id} applied {n} times");
    }
    let (records, moves) = server_records(server, &setup.all_scopes());
    ran.moves = moves;
    ran.conflicts = log.conflicts;
    for (id, r) in &records {
        let sent = log.sent.get(id).map_or(0, |s| s.len()) as u64;
        assert!(
            r.version <= sent,
            "seed {seed}: {id} at version {} from {sent} ops",
            r.version
        );
    }
    // Each op by its newest write: writes fold into a queued op and share
    // its op_id, and a delete may cancel an unsent create.
    let mut last: BTreeMap<(usize, &str), &UWrite> = BTreeMap::new();
    for w in writes.iter().filter(|w| !w.op_id.is_empty()) {
        last.insert((w.device, &w.op_id), w);
    }
    for w in writes {
        let d = &devices[w.device];
        let newest = last.get(&(w.device, w.op_id.as_str())).copied();
        let superseded = newest.is_some_and(|n| n.step != w.step);
        let end = fate(d, &log.fresh, &w.op_id);
        let cancelled = newest.is_some_and(|n| n.delete);
        assert!(
            end.is_some() || cancelled || w.op_id.is_empty(),
            "seed {seed}: {w:?}: its op neither applied, dead nor settled"
        );
        // A later write of the record that asks for a scope (or deletes
        // it) takes over a refused move when a conflict resolution folds
        // them into one re-send ("the last scope asked for").
        let overridden = writes.iter().any(|l| {
            l.device == w.device
                && l.id == w.id
                && l.step > w.step
                && (l.scope.is_some() || l.delete)
        });
        if w.denied && !superseded && !overridden {
            let end = end.unwrap_or_default();
            assert!(
                end.starts_with("dead: ") || end.starts_with("settled: "),
                "seed {seed}: device {} {}: a write into {:?}, which its user cannot write, ended {end:?}",
                w.device,
                w.id,
                w.scope
            );
        }
    }
    ran
}

/// Runs one users seed.
async fn run(seed: u64) -> UsersRan {
    fastrand::seed(seed);
    let setup = UsersSetup::of(seed);
    let base = &setup.base;
    let dir = match scratch_root() {
        Some(root) => tempfile::tempdir_in(root).unwrap(),
        None => tempfile::tempdir().unwrap(),
    };
    let server = Arc::new(Server {
        store: RedbStore::open(&dir.path().join("server")).unwrap(),
        log: Mutex::default(),
    });
    let users = Arc::new(Users(Mutex::new(
        (0..setup.users)
            .map(|u| setup.principal(u, false))
            .collect(),
    )));
    let devices: Vec<Device> = (0..base.devices)
        .map(|i| {
            let link = Arc::new(Link {
                device: i,
                server: server.clone(),
                rng: Mutex::new(fastrand::Rng::with_seed(seed.wrapping_mul(37) + i as u64)),
                features: base.features,
                down: 25,
                fail_before: 25,
                lose_reply: 35,
                slow_reply: 40,
                busy: 6,
                forbidden: 3,
                promises: Mutex::default(),
            });
            let transport: Arc<dyn Transport> = Arc::new(UserLink {
                link: link.clone(),
                user: setup.user_of[i],
                users: users.clone(),
            });
            start_device_on(
                &dir.path().join(format!("device{i}")),
                base,
                link,
                transport,
            )
        })
        .collect();
    let writes = script(seed, &setup, &users, &devices).await;
    drain(seed, &devices).await;
    if base.strategy == Strategy::Manual {
        resolve_parked(seed, base, &devices).await;
    }
    let mut left = divergences(&setup, &server, &users, &devices);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(600);
    while !left.is_empty() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(500)).await;
        left = divergences(&setup, &server, &users, &devices);
    }
    let report = |devices: &[Device]| {
        for (i, d) in devices.iter().enumerate() {
            let (l, _) = d.store.list(COLL, None, 10_000, usize::MAX).unwrap();
            let dead = d.store.dead_letters().unwrap();
            eprintln!("seed {seed} device {i}: dead {dead:?}, records {l:?}");
        }
        for w in &writes {
            eprintln!("seed {seed} write {w:?}");
        }
        for line in &server.log.lock().unwrap_or_else(|p| p.into_inner()).trace {
            eprintln!("seed {seed} server {line}");
        }
    };
    if !left.is_empty() {
        report(&devices);
        panic!("seed {seed}: devices never converged {left:?}");
    }
    check_promises(seed, &devices).await;
    for d in &devices {
        let _ = d.stop.send(true);
    }
    let checked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        check(seed, &setup, (&server, &devices), &writes)
    }));
    let ran = match checked {
        Ok(ran) => ran,
        Err(e) => {
            report(&devices);
            std::panic::resume_unwind(e);
        }
    };
    for d in devices {
        let _ = d.worker.await;
    }
    ran
}

fn run_seeds(seeds: impl Iterator<Item = u64>) -> UsersRan {
    let mut total = UsersRan::default();
    for seed in seeds {
        let rt = seed_runtime();
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| rt.block_on(run(seed))));
        match r {
            Ok(ran) => {
                total.scope_denied += ran.scope_denied;
                total.moves += ran.moves;
                total.revoked += ran.revoked;
                total.conflicts += ran.conflicts;
            }
            Err(e) => {
                eprintln!(
                    "FAILED users seed {seed} ({:?}); re-run it alone with SYNCD_SIM_USERS_SEED={seed}",
                    UsersSetup::of(seed)
                );
                std::panic::resume_unwind(e);
            }
        }
    }
    total
}

#[test]
fn users_devices_converge_through_scope_moves_and_refusals() {
    if let Some(seed) = std::env::var("SYNCD_SIM_USERS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
    {
        let _log = std::env::var_os("SYNCD_SIM_LOG").map(|_| {
            let sub = tracing_subscriber::fmt()
                .with_max_level(tracing::Level::DEBUG)
                .with_ansi(false)
                .without_time()
                .with_test_writer()
                .finish();
            tracing::subscriber::set_default(sub)
        });
        run_seeds(std::iter::once(seed));
        return;
    }
    let seeds: u64 = std::env::var("SYNCD_SIM_USERS_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(DEFAULT_SEEDS);
    let t = run_seeds(0..seeds);
    eprintln!(
        "{seeds} users seeds: {} scope_denied dead letters, {} moves, {} ops dead-lettered by revocation, {} conflicts",
        t.scope_denied, t.moves, t.revoked, t.conflicts
    );
    assert!(
        t.scope_denied >= seeds / 2,
        "too few scope refusals: {}",
        t.scope_denied
    );
    assert!(t.moves >= seeds, "too few moves: {}", t.moves);
    assert!(
        t.conflicts >= seeds / 2,
        "too few conflicts: {}",
        t.conflicts
    );
}
