//! `restart`: how long a daemon takes, from process start to its first
//! answered `status`, on a small and a large store (default 10,000 and
//! 1,000,000 queued ops), each started three ways: after a clean stop with
//! a warm page cache, after a clean stop with the page cache dropped (root
//! only), and after a kill -9 during writes. The baseline is the same warm
//! start on an empty store, measured in the same run.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;
use syncd::client::Client;

use crate::common::Daemon;
use crate::daemon::{start_daemon, Clients};
use crate::fill::fill;
use crate::loops::doc;
use crate::report::Report;
use crate::stats::{f0, f2, median};
use crate::{Opts, COLLECTION};

/// Limits (seconds), from docs/performance.md target 6.
const WARM_LIMIT: f64 = 0.050;
const COLD_LIMIT: f64 = 0.100;
const KILL9_LIMIT: f64 = 1.0;

/// How the daemon was stopped before the measured start.
#[derive(Clone, Copy, PartialEq)]
enum Before {
    /// SIGTERM; the page cache keeps the file.
    CleanWarm,
    /// SIGTERM, then `sync; echo 3 > /proc/sys/vm/drop_caches`.
    CleanCold,
    /// kill -9 while 16 connections write.
    Kill9,
}

impl Before {
    fn name(self) -> &'static str {
        match self {
            Before::CleanWarm => "clean stop, warm cache",
            Before::CleanCold => "clean stop, page cache dropped",
            Before::Kill9 => "kill -9 during writes",
        }
    }

    fn limit(self) -> f64 {
        match self {
            Before::CleanWarm => WARM_LIMIT,
            Before::CleanCold => COLD_LIMIT,
            Before::Kill9 => KILL9_LIMIT,
        }
    }
}

/// Starts the daemon on its dirs and returns the time from `spawn` to the
/// first `status` answer, and that answer's queue depth. Polls with a
/// fresh connection every millisecond.
pub(crate) fn timed_start(rt: &tokio::runtime::Runtime, d: &mut Daemon) -> (f64, u64) {
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
                t0.elapsed() < Duration::from_secs(120),
                "daemon did not answer status within 120 s"
            );
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    })
}

/// Drops the page cache (root only); false when it could not.
fn drop_caches() -> bool {
    let _ = Command::new("sync").status();
    std::fs::write("/proc/sys/vm/drop_caches", "3").is_ok()
}

/// Kills the daemon with SIGKILL while 16 connections write, once the
/// writers have had 200 acknowledged writes.
pub(crate) fn kill_during_writes(rt: &tokio::runtime::Runtime, d: &mut Daemon) {
    rt.block_on(async {
        let clients = d.clients(16).await;
        let acked = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let mut tasks = Vec::new();
        for (w, mut c) in clients.into_iter().enumerate() {
            let acked = acked.clone();
            tasks.push(tokio::spawn(async move {
                for i in 0.. {
                    if c.put(COLLECTION, None, doc(1000 + w, i)).await.is_err() {
                        return;
                    }
                    acked.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
            }));
        }
        while acked.load(std::sync::atomic::Ordering::Relaxed) < 200 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        d.kill9();
        for t in tasks {
            let _ = t.await;
        }
    });
}

/// `reps` starts after stopping the daemon as `before` says; `None` when
/// the page cache cannot be dropped here.
fn starts(
    rt: &tokio::runtime::Runtime,
    d: &mut Daemon,
    reps: usize,
    before: Before,
) -> Option<Vec<f64>> {
    let mut out = Vec::new();
    for rep in 0..reps {
        match before {
            Before::CleanWarm => d.stop(),
            Before::CleanCold => {
                d.stop();
                if !drop_caches() {
                    eprintln!("  cannot drop the page cache (not root?): skipped");
                    d.spawn();
                    return None;
                }
            }
            Before::Kill9 => kill_during_writes(rt, d),
        }
        let (secs, depth) = timed_start(rt, d);
        eprintln!(
            "  rep {}: {}: first status after {:.1} ms (queue depth {depth})",
            rep + 1,
            before.name(),
            secs * 1000.0
        );
        out.push(secs);
    }
    Some(out)
}

/// One measured configuration.
struct Row {
    store: String,
    depth: u64,
    before: Before,
    secs: Vec<f64>,
}

pub(crate) fn restart(rt: &tokio::runtime::Runtime, o: &Opts, report: &mut Report) {
    eprintln!(
        "harness: restart: {} reps each, on an empty store, then {} and {} queued ops",
        o.restart_reps, o.restart_small_ops, o.restart_ops
    );
    let mut d = start_daemon(&o.bin);
    let empty = starts(rt, &mut d, o.restart_reps, Before::CleanWarm).unwrap_or_default();
    let mut rows = vec![Row {
        store: "empty (baseline)".into(),
        depth: 0,
        before: Before::CleanWarm,
        secs: empty.clone(),
    }];
    let mut notes = Vec::new();
    let mut queued = 0;
    for target in [o.restart_small_ops, o.restart_ops] {
        let (_, fill_secs) = fill(rt, &d, target.saturating_sub(queued), o.writers);
        let bytes = std::fs::metadata(d.data_dir.join("syncd.redb"))
            .map(|m| m.len())
            .unwrap_or(0);
        notes.push(format!(
            "{target} queued: fill {fill_secs:.1} s, store file {:.0} MiB",
            bytes as f64 / 1048576.0
        ));
        for before in [Before::CleanWarm, Before::CleanCold, Before::Kill9] {
            let Some(secs) = starts(rt, &mut d, o.restart_reps, before) else {
                continue;
            };
            let depth =
                rt.block_on(async { d.client().await.status().await.map(|s| s.queue_depth) });
            rows.push(Row {
                store: format!("{target} queued"),
                depth: depth.unwrap_or(0),
                before,
                secs,
            });
        }
        queued = rt
            .block_on(async { d.client().await.status().await.map(|s| s.queue_depth) })
            .unwrap_or(target);
    }
    d.stop();
    write_report(report, &rows, &empty, &notes);
}

fn write_report(report: &mut Report, rows: &[Row], empty: &[f64], notes: &[String]) {
    report.section(
        "restart: process start to first answered status",
        &[
            "store",
            "stopped by",
            "queue depth",
            "ms (median)",
            "max ms",
            "x empty store",
            "limit ms",
        ],
    );
    let max = |v: &[f64]| v.iter().cloned().fold(0.0, f64::max);
    for r in rows {
        report.row(vec![
            r.store.clone(),
            r.before.name().into(),
            r.depth.to_string(),
            format!("{:.1}", median(&r.secs) * 1000.0),
            format!("{:.1}", max(&r.secs) * 1000.0),
            f2(median(&r.secs) / median(empty)),
            f0(r.before.limit() * 1000.0),
        ]);
        report.json(json!({
            "scenario": "restart",
            "store": r.store,
            "stopped_by": r.before.name(),
            "queue_depth": r.depth,
            "secs_to_first_status": median(&r.secs),
            "max_secs": max(&r.secs),
            "per_rep_secs": r.secs,
            "limit_secs": r.before.limit(),
        }));
    }
    for n in notes {
        report.note(n.clone());
    }
}
