//! A PostgreSQL restart in the middle of a drain, under two
//! `syncd backend --postgres` nodes on one database and three devices
//! spread over them (`tests/common_pg`: a real throwaway PostgreSQL).
//!
//! What it pins down: the database going away (stopped with `-m immediate`,
//! so transactions in flight are cut, committed or not) and coming back
//! while the devices are pushing is survived by the nodes without a restart
//! of their own, and every op a device queued ends up applied exactly once:
//! each record exists once on the server, none is missing, none doubled,
//! and every device's copy is the server's.

mod common;
mod common_pg;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::{all_changes_at, bin, eventually, http, Daemon};
use common_pg::{Pg, PgNode};
use serde_json::{json, Value};
use syncd::client::Client;

/// Devices, and creates each one queues while paused.
const DEVICES: usize = 3;
const PER_DEVICE: usize = 300;
const TOTAL: usize = DEVICES * PER_DEVICE;
/// The collection the creates go to.
const COLL: &str = "fleet";

/// A device on `node`. Small batches make the drain take many requests, so
/// the restart can land while it runs; a short backoff brings the devices
/// back soon after the database.
fn device(node: &PgNode) -> Daemon {
    Daemon::start(&format!(
        "[backend]\nurl = {:?}\n[sync]\nbatch_size = 2\npull_interval_s = 1\n\
         backoff_initial_ms = 100\nbackoff_max_ms = 500\n",
        node.http_url()
    ))
}

fn pause(d: &Daemon) {
    d.ok(&["pause"]);
    eventually(10, "paused", || d.status()["state"] == json!("paused"));
}

/// The feed head as `node` serves it: a cursor past the head is answered at
/// once with the head.
fn head(node: &PgNode) -> Option<u64> {
    let (st, body) = http(&node.addr, "GET", "/v1/changes?since=999999999999", None);
    if st != 200 {
        return None;
    }
    body["cursor"].as_str().and_then(|c| c.parse().ok())
}

/// A record's marker: (device, k) from its data.
fn marker(data: &Value) -> (u64, u64) {
    let n = |f: &str| data[f].as_u64().unwrap_or(u64::MAX);
    (n("device"), n("k"))
}

/// What the server holds of `COLL`, read through `node`: marker -> (id,
/// version, data), and how many creates (version 1 entries) the log has
/// per marker.
type Records = BTreeMap<(u64, u64), (String, u64, Value)>;

fn server(node: &PgNode) -> (Records, BTreeMap<(u64, u64), usize>) {
    let (mut latest, mut creates) = (BTreeMap::new(), BTreeMap::new());
    for ch in all_changes_at(&node.addr)
        .iter()
        .filter(|c| c["collection"] == json!(COLL))
    {
        let r = &ch["record"];
        let m = marker(&r["data"]);
        let version = r["version"].as_u64().unwrap_or_default();
        if version == 1 {
            *creates.entry(m).or_insert(0) += 1;
        }
        let id = r["id"].as_str().unwrap_or_default().to_owned();
        latest.insert(m, (id, version, r["data"].clone()));
    }
    (latest, creates)
}

/// A device's copy of `COLL`: marker -> (id, version, data); fails on a
/// record still pending.
fn local(d: &Daemon) -> Result<Records, String> {
    let mut out = BTreeMap::new();
    for r in d.json_lines(&["list", COLL]) {
        if r["pending"] != json!(false) {
            return Err(format!("still pending: {r}"));
        }
        let id = r["id"].as_str().unwrap_or_default().to_owned();
        let version = r["version"].as_u64().unwrap_or_default();
        if out
            .insert(marker(&r["data"]), (id, version, r["data"].clone()))
            .is_some()
        {
            return Err(format!("marker twice on the device: {r}"));
        }
    }
    Ok(out)
}

fn converged(devices: &[Daemon], nodes: &[&PgNode]) -> Result<(), String> {
    let (want, _) = server(nodes[0]);
    if want.len() != TOTAL {
        return Err(format!("the server has {} of {TOTAL}", want.len()));
    }
    for n in &nodes[1..] {
        if server(n).0 != want {
            return Err("the nodes serve different records".into());
        }
    }
    for (i, d) in devices.iter().enumerate() {
        let got = local(d)?;
        if got != want {
            let diff = got
                .iter()
                .filter(|(m, v)| want.get(m) != Some(v))
                .take(3)
                .collect::<Vec<_>>();
            return Err(format!(
                "device {i}: {} records, server {}; differing (first 3): {diff:?}",
                got.len(),
                want.len()
            ));
        }
    }
    Ok(())
}

/// Pauses every device, queues creates `ks` on each (marker `{device, k}`),
/// and resumes none of them.
fn queue(rt: &tokio::runtime::Runtime, devices: &[Daemon], ks: std::ops::Range<usize>) {
    for (i, d) in devices.iter().enumerate() {
        pause(d);
        let before = d.status()["queue_depth"].as_u64().unwrap_or(0);
        let n = ks.len() as u64;
        rt.block_on(async {
            let mut c = Client::connect(&d.socket, "pg-restart")
                .await
                .expect("connect");
            for k in ks.clone() {
                let (_, op_id) = c
                    .put(COLL, None, json!({"device": i, "k": k}))
                    .await
                    .expect("put");
                assert!(!op_id.is_empty(), "an op queued");
            }
        });
        assert_eq!(d.status()["queue_depth"], json!(before + n));
    }
}

#[test]
fn a_postgres_restart_mid_drain_applies_every_op_exactly_once_without_node_restarts() {
    let pg = Pg::start();
    let url = pg.url("postgres");
    let logs = tempfile::tempdir().expect("tempdir");
    let log_of = |i: usize| logs.path().join(format!("node{i}.log"));
    let mut nodes = [0, 1].map(|i| PgNode::start_with(&bin(), &url, &[], Some(&log_of(i))));
    let pids: Vec<u32> = nodes
        .iter()
        .map(|n| n.child.as_ref().expect("running").id())
        .collect();
    let addrs: Vec<String> = nodes.iter().map(|n| n.addr.clone()).collect();
    // Devices 0 and 2 on node 1, device 1 on node 2.
    let devices: Vec<Daemon> = (0..DEVICES)
        .map(|i| device(&nodes[i % nodes.len()]))
        .collect();
    for d in &devices {
        eventually(30, "online", || d.status()["state"] == json!("online"));
    }

    // Round 1: a third of the creates drain completely (applied before the
    // restart). Round 2: the rest queue, the `default` scope's head is held
    // from a side session so that the drain stalls with batches in flight,
    // and PostgreSQL stops under them. No clock decides where the restart
    // falls.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let first = PER_DEVICE / 3;
    queue(&rt, &devices, 0..first);
    assert_eq!(head(&nodes[0]), Some(0), "nothing pushed while paused");
    for d in &devices {
        d.ok(&["resume"]);
    }
    eventually(120, "round 1 applied", || {
        head(&nodes[0]) == Some((first * DEVICES) as u64)
    });
    for d in &devices {
        eventually(60, "round 1 acknowledged", || {
            d.status()["queue_depth"] == json!(0)
        });
    }
    queue(&rt, &devices, first..PER_DEVICE);
    let (side, conn) = rt
        .block_on(tokio_postgres::connect(&url, tokio_postgres::NoTls))
        .expect("side session");
    rt.spawn(conn);
    rt.block_on(side.batch_execute(
        "BEGIN; SELECT seq FROM syncd_scope_heads WHERE scope = 'default' FOR UPDATE",
    ))
    .expect("hold the default head");
    for d in &devices {
        d.ok(&["resume"]);
    }
    let waiting = "SELECT count(*) FROM pg_locks WHERE NOT granted";
    eventually(60, "a batch waits at the held head", || {
        pg.scalar("postgres", waiting) > 0
    });
    pg.stop();
    drop(side);
    // The restart is mid-drain: the batches in flight were cut, so their
    // ops and the rest are still queued.
    let queued: u64 = devices
        .iter()
        .map(|d| d.status()["queue_depth"].as_u64().unwrap_or(0))
        .sum();
    eprintln!(
        "PostgreSQL stopped with {} of {TOTAL} applied, {queued} still queued",
        first * DEVICES
    );
    assert!(queued > 0, "every queue drained before the stop");
    for n in &nodes {
        eventually(30, "the node sees the database gone", || {
            http(&n.addr, "GET", "/v1/health", None).0 == 503
        });
    }
    pg.restart();

    // Every queue drains and everyone agrees.
    for (i, d) in devices.iter().enumerate() {
        eventually(180, &format!("device {i}'s queue drained"), || {
            d.status()["queue_depth"] == json!(0)
        });
    }
    let node_refs: Vec<&PgNode> = nodes.iter().collect();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        match converged(&devices, &node_refs) {
            Ok(()) => break,
            Err(e) if Instant::now() > deadline => panic!("no convergence: {e}"),
            Err(_) => std::thread::sleep(Duration::from_millis(200)),
        }
    }
    for (i, d) in devices.iter().enumerate() {
        let st = d.status();
        assert_eq!(st["dead_letters"], json!(0), "device {i}: {st}");
        assert_eq!(st["conflicts"], json!(0), "device {i}: {st}");
    }

    // Exactly once: each marker created once in the log, present once on
    // the server, none missing (checked through both nodes).
    let want: Vec<(u64, u64)> = (0..DEVICES as u64)
        .flat_map(|i| (0..PER_DEVICE as u64).map(move |k| (i, k)))
        .collect();
    for n in &nodes {
        let (records, creates) = server(n);
        assert_eq!(records.keys().copied().collect::<Vec<_>>(), want);
        assert_eq!(creates.keys().copied().collect::<Vec<_>>(), want);
        let doubled: Vec<_> = creates.iter().filter(|(_, c)| **c != 1).collect();
        assert!(doubled.is_empty(), "created more than once: {doubled:?}");
        assert!(
            records.values().all(|(_, v, _)| *v == 1),
            "creates only: every record at version 1"
        );
    }
    // And the database itself agrees.
    let count = |sql: &str| pg.scalar("postgres", sql);
    let rows = count("SELECT count(*) FROM syncd_records WHERE collection = 'fleet'");
    let distinct = count(
        "SELECT count(DISTINCT (record::json->'data'->>'device') || ':' || \
         (record::json->'data'->>'k')) FROM syncd_records WHERE collection = 'fleet'",
    );
    let applied = count("SELECT count(*) FROM syncd_applied_ops");
    let changes = count("SELECT count(*) FROM syncd_scope_changes WHERE scope = 'default'");
    let head_row = count("SELECT seq FROM syncd_scope_heads WHERE scope = 'default'");
    let total = TOTAL as i64;
    assert_eq!(
        (rows, distinct, applied, changes, head_row),
        (total, total, total, total, total),
        "(records, distinct markers, applied op_ids, changes, feed head)"
    );

    // The nodes were never restarted: the same processes, still serving.
    for (i, n) in nodes.iter_mut().enumerate() {
        let child = n.child.as_mut().expect("node running");
        assert_eq!(child.id(), pids[i], "node {i}: same process");
        assert!(
            matches!(child.try_wait(), Ok(None)),
            "node {i} exited: {:?}",
            child.try_wait()
        );
        assert_eq!(n.addr, addrs[i]);
        assert_eq!(http(&n.addr, "GET", "/v1/health", None).0, 200);
        // What the node said about the outage (for the record).
        let text = std::fs::read_to_string(log_of(i)).unwrap_or_default();
        let (warn, error) = (
            text.matches(" WARN ").count(),
            text.matches(" ERROR ").count(),
        );
        eprintln!("node {i}: {warn} WARN and {error} ERROR lines");
        for l in text.lines().filter(|l| l.contains(" ERROR ")).take(5) {
            eprintln!("  {l}");
        }
    }
}
