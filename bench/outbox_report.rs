//! The `writes` comparison with app-side outboxes: SQLite (target: syncd
//! at 64 clients >= 10x) and in-process redb with group commit (target:
//! syncd at 64 clients >= 0.7x), each measured in the same repetitions as
//! the daemon and compared rep by rep at the same client count.

use std::time::Duration;

use serde_json::json;
use syncd::ipc::codec::Encoding;

use crate::redb_outbox::RedbOutbox;
use crate::report::Report;
use crate::sqlite_outbox::SqliteOutbox;
use crate::stats::{f0, f2, median, ratio, summarize, Run};
use crate::writes::Series;

const TARGET_X_SQLITE: f64 = 10.0;
const TARGET_X_REDB: f64 = 0.7;

/// Runs of both baselines at each client count.
pub(crate) struct OutboxRuns {
    clients: Vec<usize>,
    sqlite: Vec<Vec<Run>>,
    redb: Vec<Vec<Run>>,
    /// CPU µs per write of the redb outbox's writer thread, per run.
    redb_cpu: Vec<Vec<f64>>,
}

impl OutboxRuns {
    pub(crate) fn new(clients: &[usize]) -> OutboxRuns {
        OutboxRuns {
            clients: clients.to_vec(),
            sqlite: vec![Vec::new(); clients.len()],
            redb: vec![Vec::new(); clients.len()],
            redb_cpu: vec![Vec::new(); clients.len()],
        }
    }

    pub(crate) fn measure(
        &mut self,
        sqlite: &SqliteOutbox,
        redb: &RedbOutbox,
        dur: Duration,
        rep: usize,
    ) {
        for (k, &n) in self.clients.iter().enumerate() {
            let s = sqlite.run(n, dur);
            let c0 = redb.writer_cpu_secs();
            let r = redb.run(n, dur);
            let cpu = redb.writer_cpu_secs() - c0;
            self.redb_cpu[k].push(cpu / (r.ops.max(1) as f64) * 1e6);
            eprintln!(
                "  rep {}: {n} threads: sqlite outbox {:.0}/s (p50 {:.0} us), redb outbox {:.0}/s (p50 {:.0} us)",
                rep + 1,
                s.per_s,
                s.p50_us,
                r.per_s,
                r.p50_us
            );
            self.sqlite[k].push(s);
            self.redb[k].push(r);
        }
    }
}

fn per_s(runs: &[Run]) -> Vec<f64> {
    runs.iter().map(|r| r.per_s).collect()
}

pub(crate) fn print_outboxes(report: &mut Report, o: &OutboxRuns, all: &[Series]) {
    report.section(
        &format!(
            "writes vs app-side outboxes (record row + outbox row per durable write); \
             targets at 64 clients: syncd >= {TARGET_X_SQLITE}x SQLite, >= {TARGET_X_REDB}x in-process redb"
        ),
        &[
            "clients",
            "what",
            "writes/s",
            "min..max",
            "p50 us",
            "p99 us",
            "syncd / this",
            "writer cpu us/write",
        ],
    );
    for (k, &n) in o.clients.iter().enumerate() {
        let syncd = all
            .iter()
            .find(|s| s.clients == n && s.enc == Encoding::Bincode);
        for (what, runs, target, cpu) in [
            (
                "SQLite WAL sync=FULL, 1 conn/thread",
                &o.sqlite[k],
                TARGET_X_SQLITE,
                None,
            ),
            (
                "redb in-process, group commit",
                &o.redb[k],
                TARGET_X_REDB,
                Some(median(&o.redb_cpu[k])),
            ),
        ] {
            let s = summarize(runs);
            let x = syncd.map(|sy| ratio(&per_s(&sy.runs), &per_s(runs)));
            report.row(vec![
                n.to_string(),
                what.into(),
                f0(s.per_s),
                format!("{}..{}", f0(s.min_per_s), f0(s.max_per_s)),
                f0(s.p50_us),
                f0(s.p99_us),
                x.map(f2).unwrap_or_else(|| "-".into()),
                cpu.map(f0).unwrap_or_else(|| "-".into()),
            ]);
            report.json(json!({
                "scenario": "writes_baseline_outbox",
                "baseline": what,
                "clients": n,
                "writes_per_s": s.per_s,
                "min_per_s": s.min_per_s,
                "max_per_s": s.max_per_s,
                "p50_us": s.p50_us,
                "p99_us": s.p99_us,
                "ratio_syncd_vs_baseline": x,
                "writer_cpu_us_per_write": cpu,
                "target_ratio_at_64": target,
                "reps": runs.len(),
            }));
        }
    }
}
