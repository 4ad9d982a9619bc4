//! The measured loops: N connections each doing one request at a time for
//! a fixed duration, and the fsync-per-write baseline loop.

use std::fs::File;
use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use interprocess::local_socket::tokio::Stream;
use serde_json::{json, Value};
use syncd::client::Client;
use syncd::ipc::connection::Connection;

use crate::stats::Run;
use crate::{COLLECTION, READ_ID};

/// A connection the measured loop drives: the daemon through the client
/// library, or the raw echo baseline through the same framing type.
pub(crate) enum Conn {
    Syncd(Client),
    Echo {
        conn: Connection<Stream>,
        request: Vec<u8>,
    },
}

#[derive(Clone, Copy, PartialEq)]
pub(crate) enum Op {
    Put,
    Get,
    Echo,
}

pub(crate) async fn one_op(conn: &mut Conn, op: Op, client: usize, i: u64) {
    match (op, conn) {
        (Op::Put, Conn::Syncd(c)) => {
            c.put(COLLECTION, None, doc(client, i)).await.expect("put");
        }
        (Op::Get, Conn::Syncd(c)) => {
            c.get(COLLECTION, READ_ID).await.expect("get");
        }
        (Op::Echo, Conn::Echo { conn, request }) => {
            conn.write_frame(request).await.expect("echo write");
            conn.read_frame()
                .await
                .expect("echo read")
                .expect("echo server closed");
        }
        _ => unreachable!("op does not fit the connection"),
    }
}

pub(crate) fn doc(client: usize, i: u64) -> Value {
    json!({"title": "buy milk", "done": false, "client": client, "n": i})
}

/// All connections run `op` in a loop, each waiting for its reply before the
/// next request, for `dur`. Throughput counts every op finished by the time
/// the last connection stopped.
pub(crate) async fn run_loop(conns: Vec<Conn>, op: Op, dur: Duration) -> (Vec<Conn>, Run) {
    let stop = Arc::new(AtomicBool::new(false));
    let barrier = Arc::new(tokio::sync::Barrier::new(conns.len() + 1));
    let mut tasks = Vec::with_capacity(conns.len());
    for (n, mut conn) in conns.into_iter().enumerate() {
        let stop = stop.clone();
        let barrier = barrier.clone();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::with_capacity(16 * 1024);
            barrier.wait().await;
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let t = Instant::now();
                one_op(&mut conn, op, n, i).await;
                lat.push(t.elapsed().as_micros().min(u32::MAX as u128) as u32);
                i += 1;
            }
            (conn, lat)
        }));
    }
    barrier.wait().await;
    let t0 = Instant::now();
    tokio::time::sleep(dur).await;
    stop.store(true, Ordering::Relaxed);
    let mut conns = Vec::new();
    let mut all = Vec::new();
    for t in tasks {
        let (c, lat) = t.await.expect("client task");
        conns.push(c);
        all.extend(lat);
    }
    let elapsed = t0.elapsed();
    let ops = all.len() as u64;
    (conns, Run::new(ops, elapsed, all))
}

/// The fsync baseline: one thread appends `record_bytes` and fdatasyncs,
/// in a loop, for `dur`.
pub(crate) fn fsync_run(file: &mut File, record: &[u8], dur: Duration) -> Run {
    let mut lat = Vec::with_capacity(4096);
    let t0 = Instant::now();
    while t0.elapsed() < dur {
        let t = Instant::now();
        file.write_all(record).expect("baseline write");
        file.sync_data().expect("baseline fdatasync");
        lat.push(t.elapsed().as_micros().min(u32::MAX as u128) as u32);
    }
    let ops = lat.len() as u64;
    Run::new(ops, t0.elapsed(), lat)
}

/// Thread-per-client version of [`run_loop`] for the in-process baselines:
/// one OS thread per state, each calling `op` in a loop for `dur`.
pub(crate) fn run_threads<S: Send>(
    states: Vec<S>,
    dur: Duration,
    op: impl Fn(&mut S, usize, u64) + Sync,
) -> (Vec<S>, Run) {
    let stop = AtomicBool::new(false);
    let barrier = std::sync::Barrier::new(states.len() + 1);
    std::thread::scope(|s| {
        let handles: Vec<_> = states
            .into_iter()
            .enumerate()
            .map(|(n, mut st)| {
                let (stop, barrier, op) = (&stop, &barrier, &op);
                s.spawn(move || {
                    let mut lat = Vec::with_capacity(4096);
                    barrier.wait();
                    let mut i = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        let t = Instant::now();
                        op(&mut st, n, i);
                        lat.push(t.elapsed().as_micros().min(u32::MAX as u128) as u32);
                        i += 1;
                    }
                    (st, lat)
                })
            })
            .collect();
        barrier.wait();
        let t0 = Instant::now();
        std::thread::sleep(dur);
        stop.store(true, Ordering::Relaxed);
        let mut states = Vec::new();
        let mut all = Vec::new();
        for h in handles {
            let (st, lat) = h.join().expect("baseline thread");
            states.push(st);
            all.extend(lat);
        }
        let ops = all.len() as u64;
        (states, Run::new(ops, t0.elapsed(), all))
    })
}
