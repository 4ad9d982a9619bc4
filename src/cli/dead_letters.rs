//! `dead-letters`, `retry` and `discard`: the ops the server rejected for
//! good, and the two ways out for each.
//!
//! Exists so that a rejected write is never lost silently: it waits here
//! until someone puts it back on the queue or drops it.

use clap::Args;
use syncd::ipc::wire::{Request, Response};

use super::daemon::DaemonOpts;
use super::error::CliError;
use super::queue::print_ops;

#[derive(Args, Debug)]
pub struct DeadLettersArgs {
    /// Print each op as a JSON object on a line of its own.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    daemon: DaemonOpts,
}

#[derive(Args, Debug)]
pub struct OpIdArgs {
    /// Id of the dead-lettered op (the first column of `syncd dead-letters`).
    op_id: String,
    #[command(flatten)]
    daemon: DaemonOpts,
}

/// Lists the dead letters, op id first.
pub async fn list(a: &DeadLettersArgs, outer: &DaemonOpts) -> Result<(), CliError> {
    let mut c = a.daemon.or(outer).connect().await?;
    match c.request(Request::DeadLetters {}).await? {
        Response::Ops(ops) => print_ops(&ops, a.json),
        other => Err(CliError::unexpected(other)),
    }
}

/// Puts a dead-lettered op back on the queue.
pub async fn retry(a: &OpIdArgs, outer: &DaemonOpts) -> Result<(), CliError> {
    let req = Request::Retry {
        op_id: a.op_id.clone(),
    };
    a.daemon.or(outer).connect().await?.request(req).await?;
    Ok(())
}

/// Drops a dead-lettered op.
pub async fn discard(a: &OpIdArgs, outer: &DaemonOpts) -> Result<(), CliError> {
    let req = Request::Discard {
        op_id: a.op_id.clone(),
    };
    a.daemon.or(outer).connect().await?.request(req).await?;
    Ok(())
}
