//! `subscribe`, `unsubscribe` and `scopes`: which scopes of a backend with
//! users and scopes (protocol revision 3) this device syncs, and how each
//! stands. One file because the three are one concern: the subscribed set.

use std::time::Duration;

use clap::Args;
use syncd::ipc::wire::ScopeView;

use super::daemon::DaemonOpts;
use super::error::CliError;
use super::output;

#[derive(Args, Debug)]
pub struct SubscribeArgs {
    /// The scope to sync (e.g. `team-1`).
    scope: String,
    /// Block until the scope's first sync is done (all its records are here).
    #[arg(long)]
    wait: bool,
    /// With --wait: give up after this many seconds (exit 4; the
    /// subscription stays). Default: wait as long as it takes.
    #[arg(long, requires = "wait", value_name = "SECONDS")]
    timeout: Option<f64>,
    #[command(flatten)]
    daemon: DaemonOpts,
}

#[derive(Args, Debug)]
pub struct UnsubscribeArgs {
    /// The scope to stop syncing; its records without pending writes leave
    /// this device.
    scope: String,
    #[command(flatten)]
    daemon: DaemonOpts,
}

#[derive(Args, Debug)]
pub struct ScopesArgs {
    /// Print each scope as a JSON object on a line of its own.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    daemon: DaemonOpts,
}

/// A scope name, checked before anything is sent.
pub fn checked(scope: &str) -> Result<&str, CliError> {
    syncd::domain::scope::check_scope(scope)
        .map(|()| scope)
        .map_err(|e| CliError::Usage(format!("bad scope {scope:?}: {e}")))
}

pub async fn subscribe(a: &SubscribeArgs, outer: &DaemonOpts) -> Result<(), CliError> {
    let scope = checked(&a.scope)?;
    let limit = match a.timeout {
        Some(secs) => Some(Duration::try_from_secs_f64(secs).map_err(|_| {
            CliError::Usage(format!(
                "--timeout {secs}: must be a number of seconds >= 0"
            ))
        })?),
        None => None,
    };
    let mut c = a.daemon.or(outer).connect().await?;
    if !a.wait {
        return Ok(c.subscribe(scope, false).await?);
    }
    match limit {
        None => Ok(c.subscribe(scope, true).await?),
        Some(limit) => tokio::time::timeout(limit, c.subscribe(scope, true))
            .await
            .map_err(|_| {
                CliError::TimedOut(format!(
                    "scope {scope}: first sync not done after {} s; it stays subscribed (see syncd scopes)",
                    limit.as_secs_f64()
                ))
            })?
            .map_err(CliError::from),
    }
}

pub async fn unsubscribe(a: &UnsubscribeArgs, outer: &DaemonOpts) -> Result<(), CliError> {
    let scope = checked(&a.scope)?;
    let mut c = a.daemon.or(outer).connect().await?;
    Ok(c.unsubscribe(scope).await?)
}

pub async fn list(a: &ScopesArgs, outer: &DaemonOpts) -> Result<(), CliError> {
    let mut c = a.daemon.or(outer).connect().await?;
    let scopes = c.scopes().await?;
    if a.json {
        for s in &scopes {
            output::json_line(s)?;
        }
        return Ok(());
    }
    if scopes.is_empty() {
        return output::line("(no scopes: the backend has none, or no session yet)");
    }
    let rows: Vec<Vec<String>> = scopes.iter().map(row).collect();
    output::table(&rows)
}

/// `NAME ACCESS STATE records=N subscribed=B first_sync_done=B`, e.g.
/// `team-1 write initial(120 left) records=40 subscribed=true first_sync_done=false`.
pub fn row(s: &ScopeView) -> Vec<String> {
    vec![
        s.name.clone(),
        s.access.clone().unwrap_or_else(|| "none".into()),
        state_text(s),
        format!("records={}", s.records),
        format!("subscribed={}", s.subscribed),
        format!("first_sync_done={}", s.first_sync_done),
    ]
}

/// The state, with progress while back-filling.
pub fn state_text(s: &ScopeView) -> String {
    match (s.state.as_str(), s.remaining) {
        ("initial", Some(n)) => format!("initial({n} left)"),
        (st, _) => st.to_owned(),
    }
}
