//! Storage faults against the real daemon: a damaged store file stops
//! startup without being touched, an unwritable data_dir is named, and a
//! full disk fails the write clearly without losing what was acknowledged.
//! Mount-based cases need root and skip with a note otherwise.

mod common;

use std::path::Path;
use std::process::{Command, Output};

use common::{bin, is_root, mount_tmpfs, output_text, umount, Daemon};

fn run_fg(config: &Path) -> Output {
    Command::new(bin())
        .args(["run", "--config"])
        .arg(config)
        .output()
        .expect("run syncd")
}

/// A stopped daemon's dirs holding `n` acknowledged records.
fn store_with_records(n: usize) -> Daemon {
    let mut d = Daemon::start("");
    for i in 0..n {
        d.ok(&[
            "put",
            "todos",
            "--id",
            &format!("r{i}"),
            &format!("{{\"i\":{i},\"pad\":\"{}\"}}", "x".repeat(200)),
        ]);
    }
    d.stop();
    d
}

fn damaged_refuses_start(damage: impl Fn(&Path)) {
    let d = store_with_records(300);
    let file = d.data_dir.join("syncd.redb");
    damage(&file);
    let before = std::fs::read(&file).unwrap();
    let o = run_fg(&d.config);
    let t = output_text(&o);
    assert!(!o.status.success(), "started on a damaged store: {t}");
    assert!(
        t.contains(&file.display().to_string()),
        "file not named: {t}"
    );
    assert!(
        t.contains("damaged") && t.contains("backup") && t.contains("move it aside"),
        "{t}"
    );
    assert_eq!(
        std::fs::read(&file).unwrap(),
        before,
        "the damaged file was changed"
    );
}

#[test]
fn truncated_store_refuses_to_start() {
    damaged_refuses_start(|f| {
        let len = std::fs::metadata(f).unwrap().len();
        let file = std::fs::OpenOptions::new().write(true).open(f).unwrap();
        file.set_len(len / 2).unwrap();
    });
}

#[test]
fn overwritten_store_refuses_to_start() {
    damaged_refuses_start(|f| {
        use std::io::{Seek, SeekFrom, Write};
        let len = std::fs::metadata(f).unwrap().len();
        let mut file = std::fs::OpenOptions::new().write(true).open(f).unwrap();
        for at in [len / 3, len / 2, 2 * len / 3] {
            file.seek(SeekFrom::Start(at)).unwrap();
            file.write_all(&[0xA5; 512]).unwrap();
        }
    });
}

#[test]
fn unwritable_data_dir_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    let mounted = is_root() && mount_tmpfs(&data, "ro,size=1m");
    if !mounted {
        use std::os::unix::fs::PermissionsExt;
        if is_root() {
            println!("note: cannot mount a read-only tmpfs; skipping");
            return;
        }
        std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o500)).unwrap();
    }
    let cfg = dir.path().join("daemon.toml");
    std::fs::write(
        &cfg,
        format!(
            "[daemon]\nsocket = {:?}\ndata_dir = {data:?}\n",
            dir.path().join("s.sock")
        ),
    )
    .unwrap();
    let o = run_fg(&cfg);
    if mounted {
        umount(&data);
    }
    let t = output_text(&o);
    assert!(!o.status.success(), "{t}");
    assert!(
        t.contains(&format!("data_dir {} is not writable", data.display())),
        "{t}"
    );
}

/// Writes until the small tmpfs under data_dir is full; returns the ids
/// acknowledged and the failing write's output.
fn fill(d: &Daemon) -> (Vec<String>, Output) {
    let pad = "y".repeat(4000);
    let mut acked = Vec::new();
    for i in 0..5000 {
        let id = format!("f{i}");
        let o = d.cli(&[
            "put",
            "todos",
            "--id",
            &id,
            &format!("{{\"pad\":\"{pad}\"}}"),
        ]);
        if !o.status.success() {
            return (acked, o);
        }
        acked.push(id);
    }
    panic!("the 2 MiB tmpfs never filled up");
}

/// A daemon on a 2 MiB tmpfs data_dir that also holds a 512 KiB filler
/// file; the guard unmounts it.
struct SmallDisk {
    d: Daemon,
    filler: std::path::PathBuf,
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        self.d.kill9();
        umount(&self.d.data_dir);
    }
}

fn small_disk() -> Option<SmallDisk> {
    if !is_root() {
        println!("note: skipping disk-full test: needs root to mount a tmpfs");
        return None;
    }
    let mut d = Daemon::start("");
    d.stop();
    let _ = std::fs::remove_dir_all(&d.data_dir);
    std::fs::create_dir(&d.data_dir).unwrap();
    if !mount_tmpfs(&d.data_dir, "size=2m,mode=0700") {
        // Root without the right to mount (an unprivileged container).
        println!("note: skipping disk-full test: cannot mount a tmpfs here");
        return None;
    }
    let filler = d.data_dir.join("filler");
    std::fs::write(&filler, vec![0u8; 512 * 1024]).unwrap();
    d.spawn();
    Some(SmallDisk { d, filler })
}

/// The failing write says the disk is full; reads go on; nothing
/// acknowledged is lost; once space is back, a restart (what systemd's
/// Restart= gives) recovers the file and writes go on.
#[test]
fn disk_full_fails_the_write_clearly_and_loses_nothing() {
    let Some(mut s) = small_disk() else { return };
    let (acked, failed) = fill(&s.d);
    let t = output_text(&failed);
    assert!(t.contains("disk full"), "unclear error: {t}");
    assert!(!acked.is_empty());
    for id in &acked {
        s.d.ok(&["get", "todos", id]);
    }
    std::fs::remove_file(&s.filler).unwrap();
    s.d.restart();
    s.d.ok(&["put", "todos", "--id", "after", "{\"ok\":true}"]);
    for id in &acked {
        s.d.ok(&["get", "todos", id]);
    }
    assert_eq!(s.d.status()["queue_depth"], acked.len() + 1);
}

/// redb latches a failed commit's I/O error: every later write transaction
/// fails until the database is re-opened. The writer re-opens it once the
/// disk has room again, so writes resume without a restart.
#[test]
fn disk_full_writes_resume_without_restart() {
    let Some(s) = small_disk() else { return };
    let (acked, _) = fill(&s.d);
    std::fs::remove_file(&s.filler).unwrap();
    s.d.ok(&["put", "todos", "--id", "after", "{\"ok\":true}"]);
    for id in &acked {
        s.d.ok(&["get", "todos", id]);
    }
}
