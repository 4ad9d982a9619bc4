//! Filling a daemon's queue: N puts from W concurrent connections, the way
//! `memory`, `drain` and `restart` all set up a long queue.

use std::time::{Duration, Instant};

use crate::common::Daemon;
use crate::daemon::Clients;
use crate::loops::doc;
use crate::COLLECTION;

/// Puts `ops` new records through `writers` connections (the ops split
/// evenly between them); returns the queue depth `status` reports after,
/// and the seconds the fill took.
pub(crate) fn fill(
    rt: &tokio::runtime::Runtime,
    d: &Daemon,
    ops: u64,
    writers: usize,
) -> (u64, f64) {
    let t0 = Instant::now();
    let depth = rt.block_on(async {
        let clients = d.clients(writers).await;
        let mut tasks = Vec::new();
        for (w, mut c) in clients.into_iter().enumerate() {
            let n = ops / writers as u64 + u64::from((w as u64) < ops % writers as u64);
            tasks.push(tokio::spawn(async move {
                for i in 0..n {
                    c.put(COLLECTION, None, doc(w, i)).await.expect("put");
                }
            }));
        }
        let progress = tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(10)).await;
                eprintln!("  filling ... {:.0} s", t0.elapsed().as_secs_f64());
            }
        });
        for t in tasks {
            t.await.expect("writer");
        }
        progress.abort();
        d.client().await.status().await.expect("status").queue_depth
    });
    (depth, t0.elapsed().as_secs_f64())
}
