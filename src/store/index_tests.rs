//! Secondary indexes and queries over the store, without sockets: the
//! entries move with every kind of write, a background build and a drop
//! run in slices while writes go on, the check finds an index that
//! disagrees, and the planner picks (and pages through) the right index.

use std::sync::Arc;

use serde_json::{json, Value};
use tokio::sync::{broadcast, Notify};

use super::index::{self, Declared, IndexState};
use super::query::Page;
use super::writer::{spawn, WriteCmd, WriteOutcome, WriterHandle};
use super::Store;
use crate::domain::query::Query;
use crate::domain::{Change, ServerRecord};

struct Fx {
    _dir: tempfile::TempDir,
    store: Store,
    w: WriterHandle,
}

fn fx(declared: Option<Declared>) -> Fx {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), 4 << 20).unwrap();
    if let Some(d) = declared {
        index::seed_ready(&store, &d).unwrap();
    }
    let (tx, _rx) = broadcast::channel(1024);
    let (w, _join) = spawn(store.clone(), tx, Arc::new(Notify::new())).unwrap();
    Fx {
        _dir: dir,
        store,
        w,
    }
}

fn declared(c: &str, lists: &[&[&str]]) -> Declared {
    [(
        c.to_owned(),
        lists
            .iter()
            .map(|l| l.iter().map(|s| s.to_string()).collect())
            .collect(),
    )]
    .into_iter()
    .collect()
}

async fn put(f: &Fx, c: &str, id: &str, v: Value) {
    let Value::Object(data) = v else { panic!() };
    f.w.submit(WriteCmd::Put {
        collection: c.into(),
        id: Some(id.into()),
        data,
        client_ts: 1,
        scope: None,
    })
    .await
    .unwrap();
}

async fn step(f: &Fx, d: &Declared) -> bool {
    match f
        .w
        .submit(WriteCmd::IndexStep {
            declared: d.clone(),
        })
        .await
        .unwrap()
    {
        WriteOutcome::IndexStep { more } => more,
        other => panic!("{other:?}"),
    }
}

fn query(
    f: &Fx,
    c: &str,
    sel: Value,
    sort: &[(&str, bool)],
    limit: usize,
    cursor: Option<&str>,
) -> Page {
    let sort: Vec<(String, bool)> = sort.iter().map(|(s, d)| (s.to_string(), *d)).collect();
    let q = Query::new(&sel, &sort, cursor).unwrap();
    f.store.query(c, &q, limit, usize::MAX).unwrap()
}

fn ids(p: &Page) -> Vec<String> {
    p.records.iter().map(|r| r.id.clone()).collect()
}

fn clean(f: &Fx) {
    let r = f.store.check_invariants().unwrap();
    assert!(r.is_clean(), "{:#?}", r.problems);
}

#[tokio::test]
async fn entries_follow_puts_patches_deletes_and_pulls() {
    let d = declared("t", &[&["due"], &["done", "due"]]);
    let f = fx(Some(d));
    put(&f, "t", "a", json!({"due": 3, "done": false})).await;
    put(&f, "t", "b", json!({"due": 1, "done": true})).await;
    put(&f, "t", "a", json!({"due": 2, "done": false})).await;
    f.w.submit(WriteCmd::Delete {
        collection: "t".into(),
        id: "b".into(),
        client_ts: 2,
    })
    .await
    .unwrap();
    // A remote record arrives through a pull.
    let rec = ServerRecord {
        id: "r".into(),
        version: 1,
        updated_at: 5,
        deleted: false,
        data: json!({"due": 0, "done": false})
            .as_object()
            .unwrap()
            .clone(),
        scope: None,
    };
    f.w.submit(WriteCmd::ApplyChanges {
        changes: vec![Change {
            collection: "t".into(),
            record: rec,
        }],
        cursor: "1".into(),
    })
    .await
    .unwrap();
    clean(&f);
    assert_eq!(f.store.index_entry_count("t", "due").unwrap(), 2);
    let p = query(&f, "t", json!({"done": false}), &[("due", false)], 10, None);
    assert_eq!(ids(&p), ["r", "a"]);
    assert_eq!(p.plan.index.as_deref(), Some("done,due"));
    assert!(p.plan.ordered);
}

#[tokio::test]
async fn the_check_finds_an_index_that_disagrees() {
    let f = fx(Some(declared("t", &[&["n"]])));
    put(&f, "t", "a", json!({"n": 1})).await;
    let db = f.store.db().unwrap();
    let txn = db.begin_write().unwrap();
    {
        let mut t = txn.open_table(super::tables::INDEX_ENTRIES).unwrap();
        t.insert(("t", "n", &[9u8][..], "ghost"), ()).unwrap();
        t.insert(("t", "gone", &[1u8][..], "a"), ()).unwrap();
        let mut out = Vec::new();
        crate::domain::query::collate::encode(Some(&json!(1)), &mut out);
        t.remove(("t", "n", out.as_slice(), "a")).unwrap();
    }
    txn.commit().unwrap();
    let r = f.store.check_invariants().unwrap();
    let text: Vec<String> = r.problems.iter().map(|p| p.to_string()).collect();
    assert!(
        text.contains(&"index n of t: an entry for ghost, which is not a live record".to_owned()),
        "{text:?}"
    );
    assert!(
        text.contains(&"index gone of t: 1 entries, but no such index".to_owned()),
        "{text:?}"
    );
    assert!(
        text.contains(&"index n of t: no entry for the live record a".to_owned()),
        "{text:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_build_runs_in_slices_while_writes_go_on_and_a_drop_cleans_up() {
    let f = fx(None);
    let n = super::writer::INDEX_STEP_BUDGET * 2 + 10;
    // Concurrent puts share group commits (the invariant check after each
    // batch reads every record: one put per batch would be quadratic).
    let f = Arc::new(f);
    let puts: Vec<_> = (0..n)
        .map(|i| {
            let f = f.clone();
            tokio::spawn(async move {
                put(&f, "t", &format!("{i:05}"), json!({"k": (i % 7) as u64})).await
            })
        })
        .collect();
    for p in puts {
        p.await.unwrap();
    }
    let d = declared("t", &[&["k"]]);
    assert!(step(&f, &d).await, "the first slice leaves more");
    let rows = f.store.index_rows().unwrap();
    assert!(
        matches!(rows[0].2.state, IndexState::Building { done, .. } if done as usize == super::writer::INDEX_STEP_BUDGET)
    );
    clean(&f);
    // A query meanwhile scans and is right.
    let p = query(&f, "t", json!({"k": 3}), &[], 10_000, None);
    assert_eq!(p.plan.index, None);
    assert_eq!(p.records.len(), (0..n).filter(|i| i % 7 == 3).count());
    // Writes on both sides of the build's position.
    put(&f, "t", "00001", json!({"k": 3})).await;
    put(&f, "t", "99999", json!({"k": 3})).await;
    clean(&f);
    while step(&f, &d).await {}
    clean(&f);
    assert_eq!(f.store.index_rows().unwrap()[0].2.state, IndexState::Ready);
    let p = query(&f, "t", json!({"k": 3}), &[], 10_000, None);
    assert_eq!(p.plan.index.as_deref(), Some("k"));
    assert_eq!(p.records.len(), (0..n).filter(|i| i % 7 == 3).count() + 2);
    // Undeclared, then declared again while its drop is half done: the
    // drop finishes and the index is built anew, in the same catch-up.
    let none = Declared::new();
    assert!(step(&f, &none).await);
    assert_eq!(
        f.store.index_rows().unwrap()[0].2.state,
        IndexState::Dropping
    );
    while step(&f, &d).await {}
    assert_eq!(f.store.index_rows().unwrap()[0].2.state, IndexState::Ready);
    assert_eq!(f.store.index_entry_count("t", "k").unwrap() as usize, n + 1);
    clean(&f);
    // Undeclared: dropped in slices, then gone.
    while step(&f, &none).await {}
    assert!(f.store.index_rows().unwrap().is_empty());
    assert_eq!(f.store.index_entry_count("t", "k").unwrap(), 0);
    put(&f, "t", "x", json!({"k": 1})).await;
    assert_eq!(f.store.index_entry_count("t", "k").unwrap(), 0);
    clean(&f);
}

#[tokio::test]
async fn pages_of_an_ordered_index_follow_the_cursor_both_ways() {
    let f = fx(Some(declared("t", &[&["g", "n"]])));
    for i in 0..40u64 {
        put(
            &f,
            "t",
            &format!("id{i:02}"),
            json!({"g": i % 2, "n": i % 5}),
        )
        .await;
    }
    for desc in [false, true] {
        let mut seen = Vec::new();
        let mut cursor = None;
        loop {
            let p = query(
                &f,
                "t",
                json!({"g": 1}),
                &[("n", desc)],
                3,
                cursor.as_deref(),
            );
            assert!(p.plan.ordered, "{:?}", p.plan);
            // A page, the one after it, and the cursor's own row.
            assert!(p.plan.examined <= 5, "{:?}", p.plan);
            seen.extend(ids(&p));
            match p.next {
                Some(c) => cursor = Some(c),
                None => break,
            }
        }
        let all = query(&f, "t", json!({"g": 1}), &[("n", desc)], 1000, None);
        assert_eq!(seen, ids(&all));
        assert_eq!(seen.len(), 20);
        let ns: Vec<u64> = all
            .records
            .iter()
            .map(|r| r.data.value()["n"].as_u64().unwrap())
            .collect();
        let mut sorted = ns.clone();
        sorted.sort();
        if desc {
            sorted.reverse();
        }
        assert_eq!(ns, sorted);
    }
}

/// A query that the index range alone answers (an `$eq` on the leading
/// field, a range on the next, read in the index's order) takes records
/// without parsing them, and must still answer exactly what matching each
/// record does (the same selector under a one-branch `$or`, which the
/// index never decides):
/// across types that collate equal (`1` and `1.0`), records without the
/// field, `null`, arrays, deleted records, and pages in both directions.
#[tokio::test]
async fn a_query_the_index_decides_answers_what_a_scan_does() {
    let f = fx(Some(declared("t", &[&["g", "n"]])));
    let values = [
        json!(null),
        json!(false),
        json!(0),
        json!(1),
        json!(1.0),
        json!(2.5),
        json!("1"),
        json!("b"),
        json!([1]),
        json!({"x": 1}),
    ];
    for i in 0..120usize {
        let g = [json!(1), json!(1.0), json!("1")][i % 3].clone();
        let mut doc = json!({ "g": g });
        if i % 11 != 0 {
            doc["n"] = values[i % values.len()].clone();
        }
        put(&f, "t", &format!("id{i:03}"), doc).await;
    }
    for i in (0..120).step_by(7) {
        f.w.submit(WriteCmd::Delete {
            collection: "t".into(),
            id: format!("id{i:03}"),
            client_ts: 2,
        })
        .await
        .unwrap();
    }
    // Each selector with the sort fields that make the index's order
    // the query's.
    let n = &["n"][..];
    let cases = [
        (json!({}), &["g", "n"][..]),
        (json!({"g": 1}), n),
        (json!({"g": 1, "n": {"$gte": 1}}), n),
        (json!({"g": 1, "n": {"$gt": 1, "$lte": "b"}}), n),
        (json!({"g": "1", "n": {"$lt": 2.5}}), n),
        (json!({"$and": [{"g": 1.0}, {"n": {"$gte": null}}]}), n),
        (json!({"g": 1, "n": {"$lt": [1]}}), &["g", "n"][..]),
    ];
    let mut short_pages = 0;
    for (sel, fields) in cases {
        for desc in [false, true] {
            let sort: Vec<(&str, bool)> = fields.iter().map(|f| (*f, desc)).collect();
            let scan = query(&f, "t", json!({"$or": [sel.clone()]}), &sort, 1000, None);
            assert!(!scan.plan.decided, "{:?}", scan.plan);
            let owned: Vec<(String, bool)> =
                sort.iter().map(|(s, d)| (s.to_string(), *d)).collect();
            let mut seen = Vec::new();
            let mut cursor = None;
            // Pages end by count (4) and, every other page, by size (a
            // budget of about two records) before the count.
            for page in 0.. {
                let q = Query::new(&sel, &owned, cursor.as_deref()).unwrap();
                let budget = if page % 2 == 0 { usize::MAX } else { 200 };
                let p = f.store.query("t", &q, 4, budget).unwrap();
                assert!(p.plan.decided, "{sel} {:?}", p.plan);
                seen.extend(ids(&p));
                if p.records.len() < 4 && p.next.is_some() {
                    short_pages += 1;
                }
                match p.next {
                    Some(c) => cursor = Some(c),
                    None => break,
                }
            }
            assert_eq!(seen, ids(&scan), "{sel} desc={desc}");
            let texts: Vec<&str> = scan.records.iter().map(|r| r.data.as_str()).collect();
            assert!(texts.iter().all(|t| t.starts_with('{')), "{texts:?}");
        }
    }
    assert!(short_pages > 0, "no page ended by size");
    // Not decided: a condition the range does not answer.
    for sel in [
        json!({"g": 1, "n": {"$ne": 1}}),
        json!({"g": 1, "other": 2}),
        json!({"g": 1, "n": {"$in": [1, 2]}}),
        json!({"$or": [{"g": 1}], "n": {"$gt": 0}}),
    ] {
        let p = query(&f, "t", sel.clone(), &[("n", false)], 1000, None);
        assert!(!p.plan.decided, "{sel} {:?}", p.plan);
        let scan = query(
            &f,
            "t",
            json!({"$or": [sel.clone()]}),
            &[("n", false)],
            1000,
            None,
        );
        assert_eq!(ids(&p), ids(&scan), "{sel}");
    }
    clean(&f);
}
