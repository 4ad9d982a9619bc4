//! `coalesce`: how much folding queued edits cuts an edit-heavy drain.
//!
//! The same writes twice, on fresh daemons whose backend is down: 20
//! patches to each of 1,000 records (after one create each). *Grouped*, a
//! record's patches come one after the other, so each folds into its
//! record's op at the tail of the queue; *interleaved* (round-robin over
//! the records), another record's op always sits behind, so nothing may
//! fold. Then the reference backend starts and the queue drains. Reported:
//! the queue depth the writes left, and the drain time, side by side.

use std::time::Instant;

use serde_json::json;

use crate::backend::{free_port, RefBackend};
use crate::common::Daemon;
use crate::daemon::{launch, Clients};
use crate::drain::{daemon_config, wait_empty};
use crate::report::Report;
use crate::stats::{f0, f2};
use crate::Opts;

const PATCHES: usize = 20;

/// Writes the workload; returns the queue depth it left.
fn write(rt: &tokio::runtime::Runtime, d: &Daemon, records: usize, grouped: bool) -> u64 {
    rt.block_on(async {
        let mut c = d.client().await;
        for r in 0..records {
            c.put("edits", Some(&format!("r{r}")), json!({"v": 0}))
                .await
                .expect("put");
        }
        let order: Vec<(usize, usize)> = if grouped {
            (0..records)
                .flat_map(|r| (1..=PATCHES).map(move |p| (r, p)))
                .collect()
        } else {
            (1..=PATCHES)
                .flat_map(|p| (0..records).map(move |r| (r, p)))
                .collect()
        };
        for (r, p) in order {
            c.patch("edits", &format!("r{r}"), json!({"v": p}))
                .await
                .expect("patch");
        }
        c.status().await.expect("status").queue_depth
    })
}

/// One run: (queue depth, seconds to drain it).
fn run(rt: &tokio::runtime::Runtime, o: &Opts, records: usize, grouped: bool) -> (u64, f64) {
    let port = free_port();
    let mut d = Daemon::start_with(&launch(&o.bin), &daemon_config(port, None));
    let depth = write(rt, &d, records, grouped);
    let data = d.dir.path().join("backend-data");
    let t0 = Instant::now();
    let b = RefBackend::start(&o.bin, port, &data, &[]);
    let (_, secs, dead) = wait_empty(rt, &d, depth, t0);
    assert_eq!(dead, 0, "dead letters in the coalesce drain");
    drop(b);
    d.stop();
    (depth, secs)
}

pub(crate) fn coalesce(rt: &tokio::runtime::Runtime, o: &Opts, report: &mut Report) {
    let records = if o.smoke { 20 } else { 1000 };
    let writes = records * (PATCHES + 1);
    eprintln!("harness: coalesce: {records} records x (1 put + {PATCHES} patches)");
    let grouped = run(rt, o, records, true);
    let interleaved = run(rt, o, records, false);
    report.section(
        &format!("coalesce: {writes} writes (1 put + {PATCHES} patches to each of {records} records) queued offline, then drained"),
        &["order", "writes", "queued ops", "drain s", "drain x faster"],
    );
    let faster = interleaved.1 / grouped.1.max(1e-9);
    for (name, (depth, secs), x) in [
        ("grouped (folds)", grouped, faster),
        ("interleaved (cannot fold)", interleaved, 1.0),
    ] {
        report.row(vec![
            name.into(),
            writes.to_string(),
            depth.to_string(),
            f2(secs),
            f0(x),
        ]);
    }
    report.json(json!({
        "scenario": "coalesce",
        "writes": writes,
        "grouped": {"queued_ops": grouped.0, "drain_s": grouped.1},
        "interleaved": {"queued_ops": interleaved.0, "drain_s": interleaved.1},
    }));
}
