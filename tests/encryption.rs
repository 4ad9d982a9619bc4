//! Encryption at rest end to end (issue 24): real daemons on a sealed
//! store. No document or attachment text lies in the data dir; a wrong or
//! missing key is refused by name and changes nothing; `rekey` and
//! `store encrypt` survive kill -9 at random points and finish when run
//! again; a changed byte in an attachment file is caught.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{bin, Daemon};

const MARKER: &str = "zebra-marker-5150";

fn s(p: &Path) -> String {
    p.display().to_string()
}

/// `syncd key generate PATH`.
fn generate(path: &Path) {
    let o = Command::new(bin())
        .args(["key", "generate", &s(path)])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", common::output_text(&o));
}

fn sealed(key: &Path) -> String {
    format!("[store]\nencryption = \"on\"\nkey_file = {:?}\n", s(key))
}

/// Every file under `dir`, recursively.
fn files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_owned()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                todo.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out
}

/// Files under `dir` that hold `needle`.
fn holding(dir: &Path, needle: &str) -> Vec<PathBuf> {
    files(dir)
        .into_iter()
        .filter(|p| {
            let b = std::fs::read(p).unwrap_or_default();
            b.windows(needle.len()).any(|w| w == needle.as_bytes())
        })
        .collect()
}

/// An attachment whose text repeats the marker, and some records.
fn write_data(d: &Daemon, n: usize) -> PathBuf {
    let file = d.dir.path().join("note.txt");
    std::fs::write(&file, format!("{MARKER} attachment text\n").repeat(20_000)).unwrap();
    for i in 0..n {
        let id = format!("n{i}");
        let doc = format!("{{\"text\":\"{MARKER} {i}\"}}");
        d.ok(&["put", "notes", "--id", &id, &doc]);
    }
    d.ok(&[
        "patch",
        "notes",
        "n0",
        &format!("{{\"more\":\"{MARKER} patched\"}}"),
    ]);
    d.ok(&["delete", "notes", "n1"]);
    d.ok(&["attach", "notes", "n2", "note.txt", &s(&file)]);
    file
}

fn read_attachment(d: &Daemon, id: &str) -> Vec<u8> {
    let out = d.dir.path().join("out.txt");
    let _ = std::fs::remove_file(&out);
    d.ok(&["attachment", "notes", id, "note.txt", "-o", &s(&out)]);
    std::fs::read(out).unwrap()
}

#[test]
fn no_document_or_attachment_text_lies_in_the_data_dir() {
    let keys = tempfile::tempdir().unwrap();
    let key = keys.path().join("store.key");
    generate(&key);
    let mut d = Daemon::start(&sealed(&key));
    let file = write_data(&d, 50);
    assert_eq!(read_attachment(&d, "n2"), std::fs::read(&file).unwrap());
    d.ok(&["check", "--config", &s(&d.config)]);
    let status = d.status();
    let enc = status["encryption"].as_str().unwrap_or_default().to_owned();
    assert!(enc.starts_with("on (key "), "{status}");
    d.stop();
    let found = holding(&d.data_dir, MARKER);
    assert!(found.is_empty(), "plain text in {found:?}");
    assert!(!files(&d.data_dir).is_empty());
    // The key never shows in the log.
    let secret = std::fs::read(&key).unwrap();
    let hex: String = secret.iter().map(|b| format!("{b:02x}")).collect();
    assert!(!d.log_text().contains(&hex));
    d.spawn();
    assert!(d.ok(&["get", "notes", "n0"]).contains("patched"));
    assert_eq!(read_attachment(&d, "n2"), std::fs::read(&file).unwrap());
}

/// The daemon's exit and its log, when it must refuse to start.
fn refused(d: &mut Daemon) -> String {
    d.kill9();
    let o = Command::new(&d.bin)
        .args(["run", "--config", &s(&d.config)])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!o.status.success(), "started: {}", common::output_text(&o));
    common::output_text(&o)
}

#[test]
fn a_wrong_or_missing_key_is_refused_and_changes_nothing() {
    let keys = tempfile::tempdir().unwrap();
    let (key, other) = (keys.path().join("a.key"), keys.path().join("b.key"));
    generate(&key);
    generate(&other);
    let mut d = Daemon::start(&sealed(&key));
    write_data(&d, 5);
    d.stop();
    let store = d.data_dir.join("syncd.redb");
    let before = std::fs::read(&store).unwrap();

    d.write_config(&sealed(&other));
    let e = refused(&mut d);
    assert!(
        e.contains("is encrypted with key") && e.contains(&s(&store)),
        "{e}"
    );
    d.write_config(&sealed(&keys.path().join("missing.key")));
    let e = refused(&mut d);
    assert!(e.contains("missing.key"), "{e}");
    std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    d.write_config(&sealed(&key));
    let e = refused(&mut d);
    assert!(e.contains("chmod 600"), "{e}");
    std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    assert!(
        std::fs::read(&store).unwrap() == before,
        "the store was changed"
    );
    // Encryption off on an encrypted store: refused too, as untouched.
    d.write_config("");
    let e = refused(&mut d);
    assert!(e.contains("encryption is \"off\""), "{e}");
    assert!(
        std::fs::read(&store).unwrap() == before,
        "the store was changed"
    );
    assert!(
        d.data_dir.join("syncd.redb.clean").exists(),
        "the clean mark was used up"
    );

    d.write_config(&sealed(&other));
    let o = d.cli(&["check", "--config", &s(&d.config)]);
    assert!(!o.status.success());
    assert!(common::output_text(&o).contains("is encrypted with key"));
    d.write_config(&sealed(&key));
    d.spawn();
    assert!(d.ok(&["get", "notes", "n0"]).contains("patched"));
}

/// Runs `syncd ARGS` and kills it after `after`; returns whether it had
/// finished by itself first.
fn run_killed(args: &[&str], after: Duration) -> bool {
    let mut c = Command::new(bin())
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(after);
    let done = matches!(c.try_wait(), Ok(Some(_)));
    let _ = c.kill();
    let _ = c.wait();
    done
}

fn run_ok(args: &[&str]) -> String {
    let o = Command::new(bin()).args(args).output().unwrap();
    assert!(
        o.status.success(),
        "syncd {args:?}: {}",
        common::output_text(&o)
    );
    common::output_text(&o)
}

/// Kills `args` at points spread over its run (growing delays, with
/// seeded jitter) until a run finishes by itself, checking after each
/// kill that the store is whole (`sound`); then runs it once more to the
/// end. A slow machine gets more kills, a fast one fewer; none needs a
/// given speed.
fn kill_at_random(args: &[&str], seed: u64, sound: impl Fn() -> bool) {
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut killed = 0;
    for step in 0..16u64 {
        let ms = step * step * 3 + rng.u64(0..=10);
        if run_killed(args, Duration::from_millis(ms)) {
            break;
        }
        killed += 1;
        assert!(sound(), "the store is not whole after a kill at {ms} ms");
    }
    eprintln!("syncd {args:?}: killed {killed} times, then run to the end");
    run_ok(args);
}

/// A copy of `d`'s config with `extra`, as `name` in its dir.
fn config_copy(d: &Daemon, extra: &str, name: &str) -> String {
    d.write_config(extra);
    let p = d.dir.path().join(name);
    std::fs::copy(&d.config, &p).unwrap();
    s(&p)
}

/// Whether the stopped daemon's store passes `syncd check` under one of
/// `configs` (the one whose key it is sealed with now).
fn sound_under_one(configs: &[String]) -> bool {
    configs.iter().any(|c| {
        Command::new(bin())
            .args(["check", "--config", c])
            .output()
            .is_ok_and(|o| o.status.success())
    })
}

/// Runs `args` again and again with `SYNCD_TEST_ABORT_AFTER_STEPS=1`
/// (`src/store/crypt/fault.rs`): each run makes one durable step of the
/// conversion and aborts as kill -9 would, so every state a kill can
/// leave between two steps is visited and checked with `sound`. Returns
/// how many runs aborted before one finished.
fn kill_after_every_step(args: &[&str], sound: impl Fn() -> bool) -> usize {
    use std::os::unix::process::ExitStatusExt;
    for aborted in 0..500 {
        let o = Command::new(bin())
            .args(args)
            .env("SYNCD_TEST_ABORT_AFTER_STEPS", "1")
            .output()
            .unwrap();
        if o.status.success() {
            return aborted;
        }
        assert_eq!(
            o.status.signal(),
            Some(6),
            "syncd {args:?} failed instead of aborting: {}",
            common::output_text(&o)
        );
        assert!(sound(), "the store is not whole after step {}", aborted + 1);
    }
    panic!("syncd {args:?} never finished");
}

fn several_files(d: &Daemon) {
    for i in 0..4 {
        let f = d.dir.path().join(format!("f{i}.bin"));
        std::fs::write(&f, format!("{MARKER} file {i} ").repeat(100_000)).unwrap();
        d.ok(&[
            "attach",
            "notes",
            &format!("n{}", 10 + i),
            "note.txt",
            &s(&f),
        ]);
    }
}

#[test]
fn rekey_survives_kills_at_random_points_and_after_every_step() {
    let keys = tempfile::tempdir().unwrap();
    let (old, new) = (keys.path().join("old.key"), keys.path().join("new.key"));
    generate(&old);
    generate(&new);
    let mut d = Daemon::start(&sealed(&old));
    let file = write_data(&d, 300);
    several_files(&d);
    d.stop();
    let both = [
        config_copy(&d, &sealed(&old), "old.toml"),
        config_copy(&d, &sealed(&new), "new.toml"),
    ];
    let cfg = s(&d.config);
    d.write_config(&sealed(&old));
    let args = ["rekey", "--config", &cfg, "--new-key-file", &s(&new)];
    kill_at_random(&args, 24, || sound_under_one(&both));
    // Then to a third key, one durable step a run: the store file, five
    // attachment files, the mark.
    let third = keys.path().join("third.key");
    generate(&third);
    let both = [
        both[1].clone(),
        config_copy(&d, &sealed(&third), "third.toml"),
    ];
    d.write_config(&sealed(&new));
    let args = ["rekey", "--config", &cfg, "--new-key-file", &s(&third)];
    let steps = kill_after_every_step(&args, || sound_under_one(&both));
    assert!(steps >= 7, "only {steps} steps");
    for k in [&old, &new] {
        d.write_config(&sealed(k));
        let e = refused(&mut d);
        assert!(e.contains("is encrypted with key"), "{e}");
    }
    d.write_config(&sealed(&third));
    d.spawn();
    assert_eq!(read_attachment(&d, "n2"), std::fs::read(&file).unwrap());
    for i in 0..4 {
        let out = d.dir.path().join("o.bin");
        d.ok(&[
            "attachment",
            "notes",
            &format!("n{}", 10 + i),
            "note.txt",
            "-o",
            &s(&out),
        ]);
        assert_eq!(
            std::fs::read(&out).unwrap(),
            std::fs::read(d.dir.path().join(format!("f{i}.bin"))).unwrap()
        );
    }
    assert_eq!(d.json_lines(&["list", "notes"]).len(), 299);
    d.ok(&["check", "--config", &s(&d.config)]);
    d.stop();
    assert!(holding(&d.data_dir, MARKER).is_empty());
}

#[test]
fn store_encrypt_survives_a_kill_after_every_step_and_decrypt_at_random_points() {
    let keys = tempfile::tempdir().unwrap();
    let key = keys.path().join("store.key");
    generate(&key);
    let mut d = Daemon::start("");
    let file = write_data(&d, 300);
    several_files(&d);
    d.stop();
    assert!(!holding(&d.data_dir, MARKER).is_empty());
    d.write_config(&sealed(&key));
    let e = refused(&mut d);
    assert!(e.contains("syncd store encrypt"), "{e}");
    let both = [
        config_copy(&d, "", "plain.toml"),
        config_copy(&d, &sealed(&key), "sealed.toml"),
    ];
    let cfg = s(&d.config);
    // One durable step a run: the store file, five attachment files, the
    // mark.
    let steps = kill_after_every_step(&["store", "encrypt", "--config", &cfg], || {
        sound_under_one(&both)
    });
    assert!(steps >= 7, "only {steps} steps");
    let left = holding(&d.data_dir, MARKER);
    assert!(left.is_empty(), "plain text left in {left:?}");
    d.spawn();
    assert_eq!(read_attachment(&d, "n2"), std::fs::read(&file).unwrap());
    assert_eq!(d.json_lines(&["list", "notes"]).len(), 299);
    d.ok(&["check", "--config", &s(&d.config)]);
    d.stop();

    kill_at_random(&["store", "decrypt", "--config", &cfg], 8, || {
        sound_under_one(&both)
    });
    d.write_config("");
    d.spawn();
    assert_eq!(read_attachment(&d, "n2"), std::fs::read(&file).unwrap());
    assert_eq!(d.json_lines(&["list", "notes"]).len(), 299);
    d.ok(&["check", "--config", &s(&d.config)]);
}

#[test]
fn a_changed_byte_in_an_attachment_file_is_caught() {
    let keys = tempfile::tempdir().unwrap();
    let key = keys.path().join("store.key");
    generate(&key);
    let mut d = Daemon::start(&sealed(&key));
    let file = write_data(&d, 3);
    d.stop();
    let blob = files(&d.data_dir.join("blobs"))
        .into_iter()
        .find(|p| p.file_name().is_some_and(|n| n.len() == 64))
        .expect("the attachment's file");
    let mut bytes = std::fs::read(&blob).unwrap();
    let at = bytes.len() / 2;
    bytes[at] ^= 1;
    std::fs::write(&blob, bytes).unwrap();
    d.spawn();
    let out = d.dir.path().join("out.txt");
    let o = d.cli(&["attachment", "notes", "n2", "note.txt", "-o", &s(&out)]);
    assert!(!o.status.success());
    let text = common::output_text(&o);
    assert!(text.contains("authentication"), "{text}");
    // The daemon keeps serving.
    assert!(d.ok(&["get", "notes", "n0"]).contains("patched"));
    let _ = file;
}

#[test]
fn a_changed_value_in_the_store_stops_writes_and_shows_in_status() {
    let keys = tempfile::tempdir().unwrap();
    let key = keys.path().join("store.key");
    generate(&key);
    let mut d = Daemon::start(&sealed(&key));
    write_data(&d, 3);
    d.stop();
    // One byte of n0's sealed document changes; redb's checksums stay
    // valid (the change goes through redb), so only the seal can tell.
    {
        const RECORDS: redb::TableDefinition<(&str, &str), &[u8]> =
            redb::TableDefinition::new("records");
        use redb::ReadableTable;
        let db = redb::Database::create(d.data_dir.join("syncd.redb")).unwrap();
        let txn = db.begin_write().unwrap();
        {
            let mut t = txn.open_table(RECORDS).unwrap();
            let mut v = t.get(("notes", "n0")).unwrap().unwrap().value().to_vec();
            let at = v.len() - 20;
            v[at] ^= 0x10;
            t.insert(("notes", "n0"), v.as_slice()).unwrap();
        }
        txn.commit().unwrap();
    }
    d.spawn();
    let o = d.cli(&["get", "notes", "n0"]);
    assert!(!o.status.success());
    let text = common::output_text(&o);
    assert!(text.contains("fails authentication"), "{text}");
    // The store is taken for damaged: writes stop, status says so.
    let status = d.status();
    assert!(status["store_damaged"].is_string(), "{status}");
    let o = d.cli(&["put", "notes", "--id", "n9", "{\"a\":1}"]);
    assert!(!o.status.success(), "{}", common::output_text(&o));
    assert_eq!(d.cli(&["status", "--check"]).status.code(), Some(17));
    let o = d.cli(&["check", "--config", &s(&d.config)]);
    assert_eq!(o.status.code(), Some(5), "{}", common::output_text(&o));
}
