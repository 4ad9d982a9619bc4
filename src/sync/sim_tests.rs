//! Deterministic simulation of the worker's decisions: the [`Machine`]
//! against a simulated clock, network and server, over many seeds. It checks
//! the properties the worker promises whatever the failure pattern:
//! never a busy loop, `Retry-After` always honoured, no request while paused
//! or without a backend, and the queue drains once the network is back.

use super::machine::{Action, Machine, PullDone, View, OFFLINE_PROBE_MAX_MS};
use super::State;
use crate::backend::client::Failure;
use crate::backend::protocol::Features;

/// The simulated world.
struct World {
    rng: fastrand::Rng,
    now: i64,
    queue: u32,
    network_up: bool,
    /// The server answers 503 with this Retry-After (ms) to the next push.
    retry_after: Option<u64>,
    /// Requests on a channel (push, pull) are forbidden before this time
    /// (a server's Retry-After on that channel).
    forbidden_until: [i64; 2],
}

impl World {
    fn answer(&mut self, channel: usize) -> Result<(), Failure> {
        if !self.network_up {
            return Err(Failure::Unreachable {
                reason: "connection refused".into(),
            });
        }
        if let Some(ra) = self.retry_after.take() {
            self.forbidden_until[channel] = self.now + ra as i64;
            return Err(Failure::Transient {
                reason: "HTTP 503".into(),
                retry_after_ms: Some(ra),
            });
        }
        if self.rng.u8(..) < 40 {
            return Err(Failure::Transient {
                reason: "HTTP 500".into(),
                retry_after_ms: None,
            });
        }
        Ok(())
    }
}

fn run(seed: u64) {
    let mut w = World {
        rng: fastrand::Rng::with_seed(seed),
        now: 1_000_000,
        queue: 50,
        network_up: false,
        retry_after: None,
        forbidden_until: [0; 2],
    };
    let mut m = Machine::new(100, 30_000, 60_000, seed);
    let mut requests = 0u32;
    let mut steps = 0u32;
    // Phase 1: chaos for a simulated ten minutes; phase 2: network up for good.
    let chaos_end = w.now + 600_000;
    loop {
        steps += 1;
        assert!(steps < 200_000, "seed {seed}: no progress");
        if w.now < chaos_end && w.rng.u8(..) < 20 {
            w.network_up = !w.network_up;
            m.on_network_change(w.now);
        }
        if w.now < chaos_end && w.rng.u8(..) < 5 {
            w.retry_after = Some(w.rng.u64(1_000..10_000));
        }
        if w.now >= chaos_end {
            w.network_up = true;
        }
        if w.rng.u8(..) < 3 {
            m.on_wake(w.now);
        }
        let view = View {
            has_backend: true,
            paused: false,
            queue_nonempty: w.queue > 0,
        };
        match m.next(w.now, view) {
            Action::Sleep(Some(t)) => {
                assert!(
                    t > w.now,
                    "seed {seed}: busy loop (sleep until {t} at {})",
                    w.now
                );
                // Something may wake us early; otherwise sleep to the deadline.
                w.now = if w.rng.bool() {
                    t
                } else {
                    w.now + (t - w.now).min(w.rng.i64(1..500))
                };
            }
            Action::Sleep(None) => {
                assert_eq!(w.queue, 0);
                break;
            }
            Action::StopPull => panic!("seed {seed}: no pull to stop"),
            a @ (Action::Push | Action::Probe | Action::Pull(_)) => {
                let channel = usize::from(matches!(a, Action::Pull(_)));
                assert!(
                    a == Action::Probe || w.now >= w.forbidden_until[channel],
                    "seed {seed}: {a:?} at {} inside Retry-After until {}",
                    w.now,
                    w.forbidden_until[channel]
                );
                requests += 1;
                let r = match a {
                    Action::Probe if w.network_up => Ok(()),
                    Action::Probe => Err(Failure::Unreachable {
                        reason: "refused".into(),
                    }),
                    _ => w.answer(channel),
                };
                let ok = r.is_ok();
                match a {
                    Action::Push => {
                        m.on_push(w.now, r);
                        if ok {
                            w.queue -= 1;
                        }
                    }
                    Action::Pull(wait) => {
                        let done = PullDone {
                            changes: 0,
                            elapsed_ms: 5,
                            waited: wait.is_some(),
                        };
                        m.on_pull(w.now, r.map(|()| done));
                        if ok && w.queue == 0 && w.now > chaos_end {
                            break;
                        }
                    }
                    _ => m.on_probe(w.now, r.map(|()| Features::default())),
                }
                w.now += 5; // a request takes time
            }
        }
        if w.now > chaos_end + 3_600_000 {
            panic!(
                "seed {seed}: queue of {} not drained an hour after the network returned",
                w.queue
            );
        }
    }
    assert_eq!(w.queue, 0);
    assert_eq!(m.state(), State::Online);
    assert!(requests > 0);
}

#[test]
fn many_seeds() {
    for seed in 0..300 {
        run(seed);
    }
}

#[test]
fn paused_or_no_backend_never_requests() {
    let mut m = Machine::new(100, 1000, 60_000, 1);
    for now in 0..1000 {
        let v = View {
            has_backend: now % 2 == 1,
            paused: now % 2 == 1,
            queue_nonempty: true,
        };
        assert_eq!(m.next(now, v), Action::Sleep(None));
    }
    let _ = OFFLINE_PROBE_MAX_MS;
}
