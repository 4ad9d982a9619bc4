//! `idle`: context switches of every daemon thread over quiet windows.

use std::time::{Duration, Instant};

use serde_json::json;

use crate::daemon::{start_daemon, Clients};
use crate::procfs::thread_switches;
use crate::report::Report;
use crate::stats::{f2, median};
use crate::Opts;

pub(crate) fn idle(rt: &tokio::runtime::Runtime, o: &Opts, report: &mut Report) {
    eprintln!(
        "harness: idle: {} windows x {} s",
        o.idle_windows, o.idle_secs
    );
    let d = start_daemon(&o.bin);
    let pid = d.pid();
    // One short conversation like any app's, then silence.
    let depth = rt.block_on(async { d.client().await.status().await.expect("status").queue_depth });
    assert_eq!(depth, 0, "fresh daemon has a queue");
    std::thread::sleep(Duration::from_millis(if o.smoke { 50 } else { 1000 }));
    let window = Duration::from_secs_f64(o.idle_secs);
    let mut rates = Vec::new();
    let mut per_thread: std::collections::BTreeMap<String, u64> = Default::default();
    let mut threads = 0;
    for rep in 0..o.idle_windows {
        let a = thread_switches(pid);
        let t0 = Instant::now();
        std::thread::sleep(window);
        let b = thread_switches(pid);
        let secs = t0.elapsed().as_secs_f64();
        threads = b.len();
        let mut total = 0;
        for (tid, name, v, nv) in &b {
            let before = a
                .iter()
                .find(|x| x.0 == *tid)
                .map(|x| x.2 + x.3)
                .unwrap_or(0);
            let diff = (v + nv).saturating_sub(before);
            total += diff;
            if diff > 0 {
                *per_thread.entry(name.clone()).or_default() += diff;
            }
        }
        // A thread that appeared or vanished in the window is a wake-up too.
        let born = b.iter().filter(|x| !a.iter().any(|y| y.0 == x.0)).count();
        let died = a.iter().filter(|x| !b.iter().any(|y| y.0 == x.0)).count();
        total += (born + died) as u64;
        eprintln!(
            "  window {}: {total} context switches in {secs:.1} s ({} threads; {born} new, {died} gone)",
            rep + 1,
            b.len()
        );
        rates.push(total as f64 / secs);
    }
    let rate = median(&rates);
    let who = if per_thread.is_empty() {
        "-".to_owned()
    } else {
        per_thread
            .iter()
            .map(|(k, v)| format!("{k}:{v}"))
            .collect::<Vec<_>>()
            .join(" ")
    };
    report.section(
        "idle: context switches of all daemon threads, empty queue, no backend; target 0/s",
        &[
            "windows",
            "window s",
            "threads",
            "switches/s (median)",
            "max",
            "threads that woke (all windows)",
        ],
    );
    report.row(vec![
        o.idle_windows.to_string(),
        format!("{}", o.idle_secs),
        threads.to_string(),
        f2(rate),
        f2(rates.iter().cloned().fold(0.0, f64::max)),
        who.clone(),
    ]);
    report.json(json!({
        "scenario": "idle",
        "switches_per_s": rate,
        "max_switches_per_s": rates.iter().cloned().fold(0.0, f64::max),
        "window_secs": o.idle_secs,
        "windows": o.idle_windows,
        "threads": threads,
        "woken_threads": per_thread,
        "target_switches_per_s": 0,
    }));
}
