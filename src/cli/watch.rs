//! `watch`: the daemon's change feed as JSON lines, each stamped with the
//! time it was printed, until interrupted or until whoever reads our
//! output goes away; with `--reconnect`, across daemon restarts.
//!
//! Exists so that shell scripts can react to changes (`syncd watch todos |
//! while read -r ev; do ...; done`) without speaking the socket protocol.

use std::time::{Duration, SystemTime};

use clap::Args;
use serde_json::Value;
use syncd::client::ClientError;

use super::daemon::DaemonOpts;
use super::error::CliError;
use super::output;

/// Pause between reconnection attempts.
const RECONNECT_EVERY: Duration = Duration::from_millis(500);

#[derive(Args, Debug)]
pub struct WatchArgs {
    /// Collections to watch (default: all of them).
    #[arg(value_name = "COLLECTION")]
    collections: Vec<String>,
    /// When the daemon goes away (a restart), keep trying to reconnect and
    /// go on; prints `{"at":...,"reconnected":{}}` when back (events in
    /// the gap are missed: re-read what you need).
    #[arg(long)]
    reconnect: bool,
    #[command(flatten)]
    daemon: DaemonOpts,
}

/// Prints events until the connection ends (an error, unless
/// `--reconnect`) or stdout closes (exit 0, noticed at the next event).
pub async fn run(a: &WatchArgs, outer: &DaemonOpts) -> Result<(), CliError> {
    let opts = a.daemon.or(outer);
    let mut first = true;
    loop {
        let lost = match follow(a, &opts, first).await {
            Err(Feed::Lost(e)) if a.reconnect => e,
            Err(Feed::Lost(e)) => return Err(e.into()),
            Err(Feed::Cli(e)) => return Err(e),
            Ok(()) => return Ok(()),
        };
        first = false;
        eprintln_quiet(&format!("syncd: watch: {lost}; reconnecting"));
        tokio::time::sleep(RECONNECT_EVERY).await;
    }
}

/// Why a feed ended: the daemon side (may reconnect) or ours (may not).
enum Feed {
    Lost(ClientError),
    Cli(CliError),
}

/// One connection's worth of feed.
async fn follow(a: &WatchArgs, opts: &DaemonOpts, first: bool) -> Result<(), Feed> {
    let mut c = opts.connect().await.map_err(|e| match e {
        CliError::Unreachable(e) | CliError::Client(e) => Feed::Lost(e),
        other => Feed::Cli(other),
    })?;
    c.watch(&a.collections).await.map_err(Feed::Lost)?;
    if !first {
        print(serde_json::json!({ "reconnected": {} })).map_err(Feed::Cli)?;
    }
    loop {
        let ev = c.next_event().await.map_err(Feed::Lost)?;
        let v = serde_json::to_value(&ev)
            .map_err(|e| Feed::Cli(CliError::Failed(format!("cannot print event: {e}"))))?;
        print(v).map_err(Feed::Cli)?;
    }
}

/// The event with `"at"` (RFC 3339, UTC, ms) added beside its tag.
fn print(mut v: Value) -> Result<(), CliError> {
    if let Value::Object(m) = &mut v {
        let at = humantime::format_rfc3339_millis(SystemTime::now()).to_string();
        m.insert("at".into(), Value::String(at));
    }
    output::json_line(&v)
}

/// A note on stderr; a closed stderr is not worth failing over.
fn eprintln_quiet(msg: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "{msg}");
}
