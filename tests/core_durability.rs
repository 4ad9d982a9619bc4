//! Durability of the store and the queue against the real daemon: many
//! concurrent writers with group commit, and SIGKILL in the middle of a
//! stream of writes.

mod common;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::Daemon;
use serde_json::json;
use syncd::client::Client;
use syncd::ipc::wire::{OpView, RecordView};

/// Every live record of `collection`, following `next` pages.
async fn all_records(c: &mut Client, collection: &str) -> Vec<RecordView> {
    let mut out = Vec::new();
    let mut start: Option<String> = None;
    loop {
        let (page, next) = c
            .list(collection, start.as_deref(), Some(10_000))
            .await
            .expect("list");
        out.extend(page);
        match next {
            Some(n) => start = Some(n),
            None => return out,
        }
    }
}

async fn whole_queue(c: &mut Client) -> Vec<OpView> {
    let q = c.queue(Some(u32::MAX)).await.expect("queue");
    let depth = c.status().await.expect("status").queue_depth;
    assert_eq!(
        q.len() as u64,
        depth,
        "queue listing and queue_depth disagree"
    );
    q
}

/// Queue order is commit order: seq strictly increasing down the listing,
/// and op_ids (minted by the single writer, time-ordered) increase with it.
fn check_queue_order(q: &[OpView]) {
    for w in q.windows(2) {
        assert!(
            w[0].seq < w[1].seq,
            "queue seq not increasing: {} then {}",
            w[0].seq,
            w[1].seq
        );
        assert!(
            w[0].op_id < w[1].op_id,
            "op_id order disagrees with queue order: {} (seq {}) then {} (seq {})",
            w[0].op_id,
            w[0].seq,
            w[1].op_id,
            w[1].seq
        );
    }
    let ids: HashSet<&str> = q.iter().map(|o| o.op_id.as_str()).collect();
    assert_eq!(ids.len(), q.len(), "duplicate op_ids in the queue");
}

const CONNS: usize = 16;
const WRITES: usize = 1000;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_writes_are_durable_and_queued_in_commit_order() {
    let mut d = Daemon::start("");
    let socket = d.socket.clone();

    let mut tasks = Vec::new();
    for conn in 0..CONNS {
        let socket = socket.clone();
        // 1000 writes spread over 16 connections (62 or 63 each).
        let n = WRITES / CONNS + usize::from(conn < WRITES % CONNS);
        tasks.push(tokio::spawn(async move {
            let mut c = Client::connect(&socket, "durability")
                .await
                .expect("connect");
            let mut acked = Vec::with_capacity(n);
            for i in 0..n {
                // Half the writes bring their own id, half get a minted one.
                let own = format!("c{conn:02}-{i:03}");
                let id = (i % 2 == 0).then_some(own.as_str());
                let (id, op_id) = c
                    .put("dur", id, json!({"conn": conn, "i": i}))
                    .await
                    .expect("put acknowledged");
                acked.push((id, op_id));
            }
            acked
        }));
    }
    let mut per_conn: Vec<Vec<(String, String)>> = Vec::new();
    for t in tasks {
        per_conn.push(t.await.expect("writer task"));
    }
    let total: usize = per_conn.iter().map(Vec::len).sum();
    assert_eq!(total, WRITES);

    let verify = |recs: Vec<RecordView>, q: Vec<OpView>| {
        // Every write is readable with its data.
        assert_eq!(recs.len(), WRITES, "records");
        let by_id: HashMap<&str, &RecordView> = recs.iter().map(|r| (r.id.as_str(), r)).collect();
        for (conn, acked) in per_conn.iter().enumerate() {
            for (i, (id, _)) in acked.iter().enumerate() {
                let r = by_id
                    .get(id.as_str())
                    .unwrap_or_else(|| panic!("acknowledged {id} missing"));
                assert_eq!(r.data.0, json!({"conn": conn, "i": i}), "{id}");
                assert!(r.pending);
            }
        }
        // Exactly one queue entry per write, with the acknowledged op_id.
        assert_eq!(q.len(), WRITES, "queue length");
        check_queue_order(&q);
        let mut by_rec: HashMap<&str, Vec<&OpView>> = HashMap::new();
        for o in &q {
            assert_eq!(o.collection, "dur");
            assert_eq!(o.kind, "create");
            by_rec.entry(o.id.as_str()).or_default().push(o);
        }
        for (conn, acked) in per_conn.iter().enumerate() {
            let mut last_seq = 0;
            for (i, (id, op_id)) in acked.iter().enumerate() {
                let ops = by_rec
                    .get(id.as_str())
                    .unwrap_or_else(|| panic!("no queue entry for {id}"));
                assert_eq!(ops.len(), 1, "{id} has {} queue entries", ops.len());
                let op = ops[0];
                assert_eq!(&op.op_id, op_id, "{id}: queued op_id differs from the ack");
                assert_eq!(
                    op.data.as_ref().map(|d| d.0.clone()),
                    Some(json!({"conn": conn, "i": i}))
                );
                // A connection's writes are queued in the order it made them.
                assert!(
                    op.seq > last_seq,
                    "conn {conn}: write {i} ({id}) queued before its predecessor"
                );
                last_seq = op.seq;
            }
        }
    };

    let mut c = Client::connect(&socket, "check").await.unwrap();
    let recs = all_records(&mut c, "dur").await;
    let q = whole_queue(&mut c).await;
    verify(recs, q);
    drop(c);

    // Acknowledged means on disk: all still there after a SIGKILL.
    d.kill9();
    d.spawn();
    let mut c = Client::connect(&socket, "check").await.unwrap();
    let recs = all_records(&mut c, "dur").await;
    let q = whole_queue(&mut c).await;
    verify(recs, q);
}

/// Writes continuously from `writers` connections until the daemon dies;
/// returns each acknowledged (id, op_id) per writer, in order.
async fn stream_until_killed(
    d: &mut Daemon,
    round: usize,
    writers: usize,
) -> (Vec<Vec<(String, String)>>, usize) {
    let acked_count = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for w in 0..writers {
        let socket = d.socket.clone();
        let acked_count = acked_count.clone();
        let stop = stop.clone();
        tasks.push(tokio::spawn(async move {
            let mut acked = Vec::new();
            let mut attempted = 0usize;
            let Ok(mut c) = Client::connect(&socket, "kill9").await else {
                return (acked, attempted);
            };
            for i in 0.. {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let id = format!("r{round}-w{w}-{i:06}");
                // Documents of varied size, so commits span several pages.
                let pad = "x".repeat((i * 37) % 3000);
                attempted += 1;
                match c.put("k", Some(&id), json!({"id": id, "pad": pad})).await {
                    Ok((got, op_id)) => {
                        assert_eq!(got, id);
                        acked.push((got, op_id));
                        acked_count.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(_) => break,
                }
            }
            (acked, attempted)
        }));
    }
    // Let some writes land, then kill at a random moment.
    let t0 = std::time::Instant::now();
    while acked_count.load(Ordering::Relaxed) < 20 {
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "writers made no progress"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    tokio::time::sleep(Duration::from_millis(fastrand::u64(20..600))).await;
    d.kill9();
    let killed_at = acked_count.load(Ordering::Relaxed);
    stop.store(true, Ordering::Relaxed);
    let mut acked = Vec::new();
    let mut attempted = 0;
    for t in tasks {
        let (a, n) = t.await.expect("writer task");
        acked.push(a);
        attempted += n;
    }
    assert!(killed_at > 0);
    (acked, attempted)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill9_during_writes_loses_nothing_acknowledged() {
    let mut d = Daemon::start("");
    let mut all_acked: HashMap<String, String> = HashMap::new();
    const ROUNDS: usize = 3;
    for round in 0..ROUNDS {
        let (acked, attempted) = stream_until_killed(&mut d, round, 6).await;
        for a in &acked {
            for (id, op) in a {
                assert!(
                    all_acked.insert(id.clone(), op.clone()).is_none(),
                    "{id} acked twice"
                );
            }
        }
        // The kill left the socket file behind; the restart must replace it.
        d.spawn();

        let mut c = Client::connect(&d.socket, "check")
            .await
            .expect("connect after restart");
        let recs = all_records(&mut c, "k").await;
        let q = whole_queue(&mut c).await;
        check_queue_order(&q);

        // Every acknowledged write is there with its queue entry.
        let rec_ids: HashMap<&str, &RecordView> = recs.iter().map(|r| (r.id.as_str(), r)).collect();
        let mut op_of: HashMap<&str, &OpView> = HashMap::new();
        for o in &q {
            assert_eq!(o.kind, "create");
            assert!(
                op_of.insert(o.id.as_str(), o).is_none(),
                "{} queued twice",
                o.id
            );
        }
        for (id, op_id) in &all_acked {
            let r = rec_ids
                .get(id.as_str())
                .unwrap_or_else(|| panic!("round {round}: acknowledged {id} lost"));
            assert_eq!(
                r.data.0["id"],
                json!(id),
                "record {id} has someone else's data"
            );
            let o = op_of
                .get(id.as_str())
                .unwrap_or_else(|| panic!("round {round}: acknowledged {id} has no queue entry"));
            assert_eq!(&o.op_id, op_id, "round {round}: {id}: op_id changed");
        }
        // Nothing half-written: each record has its op and each op its
        // record (every record here was written once).
        assert_eq!(
            q.len(),
            recs.len(),
            "round {round}: queue and records disagree"
        );
        for r in &recs {
            assert!(r.pending, "{} not pending", r.id);
            let o = op_of
                .get(r.id.as_str())
                .unwrap_or_else(|| panic!("record {} without queue entry", r.id));
            assert_eq!(
                o.data.as_ref().map(|d| &d.0),
                Some(&r.data.0),
                "{}: op data differs",
                r.id
            );
        }
        for o in &q {
            assert!(
                rec_ids.contains_key(o.id.as_str()),
                "queue entry {} without its record",
                o.id
            );
        }
        // Unacknowledged writes may or may not have landed, but no more
        // than were attempted.
        let this_round = recs
            .iter()
            .filter(|r| r.id.starts_with(&format!("r{round}-")))
            .count();
        let acked_now: usize = acked.iter().map(Vec::len).sum();
        assert!(
            this_round >= acked_now && this_round <= attempted,
            "round {round}: {this_round} records, {acked_now} acked, {attempted} attempted"
        );
        eprintln!(
            "round {round}: {acked_now} acknowledged, {this_round} stored, {attempted} attempted"
        );

        // The restarted daemon takes writes again.
        c.put(
            "k",
            Some(&format!("after-{round}")),
            json!({"id": format!("after-{round}")}),
        )
        .await
        .expect("write after restart");
        all_acked.insert(
            format!("after-{round}"),
            c.queue(Some(u32::MAX))
                .await
                .unwrap()
                .last()
                .unwrap()
                .op_id
                .clone(),
        );
    }
}
