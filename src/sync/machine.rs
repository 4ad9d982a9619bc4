//! The sync worker's decisions as a pure state machine.
//!
//! The worker (I/O) asks [`Machine::next`] what to do, does it, and reports
//! the outcome back (`on_push`, `on_pull`, `on_probe`) along with outside
//! events (`on_wake`, `on_network_change`, `on_token_change`). Time is a
//! number passed in and randomness comes from a seeded generator, so a
//! simulation can drive thousands of steps deterministically.
//!
//! Pulls run beside pushes: [`Action::Pull`] starts one (the worker runs it
//! as its own task) and the machine hands out the next only after
//! `on_pull`. With a server that announces `wait` (and `sync.live` on),
//! the next pull starts as soon as one ends, so one waiting pull is always
//! open; otherwise pulls come every `pull_interval`. A "waiting" pull that
//! comes back at once with nothing also falls back to the interval, so a
//! server that ignores `wait` is never hammered.

use crate::backend::client::Failure;
use crate::backend::protocol::Features;
use crate::sync::backoff::Backoff;
use crate::sync::{State, SyncStatus};

/// While the backend is unreachable, health probes run at least this often
/// (with jitter), so sync resumes soon after it returns even where the OS
/// gives no network-change events (or the backend, not the network, was
/// down).
pub const OFFLINE_PROBE_MAX_MS: u64 = 2_000;

/// A backend that answers outside the protocol's table (a wrong URL, a
/// CouchDB database not created yet) is retried at least this often: the
/// fix is a person's (create the database, correct the URL), and sync
/// should notice it within seconds, not after a long backoff. One cheap
/// request every few seconds is no load on a server.
pub const BACKEND_ERROR_RETRY_MAX_MS: u64 = 5_000;

/// A waiting pull that ends sooner than this with no change was not held:
/// the server ignores `wait`.
pub const HELD_PULL_MIN_MS: i64 = 1_000;

/// How a pull (every page of it) went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PullDone {
    /// Changes received.
    pub changes: usize,
    /// How long the pull took, ms.
    pub elapsed_ms: i64,
    /// Whether it asked the server to hold it (`wait`).
    pub waited: bool,
}

/// What the worker should do next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Send the head of the queue.
    Push,
    /// Start a pull of remote changes beside the pushes, asking the server
    /// to hold it up to this many seconds (`None`: answer at once). Any
    /// pull still running is stale (from before a reconnect): stop it.
    Pull(Option<u32>),
    /// Stop the running pull (paused, or no backend).
    StopPull,
    /// `GET v1/health`.
    Probe,
    /// Nothing to do until this time (ms), or until an event if `None`.
    Sleep(Option<i64>),
}

/// What the worker sees of the world when it asks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct View {
    pub has_backend: bool,
    pub paused: bool,
    pub queue_nonempty: bool,
}

#[derive(Debug, Clone)]
pub struct Machine {
    state: State,
    backoff: Backoff,
    /// No request before this (backoff, Retry-After, auth wait).
    not_before: Option<i64>,
    /// The part of `not_before` the server asked for: wakes and network
    /// changes do not cut it short.
    retry_after_until: Option<i64>,
    probe_needed: bool,
    pull_requested: bool,
    pull_due_at: i64,
    pull_interval_ms: i64,
    /// A pull runs (started, not yet reported).
    pull_in_flight: bool,
    /// The running pull is from before a reconnect: start a fresh one.
    restart_pull: bool,
    /// A push round succeeded: without live pulls, pull once the queue
    /// has drained.
    pull_after_drain: bool,
    /// `sync.live` and `sync.wait_s`.
    live_wanted: bool,
    wait_s: u32,
    /// What the backend announced at the last successful probe.
    features: Features,
    /// When the last pull succeeded (machine ms).
    last_pull_at: Option<i64>,
    last_error: Option<String>,
    rng: fastrand::Rng,
}

/// Default `sync.wait_s`: below every usual proxy and client timeout.
pub const DEFAULT_WAIT_S: u32 = 25;

impl Machine {
    pub fn new(
        backoff_initial_ms: u64,
        backoff_max_ms: u64,
        pull_interval_ms: u64,
        seed: u64,
    ) -> Self {
        Machine {
            state: State::Offline,
            backoff: Backoff::new(backoff_initial_ms, backoff_max_ms),
            not_before: None,
            retry_after_until: None,
            probe_needed: true,
            pull_requested: true,
            pull_due_at: 0,
            pull_interval_ms: pull_interval_ms as i64,
            pull_in_flight: false,
            restart_pull: false,
            pull_after_drain: false,
            live_wanted: true,
            wait_s: DEFAULT_WAIT_S,
            features: Features::default(),
            last_pull_at: None,
            last_error: None,
            rng: fastrand::Rng::with_seed(seed),
        }
    }

    /// `sync.live` and `sync.wait_s` (1 to 60).
    pub fn set_live(&mut self, live: bool, wait_s: u32) {
        self.live_wanted = live;
        self.wait_s = wait_s.clamp(1, 60);
    }

    /// The features the backend announced at the last probe.
    pub fn features(&self) -> Features {
        self.features
    }

    /// Whether pulls are held by the server (live) rather than polled.
    pub fn live(&self) -> bool {
        self.live_wanted && self.features.wait
    }

    /// When the last pull succeeded (machine ms).
    pub fn last_pull_at(&self) -> Option<i64> {
        self.last_pull_at
    }

    /// How remote changes arrive, for status: `live` or `polling every Ns`
    /// while online; otherwise that they do not arrive now, and how they
    /// will once sync runs again (a live pull cannot be open while the
    /// backend is unreachable or refuses us).
    pub fn remote_changes(&self) -> String {
        let mode = if self.live() {
            "live".to_owned()
        } else {
            format!("polling every {}s", self.pull_interval_ms / 1000)
        };
        match self.state {
            State::Online => mode,
            State::Paused => format!("none while paused; {mode} once resumed"),
            other => format!("none while {}; {mode} once online", other.as_str()),
        }
    }

    /// New limits after a config reload.
    pub fn configure(
        &mut self,
        backoff_initial_ms: u64,
        backoff_max_ms: u64,
        pull_interval_ms: u64,
    ) {
        self.backoff.set_limits(backoff_initial_ms, backoff_max_ms);
        if self.pull_interval_ms != pull_interval_ms as i64 {
            self.pull_due_at = self.pull_due_at - self.pull_interval_ms + pull_interval_ms as i64;
            self.pull_interval_ms = pull_interval_ms as i64;
        }
    }

    /// The backend changed (URL or credentials): start afresh.
    pub fn backend_changed(&mut self) {
        self.backoff.reset();
        self.not_before = None;
        self.retry_after_until = None;
        self.probe_needed = true;
        self.pull_requested = true;
        self.restart_pull = self.pull_in_flight;
        self.features = Features::default();
        self.last_error = None;
        if self.state != State::Paused {
            self.state = State::Offline;
        }
    }

    pub fn state(&self) -> State {
        self.state
    }

    pub fn status(&self) -> SyncStatus {
        SyncStatus {
            state: self.state,
            last_error: self.last_error.clone(),
            next_retry_at: match self.state {
                State::Online | State::Paused => None,
                _ => self.not_before,
            },
            remote_changes: Some(self.remote_changes()),
            last_pull_at: self.last_pull_at,
        }
    }

    pub fn next(&mut self, now: i64, view: View) -> Action {
        if (!view.has_backend || view.paused) && self.pull_in_flight {
            self.pull_in_flight = false;
            self.restart_pull = false;
            self.pull_requested = true;
            return Action::StopPull;
        }
        // Paused wins over "no backend": the user's pause is what status
        // must show, with or without a backend to sync to.
        if view.paused {
            self.state = State::Paused;
            return Action::Sleep(None);
        }
        if !view.has_backend {
            self.state = State::Offline;
            self.last_error = None;
            self.not_before = None;
            return Action::Sleep(None);
        }
        if self.state == State::Paused {
            // Resumed: find out where we stand.
            self.state = State::Offline;
            self.probe_needed = true;
        }
        if let Some(t) = self.not_before {
            if now < t {
                return Action::Sleep(Some(t));
            }
        }
        if self.probe_needed {
            return Action::Probe;
        }
        if self.pull_due(now, view) {
            self.pull_in_flight = true;
            self.restart_pull = false;
            self.pull_requested = false;
            self.pull_after_drain = false;
            return Action::Pull(self.live().then_some(self.wait_s));
        }
        if view.queue_nonempty {
            return Action::Push;
        }
        if self.pull_in_flight {
            // The pull's end wakes the worker.
            return Action::Sleep(None);
        }
        Action::Sleep(Some(self.pull_due_at))
    }

    /// Whether to start a pull now: a stale one runs, or none runs and one
    /// was asked for or is due.
    fn pull_due(&self, now: i64, view: View) -> bool {
        if self.restart_pull {
            return true;
        }
        !self.pull_in_flight
            && (self.pull_requested
                || now >= self.pull_due_at
                || (self.pull_after_drain && !view.queue_nonempty))
    }

    fn succeed(&mut self) {
        if self.state != State::Online {
            // Back online (offline, backend error, auth fixed): pull at
            // once, afresh if a pull from before still hangs.
            self.pull_requested = true;
            self.restart_pull = self.pull_in_flight;
        }
        self.state = State::Online;
        self.backoff.reset();
        self.not_before = None;
        self.retry_after_until = None;
        self.probe_needed = false;
        self.last_error = None;
    }

    fn fail(&mut self, now: i64, f: &Failure) {
        self.last_error = Some(f.reason().to_owned());
        match f {
            Failure::Unreachable { .. } => {
                self.state = State::Offline;
                let d = self.backoff.fail(self.rng.f64()).min(OFFLINE_PROBE_MAX_MS);
                self.not_before = Some(now + d as i64);
                self.probe_needed = true;
            }
            Failure::Unlisted { .. } => {
                // Not a verdict on anything: the same backoff as a
                // transient failure, under its own state.
                self.state = State::BackendError;
                let d = self
                    .backoff
                    .fail(self.rng.f64())
                    .min(BACKEND_ERROR_RETRY_MAX_MS);
                self.not_before = Some(now + d as i64);
            }
            Failure::Transient { retry_after_ms, .. } => {
                self.state = State::Backoff;
                let mut d = self.backoff.fail(self.rng.f64());
                if let Some(ra) = retry_after_ms {
                    d = d.max(*ra);
                    self.retry_after_until = Some(now + *ra as i64);
                }
                self.not_before = Some(now + d as i64);
            }
            Failure::Auth { .. } => {
                self.state = State::AuthError;
                self.not_before = Some(now + self.backoff.max_ms as i64);
            }
        }
    }

    /// A push round ended: `Ok` if at least the head op got a verdict.
    pub fn on_push(&mut self, now: i64, r: Result<(), Failure>) {
        match r {
            Ok(()) => {
                self.succeed();
                // A live pull sees the change by itself; a polling one
                // comes once the queue has drained.
                self.pull_after_drain = !self.live();
            }
            Err(f) => self.fail(now, &f),
        }
    }

    /// The worker stopped the running pull itself (new credentials): start
    /// another as soon as requests are allowed.
    pub fn pull_stopped(&mut self) {
        if self.pull_in_flight {
            self.pull_in_flight = false;
            self.restart_pull = false;
            self.pull_requested = true;
        }
    }

    /// The running pull ended.
    pub fn on_pull(&mut self, now: i64, r: Result<PullDone, Failure>) {
        self.pull_in_flight = false;
        match r {
            Ok(done) => {
                self.succeed();
                self.pull_requested = false;
                self.restart_pull = false;
                self.last_pull_at = Some(now);
                let held = done.changes > 0 || done.elapsed_ms >= HELD_PULL_MIN_MS;
                self.pull_due_at = if done.waited && held && self.live() {
                    now
                } else {
                    now + self.pull_interval_ms
                };
            }
            Err(f) => {
                self.pull_requested = true;
                self.fail(now, &f);
            }
        }
    }

    /// A health probe proves reachability, nothing more: it ends an
    /// offline spell, but not a backoff for server errors, an auth error
    /// nor a backend error (after which a pull is due, so that a real
    /// request decides promptly even with an empty queue).
    pub fn on_probe(&mut self, now: i64, r: Result<Features, Failure>) {
        if let Ok(f) = &r {
            self.features = *f;
        }
        match r {
            Ok(_) if self.state == State::Offline => self.succeed(),
            Ok(_) => {
                self.probe_needed = false;
                if self.state == State::BackendError {
                    self.pull_requested = true;
                }
            }
            Err(f) => self.fail(now, &f),
        }
    }

    /// `syncd sync`, resume: push and pull now, within any Retry-After.
    pub fn on_wake(&mut self, now: i64) {
        self.pull_requested = true;
        self.cut_wait(now);
    }

    /// The OS reports a network change: probe now.
    /// Only an unreachable backend is helped by this: a failing or
    /// refusing one keeps its backoff (network chatter must not defeat it).
    pub fn on_network_change(&mut self, now: i64) {
        if self.state == State::Offline {
            self.probe_needed = true;
            self.cut_wait(now);
        }
    }

    /// The token file changed: an auth error may be fixed.
    pub fn on_token_change(&mut self, now: i64) {
        if self.state == State::AuthError {
            self.not_before = None;
            self.cut_wait(now);
        }
    }

    fn cut_wait(&mut self, now: i64) {
        self.not_before = self.retry_after_until.filter(|t| *t > now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const V: View = View {
        has_backend: true,
        paused: false,
        queue_nonempty: true,
    };

    fn transient(ra: Option<u64>) -> Failure {
        Failure::Transient {
            reason: "HTTP 503".into(),
            retry_after_ms: ra,
        }
    }

    const IDLE: View = View {
        queue_nonempty: false,
        ..V
    };

    const LIVE: Features = Features {
        batch: true,
        wait: true,
        client_ids: true,
    };

    fn done(changes: usize, elapsed_ms: i64, waited: bool) -> Result<PullDone, Failure> {
        Ok(PullDone {
            changes,
            elapsed_ms,
            waited,
        })
    }

    /// A successful probe of a revision-1 server and the pull that follows
    /// every reconnect.
    fn online(m: &mut Machine, now: i64) {
        m.on_probe(now, Ok(Features::default()));
        assert_eq!(
            m.next(now, V),
            Action::Pull(None),
            "a reconnect pulls at once"
        );
        m.on_pull(now, done(0, 5, false));
    }

    #[test]
    fn probe_push_pull_sleep() {
        let mut m = Machine::new(100, 1000, 60_000, 1);
        assert_eq!(m.next(0, V), Action::Probe);
        online(&mut m, 0);
        assert_eq!(m.state(), State::Online);
        assert_eq!(m.next(0, V), Action::Push);
        m.on_push(0, Ok(()));
        // Polling: a pull once the queue has drained, and every interval.
        assert_eq!(m.next(0, V), Action::Push);
        assert_eq!(m.next(1, IDLE), Action::Pull(None));
        m.on_pull(1, done(0, 5, false));
        assert_eq!(m.next(2, IDLE), Action::Sleep(Some(60_001)));
        assert_eq!(
            m.next(60_001, V),
            Action::Pull(None),
            "due even with a queue"
        );
    }

    #[test]
    fn live_keeps_one_waiting_pull_beside_pushes() {
        let mut m = Machine::new(100, 1000, 60_000, 1);
        m.set_live(true, 25);
        assert_eq!(m.next(0, V), Action::Probe);
        m.on_probe(0, Ok(LIVE));
        assert_eq!(m.remote_changes(), "live");
        assert_eq!(m.next(0, V), Action::Pull(Some(25)));
        // Pushes go on while the pull is held; no second pull.
        for now in 1..5 {
            assert_eq!(m.next(now, V), Action::Push);
            m.on_push(now, Ok(()));
        }
        assert_eq!(m.next(5, IDLE), Action::Sleep(None));
        // Held to the end with nothing, or back with changes: re-open at once.
        m.on_pull(25_000, done(0, 25_000, true));
        assert_eq!(m.next(25_000, IDLE), Action::Pull(Some(25)));
        m.on_pull(25_010, done(3, 10, true));
        assert_eq!(m.next(25_010, V), Action::Pull(Some(25)));
        assert_eq!(m.status().last_pull_at, Some(25_010));
    }

    #[test]
    fn a_server_that_ignores_wait_is_polled() {
        let mut m = Machine::new(100, 1000, 60_000, 1);
        m.on_probe(0, Ok(LIVE));
        assert_eq!(m.next(0, IDLE), Action::Pull(Some(DEFAULT_WAIT_S)));
        // Back at once with nothing: not held, so no spinning.
        m.on_pull(3, done(0, 3, true));
        assert_eq!(m.next(3, IDLE), Action::Sleep(Some(60_003)));
        // sync.live = false: polling whatever the server offers.
        m.set_live(false, 25);
        assert_eq!(m.remote_changes(), "polling every 60s");
        assert_eq!(m.next(60_003, IDLE), Action::Pull(None));
    }

    #[test]
    fn reconnect_restarts_a_stale_pull_and_pause_stops_it() {
        let mut m = Machine::new(100, 1000, 60_000, 1);
        m.on_probe(0, Ok(LIVE));
        assert_eq!(m.next(0, IDLE), Action::Pull(Some(25)));
        m.on_push(
            1,
            Err(Failure::Unreachable {
                reason: "down".into(),
            }),
        );
        assert_eq!(m.state(), State::Offline);
        let Action::Sleep(Some(t)) = m.next(1, V) else {
            panic!()
        };
        assert_eq!(m.next(t, V), Action::Probe);
        m.on_probe(t, Ok(LIVE));
        // The pull from before the outage may hang on a dead connection.
        assert_eq!(m.next(t, V), Action::Pull(Some(25)));
        assert_eq!(m.next(t, V), Action::Push);
        assert_eq!(m.next(t, View { paused: true, ..V }), Action::StopPull);
        assert_eq!(m.next(t, View { paused: true, ..V }), Action::Sleep(None));
        assert_eq!(m.next(t, V), Action::Probe);
        m.on_probe(t, Ok(Features::default()));
        assert_eq!(m.next(t, V), Action::Pull(None), "revision 1: no wait");
        assert!(m.remote_changes().starts_with("polling"));
    }

    #[test]
    fn a_pull_stopped_by_the_worker_is_started_again() {
        let mut m = Machine::new(100, 1000, 60_000, 1);
        m.on_probe(0, Ok(LIVE));
        assert_eq!(m.next(0, IDLE), Action::Pull(Some(25)));
        assert_eq!(m.next(1, IDLE), Action::Sleep(None));
        m.pull_stopped();
        assert_eq!(m.next(2, IDLE), Action::Pull(Some(25)));
    }

    #[test]
    fn a_failed_pull_backs_off_then_pulls_again() {
        let mut m = Machine::new(100, 1000, 60_000, 1);
        m.on_probe(0, Ok(LIVE));
        assert_eq!(m.next(0, IDLE), Action::Pull(Some(25)));
        m.on_pull(10, Err(transient(None)));
        assert_eq!(m.state(), State::Backoff);
        let Action::Sleep(Some(t)) = m.next(10, IDLE) else {
            panic!("no backoff after a failed pull")
        };
        assert!(t > 10);
        assert_eq!(m.next(t, IDLE), Action::Pull(Some(25)));
        m.on_pull(t + 5, done(1, 5, true));
        assert_eq!(m.state(), State::Online);
    }

    #[test]
    fn auth_fixed_pulls_at_once() {
        let mut m = Machine::new(100, 5000, 60_000, 1);
        online(&mut m, 0);
        m.on_push(
            0,
            Err(Failure::Auth {
                reason: "401".into(),
            }),
        );
        m.on_token_change(1);
        assert_eq!(m.next(1, V), Action::Push);
        m.on_push(2, Ok(()));
        assert_eq!(m.next(2, V), Action::Pull(None));
    }

    #[test]
    fn no_backend_or_paused_sleeps_forever() {
        let mut m = Machine::new(100, 1000, 60_000, 1);
        assert_eq!(
            m.next(
                0,
                View {
                    has_backend: false,
                    ..V
                }
            ),
            Action::Sleep(None)
        );
        assert_eq!(m.state(), State::Offline);
        assert_eq!(m.next(0, View { paused: true, ..V }), Action::Sleep(None));
        assert_eq!(m.state(), State::Paused);
        assert_eq!(m.next(0, V), Action::Probe);
    }

    #[test]
    fn paused_without_a_backend_shows_paused() {
        let mut m = Machine::new(100, 1000, 60_000, 1);
        let v = View {
            has_backend: false,
            paused: true,
            ..V
        };
        assert_eq!(m.next(0, v), Action::Sleep(None));
        assert_eq!(m.state(), State::Paused);
        let resumed = View { paused: false, ..v };
        assert_eq!(m.next(0, resumed), Action::Sleep(None));
        assert_eq!(m.state(), State::Offline);
    }

    #[test]
    fn retry_after_is_honoured_even_on_wake() {
        let mut m = Machine::new(100, 1000, 60_000, 1);
        online(&mut m, 0);
        m.on_push(0, Err(transient(Some(2000))));
        assert_eq!(m.state(), State::Backoff);
        match m.next(10, V) {
            Action::Sleep(Some(t)) => assert!(t >= 2000),
            a => panic!("{a:?}"),
        }
        m.on_wake(10);
        assert_eq!(m.next(10, V), Action::Sleep(Some(2000)));
        // `syncd sync` asked for a pull too; it starts beside the push.
        assert_eq!(m.next(2000, V), Action::Pull(None));
        assert_eq!(m.next(2000, V), Action::Push);
    }

    #[test]
    fn backoff_grows_then_resets() {
        let mut m = Machine::new(100, 100_000, 60_000, 7);
        online(&mut m, 0);
        let mut now = 0;
        let mut waits = Vec::new();
        for _ in 0..8 {
            m.on_push(now, Err(transient(None)));
            let Action::Sleep(Some(t)) = m.next(now, V) else {
                panic!()
            };
            waits.push(t - now);
            assert!(t > now, "never a busy loop");
            now = t;
        }
        assert!(m.status().next_retry_at.is_some());
        m.on_push(now, Ok(()));
        // Back online: a pull at once, beside the pushes.
        assert_eq!(m.next(now, V), Action::Pull(None));
        assert_eq!(m.next(now, V), Action::Push);
        assert!(waits.iter().all(|w| *w <= 100_000));
    }

    #[test]
    fn offline_probes_quickly_and_network_change_cuts_wait() {
        let mut m = Machine::new(1000, 600_000, 60_000, 3);
        let down = Failure::Unreachable {
            reason: "refused".into(),
        };
        for i in 0..20 {
            m.on_probe(i * 10_000, Err(down.clone()));
        }
        assert_eq!(m.state(), State::Offline);
        let Action::Sleep(Some(t)) = m.next(190_000, V) else {
            panic!()
        };
        assert!(t - 190_000 <= OFFLINE_PROBE_MAX_MS as i64);
        m.on_network_change(190_001);
        assert_eq!(m.next(190_001, V), Action::Probe);
    }

    #[test]
    fn auth_error_waits_for_token_or_max() {
        let mut m = Machine::new(100, 5000, 60_000, 1);
        online(&mut m, 0);
        m.on_push(
            0,
            Err(Failure::Auth {
                reason: "HTTP 401".into(),
            }),
        );
        assert_eq!(m.state(), State::AuthError);
        assert_eq!(m.next(1, V), Action::Sleep(Some(5000)));
        m.on_token_change(2);
        assert_eq!(m.next(2, V), Action::Push);
        assert_eq!(m.state(), State::AuthError);
        m.on_push(3, Ok(()));
        assert_eq!(m.state(), State::Online);
    }

    fn unlisted() -> Failure {
        Failure::Unlisted {
            status: 302,
            reason: "POST v1/ops answered HTTP 302: check [backend] url".into(),
        }
    }

    #[test]
    fn backend_error_backs_off_and_clears_on_success() {
        let mut m = Machine::new(100, 2000, 60_000, 5);
        online(&mut m, 0);
        let mut now = 0;
        for _ in 0..10 {
            m.on_push(now, Err(unlisted()));
            assert_eq!(m.state(), State::BackendError);
            assert_eq!(m.state().as_str(), "backend_error");
            let st = m.status();
            assert!(st.last_error.as_deref().unwrap_or_default().contains("302"));
            let Action::Sleep(Some(t)) = m.next(now, V) else {
                panic!("no backoff after an unlisted reply")
            };
            assert!(t > now && t - now <= 2000, "wait {}", t - now);
            // Network chatter does not cut it short.
            m.on_network_change(now);
            assert_eq!(m.next(now, V), Action::Sleep(Some(t)));
            now = t;
        }
        m.on_push(now, Ok(()));
        assert_eq!(m.state(), State::Online);
        assert_eq!(m.status().last_error, None);
    }

    /// A missing CouchDB database or a wrong URL is fixed by a person; sync
    /// notices the fix within BACKEND_ERROR_RETRY_MAX_MS, whatever
    /// backoff_max_ms says.
    #[test]
    fn backend_error_retries_within_its_cap() {
        let mut m = Machine::new(100, 60_000, 60_000, 5);
        online(&mut m, 0);
        let mut now = 0;
        for _ in 0..20 {
            m.on_push(now, Err(unlisted()));
            let Action::Sleep(Some(t)) = m.next(now, V) else {
                panic!("no backoff after an unlisted reply")
            };
            assert!(
                t > now && t - now <= BACKEND_ERROR_RETRY_MAX_MS as i64,
                "wait {}",
                t - now
            );
            now = t;
        }
    }

    #[test]
    fn remote_changes_say_none_arrive_unless_online() {
        let mut m = Machine::new(100, 1000, 60_000, 1);
        m.on_probe(0, Ok(LIVE));
        assert_eq!(m.remote_changes(), "live");
        m.on_push(
            1,
            Err(Failure::Unreachable {
                reason: "down".into(),
            }),
        );
        assert_eq!(m.remote_changes(), "none while offline; live once online");
        m.on_push(2, Err(unlisted()));
        assert_eq!(
            m.remote_changes(),
            "none while backend_error; live once online"
        );
    }

    #[test]
    fn probe_after_backend_error_asks_for_a_real_request() {
        let mut m = Machine::new(100, 1000, 60_000, 2);
        let idle = View {
            queue_nonempty: false,
            ..V
        };
        m.on_probe(0, Err(unlisted()));
        assert_eq!(m.state(), State::BackendError);
        let Action::Sleep(Some(t)) = m.next(0, idle) else {
            panic!()
        };
        assert_eq!(m.next(t, idle), Action::Probe);
        m.on_probe(t, Ok(Features::default()));
        // Reachable is not proof: a pull decides.
        assert_eq!(m.state(), State::BackendError);
        assert_eq!(m.next(t, idle), Action::Pull(None));
        m.on_pull(t, done(0, 5, false));
        assert_eq!(m.state(), State::Online);
    }
}
