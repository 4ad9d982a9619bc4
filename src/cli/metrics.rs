//! `metrics`: the daemon's counters and gauges in the Prometheus
//! (OpenMetrics) text format, as `/metrics` serves them.
//!
//! Exists for a quick look, and for scraping through a textfile collector
//! where no HTTP port may be opened.

use std::io::Write;

use syncd::ipc::wire::{Request, Response};

use super::daemon::DaemonOpts;
use super::error::CliError;

pub async fn run(d: &DaemonOpts, outer: &DaemonOpts) -> Result<(), CliError> {
    let mut c = d.or(outer).connect().await?;
    match c.request(Request::Metrics {}).await? {
        Response::Metrics { text } => {
            let mut out = std::io::stdout().lock();
            out.write_all(text.as_bytes())?;
            out.flush()?;
            Ok(())
        }
        other => Err(CliError::unexpected(other)),
    }
}
