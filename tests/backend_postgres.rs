//! The reference backend on PostgreSQL (`syncd backend --postgres`), with
//! several nodes on one database, against a real throwaway PostgreSQL
//! (`tests/common_pg`): write races between nodes (one 200, one 409), op_id
//! replays across nodes, a gap-free feed under concurrent writers, waiting
//! pulls woken by another node's commit, an unreachable database,
//! devices syncing through two nodes while one is SIGKILLed, and conflicts
//! parked by the manual strategy and resolved by hand on two devices.

mod common;
mod common_pg;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use common::{all_changes_at, bin, eventually, http, Daemon};
use common_pg::{runtime, Pg, PgNode};
use serde_json::{json, Value};
use syncd::backend::protocol::{Document, ServerRecord};
use syncd::backend::server::ops::{Action, ValidOp};
use syncd::backend::server::pg_store::PgStore;
use syncd::backend::server::store::{BackendStore, Outcome};

// ---------------------------------------------------------------------------
// Store level: two PgStores are two nodes.
// ---------------------------------------------------------------------------

fn nodes(rt: &tokio::runtime::Runtime, url: &str) -> (Arc<PgStore>, Arc<PgStore>) {
    let a = rt.block_on(PgStore::connect(url)).expect("node A");
    let b = rt.block_on(PgStore::connect(url)).expect("node B");
    (Arc::new(a), Arc::new(b))
}

fn op(op_id: &str, coll: &str, action: Action) -> ValidOp {
    ValidOp {
        op_id: op_id.into(),
        client_id: "c".into(),
        collection: coll.into(),
        local_id: "l".into(),
        client_ts: 1,
        action,
        scope: None,
    }
}

fn doc(v: Value) -> Document {
    match v {
        Value::Object(m) => m,
        _ => Document::new(),
    }
}

fn create(op_id: &str, id: Option<&str>, n: u64) -> ValidOp {
    let action = Action::Create {
        id: id.map(str::to_owned),
        data: doc(json!({ "n": n })),
    };
    op(op_id, "todos", action)
}

fn update(op_id: &str, id: &str, base: u64, n: u64) -> ValidOp {
    let action = Action::Update {
        id: id.into(),
        base_version: base,
        data: doc(json!({ "n": n })),
    };
    op(op_id, "todos", action)
}

fn one(s: &PgStore, o: ValidOp) -> Outcome {
    s.apply(&[o]).expect("apply").remove(0)
}

fn applied(o: Outcome) -> ServerRecord {
    match o {
        Outcome::Applied { record, .. } => record,
        other => panic!("expected applied, got {other:?}"),
    }
}

/// Runs `fa` on node A and `fb` on node B at the same moment.
fn race(a: &Arc<PgStore>, b: &Arc<PgStore>, oa: ValidOp, ob: ValidOp) -> (Outcome, Outcome) {
    let barrier = Arc::new(Barrier::new(2));
    let run = |s: &Arc<PgStore>, o: ValidOp| {
        let (s, barrier) = (Arc::clone(s), Arc::clone(&barrier));
        std::thread::spawn(move || {
            barrier.wait();
            one(&s, o)
        })
    };
    let (ha, hb) = (run(a, oa), run(b, ob));
    (ha.join().expect("A"), hb.join().expect("B"))
}

fn one_wins(outcomes: (Outcome, Outcome)) -> ServerRecord {
    match outcomes {
        (Outcome::Applied { record, .. }, Outcome::Conflict(cur))
        | (Outcome::Conflict(cur), Outcome::Applied { record, .. }) => {
            assert_eq!(cur, record, "the 409 carries the winner's record");
            record
        }
        other => panic!("expected one 200 and one 409, got {other:?}"),
    }
}

#[test]
fn nodes_racing_on_a_record_give_one_200_and_one_409() {
    let pg = Pg::start();
    let rt = runtime();
    let (a, b) = nodes(&rt, &pg.url("postgres"));
    let r = applied(one(&a, create("c0", None, 0)));
    let mut version = r.version;
    for i in 0..15 {
        let won = one_wins(race(
            &a,
            &b,
            update(&format!("ua{i}"), &r.id, version, i),
            update(&format!("ub{i}"), &r.id, version, i + 100),
        ));
        assert_eq!(won.version, version + 1);
        version = won.version;
    }
    // Creates of the same (collection, id) on both nodes.
    for i in 0..15 {
        let id = format!("k{i}");
        let won = one_wins(race(
            &a,
            &b,
            create(&format!("ka{i}"), Some(&id), 1),
            create(&format!("kb{i}"), Some(&id), 2),
        ));
        assert_eq!((won.id.as_str(), won.version), (id.as_str(), 1));
    }
    // 1 create + 15 updates + 15 creates, each logged once.
    assert_eq!(b.changes(0, 1000).expect("changes").entries.len(), 31);
}

#[test]
fn a_retried_op_id_gets_its_original_reply_from_the_other_node() {
    let pg = Pg::start();
    let rt = runtime();
    let (a, b) = nodes(&rt, &pg.url("postgres"));
    let r = applied(one(&a, create("o1", None, 1)));
    let u = applied(one(&a, update("o2", &r.id, 1, 2)));
    applied(one(&b, update("o3", &r.id, 2, 3)));
    match one(&b, create("o1", None, 1)) {
        Outcome::Applied { record, replayed } => assert!(replayed && record == r),
        other => panic!("{other:?}"),
    }
    // The record o2 produced, not the current one; nothing new logged.
    assert_eq!(applied(one(&b, update("o2", &r.id, 1, 2))), u);
    assert_eq!(a.changes(0, 100).expect("changes").head, 3);
    // The same op_id sent to both nodes at once: one application.
    let (x, y) = race(&a, &b, create("twice", None, 7), create("twice", None, 7));
    let (x, y) = (applied(x), applied(y));
    assert_eq!(x, y);
    assert_eq!(a.changes(0, 100).expect("changes").head, 4);
}

#[test]
fn feed_is_gap_free_under_concurrent_writers_on_two_nodes() {
    const WRITERS: usize = 4;
    const OPS: usize = 200;
    let pg = Pg::start();
    let rt = runtime();
    let (a, b) = nodes(&rt, &pg.url("postgres"));
    let t0 = Instant::now();
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            let s = Arc::clone(if w % 2 == 0 { &a } else { &b });
            std::thread::spawn(move || {
                let mut seen = Vec::new();
                let mut mine: Option<ServerRecord> = None;
                for i in 0..OPS {
                    // Creates, and updates of this writer's last record.
                    let o = match &mine {
                        Some(r) if i % 3 == 0 => update(&format!("w{w}-{i}"), &r.id, r.version, 0),
                        _ => create(&format!("w{w}-{i}"), None, i as u64),
                    };
                    let r = applied(one(&s, o));
                    seen.push((r.id.clone(), r.version));
                    mine = Some(r);
                }
                seen
            })
        })
        .collect();
    // The reader follows the feed on node B while the writers run.
    let reader = {
        let s = Arc::clone(&b);
        std::thread::spawn(move || {
            let (mut cursor, mut got) = (0u64, Vec::new());
            let deadline = Instant::now() + Duration::from_secs(60);
            while got.len() < WRITERS * OPS && Instant::now() < deadline {
                let page = s.changes(cursor, 37).expect("changes");
                for (seq, ch) in page.entries {
                    assert_eq!(seq, cursor + 1, "a gap in the feed");
                    cursor = seq;
                    got.push((ch.record.id, ch.record.version));
                }
            }
            got
        })
    };
    let mut written = Vec::new();
    for w in writers {
        written.extend(w.join().expect("writer"));
    }
    let got = reader.join().expect("reader");
    println!(
        "{} ops through 2 nodes in {:?}",
        written.len(),
        t0.elapsed()
    );
    let (ws, gs): (BTreeSet<_>, BTreeSet<_>) = (written.iter().collect(), got.iter().collect());
    assert_eq!(got.len(), WRITERS * OPS, "every change seen exactly once");
    assert_eq!(gs.len(), got.len(), "no change seen twice");
    assert_eq!(ws, gs);
}

// ---------------------------------------------------------------------------
// Real `syncd backend --postgres` nodes.
// ---------------------------------------------------------------------------

fn post_create(node: &PgNode, op_id: &str) -> (u16, Value) {
    let body = json!({"op_id": op_id, "client_id": "t", "collection": "todos",
        "kind": "create", "id": null, "local_id": op_id, "base_version": null,
        "data": {"t": op_id}, "client_ts": 1});
    http(&node.addr, "POST", "/v1/ops", Some(&body.to_string()))
}

#[test]
fn a_waiting_pull_on_node_2_is_woken_by_a_commit_through_node_1() {
    let pg = Pg::start();
    let url = pg.url("postgres");
    let n1 = PgNode::start(&bin(), &url);
    let n2 = PgNode::start(&bin(), &url);
    let (st, h) = http(&n2.addr, "GET", "/v1/health", None);
    assert_eq!(st, 200);
    assert!(h["features"]
        .as_array()
        .expect("features")
        .contains(&json!("wait")));
    assert_eq!(post_create(&n1, "first").0, 200);
    let (_, page) = http(&n2.addr, "GET", "/v1/changes", None);
    let cursor = page["cursor"].as_str().expect("cursor").to_owned();
    assert_eq!(cursor, "1");

    let addr2 = n2.addr.clone();
    let pull = std::thread::spawn(move || {
        let r = http(
            &addr2,
            "GET",
            &format!("/v1/changes?since={cursor}&wait=20"),
            None,
        );
        (r, Instant::now())
    });
    std::thread::sleep(Duration::from_millis(500));
    let sent = Instant::now();
    let (st, _) = post_create(&n1, "second");
    assert_eq!(st, 200);
    let ((st, page), answered) = pull.join().expect("pull");
    // From sending the write to node 1 until node 2 answered the pull.
    let latency = answered.saturating_duration_since(sent);
    println!("cross-node wake-up latency: {latency:?}");
    assert_eq!(st, 200);
    assert_eq!(page["changes"].as_array().map(Vec::len), Some(1), "{page}");
    assert_eq!(page["cursor"], json!("2"));
    assert!(latency < Duration::from_secs(5), "woken after {latency:?}");
}

#[test]
fn an_unreachable_database_is_named_without_its_password_and_health_is_503() {
    // At start: a clear error, password hidden.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port")
        .port();
    let out = std::process::Command::new(bin())
        .args(["backend", "--listen", "127.0.0.1:0", "--postgres"])
        .arg(format!("postgres://syncd:s3cret@127.0.0.1:{port}/sync"))
        .output()
        .expect("run backend");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains(&format!("postgres://syncd:***@127.0.0.1:{port}/sync")),
        "{err}"
    );
    assert!(!err.contains("s3cret"), "{err}");

    // While running: health says 503 while the database is down, then recovers.
    let pg = Pg::start();
    let node = PgNode::start(&bin(), &pg.url("postgres"));
    assert_eq!(http(&node.addr, "GET", "/v1/health", None).0, 200);
    pg.stop();
    let (st, body) = http(&node.addr, "GET", "/v1/health", None);
    assert_eq!(st, 503, "{body}");
    assert_eq!(post_create(&node, "down").0, 503, "unreachable: 503");
    pg.restart();
    eventually(20, "health back to 200", || {
        http(&node.addr, "GET", "/v1/health", None).0 == 200
    });
    assert_eq!(post_create(&node, "up").0, 200);
}

/// Issue 30: while its database is down the backend answers 503 with
/// `Retry-After: 1`, so devices with the default backoff (500 ms growing to
/// 60 s, which a 60 s outage reaches) return within seconds of the
/// database: every queue is drained within 5 s of it being back.
#[test]
fn a_60s_database_outage_drains_every_queue_within_5s_of_its_return() {
    let pg = Pg::start();
    let node = PgNode::start(&bin(), &pg.url("postgres"));
    let config = format!("[backend]\nurl = {:?}\n", node.http_url());
    let devices = [Daemon::start(&config), Daemon::start(&config)];
    for d in &devices {
        eventually(20, "online", || d.status()["state"] == json!("online"));
    }
    pg.stop();
    let down = Instant::now();
    for (i, d) in devices.iter().enumerate() {
        for k in 0..3 {
            d.ok(&["put", "todos", &format!(r#"{{"device":{i},"k":{k}}}"#)]);
        }
    }
    for d in &devices {
        eventually(20, "refused with 503", || {
            let st = d.status();
            st["state"] == json!("backoff")
                && st["last_error"].as_str().unwrap_or("").contains("503")
        });
    }
    // The outage itself: long enough for the default backoff to reach
    // its 60 s ceiling, were it not for the server's Retry-After.
    std::thread::sleep(Duration::from_secs(60).saturating_sub(down.elapsed()));
    pg.restart();
    let back = Instant::now();
    for d in &devices {
        eventually(5, "drained within 5 s of the database", || {
            d.status()["queue_depth"] == json!(0)
        });
    }
    eprintln!(
        "outage {:?}; every queue drained {:?} after the database was back",
        back - down,
        back.elapsed()
    );
    assert!(back.elapsed() < Duration::from_secs(5));
}

// ---------------------------------------------------------------------------
// End to end: three devices, two nodes, one node SIGKILLed mid-run.
// ---------------------------------------------------------------------------

const STRATEGIES: [(&str, &str); 3] = [
    ("sw", "server-wins"),
    ("lww", "last-write-wins"),
    ("mg", "merge"),
];

/// The collection every device configures with `conflict = "manual"`.
const MANUAL: &str = "m";

fn device(node: &PgNode) -> Daemon {
    let mut tables = format!("[collections.{MANUAL}]\nconflict = \"manual\"\n");
    for (coll, strategy) in STRATEGIES {
        tables.push_str(&format!("[collections.{coll}]\nconflict = {strategy:?}\n"));
    }
    Daemon::start(&format!(
        "[backend]\nurl = {:?}\n[sync]\npull_interval_s = 1\nbackoff_initial_ms = 100\n\
         backoff_max_ms = 500\n{tables}",
        node.http_url()
    ))
}

/// A device's live records of `coll`: `k` -> data.
fn local(d: &Daemon, coll: &str) -> BTreeMap<String, Value> {
    d.json_lines(&["list", coll])
        .into_iter()
        .map(|r| {
            (
                r["data"]["k"].as_str().unwrap_or_default().to_owned(),
                r["data"].clone(),
            )
        })
        .collect()
}

/// The server's live records of `coll` as read through `node`: `k` -> data.
fn server(node: &PgNode, coll: &str) -> BTreeMap<String, Value> {
    let mut latest: BTreeMap<String, Value> = BTreeMap::new();
    for ch in all_changes_at(&node.addr) {
        if ch["collection"] == json!(coll) {
            let id = ch["record"]["id"].as_str().unwrap_or_default().to_owned();
            latest.insert(id, ch["record"].clone());
        }
    }
    latest
        .into_values()
        .filter(|r| r["deleted"] != json!(true))
        .map(|r| {
            (
                r["data"]["k"].as_str().unwrap_or_default().to_owned(),
                r["data"].clone(),
            )
        })
        .collect()
}

fn pause(d: &Daemon) {
    d.ok(&["pause"]);
    eventually(10, "paused", || d.status()["state"] == json!("paused"));
}

fn resume(d: &Daemon) {
    d.ok(&["resume"]);
    eventually(10, "not paused", || d.status()["state"] != json!("paused"));
}

fn id_of(d: &Daemon, coll: &str, k: &str) -> String {
    d.json_lines(&["list", coll])
        .into_iter()
        .find(|r| r["data"]["k"] == json!(k))
        .and_then(|r| r["id"].as_str().map(str::to_owned))
        .unwrap_or_else(|| panic!("no {coll}/{k}"))
}

fn converged(devices: &[&Daemon], nodes: &[&PgNode], colls: &[&str]) -> Result<(), String> {
    for coll in colls {
        let want = server(nodes[0], coll);
        for n in &nodes[1..] {
            let other = server(n, coll);
            if other != want {
                return Err(format!("{coll}: nodes differ {want:?} / {other:?}"));
            }
        }
        for (i, d) in devices.iter().enumerate() {
            let got = local(d, coll);
            if got != want {
                return Err(format!("{coll}: device {i} {got:?}, server {want:?}"));
            }
        }
    }
    Ok(())
}

fn wait_converged(devices: &[&Daemon], nodes: &[&PgNode], colls: &[&str]) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match converged(devices, nodes, colls) {
            Ok(()) => return,
            Err(e) if Instant::now() > deadline => panic!("no convergence: {e}"),
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

#[test]
fn devices_on_two_nodes_converge_through_conflicts_and_a_killed_node() {
    let pg = Pg::start();
    let url = pg.url("postgres");
    let mut n1 = PgNode::start(&bin(), &url);
    let n2 = PgNode::start(&bin(), &url);
    let a = device(&n1);
    let b = device(&n2);
    let c = device(&n1);

    // Live: a change made through node 2 reaches a device on node 1.
    b.ok(&["put", "notes", &json!({"k": "live"}).to_string()]);
    b.ok(&["sync", "--wait"]);
    eventually(10, "A sees B's note", || {
        local(&a, "notes").contains_key("live")
    });

    // Concurrent offline edits, one record per strategy.
    for (coll, _) in STRATEGIES {
        a.ok(&[
            "put",
            coll,
            &json!({"k": "r", "t": "0", "x": 0, "y": 0}).to_string(),
        ]);
    }
    a.ok(&["sync", "--wait"]);
    let colls: Vec<&str> = STRATEGIES.iter().map(|s| s.0).collect();
    wait_converged(&[&a, &b, &c], &[&n1, &n2], &colls);
    pause(&a);
    pause(&b);
    for (coll, _) in STRATEGIES {
        let (ia, ib) = (id_of(&a, coll, "r"), id_of(&b, coll, "r"));
        a.ok(&["patch", coll, &ia, &json!({"t": "A", "x": 1}).to_string()]);
        std::thread::sleep(Duration::from_millis(5));
        b.ok(&["patch", coll, &ib, &json!({"t": "B", "y": 1}).to_string()]);
    }
    resume(&a);
    a.ok(&["sync", "--wait"]);
    resume(&b);
    b.ok(&["sync", "--wait"]);
    wait_converged(&[&a, &b, &c], &[&n1, &n2], &colls);
    let merged = &server(&n2, "mg")["r"];
    assert_eq!(
        (merged["x"].clone(), merged["y"].clone()),
        (json!(1), json!(1))
    );
    assert_eq!(
        server(&n1, "lww")["r"]["t"],
        json!("B"),
        "the later edit wins"
    );

    // Node 1 is SIGKILLed while A and C write through it; B writes through node 2.
    for i in 0..30 {
        a.ok(&["put", "bulk", &json!({"k": format!("a{i}")}).to_string()]);
        c.ok(&["put", "bulk", &json!({"k": format!("c{i}")}).to_string()]);
        b.ok(&["put", "bulk", &json!({"k": format!("b{i}")}).to_string()]);
        if i == 10 {
            n1.restart();
        }
    }
    wait_converged(&[&a, &b, &c], &[&n1, &n2], &["bulk", "notes"]);
    // Every write applied exactly once: one create per key in the log.
    let mut creates: BTreeMap<String, usize> = BTreeMap::new();
    for ch in all_changes_at(&n2.addr)
        .iter()
        .filter(|c| c["collection"] == json!("bulk"))
    {
        if ch["record"]["version"] == json!(1) {
            let k = ch["record"]["data"]["k"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            *creates.entry(k).or_default() += 1;
        }
    }
    assert_eq!(creates.len(), 90);
    assert!(creates.values().all(|n| *n == 1), "{creates:?}");
    // And the database itself agrees with what the nodes serve.
    let rows = pg.scalar(
        "postgres",
        "SELECT count(*) FROM syncd_records WHERE collection = 'bulk'",
    );
    assert_eq!(rows, 90);
    assert_default_feed_is_dense(&pg);
}

/// The `default` scope's feed (revision 2's log) holds exactly the
/// sequences 1..=head, and the head moved.
fn assert_default_feed_is_dense(pg: &Pg) {
    let head = pg.scalar(
        "postgres",
        "SELECT seq FROM syncd_scope_heads WHERE scope = 'default'",
    );
    let dense = "SELECT count(*) FROM syncd_scope_changes WHERE scope = 'default' \
                 AND seq BETWEEN 1 AND (SELECT seq FROM syncd_scope_heads WHERE scope = 'default')";
    let all = "SELECT count(*) FROM syncd_scope_changes";
    assert!(head > 0);
    assert_eq!(head, pg.scalar("postgres", dense));
    assert_eq!(head, pg.scalar("postgres", all));
}

/// `d`'s parked conflicts: `k` -> the conflict as `conflicts --json` shows it.
fn parked(d: &Daemon) -> BTreeMap<String, Value> {
    let all = d.json(&["conflicts", "--json"]);
    all.as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .map(|c| {
            let k = c["local"]["k"].as_str().unwrap_or_default().to_owned();
            (k, c)
        })
        .collect()
}

/// How many times each (record id, version) of `coll` is in the log.
fn versions(node: &PgNode, coll: &str) -> BTreeMap<(String, u64), usize> {
    let mut seen = BTreeMap::new();
    for ch in all_changes_at(&node.addr)
        .iter()
        .filter(|c| c["collection"] == json!(coll))
    {
        let id = ch["record"]["id"].as_str().unwrap_or_default().to_owned();
        let v = ch["record"]["version"].as_u64().unwrap_or_default();
        *seen.entry((id, v)).or_default() += 1;
    }
    seen
}

#[test]
fn manual_conflicts_across_nodes_are_parked_then_resolved_by_hand() {
    let pg = Pg::start();
    let url = pg.url("postgres");
    let n1 = PgNode::start(&bin(), &url);
    let n2 = PgNode::start(&bin(), &url);
    let a = device(&n1);
    let b = device(&n2);
    let c = device(&n1);
    let all = [&a, &b, &c];
    for k in ["r1", "r2"] {
        a.ok(&["put", MANUAL, &json!({"k": k, "t": "0"}).to_string()]);
    }
    a.ok(&["sync", "--wait"]);
    wait_converged(&all, &[&n1, &n2], &[MANUAL]);

    // All three edit both records offline; A (node 1) pushes first.
    for d in all {
        pause(d);
    }
    for (d, t) in [(&a, "A"), (&b, "B"), (&c, "C")] {
        for k in ["r1", "r2"] {
            let id = id_of(d, MANUAL, k);
            d.ok(&["patch", MANUAL, &id, &json!({ "t": t }).to_string()]);
        }
    }
    resume(&a);
    a.ok(&["sync", "--wait"]);
    for d in [&b, &c] {
        resume(d);
        d.ok(&["sync", "--wait"]);
    }
    // B (node 2) and C (node 1) lost the race: both edits parked on each.
    for (d, t) in [(&b, "B"), (&c, "C")] {
        eventually(10, &format!("two parked conflicts on {t}"), || {
            parked(d).len() == 2
        });
        for (k, x) in parked(d) {
            assert_eq!(x["collection"], json!(MANUAL), "{x}");
            assert_eq!(x["local"], json!({"k": k, "t": t}), "{x}");
            assert_eq!(x["server"], json!({"k": k, "t": "A"}), "{x}");
            assert_eq!(x["server_version"], json!(2), "{x}");
            assert_eq!(local(d, MANUAL)[&k]["t"], json!(t), "kept meanwhile");
        }
        assert_eq!(d.status()["conflicts"], json!(2));
    }
    assert_eq!(a.json(&["conflicts", "--json"]), json!([]));
    assert_eq!(
        server(&n2, MANUAL)["r1"]["t"],
        json!("A"),
        "parked, not pushed"
    );

    // B keeps its r1 and yields r2; C yields r1 and keeps its r2.
    let take = |d: &Daemon, k: &str, side: &str| {
        let id = id_of(d, MANUAL, k);
        d.ok(&["resolve", MANUAL, &id, "--take", side]);
    };
    take(&b, "r1", "local");
    take(&b, "r2", "server");
    b.ok(&["sync", "--wait"]);
    take(&c, "r1", "server");
    take(&c, "r2", "local");
    c.ok(&["sync", "--wait"]);
    wait_converged(&all, &[&n1, &n2], &[MANUAL]);
    let srv = server(&n1, MANUAL);
    assert_eq!(srv["r1"], json!({"k": "r1", "t": "B"}));
    assert_eq!(srv["r2"], json!({"k": "r2", "t": "C"}));
    for d in all {
        assert_eq!(d.json(&["conflicts", "--json"]), json!([]));
        assert_eq!(d.status()["conflicts"], json!(0));
    }

    // Each acknowledged write applied exactly once: per record one create,
    // A's edit, and the one resolution pushed over it (v1..v3, once each).
    let seen = versions(&n2, MANUAL);
    assert_eq!(seen.len(), 6, "{seen:?}");
    assert!(seen.values().all(|n| *n == 1), "{seen:?}");
    for k in ["r1", "r2"] {
        let id = id_of(&a, MANUAL, k);
        let vs: Vec<u64> = seen.keys().filter(|(i, _)| *i == id).map(|x| x.1).collect();
        assert_eq!(vs, [1, 2, 3], "{k}: {seen:?}");
    }
    // And the database itself agrees with what the nodes serve.
    let rows = pg.scalar(
        "postgres",
        "SELECT count(*) FROM syncd_records WHERE collection = 'm'",
    );
    assert_eq!(rows, 2);
    assert_default_feed_is_dense(&pg);
}

#[test]
fn a_database_of_another_schema_version_is_refused() {
    let pg = Pg::start();
    let url = pg.url("postgres");
    let rt = runtime();
    drop(
        rt.block_on(PgStore::connect(&url))
            .expect("first start migrates"),
    );
    // Starting again on the same database is fine (the schema is idempotent).
    drop(rt.block_on(PgStore::connect(&url)).expect("second start"));
    let v = pg.scalar(
        "postgres",
        "UPDATE syncd_meta SET value = 9 WHERE key = 'schema' RETURNING value",
    );
    assert_eq!(v, 9);
    let err = rt.block_on(PgStore::connect(&url)).expect_err("refused");
    assert!(err.message().contains("schema version 9"), "{err}");
    assert!(err.message().contains(&url), "names the database: {err}");
}

#[test]
fn a_second_node_on_the_same_database_starts_without_notices() {
    let pg = Pg::start();
    let url = pg.url("postgres");
    let logs = tempfile::tempdir().expect("tempdir");
    let (log1, log2) = (logs.path().join("n1.log"), logs.path().join("n2.log"));
    // The first node creates the schema; the second finds it in place.
    let _n1 = PgNode::start_with(&bin(), &url, &[], Some(&log1));
    let _n2 = PgNode::start_with(&bin(), &url, &[], Some(&log2));
    let read = |p: &std::path::Path| std::fs::read_to_string(p).unwrap_or_default();
    for log in [&log1, &log2] {
        eventually(10, "the node logs that its store is open", || {
            read(log).contains("backend store open")
        });
    }
    for log in [&log1, &log2] {
        let text = read(log);
        assert!(
            !text.contains("already exists") && !text.contains("NOTICE"),
            "{}: {text}",
            log.display()
        );
    }
}
