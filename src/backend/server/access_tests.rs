//! Unit tests of the access rules (`access.rs`).

use super::*;
use crate::backend::protocol::Document;
use crate::backend::server::auth::Claims;

fn user(scopes: &[&str], read: &[&str]) -> Caller {
    let claims = Claims {
        sub: "alice".into(),
        exp: 1,
        scopes: scopes.iter().map(|s| s.to_string()).collect(),
        read_scopes: read.iter().map(|s| s.to_string()).collect(),
        ..Claims::default()
    };
    Caller::User(Principal::from_claims(claims).expect("claims"))
}

fn op(action: Action, scope: Option<&str>) -> ValidOp {
    ValidOp {
        op_id: "o".into(),
        client_id: String::new(),
        collection: "todos".into(),
        local_id: String::new(),
        client_ts: 1,
        action,
        scope: scope.map(str::to_owned),
    }
}

fn create(id: Option<&str>, scope: Option<&str>) -> ValidOp {
    op(
        Action::Create {
            id: id.map(str::to_owned),
            data: Document::new(),
        },
        scope,
    )
}

fn update(scope: Option<&str>) -> ValidOp {
    op(
        Action::Update {
            id: "r".into(),
            base_version: 1,
            data: Document::new(),
        },
        scope,
    )
}

fn delete() -> ValidOp {
    op(
        Action::Delete {
            id: "r".into(),
            base_version: 1,
        },
        Some("ignored"),
    )
}

fn stored(scope: &str) -> StoredRecord {
    StoredRecord {
        collection: "todos".into(),
        scope: scope.into(),
        record: ServerRecord {
            id: "r".into(),
            version: 1,
            updated_at: 1,
            deleted: false,
            data: Document::new(),
            scope: None,
        },
    }
}

fn denied(code: DenyCode) -> impl Fn(&Result<String, Refusal>) -> bool {
    move |r| matches!(r, Err(Refusal::Denied { code: c, .. }) if *c == code)
}

#[test]
fn creates() {
    let u = user(&["team-1"], &["news"]);
    assert_eq!(
        target_scope(&u, &create(None, None), None),
        Ok("user:alice".into())
    );
    assert_eq!(
        target_scope(&u, &create(None, Some("team-1")), None),
        Ok("team-1".into())
    );
    let r = target_scope(&u, &create(None, Some("news")), None);
    assert!(denied(DenyCode::ScopeDenied)(&r), "{r:?}");
    assert_eq!(
        r,
        Err(Refusal::Denied {
            code: DenyCode::ScopeDenied,
            reason: "no write access to scope 'news'".into()
        })
    );
    assert!(matches!(
        target_scope(&u, &create(None, Some("a b")), None),
        Err(Refusal::Invalid(_))
    ));
    // An id taken in a scope the caller cannot read: id_taken, no more.
    let r = target_scope(&u, &create(Some("r"), None), Some(&stored("user:bob")));
    assert_eq!(
        r,
        Err(Refusal::Denied {
            code: DenyCode::IdTaken,
            reason: "id 'r' is taken in collection 'todos'".into()
        })
    );
    // Readable: the caller gets the 409 (plan decides), in its scope.
    assert_eq!(
        target_scope(&u, &create(Some("r"), None), Some(&stored("news"))),
        Ok("news".into())
    );
}

#[test]
fn updates_deletes_and_moves() {
    let u = user(&["team-1"], &["news"]);
    let hidden = target_scope(&u, &update(None), Some(&stored("user:bob")));
    let unknown = target_scope(&u, &update(None), None);
    assert_eq!(hidden, unknown, "an unreadable record reads as unknown");
    assert!(matches!(hidden, Err(Refusal::NotFound(_))));
    assert!(denied(DenyCode::ScopeDenied)(&target_scope(
        &u,
        &update(None),
        Some(&stored("news"))
    )));
    assert!(denied(DenyCode::ScopeDenied)(&target_scope(
        &u,
        &delete(),
        Some(&stored("news"))
    )));
    assert_eq!(
        target_scope(&u, &update(None), Some(&stored("team-1"))),
        Ok("team-1".into())
    );
    assert_eq!(
        target_scope(&u, &update(Some("user:alice")), Some(&stored("team-1"))),
        Ok("user:alice".into())
    );
    assert!(denied(DenyCode::ScopeDenied)(&target_scope(
        &u,
        &update(Some("news")),
        Some(&stored("team-1"))
    )));
    assert!(matches!(
        target_scope(&u, &update(Some("")), Some(&stored("team-1"))),
        Err(Refusal::Invalid(_))
    ));
    // A delete ignores its scope.
    assert_eq!(
        target_scope(&u, &delete(), Some(&stored("team-1"))),
        Ok("team-1".into())
    );
}

#[test]
fn single_tenant_allows_all_in_the_default_scope() {
    let s = Caller::Single;
    assert_eq!(
        target_scope(&s, &create(None, Some("team-1")), None),
        Ok(SINGLE_SCOPE.into())
    );
    assert_eq!(
        target_scope(&s, &update(Some("x")), Some(&stored(SINGLE_SCOPE))),
        Ok(SINGLE_SCOPE.into())
    );
    assert_eq!(replay(&s, "o", "anything"), Ok(()));
    let r = present(&s, "team-1", stored("x").record);
    assert_eq!(r.scope, None);
}

#[test]
fn single_tenant_updates_and_deletes_keep_the_records_scope() {
    // A store that held users (with the explicit override): a single-tenant
    // write must not move a record out of its scope.
    let s = Caller::Single;
    assert_eq!(
        target_scope(&s, &update(None), Some(&stored("team-1"))),
        Ok("team-1".into())
    );
    assert_eq!(
        target_scope(&s, &update(Some("other")), Some(&stored("user:bob"))),
        Ok("user:bob".into())
    );
    assert_eq!(
        target_scope(&s, &delete(), Some(&stored("team-1"))),
        Ok("team-1".into())
    );
    assert_eq!(
        target_scope(&s, &create(Some("r"), None), Some(&stored("team-1"))),
        Ok("team-1".into())
    );
    let r = present(&s, "team-1", stored("x").record);
    assert_eq!(r.scope, None);
}

#[test]
fn replays_and_presentation() {
    let u = user(&[], &["news"]);
    assert_eq!(replay(&u, "o", "news"), Ok(()));
    assert!(matches!(
        replay(&u, "o", "user:bob"),
        Err(Refusal::Denied {
            code: DenyCode::ScopeDenied,
            ..
        })
    ));
    let r = present(&u, "news", stored("news").record);
    assert_eq!(r.scope.as_deref(), Some("news"));
}
