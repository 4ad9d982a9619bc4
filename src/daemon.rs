//! Wiring: config, store, writer, socket server, sync worker, signals and
//! an orderly shutdown. No logic of its own beyond starting and stopping.
//!
//! Shutdown (SIGTERM/SIGINT): stop accepting, let each connection finish
//! the request it is on, let the writer commit what it holds, remove the
//! socket file, exit 0; all within ~5 s.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{broadcast, mpsc, watch, Notify};
use tracing_subscriber::{reload, EnvFilter};

use crate::config::{Config, LogFormat};
use crate::ipc::server::{self, Ctx};
use crate::metrics::{Metrics, RuntimeInfo};
use crate::store::{tables::META_PAUSED, writer, Store};
use crate::sync::SyncControl;

/// Capacity of the watch-event channel: a subscriber this far behind gets
/// `resync_needed` instead of holding writers back.
const EVENT_BUFFER: usize = 4096;

/// How long shutdown waits for connections to finish their request.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(3);

pub type LogHandle = reload::Handle<EnvFilter, tracing_subscriber::Registry>;

/// Sets up logging to stderr in `format`; the handle changes the level on
/// reload. Text gets ANSI colours only when stderr is a terminal (never in
/// a file or the journal); JSON never does.
pub fn init_logging(level: &str, format: LogFormat) -> LogHandle {
    use std::io::IsTerminal;
    use tracing_subscriber::prelude::*;
    let filter = EnvFilter::try_new(level).unwrap_or_else(|_| EnvFilter::new("info"));
    let (layer, handle) = reload::Layer::new(filter);
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let registry = tracing_subscriber::registry().with(layer);
    let _ = match format {
        LogFormat::Text => registry
            .with(fmt.with_ansi(std::io::stderr().is_terminal()))
            .try_init(),
        LogFormat::Json => registry
            .with(fmt.json().with_ansi(false).flatten_event(true))
            .try_init(),
    };
    handle
}

/// Why the daemon could not start.
#[derive(Debug)]
pub struct StartError(pub String);

impl std::fmt::Display for StartError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for StartError {}

/// Creates `dir` (and missing parents) 0700 whatever the umask: the store
/// is nobody else's business. An existing directory is left as it is.
fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    if dir.exists() {
        return Ok(());
    }
    let mut b = std::fs::DirBuilder::new();
    b.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
        b.mode(0o700).create(dir)?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
    }
    #[cfg(not(unix))]
    b.create(dir)
}

/// Takes the data_dir lock: one daemon per store. Also proves the
/// directory is writable, so that problem is named before the store opens.
fn lock_data_dir(dir: &Path) -> Result<File, StartError> {
    create_private_dir(dir)
        .map_err(|e| StartError(format!("cannot create data_dir {}: {e}", dir.display())))?;
    let path = dir.join("syncd.lock");
    let mut opts = std::fs::OpenOptions::new();
    opts.create(true).truncate(false).write(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    let f = opts.open(&path).map_err(|e| {
        StartError(format!(
            "data_dir {} is not writable (cannot open lock file {}: {e}); fix its owner or permissions, or set daemon.data_dir",
            dir.display(),
            path.display()
        ))
    })?;
    match f.try_lock() {
        Ok(()) => Ok(f),
        Err(std::fs::TryLockError::WouldBlock) => Err(StartError(format!(
            "another syncd is already running on data_dir {} (lock file {} is held; a running `syncd check` holds it too, until it ends)",
            dir.display(),
            path.display()
        ))),
        Err(std::fs::TryLockError::Error(e)) => {
            Err(StartError(format!("cannot lock {}: {e}", path.display())))
        }
    }
}

/// Tells systemd (Type=notify) that we are ready, if it is listening.
fn sd_notify(msg: &str) {
    #[cfg(target_os = "linux")]
    {
        use std::os::linux::net::SocketAddrExt;
        use std::os::unix::net::{SocketAddr, UnixDatagram};
        let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
            return;
        };
        let path = path.to_string_lossy().into_owned();
        let addr = match path.strip_prefix('@') {
            Some(abs) => SocketAddr::from_abstract_name(abs.as_bytes()),
            None => SocketAddr::from_pathname(&path),
        };
        let sent = addr.and_then(|a| UnixDatagram::unbound()?.send_to_addr(msg.as_bytes(), &a));
        if let Err(e) = sent {
            tracing::warn!(error = %e, "sd_notify failed");
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = msg;
}

/// Signals the daemon reacts to.
#[derive(Debug, Clone, Copy)]
enum Sig {
    Stop,
    Reload,
}

/// Forwards SIGTERM/SIGINT/SIGHUP from a signal-hook thread into the
/// runtime.
fn signals() -> Result<mpsc::UnboundedReceiver<Sig>, StartError> {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    let mut sigs = signal_hook::iterator::Signals::new([SIGTERM, SIGINT, SIGHUP])
        .map_err(|e| StartError(format!("cannot install signal handlers: {e}")))?;
    let (tx, rx) = mpsc::unbounded_channel();
    std::thread::Builder::new()
        .name("syncd-signals".into())
        .spawn(move || {
            for s in sigs.forever() {
                let sig = if s == SIGHUP { Sig::Reload } else { Sig::Stop };
                if tx.send(sig).is_err() {
                    break;
                }
            }
        })
        .map_err(|e| StartError(format!("cannot start signal thread: {e}")))?;
    Ok(rx)
}

/// Loads the config again; a valid one replaces the current, an invalid one
/// is logged and ignored.
async fn reload_config(
    path: &Path,
    cfg_tx: &watch::Sender<Arc<Config>>,
    log: &LogHandle,
    runtime: &RuntimeInfo,
    store: &Store,
) {
    // File I/O: on the blocking pool, never on the runtime's threads.
    let owned = path.to_owned();
    let loaded = tokio::task::spawn_blocking(move || Config::load(&owned)).await;
    let loaded = loaded.unwrap_or_else(|e| {
        Err(crate::config::ConfigError {
            file: Some(path.to_owned()),
            place: None,
            line: None,
            problem: crate::config::ConfigProblem::Unreadable(format!(
                "the reading task failed: {e}"
            )),
        })
    });
    let new = match loaded {
        Ok(c) => c,
        Err(e) => {
            runtime.set_reload_error(Some(e.to_string())); // status: the file is not in force
            tracing::error!("config reload rejected, keeping the current config: {e}");
            return;
        }
    };
    runtime.set_reload_error(None); // status: the file is in force again
    let old = cfg_tx.borrow().clone();
    if *old == new {
        // Same settings; still tell the worker, which re-reads the token
        // file on every reload.
        tracing::info!(file = %path.display(), "config reloaded (unchanged)");
        cfg_tx.send_replace(Arc::new(new));
        return;
    }
    for (key, changed) in [
        (
            "daemon.log_format",
            old.daemon.log_format != new.daemon.log_format,
        ),
        ("daemon.socket", old.daemon.socket != new.daemon.socket),
        (
            "daemon.data_dir",
            old.daemon.data_dir != new.daemon.data_dir,
        ),
        (
            "daemon.socket_mode",
            old.daemon.socket_mode != new.daemon.socket_mode,
        ),
        (
            "daemon.cache_mib",
            old.daemon.cache_mib != new.daemon.cache_mib,
        ),
        ("store", old.store != new.store),
    ] {
        if changed {
            tracing::warn!(
                key,
                "changed in the config file; takes effect at the next restart"
            );
        }
    }
    warn_notable(&old, &new);
    if old.daemon.log_level != new.daemon.log_level {
        if let Ok(f) = EnvFilter::try_new(&new.daemon.log_level) {
            let _ = log.reload(f);
        }
    }
    tracing::info!(file = %path.display(), "config reloaded");
    // The writer decides by it from its next transaction on.
    store.set_directions(new.directions());
    cfg_tx.send_replace(Arc::new(new));
}

/// One warn line for each change a reload makes that changes what sync
/// does with the user's data (the backend, a conflict strategy), with the
/// old and the new value, so that a person reading the journal sees it.
fn warn_notable(old: &Config, new: &Config) {
    use crate::config::NotableChange;
    for c in crate::config::notable_changes(old, new) {
        match c {
            NotableChange::Backend { old, new } => tracing::warn!(
                old = old.as_deref().unwrap_or("(none)"),
                new = new.as_deref().unwrap_or("(none)"),
                "config reload changes the backend"
            ),
            NotableChange::Strategy {
                collection,
                old,
                new,
            } => tracing::warn!(
                collection,
                old = old.as_str(),
                new = new.as_str(),
                "config reload changes a conflict strategy"
            ),
            NotableChange::Direction {
                collection,
                old,
                new,
            } => tracing::warn!(
                collection,
                old = old.as_str(),
                new = new.as_str(),
                "config reload changes a collection's sync direction; ops already queued for it are still sent"
            ),
        }
    }
}

/// Runs the daemon until SIGTERM/SIGINT. `config_path` is `None` for the
/// embedded defaults.
/// `loaded` is the config file as it was when `config` was read from it
/// ([`crate::config::stamp`] taken before the read): an edit that lands
/// while the daemon starts is then reloaded once the watch is up.
pub async fn run(
    config: Config,
    config_path: Option<PathBuf>,
    loaded: Option<crate::config::Stamp>,
    log: LogHandle,
) -> Result<(), StartError> {
    let mode = config.socket_mode().map_err(StartError)?;
    let data_dir = config.daemon.data_dir.clone();
    let socket = config.daemon.socket.clone();
    let _lock = lock_data_dir(&data_dir)?;

    let vault =
        crate::store::crypt::vault_for(&config.store).map_err(|e| open_failed(&data_dir, e))?;
    let (store, paused) = open_store(
        &data_dir,
        config.daemon.cache_mib as usize * 1024 * 1024,
        vault,
    )
    .await?;
    let (events, _) = broadcast::channel(EVENT_BUFFER);
    let queue_changed = Arc::new(Notify::new());
    let (writer, writer_thread) =
        writer::spawn(store.clone(), events.clone(), queue_changed.clone())
            .map_err(|e| StartError(format!("cannot start writer: {e}")))?;
    let sync = SyncControl::new(paused);

    // Operability: counters, and the runtime facts `status` reports.
    let metrics = Arc::new(Metrics::new());
    if let crate::store::OpenCheck::Full { took, .. } = store.open_check() {
        metrics.open_checked(*took);
    }
    let runtime = Arc::new(RuntimeInfo::new(
        config_path.clone(),
        socket.clone(),
        data_dir.clone(),
    ));
    let metrics_listen = config
        .metrics
        .listen_addr()
        .map_err(|e| StartError(format!("key `metrics.listen`: {e}")))?;
    store.set_directions(config.directions());
    let (cfg_tx, cfg_rx) = watch::channel(Arc::new(config));
    let mut sigs = signals()?;
    let mut cfg_watch = config_path.as_deref().and_then(|p| {
        crate::config::watch_file(p, Some(loaded))
            .map_err(|e| tracing::warn!("config file not watched ({e}); SIGHUP still reloads"))
            .ok()
    });

    let listener = server::bind(&socket, mode)
        .await
        .map_err(|e| StartError(format!("cannot listen on {}: {e}", socket.display())))?;

    let peers = server::peer_policy(&socket, mode)
        .map_err(|e| StartError(format!("cannot inspect {}: {e}", socket.display())))?;
    let blobs = crate::store::blobs::BlobDir::open(&data_dir)
        .map_err(|e| StartError(format!("cannot open the attachment files: {e}")))?;
    let blobs = store.seal_blobs(blobs);
    let transfers = crate::sync::attachments::Transfers::new(blobs);
    let ctx = Arc::new(Ctx {
        transfers: transfers.clone(),
        peers,
        store: store.clone(),
        writer: writer.clone(),
        events: events.clone(),
        config: cfg_rx.clone(),
        sync: sync.clone(),
        metrics: metrics.clone(),
        runtime: runtime.clone(),
    });

    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let worker = crate::sync::worker::spawn(crate::sync::worker::WorkerDeps {
        store: store.clone(),
        writer: writer.clone(),
        config: cfg_rx.clone(),
        control: sync.clone(),
        queue_changed,
        shutdown: shutdown_rx.clone(),
        connector: None,
        metrics: metrics.clone(),
        watch_network: true,
        reads: crate::sync::reads::ReadMode::Pool,
        transfers: transfers.clone(),
    });
    let downloader = tokio::spawn(crate::sync::downloader::run(
        transfers,
        store.clone(),
        events.subscribe(),
        cfg_rx.clone(),
        shutdown_rx.clone(),
    ));
    let index_keeper = tokio::spawn(crate::store::index_keeper::run(
        store.clone(),
        writer.clone(),
        cfg_rx.clone(),
        shutdown_rx.clone(),
    ));
    drop(writer);

    let server = spawn_server(listener, ctx.clone(), shutdown_rx.clone());

    let metrics_http = match metrics_listen {
        Some(addr) => Some(spawn_metrics_http(addr, ctx.clone(), shutdown_rx.clone()).await?),
        None => None,
    };

    tracing::info!(socket = %socket.display(), data_dir = %data_dir.display(), client_id = %store.client_id(), "syncd ready");
    sd_notify("READY=1");

    wait_for_stop(
        &mut sigs,
        cfg_watch.as_mut(),
        config_path.as_deref(),
        &cfg_tx,
        &log,
        &runtime,
        &store,
    )
    .await;

    let running = Running {
        store,
        shutdown_tx,
        server,
        metrics_http,
        worker,
        index_keeper,
        downloader,
        ctx,
        writer_thread,
    };
    running.stop(&socket).await;
    tracing::info!("stopped");
    Ok(())
}

/// Opens the store on the blocking pool: when it was not closed cleanly,
/// the open reads every page of the file.
/// Opens the store and reads its paused flag, both on the blocking pool
/// (the open may check every page).
async fn open_store(
    data_dir: &Path,
    cache_bytes: usize,
    vault: crate::store::crypt::Vault,
) -> Result<(Store, bool), StartError> {
    let dir = data_dir.to_owned();
    let opened = tokio::task::spawn_blocking(move || {
        let store = Store::open_with(&dir, cache_bytes, vault).map_err(|e| open_failed(&dir, e))?;
        let paused = read_paused(&store, &dir)?;
        Ok((store, paused))
    })
    .await;
    opened.unwrap_or_else(|e| Err(open_failed(data_dir, e)))
}

fn open_failed(data_dir: &Path, e: impl std::fmt::Display) -> StartError {
    StartError(format!("cannot open store in {}: {e}", data_dir.display()))
}

/// A flag that cannot be read is not "not paused": syncing against the
/// user's pause is not an option, so the daemon does not start.
fn read_paused(store: &Store, data_dir: &Path) -> Result<bool, StartError> {
    let flag = store.meta(META_PAUSED).map_err(|e| {
        StartError(format!(
            "cannot read the paused flag from the store in {}: {e}; not starting, so as not to sync while paused",
            data_dir.display()
        ))
    })?;
    Ok(flag.as_deref() == Some(b"1"))
}

/// The daemon's running parts, stopped in order by [`Running::stop`].
struct Running {
    store: Store,
    shutdown_tx: watch::Sender<bool>,
    server: tokio::task::JoinHandle<()>,
    metrics_http: Option<tokio::task::JoinHandle<()>>,
    worker: tokio::task::JoinHandle<()>,
    index_keeper: tokio::task::JoinHandle<()>,
    downloader: tokio::task::JoinHandle<()>,
    ctx: Arc<Ctx>,
    writer_thread: std::thread::JoinHandle<()>,
}

impl Running {
    /// Stops accepting, lets open requests and the worker finish, then
    /// waits for the writer's last commit and removes the socket file.
    async fn stop(self, socket: &std::path::Path) {
        tracing::info!("shutting down");
        sd_notify("STOPPING=1");
        let _ = self.shutdown_tx.send(true);
        let _ = self.server.await;
        if let Some(h) = self.metrics_http {
            let _ = h.await;
        }
        let _ = tokio::time::timeout(Duration::from_secs(1), self.worker).await;
        let _ = tokio::time::timeout(Duration::from_secs(1), self.index_keeper).await;
        self.downloader.abort();
        drop(self.ctx);
        // The writer thread ends when the last handle is gone; it finishes the
        // batch it is committing first.
        let joined = tokio::task::spawn_blocking(move || self.writer_thread.join());
        let _ = tokio::time::timeout(Duration::from_secs(1), joined).await;
        // The clean-shutdown mark lets the next start skip the page check.
        let store = self.store;
        let closed = tokio::task::spawn_blocking(move || store.close(Duration::from_secs(2))).await;
        match closed {
            Ok(Ok(())) => tracing::debug!("store closed cleanly"),
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "store not closed cleanly; the next start checks every page")
            }
            Err(e) => {
                tracing::warn!(error = %e, "store close failed; the next start checks every page")
            }
        }
        if socket.exists() {
            let _ = std::fs::remove_file(socket);
        }
    }
}

/// The socket server: accepts until shutdown, then gives open requests
/// [`DRAIN_TIMEOUT`] to finish (dropping the listener removes the socket
/// file at once).
fn spawn_server(
    listener: interprocess::local_socket::tokio::Listener,
    ctx: Arc<Ctx>,
    shutdown: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut conns = tokio::task::JoinSet::new();
        server::serve(listener, ctx, shutdown, &mut conns).await;
        let _ = tokio::time::timeout(DRAIN_TIMEOUT, async {
            while conns.join_next().await.is_some() {}
        })
        .await;
        conns.abort_all();
    })
}

/// Runs until SIGTERM/SIGINT, reloading the config on SIGHUP and on every
/// edit of the file.
async fn wait_for_stop(
    sigs: &mut mpsc::UnboundedReceiver<Sig>,
    mut cfg_watch: Option<&mut crate::config::FileWatch>,
    config_path: Option<&std::path::Path>,
    cfg_tx: &watch::Sender<Arc<Config>>,
    log: &LogHandle,
    runtime: &RuntimeInfo,
    store: &Store,
) {
    loop {
        let changed = async {
            match cfg_watch.as_deref_mut() {
                Some(w) => w.changes.recv().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            s = sigs.recv() => match s {
                Some(Sig::Reload) => match config_path {
                    Some(p) => {
                        // This read takes the file as it is: the watch
                        // must not reload the same edit again.
                        if let Some(w) = cfg_watch.as_deref() { w.taken(); }
                        reload_config(p, cfg_tx, log, runtime, store).await
                    }
                    None => tracing::info!("SIGHUP: running on embedded defaults, nothing to reload"),
                },
                Some(Sig::Stop) | None => break,
            },
            // The watch reports a change only once the file has settled
            // (config::SETTLE), so an editor's several writes are one reload.
            Some(()) = changed => {
                if let Some(p) = config_path { reload_config(p, cfg_tx, log, runtime, store).await; }
            }
        }
    }
}

/// Binds `[metrics] listen` and serves `/metrics` and `/health` on it.
async fn spawn_metrics_http(
    addr: std::net::SocketAddr,
    ctx: Arc<Ctx>,
    shutdown: watch::Receiver<bool>,
) -> Result<tokio::task::JoinHandle<()>, StartError> {
    let l = crate::ipc::metrics_http::bind(addr)
        .await
        .map_err(|e| StartError(format!("cannot listen on metrics.listen {addr}: {e}")))?;
    tracing::info!(listen = %addr, "serving /metrics and /health");
    Ok(tokio::spawn(crate::ipc::metrics_http::serve(
        l, ctx, shutdown,
    )))
}
