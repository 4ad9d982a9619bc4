//! `pause` and `resume`: stop and restart syncing (the daemon keeps
//! accepting writes; paused survives a restart).
//!
//! Exists for metered connections and for holding writes back while
//! something on the server side is being fixed.

use syncd::ipc::wire::Request;

use super::daemon::DaemonOpts;
use super::error::CliError;

/// Sends `Pause` (`pause == true`) or `Resume`.
pub async fn run(pause: bool, daemon: &DaemonOpts, outer: &DaemonOpts) -> Result<(), CliError> {
    let req = if pause {
        Request::Pause {}
    } else {
        Request::Resume {}
    };
    daemon.or(outer).connect().await?.request(req).await?;
    Ok(())
}
