//! `put`, `patch` and `delete`: the writes, and their `--wait synced`.
//!
//! Exists because the three share the one thing that is not a single
//! request: optionally blocking until the server confirmed the write.

use std::time::Duration;

use clap::{Args, ValueEnum};
use syncd::client::Client;
use syncd::ipc::wire::Response;

use super::daemon::DaemonOpts;
use super::doc_arg;
use super::error::CliError;
use super::output;

/// What `--wait` waits for.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum WaitFor {
    /// Until the server has the write.
    Synced,
}

/// `--wait` and `--timeout`, shared by the writes.
#[derive(Args, Debug)]
pub struct WaitArg {
    /// Block until the write is on the server (exit 0) or failed for good.
    #[arg(long, value_enum)]
    wait: Option<WaitFor>,
    /// With --wait: give up after this many seconds (exit 4; the write stays
    /// durable and queued). Default: wait as long as it takes.
    #[arg(long, requires = "wait", value_name = "SECONDS")]
    timeout: Option<f64>,
}

#[derive(Args, Debug)]
pub struct PutArgs {
    /// Collection to write to.
    collection: String,
    /// Use this id instead of minting one (replaces the record if it exists).
    #[arg(long)]
    id: Option<String>,
    /// Backends with scopes: create the record in this scope, or move it
    /// there (default: your private scope, or where the record is).
    #[arg(long, value_name = "SCOPE")]
    scope: Option<String>,
    #[arg(help = doc_arg::HELP, value_name = "JSON")]
    json: String,
    #[command(flatten)]
    wait: WaitArg,
    #[command(flatten)]
    daemon: DaemonOpts,
}

#[derive(Args, Debug)]
pub struct PatchArgs {
    /// Collection of the record.
    collection: String,
    /// Id of the record to patch.
    id: String,
    #[arg(help = doc_arg::HELP, value_name = "JSON")]
    json: String,
    #[command(flatten)]
    wait: WaitArg,
    #[command(flatten)]
    daemon: DaemonOpts,
}

#[derive(Args, Debug)]
pub struct DeleteArgs {
    /// Collection of the record.
    collection: String,
    /// Id of the record to delete.
    id: String,
    #[command(flatten)]
    wait: WaitArg,
    #[command(flatten)]
    daemon: DaemonOpts,
}

/// Creates or replaces a record; prints its id.
pub async fn put(a: &PutArgs, outer: &DaemonOpts) -> Result<(), CliError> {
    let data = doc_arg::read(&a.json)?;
    let scope = a.scope.as_deref().map(super::scopes::checked).transpose()?;
    let mut c = a.daemon.or(outer).connect().await?;
    let (id, op_id) = c
        .put_in_scope(&a.collection, a.id.as_deref(), data, scope)
        .await?;
    output::line(&id)?;
    maybe_wait(&mut c, &a.wait, &op_id, (&a.collection, &id)).await
}

/// Merges top-level fields into a record.
pub async fn patch(a: &PatchArgs, outer: &DaemonOpts) -> Result<(), CliError> {
    let data = doc_arg::read(&a.json)?;
    let mut c = a.daemon.or(outer).connect().await?;
    let (_, op_id) = c.patch(&a.collection, &a.id, data).await?;
    maybe_wait(&mut c, &a.wait, &op_id, (&a.collection, &a.id)).await
}

/// Deletes a record.
pub async fn delete(a: &DeleteArgs, outer: &DaemonOpts) -> Result<(), CliError> {
    let mut c = a.daemon.or(outer).connect().await?;
    let (_, op_id) = c.delete(&a.collection, &a.id).await?;
    maybe_wait(&mut c, &a.wait, &op_id, (&a.collection, &a.id)).await
}

/// With `--wait synced`: blocks until the daemon reports `op_id` on the
/// server, then says where it landed on stderr (stdout carries only the id).
pub(super) async fn maybe_wait(
    c: &mut Client,
    wait: &WaitArg,
    op_id: &str,
    record: (&str, &str),
) -> Result<(), CliError> {
    if wait.wait.is_none() {
        return Ok(());
    }
    let limit = match wait.timeout {
        Some(secs) => Some(Duration::try_from_secs_f64(secs).map_err(|_| {
            CliError::Usage(format!(
                "--timeout {secs}: must be a number of seconds >= 0"
            ))
        })?),
        None => None,
    };
    let waited = match limit {
        Some(limit) => tokio::time::timeout(limit, c.wait_synced(op_id))
            .await
            .map_err(|_| {
                CliError::TimedOut(format!(
                    "op {op_id} not on the server after {} s; it is durable and stays queued (see syncd status)",
                    limit.as_secs_f64()
                ))
            })?,
        None => c.wait_synced(op_id).await,
    };
    let (mut server_id, mut version) = match waited? {
        Response::Synced {
            server_id, version, ..
        } => (server_id, version),
        other => return Err(CliError::unexpected(other)),
    };
    if server_id.is_none() {
        // Confirmed before we asked: the record says where it is (gone,
        // for a synced delete).
        if let Ok(r) = c.get(record.0, record.1).await {
            server_id = r.server_id;
            version = r.version;
        }
    }
    eprintln!(
        "synced: server id {}, version {}",
        server_id.as_deref().unwrap_or("-"),
        version.map(|v| v.to_string()).unwrap_or("-".into())
    );
    Ok(())
}
