//! Protocol revision 3 (users and scopes) on CouchDB: one database per
//! scope, as CouchDB deployments already split data. A user's private
//! scope `user:<name>` is CouchDB's per-user database (`couch_peruser`:
//! `userdb-<hex of the name>`); a shared scope is the database
//! `[backend.scopes]` names for it. Who the user is comes from
//! `GET /_session`, and what they may reach is whatever CouchDB's users and
//! `_security` allow: the session lists the shared scopes whose database
//! answers them, a pull reads each scope's `_changes`, and an op goes to
//! its record's database. `docs/backends.md` "Scopes" has the mapping.

use std::collections::BTreeMap;
use std::sync::Mutex;

use hyper::Method;
use serde_json::Value;

use super::{classify, raw, CouchClient};
use crate::backend::client::{BatchOutcome, Failure, OpResult};
use crate::backend::protocol::{
    Access, ChangesPage, DenyCode, ErrorBody, OpKind, PullReply, PullRequest, ScopeGrant,
    ScopePage, ScopeResult, ScopedChange, Session, WireOp,
};
use crate::domain::scope::{private_scope, PRIVATE_PREFIX};

/// Which database holds which scope, and who the server says we are.
#[derive(Debug)]
pub struct Scopes {
    /// Shared scope → database, from `[backend.scopes]`.
    shared: BTreeMap<String, String>,
    /// The CouchDB user name, from the last `GET /_session`.
    user: Mutex<Option<String>>,
}

/// CouchDB's per-user database of `name` (`couch_peruser`): `userdb-`
/// and the lowercase hex of the name's UTF-8 bytes.
pub fn userdb(name: &str) -> String {
    let hex: String = name.bytes().map(|b| format!("{b:02x}")).collect();
    format!("userdb-{hex}")
}

impl Scopes {
    /// `shared`: `[backend.scopes]`; the user is not known until the first
    /// `GET /_session`.
    pub fn new(shared: BTreeMap<String, String>) -> Scopes {
        Scopes {
            shared,
            user: Mutex::new(None),
        }
    }

    /// The database of `scope`; `None` for a shared scope with none
    /// configured.
    pub fn database(&self, scope: &str) -> Option<String> {
        match scope.strip_prefix(PRIVATE_PREFIX) {
            Some(name) => Some(userdb(name)),
            None => self.shared.get(scope).cloned(),
        }
    }

    /// The user `GET /_session` named (private scope, scope-less creates).
    pub fn set_user(&self, name: String) {
        if let Ok(mut u) = self.user.lock() {
            *u = Some(name);
        }
    }

    /// `user:<name>` of the user the server last named.
    fn private(&self) -> Option<String> {
        let name = self.user.lock().ok()?.clone()?;
        private_scope(&name).ok()
    }

    /// The scope and database `op` goes to: a create's scope (absent: the
    /// private one, as on the reference backend, even over a local record
    /// that was in another scope), else the scope the record is in. Moving a record to
    /// another scope (another database) is refused: CouchDB cannot move a
    /// document between databases in one step.
    fn of_op(&self, op: &WireOp) -> Result<(String, String), OpResult> {
        let scope = match (op.kind, op.scope.as_deref(), op.home.as_deref()) {
            (OpKind::Create, s, _) => s.map(str::to_owned),
            (OpKind::Update, Some(to), Some(from)) if to != from => {
                return Err(refused(
                    422,
                    format!("moving a record from scope '{from}' to '{to}' is not supported on CouchDB (one database per scope): delete it from '{from}', then create it in '{to}'"),
                ))
            }
            (_, _, Some(home)) => Some(home.to_owned()),
            (_, to, None) => to.map(str::to_owned),
        };
        let Some(scope) = scope.or_else(|| self.private()) else {
            return Err(refused(
                422,
                "no scope for this op: the CouchDB user is not known yet".into(),
            ));
        };
        match self.database(&scope) {
            Some(db) => Ok((scope, db)),
            None => Err(refused(
                403,
                format!("no write access to scope '{scope}': [backend.scopes] names no CouchDB database for it"),
            )),
        }
    }
}

fn refused(status: u16, reason: String) -> OpResult {
    OpResult::Rejected { status, reason }
}

fn denied(scope: &str, why: &str) -> ScopeResult {
    ScopeResult::Denied(ErrorBody {
        error: format!("no read access to scope '{scope}': {why}"),
        record: None,
        code: Some(DenyCode::ScopeDenied.as_str().to_owned()),
    })
}

/// `r` with its records in `scope`.
fn in_scope(mut r: OpResult, scope: &str) -> OpResult {
    if let OpResult::Applied(rec) | OpResult::Conflict(rec) = &mut r {
        rec.scope = Some(scope.to_owned());
    }
    r
}

/// A page of one database's feed as a page of `scope`'s.
fn scope_page(page: ChangesPage, pending: Option<u64>, scope: &str) -> ScopePage {
    ScopePage {
        changes: page
            .changes
            .into_iter()
            .map(|mut c| {
                c.record.scope = Some(scope.to_owned());
                ScopedChange::Record {
                    collection: c.collection,
                    record: c.record,
                }
            })
            .collect(),
        cursor: page.cursor,
        more: page.more,
        remaining: pending,
    }
}

impl CouchClient {
    fn scopes_or_err(&self) -> Result<&Scopes, Failure> {
        self.scopes.as_deref().ok_or(Failure::Unlisted {
            status: 404,
            reason: "this CouchDB backend has no scopes (no [backend.scopes])".into(),
        })
    }

    /// This client, rooted at one database of the server.
    pub(super) fn at(&self, db: &str) -> CouchClient {
        CouchClient {
            http: self.http.under(db),
            shown: self.shown.clone(),
            shape: self.shape,
            scopes: None,
            blobs: self.blobs.clone(),
        }
    }

    /// `GET /_session`: the user the credentials belong to. Anonymous (no
    /// credentials, or CouchDB's admin party) has no scopes.
    pub(super) async fn whoami(&self) -> Result<String, Failure> {
        let r = self.http.call(Method::GET, "_session", None, None).await?;
        let reply = classify::session(&raw(&r))?;
        match reply.get("userCtx").and_then(|u| u.get("name")).and_then(Value::as_str) {
            Some(name) => Ok(name.to_owned()),
            None => Err(Failure::Auth {
                reason: "CouchDB knows these credentials as no user (anonymous): scopes need a user, set [backend] username + password_file or token_file".into(),
            }),
        }
    }

    /// The session in protocol terms: the private scope, and each shared
    /// scope whose database answers this user.
    pub async fn session(&self) -> Result<Session, Failure> {
        let s = self.scopes_or_err()?;
        let name = self.whoami().await?;
        s.set_user(name.clone());
        let private = private_scope(&name).map_err(|e| Failure::Auth {
            reason: format!("CouchDB user {name:?} cannot have a private scope: {e}"),
        })?;
        let mut scopes = vec![ScopeGrant {
            name: private,
            access: Access::Write,
        }];
        for (scope, db) in &s.shared {
            if self.readable(db).await? {
                scopes.push(ScopeGrant {
                    name: scope.clone(),
                    access: Access::Write,
                });
            }
        }
        Ok(Session {
            sub: name,
            scopes,
            expires_at: None,
        })
    }

    /// Whether `GET /{db}` answers this user (a member, or a database
    /// without members); `false` for a refusal or a missing database. A
    /// `401` may also mean the credentials just stopped working (a token
    /// that expired, a changed password): only if `GET /_session` still
    /// names the user is it this database's refusal, else it is the
    /// credentials' (an auth error, never a revocation).
    async fn readable(&self, db: &str) -> Result<bool, Failure> {
        let r = self
            .http
            .under(db)
            .call(Method::GET, "", None, None)
            .await?;
        match r.status {
            401 => self.whoami().await.map(|_| false),
            403 | 404 => Ok(false),
            _ => classify::database(&raw(&r)).map(|()| true),
        }
    }

    /// One page of each scope's database; with `wait`, when none has
    /// anything new, a long poll of all of them until the first has.
    pub async fn pull(&self, req: &PullRequest) -> Result<PullReply, Failure> {
        let s = self.scopes_or_err()?;
        let limit = req.limit.unwrap_or(100).clamp(1, 1000);
        let mut out = BTreeMap::new();
        for (scope, since) in &req.scopes {
            out.insert(
                scope.clone(),
                self.scope_result(s, scope, since.as_deref(), limit).await?,
            );
        }
        let quiet = req.scopes.values().all(Option::is_some)
            && out
                .values()
                .all(|r| matches!(r, ScopeResult::Page(p) if p.changes.is_empty() && !p.more));
        if let (true, Some(wait)) = (quiet, req.wait) {
            if let Some((scope, page)) = self.wait_any(s, req, limit, wait).await {
                out.insert(scope, ScopeResult::Page(page));
            }
        }
        Ok(PullReply { scopes: out })
    }

    /// `scope`'s page, or its refusal.
    async fn scope_result(
        &self,
        s: &Scopes,
        scope: &str,
        since: Option<&str>,
        limit: u32,
    ) -> Result<ScopeResult, Failure> {
        let Some(db) = s.database(scope) else {
            return Ok(denied(
                scope,
                "[backend.scopes] names no CouchDB database for it",
            ));
        };
        match self.at(&db).feed(since, limit, None).await {
            Ok((page, pending)) => Ok(ScopeResult::Page(scope_page(page, pending, scope))),
            Err(Failure::Auth { reason }) => {
                Ok(denied(scope, &format!("CouchDB database {db:?}: {reason}")))
            }
            Err(Failure::Unlisted { status: 404, .. }) => Ok(denied(
                scope,
                &format!("CouchDB database {db:?} does not exist"),
            )),
            Err(f) => Err(f),
        }
    }

    /// Long polls every scope's database at once; the first page that
    /// moved its cursor, the others abandoned (their cursors do not move).
    /// `None` when every wait ended empty or failed (the next pull says
    /// why).
    async fn wait_any(
        &self,
        s: &Scopes,
        req: &PullRequest,
        limit: u32,
        wait: u32,
    ) -> Option<(String, ScopePage)> {
        let mut polls = tokio::task::JoinSet::new();
        for (scope, since) in &req.scopes {
            let Some(db) = s.database(scope) else {
                continue;
            };
            let (c, scope, since) = (self.at(&db), scope.clone(), since.clone());
            polls.spawn(async move {
                let r = c.feed(since.as_deref(), limit, Some(wait)).await;
                (scope, since, r)
            });
        }
        while let Some(done) = polls.join_next().await {
            if let Ok((scope, since, Ok((page, pending)))) = done {
                // A change that is no record of ours (an app's document
                // without a collection prefix) still moves the cursor:
                // answered too, so this scope's next wait starts after it.
                let moved = since.as_deref() != Some(page.cursor.as_str());
                if !page.changes.is_empty() || page.more || moved {
                    polls.abort_all();
                    return Some((scope.clone(), scope_page(page, pending, &scope)));
                }
            }
        }
        None
    }

    /// `op` in its scope's database. A refusal there from credentials the
    /// server still takes is this user's lack of access to that scope: the
    /// op is refused (a dead letter), not the credentials.
    pub(super) async fn apply_scoped(&self, s: &Scopes, op: &WireOp) -> Result<OpResult, Failure> {
        let (scope, db) = match s.of_op(op) {
            Ok(x) => x,
            Err(verdict) => return Ok(verdict),
        };
        match self.at(&db).apply_in_db(op).await {
            Ok(r) => Ok(in_scope(r, &scope)),
            Err(Failure::Auth { reason }) => self.no_access(&scope, &db, reason).await,
            Err(f) => Err(f),
        }
    }

    /// The ops at the head of `ops` that go to the head's database, as one
    /// batch there.
    pub(super) async fn apply_batch_scoped(
        &self,
        s: &Scopes,
        ops: &[WireOp],
    ) -> Result<BatchOutcome, Failure> {
        let Some(head) = ops.first() else {
            return Ok(BatchOutcome::Results(Vec::new()));
        };
        let (scope, db) = match s.of_op(head) {
            Ok(x) => x,
            Err(verdict) => return Ok(BatchOutcome::Results(vec![verdict])),
        };
        let n = ops
            .iter()
            .take_while(|op| s.of_op(op).is_ok_and(|(_, d)| d == db))
            .count();
        match super::batch::apply(&self.at(&db), &ops[..n]).await {
            Ok(BatchOutcome::Results(rs)) => Ok(BatchOutcome::Results(
                rs.into_iter().map(|r| in_scope(r, &scope)).collect(),
            )),
            Ok(other) => Ok(other),
            Err(Failure::Auth { reason }) => {
                let verdict = self.no_access(&scope, &db, reason).await?;
                Ok(BatchOutcome::Results(vec![verdict]))
            }
            Err(f) => Err(f),
        }
    }

    /// A `401`/`403` from `db`: if the server still knows the credentials
    /// (`GET /_session` names the user), the op is refused for want of
    /// access to `scope`; else the credentials are.
    async fn no_access(&self, scope: &str, db: &str, reason: String) -> Result<OpResult, Failure> {
        self.whoami().await?;
        Ok(refused(
            403,
            format!("no write access to scope '{scope}' (CouchDB database {db:?}): {reason}"),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(kind: OpKind, scope: Option<&str>, home: Option<&str>) -> WireOp {
        WireOp {
            scope: scope.map(str::to_owned),
            home: home.map(str::to_owned),
            op_id: "o".into(),
            client_id: "c".into(),
            collection: "t".into(),
            kind,
            id: Some("r".into()),
            local_id: "r".into(),
            base_version: None,
            data: None,
            client_ts: 1,
        }
    }

    #[test]
    fn scopes_map_to_databases() {
        assert_eq!(userdb("alice"), "userdb-616c696365");
        assert_eq!(userdb("é"), "userdb-c3a9");
        let s = Scopes::new(BTreeMap::from([("team-1".to_owned(), "team1".to_owned())]));
        assert_eq!(
            s.database("user:alice").as_deref(),
            Some("userdb-616c696365")
        );
        assert_eq!(s.database("team-1").as_deref(), Some("team1"));
        assert_eq!(s.database("team-2"), None);
        // Before the session names the user, a create has nowhere to go.
        assert!(matches!(
            s.of_op(&op(OpKind::Create, None, None)),
            Err(OpResult::Rejected { status: 422, .. })
        ));
        s.set_user("alice".into());
        let at = |o: WireOp| s.of_op(&o).map(|(scope, db)| format!("{scope} {db}"));
        assert_eq!(
            at(op(OpKind::Create, None, None)),
            Ok("user:alice userdb-616c696365".into())
        );
        assert_eq!(
            at(op(OpKind::Create, Some("team-1"), None)),
            Ok("team-1 team1".into())
        );
        // A re-create without a scope goes to the private scope, wherever
        // the record was before (as on the reference backend).
        assert_eq!(
            at(op(OpKind::Create, None, Some("team-1"))),
            Ok("user:alice userdb-616c696365".into())
        );
        assert_eq!(
            at(op(OpKind::Update, None, Some("team-1"))),
            Ok("team-1 team1".into())
        );
        assert_eq!(
            at(op(OpKind::Delete, None, Some("team-1"))),
            Ok("team-1 team1".into())
        );
        assert_eq!(
            at(op(OpKind::Update, Some("team-1"), Some("team-1"))),
            Ok("team-1 team1".into())
        );
        assert!(matches!(
            at(op(OpKind::Update, Some("user:alice"), Some("team-1"))),
            Err(OpResult::Rejected { status: 422, .. })
        ));
        assert!(matches!(
            at(op(OpKind::Create, Some("team-2"), None)),
            Err(OpResult::Rejected { status: 403, .. })
        ));
    }
}
