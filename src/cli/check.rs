//! `check`: the full check of the store, like `git fsck`: every page's
//! checksum, then every cross-table invariant (`syncd::store::check`). It
//! never trusts the clean-shutdown mark and never changes the store.
//!
//! Exists so that a person can ask "is my store sound?" at any time, and
//! find damage that no open sees (a disk that flips bits under the file
//! system). It finds the store as `syncd run` would (`--config`, else the
//! embedded defaults). A stopped daemon's store is checked here, holding
//! the data_dir lock so that no daemon starts on it meanwhile; a running
//! daemon holds that lock and writes the file, so it is asked over its
//! socket to run the same check between two commits.

use std::fs::File;
use std::path::{Path, PathBuf};

use clap::Args;
use syncd::ipc::wire::{Request, Response, StoreCheckView};

use super::daemon::{load_config, DaemonOpts};
use super::error::CliError;

#[derive(Args, Debug)]
pub struct CheckArgs {
    /// daemon.toml whose data_dir to check (default: the embedded defaults,
    /// as `syncd run`).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Socket of the running daemon, instead of the one in the config.
    #[arg(long, value_name = "PATH")]
    socket: Option<PathBuf>,
    /// Print the result as JSON.
    #[arg(long)]
    json: bool,
}

/// Checks the store; `CheckFailed` (exit 5) when it found a problem.
pub async fn run(a: &CheckArgs, outer: &DaemonOpts) -> Result<(), CliError> {
    let config_path = a.config.clone().or_else(|| outer.config.clone());
    let cfg = load_config(config_path.as_deref())?;
    let dir = cfg.daemon.data_dir.clone();
    let store = dir.join("syncd.redb");
    // Only a store that is not there (or empty: created, never committed)
    // means "nothing to check"; one that cannot be read is a failure.
    match std::fs::metadata(&store) {
        Ok(m) if m.len() > 0 => {}
        Ok(_) => {
            println!("no store at {} yet: nothing to check", store.display());
            return Ok(());
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            println!("no store at {} yet: nothing to check", store.display());
            return Ok(());
        }
        Err(e) => {
            return Err(CliError::Failed(format!(
                "cannot read {}: {e}",
                store.display()
            )))
        }
    }
    let view = match locate(&dir)? {
        Where::Here(lock) => {
            let vault = syncd::store::crypt::vault_for(&cfg.store)
                .map_err(|e| CliError::Failed(e.to_string()))?;
            check_here(&store, cfg.daemon.cache_mib, vault, lock).await?
        }
        Where::Daemon => {
            let socket = a.socket.clone().or_else(|| outer.socket.clone());
            let d = DaemonOpts {
                socket: Some(socket.unwrap_or(cfg.daemon.socket.clone())),
                ..outer.clone()
            };
            ask_daemon(&d).await?
        }
    };
    report(&view, a.json)
}

/// Who checks the store.
enum Where {
    /// This process, holding the data_dir lock (if there is a lock file)
    /// so that no daemon starts on the store meanwhile.
    Here(Option<File>),
    /// A daemon holds the lock: it runs on this store.
    Daemon,
}

fn locate(dir: &Path) -> Result<Where, CliError> {
    let path = dir.join("syncd.lock");
    // Created as the daemon creates it (0600) when missing, so that the
    // check always holds the lock: a daemon starting meanwhile must wait
    // for the check, not write the file under it.
    let mut opts = std::fs::OpenOptions::new();
    opts.create(true).truncate(false).write(true).read(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    let f = match opts.open(&path) {
        Ok(f) => f,
        // A lock file we may not create (a read-only data_dir): open it
        // to read, if it is there; with none at all, check unlocked.
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => match File::open(&path) {
            Ok(f) => f,
            Err(_) => return Ok(Where::Here(None)),
        },
        Err(e) => {
            return Err(CliError::Failed(format!(
                "cannot open {}: {e}",
                path.display()
            )))
        }
    };
    match f.try_lock_shared() {
        Ok(()) => Ok(Where::Here(Some(f))),
        Err(std::fs::TryLockError::WouldBlock) => Ok(Where::Daemon),
        Err(std::fs::TryLockError::Error(e)) => Err(CliError::Failed(format!(
            "cannot lock {}: {e}",
            path.display()
        ))),
    }
}

/// The check in this process, on the blocking pool, holding `lock`.
async fn check_here(
    store: &Path,
    cache_mib: u32,
    vault: syncd::store::crypt::Vault,
    lock: Option<File>,
) -> Result<StoreCheckView, CliError> {
    let path = store.to_owned();
    let cache = cache_mib as usize * 1024 * 1024;
    let checked = tokio::task::spawn_blocking(move || {
        let r = syncd::store::check::full(&path, cache, &vault);
        drop(lock);
        r.map(|r| syncd::ipc::cmd::store_check::view(&path, &r))
    })
    .await
    .map_err(|e| CliError::Failed(format!("the check failed: {e}")))?;
    checked.map_err(|e| CliError::Failed(format!("cannot read {}: {e}", store.display())))
}

/// The running daemon's check.
async fn ask_daemon(d: &DaemonOpts) -> Result<StoreCheckView, CliError> {
    let mut c = d.connect().await?;
    match c.request(Request::CheckStore {}).await? {
        Response::StoreCheck(v) => Ok(v),
        other => Err(CliError::unexpected(other)),
    }
}

/// Prints what was found; a problem is exit 5.
fn report(v: &StoreCheckView, json: bool) -> Result<(), CliError> {
    if json {
        let text = serde_json::to_string(v).map_err(|e| CliError::Failed(e.to_string()))?;
        println!("{text}");
    } else {
        println!(
            "checked {} ({} MiB): every page's checksum, and the tables over {} records, {} queued ops, {} parked conflicts, {} dead letters",
            v.path,
            v.store_bytes / (1024 * 1024),
            v.records,
            v.queued_ops,
            v.conflicts,
            v.dead_letters
        );
        for p in &v.problems {
            println!("problem: {p}");
        }
        if v.problem_count > v.problems.len() as u64 {
            println!("... and {} more", v.problem_count - v.problems.len() as u64);
        }
    }
    if v.problem_count == 0 {
        if !json {
            println!("ok: no problem found");
        }
        return Ok(());
    }
    Err(CliError::CheckFailed(format!(
        "{} problem(s) in {}: {}",
        v.problem_count, v.path, v.advice
    )))
}
