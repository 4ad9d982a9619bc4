//! The scoped pull against a scripted revision-3 transport: the request
//! carries each subscribed scope's own cursor, pages land per scope, a
//! refused scope fetches the session again (and a revoked scope's records
//! are purged), and nothing is pulled that is not subscribed.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};

use serde_json::json;
use tokio::sync::{broadcast, Notify};

use crate::backend::client::{BatchOutcome, Failure, OpResult};
use crate::backend::protocol::*;
use crate::store::writer::{spawn, WriteCmd};
use crate::store::Store;
use crate::sync::pull::{PullJob, RoundLock};
use crate::sync::reads::ReadMode;
use crate::sync::scoped_pull::{Scoped, SessionClock};
use crate::sync::transport::{BoxFut, Transport};

/// Answers sessions and pulls from scripts; records the pull requests.
#[derive(Default)]
struct Script {
    sessions: Mutex<VecDeque<Session>>,
    pulls: Mutex<VecDeque<PullReply>>,
    asked: Mutex<Vec<PullRequest>>,
    session_calls: Mutex<usize>,
}

fn fail() -> Failure {
    Failure::Unlisted {
        status: 404,
        reason: "script: not scripted".into(),
    }
}

impl Transport for Script {
    fn name(&self) -> &str {
        "script"
    }
    fn health(&self) -> BoxFut<'_, Result<Features, Failure>> {
        Box::pin(async { Err(fail()) })
    }
    fn apply<'a>(&'a self, _: &'a WireOp) -> BoxFut<'a, Result<OpResult, Failure>> {
        Box::pin(async { Err(fail()) })
    }
    fn apply_batch<'a>(&'a self, _: &'a [WireOp]) -> BoxFut<'a, Result<BatchOutcome, Failure>> {
        Box::pin(async { Err(fail()) })
    }
    fn changes<'a>(
        &'a self,
        _: Option<&'a str>,
        _: u32,
        _: Option<u32>,
    ) -> BoxFut<'a, Result<ChangesPage, Failure>> {
        Box::pin(async { Err(fail()) })
    }
    fn session(&self) -> BoxFut<'_, Result<Session, Failure>> {
        *self.session_calls.lock().expect("lock") += 1;
        let s = self.sessions.lock().expect("lock").pop_front();
        Box::pin(async move { s.ok_or_else(fail) })
    }
    fn pull<'a>(&'a self, req: &'a PullRequest) -> BoxFut<'a, Result<PullReply, Failure>> {
        self.asked.lock().expect("lock").push(req.clone());
        let r = self.pulls.lock().expect("lock").pop_front();
        Box::pin(async move { r.ok_or_else(fail) })
    }
}

fn session(scopes: &[(&str, Access)]) -> Session {
    Session {
        sub: "alice".into(),
        scopes: scopes
            .iter()
            .map(|(n, a)| ScopeGrant {
                name: (*n).into(),
                access: *a,
            })
            .collect(),
        expires_at: None,
    }
}

fn rec(id: &str, scope: &str) -> ScopedChange {
    ScopedChange::Record {
        collection: "c".into(),
        record: ServerRecord {
            id: id.into(),
            version: 1,
            updated_at: 1,
            deleted: false,
            data: json!({"id": id}).as_object().cloned().unwrap_or_default(),
            scope: Some(scope.into()),
        },
    }
}

fn page(changes: Vec<ScopedChange>, cursor: &str, more: bool) -> ScopeResult {
    ScopeResult::Page(ScopePage {
        changes,
        cursor: cursor.into(),
        more,
        remaining: Some(u64::from(more)),
    })
}

fn reply(entries: Vec<(&str, ScopeResult)>) -> PullReply {
    PullReply {
        scopes: entries
            .into_iter()
            .map(|(s, r)| (s.to_owned(), r))
            .collect::<BTreeMap<_, _>>(),
    }
}

struct Fx {
    _dir: tempfile::TempDir,
    store: Store,
    writer: crate::store::writer::WriterHandle,
    script: Arc<Script>,
    clock: SessionClock,
}

fn fx() -> Fx {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path(), 4 << 20).expect("open");
    let (tx, _) = broadcast::channel(64);
    let (writer, _join) = spawn(store.clone(), tx, Arc::new(Notify::new())).expect("writer");
    Fx {
        _dir: dir,
        store,
        writer,
        script: Arc::new(Script::default()),
        clock: SessionClock::default(),
    }
}

fn job(f: &Fx, wanted: Option<Vec<String>>) -> PullJob {
    PullJob {
        client: f.script.clone(),
        store: f.store.clone(),
        writer: f.writer.clone(),
        limit: 100,
        wait_s: None,
        client_ids: true,
        lock: RoundLock::default(),
        reads: ReadMode::Inline,
        scoped: Some(Scoped {
            session: f.clock.clone(),
            wanted,
        }),
    }
}

#[tokio::test]
async fn pulls_every_readable_scope_at_its_own_cursor() {
    let f = fx();
    f.script.sessions.lock().expect("lock").push_back(session(&[
        ("news", Access::Read),
        ("user:alice", Access::Write),
    ]));
    f.script.pulls.lock().expect("lock").extend([
        reply(vec![
            ("news", page(vec![rec("n1", "news")], "1", true)),
            (
                "user:alice",
                page(vec![rec("a1", "user:alice")], "1", false),
            ),
        ]),
        reply(vec![
            ("news", page(vec![rec("n2", "news")], "2", false)),
            ("user:alice", page(vec![], "1", false)),
        ]),
    ]);
    let done = job(&f, None).run_for_test().await.expect("pull");
    assert_eq!(done.changes, 3);
    let asked = f.script.asked.lock().expect("lock").clone();
    assert_eq!(asked.len(), 2);
    assert_eq!(asked[0].scopes["news"], None, "a new scope from the start");
    assert_eq!(asked[1].scopes["news"].as_deref(), Some("1"));
    assert_eq!(asked[1].scopes["user:alice"].as_deref(), Some("1"));
    let states = f.store.scope_states().expect("states");
    assert!(states["news"].first_sync_done && states["user:alice"].first_sync_done);
    let r = f.store.record("c", "n2").expect("read").expect("pulled");
    assert_eq!(r.scope.as_deref(), Some("news"));
    assert_eq!(*f.script.session_calls.lock().expect("lock"), 1);
}

#[tokio::test]
async fn config_and_choices_decide_what_is_pulled() {
    let f = fx();
    f.writer
        .submit(WriteCmd::SetScopeChoice {
            scope: "news".into(),
            subscribe: true,
        })
        .await
        .expect("subscribe");
    f.script.sessions.lock().expect("lock").push_back(session(&[
        ("news", Access::Read),
        ("team-1", Access::Write),
        ("user:alice", Access::Write),
    ]));
    f.script.pulls.lock().expect("lock").push_back(reply(vec![
        ("news", page(vec![], "0", false)),
        ("team-1", page(vec![], "0", false)),
        ("user:alice", page(vec![], "0", false)),
    ]));
    job(&f, Some(vec!["team-1".into(), "other".into()]))
        .run_for_test()
        .await
        .expect("pull");
    let asked = f.script.asked.lock().expect("lock").clone();
    let names: Vec<_> = asked[0].scopes.keys().cloned().collect();
    assert_eq!(
        names,
        ["news", "team-1", "user:alice"],
        "listed, chosen or private, and readable"
    );
}

#[tokio::test]
async fn a_refused_scope_fetches_the_session_and_purges_it() {
    let f = fx();
    f.script.sessions.lock().expect("lock").extend([
        session(&[("team-1", Access::Write), ("user:alice", Access::Write)]),
        session(&[("user:alice", Access::Write)]),
    ]);
    f.script.pulls.lock().expect("lock").extend([
        reply(vec![
            ("team-1", page(vec![rec("t1", "team-1")], "1", false)),
            (
                "user:alice",
                page(vec![rec("a1", "user:alice")], "1", false),
            ),
        ]),
        reply(vec![
            (
                "team-1",
                ScopeResult::Denied(ErrorBody {
                    error: "no read access to scope 'team-1'".into(),
                    record: None,
                    code: Some("scope_denied".into()),
                }),
            ),
            ("user:alice", page(vec![], "1", false)),
        ]),
        reply(vec![("user:alice", page(vec![], "1", false))]),
    ]);
    job(&f, None).run_for_test().await.expect("first pull");
    assert!(f.store.record("c", "t1").expect("read").is_some());
    job(&f, None).run_for_test().await.expect("second pull");
    assert_eq!(*f.script.session_calls.lock().expect("lock"), 2);
    assert!(
        f.store.record("c", "t1").expect("read").is_none(),
        "revoked"
    );
    assert!(f.store.record("c", "a1").expect("read").is_some());
    let asked = f.script.asked.lock().expect("lock").clone();
    assert_eq!(asked.len(), 3);
    assert!(!asked[2].scopes.contains_key("team-1"));
    assert!(f.store.check_invariants().expect("check").is_clean());
}

#[tokio::test]
async fn a_live_pull_that_read_a_scope_from_its_start_asks_again_to_be_held() {
    let f = fx();
    f.script
        .sessions
        .lock()
        .expect("lock")
        .push_back(session(&[("user:alice", Access::Write)]));
    // The empty scope's first page comes at once (a pull from the start is
    // never held); the second request is the one the server may hold.
    f.script.pulls.lock().expect("lock").extend([
        reply(vec![("user:alice", page(vec![], "0", false))]),
        reply(vec![(
            "user:alice",
            page(vec![rec("a1", "user:alice")], "1", false),
        )]),
    ]);
    let mut live = job(&f, None);
    live.wait_s = Some(25);
    let done = live.run_for_test().await.expect("pull");
    assert_eq!(done.changes, 1);
    let asked = f.script.asked.lock().expect("lock").clone();
    assert_eq!(asked.len(), 2);
    assert_eq!(asked[0].scopes["user:alice"], None);
    assert_eq!(asked[1].scopes["user:alice"].as_deref(), Some("0"));
    assert_eq!(asked[1].wait, Some(25));
    let states = f.store.scope_states().expect("states");
    assert!(states["user:alice"].first_sync_done);
}
