//! Unit tests of the scoped pull (`pull.rs`).

use super::*;
use crate::backend::protocol::{Gone, ScopedChange};
use crate::backend::server::auth::{Claims, Principal};

fn parse(v: serde_json::Value) -> Result<PullQuery, Rejection> {
    parse_pull(v.to_string().as_bytes())
}

fn alice() -> Caller {
    Caller::User(
        Principal::from_claims(Claims {
            sub: "alice".into(),
            exp: 1,
            scopes: vec!["team-1".into()],
            ..Claims::default()
        })
        .expect("claims"),
    )
}

#[test]
fn requests_are_checked() {
    let q = parse(serde_json::json!({"scopes": {"b": "41", "a": null}, "limit": 5000, "wait": 0}))
        .expect("valid");
    assert_eq!(
        q.scopes,
        [
            ScopeCursor {
                scope: "a".into(),
                since: None
            },
            ScopeCursor {
                scope: "b".into(),
                since: Some(41)
            }
        ]
    );
    assert_eq!((q.limit, q.wait_s), (MAX_CHANGES_LIMIT, Some(MIN_WAIT_S)));
    let q = parse(serde_json::json!({"scopes": {"a": "9"}, "limit": 0})).expect("valid");
    assert_eq!((q.limit, q.wait_s), (1, None));
    let q = parse(serde_json::json!({"scopes": {"a": "9"}})).expect("valid");
    assert_eq!(q.limit, DEFAULT_CHANGES_LIMIT);

    assert_eq!(
        parse(serde_json::json!({"scopes": {}})).map_err(|r| r.status),
        Err(422)
    );
    let many: serde_json::Map<_, _> = (0..=MAX_PULL_SCOPES)
        .map(|i| (format!("s{i}"), serde_json::Value::Null))
        .collect();
    assert_eq!(
        parse(serde_json::json!({"scopes": many})).map_err(|r| r.status),
        Err(422)
    );
    let r = parse(serde_json::json!({"scopes": {"team-1": "x1"}})).unwrap_err();
    assert_eq!(r.status, 400);
    assert!(r.reason.contains("team-1"), "{}", r.reason);
    assert_eq!(
        parse(serde_json::json!({"scopes": {"a b": null}})).map_err(|r| r.status),
        Err(422)
    );
    assert_eq!(parse_pull(b"{").map_err(|r| r.status), Err(400));
}

fn slice(seqs: &[u64], more: bool, head: u64) -> ScopeSlice {
    ScopeSlice {
        entries: seqs
            .iter()
            .map(|s| {
                (
                    *s,
                    ScopedChange::Gone {
                        collection: "c".into(),
                        gone: Gone {
                            id: "r".into(),
                            version: *s,
                        },
                    },
                )
            })
            .collect(),
        more,
        head,
    }
}

#[test]
fn replies_have_pages_refusals_and_remaining() {
    let q = parse(
        serde_json::json!({"scopes": {"team-1": "3", "user:alice": null, "zzz": "1"}, "limit": 2}),
    )
    .expect("valid");
    let c = alice();
    assert_eq!(
        readable(&c, &q),
        [("team-1".to_string(), 3), ("user:alice".to_string(), 0)]
    );
    let reply = pull_reply(&c, &q, vec![slice(&[4, 5], true, 9), slice(&[], false, 0)]);
    let v: serde_json::Value = serde_json::from_slice(&reply.body).expect("json");
    assert_eq!(reply.status, 200);
    assert_eq!(v["scopes"]["team-1"]["cursor"], "5");
    assert_eq!(v["scopes"]["team-1"]["remaining"], 4);
    assert_eq!(v["scopes"]["team-1"]["more"], true);
    assert_eq!(v["scopes"]["user:alice"]["cursor"], "0");
    assert_eq!(v["scopes"]["user:alice"]["remaining"], 0);
    assert_eq!(v["scopes"]["zzz"]["code"], "scope_denied");
    assert_eq!(v["scopes"]["zzz"]["error"], "no read access to scope 'zzz'");
}

#[test]
fn idle_means_nothing_new_and_no_cursor_past_the_head() {
    let c = alice();
    let q = parse(serde_json::json!({"scopes": {"team-1": "3", "zzz": "8"}})).expect("valid");
    assert!(is_idle(&c, &q, &[slice(&[], false, 3)]));
    assert!(!is_idle(&c, &q, &[slice(&[4], false, 4)]));
    // Past the head (a reset server): answered at once, with the head.
    let past = slice(&[], false, 2);
    assert!(!is_idle(&c, &q, std::slice::from_ref(&past)));
    assert_eq!(cursor_at(Some(3), None, past.head), 2);
    // Only unreadable scopes: nothing to wait for.
    let q = parse(serde_json::json!({"scopes": {"zzz": "8"}, "wait": 30})).expect("valid");
    assert!(!is_idle(&c, &q, &[]));
    // A scope read from its start is a back-fill, answered at once even
    // when it is empty: its first sync must not wait for its first change.
    for start in [serde_json::Value::Null, serde_json::json!("")] {
        let q = parse(serde_json::json!({"scopes": {"team-1": start}, "wait": 30})).expect("valid");
        assert!(!is_idle(&c, &q, &[slice(&[], false, 0)]));
    }
    let q = parse(serde_json::json!({"scopes": {"team-1": "0"}, "wait": 30})).expect("valid");
    assert!(is_idle(&c, &q, &[slice(&[], false, 0)]));
}

#[test]
fn a_reply_past_its_byte_budget_cuts_the_remaining_pages() {
    let c = alice();
    let q =
        parse(serde_json::json!({"scopes": {"team-1": null, "user:alice": "2"}})).expect("valid");
    let one = json_len(&slice(&[1], false, 1).entries[0].1);
    // Room for two changes: team-1 gets 2 of 3, user:alice still its first.
    let reply = pull_reply_within(
        &c,
        &q,
        vec![slice(&[1, 2, 3], false, 3), slice(&[3, 4], false, 4)],
        2 * one + one / 2,
    );
    let v: serde_json::Value = serde_json::from_slice(&reply.body).expect("json");
    let team = &v["scopes"]["team-1"];
    assert_eq!(team["changes"].as_array().map(Vec::len), Some(2), "{v}");
    assert_eq!(
        (&team["cursor"], &team["more"], &team["remaining"]),
        (
            &serde_json::json!("2"),
            &serde_json::json!(true),
            &serde_json::json!(1)
        )
    );
    let mine = &v["scopes"]["user:alice"];
    assert_eq!(mine["changes"].as_array().map(Vec::len), Some(1), "{v}");
    assert_eq!(
        (&mine["cursor"], &mine["more"], &mine["remaining"]),
        (
            &serde_json::json!("3"),
            &serde_json::json!(true),
            &serde_json::json!(1)
        )
    );
    // Within the budget: whole pages, `more` as the store said.
    let reply = pull_reply(
        &c,
        &q,
        vec![slice(&[1, 2, 3], false, 3), slice(&[3, 4], false, 4)],
    );
    let v: serde_json::Value = serde_json::from_slice(&reply.body).expect("json");
    assert_eq!(v["scopes"]["team-1"]["more"], false);
    assert_eq!(
        v["scopes"]["user:alice"]["changes"]
            .as_array()
            .map(Vec::len),
        Some(2)
    );
}
