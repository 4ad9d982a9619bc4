//! `drain`: how fast a long queue empties once the backend comes back.
//!
//! N ops are queued while the daemon's backend (a loopback port where
//! nothing listens yet) is down; then the reference backend (`syncd
//! backend`, the same binary) starts on that port, and the harness polls
//! `status` every 20 ms until the queue is empty. Configurations run in the
//! same repetition, one after the other: batched with the default
//! `batch_size`, batched with `batch_size = 1000`, and a backend without
//! the batch endpoint (`--no-batch`: one op per request). The daemon's and
//! the backend's CPU over the drain come from /proc/PID/stat.

use std::time::{Duration, Instant};

use serde_json::json;

use crate::backend::{free_port, RefBackend};
use crate::common::Daemon;
use crate::daemon::{launch, Clients};
use crate::fill::fill;
use crate::procfs::cpu_secs;
use crate::report::Report;
use crate::stats::{f0, f2, median, ratio};
use crate::Opts;

/// Target: batched drain rate, ops/s.
const TARGET_OPS_PER_S: f64 = 20_000.0;
/// Target: batched rate over one-op-per-request rate.
const TARGET_RATIO: f64 = 10.0;
/// How often `status` is polled during a drain.
const POLL: Duration = Duration::from_millis(20);

/// One way of draining.
struct Conf {
    name: &'static str,
    /// `[sync] batch_size`; `None` keeps the default.
    batch_size: Option<u32>,
    backend_args: &'static [&'static str],
}

impl Conf {
    /// Ops to queue: one op per request is ~50x slower, so it drains a
    /// shorter queue (its rate does not depend on the queue's length).
    fn ops(&self, o: &Opts) -> u64 {
        if self.backend_args.contains(&"--no-batch") {
            o.drain_one_op_ops
        } else {
            o.drain_ops
        }
    }
}

const CONFS: [Conf; 3] = [
    Conf {
        name: "batched, default batch_size",
        batch_size: None,
        backend_args: &[],
    },
    Conf {
        name: "batched, batch_size 1000",
        batch_size: Some(1000),
        backend_args: &[],
    },
    Conf {
        name: "one op per request (--no-batch)",
        batch_size: None,
        backend_args: &["--no-batch"],
    },
];
const ONE_OP: usize = 2;

/// One measured drain.
#[derive(Clone, Copy, Debug, Default)]
struct DrainRun {
    ops: u64,
    /// Backend spawn to empty queue.
    secs: f64,
    /// Backend spawn to the first op off the queue (backend start-up plus
    /// the daemon's next probe).
    first_secs: f64,
    daemon_cpu: f64,
    backend_cpu: f64,
    dead_letters: u64,
}

impl DrainRun {
    fn per_s(&self) -> f64 {
        self.ops as f64 / self.secs
    }
}

pub(crate) fn daemon_config(port: u16, batch_size: Option<u32>) -> String {
    let mut s = format!(
        "[backend]\nurl = \"http://127.0.0.1:{port}/\"\n\n[sync]\n\
         backoff_initial_ms = 20\nbackoff_max_ms = 50\n"
    );
    if let Some(b) = batch_size {
        s.push_str(&format!("batch_size = {b}\n"));
    }
    s
}

/// Polls `status` until the queue is empty; returns (seconds to the first
/// op off the queue, seconds to empty, dead letters), timed from `t0`.
pub(crate) fn wait_empty(
    rt: &tokio::runtime::Runtime,
    d: &Daemon,
    ops: u64,
    t0: Instant,
) -> (f64, f64, u64) {
    let limit = Duration::from_secs(60.max(ops / 100));
    rt.block_on(async {
        let mut c = d.client().await;
        let mut first = None;
        loop {
            let s = c.status().await.expect("status during drain");
            let now = t0.elapsed();
            if first.is_none() && s.queue_depth < ops {
                first = Some(now.as_secs_f64());
            }
            if s.queue_depth == 0 {
                return (
                    first.unwrap_or(now.as_secs_f64()),
                    now.as_secs_f64(),
                    s.dead_letters,
                );
            }
            assert!(now < limit, "drain did not finish in {limit:?}: {s:?}");
            tokio::time::sleep(POLL).await;
        }
    })
}

/// A drain with the default batch size; `extra`: more config (a
/// `[store]` section). Returns ops/s.
pub(crate) fn batched_drain(rt: &tokio::runtime::Runtime, o: &Opts, extra: &str) -> f64 {
    drain_once(rt, o, &CONFS[0], extra).per_s()
}

fn drain_once(rt: &tokio::runtime::Runtime, o: &Opts, conf: &Conf, extra: &str) -> DrainRun {
    let port = free_port();
    let config = daemon_config(port, conf.batch_size) + extra;
    let mut d = Daemon::start_with(&launch(&o.bin), &config);
    let ops = conf.ops(o);
    let (depth, _) = fill(rt, &d, ops, o.writers);
    assert_eq!(depth, ops, "queue depth after the fill");
    let data = d.dir.path().join("backend-data");
    let c0 = cpu_secs(d.pid());
    let t0 = Instant::now();
    let b = RefBackend::start(&o.bin, port, &data, conf.backend_args);
    let (first_secs, secs, dead_letters) = wait_empty(rt, &d, ops, t0);
    let run = DrainRun {
        ops,
        secs,
        first_secs,
        daemon_cpu: cpu_secs(d.pid()) - c0,
        backend_cpu: cpu_secs(b.pid()),
        dead_letters,
    };
    drop(b);
    d.stop();
    run
}

pub(crate) fn drain(rt: &tokio::runtime::Runtime, o: &Opts, report: &mut Report) {
    eprintln!(
        "harness: drain: {} ops ({} for one op per request) queued by {} writers, {} reps",
        o.drain_ops, o.drain_one_op_ops, o.writers, o.drain_reps
    );
    let mut runs: Vec<Vec<DrainRun>> = vec![Vec::new(); CONFS.len()];
    for rep in 0..o.drain_reps {
        for (k, conf) in CONFS.iter().enumerate() {
            let r = drain_once(rt, o, conf, "");
            eprintln!(
                "  rep {}: {}: {:.0} ops/s ({:.2} s, first op after {:.0} ms; cpu daemon {:.2} s, backend {:.2} s)",
                rep + 1,
                conf.name,
                r.per_s(),
                r.secs,
                r.first_secs * 1000.0,
                r.daemon_cpu,
                r.backend_cpu
            );
            runs[k].push(r);
        }
    }
    print_drain(o, report, &runs);
}

fn print_drain(o: &Opts, report: &mut Report, runs: &[Vec<DrainRun>]) {
    report.section(
        &format!(
            "drain: ops queued with the backend down, then the reference backend starts; \
             backend start to empty queue; target >= {} ops/s batched and >= {}x one-op",
            TARGET_OPS_PER_S, TARGET_RATIO
        ),
        &[
            "configuration",
            "ops",
            "ops/s",
            "min..max",
            "x one-op",
            "first op ms",
            "daemon cpu s",
            "daemon us/op",
            "backend cpu s",
            "backend us/op",
        ],
    );
    let one_op: Vec<f64> = runs[ONE_OP].iter().map(DrainRun::per_s).collect();
    for (k, conf) in CONFS.iter().enumerate() {
        let rs = &runs[k];
        let per_s: Vec<f64> = rs.iter().map(DrainRun::per_s).collect();
        let med = |f: fn(&DrainRun) -> f64| median(&rs.iter().map(f).collect::<Vec<_>>());
        let x = ratio(&per_s, &one_op);
        let ops = conf.ops(o) as f64;
        let (dcpu, bcpu) = (med(|r| r.daemon_cpu), med(|r| r.backend_cpu));
        report.row(vec![
            conf.name.into(),
            conf.ops(o).to_string(),
            f0(median(&per_s)),
            format!(
                "{}..{}",
                f0(per_s.iter().cloned().fold(f64::INFINITY, f64::min)),
                f0(per_s.iter().cloned().fold(0.0, f64::max))
            ),
            f2(x),
            f0(med(|r| r.first_secs) * 1000.0),
            f2(dcpu),
            f2(dcpu / ops * 1e6),
            f2(bcpu),
            f2(bcpu / ops * 1e6),
        ]);
        report.json(json!({
            "scenario": "drain",
            "configuration": conf.name,
            "batch_size": conf.batch_size,
            "backend_args": conf.backend_args,
            "ops": conf.ops(o),
            "ops_per_s": median(&per_s),
            "per_rep_ops_per_s": per_s,
            "ratio_vs_one_op": x,
            "secs": med(|r| r.secs),
            "first_op_ms": med(|r| r.first_secs) * 1000.0,
            "daemon_cpu_s": dcpu,
            "daemon_cpu_us_per_op": dcpu / ops * 1e6,
            "backend_cpu_s": bcpu,
            "backend_cpu_us_per_op": bcpu / ops * 1e6,
            "dead_letters": rs.iter().map(|r| r.dead_letters).max(),
            "reps": rs.len(),
            "target_ops_per_s": if k == ONE_OP { json!(null) } else { json!(TARGET_OPS_PER_S) },
            "target_ratio_vs_one_op": if k == ONE_OP { json!(null) } else { json!(TARGET_RATIO) },
        }));
    }
    report.note(
        "daemon configured with backoff_initial_ms = 20, backoff_max_ms = 50 so it notices the backend within ~50 ms; \
         'first op ms' is backend spawn to the first op off the queue"
            .into(),
    );
}
