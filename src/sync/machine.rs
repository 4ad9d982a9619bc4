//! The sync worker's decisions as a pure state machine.
//!
//! The worker (I/O) asks [`Machine::next`] what to do, does it, and reports
//! the outcome back (`on_push`, `on_pull`, `on_probe`) along with outside
//! events (`on_wake`, `on_network_change`, `on_token_change`). Time is a
//! number passed in and randomness comes from a seeded generator, so a
//! simulation can drive thousands of steps deterministically.

use crate::backend::client::Failure;
use crate::sync::backoff::Backoff;
use crate::sync::{State, SyncStatus};

/// While the backend is unreachable, health probes run at least this often
/// (with jitter), so sync resumes soon after it returns even where the OS
/// gives no network-change events (or the backend, not the network, was
/// down).
pub const OFFLINE_PROBE_MAX_MS: u64 = 2_000;

/// What the worker should do next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Send the head of the queue.
    Push,
    /// Fetch remote changes.
    Pull,
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
    last_error: Option<String>,
    rng: fastrand::Rng,
}

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
            last_error: None,
            rng: fastrand::Rng::with_seed(seed),
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
        }
    }

    pub fn next(&mut self, now: i64, view: View) -> Action {
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
        if view.queue_nonempty {
            return Action::Push;
        }
        if self.pull_requested || now >= self.pull_due_at {
            return Action::Pull;
        }
        Action::Sleep(Some(self.pull_due_at))
    }

    fn succeed(&mut self) {
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
                self.not_before = Some(now + self.backoff.fail(self.rng.f64()) as i64);
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
                // Pull once the queue has drained.
                self.pull_requested = true;
            }
            Err(f) => self.fail(now, &f),
        }
    }

    pub fn on_pull(&mut self, now: i64, r: Result<(), Failure>) {
        match r {
            Ok(()) => {
                self.succeed();
                self.pull_requested = false;
                self.pull_due_at = now + self.pull_interval_ms;
            }
            Err(f) => self.fail(now, &f),
        }
    }

    /// A health probe proves reachability, nothing more: it ends an
    /// offline spell, but not a backoff for server errors, an auth error
    /// nor a backend error (after which a pull is due, so that a real
    /// request decides promptly even with an empty queue).
    pub fn on_probe(&mut self, now: i64, r: Result<(), Failure>) {
        match r {
            Ok(()) if self.state == State::Offline => self.succeed(),
            Ok(()) => {
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

    #[test]
    fn probe_push_pull_sleep() {
        let mut m = Machine::new(100, 1000, 60_000, 1);
        assert_eq!(m.next(0, V), Action::Probe);
        m.on_probe(0, Ok(()));
        assert_eq!(m.state(), State::Online);
        assert_eq!(m.next(0, V), Action::Push);
        m.on_push(0, Ok(()));
        let idle = View {
            queue_nonempty: false,
            ..V
        };
        assert_eq!(m.next(1, idle), Action::Pull);
        m.on_pull(1, Ok(()));
        assert_eq!(m.next(2, idle), Action::Sleep(Some(60_001)));
        assert_eq!(m.next(60_001, idle), Action::Pull);
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
        m.on_probe(0, Ok(()));
        m.on_push(0, Err(transient(Some(2000))));
        assert_eq!(m.state(), State::Backoff);
        match m.next(10, V) {
            Action::Sleep(Some(t)) => assert!(t >= 2000),
            a => panic!("{a:?}"),
        }
        m.on_wake(10);
        assert_eq!(m.next(10, V), Action::Sleep(Some(2000)));
        assert_eq!(m.next(2000, V), Action::Push);
    }

    #[test]
    fn backoff_grows_then_resets() {
        let mut m = Machine::new(100, 100_000, 60_000, 7);
        m.on_probe(0, Ok(()));
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
        m.on_probe(0, Ok(()));
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
        m.on_probe(0, Ok(()));
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
        m.on_probe(t, Ok(()));
        // Reachable is not proof: a pull decides.
        assert_eq!(m.state(), State::BackendError);
        assert_eq!(m.next(t, idle), Action::Pull);
        m.on_pull(t, Ok(()));
        assert_eq!(m.state(), State::Online);
    }
}
