//! `encryption`: the cost of encryption at rest (issue 24), against the
//! same scenarios on a plain store in the same run, interleaved rep by
//! rep: durable puts at 1 and 64 connections, a batched drain of
//! `--drain-ops` queued ops, and the start of a sealed daemon on a store
//! with `--restart-ops` queued ops, after a clean stop (warm cache) and
//! after a kill -9 during writes.

use std::process::Command;

use serde_json::json;

use crate::common::Daemon;
use crate::daemon::{launch, Clients};
use crate::drain::batched_drain;
use crate::fill::fill;
use crate::loops::{run_loop, Conn, Op};
use crate::report::Report;
use crate::restart::{kill_during_writes, timed_start};
use crate::stats::{f0, f2, median, ratio};
use crate::Opts;

/// Targets: sealed over plain, and the sealed start on a long queue.
const TARGET_RATIO: f64 = 0.9;
const RESTART_LIMIT: f64 = 1.0;

/// `[store]` sealed with a new key in `dir`.
fn sealed_config(o: &Opts, dir: &std::path::Path) -> String {
    let key = dir.join("store.key");
    let st = Command::new(&o.bin)
        .args(["key", "generate"])
        .arg(&key)
        .output()
        .expect("syncd key generate");
    assert!(st.status.success(), "syncd key generate failed");
    format!(
        "[store]\nencryption = \"on\"\nkey_file = {:?}\n",
        key.display().to_string()
    )
}

async fn pool(d: &Daemon, n: usize) -> Vec<Conn> {
    d.clients(n).await.into_iter().map(Conn::Syncd).collect()
}

pub(crate) fn encryption(rt: &tokio::runtime::Runtime, o: &Opts, report: &mut Report) {
    eprintln!(
        "harness: encryption: puts at 1 and 64 connections ({} reps x {} s), {} drains of {} ops, {} starts on {} queued ops",
        o.reps, o.secs, o.drain_reps, o.drain_ops, o.restart_reps, o.restart_ops
    );
    let keys = tempfile::tempdir().expect("key dir");
    let sealed = sealed_config(o, keys.path());
    let counts = [1usize, 64];
    let (mut plain_runs, mut sealed_runs) = (vec![Vec::new(); 2], vec![Vec::new(); 2]);
    {
        let p = Daemon::start_with(&launch(&o.bin), "");
        let s = Daemon::start_with(&launch(&o.bin), &sealed);
        for (k, &n) in counts.iter().enumerate() {
            let mut pp = rt
                .block_on(run_loop(rt.block_on(pool(&p, n)), Op::Put, o.warmup()))
                .0;
            let mut sp = rt
                .block_on(run_loop(rt.block_on(pool(&s, n)), Op::Put, o.warmup()))
                .0;
            for rep in 0..o.reps {
                let (back, a) = rt.block_on(run_loop(pp, Op::Put, o.dur()));
                pp = back;
                let (back, b) = rt.block_on(run_loop(sp, Op::Put, o.dur()));
                sp = back;
                eprintln!(
                    "  rep {}: {n} clients: plain {:.0}/s, sealed {:.0}/s",
                    rep + 1,
                    a.per_s,
                    b.per_s
                );
                plain_runs[k].push(a.per_s);
                sealed_runs[k].push(b.per_s);
            }
        }
    }
    let (mut plain_drain, mut sealed_drain) = (Vec::new(), Vec::new());
    for rep in 0..o.drain_reps {
        plain_drain.push(batched_drain(rt, o, ""));
        sealed_drain.push(batched_drain(rt, o, &sealed));
        eprintln!(
            "  rep {}: drain plain {:.0} ops/s, sealed {:.0} ops/s",
            rep + 1,
            plain_drain[rep],
            sealed_drain[rep]
        );
    }
    let (starts, kill9) = sealed_restarts(rt, o, &sealed);
    report.section(
        "encryption at rest: sealed vs plain, same run",
        &["measure", "plain", "sealed", "sealed/plain", "target"],
    );
    for (k, &n) in counts.iter().enumerate() {
        row(
            report,
            &format!("durable puts/s, {n} clients"),
            &plain_runs[k],
            &sealed_runs[k],
        );
    }
    row(report, "batched drain, ops/s", &plain_drain, &sealed_drain);
    let start = median(&starts);
    report.row(vec![
        format!("sealed start, {} queued ops (s)", o.restart_ops),
        "-".into(),
        f2(start),
        "-".into(),
        format!("< {RESTART_LIMIT} s"),
    ]);
    report.json(json!({"scenario": "encryption", "measure": "start_s", "ops": o.restart_ops, "median": start, "limit": RESTART_LIMIT}));
    let after_kill = median(&kill9);
    report.row(vec![
        format!(
            "sealed start after kill -9, {} queued ops (s)",
            o.restart_ops
        ),
        "-".into(),
        f2(after_kill),
        "-".into(),
        format!("< {RESTART_LIMIT} s"),
    ]);
    report.json(json!({"scenario": "encryption", "measure": "start_after_kill9_s", "ops": o.restart_ops, "median": after_kill, "limit": RESTART_LIMIT}));
}

fn row(report: &mut Report, what: &str, plain: &[f64], sealed: &[f64]) {
    let r = ratio(sealed, plain);
    report.row(vec![
        what.into(),
        f0(median(plain)),
        f0(median(sealed)),
        f2(r),
        format!(">= {TARGET_RATIO}"),
    ]);
    report.json(json!({"scenario": "encryption", "measure": what, "plain": median(plain), "sealed": median(sealed), "ratio": r, "target": TARGET_RATIO}));
}

/// Starts of a sealed daemon on a store with `--restart-ops` queued ops:
/// after clean stops, and after kills -9 during writes.
fn sealed_restarts(rt: &tokio::runtime::Runtime, o: &Opts, sealed: &str) -> (Vec<f64>, Vec<f64>) {
    let mut d = Daemon::start_with(&launch(&o.bin), sealed);
    let (depth, secs) = fill(rt, &d, o.restart_ops, o.writers);
    eprintln!("  sealed store: {depth} queued in {secs:.1} s");
    let mut out = Vec::new();
    for rep in 0..o.restart_reps {
        d.stop();
        let (secs, depth) = timed_start(rt, &mut d);
        eprintln!(
            "  rep {}: sealed start, {depth} queued: first status after {:.1} ms",
            rep + 1,
            secs * 1000.0
        );
        out.push(secs);
    }
    let mut killed = Vec::new();
    for rep in 0..o.restart_reps {
        kill_during_writes(rt, &mut d);
        let (secs, depth) = timed_start(rt, &mut d);
        eprintln!(
            "  rep {}: sealed start after kill -9, {depth} queued: first status after {:.1} ms",
            rep + 1,
            secs * 1000.0
        );
        killed.push(secs);
    }
    d.stop();
    (out, killed)
}
