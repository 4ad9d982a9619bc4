//! Change events: what the store emits after a commit and the watch feed
//! carries to apps.
//!
//! Events are domain values (the store makes them); the socket protocol
//! only frames them. Apps read them too, so they live in the client crate
//! (the daemon's `domain` re-exports this module).

use serde::{Deserialize, Serialize};

use super::document::Doc;

/// Which side a manual conflict resolution takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Side {
    Local,
    Server,
}

/// Where a change came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Origin {
    Local,
    Remote,
    Conflict,
}

/// What a conflict resolution did to the local change, for programs (the
/// event's `outcome` text says it for people).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConflictOutcome {
    /// The server's record was kept and the local change discarded.
    TookServer,
    /// Both sides deleted the record: nothing was lost.
    AlreadyDeleted,
    /// A merge found every local change already on the server.
    Merged,
    /// The local (or merged) change was re-sent on top of the server's.
    Resent,
    /// Parked for a manual resolution.
    Parked,
}

impl ConflictOutcome {
    /// Whether the local change was discarded.
    pub fn local_lost(self) -> bool {
        self == ConflictOutcome::TookServer
    }
}

/// One event of the watch feed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Event {
    /// A record was written or deleted (`data` is `None` for a delete).
    Changed {
        collection: String,
        id: String,
        op_id: Option<String>,
        origin: Origin,
        data: Option<Doc>,
    },
    /// The server confirmed an operation.
    Synced {
        op_id: String,
        collection: String,
        id: String,
        server_id: String,
        version: u64,
    },
    /// The server rejected an operation for good.
    DeadLettered {
        op_id: String,
        collection: String,
        id: String,
        error: String,
    },
    /// A conflict was resolved (or parked, for `manual`).
    Conflict {
        collection: String,
        id: String,
        strategy: String,
        /// What happened, for programs.
        result: ConflictOutcome,
        /// What happened, for people (e.g. `re-sent as update (op 01M...)`).
        outcome: String,
    },
    /// This subscriber fell behind and missed events: re-read what it needs.
    ResyncNeeded { missed: u64 },
    /// A subscribed scope's first sync (its back-fill) is done: its
    /// records are all on this device (protocol revision 3).
    ScopeSynced { scope: String },
    /// A live query's news (`watch_query`).
    Query(QueryEvent),
}

/// What a live query reports, in commit order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum QueryEvent {
    /// The whole result, in the query's order: first, and again after
    /// `resync` (the connection fell behind: start over from this).
    Result {
        collection: String,
        records: Vec<crate::view::RecordView>,
        resync: bool,
    },
    /// A record now matches (or, with a `limit`, entered the first page).
    Added {
        collection: String,
        id: String,
        data: Doc,
    },
    /// A record that matches was written and still matches.
    Changed {
        collection: String,
        id: String,
        data: Doc,
    },
    /// A record no longer matches (or left the first page), or is gone.
    Removed { collection: String, id: String },
}

impl Event {
    pub fn collection(&self) -> Option<&str> {
        match self {
            Event::Changed { collection, .. }
            | Event::Synced { collection, .. }
            | Event::DeadLettered { collection, .. }
            | Event::Conflict { collection, .. } => Some(collection),
            Event::Query(q) => Some(q.collection()),
            Event::ResyncNeeded { .. } | Event::ScopeSynced { .. } => None,
        }
    }
}

impl QueryEvent {
    /// The collection the live query reads.
    pub fn collection(&self) -> &str {
        match self {
            QueryEvent::Result { collection, .. }
            | QueryEvent::Added { collection, .. }
            | QueryEvent::Changed { collection, .. }
            | QueryEvent::Removed { collection, .. } => collection,
        }
    }
}
