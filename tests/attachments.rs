//! Attachments end to end (issue 23): real daemons, a real reference
//! backend, and a proxy that counts, holds, cuts and corrupts blob
//! transfers (tests/common_blob). A file attached on one device is
//! uploaded once, before the op that references it, and downloaded by the
//! other (eagerly, or on first read); an upload survives kill -9 and a
//! download survives a cut; corrupt content is never stored; the cache
//! bound evicts; bad input gets a clear error.

mod common;
mod common_blob;

use std::path::{Path, PathBuf};

use common::{eventually, Backend, Daemon};
use common_blob::BlobProxy;
use serde_json::Value;

const MIB: usize = 1 << 20;

fn device(url: &str, extra: &str) -> Daemon {
    Daemon::start(&format!(
        "[backend]\nurl = {url:?}\ntimeout_ms = 5000\n[sync]\npull_interval_s = 1\nbackoff_initial_ms = 100\nbackoff_max_ms = 1000\n{extra}"
    ))
}

/// A file of `len` pseudo-random bytes (seeded: each test's are its own).
fn file(d: &Daemon, name: &str, len: usize, seed: u64) -> PathBuf {
    let mut rng = fastrand::Rng::with_seed(seed);
    let bytes: Vec<u8> = (0..len).map(|_| rng.u8(..)).collect();
    let p = d.dir.path().join(name);
    std::fs::write(&p, bytes).expect("write file");
    p
}

fn s(p: &Path) -> String {
    p.display().to_string()
}

fn get(d: &Daemon, coll: &str, id: &str) -> Value {
    d.json(&["get", coll, id])
}

/// The state of attachment `name` as `get` shows it.
fn state(d: &Daemon, coll: &str, id: &str, name: &str) -> Option<String> {
    let o = d.cli(&["get", coll, id]);
    let v: Value = serde_json::from_slice(&o.stdout).ok()?;
    v["attachments"]
        .as_array()?
        .iter()
        .find(|a| a["name"] == name)
        .and_then(|a| a["state"].as_str().map(str::to_owned))
}

fn read_out(d: &Daemon, coll: &str, id: &str, name: &str) -> Vec<u8> {
    let out = d.dir.path().join(format!("out-{name}"));
    d.ok(&["attachment", coll, id, name, "-o", &s(&out)]);
    std::fs::read(out).expect("read output")
}

/// Complete local content files of a daemon (not temp, part or marker).
fn local_blobs(d: &Daemon) -> Vec<(String, u64)> {
    let Ok(rd) = std::fs::read_dir(d.data_dir.join("blobs")) else {
        return Vec::new();
    };
    rd.flatten()
        .filter_map(|e| {
            let n = e.file_name().to_string_lossy().into_owned();
            (n.len() == 64).then(|| (n, e.metadata().map(|m| m.len()).unwrap_or(0)))
        })
        .collect()
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

fn synced(d: &Daemon) {
    d.ok(&["sync", "--wait", "--timeout", "60"]);
}

#[test]
fn a_file_travels_with_its_record_and_is_uploaded_once() {
    let backend = Backend::start(&[]);
    let proxy = BlobProxy::start(&backend.addr);
    let a = device(&proxy.url(), "");
    let b = device(&proxy.url(), "");
    let f = file(&a, "photo.bin", 3 * MIB + 17, 1);
    a.ok(&["put", "notes", "--id", "n1", r#"{"t":1}"#]);
    a.ok(&["put", "notes", "--id", "n2", r#"{"t":2}"#]);
    a.ok(&[
        "attach",
        "notes",
        "n1",
        "photo.jpg",
        &s(&f),
        "--type",
        "image/jpeg",
        "--wait",
        "synced",
        "--timeout",
        "60",
    ]);
    // The same content on another record, and again under another name:
    // stored and uploaded once.
    a.ok(&[
        "attach",
        "notes",
        "n2",
        "copy.jpg",
        &s(&f),
        "--wait",
        "synced",
        "--timeout",
        "60",
    ]);
    a.ok(&[
        "attach",
        "notes",
        "n1",
        "again.jpg",
        &s(&f),
        "--wait",
        "synced",
        "--timeout",
        "60",
    ]);
    assert_eq!(proxy.put_bytes(), (3 * MIB + 17) as u64, "uploaded once");
    let metrics = a.ok(&["metrics"]);
    assert!(
        metrics.contains(&format!(
            "syncd_attachment_bytes_total{{direction=\"up\"}} {}",
            3 * MIB + 17
        )),
        "{metrics}"
    );
    assert_eq!(local_blobs(&a).len(), 1, "stored once");
    let rec = get(&a, "notes", "n1");
    let att = &rec["data"]["_attachments"]["photo.jpg"];
    assert_eq!(att["content_type"], "image/jpeg");
    assert_eq!(att["length"], 3 * MIB + 17);
    assert_eq!(
        state(&a, "notes", "n1", "photo.jpg").as_deref(),
        Some("synced")
    );

    // The other device downloads it eagerly, and reads it.
    eventually(60, "B has the content", || {
        state(&b, "notes", "n1", "photo.jpg").as_deref() == Some("synced")
    });
    assert_eq!(
        read_out(&b, "notes", "n1", "photo.jpg"),
        std::fs::read(&f).unwrap()
    );
    assert_eq!(
        read_out(&b, "notes", "n2", "copy.jpg"),
        std::fs::read(&f).unwrap()
    );

    // Detach is a write like any other; the content of the remaining
    // attachments stays.
    a.ok(&[
        "detach",
        "notes",
        "n1",
        "photo.jpg",
        "--wait",
        "synced",
        "--timeout",
        "60",
    ]);
    eventually(30, "B sees the detach", || {
        get(&b, "notes", "n1")["data"]["_attachments"]
            .get("photo.jpg")
            .is_none()
    });
    assert!(get(&b, "notes", "n1")["data"]["_attachments"]["again.jpg"].is_object());
}

#[test]
fn put_and_patch_keep_the_attachments_and_may_not_change_them() {
    let a = Daemon::start("");
    let f = file(&a, "x.bin", 1000, 2);
    a.ok(&["put", "docs", "--id", "d", r#"{"v":1}"#]);
    a.ok(&["attach", "docs", "d", "x", &s(&f)]);
    a.ok(&["put", "docs", "--id", "d", r#"{"v":2}"#]);
    let rec = get(&a, "docs", "d");
    assert_eq!(rec["data"]["v"], 2);
    assert!(rec["data"]["_attachments"]["x"].is_object(), "{rec}");
    // Sending them back unchanged is fine; changing them is refused.
    let same = rec["data"].to_string();
    a.ok(&["put", "docs", "--id", "d", &same]);
    let o = a.cli(&["patch", "docs", "d", r#"{"_attachments":{}}"#]);
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("bad_request") && err.contains("syncd attach"),
        "{err}"
    );
    // Unknown names are named.
    let o = a.cli(&["detach", "docs", "d", "nope"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("no attachment \"nope\""));
    let o = a.cli(&["attach", "docs", "missing", "x", &s(&f)]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("not_found"));
    assert_eq!(
        local_blobs(&a).len(),
        1,
        "nothing stored for a missing record"
    );
    // Local only: the content is here and was never sent.
    assert_eq!(state(&a, "docs", "d", "x").as_deref(), Some("local"));
    assert_eq!(read_out(&a, "docs", "d", "x"), std::fs::read(&f).unwrap());
}

#[test]
fn small_frames_empty_files_and_full_documents() {
    // Chunks fit a small frame limit, both ways.
    let backend = Backend::start(&[]);
    let a = device(&backend.url(), "");
    let b = Daemon::start(&format!(
        "max_frame_bytes = 65536\nmax_document_bytes = 600\n[backend]\nurl = {:?}\n[sync]\npull_interval_s = 1",
        backend.url()
    ));
    let f = file(&b, "f.bin", 300_000, 20);
    b.ok(&["put", "docs", "--id", "d", r#"{"v":1}"#]);
    b.ok(&[
        "attach",
        "docs",
        "d",
        "f",
        &s(&f),
        "--wait",
        "synced",
        "--timeout",
        "60",
    ]);
    assert_eq!(read_out(&b, "docs", "d", "f"), std::fs::read(&f).unwrap());
    // An empty file is an attachment like any other.
    let empty = file(&b, "empty.bin", 0, 21);
    b.ok(&[
        "attach",
        "docs",
        "d",
        "empty",
        &s(&empty),
        "--wait",
        "synced",
        "--timeout",
        "60",
    ]);
    eventually(60, "A has both", || {
        state(&a, "docs", "d", "empty").as_deref() == Some("synced")
            && state(&a, "docs", "d", "f").as_deref() == Some("synced")
    });
    assert!(read_out(&a, "docs", "d", "empty").is_empty());
    // A reference that would take the document past its limit is refused,
    // and its content not kept.
    let before = local_blobs(&b).len();
    let name = "n".repeat(255);
    let g = file(&b, "g.bin", 10, 22);
    let o = b.cli(&["attach", "docs", "d", &name, &s(&g)]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("too_large"));
    assert_eq!(
        local_blobs(&b).len(),
        before,
        "content of a refused attach is not kept"
    );
}

#[test]
fn too_large_is_refused_and_leaves_nothing() {
    let a = Daemon::start("[sync]\nmax_attachment_bytes = 4096");
    let f = file(&a, "big.bin", 10_000, 3);
    a.ok(&["put", "docs", "--id", "d", r#"{"v":1}"#]);
    let o = a.cli(&["attach", "docs", "d", "big", &s(&f)]);
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("too_large") && err.contains("max_attachment_bytes"),
        "{err}"
    );
    assert!(local_blobs(&a).is_empty());
    let tmp = std::fs::read_dir(a.data_dir.join("blobs/tmp"))
        .unwrap()
        .count();
    assert_eq!(tmp, 0, "no temporary file left");
    assert!(get(&a, "docs", "d")["data"].get("_attachments").is_none());
    // The daemon keeps serving.
    let small = file(&a, "small.bin", 100, 4);
    a.ok(&["attach", "docs", "d", "small", &s(&small)]);
}

#[test]
fn no_device_sees_a_record_before_its_content_is_on_the_backend() {
    let backend = Backend::start(&[]);
    let proxy = BlobProxy::start(&backend.addr);
    let a = device(&proxy.url(), "");
    let b = device(&proxy.url(), "");
    a.ok(&["put", "notes", "--id", "n", r#"{"t":1}"#]);
    synced(&a);
    eventually(30, "B has the record", || b.has("notes", "n"));
    proxy.hold_puts(true);
    let f = file(&a, "p.bin", 2 * MIB, 5);
    a.ok(&["attach", "notes", "n", "p", &s(&f)]);
    eventually(30, "the upload reached the backend and is held", || {
        proxy.held() >= 1
    });
    // While the content is not all there, the op that references it is
    // not sent: neither the backend nor B has the reference.
    b.ok(&["sync", "--wait", "--timeout", "30"]);
    assert!(get(&b, "notes", "n")["data"].get("_attachments").is_none());
    let ops = proxy.faults.ops.lock().unwrap().clone();
    assert!(
        ops.iter().all(|o| !o.contains("_attachments")),
        "an op referencing the content went out before it: {ops:?}"
    );
    assert_eq!(state(&a, "notes", "n", "p").as_deref(), Some("uploading"));
    // Writes queued behind the upload, to other records, are not held
    // back by it; a later write to the same record is (its order holds).
    a.ok(&["put", "notes", "--id", "m", r#"{"t":2}"#]);
    a.ok(&["patch", "notes", "n", r#"{"t":3}"#]);
    eventually(60, "B has the write queued after the upload", || {
        b.has("notes", "m")
    });
    assert_eq!(get(&b, "notes", "n")["data"]["t"], 1);
    proxy.hold_puts(false);
    synced(&a);
    eventually(60, "B has the attachment", || {
        state(&b, "notes", "n", "p").as_deref() == Some("synced")
    });
    assert_eq!(read_out(&b, "notes", "n", "p"), std::fs::read(&f).unwrap());
    assert_eq!(get(&b, "notes", "n")["data"]["t"], 3);
}

#[test]
fn the_backend_refuses_an_op_whose_content_it_does_not_hold() {
    let backend = Backend::start(&[]);
    let sha = "ab".repeat(32);
    let body = format!(
        r#"{{"op_id":"o1","client_id":"c","collection":"notes","kind":"create","id":"x","local_id":"x","data":{{"_attachments":{{"a":{{"content_type":"t","length":3,"sha256":"{sha}"}}}}}},"client_ts":1}}"#
    );
    let (status, reply) = common::http(&backend.addr, "POST", "/v1/ops", Some(&body));
    assert_eq!(status, 422, "{reply}");
    let why = reply["error"].as_str().unwrap_or_default();
    assert!(
        why.contains(&sha) && why.contains("upload it first"),
        "{why}"
    );
    assert!(backend.records().is_empty());
}

#[test]
fn an_upload_resumes_after_kill_9_without_sending_twice() {
    let backend = Backend::start(&[]);
    let proxy = BlobProxy::start(&backend.addr);
    let mut a = device(&proxy.url(), "");
    let len = 50 * MIB;
    let f = file(&a, "big.bin", len, 6);
    a.ok(&["put", "docs", "--id", "d", r#"{"v":1}"#]);
    synced(&a);
    // Hold the upload once a fifth of it went through, and kill the
    // daemon while a chunk is in flight.
    proxy.hold_after((len / 5) as u64);
    a.ok(&["attach", "docs", "d", "big", &s(&f)]);
    eventually(120, "the upload is held part-way", || proxy.held() >= 1);
    a.kill9();
    proxy.hold_puts(false);
    a.restart();
    synced(&a);
    eventually(60, "uploaded", || {
        state(&a, "docs", "d", "big").as_deref() == Some("synced")
    });
    let sent = proxy.put_bytes();
    assert!(
        sent < (len as u64) * 3 / 2,
        "{sent} bytes uploaded in all for a {len}-byte file"
    );
    let b = device(&backend.url(), "");
    eventually(120, "B has it", || {
        state(&b, "docs", "d", "big").as_deref() == Some("synced")
    });
    assert_eq!(read_out(&b, "docs", "d", "big"), std::fs::read(&f).unwrap());
}

#[test]
fn a_cut_download_resumes_and_corrupt_content_is_never_stored() {
    let backend = Backend::start(&[]);
    let a = device(&backend.url(), "");
    let f = file(&a, "f.bin", 3 * MIB, 7);
    let g = file(&a, "g.bin", 2 * MIB, 8);
    a.ok(&["put", "docs", "--id", "d", r#"{"v":1}"#]);
    a.ok(&["attach", "docs", "d", "f", &s(&f)]);
    a.ok(&[
        "attach",
        "docs",
        "d",
        "g",
        &s(&g),
        "--wait",
        "synced",
        "--timeout",
        "60",
    ]);

    // B reads through a proxy that cuts the second range request of the
    // first content, and corrupts the first range of the second.
    let proxy = BlobProxy::start(&backend.addr);
    proxy.cut_gets(&[2]);
    let b = device(&proxy.url(), "[collections.docs]\nattachments = \"lazy\"");
    eventually(30, "B has the record", || b.has("docs", "d"));
    assert_eq!(state(&b, "docs", "d", "f").as_deref(), Some("remote"));
    // The first read meets the cut and fails; the second resumes.
    let o = b.cli(&[
        "attachment",
        "docs",
        "d",
        "f",
        "-o",
        &s(&b.dir.path().join("x")),
    ]);
    if !o.status.success() {
        assert!(String::from_utf8_lossy(&o.stderr).contains("unavailable"));
    }
    assert_eq!(read_out(&b, "docs", "d", "f"), std::fs::read(&f).unwrap());
    let gets = proxy.gets();
    assert_eq!(
        gets.iter().filter(|r| r.starts_with("bytes=0-")).count(),
        1,
        "resumed, not restarted: {gets:?}"
    );
    assert!(
        gets.iter()
            .filter(|r| r.starts_with(&format!("bytes={MIB}-")))
            .count()
            >= 2,
        "{gets:?}"
    );

    proxy.corrupt_gets(1);
    assert_eq!(read_out(&b, "docs", "d", "g"), std::fs::read(&g).unwrap());
    assert!(b.log_text().contains("corrupt attachment content"));
    let files = local_blobs(&b);
    assert_eq!(files.len(), 2, "{files:?}");
}

#[test]
fn lazy_fetches_on_first_read_and_eviction_keeps_the_bound() {
    let backend = Backend::start(&[]);
    let a = device(&backend.url(), "");
    let mut want = Vec::new();
    for i in 0..3 {
        let f = file(&a, &format!("{i}.bin"), MIB, 10 + i);
        let id = format!("r{i}");
        a.ok(&["put", "docs", "--id", &id, r#"{"v":1}"#]);
        a.ok(&["attach", "docs", &id, "f", &s(&f)]);
        want.push(std::fs::read(&f).unwrap());
    }
    synced(&a);
    // Lazy: nothing is downloaded until read.
    let lazy = device(&backend.url(), "[collections.docs]\nattachments = \"lazy\"");
    eventually(30, "lazy has the records", || lazy.has("docs", "r2"));
    assert!(local_blobs(&lazy).is_empty());
    assert_eq!(read_out(&lazy, "docs", "r1", "f"), want[1]);
    assert_eq!(state(&lazy, "docs", "r1", "f").as_deref(), Some("synced"));
    assert_eq!(local_blobs(&lazy).len(), 1);

    // Eager with room for two: all three are downloaded, one is evicted.
    let bound = 2 * MIB + MIB / 2;
    let eager = device(&backend.url(), &format!("attachment_cache_bytes = {bound}"));
    let downloaded = |d: &Daemon| {
        d.ok(&["metrics"])
            .lines()
            .find_map(|l| l.strip_prefix("syncd_attachment_bytes_total{direction=\"down\"} "))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .unwrap_or(0)
    };
    eventually(60, "all three downloaded", || {
        downloaded(&eager) >= 3 * MIB as u64
    });
    eventually(60, "within the bound", || {
        let total: u64 = local_blobs(&eager).iter().map(|f| f.1).sum();
        total <= bound as u64
    });
    assert_eq!(local_blobs(&eager).len(), 2, "one evicted");
    let states: Vec<_> = (0..3)
        .filter_map(|i| state(&eager, "docs", &format!("r{i}"), "f"))
        .collect();
    assert_eq!(
        states.iter().filter(|s| *s == "remote").count(),
        1,
        "{states:?}"
    );
    // An evicted copy is fetched again on demand, and the bound holds.
    for (i, w) in want.iter().enumerate() {
        assert_eq!(&read_out(&eager, "docs", &format!("r{i}"), "f"), w);
    }
    eventually(60, "within the bound after the reads", || {
        let total: u64 = local_blobs(&eager).iter().map(|f| f.1).sum();
        total <= bound as u64
    });
    // A has no bound: its own uploads stay.
    assert_eq!(local_blobs(&a).len(), 3);
}

#[test]
fn check_finds_content_a_queued_write_needs_missing() {
    // No backend: the attach stays queued, its content must stay too.
    let a = Daemon::start("");
    let f = file(&a, "x.bin", 5000, 30);
    a.ok(&["put", "docs", "--id", "d", r#"{"v":1}"#]);
    a.ok(&["attach", "docs", "d", "x", &s(&f)]);
    let cfg = s(&a.config);
    let o = a.cli(&["check", "--config", &cfg]);
    assert_eq!(o.status.code(), Some(0), "{}", common::output_text(&o));
    let (sha, _) = local_blobs(&a).pop().expect("stored");
    std::fs::remove_file(a.data_dir.join("blobs").join(&sha)).unwrap();
    let o = a.cli(&["check", "--config", &cfg]);
    assert_eq!(o.status.code(), Some(5), "{}", common::output_text(&o));
    let text = common::output_text(&o);
    assert!(
        text.contains(&sha) && text.contains("is not in blobs/"),
        "{text}"
    );
    assert!(
        text.contains("restore the file"),
        "the advice names what to do: {text}"
    );
}

/// A device whose data dir is a 2 MiB tmpfs (root only; else `None`).
fn on_small_disk(extra: &str) -> Option<Daemon> {
    if !common::is_root() {
        println!("note: skipping: needs root to mount a tmpfs");
        return None;
    }
    let mut d = Daemon::start(extra);
    d.stop();
    let _ = std::fs::remove_dir_all(&d.data_dir);
    std::fs::create_dir(&d.data_dir).unwrap();
    if !common::mount_tmpfs(&d.data_dir, "size=2m,mode=0700") {
        println!("note: skipping: cannot mount a tmpfs here");
        return None;
    }
    d.spawn();
    Some(d)
}

struct Unmount(PathBuf);

impl Drop for Unmount {
    fn drop(&mut self) {
        common::umount(&self.0);
    }
}

#[test]
fn a_full_disk_fails_attach_and_download_clearly_and_keeps_nothing_half_written() {
    let backend = Backend::start(&[]);
    let a = device(&backend.url(), "");
    let Some(mut b) = on_small_disk(&format!(
        "[backend]\nurl = {:?}\n[sync]\npull_interval_s = 1\nbackoff_initial_ms = 100\nbackoff_max_ms = 1000",
        backend.url()
    )) else {
        return;
    };
    let _guard = Unmount(b.data_dir.clone());
    // An attach larger than the disk: a clear error, nothing kept, and the
    // daemon serves on.
    let big = file(&a, "big.bin", 4 * MIB, 40);
    b.ok(&["put", "docs", "--id", "local", r#"{"v":1}"#]);
    let o = b.cli(&["attach", "docs", "local", "big", &s(&big)]);
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    assert!(err.contains("no space left"), "{err}");
    assert!(local_blobs(&b).is_empty());
    assert_eq!(
        std::fs::read_dir(b.data_dir.join("blobs/tmp"))
            .unwrap()
            .count(),
        0
    );
    b.ok(&["put", "docs", "--id", "after", r#"{"v":2}"#]);

    // A download larger than the disk: never shown complete; a read says
    // why.
    a.ok(&["put", "docs", "--id", "r", r#"{"v":1}"#]);
    a.ok(&[
        "attach",
        "docs",
        "r",
        "big",
        &s(&big),
        "--wait",
        "synced",
        "--timeout",
        "60",
    ]);
    eventually(60, "B has the record", || b.has("docs", "r"));
    let o = b.cli(&[
        "attachment",
        "docs",
        "r",
        "big",
        "-o",
        &s(&a.dir.path().join("out")),
    ]);
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    assert!(err.contains("no space left"), "{err}");
    assert_ne!(state(&b, "docs", "r", "big").as_deref(), Some("synced"));
    assert!(
        local_blobs(&b).is_empty(),
        "nothing half-written under its hash"
    );
    b.stop();
}

#[test]
fn a_detach_queued_behind_a_waiting_upload_is_never_sent_first() {
    let backend = Backend::start(&[]);
    let proxy = BlobProxy::start(&backend.addr);
    // Small batches: many rounds, each recorded while the next is built.
    let a = device(&proxy.url(), "batch_size = 10");
    let b = device(&backend.url(), "");
    a.ok(&["put", "notes", "--id", "n", r#"{"t":1}"#]);
    synced(&a);
    proxy.hold_puts(true);
    a.ok(&["pause"]);
    let f = file(&a, "p.bin", 3 * MIB, 50);
    a.ok(&["attach", "notes", "n", "p", &s(&f)]);
    // Many writes to other records, and a detach of the attachment whose
    // upload will wait, in the middle of them; then sync resumes.
    rt().block_on(async {
        let mut c = syncd::client::Client::connect(&a.socket, "t")
            .await
            .unwrap();
        for i in 0..300 {
            c.put("other", Some(&format!("o{i}")), serde_json::json!({"v": 1}))
                .await
                .unwrap();
            if i == 150 {
                c.detach("notes", "n", "p").await.unwrap();
            }
        }
    });
    a.ok(&["resume"]);
    eventually(30, "the upload is held", || proxy.held() >= 1);
    eventually(60, "B has the writes behind the upload", || {
        b.has("other", "o299")
    });
    assert!(
        get(&b, "notes", "n")["data"].get("_attachments").is_none(),
        "neither the attach nor the detach went yet"
    );
    proxy.hold_puts(false);
    synced(&a);
    // The detach came last, and stays last.
    eventually(60, "B has the record's last write", || {
        get(&b, "notes", "n")["version"].as_u64() == get(&a, "notes", "n")["version"].as_u64()
    });
    let rec = get(&b, "notes", "n");
    assert!(rec["data"].get("_attachments").is_none(), "{rec}");
    let server = backend.records();
    let n = &server[&("notes".to_owned(), "n".to_owned())];
    assert!(n["data"].get("_attachments").is_none(), "{n}");
}

#[test]
fn content_the_backend_refuses_dead_letters_its_op_and_a_retry_asks_again() {
    let backend = Backend::start(&[]);
    let proxy = BlobProxy::start(&backend.addr);
    let a = device(&proxy.url(), "");
    a.ok(&["put", "notes", "--id", "n", r#"{"t":1}"#]);
    synced(&a);
    proxy.refuse(true);
    let f = file(&a, "p.bin", 100_000, 51);
    a.ok(&["attach", "notes", "n", "p", &s(&f)]);
    eventually(30, "dead-lettered", || {
        !a.json_lines(&["dead-letters", "--json"]).is_empty()
    });
    let dead = a.json_lines(&["dead-letters", "--json"]);
    let why = dead[0]["last_error"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(why.contains("413") && why.contains("refuses"), "{why}");
    // Writes go on meanwhile.
    a.ok(&[
        "put",
        "notes",
        "--id",
        "m",
        r#"{"t":2}"#,
        "--wait",
        "synced",
        "--timeout",
        "60",
    ]);
    proxy.refuse(false);
    let op = dead[0]["op_id"].as_str().unwrap().to_owned();
    a.ok(&["retry", &op]);
    synced(&a);
    eventually(30, "uploaded and applied", || {
        state(&a, "notes", "n", "p").as_deref() == Some("synced")
    });
    assert!(a.json_lines(&["dead-letters", "--json"]).is_empty());
}
