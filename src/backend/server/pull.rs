//! `POST v1/pull` and `GET v1/session` (protocol revision 3) without HTTP
//! or async: parsing the pull request, and turning the store's per-scope
//! slices into the reply.
//!
//! Why a file of its own: [`handler`](super::handler) holds the revision 2
//! endpoints; the scoped pull has its own request shape, refusal entries
//! and cursor rules, read here in one place. [`http`](super::http) runs
//! these and adds the waiting.

use std::collections::BTreeMap;

use crate::backend::protocol::{
    DenyCode, ErrorBody, PullReply, PullRequest, ScopePage, ScopeResult,
};
use crate::domain::scope::check_scope;

use super::access::{read_denied, Caller};
use super::handler::{JsonReply, DEFAULT_CHANGES_LIMIT, MAX_CHANGES_LIMIT, MAX_WAIT_S, MIN_WAIT_S};
use super::ops::Rejection;
use super::store::ScopeSlice;

/// Most scopes one pull may name.
pub const MAX_PULL_SCOPES: usize = 256;

/// Most bytes of serialized changes in one pull reply (8 MiB; 256 scopes of
/// 1000 large records would otherwise make one reply of gigabytes). Past
/// it, each further scope's page holds only its first change and says
/// `more: true`, so every scope with news still moves on.
pub const MAX_PULL_REPLY_BYTES: usize = 8 * 1024 * 1024;

/// The 400 of `GET v1/changes` on a users-mode server.
pub const CHANGES_IN_USERS_MODE: &str =
    "this server has users and scopes (protocol revision 3): pull with POST v1/pull";

/// One scope of a pull: its name and cursor (`None`: from the beginning).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScopeCursor {
    pub scope: String,
    pub since: Option<u64>,
}

/// A parsed `POST v1/pull` body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PullQuery {
    /// In name order.
    pub scopes: Vec<ScopeCursor>,
    /// Per scope, within 1..=[`MAX_CHANGES_LIMIT`].
    pub limit: usize,
    /// Within [`MIN_WAIT_S`]..=[`MAX_WAIT_S`]; `None`: answer at once.
    pub wait_s: Option<u64>,
}

/// A cursor: decimal digits (too large for u64: the largest, i.e. past
/// the head); an empty string counts as none.
fn cursor(scope: &str, c: Option<String>) -> Result<Option<u64>, Rejection> {
    match c.as_deref() {
        None | Some("") => Ok(None),
        Some(d) if d.bytes().all(|b| b.is_ascii_digit()) => {
            Ok(Some(d.parse::<u64>().unwrap_or(u64::MAX)))
        }
        Some(d) => Err(Rejection::bad_request(format!(
            "invalid cursor {d:?} for scope '{scope}': expected the cursor of an earlier reply"
        ))),
    }
}

/// Parses and checks the body of `POST v1/pull`: malformed → 400; no
/// scope, more than [`MAX_PULL_SCOPES`] or a bad scope name → 422; a
/// cursor that is not a decimal → 400 naming the scope.
pub fn parse_pull(body: &[u8]) -> Result<PullQuery, Rejection> {
    let req: PullRequest = serde_json::from_slice(body)
        .map_err(|e| Rejection::bad_request(format!("invalid pull request: {e}")))?;
    if req.scopes.is_empty() {
        return Err(Rejection::unprocessable(
            "scopes must name at least one scope",
        ));
    }
    if req.scopes.len() > MAX_PULL_SCOPES {
        return Err(Rejection::unprocessable(format!(
            "a pull names at most {MAX_PULL_SCOPES} scopes"
        )));
    }
    let mut scopes = Vec::with_capacity(req.scopes.len());
    for (scope, c) in req.scopes {
        check_scope(&scope)
            .map_err(|e| Rejection::unprocessable(format!("invalid scope {scope:?}: {e}")))?;
        let since = cursor(&scope, c)?;
        scopes.push(ScopeCursor { scope, since });
    }
    let limit = req.limit.map_or(DEFAULT_CHANGES_LIMIT, |l| {
        usize::try_from(l).unwrap_or(MAX_CHANGES_LIMIT)
    });
    Ok(PullQuery {
        scopes,
        limit: limit.clamp(1, MAX_CHANGES_LIMIT),
        wait_s: req.wait.map(|w| u64::from(w).clamp(MIN_WAIT_S, MAX_WAIT_S)),
    })
}

/// The scopes of `q` that `caller` may read, with their cursors (none: 0),
/// as [`BackendStore::pull`](super::store::BackendStore::pull) takes them.
pub fn readable(caller: &Caller, q: &PullQuery) -> Vec<(String, u64)> {
    q.scopes
        .iter()
        .filter(|s| caller.can_read(&s.scope))
        .map(|s| (s.scope.clone(), s.since.unwrap_or(0)))
        .collect()
}

/// The cursor after a page whose last entry is `last`; with nothing new,
/// the input cursor, or the head when none was given or it is past the head.
fn cursor_at(since: Option<u64>, last: Option<u64>, head: u64) -> u64 {
    match (last, since) {
        (Some(seq), _) => seq,
        (None, Some(s)) if s <= head => s,
        (None, _) => head,
    }
}

/// Whether a waiting pull should keep waiting: nothing after any readable
/// scope's cursor, and no cursor past its head (that is answered at once).
/// A pull of no readable scope has nothing to wait for: answered at once.
/// Nor has a pull that reads a scope from its start (no cursor): the device
/// is back-filling it, and an empty scope's first page is its whole first
/// sync, which must not wait for the scope's first change.
pub fn is_idle(caller: &Caller, q: &PullQuery, slices: &[ScopeSlice]) -> bool {
    !slices.is_empty()
        && q.scopes
            .iter()
            .filter(|s| caller.can_read(&s.scope))
            .zip(slices)
            .all(|(s, slice)| slice.entries.is_empty() && s.since == Some(slice.head))
}

/// The reply: a page for each readable scope (`slices`, in the order of
/// [`readable`]) and a refusal for each other one, within
/// [`MAX_PULL_REPLY_BYTES`].
pub fn pull_reply(caller: &Caller, q: &PullQuery, slices: Vec<ScopeSlice>) -> JsonReply {
    pull_reply_within(caller, q, slices, MAX_PULL_REPLY_BYTES)
}

/// [`pull_reply`] with at most `budget` bytes of serialized changes (and
/// always the first change of each scope that has one).
fn pull_reply_within(
    caller: &Caller,
    q: &PullQuery,
    slices: Vec<ScopeSlice>,
    mut budget: usize,
) -> JsonReply {
    let mut slices = slices.into_iter();
    let mut scopes = BTreeMap::new();
    for s in &q.scopes {
        let result = if caller.can_read(&s.scope) {
            let Some(slice) = slices.next() else {
                return JsonReply::error(500, "internal error");
            };
            page(s.since, slice, &mut budget)
        } else {
            ScopeResult::Denied(ErrorBody {
                error: read_denied(&s.scope),
                record: None,
                code: Some(DenyCode::ScopeDenied.as_str().to_owned()),
            })
        };
        scopes.insert(s.scope.clone(), result);
    }
    JsonReply::json(200, &PullReply { scopes })
}

/// A scope's page: its changes while `budget` lasts (the first always),
/// the budget reduced by their size.
fn page(since: Option<u64>, slice: ScopeSlice, budget: &mut usize) -> ScopeResult {
    let mut changes = Vec::with_capacity(slice.entries.len());
    let mut last = None;
    let mut cut = false;
    for (seq, change) in slice.entries {
        let size = json_len(&change);
        if !changes.is_empty() && size > *budget {
            cut = true;
            break;
        }
        *budget = budget.saturating_sub(size);
        last = Some(seq);
        changes.push(change);
    }
    let cursor = cursor_at(since, last, slice.head);
    ScopeResult::Page(ScopePage {
        cursor: cursor.to_string(),
        more: slice.more || cut,
        remaining: Some(slice.head.saturating_sub(cursor)),
        changes,
    })
}

/// The length of `v` as JSON, without building it.
fn json_len(v: &impl serde::Serialize) -> usize {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut count = Count(0);
    // Serializing a protocol value into a counter cannot fail; if it
    // did, counting it as empty only loosens the cap.
    let _ = serde_json::to_writer(&mut count, v);
    count.0
}

#[cfg(test)]
#[path = "pull_tests.rs"]
mod tests;
