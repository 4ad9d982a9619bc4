//! The sync worker: the I/O around [`Machine`]. It runs whether or not any
//! app is connected, asks the machine what to do, does it against the
//! backend and the store, and reports back. Every store change goes through
//! the writer, so an op leaves the queue in the same transaction that
//! records its result.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tokio::sync::{watch, Notify};

use crate::backend::client::{BackendClient, BatchOutcome, Failure, OpResult};
use crate::backend::protocol::{OpKind, WireOp};
use crate::config::Config;
use crate::domain::WriteError;
use crate::metrics::PushResult;
use crate::store::tables::META_CURSOR;
use crate::store::writer::{WriteCmd, WriterHandle};
use crate::store::{parse_doc_text, QueuedOp, Store, StoredRecord};
use crate::sync::machine::{Action, Machine, View};
use crate::sync::transport::Transport;
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
}

/// Builds a [`Transport`] for the current config (`None`: no backend).
pub type Connector = Arc<dyn Fn(&Config) -> Option<Arc<dyn Transport>> + Send + Sync>;

/// Starts the worker under a supervisor: should it ever panic, the panic
/// is logged, shown in status, and a fresh worker starts from the durable
/// queue a second later (nothing in memory is needed to resume).
pub fn spawn(deps: WorkerDeps) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let net = Arc::new(Notify::new());
        crate::sync::netwatch::spawn(net.clone());
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
        deps,
        cfg: cfg.clone(),
        client: None,
        epoch: tokio::time::Instant::now(),
        batch_supported: None,
        token_watch: None,
        net,
        logged_error: None,
        client_error: None,
    };
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
    token_watch: Option<crate::config::FileWatch>,
    net: Arc<Notify>,
    /// The last failure reason logged, so an outage logs once.
    logged_error: Option<String>,
    /// Why there is no client although a backend is configured.
    client_error: Option<String>,
}

/// A store or writer failure inside a round: not the backend's fault.
fn local(e: impl std::fmt::Display) -> Failure {
    Failure::Transient {
        reason: format!("local store: {e}"),
        retry_after_ms: None,
    }
}

impl Worker {
    fn rebuild_client(&mut self) {
        self.batch_supported = None;
        self.token_watch = None;
        self.client = None;
        self.client_error = None;
        if let Some(connect) = &self.deps.connector {
            self.client = connect(&self.cfg);
            self.machine.backend_changed();
            return;
        }
        let Some(url) = self.cfg.backend_url() else {
            return;
        };
        let token = match &self.cfg.backend.token_file {
            Some(p) => {
                self.token_watch = crate::config::watch_file(p)
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
        self.machine.backend_changed();
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
        }
        st.next_retry_at = st
            .next_retry_at
            .filter(|t| *t > self.now()) // passed: the attempt is under way now
            .map(|t| crate::domain::clock::now_ms() + (t - self.now()).max(0));
        self.deps.control.set_status(st);
    }

    async fn run(&mut self) {
        let mut shutdown = self.deps.shutdown.clone();
        loop {
            if *shutdown.borrow() {
                break;
            }
            self.reconfigure();
            let queue_nonempty = self
                .deps
                .store
                .queue_depth()
                .map(|d| d > 0)
                .unwrap_or(false);
            let view = View {
                has_backend: self.client.is_some(),
                paused: self.deps.control.is_paused(),
                queue_nonempty,
            };
            let before = self.machine.state();
            let action = self.machine.next(self.now(), view);
            self.publish(before);
            let before = self.machine.state();
            match action {
                Action::Push | Action::Pull | Action::Probe => {
                    let round = async {
                        match action {
                            Action::Push => self.push().await,
                            Action::Pull => self.pull().await,
                            _ => self.probe().await,
                        }
                    };
                    let r = tokio::select! {
                        r = round => r,
                        _ = shutdown.changed() => break,
                    };
                    let now = self.now();
                    match action {
                        Action::Push => self.machine.on_push(now, r),
                        Action::Pull => self.machine.on_pull(now, r),
                        _ => self.machine.on_probe(now, r),
                    }
                    self.publish(before);
                }
                Action::Sleep(deadline) => {
                    let until =
                        deadline.map(|t| self.epoch + Duration::from_millis(t.max(0) as u64));
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
                    let mut cfg_rx = self.deps.config.clone();
                    enum Wake {
                        Timer,
                        Work,
                        Sync,
                        Net,
                        Token,
                        Config,
                        Stop,
                    }
                    let why = tokio::select! {
                        _ = sleep => Wake::Timer,
                        _ = self.deps.queue_changed.notified() => Wake::Work,
                        _ = self.deps.control.wake.notified() => Wake::Sync,
                        _ = self.net.notified() => Wake::Net,
                        _ = token => Wake::Token,
                        _ = cfg_rx.changed() => Wake::Config,
                        _ = shutdown.changed() => Wake::Stop,
                    };
                    let now = self.now();
                    match why {
                        Wake::Stop => break,
                        Wake::Sync => self.machine.on_wake(now),
                        Wake::Net => self.machine.on_network_change(now),
                        Wake::Token => {
                            tracing::info!("token file changed; reloading credentials");
                            self.rebuild_client_keep_state();
                            self.machine.on_token_change(now);
                        }
                        Wake::Timer | Wake::Work | Wake::Config => {}
                    }
                }
            }
        }
        tracing::debug!("sync worker stopped");
    }

    /// Re-reads the token without forgetting the backoff state.
    fn rebuild_client_keep_state(&mut self) {
        let saved = self.machine.clone();
        let batch = self.batch_supported;
        self.rebuild_client();
        self.machine = saved;
        self.batch_supported = batch;
    }

    fn now(&self) -> i64 {
        self.epoch.elapsed().as_millis() as i64
    }

    fn client(&self) -> Result<&Arc<dyn Transport>, Failure> {
        self.client.as_ref().ok_or(Failure::Unreachable {
            reason: "no backend configured".into(),
        })
    }

    async fn probe(&mut self) -> Result<(), Failure> {
        self.client()?.health().await
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
    async fn push(&mut self) -> Result<(), Failure> {
        let batch_size = self.cfg.sync.batch_size as usize;
        let head = self.claimed_head(batch_size).await?;
        let mut batch: Vec<(u64, QueuedOp, WireOp)> = Vec::new();
        let mut seen = HashSet::new();
        for (seq, op) in head {
            // One op per record per batch: a later op needs the id and
            // version the earlier one produces.
            if !seen.insert((op.collection.clone(), op.local_id.clone())) {
                break;
            }
            let rec = self
                .deps
                .store
                .record(&op.collection, &op.local_id)
                .map_err(local)?;
            match self.wire_op(&op, rec.as_ref()) {
                Ok(Some(w)) => batch.push((seq, op, w)),
                Ok(None) if batch.is_empty() => {
                    tracing::debug!(op_id = %op.op_id, "delete of a record the server never had: done locally");
                    return self.submit(WriteCmd::DropLocal { seq }).await;
                }
                Ok(None) => break,
                Err(reason) if batch.is_empty() => {
                    tracing::warn!(op_id = %op.op_id, "{reason}");
                    return self
                        .submit(WriteCmd::DeadLetter { seq, error: reason })
                        .await;
                }
                Err(_) => break,
            }
        }
        if batch.is_empty() {
            return Ok(());
        }
        let client = self.client()?.clone();
        if batch.len() > 1 && self.batch_supported != Some(false) {
            let ops: Vec<WireOp> = batch.iter().map(|b| b.2.clone()).collect();
            let outcome = self.deps.metrics.time_push(client.apply_batch(&ops)).await;
            match outcome {
                Ok(BatchOutcome::Results(results)) => {
                    self.batch_supported = Some(true);
                    // One writer job, one durable commit for the whole batch.
                    let cmds = batch
                        .into_iter()
                        .zip(results)
                        .map(|((seq, op, _), res)| self.verdict_cmd(seq, &op, res))
                        .collect();
                    return self.submit(WriteCmd::Verdicts(cmds)).await;
                }
                Ok(BatchOutcome::Refused(reason)) => {
                    tracing::info!(%reason, "batch refused; sending its ops one at a time");
                }
                Ok(BatchOutcome::Unsupported) => {
                    tracing::info!(
                        backend = client.name(),
                        "backend has no v1/ops/batch; sending ops one at a time"
                    );
                    self.batch_supported = Some(false);
                }
                Err(f) => return self.attempt_failed(batch[0].0, f).await,
            }
        }
        let (seq, op, w) = batch.swap_remove(0);
        match self.deps.metrics.time_push(client.apply(&w)).await {
            Ok(res) => self.submit(self.verdict_cmd(seq, &op, res)).await,
            Err(f) => {
                if matches!(f, Failure::Unlisted { .. }) && self.batch_supported == Some(false) {
                    // The 404/405 that ruled out batches may have come from
                    // the same wrong URL: ask again once replies are sane.
                    self.batch_supported = None;
                }
                self.attempt_failed(seq, f).await
            }
        }
    }

    /// The first `n` queued ops, claimed: the writer folds no later write
    /// into them any more, so what is read after the claim is exactly what
    /// the server gets (and what a retry with the same op_id re-sends).
    async fn claimed_head(&self, n: usize) -> Result<Vec<(u64, QueuedOp)>, Failure> {
        let peek = self.deps.store.queue_head(n).map_err(local)?;
        let Some(upto) = peek.last().map(|(s, _)| *s) else {
            return Ok(peek);
        };
        self.submit(WriteCmd::Claim { upto }).await?;
        let mut head = self.deps.store.queue_head(n).map_err(local)?;
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
    /// finish it locally).
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
        let (kind, id, base_version) = match (op.kind, server) {
            (OpKind::Create, None) => (OpKind::Create, None, None),
            // A create (a retried dead letter, say) for a record the server
            // already has must not make a second server record.
            (OpKind::Create, Some((id, v))) => (OpKind::Update, Some(id), Some(v)),
            (kind, Some((id, v))) => (kind, Some(id), Some(v)),
            (OpKind::Update, None) => (OpKind::Create, None, None),
            (OpKind::Delete, None) => return Ok(None),
        };
        if kind != OpKind::Delete && data.is_none() {
            return Err(format!("{} op {} has no document", kind.as_str(), op.op_id));
        }
        Ok(Some(WireOp {
            op_id: op.op_id.clone(),
            client_id: self.deps.store.client_id().to_owned(),
            collection: op.collection.clone(),
            kind,
            id,
            local_id: op.local_id.clone(),
            base_version,
            data,
            client_ts: op.client_ts,
        }))
    }

    /// The writer job that records the server's verdict for one op.
    fn verdict_cmd(&self, seq: u64, op: &QueuedOp, res: OpResult) -> WriteCmd {
        match res {
            OpResult::Applied(record) => {
                self.deps.metrics.pushed(PushResult::Applied, 1);
                tracing::debug!(op_id = %op.op_id, server_id = %record.id, version = record.version, "op confirmed");
                WriteCmd::Ack { seq, record }
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

    /// Pulls every page of changes from the stored cursor.
    async fn pull(&mut self) -> Result<(), Failure> {
        let client = self.client()?.clone();
        let limit = self.cfg.sync.batch_size.max(1);
        loop {
            let cursor = self
                .deps
                .store
                .meta(META_CURSOR)
                .map_err(local)?
                .map(|b| String::from_utf8_lossy(&b).into_owned());
            let page = client.changes(cursor.as_deref(), limit).await?;
            let more = page.more && !page.changes.is_empty();
            let n = page.changes.len();
            self.deps.metrics.pulled(n);
            self.submit(WriteCmd::ApplyChanges {
                changes: page.changes,
                cursor: page.cursor,
            })
            .await?;
            if n > 0 {
                tracing::debug!(changes = n, "pulled");
            }
            if !more {
                return Ok(());
            }
        }
    }
}
