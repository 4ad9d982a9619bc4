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
//!
//! With encryption at rest ([`BlobDir::sealed`]) the files hold sealed
//! bytes in the layout of [`crate::store::crypt::blob_seal`]; every method
//! here still speaks of plaintext lengths and offsets, and files keep the
//! plaintext's hash as their name. [`BlobDir::reseal_all`] converts a
//! directory between plain and sealed, or from one key to another.

use std::collections::{HashMap, HashSet};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use sha2::{Digest, Sha256};

use crate::domain::attachment::{hex, is_sha256};
use crate::domain::seal_error::SealError;
use crate::store::crypt::blob_seal::{
    self, BlobSeal, FileSealer, Header, OpenError, SealState, FRAME_HEAD, HEADER, MAX_FRAME,
    PART_HEADER, TAG,
};

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
    /// A sealed file (or download record) fails authentication, or a
    /// file's content is not what its name says: changed on disk, or
    /// renamed from another hash. See [`BlobError::seal_error`].
    Tampered { path: PathBuf },
    /// A file is not in a form this directory reads: sealed with a key
    /// it was not given, sealed while encryption is off, or plain while
    /// it is on. `detail` says which and what to do.
    Sealed { path: PathBuf, detail: String },
}

impl BlobError {
    /// The encryption-at-rest error this is, if any
    /// ([`SealError::Tampered`] for a file that fails authentication).
    pub fn seal_error(&self) -> Option<SealError> {
        match self {
            BlobError::Tampered { path } => Some(SealError::Tampered {
                what: format!("attachment file {}", path.display()),
            }),
            _ => None,
        }
    }
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
            BlobError::Tampered { path } => write!(
                f,
                "{}",
                SealError::Tampered {
                    what: format!("attachment file {}", path.display()),
                }
            ),
            BlobError::Sealed { path, detail } => {
                write!(f, "attachment file {} {detail}", path.display())
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

fn open_err(path: &Path, e: OpenError) -> BlobError {
    match e {
        OpenError::Io(e) => io_err(path, e),
        OpenError::Tampered => BlobError::Tampered {
            path: path.to_owned(),
        },
    }
}

/// The blob directory. Cheap to clone (a path, the seal and a shared
/// memo).
#[derive(Debug, Clone)]
pub struct BlobDir {
    root: PathBuf,
    seal: Option<Arc<BlobSeal>>,
    memo: Arc<Mutex<Memo>>,
}

/// What this process learnt about files, so it is not learnt again.
#[derive(Debug, Default)]
struct Memo {
    /// Plain files that start like sealed ones (content that begins with
    /// the magic), by name and size: checked by their hash once.
    plain: HashSet<(String, u64)>,
    /// Sealed part files, by hash: where their whole records end.
    parts: HashMap<String, PartState>,
}

/// A sealed part file as scanned: valid while its size is `size`.
#[derive(Debug, Clone, Copy)]
struct PartState {
    size: u64,
    /// The end of its whole records (0: no valid header, start over).
    end: u64,
    /// Plaintext bytes in those records.
    plain: u64,
}

/// How a complete file is stored.
enum Form<'a> {
    Plain,
    Sealed(&'a FileSealer, Header),
}

/// A local file as [`BlobDir::list`] reports it.
#[derive(Debug, Clone)]
pub struct BlobFile {
    pub sha256: String,
    /// Plaintext bytes.
    pub len: u64,
    /// Last read (or written).
    pub used: SystemTime,
}

static TMP_SEQ: AtomicU64 = AtomicU64::new(0);

/// Plaintext read per step when a whole file is read.
const STEP: usize = 1 << 20;

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
        Ok(BlobDir::at(data_dir))
    }

    /// The blob directory of `data_dir`, as it is: nothing is created or
    /// removed (`syncd check` reads a store it must not change).
    pub fn at(data_dir: &Path) -> BlobDir {
        BlobDir {
            root: data_dir.join("blobs"),
            seal: None,
            memo: Arc::default(),
        }
    }

    /// The same directory with encryption at rest: new files are sealed
    /// with `seal.current`, reads accept what `seal` allows.
    pub fn sealed(self, seal: Arc<BlobSeal>) -> BlobDir {
        BlobDir {
            root: self.root,
            seal: Some(seal),
            memo: Arc::default(),
        }
    }

    /// The seal (`None`: plain files).
    pub fn seal(&self) -> Option<&BlobSeal> {
        self.seal.as_deref()
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

    fn tmp_path(&self) -> PathBuf {
        let n = TMP_SEQ.fetch_add(1, Ordering::Relaxed);
        self.root
            .join("tmp")
            .join(format!("{}-{n}", std::process::id()))
    }

    fn memo(&self) -> std::sync::MutexGuard<'_, Memo> {
        self.memo.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether plain (unsealed) files are read.
    fn plain_ok(&self) -> bool {
        self.seal.as_ref().is_none_or(|s| s.plain_ok)
    }

    /// The plaintext length of the complete file at `path` of `size`
    /// bytes. Sealed without plain files allowed, it follows from the
    /// size alone; during a conversion the header is looked at.
    fn content_len(&self, path: &Path, size: u64) -> u64 {
        let sealed_len = || blob_seal::plain_len(size).unwrap_or(size);
        match &self.seal {
            None => size,
            Some(s) if !s.plain_ok => sealed_len(),
            Some(_) => {
                let mut magic = [0u8; 8];
                let sealed = File::open(path)
                    .and_then(|f| f.read_exact_at(&mut magic, 0))
                    .is_ok()
                    && blob_seal::has_magic(&magic);
                if sealed {
                    sealed_len()
                } else {
                    size
                }
            }
        }
    }

    /// The plaintext length of the complete local file of `sha256`, if
    /// there is one.
    pub fn len(&self, sha256: &str) -> Option<u64> {
        let path = self.path(sha256);
        let size = fs::metadata(&path).ok()?.len();
        Some(self.content_len(&path, size))
    }

    fn open_file(&self, sha256: &str) -> Result<(PathBuf, File, u64), BlobError> {
        let path = self.path(sha256);
        let f = File::open(&path).map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => BlobError::Missing {
                sha256: sha256.to_owned(),
            },
            _ => io_err(&path, e),
        })?;
        let size = f.metadata().map_err(|e| io_err(&path, e))?.len();
        Ok((path, f, size))
    }

    /// How the complete file `f` (at `path`, `size` bytes, named
    /// `sha256`) is stored, refusing what this directory must not read;
    /// a sealed file's name tag is checked.
    fn form(&self, sha256: &str, path: &Path, f: &File, size: u64) -> Result<Form<'_>, BlobError> {
        let mut head = [0u8; HEADER];
        let n = (size as usize).min(HEADER);
        f.read_exact_at(&mut head[..n], 0)
            .map_err(|e| io_err(path, e))?;
        if !blob_seal::has_magic(&head[..n]) {
            if self.plain_ok() {
                return Ok(Form::Plain);
            }
            return Err(BlobError::Sealed {
                path: path.to_owned(),
                detail: "is not encrypted, but [store] encryption is \"on\": stop syncd and run `syncd store encrypt` to convert the store, or set encryption = \"off\"".into(),
            });
        }
        let header = Header::parse(&head[..n]).filter(|_| blob_seal::plain_len(size).is_some());
        if let (Some(h), Some(seal)) = (header, &self.seal) {
            if let Some(s) = seal.sealer(h.key_id()) {
                s.check_name(&h, sha256).map_err(|e| open_err(path, e))?;
                return Ok(Form::Sealed(s, h));
            }
        }
        // Starts like a sealed file but is none this directory can open:
        // plain content that happens to begin with the magic is told
        // apart by its hash.
        if self.plain_ok() && self.hashes_to(sha256, path, f, size)? {
            return Ok(Form::Plain);
        }
        Err(match (header, &self.seal) {
            (None, _) => BlobError::Tampered {
                path: path.to_owned(),
            },
            (Some(h), None) => BlobError::Sealed {
                path: path.to_owned(),
                detail: format!(
                    "is encrypted (key {}) but [store] encryption is \"off\": set encryption = \"on\" with the key it was encrypted with",
                    h.key_id()
                ),
            },
            (Some(h), Some(seal)) => BlobError::Sealed {
                path: path.to_owned(),
                detail: format!(
                    "is encrypted with key {}, but the store's {}: nothing was read. Give the key the store was encrypted with ([store] key_file or key_credential)",
                    h.key_id(),
                    seal.describe()
                ),
            },
        })
    }

    /// Whether the plain file `f` hashes to `sha256` (remembered).
    fn hashes_to(&self, sha256: &str, path: &Path, f: &File, size: u64) -> Result<bool, BlobError> {
        let k = (sha256.to_owned(), size);
        if self.memo().plain.contains(&k) {
            return Ok(true);
        }
        let mut h = Sha256::new();
        let mut buf = Vec::new();
        let mut offset = 0;
        while offset < size {
            buf.clear();
            read_plain_range(f, size, offset, STEP, &mut buf).map_err(|e| io_err(path, e))?;
            if buf.is_empty() {
                break;
            }
            h.update(&buf);
            offset += buf.len() as u64;
        }
        let ok = hex(&h.finalize()) == sha256;
        if ok {
            self.memo().plain.insert(k);
        }
        Ok(ok)
    }

    /// Appends plaintext `[offset, offset + max)` of `f` (clamped) to
    /// `out`.
    #[allow(clippy::too_many_arguments)]
    fn read_plain(
        &self,
        form: &Form<'_>,
        path: &Path,
        f: &File,
        size: u64,
        offset: u64,
        max: usize,
        out: &mut Vec<u8>,
        scratch: &mut Vec<u8>,
    ) -> Result<(), BlobError> {
        match form {
            Form::Plain => read_plain_range(f, size, offset, max, out).map_err(|e| io_err(path, e)),
            Form::Sealed(s, h) => blob_seal::read_range(s, h, f, size, offset, max, out, scratch)
                .map_err(|e| open_err(path, e)),
        }
    }

    /// Starts writing a new blob whose hash is not known yet (an attach).
    pub fn writer(&self, limit: u64) -> Result<BlobWriter, BlobError> {
        let path = self.tmp_path();
        let mut file = File::create(&path).map_err(|e| io_err(&path, e))?;
        let state = match &self.seal {
            Some(seal) => match SealState::start(&seal.current, &mut file) {
                Ok(s) => Some(s),
                Err(e) => {
                    let _ = fs::remove_file(&path);
                    return Err(io_err(&path, e));
                }
            },
            None => None,
        };
        Ok(BlobWriter {
            dir: self.clone(),
            path,
            file: Some(file),
            state,
            hasher: Sha256::new(),
            len: 0,
            limit,
        })
    }

    /// Reads up to `max` bytes of `sha256` from `offset`, and marks the
    /// file as just used (for eviction).
    pub fn read_at(&self, sha256: &str, offset: u64, max: usize) -> Result<Vec<u8>, BlobError> {
        let (path, f, size) = self.open_file(sha256)?;
        if offset == 0 {
            let _ = f.set_modified(SystemTime::now());
        }
        let form = self.form(sha256, &path, &f, size)?;
        let mut out = Vec::new();
        self.read_plain(
            &form,
            &path,
            &f,
            size,
            offset,
            max,
            &mut out,
            &mut Vec::new(),
        )?;
        Ok(out)
    }

    /// The SHA-256 of the plaintext of the complete file of `sha256`, in
    /// hex (sealed files are authenticated on the way).
    pub fn hash(&self, sha256: &str) -> Result<String, BlobError> {
        let (path, f, size) = self.open_file(sha256)?;
        let form = self.form(sha256, &path, &f, size)?;
        let mut h = Sha256::new();
        self.each_plain(&form, &path, &f, size, |buf| {
            h.update(buf);
            Ok(())
        })?;
        Ok(hex(&h.finalize()))
    }

    /// Runs `visit` on the plaintext of a file, [`STEP`] bytes at a time,
    /// in order.
    fn each_plain(
        &self,
        form: &Form<'_>,
        path: &Path,
        f: &File,
        size: u64,
        mut visit: impl FnMut(&[u8]) -> Result<(), BlobError>,
    ) -> Result<(), BlobError> {
        let (mut buf, mut scratch) = (Vec::new(), Vec::new());
        let mut offset = 0;
        loop {
            buf.clear();
            self.read_plain(form, path, f, size, offset, STEP, &mut buf, &mut scratch)?;
            if buf.is_empty() {
                return Ok(());
            }
            visit(&buf)?;
            offset += buf.len() as u64;
        }
    }

    /// How many bytes of a download of `sha256` are already here (its
    /// `.part` file), to resume from.
    pub fn partial_len(&self, sha256: &str) -> u64 {
        let path = self.part_path(sha256);
        let Some(seal) = &self.seal else {
            return fs::metadata(path).map_or(0, |m| m.len());
        };
        let Ok(f) = File::open(&path) else { return 0 };
        let Ok(size) = f.metadata().map(|m| m.len()) else {
            return 0;
        };
        self.part_state(seal, sha256, &path, &f, size)
            .map_or(0, |st| st.plain)
    }

    /// Appends `bytes` at `offset` of the download of `sha256`; a part file
    /// longer than `offset` is cut back, one shorter is an error (the
    /// download resumes from [`BlobDir::partial_len`]).
    pub fn append_partial(&self, sha256: &str, offset: u64, bytes: &[u8]) -> Result<(), BlobError> {
        let path = self.part_path(sha256);
        let mut opts = OpenOptions::new();
        opts.create(true).truncate(false).write(true);
        if let Some(seal) = &self.seal {
            let f = opts.read(true).open(&path).map_err(|e| io_err(&path, e))?;
            return self.append_sealed(seal, sha256, &path, &f, offset, bytes);
        }
        let f = opts.open(&path).map_err(|e| io_err(&path, e))?;
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
        f.write_all_at(bytes, offset)
            .map_err(|e| io_err(&path, e))?;
        f.sync_data().map_err(|e| io_err(&path, e))
    }

    /// The state of the sealed part file `f` of `size` bytes (scanned
    /// once, then remembered while the size is the same).
    fn part_state(
        &self,
        seal: &BlobSeal,
        sha256: &str,
        path: &Path,
        f: &File,
        size: u64,
    ) -> Result<PartState, BlobError> {
        if let Some(st) = self.memo().parts.get(sha256).filter(|st| st.size == size) {
            return Ok(*st);
        }
        let st = scan_part(&seal.current, sha256, f, size).map_err(|e| io_err(path, e))?;
        self.memo().parts.insert(sha256.to_owned(), st);
        Ok(st)
    }

    fn append_sealed(
        &self,
        seal: &BlobSeal,
        sha256: &str,
        path: &Path,
        f: &File,
        offset: u64,
        bytes: &[u8],
    ) -> Result<(), BlobError> {
        let io = |e| io_err(path, e);
        let mut size = f.metadata().map_err(io)?.len();
        let mut st = self.part_state(seal, sha256, path, f, size)?;
        if st.end == 0 {
            // New, or not a part file of this key: start over.
            f.set_len(0).map_err(io)?;
            f.write_all_at(&seal.current.part_header(), 0).map_err(io)?;
            size = PART_HEADER as u64;
            st = PartState {
                size,
                end: size,
                plain: 0,
            };
        }
        if offset > st.plain {
            return Err(BlobError::WrongLength {
                expected: offset,
                got: st.plain,
            });
        }
        let (end, mut carry) = if offset < st.plain {
            cut_part(&seal.current, sha256, f, offset).map_err(|e| open_err(path, e))?
        } else {
            (st.end, Vec::new())
        };
        if end != size {
            f.set_len(end).map_err(io)?;
        }
        let frames = bytes.len() / MAX_FRAME + 1;
        let mut out = Vec::with_capacity(carry.len() + bytes.len() + frames * (FRAME_HEAD + TAG));
        if carry.is_empty() {
            seal.current.seal_frames(sha256, offset, bytes, &mut out)
        } else {
            let from = offset - carry.len() as u64;
            carry.extend_from_slice(bytes);
            seal.current.seal_frames(sha256, from, &carry, &mut out)
        }
        .map_err(io)?;
        // Forgotten first: a failed write leaves a file to scan again.
        self.memo().parts.remove(sha256);
        f.write_all_at(&out, end).map_err(io)?;
        f.sync_data().map_err(io)?;
        let size = end + out.len() as u64;
        self.memo().parts.insert(
            sha256.to_owned(),
            PartState {
                size,
                end: size,
                plain: offset + bytes.len() as u64,
            },
        );
        Ok(())
    }

    /// Completes a download: the part file is hashed, and renamed into
    /// place if it is `sha256`; otherwise it is removed. Sealed, the part
    /// is decrypted and written once more in the complete-file format.
    pub fn finish_partial(&self, sha256: &str, length: u64) -> Result<(), BlobError> {
        let path = self.part_path(sha256);
        let (got, held, sealed) = match &self.seal {
            None => {
                let got = hash_file(&path)?;
                let held = fs::metadata(&path).map_err(|e| io_err(&path, e))?.len();
                (got, held, None)
            }
            Some(seal) => match self.unseal_part(seal, sha256, &path) {
                Ok((got, held, tmp)) => (got, held, Some(tmp)),
                Err(e) => {
                    self.drop_partial(sha256);
                    return Err(e);
                }
            },
        };
        if got != sha256 || held != length {
            self.drop_partial(sha256);
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
        match sealed {
            None => self.install(&path, sha256),
            Some(mut tmp) => {
                self.install(&tmp.0, sha256)?;
                tmp.keep();
                self.drop_partial(sha256);
                Ok(())
            }
        }
    }

    /// Decrypts the sealed part of `sha256` into a sealed complete file
    /// in `tmp/` (its name tag written for `sha256`, synced); returns the
    /// plaintext's hash and length, and the file.
    fn unseal_part(
        &self,
        seal: &BlobSeal,
        sha256: &str,
        path: &Path,
    ) -> Result<(String, u64, TmpFile), BlobError> {
        let io = |e| io_err(path, e);
        let f = File::open(path).map_err(io)?;
        let size = f.metadata().map_err(io)?.len();
        let st = self.part_state(seal, sha256, path, &f, size)?;
        let tmp = TmpFile(self.tmp_path());
        let tio = |e| io_err(&tmp.0, e);
        let mut out = File::create(&tmp.0).map_err(tio)?;
        let mut state = SealState::start(&seal.current, &mut out).map_err(tio)?;
        let mut h = Sha256::new();
        let (mut pos, mut plain) = (PART_HEADER as u64, 0u64);
        let mut buf = Vec::new();
        while pos < st.end {
            let rec = record_len(&f, pos).map_err(io)?;
            buf.resize(rec as usize, 0);
            f.read_exact_at(&mut buf, pos).map_err(io)?;
            seal.current
                .open_frame(sha256, plain, &mut buf)
                .map_err(|e| open_err(path, e))?;
            let body = &buf[FRAME_HEAD..buf.len() - TAG];
            h.update(body);
            state.write(&seal.current, &mut out, body).map_err(tio)?;
            pos += rec;
            plain += body.len() as u64;
        }
        let got = hex(&h.finalize());
        state.finish(&seal.current, &mut out, &got).map_err(tio)?;
        out.sync_all().map_err(tio)?;
        Ok((got, plain, tmp))
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
        self.memo().parts.remove(sha256);
    }

    fn install(&self, from: &Path, sha256: &str) -> Result<(), BlobError> {
        let to = self.path(sha256);
        fs::rename(from, &to).map_err(|e| io_err(&to, e))?;
        self.sync_root();
        Ok(())
    }

    fn sync_root(&self) {
        if let Ok(d) = File::open(&self.root) {
            let _ = d.sync_all();
        }
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
        self.files(
            |n| is_sha256(n).then_some(n),
            |_, path, size| self.content_len(path, size),
        )
    }

    /// Every download in progress (its part file; `len` is what it holds).
    pub fn parts(&self) -> Result<Vec<BlobFile>, BlobError> {
        self.files(
            |n| n.strip_suffix(".part").filter(|s| is_sha256(s)),
            |sha, _, size| match &self.seal {
                None => size,
                Some(_) => self.partial_len(sha),
            },
        )
    }

    /// Files of the directory whose names `sha_of` maps to a hash, with
    /// their lengths as `len_of` (hash, path, size) gives them.
    fn files(
        &self,
        sha_of: impl Fn(&str) -> Option<&str>,
        len_of: impl Fn(&str, &Path, u64) -> u64,
    ) -> Result<Vec<BlobFile>, BlobError> {
        let entries = fs::read_dir(&self.root).map_err(|e| io_err(&self.root, e))?;
        let mut out = Vec::new();
        for e in entries.flatten() {
            let name = e.file_name();
            let Some(sha) = name.to_str().and_then(&sha_of) else {
                continue;
            };
            let Ok(meta) = e.metadata() else { continue };
            out.push(BlobFile {
                sha256: sha.to_owned(),
                len: len_of(sha, &e.path(), meta.len()),
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

    /// Converts every complete file to sealed under `to`, or to plain
    /// (`None`), reading each through this directory's seal (its current
    /// or previous key, plain files if `plain_ok`). Each file is written
    /// to `tmp/`, synced and renamed over the original, keeping its last
    /// use; so a kill at any point leaves every file whole in one form or
    /// the other, and a rerun skips files already converted. Part files
    /// are dropped (their downloads start over). Returns how many files
    /// were converted.
    pub fn reseal_all(&self, to: Option<&FileSealer>) -> Result<usize, BlobError> {
        for p in self.parts()? {
            self.drop_partial(&p.sha256);
        }
        let mut converted = 0;
        for file in self.list()? {
            if self.reseal_one(&file, to)? {
                converted += 1;
                crate::store::crypt::fault::step();
            }
        }
        self.sync_root();
        self.memo().plain.clear();
        Ok(converted)
    }

    /// Converts one complete file to the form `to` says (sealed under it,
    /// or plain), through a temp file renamed over it; `false`: it was in
    /// that form already (or is gone).
    fn reseal_one(&self, file: &BlobFile, to: Option<&FileSealer>) -> Result<bool, BlobError> {
        let sha = file.sha256.as_str();
        let (path, f, size) = match self.open_file(sha) {
            Err(BlobError::Missing { .. }) => return Ok(false),
            r => r?,
        };
        let form = self.form(sha, &path, &f, size)?;
        match (&form, to) {
            (Form::Plain, None) => return Ok(false),
            (Form::Sealed(_, h), Some(t)) if h.key_id() == t.id() => return Ok(false),
            _ => {}
        }
        let mut tmp = TmpFile(self.tmp_path());
        let tio = |e| io_err(&tmp.0, e);
        let mut out = File::create(&tmp.0).map_err(tio)?;
        let mut state = match to {
            Some(t) => Some(SealState::start(t, &mut out).map_err(tio)?),
            None => None,
        };
        let mut h = Sha256::new();
        self.each_plain(&form, &path, &f, size, |buf| {
            h.update(buf);
            match (&mut state, to) {
                (Some(st), Some(t)) => st.write(t, &mut out, buf),
                _ => out.write_all(buf),
            }
            .map_err(tio)
        })?;
        if hex(&h.finalize()) != sha {
            // A plain file whose content is not its name (a sealed one
            // was authenticated): not converted, never passed on.
            return Err(BlobError::Tampered { path });
        }
        if let (Some(st), Some(t)) = (state, to) {
            st.finish(t, &mut out, sha).map_err(tio)?;
        }
        out.sync_all().map_err(tio)?;
        let _ = out.set_modified(file.used);
        drop(out);
        fs::rename(&tmp.0, &path).map_err(|e| io_err(&path, e))?;
        tmp.keep();
        Ok(true)
    }
}

/// Appends plain `[offset, offset + max)` of `f` (`size` bytes, clamped)
/// to `out`.
fn read_plain_range(
    f: &File,
    size: u64,
    offset: u64,
    max: usize,
    out: &mut Vec<u8>,
) -> io::Result<()> {
    let end = offset.saturating_add(max as u64).min(size);
    if end <= offset {
        return Ok(());
    }
    let start = out.len();
    out.resize(start + (end - offset) as usize, 0);
    let mut done = start;
    let mut at = offset;
    while done < out.len() {
        match f.read_at(&mut out[done..], at) {
            // Shorter than it was: what is there.
            Ok(0) => break,
            Ok(n) => {
                done += n;
                at += n as u64;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                out.truncate(start);
                return Err(e);
            }
        }
    }
    out.truncate(done);
    Ok(())
}

/// The length of the part record at `pos` of `f` (its length prefix,
/// nonce, ciphertext and tag).
fn record_len(f: &File, pos: u64) -> io::Result<u64> {
    let mut n = [0u8; 4];
    f.read_exact_at(&mut n, pos)?;
    Ok((FRAME_HEAD + TAG) as u64 + u64::from(u32::from_le_bytes(n)))
}

/// Finds the whole records of the sealed part file `f`: their lengths
/// only, but the last one is authenticated (a crash can tear only the
/// last append; one torn into a record-shaped tail is cut off too).
fn scan_part(sealer: &FileSealer, sha256: &str, f: &File, size: u64) -> io::Result<PartState> {
    let mut st = PartState {
        size,
        end: 0,
        plain: 0,
    };
    let mut head = [0u8; PART_HEADER];
    if size < PART_HEADER as u64
        || f.read_exact_at(&mut head, 0).is_err()
        || head != sealer.part_header()
    {
        return Ok(st);
    }
    let (mut pos, mut plain) = (PART_HEADER as u64, 0u64);
    let mut last = None;
    while pos + 4 <= size {
        let rec = record_len(f, pos)?;
        let n = rec - (FRAME_HEAD + TAG) as u64;
        if n > MAX_FRAME as u64 || pos + rec > size {
            break;
        }
        last = Some((pos, plain, rec));
        pos += rec;
        plain += n;
    }
    if let Some((at, before, rec)) = last {
        let mut buf = vec![0u8; rec as usize];
        f.read_exact_at(&mut buf, at)?;
        if sealer.open_frame(sha256, before, &mut buf).is_err() {
            (pos, plain) = (at, before);
        }
    }
    st.end = pos;
    st.plain = plain;
    Ok(st)
}

/// Where to cut the sealed part file `f` to hold the first `offset`
/// plaintext bytes: the end of the record that ends there, or the start
/// of the one that holds it with the plaintext of that record before
/// `offset` (to be sealed again).
fn cut_part(
    sealer: &FileSealer,
    sha256: &str,
    f: &File,
    offset: u64,
) -> Result<(u64, Vec<u8>), OpenError> {
    let (mut pos, mut plain) = (PART_HEADER as u64, 0u64);
    while plain < offset {
        let rec = record_len(f, pos)?;
        let n = rec - (FRAME_HEAD + TAG) as u64;
        if plain + n > offset {
            let mut buf = vec![0u8; rec as usize];
            f.read_exact_at(&mut buf, pos)?;
            sealer.open_frame(sha256, plain, &mut buf)?;
            let keep = (offset - plain) as usize;
            return Ok((pos, buf[FRAME_HEAD..FRAME_HEAD + keep].to_vec()));
        }
        pos += rec;
        plain += n;
    }
    Ok((pos, Vec::new()))
}

/// A temporary file removed when dropped unless kept.
struct TmpFile(PathBuf);

impl TmpFile {
    /// Moved into place: nothing to remove.
    fn keep(&mut self) {
        self.0 = PathBuf::new();
    }
}

impl Drop for TmpFile {
    fn drop(&mut self) {
        if !self.0.as_os_str().is_empty() {
            let _ = fs::remove_file(&self.0);
        }
    }
}

/// The SHA-256 of a file's bytes as they are on disk (plain), in hex.
/// For the plaintext of a complete file use [`BlobDir::hash`].
pub fn hash_file(path: &Path) -> Result<String, BlobError> {
    let f = File::open(path).map_err(|e| io_err(path, e))?;
    let size = f.metadata().map_err(|e| io_err(path, e))?.len();
    let mut h = Sha256::new();
    let mut buf = Vec::new();
    let mut offset = 0;
    loop {
        buf.clear();
        read_plain_range(&f, size, offset, STEP, &mut buf).map_err(|e| io_err(path, e))?;
        if buf.is_empty() {
            break;
        }
        h.update(&buf);
        offset += buf.len() as u64;
    }
    Ok(hex(&h.finalize()))
}

/// A blob being written from a stream (an attach). Dropped unfinished,
/// its temporary file is removed.
pub struct BlobWriter {
    dir: BlobDir,
    path: PathBuf,
    file: Option<File>,
    /// Sealing (the directory is sealed).
    state: Option<SealState>,
    hasher: Sha256,
    len: u64,
    limit: u64,
}

impl BlobWriter {
    /// Plaintext bytes written.
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
        match (&mut self.state, &self.dir.seal) {
            (Some(st), Some(seal)) => st.write(&seal.current, f, bytes),
            _ => f.write_all(bytes),
        }
        .map_err(|e| io_err(&self.path, e))?;
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
        if let Some(mut f) = self.file.take() {
            if let (Some(st), Some(seal)) = (self.state.take(), &self.dir.seal) {
                st.finish(&seal.current, &mut f, &sha)
                    .map_err(|e| io_err(&self.path, e))?;
            }
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

    use crate::store::crypt::blob_seal::{sealed_len, MAGIC};
    use crate::store::crypt::Key;

    /// Deterministic bytes (xorshift), different per `seed`.
    fn bytes(n: usize, seed: u64) -> Vec<u8> {
        let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    fn sha(b: &[u8]) -> String {
        hex(&Sha256::digest(b))
    }

    fn sealed_dir(path: &Path, current: &Key, previous: Option<&Key>, plain_ok: bool) -> BlobDir {
        BlobDir::open(path)
            .unwrap()
            .sealed(Arc::new(BlobSeal::new(current, previous, plain_ok)))
    }

    fn put(blobs: &BlobDir, content: &[u8], step: usize) -> String {
        let mut w = blobs.writer(u64::MAX).unwrap();
        for c in content.chunks(step.max(1)) {
            w.write(c).unwrap();
        }
        let (got, len) = w.finish(None).unwrap();
        assert_eq!(len, content.len() as u64);
        got
    }

    #[test]
    fn sealed_files_read_back_in_any_range() {
        let dir = tempfile::tempdir().unwrap();
        let key = Key::random().unwrap();
        let blobs = sealed_dir(dir.path(), &key, None, false);
        let mut rng = 7u64;
        let mut next = |m: u64| {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng % m.max(1)
        };
        for (i, n) in [0usize, 1, 65535, 65536, 65537, 200_000]
            .into_iter()
            .enumerate()
        {
            let content = bytes(n, i as u64 + 1);
            let s = put(&blobs, &content, 7001 + i * 13_000);
            assert_eq!(s, sha(&content));
            assert_eq!(blobs.len(&s), Some(n as u64));
            let raw = fs::metadata(blobs.path(&s)).unwrap().len();
            assert_eq!(raw, sealed_len(n as u64));
            assert_eq!(blobs.read_at(&s, 0, usize::MAX).unwrap(), content);
            assert_eq!(blobs.hash(&s).unwrap(), s);
            assert!(blobs.read_at(&s, n as u64 + 5, 10).unwrap().is_empty());
            for _ in 0..60 {
                let off = next(n as u64 + 2);
                let max = next(3 * 65536) as usize;
                let lo = (off as usize).min(n);
                let hi = (lo + max).min(n);
                let got = blobs.read_at(&s, off, max).unwrap();
                assert_eq!(got, &content[lo..hi], "size {n} offset {off} max {max}");
            }
        }
        let listed = blobs.list().unwrap();
        let mut lens: Vec<u64> = listed.iter().map(|f| f.len).collect();
        lens.sort();
        assert_eq!(lens, vec![0, 1, 65535, 65536, 65537, 200_000]);
        // The same content again is stored once.
        let again = put(&blobs, &bytes(65537, 5), 65537);
        assert_eq!(blobs.list().unwrap().len(), 6, "{again}");
        assert_eq!(fs::read_dir(blobs.root().join("tmp")).unwrap().count(), 0);
    }

    #[test]
    fn sealed_files_hold_no_plaintext() {
        let dir = tempfile::tempdir().unwrap();
        let key = Key::random().unwrap();
        let blobs = sealed_dir(dir.path(), &key, None, false);
        let marker = b"PLAINTEXT-MARKER-4242";
        let content: Vec<u8> = marker.iter().copied().cycle().take(150_000).collect();
        let s = put(&blobs, &content, 4096);
        let has = |raw: &[u8]| raw.windows(8).any(|w| w == &marker[..8]);
        assert!(!has(&fs::read(blobs.path(&s)).unwrap()));
        blobs.append_partial(&s, 0, &content[..90_000]).unwrap();
        assert!(!has(&fs::read(blobs.part_path(&s)).unwrap()));
    }

    #[test]
    fn a_changed_byte_anywhere_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let key = Key::random().unwrap();
        let blobs = sealed_dir(dir.path(), &key, None, false);
        let small = put(&blobs, &bytes(100, 1), 100);
        let big = put(&blobs, &bytes(70_000, 2), 100_000);
        let empty = put(&blobs, b"", 1);
        for s in [small, big, empty] {
            let path = blobs.path(&s);
            let good = fs::read(&path).unwrap();
            let n = good.len();
            let positions: Vec<usize> = if n < 1000 {
                (0..n).collect()
            } else {
                (0..100)
                    .chain((100..n).step_by(997))
                    .chain(n - 40..n)
                    .collect()
            };
            for i in positions {
                let mut bad = good.clone();
                bad[i] ^= 0x20;
                fs::write(&path, &bad).unwrap();
                let e = blobs.read_at(&s, 0, usize::MAX).unwrap_err();
                if i >= 16 {
                    assert!(matches!(e, BlobError::Tampered { .. }), "byte {i}: {e}");
                    let seal = e.seal_error().unwrap();
                    assert!(
                        matches!(seal, SealError::Tampered { ref what } if what.starts_with("attachment file "))
                    );
                } else {
                    assert!(matches!(e, BlobError::Sealed { .. }), "byte {i}: {e}");
                }
            }
            // Cut short, or grown.
            for len in [n - 1, n - 16, n + 1] {
                let mut bad = good.clone();
                bad.resize(len, 0);
                fs::write(&path, &bad).unwrap();
                assert!(blobs.read_at(&s, 0, usize::MAX).is_err(), "{len}");
            }
            fs::write(&path, &good).unwrap();
            assert_eq!(blobs.hash(&s).unwrap(), s);
        }
    }

    #[test]
    fn a_sealed_file_under_another_name_or_key_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (k1, k2) = (Key::random().unwrap(), Key::random().unwrap());
        let blobs = sealed_dir(dir.path(), &k1, None, false);
        let a = put(&blobs, b"content a", 4);
        let b = put(&blobs, b"content b", 4);
        fs::copy(blobs.path(&a), blobs.path(&b)).unwrap();
        let e = blobs.read_at(&b, 0, 100).unwrap_err();
        assert!(matches!(e, BlobError::Tampered { .. }), "{e}");
        assert!(e.to_string().contains(&b), "{e}");
        assert_eq!(blobs.read_at(&a, 0, 100).unwrap(), b"content a");

        let other = BlobDir::at(dir.path()).sealed(Arc::new(BlobSeal::new(&k2, None, true)));
        let e = other.read_at(&a, 0, 100).unwrap_err();
        let msg = e.to_string();
        assert!(matches!(e, BlobError::Sealed { .. }), "{e}");
        assert!(
            msg.contains(&k1.id().to_string()) && msg.contains(&k2.id().to_string()),
            "{msg}"
        );
        let plain = BlobDir::at(dir.path());
        let e = plain.read_at(&a, 0, 100).unwrap_err();
        assert!(matches!(e, BlobError::Sealed { .. }), "{e}");
        assert!(e.to_string().contains("encryption"), "{e}");
        // During a rekey the previous key still reads.
        let rekey = BlobDir::at(dir.path()).sealed(Arc::new(BlobSeal::new(&k2, Some(&k1), false)));
        assert_eq!(rekey.read_at(&a, 2, 5).unwrap(), b"ntent");
    }

    #[test]
    fn sealed_downloads_resume_from_the_last_whole_record() {
        let dir = tempfile::tempdir().unwrap();
        let key = Key::random().unwrap();
        let blobs = sealed_dir(dir.path(), &key, None, false);
        let content = bytes(300_000, 9);
        let s = sha(&content);
        blobs.append_partial(&s, 0, &content[..1000]).unwrap();
        blobs
            .append_partial(&s, 1000, &content[1000..50_000])
            .unwrap();
        assert_eq!(blobs.partial_len(&s), 50_000);
        assert_eq!(blobs.parts().unwrap()[0].len, 50_000);
        // A torn append: part of a record.
        let part = blobs.part_path(&s);
        let f = OpenOptions::new().write(true).open(&part).unwrap();
        let size = f.metadata().unwrap().len();
        f.set_len(size - 5).unwrap();
        assert_eq!(blobs.partial_len(&s), 1000);
        // A record-shaped tail of zeros (a crash after the size grew).
        let fresh = sealed_dir(dir.path(), &key, None, false);
        let mut tail = vec![0u8; FRAME_HEAD + TAG + 10];
        tail[0] = 10;
        f.set_len(size - 49_000 - (FRAME_HEAD + TAG) as u64)
            .unwrap();
        let end = f.metadata().unwrap().len();
        f.write_all_at(&tail, end).unwrap();
        assert_eq!(fresh.partial_len(&s), 1000);
        fresh
            .append_partial(&s, 1000, &content[1000..200_000])
            .unwrap();
        // Cut back into the middle of a record, and go on.
        fresh
            .append_partial(&s, 150_000, &content[150_000..250_000])
            .unwrap();
        assert_eq!(fresh.partial_len(&s), 250_000);
        let e = fresh.append_partial(&s, 260_000, b"gap").unwrap_err();
        assert!(matches!(
            e,
            BlobError::WrongLength {
                expected: 260_000,
                got: 250_000
            }
        ));
        fresh
            .append_partial(&s, 250_000, &content[250_000..])
            .unwrap();
        fresh.finish_partial(&s, 300_000).unwrap();
        assert_eq!(fresh.partial_len(&s), 0);
        assert!(!part.exists());
        assert_eq!(fresh.len(&s), Some(300_000));
        assert_eq!(fresh.read_at(&s, 0, usize::MAX).unwrap(), content);

        // Wrong content, a changed record, an empty download.
        let other = "0".repeat(64);
        fresh.append_partial(&other, 0, b"not it").unwrap();
        assert!(matches!(
            fresh.finish_partial(&other, 6),
            Err(BlobError::HashMismatch { .. })
        ));
        assert_eq!(fresh.partial_len(&other), 0);
        let c2 = bytes(5000, 3);
        let s2 = sha(&c2);
        fresh.append_partial(&s2, 0, &c2[..2000]).unwrap();
        fresh.append_partial(&s2, 2000, &c2[2000..]).unwrap();
        let mut raw = fs::read(fresh.part_path(&s2)).unwrap();
        raw[PART_HEADER + FRAME_HEAD + 3] ^= 1;
        fs::write(fresh.part_path(&s2), &raw).unwrap();
        let e = fresh.finish_partial(&s2, 5000).unwrap_err();
        assert!(matches!(e, BlobError::Tampered { .. }), "{e}");
        assert_eq!(fresh.len(&s2), None);
        let empty = sha(b"");
        fresh.append_partial(&empty, 0, b"").unwrap();
        fresh.finish_partial(&empty, 0).unwrap();
        assert_eq!(fresh.read_at(&empty, 0, 10).unwrap(), b"");
        assert_eq!(fs::read_dir(fresh.root().join("tmp")).unwrap().count(), 0);
    }

    #[test]
    fn reseal_all_converts_both_ways_and_resumes() {
        let dir = tempfile::tempdir().unwrap();
        let (k1, k2) = (Key::random().unwrap(), Key::random().unwrap());
        let plain = BlobDir::open(dir.path()).unwrap();
        let mut magic_start = MAGIC.to_vec();
        magic_start.extend(bytes(sealed_len(10) as usize - 8, 4));
        let contents = vec![
            Vec::new(),
            b"x".to_vec(),
            bytes(65536, 2),
            bytes(140_000, 3),
            magic_start,
        ];
        let mut shas = Vec::new();
        for c in &contents {
            let s = put(&plain, c, 10_000);
            let t =
                SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(5000 + shas.len() as u64);
            File::options()
                .write(true)
                .open(plain.path(&s))
                .unwrap()
                .set_modified(t)
                .unwrap();
            shas.push(s);
        }
        // Plain content that starts like a sealed file is still plain.
        // (From offset 1: a read from the start would mark it used.)
        assert_eq!(
            plain.read_at(&shas[4], 1, usize::MAX).unwrap(),
            contents[4][1..]
        );
        plain.append_partial(&"1".repeat(64), 0, b"half").unwrap();
        let check = |blobs: &BlobDir| {
            for (c, s) in contents.iter().zip(&shas) {
                assert_eq!(blobs.len(s), Some(c.len() as u64));
                assert_eq!(&blobs.read_at(s, 0, usize::MAX).unwrap(), c);
            }
        };
        let raw_sealed = |s: &str| {
            fs::read(dir.path().join("blobs").join(s))
                .unwrap()
                .starts_with(&MAGIC)
        };

        let (f1, f2) = (FileSealer::new(&k1), FileSealer::new(&k2));
        let encrypting = sealed_dir(dir.path(), &k1, None, true);
        assert_eq!(encrypting.reseal_all(Some(&f1)).unwrap(), 5);
        assert!(encrypting.parts().unwrap().is_empty());
        assert_eq!(encrypting.reseal_all(Some(&f1)).unwrap(), 0);
        let on = sealed_dir(dir.path(), &k1, None, false);
        // The last use is kept (eviction order).
        let used: Vec<_> = on.list().unwrap().into_iter().map(|f| f.used).collect();
        let early = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(6000);
        assert!(used.iter().all(|t| *t < early), "{used:?}");
        check(&on);
        assert!(shas.iter().all(|s| raw_sealed(s)));

        // A rekey killed after three files: two are still under k1, and a
        // temporary file is left.
        let under_k1: Vec<_> = shas[..2]
            .iter()
            .map(|s| fs::read(on.path(s)).unwrap())
            .collect();
        let rekey = sealed_dir(dir.path(), &k2, Some(&k1), false);
        assert_eq!(rekey.reseal_all(Some(&f2)).unwrap(), 5);
        for (s, raw) in shas.iter().zip(&under_k1) {
            fs::write(on.path(s), raw).unwrap();
        }
        fs::write(on.tmp_path(), b"half a file").unwrap();
        let rekey = sealed_dir(dir.path(), &k2, Some(&k1), false);
        assert_eq!(fs::read_dir(rekey.root().join("tmp")).unwrap().count(), 0);
        assert_eq!(rekey.reseal_all(Some(&f2)).unwrap(), 2);
        assert_eq!(rekey.reseal_all(Some(&f2)).unwrap(), 0);
        check(&sealed_dir(dir.path(), &k2, None, false));
        assert!(matches!(
            on.read_at(&shas[1], 0, 1),
            Err(BlobError::Sealed { .. })
        ));

        let decrypting = sealed_dir(dir.path(), &k2, None, true);
        assert_eq!(decrypting.reseal_all(None).unwrap(), 5);
        assert_eq!(decrypting.reseal_all(None).unwrap(), 0);
        let off = BlobDir::open(dir.path()).unwrap();
        check(&off);
        assert!(shas[..4].iter().all(|s| !raw_sealed(s)));
        assert_eq!(off.reseal_all(None).unwrap(), 0);
        assert_eq!(fs::read_dir(off.root().join("tmp")).unwrap().count(), 0);
    }

    #[test]
    fn a_conversion_reads_plain_and_sealed_files_side_by_side() {
        let dir = tempfile::tempdir().unwrap();
        let key = Key::random().unwrap();
        let plain = BlobDir::open(dir.path()).unwrap();
        let old = bytes(100_000, 1);
        let p = put(&plain, &old, 30_000);
        let mixed = sealed_dir(dir.path(), &key, None, true);
        let new = bytes(100_000, 2);
        let s = put(&mixed, &new, 30_000);
        assert!(fs::read(mixed.path(&s)).unwrap().starts_with(&MAGIC));
        assert_eq!(mixed.read_at(&p, 99_990, 100).unwrap(), &old[99_990..]);
        assert_eq!(mixed.read_at(&s, 99_990, 100).unwrap(), &new[99_990..]);
        let mut lens: Vec<u64> = mixed.list().unwrap().iter().map(|f| f.len).collect();
        lens.dedup();
        assert_eq!(lens, vec![100_000]);
        // Once converted, a plain file is refused.
        let strict = sealed_dir(dir.path(), &key, None, false);
        let e = strict.read_at(&p, 0, 10).unwrap_err();
        assert!(matches!(e, BlobError::Sealed { .. }), "{e}");
        assert!(e.to_string().contains("syncd store encrypt"), "{e}");
        assert_eq!(strict.read_at(&s, 0, 3).unwrap(), &new[..3]);
    }

    #[test]
    #[ignore = "throughput, by hand: cargo test --lib blobs::tests::sealed_throughput -- --ignored --nocapture"]
    fn sealed_throughput() {
        let dir = tempfile::tempdir().unwrap();
        let key = Key::random().unwrap();
        let content = bytes(64 << 20, 1);
        for blobs in [
            BlobDir::open(dir.path()).unwrap(),
            sealed_dir(dir.path(), &key, None, false),
        ] {
            let t = std::time::Instant::now();
            let mut w = blobs.writer(u64::MAX).unwrap();
            for c in content.chunks(1 << 20) {
                w.write(c).unwrap();
            }
            let (s, _) = w.finish(None).unwrap();
            let wrote = t.elapsed();
            let t = std::time::Instant::now();
            let mut off = 0;
            while off < content.len() as u64 {
                off += blobs.read_at(&s, off, 1 << 20).unwrap().len() as u64;
            }
            let mb = content.len() as f64 / 1e6;
            eprintln!(
                "sealed {}: write {:.0} MB/s, read {:.0} MB/s",
                blobs.seal().is_some(),
                mb / wrote.as_secs_f64(),
                mb / t.elapsed().as_secs_f64()
            );
            blobs.remove(&s).unwrap();
        }
    }
}
