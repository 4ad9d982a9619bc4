//! The sync worker task (placeholder until the sync engine lands).

use std::sync::Arc;

use tokio::sync::{watch, Notify};

use crate::config::Config;
use crate::store::writer::WriterHandle;
use crate::store::Store;
use crate::sync::SyncControl;

pub struct WorkerDeps {
    pub store: Store,
    pub writer: WriterHandle,
    pub config: watch::Receiver<Arc<Config>>,
    pub control: Arc<SyncControl>,
    pub queue_changed: Arc<Notify>,
    pub shutdown: watch::Receiver<bool>,
}

pub fn spawn(deps: WorkerDeps) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut sd = deps.shutdown;
        let _ = sd.changed().await;
        drop(deps.writer);
    })
}
