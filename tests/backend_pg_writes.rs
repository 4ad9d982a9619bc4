//! The PostgreSQL store's write path (issue 21): a batch costs a constant
//! number of statements, writes to different scopes never wait on each
//! other (there is no cluster-wide lock), a batch that writes one record
//! several times or moves it lands as the same ops one by one would, and
//! concurrent writers of the same op_id or id from two nodes get exactly
//! one application, and requests that wait for a transaction share the
//! next one, each with the reply it would have had alone.
//!
//! Against a real throwaway PostgreSQL (`common_pg`), through `PgStore`.

mod common_pg;

use std::sync::Arc;
use std::time::Duration;

use common_pg::{runtime, whole_feed, writer as user, Pg};
use serde_json::json;
use syncd::backend::protocol::{ScopedChange, ServerRecord};
use syncd::backend::server::access::Caller;
use syncd::backend::server::ops::{Action, ValidOp};
use syncd::backend::server::pg_group::{RUNNERS, SINGLE_RUNNERS, USER_RUNNERS};
use syncd::backend::server::pg_store::PgStore;
use syncd::backend::server::store::{BackendStore, Outcome, StoreError};

fn node(rt: &tokio::runtime::Runtime, url: &str) -> Arc<PgStore> {
    Arc::new(rt.block_on(PgStore::connect(url)).expect("connect"))
}

fn op(op_id: &str, action: Action, scope: Option<&str>) -> ValidOp {
    ValidOp {
        op_id: op_id.into(),
        client_id: "c".into(),
        collection: "todos".into(),
        local_id: op_id.into(),
        client_ts: 1,
        action,
        scope: scope.map(str::to_owned),
    }
}

fn data(n: u64) -> serde_json::Map<String, serde_json::Value> {
    match json!({ "n": n }) {
        serde_json::Value::Object(m) => m,
        _ => unreachable!(),
    }
}

fn create(op_id: &str, id: Option<&str>, scope: Option<&str>) -> ValidOp {
    let action = Action::Create {
        id: id.map(str::to_owned),
        data: data(0),
    };
    op(op_id, action, scope)
}

fn update(op_id: &str, id: &str, base: u64, scope: Option<&str>) -> ValidOp {
    let action = Action::Update {
        id: id.into(),
        base_version: base,
        data: data(base),
    };
    op(op_id, action, scope)
}

fn applied(o: &Outcome) -> ServerRecord {
    match o {
        Outcome::Applied { record, .. } => record.clone(),
        other => panic!("expected 200, got {other:?}"),
    }
}

#[test]
fn a_batch_costs_the_same_statements_whatever_its_size() {
    let pg = Pg::start();
    let rt = runtime();
    let s = node(&rt, &pg.url("postgres"));
    let cost = |ops: Vec<ValidOp>| {
        let before = s.apply_statements();
        let out = s.apply(&ops).expect("apply");
        assert!(out.iter().all(Outcome::is_applied), "{out:?}");
        s.apply_statements() - before
    };
    let one = cost(vec![create("a-1", None, None)]);
    let fifty = cost(
        (0..50)
            .map(|i| create(&format!("b-{i}"), None, None))
            .collect(),
    );
    assert_eq!(one, fifty, "50 creates cost what 1 does");
    // Creates, updates and a replay: still a handful.
    let mut mixed: Vec<ValidOp> = (0..25)
        .map(|i| create(&format!("c-{i}"), Some(&format!("id-{i}")), None))
        .collect();
    mixed.extend((0..25).map(|i| update(&format!("u-{i}"), &format!("id-{i}"), 1, None)));
    mixed.push(create("a-1", None, None));
    let mixed_cost = cost(mixed);
    eprintln!("statements per batch: 1 create {one}, 50 creates {fifty}, 51 mixed {mixed_cost}");
    assert!(mixed_cost <= 9, "{mixed_cost} statements for 51 ops");
}

#[test]
fn one_batch_writing_a_record_several_times_lands_as_its_ops_one_by_one() {
    let pg = Pg::start();
    let rt = runtime();
    let s = node(&rt, &pg.url("postgres"));
    let alice = user("alice", &["team-1"]);
    let batch = vec![
        create("o1", Some("x"), Some("team-1")),
        update("o2", "x", 1, None),
        // A move back to the private scope, then an update there.
        update("o3", "x", 2, Some("user:alice")),
        update("o4", "x", 3, None),
        op(
            "o5",
            Action::Delete {
                id: "x".into(),
                base_version: 4,
            },
            None,
        ),
        // A repeated op_id in the same batch is a replay of the first.
        update("o2", "x", 1, None),
    ];
    let out = s.apply_as(&batch, &alice).expect("apply");
    assert_eq!(out.len(), 6);
    let versions: Vec<u64> = out.iter().map(|o| applied(o).version).collect();
    assert_eq!(versions, [1, 2, 3, 4, 5, 2]);
    assert!(matches!(out[5], Outcome::Applied { replayed: true, .. }));
    let team = whole_feed(&s, "team-1");
    let private = whole_feed(&s, "user:alice");
    assert_eq!(team.len(), 3, "created, updated, gone: {team:?}");
    assert!(matches!(&team[2], ScopedChange::Gone { gone, .. } if gone.version == 3));
    assert_eq!(private.len(), 3, "moved in, updated, deleted: {private:?}");
    match &private[2] {
        ScopedChange::Record { record, .. } => assert!(record.deleted && record.version == 5),
        other => panic!("{other:?}"),
    }
    // The stored record is the last state, and a re-sent batch applies nothing.
    let again = s.apply_as(&batch, &alice).expect("apply again");
    assert!(again
        .iter()
        .all(|o| matches!(o, Outcome::Applied { replayed: true, .. })));
    assert_eq!(whole_feed(&s, "user:alice").len(), 3);
}

/// Waits until `n` lock requests wait (the event, not a clock).
fn wait_for_lock_waiters(pg: &Pg, n: i64) {
    let sql = "SELECT count(*) FROM pg_locks WHERE NOT granted";
    for _ in 0..1200 {
        if pg.scalar("postgres", sql) >= n {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("{n} lock waiters never showed");
}

/// A side session holding `sql`'s locks in an open transaction.
fn hold(rt: &tokio::runtime::Runtime, url: &str, sql: &str) -> tokio_postgres::Client {
    let (client, conn) = rt
        .block_on(tokio_postgres::connect(url, tokio_postgres::NoTls))
        .expect("connect");
    rt.spawn(conn);
    rt.block_on(client.batch_execute(&format!("BEGIN; {sql}")))
        .expect("hold");
    client
}

#[test]
fn writes_to_different_scopes_never_wait_on_each_other() {
    let pg = Pg::start();
    let rt = runtime();
    let url = pg.url("postgres");
    let (n1, n2) = (node(&rt, &url), node(&rt, &url));
    let alice = user("alice", &[]);
    let bob = user("bob", &[]);
    // Both scopes have a head row.
    applied(
        &n1.apply_as(&[create("a0", None, None)], &alice)
            .expect("a0")[0],
    );
    applied(&n1.apply_as(&[create("b0", None, None)], &bob).expect("b0")[0]);
    // Hold alice's scope head, as a long append in her scope would.
    let client = hold(
        &rt,
        &url,
        "SELECT seq FROM syncd_scope_heads WHERE scope = 'user:alice' FOR UPDATE",
    );
    let held = std::thread::spawn({
        let n2 = Arc::clone(&n2);
        let alice = alice.clone();
        move || n2.apply_as(&[create("a1", None, None)], &alice)
    });
    wait_for_lock_waiters(&pg, 1);
    // Alice's write waits at her head; bob's, on both nodes, goes through.
    for (i, n) in [&n1, &n2].into_iter().enumerate() {
        let o = n
            .apply_as(&[create(&format!("b{}", i + 1), None, None)], &bob)
            .expect("bob");
        applied(&o[0]);
    }
    assert!(
        !held.is_finished(),
        "alice's write waits for her scope's head"
    );
    rt.block_on(client.batch_execute("COMMIT"))
        .expect("release");
    let o = held.join().expect("thread").expect("alice");
    applied(&o[0]);
    assert_eq!(whole_feed(&n1, "user:alice").len(), 2);
    assert_eq!(whole_feed(&n1, "user:bob").len(), 3);
}

#[test]
fn the_same_op_id_or_id_raced_from_two_nodes_is_applied_once() {
    let pg = Pg::start();
    let rt = runtime();
    let url = pg.url("postgres");
    let nodes = [node(&rt, &url), node(&rt, &url)];
    for round in 0..20 {
        // The same op (a re-send to the other node) and two creates of one
        // client-chosen id, each pair racing from both nodes.
        let same_op = create(&format!("op-{round}"), Some(&format!("r-{round}")), None);
        let rival = create(&format!("rival-{round}"), Some(&format!("k-{round}")), None);
        let barrier = Arc::new(std::sync::Barrier::new(2));
        let racers: Vec<_> = nodes
            .iter()
            .enumerate()
            .map(|(i, n)| {
                let n = Arc::clone(n);
                let b = Arc::clone(&barrier);
                let mut rival = rival.clone();
                rival.op_id = format!("{}-{i}", rival.op_id);
                let same_op = same_op.clone();
                std::thread::spawn(move || {
                    b.wait();
                    let a = n.apply(&[same_op]).expect("same op");
                    let r = n.apply(&[rival]).expect("rival");
                    (a.into_iter().next(), r.into_iter().next())
                })
            })
            .collect();
        let results: Vec<_> = racers
            .into_iter()
            .map(|t| t.join().expect("racer"))
            .collect();
        let fresh = results
            .iter()
            .filter(|(a, _)| {
                matches!(
                    a,
                    Some(Outcome::Applied {
                        replayed: false,
                        ..
                    })
                )
            })
            .count();
        let replays = results
            .iter()
            .filter(|(a, _)| matches!(a, Some(Outcome::Applied { replayed: true, .. })))
            .count();
        assert_eq!((fresh, replays), (1, 1), "round {round}: {results:?}");
        let won = results
            .iter()
            .filter(|(_, r)| matches!(r, Some(Outcome::Applied { .. })))
            .count();
        let lost = results
            .iter()
            .filter(|(_, r)| matches!(r, Some(Outcome::Conflict(_))))
            .count();
        assert_eq!((won, lost), (1, 1), "round {round}: {results:?}");
    }
    let feed = whole_feed(&nodes[0], "default");
    assert_eq!(feed.len(), 40, "one entry per applied create");
    let ops = pg.scalar("postgres", "SELECT count(*) FROM syncd_applied_ops");
    assert_eq!(ops, 40);
}

/// The same op sent to both nodes (a client that timed out and retried
/// elsewhere) while its record is locked: when the lock goes, one node
/// applies it and the other answers the replay, never a 409 against the
/// op's own write. Both wait at the record lock before it is released, so
/// the interleaving is forced, not hoped for.
#[test]
fn a_re_sent_update_that_waited_on_its_record_is_a_replay() {
    let pg = Pg::start();
    let rt = runtime();
    let url = pg.url("postgres");
    let nodes = [node(&rt, &url), node(&rt, &url)];
    applied(
        &nodes[0]
            .apply(&[create("c", Some("x"), None)])
            .expect("create")[0],
    );
    let side = hold(
        &rt,
        &url,
        "SELECT 1 FROM syncd_records WHERE collection = 'todos' AND id = 'x' FOR UPDATE",
    );
    let senders: Vec<_> = nodes
        .iter()
        .map(|n| {
            let n = Arc::clone(n);
            std::thread::spawn(move || n.apply(&[update("u1", "x", 1, None)]))
        })
        .collect();
    wait_for_lock_waiters(&pg, 2);
    rt.block_on(side.batch_execute("COMMIT")).expect("release");
    let mut replies: Vec<(bool, u64)> = senders
        .into_iter()
        .map(
            |t| match t.join().expect("sender").expect("apply").remove(0) {
                Outcome::Applied { record, replayed } => (replayed, record.version),
                other => panic!("expected 200, got {other:?}"),
            },
        )
        .collect();
    replies.sort_unstable();
    assert_eq!(replies, [(false, 2), (true, 2)]);
}

/// A commit whose NOTIFY never came (written here straight into the
/// tables, as a node killed between its commit and its NOTIFY leaves it)
/// still reaches the waiters of its scope: the listener's periodic check
/// finds the heads' sum moved and publishes them.
#[test]
fn a_commit_without_its_notify_still_wakes_its_scope_s_waiters() {
    let pg = Pg::start();
    let rt = runtime();
    let url = pg.url("postgres");
    let s = node(&rt, &url);
    applied(&s.apply(&[create("c1", None, None)]).expect("create")[0]);
    let mut rx = s.subscribe();
    let seen = *rx.borrow_and_update();
    let unscoped = s.unscoped_wakes();
    let read = [("default".to_owned(), 1)];
    assert!(!s.may_have_moved(unscoped, &read), "nothing new yet");
    let silent = "BEGIN; \
         INSERT INTO syncd_scope_changes (scope, seq, change) VALUES ('default', 2, \
           '{\"collection\":\"todos\",\"record\":{\"id\":\"q\",\"version\":1,\"updated_at\":1,\"deleted\":false,\"data\":{}}}'); \
         UPDATE syncd_scope_heads SET seq = 2 WHERE scope = 'default'; COMMIT";
    let (client, conn) = rt
        .block_on(tokio_postgres::connect(&url, tokio_postgres::NoTls))
        .expect("connect");
    rt.spawn(conn);
    rt.block_on(client.batch_execute(silent))
        .expect("silent commit");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let woke = rt.block_on(async {
        loop {
            let end = tokio::time::timeout_at(deadline, rx.changed()).await;
            if end.is_err() || s.may_have_moved(unscoped, &read) {
                return s.may_have_moved(unscoped, &read);
            }
        }
    });
    assert!(woke, "the waiter of 'default' was never told");
    assert!(*rx.borrow() > seen);
    let page = s
        .pull(&[("default".to_owned(), 1)], 10)
        .expect("pull")
        .remove(0);
    assert_eq!(page.entries.len(), 1);
}

/// Waits until `n` requests wait for one of the node's transactions.
fn wait_for_queued(s: &PgStore, n: usize) {
    wait_until(|| s.apply_waiting() >= n, &format!("{n} queued requests"));
}

/// Polls `done` (the event, not a clock) for up to a minute.
fn wait_until(done: impl Fn() -> bool, what: &str) {
    for _ in 0..1200 {
        if done() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("{what} never showed");
}

/// A request on its own thread.
type Pending = std::thread::JoinHandle<Result<Vec<Outcome>, StoreError>>;

fn spawn_apply(s: &Arc<PgStore>, ops: Vec<ValidOp>) -> Pending {
    let s = Arc::clone(s);
    std::thread::spawn(move || s.apply(&ops))
}

/// Holds the `default` scope's head and fills every single-tenant runner
/// of `s` with a create that waits there: the next requests queue.
fn hold_and_fill(
    pg: &Pg,
    rt: &tokio::runtime::Runtime,
    s: &Arc<PgStore>,
) -> (tokio_postgres::Client, Vec<Pending>) {
    let client = hold(
        rt,
        &pg.url("postgres"),
        "SELECT seq FROM syncd_scope_heads WHERE scope = 'default' FOR UPDATE",
    );
    let mut busy = Vec::new();
    for i in 0..SINGLE_RUNNERS {
        busy.push(spawn_apply(s, vec![create(&format!("f{i}"), None, None)]));
        wait_for_lock_waiters(pg, i as i64 + 1);
    }
    (client, busy)
}

/// Releases the held head and checks that the runners' creates applied.
fn release(rt: &tokio::runtime::Runtime, client: tokio_postgres::Client, busy: Vec<Pending>) {
    rt.block_on(client.batch_execute("COMMIT"))
        .expect("release");
    for t in busy {
        applied(&t.join().expect("thread").expect("busy")[0]);
    }
}

#[test]
fn requests_that_wait_for_a_transaction_share_the_next_one() {
    let pg = Pg::start();
    let rt = runtime();
    let s = node(&rt, &pg.url("postgres"));
    applied(&s.apply(&[create("seed", Some("x"), None)]).expect("seed")[0]);
    let (tx0, req0) = s.apply_grouping();
    let (client, busy) = hold_and_fill(&pg, &rt, &s);
    // These wait for a transaction, queued in this order.
    let queued_ops = vec![
        vec![create("g0", None, None)],
        vec![create("g1", None, None), create("g2", None, None)],
        vec![update("u1", "x", 1, None)],
        // Stale once u1 is applied: a 409, and the rest of its request stops.
        vec![update("u2", "x", 1, None), create("g3", None, None)],
        // g0 again: the remembered reply.
        vec![create("g0", None, None)],
        vec![create("g4", None, None)],
    ];
    let mut queued = Vec::new();
    for (i, ops) in queued_ops.into_iter().enumerate() {
        queued.push(spawn_apply(&s, ops));
        wait_for_queued(&s, i + 1);
    }
    release(&rt, client, busy);
    let out: Vec<Vec<Outcome>> = queued
        .into_iter()
        .map(|t| t.join().expect("thread").expect("apply"))
        .collect();
    let g0 = applied(&out[0][0]);
    assert_eq!(out[1].len(), 2);
    for o in &out[1] {
        applied(o);
    }
    assert_eq!(applied(&out[2][0]).version, 2, "u1");
    assert_eq!(
        out[3].len(),
        1,
        "a request stops at its first op not applied"
    );
    assert!(
        matches!(&out[3][0], Outcome::Conflict(r) if r.version == 2),
        "{:?}",
        out[3]
    );
    assert!(
        matches!(&out[4][0], Outcome::Applied { replayed: true, record } if record.id == g0.id)
    );
    applied(&out[5][0]);
    // The six queued requests went into one transaction.
    let (tx, req) = s.apply_grouping();
    assert_eq!(req - req0, SINGLE_RUNNERS as u64 + 6);
    assert_eq!(
        tx - tx0,
        SINGLE_RUNNERS as u64 + 1,
        "one transaction for the queued six"
    );
    // seed, f*, g0, g1, g2, u1, g4: gap-free (whole_feed checks), once each.
    assert_eq!(whole_feed(&s, "default").len(), 1 + SINGLE_RUNNERS + 5);
}

/// Runs `sql` on a connection of its own (autocommit).
fn exec(rt: &tokio::runtime::Runtime, url: &str, sql: &str) {
    let (client, conn) = rt
        .block_on(tokio_postgres::connect(url, tokio_postgres::NoTls))
        .expect("connect");
    rt.spawn(conn);
    rt.block_on(client.batch_execute(sql)).expect("exec");
}

#[test]
fn a_user_whose_head_is_held_holds_only_their_own_share_of_the_node() {
    let pg = Pg::start();
    let rt = runtime();
    let url = pg.url("postgres");
    let s = node(&rt, &url);
    let alice = user("alice", &[]);
    let bob = user("bob", &[]);
    applied(&s.apply_as(&[create("a0", None, None)], &alice).expect("a0")[0]);
    let client = hold(
        &rt,
        &url,
        "SELECT seq FROM syncd_scope_heads WHERE scope = 'user:alice' FOR UPDATE",
    );
    // Alice's devices: the same user, tokens that expire at other times.
    let devices: Vec<Caller> = (0..4u64)
        .map(|d| match alice.clone() {
            Caller::User(mut p) => {
                p.exp -= d;
                Caller::User(p)
            }
            Caller::Single => unreachable!("a user"),
        })
        .collect();
    // Alice's transactions wait at her head, up to her share; the rest of
    // as many requests as the node has runners wait in the node's queue.
    let mut held = Vec::new();
    for i in 0..RUNNERS {
        let (s, alice) = (Arc::clone(&s), devices[i % devices.len()].clone());
        let op = create(&format!("a{}", i + 1), None, None);
        held.push(std::thread::spawn(move || s.apply_as(&[op], &alice)));
        if i < USER_RUNNERS {
            wait_for_lock_waiters(&pg, i as i64 + 1);
        }
    }
    wait_for_queued(&s, RUNNERS - USER_RUNNERS);
    // Bob's writes do not wait for any of them.
    let bob_writes = std::thread::spawn({
        let s = Arc::clone(&s);
        move || {
            for i in 0..3 {
                let o = s
                    .apply_as(&[create(&format!("b{i}"), None, None)], &bob)
                    .expect("bob");
                applied(&o[0]);
            }
        }
    });
    wait_until(|| bob_writes.is_finished(), "bob's writes, behind alice's,");
    bob_writes.join().expect("bob");
    assert!(held.iter().all(|t| !t.is_finished()), "alice's writes wait");
    rt.block_on(client.batch_execute("COMMIT"))
        .expect("release");
    for t in held {
        applied(&t.join().expect("thread").expect("alice")[0]);
    }
    assert_eq!(whole_feed(&s, "user:alice").len(), 1 + RUNNERS);
    assert_eq!(whole_feed(&s, "user:bob").len(), 3);
}

#[test]
fn one_request_s_failure_in_a_group_is_its_own() {
    let pg = Pg::start();
    let rt = runtime();
    let url = pg.url("postgres");
    let s = node(&rt, &url);
    applied(&s.apply(&[create("seed", Some("bad"), None)]).expect("seed")[0]);
    // A stored value this code cannot read: any apply that reads it fails.
    exec(
        &rt,
        &url,
        "UPDATE syncd_records SET record = 'not json' WHERE id = 'bad'",
    );
    let (client, busy) = hold_and_fill(&pg, &rt, &s);
    // Queued together: the first fails on the unreadable record.
    let bad = spawn_apply(&s, vec![update("u1", "bad", 1, None)]);
    wait_for_queued(&s, 1);
    let good = spawn_apply(&s, vec![create("ok", None, None)]);
    wait_for_queued(&s, 2);
    release(&rt, client, busy);
    match bad.join().expect("thread") {
        Err(e) => assert!(e.message().contains("corrupt"), "{e}"),
        Ok(o) => panic!("the unreadable record was applied: {o:?}"),
    }
    applied(&good.join().expect("thread").expect("the other request")[0]);
}
