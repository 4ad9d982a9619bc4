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
/// (at once when it already was). A scope the last session does not let
/// this device read is refused for a wait that would never end.
pub async fn subscribe(ctx: &Ctx, scope: String, wait: bool) -> Result<Response, ApiError> {
    // Subscribe to events before anything can finish the first sync.
    let mut rx = ctx.events.subscribe();
    choose(ctx, &scope, true).await?;
    if !wait {
        return Ok(Response::Ok {});
    }
    let name = scope.clone();
    let (done, grants) = read(ctx, move |s| {
        let done = s
            .scope_states()?
            .get(&name)
            .is_some_and(|st| st.first_sync_done);
        Ok((done, s.session_grants()?))
    })
    .await?;
    if done {
        return Ok(Response::Ok {});
    }
    if grants.is_some_and(|g| !g.readable(&scope)) {
        return Err(ApiError::new(
            ErrorCode::PermissionDenied,
            format!("subscribed, but the session gives no read access to scope '{scope}': its first sync cannot happen"),
        ));
    }
    loop {
        match rx.recv().await {
            Ok(e) if matches!(&*e, Event::ScopeSynced { scope: s } if *s == scope) => {
                return Ok(Response::Ok {})
            }
            Ok(_) => {}
            Err(broadcast::error::RecvError::Lagged(_)) => {
                let name = scope.clone();
                let done = read(ctx, move |s| {
                    Ok(s.scope_states()?
                        .get(&name)
                        .is_some_and(|st| st.first_sync_done))
                })
                .await?;
                if done {
                    return Ok(Response::Ok {});
                }
            }
            Err(broadcast::error::RecvError::Closed) => {
                return Err(ApiError::new(
                    ErrorCode::ShuttingDown,
                    "the daemon is shutting down",
                ))
            }
        }
    }
}
