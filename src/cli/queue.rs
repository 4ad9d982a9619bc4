//! `queue`: the operations waiting to be pushed, in order; and the op
//! table it shares with `dead-letters`.
//!
//! Exists so that a person can see what has not reached the server yet,
//! and a script (`--json`) can check a given op.

use clap::Args;
use syncd::ipc::wire::OpView;

use super::daemon::DaemonOpts;
use super::error::CliError;
use super::output;

#[derive(Args, Debug)]
pub struct QueueArgs {
    /// Print each op as a JSON object on a line of its own.
    #[arg(long)]
    json: bool,
    /// Print at most this many ops (from the head of the queue).
    #[arg(long)]
    limit: Option<u32>,
    #[command(flatten)]
    daemon: DaemonOpts,
}

pub async fn run(a: &QueueArgs, outer: &DaemonOpts) -> Result<(), CliError> {
    let mut c = a.daemon.or(outer).connect().await?;
    let ops = c.queue(a.limit).await?;
    print_ops(&ops, a.json)
}

/// Ops as JSON lines, or as a table whose first column is the op id (what
/// `syncd retry` and `syncd discard` take).
pub fn print_ops(ops: &[OpView], json: bool) -> Result<(), CliError> {
    if json {
        for o in ops {
            output::json_line(o)?;
        }
        return Ok(());
    }
    if ops.is_empty() {
        return output::line("(empty)");
    }
    let rows: Vec<Vec<String>> = ops
        .iter()
        .map(|o| {
            let mut row = vec![
                o.op_id.clone(),
                o.kind.clone(),
                format!("{}/{}", o.collection, o.id),
                format!("attempts={}", o.attempts),
            ];
            if let Some(s) = &o.scope {
                row.push(format!("scope={s}"));
            }
            if let Some(e) = &o.last_error {
                row.push(format!("error={e}"));
            }
            row
        })
        .collect();
    output::table(&rows)
}
