//! https backends: the daemon trusts a configured CA file (besides the
//! system roots) and refuses a certificate it cannot verify.

mod common;

use common::{Backend, Daemon};

fn write_cert(dir: &std::path::Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).expect("cert");
    let cert = dir.join("cert.pem");
    let key = dir.join("key.pem");
    std::fs::write(&cert, ck.cert.pem()).unwrap();
    std::fs::write(&key, ck.signing_key.serialize_pem()).unwrap();
    (cert, key)
}

#[test]
fn syncs_over_https_with_configured_ca_and_refuses_unknown_ca() {
    let certs = tempfile::tempdir().unwrap();
    let (cert, key) = write_cert(certs.path());
    let backend = Backend::start(&[
        "--tls-cert",
        cert.to_str().unwrap(),
        "--tls-key",
        key.to_str().unwrap(),
    ]);
    let port = backend.addr.rsplit(':').next().unwrap().to_owned();
    let url = format!("https://localhost:{port}/");

    // Trusted through ca_file: the write reaches the server.
    let d = Daemon::start(&format!(
        "[backend]\nurl = \"{url}\"\nca_file = {:?}\n[sync]\nbackoff_initial_ms = 100\nbackoff_max_ms = 1000\n",
        cert.display().to_string()
    ));
    let o = d.cli(&[
        "put",
        "todos",
        "--id",
        "t1",
        r#"{"title":"over tls"}"#,
        "--wait",
        "synced",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let rec = d.json(&["get", "todos", "t1"]);
    assert!(rec["server_id"].is_string());
    assert_eq!(rec["version"], 1);

    // Without the CA the certificate is refused and nothing is dropped.
    let d2 = Daemon::start(&format!(
        "[backend]\nurl = \"{url}\"\n[sync]\nbackoff_initial_ms = 100\nbackoff_max_ms = 1000\n"
    ));
    d2.ok(&["put", "todos", r#"{"title":"untrusted"}"#]);
    common::eventually(10, "a certificate error in status", || {
        let s = d2.status();
        s["last_error"]
            .as_str()
            .is_some_and(|e| e.to_lowercase().contains("certificate"))
    });
    let s = d2.status();
    assert_eq!(s["queue_depth"], 1);
    assert_ne!(s["state"], "online");
}
