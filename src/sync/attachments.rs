//! Attachment transfers: uploads before the op that references the
//! content is sent, downloads when a record that references content
//! arrives (or on first read), and the progress `get` shows.
//!
//! Why its own file: the queue moves records, this moves their bytes, in
//! chunks, resumably. An upload asks the backend how much it holds
//! (`HEAD`) and sends only the rest, so a retry after a kill -9, a cut or
//! a backend restart never re-sends what the backend acknowledged, and
//! content the backend already has is not sent at all. A download appends
//! to the data dir's part file and resumes from its length; content that
//! does not hash to its name is dropped and fetched again, never stored.
//! The backend applies an op that references content only once it holds
//! it, so no device sees a record before its attachments can be fetched.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::watch;

use crate::backend::client::blobs::{BlobHeld, BlobPlace};
use crate::backend::client::Failure;
use crate::domain::attachment::AttachmentRef;
use crate::store::blobs::{BlobDir, BlobError};
use crate::sync::transport::Transport;

/// Bytes per upload or download request: well under any server's body
/// limit, large enough that the per-request cost is small.
pub const CHUNK_BYTES: usize = 1 << 20;

/// A download that fails on a hash mismatch is tried this many times in
/// a row before the failure is reported.
const CORRUPT_TRIES: u32 = 3;

/// How long a confirmation that the backend holds a content is trusted
/// before an op that references it asks again (the backend may collect
/// content no record references after its retention window).
const CONFIRMED_FOR: Duration = Duration::from_secs(600);

/// Which way bytes move.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Way {
    Up,
    Down,
}

/// Why an upload did not complete.
#[derive(Debug, Clone, PartialEq)]
pub enum UploadError {
    /// It may work later (the backend failed, or this device's disk).
    Failed(Failure),
    /// The backend will not take this content (no write access to the
    /// scope, over its size limit): the reason to dead-letter the op.
    Refused(String),
}

impl From<Failure> for UploadError {
    fn from(f: Failure) -> Self {
        UploadError::Failed(f)
    }
}

/// Why a download did not complete.
#[derive(Debug)]
pub enum FetchError {
    /// No backend is configured, or it does not take attachments.
    NoBackend,
    /// The backend does not hold the content.
    NotHeld { sha256: String },
    /// The backend failed or could not be reached.
    Backend(Failure),
    /// This device's disk failed (a full disk, say).
    Local(BlobError),
    /// The backend sent bytes that do not hash to the content's name,
    /// [`CORRUPT_TRIES`] times.
    Corrupt { sha256: String },
}

impl std::fmt::Display for FetchError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FetchError::NoBackend => f.write_str(
                "not on this device, and no backend that takes attachments is configured",
            ),
            FetchError::NotHeld { sha256 } => {
                write!(f, "the backend does not hold attachment content {sha256}")
            }
            FetchError::Backend(e) => write!(f, "downloading from the backend: {}", e.reason()),
            FetchError::Local(e) => write!(f, "storing the download: {e}"),
            FetchError::Corrupt { sha256 } => write!(
                f,
                "the backend sent content that does not hash to {sha256} ({CORRUPT_TRIES} tries); nothing was stored"
            ),
        }
    }
}

/// The transfers of one daemon. Shared by the sync worker (uploads), the
/// downloader task and the socket (reads, progress).
pub struct Transfers {
    blobs: BlobDir,
    client: watch::Sender<Option<Arc<dyn Transport>>>,
    moving: Mutex<HashMap<String, (Way, u64)>>,
    confirmed: Mutex<HashMap<(Option<String>, String), Instant>>,
    /// One download of a content at a time; a second reader waits for it.
    fetching: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    uploaded: AtomicU64,
    downloaded: AtomicU64,
    /// Woken when a download completes (on demand too): the downloader
    /// then keeps the copies within the cache bound.
    fetched: tokio::sync::Notify,
}

impl Transfers {
    pub fn new(blobs: BlobDir) -> Arc<Transfers> {
        Arc::new(Transfers {
            blobs,
            client: watch::Sender::new(None),
            moving: Mutex::new(HashMap::new()),
            confirmed: Mutex::new(HashMap::new()),
            fetching: Mutex::new(HashMap::new()),
            uploaded: AtomicU64::new(0),
            downloaded: AtomicU64::new(0),
            fetched: tokio::sync::Notify::new(),
        })
    }

    pub fn blobs(&self) -> &BlobDir {
        &self.blobs
    }

    /// The backend transfers go to, as the sync worker knows it (`None`:
    /// none, or one that does not take attachments).
    pub fn set_client(&self, client: Option<Arc<dyn Transport>>) {
        self.client.send_if_modified(|now| {
            let same = match (now.as_ref(), client.as_ref()) {
                (Some(a), Some(b)) => Arc::ptr_eq(a, b),
                (None, None) => true,
                _ => false,
            };
            if !same {
                *now = client;
            }
            !same
        });
    }

    fn client(&self) -> Option<Arc<dyn Transport>> {
        self.client.borrow().clone()
    }

    /// Waits until a backend that takes attachments is known.
    pub async fn client_changed(&self) {
        let mut rx = self.client.subscribe();
        let _ = rx.changed().await;
    }

    /// Resolves after the next completed download.
    pub async fn fetched(&self) {
        self.fetched.notified().await;
    }

    /// Bytes sent and received since the daemon started (metrics).
    pub fn totals(&self) -> (u64, u64) {
        (
            self.uploaded.load(Ordering::Relaxed),
            self.downloaded.load(Ordering::Relaxed),
        )
    }

    /// A transfer of `sha256` in progress, and the bytes it moved.
    pub fn moving(&self, sha256: &str) -> Option<(Way, u64)> {
        lock(&self.moving).get(sha256).copied()
    }

    /// Whether the backend confirmed holding `sha256` (in `scope`) lately.
    pub fn is_confirmed(&self, scope: Option<&str>, sha256: &str) -> bool {
        let key = (scope.map(str::to_owned), sha256.to_owned());
        lock(&self.confirmed)
            .get(&key)
            .is_some_and(|t| t.elapsed() < CONFIRMED_FOR)
    }

    fn confirm(&self, scope: Option<&str>, sha256: &str) {
        let key = (scope.map(str::to_owned), sha256.to_owned());
        lock(&self.confirmed).insert(key, Instant::now());
        self.blobs.mark_remote(sha256);
    }

    /// Makes sure the backend holds `r`'s content (in `scope`): asks how
    /// much it has and sends the rest, chunk by chunk.
    pub async fn upload(
        &self,
        client: &dyn Transport,
        scope: Option<&str>,
        r: &AttachmentRef,
    ) -> Result<(), UploadError> {
        if self.is_confirmed(scope, &r.sha256) {
            return Ok(());
        }
        let mut held = client.blob_held(scope, &r.sha256).await?;
        let _progress = Progress::start(self, &r.sha256, Way::Up);
        let mut stalls = 0;
        loop {
            let offset = match held {
                BlobHeld::Complete => break,
                BlobHeld::Refused(why) => return Err(UploadError::Refused(why)),
                BlobHeld::Partial(offset) => offset,
            };
            // More than the content (a server's stale part): start over.
            let offset = if offset > r.length { 0 } else { offset };
            self.set_moved(&r.sha256, offset);
            let chunk = self.read_chunk(&r.sha256, offset).await?;
            if chunk.is_empty() && offset < r.length {
                return Err(UploadError::Failed(crate::sync::local(
                    BlobError::Missing {
                        sha256: r.sha256.clone(),
                    },
                )));
            }
            let n = chunk.len() as u64;
            held = client
                .blob_put(scope, &r.sha256, offset, r.length, chunk)
                .await?;
            self.uploaded.fetch_add(n, Ordering::Relaxed);
            // A server that keeps answering the offset it was sent took
            // nothing: give up for now (the uploader backs off).
            stalls = if held == BlobHeld::Partial(offset) {
                stalls + 1
            } else {
                0
            };
            if stalls >= 3 {
                return Err(UploadError::Failed(Failure::Transient {
                    reason: format!(
                        "the backend takes no bytes of {} at offset {offset}",
                        r.sha256
                    ),
                    retry_after_ms: None,
                }));
            }
        }
        self.confirm(scope, &r.sha256);
        Ok(())
    }

    async fn read_chunk(&self, sha256: &str, offset: u64) -> Result<Bytes, UploadError> {
        let (blobs, sha) = (self.blobs.clone(), sha256.to_owned());
        tokio::task::spawn_blocking(move || blobs.read_at(&sha, offset, CHUNK_BYTES))
            .await
            .map_err(|e| UploadError::Failed(crate::sync::local(e)))?
            .map(Bytes::from)
            .map_err(|e| UploadError::Failed(crate::sync::local(e)))
    }

    fn set_moved(&self, sha256: &str, done: u64) {
        if let Some(m) = lock(&self.moving).get_mut(sha256) {
            m.1 = done;
        }
    }

    /// Downloads `r`'s content unless it is here already; a second call
    /// for the same content waits for the first.
    pub async fn fetch(
        &self,
        scope: Option<&str>,
        r: &AttachmentRef,
        place: &BlobPlace,
    ) -> Result<(), FetchError> {
        if self.blobs.len(&r.sha256) == Some(r.length) {
            return Ok(());
        }
        let gate = lock(&self.fetching)
            .entry(r.sha256.clone())
            .or_default()
            .clone();
        // The gate stays (one per content ever fetched): removing it while
        // another reader holds a clone would let a third start a second
        // download into the same part file.
        let _one = gate.lock().await;
        self.fetch_alone(scope, r, place).await
    }

    async fn fetch_alone(
        &self,
        scope: Option<&str>,
        r: &AttachmentRef,
        place: &BlobPlace,
    ) -> Result<(), FetchError> {
        if self.blobs.len(&r.sha256) == Some(r.length) {
            return Ok(());
        }
        let client = self.client().ok_or(FetchError::NoBackend)?;
        let _progress = Progress::start(self, &r.sha256, Way::Down);
        for _ in 0..CORRUPT_TRIES {
            match self.download(client.as_ref(), scope, r, place).await {
                Err(FetchError::Local(BlobError::HashMismatch { expected, got })) => {
                    tracing::warn!(sha256 = %expected, got = %got, "the backend sent corrupt attachment content; fetching it again");
                }
                other => return other,
            }
        }
        Err(FetchError::Corrupt {
            sha256: r.sha256.clone(),
        })
    }

    /// One download, resumed from the part file.
    async fn download(
        &self,
        client: &dyn Transport,
        scope: Option<&str>,
        r: &AttachmentRef,
        place: &BlobPlace,
    ) -> Result<(), FetchError> {
        let mut offset = self.blobs.partial_len(&r.sha256);
        if offset > r.length {
            self.blobs.drop_partial(&r.sha256);
            offset = 0;
        }
        if r.length == 0 {
            // Nothing to fetch: the (empty) part file is the content.
            self.write_part(&r.sha256, 0, Bytes::new()).await?;
        }
        while offset < r.length {
            self.set_moved(&r.sha256, offset);
            let want = (r.length - offset).min(CHUNK_BYTES as u64);
            let bytes = client
                .blob_get(scope, &r.sha256, offset, want, Some(place))
                .await
                .map_err(FetchError::Backend)?
                .ok_or_else(|| FetchError::NotHeld {
                    sha256: r.sha256.clone(),
                })?;
            if bytes.is_empty() {
                return Err(FetchError::Backend(Failure::Transient {
                    reason: "the backend sent an empty range".into(),
                    retry_after_ms: None,
                }));
            }
            let take = bytes.len().min((r.length - offset) as usize);
            self.write_part(&r.sha256, offset, bytes.slice(..take))
                .await?;
            self.downloaded.fetch_add(take as u64, Ordering::Relaxed);
            offset += take as u64;
        }
        let (blobs, sha, len) = (self.blobs.clone(), r.sha256.clone(), r.length);
        tokio::task::spawn_blocking(move || blobs.finish_partial(&sha, len))
            .await
            .map_err(|e| FetchError::Backend(crate::sync::local(e)))?
            .map_err(FetchError::Local)?;
        self.blobs.mark_remote(&r.sha256);
        self.fetched.notify_one();
        Ok(())
    }

    async fn write_part(&self, sha256: &str, offset: u64, bytes: Bytes) -> Result<(), FetchError> {
        let (blobs, sha) = (self.blobs.clone(), sha256.to_owned());
        tokio::task::spawn_blocking(move || blobs.append_partial(&sha, offset, &bytes))
            .await
            .map_err(|e| FetchError::Backend(crate::sync::local(e)))?
            .map_err(FetchError::Local)
    }

    /// Removes the least recently read copies of content the backend holds
    /// until they fit in `budget`, keeping what `keep` lists (the content
    /// of queued ops; read only when over the bound).
    pub fn evict(
        &self,
        budget: u64,
        keep: impl FnOnce() -> Result<HashSet<String>, crate::store::StoreError>,
    ) -> Result<Vec<String>, EvictError> {
        let remote: Vec<_> = self
            .blobs
            .list()
            .map_err(EvictError::Files)?
            .into_iter()
            .filter(|f| self.blobs.is_remote(&f.sha256) && self.moving(&f.sha256).is_none())
            .collect();
        if remote.iter().map(|f| f.len).sum::<u64>() <= budget {
            return Ok(Vec::new());
        }
        let keep = keep().map_err(EvictError::Store)?;
        let candidates = remote
            .into_iter()
            .filter(|f| !keep.contains(&f.sha256))
            .collect();
        Ok(self.blobs.evict(candidates, budget))
    }
}

/// Why eviction could not run.
#[derive(Debug)]
pub enum EvictError {
    Files(BlobError),
    Store(crate::store::StoreError),
}

impl std::fmt::Display for EvictError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            EvictError::Files(e) => write!(f, "{e}"),
            EvictError::Store(e) => write!(f, "{e}"),
        }
    }
}

impl Transfers {
    /// Removes local content that nothing references any more (`used`:
    /// what records and ops reference) and that was not used for `idle`
    /// (an attach in progress stores its content just before the write
    /// that references it). Content being moved is kept.
    pub fn sweep(&self, used: &HashSet<String>, idle: Duration) -> Result<usize, BlobError> {
        let now = std::time::SystemTime::now();
        let mut removed = 0;
        for f in self.blobs.list()? {
            let old = now.duration_since(f.used).unwrap_or_default() > idle;
            if old && !used.contains(&f.sha256) && self.moving(&f.sha256).is_none() {
                self.blobs.remove(&f.sha256)?;
                self.blobs.unmark_remote(&f.sha256);
                removed += 1;
            }
        }
        // A download left unfinished that long (a read cancelled, content
        // no longer wanted) is dropped; one still wanted starts over.
        for p in self.blobs.parts()? {
            let old = now.duration_since(p.used).unwrap_or_default() > idle;
            if old && self.moving(&p.sha256).is_none() {
                self.blobs.drop_partial(&p.sha256);
                removed += 1;
            }
        }
        Ok(removed)
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A transfer shown in `moving` while it runs.
struct Progress<'a> {
    t: &'a Transfers,
    sha256: String,
}

impl<'a> Progress<'a> {
    fn start(t: &'a Transfers, sha256: &str, way: Way) -> Self {
        lock(&t.moving).insert(sha256.to_owned(), (way, 0));
        Progress {
            t,
            sha256: sha256.to_owned(),
        }
    }
}

impl Drop for Progress<'_> {
    fn drop(&mut self) {
        lock(&self.t.moving).remove(&self.sha256);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn age(path: &std::path::Path, secs: u64) {
        let t = std::time::SystemTime::now() - Duration::from_secs(secs);
        std::fs::File::options()
            .write(true)
            .open(path)
            .unwrap()
            .set_modified(t)
            .unwrap();
    }

    #[test]
    fn the_sweep_removes_idle_unreferenced_content_and_stale_parts() {
        let dir = tempfile::tempdir().unwrap();
        let blobs = BlobDir::open(dir.path()).unwrap();
        let t = Transfers::new(blobs.clone());
        let mut w = blobs.writer(100).unwrap();
        w.write(b"kept").unwrap();
        let (kept, _) = w.finish(None).unwrap();
        let mut w = blobs.writer(100).unwrap();
        w.write(b"gone").unwrap();
        let (gone, _) = w.finish(None).unwrap();
        let (stale, fresh) = ("a".repeat(64), "b".repeat(64));
        blobs.append_partial(&stale, 0, b"half").unwrap();
        blobs.append_partial(&fresh, 0, b"half").unwrap();
        for sha in [&kept, &gone] {
            age(&blobs.path(sha), 7200);
        }
        age(
            &dir.path().join("blobs").join(format!("{stale}.part")),
            7200,
        );
        let used: HashSet<String> = [kept.clone()].into();
        assert_eq!(t.sweep(&used, Duration::from_secs(3600)).unwrap(), 2);
        assert_eq!(blobs.len(&kept), Some(4));
        assert_eq!(blobs.len(&gone), None);
        assert_eq!(blobs.partial_len(&stale), 0);
        assert_eq!(blobs.partial_len(&fresh), 4);
    }
}
