//! Local queries end to end, on the real daemon over its socket: random
//! selectors, sorts and pages held to a plain filter over `list` written
//! here from the rules in docs/ipc-protocol.md (not from the daemon's
//! code), live queries that report every commit in order, an index built
//! in the background by a config reload while queries go on, indexes
//! across kill -9 and `syncd check`, and bad queries.

mod common;

use std::cmp::Ordering;
use std::time::Duration;

use common::{eventually, Daemon};
use serde_json::{json, Value};
use syncd::client::Client;
use syncd::ipc::wire::{Event, QueryEvent, SortField};

const INDEXED: &str = "[collections.items]\nindexes = [\"a\", [\"b\", \"a\"], \"c.d\"]\n";

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

// ---- the plain filter: CouchDB's rules, written out once more ----------

fn rank(v: &Value) -> u8 {
    match v {
        Value::Null => 1,
        Value::Bool(false) => 2,
        Value::Bool(true) => 3,
        Value::Number(_) => 4,
        Value::String(_) => 5,
        Value::Array(_) => 6,
        Value::Object(_) => 7,
    }
}

fn collate(a: &Value, b: &Value) -> Ordering {
    if rank(a) != rank(b) {
        return rank(a).cmp(&rank(b));
    }
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x
            .as_f64()
            .unwrap()
            .partial_cmp(&y.as_f64().unwrap())
            .unwrap(),
        (Value::String(x), Value::String(y)) => x.chars().cmp(y.chars()),
        (Value::Array(x), Value::Array(y)) => {
            for (p, q) in x.iter().zip(y) {
                let o = collate(p, q);
                if o != Ordering::Equal {
                    return o;
                }
            }
            x.len().cmp(&y.len())
        }
        (Value::Object(x), Value::Object(y)) => {
            for ((ka, va), (kb, vb)) in x.iter().zip(y) {
                let o = ka.chars().cmp(kb.chars()).then(collate(va, vb));
                if o != Ordering::Equal {
                    return o;
                }
            }
            x.len().cmp(&y.len())
        }
        _ => Ordering::Equal,
    }
}

fn get<'a>(doc: &'a Value, path: &str) -> Option<&'a Value> {
    let mut v = doc;
    for part in path.split('.') {
        v = v.as_object()?.get(part)?;
    }
    Some(v)
}

fn cond_ok(op: &str, arg: &Value, v: Option<&Value>) -> bool {
    let Some(v) = v else {
        return op == "$exists" && arg == &json!(false);
    };
    let c = || collate(v, arg);
    // An array field: one of its elements is listed (the array itself is
    // not compared).
    let member = |list: &Value| {
        let list = list.as_array().unwrap();
        let listed = |x: &Value| list.iter().any(|l| collate(x, l) == Ordering::Equal);
        match v.as_array() {
            Some(items) => items.iter().any(listed),
            None => listed(v),
        }
    };
    match op {
        "$eq" => c() == Ordering::Equal,
        "$ne" => c() != Ordering::Equal,
        "$gt" => c() == Ordering::Greater,
        "$gte" => c() != Ordering::Less,
        "$lt" => c() == Ordering::Less,
        "$lte" => c() != Ordering::Greater,
        "$in" => member(arg),
        "$nin" => !member(arg),
        "$exists" => arg == &json!(true),
        other => panic!("the generator made {other}"),
    }
}

/// The shapes [`random_selector`] makes, and `field: value` for `$eq`.
fn matches(sel: &Value, doc: &Value) -> bool {
    sel.as_object()
        .unwrap()
        .iter()
        .all(|(k, v)| match k.as_str() {
            "$and" => v.as_array().unwrap().iter().all(|s| matches(s, doc)),
            "$or" => v.as_array().unwrap().iter().any(|s| matches(s, doc)),
            "$not" => !matches(v, doc),
            field => match v.as_object() {
                Some(ops) => ops
                    .iter()
                    .all(|(op, arg)| cond_ok(op, arg, get(doc, field))),
                None => cond_ok("$eq", v, get(doc, field)),
            },
        })
}

/// The expected ids: the filter, then the sort fields (missing first,
/// each in its direction), ties by id in the last field's direction.
fn expected(records: &[(String, Value)], sel: &Value, sort: &[SortField]) -> Vec<String> {
    let mut hits: Vec<&(String, Value)> = records.iter().filter(|(_, d)| matches(sel, d)).collect();
    let id_desc = sort.last().is_some_and(|s| s.desc);
    hits.sort_by(|(ia, a), (ib, b)| {
        for s in sort {
            let o = match (get(a, &s.field), get(b, &s.field)) {
                (None, None) => Ordering::Equal,
                (None, Some(_)) => Ordering::Less,
                (Some(_), None) => Ordering::Greater,
                (Some(x), Some(y)) => collate(x, y),
            };
            let o = if s.desc { o.reverse() } else { o };
            if o != Ordering::Equal {
                return o;
            }
        }
        if id_desc {
            ib.cmp(ia)
        } else {
            ia.cmp(ib)
        }
    });
    hits.into_iter().map(|(id, _)| id.clone()).collect()
}

// ---- random documents, writes and queries -------------------------------

fn small_value(rng: &mut fastrand::Rng) -> Value {
    match rng.u8(0..9) {
        0 => Value::Null,
        1 => json!(rng.bool()),
        2 | 3 => json!(rng.i64(-2..5)),
        4 => json!(rng.i64(-4..8) as f64 / 2.0),
        5 | 6 => json!(["", "a", "b", "B", "é", "ab"][rng.usize(..6)]),
        7 => Value::Array(vec![json!(rng.i64(0..3)), json!("x")][..rng.usize(0..3)].to_vec()),
        _ => json!({"z": rng.i64(0..2)}),
    }
}

fn random_doc(rng: &mut fastrand::Rng) -> Value {
    let mut m = serde_json::Map::new();
    for f in ["a", "b", "e"] {
        if rng.u8(0..5) > 0 {
            m.insert(f.into(), small_value(rng));
        }
    }
    if rng.bool() {
        m.insert("c".into(), json!({"d": small_value(rng)}));
    }
    Value::Object(m)
}

fn random_cond(rng: &mut fastrand::Rng) -> Value {
    let field = ["a", "b", "c.d", "e", "nope"][rng.usize(..5)];
    let op = [
        "$eq", "$ne", "$gt", "$gte", "$lt", "$lte", "$in", "$nin", "$exists",
    ][rng.usize(..9)];
    let arg = match op {
        "$in" | "$nin" => json!((0..rng.usize(1..3))
            .map(|_| small_value(rng))
            .collect::<Vec<_>>()),
        "$exists" => json!(rng.bool()),
        _ => small_value(rng),
    };
    let mut ops = serde_json::Map::new();
    ops.insert(op.into(), arg);
    // A range: sometimes a second bound on the same field.
    if rng.u8(0..4) == 0 {
        ops.insert(["$lt", "$lte"][rng.usize(..2)].into(), small_value(rng));
    }
    let mut sel = serde_json::Map::new();
    sel.insert(field.into(), Value::Object(ops));
    Value::Object(sel)
}

fn random_selector(rng: &mut fastrand::Rng) -> Value {
    match rng.u8(0..10) {
        0 => json!({}),
        1 => json!({"$or": [random_cond(rng), random_cond(rng)]}),
        2 => json!({"$not": random_cond(rng)}),
        3 | 4 => json!({"$and": [random_cond(rng), random_cond(rng)]}),
        _ => random_cond(rng),
    }
}

fn random_sort(rng: &mut fastrand::Rng) -> Vec<SortField> {
    (0..rng.usize(0..3))
        .map(|_| SortField {
            field: ["a", "b", "c.d", "e"][rng.usize(..4)].into(),
            desc: rng.u8(0..3) == 0,
        })
        .collect()
}

async fn all_records(c: &mut Client, coll: &str) -> Vec<(String, Value)> {
    let mut out = Vec::new();
    let mut start = None;
    loop {
        let (recs, next) = c.list(coll, start.as_deref(), Some(10_000)).await.unwrap();
        out.extend(recs.into_iter().map(|r| (r.id, r.data.0)));
        match next {
            Some(n) => start = Some(n),
            None => return out,
        }
    }
}

/// Every page of a query, concatenated (each page at most `limit`), and
/// whether the first used an index.
async fn paged_plan(
    c: &mut Client,
    coll: &str,
    sel: &Value,
    sort: &[SortField],
    limit: u32,
) -> (Vec<String>, bool) {
    let mut out = Vec::new();
    let mut cursor: Option<String> = None;
    let mut indexed = None;
    loop {
        let p = c
            .query(coll, sel.clone(), sort, Some(limit), cursor.as_deref())
            .await
            .unwrap();
        assert!(p.records.len() <= limit as usize);
        indexed.get_or_insert(p.plan.index.is_some());
        out.extend(p.records.into_iter().map(|r| r.id));
        match p.next {
            Some(n) => cursor = Some(n),
            None => return (out, indexed.unwrap_or(false)),
        }
    }
}

async fn paged(
    c: &mut Client,
    coll: &str,
    sel: &Value,
    sort: &[SortField],
    limit: u32,
) -> Vec<String> {
    paged_plan(c, coll, sel, sort, limit).await.0
}

async fn random_writes(c: &mut Client, rng: &mut fastrand::Rng, n: usize) {
    for _ in 0..n {
        let id = format!("r{:03}", rng.u32(0..400));
        match rng.u8(0..10) {
            0 => {
                let _ = c.delete("items", &id).await;
            }
            1 | 2 => {
                let mut patch = random_doc(rng);
                patch
                    .as_object_mut()
                    .unwrap()
                    .insert("b".into(), Value::Null);
                if c.patch("items", &id, patch.clone()).await.is_err() {
                    c.put("items", Some(&id), patch).await.unwrap();
                }
            }
            _ => {
                c.put("items", Some(&id), random_doc(rng)).await.unwrap();
            }
        }
    }
}

#[test]
fn random_queries_agree_with_a_plain_filter_over_list() {
    let d = Daemon::start(INDEXED);
    eventually(30, "indexes ready", || {
        d.status()["indexes"]
            .as_array()
            .is_some_and(|v| v.len() == 3 && v.iter().all(|i| i["state"] == "ready"))
    });
    rt().block_on(async {
        let mut c = Client::connect(&d.socket, "query-test").await.unwrap();
        let mut rng = fastrand::Rng::with_seed(0x2022);
        let (mut cases, mut indexed) = (0, 0);
        for round in 0..6 {
            random_writes(&mut c, &mut rng, if round == 0 { 300 } else { 80 }).await;
            let records = all_records(&mut c, "items").await;
            for _ in 0..500 {
                let sel = random_selector(&mut rng);
                let sort = random_sort(&mut rng);
                let want = expected(&records, &sel, &sort);
                let limit = [4, 9, 50, 10_000][rng.usize(..4)];
                let (got, used) = paged_plan(&mut c, "items", &sel, &sort, limit).await;
                assert_eq!(got, want, "selector {sel} sort {sort:?} limit {limit}");
                indexed += usize::from(used);
                cases += 1;
            }
        }
        eprintln!("{cases} random queries agreed with the plain filter ({indexed} used an index)");
        assert!(
            indexed > cases / 10,
            "the generator exercises the indexes: {indexed} of {cases}"
        );
    });
    let r = d.ok(&["check", "--config", &d.config.display().to_string()]);
    assert!(r.contains("no problem found"), "{r}");
}

async fn next_query_event(c: &mut Client) -> QueryEvent {
    let ev = tokio::time::timeout(Duration::from_secs(30), c.next_event())
        .await
        .expect("a live query event within 30 s")
        .unwrap();
    match ev {
        Event::Query(q) => q,
        other => panic!("expected a query event, got {other:?}"),
    }
}

fn short(q: &QueryEvent) -> String {
    match q {
        QueryEvent::Result {
            records, resync, ..
        } => {
            let ids: Vec<&str> = records.iter().map(|r| r.id.as_str()).collect();
            format!(
                "result{} {}",
                if *resync { " resync" } else { "" },
                ids.join(",")
            )
        }
        QueryEvent::Added { id, .. } => format!("added {id}"),
        QueryEvent::Changed { id, .. } => format!("changed {id}"),
        QueryEvent::Removed { id, .. } => format!("removed {id}"),
    }
}

#[test]
fn a_live_query_reports_every_commit_that_changes_its_result_in_order() {
    let d = Daemon::start(INDEXED);
    rt().block_on(async {
        let mut w = Client::connect(&d.socket, "writer").await.unwrap();
        w.put("items", Some("x1"), json!({"a": 1})).await.unwrap();
        w.put("items", Some("x2"), json!({"a": 5})).await.unwrap();
        let mut live = Client::connect(&d.socket, "live").await.unwrap();
        live.watch_query("items", json!({"a": {"$lt": 3}}), &[], None)
            .await
            .unwrap();
        assert_eq!(short(&next_query_event(&mut live).await), "result x1");
        w.put("items", Some("x3"), json!({"a": 2})).await.unwrap();
        w.patch("items", "x1", json!({"b": 1})).await.unwrap();
        w.patch("items", "x2", json!({"a": 0})).await.unwrap();
        w.put("items", Some("x9"), json!({"a": 9})).await.unwrap();
        w.patch("items", "x3", json!({"a": 7})).await.unwrap();
        w.delete("items", "x1").await.unwrap();
        w.put("other", Some("x4"), json!({"a": 1})).await.unwrap();
        let mut got = Vec::new();
        for _ in 0..5 {
            got.push(short(&next_query_event(&mut live).await));
        }
        assert_eq!(
            got,
            [
                "added x3",
                "changed x1",
                "added x2",
                "removed x3",
                "removed x1"
            ]
        );

        // With a limit: the first page, kept as writes move records in and out.
        let mut top = Client::connect(&d.socket, "top").await.unwrap();
        let sort = [SortField {
            field: "a".into(),
            desc: false,
        }];
        top.watch_query("items", json!({}), &sort, Some(2))
            .await
            .unwrap();
        assert_eq!(short(&next_query_event(&mut top).await), "result x2,x3");
        w.put("items", Some("x0"), json!({"a": -1})).await.unwrap();
        let mut got = vec![
            short(&next_query_event(&mut top).await),
            short(&next_query_event(&mut top).await),
        ];
        got.sort();
        assert_eq!(got, ["added x0", "removed x3"]);
        w.delete("items", "x0").await.unwrap();
        let mut got = vec![
            short(&next_query_event(&mut top).await),
            short(&next_query_event(&mut top).await),
        ];
        got.sort();
        assert_eq!(got, ["added x3", "removed x0"]);
    });
}

#[test]
fn an_index_declared_on_existing_data_is_built_in_the_background() {
    let d = Daemon::start("");
    let n = 6000;
    rt().block_on(async {
        let mut tasks = Vec::new();
        for t in 0..8 {
            let socket = d.socket.clone();
            tasks.push(tokio::spawn(async move {
                let mut c = Client::connect(&socket, "fill").await.unwrap();
                for i in (t..n).step_by(8) {
                    c.put(
                        "items",
                        Some(&format!("r{i:05}")),
                        json!({"a": i % 50, "b": i % 3}),
                    )
                    .await
                    .unwrap();
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
    });
    d.write_config(INDEXED);
    eventually(30, "the reload starts a build", || {
        !d.status()["indexes"].as_array().unwrap().is_empty()
    });
    rt().block_on(async {
        let mut c = Client::connect(&d.socket, "q").await.unwrap();
        let sel = json!({"a": 7});
        let sort = [SortField {
            field: "b".into(),
            desc: true,
        }];
        let mut during = 0;
        loop {
            let st = c.status().await.unwrap();
            let ready = st.indexes.iter().all(|i| i.state == "ready");
            let records = all_records(&mut c, "items").await;
            let got = paged(&mut c, "items", &sel, &sort, 40).await;
            assert_eq!(got, expected(&records, &sel, &sort));
            if ready {
                break;
            }
            during += 1;
            c.put("items", Some("r00007"), json!({"a": 7, "b": during}))
                .await
                .unwrap();
        }
        eprintln!("{during} queries answered while the indexes were building");
        let p = c
            .query("items", sel, &sort, Some(1000), None)
            .await
            .unwrap();
        assert_eq!(p.plan.index.as_deref(), Some("a"), "{:?}", p.plan);
        assert_eq!(p.records.len(), n / 50);
    });
    let explain = d.ok(&[
        "query",
        "items",
        "{\"b\": 1, \"a\": {\"$gte\": 40}}",
        "--sort",
        "a",
        "--explain",
    ]);
    assert!(
        explain.starts_with("index [b,a] (b = 1, a >= 40), read in the query's order"),
        "{explain}"
    );
    let r = d.ok(&["check", "--config", &d.config.display().to_string()]);
    assert!(r.contains("no problem found"), "{r}");
}

#[test]
fn indexes_survive_kill_9_and_syncd_check_verifies_them() {
    let mut d = Daemon::start(INDEXED);
    let acked = rt().block_on(async {
        let mut tasks = Vec::new();
        for t in 0..4 {
            let socket = d.socket.clone();
            tasks.push(tokio::spawn(async move {
                let mut c = Client::connect(&socket, "w").await.unwrap();
                for i in 0..300 {
                    let id = format!("k{t}-{i:03}");
                    c.put("items", Some(&id), json!({"a": i % 10, "c": {"d": t}}))
                        .await
                        .unwrap();
                    if i % 3 == 0 {
                        c.patch("items", &id, json!({"a": null, "b": i}))
                            .await
                            .unwrap();
                    }
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        let mut c = Client::connect(&d.socket, "r").await.unwrap();
        all_records(&mut c, "items").await
    });
    d.kill9();
    d.spawn();
    d.wait_ready();
    let r = d.ok(&["check", "--config", &d.config.display().to_string()]);
    assert!(r.contains("no problem found"), "{r}");
    rt().block_on(async {
        let mut c = Client::connect(&d.socket, "r").await.unwrap();
        assert_eq!(all_records(&mut c, "items").await, acked);
        for sel in [
            json!({"a": 3}),
            json!({"c.d": 2}),
            json!({"b": {"$gte": 0}, "a": {"$exists": false}}),
        ] {
            let got = paged(&mut c, "items", &sel, &[], 25).await;
            assert_eq!(got, expected(&acked, &sel, &[]), "{sel}");
        }
    });
}

#[test]
fn a_bad_query_names_the_problem_and_the_daemon_keeps_serving() {
    let d = Daemon::start(INDEXED);
    for (sel, sort, want) in [
        (
            "{\"a\": {\"$regex\": \"x\"}}",
            "a",
            "bad_query: selector at $.a.$regex: unknown operator \"$regex\"",
        ),
        (
            "{\"$or\": {}}",
            "a",
            "bad_query: selector at $.$or: $or takes a non-empty array",
        ),
        (
            "{}",
            "a..b",
            "bad_query: sort field \"a..b\" is empty or has an empty part",
        ),
        (
            "{\"a\": {\"$in\": 1}}",
            "a",
            "bad_query: selector at $.a.$in: $in takes a non-empty array",
        ),
    ] {
        let out = d.cli(&["query", "items", sel, "--sort", sort]);
        assert_eq!(out.status.code(), Some(1), "{sel}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(want), "{sel}: {err}");
    }
    let out = d.cli(&["query", "items", "{}", "--cursor", "bogus"]);
    assert!(String::from_utf8_lossy(&out.stderr)
        .contains("bad_query: the cursor is not one this query handed out"));
    let out = d.cli(&["query", "items", "{not json"]);
    assert_eq!(out.status.code(), Some(2));
    d.ok(&["put", "items", "--id", "ok", "{\"a\": 1}"]);
    assert_eq!(
        d.ok(&["query", "items", "{\"a\": 1}"]).trim(),
        "ok\t{\"a\":1}"
    );
}

/// Applies a live query's events to the result it started from.
fn replay(
    start: &[(String, Value)],
    events: &[QueryEvent],
) -> std::collections::BTreeMap<String, Value> {
    let mut held: std::collections::BTreeMap<String, Value> = start.iter().cloned().collect();
    for e in events {
        match e {
            QueryEvent::Added { id, data, .. } | QueryEvent::Changed { id, data, .. } => {
                held.insert(id.clone(), data.0.clone());
            }
            QueryEvent::Removed { id, .. } => {
                assert!(
                    held.remove(id).is_some(),
                    "removed {id}, which was not held"
                );
            }
            QueryEvent::Result { .. } => panic!("a resync in a short test"),
        }
    }
    held
}

/// Live queries start while three connections write: the first result and
/// the events after it, replayed, are the final result exactly (the
/// publish gate: no commit counted twice or missed at the start). The race
/// the gate closes is microseconds wide, so this catches a broken gate
/// only sometimes; why the gate is exact is argued in live_query.rs.
#[test]
fn live_queries_started_during_writes_replay_to_the_final_result() {
    use std::sync::atomic::{AtomicBool, Ordering as AtomicOrdering};
    use std::sync::Arc;
    let d = Daemon::start(INDEXED);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let stop = Arc::new(AtomicBool::new(false));
        let mut writers = Vec::new();
        for w in 0..3u64 {
            let (socket, stop) = (d.socket.clone(), stop.clone());
            writers.push(tokio::spawn(async move {
                let mut c = Client::connect(&socket, "w").await.unwrap();
                let mut rng = fastrand::Rng::with_seed(w);
                let mut n = 0;
                while n < 200 || !stop.load(AtomicOrdering::SeqCst) {
                    let id = format!("w{:02}", rng.u32(0..40));
                    match rng.u8(0..6) {
                        0 => {
                            let _ = c.delete("items", &id).await;
                        }
                        1 => {
                            if c.patch("items", &id, json!({"b": n})).await.is_err() {
                                c.put("items", Some(&id), json!({"a": 3})).await.unwrap();
                            }
                        }
                        _ => {
                            c.put("items", Some(&id), json!({"a": rng.i64(0..10)}))
                                .await
                                .unwrap();
                        }
                    }
                    n += 1;
                }
            }));
        }
        let sel = json!({"a": {"$lt": 5}});
        let sort = [SortField {
            field: "a".into(),
            desc: false,
        }];
        let mut all = Client::connect(&d.socket, "all").await.unwrap();
        all.watch_query("items", sel.clone(), &[], None)
            .await
            .unwrap();
        let mut top = Client::connect(&d.socket, "top").await.unwrap();
        top.watch_query("items", sel.clone(), &sort, Some(5))
            .await
            .unwrap();
        let first = |q: QueryEvent| match q {
            QueryEvent::Result { records, .. } => records
                .into_iter()
                .map(|r| (r.id, r.data.0))
                .collect::<Vec<_>>(),
            other => panic!("expected the first result, got {other:?}"),
        };
        let start_all = first(next_query_event(&mut all).await);
        let start_top = first(next_query_event(&mut top).await);
        stop.store(true, AtomicOrdering::SeqCst);
        for w in writers {
            w.await.unwrap();
        }
        // A marker that both queries report; everything before it arrived.
        let mut c = Client::connect(&d.socket, "marker").await.unwrap();
        c.put("items", Some("zz"), json!({"a": -1})).await.unwrap();
        let mut read = Vec::new();
        for live in [&mut all, &mut top] {
            let mut evs = Vec::new();
            loop {
                let e = next_query_event(live).await;
                let done = matches!(&e, QueryEvent::Added { id, .. } if id == "zz");
                evs.push(e);
                if done {
                    break;
                }
            }
            read.push(evs);
        }
        // Each replay is the final result of its own query.
        for (start, events, sort, limit) in [
            (&start_all, &read[0], &[][..], 1000),
            (&start_top, &read[1], &sort[..], 5),
        ] {
            let now = c
                .query("items", sel.clone(), sort, Some(limit), None)
                .await
                .unwrap();
            let want: std::collections::BTreeMap<String, Value> = now
                .records
                .into_iter()
                .map(|r| (r.id, r.data.value()))
                .collect();
            assert_eq!(replay(start, events), want, "sort {sort:?}");
        }
    });
}
