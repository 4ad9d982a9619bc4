//! The clean-shutdown mark: a small file beside the store that says what
//! the store file was when syncd closed it cleanly.
//!
//! Exists so that an open does not have to read and checksum every page of
//! the store (a cost that grows with the file) when nothing can have
//! changed it. The mark records the file's device, inode, size, and
//! modification and change times. Any write through the file system moves
//! the change time, which no user can set back, and a copy or a restore
//! from a backup is another inode or another change time; so a matching
//! mark means the file is byte for byte what syncd closed.
//!
//! The mark is consumed by the open that reads it: it is removed (and the
//! removal made durable) before the database is opened, so it is void from
//! the first write after that open, and a crash at any later moment leaves
//! no mark behind. No mark, or one that does not match, means the full
//! check.

use std::fs::File;
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Version line of the mark's format.
const HEADER: &str = "syncd clean shutdown v1";

/// The mark of the store at `store`.
pub fn path_for(store: &Path) -> PathBuf {
    let mut p = store.as_os_str().to_owned();
    p.push(".clean");
    PathBuf::from(p)
}

/// What the store file was at a clean close.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Fingerprint {
    dev: u64,
    ino: u64,
    size: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

impl Fingerprint {
    fn of(path: &Path) -> std::io::Result<Fingerprint> {
        let m = std::fs::metadata(path)?;
        Ok(Fingerprint {
            dev: m.dev(),
            ino: m.ino(),
            size: m.size(),
            mtime: (m.mtime(), m.mtime_nsec()),
            ctime: (m.ctime(), m.ctime_nsec()),
        })
    }

    fn to_text(&self) -> String {
        format!(
            "{HEADER}\ndev {}\nino {}\nsize {}\nmtime {} {}\nctime {} {}\n",
            self.dev, self.ino, self.size, self.mtime.0, self.mtime.1, self.ctime.0, self.ctime.1
        )
    }

    fn parse(text: &str) -> Option<Fingerprint> {
        let mut lines = text.lines();
        if lines.next()? != HEADER {
            return None;
        }
        let mut field = |name: &str| -> Option<Vec<i64>> {
            let rest = lines.next()?.strip_prefix(name)?.strip_prefix(' ')?;
            rest.split(' ').map(|v| v.parse().ok()).collect()
        };
        let one = |v: Vec<i64>| (v.len() == 1).then(|| v[0] as u64);
        let two = |v: Vec<i64>| (v.len() == 2).then(|| (v[0], v[1]));
        Some(Fingerprint {
            dev: one(field("dev")?)?,
            ino: one(field("ino")?)?,
            size: one(field("size")?)?,
            mtime: two(field("mtime")?)?,
            ctime: two(field("ctime")?)?,
        })
    }
}

/// Why an open runs the full check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FullCheckReason {
    /// No mark: the last run did not stop cleanly (or this is the first).
    NoMark,
    /// The mark does not describe the file: something else wrote, copied
    /// or restored it since syncd closed it.
    Mismatch,
    /// The mark could not be read or removed.
    MarkUnreadable(String),
}

impl std::fmt::Display for FullCheckReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FullCheckReason::NoMark => f.write_str("no clean-shutdown mark"),
            FullCheckReason::Mismatch => f.write_str(
                "the store file changed since syncd closed it (clean-shutdown mark does not match)",
            ),
            FullCheckReason::MarkUnreadable(e) => write!(f, "clean-shutdown mark unusable: {e}"),
        }
    }
}

/// Reads and removes the mark of `store`: `Ok(())` when it matches the
/// file (the open may trust it), else why the full check must run. The
/// removal is durable before this returns.
pub fn take(store: &Path) -> Result<(), FullCheckReason> {
    let mark = path_for(store);
    let text = match std::fs::read_to_string(&mark) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(FullCheckReason::NoMark),
        Err(e) => return Err(FullCheckReason::MarkUnreadable(e.to_string())),
    };
    remove_durably(&mark).map_err(|e| FullCheckReason::MarkUnreadable(e.to_string()))?;
    let now = Fingerprint::of(store).map_err(|e| FullCheckReason::MarkUnreadable(e.to_string()))?;
    match Fingerprint::parse(&text) {
        Some(f) if f == now => Ok(()),
        _ => Err(FullCheckReason::Mismatch),
    }
}

fn remove_durably(mark: &Path) -> std::io::Result<()> {
    std::fs::remove_file(mark)?;
    sync_dir(mark)
}

fn sync_dir(file: &Path) -> std::io::Result<()> {
    match file.parent() {
        Some(dir) => File::open(dir)?.sync_all(),
        None => Ok(()),
    }
}

/// Leaves the mark for `store`, closed cleanly a moment ago. Waits (a few
/// milliseconds at most) until the kernel's coarse clock has passed the
/// file's change time, so that any later write gets a later change time
/// even on a kernel that stamps files from a coarse clock.
pub fn leave(store: &Path) -> std::io::Result<()> {
    let f = Fingerprint::of(store)?;
    if !clock_passed(f.ctime, Duration::from_millis(50)) {
        return Err(std::io::Error::other(
            "the clock did not move past the store's change time",
        ));
    }
    let mark = path_for(store);
    let tmp = path_for(&mark);
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    let mut file = opts.open(&tmp)?;
    file.write_all(f.to_text().as_bytes())?;
    file.sync_all()?;
    std::fs::rename(&tmp, &mark)?;
    sync_dir(&mark)
}

/// Waits up to `limit` for CLOCK_REALTIME_COARSE to be past `t`.
fn clock_passed(t: (i64, i64), limit: Duration) -> bool {
    let deadline = std::time::Instant::now() + limit;
    loop {
        let mut ts: libc::timespec = unsafe { std::mem::zeroed() };
        // SAFETY: `ts` is a valid out pointer for the duration of the call.
        let rc = unsafe { libc::clock_gettime(libc::CLOCK_REALTIME_COARSE, &mut ts) };
        if rc == 0 && (ts.tv_sec, ts.tv_nsec) > t {
            return true;
        }
        if std::time::Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_mark_matches_once_and_any_write_voids_it() {
        let dir = tempfile::tempdir().unwrap();
        let store = dir.path().join("s.redb");
        std::fs::write(&store, b"abc").unwrap();
        leave(&store).unwrap();
        assert_eq!(take(&store), Ok(()));
        assert_eq!(take(&store), Err(FullCheckReason::NoMark), "used twice");
        leave(&store).unwrap();
        // The same bytes again: size and content unchanged, ctime moves.
        let f = File::options().write(true).open(&store).unwrap();
        std::os::unix::fs::FileExt::write_all_at(&f, b"a", 0).unwrap();
        assert_eq!(take(&store), Err(FullCheckReason::Mismatch));
        assert!(!path_for(&store).exists());
    }

    #[test]
    fn a_garbled_mark_is_a_mismatch() {
        let dir = tempfile::tempdir().unwrap();
        let store = dir.path().join("s.redb");
        std::fs::write(&store, b"abc").unwrap();
        std::fs::write(path_for(&store), "syncd clean shutdown v1\ndev x\n").unwrap();
        assert_eq!(take(&store), Err(FullCheckReason::Mismatch));
    }
}
