//! `run`: the daemon itself, in the foreground (systemd, launchd or a
//! terminal supervise it).
//!
//! Exists so that one binary is both the daemon and its client.

use std::path::PathBuf;

use clap::Args;

use super::daemon::{load_config, DaemonOpts};
use super::error::CliError;

#[derive(Args, Debug)]
pub struct RunArgs {
    /// Socket to listen on, instead of the one in --config (or the default
    /// path).
    #[arg(long, value_name = "PATH")]
    socket: Option<PathBuf>,
    /// daemon.toml to read (default: built-in defaults). Re-read on SIGHUP.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
}

/// Runs the daemon until SIGTERM/SIGINT. `outer` holds options given
/// before the command (`syncd --config F run`).
pub async fn run(a: &RunArgs, outer: &DaemonOpts) -> Result<(), CliError> {
    let config_path = a.config.clone().or_else(|| outer.config.clone());
    // Before the read: an edit that lands after it is reloaded later.
    let loaded = config_path.as_deref().and_then(syncd::config::stamp);
    let mut cfg = load_config(config_path.as_deref())?;
    if let Some(s) = a.socket.as_ref().or(outer.socket.as_ref()) {
        cfg.daemon.socket = s.clone();
    }
    let log = syncd::daemon::init_logging(&cfg.daemon.log_level, cfg.daemon.log_format);
    syncd::daemon::run(cfg, config_path, loaded, log)
        .await
        .map_err(|e| CliError::Failed(e.to_string()))
}
