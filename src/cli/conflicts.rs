//! `conflicts` and `resolve`: conflicts parked by the manual strategy, and
//! settling one by taking a side or sending a merged document.
//!
//! Exists because with `strategy = "manual"` nothing else moves such a
//! record forward: its writes wait until someone decides.

use clap::{Args, ValueEnum};
use syncd::ipc::wire::{ConflictView, Doc, Request, Response, Side};

use super::daemon::DaemonOpts;
use super::doc_arg;
use super::error::CliError;
use super::output;

#[derive(Args, Debug)]
pub struct ConflictsArgs {
    /// Print the conflicts as one JSON array.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    daemon: DaemonOpts,
}

/// The side `resolve --take` keeps.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum TakeArg {
    /// Keep our local version (pushed over the server's).
    Local,
    /// Keep the server's version (our local change is dropped).
    Server,
}

#[derive(Args, Debug)]
pub struct ResolveArgs {
    /// Collection of the conflicted record.
    collection: String,
    /// Id of the conflicted record.
    id: String,
    /// Keep one side as it is.
    #[arg(long, value_enum, conflicts_with = "data")]
    take: Option<TakeArg>,
    /// A merged document to send instead: a JSON object, `-` for stdin, or
    /// @FILE.
    #[arg(long, value_name = "JSON")]
    data: Option<String>,
    #[command(flatten)]
    daemon: DaemonOpts,
}

/// Lists the parked conflicts.
pub async fn list(a: &ConflictsArgs, outer: &DaemonOpts) -> Result<(), CliError> {
    let mut c = a.daemon.or(outer).connect().await?;
    let cs = match c.request(Request::Conflicts {}).await? {
        Response::Conflicts(cs) => cs,
        other => return Err(CliError::unexpected(other)),
    };
    if a.json {
        return output::json_line(&cs);
    }
    if cs.is_empty() {
        return output::line("no conflicts");
    }
    for x in &cs {
        output::line(readable(x))?;
    }
    Ok(())
}

/// One conflict on one line: where, which server version, both sides.
fn readable(x: &ConflictView) -> String {
    let side = |d: &Option<Doc>| {
        d.as_ref()
            .map(|d| d.0.to_string())
            .unwrap_or_else(|| "(deleted)".into())
    };
    format!(
        "{}/{}  server v{}{}  local: {}  server: {}",
        x.collection,
        x.id,
        x.server_version,
        if x.server_deleted { " (deleted)" } else { "" },
        side(&x.local),
        side(&x.server),
    )
}

/// Settles one conflict.
pub async fn resolve(a: &ResolveArgs, outer: &DaemonOpts) -> Result<(), CliError> {
    let data = match &a.data {
        Some(d) => Some(Doc(doc_arg::read(d)?)),
        None => None,
    };
    if a.take.is_none() && data.is_none() {
        return Err(CliError::Usage(
            "resolve needs --take local|server or --data JSON".into(),
        ));
    }
    let take = a.take.map(|t| match t {
        TakeArg::Local => Side::Local,
        TakeArg::Server => Side::Server,
    });
    let req = Request::Resolve {
        collection: a.collection.clone(),
        id: a.id.clone(),
        take,
        data,
    };
    a.daemon.or(outer).connect().await?.request(req).await?;
    Ok(())
}
