//! Wake-ups for waiting pulls (`GET v1/changes?wait=S`, feature `wait`).
//!
//! Why a module of its own: the *source* of "the change log moved" differs
//! per store (the redb store publishes right after its own durable commit; a
//! PostgreSQL store would publish from a LISTEN/NOTIFY listener, since other
//! processes commit too), while the *waiting* is the same for all. A store
//! owns a [`Feed`], calls [`Feed::publish`] with its new head after each
//! commit that appended to the log, and hands out receivers through
//! [`BackendStore::subscribe`](super::store::BackendStore::subscribe); the
//! HTTP layer waits on them with [`wait_past`].
//!
//! The value carried is a wake-up only, never data: a waiter re-reads the log
//! through the store after waking. Values may be skipped (a `watch` channel
//! keeps the newest), which is fine for that reason. It only ever grows: the
//! redb store publishes its log's head; the PostgreSQL store, which has no
//! cluster-wide head any more (each scope has its own), counts the commits
//! it hears of ([`Feed::bump`]). A waiter therefore remembers the value it
//! saw before reading and waits for a greater one, whatever it means.
//!
//! Waiting is purely async: no blocking-pool thread and no store
//! transaction or lock is held while a request waits.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use tokio::sync::watch;
use tokio::time::Instant;

/// The publishing side: a value that grows with every commit, and the
/// newest known head of each scope.
///
/// Wake-ups come in two kinds. An *unscoped* one ([`publish`](Self::publish),
/// [`bump`](Self::bump)) says "something moved": every waiter re-reads. A
/// *scoped* one ([`publish_scopes`](Self::publish_scopes)) names the scopes
/// and their new heads: a waiter re-reads only when one of its scopes is
/// past the head it read ([`may_have_moved`](Self::may_have_moved)), so a
/// commit in one user's scope does not send every other waiting device of
/// the node back to the database.
#[derive(Debug)]
pub struct Feed {
    tx: watch::Sender<u64>,
    /// The newest head heard of, per scope (scoped wake-ups only).
    heads: Mutex<HashMap<String, u64>>,
    /// How many unscoped wake-ups there were.
    unscoped: AtomicU64,
}

impl Feed {
    /// A feed whose head is `head` (the log's newest sequence, 0 if empty).
    pub fn new(head: u64) -> Feed {
        Feed {
            tx: watch::Sender::new(head),
            heads: Mutex::new(HashMap::new()),
            unscoped: AtomicU64::new(0),
        }
    }

    /// Announces that the log's committed head is now `head`, waking every
    /// waiter (unscoped). Call only after the commit is durable. The head
    /// never moves back: a stale value (two commits publishing out of
    /// order) is ignored.
    pub fn publish(&self, head: u64) {
        self.unscoped.fetch_add(1, Ordering::SeqCst);
        self.tx.send_if_modified(|current| {
            let moved = head > *current;
            if moved {
                *current = head;
            }
            moved
        });
    }

    /// Announces that some feed moved, without naming it (unscoped): every
    /// waiter re-reads.
    pub fn bump(&self) {
        self.unscoped.fetch_add(1, Ordering::SeqCst);
        self.tx
            .send_modify(|current| *current = current.saturating_add(1));
    }

    /// Announces committed heads of scopes (a head never moves back: an
    /// older value than the one known is ignored), waking the waiters,
    /// which re-read only if one of their scopes moved.
    pub fn publish_scopes(&self, heads: &[(String, u64)]) {
        let mut moved = false;
        {
            let mut known = self.heads.lock().unwrap_or_else(|e| e.into_inner());
            for (scope, head) in heads {
                match known.get_mut(scope) {
                    Some(slot) if *head <= *slot => {}
                    Some(slot) => {
                        *slot = *head;
                        moved = true;
                    }
                    None => {
                        known.insert(scope.clone(), *head);
                        moved = true;
                    }
                }
            }
        }
        if moved {
            self.tx
                .send_modify(|current| *current = current.saturating_add(1));
        }
    }

    /// Replaces the known heads with `heads` (read from the database), then
    /// wakes every waiter (unscoped): for when heads may have moved back (a
    /// restored database, a failover that lost commits) or wake-ups may
    /// have been missed (a listener reconnect), which publishing the
    /// greater of old and new cannot repair.
    pub fn reset_scopes(&self, heads: impl IntoIterator<Item = (String, u64)>) {
        {
            let mut known = self.heads.lock().unwrap_or_else(|e| e.into_inner());
            *known = heads.into_iter().collect();
        }
        self.bump();
    }

    /// The count of unscoped wake-ups so far: read it *before* reading the
    /// feeds, and pass it to [`may_have_moved`](Self::may_have_moved).
    pub fn unscoped(&self) -> u64 {
        self.unscoped.load(Ordering::SeqCst)
    }

    /// Whether a waiter that read `read` (scope, head) after seeing
    /// `unscoped_seen` unscoped wake-ups may now find more: an unscoped
    /// wake-up since, or a scope whose known head is past the one read.
    pub fn may_have_moved(&self, unscoped_seen: u64, read: &[(String, u64)]) -> bool {
        if self.unscoped() != unscoped_seen {
            return true;
        }
        let known = self.heads.lock().unwrap_or_else(|e| e.into_inner());
        read.iter()
            .any(|(scope, head)| known.get(scope).is_some_and(|k| k > head))
    }

    /// The sum of the known heads (to tell, against the database's sum,
    /// whether a scoped wake-up was missed).
    pub fn known_total(&self) -> u64 {
        let known = self.heads.lock().unwrap_or_else(|e| e.into_inner());
        known.values().fold(0u64, |a, h| a.saturating_add(*h))
    }

    /// A receiver for [`wait_past`]; its current value counts as seen.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.tx.subscribe()
    }
}

/// Why [`wait_past`] returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WaitEnd {
    /// The head moved past the cursor: re-read the log.
    Moved,
    /// The deadline passed first.
    TimedOut,
    /// The server is stopping (or the feed is gone): answer now.
    Stopped,
}

/// Waits until `head` carries a value greater than `since`, `deadline`
/// passes, or `stop` resolves, whichever comes first.
///
/// Subscribe *before* reading the log, then call this with the cursor read:
/// a commit between the read and the wait is then seen at once, not missed.
pub async fn wait_past(
    head: &mut watch::Receiver<u64>,
    since: u64,
    deadline: Instant,
    stop: impl Future<Output = ()>,
) -> WaitEnd {
    tokio::select! {
        moved = head.wait_for(|h| *h > since) => match moved {
            Ok(_) => WaitEnd::Moved,
            Err(_) => WaitEnd::Stopped,
        },
        () = tokio::time::sleep_until(deadline) => WaitEnd::TimedOut,
        () = stop => WaitEnd::Stopped,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn soon(ms: u64) -> Instant {
        Instant::now() + Duration::from_millis(ms)
    }

    #[tokio::test]
    async fn times_out_without_commit() {
        let feed = Feed::new(3);
        let mut rx = feed.subscribe();
        let t0 = Instant::now();
        let end = wait_past(&mut rx, 3, soon(50), std::future::pending()).await;
        assert_eq!(end, WaitEnd::TimedOut);
        assert!(t0.elapsed() >= Duration::from_millis(50));
    }

    #[tokio::test]
    async fn woken_by_publish() {
        let feed = std::sync::Arc::new(Feed::new(3));
        let mut rx = feed.subscribe();
        let publisher = std::sync::Arc::clone(&feed);
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(10)).await;
            publisher.publish(4);
        });
        let t0 = Instant::now();
        let end = wait_past(&mut rx, 3, soon(60_000), std::future::pending()).await;
        assert_eq!(end, WaitEnd::Moved);
        assert!(t0.elapsed() < Duration::from_secs(1));
    }

    #[tokio::test]
    async fn already_past_returns_at_once_and_head_never_moves_back() {
        let feed = Feed::new(5);
        let mut rx = feed.subscribe();
        // A commit between the read (since = 4) and the wait is not missed.
        assert_eq!(
            wait_past(&mut rx, 4, soon(1000), std::future::pending()).await,
            WaitEnd::Moved
        );
        feed.publish(2);
        assert_eq!(*feed.subscribe().borrow(), 5);
    }

    #[tokio::test]
    async fn a_bump_wakes_a_waiter_past_the_value_it_saw() {
        let feed = std::sync::Arc::new(Feed::new(0));
        let mut rx = feed.subscribe();
        let seen = *rx.borrow_and_update();
        let publisher = std::sync::Arc::clone(&feed);
        tokio::spawn(async move { publisher.bump() });
        let end = wait_past(&mut rx, seen, soon(60_000), std::future::pending()).await;
        assert_eq!(end, WaitEnd::Moved);
        assert_eq!(*rx.borrow(), seen + 1);
    }

    #[tokio::test]
    async fn scoped_wakes_send_back_only_the_waiters_of_those_scopes() {
        let feed = Feed::new(0);
        let mut rx = feed.subscribe();
        let seen = *rx.borrow_and_update();
        let unscoped = feed.unscoped();
        let alice = vec![("user:alice".to_owned(), 3)];
        let bob = vec![("user:bob".to_owned(), 7)];
        feed.publish_scopes(&[("user:alice".to_owned(), 4)]);
        let end = wait_past(&mut rx, seen, soon(60_000), std::future::pending()).await;
        assert_eq!(end, WaitEnd::Moved, "every waiter is woken");
        assert!(feed.may_have_moved(unscoped, &alice), "alice's scope moved");
        assert!(!feed.may_have_moved(unscoped, &bob), "bob's did not");
        // An older head changes nothing; a head already read is not news.
        feed.publish_scopes(&[("user:alice".to_owned(), 2)]);
        assert!(!feed.may_have_moved(unscoped, &[("user:alice".to_owned(), 4)]));
        assert_eq!(feed.known_total(), 4);
        // An unscoped wake-up sends everyone back.
        feed.bump();
        assert!(feed.may_have_moved(unscoped, &bob));
        // Heads that went back are taken as they are now.
        feed.reset_scopes([("user:alice".to_owned(), 1)]);
        assert_eq!(feed.known_total(), 1);
        let now = feed.unscoped();
        feed.publish_scopes(&[("user:alice".to_owned(), 2)]);
        assert!(feed.may_have_moved(now, &[("user:alice".to_owned(), 1)]));
    }

    #[tokio::test]
    async fn stop_and_dropped_feed_end_the_wait() {
        let feed = Feed::new(0);
        let mut rx = feed.subscribe();
        let end = wait_past(&mut rx, 0, soon(60_000), async {}).await;
        assert_eq!(end, WaitEnd::Stopped);
        drop(feed);
        let end = wait_past(&mut rx, 0, soon(60_000), std::future::pending()).await;
        assert_eq!(end, WaitEnd::Stopped);
    }
}
