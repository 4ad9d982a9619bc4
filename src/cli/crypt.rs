//! `key generate`, `rekey` and `store encrypt|decrypt`: encryption at rest
//! from the command line (`syncd::store::crypt`).
//!
//! The conversions need the daemon stopped: they take the data_dir lock
//! that `syncd run` holds, so a running daemon is named, never raced. Each
//! survives a kill at any point and finishes when run again.

use std::fs::File;
use std::path::{Path, PathBuf};

use clap::{Args, Subcommand};
use syncd::config::{Config, Encryption};
use syncd::store::crypt::{convert, Key, KeySource};

use super::daemon::{load_config, DaemonOpts};
use super::error::CliError;

#[derive(Subcommand, Debug)]
pub enum KeyCmd {
    /// Write a new random store key (32 bytes, mode 0600); never overwrites.
    Generate {
        /// Where to write it.
        path: PathBuf,
    },
}

#[derive(Args, Debug)]
pub struct RekeyArgs {
    /// The new key (from `syncd key generate`); the store opens only with
    /// it afterwards.
    #[arg(long, value_name = "PATH")]
    new_key_file: PathBuf,
    /// daemon.toml naming the store and its current key.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
}

#[derive(Subcommand, Debug)]
pub enum StoreCmd {
    /// Seal a plain store and its attachments with [store]'s key (daemon stopped).
    Encrypt(ConvertArgs),
    /// Make a sealed store and its attachments plain again (daemon stopped).
    Decrypt(ConvertArgs),
}

#[derive(Args, Debug)]
pub struct ConvertArgs {
    /// daemon.toml naming the store and the key.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
}

pub fn key(cmd: &KeyCmd) -> Result<(), CliError> {
    match cmd {
        KeyCmd::Generate { path } => {
            let id = Key::generate_file(path).map_err(|e| CliError::Failed(e.to_string()))?;
            println!(
                "wrote a new store key to {} (key {id}); keep a copy somewhere safe: without it the store cannot be read",
                path.display()
            );
            Ok(())
        }
    }
}

pub async fn rekey(a: &RekeyArgs, outer: &DaemonOpts) -> Result<(), CliError> {
    let (cfg, path) = config(a.config.as_deref(), outer)?;
    let old = configured_key(&cfg, path.as_deref())?;
    // Said back as an absolute path: the config reads a relative one
    // from its own directory, not from here.
    let new_path = std::path::absolute(&a.new_key_file).unwrap_or(a.new_key_file.clone());
    let new = Key::load(&KeySource::File(new_path.clone()))
        .map_err(|e| CliError::Failed(e.to_string()))?;
    let dir = cfg.daemon.data_dir.clone();
    let done = stopped(&dir, move |d| convert::rekey(d, &old, &new)).await?;
    println!(
        "rekeyed {}: {} attachment file(s) re-sealed; the store now opens only with key {} ({}): set [store] key_file = \"{}\" (or replace the credential) before starting syncd",
        dir.display(),
        done.files,
        done.key.map(|k| k.to_string()).unwrap_or_default(),
        new_path.display(),
        new_path.display()
    );
    Ok(())
}

pub async fn store(cmd: &StoreCmd, outer: &DaemonOpts) -> Result<(), CliError> {
    let (a, encrypt) = match cmd {
        StoreCmd::Encrypt(a) => (a, true),
        StoreCmd::Decrypt(a) => (a, false),
    };
    let (cfg, path) = config(a.config.as_deref(), outer)?;
    let key = configured_key(&cfg, path.as_deref())?;
    let dir = cfg.daemon.data_dir.clone();
    let done = if encrypt {
        stopped(&dir, move |d| convert::encrypt(d, &key)).await?
    } else {
        stopped(&dir, move |d| convert::decrypt(d, &key)).await?
    };
    match done.key {
        Some(k) => println!(
            "{} is encrypted with key {k} ({} attachment file(s) sealed now)",
            dir.display(),
            done.files
        ),
        None => println!(
            "{} is plain now ({} attachment file(s) opened); set [store] encryption = \"off\" and remove the key before starting syncd",
            dir.display(),
            done.files
        ),
    }
    Ok(())
}

/// The config (`--config`, else the embedded defaults) and its path.
fn config(path: Option<&Path>, outer: &DaemonOpts) -> Result<(Config, Option<PathBuf>), CliError> {
    let path = path.map(Path::to_owned).or_else(|| outer.config.clone());
    Ok((load_config(path.as_deref())?, path))
}

/// The key `[store]` names; these commands need encryption on.
fn configured_key(cfg: &Config, path: Option<&Path>) -> Result<Key, CliError> {
    let source = match (cfg.store.encryption, cfg.store.key_source()) {
        (Encryption::On, Some(s)) => s,
        _ => {
            let which = match path {
                Some(p) => format!("the config {}", p.display()),
                None => "the embedded defaults (no --config given)".to_owned(),
            };
            return Err(CliError::Usage(format!(
                "{which} must set [store] encryption = \"on\" and key_file (or key_credential) naming the store's key"
            )));
        }
    };
    Key::load(&source).map_err(|e| CliError::Failed(e.to_string()))
}

/// Runs `work` on the blocking pool holding the data_dir lock (the
/// daemon must be stopped).
async fn stopped<T: Send + 'static>(
    dir: &Path,
    work: impl FnOnce(&Path) -> Result<T, convert::ConvertError> + Send + 'static,
) -> Result<T, CliError> {
    let store = dir.join("syncd.redb");
    if !store.exists() {
        return Err(CliError::Failed(format!(
            "no store at {}: nothing to convert (a new store is created as [store] encryption says)",
            store.display()
        )));
    }
    let lock = lock(dir)?;
    let d = dir.to_owned();
    let r = tokio::task::spawn_blocking(move || {
        let r = work(&d);
        drop(lock);
        r
    })
    .await
    .map_err(|e| CliError::Failed(format!("the conversion failed: {e}")))?;
    r.map_err(|e| CliError::Failed(format!("{}: {e}", dir.display())))
}

fn lock(dir: &Path) -> Result<File, CliError> {
    let path = dir.join("syncd.lock");
    let mut opts = File::options();
    opts.create(true).truncate(false).write(true);
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    let f = opts
        .open(&path)
        .map_err(|e| CliError::Failed(format!("cannot open {}: {e}", path.display())))?;
    match f.try_lock() {
        Ok(()) => Ok(f),
        Err(std::fs::TryLockError::WouldBlock) => Err(CliError::Failed(format!(
            "syncd is running on {} (or `syncd check` is): stop it first",
            dir.display()
        ))),
        Err(std::fs::TryLockError::Error(e)) => Err(CliError::Failed(format!(
            "cannot lock {}: {e}",
            path.display()
        ))),
    }
}
