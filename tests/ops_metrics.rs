//! `syncd metrics` and the `[metrics] listen` HTTP endpoints, checked with
//! a real parser: Python's `prometheus_client` (its OpenMetrics parser,
//! the format prometheus-client writes). The test installs it with pip when
//! missing, and skips with a note when it cannot (.ci/run installs it).

mod common;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{Backend, Daemon};

/// Parses OpenMetrics text into `name{labels}` -> value; `None` when
/// Python or prometheus_client is not to be had here.
const PARSER: &str = r#"
import json, sys
from prometheus_client.openmetrics.parser import text_string_to_metric_families
out = {}
for fam in text_string_to_metric_families(sys.stdin.read()):
    for s in fam.samples:
        labels = ",".join(f'{k}="{v}"' for k, v in sorted(s.labels.items()))
        out[s.name + ("{" + labels + "}" if labels else "")] = s.value
print(json.dumps(out))
"#;

fn have_parser() -> bool {
    let probe = |py: &str| {
        Command::new("python3")
            .args(["-c", py])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    if probe("import prometheus_client") {
        return true;
    }
    let _ = Command::new("python3")
        .args(["-m", "pip", "install", "--quiet", "prometheus_client"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    probe("import prometheus_client")
}

fn parse(text: &str) -> BTreeMap<String, f64> {
    let mut child = Command::new("python3")
        .args(["-c", PARSER])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let o = child.wait_with_output().unwrap();
    assert!(
        o.status.success(),
        "prometheus_client rejected the text: {}\n{text}",
        String::from_utf8_lossy(&o.stderr)
    );
    serde_json::from_slice(&o.stdout).unwrap()
}

/// GET `path` on `addr`: (status, content-type, body).
fn get(addr: &str, path: &str) -> (u16, String, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut buf = String::new();
    s.read_to_string(&mut buf).unwrap();
    let (head, body) = buf.split_once("\r\n\r\n").unwrap();
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    let ctype = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-type: ")
                .map(str::to_owned)
        })
        .unwrap_or_default();
    (status, ctype, body.to_owned())
}

fn free_port() -> String {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().to_string()
}

fn metric(m: &BTreeMap<String, f64>, key: &str) -> f64 {
    *m.get(key)
        .unwrap_or_else(|| panic!("{key} missing in {m:#?}"))
}

#[test]
fn metrics_parse_and_count_real_work() {
    if !have_parser() {
        eprintln!("SKIPPED: python3 with prometheus_client is not available (pip failed)");
        return;
    }
    let b = Backend::start(&[]);
    let listen = free_port();
    let d = Daemon::start(&format!(
        "[backend]\nurl = {:?}\n[metrics]\nlisten = {listen:?}\n",
        b.url()
    ));
    for i in 0..3 {
        d.ok(&["put", "todos", &format!(r#"{{"i":{i}}}"#)]);
    }
    d.ok(&["sync", "--wait", "--timeout", "20"]);

    let m = parse(&d.ok(&["metrics"]));
    assert_eq!(metric(&m, "syncd_writes_total"), 3.0);
    assert_eq!(
        metric(&m, "syncd_ops_pushed_total{result=\"applied\"}"),
        3.0
    );
    assert_eq!(
        metric(&m, "syncd_ops_pushed_total{result=\"rejected\"}"),
        0.0
    );
    assert_eq!(metric(&m, "syncd_queue_depth"), 0.0);
    assert_eq!(metric(&m, "syncd_dead_letters"), 0.0);
    assert_eq!(metric(&m, "syncd_conflicts_parked"), 0.0);
    assert_eq!(metric(&m, "syncd_oldest_pending_age_seconds"), 0.0);
    assert_eq!(metric(&m, "syncd_backend_state{state=\"online\"}"), 1.0);
    assert_eq!(metric(&m, "syncd_backend_state{state=\"offline\"}"), 0.0);
    assert!(metric(&m, "syncd_push_latency_seconds_count") >= 1.0);
    assert!(metric(&m, "syncd_pull_changes_total") >= 0.0);
    // The connection asking is open while it asks.
    assert!(metric(&m, "syncd_connections") >= 1.0);
    assert!(metric(&m, "syncd_store_bytes") > 0.0);

    let (status, ctype, body) = get(&listen, "/metrics");
    assert_eq!(status, 200, "{body}");
    assert!(ctype.starts_with("application/openmetrics-text"), "{ctype}");
    let h = parse(&body);
    assert_eq!(metric(&h, "syncd_writes_total"), 3.0);
    assert_eq!(
        metric(&h, "syncd_ops_pushed_total{result=\"applied\"}"),
        3.0
    );

    assert_eq!(get(&listen, "/health").0, 200);
    assert_eq!(get(&listen, "/nope").0, 404);
    // Trouble: /health says 503 with the hint, as --check exits non-zero.
    d.ok(&["pause"]);
    let (status, _, body) = get(&listen, "/health");
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("syncd resume"), "{body}");
}

#[test]
fn queue_and_state_show_while_offline() {
    if !have_parser() {
        eprintln!("SKIPPED: python3 with prometheus_client is not available (pip failed)");
        return;
    }
    let d = Daemon::start(
        "[backend]\nurl = \"http://127.0.0.1:9/\"\n[sync]\nbackoff_initial_ms = 50\nbackoff_max_ms = 200\n",
    );
    d.ok(&["put", "todos", "{}"]);
    d.ok(&["put", "notes", "{}"]);
    common::eventually(10, "offline", || d.status()["state"] == "offline");
    let m = parse(&d.ok(&["metrics"]));
    assert_eq!(metric(&m, "syncd_queue_depth"), 2.0);
    assert_eq!(metric(&m, "syncd_backend_state{state=\"offline\"}"), 1.0);
    assert!(metric(&m, "syncd_oldest_pending_age_seconds") >= 0.0);
    assert_eq!(metric(&m, "syncd_writes_total"), 2.0);
}

#[test]
fn non_loopback_listen_is_refused_unless_allowed() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("d.toml");
    std::fs::write(
        &cfg,
        format!(
            "[daemon]\nsocket = \"s.sock\"\ndata_dir = \"data\"\n[metrics]\nlisten = \"0.0.0.0:{}\"\n",
            free_port().rsplit(':').next().unwrap()
        ),
    )
    .unwrap();
    let o = Command::new(common::bin())
        .args(["run", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2), "{o:?}");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("metrics.allow_non_loopback"), "{err}");
}
