//! Who may talk to the daemon, decided from the peer's kernel credentials.
//!
//! Exists because the socket file's mode is not enough on its own: a mode
//! that grants group access is only as good as the group check behind it,
//! and a directory mistake must not let other users in. The rule, checked
//! on every accepted connection (Linux):
//!
//! - the peer's effective uid (`SO_PEERCRED`, taken at `connect()`) is the
//!   daemon's uid, or 0 (root): admitted;
//! - else, only when `daemon.socket_mode` grants group bits, the peer is
//!   admitted if the socket file's group is its effective gid
//!   (`SO_PEERCRED`) or one of its supplementary groups, read from the
//!   `Groups:` line of `/proc/PID/status` of the `SO_PEERCRED` pid. That
//!   file's `Uid:` line must still show the same effective uid (so a pid
//!   reused by another process is not believed); if it cannot be read the
//!   peer is refused;
//! - everyone else is refused.
//!
//! The `/proc` read is file I/O: it runs on the blocking pool, bounded by
//! [`PROC_READ_LIMIT`], never on the session's runtime thread.

use interprocess::local_socket::tokio::Stream;

/// The admission rule, fixed when the socket is bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerPolicy {
    /// The daemon's own uid.
    pub daemon_uid: u32,
    /// The socket file's group, when `socket_mode` grants group access.
    pub group: Option<u32>,
}

/// Why a peer was turned away.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// The kernel gave no credentials for the peer.
    NoCredentials(String),
    /// The peer's uid is not the daemon's, not root, and no group applies.
    OtherUser { uid: u32, daemon_uid: u32 },
    /// Group access is on, but the peer is not in the socket's group.
    NotInGroup { uid: u32, gid: u32 },
    /// Group access is on, but the peer's groups could not be read.
    GroupsUnknown { uid: u32, pid: i32, reason: String },
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::NoCredentials(e) => write!(f, "cannot read peer credentials: {e}"),
            Refusal::OtherUser { uid, daemon_uid } => write!(
                f,
                "uid {uid} may not use this daemon (it runs as uid {daemon_uid}; set daemon.socket_mode = \"0660\" to share it with the socket's group)"
            ),
            Refusal::NotInGroup { uid, gid } => write!(
                f,
                "uid {uid} may not use this daemon: it is not a member of group {gid}, the socket's group"
            ),
            Refusal::GroupsUnknown { uid, pid, reason } => write!(
                f,
                "uid {uid} refused: cannot read the groups of pid {pid}: {reason}"
            ),
        }
    }
}

/// The daemon's uid (the client crate's, which the client checks against).
pub use syncd_client::client::own_uid;

/// Longest a peer's `/proc/PID/status` read may take; past it the peer
/// is refused (its groups are unknown).
pub const PROC_READ_LIMIT: std::time::Duration = std::time::Duration::from_secs(2);

/// Applies the rule in the module doc to the peer of `conn`.
#[cfg(target_os = "linux")]
pub async fn check(conn: &Stream, policy: &PeerPolicy) -> Result<(), Refusal> {
    use interprocess::local_socket::tokio::prelude::*;
    let creds = conn
        .peer_creds()
        .map_err(|e| Refusal::NoCredentials(e.to_string()))?;
    let uid = creds
        .euid()
        .ok_or_else(|| Refusal::NoCredentials("no uid".into()))?;
    if uid == policy.daemon_uid || uid == 0 {
        return Ok(());
    }
    let Some(gid) = policy.group else {
        return Err(Refusal::OtherUser {
            uid,
            daemon_uid: policy.daemon_uid,
        });
    };
    if creds.egid() == Some(gid) {
        return Ok(());
    }
    let pid = creds.pid().unwrap_or(0);
    let groups = proc_groups_off_runtime(pid, uid)
        .await
        .map_err(|reason| Refusal::GroupsUnknown { uid, pid, reason })?;
    if groups.contains(&gid) {
        Ok(())
    } else {
        Err(Refusal::NotInGroup { uid, gid })
    }
}

#[cfg(not(target_os = "linux"))]
pub async fn check(_conn: &Stream, _policy: &PeerPolicy) -> Result<(), Refusal> {
    // Elsewhere the socket's file mode is the access control.
    Ok(())
}

/// [`proc_groups`] on the blocking pool, within [`PROC_READ_LIMIT`].
#[cfg(target_os = "linux")]
async fn proc_groups_off_runtime(pid: i32, uid: u32) -> Result<Vec<u32>, String> {
    let read = tokio::task::spawn_blocking(move || proc_groups(pid, uid));
    match tokio::time::timeout(PROC_READ_LIMIT, read).await {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => Err(format!("/proc/{pid}/status: {e}")),
        Err(_) => Err(format!(
            "/proc/{pid}/status took longer than {}s to read",
            PROC_READ_LIMIT.as_secs()
        )),
    }
}

/// The supplementary groups of `pid`, if its effective uid is still `uid`.
#[cfg(target_os = "linux")]
fn proc_groups(pid: i32, uid: u32) -> Result<Vec<u32>, String> {
    if pid <= 0 {
        return Err("no pid".into());
    }
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .map_err(|e| format!("/proc/{pid}/status: {e}"))?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|rest| {
                rest.split_whitespace()
                    .filter_map(|n| n.parse::<u32>().ok())
                    .collect::<Vec<_>>()
            })
    };
    // Uid: real, effective, saved, filesystem.
    match field("Uid:") {
        Some(ids) if ids.get(1) == Some(&uid) => {}
        _ => return Err("the process changed or left".into()),
    }
    field("Groups:").ok_or_else(|| "no Groups: line".into())
}
