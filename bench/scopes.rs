//! `scopes`: what users and scopes (protocol revision 3) cost a device.
//!
//! A reference backend in users mode (`--auth-secret-file`) holds a scope
//! `big` of N small records, seeded once with raw `POST v1/ops/batch`
//! requests (not timed). Each repetition, on fresh devices:
//!
//! - **back-fill** (measured): device A (alice, a token with `big` and
//!   `team-1`, `[sync] scopes = ["team-1", "user:alice"]`) is live on its
//!   two scopes, then `subscribe big --wait`: subscribe to the reply (sent
//!   on `scope_synced`) → records/s. Meanwhile device B (bob, `team-1`)
//!   puts one record at a time into `team-1`, each timed until A's watch
//!   has its `changed` event (as `live` does): p50/p99 during a back-fill.
//! - **v1/changes pull** (baseline): the same N records in a token-mode
//!   backend (revision 2), pulled by a fresh device: backend spawn (the
//!   device is configured for it and waits, as in `drain`) → the last
//!   record's `changed` event.
//! - **no back-fill** (baseline): a fresh device A as above, B's records
//!   timed the same way for as long as this rep's back-fill took, with no
//!   back-fill running.
//!
//! The last seeded record is the only one of collection `marker`: the
//! feeds are ordered and each page lands in one transaction, so its event
//! means every record before it is on the device.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use syncd::client::Client;
use syncd::domain::Event;

use crate::backend::{free_port, RefBackend};
use crate::common::Daemon;
use crate::daemon::{launch, Clients};
use crate::procfs::cpu_secs;
use crate::report::Report;
use crate::stats::{f0, f2, median, pct, ratio};
use crate::Opts;

const BIG: &str = "big";
const TEAM: &str = "team-1";
/// Collection of the seeded records (all but the last).
const SEEDED: &str = "todos";
/// Collection of the last seeded record.
const MARKER: &str = "marker";
/// Collection of B's timed records.
const LIVE: &str = "live";
/// The shared token of the revision-2 backend.
const SHARED_TOKEN: &str = "bench-shared-token";
/// Ops per seeding request.
const SEED_BATCH: usize = 500;
/// A's `[sync]`: live on its team and its own scope; `big` comes later.
const A_SYNC: &str = "[sync]\nscopes = [\"team-1\", \"user:alice\"]\n";

/// One repetition.
#[derive(Clone, Copy, Debug, Default)]
struct Rep {
    /// Subscribe → scope_synced.
    backfill_secs: f64,
    /// Subscribe → A's first event of a `big` record.
    backfill_first_ms: f64,
    backfill_daemon_cpu: f64,
    backfill_backend_cpu: f64,
    /// Backend spawn → the marker's event.
    pull_secs: f64,
    /// Backend spawn → the device's first event of a seeded record.
    pull_first_ms: f64,
    pull_daemon_cpu: f64,
    pull_backend_cpu: f64,
    during: Lat,
    idle: Lat,
}

impl Rep {
    fn backfill_per_s(&self, n: u64) -> f64 {
        n as f64 / self.backfill_secs
    }
    fn pull_per_s(&self, n: u64) -> f64 {
        n as f64 / self.pull_secs
    }
    /// From the first record's event on: without the start-up (the
    /// revision-2 pull's includes the backend's start and the device's
    /// next probe).
    fn backfill_steady(&self, n: u64) -> f64 {
        n as f64 / (self.backfill_secs - self.backfill_first_ms / 1000.0)
    }
    fn pull_steady(&self, n: u64) -> f64 {
        n as f64 / (self.pull_secs - self.pull_first_ms / 1000.0)
    }
}

/// B's timed records in one window.
#[derive(Clone, Copy, Debug, Default)]
struct Lat {
    samples: usize,
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
    /// The watch fell behind (`resync_needed`) during a sample; the record
    /// was then looked up with `get`.
    resyncs: u64,
}

impl Lat {
    fn of(mut us: Vec<u32>, resyncs: u64) -> Lat {
        us.sort_unstable();
        Lat {
            samples: us.len(),
            p50_ms: pct(&us, 0.5) / 1000.0,
            p99_ms: pct(&us, 0.99) / 1000.0,
            max_ms: us.last().map_or(f64::NAN, |&m| m as f64 / 1000.0),
            resyncs,
        }
    }
}

/// A minimal HTTP/1.1 POST with a bearer token and `Connection: close`.
fn post(port: u16, token: &str, path: &str, body: &Value) -> (u16, Value) {
    use std::io::{Read, Write};
    let addr = format!("127.0.0.1:{port}");
    let mut s = std::net::TcpStream::connect(&addr).expect("connect backend");
    s.set_read_timeout(Some(Duration::from_secs(60))).ok();
    let body = body.to_string();
    let req = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).expect("write request");
    let mut resp = Vec::new();
    let _ = s.read_to_end(&mut resp);
    let text = String::from_utf8_lossy(&resp);
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text.split_once("\r\n\r\n").map_or("", |x| x.1);
    (status, serde_json::from_str(body).unwrap_or(Value::Null))
}

/// `n` small records written straight to the backend (into `scope`, or
/// none on a revision-2 backend); the last one is the marker.
fn seed(port: u16, token: &str, scope: Option<&str>, n: u64, tag: &str) {
    let mut i = 0;
    while i < n {
        let end = (i + SEED_BATCH as u64).min(n);
        let ops: Vec<Value> = (i..end)
            .map(|k| {
                let collection = if k + 1 == n { MARKER } else { SEEDED };
                let mut op = json!({
                    "op_id": format!("seed-{tag}-{k}"), "client_id": "bench-seeder",
                    "collection": collection, "kind": "create", "id": null,
                    "local_id": format!("seed-{tag}-{k}"), "base_version": null,
                    "data": {"title": "seeded record", "done": false, "n": k},
                    "client_ts": 1,
                });
                if let Some(s) = scope {
                    op["scope"] = json!(s);
                }
                op
            })
            .collect();
        let (st, body) = post(port, token, "/v1/ops/batch", &json!({ "ops": ops }));
        assert_eq!(st, 200, "seeding batch: {body}");
        let results = body["results"].as_array().map_or(0, Vec::len);
        assert_eq!(results as u64, end - i, "seeding batch results: {body}");
        i = end;
    }
}

/// The users-mode backend, its secret and the devices' token files.
struct Users {
    bin: PathBuf,
    backend: RefBackend,
    port: u16,
    secret: PathBuf,
    dir: tempfile::TempDir,
}

impl Users {
    fn start(o: &Opts) -> Users {
        let dir = tempfile::Builder::new()
            .prefix("syncd-bench.")
            .tempdir()
            .expect("tempdir");
        let secret = dir.path().join("jwt.secret");
        std::fs::write(&secret, b"a benchmark secret that is long enough for HS256")
            .expect("write secret");
        let port = free_port();
        let secret_arg = secret.display().to_string();
        let backend = RefBackend::start(
            &o.bin,
            port,
            &dir.path().join("data"),
            &["--auth-secret-file", &secret_arg],
        );
        Users {
            bin: o.bin.clone(),
            backend,
            port,
            secret,
            dir,
        }
    }

    /// `syncd backend token` for `sub`, read-write in `scopes`.
    fn token(&self, sub: &str, scopes: &[&str]) -> String {
        let mut cmd = std::process::Command::new(&self.bin);
        cmd.args(["backend", "token", "--secret-file"])
            .arg(&self.secret)
            .args(["--sub", sub, "--ttl", "1d"]);
        for s in scopes {
            cmd.args(["--scope", s]);
        }
        let out = cmd.output().expect("syncd backend token");
        assert!(
            out.status.success(),
            "syncd backend token: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// A fresh device of `sub` with its own token file.
    fn device(&self, bin: &Path, sub: &str, scopes: &[&str], extra: &str) -> Daemon {
        let file = self
            .dir
            .path()
            .join(format!("{sub}-{}.token", syncd::ids::IdGen::new().next()));
        std::fs::write(&file, self.token(sub, scopes)).expect("write token file");
        let cfg = format!(
            "[backend]\nurl = \"http://127.0.0.1:{}/\"\ntoken_file = {:?}\n\n{extra}",
            self.port,
            file.display().to_string()
        );
        Daemon::start_with(&launch(bin), &cfg)
    }
}

/// Waits until `d` pulls live and each of `scopes` has had its first sync.
fn wait_live(rt: &tokio::runtime::Runtime, d: &Daemon, scopes: &[&str]) {
    let deadline = Instant::now() + Duration::from_secs(60);
    rt.block_on(async {
        let mut c = d.client().await;
        loop {
            let live = c.status().await.expect("status").remote_changes.as_deref() == Some("live");
            let rows = c.scopes().await.expect("scopes");
            let synced = scopes.iter().all(|s| {
                rows.iter()
                    .any(|r| r.name == *s && r.first_sync_done && r.state == "live")
            });
            if live && synced {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "device never went live on {scopes:?}: {rows:?}\nlog:\n{}",
                d.log_text()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
}

/// Records of `collection` on the device, paging through `list`.
pub(crate) async fn count(c: &mut Client, collection: &str) -> u64 {
    let mut n = 0;
    let mut start: Option<String> = None;
    loop {
        let (page, next) = c
            .list(collection, start.as_deref(), Some(1000))
            .await
            .expect("list");
        n += page.len() as u64;
        match next {
            Some(k) => start = Some(k),
            None => return n,
        }
    }
}

/// B's records, one at a time, each timed until `watcher` (on A, watching
/// [`LIVE`]) has its event; until `stop` (and at least one sample).
async fn sample(
    mut writer: Client,
    mut watcher: Client,
    mut checker: Client,
    prefix: String,
    stop: Arc<AtomicBool>,
) -> (Vec<u32>, u64) {
    let mut out = Vec::new();
    let mut resyncs = 0;
    while out.is_empty() || !stop.load(Ordering::Relaxed) {
        let id = format!("{prefix}-{}", out.len());
        let t0 = Instant::now();
        writer
            .put_in_scope(LIVE, Some(&id), json!({"n": out.len()}), Some(TEAM))
            .await
            .expect("put on device B");
        loop {
            let ev = tokio::time::timeout(Duration::from_secs(30), watcher.next_event())
                .await
                .unwrap_or_else(|_| panic!("device A has no event for {id} within 30 s"))
                .expect("watch event");
            match ev {
                Event::Changed { id: got, .. } if got == id => break,
                Event::ResyncNeeded { .. } => {
                    resyncs += 1;
                    if checker.get(LIVE, &id).await.is_ok() {
                        break;
                    }
                }
                _ => {}
            }
        }
        out.push(t0.elapsed().as_micros().min(u32::MAX as u128) as u32);
    }
    (out, resyncs)
}

/// The time from `t0` to the first event `c` (watching one collection)
/// gets; the connection closes with it.
async fn first_event(mut c: Client, t0: Instant) -> f64 {
    let _ = c.next_event().await;
    t0.elapsed().as_secs_f64() * 1000.0
}

/// B's sampler against device `a`, started now.
async fn start_sampler(
    a: &Daemon,
    bob: &Daemon,
    prefix: String,
) -> (tokio::task::JoinHandle<(Vec<u32>, u64)>, Arc<AtomicBool>) {
    let writer = bob.client().await;
    let mut watcher = a.client().await;
    watcher.watch(&[LIVE.to_owned()]).await.expect("watch");
    let checker = a.client().await;
    let stop = Arc::new(AtomicBool::new(false));
    let task = tokio::spawn(sample(writer, watcher, checker, prefix, stop.clone()));
    (task, stop)
}

/// Device A subscribes `big` while B's records are timed.
fn backfill(
    rt: &tokio::runtime::Runtime,
    o: &Opts,
    u: &Users,
    bob: &Daemon,
    rep: usize,
    r: &mut Rep,
) {
    let mut a = u.device(&o.bin, "alice", &[BIG, TEAM], A_SYNC);
    wait_live(rt, &a, &[TEAM, "user:alice"]);
    let limit = Duration::from_secs(120.max(o.scope_records / 200));
    let (secs, first_ms, lat, d_cpu, b_cpu) = rt.block_on(async {
        let (sampler, stop) = start_sampler(&a, bob, format!("during-{rep}")).await;
        let mut sub = a.client().await;
        let mut first = a.client().await;
        first.watch(&[SEEDED.to_owned()]).await.expect("watch");
        let (d0, b0) = (cpu_secs(a.pid()), cpu_secs(u.backend.pid()));
        let t0 = Instant::now();
        let first = tokio::spawn(first_event(first, t0));
        tokio::time::timeout(limit, sub.subscribe(BIG, true))
            .await
            .unwrap_or_else(|_| panic!("back-fill of {BIG} not done within {limit:?}"))
            .expect("subscribe big --wait");
        let secs = t0.elapsed().as_secs_f64();
        let cpu = (cpu_secs(a.pid()) - d0, cpu_secs(u.backend.pid()) - b0);
        stop.store(true, Ordering::Relaxed);
        let (lat, resyncs) = sampler.await.expect("sampler");
        let first_ms = match first.is_finished() {
            true => first.await.expect("first event"),
            false => f64::NAN,
        };
        let rows = sub.scopes().await.expect("scopes");
        let big = rows.iter().find(|s| s.name == BIG).expect("big listed");
        assert!(big.first_sync_done, "{big:?}");
        assert_eq!(big.records, o.scope_records, "{big:?}");
        (secs, first_ms, Lat::of(lat, resyncs), cpu.0, cpu.1)
    });
    a.stop();
    r.backfill_secs = secs;
    r.backfill_first_ms = first_ms;
    r.backfill_daemon_cpu = d_cpu;
    r.backfill_backend_cpu = b_cpu;
    r.during = lat;
}

/// A fresh device A on its two scopes, B's records timed for `secs`.
fn no_backfill(
    rt: &tokio::runtime::Runtime,
    o: &Opts,
    u: &Users,
    bob: &Daemon,
    rep: usize,
    secs: f64,
) -> Lat {
    let mut a = u.device(&o.bin, "alice", &[BIG, TEAM], A_SYNC);
    wait_live(rt, &a, &[TEAM, "user:alice"]);
    let lat = rt.block_on(async {
        let (sampler, stop) = start_sampler(&a, bob, format!("idle-{rep}")).await;
        tokio::time::sleep(Duration::from_secs_f64(secs)).await;
        stop.store(true, Ordering::Relaxed);
        let (lat, resyncs) = sampler.await.expect("sampler");
        Lat::of(lat, resyncs)
    });
    a.stop();
    lat
}

/// A fresh device on the revision-2 backend (down at first, as in
/// `drain`): backend spawn → the marker's event.
fn changes_pull(rt: &tokio::runtime::Runtime, o: &Opts, data: &Path, r: &mut Rep) {
    let port = free_port();
    let token_file = data.with_extension("token");
    std::fs::write(&token_file, SHARED_TOKEN).expect("write token file");
    let cfg = format!(
        "[backend]\nurl = \"http://127.0.0.1:{port}/\"\ntoken_file = {:?}\n\n[sync]\n\
         backoff_initial_ms = 20\nbackoff_max_ms = 50\n",
        token_file.display().to_string()
    );
    let mut d = Daemon::start_with(&launch(&o.bin), &cfg);
    let limit = Duration::from_secs(120.max(o.scope_records / 200));
    let (secs, first_ms, b) = rt.block_on(async {
        let mut watcher = d.client().await;
        watcher.watch(&[MARKER.to_owned()]).await.expect("watch");
        let mut first = d.client().await;
        first.watch(&[SEEDED.to_owned()]).await.expect("watch");
        let mut checker = d.client().await;
        let t0 = Instant::now();
        let b = RefBackend::start(&o.bin, port, data, &["--token", SHARED_TOKEN]);
        let first = tokio::spawn(first_event(first, t0));
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let ev = tokio::time::timeout_at(deadline, watcher.next_event())
                .await
                .unwrap_or_else(|_| panic!("pull not done within {limit:?}"))
                .expect("watch event");
            match ev {
                Event::Changed { .. } => break,
                Event::ResyncNeeded { .. } => {
                    let (page, _) = checker.list(MARKER, None, Some(1)).await.expect("list");
                    if !page.is_empty() {
                        break;
                    }
                }
                _ => {}
            }
        }
        let secs = t0.elapsed().as_secs_f64();
        let first_ms = match first.is_finished() {
            true => first.await.expect("first event"),
            false => f64::NAN,
        };
        let n = count(&mut checker, SEEDED).await + count(&mut checker, MARKER).await;
        assert_eq!(n, o.scope_records, "records pulled");
        (secs, first_ms, b)
    });
    r.pull_secs = secs;
    r.pull_first_ms = first_ms;
    r.pull_daemon_cpu = cpu_secs(d.pid());
    r.pull_backend_cpu = cpu_secs(b.pid());
    drop(b);
    d.stop();
}

pub(crate) fn scopes(rt: &tokio::runtime::Runtime, o: &Opts, report: &mut Report) {
    let n = o.scope_records;
    eprintln!(
        "harness: scopes: back-fill of a {n}-record scope vs a v1/changes pull of as many, \
         team-1 latency during it vs without, {} reps",
        o.scope_reps
    );
    let t = Instant::now();
    let u = Users::start(o);
    seed(u.port, &u.token("seeder", &[BIG]), Some(BIG), n, BIG);
    // The revision-2 backend: seeded once, started again for every pull.
    let data = u.dir.path().join("changes-data");
    {
        let port = free_port();
        let _b = RefBackend::start(&o.bin, port, &data, &["--token", SHARED_TOKEN]);
        seed(port, SHARED_TOKEN, None, n, "changes");
    }
    // A device's first pull of scopes that are all empty is held for the
    // whole `wait` (25 s) before their first sync is done: one record in
    // team-1 makes the server answer at once.
    seed(u.port, &u.token("seeder", &[TEAM]), Some(TEAM), 1, "team");
    let bob = u.device(&o.bin, "bob", &[TEAM], "");
    wait_live(rt, &bob, &[TEAM]);
    eprintln!(
        "  seeded both backends in {:.1} s",
        t.elapsed().as_secs_f64()
    );

    let mut reps = Vec::new();
    for rep in 0..o.scope_reps {
        let t = Instant::now();
        let mut r = Rep::default();
        backfill(rt, o, &u, &bob, rep, &mut r);
        changes_pull(rt, o, &data, &mut r);
        r.idle = no_backfill(rt, o, &u, &bob, rep, r.backfill_secs.max(1.0));
        eprintln!(
            "  rep {}: back-fill {:.0} rec/s ({:.2} s, first after {:.0} ms; cpu daemon {:.2} s, backend {:.2} s) \
             vs v1/changes {:.0} rec/s ({:.2} s, first after {:.0} ms); team-1 p50/p99 {:.2}/{:.2} ms ({} samples) \
             vs {:.2}/{:.2} ms ({}) without; rep took {:.0} s",
            rep + 1,
            r.backfill_per_s(n),
            r.backfill_secs,
            r.backfill_first_ms,
            r.backfill_daemon_cpu,
            r.backfill_backend_cpu,
            r.pull_per_s(n),
            r.pull_secs,
            r.pull_first_ms,
            r.during.p50_ms,
            r.during.p99_ms,
            r.during.samples,
            r.idle.p50_ms,
            r.idle.p99_ms,
            r.idle.samples,
            t.elapsed().as_secs_f64()
        );
        reps.push(r);
    }
    print_scopes(o, report, &reps);
}

fn print_scopes(o: &Opts, report: &mut Report, reps: &[Rep]) {
    let n = o.scope_records;
    let col = |f: &dyn Fn(&Rep) -> f64| reps.iter().map(f).collect::<Vec<f64>>();
    let med = |f: &dyn Fn(&Rep) -> f64| median(&col(f));
    let backfill = col(&|r| r.backfill_per_s(n));
    let pull = col(&|r| r.pull_per_s(n));
    let backfill_steady = col(&|r| r.backfill_steady(n));
    let pull_steady = col(&|r| r.pull_steady(n));
    let (d50, d99) = (col(&|r| r.during.p50_ms), col(&|r| r.during.p99_ms));
    let (i50, i99) = (col(&|r| r.idle.p50_ms), col(&|r| r.idle.p99_ms));
    report.section(
        &format!(
            "scopes: {n} records, back-fill of a scope (subscribe --wait) vs a fresh device's v1/changes pull; \
             team-1 put on B until A's watch has it, during the back-fill vs without"
        ),
        &[
            "pull",
            "rec/s",
            "min..max",
            "x v1/changes",
            "first rec ms",
            "rec/s after first",
            "x v1/changes",
            "daemon us/rec",
            "backend us/rec",
        ],
    );
    let range = |v: &[f64]| {
        format!(
            "{}..{}",
            f0(v.iter().cloned().fold(f64::INFINITY, f64::min)),
            f0(v.iter().cloned().fold(0.0, f64::max))
        )
    };
    let per_rec = |cpu: f64| f2(cpu / n as f64 * 1e6);
    report.row(vec![
        "back-fill (v1/pull, 3 scopes)".into(),
        f0(median(&backfill)),
        range(&backfill),
        f2(ratio(&backfill, &pull)),
        f0(med(&|r| r.backfill_first_ms)),
        f0(median(&backfill_steady)),
        f2(ratio(&backfill_steady, &pull_steady)),
        per_rec(med(&|r| r.backfill_daemon_cpu)),
        per_rec(med(&|r| r.backfill_backend_cpu)),
    ]);
    report.row(vec![
        "v1/changes (baseline)".into(),
        f0(median(&pull)),
        range(&pull),
        f2(1.0),
        f0(med(&|r| r.pull_first_ms)),
        f0(median(&pull_steady)),
        f2(1.0),
        per_rec(med(&|r| r.pull_daemon_cpu)),
        per_rec(med(&|r| r.pull_backend_cpu)),
    ]);
    let samples = |f: &dyn Fn(&Rep) -> usize| reps.iter().map(f).sum::<usize>();
    report.note(format!(
        "team-1 latency: during the back-fill p50 {} ms, p99 {} ms, max {} ms ({} samples); \
         without p50 {} ms, p99 {} ms, max {} ms ({} samples); ratio p50 {}x, p99 {}x",
        f2(median(&d50)),
        f2(median(&d99)),
        f2(med(&|r| r.during.max_ms)),
        samples(&|r| r.during.samples),
        f2(median(&i50)),
        f2(median(&i99)),
        f2(med(&|r| r.idle.max_ms)),
        samples(&|r| r.idle.samples),
        f2(ratio(&d50, &i50)),
        f2(ratio(&d99, &i99)),
    ));
    report.note(
        "back-fill: subscribe -> reply of subscribe --wait (scope_synced); v1/changes: backend spawn -> \
         the last record's event (device waiting with backoff_max_ms = 50, as in drain); cpu over that window"
            .into(),
    );
    report.json(json!({
        "scenario": "scopes",
        "records": n,
        "reps": reps.len(),
        "backfill_rec_per_s": median(&backfill),
        "per_rep_backfill_rec_per_s": backfill,
        "changes_pull_rec_per_s": median(&pull),
        "per_rep_changes_pull_rec_per_s": pull,
        "ratio_backfill_vs_changes_pull": ratio(&backfill, &pull),
        "backfill_rec_per_s_after_first": median(&backfill_steady),
        "changes_pull_rec_per_s_after_first": median(&pull_steady),
        "ratio_after_first": ratio(&backfill_steady, &pull_steady),
        "backfill_secs": med(&|r| r.backfill_secs),
        "changes_pull_secs": med(&|r| r.pull_secs),
        "backfill_first_record_ms": med(&|r| r.backfill_first_ms),
        "changes_pull_first_record_ms": med(&|r| r.pull_first_ms),
        "backfill_daemon_cpu_s": med(&|r| r.backfill_daemon_cpu),
        "backfill_backend_cpu_s": med(&|r| r.backfill_backend_cpu),
        "changes_pull_daemon_cpu_s": med(&|r| r.pull_daemon_cpu),
        "changes_pull_backend_cpu_s": med(&|r| r.pull_backend_cpu),
        "during_backfill_p50_ms": median(&d50),
        "during_backfill_p99_ms": median(&d99),
        "during_backfill_max_ms": med(&|r| r.during.max_ms),
        "during_backfill_samples": samples(&|r| r.during.samples),
        "during_backfill_resyncs": reps.iter().map(|r| r.during.resyncs).sum::<u64>(),
        "no_backfill_p50_ms": median(&i50),
        "no_backfill_p99_ms": median(&i99),
        "no_backfill_max_ms": med(&|r| r.idle.max_ms),
        "no_backfill_samples": samples(&|r| r.idle.samples),
        "ratio_p50_during_vs_without": ratio(&d50, &i50),
        "ratio_p99_during_vs_without": ratio(&d99, &i99),
    }));
}
