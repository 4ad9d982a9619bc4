//! syncd benchmark harness: a real daemon (the `syncd` binary cargo built
//! for this profile, `target/release/syncd` under `cargo bench`) on a temp
//! dir, driven through `syncd::client::Client`, each figure compared with a
//! baseline measured in the same run.
//!
//! ```text
//! cargo bench --bench harness                      # every scenario, defaults
//! cargo bench --bench harness -- --quick           # every scenario, < 2 min
//! cargo bench --bench harness -- writes drain      # some scenarios
//! cargo bench --bench harness -- memory --million  # 1,000,000 queued ops
//! cargo bench --bench harness -- --help
//! ```
//!
//! Scenarios (docs/performance.md has the targets and the latest numbers):
//! - `writes`: N concurrent connections (1, 4, 16, 64; bincode, and JSON
//!   at 1 and 64) doing `put` in a loop for a fixed time; durable writes/s
//!   and p50/p99 latency. Baselines: one thread appending a small record
//!   with write + fdatasync; an app-side SQLite outbox (`sqlite_outbox.rs`)
//!   and an in-process redb outbox with group commit (`redb_outbox.rs`) at
//!   the same client counts.
//! - `reads`: `get` of one existing record from 1 and 16 connections.
//!   Baseline: a raw echo server in this process (one thread, one event
//!   loop) behind the same 4-byte length framing, with the same request and
//!   reply sizes, driven by the same client-side socket and framing code.
//! - `memory`: VmRSS of a fresh idle daemon, then of the same daemon after M
//!   ops were queued (no backend, so they stay), then after a restart on
//!   that store.
//! - `idle`: context switches of all daemon threads over a quiet window
//!   with an empty queue and no backend (target: 0 per second).
//! - `drain`: N ops queued while the backend is down, then the reference
//!   backend starts; time to an empty queue, batched vs one op per request,
//!   with the daemon's and backend's CPU.
//! - `restart`: process start to the first answered `status` on a store
//!   with a long queue, vs on an empty store.
//! - `conflict`: K stale updates at the head of the queue, 1,000,000 ops
//!   behind them and one more update of each record behind those; sync
//!   resumes and each meets a 409 the writer decides, while one connection
//!   times `put`s: time per conflict and put latency, vs the same with
//!   1,000 ops behind (a conflict must not stall other writers).
//! - `scopes`: a reference backend with users; device A subscribes a scope
//!   of 100,000 records: back-fill records/s, vs a fresh device's
//!   revision-2 `v1/changes` pull of as many; and the latency of device B's
//!   writes into another scope A syncs (until A's watch has them) during
//!   the back-fill, vs with no back-fill running.
//!
//! - `queries`: local queries on `--query-records` records (issue 22): an
//!   indexed query returning 50 records vs a scan and vs SQLite in process
//!   with the same index; 64-client writes with two indexes vs none; a live
//!   query's event latency vs the plain watch feed's (`queries.rs`).
//! - `couch`: the CouchDB adapter (`kind = "couchdb"`) vs PouchDB's own
//!   replication (node, leveldb adapter) with the same pouchdb-server
//!   (issue 26): docs/s of a drain of N queued creates vs `replicate.to`,
//!   and of a fresh device's pull of N vs `replicate.from`. Skipped with a
//!   note where node cannot load PouchDB (`couch.rs`, `pouch.rs`).
//! - `attachments`: a `--attach-mb` file (200 MB) attached through the
//!   socket and uploaded to the reference backend, MB/s against a plain
//!   copy of it into the data dir's disk; and small puts on other records
//!   until the backend has them, during the upload vs with none
//!   (`attachments.rs`).
//!
//! - `encryption`: the same durable puts (1 and 64 connections) and
//!   batched drain on a plain and a sealed store (`[store] encryption`),
//!   interleaved, with the sealed/plain ratios; and the start of a sealed
//!   daemon on `--restart-ops` queued ops (`encryption.rs`).
//!
//! Every repeated figure is the median over the repetitions; baselines are
//! interleaved with the measured runs (A B A B ...) and ratios are taken rep
//! by rep, then the median. Output: a table on stdout plus one JSON line per
//! result (lines starting with `{`). Progress goes to stderr.
//!
//! Under `cargo test --all-targets` (no `--bench` argument) it does a few-
//! second smoke run with tiny parameters: it checks that the harness still
//! works and measures nothing.

mod attachments;
mod backend;
mod coalesce;
#[path = "../tests/common/mod.rs"]
mod common;
#[path = "../tests/common_couch/mod.rs"]
mod common_couch;
mod conflict;
mod couch;
mod couch_server;
mod daemon;
mod drain;
mod encryption;
mod fill;
mod idle;
mod live;
mod loops;
mod memory;
mod opts;
mod outbox_report;
mod pouch;
mod procfs;
mod queries;
mod reads;
mod redb_outbox;
mod report;
mod restart;
mod scopes;
mod sqlite_outbox;
mod stats;
mod writes;

use opts::{Opts, USAGE};
use report::Report;

pub(crate) const COLLECTION: &str = "bench";
pub(crate) const READ_ID: &str = "read-target";

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    // `cargo bench` passes --bench; `cargo test --all-targets` does not
    // (and may pass libtest flags, which a smoke run ignores).
    let smoke = !args.iter().any(|a| a == "--bench");
    let opts = if smoke {
        Opts::defaults(opts::Mode::Smoke)
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
            "drain" => drain::drain(&rt, &opts, &mut report),
            "restart" => restart::restart(&rt, &opts, &mut report),
            "live" => live::live(&rt, &opts, &mut report),
            "coalesce" => coalesce::coalesce(&rt, &opts, &mut report),
            "conflict" => conflict::conflict(&rt, &opts, &mut report),
            "scopes" => scopes::scopes(&rt, &opts, &mut report),
            "queries" => queries::queries(&rt, &opts, &mut report),
            "couch" => couch::couch(&rt, &opts, &mut report),
            "attachments" => attachments::attachments(&rt, &opts, &mut report),
            "encryption" => encryption::encryption(&rt, &opts, &mut report),
            _ => unreachable!(),
        }
    }
    report.print_table();
}
