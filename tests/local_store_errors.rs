//! A local store that fails during sync is a state of its own, never shown
//! as backend backoff (issue 19, item 1): against the real daemon, a full
//! disk under data_dir makes the state `local_store_error`, whose hint
//! names the data_dir and what to do, `status --check` exits 18, the
//! metrics count it, and sync resumes by itself once the disk has room.
//! The full disk is a small tmpfs, as in `tests/storage_faults.rs`: it
//! needs root and skips with a note otherwise.

mod common;

use std::path::PathBuf;
use std::process::Command;

use common::{eventually, is_root, mount_tmpfs, Backend, Daemon};

/// A daemon without a backend on a 16 MiB tmpfs data_dir that also holds a
/// 12 MiB filler file; unmounted on drop. (Removing the filler must leave
/// more room than redb grows its file by in one step, or the store is
/// full again at once.)
struct SmallDisk {
    d: Daemon,
    filler: PathBuf,
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        self.d.kill9();
        let _ = Command::new("umount").arg(&self.d.data_dir).status();
    }
}

fn small_disk() -> Option<SmallDisk> {
    if !is_root() {
        println!("note: skipping local-store-error test: needs root to mount a tmpfs");
        return None;
    }
    let mut d = Daemon::start("");
    d.stop();
    std::fs::remove_dir_all(&d.data_dir).expect("remove data_dir");
    std::fs::create_dir(&d.data_dir).expect("create data_dir");
    if !mount_tmpfs(&d.data_dir, "size=16m,mode=0700") {
        println!("note: skipping local-store-error test: cannot mount a tmpfs here");
        return None;
    }
    let filler = d.data_dir.join("filler");
    std::fs::write(&filler, vec![0u8; 12 * 1024 * 1024]).expect("filler");
    d.spawn();
    Some(SmallDisk { d, filler })
}

/// Writes until a put fails for want of space; returns how many were
/// acknowledged.
fn fill(d: &Daemon) -> usize {
    let pad = "y".repeat(64 * 1024);
    for i in 0..5000 {
        let doc = format!("{{\"pad\":\"{pad}\"}}");
        let o = d.cli(&["put", "todos", "--id", &format!("f{i}"), &doc]);
        if !o.status.success() {
            let err = String::from_utf8_lossy(&o.stderr);
            assert!(err.contains("disk full"), "not a full disk: {err}");
            return i;
        }
    }
    panic!("the 16 MiB tmpfs never filled up");
}

/// The value of the series `name` (exact, labels included) in `syncd metrics`.
fn metric(d: &Daemon, name: &str) -> f64 {
    let text = d.ok(&["metrics"]);
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("{name} missing in\n{text}"))
}

const STATE_GAUGE: &str = "syncd_backend_state{state=\"local_store_error\"}";

#[test]
fn full_local_disk_is_local_store_error_and_recovers() {
    let Some(s) = small_disk() else { return };
    let acked = fill(&s.d);
    assert!(acked > 0);
    // A backend now: the worker's first rounds meet the full disk.
    let backend = Backend::start(&[]);
    s.d.write_config(&format!("[backend]\nurl = {:?}\n", backend.url()));
    s.d.signal(libc::SIGHUP);
    eventually(30, "state local_store_error", || {
        s.d.status()["state"] == "local_store_error"
    });
    let st = s.d.status();
    let hints = st["hints"].to_string();
    let data_dir = s.d.data_dir.display().to_string();
    assert!(hints.contains(&data_dir), "data_dir not named: {hints}");
    assert!(
        hints.contains("free space") && hints.contains("syncd check"),
        "no advice: {hints}"
    );
    assert!(
        st["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("local store")),
        "{st}"
    );
    let check = s.d.cli(&["status", "--check"]);
    assert_eq!(check.status.code(), Some(18), "{check:?}");
    assert!(metric(&s.d, "syncd_local_store_errors_total") >= 1.0);
    assert_eq!(metric(&s.d, STATE_GAUGE), 1.0);

    std::fs::remove_file(&s.filler).expect("remove filler");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let st = s.d.status();
        if st["state"] == "online" && st["queue_depth"] == 0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "not online with every write pushed after 60 s: {st}\nlog:\n{}",
            s.d.log_text()
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert_eq!(metric(&s.d, STATE_GAUGE), 0.0);
    assert_eq!(backend.records().len(), acked);
    assert_eq!(s.d.cli(&["status", "--check"]).status.code(), Some(0));
}
