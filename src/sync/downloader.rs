//! The downloader: fetches the content of attachments that arrive with
//! the server's records, in collections that fetch eagerly (the default),
//! and keeps the local copies within `[sync] attachment_cache_bytes`.
//!
//! Why a task of its own: a download may take minutes, and neither the
//! sync worker (which drains the queue) nor the pull (which applies pages)
//! may wait for one. It learns what arrived from the change feed (a
//! `changed` event of remote or conflict origin), and rescans the records
//! at start and whenever it missed events. A failed download is tried
//! again with backoff; lazy collections are fetched on first read instead.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{broadcast, watch};

use crate::config::{AttachmentFetch, Config};
use crate::domain::attachment::{self, AttachmentRef};
use crate::domain::{Event, Origin};
use crate::store::Store;
use crate::sync::attachments::{FetchError, Transfers};

/// First wait after a failed download; doubles up to [`MAX_RETRY`].
const FIRST_RETRY: Duration = Duration::from_secs(1);
const MAX_RETRY: Duration = Duration::from_secs(60);

/// Content to fetch, by hash: the reference and its record's scope.
type Wanted = BTreeMap<String, (Option<String>, AttachmentRef)>;

/// Runs until shutdown.
pub async fn run(
    transfers: Arc<Transfers>,
    store: Store,
    mut events: broadcast::Receiver<Arc<Event>>,
    config: watch::Receiver<Arc<Config>>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut wanted = Wanted::new();
    let mut rescan = true;
    let mut retry = FIRST_RETRY;
    loop {
        if rescan {
            rescan = false;
            match scan(&store, &config).await {
                Ok(all) => wanted.extend(all),
                Err(e) => tracing::warn!(error = %e, "cannot list the attachments to download"),
            }
        }
        let failed = fetch_all(&transfers, &mut wanted).await;
        keep_within_bound(&transfers, &store, &config).await;
        let wait = if failed {
            let w = retry;
            retry = (retry * 2).min(MAX_RETRY);
            Some(w)
        } else {
            retry = FIRST_RETRY;
            None
        };
        let sleep = async {
            match wait {
                Some(w) => tokio::time::sleep(w).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            biased;
            _ = shutdown.changed() => return,
            ev = events.recv() => match ev {
                Ok(ev) => note(&ev, &store, &config, &mut wanted).await,
                Err(broadcast::error::RecvError::Lagged(_)) => rescan = true,
                Err(broadcast::error::RecvError::Closed) => return,
            },
            _ = transfers.client_changed() => rescan = true,
            _ = sleep => {}
        }
    }
}

/// Fetches everything wanted; `true` when something failed (kept for a
/// retry). Content the backend does not hold is dropped from the list
/// (it is fetched on demand, should it appear later).
async fn fetch_all(transfers: &Transfers, wanted: &mut Wanted) -> bool {
    let mut failed = false;
    let todo: Vec<_> = wanted.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    for (sha, (scope, r)) in todo {
        match transfers.fetch(scope.as_deref(), &r).await {
            Ok(()) => {
                wanted.remove(&sha);
            }
            Err(FetchError::NoBackend) => return true,
            Err(e @ FetchError::NotHeld { .. }) => {
                tracing::warn!(sha256 = %sha, error = %e, "attachment not downloaded");
                wanted.remove(&sha);
            }
            Err(e) => {
                tracing::warn!(sha256 = %sha, error = %e, "attachment download failed; retrying later");
                failed = true;
            }
        }
    }
    failed
}

/// Adds the missing content of a record that arrived from the server.
async fn note(
    ev: &Event,
    store: &Store,
    config: &watch::Receiver<Arc<Config>>,
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
    for r in refs.into_values() {
        wanted.insert(r.sha256.clone(), (scope.clone(), r));
    }
}

/// Every referenced content of eager collections that is not here.
async fn scan(
    store: &Store,
    config: &watch::Receiver<Arc<Config>>,
) -> Result<Wanted, crate::store::StoreError> {
    let s = store.clone();
    let refs = tokio::task::spawn_blocking(move || s.content_refs())
        .await
        .map_err(|e| crate::store::StoreError::Engine(e.to_string().into()))??;
    let cfg = config.borrow().clone();
    Ok(refs
        .into_iter()
        .filter(|r| cfg.attachment_fetch(&r.collection) == AttachmentFetch::Eager)
        .map(|r| (r.attachment.sha256.clone(), (r.scope, r.attachment)))
        .collect())
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
