//! The `attachments` scenario (issue 23): how fast a file gets into the
//! daemon and up to the backend, against a plain copy of the same file
//! into the data dir's disk (the limit: the bytes must be read and written
//! once), and how long small writes to other records take to reach the
//! backend while a large upload runs, against the same writes with none.

use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::common::{Backend, Daemon};
use crate::daemon::{launch, Clients};
use crate::report::Report;
use crate::stats::{f2, median, pct};
use crate::Opts;

const MIB: f64 = 1024.0 * 1024.0;

/// A file of `len` pseudo-random bytes (each rep its own content: the
/// daemon stores and uploads content once).
fn make_file(dir: &Path, name: &str, len: usize, seed: u64) -> std::path::PathBuf {
    let mut rng = fastrand::Rng::with_seed(seed);
    let p = dir.join(name);
    let mut f = std::fs::File::create(&p).expect("file");
    let mut buf = vec![0u8; 1 << 20];
    let mut left = len;
    while left > 0 {
        let n = left.min(buf.len());
        rng.fill(&mut buf[..n]);
        f.write_all(&buf[..n]).expect("write");
        left -= n;
    }
    f.sync_all().expect("sync");
    p
}

/// The baseline: read the file, write it into the data dir's disk, sync.
fn copy_mb_s(from: &Path, dir: &Path, len: usize) -> f64 {
    let to = dir.join("copy.bin");
    let t0 = Instant::now();
    std::fs::copy(from, &to).expect("copy");
    std::fs::File::open(&to)
        .expect("open")
        .sync_all()
        .expect("sync");
    let secs = t0.elapsed().as_secs_f64();
    let _ = std::fs::remove_file(&to);
    len as f64 / MIB / secs
}

fn state(d: &Daemon, id: &str) -> Option<String> {
    let v = d.json(&["get", "att", id]);
    v["attachments"][0]["state"].as_str().map(str::to_owned)
}

/// One small put, until the backend confirmed it; microseconds.
async fn small_op(c: &mut syncd::client::Client, i: usize) -> u32 {
    let t0 = Instant::now();
    let (_, op) = c
        .put("small", Some(&format!("s{i}")), json!({"i": i}))
        .await
        .expect("put");
    c.wait_synced(&op).await.expect("synced");
    t0.elapsed().as_micros().min(u32::MAX as u128) as u32
}

pub(crate) fn attachments(rt: &tokio::runtime::Runtime, o: &Opts, report: &mut Report) {
    let len = (o.attach_mb * MIB) as usize;
    let reps = o.attach_reps;
    eprintln!(
        "harness: attachments: {reps} reps of a {} MB file",
        o.attach_mb
    );
    let backend = Backend::start(&[]);
    let d = Daemon::start_with(
        &launch(&o.bin),
        &format!("[backend]\nurl = {:?}\n", backend.url()),
    );
    let data = d.data_dir.clone();
    let (mut cp, mut attach, mut upload) = (Vec::new(), Vec::new(), Vec::new());
    let (mut during, mut idle) = (Vec::new(), Vec::new());
    let mut small = 0usize;
    for rep in 0..reps {
        let f = make_file(d.dir.path(), &format!("f{rep}.bin"), len, 100 + rep as u64);
        cp.push(copy_mb_s(&f, &data, len));
        // Small ops with no upload running: the baseline.
        rt.block_on(async {
            let mut c = d.client().await;
            for _ in 0..20 {
                idle.push(small_op(&mut c, small).await);
                small += 1;
            }
        });
        let id = format!("r{rep}");
        d.ok(&["put", "att", "--id", &id, "{}"]);
        let t0 = Instant::now();
        rt.block_on(async {
            let mut c = d.client().await;
            let file = tokio::fs::File::open(&f).await.expect("open");
            c.attach("att", &id, "f", None, file, |_| {})
                .await
                .expect("attach");
        });
        let attached = t0.elapsed().as_secs_f64();
        attach.push(len as f64 / MIB / attached);
        // Small ops on other records while the upload runs.
        let t1 = Instant::now();
        rt.block_on(async {
            let mut c = d.client().await;
            while state(&d, &id).as_deref() != Some("synced") {
                during.push(small_op(&mut c, small).await);
                small += 1;
            }
        });
        while state(&d, &id).as_deref() != Some("synced") {
            std::thread::sleep(Duration::from_millis(10));
        }
        upload.push(len as f64 / MIB / t1.elapsed().as_secs_f64());
        let _ = std::fs::remove_file(&f);
    }
    let ratio = |v: &[f64]| median(&v.iter().zip(&cp).map(|(a, b)| a / b).collect::<Vec<_>>());
    report.section(
        &format!("attachments: a {} MB file, MB/s (median of {reps}); ratio to a plain copy into the data dir's disk in the same rep", o.attach_mb),
        &["step", "MB/s", "x copy"],
    );
    report.row(vec![
        "copy (baseline)".into(),
        f2(median(&cp)),
        "1.00".into(),
    ]);
    report.row(vec![
        "attach (socket, hash, store)".into(),
        f2(median(&attach)),
        f2(ratio(&attach)),
    ]);
    report.row(vec![
        "upload to the backend".into(),
        f2(median(&upload)),
        f2(ratio(&upload)),
    ]);
    during.sort_unstable();
    idle.sort_unstable();
    let ms = |v: &[u32], q| pct(v, q) / 1000.0;
    report.section(
        "attachments: a small put on another record until the backend has it, ms",
        &["while", "ops", "p50", "p99"],
    );
    report.row(vec![
        "no upload (baseline)".into(),
        idle.len().to_string(),
        f2(ms(&idle, 0.5)),
        f2(ms(&idle, 0.99)),
    ]);
    report.row(vec![
        "an upload runs".into(),
        during.len().to_string(),
        f2(ms(&during, 0.5)),
        f2(ms(&during, 0.99)),
    ]);
    report.json(json!({
        "scenario": "attachments",
        "file_mb": o.attach_mb,
        "copy_mb_s": median(&cp),
        "attach_mb_s": median(&attach),
        "attach_x_copy": ratio(&attach),
        "upload_mb_s": median(&upload),
        "upload_x_copy": ratio(&upload),
        "small_op_idle_p50_ms": ms(&idle, 0.5),
        "small_op_during_upload_p50_ms": ms(&during, 0.5),
        "small_op_during_upload_p99_ms": ms(&during, 0.99),
        "small_ops_during_upload": during.len(),
    }));
}
