//! `watch`: the daemon's change feed as JSON lines, until interrupted or
//! until whoever reads our output goes away.
//!
//! Exists so that shell scripts can react to changes (`syncd watch todos |
//! while read -r ev; do ...; done`) without speaking the socket protocol.

use clap::Args;

use super::daemon::DaemonOpts;
use super::error::CliError;
use super::output;

#[derive(Args, Debug)]
pub struct WatchArgs {
    /// Collections to watch (default: all of them).
    #[arg(value_name = "COLLECTION")]
    collections: Vec<String>,
    #[command(flatten)]
    daemon: DaemonOpts,
}

/// Prints events until the connection ends (an error) or stdout closes
/// (exit 0, noticed at the next event).
pub async fn run(a: &WatchArgs, outer: &DaemonOpts) -> Result<(), CliError> {
    let mut c = a.daemon.or(outer).connect().await?;
    c.watch(&a.collections).await?;
    loop {
        let ev = c.next_event().await?;
        output::json_line(&ev)?;
    }
}
