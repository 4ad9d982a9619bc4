//! `memory`: VmRSS of an idle daemon, after queuing M ops, and after a
//! restart on that store.

use std::time::Duration;

use serde_json::json;

use crate::daemon::{start_daemon, Clients};
use crate::fill::fill;
use crate::procfs::proc_status_kib;
use crate::report::Report;
use crate::stats::{f2, median};
use crate::Opts;

/// Median of a few VmRSS samples, KiB.
pub(crate) fn rss_kib(pid: u32, samples: usize) -> f64 {
    let mut v = Vec::new();
    for i in 0..samples {
        if i > 0 {
            std::thread::sleep(Duration::from_millis(100));
        }
        v.push(proc_status_kib(pid, "VmRSS") as f64);
    }
    median(&v)
}

pub(crate) fn memory(rt: &tokio::runtime::Runtime, o: &Opts, report: &mut Report) {
    eprintln!("harness: memory: {} ops from {} writers", o.ops, o.writers);
    let samples = if o.smoke { 1 } else { 5 };
    let mut d = start_daemon(&o.bin);
    let settle = Duration::from_millis(if o.smoke { 50 } else { 500 });
    std::thread::sleep(settle);
    let idle_rss = rss_kib(d.pid(), samples);
    let idle_hwm = proc_status_kib(d.pid(), "VmHWM");

    let (depth, fill_secs) = fill(rt, &d, o.ops, o.writers);
    std::thread::sleep(Duration::from_secs(1).min(settle * 2));
    let filled_rss = rss_kib(d.pid(), samples);
    let filled_hwm = proc_status_kib(d.pid(), "VmHWM");
    let store_bytes = std::fs::metadata(d.dir.path().join("data/syncd.redb"))
        .map(|m| m.len())
        .unwrap_or(0);

    // The same store after a restart: what a daemon that comes up with a
    // long queue costs.
    d.restart();
    let depth_after =
        rt.block_on(async { d.client().await.status().await.expect("status").queue_depth });
    std::thread::sleep(settle);
    let restarted_rss = rss_kib(d.pid(), samples);
    let restarted_hwm = proc_status_kib(d.pid(), "VmHWM");
    d.stop();

    let mib = |k: f64| k / 1024.0;
    let fill_rate = o.ops as f64 / fill_secs;
    report.section(
        &format!("memory: VmRSS with ops queued (no backend); target <= 32 MiB at 1,000,000; this run {} ops", o.ops),
        &["daemon", "queue depth", "RSS MiB", "x idle RSS", "peak (VmHWM) MiB"],
    );
    let rows = [
        ("fresh, idle (baseline)", 0, idle_rss, idle_hwm),
        ("after filling the queue", depth, filled_rss, filled_hwm),
        (
            "restarted on that store",
            depth_after,
            restarted_rss,
            restarted_hwm,
        ),
    ];
    for (what, q, rss, hwm) in rows {
        report.row(vec![
            what.into(),
            q.to_string(),
            f2(mib(rss)),
            f2(rss / idle_rss),
            f2(mib(hwm as f64)),
        ]);
    }
    report.note(format!(
        "fill: {} writers, {:.1} s, {:.0} writes/s; store file {:.0} MiB",
        o.writers,
        fill_secs,
        fill_rate,
        store_bytes as f64 / 1048576.0
    ));
    for (what, q, rss, hwm) in rows {
        report.json(json!({
            "scenario": "memory",
            "state": what,
            "queue_depth": q,
            "rss_mib": mib(rss),
            "ratio_vs_idle_rss": rss / idle_rss,
            "vm_hwm_mib": mib(hwm as f64),
            "target_rss_mib": 32,
            "ops_requested": o.ops,
        }));
    }
    report.json(json!({
        "scenario": "memory_fill",
        "ops": o.ops,
        "writers": o.writers,
        "secs": fill_secs,
        "writes_per_s": fill_rate,
        "store_bytes": store_bytes,
    }));
}
