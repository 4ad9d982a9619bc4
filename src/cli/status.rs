//! `status`: what the daemon is doing, for a person or (`--json`) a script.
//!
//! Exists because "is it syncing, and if not why" is the first question
//! anyone asks of a sync daemon.

use clap::Args;
use syncd::ipc::wire::StatusView;

use super::daemon::DaemonOpts;
use super::error::CliError;
use super::output::{self, ago};

#[derive(Args, Debug)]
pub struct StatusArgs {
    /// Print the status as one JSON object (every key always present).
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    daemon: DaemonOpts,
}

pub async fn run(a: &StatusArgs, outer: &DaemonOpts) -> Result<(), CliError> {
    let mut c = a.daemon.or(outer).connect().await?;
    let s = c.status().await?;
    if a.json {
        return output::json_line(&s);
    }
    for (label, value) in readable(&s, syncd::now_ms()) {
        output::line(format_args!("{:<16}{value}", format!("{label}:")))?;
    }
    Ok(())
}

/// The status as label/value lines; optional facts only when known.
fn readable(s: &StatusView, now: i64) -> Vec<(&'static str, String)> {
    let mut rows = vec![
        ("state", s.state.clone()),
        (
            "backend",
            s.backend
                .as_deref()
                .unwrap_or("(none configured)")
                .to_owned(),
        ),
        ("queue", format!("{} ops", s.queue_depth)),
    ];
    if let Some(a) = s.oldest_pending_age_ms {
        rows.push(("oldest pending", format!("{} ago", ago(a))));
    }
    if let Some(t) = s.next_retry_at {
        rows.push(("next retry in", ago((t - now).max(0))));
    }
    let last_sync = s.last_sync_at.map(|t| format!("{} ago", ago(now - t)));
    rows.push(("last sync", last_sync.unwrap_or_else(|| "never".into())));
    if let Some(e) = &s.last_error {
        rows.push(("last error", e.clone()));
    }
    rows.push((
        "conflicts",
        format!("{} parked, {} resolved", s.conflicts, s.conflicts_resolved),
    ));
    rows.push(("dead letters", s.dead_letters.to_string()));
    rows.push(("client id", s.client_id.clone()));
    rows.push(("store", format!("{} bytes", s.store_bytes)));
    rows
}
