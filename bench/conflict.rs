//! `conflict`: whether deciding a conflict stalls the other writers when a
//! long queue waits behind it (target: with 1,000,000 queued ops it must
//! not; the writer decides a 409 through the record's queue index, never a
//! scan of the queue).
//!
//! One run: a daemon on the reference backend creates K records and syncs
//! them; sync is paused; another device (the harness, through
//! `syncd::backend::client::BackendClient`) updates the K records on the
//! server; the daemon updates them too (now stale) and Q more ops to other
//! records are queued behind, then one more update of each of the K
//! records (its *tail*, at the far end of the queue). Then sync resumes
//! under `last-write-wins`: each push round sends a batch that stops at the
//! next stale update's 409, and the writer decides it (a re-send at the
//! head; the tail stays) while the Q ops wait. The tail is what makes the
//! queue's length matter: deciding a conflict needs the record's later ops,
//! and finding them by walking the queue (as before the record index) would
//! decode all Q ops inside the writer's transaction, once per conflict.
//! Meanwhile one connection does `put`s in a loop, each timed. The window
//! ends with the K-th `conflict` event on a watcher of the K records'
//! collection; `status` must then count K resolved conflicts.
//!
//! No op of the Q is pushed inside the window (every batch stops at a
//! conflict), so its put latencies are the conflicts' effect, not a drain's.
//! The same puts are also timed while still paused, after the fill: the
//! cost of a commit on a store of that size, with no sync at all. Baseline:
//! the same run with a short queue behind (`--conflict-base-ops`, at least
//! one batch, so that every push round sends a full batch in both), in the
//! same repetition (A B A B), ratios rep by rep.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use syncd::backend::client::{BackendClient, BatchOutcome, OpResult};
use syncd::backend::protocol::{OpKind, WireOp};
use syncd::client::Client;
use syncd::domain::{ConflictOutcome, Event, RecordView};
use syncd::ipc::wire::Request;

use crate::backend::{free_port, RefBackend};
use crate::common::Daemon;
use crate::daemon::{launch, Clients};
use crate::drain::{daemon_config, wait_empty};
use crate::fill::fill;
use crate::report::Report;
use crate::stats::{f0, f2, median, pct, ratio};
use crate::Opts;

/// The K records in conflict.
const COLL: &str = "conflict";
/// The timed puts' records.
const PUTS: &str = "puts";

/// Put latencies of one window.
#[derive(Clone, Copy, Debug, Default)]
struct Lat {
    puts: usize,
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
}

impl Lat {
    fn of(mut us: Vec<u32>) -> Lat {
        us.sort_unstable();
        Lat {
            puts: us.len(),
            p50_ms: pct(&us, 0.5) / 1000.0,
            p99_ms: pct(&us, 0.99) / 1000.0,
            max_ms: us.last().copied().unwrap_or(0) as f64 / 1000.0,
        }
    }
}

/// One measured run.
#[derive(Clone, Copy, Debug, Default)]
struct ConflictRun {
    /// Ops queued behind the K conflicts.
    queued: u64,
    fill_s: f64,
    /// Resume to the first conflict event.
    first_ms: f64,
    /// Resume to the K-th conflict event.
    all_s: f64,
    /// (K-th - first) / (K - 1): one push round ending in a 409 and its
    /// decision (the first alone when K = 1).
    per_conflict_ms: f64,
    /// Longest time between two consecutive conflict events.
    max_gap_ms: f64,
    /// Puts from resume to the K-th conflict event.
    window: Lat,
    /// Puts while paused, after the fill.
    paused: Lat,
}

fn record_id(i: usize) -> String {
    format!("c{i}")
}

pub(crate) async fn set_paused(c: &mut Client, paused: bool) {
    let req = if paused {
        Request::Pause {}
    } else {
        Request::Resume {}
    };
    c.request(req).await.expect("pause/resume");
}

/// Another device's update of each record, on the version the daemon has.
/// Its `client_ts` is a minute old, so the daemon's later edit wins under
/// last-write-wins and is re-sent.
async fn edit_on_server(port: u16, recs: &[RecordView]) {
    let url = format!("http://127.0.0.1:{port}/");
    let other = BackendClient::new(
        &url,
        None,
        "bench-other-device",
        Duration::from_secs(30),
        None,
    )
    .expect("backend client");
    let ts = syncd::now_ms() - 60_000;
    let ops: Vec<WireOp> = recs
        .iter()
        .enumerate()
        .map(|(i, r)| WireOp {
            op_id: format!("bench-other-{i}"),
            client_id: "bench-other-device".into(),
            collection: COLL.into(),
            kind: OpKind::Update,
            id: Some(r.server_id.clone().expect("synced record has a server id")),
            local_id: r.id.clone(),
            base_version: Some(r.version.expect("synced record has a version")),
            data: json!({"v": 1, "by": "other"}).as_object().cloned(),
            client_ts: ts,
            scope: None,
            home: None,
        })
        .collect();
    match other.apply_batch(&ops).await.expect("server edit") {
        BatchOutcome::Results(rs) if rs.len() == ops.len() => {
            assert!(
                rs.iter().all(|r| matches!(r, OpResult::Applied(_))),
                "server edit not applied: {rs:?}"
            );
        }
        other => panic!("server edit: {other:?}"),
    }
}

/// Waits until the worker shows `paused` (its pull stopped).
pub(crate) async fn wait_paused(c: &mut Client) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while c.status().await.expect("status").state != "paused" {
        assert!(Instant::now() < deadline, "daemon never showed paused");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// K synced records, then (paused) edited on the server and, stale, on
/// the daemon; the daemon's edits are the first K ops of its queue.
fn make_conflicts(rt: &tokio::runtime::Runtime, d: &Daemon, port: u16, k: usize) {
    rt.block_on(async {
        let mut c = d.client().await;
        for i in 0..k {
            c.put(COLL, Some(&record_id(i)), json!({"v": 0}))
                .await
                .expect("put");
        }
    });
    wait_empty(rt, d, k as u64, Instant::now());
    rt.block_on(async {
        let mut c = d.client().await;
        set_paused(&mut c, true).await;
        wait_paused(&mut c).await;
        let mut recs = Vec::with_capacity(k);
        for i in 0..k {
            recs.push(c.get(COLL, &record_id(i)).await.expect("get"));
        }
        edit_on_server(port, &recs).await;
        for (i, before) in recs.iter().enumerate() {
            c.put(COLL, Some(&record_id(i)), json!({"v": 2}))
                .await
                .expect("put");
            let now = c.get(COLL, &record_id(i)).await.expect("get");
            // Still on the version the server edit replaced: its push
            // meets a 409.
            assert_eq!(
                now.version, before.version,
                "record {i} took the server's edit before its own"
            );
        }
    });
}

/// One more update of each record in conflict, at the end of the queue
/// (behind the fill's ops, so it folds into nothing); returns the depth.
fn queue_tails(rt: &tokio::runtime::Runtime, d: &Daemon, k: usize) -> u64 {
    rt.block_on(async {
        let mut c = d.client().await;
        for i in 0..k {
            c.put(COLL, Some(&record_id(i)), json!({"v": 3}))
                .await
                .expect("put");
        }
        c.status().await.expect("status").queue_depth
    })
}

/// Puts new records on `c` until `stop`; returns (start, latency µs) of
/// each, the start in seconds from `t0`.
async fn put_loop(mut c: Client, stop: Arc<AtomicBool>, t0: Instant) -> Vec<(f64, u32)> {
    let mut out = Vec::with_capacity(4096);
    let mut i = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let t = Instant::now();
        c.put(PUTS, None, json!({"title": "meanwhile", "n": i}))
            .await
            .expect("put");
        let us = t.elapsed().as_micros().min(u32::MAX as u128) as u32;
        out.push(((t - t0).as_secs_f64(), us));
        i += 1;
    }
    out
}

/// The puts of [`put_loop`] for `dur`.
async fn puts_for(d: &Daemon, dur: Duration) -> Lat {
    let stop = Arc::new(AtomicBool::new(false));
    let task = tokio::spawn(put_loop(d.client().await, stop.clone(), Instant::now()));
    tokio::time::sleep(dur).await;
    stop.store(true, Ordering::Relaxed);
    let samples = task.await.expect("putter");
    Lat::of(samples.into_iter().map(|(_, us)| us).collect())
}

/// Seconds from `t0` to each of the next `k` conflict events.
async fn conflict_times(w: &mut Client, k: usize, t0: Instant) -> Vec<f64> {
    let limit = Duration::from_secs(120 + 2 * k as u64);
    let mut out = Vec::with_capacity(k);
    while out.len() < k {
        let left = limit.saturating_sub(t0.elapsed());
        let ev = tokio::time::timeout(left, w.next_event())
            .await
            .unwrap_or_else(|_| panic!("{} of {k} conflicts decided in {limit:?}", out.len()))
            .expect("event");
        match ev {
            Event::Conflict { result, id, .. } => {
                assert_eq!(result, ConflictOutcome::Resent, "conflict on {id}");
                out.push(t0.elapsed().as_secs_f64());
            }
            Event::ResyncNeeded { missed } => panic!("watcher missed {missed} events"),
            _ => {}
        }
    }
    out
}

/// Paused puts, then resume and the K conflicts with puts beside them.
fn measure(rt: &tokio::runtime::Runtime, o: &Opts, d: &Daemon, run: &mut ConflictRun) {
    let k = o.conflict_records;
    rt.block_on(async {
        run.paused = puts_for(d, o.dur()).await;
        let mut ctl = d.client().await;
        let resolved = ctl.status().await.expect("status").conflicts_resolved;
        let mut watcher = d.client().await;
        watcher.watch(&[COLL.to_owned()]).await.expect("watch");
        let stop = Arc::new(AtomicBool::new(false));
        let putter = d.client().await;
        let t0 = Instant::now();
        let task = tokio::spawn(put_loop(putter, stop.clone(), t0));
        set_paused(&mut ctl, false).await;
        let times = conflict_times(&mut watcher, k, t0).await;
        stop.store(true, Ordering::Relaxed);
        let end = times[k - 1];
        let samples = task.await.expect("putter");
        run.window = Lat::of(
            samples
                .into_iter()
                .filter(|(start, _)| *start <= end)
                .map(|(_, us)| us)
                .collect(),
        );
        run.first_ms = times[0] * 1000.0;
        run.all_s = end;
        run.per_conflict_ms = if k > 1 {
            (end - times[0]) / (k - 1) as f64 * 1000.0
        } else {
            times[0] * 1000.0
        };
        run.max_gap_ms = times.windows(2).map(|w| w[1] - w[0]).fold(0.0, f64::max) * 1000.0;
        let s = ctl.status().await.expect("status");
        assert_eq!(
            s.conflicts_resolved - resolved,
            k as u64,
            "conflicts resolved"
        );
    });
}

fn conflict_once(rt: &tokio::runtime::Runtime, o: &Opts, queued: u64) -> ConflictRun {
    let port = free_port();
    let cfg = format!(
        "{}conflict = \"last-write-wins\"\n",
        daemon_config(port, None)
    );
    let mut d = Daemon::start_with(&launch(&o.bin), &cfg);
    let b = RefBackend::start(&o.bin, port, &d.dir.path().join("backend-data"), &[]);
    let k = o.conflict_records;
    make_conflicts(rt, &d, port, k);
    let (_, fill_s) = fill(rt, &d, queued, o.writers);
    let depth = queue_tails(rt, &d, k);
    assert_eq!(depth, queued + 2 * k as u64, "queue depth after the fill");
    let mut run = ConflictRun {
        queued,
        fill_s,
        ..ConflictRun::default()
    };
    measure(rt, o, &d, &mut run);
    // The Q ops are draining now: nothing to wait for.
    d.kill9();
    drop(b);
    run
}

/// `[sync] batch_size`'s default: the baseline should queue at least one
/// batch behind the conflicts.
const DEFAULT_BATCH_SIZE: u64 = 500;

pub(crate) fn conflict(rt: &tokio::runtime::Runtime, o: &Opts, report: &mut Report) {
    let sizes = [o.conflict_base_ops, o.conflict_ops];
    eprintln!(
        "harness: conflict: {} records in conflict, {} (baseline {}) ops queued behind, {} reps",
        o.conflict_records, sizes[1], sizes[0], o.conflict_reps
    );
    if sizes[0] < DEFAULT_BATCH_SIZE {
        eprintln!(
            "harness: conflict: warning: a baseline of {} ops is less than one push batch \
             ({DEFAULT_BATCH_SIZE}): its push rounds are shorter, so the ratios are not comparable",
            sizes[0]
        );
    }
    let mut runs: Vec<Vec<ConflictRun>> = vec![Vec::new(); sizes.len()];
    for rep in 0..o.conflict_reps {
        for (n, &queued) in sizes.iter().enumerate() {
            let r = conflict_once(rt, o, queued);
            eprintln!(
                "  rep {}: {} queued (fill {:.1} s): first conflict {:.0} ms, {:.1} ms per conflict \
                 (max gap {:.0} ms), all in {:.2} s; {} puts p50/p99/max {:.2}/{:.2}/{:.2} ms \
                 (paused: p99 {:.2}, max {:.2} ms)",
                rep + 1,
                queued,
                r.fill_s,
                r.first_ms,
                r.per_conflict_ms,
                r.max_gap_ms,
                r.all_s,
                r.window.puts,
                r.window.p50_ms,
                r.window.p99_ms,
                r.window.max_ms,
                r.paused.p99_ms,
                r.paused.max_ms
            );
            runs[n].push(r);
        }
    }
    print_conflict(o, report, &runs);
}

fn print_conflict(o: &Opts, report: &mut Report, runs: &[Vec<ConflictRun>]) {
    report.section(
        &format!(
            "conflict: {} stale updates at the head of the queue, N ops behind, then one more \
             update of each record; resume to all decided (last-write-wins), one connection doing puts meanwhile; target: no stall \
             (time per conflict and put latency independent of N)",
            o.conflict_records
        ),
        &[
            "queued behind",
            "first ms",
            "ms/conflict",
            "x base",
            "max gap ms",
            "all s",
            "puts",
            "put p50 ms",
            "put p99 ms",
            "put max ms",
            "p99 x base",
            "paused p99 ms",
            "paused max ms",
        ],
    );
    for (n, rs) in runs.iter().enumerate() {
        let med = |f: fn(&ConflictRun) -> f64| median(&col(runs, n, f));
        let x = |f: fn(&ConflictRun) -> f64| ratio(&col(runs, n, f), &col(runs, 0, f));
        report.row(vec![
            rs[0].queued.to_string(),
            f0(med(|r| r.first_ms)),
            f2(med(|r| r.per_conflict_ms)),
            f2(x(|r| r.per_conflict_ms)),
            f0(med(|r| r.max_gap_ms)),
            f2(med(|r| r.all_s)),
            f0(med(|r| r.window.puts as f64)),
            f2(med(|r| r.window.p50_ms)),
            f2(med(|r| r.window.p99_ms)),
            f2(med(|r| r.window.max_ms)),
            f2(x(|r| r.window.p99_ms)),
            f2(med(|r| r.paused.p99_ms)),
            f2(med(|r| r.paused.max_ms)),
        ]);
        report.json(json_line(o, runs, n));
    }
    report.note(
        "each conflict is one push round (a batch that stops at the 409) plus the writer's decision, \
         with one more op of the record at the end of the queue; no queued op is pushed before the last conflict, so the puts see the conflicts, not a drain; \
         'paused' puts: the same loop on the same store before sync resumed"
            .into(),
    );
}

/// Column `f` of configuration `n`, one value per rep.
fn col(runs: &[Vec<ConflictRun>], n: usize, f: fn(&ConflictRun) -> f64) -> Vec<f64> {
    runs[n].iter().map(f).collect()
}

/// The JSON result of configuration `n` (0 is the baseline).
fn json_line(o: &Opts, runs: &[Vec<ConflictRun>], n: usize) -> serde_json::Value {
    let med = |f: fn(&ConflictRun) -> f64| median(&col(runs, n, f));
    let x = |f: fn(&ConflictRun) -> f64| ratio(&col(runs, n, f), &col(runs, 0, f));
    json!({
        "scenario": "conflict",
        "records_in_conflict": o.conflict_records,
        "queued_behind": runs[n][0].queued,
        "reps": runs[n].len(),
        "first_conflict_ms": med(|r| r.first_ms),
        "ms_per_conflict": med(|r| r.per_conflict_ms),
        "per_rep_ms_per_conflict": col(runs, n, |r| r.per_conflict_ms),
        "ms_per_conflict_ratio_vs_base": x(|r| r.per_conflict_ms),
        "max_gap_ms": med(|r| r.max_gap_ms),
        "all_decided_s": med(|r| r.all_s),
        "puts": med(|r| r.window.puts as f64),
        "put_p50_ms": med(|r| r.window.p50_ms),
        "put_p99_ms": med(|r| r.window.p99_ms),
        "put_max_ms": med(|r| r.window.max_ms),
        "per_rep_put_max_ms": col(runs, n, |r| r.window.max_ms),
        "put_p99_ratio_vs_base": x(|r| r.window.p99_ms),
        "put_max_ratio_vs_base": x(|r| r.window.max_ms),
        "paused_put_p50_ms": med(|r| r.paused.p50_ms),
        "paused_put_p99_ms": med(|r| r.paused.p99_ms),
        "paused_put_max_ms": med(|r| r.paused.max_ms),
        "fill_s": med(|r| r.fill_s),
    })
}
