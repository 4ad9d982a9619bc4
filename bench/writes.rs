//! `writes`: durable puts from 1..64 connections (bincode, and JSON at a
//! few client counts) against three baselines measured in the same
//! repetitions: one thread doing write + fdatasync per record, an app-side
//! SQLite outbox, and an in-process redb outbox with group commit.

use std::time::Instant;

use serde_json::{json, Value};
use syncd::ipc::codec::Encoding;

use crate::common::Daemon;
use crate::daemon::{start_daemon, Clients};
use crate::loops::{fsync_run, run_loop, Conn, Op};
use crate::outbox_report::{print_outboxes, OutboxRuns};
use crate::procfs::cpu_secs;
use crate::redb_outbox::RedbOutbox;
use crate::report::Report;
use crate::sqlite_outbox::SqliteOutbox;
use crate::stats::{f0, f2, median, ratio, summarize, Run};
use crate::Opts;

/// One client count over one encoding, measured every repetition.
pub(crate) struct Series {
    pub(crate) clients: usize,
    pub(crate) enc: Encoding,
    pool: Vec<Conn>,
    pub(crate) runs: Vec<Run>,
    cpu: Vec<f64>,
}

impl Series {
    fn label(&self) -> String {
        match self.enc {
            Encoding::Bincode => self.clients.to_string(),
            Encoding::Json => format!("{} (json)", self.clients),
        }
    }

    /// Median daemon CPU (fraction of a core) and CPU µs per write.
    fn cpu(&self) -> (f64, f64) {
        let per_write: Vec<f64> = self
            .cpu
            .iter()
            .zip(&self.runs)
            .map(|(c, r)| c / r.per_s * 1e6)
            .collect();
        (median(&self.cpu), median(&per_write))
    }
}

/// Connections for every series, warmed up once.
fn series(rt: &tokio::runtime::Runtime, d: &Daemon, o: &Opts) -> Vec<Series> {
    let bincode = o.clients.iter().map(|&n| (n, Encoding::Bincode));
    let json = o.json_clients.iter().map(|&n| (n, Encoding::Json));
    bincode
        .chain(json)
        .map(|(clients, enc)| {
            let conns: Vec<Conn> = rt
                .block_on(d.clients_with(clients, enc))
                .into_iter()
                .map(Conn::Syncd)
                .collect();
            let (pool, _) = rt.block_on(run_loop(conns, Op::Put, o.warmup()));
            Series {
                clients,
                enc,
                pool,
                runs: Vec::new(),
                cpu: Vec::new(),
            }
        })
        .collect()
}

fn measure(rt: &tokio::runtime::Runtime, pid: u32, o: &Opts, rep: usize, s: &mut Series) {
    let conns = std::mem::take(&mut s.pool);
    let c0 = cpu_secs(pid);
    let t0 = Instant::now();
    let (conns, r) = rt.block_on(run_loop(conns, Op::Put, o.dur()));
    s.cpu
        .push((cpu_secs(pid) - c0) / t0.elapsed().as_secs_f64());
    s.pool = conns;
    eprintln!(
        "  rep {}: {} clients {:.0} writes/s p50 {:.0} us p99 {:.0} us",
        rep + 1,
        s.label(),
        r.per_s,
        r.p50_us,
        r.p99_us
    );
    s.runs.push(r);
}

pub(crate) fn writes(rt: &tokio::runtime::Runtime, o: &Opts, report: &mut Report) {
    eprintln!(
        "harness: writes: clients {:?}, json {:?}, outbox baselines {:?}, {} reps x {} s",
        o.clients, o.json_clients, o.outbox_clients, o.reps, o.secs
    );
    let d = start_daemon(&o.bin);
    let pid = d.pid();
    let base_dir = d.dir.path().join("baseline");
    std::fs::create_dir_all(&base_dir).expect("baseline dir");
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(base_dir.join("fsync.log"))
        .expect("baseline file");
    let record = vec![b'x'; o.record_bytes];
    let sqlite = SqliteOutbox::create(&base_dir);
    let redb = RedbOutbox::create(&base_dir);

    let mut all = series(rt, &d, o);
    let _ = fsync_run(&mut file, &record, o.warmup());
    let mut base_runs = Vec::new();
    let mut outboxes = OutboxRuns::new(&o.outbox_clients);
    for rep in 0..o.reps {
        let b = fsync_run(&mut file, &record, o.dur());
        eprintln!("  rep {}: fsync baseline {:.0}/s", rep + 1, b.per_s);
        base_runs.push(b);
        outboxes.measure(&sqlite, &redb, o.dur(), rep);
        for s in &mut all {
            measure(rt, pid, o, rep, s);
        }
    }
    for s in &mut all {
        s.pool.clear();
    }
    print_writes(o, report, &base_runs, &all);
    print_outboxes(report, &outboxes, &all);
}

fn print_writes(o: &Opts, report: &mut Report, base_runs: &[Run], all: &[Series]) {
    let base = summarize(base_runs);
    let base_per_s: Vec<f64> = base_runs.iter().map(|r| r.per_s).collect();
    report.section(
        "writes: durable put, one request in flight per connection (bincode unless marked json)",
        &[
            "clients",
            "writes/s",
            "min..max",
            "p50 us",
            "p99 us",
            "x fsync baseline",
            "daemon cpu %",
            "cpu us/write",
        ],
    );
    report.row(vec![
        "fsync baseline".into(),
        f0(base.per_s),
        format!("{}..{}", f0(base.min_per_s), f0(base.max_per_s)),
        f0(base.p50_us),
        f0(base.p99_us),
        "1.00".into(),
        "-".into(),
        "-".into(),
    ]);
    report.json(json!({
        "scenario": "writes_baseline_fsync",
        "record_bytes": o.record_bytes,
        "writes_per_s": base.per_s,
        "min_per_s": base.min_per_s,
        "max_per_s": base.max_per_s,
        "p50_us": base.p50_us,
        "p99_us": base.p99_us,
        "ops": base.ops,
        "reps": o.reps,
    }));
    for s in all {
        let sum = summarize(&s.runs);
        let per_s: Vec<f64> = s.runs.iter().map(|r| r.per_s).collect();
        let x = ratio(&per_s, &base_per_s);
        let (cpu, cpu_per_write) = s.cpu();
        report.row(vec![
            s.label(),
            f0(sum.per_s),
            format!("{}..{}", f0(sum.min_per_s), f0(sum.max_per_s)),
            f0(sum.p50_us),
            f0(sum.p99_us),
            f2(x),
            f0(cpu * 100.0),
            f0(cpu_per_write),
        ]);
        report.json(json!({
            "scenario": "writes",
            "clients": s.clients,
            "encoding": s.enc.as_str(),
            "writes_per_s": sum.per_s,
            "min_per_s": sum.min_per_s,
            "max_per_s": sum.max_per_s,
            "p50_us": sum.p50_us,
            "p99_us": sum.p99_us,
            "ratio_vs_fsync_baseline": x,
            "daemon_cpu_pct": cpu * 100.0,
            "daemon_cpu_us_per_write": cpu_per_write,
            "ops": sum.ops,
            "reps": o.reps,
            "target_writes_per_s": if s.clients == 64 { json!(50_000) } else { Value::Null },
        }));
    }
}
