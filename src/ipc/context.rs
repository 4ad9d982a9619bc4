//! What every request handler shares: the store, the writer, the event
//! feed, the running config, the sync worker's control, the peer policy
//! and the counters. Its own file so that the socket server (which makes
//! one) and the handlers in `cmd/` (which use it) do not import each other.

use std::sync::Arc;

use tokio::sync::{broadcast, watch};

use crate::config::Config;
use crate::domain::Event;
use crate::ipc::peer::PeerPolicy;
use crate::store::writer::WriterHandle;
use crate::store::Store;
use crate::sync::SyncControl;

/// Everything a request handler needs.
pub struct Ctx {
    pub store: Store,
    pub writer: WriterHandle,
    pub events: broadcast::Sender<Arc<Event>>,
    pub config: watch::Receiver<Arc<Config>>,
    pub sync: Arc<SyncControl>,
    /// Who may connect ([`crate::ipc::peer`]), fixed at bind time.
    pub peers: PeerPolicy,
    pub metrics: Arc<crate::metrics::Metrics>,
    pub runtime: Arc<crate::metrics::RuntimeInfo>,
    /// Attachment files and transfers (reads fetch on demand through it).
    pub transfers: Arc<crate::sync::attachments::Transfers>,
}
