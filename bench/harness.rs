//! syncd benchmark harness: a real daemon (the `syncd` binary cargo built
//! for this profile, `target/release/syncd` under `cargo bench`) on a temp
//! dir, driven through `syncd::client::Client`, each figure compared with a
//! baseline measured in the same run.
//!
//! ```text
//! cargo bench --bench harness                      # every scenario, defaults
//! cargo bench --bench harness -- writes reads      # some scenarios
//! cargo bench --bench harness -- memory --million  # 1,000,000 queued ops
//! cargo bench --bench harness -- --help
//! ```
//!
//! Scenarios (docs/performance.md has the targets and the latest numbers):
//! - `writes`: N concurrent connections (1, 4, 16, 64) doing `put` in a loop
//!   for a fixed time; durable writes/s and p50/p99 latency. Baseline: one
//!   thread appending a small record to a file with write + fdatasync.
//! - `reads`: `get` of one existing record from 1 and 16 connections.
//!   Baseline: a raw echo server in this process (one thread, one event
//!   loop) behind the same 4-byte length framing, with the same request and
//!   reply sizes, driven by the same client-side socket and framing code.
//! - `memory`: VmRSS of a fresh idle daemon, then of the same daemon after M
//!   ops were queued (no backend, so they stay), then after a restart on
//!   that store.
//! - `idle`: context switches of all daemon threads over a quiet window
//!   with an empty queue and no backend (target: 0 per second).
//!
//! Every repeated figure is the median over the repetitions; baselines are
//! interleaved with the measured runs (A B A B ...) and ratios are taken rep
//! by rep, then the median. Output: a table on stdout plus one JSON line per
//! result (lines starting with `{`). Progress goes to stderr.
//!
//! Under `cargo test --all-targets` (no `--bench` argument) it does a few-
//! second smoke run with tiny parameters: it checks that the harness still
//! works and measures nothing.

use std::path::PathBuf;
use std::time::Duration;

#[path = "../tests/common/mod.rs"]
mod common;
mod daemon;
mod idle;
mod loops;
mod memory;
mod procfs;
mod reads;
mod report;
mod stats;
mod writes;

use report::Report;

pub(crate) const COLLECTION: &str = "bench";
pub(crate) const READ_ID: &str = "read-target";

const USAGE: &str = "\
syncd benchmark harness

usage: cargo bench --bench harness -- [SCENARIO...] [OPTIONS]

scenarios (default: all): writes reads memory idle

options:
  --reps N            repetitions of each measured run (default 5)
  --secs S            seconds per measured run of writes/reads (default 1.5)
  --warmup S          seconds of unmeasured warm-up per client count (default 0.5)
  --clients LIST      write client counts (default 1,4,16,64)
  --read-clients LIST read client counts (default 1,16)
  --ops M             ops to queue in `memory` (default 200000)
  --million           same as --ops 1000000
  --writers N         concurrent writers filling the queue (default 128)
  --idle-secs S       length of one idle sampling window (default 5)
  --idle-windows N    idle sampling windows (default 3)
  --record-bytes N    size of the fsync baseline's record (default 128)
  --bin PATH          the syncd binary (default: the one cargo built)

Temp dirs go to $TMPDIR (default /tmp): set it to measure another disk.";

#[derive(Clone, Debug)]
pub(crate) struct Opts {
    pub(crate) scenarios: Vec<String>,
    pub(crate) reps: usize,
    pub(crate) secs: f64,
    pub(crate) warmup: f64,
    pub(crate) clients: Vec<usize>,
    pub(crate) read_clients: Vec<usize>,
    pub(crate) ops: u64,
    pub(crate) writers: usize,
    pub(crate) idle_secs: f64,
    pub(crate) idle_windows: usize,
    pub(crate) record_bytes: usize,
    pub(crate) bin: PathBuf,
    pub(crate) smoke: bool,
}

impl Opts {
    pub(crate) fn defaults(smoke: bool) -> Opts {
        let bin = common::bin();
        if smoke {
            return Opts {
                scenarios: all_scenarios(),
                reps: 1,
                secs: 0.1,
                warmup: 0.0,
                clients: vec![1, 4],
                read_clients: vec![1, 4],
                ops: 2000,
                writers: 8,
                idle_secs: 0.3,
                idle_windows: 1,
                record_bytes: 128,
                bin,
                smoke,
            };
        }
        Opts {
            scenarios: all_scenarios(),
            reps: 5,
            secs: 1.5,
            warmup: 0.5,
            clients: vec![1, 4, 16, 64],
            read_clients: vec![1, 16],
            ops: 200_000,
            writers: 128,
            idle_secs: 5.0,
            idle_windows: 3,
            record_bytes: 128,
            bin,
            smoke,
        }
    }

    pub(crate) fn parse(args: &[String]) -> Result<Opts, String> {
        let mut o = Opts::defaults(false);
        let mut scenarios = Vec::new();
        let mut it = args.iter();
        while let Some(a) = it.next() {
            let mut val = |name: &str| -> Result<String, String> {
                it.next()
                    .cloned()
                    .ok_or_else(|| format!("{name} needs a value"))
            };
            match a.as_str() {
                "--bench" => {}
                "-h" | "--help" => return Err(String::new()),
                "--reps" => o.reps = num(&val(a)?, a)?,
                "--secs" => o.secs = num(&val(a)?, a)?,
                "--warmup" => o.warmup = num(&val(a)?, a)?,
                "--clients" => o.clients = list(&val(a)?, a)?,
                "--read-clients" => o.read_clients = list(&val(a)?, a)?,
                "--ops" => o.ops = num(&val(a)?, a)?,
                "--million" => o.ops = 1_000_000,
                "--writers" => o.writers = num(&val(a)?, a)?,
                "--idle-secs" => o.idle_secs = num(&val(a)?, a)?,
                "--idle-windows" => o.idle_windows = num(&val(a)?, a)?,
                "--record-bytes" => o.record_bytes = num(&val(a)?, a)?,
                "--bin" => o.bin = PathBuf::from(val(a)?),
                s if all_scenarios().iter().any(|x| x == s) => scenarios.push(s.to_owned()),
                other => return Err(format!("unknown argument {other:?}")),
            }
        }
        if o.reps == 0
            || o.secs <= 0.0
            || o.idle_secs <= 0.0
            || o.idle_windows == 0
            || o.writers == 0
            || o.ops == 0
        {
            return Err(
                "--reps, --secs, --idle-secs, --idle-windows, --writers and --ops must be positive"
                    .into(),
            );
        }
        if o.clients.contains(&0) || o.read_clients.contains(&0) {
            return Err("client counts must be positive".into());
        }
        if !scenarios.is_empty() {
            o.scenarios = scenarios;
        }
        Ok(o)
    }

    pub(crate) fn dur(&self) -> Duration {
        Duration::from_secs_f64(self.secs)
    }

    pub(crate) fn warmup(&self) -> Duration {
        Duration::from_secs_f64(self.warmup)
    }
}

fn all_scenarios() -> Vec<String> {
    ["writes", "reads", "memory", "idle"]
        .map(String::from)
        .to_vec()
}

fn num<T: std::str::FromStr>(s: &str, name: &str) -> Result<T, String> {
    s.parse()
        .map_err(|_| format!("{name}: not a number: {s:?}"))
}

fn list(s: &str, name: &str) -> Result<Vec<usize>, String> {
    s.split(',').map(|x| num(x.trim(), name)).collect()
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    // `cargo bench` passes --bench; `cargo test --all-targets` does not
    // (and may pass libtest flags, which a smoke run ignores).
    let smoke = !args.iter().any(|a| a == "--bench");
    let opts = if smoke {
        Opts::defaults(true)
    } else {
        match Opts::parse(&args) {
            Ok(o) => o,
            Err(e) if e.is_empty() => {
                println!("{USAGE}");
                return;
            }
            Err(e) => {
                eprintln!("harness: {e}\n\n{USAGE}");
                std::process::exit(2);
            }
        }
    };
    if smoke {
        eprintln!("harness: smoke run (no --bench argument): checks the harness, measures nothing; use `cargo bench --bench harness`");
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let mut report = Report::new(smoke);
    report.machine(&opts);
    for s in opts.scenarios.clone() {
        match s.as_str() {
            "writes" => writes::writes(&rt, &opts, &mut report),
            "reads" => reads::reads(&rt, &opts, &mut report),
            "memory" => memory::memory(&rt, &opts, &mut report),
            "idle" => idle::idle(&rt, &opts, &mut report),
            _ => unreachable!(),
        }
    }
    report.print_table();
}
