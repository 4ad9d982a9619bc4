//! The parts of the sync machine's state that exist once per channel.
//!
//! Why a file of its own: the worker talks to the backend over three
//! channels that fail apart — the link (reachability, proved by health
//! probes), the push rounds and the pulls — and a verdict on one must never
//! be taken for a verdict on another (a pull's success says nothing about a
//! push's `Retry-After`). [`Channel`] holds one channel's backoff, floor and
//! failure; [`Asked`] holds a request for an operation so that it survives
//! the end of an operation that was already running when it came.

use crate::backend::client::Failure;
use crate::sync::backoff::Backoff;
use crate::sync::State;

/// A request for an operation (a pull, a probe), kept until an operation
/// that *started after it* has ended well. Clearing a flag when an
/// operation ends would swallow a request made while it ran.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Asked {
    /// Requests made so far.
    asked: u64,
    /// The value of `asked` when the running (or last) operation started.
    started: u64,
    /// Every request up to this one was served by an operation that
    /// started after it and ended well.
    served: u64,
}

impl Asked {
    /// A request that is still to be served.
    pub fn pending() -> Self {
        Asked {
            asked: 1,
            ..Asked::default()
        }
    }

    pub fn ask(&mut self) {
        self.asked += 1;
    }

    pub fn is_pending(&self) -> bool {
        self.asked > self.served
    }

    /// An operation starts: it serves the requests made before now.
    pub fn start(&mut self) {
        self.started = self.asked;
    }

    /// The operation started last ended well.
    pub fn served(&mut self) {
        self.served = self.served.max(self.started);
    }
}

/// One channel's standing with the backend.
#[derive(Debug, Clone)]
pub struct Channel {
    pub backoff: Backoff,
    /// No request on this channel before this (backoff, Retry-After, auth
    /// wait).
    pub not_before: Option<i64>,
    /// The part of `not_before` the server asked for: nothing the user or
    /// the OS does cuts it short.
    pub retry_after_until: Option<i64>,
    /// The channel's last failure, until its next success: the state it
    /// stands for and the reason.
    pub failed: Option<(State, String)>,
}

/// How long a failure keeps a channel quiet, at most, for the failures
/// with their own cap (`None`: the backoff's own ceiling).
pub struct Caps {
    pub unreachable_ms: u64,
    pub unlisted_ms: u64,
    /// A local store failure: the fix (free space) is a person's, and
    /// sync should notice it within seconds.
    pub local_ms: u64,
}

impl Channel {
    pub fn new(backoff_initial_ms: u64, backoff_max_ms: u64) -> Self {
        Channel {
            backoff: Backoff::new(backoff_initial_ms, backoff_max_ms),
            not_before: None,
            retry_after_until: None,
            failed: None,
        }
    }

    /// The state this channel stands for.
    pub fn state(&self) -> State {
        self.failed.as_ref().map_or(State::Online, |(s, _)| *s)
    }

    /// Whether a request may go out now.
    pub fn open(&self, now: i64) -> bool {
        self.not_before.is_none_or(|t| now >= t)
    }

    /// A request on this channel got an answer: its failure and backoff
    /// end. A `Retry-After` floor is a time the server named: it runs out
    /// by itself, so a success (from a request that went out before it
    /// was set, say) leaves it.
    pub fn succeed(&mut self, now: i64) {
        self.backoff.reset();
        self.failed = None;
        self.retry_after_until = self.retry_after_until.filter(|t| *t > now);
        self.not_before = self.retry_after_until;
    }

    /// A request failed: the state, the reason, and when to try again.
    pub fn fail(&mut self, now: i64, f: &Failure, unit: f64, caps: &Caps) {
        let (state, delay) = match f {
            Failure::Unreachable { .. } => (
                State::Offline,
                self.backoff.fail(unit).min(caps.unreachable_ms),
            ),
            Failure::Unlisted { .. } => (
                State::BackendError,
                self.backoff.fail(unit).min(caps.unlisted_ms),
            ),
            Failure::Transient { retry_after_ms, .. } => {
                // The server's `Retry-After` is the wait: no request before
                // it, and none needlessly later (a backend whose database
                // is back says so with a short one). Without it, backoff.
                let d = self.backoff.fail(unit);
                let d = match retry_after_ms {
                    Some(ra) => {
                        let until = now + *ra as i64;
                        self.retry_after_until =
                            Some(self.retry_after_until.map_or(until, |t| t.max(until)));
                        *ra
                    }
                    None => d,
                };
                (State::Backoff, d)
            }
            Failure::Auth { .. } => (State::AuthError, self.backoff.max_ms),
            Failure::LocalStore { .. } => (
                State::LocalStoreError,
                self.backoff.fail(unit).min(caps.local_ms),
            ),
        };
        self.failed = Some((state, f.reason().to_owned()));
        let floor = self.retry_after_until.unwrap_or(i64::MIN);
        self.not_before = Some((now + delay as i64).max(floor));
    }

    /// `syncd sync`: try again now, within any `Retry-After`. An auth
    /// error keeps its wait: only a new token or `backoff_max_ms` ends it.
    pub fn cut_wait(&mut self, now: i64) {
        if self.state() == State::AuthError {
            return;
        }
        self.cut_to_floor(now);
    }

    /// Drops the wait down to the server's `Retry-After`, if any.
    pub fn cut_to_floor(&mut self, now: i64) {
        self.not_before = self.retry_after_until.filter(|t| *t > now);
    }

    /// The token changed: an auth error may be fixed.
    pub fn token_changed(&mut self, now: i64) {
        if self.state() == State::AuthError {
            self.cut_to_floor(now);
        }
    }

    /// Forget everything (a new backend).
    pub fn reset(&mut self) {
        self.backoff.reset();
        self.not_before = None;
        self.retry_after_until = None;
        self.failed = None;
    }
}

/// How bad a state is, for showing the worse of two channels.
pub fn severity(s: State) -> u8 {
    match s {
        State::Online => 0,
        State::Backoff => 1,
        State::BackendError => 2,
        State::AuthError => 3,
        State::Offline => 4,
        State::LocalStoreError => 5,
        State::Paused => 6,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_made_while_an_operation_runs_outlives_it() {
        let mut a = Asked::pending();
        a.start();
        a.ask(); // during the operation
        a.served();
        assert!(a.is_pending(), "the request came after the start");
        a.start();
        a.served();
        assert!(!a.is_pending());
    }

    #[test]
    fn a_failed_operation_serves_nothing() {
        let mut a = Asked::pending();
        a.start();
        assert!(a.is_pending());
        a.start();
        a.served();
        assert!(!a.is_pending());
    }

    #[test]
    fn success_keeps_a_retry_after_floor() {
        let mut c = Channel::new(100, 1000);
        let caps = Caps {
            unreachable_ms: 2000,
            unlisted_ms: 5000,
            local_ms: 5000,
        };
        let f = Failure::Transient {
            reason: "429".into(),
            retry_after_ms: Some(8000),
        };
        c.fail(0, &f, 0.5, &caps);
        assert_eq!(c.not_before, Some(8000));
        c.succeed(10);
        assert_eq!(c.state(), State::Online);
        assert_eq!(c.not_before, Some(8000), "the server's floor stands");
        c.succeed(8000);
        assert_eq!(c.not_before, None);
    }

    /// A short `Retry-After` is the wait, however far the backoff has
    /// grown: devices return as soon as the server says.
    #[test]
    fn retry_after_is_the_wait_not_only_a_floor() {
        let mut c = Channel::new(500, 60_000);
        let caps = Caps {
            unreachable_ms: 2000,
            unlisted_ms: 5000,
            local_ms: 5000,
        };
        let busy = Failure::Transient {
            reason: "503".into(),
            retry_after_ms: Some(1000),
        };
        let mut now = 0;
        for _ in 0..20 {
            c.fail(now, &busy, 0.99, &caps);
            assert_eq!(c.not_before, Some(now + 1000));
            now += 1000;
        }
        let plain = Failure::Transient {
            reason: "500".into(),
            retry_after_ms: None,
        };
        c.fail(now, &plain, 0.99, &caps);
        assert!(
            c.not_before.is_some_and(|t| t - now > 30_000),
            "grown backoff"
        );
    }
}
