//! Load generator for the reference backend: N simulated devices push
//! batches and pull the change feed through the HTTP protocol (hyper
//! client), against the redb store, one node on PostgreSQL, and two nodes on
//! one PostgreSQL database (devices spread over the nodes).
//!
//! ```text
//! cargo bench --bench backend_load                 # full run (release)
//! cargo bench --bench backend_load -- --secs 10 --devices 64 --batch 20
//! cargo bench --bench backend_load -- --devices 16 --batch 50 --users
//! ```
//!
//! With `--users`, the nodes run in users mode (revision 3, HS256 tokens)
//! and every device is its own user, writing into its private scope and
//! pulling it with `POST v1/pull`: writes of different devices are then in
//! different scopes, which the PostgreSQL store orders independently.
//!
//! Why a bench of its own: the PostgreSQL store exists to scale the backend
//! out, and whether it does (and what one node costs against redb) is a
//! number, measured here and reported in `docs/performance.md` and
//! `docs/scaling.md`. Each device loops: one `POST v1/ops/batch` of `batch`
//! ops (half creates, half updates of its own records, with the right
//! `base_version`), then one `GET v1/changes` from its cursor. Reported per
//! configuration: applied ops/s, batches/s, and push and pull latency
//! p50/p99. PostgreSQL runs with fsync on (redb commits durably too).
//!
//! Without `--bench` (`cargo test --all-targets`) it does a short smoke run
//! with two devices that checks that everything works and measures nothing.

#[path = "../tests/common_pg/mod.rs"]
mod common_pg;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use serde_json::{json, Value};

use common_pg::Pg;

type Http = Client<HttpConnector, Full<Bytes>>;

#[derive(Debug, Clone, Copy)]
struct Opts {
    secs: f64,
    devices: usize,
    batch: usize,
    smoke: bool,
    users: bool,
}

fn opts() -> Opts {
    let args: Vec<String> = std::env::args().collect();
    let smoke = !args.iter().any(|a| a == "--bench");
    let num = |name: &str, default: f64| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    let (secs, devices) = if smoke { (0.5, 2.0) } else { (8.0, 32.0) };
    Opts {
        secs: num("--secs", secs),
        devices: num("--devices", devices) as usize,
        batch: num("--batch", 10.0) as usize,
        smoke,
        users: args.iter().any(|a| a == "--users"),
    }
}

/// A `syncd backend` process; killed on drop.
struct Node {
    child: Child,
    addr: String,
}

impl Node {
    fn start(store_args: &[String]) -> Node {
        let mut child = Command::new(env!("CARGO_BIN_EXE_syncd"))
            .args(["backend", "--listen", "127.0.0.1:0"])
            .args(store_args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn syncd backend");
        let addr = common_pg::listening_addr(&mut child);
        Node { child, addr }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What one device measured.
#[derive(Default)]
struct Tally {
    ops: u64,
    push_us: Vec<u64>,
    pull_us: Vec<u64>,
}

async fn request(
    http: &Http,
    method: &str,
    url: String,
    token: Option<&str>,
    body: Option<Value>,
) -> (u16, Value) {
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let mut req = hyper::Request::builder()
        .method(method)
        .uri(url)
        .header("content-type", "application/json");
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    let req = req.body(Full::new(Bytes::from(body))).expect("request");
    let resp = http.request(req).await.expect("http");
    let status = resp.status().as_u16();
    let bytes = resp.into_body().collect().await.expect("body").to_bytes();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

/// The next batch of device `dev`: creates, and updates of its records.
fn batch(dev: usize, n: &mut u64, mine: &[(String, u64)], size: usize) -> Vec<Value> {
    (0..size)
        .map(|i| {
            *n += 1;
            let op_id = format!("d{dev}-{n}");
            let base = json!({"op_id": op_id, "client_id": format!("d{dev}"),
                "collection": "load", "local_id": op_id, "client_ts": *n,
                "data": {"n": *n, "pad": "x".repeat(64)}});
            let mut op = base;
            match mine.get(i) {
                Some((id, v)) if i % 2 == 1 => {
                    op["kind"] = json!("update");
                    op["id"] = json!(id);
                    op["base_version"] = json!(v);
                }
                _ => op["kind"] = json!("create"),
            }
            op
        })
        .collect()
}

/// A device's server and, in users mode, its token.
struct Target {
    base: String,
    token: Option<String>,
}

async fn device(dev: usize, http: Http, to: Target, o: Opts, stop: Instant) -> Tally {
    let (base, token) = (to.base, to.token.as_deref());
    let (mut t, mut n, mut cursor) = (Tally::default(), 0u64, "0".to_owned());
    let mut mine: Vec<(String, u64)> = Vec::new();
    while Instant::now() < stop {
        let ops = batch(dev, &mut n, &mine, o.batch);
        let t0 = Instant::now();
        let (st, reply) = request(
            &http,
            "POST",
            format!("{base}v1/ops/batch"),
            token,
            Some(json!({"ops": ops})),
        )
        .await;
        t.push_us.push(t0.elapsed().as_micros() as u64);
        assert_eq!(st, 200, "batch: {reply}");
        let results = reply["results"].as_array().cloned().unwrap_or_default();
        mine.clear();
        for r in results.iter().filter(|r| r["status"] == json!(200)) {
            t.ops += 1;
            let rec = &r["record"];
            mine.push((
                rec["id"].as_str().unwrap_or_default().to_owned(),
                rec["version"].as_u64().unwrap_or(0),
            ));
        }
        let t0 = Instant::now();
        cursor = pull(&http, &base, token, dev, &cursor).await;
        t.pull_us.push(t0.elapsed().as_micros() as u64);
    }
    t
}

/// One pull from `cursor`: `v1/changes`, or in users mode `v1/pull` of the
/// device's private scope. Returns the next cursor.
async fn pull(http: &Http, base: &str, token: Option<&str>, dev: usize, cursor: &str) -> String {
    if token.is_none() {
        let url = format!("{base}v1/changes?limit=1000&since={cursor}");
        let (st, page) = request(http, "GET", url, None, None).await;
        assert_eq!(st, 200, "changes: {page}");
        return page["cursor"].as_str().unwrap_or("0").to_owned();
    }
    let scope = format!("user:d{dev}");
    let body = json!({"scopes": {&scope: cursor}, "limit": 1000});
    let (st, page) = request(http, "POST", format!("{base}v1/pull"), token, Some(body)).await;
    assert_eq!(st, 200, "pull: {page}");
    page["scopes"][&scope]["cursor"]
        .as_str()
        .unwrap_or("0")
        .to_owned()
}

/// The HS256 secret file of a users-mode run, and a token per device
/// (minted by `syncd backend token`, as an app's auth server would).
struct Users {
    secret: PathBuf,
    tokens: Vec<String>,
}

impl Users {
    fn new(dir: &std::path::Path, devices: usize) -> Users {
        let secret = dir.join("jwt.secret");
        std::fs::write(&secret, "bench-secret-bench-secret-bench-secret-0123").expect("secret");
        let tokens = (0..devices)
            .map(|d| {
                let out = Command::new(env!("CARGO_BIN_EXE_syncd"))
                    .args(["backend", "token", "--secret-file"])
                    .arg(&secret)
                    .args(["--sub", &format!("d{d}"), "--ttl", "1d"])
                    .output()
                    .expect("syncd backend token");
                assert!(
                    out.status.success(),
                    "{}",
                    String::from_utf8_lossy(&out.stderr)
                );
                String::from_utf8_lossy(&out.stdout).trim().to_owned()
            })
            .collect();
        Users { secret, tokens }
    }

    fn args(&self) -> Vec<String> {
        vec![
            "--auth-secret-file".into(),
            self.secret.display().to_string(),
        ]
    }
}

/// The machine's `(busy, total)` CPU ticks from `/proc/stat` (zeros where
/// there is none): whether a run was bound by the machine's cores, which
/// the load generator, the nodes and PostgreSQL all share.
fn cpu_ticks() -> (u64, u64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let Some(line) = stat.lines().find(|l| l.starts_with("cpu ")) else {
        return (0, 0);
    };
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    let total: u64 = v.iter().sum();
    // idle and iowait
    let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
    (total - idle, total)
}

/// The share of the machine's CPU time that was busy between two readings.
fn busy_share(a: (u64, u64), b: (u64, u64)) -> f64 {
    let total = b.1.saturating_sub(a.1);
    if total == 0 {
        return 0.0;
    }
    (b.0.saturating_sub(a.0) as f64 / total as f64 * 100.0).round() / 100.0
}

fn pct(v: &mut [u64], p: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_unstable();
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[i] as f64 / 1000.0
}

/// Runs `o.devices` devices spread over `nodes`; prints one table row and one JSON line.
fn run(rt: &tokio::runtime::Runtime, name: &str, nodes: &[Node], users: Option<&Users>, o: Opts) {
    let http: Http = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(o.devices)
        .build(HttpConnector::new());
    let stop = Instant::now() + Duration::from_secs_f64(o.secs);
    let cpu0 = cpu_ticks();
    let t0 = Instant::now();
    let tallies: Vec<Tally> = rt.block_on(async {
        let tasks: Vec<_> = (0..o.devices)
            .map(|d| {
                let to = Target {
                    base: format!("http://{}/", nodes[d % nodes.len()].addr),
                    token: users.map(|u| u.tokens[d].clone()),
                };
                tokio::spawn(device(d, http.clone(), to, o, stop))
            })
            .collect();
        let mut out = Vec::new();
        for t in tasks {
            out.push(t.await.expect("device task"));
        }
        out
    });
    let secs = t0.elapsed().as_secs_f64();
    let busy = busy_share(cpu0, cpu_ticks());
    let ops: u64 = tallies.iter().map(|t| t.ops).sum();
    let mut push: Vec<u64> = tallies
        .iter()
        .flat_map(|t| t.push_us.iter().copied())
        .collect();
    let mut pull: Vec<u64> = tallies
        .iter()
        .flat_map(|t| t.pull_us.iter().copied())
        .collect();
    let batches = push.len();
    let row = json!({"config": name, "devices": o.devices, "batch": o.batch, "users": o.users,
        "ops_per_s": (ops as f64 / secs).round(), "batches_per_s": (batches as f64 / secs).round(),
        "push_p50_ms": pct(&mut push, 0.5), "push_p99_ms": pct(&mut push, 0.99),
        "pull_p50_ms": pct(&mut pull, 0.5), "pull_p99_ms": pct(&mut pull, 0.99),
        "machine_cpu_busy": busy});
    println!(
        "{name:<16} devices {:>3}  ops/s {:>8}  push p50 {:>7.2} ms p99 {:>7.2} ms  pull p50 {:>6.2} ms p99 {:>6.2} ms",
        o.devices, row["ops_per_s"], row["push_p50_ms"], row["push_p99_ms"], row["pull_p50_ms"], row["pull_p99_ms"]
    );
    println!("{row}");
    assert!(ops > 0, "{name}: no op applied");
}

fn main() {
    let o = opts();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let dir = tempfile::tempdir().expect("tempdir");
    let data: PathBuf = dir.path().join("redb");
    let device_counts: Vec<usize> = if o.smoke {
        vec![o.devices]
    } else {
        vec![1, o.devices]
    };
    for &devices in &device_counts {
        let o = Opts { devices, ..o };
        let users = o.users.then(|| Users::new(dir.path(), devices));
        let auth = users.as_ref().map(Users::args).unwrap_or_default();
        {
            let sub = data.join(devices.to_string());
            let mut args = vec!["--data".into(), sub.display().to_string()];
            args.extend(auth.iter().cloned());
            let node = Node::start(&args);
            run(
                &rt,
                "redb 1 node",
                std::slice::from_ref(&node),
                users.as_ref(),
                o,
            );
        }
        let pg = Arc::new(Pg::start_with(!o.smoke));
        for nodes in [1usize, 2] {
            let db = format!("load_{devices}_{nodes}");
            pg.create_db(&db);
            let url = pg.url(&db);
            let mut args = vec!["--postgres".into(), url.clone()];
            args.extend(auth.iter().cloned());
            let ns: Vec<Node> = (0..nodes).map(|_| Node::start(&args)).collect();
            run(
                &rt,
                &format!("postgres {nodes} node"),
                &ns,
                users.as_ref(),
                o,
            );
        }
    }
}
