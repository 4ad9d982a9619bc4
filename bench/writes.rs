//! `writes`: durable puts from 1..64 connections against one thread doing
//! write + fdatasync per record.

use std::time::Instant;

use serde_json::{json, Value};

use crate::daemon::{start_daemon, Clients};
use crate::loops::{fsync_run, run_loop, Conn, Op};
use crate::procfs::cpu_secs;
use crate::report::Report;
use crate::stats::{f0, f2, median, ratio, summarize, Run};
use crate::Opts;

pub(crate) fn writes(rt: &tokio::runtime::Runtime, o: &Opts, report: &mut Report) {
    eprintln!(
        "harness: writes: clients {:?}, {} reps x {} s",
        o.clients, o.reps, o.secs
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

    // Connections for every client count, warmed up once.
    let mut pools: Vec<Vec<Conn>> = Vec::new();
    for &n in &o.clients {
        let conns: Vec<Conn> = rt
            .block_on(d.clients(n))
            .into_iter()
            .map(Conn::Syncd)
            .collect();
        let (conns, _) = rt.block_on(run_loop(conns, Op::Put, o.warmup()));
        pools.push(conns);
    }
    let _ = fsync_run(&mut file, &record, o.warmup());

    let mut base_runs = Vec::new();
    let mut runs: Vec<Vec<Run>> = vec![Vec::new(); o.clients.len()];
    let mut cpu: Vec<Vec<f64>> = vec![Vec::new(); o.clients.len()];
    for rep in 0..o.reps {
        let b = fsync_run(&mut file, &record, o.dur());
        eprintln!("  rep {}: fsync baseline {:.0}/s", rep + 1, b.per_s);
        base_runs.push(b);
        for (k, &n) in o.clients.iter().enumerate() {
            let conns = std::mem::take(&mut pools[k]);
            let c0 = cpu_secs(pid);
            let t0 = Instant::now();
            let (conns, r) = rt.block_on(run_loop(conns, Op::Put, o.dur()));
            cpu[k].push((cpu_secs(pid) - c0) / t0.elapsed().as_secs_f64());
            pools[k] = conns;
            eprintln!(
                "  rep {}: {n} clients {:.0} writes/s p50 {:.0} us p99 {:.0} us",
                rep + 1,
                r.per_s,
                r.p50_us,
                r.p99_us
            );
            runs[k].push(r);
        }
    }
    drop(pools);

    let base = summarize(&base_runs);
    let base_per_s: Vec<f64> = base_runs.iter().map(|r| r.per_s).collect();
    report.section(
        "writes: durable put, one request in flight per connection",
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
    for (k, &n) in o.clients.iter().enumerate() {
        let s = summarize(&runs[k]);
        let per_s: Vec<f64> = runs[k].iter().map(|r| r.per_s).collect();
        let x = ratio(&per_s, &base_per_s);
        let cpu_pct = median(&cpu[k]) * 100.0;
        let cpu_per_write = median(
            &cpu[k]
                .iter()
                .zip(&per_s)
                .map(|(c, w)| c / w * 1e6)
                .collect::<Vec<_>>(),
        );
        report.row(vec![
            n.to_string(),
            f0(s.per_s),
            format!("{}..{}", f0(s.min_per_s), f0(s.max_per_s)),
            f0(s.p50_us),
            f0(s.p99_us),
            f2(x),
            f0(cpu_pct),
            f0(cpu_per_write),
        ]);
        report.json(json!({
            "scenario": "writes",
            "clients": n,
            "writes_per_s": s.per_s,
            "min_per_s": s.min_per_s,
            "max_per_s": s.max_per_s,
            "p50_us": s.p50_us,
            "p99_us": s.p99_us,
            "ratio_vs_fsync_baseline": x,
            "daemon_cpu_pct": cpu_pct,
            "daemon_cpu_us_per_write": cpu_per_write,
            "ops": s.ops,
            "reps": o.reps,
            "target_writes_per_s": if n == 64 { json!(50_000) } else { Value::Null },
        }));
    }
}
