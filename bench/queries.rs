//! The `queries` scenario (issue 22): local queries on a collection of
//! `--query-records` records of about 200 bytes.
//!
//! - An indexed query returning 50 records (`done = false`, `due` from a
//!   date on, sorted by `due`), one client in a loop over the socket:
//!   p50 latency, against the same query answered by a scan (the selector
//!   wrapped in a one-branch `$or`, which no index serves: same records,
//!   same order) and against SQLite in this process with the same index
//!   (an expression index on the same two JSON fields), the baseline an app
//!   would use instead.
//! - 64 clients putting with two indexes declared, against a daemon with
//!   none, interleaved rep by rep.
//! - A live query's event, from just before the put that causes it is sent
//!   (so the commit is inside the figure) to the event's arrival, against
//!   the plain `watch` event for the same kind of put.

use std::time::{Duration, Instant};

use rusqlite::{params, Connection};
use serde_json::{json, Value};
use syncd::client::Client;
use syncd::ipc::codec::{encode, Encoding};
use syncd::ipc::wire::{
    ClientFrame, Doc, Event, QueryEvent, Request, Response, ServerFrame, SortField,
};

use crate::common::Daemon;
use crate::daemon::{launch, Clients};
use crate::loops::{run_loop, Conn, Op};
use crate::reads::{echo_conns, echo_server};
use crate::report::Report;
use crate::stats::{f0, f2, pct, ratio, summarize, Run};
use crate::{Opts, COLLECTION};

const QC: &str = "tasks";
const FROM: &str = "2026-06-01";

/// About 200 bytes: an owner, a title with padding, a due date, done.
fn task(i: u64) -> Value {
    let day = i % 365;
    let due = format!("2026-{:02}-{:02}", day / 31 % 12 + 1, day % 28 + 1);
    json!({
        "title": format!("task {i}: {}", "write the report and send it to the team ".repeat(2)),
        "owner": format!("user-{}", i % 1000),
        "due": due,
        "done": !i.is_multiple_of(4),
        "n": i,
    })
}

fn indexed_selector() -> Value {
    json!({"done": false, "due": {"$gte": FROM}})
}

fn sort() -> Vec<SortField> {
    vec![SortField {
        field: "due".into(),
        desc: false,
    }]
}

pub(crate) fn queries(rt: &tokio::runtime::Runtime, o: &Opts, report: &mut Report) {
    let n = o.query_records;
    let cfg = format!("[collections.{QC}]\nindexes = [\"due\", [\"done\", \"due\"]]\n");
    let d = Daemon::start_with(&launch(&o.bin), &cfg);
    eprintln!("harness: queries: filling {n} records");
    let t0 = Instant::now();
    fill_tasks(rt, &d, n);
    eprintln!("  filled in {:.0} s", t0.elapsed().as_secs_f64());
    report.section(
        "queries: indexed query returning 50 records",
        &["what", "p50 µs", "p99 µs", "queries", "vs indexed"],
    );
    let secs = Duration::from_secs_f64(o.secs);
    let idx = rt.block_on(query_loop(&d, indexed_selector(), 50, secs, usize::MAX));
    let one = rt.block_on(query_loop(&d, indexed_selector(), 1, secs, usize::MAX));
    let scan_runs = if o.smoke { 1 } else { 5 };
    let scan_sel = json!({"$or": [indexed_selector()]});
    let scan = rt.block_on(query_loop(&d, scan_sel, 50, secs, scan_runs));
    let sqlite = sqlite_baseline(n, secs);
    let echo = echo_floor(rt, &d, secs);
    for (what, r) in [
        ("syncd, index [done,due]", &idx),
        ("syncd, the same, limit 1 (fixed cost)", &one),
        ("syncd, scan", &scan),
        ("SQLite in process, same index", &sqlite),
        ("raw socket echo, same frame sizes (floor)", &echo),
    ] {
        report.row(vec![
            what.into(),
            f0(r.p50_us),
            f0(r.p99_us),
            r.ops.to_string(),
            f2(r.p50_us / idx.p50_us),
        ]);
    }
    report.note(format!(
        "{n} records; scan/indexed p50 = {:.0}x (target >= 100x); indexed/SQLite p50 = {:.2}x (target <= 3x); indexed p50 {:.3} ms (target <= 1 ms)",
        scan.p50_us / idx.p50_us,
        idx.p50_us / sqlite.p50_us,
        idx.p50_us / 1000.0
    ));
    report.note(format!(
        "socket floor: echo/SQLite p50 = {:.2}x; (indexed - echo)/SQLite = {:.2}x (the daemon's own work, against SQLite's)",
        echo.p50_us / sqlite.p50_us,
        (idx.p50_us - echo.p50_us) / sqlite.p50_us
    ));
    report.json(
        json!({"scenario": "queries", "records": n, "indexed_p50_us": idx.p50_us, "limit1_p50_us": one.p50_us, "echo_p50_us": echo.p50_us,
        "scan_p50_us": scan.p50_us, "sqlite_p50_us": sqlite.p50_us}),
    );
    live_latency(rt, &d, report, if o.smoke { 5 } else { 300 });
    drop(d);
    indexed_writes(rt, o, report);
}

/// `n` tasks through 64 connections.
fn fill_tasks(rt: &tokio::runtime::Runtime, d: &Daemon, n: u64) {
    rt.block_on(async {
        let writers = 64u64;
        let mut tasks = Vec::new();
        for (w, mut c) in d.clients(writers as usize).await.into_iter().enumerate() {
            tasks.push(tokio::spawn(async move {
                let mut i = w as u64;
                while i < n {
                    c.put(QC, Some(&format!("t{i:07}")), task(i))
                        .await
                        .expect("put");
                    i += writers;
                }
            }));
        }
        for t in tasks {
            t.await.expect("writer");
        }
    });
}

/// One client querying in a loop for `dur` (at most `max` queries, at
/// least one); checks that every answer has `limit` records.
async fn query_loop(d: &Daemon, sel: Value, limit: u32, dur: Duration, max: usize) -> Run {
    let mut c = d.client().await;
    let mut lat = Vec::new();
    let t0 = Instant::now();
    while lat.is_empty() || (t0.elapsed() < dur && lat.len() < max) {
        let t = Instant::now();
        let p = c
            .query(QC, sel.clone(), &sort(), Some(limit), None)
            .await
            .expect("query");
        lat.push(t.elapsed().as_micros().min(u32::MAX as u128) as u32);
        assert_eq!(p.records.len(), limit as usize, "{:?}", p.plan);
    }
    Run::new(lat.len() as u64, t0.elapsed(), lat)
}

/// The floor under any answer over the socket: the harness's echo server
/// (one thread, one event loop, no work) answering frames of the indexed
/// query's request and reply sizes, from one connection in a loop.
fn echo_floor(rt: &tokio::runtime::Runtime, d: &Daemon, dur: Duration) -> Run {
    let (req_len, reply_len) = rt.block_on(async {
        let mut c = d.client().await;
        let p = c
            .query(QC, indexed_selector(), &sort(), Some(50), None)
            .await
            .expect("query");
        let req = ClientFrame {
            id: 1,
            request: Request::Query {
                collection: QC.into(),
                selector: Doc(indexed_selector()),
                sort: sort(),
                limit: Some(50),
                cursor: None,
            },
        };
        let reply = ServerFrame::Reply {
            id: 1,
            body: Response::QueryResult {
                records: p.records,
                next: p.next,
                plan: p.plan,
            },
        };
        let len = |v: Vec<u8>| v.len();
        (
            len(encode(Encoding::Bincode, &req).expect("encode")),
            len(encode(Encoding::Bincode, &reply).expect("encode")),
        )
    });
    let path = d.dir.path().join("query-echo.sock");
    echo_server(&path, reply_len);
    rt.block_on(async {
        let conns = echo_conns(&path, 1, &vec![b'q'; req_len]).await;
        let (conns, _) = run_loop(conns, Op::Echo, Duration::from_millis(200)).await;
        run_loop(conns, Op::Echo, dur).await.1
    })
}

/// The same records in SQLite (WAL), an expression index on the same two
/// fields, the same query read to the last row, in process. Ties on `due`
/// go by rowid, which the index holds (rows go in in id order, so it is
/// the id order syncd uses): `ORDER BY ..., id` would make SQLite sort
/// each run of equal dates in a temp B-tree, 2.5x slower.
fn sqlite_baseline(n: u64, dur: Duration) -> Run {
    let dir = tempfile::tempdir().expect("tempdir");
    let c = Connection::open(dir.path().join("q.db")).expect("sqlite");
    c.pragma_update(None, "journal_mode", "WAL").expect("wal");
    c.execute_batch(
        "CREATE TABLE records (id TEXT PRIMARY KEY, data TEXT NOT NULL);
         CREATE INDEX done_due ON records (json_extract(data, '$.done'), json_extract(data, '$.due'));",
    )
    .expect("schema");
    {
        let tx = c.unchecked_transaction().expect("tx");
        let mut ins = tx
            .prepare("INSERT INTO records VALUES (?1, ?2)")
            .expect("prepare");
        for i in 0..n {
            ins.execute(params![format!("t{i:07}"), task(i).to_string()])
                .expect("insert");
        }
        drop(ins);
        tx.commit().expect("commit");
    }
    let mut q = c
        .prepare(
            "SELECT id, data FROM records WHERE json_extract(data, '$.done') = 0 \
             AND json_extract(data, '$.due') >= ?1 ORDER BY json_extract(data, '$.due'), rowid LIMIT 50",
        )
        .expect("prepare query");
    let mut lat = Vec::new();
    let t0 = Instant::now();
    while lat.is_empty() || t0.elapsed() < dur {
        let t = Instant::now();
        let rows: Vec<(String, String)> = q
            .query_map(params![FROM], |r| Ok((r.get(0)?, r.get(1)?)))
            .expect("query")
            .collect::<Result<_, _>>()
            .expect("rows");
        lat.push(t.elapsed().as_micros().min(u32::MAX as u128) as u32);
        assert_eq!(rows.len(), 50);
    }
    Run::new(lat.len() as u64, t0.elapsed(), lat)
}

/// From before a put is sent to the arrival of the event it causes: a
/// live query's `added`, and a plain watch's `changed`, alternating.
fn live_latency(rt: &tokio::runtime::Runtime, d: &Daemon, report: &mut Report, samples: usize) {
    let (live, plain) = rt.block_on(async {
        let mut w = d.client().await;
        let mut lq = d.client().await;
        lq.watch_query(QC, json!({"owner": "live"}), &[], None)
            .await
            .expect("watch_query");
        match lq.next_event().await.expect("first result") {
            Event::Query(QueryEvent::Result { .. }) => {}
            other => panic!("{other:?}"),
        }
        let mut wq = d.client().await;
        wq.watch(&["plain".to_owned()]).await.expect("watch");
        let (mut live, mut plain) = (Vec::new(), Vec::new());
        for i in 0..samples {
            let t = Instant::now();
            w.put(
                QC,
                Some(&format!("live{i}")),
                json!({"owner": "live", "i": i}),
            )
            .await
            .expect("put");
            next_within(&mut lq).await;
            live.push(t.elapsed().as_micros() as u32);
            let t = Instant::now();
            w.put("plain", Some(&format!("p{i}")), json!({"i": i}))
                .await
                .expect("put");
            next_within(&mut wq).await;
            plain.push(t.elapsed().as_micros() as u32);
        }
        live.sort_unstable();
        plain.sort_unstable();
        (live, plain)
    });
    report.section(
        "queries: live query event after the commit that causes it",
        &["what", "p50 µs", "p99 µs", "samples"],
    );
    for (what, l) in [
        ("live query `added`", &live),
        ("watch `changed` (baseline)", &plain),
    ] {
        report.row(vec![
            what.into(),
            f0(pct(l, 0.5)),
            f0(pct(l, 0.99)),
            l.len().to_string(),
        ]);
    }
    report.note("timed from before the put is sent: the durable commit is inside the figure (target p50 <= 5 ms)".into());
    report.json(json!({"scenario": "queries_live", "live_p50_us": pct(&live, 0.5), "watch_p50_us": pct(&plain, 0.5)}));
}

async fn next_within(c: &mut Client) {
    tokio::time::timeout(Duration::from_secs(10), c.next_event())
        .await
        .expect("an event within 10 s")
        .expect("event");
}

/// 64 clients putting for `--secs` with two indexes declared on the
/// collection they write, against a daemon without, interleaved rep by
/// rep; once with keys that follow the writes' order (`done`, the same for
/// all; `n`, each client's counter, which the clients advance together),
/// once with one whose keys spread over the tree (`client,n`: 64 places
/// where entries go in at once).
fn indexed_writes(rt: &tokio::runtime::Runtime, o: &Opts, report: &mut Report) {
    let clients = if o.smoke { 4 } else { 64 };
    report.section(
        &format!("queries: {clients}-client writes with two indexes"),
        &["indexes", "writes/s", "p50 µs", "p99 µs", "vs no index"],
    );
    for (label, decl) in [
        ("done, n (keys in write order)", "[\"done\", \"n\"]"),
        (
            "done, [client, n] (64 insertion points)",
            "[\"done\", [\"client\", \"n\"]]",
        ),
    ] {
        let cfg = format!("[collections.{COLLECTION}]\nindexes = {decl}\n");
        let with = Daemon::start_with(&launch(&o.bin), &cfg);
        let without = Daemon::start_with(&launch(&o.bin), "");
        let dur = Duration::from_secs_f64(o.secs);
        let (mut a, mut b) = (Vec::new(), Vec::new());
        for _ in 0..o.reps {
            for (d, out) in [(&with, &mut a), (&without, &mut b)] {
                let run = rt.block_on(async {
                    let conns = d
                        .clients(clients)
                        .await
                        .into_iter()
                        .map(Conn::Syncd)
                        .collect();
                    run_loop(conns, Op::Put, dur).await.1
                });
                out.push(run);
            }
        }
        let (sa, sb) = (summarize(&a), summarize(&b));
        let r = ratio(
            &a.iter().map(|r| r.per_s).collect::<Vec<_>>(),
            &b.iter().map(|r| r.per_s).collect::<Vec<_>>(),
        );
        report.row(vec![
            label.into(),
            f0(sa.per_s),
            f0(sa.p50_us),
            f0(sa.p99_us),
            f2(r),
        ]);
        report.row(vec![
            "  (none, same run)".into(),
            f0(sb.per_s),
            f0(sb.p50_us),
            f0(sb.p99_us),
            "1.00".into(),
        ]);
        report.json(
            json!({"scenario": "queries_writes", "indexes": label, "with_per_s": sa.per_s,
            "without_per_s": sb.per_s, "ratio": r, "reps": o.reps}),
        );
    }
    report.note(format!(
        "median of {} interleaved reps (target >= 0.8x)",
        o.reps
    ));
}
