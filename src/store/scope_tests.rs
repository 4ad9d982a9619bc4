//! Store + writer tests of scopes (protocol revision 3): the scope a record
//! and an op carry, per-scope pages with their cursors, gone entries,
//! revocation and unsubscribe purges.

use std::collections::BTreeSet;
use std::sync::Arc;

use serde_json::{json, Value};
use tokio::sync::{broadcast, Notify};

use super::writer::{spawn, ScopePageIn, WriteCmd, WriteOutcome, WriterHandle};
use super::{OpState, Store};
use crate::domain::scope_state::{Grant, Grants};
use crate::domain::{Change, Document, Event, ServerRecord};

struct Fx {
    _dir: tempfile::TempDir,
    store: Store,
    w: WriterHandle,
    events: broadcast::Receiver<Arc<Event>>,
}

fn fx() -> Fx {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path(), 4 << 20).expect("open");
    let (tx, rx) = broadcast::channel(1024);
    let (w, _join) = spawn(store.clone(), tx, Arc::new(Notify::new())).expect("writer");
    Fx {
        _dir: dir,
        store,
        w,
        events: rx,
    }
}

fn doc(v: Value) -> Document {
    match v {
        Value::Object(m) => m,
        _ => Document::new(),
    }
}

fn srec(id: &str, version: u64, scope: &str) -> ServerRecord {
    ServerRecord {
        id: id.into(),
        version,
        updated_at: 1,
        deleted: false,
        data: doc(json!({"v": version})),
        scope: Some(scope.into()),
    }
}

fn page(scope: &str, records: &[ServerRecord], gone: &[(&str, u64)], more: bool) -> ScopePageIn {
    ScopePageIn {
        scope: scope.into(),
        records: records
            .iter()
            .map(|r| Change {
                collection: "c".into(),
                record: r.clone(),
            })
            .collect(),
        gone: gone
            .iter()
            .map(|(id, v)| ("c".to_owned(), (*id).to_owned(), *v))
            .collect(),
        cursor: format!("{}", records.len() + gone.len()),
        more,
        remaining: Some(if more { 7 } else { 0 }),
    }
}

async fn pages(f: &Fx, p: Vec<ScopePageIn>) {
    f.w.submit(WriteCmd::ApplyScopePages { pages: p })
        .await
        .expect("pages");
}

/// Waits until the events of every job submitted so far are published: the
/// writer replies to a job before it sends the job's events, and sends them
/// before it takes the next job, so a later job's reply is the proof.
async fn flush_events(f: &Fx) {
    pages(f, Vec::new()).await;
}

async fn put(f: &Fx, id: &str, scope: Option<&str>) -> String {
    let out =
        f.w.submit(WriteCmd::Put {
            collection: "c".into(),
            id: Some(id.into()),
            data: doc(json!({"local": true})),
            client_ts: 5,
            scope: scope.map(str::to_owned),
        })
        .await
        .expect("put");
    match out {
        WriteOutcome::Written { op_id, .. } => op_id,
        o => panic!("{o:?}"),
    }
}

fn grants(scopes: &[(&str, bool)]) -> Grants {
    Grants {
        sub: "alice".into(),
        scopes: scopes
            .iter()
            .map(|(n, w)| Grant {
                name: (*n).into(),
                write: *w,
            })
            .collect(),
    }
}

fn scope_of(f: &Fx, id: &str) -> Option<String> {
    f.store.record("c", id).expect("read").and_then(|r| r.scope)
}

#[tokio::test]
async fn ops_carry_the_scope_asked_for_and_acks_store_the_servers() {
    let f = fx();
    put(&f, "a", Some("team-1")).await;
    let (seq, op) = f.store.queue_head(1).expect("queue").remove(0);
    assert_eq!(op.scope.as_deref(), Some("team-1"));
    assert_eq!(op.view(seq).scope.as_deref(), Some("team-1"));
    assert_eq!(scope_of(&f, "a"), None, "unknown until the server says it");
    f.w.submit(WriteCmd::Ack {
        seq,
        record: srec("a", 1, "team-1"),
    })
    .await
    .expect("ack");
    assert_eq!(scope_of(&f, "a").as_deref(), Some("team-1"));
    let view = f.store.get("c", "a").expect("get").expect("record");
    assert_eq!(view.scope.as_deref(), Some("team-1"));
}

#[tokio::test]
async fn a_write_asking_another_scope_does_not_fold() {
    let f = fx();
    put(&f, "a", Some("team-1")).await;
    put(&f, "a", None).await; // keeps the tail's scope
    assert_eq!(f.store.queue_depth().expect("depth"), 1);
    put(&f, "a", Some("team-2")).await;
    let q = f.store.queue_head(10).expect("queue");
    let scopes: Vec<_> = q.iter().map(|(_, o)| o.scope.clone()).collect();
    assert_eq!(scopes, [Some("team-1".into()), Some("team-2".into())]);
}

#[tokio::test]
async fn pages_move_each_scopes_cursor_and_mark_the_first_sync() {
    let mut f = fx();
    pages(
        &f,
        vec![
            page("team-1", &[srec("a", 1, "team-1")], &[], true),
            page("user:alice", &[srec("b", 1, "user:alice")], &[], false),
        ],
    )
    .await;
    let st = f.store.scope_states().expect("states");
    assert_eq!(st["team-1"].cursor.as_deref(), Some("1"));
    assert!(!st["team-1"].first_sync_done);
    assert_eq!(st["team-1"].remaining, Some(7));
    assert!(st["user:alice"].first_sync_done);
    assert_eq!(scope_of(&f, "a").as_deref(), Some("team-1"));
    assert_eq!(scope_of(&f, "b").as_deref(), Some("user:alice"));
    flush_events(&f).await;
    let mut synced = Vec::new();
    while let Ok(e) = f.events.try_recv() {
        if let Event::ScopeSynced { scope } = &*e {
            synced.push(scope.clone());
        }
    }
    assert_eq!(synced, ["user:alice"]);
    pages(&f, vec![page("team-1", &[], &[], false)]).await;
    pages(&f, vec![page("team-1", &[], &[], false)]).await;
    flush_events(&f).await;
    let mut synced = 0;
    while let Ok(e) = f.events.try_recv() {
        synced += usize::from(matches!(&*e, Event::ScopeSynced { .. }));
    }
    assert_eq!(
        synced, 1,
        "scope_synced once, at the first page without more"
    );
    let counts = f.store.scope_record_counts().expect("counts");
    assert_eq!(counts["team-1"], 1);
}

#[tokio::test]
async fn gone_removes_only_a_settled_record_still_in_that_scope() {
    let f = fx();
    let recs = [
        srec("a", 1, "team-1"),
        srec("b", 1, "team-1"),
        srec("c", 1, "team-1"),
        srec("d", 5, "team-1"),
    ];
    pages(&f, vec![page("team-1", &recs, &[], false)]).await;
    put(&f, "b", None).await; // pending: stays
    pages(
        &f,
        vec![
            // Moved to team-2, which this device also reads: it ends there
            // whichever page comes first.
            page("team-1", &[], &[("a", 2), ("b", 2), ("d", 3)], false),
            page("team-2", &[srec("c", 2, "team-2")], &[], false),
        ],
    )
    .await;
    pages(&f, vec![page("team-1", &[], &[("c", 2)], false)]).await;
    assert!(f.store.record("c", "a").expect("read").is_none(), "gone");
    assert!(f.store.record("c", "b").expect("read").is_some(), "pending");
    assert_eq!(scope_of(&f, "c").as_deref(), Some("team-2"), "moved here");
    assert!(
        f.store.record("c", "d").expect("read").is_some(),
        "newer than the move"
    );
    // b's op meets the move on the server (404: not readable where it is
    // now): dead-lettered, and b, gone from team-1, leaves this device.
    let (seq, _) = f.store.queue_head(1).expect("queue").remove(0);
    f.w.submit(WriteCmd::DeadLetter {
        seq,
        error: "HTTP 404: no such record".into(),
    })
    .await
    .expect("dead letter");
    assert!(
        f.store.record("c", "b").expect("read").is_none(),
        "purged once settled"
    );
    assert!(f.store.check_invariants().expect("check").is_clean());
    // Retrying that dead letter brings the record back with its op.
    let (_, dead) = f.store.dead_letters().expect("dead").remove(0);
    f.w.submit(WriteCmd::RetryDead {
        op_id: dead.op.op_id.clone(),
    })
    .await
    .expect("retry");
    let back = f.store.record("c", "b").expect("read").expect("back");
    assert_eq!(back.pending, 1);
    assert!(f.store.check_invariants().expect("check").is_clean());
}

/// A record that left its scope while it had a pending op, whose op then
/// meets a 409 with the record as it stood before the move, and the
/// device takes the server's side: the copy taken is stale (the record
/// lives in another scope now, maybe one this user cannot read), so it
/// leaves the device, as after a dead letter. Found by the users
/// simulation: taking the server's record cleared the mark, and the old
/// copy stayed on the device for good.
#[tokio::test]
async fn taking_the_servers_side_of_a_record_gone_from_its_scope_purges_it() {
    let f = fx();
    pages(
        &f,
        vec![page("team-1", &[srec("a", 1, "team-1")], &[], false)],
    )
    .await;
    put(&f, "a", None).await;
    // Someone updated it (v2), then moved it to their private scope (v3).
    pages(
        &f,
        vec![page(
            "team-1",
            &[srec("a", 2, "team-1")],
            &[("a", 3)],
            false,
        )],
    )
    .await;
    assert!(f.store.record("c", "a").expect("read").is_some(), "pending");
    let (seq, _) = f.store.queue_head(1).expect("queue").remove(0);
    f.w.submit(WriteCmd::Conflict {
        seq,
        server: srec("a", 2, "team-1"),
        strategy: crate::domain::conflict::Strategy::ServerWins,
        rules: Default::default(),
    })
    .await
    .expect("conflict");
    assert_eq!(f.store.queue_depth().expect("depth"), 0);
    assert!(
        f.store.record("c", "a").expect("read").is_none(),
        "the stale copy of a record gone from team-1 stayed"
    );
    assert!(f.store.check_invariants().expect("check").is_clean());
    // A server record taken in another scope is where the record is now.
    pages(
        &f,
        vec![page("team-1", &[srec("b", 1, "team-1")], &[], false)],
    )
    .await;
    put(&f, "b", None).await;
    pages(&f, vec![page("team-1", &[], &[("b", 2)], false)]).await;
    let (seq, _) = f.store.queue_head(1).expect("queue").remove(0);
    f.w.submit(WriteCmd::Conflict {
        seq,
        server: srec("b", 2, "team-2"),
        strategy: crate::domain::conflict::Strategy::ServerWins,
        rules: Default::default(),
    })
    .await
    .expect("conflict");
    assert_eq!(
        scope_of(&f, "b").as_deref(),
        Some("team-2"),
        "kept where it is"
    );
    // Moved out of team-1 and back (gone at 3, back at 4): whether the
    // record entry comes in the same page as the gone or in a later one,
    // the record taken is where it is now, and stays.
    for (n, same_page) in [("c", true), ("d", false)] {
        pages(
            &f,
            vec![page("team-1", &[srec(n, 1, "team-1")], &[], false)],
        )
        .await;
        put(&f, n, None).await;
        let back = srec(n, 4, "team-1");
        if same_page {
            pages(
                &f,
                vec![page(
                    "team-1",
                    std::slice::from_ref(&back),
                    &[(n, 3)],
                    false,
                )],
            )
            .await;
        } else {
            pages(&f, vec![page("team-1", &[], &[(n, 3)], false)]).await;
            pages(
                &f,
                vec![page("team-1", std::slice::from_ref(&back), &[], false)],
            )
            .await;
        }
        let (seq, _) = f.store.queue_head(1).expect("queue").remove(0);
        f.w.submit(WriteCmd::Conflict {
            seq,
            server: back,
            strategy: crate::domain::conflict::Strategy::ServerWins,
            rules: Default::default(),
        })
        .await
        .expect("conflict");
        let kept = f.store.record("c", n).expect("read");
        assert_eq!(
            kept.and_then(|r| r.version),
            Some(4),
            "{n}: moved back, then lost"
        );
    }
    assert!(f.store.check_invariants().expect("check").is_clean());
}

#[tokio::test]
async fn revocation_purges_that_scope_only_and_dead_letters_its_ops() {
    let f = fx();
    let all = grants(&[("team-1", true), ("team-2", true), ("user:alice", true)]);
    let pulled: BTreeSet<String> = all.scopes.iter().map(|g| g.name.clone()).collect();
    f.w.submit(WriteCmd::ApplySession {
        grants: all,
        pulled,
    })
    .await
    .expect("session");
    pages(
        &f,
        vec![
            page(
                "team-1",
                &[srec("a", 1, "team-1"), srec("b", 1, "team-1")],
                &[],
                false,
            ),
            page("team-2", &[srec("x", 1, "team-2")], &[], false),
        ],
    )
    .await;
    let op = put(&f, "b", None).await; // pending, in team-1
    let now = grants(&[("team-2", true), ("user:alice", true)]);
    let pulled: BTreeSet<String> = ["team-2".to_owned(), "user:alice".to_owned()].into();
    f.w.submit(WriteCmd::ApplySession {
        grants: now,
        pulled,
    })
    .await
    .expect("session");
    assert!(f.store.record("c", "a").expect("read").is_none(), "purged");
    assert!(
        f.store.record("c", "b").expect("read").is_none(),
        "purged once its op is dead"
    );
    assert!(
        f.store.record("c", "x").expect("read").is_some(),
        "other scope"
    );
    match f.store.op_state(&op).expect("state") {
        OpState::DeadLettered(e) => assert_eq!(e, "no write access to scope 'team-1' (revoked)"),
        s => panic!("{s:?}"),
    }
    let st = f.store.scope_states().expect("states");
    assert!(!st.contains_key("team-1") && st.contains_key("team-2"));
    assert!(f.store.check_invariants().expect("check").is_clean());
}

#[tokio::test]
async fn read_only_scope_keeps_its_records_but_not_pending_writes() {
    let f = fx();
    pages(&f, vec![page("news", &[srec("n", 1, "news")], &[], false)]).await;
    let op = put(&f, "n", None).await;
    let pulled: BTreeSet<String> = ["news".to_owned()].into();
    f.w.submit(WriteCmd::ApplySession {
        grants: grants(&[("news", false)]),
        pulled,
    })
    .await
    .expect("session");
    assert!(matches!(
        f.store.op_state(&op).expect("state"),
        OpState::DeadLettered(_)
    ));
    assert!(
        f.store.record("c", "n").expect("read").is_some(),
        "readable"
    );
}

#[tokio::test]
async fn unsubscribe_purges_settled_records_and_forgets_the_cursor() {
    let f = fx();
    pages(
        &f,
        vec![page(
            "team-1",
            &[srec("a", 1, "team-1"), srec("b", 1, "team-1")],
            &[],
            false,
        )],
    )
    .await;
    pages(
        &f,
        vec![page("team-2", &[srec("x", 1, "team-2")], &[], false)],
    )
    .await;
    put(&f, "b", None).await;
    f.w.submit(WriteCmd::SetScopeChoice {
        scope: "team-1".into(),
        subscribe: false,
    })
    .await
    .expect("unsubscribe");
    assert!(f.store.record("c", "a").expect("read").is_none());
    assert!(
        f.store.record("c", "b").expect("read").is_some(),
        "pending stays"
    );
    assert!(f.store.record("c", "x").expect("read").is_some());
    assert!(!f
        .store
        .scope_states()
        .expect("states")
        .contains_key("team-1"));
    assert!(!f.store.scope_choices().expect("choices")["team-1"]);
    // A page fetched before the unsubscribe and landing after it is dropped.
    pages(
        &f,
        vec![page("team-1", &[srec("a", 2, "team-1")], &[], false)],
    )
    .await;
    assert!(f.store.record("c", "a").expect("read").is_none());
    let states = f.store.scope_states().expect("states");
    assert!(!states.contains_key("team-1"));
}

#[tokio::test]
async fn a_scope_no_longer_pulled_is_purged_like_an_unsubscribe() {
    let f = fx();
    let all = grants(&[("user:alice", true), ("team-1", true), ("team-2", true)]);
    let both: BTreeSet<String> = ["team-1", "team-2"].map(String::from).into();
    f.w.submit(WriteCmd::ApplySession {
        grants: all.clone(),
        pulled: both,
    })
    .await
    .expect("session");
    pages(
        &f,
        vec![
            page(
                "team-1",
                &[srec("a", 1, "team-1"), srec("b", 1, "team-1")],
                &[],
                false,
            ),
            page("team-2", &[srec("x", 1, "team-2")], &[], false),
        ],
    )
    .await;
    put(&f, "b", None).await;
    // `[sync] scopes` now names team-2 only: the grants are the same.
    let only: BTreeSet<String> = ["team-2".to_owned()].into();
    f.w.submit(WriteCmd::ApplySession {
        grants: all,
        pulled: only,
    })
    .await
    .expect("session");
    assert!(f.store.record("c", "a").expect("read").is_none());
    assert!(
        f.store.record("c", "b").expect("read").is_some(),
        "pending stays"
    );
    assert!(f.store.record("c", "x").expect("read").is_some());
    let states = f.store.scope_states().expect("states");
    assert!(!states.contains_key("team-1") && states.contains_key("team-2"));
}

#[tokio::test]
async fn a_dead_letter_after_a_move_takes_the_deferred_copy_of_the_new_scope() {
    let f = fx();
    pages(
        &f,
        vec![
            page("team-1", &[srec("a", 1, "team-1")], &[], false),
            page("team-2", &[], &[], false),
        ],
    )
    .await;
    put(&f, "a", None).await; // pending
                              // Moved to team-2 at version 2: team-2's entry is deferred (pending),
                              // then team-1's gone entry marks the record.
    pages(
        &f,
        vec![page("team-2", &[srec("a", 2, "team-2")], &[], false)],
    )
    .await;
    pages(&f, vec![page("team-1", &[], &[("a", 2)], false)]).await;
    let (seq, _) = f.store.queue_head(1).expect("queue").remove(0);
    f.w.submit(WriteCmd::DeadLetter {
        seq,
        error: "HTTP 422: refused".into(),
    })
    .await
    .expect("dead letter");
    let a = f.store.record("c", "a").expect("read").expect("kept");
    assert_eq!(a.version, Some(2));
    assert_eq!(a.scope.as_deref(), Some("team-2"));
    assert_eq!(a.gone_from, None);
    assert_eq!(
        a.data, r#"{"v":2}"#,
        "the server's copy, not the local write"
    );
    assert!(f.store.check_invariants().expect("check").is_clean());
}

#[tokio::test]
async fn a_record_held_before_scopes_gets_its_scope_from_the_back_fill() {
    let f = fx();
    let mut old = srec("a", 1, "team-1");
    old.scope = None;
    f.w.submit(WriteCmd::ApplyChanges {
        changes: vec![Change {
            collection: "c".into(),
            record: old,
        }],
        cursor: "1".into(),
    })
    .await
    .expect("changes");
    assert_eq!(scope_of(&f, "a"), None);
    pages(
        &f,
        vec![page("team-1", &[srec("a", 1, "team-1")], &[], false)],
    )
    .await;
    assert_eq!(scope_of(&f, "a").as_deref(), Some("team-1"));
    f.w.submit(WriteCmd::SetScopeChoice {
        scope: "team-1".into(),
        subscribe: false,
    })
    .await
    .expect("unsubscribe");
    assert!(f.store.record("c", "a").expect("read").is_none(), "purged");
}

async fn session(f: &Fx, sub: &str, scopes: &[(&str, bool)]) {
    let mut g = grants(scopes);
    g.sub = sub.into();
    let pulled: BTreeSet<String> = g.scopes.iter().map(|s| s.name.clone()).collect();
    f.w.submit(WriteCmd::ApplySession { grants: g, pulled })
        .await
        .expect("session");
}

#[tokio::test]
async fn another_user_dead_letters_the_previous_users_ops_and_purges_their_records() {
    let f = fx();
    session(&f, "alice", &[("user:alice", true), ("team-1", true)]).await;
    pages(
        &f,
        vec![
            page(
                "team-1",
                &[srec("a", 1, "team-1"), srec("t", 1, "team-1")],
                &[],
                false,
            ),
            page("user:alice", &[srec("p", 1, "user:alice")], &[], false),
        ],
    )
    .await;
    let earlier = put(&f, "x", None).await;
    let (seq, _) = f.store.queue_head(1).expect("queue").remove(0);
    f.w.submit(WriteCmd::DeadLetter {
        seq,
        error: "HTTP 422: no".into(),
    })
    .await
    .expect("dead letter");
    let create = put(&f, "new", None).await;
    let update = put(&f, "a", None).await;
    session(&f, "bob", &[("user:bob", true), ("team-1", true)]).await;
    assert_eq!(f.store.queue_depth().expect("depth"), 0, "nothing goes out");
    for op in [&create, &update] {
        match f.store.op_state(op).expect("state") {
            OpState::DeadLettered(e) => {
                assert_eq!(e, "queued by user 'alice'; the token now belongs to 'bob'")
            }
            s => panic!("{s:?}"),
        }
    }
    for id in ["new", "a", "p", "x"] {
        assert!(f.store.record("c", id).expect("read").is_none(), "{id}");
    }
    assert!(
        f.store.record("c", "t").expect("read").is_some(),
        "readable by bob, as the server has it"
    );
    assert!(
        f.store.scope_states().expect("states").is_empty(),
        "back-filled afresh"
    );
    for op in [&earlier, &create] {
        match f.w.submit(WriteCmd::RetryDead { op_id: op.clone() }).await {
            Err(crate::domain::WriteError::QueuedByAnotherUser { queued_by, now, .. }) => {
                assert_eq!((queued_by.as_str(), now.as_deref()), ("alice", Some("bob")))
            }
            r => panic!("{r:?}"),
        }
    }
    assert_eq!(f.store.queue_depth().expect("depth"), 0);
    assert!(f.store.check_invariants().expect("check").is_clean());
    // Alice's token again: her dead letters are hers to retry.
    session(&f, "alice", &[("user:alice", true), ("team-1", true)]).await;
    f.w.submit(WriteCmd::RetryDead { op_id: create })
        .await
        .expect("retry");
    assert_eq!(f.store.queue_depth().expect("depth"), 1);
    assert!(f.store.check_invariants().expect("check").is_clean());
}

#[tokio::test]
async fn records_left_in_scopes_not_pulled_go_once_their_ops_settle() {
    let f = fx();
    let scopes = [("user:alice", true), ("team-1", true), ("team-3", true)];
    let pulled_now =
        |names: &[&str]| -> BTreeSet<String> { names.iter().map(|s| (*s).to_owned()).collect() };
    f.w.submit(WriteCmd::ApplySession {
        grants: grants(&scopes),
        pulled: pulled_now(&["user:alice", "team-1"]),
    })
    .await
    .expect("session");
    pages(
        &f,
        vec![page("team-1", &[srec("b", 1, "team-1")], &[], false)],
    )
    .await;
    put(&f, "b", None).await;
    f.w.submit(WriteCmd::SetScopeChoice {
        scope: "team-1".into(),
        subscribe: false,
    })
    .await
    .expect("unsubscribe");
    assert!(f.store.record("c", "b").expect("read").is_some(), "pending");
    let (seq, _) = f.store.queue_head(1).expect("queue").remove(0);
    f.w.submit(WriteCmd::Ack {
        seq,
        record: srec("b", 2, "team-1"),
    })
    .await
    .expect("ack");
    // Written into team-3, which this device may write but does not pull.
    put(&f, "w", Some("team-3")).await;
    let (seq, _) = f.store.queue_head(1).expect("queue").remove(0);
    f.w.submit(WriteCmd::Ack {
        seq,
        record: srec("w", 1, "team-3"),
    })
    .await
    .expect("ack");
    assert!(f.store.record("c", "w").expect("read").is_some());
    f.w.submit(WriteCmd::ApplySession {
        grants: grants(&scopes),
        pulled: pulled_now(&["user:alice"]),
    })
    .await
    .expect("session");
    assert!(
        f.store.record("c", "b").expect("read").is_none(),
        "settled: purged"
    );
    assert!(
        f.store.record("c", "w").expect("read").is_none(),
        "not pulled: purged once acked"
    );
    assert!(f.store.check_invariants().expect("check").is_clean());
}

#[tokio::test]
async fn a_late_ack_in_the_scope_the_record_left_purges_it() {
    // The ack of this device's update (v2, in team-1) comes after the
    // gone entry of the record's later move out of team-1 (v4).
    let f = fx();
    pages(
        &f,
        vec![page("team-1", &[srec("a", 1, "team-1")], &[], false)],
    )
    .await;
    put(&f, "a", None).await;
    pages(&f, vec![page("team-1", &[], &[("a", 4)], false)]).await;
    assert!(f.store.record("c", "a").expect("read").is_some(), "pending");
    let (seq, _) = f.store.queue_head(1).expect("queue").remove(0);
    f.w.submit(WriteCmd::Ack {
        seq,
        record: srec("a", 2, "team-1"),
    })
    .await
    .expect("ack");
    assert!(
        f.store.record("c", "a").expect("read").is_none(),
        "the ack predates the move: the record has left"
    );
    assert!(f.store.check_invariants().expect("check").is_clean());
}

#[tokio::test]
async fn a_late_ack_with_a_deferred_copy_from_before_the_move_purges_it() {
    // As above, with another device's v3 (still in team-1) pulled while
    // the op was pending: it is older than the move too.
    let f = fx();
    pages(
        &f,
        vec![page("team-1", &[srec("a", 1, "team-1")], &[], false)],
    )
    .await;
    put(&f, "a", None).await;
    pages(
        &f,
        vec![page(
            "team-1",
            &[srec("a", 3, "team-1")],
            &[("a", 4)],
            false,
        )],
    )
    .await;
    let (seq, _) = f.store.queue_head(1).expect("queue").remove(0);
    f.w.submit(WriteCmd::Ack {
        seq,
        record: srec("a", 2, "team-1"),
    })
    .await
    .expect("ack");
    assert!(f.store.record("c", "a").expect("read").is_none());
    assert!(f.store.check_invariants().expect("check").is_clean());
}
