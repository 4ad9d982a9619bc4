//! Load generator for the reference backend: N simulated devices push
//! batches and pull the change feed through the HTTP protocol (hyper
//! client), against the redb store, one node on PostgreSQL, and two nodes on
//! one PostgreSQL database (devices spread over the nodes).
//!
//! ```text
//! cargo bench --bench backend_load                 # full run (release)
//! cargo bench --bench backend_load -- --secs 10 --devices 64 --batch 20
//! ```
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

use std::io::BufRead;
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
        let mut line = String::new();
        let out = child.stdout.take().expect("stdout");
        std::io::BufReader::new(out)
            .read_line(&mut line)
            .expect("read");
        let addr = line
            .trim()
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("backend did not start: {line:?}"))
            .to_owned();
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

async fn request(http: &Http, method: &str, url: String, body: Option<Value>) -> (u16, Value) {
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let req = hyper::Request::builder()
        .method(method)
        .uri(url)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)))
        .expect("request");
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

async fn device(dev: usize, http: Http, base: String, o: Opts, stop: Instant) -> Tally {
    let (mut t, mut n, mut cursor) = (Tally::default(), 0u64, "0".to_owned());
    let mut mine: Vec<(String, u64)> = Vec::new();
    while Instant::now() < stop {
        let ops = batch(dev, &mut n, &mine, o.batch);
        let t0 = Instant::now();
        let (st, reply) = request(
            &http,
            "POST",
            format!("{base}v1/ops/batch"),
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
        let (st, page) = request(
            &http,
            "GET",
            format!("{base}v1/changes?limit=1000&since={cursor}"),
            None,
        )
        .await;
        t.pull_us.push(t0.elapsed().as_micros() as u64);
        assert_eq!(st, 200, "changes: {page}");
        cursor = page["cursor"].as_str().unwrap_or("0").to_owned();
    }
    t
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
fn run(rt: &tokio::runtime::Runtime, name: &str, nodes: &[Node], o: Opts) {
    let http: Http = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(o.devices)
        .build(HttpConnector::new());
    let stop = Instant::now() + Duration::from_secs_f64(o.secs);
    let t0 = Instant::now();
    let tallies: Vec<Tally> = rt.block_on(async {
        let tasks: Vec<_> = (0..o.devices)
            .map(|d| {
                let base = format!("http://{}/", nodes[d % nodes.len()].addr);
                tokio::spawn(device(d, http.clone(), base, o, stop))
            })
            .collect();
        let mut out = Vec::new();
        for t in tasks {
            out.push(t.await.expect("device task"));
        }
        out
    });
    let secs = t0.elapsed().as_secs_f64();
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
    let row = json!({"config": name, "devices": o.devices, "batch": o.batch,
        "ops_per_s": (ops as f64 / secs).round(), "batches_per_s": (batches as f64 / secs).round(),
        "push_p50_ms": pct(&mut push, 0.5), "push_p99_ms": pct(&mut push, 0.99),
        "pull_p50_ms": pct(&mut pull, 0.5), "pull_p99_ms": pct(&mut pull, 0.99)});
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
        {
            let sub = data.join(devices.to_string());
            let node = Node::start(&["--data".into(), sub.display().to_string()]);
            run(&rt, "redb 1 node", std::slice::from_ref(&node), o);
        }
        let pg = Arc::new(Pg::start_with(!o.smoke));
        for nodes in [1usize, 2] {
            let db = format!("load_{devices}_{nodes}");
            pg.create_db(&db);
            let url = pg.url(&db);
            let ns: Vec<Node> = (0..nodes)
                .map(|_| Node::start(&["--postgres".into(), url.clone()]))
                .collect();
            run(&rt, &format!("postgres {nodes} node"), &ns, o);
        }
    }
}
