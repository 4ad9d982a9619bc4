//! A watch on one file (daemon.toml, the token file) that reports a change
//! only once the file has settled.
//!
//! Exists because editors and shells write a file in several steps: `nano`
//! and `cat > daemon.toml` truncate it and then write the content, some
//! editors write it in chunks, others write a temp file and rename it over.
//! Acting on the first event reads a half-written (or empty) file, and a
//! daemon that did so would run, for a moment, on a config nobody wrote.
//! So a change is reported once no write to the file has been seen for
//! [`SETTLE`].
//!
//! Only writes count. inotify also reports every open and read of the file
//! (our own reads after each change, a `syncd --config FILE status` in a
//! loop): those neither start nor prolong the settle time. That is why
//! the settle time is kept here rather than by notify's debouncers, which
//! count every event alike, so that a file read twice a second would never
//! settle. And a change is reported only when the file's identity and
//! times differ from the last one reported (inode, size, modification and
//! change time; any write through the filesystem moves the change time),
//! so a burst that ends where it began, or one already taken by SIGHUP,
//! reloads nothing.

use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

/// How long a file must go without writes before a change to it counts:
/// long enough for an editor's several writes spread over a few hundred
/// milliseconds. SIGHUP skips it (whoever sends it has finished the edit).
pub const SETTLE: Duration = Duration::from_millis(1000);

/// What a write through the filesystem always changes; `None`: no file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    dev: u64,
    ino: u64,
    size: u64,
    mtime_ns: i128,
    ctime_ns: i128,
}

/// The stamp of the file at `path` now (`None` if there is none).
#[cfg(unix)]
pub fn stamp(path: &Path) -> Option<Stamp> {
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

/// The stamp of the file at `path` now (`None` if there is none).
#[cfg(not(unix))]
pub fn stamp(path: &Path) -> Option<Stamp> {
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

/// A watch on one file: a unit arrives on `changes` whenever it has been
/// written, replaced or removed and then left alone for [`SETTLE`].
/// Dropping it stops the watch (and its settle thread).
pub struct FileWatch {
    _watcher: notify::RecommendedWatcher,
    file: PathBuf,
    last: Arc<Mutex<Option<Stamp>>>,
    pub changes: tokio::sync::mpsc::UnboundedReceiver<()>,
}

impl FileWatch {
    /// The file as it is now has been taken (a SIGHUP reload read it):
    /// a settle still under way reports nothing unless it changes again.
    pub fn taken(&self) {
        *lock(&self.last) = stamp(&self.file);
    }
}

fn lock(m: &Mutex<Option<Stamp>>) -> std::sync::MutexGuard<'_, Option<Stamp>> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Watches `path` through its directory, so that editors that replace the
/// file (write a temp file, rename it over) are seen too. `seen` is the
/// file as the caller last read it: if it differs already (an edit landed
/// between that read and this watch), a change is reported once the file
/// settles. `None`: the file as it is now.
pub fn watch_file(path: &Path, seen: Option<Option<Stamp>>) -> Result<FileWatch, String> {
    use notify::{RecursiveMode, Watcher};
    let name = path
        .file_name()
        .ok_or_else(|| format!("{} names no file", path.display()))?
        .to_owned();
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_owned(),
        _ => PathBuf::from("."),
    };
    let file = dir.join(&name);
    let (raw_tx, raw_rx) = mpsc::channel::<()>();
    let mut watcher =
        notify::recommended_watcher(move |ev: notify::Result<notify::Event>| match ev {
            Ok(ev) if is_write_to(&ev, &name) => {
                let _ = raw_tx.send(());
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "file watch error; SIGHUP still reloads"),
        })
        .map_err(|e| format!("file watch unavailable: {e}"))?;
    watcher
        .watch(&dir, RecursiveMode::NonRecursive)
        .map_err(|e| format!("cannot watch {}: {e}", dir.display()))?;
    let now = stamp(&file);
    let seen = seen.unwrap_or(now);
    let last = Arc::new(Mutex::new(seen));
    let (tx, changes) = tokio::sync::mpsc::unbounded_channel();
    if seen != now {
        // An edit landed between the caller's read and this watch: report
        // it (it has had time to settle while the daemon started).
        *lock(&last) = now;
        let _ = tx.send(());
    }
    let (f, l) = (file.clone(), last.clone());
    std::thread::Builder::new()
        .name("syncd-file-watch".into())
        .spawn(move || settle_loop(raw_rx, tx, f, l))
        .map_err(|e| format!("file watch thread: {e}"))?;
    Ok(FileWatch {
        _watcher: watcher,
        file,
        last,
        changes,
    })
}

/// Whether `ev` writes, creates, replaces or removes the file `name`
/// (opens, reads and closes without writing do not count).
fn is_write_to(ev: &notify::Event, name: &std::ffi::OsStr) -> bool {
    use notify::event::{AccessKind, AccessMode, EventKind};
    let writes = match ev.kind {
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
        EventKind::Access(_) => false,
        _ => true,
    };
    writes && ev.paths.iter().any(|p| p.file_name() == Some(name))
}

/// Waits for a write, then for [`SETTLE`] without one, then reports the
/// change if the file differs from the last one reported. Ends when the
/// watcher (the sender) is dropped.
fn settle_loop(
    raw: mpsc::Receiver<()>,
    tx: tokio::sync::mpsc::UnboundedSender<()>,
    file: PathBuf,
    last: Arc<Mutex<Option<Stamp>>>,
) {
    while raw.recv().is_ok() {
        loop {
            match raw.recv_timeout(SETTLE) {
                Ok(()) => continue,
                Err(mpsc::RecvTimeoutError::Timeout) => break,
                Err(mpsc::RecvTimeoutError::Disconnected) => return,
            }
        }
        let now = stamp(&file);
        let mut last = lock(&last);
        if *last != now {
            *last = now;
            if tx.send(()).is_err() {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn next(w: &mut FileWatch) {
        tokio::time::timeout(Duration::from_secs(60), w.changes.recv())
            .await
            .expect("no change reported")
            .expect("watch closed");
    }

    /// No change is reported for a while (three settle times).
    async fn none_for_a_while(w: &mut FileWatch, why: &str) {
        let r = tokio::time::timeout(SETTLE * 3, w.changes.recv()).await;
        assert!(r.is_err(), "a change was reported: {why}");
    }

    /// A file written in two parts is reported once the writes stop, with
    /// the whole content there.
    #[tokio::test]
    async fn a_change_is_reported_once_settled() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("daemon.toml");
        std::fs::write(&p, "a = 1\n").unwrap();
        let mut w = watch_file(&p, None).unwrap();
        std::fs::write(&p, "").unwrap();
        std::fs::write(&p, "a = 2\n").unwrap();
        next(&mut w).await;
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "a = 2\n");
    }

    /// Reads of the file, however frequent, neither count as a change nor
    /// hold back the report of a real one.
    #[tokio::test]
    async fn reads_neither_report_nor_postpone() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("daemon.toml");
        std::fs::write(&p, "a = 1\n").unwrap();
        let mut w = watch_file(&p, None).unwrap();
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (p2, s2) = (p.clone(), stop.clone());
        let reader = std::thread::spawn(move || {
            while !s2.load(std::sync::atomic::Ordering::SeqCst) {
                let _ = std::fs::read_to_string(&p2);
                std::thread::sleep(Duration::from_millis(50));
            }
        });
        none_for_a_while(&mut w, "reads alone").await;
        // A write while the reads go on: reported, reads or not.
        std::fs::write(&p, "a = 2\n").unwrap();
        next(&mut w).await;
        stop.store(true, std::sync::atomic::Ordering::SeqCst);
        reader.join().unwrap();
    }

    /// An edit between the caller's read and the watch's start is not
    /// lost: a watch told what the caller saw reports it.
    #[tokio::test]
    async fn an_edit_before_the_watch_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("daemon.toml");
        std::fs::write(&p, "a = 1\n").unwrap();
        let seen = stamp(&p);
        std::fs::write(&p, "a = 22\n").unwrap();
        let mut w = watch_file(&p, Some(seen)).unwrap();
        next(&mut w).await;
    }

    /// A file taken by SIGHUP (`taken`) is not reported again when the
    /// settle time of the same edit ends.
    #[tokio::test]
    async fn a_taken_file_is_not_reported_again() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("daemon.toml");
        std::fs::write(&p, "a = 1\n").unwrap();
        let mut w = watch_file(&p, None).unwrap();
        std::fs::write(&p, "a = 2\n").unwrap();
        w.taken();
        none_for_a_while(&mut w, "the edit SIGHUP took").await;
        std::fs::write(&p, "a = 3\n").unwrap();
        next(&mut w).await;
    }
}
