//! Who may do what to which scope (protocol revision 3): the pure access
//! rules of a users-mode backend.
//!
//! Why a file of its own: the redb and the PostgreSQL store must refuse
//! exactly the same operations with exactly the same replies, and nothing
//! may leak a record the caller cannot read. Both stores call
//! [`target_scope`] before [`plan`](super::ops::plan) and [`replay`] for a
//! remembered op_id, and [`present`] on every record they hand back.
//!
//! Let W = `{user:<sub>} ∪ claims.scopes` and R = `W ∪ claims.read_scopes`:
//! - create of a new id: target = `op.scope` or `user:<sub>`; a bad name is a
//!   422, a target outside W a 403 `scope_denied`;
//! - create of an existing id: readable → the store's 409 (via `plan`);
//!   unreadable → 403 `id_taken`, revealing nothing else;
//! - update/delete: unknown or unreadable → the same 404; readable but not
//!   writable → 403 `scope_denied`; a move (update with another `scope`)
//!   needs the new scope valid (422) and in W (403). Version checks come
//!   after, in `plan`.
//! - a replayed op_id answers its record only if that record's scope is
//!   readable, else 403 `scope_denied`.
//!
//! A single-tenant server ([`Caller::Single`]) allows everything, as
//! revision 2 did: it creates records in [`SINGLE_SCOPE`] and never moves
//! one (an update or delete keeps the record's scope, which matters only on
//! a store that held users, started single-tenant with the explicit
//! override).

use crate::backend::protocol::{DenyCode, ServerRecord};
use crate::domain::scope::{check_scope, SINGLE_SCOPE};

use super::auth::Principal;
use super::ops::{not_found_reason, Action, StoredRecord, ValidOp};

/// Who sends a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// A single-tenant server (`--token` or no auth): revision 2.
    Single,
    /// A verified users-mode token.
    User(Principal),
}

/// Why an operation is refused before it changes anything.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// 404 with this reason (the same text as for an unknown id).
    NotFound(String),
    /// 403 with this reason and code.
    Denied { code: DenyCode, reason: String },
    /// 422 with this reason (a bad scope name).
    Invalid(String),
}

impl Caller {
    pub fn is_user(&self) -> bool {
        matches!(self, Caller::User(_))
    }

    pub fn can_read(&self, scope: &str) -> bool {
        match self {
            Caller::Single => true,
            Caller::User(p) => p.read.contains(scope),
        }
    }

    pub fn can_write(&self, scope: &str) -> bool {
        match self {
            Caller::Single => true,
            Caller::User(p) => p.write.contains(scope),
        }
    }

    /// Where a create without a scope goes.
    pub fn home(&self) -> &str {
        match self {
            Caller::Single => SINGLE_SCOPE,
            Caller::User(p) => &p.private,
        }
    }
}

fn write_denied(scope: &str) -> Refusal {
    Refusal::Denied {
        code: DenyCode::ScopeDenied,
        reason: format!("no write access to scope '{scope}'"),
    }
}

/// The scope `op` writes into, or why it is refused. `current` is the
/// stored record with the op's `(collection, target id)`, if any.
pub fn target_scope(
    caller: &Caller,
    op: &ValidOp,
    current: Option<&StoredRecord>,
) -> Result<String, Refusal> {
    let Caller::User(_) = caller else {
        // Revision 2 has no moves: a record stays where it is (a store that
        // held users keeps its scopes), a new one goes to the default scope.
        return Ok(current.map_or_else(|| SINGLE_SCOPE.to_owned(), |c| c.scope.clone()));
    };
    match (&op.action, current) {
        (Action::Create { .. }, None) => {
            let target = op.scope.as_deref().unwrap_or(caller.home());
            writable_target(caller, target)
        }
        (Action::Create { id, .. }, Some(c)) if !caller.can_read(&c.scope) => {
            Err(Refusal::Denied {
                code: DenyCode::IdTaken,
                reason: format!(
                    "id '{}' is taken in collection '{}'",
                    id.as_deref().unwrap_or_default(),
                    op.collection
                ),
            })
        }
        // Readable: the 409 of `plan`.
        (Action::Create { .. }, Some(c)) => Ok(c.scope.clone()),
        (_, None) => Err(not_found(op)),
        (_, Some(c)) if !caller.can_read(&c.scope) => Err(not_found(op)),
        (_, Some(c)) if !caller.can_write(&c.scope) => Err(write_denied(&c.scope)),
        (Action::Update { .. }, Some(c)) => match op.scope.as_deref() {
            Some(to) if to != c.scope => writable_target(caller, to),
            _ => Ok(c.scope.clone()),
        },
        (Action::Delete { .. }, Some(c)) => Ok(c.scope.clone()),
    }
}

fn not_found(op: &ValidOp) -> Refusal {
    Refusal::NotFound(not_found_reason(
        op.action.target_id().unwrap_or_default(),
        &op.collection,
    ))
}

fn writable_target(caller: &Caller, scope: &str) -> Result<String, Refusal> {
    check_scope(scope).map_err(|e| Refusal::Invalid(format!("invalid scope {scope:?}: {e}")))?;
    if caller.can_write(scope) {
        Ok(scope.to_owned())
    } else {
        Err(write_denied(scope))
    }
}

/// Whether the remembered reply of `op_id` (a record in `scope`) may be
/// given to `caller`.
pub fn replay(caller: &Caller, op_id: &str, scope: &str) -> Result<(), Refusal> {
    if caller.can_read(scope) {
        Ok(())
    } else {
        Err(Refusal::Denied {
            code: DenyCode::ScopeDenied,
            reason: format!("op_id '{op_id}' was applied to a record this token cannot read"),
        })
    }
}

/// `record` as `caller` sees it: with its scope in users mode, without
/// one (revision 2 bytes) for a single-tenant server.
pub fn present(caller: &Caller, scope: &str, mut record: ServerRecord) -> ServerRecord {
    record.scope = caller.is_user().then(|| scope.to_owned());
    record
}

/// The record of a 409 on `current` (the stored record the op met), as
/// `caller` sees it: in the scope it stands in. Never the scope a move
/// asked for: a conflict moves nothing, and a device that takes the
/// server's side stores the scope it is told.
pub fn conflict(
    caller: &Caller,
    current: Option<&StoredRecord>,
    record: ServerRecord,
) -> ServerRecord {
    let scope = current.map_or(SINGLE_SCOPE, |c| c.scope.as_str());
    present(caller, scope, record)
}

/// The refusal of a pull of `scope` the caller cannot read.
pub fn read_denied(scope: &str) -> String {
    format!("no read access to scope '{scope}'")
}

#[cfg(test)]
#[path = "access_tests.rs"]
mod tests;
