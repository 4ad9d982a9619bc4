//! `couch`: syncd's CouchDB adapter (`[backend] kind = "couchdb"`) against
//! PouchDB's own replication to and from the same server (issue 26: "the
//! drain to CouchDB at least as fast as PouchDB's own replication to the
//! same server").
//!
//! One pouchdb-server (in memory, `couch_server.rs`) serves every run; each
//! run gets a fresh database. Each repetition, in this order (A B A B):
//!
//! - **drain, PouchDB** (baseline): N documents put into a fresh leveldb db
//!   (not timed), then `replicate.to` an empty database (`pouch.rs`).
//! - **drain, syncd** (measured): a daemon on an empty database, paused;
//!   the same N documents `put` as creates (queued); timed from `resume`
//!   until `status` shows an empty queue. No dead letters, and CouchDB must
//!   then hold N documents.
//! - **pull, PouchDB** (baseline): `replicate.from` the database syncd just
//!   filled (syncd's document shape) into a fresh leveldb db.
//! - **pull, syncd** (measured): a fresh daemon on that database, started
//!   paused (the pause is durable: set while it pointed nowhere, then a
//!   restart on the real URL), timed from `resume` until the last document
//!   of CouchDB's `_changes` feed is local (pages land in feed order, one
//!   transaction each, so it is the last to arrive); then every record is
//!   counted.
//!
//! Skipped, with a note, when node cannot load PouchDB or pouchdb-server
//! is missing (the smoke run never installs it).

use std::time::{Duration, Instant};

use serde_json::json;

use crate::backend::free_port;
use crate::common::Daemon;
use crate::common_couch::Couch;
use crate::conflict::{set_paused, wait_paused};
use crate::couch_server::{self as server, db_url, doc_count, drop_db, fresh_db};
use crate::daemon::{launch, Clients};
use crate::drain::wait_empty;
use crate::fill::fill;
use crate::pouch::{Pouch, PouchRun};
use crate::procfs::cpu_secs;
use crate::report::Report;
use crate::scopes::count;
use crate::stats::{f0, f2, median, ratio};
use crate::{Opts, COLLECTION};

/// Target: syncd's docs/s over PouchDB's, drain and pull.
const TARGET_RATIO: f64 = 1.0;
/// How often the pulling daemon is asked for the feed's last document.
const POLL: Duration = Duration::from_millis(20);

/// One timed run of either side.
#[derive(Clone, Copy, Debug, Default)]
struct Run {
    docs: u64,
    secs: f64,
    /// The client side's CPU over the run: the daemon, or node.
    cpu_secs: f64,
}

impl Run {
    fn per_s(&self) -> f64 {
        self.docs as f64 / self.secs
    }
}

impl From<PouchRun> for Run {
    fn from(p: PouchRun) -> Run {
        Run {
            docs: p.docs,
            secs: p.secs,
            cpu_secs: p.cpu_secs,
        }
    }
}

/// One repetition: [PouchDB, syncd] for the drain and for the pull.
#[derive(Clone, Copy, Debug, Default)]
struct Rep {
    drain: [Run; 2],
    pull: [Run; 2],
}

/// A device on the CouchDB database at `url`, noticing it within ~50 ms.
fn daemon_config(url: &str) -> String {
    format!(
        "[backend]\nkind = \"couchdb\"\nurl = {url:?}\n\n[sync]\n\
         backoff_initial_ms = 20\nbackoff_max_ms = 50\n"
    )
}

fn pause(rt: &tokio::runtime::Runtime, d: &Daemon) {
    rt.block_on(async {
        let mut c = d.client().await;
        set_paused(&mut c, true).await;
        wait_paused(&mut c).await;
    });
}

/// Drain, syncd: `n` creates queued while paused, resume → empty queue.
fn syncd_drain(rt: &tokio::runtime::Runtime, o: &Opts, url: &str, n: u64) -> Run {
    let mut d = Daemon::start_with(&launch(&o.bin), &daemon_config(url));
    pause(rt, &d);
    let (depth, _) = fill(rt, &d, n, o.writers);
    assert_eq!(depth, n, "queue depth after the fill");
    let c0 = cpu_secs(d.pid());
    let t0 = Instant::now();
    rt.block_on(async { set_paused(&mut d.client().await, false).await });
    let (_, secs, dead_letters) = wait_empty(rt, &d, n, t0);
    let cpu_secs = cpu_secs(d.pid()) - c0;
    assert_eq!(dead_letters, 0, "dead letters; log:\n{}", d.log_text());
    d.stop();
    Run {
        docs: n,
        secs,
        cpu_secs,
    }
}

/// A fresh daemon on `url` that has not yet contacted it: paused while
/// configured for a port where nothing listens, then restarted on `url`.
fn paused_device(rt: &tokio::runtime::Runtime, o: &Opts, url: &str) -> Daemon {
    let nowhere = format!("http://127.0.0.1:{}/nowhere", free_port());
    let mut d = Daemon::start_with(&launch(&o.bin), &daemon_config(&nowhere));
    pause(rt, &d);
    d.stop();
    d.write_config(&daemon_config(url));
    d.spawn();
    rt.block_on(async {
        let mut c = d.client().await;
        wait_paused(&mut c).await;
        let (page, _) = c.list(COLLECTION, None, Some(1)).await.expect("list");
        assert!(page.is_empty(), "pulled before the resume");
    });
    d
}

/// Pull, syncd: resume → `last` (the feed's last document) is local.
fn syncd_pull(rt: &tokio::runtime::Runtime, o: &Opts, url: &str, n: u64, last: &str) -> Run {
    let id = last
        .strip_prefix(&format!("{COLLECTION}:"))
        .unwrap_or_else(|| panic!("{last:?} is not a record of {COLLECTION:?}"));
    let mut d = paused_device(rt, o, url);
    let limit = Duration::from_secs(60.max(n / 100));
    let c0 = cpu_secs(d.pid());
    let (secs, docs) = rt.block_on(async {
        let mut c = d.client().await;
        let t0 = Instant::now();
        set_paused(&mut c, false).await;
        while c.get(COLLECTION, id).await.is_err() {
            assert!(
                t0.elapsed() < limit,
                "pull not done within {limit:?}: {:?}",
                c.status().await
            );
            tokio::time::sleep(POLL).await;
        }
        let secs = t0.elapsed().as_secs_f64();
        (secs, count(&mut c, COLLECTION).await)
    });
    let cpu_secs = cpu_secs(d.pid()) - c0;
    d.stop();
    Run {
        docs,
        secs,
        cpu_secs,
    }
}

fn check_docs(what: &str, run: Run, n: u64) -> Run {
    assert_eq!(run.docs, n, "{what}: documents on the receiving side");
    run
}

fn one_rep(
    rt: &tokio::runtime::Runtime,
    o: &Opts,
    couch: &Couch,
    pouch: &Pouch,
    rep: usize,
) -> Rep {
    let n = o.couch_docs;
    let (pouch_db, syncd_db) = (format!("pouch-drain-{rep}"), format!("syncd-drain-{rep}"));
    let pouch_drain = pouch.push(&fresh_db(couch, &pouch_db), n).into();
    let mut drain = syncd_drain(rt, o, &fresh_db(couch, &syncd_db), n);
    drain.docs = doc_count(couch, &syncd_db);
    let src = db_url(couch, &syncd_db);
    let pouch_pull = pouch.pull(&src).into();
    let last = server::last_change_id(couch, &syncd_db);
    let pull = syncd_pull(rt, o, &src, n, &last);
    drop_db(couch, &pouch_db);
    drop_db(couch, &syncd_db);
    Rep {
        drain: [
            check_docs("PouchDB drain", pouch_drain, n),
            check_docs("syncd drain", drain, n),
        ],
        pull: [
            check_docs("PouchDB pull", pouch_pull, n),
            check_docs("syncd pull", pull, n),
        ],
    }
}

/// node with PouchDB, and the server; or why not.
fn setup(o: &Opts) -> Result<(Pouch, Couch), String> {
    let pouch = Pouch::find()?;
    server::launcher(o.smoke)?;
    Ok((pouch, server::start()?))
}

pub(crate) fn couch(rt: &tokio::runtime::Runtime, o: &Opts, report: &mut Report) {
    let (pouch, couch) = match setup(o) {
        Ok(x) => x,
        Err(why) => return skip(report, &why),
    };
    eprintln!(
        "harness: couch: {} docs, syncd's CouchDB adapter vs PouchDB replication, pouchdb-server on {}, {} reps",
        o.couch_docs, couch.addr, o.couch_reps
    );
    let mut reps = Vec::new();
    for rep in 0..o.couch_reps {
        let r = one_rep(rt, o, &couch, &pouch, rep);
        eprintln!(
            "  rep {}: drain {:.0} docs/s vs PouchDB {:.0} ({:.2}x); pull {:.0} docs/s vs PouchDB {:.0} ({:.2}x)",
            rep + 1,
            r.drain[1].per_s(),
            r.drain[0].per_s(),
            r.drain[1].per_s() / r.drain[0].per_s(),
            r.pull[1].per_s(),
            r.pull[0].per_s(),
            r.pull[1].per_s() / r.pull[0].per_s(),
        );
        reps.push(r);
    }
    print_couch(o, report, &reps);
}

fn skip(report: &mut Report, why: &str) {
    eprintln!("harness: couch: SKIPPED: {why}");
    report.section(
        "couch: syncd's CouchDB adapter vs PouchDB replication: SKIPPED",
        &[],
    );
    report.note(format!(
        "needs node and pouchdb-server's npm install: {why}"
    ));
    report.json(json!({"scenario": "couch", "skipped": why}));
}

/// One measure's runs: per rep, [PouchDB, syncd].
struct Measure<'a> {
    name: &'static str,
    pouch_call: &'static str,
    runs: Vec<&'a [Run; 2]>,
}

fn print_couch(o: &Opts, report: &mut Report, reps: &[Rep]) {
    report.section(
        &format!(
            "couch: {} docs, syncd's CouchDB adapter vs PouchDB (leveldb) replicating with the same \
             pouchdb-server; target >= {TARGET_RATIO}x PouchDB",
            o.couch_docs
        ),
        &[
            "run",
            "docs/s",
            "min..max",
            "x PouchDB",
            "secs",
            "client cpu s",
            "client us/doc",
        ],
    );
    let measures = [
        Measure {
            name: "drain",
            pouch_call: "replicate.to",
            runs: reps.iter().map(|r| &r.drain).collect(),
        },
        Measure {
            name: "pull",
            pouch_call: "replicate.from",
            runs: reps.iter().map(|r| &r.pull).collect(),
        },
    ];
    for m in &measures {
        print_measure(o, report, m);
    }
    report.note(
        "syncd drain: puts queued while paused, resume -> empty queue (status every 20 ms); \
         syncd pull: a fresh daemon started paused, resume -> the feed's last document is local \
         (get every 20 ms); PouchDB: timed inside node around replicate.to/from, default options; \
         both pulls read the database syncd's drain filled; client cpu: the daemon, or node"
            .into(),
    );
}

fn print_measure(o: &Opts, report: &mut Report, m: &Measure) {
    let side = |k: usize| -> Vec<Run> { m.runs.iter().map(|r| r[k]).collect() };
    let (pouch, syncd) = (side(0), side(1));
    let per_s = |v: &[Run]| -> Vec<f64> { v.iter().map(Run::per_s).collect() };
    let x = ratio(&per_s(&syncd), &per_s(&pouch));
    let labels = [
        format!("{}: PouchDB {}", m.name, m.pouch_call),
        format!("{}: syncd", m.name),
    ];
    for (label, runs, x) in [(&labels[0], &pouch, 1.0), (&labels[1], &syncd, x)] {
        report.row(row(label, runs, x, o.couch_docs));
    }
    let med = |v: &[Run], f: fn(&Run) -> f64| median(&v.iter().map(f).collect::<Vec<_>>());
    report.json(json!({
        "scenario": "couch",
        "measure": m.name,
        "docs": o.couch_docs,
        "reps": m.runs.len(),
        "syncd_docs_per_s": median(&per_s(&syncd)),
        "per_rep_syncd_docs_per_s": per_s(&syncd),
        "pouchdb_docs_per_s": median(&per_s(&pouch)),
        "per_rep_pouchdb_docs_per_s": per_s(&pouch),
        "ratio_vs_pouchdb": x,
        "syncd_secs": med(&syncd, |r| r.secs),
        "pouchdb_secs": med(&pouch, |r| r.secs),
        "syncd_cpu_s": med(&syncd, |r| r.cpu_secs),
        "pouchdb_cpu_s": med(&pouch, |r| r.cpu_secs),
        "target_ratio_vs_pouchdb": TARGET_RATIO,
    }));
}

fn row(label: &str, runs: &[Run], x: f64, docs: u64) -> Vec<String> {
    let per_s: Vec<f64> = runs.iter().map(Run::per_s).collect();
    let cpu = median(&runs.iter().map(|r| r.cpu_secs).collect::<Vec<_>>());
    vec![
        label.to_owned(),
        f0(median(&per_s)),
        format!(
            "{}..{}",
            f0(per_s.iter().cloned().fold(f64::INFINITY, f64::min)),
            f0(per_s.iter().cloned().fold(0.0, f64::max))
        ),
        f2(x),
        f2(median(&runs.iter().map(|r| r.secs).collect::<Vec<_>>())),
        f2(cpu),
        f2(cpu / docs as f64 * 1e6),
    ]
}
