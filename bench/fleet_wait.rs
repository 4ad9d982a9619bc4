//! A fleet of waiting pulls on one backend node on PostgreSQL: N devices
//! (simulated: one HTTP/1.1 connection each, all in this process's tokio
//! runtime) each hold `GET v1/changes?since=HEAD&wait=60` on ONE
//! `syncd backend --postgres --token` node, then one write through that
//! node (`POST v1/ops`) that every one of them must see.
//!
//! ```text
//! cargo bench --bench fleet_wait                       # 10 000 waiters (release)
//! cargo bench --bench fleet_wait -- --waiters 2000 --json
//! ```
//!
//! Why: with `wait`, every online device holds one request open on the
//! backend all the time, so what a node pays per idle device (memory, one
//! file descriptor, whether it holds a database connection for it) and how
//! fast one change fans out to all of them decides how many devices a node
//! can carry. Reported: the node's RSS before the waiters connect and while
//! they all wait (the difference divided by N), its open file descriptors
//! and threads while waiting, the PostgreSQL connections it holds then and
//! at most during the fan-out (`pg_stat_activity`), and the time from the
//! write's reply until each waiter got its answer (p50, p99, max).
//!
//! The process raises its own RLIMIT_NOFILE soft limit to the hard limit;
//! the node and PostgreSQL, started afterwards, inherit it. Both this
//! process and the node need one descriptor per waiter plus a reserve: when
//! the hard limit is too low for N, it says so and lowers N.
//!
//! Without `--bench` (`cargo test --all-targets`) it does a smoke run with
//! a few waiters that checks that every one sees the write and measures
//! nothing worth keeping.

#[path = "../tests/common_pg/mod.rs"]
mod common_pg;

use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;

use common_pg::Pg;

const TOKEN: &str = "fleet-bench-token";
const DB: &str = "fleet";
/// Descriptors kept free besides one per waiter (the runtime, the pool,
/// PostgreSQL's sockets, logs, pipes).
const FD_RESERVE: u64 = 512;
/// Connections being opened at once (the node's accept backlog is finite).
const CONNECTING: usize = 256;

#[derive(Debug, Clone, Copy)]
struct Opts {
    waiters: usize,
    smoke: bool,
    json: bool,
}

fn opts() -> Opts {
    let args: Vec<String> = std::env::args().collect();
    let smoke = !args.iter().any(|a| a == "--bench");
    let waiters = args
        .iter()
        .position(|a| a == "--waiters")
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(if smoke { 20 } else { 10_000 });
    Opts {
        waiters,
        smoke,
        json: args.iter().any(|a| a == "--json"),
    }
}

/// Raises the soft RLIMIT_NOFILE to the hard one; returns (soft, hard).
fn raise_nofile() -> (u64, u64) {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit write/read the struct we own.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            panic!("getrlimit: {}", std::io::Error::last_os_error());
        }
        if lim.rlim_cur < lim.rlim_max {
            let want = libc::rlimit {
                rlim_cur: lim.rlim_max,
                rlim_max: lim.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &want) != 0 {
                eprintln!(
                    "setrlimit(RLIMIT_NOFILE, {}): {}",
                    lim.rlim_max,
                    std::io::Error::last_os_error()
                );
            } else {
                lim = want;
            }
        }
    }
    (lim.rlim_cur, lim.rlim_max)
}

/// `Key:   123 kB` from /proc/PID/status.
fn status_field(pid: u32, key: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            let rest = l.strip_prefix(key)?.strip_prefix(':')?;
            rest.split_whitespace().next()?.parse().ok()
        })
        .unwrap_or(0)
}

fn rss_kib(pid: u32) -> u64 {
    status_field(pid, "VmRSS")
}

fn threads(pid: u32) -> u64 {
    status_field(pid, "Threads")
}

fn fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// utime + stime in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces): state is 3rd.
    let rest = stat.rsplit_once(')').map(|x| x.1).unwrap_or_default();
    let f: Vec<&str> = rest.split_whitespace().collect();
    let n = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    n(11) + n(12)
}

/// "Max open files" soft limit of a process, from /proc/PID/limits.
fn max_open_files(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/limits"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l.split_whitespace().nth(3).map(str::to_owned))
        .unwrap_or_else(|| "?".into())
}

/// A `syncd backend --postgres URL --token T` process; killed on drop.
struct Node {
    child: Child,
    addr: String,
    log: std::path::PathBuf,
}

impl Node {
    fn start(url: &str, log: std::path::PathBuf) -> Node {
        let stderr = std::fs::File::create(&log).expect("node log");
        let mut child = Command::new(env!("CARGO_BIN_EXE_syncd"))
            .args(["backend", "--listen", "127.0.0.1:0", "--postgres", url])
            .args(["--token", TOKEN])
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .expect("spawn syncd backend");
        let addr = common_pg::listening_addr(&mut child);
        Node { child, addr, log }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One request on a fresh connection: (status, body JSON).
async fn request(addr: &str, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
    let stream = TcpStream::connect(addr).await.expect("connect");
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("handshake");
    tokio::spawn(conn);
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let req = hyper::Request::builder()
        .method(method)
        .uri(path)
        .header("host", addr)
        .header("authorization", format!("Bearer {TOKEN}"))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)))
        .expect("request");
    let resp = send.send_request(req).await.expect("http");
    let status = resp.status().as_u16();
    let bytes = resp.into_body().collect().await.expect("body").to_bytes();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

/// A create op (`POST v1/ops` body) with `op_id`.
fn create_op(op_id: &str) -> Value {
    json!({"op_id": op_id, "client_id": "writer", "collection": "fleet",
        "kind": "create", "id": null, "local_id": op_id, "base_version": null,
        "data": {"hello": "fleet"}, "client_ts": 1})
}

/// How one waiter ended.
enum Answer {
    /// The reply arrived at this instant: status, changes in it, cursor.
    Got(Instant, u16, usize, String),
    /// The connection or the request failed.
    Failed(String),
}

/// One device: opens its connection, holds `GET v1/changes?since=..&wait=60`.
async fn waiter(addr: Arc<str>, path: Arc<str>, gate: Arc<Semaphore>) -> Answer {
    let permit = gate.acquire_owned().await.expect("semaphore");
    let stream = match TcpStream::connect(&*addr).await {
        Ok(s) => s,
        Err(e) => return Answer::Failed(format!("connect: {e}")),
    };
    let (mut send, conn) = match hyper::client::conn::http1::handshake(TokioIo::new(stream)).await {
        Ok(x) => x,
        Err(e) => return Answer::Failed(format!("handshake: {e}")),
    };
    tokio::spawn(conn);
    drop(permit);
    let req = hyper::Request::builder()
        .method("GET")
        .uri(&*path)
        .header("host", &*addr)
        .header("authorization", format!("Bearer {TOKEN}"))
        .body(Full::new(Bytes::new()))
        .expect("request");
    let resp = match send.send_request(req).await {
        Ok(r) => r,
        Err(e) => return Answer::Failed(format!("request: {e}")),
    };
    let status = resp.status().as_u16();
    let bytes = match resp.into_body().collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => return Answer::Failed(format!("body: {e}")),
    };
    let at = Instant::now();
    let v: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    let changes = v["changes"].as_array().map(Vec::len).unwrap_or(0);
    let cursor = v["cursor"].as_str().unwrap_or_default().to_owned();
    Answer::Got(at, status, changes, cursor)
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

/// Polls `f` every 20 ms until it holds or `secs` pass; false on timeout.
fn wait_for(secs: u64, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < deadline {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

fn main() {
    let mut o = opts();
    let (soft, hard) = raise_nofile();
    let fit = soft.saturating_sub(FD_RESERVE) as usize;
    println!("open-file limit: soft {soft}, hard {hard} (raised soft to hard)");
    if o.waiters > fit {
        println!(
            "WARNING: the open-file limit ({soft}) is too low for {} waiters: this process \
             and the node each need one descriptor per waiter plus {FD_RESERVE}; \
             lowering the waiters to {fit} (raise the hard limit, e.g. `ulimit -Hn`, to run more)",
            o.waiters
        );
        o.waiters = fit;
    }
    let n = o.waiters;

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let pg = Pg::start_with(!o.smoke);
    pg.create_db(DB);
    let logs = tempfile::tempdir().expect("tempdir");
    let node = Node::start(&pg.url(DB), logs.path().join("node.log"));
    let pid = node.pid();
    let addr: Arc<str> = Arc::from(node.addr.as_str());
    let pg_conns = || {
        pg.scalar(
            "postgres",
            &format!("SELECT count(*) FROM pg_stat_activity WHERE datname = '{DB}'"),
        )
    };

    // Warm the node (pool connections, prepared statements), then the
    // baseline, then the head the waiters wait past.
    let (st, h) = rt.block_on(request(&addr, "GET", "/v1/health", None));
    assert_eq!(st, 200, "health: {h}");
    let (st, page) = rt.block_on(request(&addr, "GET", "/v1/changes?since=0", None));
    assert_eq!(st, 200, "changes: {page}");
    // One write with nobody waiting, for comparison with the fan-out's.
    let t0 = Instant::now();
    let (st, reply) = rt.block_on(request(
        &addr,
        "POST",
        "/v1/ops",
        Some(create_op("warm-up")),
    ));
    let lone_write_ms = t0.elapsed().as_secs_f64() * 1000.0;
    assert_eq!(st, 200, "write: {reply}");
    let (st, page) = rt.block_on(request(&addr, "GET", "/v1/changes?since=0", None));
    assert_eq!(st, 200, "changes: {page}");
    let head: u64 = page["cursor"]
        .as_str()
        .and_then(|c| c.parse().ok())
        .expect("cursor");
    // Settled: no CPU used over 200 ms (the node's start-up work is done).
    let quiet = |ticks: u64| {
        let mut last = cpu_ticks(pid);
        wait_for(60, || {
            std::thread::sleep(Duration::from_millis(200));
            let now = cpu_ticks(pid);
            let calm = now.saturating_sub(last) <= ticks;
            last = now;
            calm
        })
    };
    quiet(0);
    let (rss0, fds0, threads0, pg0) = (rss_kib(pid), fds(pid), threads(pid), pg_conns());
    println!(
        "node pid {pid} (open-file limit {}): before the waiters RSS {rss0} KiB, {fds0} fds, \
         {threads0} threads, {pg0} PostgreSQL connections",
        max_open_files(pid)
    );

    // The waiters.
    let path: Arc<str> = Arc::from(format!("/v1/changes?since={head}&wait=60").as_str());
    let gate = Arc::new(Semaphore::new(CONNECTING));
    let t_connect = Instant::now();
    let tasks: Vec<_> = (0..n)
        .map(|_| {
            let (addr, path, gate) = (Arc::clone(&addr), Arc::clone(&path), Arc::clone(&gate));
            rt.spawn(waiter(addr, path, gate))
        })
        .collect();
    // Held: the node has a descriptor for every waiter's connection (on top
    // of the pool's database connections, which grow while the waiters'
    // first reads run), and then has gone quiet (every request read, its
    // first look at the feed done, the wait entered).
    let all_in = wait_for(120, || {
        let pool_growth = usize::try_from(pg_conns() - pg0).unwrap_or(0);
        fds(pid) >= fds0 + pool_growth + n
    });
    let connected = t_connect.elapsed();
    assert!(
        all_in,
        "the node holds {} connections of {n} after 120 s (see its log {})",
        fds(pid).saturating_sub(fds0),
        node.log.display()
    );
    assert!(quiet(2), "the node did not settle with {n} waiters");
    let held = t_connect.elapsed();
    let early = tasks.iter().filter(|t| t.is_finished()).count();
    let (rss1, fds1, threads1, pg1) = (rss_kib(pid), fds(pid), threads(pid), pg_conns());
    let per_waiter = (rss1 as f64 - rss0 as f64) * 1024.0 / n as f64;
    println!(
        "{n} waiters connected in {:.2} s, held after {:.2} s ({early} answered before the write)",
        connected.as_secs_f64(),
        held.as_secs_f64()
    );
    println!(
        "while waiting: RSS {rss1} KiB (+{} KiB, {per_waiter:.0} bytes per waiter), {fds1} fds, \
         {threads1} threads, {pg1} PostgreSQL connections",
        rss1.saturating_sub(rss0)
    );

    // Without the blocking-pool threads the waiters' first reads started
    // (tokio ends them after 10 s idle): what the waiting itself costs.
    // Skipped in the smoke run; the waiters hold 60 s, time enough.
    let mut steady = None;
    if !o.smoke && wait_for(30, || threads(pid) <= threads0 + 8) {
        let (rss2, thr2) = (rss_kib(pid), threads(pid));
        let per = (rss2 as f64 - rss0 as f64) * 1024.0 / n as f64;
        println!(
            "once the blocking pool's idle threads ended: RSS {rss2} KiB ({per:.0} bytes per \
             waiter), {thr2} threads"
        );
        steady = Some((rss2, thr2, per));
    }
    assert!(
        tasks.iter().all(|t| !t.is_finished()),
        "waiters answered before the write"
    );

    // The write, through the same node, while PostgreSQL connections and
    // the node's threads are sampled through the fan-out.
    let op = create_op("fleet-write");
    let sampling = AtomicBool::new(true);
    let (pg_peak, thr_peak) = (AtomicU64::new(0), AtomicU64::new(0));
    let (sent, replied, answers, all_answered) = std::thread::scope(|s| {
        s.spawn(|| {
            while sampling.load(Ordering::Relaxed) {
                pg_peak.fetch_max(pg_conns() as u64, Ordering::Relaxed);
                thr_peak.fetch_max(threads(pid), Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        let sent = Instant::now();
        let (st, reply) = rt.block_on(request(&addr, "POST", "/v1/ops", Some(op)));
        let replied = Instant::now();
        assert_eq!(st, 200, "write: {reply}");
        let answers: Vec<Answer> = rt.block_on(async {
            let mut out = Vec::with_capacity(tasks.len());
            for t in tasks {
                out.push(t.await.expect("waiter task"));
            }
            out
        });
        let all_answered = replied.elapsed();
        sampling.store(false, Ordering::Relaxed);
        (sent, replied, answers, all_answered)
    });
    let (pg_peak, thr_peak) = (pg_peak.into_inner(), thr_peak.into_inner());

    // The answers: each must carry the write (one change, cursor head + 1).
    let want_cursor = (head + 1).to_string();
    let (mut lat_ms, mut before_reply, mut wrong, mut failed) =
        (Vec::new(), 0usize, Vec::new(), Vec::new());
    for a in &answers {
        match a {
            Answer::Got(at, 200, 1, cursor) if *cursor == want_cursor => {
                if *at < replied {
                    before_reply += 1;
                }
                lat_ms.push(at.saturating_duration_since(replied).as_secs_f64() * 1000.0);
            }
            Answer::Got(_, st, changes, cursor) => {
                wrong.push(format!("status {st}, {changes} changes, cursor {cursor:?}"))
            }
            Answer::Failed(e) => failed.push(e.clone()),
        }
    }
    lat_ms.sort_by(f64::total_cmp);
    let (p50, p99, max) = (pct(&lat_ms, 0.5), pct(&lat_ms, 0.99), pct(&lat_ms, 1.0));
    let write_ms = replied.duration_since(sent).as_secs_f64() * 1000.0;
    println!(
        "write replied in {write_ms:.1} ms (alone, before the waiters: {lone_write_ms:.1} ms); {} of {n} waiters saw it ({before_reply} before the reply), \
         {} wrong answers, {} failed; all answered {:.0} ms after the reply",
        lat_ms.len(),
        wrong.len(),
        failed.len(),
        all_answered.as_secs_f64() * 1000.0
    );
    println!("from the write's reply to each waiter's answer: p50 {p50:.1} ms, p99 {p99:.1} ms, max {max:.1} ms");
    println!(
        "during the fan-out: at most {} PostgreSQL connections, {} node threads",
        pg_peak, thr_peak
    );
    let log = std::fs::read_to_string(&node.log).unwrap_or_default();
    let (warns, errors) = (
        log.matches(" WARN ").count(),
        log.matches(" ERROR ").count(),
    );
    println!("node log: {warns} WARN, {errors} ERROR lines");
    for l in log
        .lines()
        .filter(|l| l.contains(" WARN ") || l.contains(" ERROR "))
        .take(5)
    {
        println!("  {l}");
    }
    if o.json {
        let row = json!({"waiters": n, "nofile_soft": soft, "nofile_hard": hard,
            "connect_s": connected.as_secs_f64(), "held_s": held.as_secs_f64(),
            "rss_before_kib": rss0, "rss_waiting_kib": rss1, "bytes_per_waiter": per_waiter.round(),
            "fds_before": fds0, "fds_waiting": fds1, "threads_before": threads0,
            "threads_waiting": threads1, "threads_peak": thr_peak,
            "pg_conns_before": pg0, "pg_conns_waiting": pg1,
            "pg_conns_peak": pg_peak, "write_ms": write_ms, "lone_write_ms": lone_write_ms,
            "rss_steady_kib": steady.map(|x| x.0), "threads_steady": steady.map(|x| x.1),
            "bytes_per_waiter_steady": steady.map(|x| x.2.round()),
            "saw_write": lat_ms.len(), "wrong": wrong.len(), "failed": failed.len(),
            "p50_ms": p50, "p99_ms": p99, "max_ms": max});
        println!("{row}");
    }
    for w in wrong.iter().take(3) {
        println!("  wrong answer: {w}");
    }
    for f in failed.iter().take(3) {
        println!("  failed: {f}");
    }
    assert_eq!(early, 0, "waiters answered before the write");
    assert!(
        wrong.is_empty() && failed.is_empty(),
        "{} wrong, {} failed",
        wrong.len(),
        failed.len()
    );
    assert_eq!(lat_ms.len(), n);
    // The node's pools (applies and reads) and its LISTEN connection,
    // whatever N (docs/scaling.md): never a connection per waiter.
    let most = (syncd::backend::server::pg_store::POOL_SIZE
        + syncd::backend::server::pg_store::READ_POOL_SIZE
        + 1) as i64;
    assert!(
        pg1.max(pg_peak as i64) <= most,
        "the node held {} PostgreSQL connections",
        pg1.max(pg_peak as i64)
    );
}
