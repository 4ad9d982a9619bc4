//! The `syncd-client` crate stays light: an app that depends on it must not
//! compile the daemon's store engine, HTTP server, TLS stack or PostgreSQL
//! driver (issue 19, item 6). `cargo tree -p syncd-client` is the proof;
//! this test runs it and fails when one of those enters the tree. It also
//! keeps the README's example of such an app equal to the example the test
//! suite builds.

use std::process::Command;

/// Crates that belong to the daemon only. A name matches itself and its
/// family (`hyper` also catches `hyper-util`, `hyper-rustls`).
const DAEMON_ONLY: &[&str] = &[
    "redb",
    "hyper",
    "rustls",
    "tokio-rustls",
    "tokio-postgres",
    "postgres-protocol",
    "deadpool",
    "deadpool-postgres",
    "notify",
    "prometheus-client",
];

/// What the client crate may depend on directly.
const DIRECT_ALLOWED: &[&str] = &[
    "tokio",
    "interprocess",
    "serde",
    "serde_json",
    "bincode",
    "bytes",
    "libc",
    // Attachment chunks in JSON frames (base64).
    "base64",
];

fn cargo_tree(args: &[&str]) -> Vec<String> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .args([
            "tree",
            "-p",
            "syncd-client",
            "--offline",
            "--prefix",
            "none",
        ])
        .args(["--format", "{p}"])
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("run cargo tree");
    assert!(
        out.status.success(),
        "cargo tree failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        // "name v1.2.3 (path)" or "name v1.2.3 (*)": the name.
        .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
        .collect()
}

fn is_family(name: &str, banned: &str) -> bool {
    name == banned || name.starts_with(&format!("{banned}-"))
}

#[test]
fn the_client_crate_pulls_in_nothing_of_the_daemon() {
    // Build scripts too: what an app on this platform would compile.
    // (`--target all` would need every platform's crates downloaded.)
    let tree = cargo_tree(&["--edges", "normal,build"]);
    assert!(
        tree.iter().any(|n| n == "syncd-client"),
        "no syncd-client in {tree:?}"
    );
    assert!(
        tree.iter().any(|n| n == "tokio"),
        "tokio missing: is the tree read right? {tree:?}"
    );
    let bad: Vec<&String> = tree
        .iter()
        .filter(|n| DAEMON_ONLY.iter().any(|b| is_family(n, b)))
        .collect();
    assert!(
        bad.is_empty(),
        "syncd-client's dependency tree holds daemon-only crates {bad:?}; \
         see `cargo tree -p syncd-client -i <name>` for the path"
    );
    assert!(
        !tree.iter().any(|n| n == "syncd"),
        "syncd-client depends on the daemon"
    );
}

#[test]
fn the_client_crate_depends_only_on_the_crates_it_names() {
    let direct = cargo_tree(&["--edges", "normal,build", "--depth", "1"]);
    let extra: Vec<&String> = direct
        .iter()
        .filter(|n| *n != "syncd-client" && !DIRECT_ALLOWED.contains(&n.as_str()))
        .collect();
    assert!(
        extra.is_empty(),
        "new direct dependencies of syncd-client {extra:?}: keep it to tokio, serde and \
         the codec crates, or justify the addition and list it here"
    );
}

#[test]
fn the_readme_example_is_the_built_one() {
    let readme = include_str!("../README.md");
    let example = include_str!("../crates/syncd-client/examples/app.rs");
    let code = &example[example.find("#[tokio::main]").expect("main in the example")..];
    assert!(
        readme.contains(&format!("```rust\n{code}```")),
        "README.md's Rust example differs from crates/syncd-client/examples/app.rs:\n{code}"
    );
}
