//! `subscribe`, `unsubscribe` and `scopes` (protocol revision 3): the
//! app's say in which scopes this device syncs, and the view of how each
//! stands. `status` shows the same rows ([`rows`]).
//!
//! One file because the three read and change the same thing: the
//! subscribed set that `domain::scope_state` computes from the session,
//! `[sync] scopes` and the stored choices.

use std::collections::BTreeMap;

use tokio::sync::broadcast;

use crate::domain::scope_state::{known, standing, Grants, ScopeState, Standing};
use crate::ipc::context::Ctx;
use crate::ipc::wire::{ApiError, ErrorCode, Event, Response, ScopeView};
use crate::store::writer::WriteCmd;
use crate::store::{Store, StoreError};

use super::blocking::read;
use super::check::check_scope_name;

/// What the rows are made of, read in one go.
struct Facts {
    grants: Option<Grants>,
    choices: BTreeMap<String, bool>,
    states: BTreeMap<String, ScopeState>,
    records: BTreeMap<String, u64>,
}

/// Reads the facts. Records are counted (a scan) only when scopes are in
/// play at all: a store synced with a backend without scopes pays nothing.
fn facts(store: &Store, wanted: bool) -> Result<Facts, StoreError> {
    let grants = store.session_grants()?;
    let choices = store.scope_choices()?;
    let states = store.scope_states()?;
    let any = wanted || grants.is_some() || !choices.is_empty() || !states.is_empty();
    let records = match any {
        true => store.scope_record_counts()?,
        false => BTreeMap::new(),
    };
    Ok(Facts {
        grants,
        choices,
        states,
        records,
    })
}

/// Every scope known, as `scopes` and `status` show it.
pub async fn rows(ctx: &Ctx) -> Result<Vec<ScopeView>, ApiError> {
    let wanted = ctx.config.borrow().sync.scopes.clone();
    let listed = wanted.is_some();
    let f = read(ctx, move |s| facts(s, listed)).await?;
    let names = known(
        f.grants.as_ref(),
        wanted.as_deref(),
        &f.choices,
        f.states.keys().chain(f.records.keys()).cloned(),
    );
    Ok(names
        .into_iter()
        .map(|name| {
            let state = f.states.get(&name);
            let st = standing(
                &name,
                f.grants.as_ref(),
                wanted.as_deref(),
                &f.choices,
                state,
            );
            ScopeView {
                access: f
                    .grants
                    .as_ref()
                    .and_then(|g| g.access(&name))
                    .map(str::to_owned),
                subscribed: st != Standing::Unsubscribed,
                state: st.as_str().to_owned(),
                remaining: state
                    .filter(|_| st == Standing::Initial)
                    .and_then(|s| s.remaining),
                records: f.records.get(&name).copied().unwrap_or(0),
                first_sync_done: state.is_some_and(|s| s.first_sync_done),
                name,
            }
        })
        .collect())
}

/// `scopes`.
pub async fn list(ctx: &Ctx) -> Result<Response, ApiError> {
    rows(ctx).await.map(Response::Scopes)
}

/// Stores the choice and restarts the pull with the new set.
async fn choose(ctx: &Ctx, scope: &str, subscribe: bool) -> Result<(), ApiError> {
    check_scope_name(scope)?;
    ctx.writer
        .submit(WriteCmd::SetScopeChoice {
            scope: scope.to_owned(),
            subscribe,
        })
        .await?;
    ctx.sync.scopes_changed.notify_one();
    Ok(())
}

/// `unsubscribe`.
pub async fn unsubscribe(ctx: &Ctx, scope: String) -> Result<Response, ApiError> {
    choose(ctx, &scope, false).await?;
    Ok(Response::Ok {})
}

/// `subscribe`; with `wait`, answers once the scope's first sync is done
/// (at once when it already was). A wait that could never end is refused
/// (the choice is stored all the same): `no_scopes` without a backend or
/// with one that did not announce `scopes` at its last probe,
/// `permission_denied` when the last session gives no read access to the
/// scope, also when a session applied during the wait takes it away.
pub async fn subscribe(ctx: &Ctx, scope: String, wait: bool) -> Result<Response, ApiError> {
    // Subscribe to events (and to session applies and probes) before
    // anything can finish the first sync or take the scope away.
    let mut rx = ctx.events.subscribe();
    let mut sessions = ctx.writer.sessions();
    sessions.borrow_and_update();
    let mut backend = ctx.sync.backend_scopes();
    choose(ctx, &scope, true).await?;
    if !wait {
        return Ok(Response::Ok {});
    }
    loop {
        if let Some(answer) = look(ctx, &scope).await? {
            return answer;
        }
        // Each wake below came after the look: nothing slips between.
        loop {
            tokio::select! {
                ev = rx.recv() => match ev {
                    Ok(e) if matches!(&*e, Event::ScopeSynced { scope: s } if *s == scope) => {
                        return Ok(Response::Ok {})
                    }
                    // Other events say nothing of this scope.
                    Ok(_) => continue,
                    // A lag may have dropped its `scope_synced`: look.
                    Err(broadcast::error::RecvError::Lagged(_)) => break,
                    Err(broadcast::error::RecvError::Closed) => return Err(shutting_down()),
                },
                moved = sessions.changed() => match moved {
                    Ok(()) => break,
                    Err(_) => return Err(shutting_down()),
                },
                moved = backend.changed() => match moved {
                    Ok(()) => break,
                    Err(_) => return Err(shutting_down()),
                },
            }
        }
    }
}

fn shutting_down() -> ApiError {
    ApiError::new(ErrorCode::ShuttingDown, "the daemon is shutting down")
}

/// What a `subscribe --wait` can answer now: done, or refused because the
/// wait could never end; `None`: wait on.
async fn look(ctx: &Ctx, scope: &str) -> Result<Option<Result<Response, ApiError>>, ApiError> {
    let name = scope.to_owned();
    let (done, grants) = read(ctx, move |s| {
        let done = s
            .scope_states()?
            .get(&name)
            .is_some_and(|st| st.first_sync_done);
        Ok((done, s.session_grants()?))
    })
    .await?;
    if done {
        return Ok(Some(Ok(Response::Ok {})));
    }
    if ctx.config.borrow().backend_url().is_none() {
        return Ok(Some(Err(ApiError::new(
            ErrorCode::NoScopes,
            format!("subscribed, but no backend is configured: scope '{scope}' cannot be synced"),
        ))));
    }
    if *ctx.sync.backend_scopes().borrow() == Some(false) {
        return Ok(Some(Err(ApiError::new(
            ErrorCode::NoScopes,
            format!("subscribed, but the backend has no users and scopes (it does not announce the `scopes` feature, protocol revision 3): scope '{scope}' is never synced"),
        ))));
    }
    if grants.is_some_and(|g| !g.readable(scope)) {
        return Ok(Some(Err(ApiError::new(
            ErrorCode::PermissionDenied,
            format!("subscribed, but the session gives no read access to scope '{scope}': its first sync cannot happen"),
        ))));
    }
    Ok(None)
}
