//! Scope jobs (protocol revision 3): pages of per-scope feeds, a new
//! session (revocation), and the app's subscribe/unsubscribe choices.
//!
//! Kept apart from [`super::verdict`] because these are about which
//! records this device may hold at all, not about one op's fate: they
//! purge records a scope no longer lets it read, and never touch a record
//! of another scope or one with pending ops (those stay until they settle).

use std::collections::BTreeSet;

use crate::domain::scope_state::{Grants, ScopeState};
use crate::domain::{Event, OpKind, Origin, QueuedOp, StoreError};
use crate::store::encoding::{from_store, to_store};
use crate::store::tables::*;

use super::txn::{take_server, JobResult, Txn};
use super::verdict::{apply_remote, dead_letter};
use super::{ScopePageIn, WriteOutcome};

/// Applies each scope's page and moves that scope's cursor, all in this
/// transaction. Records first, then `gone` entries: a record that moved
/// between two scopes this device reads then ends in its new scope
/// whatever order the pages came in (a gone entry removes a record only
/// while it is still in that scope at a version no newer than the move).
///
/// A page of a scope the app unsubscribed from is dropped: it was fetched
/// before the unsubscribe and would bring back what it purged.
pub(super) fn apply_pages(x: &mut Txn<'_>, pages: &[ScopePageIn]) -> Result<JobResult, StoreError> {
    let client_ids = x.client_ids;
    let mut kept = Vec::with_capacity(pages.len());
    for p in pages {
        if x.scope_choices.get(p.scope.as_str())?.map(|v| v.value()) != Some(0) {
            kept.push(p);
        }
    }
    let pages = kept;
    for p in &pages {
        for ch in &p.records {
            let mut ch = ch.clone();
            ch.record.scope.get_or_insert_with(|| p.scope.clone());
            back_in(x, &p.scope, &ch.collection, &ch.record.id)?;
            apply_remote(x, &ch, client_ids)?;
        }
    }
    for p in &pages {
        for (c, id, version) in &p.gone {
            gone(x, &p.scope, c, id, *version)?;
        }
        move_cursor(x, p)?;
    }
    x.meta.insert(
        META_LAST_SYNC,
        crate::domain::clock::now_ms().to_be_bytes().as_slice(),
    )?;
    Ok(Ok(WriteOutcome::Done))
}

/// The scope's stored state.
fn state(x: &Txn<'_>, scope: &str) -> Result<Option<ScopeState>, StoreError> {
    match x.scope_state.get(scope)? {
        Some(v) => Ok(Some(from_store(v.value())?)),
        None => Ok(None),
    }
}

/// Stores the page's cursor and progress; the first page with nothing
/// more marks the first sync done (with a `scope_synced` event).
fn move_cursor(x: &mut Txn<'_>, p: &ScopePageIn) -> Result<(), StoreError> {
    let mut st = state(x, &p.scope)?.unwrap_or_default();
    st.cursor = Some(p.cursor.clone());
    st.remaining = p.remaining;
    if !p.more && !st.first_sync_done {
        st.first_sync_done = true;
        x.ev.push(Event::ScopeSynced {
            scope: p.scope.clone(),
        });
    }
    x.scope_state
        .insert(p.scope.as_str(), to_store(&st)?.as_slice())?;
    Ok(())
}

/// A record left `scope` at `version`: removed here if it is still in that
/// scope and no newer. One with pending ops stays, marked: it is purged if
/// its ops settle without reaching the server ([`purge_if_gone`]).
fn gone(x: &mut Txn<'_>, scope: &str, c: &str, id: &str, version: u64) -> Result<(), StoreError> {
    if !x.directions.of(c).applies_pulled() {
        // `push` or `local`: this device's copy is not the server's to
        // take away (the same rule as a pulled change, `apply_remote`).
        return Ok(());
    }
    let Some(lid) = x.server_ids.get((c, id))?.map(|v| v.value().to_owned()) else {
        return Ok(());
    };
    let Some(mut rec) = x.record(c, &lid)? else {
        return Ok(());
    };
    let here = rec.scope.as_deref() == Some(scope);
    if !here || rec.version.is_none_or(|v| v > version) {
        return Ok(());
    }
    if rec.pending == 0 {
        return remove_record(x, c, &lid);
    }
    // A newer version pulled meanwhile (deferred behind the pending ops,
    // from this page or an earlier one) says where the record is now.
    if super::verdict::deferred(x, c, &lid)?.is_some_and(|d| d.id == id && d.version > version) {
        return Ok(());
    }
    rec.gone_from = Some(scope.to_owned());
    x.put_record(c, &lid, &rec)
}

/// A record entry of `scope`'s feed for a record marked gone from that
/// scope comes after the gone entry in the feed (pages of a scope arrive
/// in order; within a page records are applied before gone entries, which
/// mark it again if they are newer): the record is back in the scope, so
/// the mark goes.
fn back_in(x: &mut Txn<'_>, scope: &str, c: &str, id: &str) -> Result<(), StoreError> {
    let Some(lid) = x.server_ids.get((c, id))?.map(|v| v.value().to_owned()) else {
        return Ok(());
    };
    let Some(mut rec) = x.record(c, &lid)? else {
        return Ok(());
    };
    if rec.gone_from.as_deref() == Some(scope) {
        rec.gone_from = None;
        x.put_record(c, &lid, &rec)?;
    }
    Ok(())
}

/// A record whose last pending op just settled without reaching the
/// server: purged if the server had said it left its scope meanwhile.
/// Unless the record's newer copy came in a scope this device pulls
/// (it moved there) and was deferred while the op was pending: that copy
/// is the server's state, and that scope's cursor is already past it, so
/// it becomes the record (as an ack would take it). A deferred copy from
/// the scope it left is older than the move, and is dropped with it.
pub(super) fn purge_if_gone(x: &mut Txn<'_>, c: &str, lid: &str) -> Result<(), StoreError> {
    let Some(rec) = x.record(c, lid)? else {
        return Ok(());
    };
    if rec.pending > 0 || rec.gone_from.is_none() {
        return Ok(());
    }
    let deferred: Option<crate::domain::ServerRecordStored> = match x.deferred.get((c, lid))? {
        Some(v) => Some(x.vault.decode(DEFERRED, &(c, lid), v.value())?),
        None => None,
    };
    if let Some(d) = deferred {
        // A deferred copy still in the scope the record left is older than
        // the move: not the server's state.
        let pulled = match d.scope.as_deref() {
            Some(s) if Some(s) != rec.gone_from.as_deref() => pulls(x, s)?,
            _ => false,
        };
        if pulled && !d.deleted {
            x.deferred.remove((c, lid))?;
            let r = d.to_record();
            if let Some(old) = rec.server_id.as_deref().filter(|old| *old != r.id) {
                x.server_ids.remove((c, old))?;
            }
            return take_server(x, c, lid, Some(rec), &r, Origin::Remote);
        }
    }
    remove_record(x, c, lid)
}

/// Whether this device pulls `scope` now: it has the scope's pull state
/// (dropped when the scope is unsubscribed, no longer pulled or no longer
/// readable) and the app did not unsubscribe from it.
fn pulls(x: &Txn<'_>, scope: &str) -> Result<bool, StoreError> {
    Ok(x.scope_state.get(scope)?.is_some()
        && x.scope_choices.get(scope)?.map(|v| v.value()) != Some(0))
}

/// Removes a record without pending ops from this device, with its server
/// id mapping and any deferred server record, and tells watchers.
fn remove_record(x: &mut Txn<'_>, c: &str, lid: &str) -> Result<(), StoreError> {
    let Some(rec) = x.record(c, lid)? else {
        return Ok(());
    };
    x.remove_record(c, lid)?;
    if let Some(sid) = &rec.server_id {
        x.server_ids.remove((c, sid.as_str()))?;
    }
    x.deferred.remove((c, lid))?;
    if !rec.deleted {
        x.ev.push(Event::Changed {
            collection: c.to_owned(),
            id: lid.to_owned(),
            op_id: None,
            origin: Origin::Remote,
            data: None,
        });
    }
    Ok(())
}

/// Purges every record of a scope `gone_from` says this device may not
/// hold, except those with pending ops and those of a collection that
/// does not apply pulled changes (`push`, `local`: the device's own copy,
/// which the server never feeds back). A scan of the records: it runs on
/// a revocation or an unsubscribe, not on every pull.
fn purge(x: &mut Txn<'_>, gone_from: impl Fn(&str) -> bool) -> Result<usize, StoreError> {
    let mut doomed = Vec::new();
    let mut skipped = false;
    for item in x.records_from(("", ""))? {
        let (k, v) = item?;
        let rec: crate::domain::StoredRecord = x.vault.decode(RECORDS, &k.value(), v.value())?;
        let (c, id) = k.value();
        if rec.scope.as_deref().is_some_and(&gone_from) && x.directions.of(c).applies_pulled() {
            match rec.pending {
                0 => doomed.push((c.to_owned(), id.to_owned())),
                _ => skipped = true,
            }
        }
    }
    for (c, id) in &doomed {
        remove_record(x, c, id)?;
    }
    if skipped {
        // Purged by a later session apply once their ops settle.
        x.meta.insert(META_LEFTOVER, b"1".as_slice())?;
    }
    Ok(doomed.len())
}

/// Drops the stored state of the scopes `drop` names; returns their names.
fn drop_states(
    x: &mut Txn<'_>,
    drop: impl Fn(&str) -> bool,
) -> Result<BTreeSet<String>, StoreError> {
    let mut names = BTreeSet::new();
    for item in x.scope_state.range::<&str>(..)? {
        let (k, _) = item?;
        if drop(k.value()) {
            names.insert(k.value().to_owned());
        }
    }
    for n in &names {
        x.scope_state.remove(n.as_str())?;
    }
    Ok(names)
}

/// The session the worker just fetched, and the scopes it will pull. A
/// scope no longer pulled (`[sync] scopes` no longer names it) is treated
/// as unsubscribed: it loses its cursor (a later subscribe back-fills it)
/// and its records without pending ops. When the grants changed (revocation, another token): records of
/// scopes no longer readable are purged, except those with pending ops;
/// pending ops into a scope no longer writable become dead letters, and
/// their records are purged too when the scope is not readable either.
pub(super) fn apply_session(
    x: &mut Txn<'_>,
    grants: &Grants,
    pulled: &BTreeSet<String>,
) -> Result<JobResult, StoreError> {
    let dropped = drop_states(x, |s| !pulled.contains(s))?;
    let list = serde_json::to_vec(pulled).map_err(|e| StoreError::Encode {
        what: "pulled scopes",
        detail: e.to_string(),
    })?;
    x.meta.insert(META_PULLED, list.as_slice())?;
    // Records left behind by an earlier purge (they had pending ops) or
    // written here into a scope this device does not pull go once settled.
    let leftover = x.meta.remove(META_LEFTOVER)?.is_some();
    if !dropped.is_empty() || leftover {
        let purged = purge(x, |s| !pulled.contains(s))?;
        if purged > 0 {
            tracing::info!(scopes = ?dropped, purged, "records of scopes not pulled are removed from this device");
        }
    }
    let old: Option<Grants> = x
        .meta
        .get(META_SESSION)?
        .and_then(|v| serde_json::from_slice(v.value()).ok());
    if old.as_ref() == Some(grants) {
        return Ok(Ok(WriteOutcome::Done));
    }
    if let Some(before) = old.as_ref().filter(|g| g.sub != grants.sub) {
        switch_user(x, &before.sub, grants)?;
    }
    let text = serde_json::to_vec(grants).map_err(|e| StoreError::Encode {
        what: "session grants",
        detail: e.to_string(),
    })?;
    x.meta.insert(META_SESSION, text.as_slice())?;
    let refused = refuse_unwritable(x, grants, old.as_ref())?;
    let purged = purge(x, |s| !grants.readable(s))?;
    if refused + purged > 0 {
        tracing::info!(
            dead_lettered = refused,
            purged,
            "session changed: ops into scopes no longer writable dead-lettered, records of scopes no longer readable purged"
        );
    }
    Ok(Ok(WriteOutcome::Done))
}

/// The token now belongs to another user (`sub`): nothing the previous
/// one left on this device may reach the server with the new token, or
/// be seen by the new user's apps.
///
/// - Every queued op (and every op parked in a conflict) is the previous
///   user's: it becomes a dead letter, marked as that user's, which
///   `retry` refuses under another user's session.
/// - Every dead letter not marked yet is marked as the previous user's.
/// - Records whose ops were dead-lettered here (they hold the previous
///   user's unsent writes), and records without a scope (written here and
///   never acked, or held from before the server had scopes), are purged,
///   with every scope's cursor: the new user's back-fill brings back
///   whatever the new grants let it read. Records in scopes the new grants
///   cannot read go by the purge that follows (see [`apply_session`]).
///   Collections that do not apply pulled changes (`push`, `local`) are
///   the device's, not a user's: they are never purged (their queued ops
///   are dead-lettered all the same).
///
/// Ops the app wrote after the token changed but before the new session
/// came are counted as the previous user's: the daemon learns who the
/// token belongs to only from the session (and pushes nothing before it).
fn switch_user(x: &mut Txn<'_>, previous: &str, grants: &Grants) -> Result<(), StoreError> {
    let reason = format!(
        "queued by user '{previous}'; the token now belongs to '{}'",
        grants.sub
    );
    let mut touched: BTreeSet<(String, String)> = BTreeSet::new();
    let mut seqs = Vec::new();
    for item in x.queue.range::<u64>(..)? {
        let (k, v) = item?;
        let op: QueuedOp = x.vault.decode(QUEUE, &k.value(), v.value())?;
        touched.insert((op.collection.clone(), op.local_id.clone()));
        seqs.push(k.value());
    }
    for seq in seqs {
        // Taken already when an earlier op of its record was: a no-op.
        let _ = dead_letter(x, seq, &reason)?;
    }
    touched.extend(dead_letter_parked(x, &reason)?);
    let mut unmarked = Vec::new();
    for item in x.dead.range::<u64>(..)? {
        let (k, v) = item?;
        let d: crate::domain::DeadLetter = x.vault.decode(DEAD, &k.value(), v.value())?;
        if x.dead_sub.get(d.op.op_id.as_str())?.is_none() {
            unmarked.push(d.op.op_id);
        }
    }
    for op_id in &unmarked {
        x.dead_sub.insert(op_id.as_str(), previous)?;
    }
    let mut doomed = Vec::new();
    for item in x.records_from(("", ""))? {
        let (k, v) = item?;
        let rec: crate::domain::StoredRecord = x.vault.decode(RECORDS, &k.value(), v.value())?;
        let (c, id) = k.value();
        let key = (c.to_owned(), id.to_owned());
        if rec.pending == 0
            && x.directions.of(c).applies_pulled()
            && (rec.scope.is_none() || touched.contains(&key))
        {
            doomed.push(key);
        }
    }
    for (c, id) in &doomed {
        remove_record(x, c, id)?;
    }
    let cursors = drop_states(x, |_| true)?;
    tracing::warn!(
        previous,
        now = %grants.sub,
        dead_lettered = unmarked.len(),
        purged = doomed.len(),
        scopes = cursors.len(),
        "the token belongs to another user: the previous user's queued ops are dead letters, its unsent records are purged and every scope is back-filled afresh"
    );
    Ok(())
}

/// Turns every conflict parked for a decision into dead letters (their
/// ops, with the record's local document as the data a decision would
/// have sent); returns the records.
fn dead_letter_parked(x: &mut Txn<'_>, reason: &str) -> Result<Vec<(String, String)>, StoreError> {
    let mut parked = Vec::new();
    for item in x.conflicts.range::<(&str, &str)>(..)? {
        let (k, v) = item?;
        let (c, id) = k.value();
        let p: crate::store::ParkedConflict = x.vault.decode(CONFLICTS, &(c, id), v.value())?;
        parked.push((c.to_owned(), id.to_owned(), p));
    }
    let mut out = Vec::new();
    for (c, lid, p) in parked {
        x.conflicts.remove((c.as_str(), lid.as_str()))?;
        let mut rec = x.record(&c, &lid)?;
        let local = rec.as_ref().filter(|r| !r.deleted).map(|r| r.data.clone());
        let n = p.ops.len() as u32;
        for mut op in p.ops {
            x.ops.remove(op.op_id.as_str())?;
            if op.kind != OpKind::Delete {
                op.data = op.data.or_else(|| local.clone());
            }
            x.ev.push(Event::DeadLettered {
                op_id: op.op_id.clone(),
                collection: c.clone(),
                id: lid.clone(),
                error: reason.to_owned(),
            });
            let seq = x.counters.dead_tail;
            x.counters.dead_tail += 1;
            let entry = crate::domain::DeadLetter {
                op,
                error: reason.to_owned(),
                dead_at: crate::domain::clock::now_ms(),
            };
            x.insert_dead(seq, &entry)?;
        }
        if let Some(r) = rec.as_mut() {
            r.pending = super::txn::fewer(&c, &lid, r.pending, n)?;
            x.put_record(&c, &lid, r)?;
        }
        x.ops_left = true;
        out.push((c, lid));
    }
    Ok(out)
}

/// The scopes a queued op writes: its record's and the one it moves to
/// (a create without a scope goes to the user's private scope).
fn written_scopes(op: &QueuedOp, record_scope: Option<&str>, sub: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    if op.kind != OpKind::Create {
        out.extend(record_scope.map(str::to_owned));
    }
    match (op.kind, &op.scope) {
        (OpKind::Delete, _) => {}
        (_, Some(s)) => out.push(s.clone()),
        (OpKind::Create, None) => out.push(format!("user:{sub}")),
        (OpKind::Update, None) => {}
    }
    out
}

/// Dead-letters the queued ops that write a scope `grants` does not let
/// this device write; returns how many ops were found.
fn refuse_unwritable(
    x: &mut Txn<'_>,
    grants: &Grants,
    old: Option<&Grants>,
) -> Result<usize, StoreError> {
    let mut refused = Vec::new();
    for item in x.queue.range::<u64>(..)? {
        let (k, v) = item?;
        let op: QueuedOp = x.vault.decode(QUEUE, &k.value(), v.value())?;
        refused.push((k.value(), op));
    }
    let mut n = 0;
    for (seq, op) in refused {
        let rec_scope = x
            .record(&op.collection, &op.local_id)?
            .and_then(|r| r.scope);
        let Some(scope) = written_scopes(&op, rec_scope.as_deref(), &grants.sub)
            .into_iter()
            .find(|s| !grants.writable(s))
        else {
            continue;
        };
        if x.op(seq)?.is_none() {
            continue; // taken with an earlier op of its record
        }
        let was = old.is_some_and(|g| g.writable(&scope));
        let reason = match was {
            true => format!("no write access to scope '{scope}' (revoked)"),
            false => format!("no write access to scope '{scope}'"),
        };
        // A dead letter is never refused on its own: only storage fails.
        let _ = dead_letter(x, seq, &reason)?;
        n += 1;
    }
    Ok(n)
}

/// The app's choice for `scope`. Unsubscribing purges its records without
/// pending ops (those with pending ops stay until they settle) and forgets
/// its cursor, so that a later subscribe back-fills it from the start.
pub(super) fn set_choice(
    x: &mut Txn<'_>,
    scope: &str,
    subscribe: bool,
) -> Result<JobResult, StoreError> {
    x.scope_choices.insert(scope, u8::from(subscribe))?;
    if !subscribe {
        x.scope_state.remove(scope)?;
        purge(x, |s| s == scope)?;
    }
    Ok(Ok(WriteOutcome::Done))
}

/// An ack stored `scope` on a record: when this device does not pull that
/// scope (it wrote there, or the record moved there), the record is left
/// for the next session apply to purge, as partial sync has it.
pub(super) fn note_unpulled(x: &mut Txn<'_>, scope: &str) -> Result<(), StoreError> {
    let pulled: Option<BTreeSet<String>> = x
        .meta
        .get(META_PULLED)?
        .and_then(|v| serde_json::from_slice(v.value()).ok());
    if pulled.is_some_and(|p| !p.contains(scope)) {
        x.meta.insert(META_LEFTOVER, b"1".as_slice())?;
    }
    Ok(())
}
