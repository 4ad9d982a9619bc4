//! The sync worker: the I/O around [`Machine`]. It runs whether or not any
//! app is connected, asks the machine what to do, does it against the
//! backend and the store, and reports back. Every store change goes through
//! the writer, so an op leaves the queue in the same transaction that
//! records its result.
//!
//! Pulls run as their own task ([`crate::sync::pull`]) beside the push
//! rounds, so a pull the server holds (live sync) never delays a push and
//! a push never delays a pull. The features the server announces at each
//! probe decide whether pulls wait and whether creates carry their ids.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tokio::sync::{watch, Notify};

use crate::backend::blocking::off_runtime;
use crate::backend::client::{BackendClient, BatchOutcome, Failure, OpResult};
use crate::backend::protocol::{Features, OpKind, WireOp};
use crate::config::Config;
use crate::domain::WriteError;
use crate::metrics::PushResult;
use crate::store::writer::{WriteCmd, WriterHandle};
use crate::store::{parse_doc_text, QueuedOp, Store, StoredRecord};
use crate::sync::machine::{Action, Machine, PullDone, View};
use crate::sync::pull::{PullJob, PullTask, RoundGuard, RoundLock};
use crate::sync::reads::ReadMode;
use crate::sync::scoped_pull::{Scoped, SessionClock};
use crate::sync::transport::Transport;
use crate::sync::uploader::{Ready, Uploader};
use crate::sync::{State, SyncControl};

#[derive(Clone)]
pub struct WorkerDeps {
    pub store: Store,
    pub writer: WriterHandle,
    pub config: watch::Receiver<Arc<Config>>,
    pub control: Arc<SyncControl>,
    pub queue_changed: Arc<Notify>,
    pub shutdown: watch::Receiver<bool>,
    /// Makes the transport for a config; `None` for the HTTP client (the
    /// daemon). Simulations plug in their own.
    pub connector: Option<Connector>,
    pub metrics: Arc<crate::metrics::Metrics>,
    /// Listen for the OS's network change events (the daemon). A
    /// simulation turns it off: a real kernel event would make its runs
    /// differ.
    pub watch_network: bool,
    /// Where store reads run: the blocking pool in the daemon, inline in
    /// the deterministic simulation (see [`ReadMode`]).
    pub reads: ReadMode,
    /// Attachment uploads (before an op that references content is sent)
    /// and the client downloads use.
    pub transfers: Arc<crate::sync::attachments::Transfers>,
}

/// Builds a [`Transport`] for the current config (`None`: no backend).
pub type Connector = Arc<dyn Fn(&Config) -> Option<Arc<dyn Transport>> + Send + Sync>;

/// Starts the worker under a supervisor: should it ever panic, the panic
/// is logged, shown in status, and a fresh worker starts from the durable
/// queue a second later (nothing in memory is needed to resume).
pub fn spawn(deps: WorkerDeps) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let net = Arc::new(Notify::new());
        if deps.watch_network {
            crate::sync::netwatch::spawn(net.clone());
        }
        loop {
            let run = tokio::spawn(run_worker(deps.clone(), net.clone()));
            match run.await {
                Ok(()) => return,
                Err(e) if e.is_panic() => {
                    tracing::error!(error = %e, "sync worker panicked; restarting it");
                    let mut st = deps.control.status();
                    st.last_error = Some(format!(
                        "sync worker restarted after an internal error: {e}"
                    ));
                    deps.control.set_status(st);
                    let mut sd = deps.shutdown.clone();
                    tokio::select! {
                        biased;
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                        _ = sd.wait_for(|s| *s) => return,
                    }
                }
                Err(_) => return,
            }
        }
    })
}

async fn run_worker(deps: WorkerDeps, net: Arc<Notify>) {
    let cfg = deps.config.borrow().clone();
    let mut w = Worker {
        machine: Machine::new(
            cfg.sync.backoff_initial_ms,
            cfg.sync.backoff_max_ms,
            cfg.sync.pull_interval_s * 1000,
            fastrand::u64(..),
        ),
        cfg: cfg.clone(),
        client: None,
        epoch: tokio::time::Instant::now(),
        batch_supported: None,
        singles: 0,
        token_watch: None,
        net,
        logged_error: None,
        client_error: None,
        pull: None,
        round_lock: RoundLock::default(),
        recording: None,
        held_round: None,
        session: SessionClock::default(),
        uploader: Uploader::new(deps.transfers.clone(), deps.queue_changed.clone()),
        uploads_block: false,
        deps,
    };
    w.machine.set_live(cfg.sync.live, cfg.sync.wait_s);
    w.rebuild_client();
    w.run().await;
}

struct Worker {
    deps: WorkerDeps,
    machine: Machine,
    cfg: Arc<Config>,
    client: Option<Arc<dyn Transport>>,
    /// The machine's clock: monotonic ms since the worker started (tokio's
    /// clock, so a test with paused time runs it fast).
    epoch: tokio::time::Instant,
    /// Whether this backend has `v1/ops/batch`; learned on first use.
    batch_supported: Option<bool>,
    /// Ops of a batch the backend refused as a whole (400/413/422) that
    /// still go one at a time, each for its own verdict; batches resume
    /// after them.
    singles: usize,
    token_watch: Option<crate::config::FileWatch>,
    net: Arc<Notify>,
    /// The last failure reason logged, so an outage logs once.
    logged_error: Option<String>,
    /// Why there is no client although a backend is configured.
    client_error: Option<String>,
    /// The running pull, if any.
    pull: Option<PullTask>,
    /// Keeps a pulled page from landing while a push round without
    /// client ids waits for its verdict (see [`RoundLock`]).
    round_lock: RoundLock,
    /// The previous round's verdicts, still being recorded.
    recording: Option<Recording>,
    /// A failed round's share of the round lock, kept while a create it
    /// sent may have been applied (see `hold_if_create`).
    held_round: Option<RoundGuard>,
    /// When the session was fetched (backends with scopes): due again on
    /// every connect and token change.
    session: SessionClock,
    /// Uploads of the content queued ops reference.
    uploader: Uploader,
    /// Every op that could be sent waits for an upload: the queue counts
    /// as empty for the machine until the next wake-up (an upload's end
    /// wakes it as new work does).
    uploads_block: bool,
}

/// A batch whose verdicts a writer job is recording while the next round
/// goes out.
struct Recording {
    done: tokio::task::JoinHandle<Result<(), WriteError>>,
    /// The highest queue sequence in the batch.
    upto: u64,
    /// The records the batch wrote to.
    records: HashSet<(String, String)>,
}

/// Waits until a background recording is durable (a failure leaves its
/// ops queued: they are sent again under the same op ids).
async fn finish(rec: Option<Recording>) -> Result<(), Failure> {
    let Some(rec) = rec else { return Ok(()) };
    match rec.done.await {
        Ok(r) => r.map_err(local),
        Err(e) => Err(local(format!("recording task: {e}"))),
    }
}

/// How many queued ops past the batch a round looks at while uploads
/// run, for ops that do not wait for them.
const UPLOAD_WINDOW: usize = 256;

/// What [`Worker::build_batch`] found.
enum Built {
    /// Ops to send (possibly none).
    Batch(Vec<(u64, QueuedOp, WireOp)>),
    /// The head op was settled locally (dropped or dead-lettered).
    Settled(Result<(), Failure>),
    /// Nothing can go until an upload ends; the first waiting op's seq.
    Waiting(u64),
}

use super::local;

impl Worker {
    fn rebuild_client(&mut self) {
        self.held_round = None;
        // New credentials or another backend: a new session, and no push
        // before it is applied (the machine holds them).
        self.session.new_credentials();
        self.stop_pull();
        self.deps.store.set_backend_client_ids(false);
        self.deps.control.set_backend_scopes(None);
        self.batch_supported = None;
        self.token_watch = None;
        self.client = None;
        self.deps.transfers.set_client(None);
        self.uploader.clear();
        self.client_error = None;
        if let Some(connect) = &self.deps.connector {
            self.client = connect(&self.cfg);
            self.machine.backend_changed();
            return;
        }
        let Some(url) = self.cfg.backend_url() else {
            return;
        };
        // The token and CA files are read with blocking I/O: tell the
        // runtime, so that its other tasks move off this thread meanwhile.
        let url = url.to_owned();
        off_runtime(|| self.build_client(url));
        self.machine.backend_changed();
    }

    /// Reads the token (and, through the client, the CA file) and builds
    /// the transport for `[backend] kind`.
    fn build_client(&mut self, url: String) {
        let url = url.as_str();
        let token = match &self.cfg.backend.token_file {
            Some(p) => {
                self.token_watch = crate::config::watch_file(p, None)
                    .map_err(|e| tracing::warn!("token file not watched ({e}); reload re-reads it"))
                    .ok();
                match crate::backend::client::read_token(p) {
                    Ok(t) => t,
                    Err(e) => {
                        tracing::warn!("{e}; sending requests without a token");
                        None
                    }
                }
            }
            None => None,
        };
        // The transport for `[backend] kind` (docs/backends.md).
        let made: Result<Arc<dyn Transport>, String> = match self.cfg.backend.kind {
            crate::config::BackendKind::Couchdb => crate::sync::couch_transport::connect(
                &self.cfg,
                url,
                token,
                self.deps.transfers.blobs().clone(),
                self.deps.store.client_id(),
            ),
            crate::config::BackendKind::Syncd => BackendClient::new(
                url,
                token,
                self.deps.store.client_id(),
                Duration::from_millis(self.cfg.backend.timeout_ms),
                self.cfg.backend.ca_file.as_deref(),
            )
            .map(|c| Arc::new(c) as Arc<dyn Transport>),
        };
        match made {
            Ok(c) => self.client = Some(c),
            Err(e) => {
                tracing::error!("backend client: {e}");
                self.client_error = Some(format!("backend client: {e}"));
            }
        }
    }

    fn reconfigure(&mut self) {
        let new = self.deps.config.borrow_and_update().clone();
        if Arc::ptr_eq(&new, &self.cfg) {
            return;
        }
        let old = std::mem::replace(&mut self.cfg, new);
        self.machine.configure(
            self.cfg.sync.backoff_initial_ms,
            self.cfg.sync.backoff_max_ms,
            self.cfg.sync.pull_interval_s * 1000,
        );
        self.machine
            .set_live(self.cfg.sync.live, self.cfg.sync.wait_s);
        if old.sync.scopes != self.cfg.sync.scopes {
            // Another set of scopes: the session decides again what is
            // pulled, and a running pull (with the old set) starts again.
            self.session.make_due();
            self.stop_pull();
            self.machine.on_scopes_changed(self.now());
        }
        if old.backend != self.cfg.backend {
            tracing::info!(
                backend = self
                    .cfg
                    .backend_url()
                    .map(crate::config::redact_url)
                    .as_deref()
                    .unwrap_or("(none)"),
                "backend settings changed"
            );
            self.rebuild_client();
        } else if self.cfg.backend.token_file.is_some() {
            // A reload re-reads the token even when the file watch missed it.
            self.rebuild_client_keep_state();
        }
    }

    fn publish(&mut self, before: State) {
        let st = self.machine.status();
        if st.state != before {
            match (&st.state, &st.last_error) {
                (State::Online | State::Paused, _) | (_, None) => {
                    tracing::info!(
                        from = before.as_str(),
                        to = st.state.as_str(),
                        "sync state changed"
                    )
                }
                (_, Some(e)) => {
                    tracing::warn!(from = before.as_str(), to = st.state.as_str(), error = %e, "sync state changed")
                }
            }
        }
        match &st.last_error {
            Some(e) if self.logged_error.as_deref() != Some(e) => {
                if st.state == before {
                    tracing::warn!(state = st.state.as_str(), error = %e, "sync attempt failed; retrying with backoff (logged once per distinct error)");
                }
                self.logged_error = Some(e.clone());
            }
            Some(_) => {}
            None => self.logged_error = None,
        }
        // The machine's times are monotonic; status shows wall-clock ms.
        let mut st = st;
        if self.client.is_none() {
            st.last_error = self.client_error.clone();
            st.remote_changes = None;
        }
        let wall = |t: i64| crate::domain::clock::now_ms() + (t - self.now());
        // A retry time already passed means the attempt is under way now.
        st.next_retry_at = st.next_retry_at.filter(|t| *t > self.now()).map(wall);
        st.last_pull_at = st.last_pull_at.map(wall);
        self.deps.control.set_status(st);
    }

    async fn run(&mut self) {
        let mut shutdown = self.deps.shutdown.clone();
        loop {
            if *shutdown.borrow() {
                break;
            }
            self.reconfigure();
            self.collect_pull().await;
            if self.session.applied_current() {
                self.machine.on_session_applied();
            }
            let view = View {
                has_backend: self.client.is_some(),
                paused: self.deps.control.is_paused(),
                queue_nonempty: !self.uploads_block && self.queue_nonempty().await,
            };
            let before = self.machine.state();
            let action = self.machine.next(self.now(), view);
            self.publish(before);
            let before = self.machine.state();
            match action {
                Action::Pull(wait_s) => self.start_pull(wait_s),
                Action::StopPull => self.stop_pull(),
                Action::Push | Action::Probe => {
                    let round = async {
                        match action {
                            Action::Push => self.push().await.map(|()| None),
                            _ => self.probe().await.map(Some),
                        }
                    };
                    let r = tokio::select! {
                        biased;
                        r = round => r,
                        _ = shutdown.changed() => break,
                    };
                    let now = self.now();
                    self.count_local(r.as_ref().err());
                    match action {
                        Action::Push => self.machine.on_push(now, r.map(|_| ())),
                        _ => self.machine.on_probe(now, r.map(Option::unwrap_or_default)),
                    }
                }
                Action::Sleep(deadline) => {
                    if self.sleep(deadline, &mut shutdown).await {
                        break;
                    }
                }
            }
            self.publish(before);
        }
        self.stop_pull();
        tracing::debug!("sync worker stopped");
    }

    /// Whether the queue holds ops. A store that cannot be read is not
    /// an empty queue: the worker goes on as if ops were queued, so the
    /// push round meets the error, reports it and retries with backoff,
    /// instead of sleeping with work queued.
    async fn queue_nonempty(&self) -> bool {
        match self.read(|s| s.queue_depth()).await {
            Ok(depth) => depth > 0,
            Err(e) => {
                tracing::warn!(
                    error = e.reason(),
                    "cannot read the queue depth; trying a push round"
                );
                true
            }
        }
    }

    /// Sleeps until `deadline` (machine ms) or an event; `true`: shut down.
    async fn sleep(&mut self, deadline: Option<i64>, shutdown: &mut watch::Receiver<bool>) -> bool {
        let until = deadline.map(|t| self.epoch + Duration::from_millis(t.max(0) as u64));
        let sleep = async {
            match until {
                Some(t) => tokio::time::sleep_until(t).await,
                None => std::future::pending().await,
            }
        };
        let token = async {
            match self.token_watch.as_mut() {
                Some(w) => {
                    w.changes.recv().await;
                    while w.changes.try_recv().is_ok() {}
                }
                None => std::future::pending().await,
            }
        };
        let pulled = async {
            match self.pull.as_mut() {
                Some(p) => p.done().await,
                None => std::future::pending().await,
            }
        };
        // New work wakes only a worker that could push it. With no backend,
        // or paused, the machine sleeps whatever the queue holds, and a
        // wake-up per commit (with a store read and a status publish) was
        // most of the runtime's CPU per write (issue 19, item 7).
        let pushable = self.client.is_some() && !self.deps.control.is_paused();
        let work = async {
            match pushable {
                true => self.deps.queue_changed.notified().await,
                false => std::future::pending().await,
            }
        };
        // A pull applied the session that pushes wait for.
        let session = async {
            match self.machine.pushes_held() {
                true => self.session.applied().await,
                false => std::future::pending().await,
            }
        };
        let mut cfg_rx = self.deps.config.clone();
        enum Wake {
            Timer,
            Work,
            Sync,
            Net,
            Token,
            Scopes,
            Config,
            Pulled(Result<PullDone, Failure>),
            Session,
            Stop,
        }
        // `biased`: when several are ready at once the first listed wins,
        // the same way every run (a simulation seed replays exactly). The
        // rare, one-off wake-ups come first and the steady ones (new work,
        // the timer) last, so a stream of writes cannot hold back a stop,
        // a `syncd sync`, a network change or a token change.
        let why = tokio::select! {
            biased;
            _ = shutdown.changed() => Wake::Stop,
            _ = cfg_rx.changed() => Wake::Config,
            _ = token => Wake::Token,
            _ = self.deps.control.scopes_changed.notified() => Wake::Scopes,
            _ = self.net.notified() => Wake::Net,
            _ = self.deps.control.wake.notified() => Wake::Sync,
            r = pulled => Wake::Pulled(r),
            _ = session => Wake::Session,
            _ = work => Wake::Work,
            _ = sleep => Wake::Timer,
        };
        let now = self.now();
        self.uploads_block = false;
        match why {
            Wake::Stop => return true,
            Wake::Sync => self.machine.on_wake(now),
            Wake::Net => self.machine.on_network_change(now),
            Wake::Token => {
                tracing::info!("token file changed; reloading credentials");
                self.rebuild_client_keep_state();
                self.machine.on_token_change(now);
            }
            Wake::Scopes => {
                // A live pull holds the old set of scopes: start again.
                self.stop_pull();
                self.machine.on_scopes_changed(now);
            }
            Wake::Pulled(r) => {
                self.pull = None;
                self.pulled(now, r);
            }
            Wake::Session => {
                if self.session.applied_current() {
                    self.machine.on_session_applied();
                }
            }
            Wake::Timer | Wake::Work | Wake::Config => {}
        }
        false
    }

    /// Reports a pull that ended while a push or probe ran.
    async fn collect_pull(&mut self) {
        if !self.pull.as_ref().is_some_and(PullTask::is_finished) {
            return;
        }
        if let Some(mut p) = self.pull.take() {
            let r = p.done().await;
            self.pulled(self.now(), r);
        }
    }

    /// Counts a finished pull's changes and tells the machine.
    fn pulled(&mut self, now: i64, r: Result<PullDone, Failure>) {
        if let Ok(done) = &r {
            self.deps.metrics.pulled(done.changes);
        }
        self.count_local(r.as_ref().err());
        self.machine.on_pull(now, r);
    }

    /// Counts a round that failed on the local store (metrics).
    fn count_local(&self, f: Option<&Failure>) {
        if let Some(Failure::LocalStore { .. }) = f {
            self.deps.metrics.local_store_error();
        }
    }

    /// Starts a pull beside the pushes (stopping a stale one).
    fn start_pull(&mut self, wait_s: Option<u32>) {
        self.stop_pull();
        let client = match self.client() {
            Ok(c) => c.clone(),
            Err(f) => return self.machine.on_pull(self.now(), Err(f)),
        };
        let job = PullJob {
            client,
            store: self.deps.store.clone(),
            writer: self.deps.writer.clone(),
            limit: self.cfg.sync.batch_size.max(1),
            wait_s,
            client_ids: self.machine.features().client_ids,
            lock: self.round_lock.clone(),
            reads: self.deps.reads,
            scoped: self.machine.features().scopes.then(|| Scoped {
                session: self.session.clone(),
                wanted: self.cfg.sync.scopes.clone(),
            }),
        };
        self.pull = Some(PullTask::spawn(job));
    }

    fn stop_pull(&mut self) {
        if let Some(p) = self.pull.take() {
            p.abort();
        }
    }

    /// Re-reads the token without forgetting the backoff state.
    fn rebuild_client_keep_state(&mut self) {
        let saved = self.machine.clone();
        let batch = self.batch_supported;
        let scopes = *self.deps.control.backend_scopes().borrow();
        self.rebuild_client();
        self.deps.control.set_backend_scopes(scopes);
        self.machine = saved;
        self.singles = 0;
        self.machine.credentials_changed();
        self.batch_supported = batch;
        // The old client's pull was stopped; the same backend's features hold.
        self.machine.pull_stopped();
        self.deps
            .store
            .set_backend_client_ids(self.machine.features().client_ids);
    }

    /// A store read, off the runtime's threads in the daemon.
    async fn read<T, F>(&self, f: F) -> Result<T, Failure>
    where
        F: FnOnce(&Store) -> Result<T, crate::store::StoreError> + Send + 'static,
        T: Send + 'static,
    {
        self.deps.reads.read(&self.deps.store, f).await
    }

    fn now(&self) -> i64 {
        self.epoch.elapsed().as_millis() as i64
    }

    fn client(&self) -> Result<&Arc<dyn Transport>, Failure> {
        self.client.as_ref().ok_or(Failure::Unreachable {
            reason: "no backend configured".into(),
        })
    }

    /// `GET v1/health`: reachability and the features, read afresh at
    /// every (re)connect.
    async fn probe(&mut self) -> Result<Features, Failure> {
        let client = self.client()?.clone();
        let f = client.health().await?;
        self.deps.transfers.set_client(f.blobs.then_some(client));
        // A (re)connect fetches the session again before the next pull.
        self.session.make_due();
        if f != self.machine.features() {
            tracing::info!(features = ?f.names(), "backend features");
        }
        self.deps.store.set_backend_client_ids(f.client_ids);
        self.deps.control.set_backend_scopes(Some(f.scopes));
        Ok(f)
    }

    async fn submit(&self, cmd: WriteCmd) -> Result<(), Failure> {
        self.deps
            .writer
            .submit(cmd)
            .await
            .map(|_| ())
            .map_err(|e: WriteError| local(e))
    }

    /// One push round: the head of the queue, batched when possible.
    /// `Ok` when the server gave a verdict for at least the head op.
    ///
    /// Rounds overlap: when every op of a batch was applied, its verdicts
    /// are recorded by a writer job that runs while the next batch is
    /// built and sent ([`Recording`]). The next batch never holds an op of
    /// a record whose verdict is still being recorded (it needs that op's
    /// server id and version), so it ends before the first such op.
    async fn push(&mut self) -> Result<(), Failure> {
        // Held until the verdicts are recorded: see [`RoundLock`].
        // A round kept from a failed create (see `hold_if_create`) is this
        // round's: taking a second read lock behind a waiting pull would
        // deadlock on the one kept.
        let round = match self.held_round.take() {
            Some(g) => g,
            None => self.round_lock.push().await,
        };
        let mut prev = self.recording.take();
        // A recording that is already durable holds nothing back: settled
        // now, it does not split the batch (the first round after an idle
        // spell would otherwise stop before that recording's records).
        if prev.as_ref().is_some_and(|r| r.done.is_finished()) {
            finish(prev.take()).await?;
        }
        let built = match self.build_batch(prev.as_ref()).await {
            Ok(b) => b,
            Err(f) => {
                // Never drop a recording unchecked.
                finish(prev).await?;
                return Err(f);
            }
        };
        let batch = match built {
            Built::Batch(b) => b,
            Built::Settled(r) => {
                finish(prev).await?;
                return r;
            }
            Built::Waiting(seq) => {
                // Every op that could go waits for its content. A failed
                // upload counts as the op's attempt (and backs off); else
                // the worker sleeps (pulls go on) until an upload ends.
                finish(prev).await?;
                return match self.uploader.failure() {
                    Some(f) => self.attempt_failed(seq, f).await,
                    None => {
                        self.uploads_block = true;
                        Ok(())
                    }
                };
            }
        };
        if batch.is_empty() {
            // Only ops still being recorded, or nothing: settle, look again.
            return finish(prev).await;
        }
        let client = self.client()?.clone();
        let mut batch = batch;
        if batch.len() > 1 && self.batch_supported != Some(false) {
            let ops: Vec<WireOp> = batch.iter().map(|b| b.2.clone()).collect();
            let outcome = self.deps.metrics.time_push(client.apply_batch(&ops)).await;
            finish(prev.take()).await?;
            match outcome {
                Ok(BatchOutcome::Results(results)) => {
                    self.batch_supported = Some(true);
                    return self.record_results(batch, results, round).await;
                }
                Ok(BatchOutcome::Refused(reason)) => {
                    tracing::info!(%reason, "batch refused; sending its ops one at a time");
                    self.singles = batch.len();
                }
                Ok(BatchOutcome::Unsupported) => {
                    tracing::info!(
                        backend = client.name(),
                        "backend has no v1/ops/batch; sending ops one at a time"
                    );
                    self.batch_supported = Some(false);
                }
                Err(f) => {
                    self.hold_if_create(&batch, round);
                    return self.attempt_failed(batch[0].0, f).await;
                }
            }
        }
        finish(prev).await?;
        batch.truncate(1);
        let (seq, op, w) = batch[0].clone();
        match self.deps.metrics.time_push(client.apply(&w)).await {
            Ok(res) => {
                self.singles = self.singles.saturating_sub(1);
                self.submit(self.verdict_cmd(seq, &op, &w, res)).await
            }
            Err(f) => {
                if matches!(f, Failure::Unlisted { .. }) && self.batch_supported == Some(false) {
                    // The 404/405 that ruled out batches may have come from
                    // the same wrong URL: ask again once replies are sane.
                    self.batch_supported = None;
                }
                self.hold_if_create(&batch, round);
                self.attempt_failed(seq, f).await
            }
        }
    }

    /// Whether the backend holds all the content `w` references; if not,
    /// uploads run ([`Uploader`]) and the op waits. `Err`: it never will
    /// (the backend does not take attachments), the reason to dead-letter.
    async fn content_ready(&mut self, w: &WireOp) -> Result<bool, String> {
        let refs = w
            .data
            .as_ref()
            .map(|d| crate::domain::attachment::refs(d).unwrap_or_default())
            .unwrap_or_default();
        if refs.is_empty() {
            return Ok(true);
        }
        let Ok(client) = self.client().cloned() else {
            return Ok(false);
        };
        if !self.machine.features().blobs {
            return Err(format!(
                "the backend {} does not take attachments (it does not announce the `blobs` feature); detach them, or sync to a backend that does",
                client.name()
            ));
        }
        let scope = self.upload_scope(w).await;
        let mut all = true;
        for r in refs.values() {
            match self.uploader.ready(&client, scope.as_deref(), r) {
                Ready::Yes => {}
                Ready::Uploading => all = false,
                Ready::Refused(why) => {
                    return Err(format!(
                        "the backend refuses attachment content {} ({} bytes): {why}",
                        r.sha256, r.length
                    ))
                }
            }
        }
        Ok(all)
    }

    /// Where an op's content is uploaded: with scopes, the scope the op
    /// puts its record in (the one asked for, else the record's, else the
    /// user's private scope); without, none.
    async fn upload_scope(&self, w: &WireOp) -> Option<String> {
        if !self.machine.features().scopes {
            return None;
        }
        if let Some(s) = w.scope.clone().or_else(|| w.home.clone()) {
            return Some(s);
        }
        let grants = self.read(|s| s.session_grants()).await.ok().flatten()?;
        crate::domain::scope::private_scope(&grants.sub).ok()
    }

    /// Without client ids, a create whose request failed may have been
    /// applied with its reply lost: the server's record would then come
    /// back through a pull before the retry's ack names it ours, and look
    /// like another device's record (a duplicate). Such a round keeps its
    /// share of the round lock until the next round settles the op, so no
    /// pull lands in between.
    fn hold_if_create(&mut self, batch: &[(u64, QueuedOp, WireOp)], round: RoundGuard) {
        let creates = batch.iter().any(|(_, _, w)| w.kind == OpKind::Create);
        if creates && !self.deps.store.backend_client_ids() {
            self.held_round = Some(round);
        }
    }

    /// The next batch from the head of the queue: one op per record, after
    /// the ops of `prev` and before any op of a record in `prev`.
    async fn build_batch(&mut self, prev: Option<&Recording>) -> Result<Built, Failure> {
        // Without a batch endpoint only the head op can be sent: read no more.
        let batch_size = match self.batch_supported {
            Some(false) => 1,
            _ if self.singles > 0 => 1,
            _ => self.cfg.sync.batch_size as usize,
        };
        let skip = prev.map_or(0, |p| p.records.len());
        // While uploads run, ops that wait for them are passed over: look
        // far enough to find others (one at a time is the head alone).
        let busy = self.uploader.busy();
        let past_uploads = if busy { UPLOAD_WINDOW } else { 0 };
        let mut head = self.claimed_head(batch_size + skip + past_uploads).await?;
        // The ops of `prev` are being recorded: not sent again. Other ops at
        // or below its last were passed over, waiting for an upload: their
        // records stay waiting (so no later op of theirs goes first).
        let mut waiting: HashSet<(String, String)> = HashSet::new();
        if let Some(p) = prev {
            for (_, op) in head.iter().filter(|(s, _)| *s <= p.upto) {
                let key = (op.collection.clone(), op.local_id.clone());
                // (A record of `prev` has one op there: the one sent.)
                if !p.records.contains(&key) {
                    waiting.insert(key);
                }
            }
            head.retain(|(s, _)| *s > p.upto);
        }
        let keys: Vec<(String, String)> = head
            .iter()
            .map(|(_, op)| (op.collection.clone(), op.local_id.clone()))
            .collect();
        let wanted = keys.clone();
        let recs = self.read(move |s| s.records(&wanted)).await?;
        let mut batch: Vec<(u64, QueuedOp, WireOp)> = Vec::new();
        let mut seen = HashSet::new();
        // Records whose op waits for its content's upload: their later ops
        // wait too; other records' ops go on.
        let mut first_waiting = None;
        for (((seq, op), rec), key) in head.into_iter().zip(recs).zip(keys) {
            if waiting.contains(&key) {
                continue;
            }
            // One op per record per batch: a later op needs the id and
            // version the earlier one produces.
            if prev.is_some_and(|p| p.records.contains(&key)) || !seen.insert(key.clone()) {
                break;
            }
            if batch.len() == batch_size {
                break;
            }
            let wire = self.wire_op(&op, rec.as_ref());
            let ready = match &wire {
                Ok(Some(w)) => self.content_ready(w).await,
                _ => Ok(true),
            };
            match (wire, ready) {
                (Ok(Some(_)), Ok(false)) => {
                    first_waiting.get_or_insert(seq);
                    waiting.insert(key);
                }
                (Ok(Some(_)), Err(reason)) if batch.is_empty() && waiting.is_empty() => {
                    tracing::warn!(op_id = %op.op_id, "{reason}");
                    let r = self
                        .submit(WriteCmd::DeadLetter { seq, error: reason })
                        .await;
                    return Ok(Built::Settled(r));
                }
                (Ok(Some(_)), Err(_)) => break,
                (wire, _) => match wire {
                    Ok(Some(w)) => batch.push((seq, op, w)),
                    Ok(None) if batch.is_empty() => {
                        tracing::debug!(op_id = %op.op_id, "delete of a record the server never had: done locally");
                        return Ok(Built::Settled(
                            self.submit(WriteCmd::DropLocal { seq }).await,
                        ));
                    }
                    Ok(None) => break,
                    Err(reason) if batch.is_empty() => {
                        tracing::warn!(op_id = %op.op_id, "{reason}");
                        let r = self
                            .submit(WriteCmd::DeadLetter { seq, error: reason })
                            .await;
                        return Ok(Built::Settled(r));
                    }
                    Err(_) => break,
                },
            }
        }
        match first_waiting {
            // An upload started just now, and the window was the batch
            // alone: look again, past it, before sleeping.
            Some(_) if batch.is_empty() && !busy => Ok(Built::Batch(batch)),
            Some(seq) if batch.is_empty() => Ok(Built::Waiting(seq)),
            _ => Ok(Built::Batch(batch)),
        }
    }

    /// Records a batch's results: in the background when every op was
    /// applied (the next round overlaps with the commit), else at once.
    async fn record_results(
        &mut self,
        batch: Vec<(u64, QueuedOp, WireOp)>,
        results: Vec<OpResult>,
        round: RoundGuard,
    ) -> Result<(), Failure> {
        let all_applied = results.len() == batch.len()
            && results.iter().all(|r| matches!(r, OpResult::Applied(_)));
        let upto = batch.last().map_or(0, |b| b.0);
        let records: HashSet<(String, String)> = batch
            .iter()
            .map(|(_, op, _)| (op.collection.clone(), op.local_id.clone()))
            .collect();
        // One writer job, one durable commit for the whole batch.
        let cmds = batch
            .into_iter()
            .zip(results)
            .map(|((seq, op, w), res)| self.verdict_cmd(seq, &op, &w, res))
            .collect();
        if !all_applied {
            return self.submit(WriteCmd::Verdicts(cmds)).await;
        }
        let writer = self.deps.writer.clone();
        let done = tokio::spawn(async move {
            let r = writer.submit(WriteCmd::Verdicts(cmds)).await.map(|_| ());
            drop(round);
            r
        });
        self.recording = Some(Recording {
            done,
            upto,
            records,
        });
        Ok(())
    }

    /// The first `n` queued ops, claimed: the writer folds no later write
    /// into them any more, so what is read after the claim is exactly what
    /// the server gets (and what a retry with the same op_id re-sends).
    async fn claimed_head(&self, n: usize) -> Result<Vec<(u64, QueuedOp)>, Failure> {
        let peek = self.read(move |s| s.queue_head(n)).await?;
        let Some(upto) = peek.last().map(|(s, _)| *s) else {
            return Ok(peek);
        };
        self.submit(WriteCmd::Claim { upto }).await?;
        let mut head = self.read(move |s| s.queue_head(n)).await?;
        head.retain(|(s, _)| *s <= upto);
        Ok(head)
    }

    /// Records a failed attempt on the head op and passes the failure on.
    /// An attempt only counts and explains; it never dead-letters an op.
    async fn attempt_failed(&self, seq: u64, f: Failure) -> Result<(), Failure> {
        self.deps.metrics.pushed(PushResult::Failed, 1);
        self.submit(WriteCmd::Attempt {
            seq,
            error: f.reason().to_owned(),
        })
        .await?;
        Err(f)
    }

    /// The protocol op for a queued op: the server id and base version come
    /// from the record as it is now, after earlier ops were confirmed.
    ///
    /// This is always the record's earliest queued op, so a record without a
    /// server id has no create ahead of it (its create was dead-lettered and
    /// discarded, or the server deleted it): an update then re-creates the
    /// record, and a delete has nothing to delete on the server (`None`:
    /// finish it locally). With a server that announces `client_ids`, a
    /// create carries the local id as the record's id; otherwise the server
    /// assigns it and the ack maps it back.
    fn wire_op(&self, op: &QueuedOp, rec: Option<&StoredRecord>) -> Result<Option<WireOp>, String> {
        let data = match &op.data {
            Some(text) => match parse_doc_text(text) {
                Value::Object(m) => Some(m),
                _ => return Err(format!("op {} has a corrupt document", op.op_id)),
            },
            None => None,
        };
        // A retried dead letter carries the base it was made on; anything
        // else goes on the record's current server version.
        let server = match (&op.base, op.kind) {
            (Some(b), OpKind::Update | OpKind::Delete) => Some(b.clone()),
            _ => rec.and_then(|r| r.server_id.clone().zip(r.version)),
        };
        let new_id = self
            .machine
            .features()
            .client_ids
            .then(|| op.local_id.clone());
        let (kind, id, base_version) = match (op.kind, server) {
            (OpKind::Create, None) => (OpKind::Create, new_id, None),
            // A create (a retried dead letter, say) for a record the server
            // already has must not make a second server record.
            (OpKind::Create, Some((id, v))) => (OpKind::Update, Some(id), Some(v)),
            (kind, Some((id, v))) => (kind, Some(id), Some(v)),
            (OpKind::Update, None) => (OpKind::Create, new_id, None),
            (OpKind::Delete, None) => return Ok(None),
        };
        if kind != OpKind::Delete && data.is_none() {
            return Err(format!("{} op {} has no document", kind.as_str(), op.op_id));
        }
        // The scope asked for goes only to a server that announced scopes
        // (a revision-2 server gets the bytes it always got).
        let scope = match (self.machine.features().scopes, kind) {
            (true, OpKind::Create | OpKind::Update) => op.scope.clone(),
            _ => None,
        };
        Ok(Some(WireOp {
            scope,
            op_id: op.op_id.clone(),
            client_id: self.deps.store.client_id().to_owned(),
            collection: op.collection.clone(),
            kind,
            id,
            local_id: op.local_id.clone(),
            base_version,
            data,
            client_ts: op.client_ts,
            home: rec.and_then(|r| r.scope.clone()),
        }))
    }

    /// The writer job that records the server's verdict for `sent`, the
    /// protocol form of the queued `op`.
    ///
    /// A 409 with the very tombstone an update was sent on means the server
    /// does not let a deleted id be re-created (the reference backend does;
    /// the protocol leaves it open): resolving again would send the same
    /// update for ever, so the op is dead-lettered with that reason.
    fn verdict_cmd(&self, seq: u64, op: &QueuedOp, sent: &WireOp, res: OpResult) -> WriteCmd {
        match res {
            OpResult::Applied(record) => {
                self.deps.metrics.pushed(PushResult::Applied, 1);
                tracing::debug!(op_id = %op.op_id, server_id = %record.id, version = record.version, "op confirmed");
                WriteCmd::Ack { seq, record }
            }
            OpResult::Conflict(server)
                if server.deleted
                    && sent.kind == OpKind::Update
                    && sent.id.as_deref() == Some(server.id.as_str())
                    && sent.base_version == Some(server.version) =>
            {
                tracing::warn!(op_id = %op.op_id, collection = %op.collection, id = %op.local_id, "the server refuses to re-create a deleted id; dead-lettered");
                WriteCmd::DeadLetter {
                    seq,
                    error: format!(
                        "the server keeps a tombstone for id {:?} (version {}) and refuses to re-create it",
                        server.id, server.version
                    ),
                }
            }
            OpResult::Conflict(server) => {
                self.deps.metrics.pushed(PushResult::Conflict, 1);
                let (strategy, rules) = self.cfg.strategy_for(&op.collection);
                WriteCmd::Conflict {
                    seq,
                    server,
                    strategy,
                    rules,
                }
            }
            OpResult::Rejected { status, reason } => {
                self.deps.metrics.pushed(PushResult::Rejected, 1);
                tracing::warn!(op_id = %op.op_id, collection = %op.collection, id = %op.local_id, status, "op rejected by the server; dead-lettered");
                WriteCmd::DeadLetter { seq, error: reason }
            }
        }
    }
}
