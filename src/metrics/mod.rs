//! The daemon's counters and gauges, and their Prometheus text exposition.
//!
//! Exists so that the numbers `syncd metrics` and `/metrics` show are real
//! counters kept where things happen (the sync worker counts pushes and
//! pulls, the socket server connections, the write commands writes), not
//! guesses rebuilt from `status`. It sits on the `config` floor of the
//! layering in `src/lib.rs` — it imports nothing of ours above `domain` —
//! so that every floor above may count into it. The gauges that describe
//! the store (queue depth, dead letters ...) are set by whoever renders the
//! text (`crate::ipc::cmd::metrics`), just before rendering.
//!
//! The exposition format is `prometheus-client`'s (the maintained
//! crate of the Prometheus project), not hand-written.

pub mod runtime;
pub mod section;

use std::sync::atomic::AtomicU64;
use std::time::Duration;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

pub use runtime::RuntimeInfo;
pub use section::MetricsSection;

/// `{result="applied"}` and the like.
type Labels = [(&'static str, &'static str); 1];

/// What the server (or the attempt) made of one pushed op.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PushResult {
    Applied,
    Conflict,
    Rejected,
    /// The attempt failed (unreachable, 5xx, auth ...): the op stays queued.
    Failed,
}

impl PushResult {
    fn label(self) -> &'static str {
        match self {
            PushResult::Applied => "applied",
            PushResult::Conflict => "conflict",
            PushResult::Rejected => "rejected",
            PushResult::Failed => "failed",
        }
    }
}

/// The sync states `syncd_backend_state{state}` has a series for.
pub const BACKEND_STATES: [&str; 7] = [
    "online",
    "offline",
    "backoff",
    "paused",
    "auth_error",
    "backend_error",
    "local_store_error",
];

/// The gauges a renderer sets from the store and the worker's status.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Snapshot {
    pub queue_depth: u64,
    pub oldest_pending_age_s: f64,
    pub dead_letters: u64,
    pub conflicts_parked: u64,
    pub store_bytes: u64,
    pub state: String,
    /// The store was found damaged during work.
    pub store_damaged: bool,
    /// Attachment bytes sent to and received from the backend since start.
    pub attachment_bytes: (u64, u64),
}

/// Every series syncd exports. Cheap to share (`Arc<Metrics>`); counting
/// is a relaxed atomic add.
pub struct Metrics {
    registry: Registry,
    queue_depth: Gauge,
    oldest_pending_age: Gauge<f64, AtomicU64>,
    dead_letters: Gauge,
    conflicts_parked: Gauge,
    ops_pushed: Family<Labels, Counter>,
    pull_changes: Counter,
    push_latency: Histogram,
    backend_state: Family<Labels, Gauge>,
    writes: Counter,
    connections: Gauge,
    store_bytes: Gauge,
    store_damaged: Gauge,
    open_check_seconds: Gauge<f64, AtomicU64>,
    local_store_errors: Counter,
    attachment_bytes: Family<Labels, Counter>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut m = Metrics {
            registry: Registry::with_prefix("syncd"),
            queue_depth: Gauge::default(),
            oldest_pending_age: Gauge::default(),
            dead_letters: Gauge::default(),
            conflicts_parked: Gauge::default(),
            ops_pushed: Family::default(),
            pull_changes: Counter::default(),
            // 1 ms .. ~33 s.
            push_latency: Histogram::new(exponential_buckets(0.001, 2.0, 16)),
            backend_state: Family::default(),
            writes: Counter::default(),
            connections: Gauge::default(),
            store_bytes: Gauge::default(),
            store_damaged: Gauge::default(),
            open_check_seconds: Gauge::default(),
            local_store_errors: Counter::default(),
            attachment_bytes: Family::default(),
        };
        for r in [
            PushResult::Applied,
            PushResult::Conflict,
            PushResult::Rejected,
            PushResult::Failed,
        ] {
            // Present from the start, so a rate() has a zero to start from.
            let _ = m.ops_pushed.get_or_create(&[("result", r.label())]);
        }
        m.register_all();
        m
    }

    fn register_all(&mut self) {
        let r = &mut self.registry;
        r.register(
            "queue_depth",
            "Operations waiting to be pushed",
            self.queue_depth.clone(),
        );
        r.register(
            "oldest_pending_age_seconds",
            "Age of the oldest queued operation (0 when the queue is empty)",
            self.oldest_pending_age.clone(),
        );
        r.register(
            "dead_letters",
            "Operations the server rejected for good",
            self.dead_letters.clone(),
        );
        r.register(
            "conflicts_parked",
            "Conflicts waiting for manual resolution",
            self.conflicts_parked.clone(),
        );
        r.register(
            "ops_pushed",
            "Pushed operations by outcome",
            self.ops_pushed.clone(),
        );
        r.register(
            "pull_changes",
            "Remote changes pulled from the backend",
            self.pull_changes.clone(),
        );
        r.register(
            "push_latency_seconds",
            "Time one push request (one op or one batch) took",
            self.push_latency.clone(),
        );
        r.register(
            "backend_state",
            "1 for the sync worker's current state, 0 for the others",
            self.backend_state.clone(),
        );
        r.register(
            "writes",
            "Writes (put, patch, delete) accepted from apps",
            self.writes.clone(),
        );
        r.register(
            "connections",
            "Open local socket connections",
            self.connections.clone(),
        );
        r.register(
            "store_bytes",
            "Size of the store file",
            self.store_bytes.clone(),
        );
        r.register(
            "attachment_bytes",
            "Attachment content sent to (up) and received from (down) the backend",
            self.attachment_bytes.clone(),
        );
        r.register(
            "store_damaged",
            "1 when the storage engine found the store damaged during work (writes are refused)",
            self.store_damaged.clone(),
        );
        r.register(
            "store_open_check_seconds",
            "Time the last start spent checking every page of the store (0: skipped after a clean shutdown)",
            self.open_check_seconds.clone(),
        );
        r.register(
            "local_store_errors",
            "Sync rounds (push, pull) that failed on this device's own store, not the backend",
            self.local_store_errors.clone(),
        );
    }

    /// A sync round failed on the local store.
    pub fn local_store_error(&self) {
        self.local_store_errors.inc();
    }

    /// `n` ops got the verdict `r`.
    pub fn pushed(&self, r: PushResult, n: u64) {
        self.ops_pushed
            .get_or_create(&[("result", r.label())])
            .inc_by(n);
    }

    /// One push request took `d`.
    pub fn push_latency(&self, d: Duration) {
        self.push_latency.observe(d.as_secs_f64());
    }

    /// Runs one push request, observing how long it took.
    pub async fn time_push<F: std::future::Future>(&self, fut: F) -> F::Output {
        let t0 = std::time::Instant::now();
        let out = fut.await;
        self.push_latency(t0.elapsed());
        out
    }

    /// A pull page brought `n` changes.
    pub fn pulled(&self, n: usize) {
        self.pull_changes.inc_by(n as u64);
    }

    /// The start checked every page of the store in `d` (zero: skipped).
    pub fn open_checked(&self, d: Duration) {
        self.open_check_seconds.set(d.as_secs_f64());
    }

    /// An app's write was accepted.
    pub fn wrote(&self) {
        self.writes.inc();
    }

    /// Counts a connection open for as long as the guard lives.
    pub fn connection(&self) -> ConnectionGuard {
        self.connections.inc();
        ConnectionGuard(self.connections.clone())
    }

    /// Sets the gauges from `s` and renders every series as text.
    pub fn render(&self, s: &Snapshot) -> String {
        self.queue_depth.set(clamp(s.queue_depth));
        self.oldest_pending_age.set(s.oldest_pending_age_s);
        self.dead_letters.set(clamp(s.dead_letters));
        self.conflicts_parked.set(clamp(s.conflicts_parked));
        self.store_bytes.set(clamp(s.store_bytes));
        self.store_damaged.set(i64::from(s.store_damaged));
        for (way, total) in [("up", s.attachment_bytes.0), ("down", s.attachment_bytes.1)] {
            let c = self.attachment_bytes.get_or_create(&[("direction", way)]);
            c.inc_by(total.saturating_sub(c.get()));
        }
        for st in BACKEND_STATES {
            let v = i64::from(st == s.state);
            self.backend_state.get_or_create(&[("state", st)]).set(v);
        }
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}

fn clamp(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// Keeps `syncd_connections` up while a connection lives.
pub struct ConnectionGuard(Gauge);

impl ConnectionGuard {
    /// Runs `fut` with this guard held.
    pub async fn run<F: std::future::Future>(self, fut: F) -> F::Output {
        let out = fut.await;
        drop(self);
        out
    }
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_every_series_with_its_value() {
        let m = Metrics::new();
        m.pushed(PushResult::Applied, 3);
        m.wrote();
        let g = m.connection();
        let text = m.render(&Snapshot {
            queue_depth: 7,
            state: "offline".into(),
            ..Snapshot::default()
        });
        drop(g);
        for line in [
            "syncd_queue_depth 7",
            "syncd_ops_pushed_total{result=\"applied\"} 3",
            "syncd_ops_pushed_total{result=\"failed\"} 0",
            "syncd_writes_total 1",
            "syncd_connections 1",
            "syncd_backend_state{state=\"offline\"} 1",
            "syncd_backend_state{state=\"online\"} 0",
            "syncd_push_latency_seconds_count 0",
            "syncd_local_store_errors_total 0",
            "syncd_backend_state{state=\"local_store_error\"} 0",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} missing in\n{text}");
        }
        assert!(text.ends_with("# EOF\n"));
    }
}
