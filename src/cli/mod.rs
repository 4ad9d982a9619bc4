//! The `syncd` command line, one command (or small family) a file, in the
//! style of ripgrep: each file holds a command's arguments and what it does.
//!
//! This is the top floor of the layering in `src/lib.rs`: it belongs to the
//! binary, uses the library, and nothing uses it.

pub mod error;

mod attach;
mod backend;
mod check;
mod conflicts;
mod crypt;
mod daemon;
mod dead_letters;
mod doc_arg;
mod metrics;
mod output;
mod pause;
mod query;
mod queue;
mod read;
mod run;
mod scopes;
mod status;
mod sync;
mod watch;
mod write;

use clap::{Parser, Subcommand};

use daemon::DaemonOpts;
use error::CliError;

#[derive(Parser, Debug)]
#[command(
    name = "syncd",
    version,
    about = "Offline-first sync daemon and its command line",
    after_help = "Exit codes: 0 ok (also when stdout is closed early, as by `| head`); \
                  1 the daemon answered with an error; 2 usage; 3 the daemon is not reachable; \
                  4 a --wait timed out; 5 `check` found a problem; 10-17 `status --check` trouble (see `syncd status --help`)."
)]
pub struct Cli {
    /// Also accepted here, before the command, for the commands that talk
    /// to the daemon (and `run`).
    #[command(flatten)]
    daemon: DaemonOpts,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Run the daemon in the foreground.
    Run(run::RunArgs),
    /// Create or replace a record; prints its local id.
    Put(write::PutArgs),
    /// Merge top-level fields into a record (null removes a key).
    Patch(write::PatchArgs),
    /// Print one record as JSON.
    Get(read::GetArgs),
    /// Delete a record.
    Delete(write::DeleteArgs),
    /// Attach a file (or stdin) to a record; it syncs with the record.
    Attach(attach::AttachArgs),
    /// Remove an attachment from a record.
    Detach(attach::DetachArgs),
    /// Write an attachment to stdout or a file (-o), downloading it if needed.
    Attachment(attach::AttachmentArgs),
    /// Records of a collection, one JSON object a line.
    List(read::ListArgs),
    /// Records that match a Mango selector, sorted, paged; --watch keeps it live.
    Query(query::QueryArgs),
    /// Pending operations, in order.
    Queue(queue::QueueArgs),
    /// The change feed as JSON lines.
    Watch(watch::WatchArgs),
    /// What the daemon is doing.
    Status(status::StatusArgs),
    /// Wake the sync worker now (push, then pull).
    Sync(sync::SyncArgs),
    /// Stop syncing (survives a restart).
    Pause(DaemonOpts),
    /// Resume syncing.
    Resume(DaemonOpts),
    /// Conflicts parked for manual resolution.
    Conflicts(conflicts::ConflictsArgs),
    /// Resolve a parked conflict.
    Resolve(conflicts::ResolveArgs),
    /// Operations the server rejected for good (op id first).
    DeadLetters(dead_letters::DeadLettersArgs),
    /// Put a dead-lettered op back on the queue.
    Retry(dead_letters::OpIdArgs),
    /// Drop a dead-lettered op.
    Discard(dead_letters::OpIdArgs),
    /// Every metric in the Prometheus (OpenMetrics) text format.
    Metrics(DaemonOpts),
    /// Run the reference backend server.
    Backend(Box<backend::BackendArgs>),
    /// Check the store fully (every page, every table); exit 5 on a problem.
    Check(check::CheckArgs),
    /// Sync a scope of a backend with users and scopes.
    Subscribe(scopes::SubscribeArgs),
    /// Stop syncing a scope (its settled records leave this device).
    Unsubscribe(scopes::UnsubscribeArgs),
    /// The scopes known, with access, state and record counts.
    Scopes(scopes::ScopesArgs),
    /// Store keys for encryption at rest.
    #[command(subcommand)]
    Key(crypt::KeyCmd),
    /// Re-seal the store and its attachments under a new key (daemon stopped).
    Rekey(crypt::RekeyArgs),
    /// Convert the store between plain and encrypted (daemon stopped).
    #[command(subcommand)]
    Store(crypt::StoreCmd),
}

/// Runs the command `cli` names.
pub async fn dispatch(cli: Cli) -> Result<(), CliError> {
    let outer = &cli.daemon;
    match &cli.cmd {
        Cmd::Run(a) => run::run(a, outer).await,
        Cmd::Backend(a) => {
            if !outer.is_empty() {
                return Err(CliError::Usage(
                    "--socket and --config are for commands that talk to the daemon; \
                     `syncd backend` takes neither"
                        .into(),
                ));
            }
            backend::run(a).await
        }
        Cmd::Check(a) => check::run(a, outer).await,
        Cmd::Key(k) => crypt::key(k),
        Cmd::Rekey(a) => crypt::rekey(a, outer).await,
        Cmd::Store(s) => crypt::store(s, outer).await,
        Cmd::Put(a) => write::put(a, outer).await,
        Cmd::Patch(a) => write::patch(a, outer).await,
        Cmd::Delete(a) => write::delete(a, outer).await,
        Cmd::Attach(a) => attach::attach(a, outer).await,
        Cmd::Detach(a) => attach::detach(a, outer).await,
        Cmd::Attachment(a) => attach::attachment(a, outer).await,
        Cmd::Get(a) => read::get(a, outer).await,
        Cmd::List(a) => read::list(a, outer).await,
        Cmd::Query(a) => query::run(a, outer).await,
        Cmd::Queue(a) => queue::run(a, outer).await,
        Cmd::Watch(a) => watch::run(a, outer).await,
        Cmd::Status(a) => status::run(a, outer).await,
        Cmd::Sync(a) => sync::run(a, outer).await,
        Cmd::Metrics(d) => metrics::run(d, outer).await,
        Cmd::Pause(d) => pause::run(true, d, outer).await,
        Cmd::Resume(d) => pause::run(false, d, outer).await,
        Cmd::Conflicts(a) => conflicts::list(a, outer).await,
        Cmd::Resolve(a) => conflicts::resolve(a, outer).await,
        Cmd::DeadLetters(a) => dead_letters::list(a, outer).await,
        Cmd::Retry(a) => dead_letters::retry(a, outer).await,
        Cmd::Discard(a) => dead_letters::discard(a, outer).await,
        Cmd::Subscribe(a) => scopes::subscribe(a, outer).await,
        Cmd::Unsubscribe(a) => scopes::unsubscribe(a, outer).await,
        Cmd::Scopes(a) => scopes::list(a, outer).await,
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::Cli;

    /// Every argument and flag of every command says what it is for.
    #[test]
    fn every_argument_has_help() {
        fn walk(cmd: &clap::Command, path: &str, missing: &mut Vec<String>) {
            for a in cmd.get_arguments() {
                if a.get_help().is_none() && !a.is_hide_set() {
                    missing.push(format!("{path} {}", a.get_id()));
                }
            }
            for s in cmd.get_subcommands() {
                if s.get_about().is_none() {
                    missing.push(format!("{path} {} (no about)", s.get_name()));
                }
                walk(s, &format!("{path} {}", s.get_name()), missing);
            }
        }
        let mut cmd = Cli::command();
        cmd.build();
        let mut missing = Vec::new();
        walk(&cmd, "syncd", &mut missing);
        assert!(missing.is_empty(), "arguments without help: {missing:?}");
    }

    #[test]
    fn clap_definition_is_consistent() {
        Cli::command().debug_assert();
    }
}
