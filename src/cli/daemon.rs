//! `--socket` and `--config` for the commands that talk to a running
//! daemon, and how they pick the socket.
//!
//! Exists so that those two options belong only to the commands that use
//! them (not to `backend`), and so that every such command finds the
//! daemon the same way: `--socket`, else the socket named in `--config`,
//! else `$SYNCD_SOCKET`, else the default path. Flags beat the environment
//! (as in docker, kubectl and git), so a `--config` typed on the command
//! line is never overridden by a variable exported long ago.

use std::path::{Path, PathBuf};

use clap::Args;
use syncd::client::Client;
use syncd::config::Config;
use syncd::ipc::codec::Encoding;

use super::error::CliError;

/// Where the daemon listens. Accepted before the command
/// (`syncd --socket S status`) and after it (`syncd status --socket S`).
#[derive(Args, Clone, Debug, Default)]
pub struct DaemonOpts {
    /// Socket of the daemon (else the one in --config, else $SYNCD_SOCKET,
    /// else the default path).
    #[arg(long, value_name = "PATH")]
    pub socket: Option<PathBuf>,
    /// daemon.toml whose socket to use when --socket is not given (it
    /// beats $SYNCD_SOCKET).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// User (name or uid) the daemon runs as, when it is neither you nor
    /// root (e.g. `syncd` for the system service); the CLI refuses any
    /// other peer before sending anything.
    #[arg(long, value_name = "USER", env = "SYNCD_DAEMON_USER")]
    pub daemon_user: Option<String>,
}

impl DaemonOpts {
    /// These options, with the ones given before the command filling gaps.
    pub fn or(&self, outer: &DaemonOpts) -> DaemonOpts {
        DaemonOpts {
            socket: self.socket.clone().or_else(|| outer.socket.clone()),
            config: self.config.clone().or_else(|| outer.config.clone()),
            daemon_user: self
                .daemon_user
                .clone()
                .or_else(|| outer.daemon_user.clone()),
        }
    }

    /// Whether neither option was given.
    pub fn is_empty(&self) -> bool {
        self.socket.is_none() && self.config.is_none()
    }

    /// --socket, else the config's, else $SYNCD_SOCKET, else the default.
    pub fn socket_path(&self) -> Result<PathBuf, CliError> {
        if let Some(s) = &self.socket {
            return Ok(s.clone());
        }
        if let Some(p) = &self.config {
            return socket_from_config(p);
        }
        if let Some(s) = std::env::var_os("SYNCD_SOCKET").filter(|s| !s.is_empty()) {
            return Ok(PathBuf::from(s));
        }
        Ok(Config::default().daemon.socket)
    }

    /// A connection to the daemon, or `Unreachable` naming the socket.
    pub async fn connect(&self) -> Result<Client, CliError> {
        let path = self.socket_path()?;
        let uid = match self.daemon_user.as_deref().filter(|u| !u.is_empty()) {
            Some(u) => Some(user_uid(u)?),
            None => None,
        };
        Ok(Client::connect_trusting(&path, "syncd-cli", Encoding::Bincode, uid).await?)
    }
}

/// The uid of `user`, a number or a name in the user database.
fn user_uid(user: &str) -> Result<u32, CliError> {
    if let Ok(n) = user.parse::<u32>() {
        return Ok(n);
    }
    let unknown = || CliError::Usage(format!("--daemon-user: no user named {user:?}"));
    let name = std::ffi::CString::new(user).map_err(|_| unknown())?;
    let mut pw: libc::passwd = unsafe { std::mem::zeroed() };
    let mut buf = vec![0 as libc::c_char; 16 * 1024];
    let mut out: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: every pointer is valid for the call; buf outlives it and its
    // length is passed; the result is read only when `out` is non-null.
    let rc = unsafe {
        libc::getpwnam_r(
            name.as_ptr(),
            &mut pw,
            buf.as_mut_ptr(),
            buf.len(),
            &mut out,
        )
    };
    if rc != 0 || out.is_null() {
        return Err(unknown());
    }
    Ok(pw.pw_uid)
}

/// The socket a config file names, read leniently: a file the daemon
/// rejected (an invalid edit it is ignoring) still names the socket the
/// running daemon listens on, and talking to that daemon must not need a
/// valid file. Relative paths are taken from the file's directory, as the
/// daemon does; a file that names none means the default socket.
pub fn socket_from_config(path: &Path) -> Result<PathBuf, CliError> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        CliError::Usage(format!(
            "config error: {}: cannot read: {e}",
            path.display()
        ))
    })?;
    if syncd::config::is_blank(&text) {
        // The daemon refuses such a file (at start and on reload), so it
        // says nothing of where a running daemon listens: do not guess
        // the default socket, which may be another daemon.
        return Err(CliError::Usage(format!(
            "config error: {}: the file is empty, so it does not say which daemon it configures; name the socket with --socket",
            path.display()
        )));
    }
    let named = match text.parse::<toml::Table>() {
        Ok(t) => t
            .get("daemon")
            .and_then(|d| d.get("socket"))
            .and_then(|s| s.as_str())
            .map(str::to_owned),
        Err(_) => socket_line(&text),
    };
    let Some(named) = named.filter(|s| !s.is_empty()) else {
        return Ok(Config::default().daemon.socket);
    };
    let named = PathBuf::from(named);
    if named.is_relative() {
        let abs = std::path::absolute(path).unwrap_or_else(|_| path.to_owned());
        if let Some(dir) = abs.parent() {
            return Ok(dir.join(named));
        }
    }
    Ok(named)
}

/// `socket = "..."` under `[daemon]`, for a file TOML cannot parse.
fn socket_line(text: &str) -> Option<String> {
    let mut in_daemon = false;
    for line in text.lines().map(str::trim) {
        if line.starts_with('[') {
            in_daemon = line == "[daemon]";
            continue;
        }
        let Some((key, value)) = line.split_once('=') else {
            continue;
        };
        if in_daemon && key.trim() == "socket" {
            let v = value.trim();
            let quoted = v.strip_prefix('"').and_then(|v| v.split_once('"'));
            return quoted.map(|(s, _)| s.to_owned());
        }
    }
    None
}

/// The configuration at `path`, or the defaults; a bad file is a usage
/// error (exit 2), not an unreachable daemon.
pub fn load_config(path: Option<&std::path::Path>) -> Result<Config, CliError> {
    match path {
        Some(p) => Config::load(p).map_err(|e| CliError::Usage(format!("config error: {e}"))),
        None => Ok(Config::default()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn socket_is_found_in_an_invalid_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("d.toml");
        std::fs::write(&p, "[daemon]\nsocket = \"s.sock\"\nbogus = 1\n").unwrap();
        assert_eq!(socket_from_config(&p).unwrap(), dir.path().join("s.sock"));
        std::fs::write(&p, "[daemon]\nsocket = \"/x/s.sock\"\n[sync\nbroken").unwrap();
        assert_eq!(socket_from_config(&p).unwrap(), PathBuf::from("/x/s.sock"));
        std::fs::write(&p, "[backend]\nurl = 3\n").unwrap();
        assert_eq!(
            socket_from_config(&p).unwrap(),
            Config::default().daemon.socket
        );
    }
}
