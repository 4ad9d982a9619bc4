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
use crate::sync::channel::{severity, Asked, Caps, Channel};
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

/// The worker's decisions. Three channels are kept apart (see
/// [`crate::sync::channel`]): the link (reachability, health probes), the
/// pushes and the pulls. A verdict on one never clears another's backoff,
/// `Retry-After` floor or auth error; `status` shows the worst of them.
#[derive(Debug, Clone)]
pub struct Machine {
    /// Reachability: failed with `Offline` while the backend cannot be
    /// reached, and by a probe's own failure.
    link: Channel,
    push: Channel,
    pull: Channel,
    /// A probe proved the backend reachable since the last outage, resume
    /// or backend change.
    connected: bool,
    /// Paused, or without a backend, when `next` last looked.
    paused: bool,
    no_backend: bool,
    /// Whether the queue had ops when `next` last looked: a push channel's
    /// failure shows only while there is something to push.
    queue_nonempty: bool,
    probe: Asked,
    /// A pull asked for (`syncd sync`, a reconnect, a reload, a failure).
    pull_asked: Asked,
    /// A push round succeeded: without live pulls, pull once the queue has
    /// drained.
    drain_pull: Asked,
    pull_due_at: i64,
    pull_interval_ms: i64,
    /// The running pull's number (started, not yet reported).
    pull_in_flight: Option<u64>,
    pulls_started: u64,
    /// This running pull is from before a reconnect or a reload: start a
    /// fresh one.
    stale_pull: Option<u64>,
    /// `sync.live` and `sync.wait_s`.
    live_wanted: bool,
    wait_s: u32,
    /// What the backend announced at the last successful probe.
    features: Features,
    /// When the last pull succeeded (machine ms).
    last_pull_at: Option<i64>,
    /// No session of the current credentials applied yet: with a backend
    /// that has `scopes`, nothing is pushed until one is (the queued ops
    /// may be another user's; see [`Machine::on_session_applied`]).
    session_unknown: bool,
    rng: fastrand::Rng,
}

/// Default `sync.wait_s`: below every usual proxy and client timeout.
pub const DEFAULT_WAIT_S: u32 = 25;

/// A local store failure is retried at least this often: freeing disk
/// space is a person's fix, and sync should resume within seconds of it.
pub const LOCAL_STORE_RETRY_MAX_MS: u64 = 5_000;

const CAPS: Caps = Caps {
    unreachable_ms: OFFLINE_PROBE_MAX_MS,
    unlisted_ms: BACKEND_ERROR_RETRY_MAX_MS,
    local_ms: LOCAL_STORE_RETRY_MAX_MS,
};

impl Machine {
    pub fn new(
        backoff_initial_ms: u64,
        backoff_max_ms: u64,
        pull_interval_ms: u64,
        seed: u64,
    ) -> Self {
        let channel = Channel::new(backoff_initial_ms, backoff_max_ms);
        Machine {
            link: channel.clone(),
            push: channel.clone(),
            pull: channel,
            connected: false,
            paused: false,
            no_backend: false,
            queue_nonempty: false,
            probe: Asked::pending(),
            pull_asked: Asked::pending(),
            drain_pull: Asked::default(),
            pull_due_at: 0,
            pull_interval_ms: pull_interval_ms as i64,
            pull_in_flight: None,
            pulls_started: 0,
            stale_pull: None,
            live_wanted: true,
            wait_s: DEFAULT_WAIT_S,
            features: Features::default(),
            last_pull_at: None,
            session_unknown: true,
            rng: fastrand::Rng::with_seed(seed),
        }
    }

    /// `sync.live` and `sync.wait_s` (1 to 60). A change of what the next
    /// pull asks for (live on or off, another wait) opens that pull at
    /// once, in place of the one running.
    pub fn set_live(&mut self, live: bool, wait_s: u32) {
        let before = self.pull_wait();
        self.live_wanted = live;
        self.wait_s = wait_s.clamp(1, 60);
        if self.pull_wait() != before {
            self.pull_asked.ask();
            self.stale_pull = self.pull_in_flight;
        }
    }

    /// What the next pull asks the server to hold it for.
    fn pull_wait(&self) -> Option<u32> {
        self.live().then_some(self.wait_s)
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
        match self.state() {
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
        for c in [&mut self.link, &mut self.push, &mut self.pull] {
            c.backoff.set_limits(backoff_initial_ms, backoff_max_ms);
        }
        if self.pull_interval_ms != pull_interval_ms as i64 {
            self.pull_due_at = self.pull_due_at - self.pull_interval_ms + pull_interval_ms as i64;
            self.pull_interval_ms = pull_interval_ms as i64;
        }
    }

    /// The backend changed (URL or credentials): start afresh.
    pub fn backend_changed(&mut self) {
        for c in [&mut self.link, &mut self.push, &mut self.pull] {
            c.reset();
        }
        self.connected = false;
        self.probe.ask();
        self.pull_asked.ask();
        self.stale_pull = self.pull_in_flight;
        self.features = Features::default();
        self.session_unknown = true;
    }

    /// New credentials for the same backend (a token change or reload):
    /// until the session they belong to is applied, pushes wait (with a
    /// backend that has `scopes`), and a pull (which fetches it) is due.
    pub fn credentials_changed(&mut self) {
        self.session_unknown = true;
        self.pull_asked.ask();
    }

    /// The writer committed the session of the current credentials
    /// (`ApplySession`): the queue is now that user's, pushes may go.
    pub fn on_session_applied(&mut self) {
        self.session_unknown = false;
    }

    /// Pushes wait for the session: the backend has users and scopes and
    /// the current credentials' session is not applied yet. The token may
    /// belong to another user now, and the ops queued under the previous
    /// one must never go out with it (the session apply dead-letters them).
    pub fn pushes_held(&self) -> bool {
        self.features.scopes && self.session_unknown
    }

    /// The worst channel's state (a push failure only while there is
    /// something to push), or paused, or offline without a backend.
    pub fn state(&self) -> State {
        self.worst().map_or(State::Online, |c| c.state())
    }

    /// The channel `status` speaks of; `None` when all is well.
    fn worst(&self) -> Option<Channel> {
        if self.paused {
            return Some(self.marked(State::Paused));
        }
        if self.no_backend {
            return Some(self.marked(State::Offline));
        }
        let link = match (&self.link.failed, self.connected) {
            (None, false) => self.marked(State::Offline),
            _ => self.link.clone(),
        };
        let push = self.queue_nonempty.then_some(&self.push);
        [Some(&link), push, Some(&self.pull)]
            .into_iter()
            .flatten()
            .filter(|c| c.failed.is_some())
            .max_by_key(|c| severity(c.state()))
            .cloned()
    }

    /// A channel that only says `state` (no reason, no retry time).
    fn marked(&self, state: State) -> Channel {
        let mut c = Channel::new(1, 1);
        c.failed = Some((state, String::new()));
        c
    }

    pub fn status(&self) -> SyncStatus {
        let worst = self.worst();
        let state = worst.as_ref().map_or(State::Online, |c| c.state());
        let (last_error, next_retry_at) = match &worst {
            Some(c) => (
                c.failed
                    .as_ref()
                    .map(|(_, r)| r.clone())
                    .filter(|r| !r.is_empty()),
                c.not_before,
            ),
            None => (None, None),
        };
        SyncStatus {
            state,
            last_error,
            next_retry_at: match state {
                State::Online | State::Paused => None,
                _ => next_retry_at,
            },
            remote_changes: Some(self.remote_changes()),
            last_pull_at: self.last_pull_at,
        }
    }

    pub fn next(&mut self, now: i64, view: View) -> Action {
        self.queue_nonempty = view.queue_nonempty;
        if (!view.has_backend || view.paused) && self.pull_in_flight.is_some() {
            self.pull_stopped();
            return Action::StopPull;
        }
        // Paused wins over "no backend": the user's pause is what status
        // must show, with or without a backend to sync to.
        self.no_backend = !view.has_backend && !view.paused;
        if view.paused || !view.has_backend {
            self.paused = view.paused;
            return Action::Sleep(None);
        }
        if self.paused {
            // Resumed: find out where we stand.
            self.paused = false;
            self.connected = false;
            self.probe.ask();
        }
        if !self.connected || self.probe.is_pending() {
            if !self.link.open(now) {
                return Action::Sleep(self.link.not_before);
            }
            self.probe.start();
            return Action::Probe;
        }
        if self.pull_wanted(now, view) && self.pull.open(now) {
            return self.start_pull();
        }
        if view.queue_nonempty && !self.pushes_held() && self.push.open(now) {
            return Action::Push;
        }
        Action::Sleep(self.wake_at(now, view))
    }

    fn start_pull(&mut self) -> Action {
        self.pulls_started += 1;
        self.pull_in_flight = Some(self.pulls_started);
        self.stale_pull = None;
        self.pull_asked.start();
        self.drain_pull.start();
        Action::Pull(self.pull_wait())
    }

    /// Whether a pull should start: the running one is stale, or none
    /// runs and one was asked for or is due.
    fn pull_wanted(&self, now: i64, view: View) -> bool {
        if self.stale_pull.is_some() && self.stale_pull == self.pull_in_flight {
            return true;
        }
        self.pull_in_flight.is_none()
            && (self.pull_asked.is_pending()
                || self.pushes_held()
                || now >= self.pull_due_at
                || (self.drain_pull.is_pending() && !view.queue_nonempty))
    }

    /// When something becomes due, with nothing to do now (`None`: only
    /// an event, such as the running pull's end, changes that).
    fn wake_at(&self, now: i64, view: View) -> Option<i64> {
        let pull = if self.pull_wanted(now, view) {
            self.pull.not_before
        } else if self.pull_in_flight.is_none() {
            Some(self.pull_due_at)
        } else {
            None
        };
        let push = (view.queue_nonempty && !self.pushes_held())
            .then_some(self.push.not_before)
            .flatten();
        [pull, push].into_iter().flatten().min()
    }

    fn draw(&mut self) -> f64 {
        self.rng.f64()
    }

    /// Any answer from the backend proves it reachable.
    fn reached(&mut self, now: i64) {
        if !self.connected || self.link.failed.is_some() {
            // Back (offline, or a probe's own failure): pull at once,
            // afresh if a pull from before still hangs.
            self.pull_asked.ask();
            self.stale_pull = self.pull_in_flight;
        }
        self.link.succeed(now);
        self.connected = true;
    }

    /// The backend cannot be reached: probe until it can.
    fn unreachable(&mut self, now: i64, f: &Failure) {
        let unit = self.draw();
        self.link.fail(now, f, unit, &CAPS);
        self.connected = false;
        self.probe.ask();
    }

    /// A push round ended: `Ok` if at least the head op got a verdict.
    pub fn on_push(&mut self, now: i64, r: Result<(), Failure>) {
        match r {
            Ok(()) => {
                if self.push.failed.is_some() {
                    // Refused until now: look at the server afresh.
                    self.pull_asked.ask();
                }
                self.push.succeed(now);
                self.reached(now);
                // A live pull sees the change by itself; a polling one
                // comes once the queue has drained.
                if !self.live() {
                    self.drain_pull.ask();
                }
            }
            Err(f @ Failure::Unreachable { .. }) => self.unreachable(now, &f),
            Err(f) => {
                let unit = self.draw();
                self.push.fail(now, &f, unit, &CAPS);
            }
        }
    }

    /// The worker stopped the running pull itself (paused, no backend, new
    /// credentials): start another as soon as requests are allowed.
    pub fn pull_stopped(&mut self) {
        if self.pull_in_flight.take().is_some() {
            self.stale_pull = None;
            self.pull_asked.ask();
        }
    }

    /// The set of scopes to pull changed (subscribe, unsubscribe): the
    /// worker stopped the running pull, which asked for the old set; the
    /// next one starts now, within any backoff's floor like `syncd sync`.
    pub fn on_scopes_changed(&mut self, now: i64) {
        self.pull_stopped();
        self.pull_asked.ask();
        self.pull.cut_wait(now);
    }

    /// The running pull ended.
    pub fn on_pull(&mut self, now: i64, r: Result<PullDone, Failure>) {
        self.pull_in_flight = None;
        self.stale_pull = None;
        match r {
            Ok(done) => {
                self.pull.succeed(now);
                self.reached(now);
                self.pull_asked.served();
                self.drain_pull.served();
                self.last_pull_at = Some(now);
                let held = done.changes > 0 || done.elapsed_ms >= HELD_PULL_MIN_MS;
                self.pull_due_at = if done.waited && held && self.live() {
                    now
                } else {
                    now + self.pull_interval_ms
                };
            }
            Err(f) => {
                self.pull_asked.ask();
                match f {
                    Failure::Unreachable { .. } => self.unreachable(now, &f),
                    _ => {
                        let unit = self.draw();
                        self.pull.fail(now, &f, unit, &CAPS);
                    }
                }
            }
        }
    }

    /// A health probe proves reachability, nothing more: it ends an
    /// offline spell, but not a backoff for server errors, an auth error
    /// nor a backend error (after which a pull is due, so that a real
    /// request decides promptly even with an empty queue).
    pub fn on_probe(&mut self, now: i64, r: Result<Features, Failure>) {
        match r {
            Ok(f) => {
                self.features = f;
                self.probe.served();
                if self.link.state() == State::Offline {
                    self.reached(now);
                } else {
                    self.connected = true;
                    self.pull_asked.ask();
                }
            }
            Err(f @ Failure::Unreachable { .. }) => self.unreachable(now, &f),
            Err(f) => {
                let unit = self.draw();
                self.link.fail(now, &f, unit, &CAPS);
            }
        }
    }

    /// `syncd sync`, resume: push and pull now, within any Retry-After
    /// and never inside an auth error's wait.
    pub fn on_wake(&mut self, now: i64) {
        self.pull_asked.ask();
        for c in [&mut self.link, &mut self.push, &mut self.pull] {
            c.cut_wait(now);
        }
    }

    /// The OS reports a network change: probe now.
    /// Only an unreachable backend is helped by this: a failing or
    /// refusing one keeps its backoff (network chatter must not defeat it).
    pub fn on_network_change(&mut self, now: i64) {
        if !self.connected && matches!(self.link.state(), State::Offline | State::Online) {
            self.probe.ask();
            self.link.cut_to_floor(now);
        }
    }

    /// The token file changed: an auth error may be fixed.
    pub fn on_token_change(&mut self, now: i64) {
        for c in [&mut self.link, &mut self.push, &mut self.pull] {
            c.token_changed(now);
        }
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
        scopes: false,
        batch: true,
        wait: true,
        client_ids: true,
        blobs: false,
    };

    fn done(changes: usize, elapsed_ms: i64, waited: bool) -> Result<PullDone, Failure> {
        Ok(PullDone {
            changes,
            elapsed_ms,
            waited,
        })
    }

    #[test]
    fn pushes_wait_for_the_session_of_the_current_credentials() {
        let scoped = Features {
            scopes: true,
            ..LIVE
        };
        let mut m = Machine::new(100, 1_000, 60_000, 1);
        probe(&mut m, 0, Ok(scoped));
        assert!(
            matches!(m.next(0, V), Action::Pull(_)),
            "fetches the session"
        );
        assert!(
            matches!(m.next(0, V), Action::Sleep(None)),
            "no push before the session is applied"
        );
        m.on_session_applied();
        assert_eq!(m.next(0, V), Action::Push);
        m.on_push(1, Ok(()));
        // The token file changes: the worker rebuilt the client (stopping
        // the pull) and tells the machine.
        m.credentials_changed();
        m.pull_stopped();
        m.on_token_change(2);
        assert!(matches!(m.next(2, V), Action::Pull(_)));
        assert!(matches!(m.next(2, V), Action::Sleep(None)), "held again");
        // A pull that ended without applying the new session (it failed)
        // leaves pushes held; the next pull tries again after backoff.
        m.on_pull(3, Err(transient(None)));
        for t in 3..5_000 {
            assert_ne!(m.next(t, V), Action::Push, "at {t}");
        }
        m.on_session_applied();
        let mut pushed = false;
        for t in 5_000..10_000 {
            match m.next(t, V) {
                Action::Push => {
                    pushed = true;
                    break;
                }
                Action::Pull(_) => m.on_pull(t, done(0, 5, true)),
                _ => {}
            }
        }
        assert!(pushed);
        // A backend without scopes has no session: nothing waits.
        let mut m = Machine::new(100, 1_000, 60_000, 1);
        probe(&mut m, 0, Ok(LIVE));
        assert!(matches!(m.next(0, V), Action::Pull(_)));
        assert_eq!(m.next(0, V), Action::Push);
    }

    /// The machine asks for a probe, and gets `r`.
    fn probe(m: &mut Machine, now: i64, r: Result<Features, Failure>) {
        assert_eq!(m.next(now, V), Action::Probe, "a probe was due");
        m.on_probe(now, r);
    }

    /// A successful probe of a revision-1 server and the pull that follows
    /// every reconnect.
    fn online(m: &mut Machine, now: i64) {
        probe(m, now, Ok(Features::default()));
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
        probe(&mut m, 0, Ok(LIVE));
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
        probe(&mut m, 0, Ok(LIVE));
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
        probe(&mut m, 0, Ok(LIVE));
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
        probe(&mut m, t, Ok(LIVE));
        // The pull from before the outage may hang on a dead connection.
        assert_eq!(m.next(t, V), Action::Pull(Some(25)));
        assert_eq!(m.next(t, V), Action::Push);
        assert_eq!(m.next(t, View { paused: true, ..V }), Action::StopPull);
        assert_eq!(m.next(t, View { paused: true, ..V }), Action::Sleep(None));
        assert_eq!(m.next(t, V), Action::Probe);
        probe(&mut m, t, Ok(Features::default()));
        assert_eq!(m.next(t, V), Action::Pull(None), "revision 1: no wait");
        assert!(m.remote_changes().starts_with("polling"));
    }

    #[test]
    fn a_pull_stopped_by_the_worker_is_started_again() {
        let mut m = Machine::new(100, 1000, 60_000, 1);
        probe(&mut m, 0, Ok(LIVE));
        assert_eq!(m.next(0, IDLE), Action::Pull(Some(25)));
        assert_eq!(m.next(1, IDLE), Action::Sleep(None));
        m.pull_stopped();
        assert_eq!(m.next(2, IDLE), Action::Pull(Some(25)));
    }

    #[test]
    fn a_scope_change_restarts_the_pull_at_once() {
        let mut m = Machine::new(100, 1000, 60_000, 1);
        let scoped = Features {
            scopes: true,
            ..LIVE
        };
        probe(&mut m, 0, Ok(scoped));
        assert!(m.features().scopes);
        assert_eq!(m.next(0, IDLE), Action::Pull(Some(25)));
        assert_eq!(m.next(1, IDLE), Action::Sleep(None));
        m.on_scopes_changed(2);
        assert_eq!(m.next(2, IDLE), Action::Pull(Some(25)));
        // Polling: a subscribe does not wait for the next interval.
        let mut m = Machine::new(100, 1000, 60_000, 1);
        online(&mut m, 0);
        assert_eq!(m.next(1, IDLE), Action::Sleep(Some(60_000)));
        m.on_scopes_changed(5);
        assert_eq!(m.next(5, IDLE), Action::Pull(None));
    }

    #[test]
    fn a_failed_pull_backs_off_then_pulls_again() {
        let mut m = Machine::new(100, 1000, 60_000, 1);
        probe(&mut m, 0, Ok(LIVE));
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
        // `syncd sync` asked for a pull too: the pulls were not refused,
        // so it starts at once; the push waits for the floor.
        assert_eq!(m.next(10, V), Action::Pull(None));
        assert_eq!(m.next(10, V), Action::Sleep(Some(2000)));
        m.on_pull(20, done(0, 5, false));
        assert_eq!(m.state(), State::Backoff, "the push is still refused");
        assert_eq!(m.next(20, V), Action::Sleep(Some(2000)));
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
            probe(&mut m, i * 10_000, Err(down.clone()));
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

    /// A failure of this device's store (what the worker's `local` makes
    /// of a store or writer error) is its own state, retried within
    /// seconds, and a later success clears it.
    #[test]
    fn a_local_store_failure_is_its_own_state_not_backoff() {
        let mut m = Machine::new(100, 600_000, 60_000, 3);
        online(&mut m, 0);
        let mut now = 0;
        for _ in 0..12 {
            m.on_push(now, Err(crate::sync::local("store: disk full")));
            assert_eq!(m.state(), State::LocalStoreError);
            assert_eq!(m.state().as_str(), "local_store_error");
            let Action::Sleep(Some(t)) = m.next(now, V) else {
                panic!("no retry wait after a local store failure")
            };
            assert!(t > now && t - now <= LOCAL_STORE_RETRY_MAX_MS as i64);
            now = t;
            assert_eq!(m.next(now, V), Action::Push);
        }
        m.on_push(now, Ok(()));
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
        let mut m = Machine::new(100, 60_000, 600_000, 5);
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
        probe(&mut m, 0, Ok(LIVE));
        assert_eq!(m.remote_changes(), "live");
        m.on_push(
            1,
            Err(Failure::Unreachable {
                reason: "down".into(),
            }),
        );
        assert_eq!(m.remote_changes(), "none while offline; live once online");
        let Action::Sleep(Some(t)) = m.next(1, V) else {
            panic!("no probe wait")
        };
        probe(&mut m, t, Ok(LIVE));
        m.on_push(t, Err(unlisted()));
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
        probe(&mut m, 0, Err(unlisted()));
        assert_eq!(m.state(), State::BackendError);
        let Action::Sleep(Some(t)) = m.next(0, idle) else {
            panic!()
        };
        assert_eq!(m.next(t, idle), Action::Probe);
        probe(&mut m, t, Ok(Features::default()));
        // Reachable is not proof: a pull decides.
        assert_eq!(m.state(), State::BackendError);
        assert_eq!(m.next(t, idle), Action::Pull(None));
        m.on_pull(t, done(0, 5, false));
        assert_eq!(m.state(), State::Online);
    }

    // Issue 30, row by row.

    /// Row 1: a `sync` that comes while a pull runs (or after it ended but
    /// before its end was collected) is served by a pull started after it.
    #[test]
    fn a_wake_during_a_pull_gets_a_pull_of_its_own() {
        let mut m = Machine::new(100, 1000, 60_000, 1);
        online(&mut m, 0);
        assert_eq!(m.next(0, V), Action::Push);
        m.on_push(1, Ok(()));
        assert_eq!(m.next(2, IDLE), Action::Pull(None), "after the drain");
        m.on_wake(3);
        assert_eq!(m.next(3, IDLE), Action::Sleep(None), "one pull at a time");
        m.on_pull(4, done(0, 2, false));
        assert_eq!(m.next(4, IDLE), Action::Pull(None), "the wake's own pull");
        m.on_pull(5, done(0, 1, false));
        assert_eq!(m.next(5, IDLE), Action::Sleep(Some(60_005)));
    }

    /// Row 2: a push's `Retry-After` stands while live pulls succeed.
    #[test]
    fn a_pull_success_keeps_a_push_retry_after() {
        let mut m = Machine::new(100, 1000, 60_000, 1);
        probe(&mut m, 0, Ok(LIVE));
        assert_eq!(m.next(0, V), Action::Pull(Some(25)));
        assert_eq!(m.next(0, V), Action::Push);
        m.on_push(10, Err(transient(Some(8_000))));
        for now in (1_000..8_000).step_by(1_000) {
            m.on_pull(now, done(1, 5, true));
            assert_eq!(m.next(now, V), Action::Pull(Some(25)));
            assert_eq!(m.next(now, V), Action::Sleep(Some(8_010)), "at {now}");
            m.on_wake(now);
            assert_eq!(m.next(now, V), Action::Sleep(Some(8_010)));
            assert_eq!(m.state(), State::Backoff);
            assert_eq!(m.status().last_error.as_deref(), Some("HTTP 503"));
        }
        assert_eq!(m.next(8_010, V), Action::Push);
        m.on_push(8_020, Ok(()));
        assert_eq!(m.state(), State::Online);
    }

    /// Polling (no `wait`): a push refused with a Retry-After does not
    /// stop the pulls every `pull_interval_s`, whichever of the first
    /// pull and the first push ends first.
    #[test]
    fn polling_pulls_go_on_during_a_push_retry_after() {
        let poll = Features {
            scopes: false,
            batch: true,
            wait: false,
            client_ids: false,
            blobs: false,
        };
        for push_first in [false, true] {
            let mut m = Machine::new(50, 400, 1_000, 1);
            probe(&mut m, 0, Ok(poll));
            assert_eq!(m.next(0, V), Action::Pull(None));
            assert_eq!(m.next(1, V), Action::Push);
            if push_first {
                m.on_push(2, Err(transient(Some(3_000))));
                m.on_pull(3, done(0, 3, false));
            } else {
                m.on_pull(2, done(0, 2, false));
                m.on_push(3, Err(transient(Some(3_000))));
            }
            let mut now = 3;
            let mut pulls = 0;
            loop {
                match m.next(now, V) {
                    Action::Pull(_) => {
                        pulls += 1;
                        m.on_pull(now, done(0, 1, false));
                    }
                    Action::Sleep(Some(t)) => {
                        assert!(t > now, "push_first={push_first}: sleep to {t} at {now}");
                        now = t;
                    }
                    Action::Push => break,
                    other => panic!("push_first={push_first}: {other:?} at {now}"),
                }
            }
            assert!(now >= 3_002, "push_first={push_first}: a push at {now}");
            assert!(pulls >= 2, "push_first={push_first}: {pulls} pulls in 3 s");
        }
    }

    /// Row 2 with a 403: no push before `backoff_max_ms` or a new token,
    /// whatever the pulls and `sync` do.
    #[test]
    fn a_pull_success_keeps_a_push_auth_error() {
        let mut m = Machine::new(100, 6_000, 60_000, 1);
        probe(&mut m, 0, Ok(LIVE));
        assert_eq!(m.next(0, V), Action::Pull(Some(25)));
        assert_eq!(m.next(0, V), Action::Push);
        let forbidden = Failure::Auth {
            reason: "HTTP 403".into(),
        };
        m.on_push(0, Err(forbidden));
        for now in (1_000..6_000).step_by(1_000) {
            m.on_pull(now, done(1, 5, true));
            m.on_wake(now);
            assert_eq!(m.next(now, V), Action::Pull(Some(25)));
            assert_eq!(m.next(now, V), Action::Sleep(Some(6_000)));
            assert_eq!(m.state(), State::AuthError, "status says why");
        }
        assert_eq!(m.next(6_000, V), Action::Push);
        m.on_push(
            6_000,
            Err(Failure::Auth {
                reason: "HTTP 403".into(),
            }),
        );
        m.on_token_change(6_500);
        assert_eq!(
            m.next(6_500, V),
            Action::Push,
            "a new token is tried at once"
        );
    }

    /// And the reverse: a push's success leaves a pull's floor.
    #[test]
    fn a_push_success_keeps_a_pull_retry_after() {
        let mut m = Machine::new(100, 1000, 60_000, 1);
        online(&mut m, 0);
        m.on_wake(0);
        assert_eq!(m.next(0, V), Action::Pull(None));
        m.on_pull(1, Err(transient(Some(5_000))));
        assert_eq!(m.next(1, V), Action::Push);
        m.on_push(2, Ok(()));
        assert_eq!(m.next(2, IDLE), Action::Sleep(Some(5_001)));
        assert_eq!(m.state(), State::Backoff);
        assert_eq!(m.next(5_001, IDLE), Action::Pull(None));
    }

    /// `status` shows the worse channel, with its reason and retry time.
    #[test]
    fn status_shows_the_worse_channel() {
        let mut m = Machine::new(100, 9_000, 60_000, 1);
        online(&mut m, 0);
        m.on_wake(0);
        assert_eq!(m.next(0, V), Action::Pull(None));
        m.on_pull(1, Err(transient(None)));
        assert_eq!(m.next(1, V), Action::Push);
        m.on_push(
            2,
            Err(Failure::Auth {
                reason: "HTTP 401".into(),
            }),
        );
        let st = m.status();
        assert_eq!(st.state, State::AuthError);
        assert_eq!(st.last_error.as_deref(), Some("HTTP 401"));
        assert_eq!(st.next_retry_at, Some(9_002));
        // With nothing to push, the pull's trouble is what matters.
        let _ = m.next(3, IDLE);
        assert_eq!(m.state(), State::Backoff);
    }

    /// Row 4: switching to live opens a waiting pull at once, also in
    /// place of a polling pull that runs.
    #[test]
    fn switching_to_live_opens_a_waiting_pull_at_once() {
        let mut m = Machine::new(100, 1000, 60_000, 1);
        m.set_live(false, 25);
        probe(&mut m, 0, Ok(LIVE));
        assert_eq!(m.next(0, IDLE), Action::Pull(None));
        m.on_pull(5, done(0, 5, false));
        assert_eq!(m.next(6, IDLE), Action::Sleep(Some(60_005)));
        m.set_live(true, 25);
        assert_eq!(m.next(7, IDLE), Action::Pull(Some(25)));
        m.set_live(false, 25);
        assert_eq!(m.next(8, IDLE), Action::Pull(None), "polling replaces it");
        m.set_live(true, 25);
        assert_eq!(
            m.next(9, IDLE),
            Action::Pull(Some(25)),
            "the running poll is replaced"
        );
        m.set_live(true, 30);
        assert_eq!(m.next(10, IDLE), Action::Pull(Some(30)), "a new wait");
        m.set_live(true, 30);
        assert_eq!(m.next(11, IDLE), Action::Sleep(None), "no change, no pull");
    }
}
