//! `get` and `list`: records as JSON, one object a line.
//!
//! Exists to print `RecordView` exactly as the library serialises it (no
//! hand-copied field list to fall out of step), and to page through a
//! collection of any size without holding it in memory.

use clap::Args;

use super::daemon::DaemonOpts;
use super::error::CliError;
use super::output;

/// Records asked of the daemon per request by `list`.
const PAGE: usize = 1000;

#[derive(Args, Debug)]
pub struct GetArgs {
    /// Collection of the record.
    collection: String,
    /// Id of the record.
    id: String,
    #[command(flatten)]
    daemon: DaemonOpts,
}

#[derive(Args, Debug)]
pub struct ListArgs {
    /// Collection to list.
    collection: String,
    /// Print at most this many records.
    #[arg(long)]
    limit: Option<u32>,
    /// Start from this id (inclusive).
    #[arg(long)]
    start: Option<String>,
    #[command(flatten)]
    daemon: DaemonOpts,
}

/// Prints one record.
pub async fn get(a: &GetArgs, outer: &DaemonOpts) -> Result<(), CliError> {
    let mut c = a.daemon.or(outer).connect().await?;
    let r = c.get(&a.collection, &a.id).await?;
    output::json_line(&r)
}

/// Prints the records of a collection in id order, a page at a time.
pub async fn list(a: &ListArgs, outer: &DaemonOpts) -> Result<(), CliError> {
    let mut c = a.daemon.or(outer).connect().await?;
    let mut remaining = a.limit.map(|l| l as usize).unwrap_or(usize::MAX);
    let mut start = a.start.clone();
    while remaining > 0 {
        let page = remaining.min(PAGE) as u32;
        let (recs, next) = c.list(&a.collection, start.as_deref(), Some(page)).await?;
        for r in &recs {
            output::json_line(r)?;
        }
        remaining = remaining.saturating_sub(recs.len());
        match next {
            Some(n) if remaining > 0 => start = Some(n),
            _ => break,
        }
    }
    Ok(())
}
