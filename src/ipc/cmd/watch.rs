//! `watch`: subscribes the connection to change events. Its own file
//! because a subscription outlives its request: the session keeps the
//! [`Subscription`] and forwards what [`Subscription::next`] yields
//! between replies. Events come from a bounded broadcast channel, so a
//! watcher that falls behind gets `resync_needed` and never slows writers.

use std::sync::Arc;

use tokio::sync::broadcast;

use crate::domain::ids::validate_collection;
use crate::ipc::context::Ctx;
use crate::ipc::wire::{ApiError, ErrorCode, Event};

/// One connection's event feed with its collection filter.
pub struct Subscription {
    rx: broadcast::Receiver<Arc<Event>>,
    /// Empty: every collection.
    collections: Vec<String>,
}

/// Checks the filter and starts a new feed (replacing any earlier one is
/// the session's business).
pub fn subscribe(ctx: &Ctx, collections: Vec<String>) -> Result<Subscription, ApiError> {
    if let Some(e) = collections
        .iter()
        .find_map(|c| validate_collection(c).err())
    {
        return Err(ApiError::new(ErrorCode::BadCollection, e));
    }
    Ok(Subscription {
        rx: ctx.events.subscribe(),
        collections,
    })
}

impl Subscription {
    fn wants(&self, ev: &Event) -> bool {
        match ev.collection() {
            Some(c) => self.collections.is_empty() || self.collections.iter().any(|x| x == c),
            None => true,
        }
    }

    /// The next event this subscriber wants; `resync_needed` after it fell
    /// behind; `None` once the source is gone (the daemon is stopping).
    /// Cancel-safe.
    pub async fn next(&mut self) -> Option<Event> {
        loop {
            match self.rx.recv().await {
                Ok(ev) if self.wants(&ev) => return Some((*ev).clone()),
                Ok(_) => {}
                Err(broadcast::error::RecvError::Lagged(missed)) => {
                    return Some(Event::ResyncNeeded { missed })
                }
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    }
}
