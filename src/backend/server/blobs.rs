//! The reference backend's attachment content: the rules every store
//! keeps ([`BlobBackend`]) and the files beside the redb store
//! ([`FsBlobs`], `data_dir/blobs`), stored once per SHA-256, granted per
//! scope.
//!
//! Why files: content runs to gigabytes and arrives in chunks; appending
//! to a file and renaming it into place once its hash checks out keeps a
//! half-received upload from ever being served. The layout:
//! - `parts/<scope>-<sha256>`: an upload in progress into a scope; its
//!   length is the offset a client resumes from;
//! - `data/<sha256>`: complete content, checked against its name;
//! - `grants/<scope>/<sha256>`: the content was uploaded into that scope.
//!   A reader must read the scope, and an op that references content is
//!   applied only where it is granted, so knowing a hash never gives
//!   access to content: its bytes must have been sent into the scope.
//!
//! Scope names are hex-encoded in paths. The PostgreSQL store keeps its
//! content in the database instead (`pg_blobs.rs`), so that every node
//! serves every upload.

use std::collections::{HashMap, HashSet};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use sha2::{Digest, Sha256};

use crate::domain::attachment::{hex, is_sha256};

use super::store::StoreError;

/// How much of a content a scope holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Held {
    Complete { length: u64 },
    Partial(u64),
}

/// Why a chunk was not taken.
#[derive(Debug)]
pub enum PutError {
    /// The upload is at another offset: resume from it.
    Offset(u64),
    /// The complete content does not hash to its name: dropped.
    HashMismatch { got: String },
    /// The chunk runs past the announced length.
    TooLong { length: u64 },
    /// Over the server's limit for one content.
    TooLarge { limit: u64 },
    /// The file system failed.
    Io(io::Error),
    /// The database failed (the PostgreSQL store).
    Storage(StoreError),
}

impl std::fmt::Display for PutError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PutError::Offset(n) => write!(f, "the upload is at offset {n}"),
            PutError::HashMismatch { got } => write!(
                f,
                "the content hashes to {got}, not to its name: the upload was dropped, send it again"
            ),
            PutError::TooLong { length } => {
                write!(f, "the chunk runs past the content's length {length}")
            }
            PutError::TooLarge { limit } => {
                write!(f, "content larger than this server's limit of {limit} bytes")
            }
            PutError::Io(e) => write!(f, "storage: {e}"),
            PutError::Storage(e) => write!(f, "storage: {e}"),
        }
    }
}

/// Where a server keeps attachment content. Every implementation keeps
/// the same rules: a content is served (`read`, [`Held::Complete`]) only
/// once all of it arrived and hashed to its name, and only in the scopes
/// it was uploaded into.
pub trait BlobBackend: Send + Sync {
    /// How much of `sha256` the scope holds.
    fn held(&self, scope: &str, sha256: &str) -> Result<Held, StoreError>;
    /// Appends a chunk at `offset` of an upload of `length` bytes; once all
    /// of it is here, checks its hash and grants it to the scope.
    fn put(
        &self,
        scope: &str,
        sha256: &str,
        offset: u64,
        length: u64,
        chunk: &[u8],
    ) -> Result<Held, PutError>;
    /// Bytes `start..end` (clamped) of `sha256` as the scope holds it, with
    /// the content's length; `None`: not held.
    fn read(
        &self,
        scope: &str,
        sha256: &str,
        start: u64,
        end: Option<u64>,
    ) -> Result<Option<(Vec<u8>, u64)>, StoreError>;
    /// Removes content no record references (`referenced`) and unfinished
    /// uploads, once older than `retention`; returns how many went.
    fn collect(&self, referenced: &HashSet<String>, retention: Duration)
        -> Result<u64, StoreError>;

    /// Whether the scope holds all of `sha256` (a failed read: no).
    fn has(&self, scope: &str, sha256: &str) -> bool {
        matches!(self.held(scope, sha256), Ok(Held::Complete { .. }))
    }
}

fn files_failed(e: io::Error) -> StoreError {
    StoreError::Failed(format!("blob files: {e}"))
}

impl BlobBackend for FsBlobs {
    fn held(&self, scope: &str, sha256: &str) -> Result<Held, StoreError> {
        Ok(self.held_now(scope, sha256))
    }

    fn put(
        &self,
        scope: &str,
        sha256: &str,
        offset: u64,
        length: u64,
        chunk: &[u8],
    ) -> Result<Held, PutError> {
        self.append(scope, sha256, offset, length, chunk)
    }

    fn read(
        &self,
        scope: &str,
        sha256: &str,
        start: u64,
        end: Option<u64>,
    ) -> Result<Option<(Vec<u8>, u64)>, StoreError> {
        self.read_range(scope, sha256, start, end)
            .map_err(files_failed)
    }

    fn collect(
        &self,
        referenced: &HashSet<String>,
        retention: Duration,
    ) -> Result<u64, StoreError> {
        self.sweep(referenced, retention).map_err(files_failed)
    }
}

/// The blob directory of one server (the redb store's).
pub struct FsBlobs {
    root: PathBuf,
    /// One writer per upload at a time.
    locks: Mutex<HashMap<String, Arc<Mutex<()>>>>,
    limit: u64,
}

fn scope_dir(scope: &str) -> String {
    hex(scope.as_bytes())
}

impl FsBlobs {
    /// Opens (creating) `dir`; `limit` bounds one content's length.
    pub fn open(dir: &Path, limit: u64) -> io::Result<FsBlobs> {
        for sub in ["parts", "data", "grants"] {
            fs::create_dir_all(dir.join(sub))?;
        }
        Ok(FsBlobs {
            root: dir.to_owned(),
            locks: Mutex::new(HashMap::new()),
            limit,
        })
    }

    fn data(&self, sha256: &str) -> PathBuf {
        self.root.join("data").join(sha256)
    }

    fn part(&self, scope: &str, sha256: &str) -> PathBuf {
        self.root
            .join("parts")
            .join(format!("{}-{sha256}", scope_dir(scope)))
    }

    fn grant(&self, scope: &str, sha256: &str) -> PathBuf {
        self.root.join("grants").join(scope_dir(scope)).join(sha256)
    }

    /// How much of `sha256` the scope holds.
    fn held_now(&self, scope: &str, sha256: &str) -> Held {
        debug_assert!(is_sha256(sha256));
        if self.grant(scope, sha256).exists() {
            if let Ok(m) = fs::metadata(self.data(sha256)) {
                return Held::Complete { length: m.len() };
            }
        }
        Held::Partial(fs::metadata(self.part(scope, sha256)).map_or(0, |m| m.len()))
    }

    fn lock(&self, key: String) -> Arc<Mutex<()>> {
        let mut m = self.locks.lock().unwrap_or_else(|p| p.into_inner());
        m.entry(key).or_default().clone()
    }

    /// Appends a chunk at `offset` of an upload of `length` bytes; once all
    /// of it is here, checks its hash and grants it to the scope.
    fn append(
        &self,
        scope: &str,
        sha256: &str,
        offset: u64,
        length: u64,
        chunk: &[u8],
    ) -> Result<Held, PutError> {
        if length > self.limit {
            return Err(PutError::TooLarge { limit: self.limit });
        }
        let gate = self.lock(format!("{scope}\n{sha256}"));
        let _one = gate.lock().unwrap_or_else(|p| p.into_inner());
        if let Held::Complete { length } = self.held_now(scope, sha256) {
            return Ok(Held::Complete { length });
        }
        let part = self.part(scope, sha256);
        let mut f = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&part)
            .map_err(PutError::Io)?;
        let mut at = f.metadata().map_err(PutError::Io)?.len();
        if at > length {
            // Not this content's (a client that announced another length):
            // dropped, the upload starts over.
            f.set_len(0).map_err(PutError::Io)?;
            at = 0;
        }
        if at != offset {
            return Err(PutError::Offset(at));
        }
        if offset + chunk.len() as u64 > length {
            return Err(PutError::TooLong { length });
        }
        f.seek(SeekFrom::Start(offset)).map_err(PutError::Io)?;
        f.write_all(chunk).map_err(PutError::Io)?;
        f.sync_data().map_err(PutError::Io)?;
        let now = offset + chunk.len() as u64;
        if now < length {
            return Ok(Held::Partial(now));
        }
        drop(f);
        self.complete(scope, sha256, &part, length)
    }

    fn complete(
        &self,
        scope: &str,
        sha256: &str,
        part: &Path,
        length: u64,
    ) -> Result<Held, PutError> {
        let got = hash_file(part).map_err(PutError::Io)?;
        if got != sha256 {
            let _ = fs::remove_file(part);
            return Err(PutError::HashMismatch { got });
        }
        let data = self.data(sha256);
        if data.exists() {
            let _ = fs::remove_file(part);
            // Uploaded again (into another scope): its retention starts over.
            if let Ok(f) = File::options().write(true).open(&data) {
                let _ = f.set_modified(SystemTime::now());
            }
        } else {
            fs::rename(part, &data).map_err(PutError::Io)?;
        }
        let grant = self.grant(scope, sha256);
        if let Some(dir) = grant.parent() {
            fs::create_dir_all(dir).map_err(PutError::Io)?;
        }
        File::create(&grant).map_err(PutError::Io)?;
        if let Ok(d) = File::open(self.root.join("data")) {
            let _ = d.sync_all();
        }
        Ok(Held::Complete { length })
    }

    /// Bytes `start..end` (clamped to the content) of `sha256` as the
    /// scope holds it, with the content's length; `None`: not held.
    fn read_range(
        &self,
        scope: &str,
        sha256: &str,
        start: u64,
        end: Option<u64>,
    ) -> io::Result<Option<(Vec<u8>, u64)>> {
        let Held::Complete { length } = self.held_now(scope, sha256) else {
            return Ok(None);
        };
        let end = end.map_or(length, |e| e.min(length));
        let mut f = File::open(self.data(sha256))?;
        f.seek(SeekFrom::Start(start.min(length)))?;
        let mut buf = Vec::new();
        f.take(end.saturating_sub(start)).read_to_end(&mut buf)?;
        Ok(Some((buf, length)))
    }

    /// Removes content no record references (`referenced` lists what
    /// records do), and uploads left unfinished, once older than
    /// `retention`: an upload for an op not sent yet is kept that long.
    fn sweep(&self, referenced: &HashSet<String>, retention: Duration) -> io::Result<u64> {
        let old = |p: &Path| {
            fs::metadata(p)
                .and_then(|m| m.modified())
                .map(|t| SystemTime::now().duration_since(t).unwrap_or_default() > retention)
                .unwrap_or(false)
        };
        let mut removed = 0;
        for e in fs::read_dir(self.root.join("parts"))?.flatten() {
            if old(&e.path()) && fs::remove_file(e.path()).is_ok() {
                removed += 1;
            }
        }
        for e in fs::read_dir(self.root.join("data"))?.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if referenced.contains(&name) || !old(&e.path()) {
                continue;
            }
            if fs::remove_file(e.path()).is_ok() {
                removed += 1;
            }
            if let Ok(scopes) = fs::read_dir(self.root.join("grants")) {
                for s in scopes.flatten() {
                    let _ = fs::remove_file(s.path().join(&name));
                }
            }
        }
        Ok(removed)
    }
}

fn hash_file(path: &Path) -> io::Result<String> {
    let mut f = File::open(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex(&h.finalize()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const HELLO: &str = "b94d27b9934d3e08a52e52d7da7dabfac484efe37a5380ee9088f7ace2efcde9";

    #[test]
    fn an_upload_resumes_and_is_granted_per_scope() {
        let dir = tempfile::tempdir().unwrap();
        let b = FsBlobs::open(dir.path(), 1 << 20).unwrap();
        assert_eq!(b.held("a", HELLO).unwrap(), Held::Partial(0));
        assert_eq!(
            b.put("a", HELLO, 0, 11, b"hello").unwrap(),
            Held::Partial(5)
        );
        assert!(matches!(
            b.put("a", HELLO, 0, 11, b"hello"),
            Err(PutError::Offset(5))
        ));
        assert_eq!(b.held("a", HELLO).unwrap(), Held::Partial(5));
        assert_eq!(
            b.put("a", HELLO, 5, 11, b" world").unwrap(),
            Held::Complete { length: 11 }
        );
        assert!(b.has("a", HELLO));
        // Knowing the hash is not enough in another scope.
        assert_eq!(b.held("b", HELLO).unwrap(), Held::Partial(0));
        assert_eq!(b.read("b", HELLO, 0, None).unwrap(), None);
        let (bytes, len) = b.read("a", HELLO, 6, Some(11)).unwrap().unwrap();
        assert_eq!((bytes.as_slice(), len), (&b"world"[..], 11));
    }

    #[test]
    fn content_that_does_not_match_its_name_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let b = FsBlobs::open(dir.path(), 1 << 20).unwrap();
        let e = b.put("a", HELLO, 0, 11, b"hello there").unwrap_err();
        assert!(matches!(e, PutError::HashMismatch { .. }), "{e}");
        assert_eq!(b.held("a", HELLO).unwrap(), Held::Partial(0));
        assert!(matches!(
            b.put("a", HELLO, 0, 3, b"hello"),
            Err(PutError::TooLong { length: 3 })
        ));
    }
}
