//! Daemon logs written to a file (not a terminal): no ANSI colour codes in
//! the text format, and one JSON object a line with `log_format = "json"`.

mod common;

use common::Daemon;

fn exercise(extra: &str) -> String {
    let mut d = Daemon::start(extra);
    d.ok(&["put", "todos", r#"{"a":1}"#]);
    d.stop();
    d.log_text()
}

#[test]
fn text_logs_to_a_file_have_no_colour_codes() {
    let log = exercise("");
    assert!(log.contains("syncd ready"), "{log}");
    assert!(!log.contains("\x1b["), "ANSI codes in a log file:\n{log}");
}

#[test]
fn json_logs_are_one_object_a_line() {
    let log = exercise("log_format = \"json\"");
    assert!(!log.contains("\x1b["), "{log}");
    let mut ready = false;
    for line in log.lines().filter(|l| !l.trim().is_empty()) {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert!(
            v["level"].is_string() && v["timestamp"].is_string(),
            "{line}"
        );
        ready |= v["message"] == "syncd ready";
    }
    assert!(ready, "{log}");
}
