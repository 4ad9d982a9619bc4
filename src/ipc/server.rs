//! The socket server: binds the socket, checks who is calling and hands
//! each accepted connection to its own session task.
//!
//! It exists to own the listening socket's life (its directory is checked
//! by [`crate::ipc::socket_dir`]; a stale socket file is replaced, a live
//! one is not; the file mode is the first access check, the peer's
//! credentials ([`crate::ipc::peer`]) the second)
//! and the [`Ctx`] every request is answered from. What happens on a
//! connection is [`crate::ipc::session`]'s business; each request kind
//! lives in [`crate::ipc::cmd`].

use std::path::Path;
use std::sync::Arc;

use interprocess::local_socket::tokio::{prelude::*, Listener, Stream};
use interprocess::local_socket::{GenericFilePath, ListenerOptions};
use tokio::sync::{watch, Semaphore};

use crate::ipc::peer::{own_uid, PeerPolicy};
use crate::ipc::wire::ErrorCode;
use crate::ipc::{session, socket_dir};

pub use crate::ipc::cmd::status::status;
pub use crate::ipc::cmd::MAX_LIST;

pub use crate::ipc::context::Ctx;

#[cfg(unix)]
fn is_socket(path: &Path) -> bool {
    use std::os::unix::fs::FileTypeExt;
    std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_socket())
}

#[cfg(not(unix))]
fn is_socket(_path: &Path) -> bool {
    true
}

/// Binds the socket at `path` with `mode`. A socket file nobody answers on
/// (left by a crash) is replaced; one a live daemon answers on is not.
pub async fn bind(path: &Path, mode: u32) -> std::io::Result<Listener> {
    if let Some(dir) = path.parent() {
        if !dir.as_os_str().is_empty() {
            socket_dir::ensure(dir, own_uid())
                .map_err(|p| std::io::Error::new(std::io::ErrorKind::PermissionDenied, p))?;
        }
    }
    if path.exists() {
        let name = path.to_fs_name::<GenericFilePath>()?;
        match Stream::connect(name).await {
            Ok(_) => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::AddrInUse,
                    format!(
                    "{} is in use by a running daemon (stop it first, or choose another socket)",
                    path.display()
                ),
                ))
            }
            // Only a socket nobody listens on is stale. Anything else at
            // the path (a busy daemon, a regular file) is not ours to delete.
            Err(e)
                if is_socket(path)
                    && matches!(
                        e.kind(),
                        std::io::ErrorKind::ConnectionRefused | std::io::ErrorKind::NotFound
                    ) =>
            {
                tracing::info!(socket = %path.display(), "replacing stale socket file");
                std::fs::remove_file(path)?;
            }
            Err(e) => {
                return Err(std::io::Error::new(
                    e.kind(),
                    format!(
                        "{} exists and is not a stale socket ({e}); not replacing it",
                        path.display()
                    ),
                ))
            }
        }
    }
    let name = path.to_fs_name::<GenericFilePath>()?;
    let opts = ListenerOptions::new().name(name).reclaim_name(true);
    #[cfg(unix)]
    let opts = {
        use interprocess::os::unix::local_socket::ListenerOptionsExt;
        opts.mode(mode as libc::mode_t)
    };
    #[cfg(not(unix))]
    let _ = mode;
    let listener = opts.create_tokio()?;
    // bind() applies the process umask to the mode set above; set the bits
    // the config asked for explicitly.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
    }
    Ok(listener)
}

/// The peer rule for the socket bound at `path` with `mode`: group access
/// (to the socket file's group) only when `mode` has group bits.
pub fn peer_policy(path: &Path, mode: u32) -> std::io::Result<PeerPolicy> {
    #[cfg(unix)]
    let group = {
        use std::os::unix::fs::MetadataExt;
        let gid = std::fs::metadata(path)?.gid();
        (mode & 0o060 != 0).then_some(gid)
    };
    #[cfg(not(unix))]
    let group = {
        let _ = (path, mode);
        None
    };
    Ok(PeerPolicy {
        daemon_uid: own_uid(),
        group,
    })
}

/// Tells a connection over `daemon.max_connections` why it is closed
/// (in a hello reply, the first frame the client expects), then closes it.
async fn refuse_busy(stream: Stream, max: u32) {
    tracing::warn!(max, "refused a connection: daemon.max_connections reached");
    let mut conn = crate::ipc::connection::Connection::new(stream, 0);
    let why = format!(
        "the daemon serves {max} connections already (daemon.max_connections); try again later"
    );
    let refusal = crate::ipc::hello::refuse(&mut conn, ErrorCode::TooManyConnections, why);
    // A client that never reads must not keep the task alive.
    let _ = tokio::time::timeout(std::time::Duration::from_secs(1), refusal).await;
}

/// Accepts until `shutdown` turns true (at most `daemon.max_connections`
/// served at once, fixed at start); connection tasks go to `tasks`.
pub async fn serve(
    listener: Listener,
    ctx: Arc<Ctx>,
    mut shutdown: watch::Receiver<bool>,
    tasks: &mut tokio::task::JoinSet<()>,
) {
    let max = ctx.config.borrow().daemon.max_connections;
    let slots = Arc::new(Semaphore::new(max as usize));
    loop {
        tokio::select! {
            _ = shutdown.changed() => break,
            r = listener.accept() => match r {
                Ok(conn) => {
                    let ctx = ctx.clone();
                    let Ok(slot) = slots.clone().try_acquire_owned() else {
                        tasks.spawn(refuse_busy(conn, max));
                        continue;
                    };
                    let sd = shutdown.clone();
                    tasks.spawn(async move {
                        ctx.metrics.connection().run(session::run(conn, ctx.clone(), sd)).await;
                        drop(slot);
                    });
                }
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            },
            // Reap finished connection tasks so the set stays small.
            Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
        }
    }
}
