//! The key files of a users-mode backend: the HS256 shared secret
//! (`--auth-secret-file`) and the PEM public key (`--auth-public-key`),
//! checked when the server starts.
//!
//! Why a file of its own: what makes a key file unusable (a short or empty
//! secret, a private key where the public one belongs) is policy that must
//! be refused before the first request, with a message that says what to
//! do; [`auth`](super::auth) only verifies tokens with the keys read here.

use std::fmt;
use std::path::{Path, PathBuf};

/// The shortest HS256 secret accepted: 32 bytes (256 bits, the size of the
/// HMAC-SHA256 output; RFC 7518 section 3.2).
pub const MIN_SECRET_BYTES: usize = 32;

/// Why a key file cannot be used.
#[derive(Debug)]
pub enum KeyError {
    /// The file cannot be read.
    Read {
        path: PathBuf,
        error: std::io::Error,
    },
    /// The secret file holds nothing but whitespace.
    EmptySecret(PathBuf),
    /// The secret is shorter than [`MIN_SECRET_BYTES`].
    ShortSecret { path: PathBuf, len: usize },
    /// A private key given where the public key belongs (`None`: not
    /// from a file).
    PrivateKey(Option<PathBuf>),
    /// Not a PEM Ed25519 or RSA public key (the parser's reason).
    NotAPublicKey { path: Option<PathBuf>, why: String },
}

/// `"<path>: "`, or nothing for a key that is not from a file.
struct In<'a>(&'a Option<PathBuf>);

impl fmt::Display for In<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(p) => write!(f, "{}: ", p.display()),
            None => Ok(()),
        }
    }
}

impl fmt::Display for KeyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeyError::Read { path, error } => write!(f, "cannot read {}: {error}", path.display()),
            KeyError::EmptySecret(path) => write!(f, "{}: the secret is empty", path.display()),
            KeyError::ShortSecret { path, len } => write!(
                f,
                "{}: the secret is {len} bytes; HS256 needs at least {MIN_SECRET_BYTES} \
                 (e.g. `openssl rand -base64 48 > {}`)",
                path.display(),
                path.display()
            ),
            KeyError::PrivateKey(path) => write!(
                f,
                "{}this is a private key; give the public key (e.g. `openssl pkey -in KEY \
                 -pubout`)",
                In(path)
            ),
            KeyError::NotAPublicKey { path, why } => {
                write!(f, "{}not a PEM Ed25519 or RSA public key ({why})", In(path))
            }
        }
    }
}

impl std::error::Error for KeyError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            KeyError::Read { error, .. } => Some(error),
            _ => None,
        }
    }
}

/// The bytes of a key file.
pub fn read_key_file(path: &Path) -> Result<Vec<u8>, KeyError> {
    std::fs::read(path).map_err(|error| KeyError::Read {
        path: path.to_path_buf(),
        error,
    })
}

/// A shared secret from a file: its bytes without trailing whitespace (so
/// `echo secret > file` works); empty or shorter than
/// [`MIN_SECRET_BYTES`] is refused.
pub fn read_secret(path: &Path) -> Result<Vec<u8>, KeyError> {
    let mut bytes = read_key_file(path)?;
    while bytes.last().is_some_and(u8::is_ascii_whitespace) {
        bytes.pop();
    }
    match bytes.len() {
        0 => Err(KeyError::EmptySecret(path.to_path_buf())),
        len if len < MIN_SECRET_BYTES => Err(KeyError::ShortSecret {
            path: path.to_path_buf(),
            len,
        }),
        _ => Ok(bytes),
    }
}

/// Whether the file at `path` may be read by its group or by others (Unix
/// permission bits; always `false` elsewhere or when it cannot be read).
pub fn readable_by_others(path: &Path) -> bool {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::metadata(path).is_ok_and(|m| m.permissions().mode() & 0o044 != 0)
    }
    #[cfg(not(unix))]
    {
        let _ = path;
        false
    }
}

/// Whether `pem` holds a private key (`-----BEGIN ... PRIVATE KEY-----`:
/// PKCS#8, PKCS#1 RSA, SEC1 EC, OpenSSH, encrypted PKCS#8).
pub fn is_private_pem(pem: &[u8]) -> bool {
    String::from_utf8_lossy(pem).lines().any(|line| {
        line.trim()
            .strip_prefix("-----BEGIN ")
            .is_some_and(|rest| rest.trim_end_matches('-').ends_with("PRIVATE KEY"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_lose_trailing_whitespace_and_must_be_long_enough() {
        let dir = tempfile::tempdir().expect("tempdir");
        let f = dir.path().join("s");
        let long = "k".repeat(MIN_SECRET_BYTES);
        std::fs::write(&f, format!("{long} \n")).expect("write");
        assert_eq!(read_secret(&f).expect("secret"), long.as_bytes());
        std::fs::write(&f, b"\n").expect("write");
        assert!(matches!(read_secret(&f), Err(KeyError::EmptySecret(_))));
        std::fs::write(&f, &long[1..]).expect("write");
        let short = read_secret(&f).expect_err("short");
        assert!(matches!(short, KeyError::ShortSecret { len: 31, .. }));
        assert!(short.to_string().contains("at least 32"), "{short}");
        assert!(matches!(
            read_secret(&dir.path().join("missing")),
            Err(KeyError::Read { .. })
        ));
    }

    #[cfg(unix)]
    #[test]
    fn group_or_other_read_bits_are_seen() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().expect("tempdir");
        let f = dir.path().join("s");
        std::fs::write(&f, b"x").expect("write");
        for (mode, open) in [(0o600, false), (0o640, true), (0o604, true), (0o400, false)] {
            std::fs::set_permissions(&f, std::fs::Permissions::from_mode(mode)).expect("chmod");
            assert_eq!(readable_by_others(&f), open, "{mode:o}");
        }
    }

    #[test]
    fn private_pems_are_recognised() {
        for label in [
            "PRIVATE KEY",
            "RSA PRIVATE KEY",
            "EC PRIVATE KEY",
            "OPENSSH PRIVATE KEY",
            "ENCRYPTED PRIVATE KEY",
        ] {
            let pem = format!("-----BEGIN {label}-----\nAAAA\n-----END {label}-----\n");
            assert!(is_private_pem(pem.as_bytes()), "{label}");
        }
        let public = "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n";
        assert!(!is_private_pem(public.as_bytes()));
        assert!(!is_private_pem(b"junk"));
    }
}
