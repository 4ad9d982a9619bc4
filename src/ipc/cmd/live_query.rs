//! `watch_query`: a live query. The app gets the whole result first, then
//! `added` / `changed` / `removed` as commits change what matches, in
//! commit order, never missing one.
//!
//! Exactness comes from the writer's publish gate
//! ([`crate::store::Store::snapshot`]): the snapshot is read under it, and
//! the events already in the connection's channel at that moment (whose
//! commits the snapshot includes) are dropped, so every later event is a
//! commit the result has not seen. A query without a limit then applies
//! each change to its set of matching ids; one with a limit (a "first
//! page") re-reads its page, under the gate again, whenever a change may
//! touch it, and reports the difference. A connection that falls behind
//! the channel gets a fresh result marked `resync`.

use std::collections::{BTreeSet, VecDeque};
use std::sync::Arc;

use tokio::sync::broadcast::{self, error::RecvError, error::TryRecvError};
use tokio::task::JoinHandle;

use crate::domain::query::Query;
use crate::domain::{Doc, Event, StoreError};
use crate::ipc::context::Ctx;
use crate::ipc::wire::{ApiError, ErrorCode, QueryEvent, RecordView, SortField};
use crate::store::query::{query_in, Page};
use crate::store::Store;

use super::check::reply_budget;
use super::MAX_LIST;

type Rx = broadcast::Receiver<Arc<Event>>;
/// A snapshot read in flight: the channel comes back with the page.
type Reading = JoinHandle<(Rx, Result<Page, StoreError>)>;

/// One connection's live query.
pub struct LiveQuery {
    /// `None` while a re-read holds it.
    rx: Option<Rx>,
    reading: Option<Reading>,
    store: Store,
    collection: String,
    query: Arc<Query>,
    /// `Some`: a first page of this many, re-read on change.
    limit: Option<usize>,
    budget: usize,
    /// Without a limit: the ids that match. With one: the page, in order.
    members: BTreeSet<String>,
    page: Vec<RecordView>,
    /// The connection fell behind: the read in flight is a fresh result.
    resync: bool,
    out: VecDeque<Event>,
}

/// Checks the request, reads the first result and starts the feed.
pub async fn start(
    ctx: &Ctx,
    collection: String,
    selector: Doc,
    sort: Vec<SortField>,
    limit: Option<u32>,
) -> Result<LiveQuery, ApiError> {
    let query = Arc::new(super::query::checked(&collection, &selector, &sort, None)?);
    let mut lq = LiveQuery {
        rx: Some(ctx.events.subscribe()),
        reading: None,
        store: ctx.store.clone(),
        collection,
        query,
        limit: limit.map(|l| l.clamp(1, MAX_LIST) as usize),
        budget: reply_budget(ctx),
        members: BTreeSet::new(),
        page: Vec::new(),
        resync: false,
        out: VecDeque::new(),
    };
    lq.snapshot();
    let page = lq.finish_read().await?;
    if lq.limit.is_none() && page.next.is_some() {
        return Err(ApiError::new(
            ErrorCode::TooLarge,
            format!(
                "the live query matches more records than one reply carries (at most {MAX_LIST}, or half of daemon.max_frame_bytes); give it a limit"
            ),
        ));
    }
    lq.reset(page, false);
    Ok(lq)
}

impl LiveQuery {
    /// The next event; `None` once the daemon is stopping. Cancel-safe: a
    /// re-read in flight is kept and awaited again.
    pub async fn next(&mut self) -> Option<Event> {
        loop {
            if let Some(e) = self.out.pop_front() {
                return Some(e);
            }
            if self.reading.is_some() {
                match self.finish_read().await {
                    Ok(page) if std::mem::take(&mut self.resync) => {
                        if self.limit.is_none() && page.next.is_some() {
                            // Grown past one reply since it started: a
                            // partial result would hide matches. It ends.
                            self.rx = None;
                            return Some(Event::ResyncNeeded { missed: 0 });
                        }
                        self.reset(page, true)
                    }
                    Ok(page) => self.diff(page),
                    Err(e) => {
                        // The live query ends; the app asks again.
                        tracing::warn!(error = %e, "live query re-read failed; it ends with resync_needed");
                        self.rx = None;
                        return Some(Event::ResyncNeeded { missed: 0 });
                    }
                }
                continue;
            }
            let rx = self.rx.as_mut()?;
            match rx.recv().await {
                Ok(ev) => self.on_event(&ev),
                Err(RecvError::Lagged(_)) => {
                    self.resync = true;
                    self.snapshot();
                }
                Err(RecvError::Closed) => return None,
            }
        }
    }

    /// Starts a snapshot read on the blocking pool, dropping the events
    /// already received (the snapshot includes their commits).
    fn snapshot(&mut self) {
        let Some(mut rx) = self.rx.take() else {
            return;
        };
        let (store, c, q) = (
            self.store.clone(),
            self.collection.clone(),
            self.query.clone(),
        );
        let (limit, budget) = (self.limit.unwrap_or(MAX_LIST as usize), self.budget);
        self.reading =
            Some(tokio::task::spawn_blocking(move || {
                let read = store.snapshot(|| {
                    while let Ok(_) | Err(TryRecvError::Lagged(_)) = rx.try_recv() {}
                });
                let page = read
                    .and_then(|(_db, txn)| query_in(&txn, store.vault(), &c, &q, limit, budget));
                (rx, page)
            }));
    }

    /// Waits for the read in flight and takes the channel back.
    async fn finish_read(&mut self) -> Result<Page, ApiError> {
        let Some(h) = self.reading.as_mut() else {
            return Err(ApiError::new(ErrorCode::Internal, "no read in flight"));
        };
        let joined = h.await;
        self.reading = None;
        match joined {
            Ok((rx, page)) => {
                self.rx = Some(rx);
                page.map_err(ApiError::from)
            }
            Err(e) => Err(ApiError::new(
                ErrorCode::Internal,
                format!("a live query read failed: {e}"),
            )),
        }
    }

    /// Takes a whole result and tells the app. Only a query with a limit
    /// keeps the page itself (to diff re-reads against); without one the
    /// ids are enough.
    fn reset(&mut self, page: Page, resync: bool) {
        let records: Vec<RecordView> = page.records.into_iter().map(|r| r.parsed()).collect();
        self.members = records.iter().map(|r| r.id.clone()).collect();
        if self.limit.is_some() {
            self.page = records.clone();
        }
        self.out.push_back(Event::Query(QueryEvent::Result {
            collection: self.collection.clone(),
            records,
            resync,
        }));
    }

    /// One committed change.
    fn on_event(&mut self, ev: &Event) {
        let Event::Changed {
            collection,
            id,
            data,
            ..
        } = ev
        else {
            return;
        };
        if *collection != self.collection {
            return;
        }
        let now = data.as_ref().filter(|d| self.query.selector.matches(&d.0));
        if self.limit.is_some() {
            if now.is_some() || self.members.contains(id) {
                self.snapshot();
            }
            return;
        }
        let c = collection.clone();
        let was = self.members.contains(id);
        let q = match (now, was) {
            (Some(d), true) => QueryEvent::Changed {
                collection: c,
                id: id.clone(),
                data: d.clone(),
            },
            (Some(d), false) => {
                self.members.insert(id.clone());
                QueryEvent::Added {
                    collection: c,
                    id: id.clone(),
                    data: d.clone(),
                }
            }
            (None, true) => {
                self.members.remove(id);
                QueryEvent::Removed {
                    collection: c,
                    id: id.clone(),
                }
            }
            (None, false) => return,
        };
        self.out.push_back(Event::Query(q));
    }

    /// A re-read page against the one the app has: what left, what came,
    /// what changed.
    fn diff(&mut self, page: Page) {
        let records: Vec<RecordView> = page.records.into_iter().map(|r| r.parsed()).collect();
        let c = || self.collection.clone();
        let old: std::collections::BTreeMap<&str, &Doc> =
            self.page.iter().map(|r| (r.id.as_str(), &r.data)).collect();
        let new_ids: BTreeSet<&str> = records.iter().map(|r| r.id.as_str()).collect();
        let mut evs = Vec::new();
        for id in old.keys().filter(|id| !new_ids.contains(*id)) {
            evs.push(QueryEvent::Removed {
                collection: c(),
                id: (*id).to_owned(),
            });
        }
        for r in &records {
            match old.get(r.id.as_str()) {
                None => evs.push(QueryEvent::Added {
                    collection: c(),
                    id: r.id.clone(),
                    data: r.data.clone(),
                }),
                Some(d) if **d != r.data => evs.push(QueryEvent::Changed {
                    collection: c(),
                    id: r.id.clone(),
                    data: r.data.clone(),
                }),
                Some(_) => {}
            }
        }
        self.out.extend(evs.into_iter().map(Event::Query));
        self.members = records.iter().map(|r| r.id.clone()).collect();
        self.page = records;
    }
}
