//! `status`: one view of the daemon's health, put together from the store
//! (queue, dead letters, conflicts, last sync), the sync worker (state,
//! next retry, last error) and the daemon's runtime facts (config file,
//! reload error, pid, uptime), with hints from [`crate::ipc::health`].
//! Public so other front ends can show the same.

use std::collections::BTreeMap;

use crate::ipc::context::Ctx;
use crate::ipc::health::{hints, HintInputs};
use crate::ipc::wire::{ApiError, IndexView, StatusView};
use crate::store::index::IndexState;
use crate::store::tables::{i64_be, u64_be, META_LAST_SYNC, META_RESOLVED};
use crate::store::{OpenCheck, Store, StoreError};

use super::blocking::read;

/// Most queued ops `pending_by_collection` looks at: a bounded scan from
/// the head of the queue, so status stays fast with a million ops queued
/// (beyond it the counts are lower bounds, and say so).
pub const PENDING_SCAN_LIMIT: usize = 1_000;

/// What status reads from the store, in one read on the blocking pool.
#[derive(Default)]
struct StoreFacts {
    queue_depth: u64,
    oldest_pending: Option<i64>,
    dead_letters: u64,
    conflicts: u64,
    conflicts_resolved: u64,
    last_sync_at: Option<i64>,
    pending: (BTreeMap<String, u64>, bool),
    store_bytes: u64,
}

fn store_facts(store: &Store) -> Result<StoreFacts, StoreError> {
    let queue_depth = store.queue_depth()?;
    Ok(StoreFacts {
        queue_depth,
        oldest_pending: store.oldest_pending()?,
        dead_letters: store.dead_letter_count()?,
        conflicts: store.conflict_count()?,
        conflicts_resolved: u64_be(store.meta(META_RESOLVED)?.as_deref()).unwrap_or(0),
        last_sync_at: i64_be(store.meta(META_LAST_SYNC)?.as_deref()),
        pending: pending_by_collection(store, queue_depth)?,
        store_bytes: store.store_bytes(),
    })
}

/// Builds the status view from the store, the worker and the runtime.
pub async fn status(ctx: &Ctx) -> Result<StatusView, ApiError> {
    // A damaged store may fail the reads: status still answers, and says why.
    let f = match read(ctx, store_facts).await {
        Ok(f) => f,
        Err(_) if ctx.store.damage().is_some() => StoreFacts::default(),
        Err(e) => return Err(e),
    };
    let s = ctx.sync.status();
    let cfg = ctx.config.borrow().clone();
    let now = crate::domain::clock::now_ms();
    let rt = &ctx.runtime;
    let mut v = StatusView {
        state: s.state.as_str().to_owned(),
        queue_depth: f.queue_depth,
        oldest_pending_age_ms: f.oldest_pending.map(|t| (now - t).max(0)),
        dead_letters: f.dead_letters,
        conflicts: f.conflicts,
        conflicts_resolved: f.conflicts_resolved,
        last_sync_at: f.last_sync_at,
        // The worker publishes its retry time ahead; once it has passed the
        // attempt is due or under way (the worker may simply not have run
        // yet), so it is never shown as a time already past.
        next_retry_at: s.next_retry_at.filter(|t| *t > now),
        last_error: s.last_error,
        hint: None,
        hints: Vec::new(),
        config_path: rt.config_path.as_ref().map(|p| p.display().to_string()),
        config_reload_error: rt.reload_error(),
        socket: rt.socket.display().to_string(),
        data_dir: rt.data_dir.display().to_string(),
        pid: rt.pid,
        uptime_s: rt.uptime_s(),
        pending_by_collection: f.pending.0,
        pending_by_collection_complete: f.pending.1,
        backend: cfg.backend_url().map(crate::config::redact_url),
        client_id: ctx.store.client_id().to_owned(),
        store_bytes: f.store_bytes,
        version: env!("CARGO_PKG_VERSION").to_owned(),
        remote_changes: s.remote_changes,
        last_pull_at: s.last_pull_at,
        store_damaged: ctx.store.damage(),
        store_open_check: Some(open_check_text(ctx.store.open_check())),
        sync_directions: cfg
            .directions()
            .iter()
            .map(|(c, d)| (c.to_owned(), d.as_str().to_owned()))
            .collect(),
        scopes: match ctx.store.damage() {
            None => super::scopes::rows(ctx).await?,
            Some(_) => Vec::new(),
        },
        user: None,
        encryption: ctx.store.encryption_text(),
        indexes: match ctx.store.damage() {
            None => index_rows(ctx).await?,
            Some(_) => Vec::new(),
        },
    };
    v.user = session_user(ctx).await;
    v.hints = hints(
        &v,
        &HintInputs {
            token_file: cfg.backend.token_file.as_deref(),
            basic_auth: cfg
                .backend
                .username
                .as_deref()
                .zip(cfg.backend.password_file.as_deref()),
            config_path: v.config_path.as_deref(),
            now,
        },
    );
    v.hint = v.hints.first().cloned();
    Ok(v)
}

/// Queued ops per collection over the first [`PENDING_SCAN_LIMIT`] ops;
/// `true` when that was the whole queue.
fn pending_by_collection(
    store: &Store,
    depth: u64,
) -> Result<(BTreeMap<String, u64>, bool), StoreError> {
    let mut counts = BTreeMap::new();
    if depth == 0 {
        return Ok((counts, true));
    }
    let head = store.queue_head(PENDING_SCAN_LIMIT)?;
    let complete = head.len() as u64 >= depth;
    for (_, op) in head {
        *counts.entry(op.collection).or_insert(0) += 1;
    }
    Ok((counts, complete))
}

/// Every index row as `status` shows it.
async fn index_rows(ctx: &Ctx) -> Result<Vec<IndexView>, ApiError> {
    let rows = read(ctx, |s| s.index_rows()).await?;
    Ok(rows
        .into_iter()
        .map(|(collection, index, meta)| {
            let (state, indexed) = match meta.state {
                IndexState::Ready => ("ready", None),
                IndexState::Building { done, .. } => ("building", Some(done)),
                IndexState::Dropping => ("dropping", None),
            };
            IndexView {
                collection,
                index,
                state: state.to_owned(),
                indexed,
            }
        })
        .collect())
}

/// `skipped`, or `full: REASON (N ms)`.
fn open_check_text(c: &OpenCheck) -> String {
    match c {
        OpenCheck::Trusted => "skipped (closed cleanly, untouched since)".into(),
        OpenCheck::Full { reason, took } => format!("full: {reason} ({} ms)", took.as_millis()),
    }
}

/// The user of the last session, while the backend has scopes (a store
/// that cannot be read shows none: the status reports its trouble
/// elsewhere).
async fn session_user(ctx: &Ctx) -> Option<String> {
    if *ctx.sync.backend_scopes().borrow() != Some(true) {
        return None;
    }
    super::blocking::read(ctx, |s| s.session_grants())
        .await
        .ok()
        .flatten()
        .map(|g| g.sub)
}
