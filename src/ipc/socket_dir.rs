//! The directory the socket lives in: created private, checked before use.
//!
//! Exists because whoever controls that directory controls the socket: a
//! user who pre-creates `/tmp/syncd-UID` (or can write into the directory)
//! can swap the socket file for one of their own, or remove ours. So a
//! missing directory is created 0700 (whatever the umask), and an existing
//! one is refused unless it is a real directory (not a symlink), owned by
//! the daemon's uid or root, and writable by neither group nor others.
//! Read/search bits for group and others are allowed: a shared socket
//! (`socket_mode = "0660"`) needs its group to reach it.

use std::path::{Path, PathBuf};

/// Why the socket's directory may not be used.
#[derive(Debug)]
pub enum DirProblem {
    /// It could not be created or inspected.
    Io {
        dir: PathBuf,
        source: std::io::Error,
    },
    /// It is a symbolic link.
    Symlink { dir: PathBuf },
    /// It exists but is not a directory.
    NotADirectory { dir: PathBuf },
    /// Another user owns it.
    Owner { dir: PathBuf, owner: u32, uid: u32 },
    /// Group or others may write into it.
    Writable { dir: PathBuf, mode: u32 },
}

impl std::fmt::Display for DirProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DirProblem::Io { dir, source } => {
                write!(f, "socket directory {}: {source}", dir.display())
            }
            DirProblem::Symlink { dir } => write!(
                f,
                "socket directory {} is a symbolic link; refusing to use it (remove it, or set daemon.socket)",
                dir.display()
            ),
            DirProblem::NotADirectory { dir } => {
                write!(f, "socket directory {} is not a directory", dir.display())
            }
            DirProblem::Owner { dir, owner, uid } => write!(
                f,
                "socket directory {} is owned by uid {owner}, not by this daemon's uid {uid} or root; refusing to use it (someone else may control the socket: remove the directory, or set daemon.socket)",
                dir.display()
            ),
            DirProblem::Writable { dir, mode } => write!(
                f,
                "socket directory {} has mode {mode:04o}: group or others may write into it, so another user could replace the socket; refusing to use it. Set daemon.socket to a path in a directory that only this user can write (syncd creates a missing one with mode 0700), e.g. {}",
                dir.display(),
                private_example()
            ),
        }
    }
}

impl std::error::Error for DirProblem {}

/// A socket path to suggest instead of a shared directory: never "chmod"
/// advice, which on a shared directory such as /tmp (mode 1777) would
/// break every other user of it.
fn private_example() -> String {
    match std::env::var_os("XDG_RUNTIME_DIR").filter(|d| !d.is_empty()) {
        Some(d) => format!("\"{}/syncd/syncd.sock\"", Path::new(&d).display()),
        None => format!("\"/tmp/syncd-{}/syncd.sock\"", crate::ipc::peer::own_uid()),
    }
}

/// Creates `dir` 0700 if it is missing, then checks it (see module doc).
#[cfg(unix)]
pub fn ensure(dir: &Path, uid: u32) -> Result<(), DirProblem> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
    let io = |source| DirProblem::Io {
        dir: dir.to_owned(),
        source,
    };
    let meta = match std::fs::symlink_metadata(dir) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(io)?;
            // The umask may have taken bits away; never added any. Be exact.
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(io)?;
            std::fs::symlink_metadata(dir).map_err(io)?
        }
        Err(e) => return Err(io(e)),
    };
    let dir = dir.to_owned();
    if meta.file_type().is_symlink() {
        return Err(DirProblem::Symlink { dir });
    }
    if !meta.is_dir() {
        return Err(DirProblem::NotADirectory { dir });
    }
    if meta.uid() != uid && meta.uid() != 0 {
        return Err(DirProblem::Owner {
            dir,
            owner: meta.uid(),
            uid,
        });
    }
    let mode = meta.mode() & 0o7777;
    if mode & 0o022 != 0 {
        return Err(DirProblem::Writable { dir, mode });
    }
    Ok(())
}

#[cfg(not(unix))]
pub fn ensure(dir: &Path, _uid: u32) -> Result<(), DirProblem> {
    std::fs::create_dir_all(dir).map_err(|source| DirProblem::Io {
        dir: dir.to_owned(),
        source,
    })
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn mode(p: &Path) -> u32 {
        std::fs::metadata(p).unwrap().permissions().mode() & 0o777
    }

    /// A shared directory such as /tmp is refused with advice that does
    /// not break it for everyone else ("chmod go-w /tmp" would).
    #[test]
    fn shared_tmp_gets_no_chmod_advice() {
        let e = ensure(Path::new("/tmp"), crate::ipc::peer::own_uid())
            .unwrap_err()
            .to_string();
        assert!(e.contains("/tmp") && !e.contains("chmod"), "{e}");
        assert!(
            e.contains("daemon.socket") && e.contains("only this user"),
            "{e}"
        );
    }

    #[test]
    fn created_private_and_checked() {
        let t = tempfile::tempdir().unwrap();
        let uid = crate::ipc::peer::own_uid();
        let d = t.path().join("a/b");
        ensure(&d, uid).unwrap();
        assert_eq!(mode(&d), 0o700);
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o777)).unwrap();
        let e = ensure(&d, uid).unwrap_err().to_string();
        assert!(
            e.contains(&d.display().to_string()) && e.contains("write"),
            "{e}"
        );
        assert!(!e.contains("chmod") && e.contains("daemon.socket"), "{e}");
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o755)).unwrap();
        ensure(&d, uid).unwrap();
        let link = t.path().join("link");
        std::os::unix::fs::symlink(&d, &link).unwrap();
        let e = ensure(&link, uid).unwrap_err();
        assert!(matches!(e, DirProblem::Symlink { .. }), "{e}");
        // A root-owned directory is trusted by any daemon uid; one owned
        // by a non-root uid is refused to every other uid.
        if uid != 0 {
            let e = ensure(&d, uid + 1).unwrap_err();
            assert!(matches!(e, DirProblem::Owner { .. }), "{e}");
        }
    }
}
