//! Runs the Python example client (examples/client.py) against a real
//! daemon: tests/python_client_test.py drives it over the JSON encoding.

mod common;

use std::path::Path;
use std::process::Command;

#[test]
fn python_example_client_against_daemon() {
    // A pull-only and a local collection: python_client_test.py's
    // Scopes.test_sync_directions.
    let d = common::Daemon::start(
        "[collections.pyprices]\nsync = \"pull\"\n[collections.pydrafts]\nsync = \"local\"\n",
    );
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let client = root.join("examples/client.py");
    let script = root.join("tests/python_client_test.py");
    assert!(client.exists(), "{} is missing", client.display());
    let out = Command::new("python3")
        .arg(&script)
        .env("SYNCD_SOCKET", &d.socket)
        .env("SYNCD_CLIENT", &client)
        .env("SYNCD_BIN", common::bin())
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .output()
        .expect("run python3");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "python client tests failed ({}):\n{stdout}\n{stderr}\ndaemon log:\n{}",
        out.status,
        d.log_text()
    );
    // unittest reports on stderr; make sure the tests really ran.
    assert!(
        stderr.contains("OK"),
        "unexpected unittest output:\n{stderr}"
    );
    assert!(!stderr.contains("skipped"), "a test was skipped:\n{stderr}");

    // The daemon survived everything (oversized frame included).
    let status = d.status();
    assert!(status["queue_depth"].as_u64().unwrap_or(0) > 0, "{status}");
}

/// The example client's `query`, `query_all` and `watch_query` against a
/// daemon with indexes on `todos` (tests/python_query_test.py).
#[test]
fn python_example_client_queries() {
    let d =
        common::Daemon::start("[collections.todos]\nindexes = [\"due\", [\"done\", \"due\"]]\n");
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = Command::new("python3")
        .arg(root.join("tests/python_query_test.py"))
        .env("SYNCD_SOCKET", &d.socket)
        .env("SYNCD_CLIENT", root.join("examples/client.py"))
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .output()
        .expect("run python3");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "python query tests failed ({}):\n{}\n{stderr}\ndaemon log:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        d.log_text()
    );
    assert!(
        stderr.contains("OK"),
        "unexpected unittest output:\n{stderr}"
    );
}
