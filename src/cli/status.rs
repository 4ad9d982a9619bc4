//! `status`: what the daemon is doing, for a person or (`--json`) a script,
//! and (`--check`) a health check for monitors and systemd.
//!
//! Exists because "is it syncing, and if not why" is the first question
//! anyone asks of a sync daemon; each trouble comes with a hint saying
//! what to do.

use clap::Args;
use syncd::ipc::health::trouble;
use syncd::ipc::wire::StatusView;

use super::daemon::DaemonOpts;
use super::error::CliError;
use super::output::{self, ago};

#[derive(Args, Debug)]
#[command(
    after_help = "--check exit codes: 0 healthy (online, or no backend configured); \
    3 daemon unreachable; 10 offline (backend unreachable); 11 backoff or backend_error; \
    12 auth_error; 13 dead letters present; 14 conflicts parked; 15 paused; \
    16 the config file's latest edit was rejected (running on the previous config); \
    17 the store was found damaged during work; 18 local_store_error (this device's \
    store failed during sync: free space in the data_dir, check its permissions, \
    run `syncd check`). \
    The sync state wins over a rejected config edit, which wins over dead letters, \
    which win over conflicts."
)]
pub struct StatusArgs {
    /// Print the status as one JSON object (every key always present).
    #[arg(long)]
    json: bool,
    /// Health check: print one line and exit 0 when healthy, else with the
    /// code of the trouble (see below).
    #[arg(long, conflicts_with = "json")]
    check: bool,
    #[command(flatten)]
    daemon: DaemonOpts,
}

pub async fn run(a: &StatusArgs, outer: &DaemonOpts) -> Result<(), CliError> {
    let mut c = a.daemon.or(outer).connect().await?;
    let s = c.status().await?;
    if a.check {
        return check(&s);
    }
    if a.json {
        return output::json_line(&s);
    }
    for (label, value) in readable(&s, syncd::now_ms()) {
        output::line(format_args!("{:<16}{value}", format!("{label}:")))?;
    }
    Ok(())
}

/// `--check`: "ok: STATE" and exit 0, or the hint and the trouble's code.
fn check(s: &StatusView) -> Result<(), CliError> {
    match trouble(s) {
        None => output::line(format_args!("ok: {}", s.state)),
        Some(t) => {
            let hint = s.hint.clone().unwrap_or_else(|| s.state.clone());
            Err(CliError::Unhealthy(t, format!("{}: {hint}", s.state)))
        }
    }
}

/// The status as label/value lines; optional facts only when known.
fn readable(s: &StatusView, now: i64) -> Vec<(&'static str, String)> {
    let mut rows = vec![("state", s.state.clone())];
    rows.extend(s.hints.iter().map(|h| ("hint", h.clone())));
    rows.push((
        "backend",
        s.backend
            .as_deref()
            .map(syncd::ipc::health::redact_url)
            .unwrap_or_else(|| "(none configured)".into()),
    ));
    if let Some(u) = &s.user {
        rows.push(("user", u.clone()));
    }
    rows.push(("queue", queue_line(s)));
    if let Some(a) = s.oldest_pending_age_ms {
        rows.push(("oldest pending", format!("{} ago", ago(a))));
    }
    match s.next_retry_at {
        // Rounded up: 0.9 s to go is "1s", never a stale-looking "0s".
        Some(t) if t > now => rows.push(("next retry in", ago((t - now + 999) / 1000 * 1000))),
        Some(_) => rows.push(("next retry", "now (attempt under way)".into())),
        None => {}
    }
    let last_sync = s.last_sync_at.map(|t| format!("{} ago", ago(now - t)));
    rows.push(("last sync", last_sync.unwrap_or_else(|| "never".into())));
    if let Some(how) = &s.remote_changes {
        rows.push(("remote changes", how.clone()));
        let last_pull = s.last_pull_at.map(|t| format!("{} ago", ago(now - t)));
        rows.push(("last pull", last_pull.unwrap_or_else(|| "never".into())));
    }
    if let Some(e) = &s.last_error {
        rows.push(("last error", e.clone()));
    }
    rows.push((
        "conflicts",
        format!("{} parked, {} resolved", s.conflicts, s.conflicts_resolved),
    ));
    rows.push(("dead letters", s.dead_letters.to_string()));
    rows.extend(direction_rows(s));
    if let Some(line) = index_line(s) {
        rows.push(("indexes", line));
    }
    // Backends with scopes: one row per scope.
    rows.extend(
        s.scopes
            .iter()
            .map(|sc| ("scope", super::scopes::row(sc).join(" "))),
    );
    rows.extend(daemon_rows(s));
    rows
}

/// The collections that do not sync both ways, one row per setting:
/// "not synced: drafts, scratch (sync = "local": they never leave this device)".
fn direction_rows(s: &StatusView) -> Vec<(&'static str, String)> {
    let kinds = [
        (
            "local",
            "not synced",
            "sync = \"local\": they never leave this device",
        ),
        (
            "push",
            "push only",
            "sync = \"push\": the server's changes are not pulled",
        ),
        (
            "pull",
            "pull only",
            "sync = \"pull\": read-only on this device",
        ),
    ];
    kinds
        .iter()
        .filter_map(|(setting, label, what)| {
            let names: Vec<&str> = s
                .sync_directions
                .iter()
                .filter(|(_, d)| d.as_str() == *setting)
                .map(|(c, _)| c.as_str())
                .collect();
            (!names.is_empty()).then(|| (*label, format!("{} ({what})", names.join(", "))))
        })
        .collect()
}

/// "todos [due] ready, todos [done,due] building (4096 records so far)".
fn index_line(s: &StatusView) -> Option<String> {
    let parts: Vec<String> = s
        .indexes
        .iter()
        .map(|i| match i.indexed {
            Some(n) => format!(
                "{} [{}] {} ({n} records so far)",
                i.collection, i.index, i.state
            ),
            None => format!("{} [{}] {}", i.collection, i.index, i.state),
        })
        .collect();
    (!parts.is_empty()).then(|| parts.join(", "))
}

/// "12 ops (todos 10, notes 2)", "at least" when the scan was bounded.
fn queue_line(s: &StatusView) -> String {
    if s.pending_by_collection.is_empty() {
        return format!("{} ops", s.queue_depth);
    }
    let bound = if s.pending_by_collection_complete {
        ""
    } else {
        "at least "
    };
    let per: Vec<String> = s
        .pending_by_collection
        .iter()
        .map(|(c, n)| format!("{c} {bound}{n}"))
        .collect();
    format!("{} ops ({})", s.queue_depth, per.join(", "))
}

/// Where the daemon runs: config, socket, data, process.
fn daemon_rows(s: &StatusView) -> Vec<(&'static str, String)> {
    let config = s
        .config_path
        .clone()
        .unwrap_or_else(|| "(embedded defaults)".into());
    let mut rows = vec![("config", config)];
    if let Some(e) = &s.config_reload_error {
        rows.push((
            "config error",
            format!("{e} (running on the previous config)"),
        ));
    }
    rows.push(("socket", s.socket.clone()));
    rows.push(("data dir", s.data_dir.clone()));
    rows.push(("pid", s.pid.to_string()));
    rows.push(("uptime", ago(s.uptime_s as i64 * 1000)));
    rows.push(("client id", s.client_id.clone()));
    rows.push(("store", format!("{} bytes", s.store_bytes)));
    if let Some(c) = &s.store_open_check {
        rows.push(("check at open", c.clone()));
    }
    if !s.encryption.is_empty() {
        rows.push(("encryption", s.encryption.clone()));
    }
    rows.push(("version", s.version.clone()));
    rows
}
