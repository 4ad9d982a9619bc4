//! `sync [--wait]`: wake the sync worker now, and optionally wait until
//! the queue is drained, with a progress bar on a terminal.
//!
//! Exists for "I am about to go offline, is everything up?" and for
//! scripts that must not go on before the server has every write.

use std::time::Duration;

use clap::Args;
use syncd::client::Client;
use syncd::ipc::wire::{Request, StatusView};

use super::daemon::DaemonOpts;
use super::error::CliError;
use super::output;

/// Status polls while waiting.
const POLL: Duration = Duration::from_millis(100);
/// Polls in a row spent offline or in backoff before giving up (~60 s).
const MAX_OUTAGE_POLLS: u32 = 600;

#[derive(Args, Debug)]
pub struct SyncArgs {
    /// Block until the queue is drained (exit 1 if syncing cannot go on).
    #[arg(long)]
    wait: bool,
    /// With --wait: give up after this many seconds (exit 4; everything
    /// stays durable and queued). Default: until drained or stuck.
    #[arg(long, requires = "wait", value_name = "SECONDS")]
    timeout: Option<f64>,
    #[command(flatten)]
    daemon: DaemonOpts,
}

pub async fn run(a: &SyncArgs, outer: &DaemonOpts) -> Result<(), CliError> {
    let opts = a.daemon.or(outer);
    let mut c = opts.connect().await?;
    c.request(Request::Sync {}).await?;
    if !a.wait {
        return Ok(());
    }
    let Some(secs) = a.timeout else {
        return wait_drained(&mut c).await;
    };
    let limit = Duration::try_from_secs_f64(secs).map_err(|_| {
        CliError::Usage(format!(
            "--timeout {secs}: must be a number of seconds >= 0"
        ))
    })?;
    match tokio::time::timeout(limit, wait_drained(&mut c)).await {
        Ok(r) => r,
        Err(_) => {
            // The timeout may have cut a status request short on `c` (its
            // reply still to come): ask on a connection of our own.
            let left = match opts.connect().await {
                Ok(mut fresh) => fresh.status().await.ok().map(|s| s.queue_depth),
                Err(_) => None,
            };
            let left = match left {
                Some(n) => format!("{n} op(s) still queued"),
                None => "ops still queued".to_owned(),
            };
            Err(CliError::TimedOut(format!(
                "queue not drained after {secs} s: {left}; they are durable (see syncd status)"
            )))
        }
    }
}

/// Until the queue is empty. Fails with the reason when syncing cannot go on.
async fn wait_drained(c: &mut Client) -> Result<(), CliError> {
    let total = c.status().await?.queue_depth;
    let bar = output::progress_bar(total);
    let mut outage_polls = 0u32;
    loop {
        let s = c.status().await?;
        if let Some(b) = &bar {
            b.set_position(total.saturating_sub(s.queue_depth));
            b.set_message(s.state.clone());
        }
        if s.queue_depth == 0 {
            if let Some(b) = &bar {
                b.finish();
            }
            return Ok(());
        }
        if let Some(why) = stuck(&s, &mut outage_polls) {
            if let Some(b) = &bar {
                b.abandon();
            }
            return Err(CliError::Failed(why));
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Why the queue will not drain, if it will not: paused, refused
/// credentials, no backend, or an outage longer than the patience we have.
/// Counts consecutive outage polls in `outage_polls`.
fn stuck(s: &StatusView, outage_polls: &mut u32) -> Option<String> {
    let last_error = || s.last_error.clone().unwrap_or_default();
    match s.state.as_str() {
        "paused" => Some(format!(
            "sync is paused with {} ops queued (syncd resume)",
            s.queue_depth
        )),
        "auth_error" => Some(format!(
            "the backend refused our credentials: {}",
            last_error()
        )),
        "offline" if s.backend.is_none() => Some("no backend configured ([backend] url)".into()),
        "offline" | "backoff" | "backend_error" => {
            *outage_polls += 1;
            (*outage_polls > MAX_OUTAGE_POLLS).then(|| {
                format!(
                    "backend unreachable, {} ops still queued: {}",
                    s.queue_depth,
                    last_error()
                )
            })
        }
        _ => {
            *outage_polls = 0;
            None
        }
    }
}
