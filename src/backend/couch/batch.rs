//! The batched write path of the CouchDB adapter: a batch of ops on
//! different documents costs two requests, one `POST _all_docs` that reads
//! every current revision and one `POST _bulk_docs` that writes them, where
//! one op at a time costs a read and a `PUT` each.
//!
//! `_bulk_docs` is neither atomic nor stops at a failed document, so the
//! protocol's rule (results for a prefix, ending at the first op that was
//! not applied) is kept in two steps:
//! - the op_id and base revision checks run on the read, in queue order, and
//!   the write holds only the ops before the first one they decide against
//!   (that op's verdict ends the results, nothing after it is sent);
//! - a document that someone else wrote between the read and the write
//!   fails alone inside `_bulk_docs`, and the ops after it in the same
//!   request are written anyway. They are of other documents (a batch never
//!   holds two ops of one document), so they cannot change what the failed
//!   op's resolution produces. The results still end at the failed op; the
//!   ops after it are sent again and the op_id check finds them applied.

use hyper::Method;
use serde_json::{json, Map, Value};

use super::classify::{self, Bulk};
use super::doc::{self, Current, DocShape};
use super::{decide, encode, raw, target, CouchClient, Step};
use crate::backend::client::{percent_encode, BatchOutcome, Failure, OpResult};
use crate::backend::protocol::WireOp;

/// One op of the batch: its document id and what the read decided.
struct Planned<'a> {
    op: &'a WireOp,
    id: &'a str,
    step: Step,
}

/// Why the results end before an op.
enum Stop {
    /// The request for this op failed: the ops from here on are sent again.
    Failure(Failure),
    /// CouchDB refused this document for a reason other than a revision
    /// conflict: its op goes alone next time, where a `PUT` gets the
    /// reply table's verdict.
    Alone(String),
}

/// `ops` (one per document, in queue order) as one read and one write.
pub async fn apply(c: &CouchClient, ops: &[WireOp]) -> Result<BatchOutcome, Failure> {
    debug_assert!(
        one_op_per_document(ops),
        "a batch holds one op per document"
    );
    let mut ids = Vec::with_capacity(ops.len());
    let mut without_id = None;
    for op in ops {
        match target(op) {
            Ok(id) => ids.push(id),
            Err(verdict) => {
                without_id = Some(verdict);
                break;
            }
        }
    }
    let current = read(c, &ops[..ids.len()], &ids).await?;
    let plan = plan(ops, &ids, current, c.shape);
    let all_planned = plan.len() == ids.len();
    let mut results = match write(c, plan).await? {
        Ok(results) => results,
        Err(refused) => return Ok(BatchOutcome::Refused(refused)),
    };
    if all_planned && results.len() == ids.len() {
        results.extend(without_id);
    }
    tracing::debug!(ops = ops.len(), results = results.len(), "CouchDB batch");
    Ok(BatchOutcome::Results(results))
}

fn one_op_per_document(ops: &[WireOp]) -> bool {
    let mut seen = std::collections::HashSet::new();
    ops.iter()
        .filter_map(|op| target(op).ok().map(|id| doc::doc_id(&op.collection, id)))
        .all(|d| seen.insert(d))
}

/// The current revision of each op's document, in one `_all_docs` read
/// (a tombstone's body, which holds the op_ids that wrote it, is read on
/// its own: `_all_docs` omits it).
async fn read(
    c: &CouchClient,
    ops: &[WireOp],
    ids: &[&str],
) -> Result<Vec<Option<Current>>, Failure> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let keys: Vec<String> = ops
        .iter()
        .zip(ids)
        .map(|(op, id)| doc::doc_id(&op.collection, id))
        .collect();
    let body = encode(&json!({ "keys": keys }))?;
    let q = "_all_docs?include_docs=true&conflicts=true";
    let r = c.http.call(Method::POST, q, Some(body), None).await?;
    let rows = classify::all_docs(&raw(&r), keys.len())?;
    let mut out = Vec::with_capacity(rows.len());
    for (row, key) in rows.iter().zip(&keys) {
        out.push(match found(row, key) {
            Found::Missing => None,
            Found::Live(cur) => Some(cur.read_as(c.shape)),
            Found::Deleted => c.load(&percent_encode(key)).await?,
            Found::Unreadable(why) => return Err(unreadable(&r, &why)),
        });
    }
    Ok(out)
}

fn unreadable(r: &super::http::Reply, why: &str) -> Failure {
    classify::unlisted("POST _all_docs", &raw(r), &format!(" with a row {why}"))
}

/// One `_all_docs` row, read.
#[derive(Debug, PartialEq)]
enum Found {
    /// The database never had the document.
    Missing,
    /// The winning revision is a tombstone (its body is not in the row).
    Deleted,
    Live(Current),
    /// Not a row for this key, or one without a document.
    Unreadable(String),
}

fn found(row: &Map<String, Value>, key: &str) -> Found {
    if row.get("key").and_then(Value::as_str) != Some(key) {
        return Found::Unreadable(format!("for another key than {key:?}"));
    }
    if row.get("error").and_then(Value::as_str) == Some("not_found") {
        return Found::Missing;
    }
    if row
        .get("value")
        .and_then(|v| v.get("deleted"))
        .and_then(Value::as_bool)
        == Some(true)
    {
        return Found::Deleted;
    }
    match row.get("doc") {
        Some(Value::Object(d)) => match Current::from_body(d.clone()) {
            Some(cur) => Found::Live(cur),
            None => Found::Unreadable(format!("for {key:?} without a revision")),
        },
        _ => Found::Unreadable(format!("for {key:?} without its document")),
    }
}

/// The ops' steps in queue order, ending after the first verdict that is
/// not "applied": nothing after that op is sent.
fn plan<'a>(
    ops: &'a [WireOp],
    ids: &[&'a str],
    current: Vec<Option<Current>>,
    shape: DocShape,
) -> Vec<Planned<'a>> {
    let mut plan = Vec::with_capacity(ids.len());
    for ((op, id), cur) in ops.iter().zip(ids).zip(current) {
        let step = decide(op, id, cur, shape);
        let last = matches!(&step, Step::Verdict(v) if !matches!(v, OpResult::Applied(_)));
        plan.push(Planned { op, id, step });
        if last {
            break;
        }
    }
    plan
}

/// Writes the planned ops that need it in one `_bulk_docs` and reads each
/// result into its op's verdict: `Err` with the reason when CouchDB
/// refused the request as a whole.
async fn write(
    c: &CouchClient,
    plan: Vec<Planned<'_>>,
) -> Result<Result<Vec<OpResult>, String>, Failure> {
    let docs: Vec<Value> = plan
        .iter()
        .filter_map(|p| match &p.step {
            Step::Write(base) => Some(document(c, p.op, p.id, base.as_ref())),
            Step::Verdict(_) => None,
        })
        .collect::<Result<_, _>>()?;
    let mut written = if docs.is_empty() {
        Vec::new()
    } else {
        let n = docs.len();
        let body = encode(&json!({ "docs": docs }))?;
        let r = c
            .http
            .call(Method::POST, "_bulk_docs", Some(body), None)
            .await?;
        match classify::bulk_docs(&raw(&r), n)? {
            Bulk::Results(items) => items,
            Bulk::Refused(reason) => return Ok(Err(reason)),
        }
    }
    .into_iter();
    let mut results = Vec::with_capacity(plan.len());
    for p in plan {
        let verdict = match p.step {
            Step::Verdict(v) => Ok(v),
            Step::Write(_) => match written.next() {
                Some(item) => written_as(c, p.op, p.id, &item).await,
                None => Err(Stop::Failure(short_reply())),
            },
        };
        match verdict {
            Ok(v) => {
                let last = !matches!(v, OpResult::Applied(_));
                results.push(v);
                if last {
                    break;
                }
            }
            Err(stop) if results.is_empty() => {
                return match stop {
                    Stop::Failure(f) => Err(f),
                    Stop::Alone(reason) => Ok(Err(reason)),
                }
            }
            Err(_) => break,
        }
    }
    Ok(Ok(results))
}

fn short_reply() -> Failure {
    Failure::Unlisted {
        status: 201,
        reason: "CouchDB POST _bulk_docs answered fewer results than documents".into(),
    }
}

/// The `_bulk_docs` document of `op`: its body with its `_id`, and the
/// content of new attachments inline.
fn document(
    c: &CouchClient,
    op: &WireOp,
    id: &str,
    base: Option<&Current>,
) -> Result<Value, Failure> {
    let mut body = doc::body_for(op, base, c.shape);
    if let Value::Object(m) = &mut body {
        m.insert("_id".into(), Value::String(doc::doc_id(&op.collection, id)));
    }
    c.inline(&mut body)?;
    Ok(body)
}

/// One `_bulk_docs` result as the op's verdict.
async fn written_as(
    c: &CouchClient,
    op: &WireOp,
    id: &str,
    item: &Map<String, Value>,
) -> Result<OpResult, Stop> {
    let key = doc::doc_id(&op.collection, id);
    if item.get("id").and_then(Value::as_str) != Some(key.as_str()) {
        return Err(Stop::Failure(Failure::Unlisted {
            status: 201,
            reason: format!("CouchDB POST _bulk_docs answered for another document than {key:?}"),
        }));
    }
    match (
        item.get("rev").and_then(Value::as_str),
        item.get("error").and_then(Value::as_str),
    ) {
        (Some(rev), None) => match doc::version(rev) {
            Some(version) => Ok(OpResult::Applied(doc::record_of(op, id, version))),
            None => Err(Stop::Failure(Failure::Unlisted {
                status: 201,
                reason: format!("CouchDB POST _bulk_docs gave {key:?} the revision {rev:?}"),
            })),
        },
        (_, Some("conflict")) => c
            .after_conflict(op, id, &percent_encode(&key))
            .await
            .map_err(Stop::Failure),
        (_, error) => {
            let reason = item.get("reason").and_then(Value::as_str).unwrap_or("");
            Err(Stop::Alone(format!(
                "CouchDB refused {key:?} in _bulk_docs: {}: {reason}",
                error.unwrap_or("no revision")
            )))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::protocol::OpKind;

    fn row(v: Value) -> Map<String, Value> {
        v.as_object().cloned().unwrap_or_default()
    }

    #[test]
    fn all_docs_rows() {
        let live = row(json!({"key": "t:a", "id": "t:a", "value": {"rev": "2-x"},
            "doc": {"_id": "t:a", "_rev": "2-x", "_conflicts": ["2-w"], "data": {}}}));
        match found(&live, "t:a") {
            Found::Live(c) => assert_eq!((c.generation, c.conflicts.len()), (2, 1)),
            other => panic!("{other:?}"),
        }
        assert_eq!(
            found(&row(json!({"key": "t:b", "error": "not_found"})), "t:b"),
            Found::Missing
        );
        let gone = row(
            json!({"key": "t:c", "id": "t:c", "value": {"rev": "3-y", "deleted": true}, "doc": null}),
        );
        assert_eq!(found(&gone, "t:c"), Found::Deleted);
        for (r, k) in [
            (live.clone(), "t:z"),
            (row(json!({"key": "t:d", "value": {"rev": "1-a"}})), "t:d"),
            (row(json!({"key": "t:e", "doc": {"_rev": "x"}})), "t:e"),
        ] {
            assert!(matches!(found(&r, k), Found::Unreadable(_)), "{r:?}");
        }
    }

    fn op(kind: OpKind, id: &str, base: Option<u64>) -> WireOp {
        WireOp {
            scope: None,
            home: None,
            op_id: format!("op-{id}"),
            client_id: "c1".into(),
            collection: "t".into(),
            kind,
            id: Some(id.into()),
            local_id: id.into(),
            base_version: base,
            data: Some(Map::new()),
            client_ts: 5,
        }
    }

    #[test]
    fn plans_stop_after_the_first_op_that_fails_on_the_read() {
        let ops = [
            op(OpKind::Create, "a", None),
            op(OpKind::Update, "b", Some(1 << 32)),
            op(OpKind::Update, "c", Some(1 << 32)),
        ];
        let ids = ["a", "b", "c"];
        let at = |rev: &str| Current::from_body(row(json!({"_rev": rev, "data": {}})));
        // b was edited elsewhere (generation 2, the op's base is 1).
        let p = plan(
            &ops,
            &ids,
            vec![None, at("2-x"), at("1-x")],
            DocShape::Native,
        );
        assert_eq!(p.len(), 2);
        assert!(matches!(p[0].step, Step::Write(None)));
        assert!(matches!(&p[1].step, Step::Verdict(OpResult::Conflict(r)) if r.version == 2 << 32));
        // All clean: every op is written.
        let p = plan(
            &ops,
            &ids,
            vec![None, at("1-x"), at("1-y")],
            DocShape::Native,
        );
        assert!(p.len() == 3 && p.iter().all(|p| matches!(p.step, Step::Write(_))));
        // An op found applied already (a re-sent batch) does not end it.
        let mut mine = row(json!({"_rev": "1-q", "data": {}}));
        mine.insert("syncd".into(), json!({"op_id": "op-a", "gen": 1}));
        let p = plan(
            &ops,
            &ids,
            vec![Current::from_body(mine), at("1-x"), at("1-y")],
            DocShape::Native,
        );
        assert!(matches!(&p[0].step, Step::Verdict(OpResult::Applied(_))));
        assert_eq!(p.len(), 3);
        assert!(one_op_per_document(&ops));
        assert!(!one_op_per_document(&[ops[0].clone(), ops[0].clone()]));
    }
}
