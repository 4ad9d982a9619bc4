//! `restart`: how long a daemon takes, from process start to its first
//! answered `status`, on a store with a long queue (limit: 1 s with
//! 1,000,000 ops queued), next to the same on an empty store measured in
//! the same run.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;
use syncd::client::Client;

use crate::common::Daemon;
use crate::daemon::start_daemon;
use crate::fill::fill;
use crate::report::Report;
use crate::stats::{f0, f2, median};
use crate::Opts;

/// Limit: process start to first `status` answer, seconds.
const LIMIT_SECS: f64 = 1.0;

/// Stops the daemon, starts it again on the same dirs and returns the time
/// from `spawn` to the first `status` answer, and that answer's queue depth.
/// Polls with a fresh connection every millisecond.
fn timed_restart(rt: &tokio::runtime::Runtime, d: &mut Daemon) -> (f64, u64) {
    d.stop();
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&d.log)
        .expect("log file");
    let t0 = Instant::now();
    let child = Command::new(&d.bin)
        .arg("run")
        .arg("--config")
        .arg(&d.config)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("start syncd");
    d.child = Some(child);
    let socket = d.socket.clone();
    rt.block_on(async {
        loop {
            if let Ok(mut c) = Client::connect(&socket, "bench").await {
                if let Ok(s) = c.status().await {
                    return (t0.elapsed().as_secs_f64(), s.queue_depth);
                }
            }
            assert!(
                t0.elapsed() < Duration::from_secs(60),
                "daemon did not answer status within 60 s"
            );
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    })
}

fn restarts(rt: &tokio::runtime::Runtime, d: &mut Daemon, reps: usize, what: &str) -> Vec<f64> {
    (0..reps)
        .map(|rep| {
            let (secs, depth) = timed_restart(rt, d);
            eprintln!(
                "  rep {}: {what}: first status after {:.1} ms (queue depth {depth})",
                rep + 1,
                secs * 1000.0
            );
            secs
        })
        .collect()
}

pub(crate) fn restart(rt: &tokio::runtime::Runtime, o: &Opts, report: &mut Report) {
    eprintln!(
        "harness: restart: {} reps on an empty store, then on {} queued ops",
        o.restart_reps, o.restart_ops
    );
    let mut d = start_daemon(&o.bin);
    let empty = restarts(rt, &mut d, o.restart_reps, "empty store");
    let (depth, fill_secs) = fill(rt, &d, o.restart_ops, o.writers);
    let store_bytes = std::fs::metadata(d.data_dir.join("syncd.redb"))
        .map(|m| m.len())
        .unwrap_or(0);
    let full = restarts(rt, &mut d, o.restart_reps, "long queue");
    d.stop();

    report.section(
        &format!(
            "restart: process start to first answered status; limit {LIMIT_SECS} s with 1,000,000 queued; this run {} ops",
            o.restart_ops
        ),
        &["store", "queue depth", "ms (median)", "max ms", "x empty store", "limit ms"],
    );
    let max = |v: &[f64]| v.iter().cloned().fold(0.0, f64::max);
    for (what, q, v) in [
        ("empty (baseline)", 0, &empty),
        ("long queue", depth, &full),
    ] {
        report.row(vec![
            what.into(),
            q.to_string(),
            f0(median(v) * 1000.0),
            f0(max(v) * 1000.0),
            f2(median(v) / median(&empty)),
            f0(LIMIT_SECS * 1000.0),
        ]);
        report.json(json!({
            "scenario": "restart",
            "store": what,
            "queue_depth": q,
            "secs_to_first_status": median(v),
            "max_secs": max(v),
            "per_rep_secs": v,
            "limit_secs": LIMIT_SECS,
        }));
    }
    report.note(format!(
        "fill: {} writers, {:.1} s ({:.0} writes/s); store file {:.0} MiB",
        o.writers,
        fill_secs,
        o.restart_ops as f64 / fill_secs,
        store_bytes as f64 / 1048576.0
    ));
}
