//! Rough edges of the command line: a reader that closes the pipe early,
//! the dead-letter listing, help texts, and documents from stdin or a file.

mod common;
mod common_fault;

use std::io::{Read, Write};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{bin, eventually, Daemon};
use common_fault::{RefBackend, Scripted};
use serde_json::json;
use syncd::backend::server::ops::{Rejection, ValidOp};
use syncd::client::Client;

/// `syncd --socket S ARGS` with stdout (and stderr) piped.
fn spawn(d: &Daemon, args: &[&str]) -> Child {
    Command::new(bin())
        .arg("--socket")
        .arg(&d.socket)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn syncd")
}

/// Waits for `child`, killing it and failing if it takes over 30 s.
fn finish(mut child: Child, what: &str) -> Output {
    let deadline = Instant::now() + Duration::from_secs(30);
    while child.try_wait().expect("try_wait").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("{what}: still running after 30 s");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    child.wait_with_output().expect("output")
}

fn assert_quiet_exit_0(o: &Output, what: &str) {
    assert_eq!(
        o.status.code(),
        Some(0),
        "{what}: expected a quiet exit 0 on a closed pipe, got {}; stderr: {}",
        o.status,
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(
        o.stderr.is_empty(),
        "{what}: said something on a closed pipe: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// Writes `n` records of ~200 bytes each through the Rust client.
fn fill(d: &Daemon, collection: &str, n: usize) {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let mut c = Client::connect(&d.socket, "fill").await.expect("connect");
        for i in 0..n {
            let doc = json!({"i": i, "pad": "p".repeat(150)});
            c.put(collection, Some(&format!("r{i:05}")), doc)
                .await
                .expect("put");
        }
    });
}

#[test]
fn closed_stdout_ends_quietly_with_exit_0() {
    let d = Daemon::start("");
    fill(&d, "big", 2000);

    // The reader reads a little and goes away (`| head -c 100`): enough
    // output is left to fill the pipe, so a write fails with EPIPE.
    for args in [vec!["list", "big"], vec!["queue"], vec!["queue", "--json"]] {
        let mut child = spawn(&d, &args);
        let mut out = child.stdout.take().expect("stdout");
        let mut head = [0u8; 100];
        out.read_exact(&mut head).expect("some output first");
        drop(out);
        assert_quiet_exit_0(&finish(child, &format!("{args:?}")), &format!("{args:?}"));
    }

    // The reader is gone before anything is written (`| true`).
    for args in [
        vec!["status"],
        vec!["status", "--json"],
        vec!["queue"],
        vec!["dead-letters"],
        vec!["conflicts"],
        vec!["list", "big"],
        vec!["get", "big", "r00001"],
    ] {
        let mut child = spawn(&d, &args);
        drop(child.stdout.take());
        assert_quiet_exit_0(&finish(child, &format!("{args:?}")), &format!("{args:?}"));
    }

    // watch notices at the next event.
    let mut child = spawn(&d, &["watch", "big"]);
    drop(child.stdout.take());
    let mut i = 0;
    eventually(20, "watch to exit on a closed pipe", || {
        i += 1;
        d.ok(&["put", "big", "--id", &format!("w{i}"), "{}"]);
        matches!(child.try_wait(), Ok(Some(_)))
    });
    assert_quiet_exit_0(&finish(child, "watch"), "watch");
}

#[test]
fn dead_letters_lines_start_with_the_op_id() {
    // A backend that rejects every create for good (422).
    let mut m = RefBackend::new(true);
    m.validate = Some(Box::new(|_op: &ValidOp| {
        Err(Rejection::unprocessable("rejected by test"))
    }));
    let mini = Arc::new(Mutex::new(m));
    let srv = Scripted::start(Duration::from_secs(60), 5000, move |req| {
        mini.lock().expect("mini").handle(req)
    });
    let d = Daemon::start(&format!(
        "[backend]\nurl = {:?}\ntimeout_ms = 2000\n[sync]\nbackoff_initial_ms = 50\nbackoff_max_ms = 400\n",
        srv.url()
    ));
    d.ok(&["put", "todos", "--id", "a", "{}"]);
    d.ok(&["put", "todos", "--id", "b", "{}"]);
    eventually(20, "two dead letters", || {
        d.json_lines(&["dead-letters", "--json"]).len() == 2
    });
    let op_ids: Vec<String> = d
        .json_lines(&["dead-letters", "--json"])
        .iter()
        .map(|o| o["op_id"].as_str().expect("op_id").to_owned())
        .collect();
    let text = d.ok(&["dead-letters"]);
    let firsts: Vec<&str> = text
        .lines()
        .map(|l| l.split_whitespace().next().unwrap_or(""))
        .collect();
    assert_eq!(firsts, op_ids, "{text}");
    assert!(
        text.contains("todos/a") && text.contains("todos/b"),
        "{text}"
    );

    // What the first column says is what retry and discard take.
    d.ok(&["discard", firsts[0]]);
    d.ok(&["pause"]);
    d.ok(&["retry", firsts[1]]);
    assert_eq!(d.status()["dead_letters"], json!(0));
    assert_eq!(d.status()["queue_depth"], json!(1));
}

/// `syncd ARGS` without a daemon; stdout as text.
fn help(args: &[&str]) -> String {
    let o = Command::new(bin())
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run syncd");
    assert!(o.status.success(), "syncd {args:?}: {}", o.status);
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Entries of the Arguments/Options sections of a help text that have no
/// description (neither on their line nor indented on the next).
fn blank_entries(text: &str) -> Vec<String> {
    let lines: Vec<&str> = text.lines().collect();
    let mut blank = Vec::new();
    let mut in_list = false;
    for (i, l) in lines.iter().enumerate() {
        if !l.starts_with(' ') {
            in_list = matches!(l.trim_end(), "Arguments:" | "Options:");
            continue;
        }
        let entry = l.trim_start();
        if !in_list || !(entry.starts_with('-') || entry.starts_with('<') || entry.starts_with('['))
        {
            continue;
        }
        let indent = l.len() - entry.len();
        let same_line = entry
            .find("  ")
            .is_some_and(|p| !entry[p..].trim().is_empty());
        let next_line = lines.get(i + 1).is_some_and(|n| {
            let t = n.trim_start();
            !t.is_empty() && n.len() - t.len() > indent
        });
        if !same_line && !next_line {
            blank.push(l.trim().to_owned());
        }
    }
    blank
}

#[test]
fn every_argument_has_help_and_backend_has_no_daemon_options() {
    let top = help(&["--help"]);
    assert!(blank_entries(&top).is_empty(), "{:?}", blank_entries(&top));
    let commands: Vec<String> = top
        .lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| l.starts_with(' '))
        .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
        .filter(|c| c != "help")
        .collect();
    assert!(commands.len() >= 18, "{commands:?}");
    for c in &commands {
        for flag in ["-h", "--help"] {
            let text = help(&[c, flag]);
            let blank = blank_entries(&text);
            assert!(
                blank.is_empty(),
                "syncd {c} {flag}: no help for {blank:?}\n{text}"
            );
        }
    }
    let backend = help(&["backend", "--help"]);
    assert!(!backend.contains("--socket"), "{backend}");
    assert!(!backend.contains("--config"), "{backend}");
    // Daemon commands take them on either side of the command name.
    assert!(help(&["status", "--help"]).contains("--socket"));
    let o = Command::new(bin())
        .args([
            "--socket",
            "/nonexistent.sock",
            "backend",
            "--data",
            "/nonexistent",
        ])
        .output()
        .expect("run syncd");
    assert_eq!(o.status.code(), Some(2), "backend with --socket");
}

#[test]
fn documents_from_stdin_and_files() {
    let d = Daemon::start("");

    // ~1 MB through stdin.
    let big = "x".repeat(1_000_000);
    let doc = json!({"big": big}).to_string();
    let mut child = Command::new(bin())
        .arg("--socket")
        .arg(&d.socket)
        .args(["put", "docs", "--id", "big", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let mut stdin = child.stdin.take().expect("stdin");
    let writer = std::thread::spawn(move || stdin.write_all(doc.as_bytes()));
    let o = finish(child, "put -");
    writer.join().expect("writer").expect("write stdin");
    assert!(
        o.status.success(),
        "put -: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), "big");
    let r = d.json(&["get", "docs", "big"]);
    assert_eq!(r["data"]["big"].as_str().map(str::len), Some(1_000_000));

    // @file for put and patch.
    let f = d.dir.path().join("doc.json");
    std::fs::write(&f, r#"{"from":"file","n":1}"#).expect("write");
    let at = format!("@{}", f.display());
    assert_eq!(d.ok(&["put", "docs", "--id", "f", &at]).trim(), "f");
    assert_eq!(
        d.json(&["get", "docs", "f"])["data"],
        json!({"from": "file", "n": 1})
    );
    std::fs::write(&f, r#"{"n":2,"from":null}"#).expect("write");
    d.ok(&["patch", "docs", "f", &at]);
    assert_eq!(d.json(&["get", "docs", "f"])["data"], json!({"n": 2}));

    // A missing file or bad JSON in it is a usage error; nothing is queued.
    let depth = d.status()["queue_depth"].clone();
    let o = d.cli(&["put", "docs", "@/nonexistent/doc.json"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("/nonexistent/doc.json"));
    std::fs::write(&f, "{not json").expect("write");
    let o = d.cli(&["put", "docs", &at]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("invalid JSON"));
    assert_eq!(d.status()["queue_depth"], depth);
}
