//! When the daemon's start checks every page of the store, and `syncd
//! check`, against the real binary.
//!
//! Exists because the page check costs time that grows with the store: a
//! clean stop leaves a mark that lets the next start skip it, and anything
//! that may have changed the file since (a write by another program, a
//! copy put in its place, a kill -9) must bring the check back. Damage the
//! start's check finds, `syncd check` finds too, whether the daemon runs
//! or not, without changing the file.

mod common;

use std::path::{Path, PathBuf};
use std::process::Output;

use common::{output_text, Daemon};

const SCAN_LINE: &str = "checked every page at open";
const SKIP_LINE: &str = "page check skipped";

fn store_file(d: &Daemon) -> PathBuf {
    d.data_dir.join("syncd.redb")
}

fn with_records(n: usize) -> Daemon {
    let d = Daemon::start("");
    for i in 0..n {
        d.ok(&[
            "put",
            "todos",
            "--id",
            &format!("r{i}"),
            &format!("{{\"i\":{i},\"pad\":\"{}\"}}", "x".repeat(200)),
        ]);
    }
    d
}

/// How many starts so far checked every page, and how many skipped it.
fn scans(d: &Daemon) -> (usize, usize) {
    let log = d.log_text();
    (
        log.matches(SCAN_LINE).count(),
        log.matches(SKIP_LINE).count(),
    )
}

fn open_check(d: &Daemon) -> String {
    d.status()["store_open_check"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

/// Stops `d`, changes its store with `change`, starts it again: whether
/// that start checked every page, after a first clean restart that must
/// not.
fn start_after(d: &mut Daemon, change: impl Fn(&Path)) -> String {
    d.stop();
    change(&store_file(d));
    let before = scans(d);
    d.spawn();
    let after = scans(d);
    assert_eq!(
        after.0 + after.1,
        before.0 + before.1 + 1,
        "one open logged"
    );
    open_check(d)
}

#[test]
fn a_clean_stop_then_start_does_not_scan() {
    let mut d = with_records(50);
    let first = scans(&d);
    assert_eq!(first, (1, 0), "a new store is checked (it has no mark)");
    assert!(open_check(&d).starts_with("full"), "{}", open_check(&d));
    let seen = start_after(&mut d, |_| {});
    assert!(seen.starts_with("skipped"), "{seen}");
    assert_eq!(scans(&d), (1, 1), "{}", d.log_text());
    assert_eq!(d.json(&["get", "todos", "r7"])["data"]["i"], 7);
    let metrics = d.ok(&["metrics"]);
    assert!(
        metrics.contains("syncd_store_open_check_seconds 0.0"),
        "{metrics}"
    );
}

#[test]
fn a_touch_a_copy_or_a_kill9_brings_the_scan_back() {
    let mut d = with_records(50);
    // touch: nothing but the times move.
    let seen = start_after(&mut d, |f| {
        let st = std::process::Command::new("touch").arg(f).status().unwrap();
        assert!(st.success());
    });
    assert!(
        seen.starts_with("full") && seen.contains("changed"),
        "{seen}"
    );
    // A copy put in its place (a restore from a backup): another inode.
    d.restart();
    let seen = start_after(&mut d, |f| {
        let copy = f.with_extension("copy");
        std::fs::copy(f, &copy).unwrap();
        std::fs::rename(&copy, f).unwrap();
    });
    assert!(
        seen.starts_with("full") && seen.contains("changed"),
        "{seen}"
    );
    // kill -9: no mark at all.
    d.kill9();
    let before = scans(&d);
    d.spawn();
    assert_eq!(scans(&d).0, before.0 + 1, "{}", d.log_text());
    let seen = open_check(&d);
    assert!(seen.contains("no clean-shutdown mark"), "{seen}");
    assert_eq!(d.json(&["get", "todos", "r49"])["data"]["i"], 49);
}

#[test]
fn kill9_during_writes_then_a_start_keeps_every_acknowledged_write() {
    let mut d = Daemon::start("");
    let writers: Vec<_> = (0..4)
        .map(|w| {
            let (bin, socket) = (d.bin.clone(), d.socket.clone());
            std::thread::spawn(move || {
                let mut acked = Vec::new();
                for i in 0.. {
                    let id = format!("w{w}-{i}");
                    let o = std::process::Command::new(&bin)
                        .arg("--socket")
                        .arg(&socket)
                        .args(["put", "todos", "--id", &id, "{\"n\":1}"])
                        .output()
                        .unwrap();
                    if !o.status.success() {
                        return acked;
                    }
                    acked.push(id);
                }
                acked
            })
        })
        .collect();
    // Wait for writes to land, by watching the queue (no clock).
    common::eventually(30, "writes queued", || {
        d.status()["queue_depth"].as_u64().unwrap_or(0) >= 40
    });
    d.kill9();
    let acked: Vec<String> = writers
        .into_iter()
        .flat_map(|w| w.join().unwrap())
        .collect();
    d.spawn();
    assert!(open_check(&d).contains("no clean-shutdown mark"));
    for id in &acked {
        assert!(
            d.cli(&["get", "todos", id]).status.success(),
            "acknowledged {id} lost"
        );
    }
    assert!(d.status()["queue_depth"].as_u64().unwrap() >= acked.len() as u64);
}

/// `syncd check --config` against the stopped daemon's store.
fn check_stopped(d: &Daemon) -> Output {
    std::process::Command::new(&d.bin)
        .args(["check", "--config"])
        .arg(&d.config)
        .output()
        .unwrap()
}

fn overwrite_middle(f: &Path) {
    use std::io::{Seek, SeekFrom, Write};
    let len = std::fs::metadata(f).unwrap().len();
    let mut file = std::fs::OpenOptions::new().write(true).open(f).unwrap();
    for at in [len / 3, len / 2, 2 * len / 3] {
        file.seek(SeekFrom::Start(at)).unwrap();
        file.write_all(&[0xA5; 512]).unwrap();
    }
}

fn truncate_half(f: &Path) {
    let len = std::fs::metadata(f).unwrap().len();
    let file = std::fs::OpenOptions::new().write(true).open(f).unwrap();
    file.set_len(len / 2).unwrap();
}

#[test]
fn check_passes_a_sound_store_running_or_stopped_and_changes_nothing() {
    let mut d = with_records(300);
    let running = d.cli(&["check", "--config", &d.config.display().to_string()]);
    assert!(running.status.success(), "{}", output_text(&running));
    assert!(
        output_text(&running).contains("300 records"),
        "{}",
        output_text(&running)
    );
    assert!(
        d.log_text().contains("store checked on request"),
        "the daemon ran it"
    );
    d.ok(&["put", "todos", "--id", "after-check", "{}"]);
    d.stop();
    let file = store_file(&d);
    let before = std::fs::read(&file).unwrap();
    // A store copied here without its lock file: the check creates the
    // lock (0600) and holds it, so no daemon can start under it.
    let lock = d.data_dir.join("syncd.lock");
    std::fs::remove_file(&lock).unwrap();
    let stopped = check_stopped(&d);
    assert!(stopped.status.success(), "{}", output_text(&stopped));
    assert!(
        output_text(&stopped).contains("301 records"),
        "{}",
        output_text(&stopped)
    );
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&lock)
            .expect("lock file")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    assert_eq!(
        std::fs::read(&file).unwrap(),
        before,
        "check changed the store"
    );
    // A check reads the file; it leaves the clean-shutdown mark alone.
    d.spawn();
    assert!(open_check(&d).starts_with("skipped"), "{}", open_check(&d));
}

#[test]
fn check_finds_what_the_start_refuses() {
    for (what, damage) in [
        ("overwritten", overwrite_middle as fn(&Path)),
        ("truncated", truncate_half),
    ] {
        let mut d = with_records(300);
        d.stop();
        let file = store_file(&d);
        damage(&file);
        let before = std::fs::read(&file).unwrap();
        let o = check_stopped(&d);
        let t = output_text(&o);
        assert_eq!(o.status.code(), Some(5), "{what}: {t}");
        assert!(t.contains("problem") && t.contains("backup"), "{what}: {t}");
        assert_eq!(std::fs::read(&file).unwrap(), before, "{what}: changed");
        let start = std::process::Command::new(&d.bin)
            .args(["run", "--config"])
            .arg(&d.config)
            .output()
            .unwrap();
        assert!(
            !start.status.success(),
            "{what}: started: {}",
            output_text(&start)
        );
        assert!(
            output_text(&start).contains("damaged"),
            "{what}: {}",
            output_text(&start)
        );
    }
}
