//! Baseline for `writes`: the same durable write done in process with
//! redb and the same batching as the daemon (the limit syncd could reach
//! without the socket and the process boundary). Client threads submit
//! writes to one writer thread, which takes every write waiting, puts each
//! one's record row and queue row in one transaction, commits it durably
//! and then answers them all (group commit).

use std::path::Path;
use std::sync::mpsc::{channel, sync_channel, Receiver, Sender, SyncSender};
use std::time::Duration;

use redb::{Database, Durability, TableDefinition};

use crate::loops::{doc, run_threads};
use crate::stats::Run;
use crate::COLLECTION;

const RECORDS: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("records");
const QUEUE: TableDefinition<u64, &[u8]> = TableDefinition::new("queue");
/// The daemon's default `cache_mib`.
const CACHE_BYTES: usize = 16 << 20;

struct Write {
    id: String,
    op: Vec<u8>,
    record: Vec<u8>,
    done: SyncSender<()>,
}

pub(crate) struct RedbOutbox {
    submit: Sender<Write>,
    /// The writer thread, whose CPU time the harness reports per write.
    writer_tid: i32,
}

fn writer(db: Database, rx: Receiver<Write>) {
    let mut seq = 0u64;
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        batch.extend(rx.try_iter());
        let mut txn = db.begin_write().expect("begin_write");
        txn.set_durability(Durability::Immediate)
            .expect("durability");
        {
            let mut records = txn.open_table(RECORDS).expect("records");
            let mut queue = txn.open_table(QUEUE).expect("queue");
            for w in &batch {
                records
                    .insert((COLLECTION, w.id.as_str()), w.record.as_slice())
                    .expect("insert record");
                seq += 1;
                queue.insert(seq, w.op.as_slice()).expect("insert op");
            }
        }
        txn.commit().expect("commit");
        for w in batch {
            let _ = w.done.send(());
        }
    }
}

fn put(submit: &mut (Sender<Write>, SyncSender<()>, Receiver<()>), client: usize, i: u64) {
    let id = ulid::Ulid::generate().to_string();
    let op_id = ulid::Ulid::generate().to_string();
    let data = doc(client, i).to_string();
    let op = format!("{{\"op_id\":\"{op_id}\",\"kind\":\"put\",\"collection\":\"{COLLECTION}\",\"id\":\"{id}\",\"data\":{data}}}");
    submit
        .0
        .send(Write {
            id,
            op: op.into_bytes(),
            record: data.into_bytes(),
            done: submit.1.clone(),
        })
        .expect("submit");
    submit.2.recv().expect("write answered");
}

impl RedbOutbox {
    /// Creates the database in `dir` and starts its writer thread (which
    /// ends when this is dropped).
    pub(crate) fn create(dir: &Path) -> RedbOutbox {
        let db = Database::builder()
            .set_cache_size(CACHE_BYTES)
            .create(dir.join("outbox.redb"))
            .expect("redb create");
        let (submit, rx) = channel();
        let (tid_tx, tid_rx) = channel();
        std::thread::Builder::new()
            .name("redb-outbox".into())
            .spawn(move || {
                // SAFETY: gettid has no preconditions.
                let _ = tid_tx.send(unsafe { libc::gettid() });
                writer(db, rx)
            })
            .expect("writer thread");
        let writer_tid = tid_rx.recv().expect("writer thread id");
        RedbOutbox { submit, writer_tid }
    }

    /// CPU seconds (user + system) the writer thread has used so far.
    pub(crate) fn writer_cpu_secs(&self) -> f64 {
        crate::procfs::thread_cpu_secs(self.writer_tid)
    }

    /// `threads` client threads doing durable writes for `dur`.
    pub(crate) fn run(&self, threads: usize, dur: Duration) -> Run {
        let clients: Vec<_> = (0..threads)
            .map(|_| {
                let (tx, rx) = sync_channel(1);
                (self.submit.clone(), tx, rx)
            })
            .collect();
        run_threads(clients, dur, put).1
    }
}
