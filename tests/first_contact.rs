//! What a new user meets first, run as they would run it: the demo script
//! (its transcript can be pasted into a shell, and every id it uses was
//! printed before), and the per-user service started on an unedited copy
//! of daemon.toml.example in the environment systemd gives a user unit.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};

use common::{bin, eventually};

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Drops ANSI colour codes.
fn plain(text: &str) -> String {
    let mut out = String::new();
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for d in chars.by_ref() {
                if d.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// The words bash makes of `line`.
fn shell_words(line: &str) -> Vec<String> {
    let o = Command::new("bash")
        .arg("-c")
        .arg(format!("printf '%s\\0' {line}"))
        .output()
        .expect("bash");
    assert!(o.status.success(), "bash cannot parse: {line}");
    String::from_utf8_lossy(&o.stdout)
        .split('\0')
        .filter(|w| !w.is_empty())
        .map(str::to_owned)
        .collect()
}

#[test]
fn demo_transcript_can_be_pasted_and_uses_only_printed_ids() {
    let o = Command::new(repo().join("scripts/demo.sh"))
        .env("SYNCD_BIN", bin())
        .stdin(Stdio::null())
        .output()
        .expect("demo.sh");
    let out = plain(&String::from_utf8_lossy(&o.stdout));
    assert!(
        o.status.success(),
        "demo failed:\n{out}\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let lines: Vec<&str> = out.lines().collect();
    let mut commands = 0;
    for (i, line) in lines.iter().enumerate() {
        let Some(rest) = line.strip_prefix("$ syncd ") else {
            continue;
        };
        commands += 1;
        let words = shell_words(rest);
        // JSON arguments survive the shell intact.
        for w in words.iter().filter(|w| w.starts_with('{')) {
            serde_json::from_str::<serde_json::Value>(w)
                .unwrap_or_else(|e| panic!("{line:?}: argument {w:?} is not JSON: {e}"));
        }
        // An id the demo acts on was printed before the command.
        if matches!(words[0].as_str(), "patch" | "get") {
            let id = &words[2];
            assert!(
                lines[..i].iter().any(|l| l.trim() == id),
                "{line:?} uses id {id} that the demo never printed:\n{out}"
            );
        }
    }
    assert!(commands >= 5, "no transcript:\n{out}");
}

/// `cp daemon.toml.example ~/.config/syncd/daemon.toml` and the user unit:
/// the daemon starts as a normal user's would (socket and store under the
/// directories systemd hands a user unit, not /run or /var/lib), and the
/// CLI finds it by its default path.
#[test]
fn user_service_runs_on_the_unedited_example() {
    let home = tempfile::tempdir().unwrap();
    let h = home.path();
    let cfg_dir = h.join(".config/syncd");
    std::fs::create_dir_all(&cfg_dir).unwrap();
    let cfg = cfg_dir.join("daemon.toml");
    std::fs::copy(repo().join("daemon.toml.example"), &cfg).unwrap();
    let xdg_run = h.join("run");
    let (runtime, state) = (xdg_run.join("syncd"), h.join(".local/state/syncd"));
    for d in [&runtime, &state] {
        std::fs::create_dir_all(d).unwrap();
    }
    let env = |c: &mut Command| {
        c.env_clear()
            .env("HOME", h)
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("XDG_RUNTIME_DIR", &xdg_run);
    };
    let mut run = Command::new(bin());
    env(&mut run);
    let log = h.join("daemon.log");
    let mut child = run
        .args(["run", "--config"])
        .arg(&cfg)
        .env("RUNTIME_DIRECTORY", &runtime)
        .env("STATE_DIRECTORY", &state)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let status = || {
        let mut c = Command::new(bin());
        env(&mut c);
        c.args(["status", "--json"]).output().unwrap()
    };
    eventually(30, "the daemon answers on its default socket", || {
        if let Ok(Some(st)) = child.try_wait() {
            panic!(
                "syncd exited ({st}):\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
        status().status.success()
    });
    let st: serde_json::Value = serde_json::from_slice(&status().stdout).unwrap();
    unsafe_kill(child.id());
    let _ = child.wait();
    assert_eq!(
        st["socket"],
        runtime.join("syncd.sock").display().to_string(),
        "{st}"
    );
    assert_eq!(st["data_dir"], state.display().to_string(), "{st}");
    assert_eq!(st["backend"], serde_json::Value::Null, "{st}");
    assert_eq!(st["config_reload_error"], serde_json::Value::Null, "{st}");
}

fn unsafe_kill(pid: u32) {
    common::unsafe_kill(pid, libc::SIGTERM);
}
