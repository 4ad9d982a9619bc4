//! `wait_synced`: answers once an operation is on the server, was
//! rejected, or lost a conflict; when a conflict resolution re-sent the
//! change, it follows the re-sent op. Its own file because it is the one
//! request that waits on events rather than on the store; the session ends
//! the wait when the client goes away.
//!
//! What became of an op that left the queue through a conflict is read
//! from the store ([`crate::store::settled`], written in the resolution's
//! transaction), not from events: a waiter that starts after the
//! resolution, or that sees the record's events before the conflict's,
//! still gets the right answer.

use tokio::sync::broadcast;

use crate::ipc::context::Ctx;
use crate::ipc::wire::{ApiError, ErrorCode, Event, Response};
use crate::store::settled::Settled;
use crate::store::OpState;

use super::blocking::read;

/// Most re-sends followed (each conflict of a re-sent op adds one).
const MAX_HOPS: usize = 64;

/// Waits until `op_id` (or the op that re-sent its change) is on the
/// server, dead-lettered, or lost a conflict.
pub async fn apply(ctx: &Ctx, op_id: String) -> Result<Response, ApiError> {
    if op_id.is_empty() {
        // What a write to a local collection answers: no op was queued.
        return Err(ApiError::new(
            ErrorCode::BadRequest,
            "empty op_id: the write queued no op (its collection has sync = \"local\" and never leaves this device), so it will never be on the server",
        ));
    }
    // Subscribe first, then look: no event can slip between the two.
    let mut rx = ctx.events.subscribe();
    let mut settled = ctx.writer.settled();
    settled.borrow_and_update();
    let mut wait = Wait {
        current: op_id.clone(),
        op_id,
        record: None,
    };
    loop {
        if let Some(answer) = wait.look(ctx).await? {
            return Ok(answer);
        }
        // An event, or a commit in which an op left the queue (some paths
        // out of it emit no event): either way, look again.
        let ev = tokio::select! {
            ev = rx.recv() => ev,
            moved = settled.changed() => match moved {
                Ok(()) => continue,
                Err(_) => return Err(shutting_down()),
            },
        };
        match ev {
            Ok(ev) => {
                if let Some(answer) = wait.on_event(&ev) {
                    return Ok(answer);
                }
            }
            Err(broadcast::error::RecvError::Lagged(_)) => {}
            Err(broadcast::error::RecvError::Closed) => return Err(shutting_down()),
        }
    }
}

fn shutting_down() -> ApiError {
    ApiError::new(ErrorCode::ShuttingDown, "the daemon is shutting down")
}

/// What the wait knows so far.
struct Wait {
    /// The op the app asked about.
    op_id: String,
    /// The op that carries its change now (a re-send's, after a conflict).
    current: String,
    /// The record `current` writes (collection, id), once looked up.
    record: Option<(String, String)>,
}

impl Wait {
    fn synced(&self, server_id: Option<String>, version: Option<u64>) -> Response {
        Response::Synced {
            op_id: self.op_id.clone(),
            server_id,
            version,
        }
    }

    /// The answer the store already gives, if any.
    async fn look(&mut self, ctx: &Ctx) -> Result<Option<Response>, ApiError> {
        for _ in 0..MAX_HOPS {
            let op = self.current.clone();
            match read(ctx, move |s| s.op_state(&op)).await? {
                OpState::DeadLettered(e) => return Err(self.dead_lettered(&e)),
                OpState::Queued | OpState::Parked => {
                    if self.record.is_none() {
                        let op = self.current.clone();
                        self.record = read(ctx, move |s| s.op_target(&op)).await?;
                    }
                    return Ok(None);
                }
                OpState::Done => {}
            }
            let op = self.current.clone();
            match read(ctx, move |s| s.settled(&op)).await? {
                Some(s) if s.result.local_lost() => return Err(self.lost(&s)),
                Some(Settled {
                    resent_as: Some(next),
                    ..
                }) => {
                    self.current = next;
                    self.record = None;
                }
                // Acknowledged, or settled without a loss (both deleted,
                // or the server already had every change).
                _ => return self.done(ctx).await.map(Some),
            }
        }
        Ok(None)
    }

    /// `synced`, with the record's server id and version when known.
    async fn done(&self, ctx: &Ctx) -> Result<Response, ApiError> {
        let Some((c, id)) = self.record.clone() else {
            // Already gone before we looked: confirmed earlier.
            return Ok(self.synced(None, None));
        };
        let rec = read(ctx, move |s| s.record(&c, &id)).await?;
        let server_id = rec.as_ref().and_then(|r| r.server_id.clone());
        Ok(self.synced(server_id, rec.and_then(|r| r.version)))
    }

    fn dead_lettered(&self, error: &str) -> ApiError {
        let what = if self.current == self.op_id {
            format!("op {}", self.op_id)
        } else {
            format!("op {}'s re-sent change (op {})", self.op_id, self.current)
        };
        ApiError::new(
            ErrorCode::DeadLettered,
            format!("{what} was rejected by the server: {error}"),
        )
    }

    fn lost(&self, s: &Settled) -> ApiError {
        ApiError::new(
            ErrorCode::Conflict,
            format!(
                "op {} lost a conflict ({}): the server's version was kept and the local change discarded",
                self.op_id, outcome_text(s.result)
            ),
        )
    }

    /// The answer an event gives, if any: the server's ids come with the
    /// acknowledgement. Everything else is read from the store.
    fn on_event(&self, ev: &Event) -> Option<Response> {
        match ev {
            Event::Synced {
                op_id,
                server_id,
                version,
                ..
            } if *op_id == self.current => {
                Some(self.synced(Some(server_id.clone()), Some(*version)))
            }
            _ => None,
        }
    }
}

fn outcome_text(o: crate::domain::ConflictOutcome) -> &'static str {
    use crate::domain::ConflictOutcome::*;
    match o {
        TookServer => "took server",
        AlreadyDeleted => "already deleted",
        Merged => "merged",
        Resent => "re-sent",
        Parked => "parked",
    }
}
