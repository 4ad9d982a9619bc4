//! syncd benchmark harness: a real daemon (the `syncd` binary cargo built
//! for this profile, `target/release/syncd` under `cargo bench`) on a temp
//! dir, driven through `syncd::client::Client`, each figure compared with a
//! baseline measured in the same run.
//!
//! ```text
//! cargo bench --bench harness                      # every scenario, defaults
//! cargo bench --bench harness -- writes reads      # some scenarios
//! cargo bench --bench harness -- memory --million  # 1,000,000 queued ops
//! cargo bench --bench harness -- --help
//! ```
//!
//! Scenarios (docs/performance.md has the targets and the latest numbers):
//! - `writes`: N concurrent connections (1, 4, 16, 64) doing `put` in a loop
//!   for a fixed time; durable writes/s and p50/p99 latency. Baseline: one
//!   thread appending a small record to a file with write + fdatasync.
//! - `reads`: `get` of one existing record from 1 and 16 connections.
//!   Baseline: a raw echo server in this process (one thread, one event
//!   loop) behind the same 4-byte length framing, with the same request and
//!   reply sizes, driven by the same client-side socket and framing code.
//! - `memory`: VmRSS of a fresh idle daemon, then of the same daemon after M
//!   ops were queued (no backend, so they stay), then after a restart on
//!   that store.
//! - `idle`: context switches of all daemon threads over a quiet window
//!   with an empty queue and no backend (target: 0 per second).
//!
//! Every repeated figure is the median over the repetitions; baselines are
//! interleaved with the measured runs (A B A B ...) and ratios are taken rep
//! by rep, then the median. Output: a table on stdout plus one JSON line per
//! result (lines starting with `{`). Progress goes to stderr.
//!
//! Under `cargo test --all-targets` (no `--bench` argument) it does a few-
//! second smoke run with tiny parameters: it checks that the harness still
//! works and measures nothing.

use std::fs::File;
use std::io::Write;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use interprocess::local_socket::tokio::{prelude::*, Stream};
use interprocess::local_socket::GenericFilePath;
use serde_json::{json, Value};
use syncd::client::Client;
use syncd::ipc::codec::{encode, Encoding};
use syncd::ipc::frame::{read_frame, write_frame};
use syncd::ipc::wire::{ClientFrame, Request, Response, ServerFrame};

#[path = "../tests/common/mod.rs"]
mod common;

use common::{Backend, Daemon, Launch};

const COLLECTION: &str = "bench";
const READ_ID: &str = "read-target";

const USAGE: &str = "\
syncd benchmark harness

usage: cargo bench --bench harness -- [SCENARIO...] [OPTIONS]

scenarios (default: all): writes reads memory idle live

options:
  --reps N            repetitions of each measured run (default 5)
  --secs S            seconds per measured run of writes/reads (default 1.5)
  --warmup S          seconds of unmeasured warm-up per client count (default 0.5)
  --clients LIST      write client counts (default 1,4,16,64)
  --read-clients LIST read client counts (default 1,16)
  --ops M             ops to queue in `memory` (default 200000)
  --million           same as --ops 1000000
  --writers N         concurrent writers filling the queue (default 128)
  --idle-secs S       length of one idle sampling window (default 5)
  --idle-windows N    idle sampling windows (default 3)
  --record-bytes N    size of the fsync baseline's record (default 128)
  --bin PATH          the syncd binary (default: the one cargo built)

Temp dirs go to $TMPDIR (default /tmp): set it to measure another disk.";

#[derive(Clone, Debug)]
struct Opts {
    scenarios: Vec<String>,
    reps: usize,
    secs: f64,
    warmup: f64,
    clients: Vec<usize>,
    read_clients: Vec<usize>,
    ops: u64,
    writers: usize,
    idle_secs: f64,
    idle_windows: usize,
    record_bytes: usize,
    bin: PathBuf,
    smoke: bool,
}

impl Opts {
    fn defaults(smoke: bool) -> Opts {
        let bin = common::bin();
        if smoke {
            return Opts {
                scenarios: all_scenarios(),
                reps: 1,
                secs: 0.1,
                warmup: 0.0,
                clients: vec![1, 4],
                read_clients: vec![1, 4],
                ops: 2000,
                writers: 8,
                idle_secs: 0.3,
                idle_windows: 1,
                record_bytes: 128,
                bin,
                smoke,
            };
        }
        Opts {
            scenarios: all_scenarios(),
            reps: 5,
            secs: 1.5,
            warmup: 0.5,
            clients: vec![1, 4, 16, 64],
            read_clients: vec![1, 16],
            ops: 200_000,
            writers: 128,
            idle_secs: 5.0,
            idle_windows: 3,
            record_bytes: 128,
            bin,
            smoke,
        }
    }

    fn parse(args: &[String]) -> Result<Opts, String> {
        let mut o = Opts::defaults(false);
        let mut scenarios = Vec::new();
        let mut it = args.iter();
        while let Some(a) = it.next() {
            let mut val = |name: &str| -> Result<String, String> {
                it.next()
                    .cloned()
                    .ok_or_else(|| format!("{name} needs a value"))
            };
            match a.as_str() {
                "--bench" => {}
                "-h" | "--help" => return Err(String::new()),
                "--reps" => o.reps = num(&val(a)?, a)?,
                "--secs" => o.secs = num(&val(a)?, a)?,
                "--warmup" => o.warmup = num(&val(a)?, a)?,
                "--clients" => o.clients = list(&val(a)?, a)?,
                "--read-clients" => o.read_clients = list(&val(a)?, a)?,
                "--ops" => o.ops = num(&val(a)?, a)?,
                "--million" => o.ops = 1_000_000,
                "--writers" => o.writers = num(&val(a)?, a)?,
                "--idle-secs" => o.idle_secs = num(&val(a)?, a)?,
                "--idle-windows" => o.idle_windows = num(&val(a)?, a)?,
                "--record-bytes" => o.record_bytes = num(&val(a)?, a)?,
                "--bin" => o.bin = PathBuf::from(val(a)?),
                s if all_scenarios().iter().any(|x| x == s) => scenarios.push(s.to_owned()),
                other => return Err(format!("unknown argument {other:?}")),
            }
        }
        if o.reps == 0
            || o.secs <= 0.0
            || o.idle_secs <= 0.0
            || o.idle_windows == 0
            || o.writers == 0
            || o.ops == 0
        {
            return Err(
                "--reps, --secs, --idle-secs, --idle-windows, --writers and --ops must be positive"
                    .into(),
            );
        }
        if o.clients.contains(&0) || o.read_clients.contains(&0) {
            return Err("client counts must be positive".into());
        }
        if !scenarios.is_empty() {
            o.scenarios = scenarios;
        }
        Ok(o)
    }

    fn dur(&self) -> Duration {
        Duration::from_secs_f64(self.secs)
    }

    fn warmup(&self) -> Duration {
        Duration::from_secs_f64(self.warmup)
    }
}

fn all_scenarios() -> Vec<String> {
    ["writes", "reads", "memory", "idle", "live"]
        .map(String::from)
        .to_vec()
}

fn num<T: std::str::FromStr>(s: &str, name: &str) -> Result<T, String> {
    s.parse()
        .map_err(|_| format!("{name}: not a number: {s:?}"))
}

fn list(s: &str, name: &str) -> Result<Vec<usize>, String> {
    s.split(',').map(|x| num(x.trim(), name)).collect()
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    // `cargo bench` passes --bench; `cargo test --all-targets` does not
    // (and may pass libtest flags, which a smoke run ignores).
    let smoke = !args.iter().any(|a| a == "--bench");
    let opts = if smoke {
        Opts::defaults(true)
    } else {
        match Opts::parse(&args) {
            Ok(o) => o,
            Err(e) if e.is_empty() => {
                println!("{USAGE}");
                return;
            }
            Err(e) => {
                eprintln!("harness: {e}\n\n{USAGE}");
                std::process::exit(2);
            }
        }
    };
    if smoke {
        eprintln!("harness: smoke run (no --bench argument): checks the harness, measures nothing; use `cargo bench --bench harness`");
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let mut report = Report::new(smoke);
    report.machine(&opts);
    for s in opts.scenarios.clone() {
        match s.as_str() {
            "writes" => writes(&rt, &opts, &mut report),
            "reads" => reads(&rt, &opts, &mut report),
            "memory" => memory(&rt, &opts, &mut report),
            "idle" => idle(&rt, &opts, &mut report),
            "live" => live(&rt, &opts, &mut report),
            _ => unreachable!(),
        }
    }
    report.print_table();
}

// ---------------------------------------------------------------- report --

/// Collects table rows per section and prints JSON lines as results come.
struct Report {
    smoke: bool,
    sections: Vec<Section>,
}

struct Section {
    title: String,
    header: Vec<String>,
    rows: Vec<Vec<String>>,
    notes: Vec<String>,
}

impl Report {
    fn new(smoke: bool) -> Report {
        Report {
            smoke,
            sections: Vec::new(),
        }
    }

    fn json(&self, mut v: Value) {
        if self.smoke {
            v["smoke"] = json!(true);
        }
        println!("{v}");
    }

    fn section(&mut self, title: &str, header: &[&str]) {
        self.sections.push(Section {
            title: title.to_owned(),
            header: header.iter().map(|s| s.to_string()).collect(),
            rows: Vec::new(),
            notes: Vec::new(),
        });
    }

    fn row(&mut self, cells: Vec<String>) {
        self.sections.last_mut().expect("section").rows.push(cells);
    }

    fn note(&mut self, text: String) {
        self.sections.last_mut().expect("section").notes.push(text);
    }

    fn machine(&mut self, opts: &Opts) {
        let tmp = std::env::temp_dir();
        let cpus = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0);
        let kernel = read_trim("/proc/sys/kernel/osrelease");
        let model = std::fs::read_to_string("/proc/cpuinfo")
            .unwrap_or_default()
            .lines()
            .find_map(|l| {
                l.strip_prefix("model name")
                    .map(|r| r.trim_start_matches([' ', '\t', ':']).to_owned())
            })
            .unwrap_or_default();
        let mem_kib = meminfo_kib("MemTotal");
        let fs = fs_type(&tmp);
        let release = opts.bin.components().any(|c| c.as_os_str() == "release");
        eprintln!(
            "harness: {cpus} cpus ({model}), {} MiB RAM, kernel {kernel}, temp dir {} on {fs}, binary {}",
            mem_kib / 1024,
            tmp.display(),
            opts.bin.display()
        );
        if !release && !self.smoke {
            eprintln!(
                "harness: WARNING: {} is not a release build",
                opts.bin.display()
            );
        }
        self.json(json!({
            "scenario": "machine",
            "cpus": cpus,
            "cpu_model": model,
            "mem_total_mib": mem_kib / 1024,
            "kernel": kernel,
            "temp_dir": tmp.display().to_string(),
            "temp_fs": fs,
            "binary": opts.bin.display().to_string(),
            "release_binary": release,
            "reps": opts.reps,
            "secs_per_run": opts.secs,
        }));
    }

    fn print_table(&self) {
        println!();
        if self.smoke {
            println!("(smoke run: tiny parameters, these are not measurements)");
        }
        for Section {
            title,
            header,
            rows,
            notes,
        } in &self.sections
        {
            println!("== {title}");
            let mut w: Vec<usize> = header.iter().map(|h| h.len()).collect();
            for r in rows {
                for (i, c) in r.iter().enumerate() {
                    w[i] = w[i].max(c.len());
                }
            }
            let line = |cells: &[String]| {
                let s: Vec<String> = cells
                    .iter()
                    .enumerate()
                    .map(|(i, c)| format!("{c:>width$}", width = w[i]))
                    .collect();
                println!("  {}", s.join("  "));
            };
            line(header);
            for r in rows {
                line(r);
            }
            for n in notes {
                println!("  {n}");
            }
            println!();
        }
    }
}

// ------------------------------------------------------------ statistics --

fn median(v: &[f64]) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    let n = s.len();
    if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    }
}

/// Nearest-rank percentile of sorted microsecond latencies.
fn pct(sorted: &[u32], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1] as f64
}

/// One measured run.
#[derive(Clone, Copy, Debug)]
struct Run {
    per_s: f64,
    p50_us: f64,
    p99_us: f64,
    ops: u64,
}

impl Run {
    fn new(ops: u64, elapsed: Duration, mut lat_us: Vec<u32>) -> Run {
        lat_us.sort_unstable();
        Run {
            per_s: ops as f64 / elapsed.as_secs_f64(),
            p50_us: pct(&lat_us, 0.50),
            p99_us: pct(&lat_us, 0.99),
            ops,
        }
    }
}

/// Medians over repetitions.
struct Summary {
    per_s: f64,
    p50_us: f64,
    p99_us: f64,
    min_per_s: f64,
    max_per_s: f64,
    ops: u64,
}

fn summarize(runs: &[Run]) -> Summary {
    let per_s: Vec<f64> = runs.iter().map(|r| r.per_s).collect();
    Summary {
        per_s: median(&per_s),
        p50_us: median(&runs.iter().map(|r| r.p50_us).collect::<Vec<_>>()),
        p99_us: median(&runs.iter().map(|r| r.p99_us).collect::<Vec<_>>()),
        min_per_s: per_s.iter().cloned().fold(f64::INFINITY, f64::min),
        max_per_s: per_s.iter().cloned().fold(0.0, f64::max),
        ops: runs.iter().map(|r| r.ops).sum(),
    }
}

/// Median of the rep-by-rep ratios a[i]/b[i].
fn ratio(a: &[f64], b: &[f64]) -> f64 {
    let r: Vec<f64> = a.iter().zip(b).map(|(x, y)| x / y).collect();
    median(&r)
}

fn f0(x: f64) -> String {
    format!("{x:.0}")
}

fn f2(x: f64) -> String {
    format!("{x:.2}")
}

// ---------------------------------------------------------------- daemon --

/// The daemon comes from the tests' shared harness; the bench sets it up
/// with its own binary (`--bin`, else the one cargo built for this profile),
/// a `warn` log and a config directory of its own, so that nothing else the
/// harness writes into the temp dir wakes the daemon's config watcher.
fn launch(bin: &Path) -> Launch {
    Launch {
        bin: bin.to_owned(),
        log_level: "warn",
        prefix: "syncd-bench.",
        config_subdir: true,
    }
}

fn start_daemon(bin: &Path) -> Daemon {
    Daemon::start_with(&launch(bin), "")
}

/// Connections through the client library, which the tests do not need.
trait Clients {
    async fn client(&self) -> Client;
    async fn clients(&self, n: usize) -> Vec<Client>;
}

impl Clients for Daemon {
    async fn client(&self) -> Client {
        Client::connect(&self.socket, "bench")
            .await
            .unwrap_or_else(|e| {
                panic!("connect: {e}; log:\n{}", self.log_text());
            })
    }

    async fn clients(&self, n: usize) -> Vec<Client> {
        let mut v = Vec::with_capacity(n);
        for _ in 0..n {
            v.push(self.client().await);
        }
        v
    }
}

// ------------------------------------------------------------ /proc reads --

fn read_trim(path: &str) -> String {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .trim()
        .to_owned()
}

fn meminfo_kib(key: &str) -> u64 {
    status_field(
        &std::fs::read_to_string("/proc/meminfo").unwrap_or_default(),
        key,
    )
}

/// `Key:   123 kB` (or a bare number) from a /proc status-like text.
fn status_field(text: &str, key: &str) -> u64 {
    text.lines()
        .find_map(|l| {
            let rest = l.strip_prefix(key)?.strip_prefix(':')?;
            rest.split_whitespace().next()?.parse().ok()
        })
        .unwrap_or(0)
}

fn proc_status_kib(pid: u32, key: &str) -> u64 {
    status_field(
        &std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default(),
        key,
    )
}

/// utime + stime of the whole process, seconds.
fn cpu_secs(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the parenthesised comm; utime and stime are fields 14, 15.
    let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks: u64 = f.get(11).and_then(|x| x.parse().ok()).unwrap_or(0)
        + f.get(12).and_then(|x| x.parse().ok()).unwrap_or(0);
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    ticks as f64 / hz
}

/// Per-thread (tid, name, voluntary, involuntary) context switches.
fn thread_switches(pid: u32) -> Vec<(u32, String, u64, u64)> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return out;
    };
    for e in rd.flatten() {
        let Ok(tid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let base = e.path();
        let status = std::fs::read_to_string(base.join("status")).unwrap_or_default();
        let name = std::fs::read_to_string(base.join("comm"))
            .unwrap_or_default()
            .trim()
            .to_owned();
        out.push((
            tid,
            name,
            status_field(&status, "voluntary_ctxt_switches"),
            status_field(&status, "nonvoluntary_ctxt_switches"),
        ));
    }
    out.sort();
    out
}

fn fs_type(p: &Path) -> String {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(p.as_os_str().as_bytes()).unwrap_or_default();
    // SAFETY: statfs fills the zeroed struct we pass; c is NUL-terminated.
    let mut s: libc::statfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statfs(c.as_ptr(), &mut s) } != 0 {
        return "unknown".into();
    }
    #[allow(clippy::unnecessary_cast)]
    match s.f_type as i64 {
        0xEF53 => "ext4".into(),
        0x0102_1994 => "tmpfs".into(),
        0x5846_5342 => "xfs".into(),
        0x9123_683E => "btrfs".into(),
        0x794C_7630 => "overlayfs".into(),
        0x2FC1_2FC1 => "zfs".into(),
        0xF2F5_2010 => "f2fs".into(),
        other => format!("0x{other:x}"),
    }
}

// -------------------------------------------------------- measured loops --

/// A connection the measured loop drives: the daemon through the client
/// library, or the raw echo baseline through the same framing functions.
enum Conn {
    Syncd(Client),
    Echo { stream: Stream, request: Vec<u8> },
}

#[derive(Clone, Copy, PartialEq)]
enum Op {
    Put,
    Get,
    Echo,
}

async fn one_op(conn: &mut Conn, op: Op, client: usize, i: u64) {
    match (op, conn) {
        (Op::Put, Conn::Syncd(c)) => {
            c.put(COLLECTION, None, doc(client, i)).await.expect("put");
        }
        (Op::Get, Conn::Syncd(c)) => {
            c.get(COLLECTION, READ_ID).await.expect("get");
        }
        (Op::Echo, Conn::Echo { stream, request }) => {
            let mut w = &*stream;
            write_frame(&mut w, request).await.expect("echo write");
            let mut r = &*stream;
            read_frame(&mut r, 1 << 24)
                .await
                .expect("echo read")
                .expect("echo server closed");
        }
        _ => unreachable!("op does not fit the connection"),
    }
}

fn doc(client: usize, i: u64) -> Value {
    json!({"title": "buy milk", "done": false, "client": client, "n": i})
}

/// All connections run `op` in a loop, each waiting for its reply before the
/// next request, for `dur`. Throughput counts every op finished by the time
/// the last connection stopped.
async fn run_loop(conns: Vec<Conn>, op: Op, dur: Duration) -> (Vec<Conn>, Run) {
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
fn fsync_run(file: &mut File, record: &[u8], dur: Duration) -> Run {
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

// ---------------------------------------------------------------- writes --

fn writes(rt: &tokio::runtime::Runtime, o: &Opts, report: &mut Report) {
    eprintln!(
        "harness: writes: clients {:?}, {} reps x {} s",
        o.clients, o.reps, o.secs
    );
    let d = start_daemon(&o.bin);
    let pid = d.pid();
    let base_dir = d.dir.path().join("baseline");
    std::fs::create_dir_all(&base_dir).expect("baseline dir");
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(base_dir.join("fsync.log"))
        .expect("baseline file");
    let record = vec![b'x'; o.record_bytes];

    // Connections for every client count, warmed up once.
    let mut pools: Vec<Vec<Conn>> = Vec::new();
    for &n in &o.clients {
        let conns: Vec<Conn> = rt
            .block_on(d.clients(n))
            .into_iter()
            .map(Conn::Syncd)
            .collect();
        let (conns, _) = rt.block_on(run_loop(conns, Op::Put, o.warmup()));
        pools.push(conns);
    }
    let _ = fsync_run(&mut file, &record, o.warmup());

    let mut base_runs = Vec::new();
    let mut runs: Vec<Vec<Run>> = vec![Vec::new(); o.clients.len()];
    let mut cpu: Vec<Vec<f64>> = vec![Vec::new(); o.clients.len()];
    for rep in 0..o.reps {
        let b = fsync_run(&mut file, &record, o.dur());
        eprintln!("  rep {}: fsync baseline {:.0}/s", rep + 1, b.per_s);
        base_runs.push(b);
        for (k, &n) in o.clients.iter().enumerate() {
            let conns = std::mem::take(&mut pools[k]);
            let c0 = cpu_secs(pid);
            let t0 = Instant::now();
            let (conns, r) = rt.block_on(run_loop(conns, Op::Put, o.dur()));
            cpu[k].push((cpu_secs(pid) - c0) / t0.elapsed().as_secs_f64());
            pools[k] = conns;
            eprintln!(
                "  rep {}: {n} clients {:.0} writes/s p50 {:.0} us p99 {:.0} us",
                rep + 1,
                r.per_s,
                r.p50_us,
                r.p99_us
            );
            runs[k].push(r);
        }
    }
    drop(pools);

    let base = summarize(&base_runs);
    let base_per_s: Vec<f64> = base_runs.iter().map(|r| r.per_s).collect();
    report.section(
        "writes: durable put, one request in flight per connection",
        &[
            "clients",
            "writes/s",
            "min..max",
            "p50 us",
            "p99 us",
            "x fsync baseline",
            "daemon cpu %",
            "cpu us/write",
        ],
    );
    report.row(vec![
        "fsync baseline".into(),
        f0(base.per_s),
        format!("{}..{}", f0(base.min_per_s), f0(base.max_per_s)),
        f0(base.p50_us),
        f0(base.p99_us),
        "1.00".into(),
        "-".into(),
        "-".into(),
    ]);
    report.json(json!({
        "scenario": "writes_baseline_fsync",
        "record_bytes": o.record_bytes,
        "writes_per_s": base.per_s,
        "min_per_s": base.min_per_s,
        "max_per_s": base.max_per_s,
        "p50_us": base.p50_us,
        "p99_us": base.p99_us,
        "ops": base.ops,
        "reps": o.reps,
    }));
    for (k, &n) in o.clients.iter().enumerate() {
        let s = summarize(&runs[k]);
        let per_s: Vec<f64> = runs[k].iter().map(|r| r.per_s).collect();
        let x = ratio(&per_s, &base_per_s);
        let cpu_pct = median(&cpu[k]) * 100.0;
        let cpu_per_write = median(
            &cpu[k]
                .iter()
                .zip(&per_s)
                .map(|(c, w)| c / w * 1e6)
                .collect::<Vec<_>>(),
        );
        report.row(vec![
            n.to_string(),
            f0(s.per_s),
            format!("{}..{}", f0(s.min_per_s), f0(s.max_per_s)),
            f0(s.p50_us),
            f0(s.p99_us),
            f2(x),
            f0(cpu_pct),
            f0(cpu_per_write),
        ]);
        report.json(json!({
            "scenario": "writes",
            "clients": n,
            "writes_per_s": s.per_s,
            "min_per_s": s.min_per_s,
            "max_per_s": s.max_per_s,
            "p50_us": s.p50_us,
            "p99_us": s.p99_us,
            "ratio_vs_fsync_baseline": x,
            "daemon_cpu_pct": cpu_pct,
            "daemon_cpu_us_per_write": cpu_per_write,
            "ops": s.ops,
            "reps": o.reps,
            "target_writes_per_s": if n == 64 { json!(50_000) } else { Value::Null },
        }));
    }
}

// ----------------------------------------------------------------- reads --

/// The echo baseline's server: one thread running a single-threaded tokio
/// event loop (the daemon's I/O model, minus its work). It reads a 4-byte
/// big-endian length and the body, and answers with a prebuilt frame of the
/// daemon's reply size. The listener is bound before this returns.
fn echo_server(path: &Path, reply_len: usize) {
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

async fn echo_conns(path: &Path, n: usize, request: &[u8]) -> Vec<Conn> {
    let mut v = Vec::with_capacity(n);
    for _ in 0..n {
        let name = path.to_fs_name::<GenericFilePath>().expect("echo name");
        let stream = Stream::connect(name).await.expect("echo connect");
        v.push(Conn::Echo {
            stream,
            request: request.to_vec(),
        });
    }
    v
}

fn reads(rt: &tokio::runtime::Runtime, o: &Opts, report: &mut Report) {
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

// ---------------------------------------------------------------- memory --

/// Median of a few VmRSS samples, KiB.
fn rss_kib(pid: u32, samples: usize) -> f64 {
    let mut v = Vec::new();
    for i in 0..samples {
        if i > 0 {
            std::thread::sleep(Duration::from_millis(100));
        }
        v.push(proc_status_kib(pid, "VmRSS") as f64);
    }
    median(&v)
}

fn memory(rt: &tokio::runtime::Runtime, o: &Opts, report: &mut Report) {
    eprintln!("harness: memory: {} ops from {} writers", o.ops, o.writers);
    let samples = if o.smoke { 1 } else { 5 };
    let mut d = start_daemon(&o.bin);
    let settle = Duration::from_millis(if o.smoke { 50 } else { 500 });
    std::thread::sleep(settle);
    let idle_rss = rss_kib(d.pid(), samples);
    let idle_hwm = proc_status_kib(d.pid(), "VmHWM");

    // Fill: writers split the ops between them.
    let t0 = Instant::now();
    let depth = rt.block_on(async {
        let clients = d.clients(o.writers).await;
        let mut tasks = Vec::new();
        for (w, mut c) in clients.into_iter().enumerate() {
            let n = o.ops / o.writers as u64 + u64::from((w as u64) < o.ops % o.writers as u64);
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
    let fill_secs = t0.elapsed().as_secs_f64();
    std::thread::sleep(Duration::from_secs(1).min(settle * 2));
    let filled_rss = rss_kib(d.pid(), samples);
    let filled_hwm = proc_status_kib(d.pid(), "VmHWM");
    let store_bytes = std::fs::metadata(d.dir.path().join("data/syncd.redb"))
        .map(|m| m.len())
        .unwrap_or(0);

    // The same store after a restart: what a daemon that comes up with a
    // long queue costs.
    d.restart();
    let depth_after =
        rt.block_on(async { d.client().await.status().await.expect("status").queue_depth });
    std::thread::sleep(settle);
    let restarted_rss = rss_kib(d.pid(), samples);
    let restarted_hwm = proc_status_kib(d.pid(), "VmHWM");
    d.stop();

    let mib = |k: f64| k / 1024.0;
    let fill_rate = o.ops as f64 / fill_secs;
    report.section(
        &format!("memory: VmRSS with ops queued (no backend); target <= 32 MiB at 1,000,000; this run {} ops", o.ops),
        &["daemon", "queue depth", "RSS MiB", "x idle RSS", "peak (VmHWM) MiB"],
    );
    let rows = [
        ("fresh, idle (baseline)", 0, idle_rss, idle_hwm),
        ("after filling the queue", depth, filled_rss, filled_hwm),
        (
            "restarted on that store",
            depth_after,
            restarted_rss,
            restarted_hwm,
        ),
    ];
    for (what, q, rss, hwm) in rows {
        report.row(vec![
            what.into(),
            q.to_string(),
            f2(mib(rss)),
            f2(rss / idle_rss),
            f2(mib(hwm as f64)),
        ]);
    }
    report.note(format!(
        "fill: {} writers, {:.1} s, {:.0} writes/s; store file {:.0} MiB",
        o.writers,
        fill_secs,
        fill_rate,
        store_bytes as f64 / 1048576.0
    ));
    for (what, q, rss, hwm) in rows {
        report.json(json!({
            "scenario": "memory",
            "state": what,
            "queue_depth": q,
            "rss_mib": mib(rss),
            "ratio_vs_idle_rss": rss / idle_rss,
            "vm_hwm_mib": mib(hwm as f64),
            "target_rss_mib": 32,
            "ops_requested": o.ops,
        }));
    }
    report.json(json!({
        "scenario": "memory_fill",
        "ops": o.ops,
        "writers": o.writers,
        "secs": fill_secs,
        "writes_per_s": fill_rate,
        "store_bytes": store_bytes,
    }));
}

// ------------------------------------------------------------------ idle --

fn idle(rt: &tokio::runtime::Runtime, o: &Opts, report: &mut Report) {
    eprintln!(
        "harness: idle: {} windows x {} s",
        o.idle_windows, o.idle_secs
    );
    let d = start_daemon(&o.bin);
    let pid = d.pid();
    // One short conversation like any app's, then silence.
    let depth = rt.block_on(async { d.client().await.status().await.expect("status").queue_depth });
    assert_eq!(depth, 0, "fresh daemon has a queue");
    std::thread::sleep(Duration::from_millis(if o.smoke { 50 } else { 1000 }));
    let window = Duration::from_secs_f64(o.idle_secs);
    let mut rates = Vec::new();
    let mut per_thread: std::collections::BTreeMap<String, u64> = Default::default();
    let mut threads = 0;
    for rep in 0..o.idle_windows {
        let a = thread_switches(pid);
        let t0 = Instant::now();
        std::thread::sleep(window);
        let b = thread_switches(pid);
        let secs = t0.elapsed().as_secs_f64();
        threads = b.len();
        let mut total = 0;
        for (tid, name, v, nv) in &b {
            let before = a
                .iter()
                .find(|x| x.0 == *tid)
                .map(|x| x.2 + x.3)
                .unwrap_or(0);
            let diff = (v + nv).saturating_sub(before);
            total += diff;
            if diff > 0 {
                *per_thread.entry(name.clone()).or_default() += diff;
            }
        }
        // A thread that appeared or vanished in the window is a wake-up too.
        let born = b.iter().filter(|x| !a.iter().any(|y| y.0 == x.0)).count();
        let died = a.iter().filter(|x| !b.iter().any(|y| y.0 == x.0)).count();
        total += (born + died) as u64;
        eprintln!(
            "  window {}: {total} context switches in {secs:.1} s ({} threads; {born} new, {died} gone)",
            rep + 1,
            b.len()
        );
        rates.push(total as f64 / secs);
    }
    let rate = median(&rates);
    let who = if per_thread.is_empty() {
        "-".to_owned()
    } else {
        per_thread
            .iter()
            .map(|(k, v)| format!("{k}:{v}"))
            .collect::<Vec<_>>()
            .join(" ")
    };
    report.section(
        "idle: context switches of all daemon threads, empty queue, no backend; target 0/s",
        &[
            "windows",
            "window s",
            "threads",
            "switches/s (median)",
            "max",
            "threads that woke (all windows)",
        ],
    );
    report.row(vec![
        o.idle_windows.to_string(),
        format!("{}", o.idle_secs),
        threads.to_string(),
        f2(rate),
        f2(rates.iter().cloned().fold(0.0, f64::max)),
        who.clone(),
    ]);
    report.json(json!({
        "scenario": "idle",
        "switches_per_s": rate,
        "max_switches_per_s": rates.iter().cloned().fold(0.0, f64::max),
        "window_secs": o.idle_secs,
        "windows": o.idle_windows,
        "threads": threads,
        "woken_threads": per_thread,
        "target_switches_per_s": 0,
    }));
}

// ------------------------------------------------------------------ live --

/// Live sync: two daemons on one reference backend (default settings); a
/// put through A's client, timed until B's watcher gets the `changed` event
/// for it. Sequential, so each sample is one change's whole trip: A's
/// commit, push, the backend's commit, B's held pull, B's commit, the event.
fn live(rt: &tokio::runtime::Runtime, o: &Opts, report: &mut Report) {
    let samples = if o.smoke { 5 } else { 300 };
    eprintln!("harness: live: {samples} changes from device A to device B");
    let backend = Backend::start(&[]);
    let cfg = format!("[backend]\nurl = {:?}\n", backend.url());
    let a = Daemon::start_with(&launch(&o.bin), &cfg);
    let b = Daemon::start_with(&launch(&o.bin), &cfg);
    let deadline = Instant::now() + Duration::from_secs(20);
    let live = |d: &Daemon| {
        rt.block_on(async { d.client().await.status().await.expect("status") })
            .remote_changes
            .as_deref()
            == Some("live")
    };
    while !(live(&a) && live(&b)) {
        assert!(Instant::now() < deadline, "devices never went live");
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut lat_us: Vec<u32> = rt.block_on(async {
        let mut writer = a.client().await;
        let mut watcher = b.client().await;
        watcher.watch(&["live".to_owned()]).await.expect("watch");
        let mut out = Vec::with_capacity(samples);
        for i in 0..samples {
            let id = format!("r{i}");
            let t0 = Instant::now();
            writer
                .put("live", Some(&id), json!({"i": i}))
                .await
                .expect("put");
            loop {
                let ev = tokio::time::timeout(Duration::from_secs(10), watcher.next_event())
                    .await
                    .expect("no event within 10 s")
                    .expect("event");
                if matches!(&ev, syncd::domain::Event::Changed { id: got, .. } if *got == id) {
                    break;
                }
            }
            out.push(t0.elapsed().as_micros().min(u32::MAX as u128) as u32);
        }
        out
    });
    lat_us.sort_unstable();
    let (p50, p99) = (pct(&lat_us, 0.5) / 1000.0, pct(&lat_us, 0.99) / 1000.0);
    let max = lat_us.last().copied().unwrap_or(0) as f64 / 1000.0;
    report.section(
        "live: a put on device A until device B's watch has it (loopback, default settings); target p50 < 100 ms, p99 < 500 ms",
        &["changes", "p50 ms", "p99 ms", "max ms"],
    );
    report.row(vec![samples.to_string(), f2(p50), f2(p99), f2(max)]);
    report.json(json!({
        "scenario": "live",
        "changes": samples,
        "p50_ms": p50,
        "p99_ms": p99,
        "max_ms": max,
        "target_p50_ms": 100,
        "target_p99_ms": 500,
    }));
}
