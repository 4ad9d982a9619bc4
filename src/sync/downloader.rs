//! The downloader: fetches the content of attachments that arrive with
//! the server's records, in collections that fetch eagerly (the default),
//! and keeps the local copies within `[sync] attachment_cache_bytes`.
//!
//! Why a task of its own: a download may take minutes, and neither the
//! sync worker (which drains the queue) nor the pull (which applies pages)
//! may wait for one. It learns what arrived from the change feed (a
//! `changed` event of remote or conflict origin), and rescans the records
//! at start and after it missed events (at most every 10 s). A failed download is tried
//! again with backoff; lazy collections are fetched on first read instead.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{broadcast, watch};

use crate::backend::client::blobs::BlobPlace;
use crate::config::{AttachmentFetch, Config};
use crate::domain::attachment::{self, AttachmentRef};
use crate::domain::{Event, Origin};
use crate::store::Store;
use crate::sync::attachments::{FetchError, Transfers};

/// Least time between two rescans after missed events: a long drain or
/// pull makes the feed lag again and again, and each rescan reads every
/// record (and, sealed, opens each).
const RESCAN_GAP: Duration = Duration::from_secs(10);

/// First wait after a failed download; doubles up to [`MAX_RETRY`].
const FIRST_RETRY: Duration = Duration::from_secs(1);
const MAX_RETRY: Duration = Duration::from_secs(60);

/// Content to fetch, by hash: its record's scope, the reference, and
/// where it is attached.
type Wanted = BTreeMap<String, (Option<String>, AttachmentRef, BlobPlace)>;

/// Runs until shutdown.
pub async fn run(
    transfers: Arc<Transfers>,
    store: Store,
    mut events: broadcast::Receiver<Arc<Event>>,
    config: watch::Receiver<Arc<Config>>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut wanted = Wanted::new();
    let mut backoff = Backoff::default();
    let (mut rescan, mut sweep_now) = (true, true);
    let mut next_sweep = tokio::time::Instant::now() + ORPHAN_IDLE;
    // A rescan asked for after missed events waits for this.
    let mut lagged: Option<tokio::time::Instant> = None;
    let mut last_scan = tokio::time::Instant::now();
    loop {
        if rescan {
            rescan = false;
            last_scan = tokio::time::Instant::now();
            match scan(&store, &config, transfers.blobs()).await {
                Ok(all) => wanted.extend(all),
                Err(e) => tracing::warn!(error = %e, "cannot list the attachments to download"),
            }
        }
        if std::mem::take(&mut sweep_now) {
            sweep(&transfers, &store).await;
        }
        let bound = || keep_within_bound(&transfers, &store, &config);
        fetch_all(&transfers, &mut wanted, &mut backoff, bound).await;
        keep_within_bound(&transfers, &store, &config).await;
        let next = backoff.next_due(&wanted);
        let sleep = async {
            match next {
                Some(t) => tokio::time::sleep_until(t).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            biased;
            _ = shutdown.changed() => return,
            // Now and then, look for content nothing references any more.
            _ = tokio::time::sleep_until(next_sweep) => {
                next_sweep = tokio::time::Instant::now() + ORPHAN_IDLE;
                (rescan, sweep_now) = (true, true);
            }
            _ = sleep_until_some(lagged) => {
                lagged = None;
                rescan = true;
            }
            ev = events.recv() => match ev {
                Ok(ev) => note(&ev, &store, &config, transfers.blobs(), &mut wanted).await,
                Err(broadcast::error::RecvError::Lagged(_)) => {
                    lagged.get_or_insert(last_scan + RESCAN_GAP);
                }
                Err(broadcast::error::RecvError::Closed) => return,
            },
            _ = transfers.client_changed() => rescan = true,
            // A read downloaded one: back within the bound.
            _ = transfers.fetched() => {}
            _ = sleep => {}
        }
    }
}

/// Sleeps until `t`; never, without one.
async fn sleep_until_some(t: Option<tokio::time::Instant>) {
    match t {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

/// Whether content is worth an eager download: not here, and not a copy
/// the cache bound evicted (the backend holds it; it is fetched again on
/// its next read, not at every rescan, which would download and evict it
/// over and over).
fn worth_fetching(blobs: &crate::store::blobs::BlobDir, r: &AttachmentRef) -> bool {
    blobs.len(&r.sha256) != Some(r.length) && !blobs.is_remote(&r.sha256)
}

/// When each failed content is tried again: a download that fails waits
/// [`FIRST_RETRY`], doubling up to [`MAX_RETRY`], whatever events arrive
/// meanwhile (a record referencing it may arrive many times).
#[derive(Default)]
struct Backoff {
    due: std::collections::HashMap<String, (tokio::time::Instant, Duration)>,
}

impl Backoff {
    fn ready(&self, sha: &str) -> bool {
        self.due
            .get(sha)
            .is_none_or(|(t, _)| *t <= tokio::time::Instant::now())
    }

    fn failed(&mut self, sha: &str) {
        let wait = self
            .due
            .get(sha)
            .map_or(FIRST_RETRY, |(_, w)| (*w * 2).min(MAX_RETRY));
        self.due
            .insert(sha.to_owned(), (tokio::time::Instant::now() + wait, wait));
    }

    /// The next retry of content still wanted.
    fn next_due(&self, wanted: &Wanted) -> Option<tokio::time::Instant> {
        self.due
            .iter()
            .filter(|(k, _)| wanted.contains_key(*k))
            .map(|(_, (t, _))| *t)
            .min()
    }
}

/// Fetches everything wanted that is due. Content the backend does not
/// hold is dropped from the list (it is fetched on demand, should it
/// appear later); a failure is tried again after its backoff.
async fn fetch_all<F, Fut>(
    transfers: &Transfers,
    wanted: &mut Wanted,
    backoff: &mut Backoff,
    bound: F,
) where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let todo: Vec<_> = wanted
        .iter()
        .filter(|(k, _)| backoff.ready(k))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    for (sha, (scope, r, place)) in todo {
        match transfers.fetch(scope.as_deref(), &r, &place).await {
            Ok(()) => {
                wanted.remove(&sha);
                backoff.due.remove(&sha);
                // Within the cache bound after each file, not after all.
                bound().await;
            }
            // Woken again when a backend is known.
            Err(FetchError::NoBackend) => return,
            Err(e @ FetchError::NotHeld { .. }) => {
                tracing::warn!(sha256 = %sha, error = %e, "attachment not downloaded");
                wanted.remove(&sha);
                backoff.due.remove(&sha);
            }
            Err(e) => {
                tracing::warn!(sha256 = %sha, error = %e, "attachment download failed; retrying later");
                backoff.failed(&sha);
            }
        }
    }
}

/// Adds the missing content of a record that arrived from the server.
async fn note(
    ev: &Event,
    store: &Store,
    config: &watch::Receiver<Arc<Config>>,
    blobs: &crate::store::blobs::BlobDir,
    wanted: &mut Wanted,
) {
    let Event::Changed {
        collection,
        id,
        origin: Origin::Remote | Origin::Conflict,
        data: Some(doc),
        ..
    } = ev
    else {
        return;
    };
    if config.borrow().attachment_fetch(collection) == AttachmentFetch::Lazy {
        return;
    }
    let serde_json::Value::Object(m) = &doc.0 else {
        return;
    };
    let Ok(refs) = attachment::refs(m) else {
        return;
    };
    if refs.is_empty() {
        return;
    }
    let (s, c, i) = (store.clone(), collection.clone(), id.clone());
    let scope = tokio::task::spawn_blocking(move || s.record(&c, &i))
        .await
        .ok()
        .and_then(Result::ok)
        .flatten()
        .and_then(|r| r.scope);
    for (name, r) in refs.into_iter().filter(|(_, r)| worth_fetching(blobs, r)) {
        let place = BlobPlace {
            collection: collection.clone(),
            id: id.clone(),
            name,
        };
        wanted.insert(r.sha256.clone(), (scope.clone(), r, place));
    }
}

/// Every referenced content of eager collections that is not here.
async fn scan(
    store: &Store,
    config: &watch::Receiver<Arc<Config>>,
    blobs: &crate::store::blobs::BlobDir,
) -> Result<Wanted, crate::store::StoreError> {
    let s = store.clone();
    let refs = tokio::task::spawn_blocking(move || s.content_refs())
        .await
        .map_err(|e| crate::store::StoreError::Engine(e.to_string().into()))??;
    let cfg = config.borrow().clone();
    Ok(refs
        .into_iter()
        .filter(|r| cfg.attachment_fetch(&r.collection) == AttachmentFetch::Eager)
        .filter(|r| worth_fetching(blobs, &r.attachment))
        .map(|r| {
            let place = BlobPlace {
                collection: r.collection,
                id: r.id,
                name: r.name,
            };
            (r.attachment.sha256.clone(), (r.scope, r.attachment, place))
        })
        .collect())
}

/// Content left unreferenced here for longer than this is removed.
const ORPHAN_IDLE: Duration = Duration::from_secs(3600);

/// Removes local content no record and no op references (detached, its
/// record deleted or purged) once it has not been used for an hour.
async fn sweep(transfers: &Arc<Transfers>, store: &Store) {
    let (t, s) = (transfers.clone(), store.clone());
    let swept = tokio::task::spawn_blocking(move || {
        let mut used: std::collections::HashSet<String> = s
            .content_refs()?
            .into_iter()
            .map(|r| r.attachment.sha256)
            .collect();
        used.extend(s.content_of_ops()?);
        t.sweep(&used, ORPHAN_IDLE)
            .map_err(|e| crate::store::StoreError::Engine(e.to_string().into()))
    })
    .await;
    match swept {
        Ok(Ok(n)) if n > 0 => {
            tracing::info!(removed = n, "removed attachment content nothing references")
        }
        Ok(Err(e)) => tracing::warn!(error = %e, "unreferenced attachment content not removed"),
        _ => {}
    }
}

/// Evicts the least recently read copies of content the backend holds
/// while they exceed `[sync] attachment_cache_bytes`.
async fn keep_within_bound(
    transfers: &Arc<Transfers>,
    store: &Store,
    config: &watch::Receiver<Arc<Config>>,
) {
    let Some(budget) = config.borrow().sync.attachment_cache_bytes else {
        return;
    };
    let (t, s) = (transfers.clone(), store.clone());
    let done = tokio::task::spawn_blocking(move || t.evict(budget, || s.content_of_ops())).await;
    match done {
        Ok(Ok(removed)) if !removed.is_empty() => {
            tracing::debug!(
                count = removed.len(),
                "evicted attachment copies over the cache bound"
            );
        }
        Ok(Err(e)) => tracing::warn!(error = %e, "cannot evict attachment copies"),
        _ => {}
    }
}
