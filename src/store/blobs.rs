//! The attachment bytes on this device: content-addressed files under
//! `data_dir/blobs`, one per SHA-256, so the same file attached twice is
//! stored once.
//!
//! Why a directory and not redb: attachments run to gigabytes, are written
//! in chunks as they stream in and read in ranges, and the store's pages
//! would copy each chunk on every commit. A file is complete only under
//! its hash's name: every write goes to a temporary file in `tmp/` (an
//! attach) or to `<hash>.part` (a download, resumable by its length),
//! is synced, and is renamed into place once its hash checks out. So
//! nothing half-written is ever read as complete, whatever crash or full
//! disk interrupts it. Which record references which file lives in the
//! documents (`_attachments`); the least recently read copies of remote
//! files are evicted by [`BlobDir::evict`], and a file's modification
//! time is its last read.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use sha2::{Digest, Sha256};

use crate::domain::attachment::{hex, is_sha256};

/// Why a blob could not be written or read.
#[derive(Debug)]
pub enum BlobError {
    /// The file system failed (a full disk is [`BlobError::NoSpace`]).
    Io { path: PathBuf, source: io::Error },
    /// The disk is full: nothing was kept.
    NoSpace { path: PathBuf },
    /// The bytes do not hash to what was expected: nothing was kept.
    HashMismatch { expected: String, got: String },
    /// More bytes than announced, or fewer.
    WrongLength { expected: u64, got: u64 },
    /// Over `max_attachment_bytes`.
    TooLarge { limit: u64 },
    /// No complete file for this hash here.
    Missing { sha256: String },
}

impl std::fmt::Display for BlobError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BlobError::Io { path, source } => write!(f, "{}: {source}", path.display()),
            BlobError::NoSpace { path } => write!(
                f,
                "no space left on the device holding {}: free space and try again (nothing half-written was kept)",
                path.display()
            ),
            BlobError::HashMismatch { expected, got } => write!(
                f,
                "the bytes hash to sha256 {got}, not the expected {expected}: nothing was kept"
            ),
            BlobError::WrongLength { expected, got } => {
                write!(f, "{got} bytes where {expected} were announced")
            }
            BlobError::TooLarge { limit } => write!(
                f,
                "the attachment is larger than {limit} bytes (sync.max_attachment_bytes)"
            ),
            BlobError::Missing { sha256 } => {
                write!(f, "no complete local copy of attachment content {sha256}")
            }
        }
    }
}

impl std::error::Error for BlobError {}

fn io_err(path: &Path, source: io::Error) -> BlobError {
    if source.raw_os_error() == Some(libc::ENOSPC) {
        return BlobError::NoSpace {
            path: path.to_owned(),
        };
    }
    BlobError::Io {
        path: path.to_owned(),
        source,
    }
}

/// The blob directory. Cheap to clone (a path).
#[derive(Debug, Clone)]
pub struct BlobDir {
    root: PathBuf,
}

/// A local file as [`BlobDir::list`] reports it.
#[derive(Debug, Clone)]
pub struct BlobFile {
    pub sha256: String,
    pub len: u64,
    /// Last read (or written).
    pub used: SystemTime,
}

static TMP_SEQ: AtomicU64 = AtomicU64::new(0);

impl BlobDir {
    /// `data_dir/blobs`, created with its `tmp/` if missing. Leftover
    /// temporary files (an attach cut short by a crash) are removed.
    pub fn open(data_dir: &Path) -> Result<BlobDir, BlobError> {
        let root = data_dir.join("blobs");
        let tmp = root.join("tmp");
        fs::create_dir_all(&tmp).map_err(|e| io_err(&tmp, e))?;
        if let Ok(entries) = fs::read_dir(&tmp) {
            for e in entries.flatten() {
                let _ = fs::remove_file(e.path());
            }
        }
        Ok(BlobDir { root })
    }

    /// The blob directory of `data_dir`, as it is: nothing is created or
    /// removed (`syncd check` reads a store it must not change).
    pub fn at(data_dir: &Path) -> BlobDir {
        BlobDir {
            root: data_dir.join("blobs"),
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where the complete file of `sha256` is (or would be).
    pub fn path(&self, sha256: &str) -> PathBuf {
        debug_assert!(is_sha256(sha256));
        self.root.join(sha256)
    }

    fn part_path(&self, sha256: &str) -> PathBuf {
        self.root.join(format!("{sha256}.part"))
    }

    /// The length of the complete local file of `sha256`, if there is one.
    pub fn len(&self, sha256: &str) -> Option<u64> {
        fs::metadata(self.path(sha256)).ok().map(|m| m.len())
    }

    /// Starts writing a new blob whose hash is not known yet (an attach).
    pub fn writer(&self, limit: u64) -> Result<BlobWriter, BlobError> {
        let n = TMP_SEQ.fetch_add(1, Ordering::Relaxed);
        let path = self
            .root
            .join("tmp")
            .join(format!("{}-{n}", std::process::id()));
        let file = File::create(&path).map_err(|e| io_err(&path, e))?;
        Ok(BlobWriter {
            dir: self.clone(),
            path,
            file: Some(file),
            hasher: Sha256::new(),
            len: 0,
            limit,
        })
    }

    /// Reads up to `max` bytes of `sha256` from `offset`, and marks the
    /// file as just used (for eviction).
    pub fn read_at(&self, sha256: &str, offset: u64, max: usize) -> Result<Vec<u8>, BlobError> {
        let path = self.path(sha256);
        let mut f = File::open(&path).map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => BlobError::Missing {
                sha256: sha256.to_owned(),
            },
            _ => io_err(&path, e),
        })?;
        if offset == 0 {
            let _ = f.set_modified(SystemTime::now());
        }
        f.seek(SeekFrom::Start(offset))
            .map_err(|e| io_err(&path, e))?;
        let mut buf = Vec::with_capacity(max.min(1 << 20));
        f.take(max as u64)
            .read_to_end(&mut buf)
            .map_err(|e| io_err(&path, e))?;
        Ok(buf)
    }

    /// How many bytes of a download of `sha256` are already here (its
    /// `.part` file), to resume from.
    pub fn partial_len(&self, sha256: &str) -> u64 {
        fs::metadata(self.part_path(sha256)).map_or(0, |m| m.len())
    }

    /// Appends `bytes` at `offset` of the download of `sha256`; a part file
    /// longer than `offset` is cut back, one shorter is an error (the
    /// download resumes from [`BlobDir::partial_len`]).
    pub fn append_partial(&self, sha256: &str, offset: u64, bytes: &[u8]) -> Result<(), BlobError> {
        let path = self.part_path(sha256);
        let mut f = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| io_err(&path, e))?;
        let held = f.metadata().map_err(|e| io_err(&path, e))?.len();
        if held < offset {
            // Bytes between would be missing: the caller resumes from
            // `partial_len` instead.
            return Err(BlobError::WrongLength {
                expected: offset,
                got: held,
            });
        }
        if held > offset {
            f.set_len(offset).map_err(|e| io_err(&path, e))?;
        }
        f.seek(SeekFrom::Start(offset))
            .map_err(|e| io_err(&path, e))?;
        f.write_all(bytes).map_err(|e| io_err(&path, e))?;
        f.sync_data().map_err(|e| io_err(&path, e))
    }

    /// Completes a download: the part file is hashed, and renamed into
    /// place if it is `sha256`; otherwise it is removed.
    pub fn finish_partial(&self, sha256: &str, length: u64) -> Result<(), BlobError> {
        let path = self.part_path(sha256);
        let got = hash_file(&path)?;
        let held = fs::metadata(&path).map_err(|e| io_err(&path, e))?.len();
        if got != sha256 || held != length {
            let _ = fs::remove_file(&path);
            if held != length {
                return Err(BlobError::WrongLength {
                    expected: length,
                    got: held,
                });
            }
            return Err(BlobError::HashMismatch {
                expected: sha256.to_owned(),
                got,
            });
        }
        self.install(&path, sha256)
    }

    /// Notes that the backend holds `sha256` (uploaded and confirmed, or
    /// downloaded from it): only such copies may be evicted. A marker
    /// lost in a crash only keeps a copy longer.
    pub fn mark_remote(&self, sha256: &str) {
        let path = self.root.join(format!("{sha256}.remote"));
        if !path.exists() {
            let _ = File::create(path);
        }
    }

    /// Forgets that the backend holds `sha256` (the content is gone here
    /// for good).
    pub fn unmark_remote(&self, sha256: &str) {
        let _ = fs::remove_file(self.root.join(format!("{sha256}.remote")));
    }

    /// Whether the backend is known to hold `sha256`.
    pub fn is_remote(&self, sha256: &str) -> bool {
        self.root.join(format!("{sha256}.remote")).exists()
    }

    /// Drops the part file of `sha256` (a download that went wrong).
    pub fn drop_partial(&self, sha256: &str) {
        let _ = fs::remove_file(self.part_path(sha256));
    }

    fn install(&self, from: &Path, sha256: &str) -> Result<(), BlobError> {
        let to = self.path(sha256);
        fs::rename(from, &to).map_err(|e| io_err(&to, e))?;
        if let Ok(d) = File::open(&self.root) {
            let _ = d.sync_all();
        }
        Ok(())
    }

    /// Removes the local copy of `sha256` (evicted, or no longer
    /// referenced).
    pub fn remove(&self, sha256: &str) -> Result<(), BlobError> {
        let path = self.path(sha256);
        match fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_err(&path, e)),
        }
    }

    /// Every complete local file.
    pub fn list(&self) -> Result<Vec<BlobFile>, BlobError> {
        self.files(|n| is_sha256(n).then_some(n))
    }

    /// Every download in progress (its part file; `len` is what it holds).
    pub fn parts(&self) -> Result<Vec<BlobFile>, BlobError> {
        self.files(|n| n.strip_suffix(".part").filter(|s| is_sha256(s)))
    }

    /// Files of the directory whose names `sha_of` maps to a hash.
    fn files(&self, sha_of: impl Fn(&str) -> Option<&str>) -> Result<Vec<BlobFile>, BlobError> {
        let entries = fs::read_dir(&self.root).map_err(|e| io_err(&self.root, e))?;
        let mut out = Vec::new();
        for e in entries.flatten() {
            let name = e.file_name();
            let Some(name) = name.to_str().and_then(&sha_of) else {
                continue;
            };
            let Ok(meta) = e.metadata() else { continue };
            out.push(BlobFile {
                sha256: name.to_owned(),
                len: meta.len(),
                used: meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
            });
        }
        Ok(out)
    }

    /// Removes the least recently used of `candidates` until the files
    /// among them hold at most `budget` bytes; returns what it removed.
    pub fn evict(&self, mut candidates: Vec<BlobFile>, budget: u64) -> Vec<String> {
        let mut total: u64 = candidates.iter().map(|f| f.len).sum();
        candidates.sort_by_key(|f| f.used);
        let mut removed = Vec::new();
        for f in candidates {
            if total <= budget {
                break;
            }
            if self.remove(&f.sha256).is_ok() {
                total = total.saturating_sub(f.len);
                removed.push(f.sha256);
            }
        }
        removed
    }
}

/// The SHA-256 of a file, in hex.
pub fn hash_file(path: &Path) -> Result<String, BlobError> {
    let mut f = File::open(path).map_err(|e| io_err(path, e))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = f.read(&mut buf).map_err(|e| io_err(path, e))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex(&h.finalize()))
}

/// A blob being written from a stream (an attach). Dropped unfinished,
/// its temporary file is removed.
pub struct BlobWriter {
    dir: BlobDir,
    path: PathBuf,
    file: Option<File>,
    hasher: Sha256,
    len: u64,
    limit: u64,
}

impl BlobWriter {
    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn write(&mut self, bytes: &[u8]) -> Result<(), BlobError> {
        if self.len + bytes.len() as u64 > self.limit {
            return Err(BlobError::TooLarge { limit: self.limit });
        }
        let Some(f) = self.file.as_mut() else {
            return Err(BlobError::Missing {
                sha256: String::new(),
            });
        };
        f.write_all(bytes).map_err(|e| io_err(&self.path, e))?;
        self.hasher.update(bytes);
        self.len += bytes.len() as u64;
        Ok(())
    }

    /// Syncs the file and moves it under its hash (or drops it if that
    /// content is here already); returns the hash and the length.
    /// `expected`: the hash the app announced, checked.
    pub fn finish(mut self, expected: Option<&str>) -> Result<(String, u64), BlobError> {
        let sha = hex(&std::mem::take(&mut self.hasher).finalize());
        if let Some(e) = expected.filter(|e| *e != sha) {
            return Err(BlobError::HashMismatch {
                expected: e.to_owned(),
                got: sha,
            });
        }
        if let Some(f) = self.file.take() {
            f.sync_all().map_err(|e| io_err(&self.path, e))?;
        }
        if self.dir.len(&sha) == Some(self.len) {
            let _ = fs::remove_file(&self.path);
            // Used again: not idle (the sweep keeps it).
            if let Ok(f) = File::options().write(true).open(self.dir.path(&sha)) {
                let _ = f.set_modified(SystemTime::now());
            }
        } else {
            self.dir.install(&self.path, &sha)?;
        }
        Ok((sha, self.len))
    }
}

impl Drop for BlobWriter {
    fn drop(&mut self) {
        // Unfinished (or already moved: then the path is gone).
        let _ = fs::remove_file(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_blob_is_stored_once_under_its_hash() {
        let dir = tempfile::tempdir().unwrap();
        let blobs = BlobDir::open(dir.path()).unwrap();
        let mut w = blobs.writer(100).unwrap();
        w.write(b"hello ").unwrap();
        w.write(b"world").unwrap();
        let (sha, len) = w.finish(None).unwrap();
        assert_eq!(
            sha,
            "b94d27b9934d3e08a52e52d7da7dabfac484efe37a5380ee9088f7ace2efcde9"
        );
        assert_eq!(len, 11);
        assert_eq!(blobs.read_at(&sha, 6, 100).unwrap(), b"world");
        let mut again = blobs.writer(100).unwrap();
        again.write(b"hello world").unwrap();
        assert_eq!(again.finish(Some(&sha)).unwrap().0, sha);
        assert_eq!(blobs.list().unwrap().len(), 1);
        assert_eq!(fs::read_dir(blobs.root().join("tmp")).unwrap().count(), 0);
    }

    #[test]
    fn a_wrong_hash_or_an_unfinished_write_keeps_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let blobs = BlobDir::open(dir.path()).unwrap();
        let mut w = blobs.writer(100).unwrap();
        w.write(b"abc").unwrap();
        let e = w.finish(Some(&"0".repeat(64))).unwrap_err();
        assert!(matches!(e, BlobError::HashMismatch { .. }), "{e}");
        let mut w = blobs.writer(4).unwrap();
        assert!(matches!(
            w.write(b"too long"),
            Err(BlobError::TooLarge { limit: 4 })
        ));
        drop(w);
        assert!(blobs.list().unwrap().is_empty());
        assert_eq!(fs::read_dir(blobs.root().join("tmp")).unwrap().count(), 0);
    }

    #[test]
    fn downloads_resume_and_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let blobs = BlobDir::open(dir.path()).unwrap();
        let sha = "b94d27b9934d3e08a52e52d7da7dabfac484efe37a5380ee9088f7ace2efcde9";
        blobs.append_partial(sha, 0, b"hello").unwrap();
        assert_eq!(blobs.partial_len(sha), 5);
        blobs.append_partial(sha, 5, b" world").unwrap();
        blobs.finish_partial(sha, 11).unwrap();
        assert_eq!(blobs.len(sha), Some(11));
        let other = "0".repeat(64);
        blobs.append_partial(&other, 0, b"not it").unwrap();
        assert!(matches!(
            blobs.finish_partial(&other, 6),
            Err(BlobError::HashMismatch { .. })
        ));
        assert_eq!(blobs.partial_len(&other), 0);
        assert_eq!(blobs.len(&other), None);
    }

    #[test]
    fn eviction_removes_the_least_recently_used_first() {
        let dir = tempfile::tempdir().unwrap();
        let blobs = BlobDir::open(dir.path()).unwrap();
        let mut shas = Vec::new();
        for (i, body) in [b"one", b"two", b"six"].iter().enumerate() {
            let mut w = blobs.writer(10).unwrap();
            w.write(*body).unwrap();
            let (sha, _) = w.finish(None).unwrap();
            let t = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1000 + i as u64);
            File::options()
                .write(true)
                .open(blobs.path(&sha))
                .unwrap()
                .set_modified(t)
                .unwrap();
            shas.push(sha);
        }
        let removed = blobs.evict(blobs.list().unwrap(), 6);
        assert_eq!(removed, vec![shas[0].clone()]);
        assert_eq!(blobs.list().unwrap().len(), 2);
    }
}
