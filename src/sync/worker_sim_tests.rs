//! The real sync worker, store and writer against a simulated backend: the
//! reference backend's own storage and rules, reached through a
//! [`Transport`] that fails on purpose (unreachable, 503 before applying,
//! and the lost reply: applied, then no answer). No sockets, no HTTP.
//!
//! Per seed it checks what the daemon promises: nothing lost, nothing
//! applied twice, and device and server end with the same documents.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};
use tokio::sync::{broadcast, watch, Notify};

use crate::backend::client::{BatchOutcome, Failure, OpResult};
use crate::backend::protocol::{Change, ChangesPage, Features, WireOp};
use crate::backend::server::ops::parse_op;
use crate::backend::server::redb_store::RedbStore;
use crate::backend::server::store::{BackendStore, Outcome};
use crate::config::Config;
use crate::store::writer::{spawn as spawn_writer, WriteCmd, WriteOutcome, WriterHandle};
use crate::store::Store;
use crate::sync::transport::{BoxFut, Transport};
use crate::sync::worker::{spawn, WorkerDeps};
use crate::sync::SyncControl;

/// The simulated server: real backend rules, scripted misfortune.
struct Sim {
    store: RedbStore,
    rng: Mutex<fastrand::Rng>,
    batch: bool,
    /// What `health` announces (the sim answers every pull at once).
    features: Features,
    /// Probabilities (0-255 out of 256) per request.
    down: u8,
    fail_before: u8,
    lose_reply: u8,
}

impl Sim {
    fn roll(&self, p: u8) -> bool {
        self.rng.lock().map(|mut r| r.u8(..) < p).unwrap_or(false)
    }

    fn reach(&self) -> Result<(), Failure> {
        if self.roll(self.down) {
            return Err(Failure::Unreachable {
                reason: "sim: network down".into(),
            });
        }
        if self.roll(self.fail_before) {
            return Err(Failure::Transient {
                reason: "sim: HTTP 503".into(),
                retry_after_ms: None,
            });
        }
        Ok(())
    }

    fn apply_ops(&self, ops: &[WireOp]) -> Result<Vec<OpResult>, Failure> {
        self.reach()?;
        let mut valid = Vec::new();
        for op in ops {
            let body = serde_json::to_vec(op).map_err(|e| Failure::Transient {
                reason: e.to_string(),
                retry_after_ms: None,
            })?;
            match parse_op(&body) {
                Ok(v) => valid.push(v),
                Err(r) => {
                    return Ok(vec![OpResult::Rejected {
                        status: r.status,
                        reason: r.reason,
                    }]);
                }
            }
        }
        let outcomes = self.store.apply(&valid).map_err(|e| Failure::Transient {
            reason: e.to_string(),
            retry_after_ms: None,
        })?;
        if self.roll(self.lose_reply) {
            return Err(Failure::Transient {
                reason: "sim: connection reset after apply".into(),
                retry_after_ms: None,
            });
        }
        Ok(outcomes
            .into_iter()
            .map(|o| match o {
                Outcome::Applied { record, .. } => OpResult::Applied(record),
                Outcome::Conflict(r) => OpResult::Conflict(r),
                Outcome::NotFound(reason) => OpResult::Rejected {
                    status: 404,
                    reason,
                },
            })
            .collect())
    }
}

impl Transport for Sim {
    fn name(&self) -> &str {
        "sim"
    }

    fn health(&self) -> BoxFut<'_, Result<Features, Failure>> {
        Box::pin(async move {
            if self.roll(self.down) {
                Err(Failure::Unreachable {
                    reason: "sim: network down".into(),
                })
            } else {
                Ok(self.features)
            }
        })
    }

    fn apply<'a>(&'a self, op: &'a WireOp) -> BoxFut<'a, Result<OpResult, Failure>> {
        Box::pin(async move {
            let mut r = self.apply_ops(std::slice::from_ref(op))?;
            r.pop().ok_or_else(|| Failure::Transient {
                reason: "sim: empty".into(),
                retry_after_ms: None,
            })
        })
    }

    fn apply_batch<'a>(&'a self, ops: &'a [WireOp]) -> BoxFut<'a, Result<BatchOutcome, Failure>> {
        Box::pin(async move {
            if !self.batch {
                return Ok(BatchOutcome::Unsupported);
            }
            self.apply_ops(ops).map(BatchOutcome::Results)
        })
    }

    fn changes<'a>(
        &'a self,
        since: Option<&'a str>,
        limit: u32,
        _wait_s: Option<u32>,
    ) -> BoxFut<'a, Result<ChangesPage, Failure>> {
        Box::pin(async move {
            self.reach()?;
            let since: u64 = since.and_then(|s| s.parse().ok()).unwrap_or(0);
            let slice =
                self.store
                    .changes(since, limit as usize)
                    .map_err(|e| Failure::Transient {
                        reason: e.to_string(),
                        retry_after_ms: None,
                    })?;
            let cursor = slice.entries.last().map(|(s, _)| *s).unwrap_or(since);
            Ok(ChangesPage {
                changes: slice
                    .entries
                    .into_iter()
                    .map(|(_, c): (u64, Change)| c)
                    .collect(),
                cursor: cursor.to_string(),
                more: slice.more,
            })
        })
    }
}

async fn write(w: &WriterHandle, cmd: WriteCmd) -> String {
    match w.submit(cmd).await.unwrap() {
        WriteOutcome::Written { op_id, .. } => op_id,
        o => panic!("{o:?}"),
    }
}

fn obj(v: Value) -> serde_json::Map<String, Value> {
    match v {
        Value::Object(m) => m,
        _ => panic!("not an object"),
    }
}

async fn run(seed: u64) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("device"), 4 << 20).unwrap();
    let (events, _) = broadcast::channel(1024);
    let queue_changed = Arc::new(Notify::new());
    let (writer, _join) = spawn_writer(store.clone(), events, queue_changed.clone()).unwrap();
    let mut rng = fastrand::Rng::with_seed(seed);
    let sim = Arc::new(Sim {
        store: RedbStore::open(&dir.path().join("server")).unwrap(),
        rng: Mutex::new(fastrand::Rng::with_seed(seed ^ 0x5eed)),
        batch: seed.is_multiple_of(2),
        // Some seeds with client ids (and a `wait` the sim ignores).
        features: Features {
            batch: seed.is_multiple_of(2),
            wait: seed % 3 == 1,
            client_ids: seed % 3 == 1,
        },
        down: 30,
        fail_before: 40,
        lose_reply: 40,
    });
    let mut cfg = Config::default();
    cfg.sync.backoff_initial_ms = 2;
    cfg.sync.backoff_max_ms = 20;
    cfg.sync.batch_size = [1, 3, 10][seed as usize % 3];
    let (_cfg_tx, cfg_rx) = watch::channel(Arc::new(cfg));
    let control = SyncControl::new(false);
    let (stop_tx, stop_rx) = watch::channel(false);
    let transport: Arc<dyn Transport> = sim.clone();
    let worker = spawn(WorkerDeps {
        store: store.clone(),
        writer: writer.clone(),
        config: cfg_rx,
        control: control.clone(),
        queue_changed,
        shutdown: stop_rx,
        connector: Some(Arc::new(move |_: &Config| Some(transport.clone()))),
        metrics: Default::default(),
    });

    // The app: creates, replaces, patches and deletes, while sync runs.
    // expected[id] = (number of writes, final document or None if deleted)
    let mut expected: BTreeMap<String, (u64, Option<Value>)> = BTreeMap::new();
    for i in 0..60u64 {
        let id = format!("r{}", rng.u64(0..12));
        let entry = expected.get(&id).cloned();
        let deleted = matches!(entry, Some((_, None)));
        if deleted {
            continue; // a re-create would start a new server record
        }
        let ts = i as i64 + 1;
        match (entry, rng.u8(0..10)) {
            (Some((n, Some(_))), 0) if n > 1 => {
                write(
                    &writer,
                    WriteCmd::Delete {
                        collection: "c".into(),
                        id: id.clone(),
                        client_ts: ts,
                    },
                )
                .await;
                expected.insert(id, (n + 1, None));
            }
            (Some((n, Some(mut doc))), 1..=4) => {
                let patch = json!({format!("k{}", rng.u8(0..4)): i});
                write(
                    &writer,
                    WriteCmd::Patch {
                        collection: "c".into(),
                        id: id.clone(),
                        data: obj(patch.clone()),
                        client_ts: ts,
                        max_bytes: 1 << 20,
                    },
                )
                .await;
                for (k, v) in obj(patch) {
                    doc[k] = v;
                }
                expected.insert(id, (n + 1, Some(doc)));
            }
            (prev, _) => {
                let doc = json!({"v": i, "seed": seed});
                write(
                    &writer,
                    WriteCmd::Put {
                        collection: "c".into(),
                        id: Some(id.clone()),
                        data: obj(doc.clone()),
                        client_ts: ts,
                    },
                )
                .await;
                let n = prev.map(|p| p.0).unwrap_or(0);
                expected.insert(id, (n + 1, Some(doc)));
            }
        }
        if rng.u8(0..4) == 0 {
            tokio::time::sleep(Duration::from_millis(rng.u64(0..5))).await;
        }
    }

    // Everything drains despite the misfortune.
    let drained = tokio::time::timeout(Duration::from_secs(60), async {
        while store.queue_depth().unwrap() > 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    assert!(
        drained.is_ok(),
        "seed {seed}: queue not drained: {:?}",
        control.status()
    );
    let _ = stop_tx.send(true);
    let _ = worker.await;

    assert_eq!(
        store.dead_letter_count().unwrap(),
        0,
        "seed {seed}: {:?}",
        store.dead_letters().unwrap()
    );
    assert_eq!(store.conflict_count().unwrap(), 0);
    // Server state per record: the latest change of each server id.
    let mut server: BTreeMap<String, crate::backend::protocol::ServerRecord> = BTreeMap::new();
    let mut since = 0;
    loop {
        let slice = sim.store.changes(since, 1000).unwrap();
        for (s, ch) in &slice.entries {
            since = *s;
            server.insert(ch.record.id.clone(), ch.record.clone());
        }
        if !slice.more {
            break;
        }
    }
    // Edits queued behind each other fold (coalescing), so the server may
    // see fewer versions than writes, never more; a create deleted before
    // it was sent never reaches the server at all.
    let live = server.values().filter(|r| !r.deleted).count();
    let expected_live = expected.values().filter(|(_, d)| d.is_some()).count();
    assert_eq!(
        live, expected_live,
        "seed {seed}: one live server record per live local record"
    );
    for (id, (writes, doc)) in &expected {
        let local = store.record("c", id).unwrap();
        let Some(d) = doc else {
            assert!(local.is_none(), "seed {seed}: {id} should be gone locally");
            continue;
        };
        let local = local.unwrap_or_else(|| panic!("seed {seed}: {id} lost locally"));
        assert_eq!(local.pending, 0);
        let sid = local
            .server_id
            .clone()
            .unwrap_or_else(|| panic!("seed {seed}: {id} never synced"));
        if sim.features.client_ids {
            assert_eq!(&sid, id, "seed {seed}: client ids keep the local id");
        }
        let srv = server[&sid].clone();
        assert_eq!(
            Value::Object(srv.data.clone()),
            *d,
            "seed {seed}: {id} data"
        );
        assert_eq!(
            crate::store::parse_doc_text(&local.data),
            *d,
            "seed {seed}: {id} local data"
        );
        assert!(!srv.deleted);
        // No write applied twice: at most one version per write.
        assert!(
            srv.version >= 1 && srv.version <= *writes,
            "seed {seed}: {id} at version {} for {writes} writes",
            srv.version
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_against_a_faulty_backend_loses_and_doubles_nothing() {
    for seed in 0..6 {
        run(seed).await;
    }
}
