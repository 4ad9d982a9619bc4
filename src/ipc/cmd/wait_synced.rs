//! `wait_synced`: answers once an operation is on the server, was
//! rejected, or went through a conflict resolution (whose re-sent change,
//! if any, must land too). Its own file because it is the one request
//! that waits on events rather than on the store; the session ends the
//! wait when the client goes away.

use tokio::sync::broadcast;

use crate::ipc::server::Ctx;
use crate::ipc::wire::{ApiError, ErrorCode, Event, Response};
use crate::store::OpState;

/// Waits until `op_id` is on the server, dead-lettered, or gone through a
/// conflict resolution whose re-sent op (if any) has landed.
pub async fn apply(ctx: &Ctx, op_id: String) -> Result<Response, ApiError> {
    // Subscribe first, then look: no event can slip between the two.
    let mut rx = ctx.events.subscribe();
    let mut wait = Wait {
        op_id,
        record: None,
        resolved_by_conflict: false,
    };
    loop {
        if let Some(answer) = wait.look(ctx)? {
            return Ok(answer);
        }
        match rx.recv().await {
            Ok(ev) => {
                if let Some(answer) = wait.on_event(&ev) {
                    return answer;
                }
            }
            Err(broadcast::error::RecvError::Lagged(_)) => {}
            Err(broadcast::error::RecvError::Closed) => {
                return Err(ApiError::new(
                    ErrorCode::ShuttingDown,
                    "the daemon is shutting down",
                ))
            }
        }
    }
}

/// What the wait knows so far.
struct Wait {
    op_id: String,
    /// The record the op writes (collection, id), once looked up.
    record: Option<(String, String)>,
    /// A conflict resolution re-sent the change: wait for the record.
    resolved_by_conflict: bool,
}

impl Wait {
    fn synced(&self, server_id: Option<String>, version: Option<u64>) -> Response {
        Response::Synced {
            op_id: self.op_id.clone(),
            server_id,
            version,
        }
    }

    fn is_record(&self, collection: &str, id: &str) -> bool {
        self.record
            .as_ref()
            .is_some_and(|(c, i)| c == collection && i == id)
    }

    /// The answer the store already gives, if any.
    fn look(&mut self, ctx: &Ctx) -> Result<Option<Response>, ApiError> {
        match ctx.store.op_state(&self.op_id)? {
            OpState::DeadLettered(e) => {
                return Err(ApiError::new(
                    ErrorCode::DeadLettered,
                    format!("op {} was rejected by the server: {e}", self.op_id),
                ))
            }
            OpState::Queued | OpState::Parked => {}
            OpState::Done => {
                let Some((c, id)) = &self.record else {
                    // Already gone before we looked: confirmed earlier.
                    return Ok(Some(self.synced(None, None)));
                };
                let rec = ctx.store.record(c, id)?;
                let still_pending = rec.as_ref().is_some_and(|r| r.pending > 0);
                if !(self.resolved_by_conflict && still_pending) {
                    let server_id = rec.as_ref().and_then(|r| r.server_id.clone());
                    let version = rec.as_ref().and_then(|r| r.version);
                    return Ok(Some(self.synced(server_id, version)));
                }
            }
        }
        if self.record.is_none() {
            self.record = ctx.store.op_target(&self.op_id)?;
        }
        Ok(None)
    }

    /// The answer an event gives, if any.
    fn on_event(&mut self, ev: &Event) -> Option<Result<Response, ApiError>> {
        match ev {
            Event::Synced {
                op_id,
                server_id,
                version,
                ..
            } if *op_id == self.op_id && !self.resolved_by_conflict => {
                Some(Ok(self.synced(Some(server_id.clone()), Some(*version))))
            }
            Event::DeadLettered {
                collection,
                id,
                error,
                ..
            } if self.resolved_by_conflict && self.is_record(collection, id) => {
                Some(Err(ApiError::new(
                    ErrorCode::DeadLettered,
                    format!("op {}'s re-sent change was rejected: {error}", self.op_id),
                )))
            }
            Event::Conflict {
                collection,
                id,
                strategy,
                result,
                ..
            } if self.is_record(collection, id) => {
                if result.local_lost() {
                    return Some(Err(ApiError::new(
                        ErrorCode::Conflict,
                        format!(
                            "op {} lost a conflict ({strategy}): the server's version was kept and the local change discarded",
                            self.op_id
                        ),
                    )));
                }
                self.resolved_by_conflict = true;
                None
            }
            _ => None,
        }
    }
}
