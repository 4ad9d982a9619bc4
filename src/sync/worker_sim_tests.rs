//! Several devices — each the real store, writer and sync worker — against
//! ONE simulated backend: the reference backend's own storage and rules
//! ([`RedbStore`] + `plan`), reached through a [`Transport`] per device that
//! fails on purpose (unreachable, 503 before applying, and the lost reply:
//! applied, then no answer). No sockets, no HTTP.
//!
//! The devices edit overlapping records concurrently, so the server answers
//! 409s and each conflict strategy (rotated by seed) decides them; under
//! `manual` the parked conflicts are resolved at the end. Per seed it checks
//! what the daemon promises: every device and the server end with the same
//! records (data, version, deletion), nothing acknowledged is lost, and no
//! op is applied twice.
//!
//! A seed replays exactly ([`a_seed_replays_exactly`] checks it): time is
//! tokio's paused clock on a single-threaded runtime (`start_paused`), so
//! backoffs, pull intervals and the app's pauses cost no wall time; every
//! random choice (the app's script, each device's faults, the workers'
//! backoff jitter) comes from the seed; each device's writer runs as a task
//! on that runtime ([`crate::store::writer::spawn_task`]), not on its own
//! thread, so a commit happens at a fixed point of the schedule; the
//! workers choose between ready wake-ups in a fixed order (`biased`), and
//! the simulated server's waiting pull looks again on a timer rather than
//! through a `watch` channel (whose wake-up order tokio randomises). The
//! stores live on tmpfs (`/dev/shm`) when there is one so commits are
//! short, and `Cargo.toml` builds redb optimised in test builds (a debug
//! redb made a seed 5-8 times slower). A failure prints the seed, its
//! setup, every write and the server's decisions; `SYNCD_SIM_SEED=N` re-runs
//! that seed alone (`SYNCD_SIM_LOG=1` adds the daemon's debug log), and
//! `SYNCD_SIM_SEEDS=N` changes the count (default 1,000, two threads).
//!
//! Per seed it also checks the worker's timing promises (issue 30): no push
//! before a 429's `Retry-After` nor within `backoff_max_ms` of a 403 (the
//! link refuses pushes now and then, while pulls go on), every `sync` the
//! app makes is followed by a pull that started after it, and every
//! write's op, once it has left the queue by whatever path, has answered
//! a waiter that waits on the writer's `settled` signal alone, as
//! `wait_synced` does ([`check_promises`]).
//!
//! Two defects it found, each now a writer test of its own: under
//! last-write-wins a later write queued behind another record's op was
//! sent although the server's change was newer
//! (`last_write_wins_drops_a_tail_older_than_the_server`), and a change
//! pulled while a delete was pending was lost when the delete was confirmed
//! (`a_pulled_change_newer_than_a_delete_ack_is_taken_after_it`).
//!
//! [`users`] runs the same machinery against a backend in users mode
//! (protocol revision 3: users, scopes, moves, refusals, revocation).

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};
use tokio::sync::{broadcast, watch, Notify};

use crate::backend::client::{BatchOutcome, Failure, OpResult};
use crate::backend::protocol::{Change, ChangesPage, Features, ServerRecord, WireOp};
use crate::backend::server::ops::parse_op;
use crate::backend::server::redb_store::RedbStore;
use crate::backend::server::store::{BackendStore, Outcome};
use crate::config::Config;
use crate::domain::conflict::Strategy;
use crate::domain::{Side, WriteError};
use crate::store::writer::{spawn_task as spawn_writer, WriteCmd, WriteOutcome, WriterHandle};
use crate::store::{parse_doc_text, OpState, Store};
use crate::sync::transport::{BoxFut, Transport};
use crate::sync::worker::{spawn, WorkerDeps};
use crate::sync::SyncControl;

const COLL: &str = "c";

/// Deletes a conflict resolution had already overruled when read back.
static SUPERSEDED_DELETES: AtomicU64 = AtomicU64::new(0);

/// What the server saw: the ops sent per record and the fresh (not
/// replayed) applications per op_id.
#[derive(Default)]
struct Log {
    sent: BTreeMap<String, BTreeSet<String>>,
    fresh: BTreeMap<String, u32>,
    /// 409s answered, and replies lost after an apply: the test shows it
    /// reached what it is about.
    conflicts: u64,
    lost_replies: u64,
    /// Every op the server decided, in order, for a failure's report.
    trace: Vec<String>,
}

/// The shared simulated server.
struct Server {
    store: RedbStore,
    log: Mutex<Log>,
}

impl Server {
    fn apply(&self, device: usize, ops: &[WireOp]) -> Result<Vec<OpResult>, Failure> {
        let mut valid = Vec::new();
        for op in ops {
            let body = serde_json::to_vec(op).map_err(transient)?;
            match parse_op(&body) {
                Ok(v) => valid.push(v),
                Err(r) => {
                    return Ok(vec![OpResult::Rejected {
                        status: r.status,
                        reason: r.reason,
                    }])
                }
            }
        }
        let outcomes = self.store.apply(&valid).map_err(transient)?;
        let mut log = self.log.lock().unwrap();
        for (o, op) in outcomes.iter().zip(ops) {
            // Keyed by the server's id: a create without a client id gets
            // its id here.
            let id = match o {
                Outcome::Applied { record, .. } => Some(record.id.clone()),
                Outcome::Conflict(r) => Some(r.id.clone()),
                Outcome::NotFound(_) => op.id.clone(),
                // A single-tenant store refuses nothing by scope.
                Outcome::Refused(_) => unreachable!("no scopes in the simulation"),
            };
            let id = id.unwrap_or_else(|| op.local_id.clone());
            log.sent.entry(id).or_default().insert(op.op_id.clone());
        }
        Ok(outcomes
            .into_iter()
            .zip(ops)
            .map(|(o, op)| {
                let line = format!(
                    "dev{device} {:?} {:?} base {:?} ts {} {:?} -> {:?}",
                    op.kind, op.id, op.base_version, op.client_ts, op.data, o
                );
                tracing::debug!("server: {line}");
                log.trace.push(line);
                o
            })
            .collect::<Vec<_>>()
            .into_iter()
            .zip(ops)
            .map(|(o, op)| match o {
                Outcome::Applied { record, replayed } => {
                    if !replayed {
                        *log.fresh.entry(op.op_id.clone()).or_default() += 1;
                    }
                    OpResult::Applied(record)
                }
                Outcome::Conflict(r) => {
                    log.conflicts += 1;
                    OpResult::Conflict(r)
                }
                Outcome::NotFound(reason) => OpResult::Rejected {
                    status: 404,
                    reason,
                },
                Outcome::Refused(_) => unreachable!("no scopes in the simulation"),
            })
            .collect())
    }

    /// The latest record per id, from the change log.
    fn records(&self) -> BTreeMap<String, ServerRecord> {
        let mut out = BTreeMap::new();
        let mut since = 0;
        loop {
            let slice = self.store.changes(since, 1000).unwrap();
            for (s, ch) in slice.entries {
                since = s;
                out.insert(ch.record.id.clone(), ch.record);
            }
            if !slice.more {
                return out;
            }
        }
    }
}

fn transient(e: impl std::fmt::Display) -> Failure {
    Failure::Transient {
        reason: e.to_string(),
        retry_after_ms: None,
    }
}

/// One device's link to the server, with its own seeded misfortune.
struct Link {
    device: usize,
    server: Arc<Server>,
    rng: Mutex<fastrand::Rng>,
    features: Features,
    /// Probabilities (out of 256) per request.
    down: u8,
    fail_before: u8,
    lose_reply: u8,
    /// A reply that takes a while (applied or not): meanwhile the other
    /// devices write and pulls arrive, so an ack or a 409 can name an
    /// older version than one this device already pulled.
    slow_reply: u8,
    /// A push refused with 429 and a `Retry-After`, or with 403.
    busy: u8,
    forbidden: u8,
    /// What the device was told, for the invariants (see [`Promises`]).
    promises: Mutex<Promises>,
}

/// The worker's timing promises, checked at every request of one device:
/// no push before a `Retry-After` floor, none in `auth_error` before
/// `backoff_max_ms` has passed (the simulation never changes the token),
/// and every `sync` followed by a pull that starts after it.
#[derive(Default)]
struct Promises {
    /// No push before this (a 429's floor, a 403's wait).
    no_push_before: Option<(tokio::time::Instant, &'static str)>,
    /// `sync` requests not yet followed by a pull that started after them.
    wakes: Vec<tokio::time::Instant>,
    /// Pulls that started after a `sync`: the count of wakes served.
    wakes_served: u64,
    /// Pushes refused with 429 or 403.
    refused: u64,
    /// A push came before its floor: what and when.
    broken: Vec<String>,
}

/// The sim's `backoff_max_ms` (see `start_device`).
const SIM_BACKOFF_MAX_MS: u64 = 5_000;

impl Link {
    fn roll(&self, p: u8) -> bool {
        self.rng.lock().unwrap().u8(..) < p
    }

    fn reach(&self) -> Result<(), Failure> {
        if self.roll(self.down) {
            return Err(Failure::Unreachable {
                reason: "sim: network down".into(),
            });
        }
        if self.roll(self.fail_before) {
            return Err(Failure::Transient {
                reason: "sim: HTTP 503".into(),
                retry_after_ms: None,
            });
        }
        Ok(())
    }

    async fn maybe_slow(&self) {
        if self.roll(self.slow_reply) {
            let ms = self.rng.lock().unwrap().u64(20..800);
            tokio::time::sleep(Duration::from_millis(ms)).await;
        }
    }

    /// Checks the floors, then maybe refuses the push with 429 or 403.
    fn push_gate(&self) -> Result<(), Failure> {
        let now = tokio::time::Instant::now();
        let mut p = self.promises.lock().unwrap();
        if let Some((until, why)) = p.no_push_before {
            // The worker's clock counts whole ms: 1 ms of slack.
            if now + Duration::from_millis(1) < until {
                let early = until - now;
                p.broken
                    .push(format!("a push {early:?} before the end of a {why}"));
            }
        }
        if self.roll(self.busy) {
            let ms = self.rng.lock().unwrap().u64(200..3_000);
            p.no_push_before = Some((now + Duration::from_millis(ms), "429 Retry-After"));
            p.refused += 1;
            return Err(Failure::Transient {
                reason: "sim: HTTP 429".into(),
                retry_after_ms: Some(ms),
            });
        }
        if self.roll(self.forbidden) {
            let wait = Duration::from_millis(SIM_BACKOFF_MAX_MS);
            p.no_push_before = Some((now + wait, "403 auth error"));
            p.refused += 1;
            return Err(Failure::Auth {
                reason: "sim: HTTP 403".into(),
            });
        }
        Ok(())
    }

    /// A pull starts: every `sync` made before it (in program order: the
    /// runtime has one thread) is served.
    fn pull_started(&self) {
        let mut p = self.promises.lock().unwrap();
        p.wakes_served += p.wakes.len() as u64;
        p.wakes.clear();
    }

    fn apply_ops(&self, ops: &[WireOp]) -> Result<Vec<OpResult>, Failure> {
        self.reach()?;
        self.push_gate()?;
        let results = self.server.apply(self.device, ops)?;
        if self.roll(self.lose_reply) {
            self.server.log.lock().unwrap().lost_replies += 1;
            return Err(transient("sim: connection reset after apply"));
        }
        Ok(results)
    }

    /// A page after `since`; with `wait`, held until the log moves.
    ///
    /// The wait looks again every few (simulated) milliseconds instead of
    /// subscribing to the store's `watch` channel: a `watch` wakes its
    /// receivers in an order tokio picks at random, and the devices' pulls
    /// would then run in a different order on each run of a seed.
    async fn page(&self, since: u64, limit: u32, wait: Option<u32>) -> ChangesPage {
        let read = || self.server.store.changes(since, limit as usize).unwrap();
        let mut slice = read();
        if let (true, Some(w)) = (slice.entries.is_empty(), wait) {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(w.into());
            while slice.entries.is_empty() && tokio::time::Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(5)).await;
                slice = read();
            }
        }
        let cursor = slice.entries.last().map(|(s, _)| *s).unwrap_or(since);
        ChangesPage {
            changes: slice
                .entries
                .into_iter()
                .map(|(_, c): (u64, Change)| c)
                .collect(),
            cursor: cursor.to_string(),
            more: slice.more,
        }
    }
}

impl Transport for Link {
    fn name(&self) -> &str {
        "sim"
    }

    fn health(&self) -> BoxFut<'_, Result<Features, Failure>> {
        Box::pin(async move {
            if self.roll(self.down) {
                return Err(Failure::Unreachable {
                    reason: "sim: network down".into(),
                });
            }
            Ok(self.features)
        })
    }

    fn apply<'a>(&'a self, op: &'a WireOp) -> BoxFut<'a, Result<OpResult, Failure>> {
        Box::pin(async move {
            let r = self.apply_ops(std::slice::from_ref(op));
            self.maybe_slow().await;
            r?.pop().ok_or_else(|| transient("sim: empty"))
        })
    }

    fn apply_batch<'a>(&'a self, ops: &'a [WireOp]) -> BoxFut<'a, Result<BatchOutcome, Failure>> {
        Box::pin(async move {
            if !self.features.batch {
                return Ok(BatchOutcome::Unsupported);
            }
            let r = self.apply_ops(ops);
            self.maybe_slow().await;
            r.map(BatchOutcome::Results)
        })
    }

    fn changes<'a>(
        &'a self,
        since: Option<&'a str>,
        limit: u32,
        wait_s: Option<u32>,
    ) -> BoxFut<'a, Result<ChangesPage, Failure>> {
        Box::pin(async move {
            self.pull_started();
            self.reach()?;
            let since: u64 = since.and_then(|s| s.parse().ok()).unwrap_or(0);
            Ok(self.page(since, limit, wait_s).await)
        })
    }
}

/// What a seed sets up.
#[derive(Debug, Clone)]
struct Setup {
    devices: usize,
    ops_per_device: usize,
    records: u64,
    strategy: Strategy,
    features: Features,
    batch_size: u32,
    /// Manual resolutions take the local side (else the server's).
    take_local: bool,
    /// The devices' stores are encrypted at rest (every other run of the
    /// four strategies), so every writer path reads and writes sealed
    /// values and the invariants are checked on them.
    sealed: bool,
}

impl Setup {
    fn of(seed: u64) -> Setup {
        let mut rng = fastrand::Rng::with_seed(seed ^ 0x5e75);
        let strategies = [
            Strategy::ServerWins,
            Strategy::LastWriteWins,
            Strategy::Merge,
            Strategy::Manual,
        ];
        Setup {
            devices: rng.usize(2..=3),
            ops_per_device: rng.usize(8..=14),
            records: rng.u64(2..=5),
            strategy: strategies[seed as usize % 4],
            features: Features {
                scopes: false,
                batch: rng.bool(),
                wait: rng.bool(),
                client_ids: rng.bool(),
                blobs: false,
            },
            batch_size: [1, 3, 10][rng.usize(0..3)],
            take_local: rng.bool(),
            sealed: (seed / 4) % 2 == 1,
        }
    }
}

/// One device: a real store, writer and worker.
struct Device {
    store: Store,
    writer: WriterHandle,
    control: Arc<SyncControl>,
    link: Arc<Link>,
    /// One task per acknowledged write, ending once its op has left the
    /// queue (see [`wait_left`]).
    waiters: Mutex<Vec<tokio::task::JoinHandle<()>>>,
    stop: watch::Sender<bool>,
    worker: tokio::task::JoinHandle<()>,
    _config: watch::Sender<Arc<Config>>,
}

fn scratch_root() -> Option<PathBuf> {
    let shm = PathBuf::from("/dev/shm");
    shm.is_dir().then_some(shm)
}

fn start_device(dir: &std::path::Path, setup: &Setup, link: Arc<Link>) -> Device {
    let transport: Arc<dyn Transport> = link.clone();
    start_device_on(dir, setup, link, transport)
}

/// [`start_device`] with another transport in front of `link` (the users
/// simulation's, which keeps `link`'s faults and promises).
fn start_device_on(
    dir: &std::path::Path,
    setup: &Setup,
    link: Arc<Link>,
    transport: Arc<dyn Transport>,
) -> Device {
    let vault = match setup.sealed {
        true => crate::store::crypt::Vault::sealed(crate::store::crypt::Key::random().unwrap()),
        false => Ok(crate::store::crypt::Vault::Plain),
    };
    let store = Store::open_with(dir, 4 << 20, vault.unwrap()).unwrap();
    // Every batch then also checks the indexes (invariant 14).
    crate::store::index::seed_ready(&store, &crate::store::index::test_declared()).unwrap();
    let (events, _) = broadcast::channel(1024);
    let queue_changed = Arc::new(Notify::new());
    let writer = spawn_writer(store.clone(), events, queue_changed.clone()).unwrap();
    let mut cfg = Config::default();
    cfg.sync.backoff_initial_ms = 100;
    cfg.sync.backoff_max_ms = 5_000;
    cfg.sync.pull_interval_s = 2;
    cfg.sync.wait_s = 10;
    cfg.sync.batch_size = setup.batch_size;
    cfg.sync.conflict = setup.strategy;
    // Kept in the device: a dropped sender would read as a config change.
    let (config, cfg_rx) = watch::channel(Arc::new(cfg));
    let control = SyncControl::new(false);
    let (stop, stop_rx) = watch::channel(false);
    let worker = spawn(WorkerDeps {
        store: store.clone(),
        writer: writer.clone(),
        config: cfg_rx,
        control: control.clone(),
        queue_changed,
        shutdown: stop_rx,
        connector: Some(Arc::new(move |_: &Config| Some(transport.clone()))),
        metrics: Default::default(),
        watch_network: false,
        reads: crate::sync::reads::ReadMode::Inline,
        transfers: crate::sync::attachments::Transfers::new(
            store.seal_blobs(
                crate::store::blobs::BlobDir::open(
                    store.path().parent().unwrap_or(std::path::Path::new(".")),
                )
                .expect("blob dir"),
            ),
        ),
    });
    Device {
        store,
        writer,
        control,
        link,
        waiters: Mutex::default(),
        stop,
        worker,
        _config: config,
    }
}

/// One acknowledged app write: its device, target, timestamp and the
/// device's document right after it (`None`: deleted).
#[derive(Debug, Clone)]
struct Write {
    device: usize,
    id: String,
    ts: i64,
    doc: Option<Value>,
}

fn obj(v: Value) -> serde_json::Map<String, Value> {
    match v {
        Value::Object(m) => m,
        _ => panic!("not an object"),
    }
}

/// What a script step writes.
enum Kind {
    Delete,
    Patch,
    Put(Value),
}

/// The app on every device: puts, patches and deletes of the same few
/// records, interleaved, with pauses while sync runs.
async fn script(seed: u64, setup: &Setup, devices: &[Device]) -> Vec<Write> {
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut writes = Vec::new();
    for step in 0..setup.devices * setup.ops_per_device {
        let d = rng.usize(0..setup.devices);
        let id = format!("r{}", rng.u64(0..setup.records));
        let ts = 1_000 + step as i64;
        let pick = rng.u8(0..10);
        let kind = match pick {
            0 => Kind::Delete,
            1..=5 => Kind::Patch,
            _ => Kind::Put(json!({"v": format!("d{d}s{step}"), "k0": step})),
        };
        let cmd = match pick {
            0 => WriteCmd::Delete {
                collection: COLL.into(),
                id: id.clone(),
                client_ts: ts,
            },
            1..=5 => WriteCmd::Patch {
                collection: COLL.into(),
                id: id.clone(),
                data: obj(json!({format!("k{}", rng.u8(0..3)): format!("d{d}s{step}")})),
                client_ts: ts,
                max_bytes: 1 << 20,
            },
            _ => WriteCmd::Put {
                collection: COLL.into(),
                id: Some(id.clone()),
                data: obj(json!({"v": format!("d{d}s{step}"), "k0": step})),
                client_ts: ts,
                scope: None,
            },
        };
        match devices[d].writer.submit(cmd).await {
            Ok(WriteOutcome::Written { op_id, .. }) => {
                let dev = &devices[d];
                let waiter = wait_left(dev.store.clone(), dev.writer.settled(), op_id);
                dev.waiters.lock().unwrap().push(tokio::spawn(waiter));
                let read = devices[d].store.record(COLL, &id).unwrap();
                let read = read.filter(|r| !r.deleted).map(|r| parse_doc_text(&r.data));
                // What the app wrote; a patch is what it made of the record.
                let doc = match kind {
                    Kind::Delete => {
                        // A 409 verdict of an earlier op of the record can
                        // land between the delete and this read, and take the
                        // delete along (it was made on a stale base).
                        if read.is_some() {
                            SUPERSEDED_DELETES.fetch_add(1, Ordering::Relaxed);
                        }
                        None
                    }
                    Kind::Put(doc) => Some(doc),
                    Kind::Patch => read,
                };
                writes.push(Write {
                    device: d,
                    id,
                    ts,
                    doc,
                });
            }
            // A patch or delete of a record this device does not have.
            Err(WriteError::NotFound { .. }) => {}
            other => panic!("seed {seed}: write failed: {other:?}"),
        }
        if rng.u8(0..8) == 0 {
            let dev = &devices[rng.usize(0..setup.devices)];
            dev.link
                .promises
                .lock()
                .unwrap()
                .wakes
                .push(tokio::time::Instant::now());
            dev.control.wake();
        }
        if rng.u8(0..3) == 0 {
            tokio::time::sleep(Duration::from_millis(rng.u64(0..400))).await;
        }
    }
    writes
}

/// What `wait_synced` relies on: every op that leaves the queue, by any
/// path, moves the writer's `settled` signal. Waits on that signal alone
/// (no events) until `op_id` is neither queued nor parked.
async fn wait_left(store: Store, mut settled: watch::Receiver<u64>, op_id: String) {
    loop {
        settled.borrow_and_update();
        match store.op_state(&op_id) {
            Ok(OpState::Queued | OpState::Parked) => {}
            _ => return,
        }
        if settled.changed().await.is_err() {
            return;
        }
    }
}

/// The timing promises, once the devices have converged: no push came
/// before a floor, every `sync` was followed by a pull, and every write's
/// waiter was answered once its op left the queue.
async fn check_promises(seed: u64, devices: &[Device]) {
    // Long enough for the pull after the last `sync`: a held pull (10 s)
    // or a backoff (5 s) plus the 2 s interval.
    tokio::time::sleep(Duration::from_secs(15)).await;
    for (i, d) in devices.iter().enumerate() {
        let p = d.link.promises.lock().unwrap();
        assert!(
            p.broken.is_empty(),
            "seed {seed} device {i}: {:?}",
            p.broken
        );
        assert!(
            p.wakes.is_empty(),
            "seed {seed} device {i}: {} sync(s) never followed by a pull",
            p.wakes.len()
        );
    }
    for (i, d) in devices.iter().enumerate() {
        let waiters = std::mem::take(&mut *d.waiters.lock().unwrap());
        for w in waiters {
            let answered = tokio::time::timeout(Duration::from_secs(1), w).await;
            assert!(
                answered.is_ok(),
                "seed {seed} device {i}: a waiter still waits although the queue is empty"
            );
        }
    }
}

/// Waits (in simulated time) until every queue is empty.
async fn drain(seed: u64, devices: &[Device]) {
    let done = tokio::time::timeout(Duration::from_secs(3_600), async {
        while devices.iter().any(|d| d.store.queue_depth().unwrap() > 0) {
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    })
    .await;
    let status: Vec<_> = devices.iter().map(|d| d.control.status()).collect();
    assert!(done.is_ok(), "seed {seed}: queues not drained: {status:?}");
}

/// `manual`: resolves every parked conflict (the seed picks the side) and
/// drains again, until none is left.
async fn resolve_parked(seed: u64, setup: &Setup, devices: &[Device]) {
    for _round in 0..20 {
        let mut any = false;
        for d in devices {
            for c in d.store.conflicts().unwrap() {
                any = true;
                let take = if setup.take_local {
                    Side::Local
                } else {
                    Side::Server
                };
                let cmd = WriteCmd::ResolveParked {
                    collection: c.collection,
                    id: c.id,
                    take: Some(take),
                    data: None,
                };
                d.writer.submit(cmd).await.unwrap();
            }
        }
        if !any {
            return;
        }
        drain(seed, devices).await;
    }
    panic!("seed {seed}: conflicts keep coming back");
}

/// Where a device differs from the server: `(device, id)`. Device records
/// are matched to server records by their server id (the local id too
/// with client ids; without them a device's own records keep their local
/// ids and the ones it pulled take the server's).
fn divergences(server: &Server, devices: &[Device], shared_ids: bool) -> Vec<(usize, String)> {
    let records = server.records();
    let live = |s: &str| records.get(s).is_some_and(|r| !r.deleted);
    let mut out = Vec::new();
    for (i, d) in devices.iter().enumerate() {
        let (local, _) = d.store.list(COLL, None, 10_000, usize::MAX).unwrap();
        let mut by_server = BTreeMap::new();
        for r in &local {
            match r.server_id.as_deref().filter(|s| live(s)) {
                Some(s) if shared_ids && s != r.id => {
                    out.push((i, format!("{} linked to {s}", r.id)));
                }
                Some(s) if by_server.insert(s.to_owned(), r).is_none() => {}
                Some(s) => out.push((i, format!("{s} held twice"))),
                None => out.push((i, r.id.clone())),
            }
        }
        for (id, r) in records.iter().filter(|(_, r)| !r.deleted) {
            let same = by_server.get(id).is_some_and(|l| {
                l.data.0 == Value::Object(r.data.clone()) && l.version == Some(r.version)
            });
            if !same {
                out.push((i, id.clone()));
            }
        }
    }
    out
}

/// Waits (in simulated time) until the pulls have brought every device to
/// the server's state; what still differs after ten minutes.
async fn settle(server: &Server, devices: &[Device], shared_ids: bool) -> Vec<(usize, String)> {
    let mut left = divergences(server, devices, shared_ids);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(600);
    while !left.is_empty() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(500)).await;
        left = divergences(server, devices, shared_ids);
    }
    left
}

fn report_divergence(seed: u64, server: &Server, devices: &[Device]) {
    for (i, d) in devices.iter().enumerate() {
        let (l, _) = d.store.list(COLL, None, 10_000, usize::MAX).unwrap();
        let parked = d.store.conflicts().unwrap();
        let depth = d.store.queue_depth().unwrap();
        eprintln!("seed {seed} device {i}: queue {depth}, parked {parked:?}, records {l:?}");
    }
    for line in &server.log.lock().unwrap().trace {
        eprintln!("seed {seed} server {line}");
    }
}

/// Every device ends with the server's records: a change pulled while
/// a device had the record's op pending is not lost when that op's reply
/// names an older version (see `verdict::apply_ack`'s deferred records).
async fn converge(seed: u64, server: &Server, devices: &[Device], shared_ids: bool) {
    let left = settle(server, devices, shared_ids).await;
    if left.is_empty() {
        return;
    }
    report_divergence(seed, server, devices);
    panic!(
        "seed {seed}: devices never converged {left:?}: {:?}",
        server.records()
    );
}

/// Nothing lost, nothing doubled; under last-write-wins the newest write
/// of a record is its final state.
fn check(seed: u64, setup: &Setup, (server, devices): (&Server, &[Device]), writes: &[Write]) {
    for (i, d) in devices.iter().enumerate() {
        let report = d.store.check_invariants().unwrap();
        assert!(
            report.is_clean(),
            "seed {seed}: device {i}: store invariants broken: {:#?}",
            report.problems
        );
        assert_eq!(d.store.queue_depth().unwrap(), 0, "seed {seed}: device {i}");
        let dead = d.store.dead_letters().unwrap();
        assert!(
            dead.is_empty(),
            "seed {seed}: device {i} dead letters {dead:?}"
        );
        assert_eq!(
            d.store.conflict_count().unwrap(),
            0,
            "seed {seed}: device {i}"
        );
    }
    let records = server.records();
    {
        let log = server.log.lock().unwrap();
        for (op_id, n) in &log.fresh {
            assert_eq!(*n, 1, "seed {seed}: op {op_id} applied {n} times");
        }
        for (id, r) in &records {
            let sent = log.sent.get(id).map_or(0, |s| s.len()) as u64;
            assert!(
                r.version <= sent,
                "seed {seed}: {id} at version {} from {sent} ops",
                r.version
            );
        }
    }
    if setup.features.client_ids {
        check_shared_ids(seed, setup, &records, writes);
    } else {
        check_own_ids(seed, &records, devices, writes);
    }
}

/// With client ids every device's `rN` is one record on the server.
fn check_shared_ids(
    seed: u64,
    setup: &Setup,
    records: &BTreeMap<String, ServerRecord>,
    writes: &[Write],
) {
    let mut by_id: BTreeMap<&str, Vec<&Write>> = BTreeMap::new();
    for w in writes {
        by_id.entry(&w.id).or_default().push(w);
    }
    for (id, ws) in &by_id {
        let r = records.get(*id);
        let final_doc = r
            .filter(|r| !r.deleted)
            .map(|r| Value::Object(r.data.clone()));
        // A create deleted before it was sent never reaches the server;
        // a record whose newest write is not a delete always does.
        let last = ws.iter().max_by_key(|w| w.ts).unwrap();
        assert!(
            r.is_some() || last.doc.is_none(),
            "seed {seed}: {id} was written on a device but never reached the server"
        );
        // Without merging, the server keeps one device's whole document.
        if setup.strategy != Strategy::Merge {
            assert!(
                ws.iter().any(|w| w.doc == final_doc),
                "seed {seed}: {id} ends as {final_doc:?}, which no device wrote"
            );
        }
        // A newest write that is a delete is left out, for two known
        // limits (docs/guarantees.md): a delete that meets an earlier
        // delete's tombstone changes nothing on the server (the protocol
        // has no way to make a tombstone newer), and a create deleted
        // before it was sent is cancelled on its device, although with
        // client ids another device may have created the same id.
        if setup.strategy == Strategy::LastWriteWins && last.doc.is_some() {
            assert_eq!(
                final_doc, last.doc,
                "seed {seed}: {id}: the last write (device {}, ts {}) lost",
                last.device, last.ts
            );
        }
    }
    for id in records.keys() {
        assert!(
            by_id.contains_key(id.as_str()),
            "seed {seed}: {id} on the server unasked"
        );
    }
}

/// Without client ids each device's `rN` is a record of its own (the
/// others' arrive under the server's ids, which the app never writes to),
/// so nothing conflicts and each one ends exactly as its last write:
/// one live server record, or none after a delete.
fn check_own_ids(
    seed: u64,
    records: &BTreeMap<String, ServerRecord>,
    devices: &[Device],
    writes: &[Write],
) {
    let mut last: BTreeMap<(usize, &str), &Write> = BTreeMap::new();
    for w in writes {
        last.insert((w.device, &w.id), w);
    }
    let mut owned = BTreeSet::new();
    for ((dev, id), w) in &last {
        let rec = devices[*dev].store.record(COLL, id).unwrap();
        let Some(doc) = &w.doc else {
            assert!(
                rec.is_none(),
                "seed {seed}: device {dev} {id}: the delete lost"
            );
            continue;
        };
        let sid = rec.and_then(|r| r.server_id);
        let server = sid.as_deref().and_then(|s| records.get(s));
        let data = server
            .filter(|r| !r.deleted)
            .map(|r| Value::Object(r.data.clone()));
        assert_eq!(
            data.as_ref(),
            Some(doc),
            "seed {seed}: device {dev} {id} (server id {sid:?}): the last write lost"
        );
        owned.extend(sid);
    }
    for (id, r) in records.iter().filter(|(_, r)| !r.deleted) {
        assert!(
            owned.contains(id),
            "seed {seed}: {id} on the server is no device's record (a duplicate?): {r:?}"
        );
    }
}

/// What one seed did at the server.
struct Ran {
    /// The server's decisions in order, server ids replaced by the order
    /// they first appear in (without client ids the server draws them at
    /// random).
    trace: Vec<String>,
    conflicts: u64,
    lost_replies: u64,
    /// Pushes refused (429, 403) and `sync`s served, over the devices.
    refused: u64,
    wakes_served: u64,
}

/// Runs one seed.
async fn run(seed: u64) -> Ran {
    fastrand::seed(seed); // the workers' backoff jitter
    let setup = Setup::of(seed);
    let dir = match scratch_root() {
        Some(root) => tempfile::tempdir_in(root).unwrap(),
        None => tempfile::tempdir().unwrap(),
    };
    let server = Arc::new(Server {
        store: RedbStore::open(&dir.path().join("server")).unwrap(),
        log: Mutex::default(),
    });
    let devices: Vec<Device> = (0..setup.devices)
        .map(|i| {
            let link = Arc::new(Link {
                device: i,
                server: server.clone(),
                rng: Mutex::new(fastrand::Rng::with_seed(seed.wrapping_mul(31) + i as u64)),
                features: setup.features,
                down: 25,
                fail_before: 25,
                lose_reply: 35,
                slow_reply: 40,
                busy: 6,
                forbidden: 3,
                promises: Mutex::default(),
            });
            start_device(&dir.path().join(format!("device{i}")), &setup, link)
        })
        .collect();
    let writes = script(seed, &setup, &devices).await;
    drain(seed, &devices).await;
    if setup.strategy == Strategy::Manual {
        resolve_parked(seed, &setup, &devices).await;
    }
    converge(seed, &server, &devices, setup.features.client_ids).await;
    check_promises(seed, &devices).await;
    for d in &devices {
        let _ = d.stop.send(true);
    }
    let checked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        check(seed, &setup, (&server, &devices), &writes)
    }));
    if let Err(e) = checked {
        for w in &writes {
            eprintln!("write {w:?}");
        }
        for line in &server.log.lock().unwrap_or_else(|p| p.into_inner()).trace {
            eprintln!("server {line}");
        }
        std::panic::resume_unwind(e);
    }
    let (mut refused, mut wakes_served) = (0, 0);
    for d in devices {
        let _ = d.worker.await;
        let p = d.link.promises.lock().unwrap();
        refused += p.refused;
        wakes_served += p.wakes_served;
    }
    let log = server.log.lock().unwrap();
    Ran {
        trace: name_ids(&log.trace),
        conflicts: log.conflicts,
        lost_replies: log.lost_replies,
        refused,
        wakes_served,
    }
}

/// `lines` with every 26-character ULID (a server-drawn id) replaced by
/// `#n`, n counting distinct ids in order of first appearance.
fn name_ids(lines: &[String]) -> Vec<String> {
    let mut names: BTreeMap<String, usize> = BTreeMap::new();
    let is_ulid_char = |c: char| c.is_ascii_digit() || c.is_ascii_uppercase();
    lines
        .iter()
        .map(|line| {
            let mut out = String::new();
            let mut word = String::new();
            for c in line.chars().chain(std::iter::once(' ')) {
                if is_ulid_char(c) {
                    word.push(c);
                    continue;
                }
                if word.len() == 26 {
                    let n = names.len();
                    let n = *names.entry(std::mem::take(&mut word)).or_insert(n);
                    out.push_str(&format!("#{n}"));
                }
                out.push_str(&word);
                word.clear();
                out.push(c);
            }
            out.pop();
            out
        })
        .collect()
}

/// A fresh single-threaded runtime on a paused clock, for one seed.
fn seed_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .unwrap()
}

/// Runs `seeds` one after another, each on a fresh paused-clock runtime;
/// a failure names its seed and setup.
/// Returns the 409s and lost replies over all of them.
fn run_seeds(seeds: impl Iterator<Item = u64>) -> (u64, u64, u64, u64) {
    let (mut conflicts, mut lost, mut refused, mut wakes) = (0, 0, 0, 0);
    for seed in seeds {
        let rt = seed_runtime();
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| rt.block_on(run(seed))));
        match r {
            Ok(ran) => {
                conflicts += ran.conflicts;
                lost += ran.lost_replies;
                refused += ran.refused;
                wakes += ran.wakes_served;
            }
            Err(e) => {
                eprintln!(
                    "FAILED seed {seed} ({:?}); re-run it alone with SYNCD_SIM_SEED={seed}",
                    Setup::of(seed)
                );
                std::panic::resume_unwind(e);
            }
        }
    }
    (conflicts, lost, refused, wakes)
}

/// `SYNCD_SIM_SEED=N`: one seed; with `SYNCD_SIM_LOG=1` the daemon's
/// debug log and the server's decisions go to stderr, in the order they
/// happened.
fn run_one(seed: u64) {
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
}

#[test]
fn devices_converge_through_conflicts_and_faults() {
    if let Some(seed) = std::env::var("SYNCD_SIM_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
    {
        return run_one(seed);
    }
    let seeds: u64 = std::env::var("SYNCD_SIM_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1_000);
    // Two halves on two threads: the machine has two cores.
    let half = seeds / 2;
    let other = std::thread::spawn(move || run_seeds(half..seeds));
    let (c1, l1, r1, w1) = run_seeds(0..half);
    let (c2, l2, r2, w2) = other.join().unwrap();
    let (conflicts, lost, refused, wakes) = (c1 + c2, l1 + l2, r1 + r2, w1 + w2);
    let overruled = SUPERSEDED_DELETES.load(Ordering::Relaxed);
    eprintln!(
        "{seeds} seeds: {conflicts} conflicts, {lost} lost replies, \
         {refused} pushes refused (429, 403), {wakes} syncs served, \
         {overruled} deletes overruled before read-back"
    );
    // About 0.7 a seed: 429s and 403s are rare, so that seeds converge.
    assert!(
        refused >= seeds / 2,
        "too few refusals to test the floors: {refused}"
    );
    assert!(wakes >= seeds, "too few syncs to test them: {wakes}");
    // Only the seeds with client ids can conflict (about half).
    assert!(
        conflicts >= seeds / 2,
        "too few conflicts to test them: {conflicts}"
    );
    assert!(lost >= seeds, "too few lost replies to test them: {lost}");
}

/// A seed replays exactly: two runs of it make the server decide the same
/// ops, with the same outcomes, in the same order (server-drawn ids
/// aside). Twelve seeds: every strategy, with and without client ids.
#[test]
fn a_seed_replays_exactly() {
    let mut shared_ids = BTreeSet::new();
    for seed in 0..12 {
        shared_ids.insert(Setup::of(seed).features.client_ids);
        let first = seed_runtime().block_on(run(seed)).trace;
        let second = seed_runtime().block_on(run(seed)).trace;
        assert!(!first.is_empty(), "seed {seed}: nothing reached the server");
        assert_eq!(first, second, "seed {seed} ran differently the second time");
    }
    assert_eq!(shared_ids.len(), 2, "both id modes replayed");
}

#[path = "worker_sim_users_tests.rs"]
mod users;
