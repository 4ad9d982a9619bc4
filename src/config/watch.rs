//! A watch on one file (daemon.toml, the token file) that reports a change
//! only once the file has settled.
//!
//! Exists because editors and shells write a file in several steps: `nano`
//! and `cat > daemon.toml` truncate it and then write the content, some
//! editors write it in chunks, others write a temp file and rename it over.
//! Acting on the first event reads a half-written (or empty) file, and a
//! daemon that did so would run, for a moment, on a config nobody wrote.
//! So events go through notify's own debouncer (`notify-debouncer-mini`):
//! a change is reported when the file has been quiet for [`SETTLE`].
//!
//! The debouncer also sees the file being opened and read (inotify reports
//! opens), including our own reads after each change; those would come back
//! as another "change" and reload the file in a loop. So a settled event is
//! reported only when the file's identity and times differ from the last one
//! reported (inode, size, modification and change time): reading a file
//! changes none of them, and any write through the filesystem changes the
//! change time.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use notify_debouncer_mini::{new_debouncer, DebounceEventResult, DebouncedEventKind};

/// How long a file must be quiet before a change to it counts: long enough
/// for an editor's several writes spread over a few hundred milliseconds.
/// SIGHUP skips it (whoever sends it has finished the edit).
pub const SETTLE: Duration = Duration::from_millis(1000);

/// A watch on one file: a unit arrives on `changes` whenever it has been
/// written, replaced or removed and then left alone for [`SETTLE`].
/// Dropping it stops the watch.
pub struct FileWatch {
    _debouncer: notify_debouncer_mini::Debouncer<notify::RecommendedWatcher>,
    pub changes: tokio::sync::mpsc::UnboundedReceiver<()>,
}

/// What a write through the filesystem always changes; `None`: no file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    dev: u64,
    ino: u64,
    size: u64,
    mtime_ns: i128,
    ctime_ns: i128,
}

#[cfg(unix)]
fn stamp(path: &Path) -> Option<Stamp> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).ok()?;
    let ns = |s: i64, n: i64| i128::from(s) * 1_000_000_000 + i128::from(n);
    Some(Stamp {
        dev: m.dev(),
        ino: m.ino(),
        size: m.size(),
        mtime_ns: ns(m.mtime(), m.mtime_nsec()),
        ctime_ns: ns(m.ctime(), m.ctime_nsec()),
    })
}

#[cfg(not(unix))]
fn stamp(path: &Path) -> Option<Stamp> {
    let m = std::fs::metadata(path).ok()?;
    let t = m
        .modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos() as i128);
    Some(Stamp {
        dev: 0,
        ino: 0,
        size: m.len(),
        mtime_ns: t,
        ctime_ns: t,
    })
}

/// Watches `path` through its directory, so that editors that replace the
/// file (write a temp file, rename it over) are seen too.
pub fn watch_file(path: &Path) -> Result<FileWatch, String> {
    use notify::RecursiveMode;
    let (tx, changes) = tokio::sync::mpsc::unbounded_channel();
    let name = path
        .file_name()
        .ok_or_else(|| format!("{} names no file", path.display()))?
        .to_owned();
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_owned(),
        _ => PathBuf::from("."),
    };
    let file = dir.join(&name);
    let last = Mutex::new(stamp(&file));
    let handler = move |res: DebounceEventResult| {
        let Ok(events) = res else { return };
        let settled = events.iter().any(|e| {
            e.kind == DebouncedEventKind::Any && e.path.file_name() == Some(name.as_os_str())
        });
        if !settled {
            return;
        }
        let now = stamp(&file);
        let mut last = last.lock().unwrap_or_else(|p| p.into_inner());
        if *last != now {
            *last = now;
            let _ = tx.send(());
        }
    };
    let mut debouncer =
        new_debouncer(SETTLE, handler).map_err(|e| format!("file watch unavailable: {e}"))?;
    debouncer
        .watcher()
        .watch(&dir, RecursiveMode::NonRecursive)
        .map_err(|e| format!("cannot watch {}: {e}", dir.display()))?;
    Ok(FileWatch {
        _debouncer: debouncer,
        changes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn next(w: &mut FileWatch) {
        tokio::time::timeout(Duration::from_secs(30), w.changes.recv())
            .await
            .expect("no change reported")
            .expect("watch closed");
    }

    /// A file written in two parts with a pause shorter than SETTLE is one
    /// change, reported after the second part; reading the file afterwards
    /// is no change at all.
    #[tokio::test]
    async fn settles_and_ignores_reads() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("daemon.toml");
        std::fs::write(&p, "a = 1\n").unwrap();
        let mut w = watch_file(&p).unwrap();
        std::fs::write(&p, "").unwrap();
        tokio::time::sleep(SETTLE / 4).await;
        std::fs::write(&p, "a = 2\n").unwrap();
        next(&mut w).await;
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "a = 2\n");
        // Our own reads (opens) must not come back as changes: read it,
        // then make a real change; the next report is that change.
        for _ in 0..3 {
            std::fs::read_to_string(&p).unwrap();
        }
        let other = dir.path().join("other");
        std::fs::write(&other, "x").unwrap();
        tokio::time::sleep(SETTLE * 2).await;
        assert!(
            w.changes.try_recv().is_err(),
            "a read was taken for a change"
        );
        std::fs::rename(&other, &p).unwrap();
        next(&mut w).await;
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "x");
    }
}
