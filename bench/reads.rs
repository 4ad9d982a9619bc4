//! `reads`: `get` of one record against a raw echo server with the same
//! framing and sizes.

use std::os::unix::net::UnixListener;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use interprocess::local_socket::tokio::{prelude::*, Stream};
use interprocess::local_socket::GenericFilePath;
use serde_json::json;
use syncd::ipc::codec::{encode, Encoding};
use syncd::ipc::connection::Connection;
use syncd::ipc::wire::{ClientFrame, Request, Response, ServerFrame};

use crate::daemon::{start_daemon, Clients};
use crate::loops::{doc, run_loop, Conn, Op};
use crate::procfs::cpu_secs;
use crate::report::Report;
use crate::stats::{f0, f2, median, ratio, summarize, Run};
use crate::{Opts, COLLECTION, READ_ID};

/// The echo baseline's server: one thread running a single-threaded tokio
/// event loop (the daemon's I/O model, minus its work). It reads a 4-byte
/// big-endian length and the body, and answers with a prebuilt frame of the
/// daemon's reply size. The listener is bound before this returns.
pub(crate) fn echo_server(path: &Path, reply_len: usize) {
    let listener = UnixListener::bind(path).expect("echo bind");
    listener.set_nonblocking(true).expect("echo nonblocking");
    let mut reply = Vec::with_capacity(4 + reply_len);
    reply.extend_from_slice(&(reply_len as u32).to_be_bytes());
    reply.resize(4 + reply_len, b'r');
    let reply = Arc::new(reply);
    std::thread::Builder::new()
        .name("echo-server".into())
        .spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("echo runtime");
            rt.block_on(async move {
                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                let listener = tokio::net::UnixListener::from_std(listener).expect("echo listener");
                while let Ok((mut conn, _)) = listener.accept().await {
                    let reply = reply.clone();
                    tokio::spawn(async move {
                        let mut len = [0u8; 4];
                        let mut body = Vec::new();
                        while conn.read_exact(&mut len).await.is_ok() {
                            body.resize(u32::from_be_bytes(len) as usize, 0);
                            if conn.read_exact(&mut body).await.is_err()
                                || conn.write_all(&reply).await.is_err()
                            {
                                break;
                            }
                        }
                    });
                }
            });
        })
        .expect("echo thread");
}

pub(crate) async fn echo_conns(path: &Path, n: usize, request: &[u8]) -> Vec<Conn> {
    let mut v = Vec::with_capacity(n);
    for _ in 0..n {
        let name = path.to_fs_name::<GenericFilePath>().expect("echo name");
        let stream = Stream::connect(name).await.expect("echo connect");
        v.push(Conn::Echo {
            conn: Connection::new(stream, 1 << 24),
            request: request.to_vec(),
        });
    }
    v
}

pub(crate) fn reads(rt: &tokio::runtime::Runtime, o: &Opts, report: &mut Report) {
    eprintln!(
        "harness: reads: clients {:?}, {} reps x {} s",
        o.read_clients, o.reps, o.secs
    );
    let d = start_daemon(&o.bin);
    let pid = d.pid();
    // The record to read, and the exact sizes of the get's request and
    // reply frames (bincode, as the client library sends them).
    let (req_len, reply_len) = rt.block_on(async {
        let mut c = d.client().await;
        c.put(COLLECTION, Some(READ_ID), doc(0, 0))
            .await
            .expect("put read target");
        let view = c.get(COLLECTION, READ_ID).await.expect("get read target");
        let req = ClientFrame {
            id: 1,
            request: Request::Get {
                collection: COLLECTION.into(),
                id: READ_ID.into(),
            },
        };
        let reply = ServerFrame::Reply {
            id: 1,
            body: Response::Record(view),
        };
        (
            encode(Encoding::Bincode, &req).expect("encode").len(),
            encode(Encoding::Bincode, &reply).expect("encode").len(),
        )
    });
    let echo_path = d.dir.path().join("echo.sock");
    echo_server(&echo_path, reply_len);
    let request = vec![b'q'; req_len];

    let mut pools: Vec<(Vec<Conn>, Vec<Conn>)> = Vec::new();
    for &n in &o.read_clients {
        let (syncd, echo) = rt.block_on(async {
            let s: Vec<Conn> = d.clients(n).await.into_iter().map(Conn::Syncd).collect();
            let e = echo_conns(&echo_path, n, &request).await;
            let (s, _) = run_loop(s, Op::Get, o.warmup()).await;
            let (e, _) = run_loop(e, Op::Echo, o.warmup()).await;
            (s, e)
        });
        pools.push((syncd, echo));
    }
    let mut runs: Vec<(Vec<Run>, Vec<Run>)> = vec![(Vec::new(), Vec::new()); o.read_clients.len()];
    let mut cpu: Vec<Vec<f64>> = vec![Vec::new(); o.read_clients.len()];
    for rep in 0..o.reps {
        for (k, &n) in o.read_clients.iter().enumerate() {
            let (s, e) = std::mem::take(&mut pools[k]);
            let (e, re) = rt.block_on(run_loop(e, Op::Echo, o.dur()));
            let c0 = cpu_secs(pid);
            let t0 = Instant::now();
            let (s, rs) = rt.block_on(run_loop(s, Op::Get, o.dur()));
            cpu[k].push((cpu_secs(pid) - c0) / t0.elapsed().as_secs_f64());
            eprintln!(
                "  rep {}: {n} clients: get {:.0}/s (p50 {:.0} us), echo {:.0}/s (p50 {:.0} us)",
                rep + 1,
                rs.per_s,
                rs.p50_us,
                re.per_s,
                re.p50_us
            );
            runs[k].0.push(rs);
            runs[k].1.push(re);
            pools[k] = (s, e);
        }
    }
    drop(pools);

    report.section(
        &format!("reads: get of one record ({req_len} B request, {reply_len} B reply) vs raw echo of the same sizes"),
        &["clients", "what", "ops/s", "min..max", "p50 us", "p99 us", "get/echo ops/s", "daemon cpu %"],
    );
    for (k, &n) in o.read_clients.iter().enumerate() {
        let (rs, re) = &runs[k];
        let s = summarize(rs);
        let e = summarize(re);
        let x = ratio(
            &rs.iter().map(|r| r.per_s).collect::<Vec<_>>(),
            &re.iter().map(|r| r.per_s).collect::<Vec<_>>(),
        );
        let lat_x = ratio(
            &rs.iter().map(|r| r.p50_us).collect::<Vec<_>>(),
            &re.iter().map(|r| r.p50_us).collect::<Vec<_>>(),
        );
        let cpu_pct = median(&cpu[k]) * 100.0;
        report.row(vec![
            n.to_string(),
            "echo baseline".into(),
            f0(e.per_s),
            format!("{}..{}", f0(e.min_per_s), f0(e.max_per_s)),
            f0(e.p50_us),
            f0(e.p99_us),
            "1.00".into(),
            "-".into(),
        ]);
        report.row(vec![
            n.to_string(),
            "syncd get".into(),
            f0(s.per_s),
            format!("{}..{}", f0(s.min_per_s), f0(s.max_per_s)),
            f0(s.p50_us),
            f0(s.p99_us),
            f2(x),
            f0(cpu_pct),
        ]);
        report.json(json!({
            "scenario": "reads_baseline_echo",
            "clients": n,
            "request_bytes": req_len,
            "reply_bytes": reply_len,
            "ops_per_s": e.per_s,
            "min_per_s": e.min_per_s,
            "max_per_s": e.max_per_s,
            "p50_us": e.p50_us,
            "p99_us": e.p99_us,
            "reps": o.reps,
        }));
        report.json(json!({
            "scenario": "reads",
            "clients": n,
            "request_bytes": req_len,
            "reply_bytes": reply_len,
            "ops_per_s": s.per_s,
            "min_per_s": s.min_per_s,
            "max_per_s": s.max_per_s,
            "p50_us": s.p50_us,
            "p99_us": s.p99_us,
            "ratio_vs_echo_ops_per_s": x,
            "ratio_vs_echo_p50_latency": lat_x,
            "daemon_cpu_pct": cpu_pct,
            "reps": o.reps,
        }));
    }
}
