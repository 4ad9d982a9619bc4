//! `query`: one page of a local query (a Mango selector, a sort, a limit
//! and a cursor) answered by [`crate::store::query`]. Its own file for the
//! checks every query request shares with the live query: names, the
//! selector (`bad_query` says what is wrong and where) and the limit.

use crate::domain::query::Query;
use crate::ipc::context::Ctx;
use crate::ipc::wire::{ApiError, Doc, ErrorCode, QueryPlanView, Response, SortField};
use crate::store::query::Plan;

use super::blocking::read;
use super::check::{check_names, reply_budget};
use super::MAX_LIST;

/// Records per page when the app names no limit.
pub const DEFAULT_LIMIT: u32 = 100;

/// A query request's parts, checked.
pub fn checked(
    collection: &str,
    selector: &Doc,
    sort: &[SortField],
    cursor: Option<&str>,
) -> Result<Query, ApiError> {
    check_names(collection, None)?;
    let sort: Vec<(String, bool)> = sort.iter().map(|s| (s.field.clone(), s.desc)).collect();
    Query::new(&selector.0, &sort, cursor)
        .map_err(|e| ApiError::new(ErrorCode::BadQuery, e.to_string()))
}

pub async fn apply(
    ctx: &Ctx,
    collection: String,
    selector: Doc,
    sort: Vec<SortField>,
    limit: Option<u32>,
    cursor: Option<String>,
) -> Result<Response, ApiError> {
    let q = checked(&collection, &selector, &sort, cursor.as_deref())?;
    let limit = limit.unwrap_or(DEFAULT_LIMIT).clamp(1, MAX_LIST) as usize;
    let budget = reply_budget(ctx);
    let page = read(ctx, move |s| s.query(&collection, &q, limit, budget)).await?;
    Ok(Response::QueryResult {
        records: page.records,
        next: page.next,
        plan: plan_view(page.plan),
    })
}

pub fn plan_view(p: Plan) -> QueryPlanView {
    QueryPlanView {
        index: p.index,
        ordered: p.ordered,
        bounds: p.bounds,
        examined: p.examined,
    }
}
