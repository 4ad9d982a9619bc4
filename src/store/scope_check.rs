//! Invariants 11 to 13 of [`super::check`]: the per-scope tables, the
//! scopes stored on records, queued ops and dead letters, the
//! `dead_letter_sub` marks and the `gone_from` marks (protocol revision 3).
//! Its own file so that the main check stays about the queue's tables.

use redb::{ReadTransaction, ReadableTable};

use super::check::{open, rec_name, undecodable, Problem, Report};
use super::crypt::Vault;
use super::encoding::from_store;
use super::tables::*;
use crate::domain::scope::check_scope;
use crate::domain::scope_state::ScopeState;
use crate::domain::{DeadLetter, QueuedOp, StoreError, StoredRecord};

/// Pushes a problem when `scope` is set and not a valid name.
fn name(r: &mut Report, table: &'static str, key: &str, scope: Option<&str>) {
    if let Some(s) = scope {
        if let Err(e) = check_scope(s) {
            r.push(Problem::Scope {
                table,
                detail: format!("{key}: scope {s:?} is not a scope name ({e})"),
            });
        }
    }
}

/// Invariants 11 to 13.
pub(super) fn scopes(
    txn: &ReadTransaction,
    vault: &Vault,
    r: &mut Report,
) -> Result<(), StoreError> {
    states(txn, r)?;
    choices(txn, r)?;
    stored_scopes(txn, vault, r)?;
    dead_subs(txn, r)?;
    gone_marks(txn, vault, r)
}

/// Invariant 12: each `dead_letter_sub` entry names a dead letter (by its
/// op_id in `dead_by_op`) and a user. The writer marks only existing dead
/// letters (`switch_user`) and removes the mark with the dead letter
/// (`take_dead`, the one way a dead letter leaves).
fn dead_subs(txn: &ReadTransaction, r: &mut Report) -> Result<(), StoreError> {
    let Some(t) = open(txn, DEAD_SUB)? else {
        return Ok(());
    };
    let by_op = open(txn, DEAD_BY_OP)?;
    for item in t.iter()? {
        let (k, v) = item?;
        let op_id = k.value();
        let known = match &by_op {
            Some(b) => b.get(op_id)?.is_some(),
            None => false,
        };
        if !known {
            r.push(Problem::Scope {
                table: "dead_letter_sub",
                detail: format!(
                    "{op_id}: marked as user {:?}'s, but no dead letter has this op_id",
                    v.value()
                ),
            });
        } else if v.value().is_empty() {
            r.push(Problem::Scope {
                table: "dead_letter_sub",
                detail: format!("{op_id}: marked with an empty user"),
            });
        }
    }
    Ok(())
}

/// Invariant 13: a `gone_from` mark is a scope name, on a record with
/// pending ops: the writer marks a record the server says left its scope
/// only while its ops keep it here, and purges it (or takes the server's
/// newer copy from another scope) once they settle.
fn gone_marks(txn: &ReadTransaction, vault: &Vault, r: &mut Report) -> Result<(), StoreError> {
    let Some(t) = open(txn, RECORDS)? else {
        return Ok(());
    };
    for item in t.iter()? {
        let (k, v) = item?;
        let (c, id) = k.value();
        let Ok(rec) = vault.decode::<_, StoredRecord>(RECORDS, &(c, id), v.value()) else {
            continue;
        };
        let Some(gone) = rec.gone_from.as_deref() else {
            continue;
        };
        name(r, "records", &rec_name(c, id), Some(gone));
        if rec.pending == 0 {
            r.push(Problem::Scope {
                table: "records",
                detail: format!(
                    "{}: marked as gone from {gone} without pending ops",
                    rec_name(c, id)
                ),
            });
        }
    }
    Ok(())
}

fn states(txn: &ReadTransaction, r: &mut Report) -> Result<(), StoreError> {
    let Some(t) = open(txn, SCOPE_STATE)? else {
        return Ok(());
    };
    for item in t.iter()? {
        let (k, v) = item?;
        let scope = k.value();
        name(r, "scope_state", scope, Some(scope));
        match from_store::<ScopeState>(v.value()) {
            Err(e) => r.push(undecodable("scope_state", scope, e)),
            Ok(s) if s.first_sync_done && s.cursor.is_none() => r.push(Problem::Scope {
                table: "scope_state",
                detail: format!("{scope}: first sync done without a cursor"),
            }),
            Ok(_) => {}
        }
    }
    Ok(())
}

fn choices(txn: &ReadTransaction, r: &mut Report) -> Result<(), StoreError> {
    let Some(t) = open(txn, SCOPE_CHOICES)? else {
        return Ok(());
    };
    for item in t.iter()? {
        let (k, v) = item?;
        let scope = k.value();
        name(r, "scope_choices", scope, Some(scope));
        if v.value() > 1 {
            r.push(Problem::Scope {
                table: "scope_choices",
                detail: format!("{scope}: choice {} is neither 0 nor 1", v.value()),
            });
        }
    }
    Ok(())
}

/// Scopes stored on records, queued ops and dead letters are names
/// (their decoding is checked with the rest of invariant 1).
fn stored_scopes(txn: &ReadTransaction, vault: &Vault, r: &mut Report) -> Result<(), StoreError> {
    if let Some(t) = open(txn, RECORDS)? {
        for item in t.iter()? {
            let (k, v) = item?;
            let (c, id) = k.value();
            if let Ok(rec) = vault.decode::<_, StoredRecord>(RECORDS, &(c, id), v.value()) {
                name(r, "records", &rec_name(c, id), rec.scope.as_deref());
            }
        }
    }
    if let Some(t) = open(txn, QUEUE)? {
        for item in t.iter()? {
            let (k, v) = item?;
            if let Ok(op) = vault.decode::<_, QueuedOp>(QUEUE, &k.value(), v.value()) {
                name(r, "queue", &k.value().to_string(), op.scope.as_deref());
            }
        }
    }
    if let Some(t) = open(txn, DEAD)? {
        for item in t.iter()? {
            let (k, v) = item?;
            if let Ok(d) = vault.decode::<_, DeadLetter>(DEAD, &k.value(), v.value()) {
                name(
                    r,
                    "dead_letters",
                    &k.value().to_string(),
                    d.op.scope.as_deref(),
                );
            }
        }
    }
    Ok(())
}
