//! Why a command failed, and the exit code each failure maps to.
//!
//! Exists so that the exit code is decided by the kind of failure (an enum
//! the caller matches on), never by parsing a message afterwards.

use std::fmt;

use syncd::client::ClientError;
use syncd::ipc::health::Trouble;

/// A failed command. `exit_code` is the contract in README.md "Usage":
/// 0 ok; 1 the daemon answered with an error; 2 usage; 3 not reachable;
/// 4 a `--wait` ran out of `--timeout`; 5 `check` found a problem; 10-17
/// `status --check` trouble.
#[derive(Debug)]
pub enum CliError {
    /// Bad arguments, an unreadable document or configuration: exit 2.
    Usage(String),
    /// The daemon is not reachable at the socket we picked: exit 3.
    Unreachable(ClientError),
    /// The daemon answered with an error, or the connection broke: exit 1.
    Client(ClientError),
    /// The command ran and failed (a wait gave up, sync cannot go on, the
    /// daemon or backend server stopped with an error): exit 1.
    Failed(String),
    /// A `--wait` gave up at its `--timeout`; the writes stay queued: exit 4.
    TimedOut(String),
    /// `syncd check` found a problem in the store: exit 5.
    CheckFailed(String),
    /// `status --check` found trouble: the exit code of its kind (10-17).
    Unhealthy(Trouble, String),
    /// Whoever reads our stdout went away (`syncd list todos | head`). Like
    /// most Unix filters we stop and exit 0 without a word.
    BrokenPipe,
    /// Writing to stdout failed for another reason (disk full): exit 1.
    Output(std::io::Error),
}

impl CliError {
    /// The process exit code for this failure.
    pub fn exit_code(&self) -> u8 {
        match self {
            CliError::BrokenPipe => 0,
            CliError::Client(_) | CliError::Failed(_) | CliError::Output(_) => 1,
            CliError::Usage(_) => 2,
            CliError::Unreachable(_) => 3,
            CliError::TimedOut(_) => 4,
            CliError::CheckFailed(_) => 5,
            CliError::Unhealthy(t, _) => t.exit_code(),
        }
    }

    /// Whether to say anything on stderr: not for a closed pipe.
    pub fn is_quiet(&self) -> bool {
        matches!(self, CliError::BrokenPipe)
    }

    /// An answer of the daemon that does not fit the request.
    pub fn unexpected(reply: impl fmt::Debug) -> CliError {
        CliError::Failed(format!("unexpected reply {reply:?}"))
    }
}

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CliError::Usage(m)
            | CliError::Failed(m)
            | CliError::TimedOut(m)
            | CliError::CheckFailed(m)
            | CliError::Unhealthy(_, m) => f.write_str(m),
            CliError::Unreachable(e) | CliError::Client(e) => write!(f, "{e}"),
            CliError::BrokenPipe => f.write_str("stdout closed"),
            CliError::Output(e) => write!(f, "cannot write to stdout: {e}"),
        }
    }
}

impl From<ClientError> for CliError {
    fn from(e: ClientError) -> Self {
        match e {
            ClientError::Unreachable { .. } => CliError::Unreachable(e),
            other => CliError::Client(other),
        }
    }
}

impl From<std::io::Error> for CliError {
    /// For writes to stdout: a closed pipe is not an error worth a word.
    fn from(e: std::io::Error) -> Self {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            CliError::BrokenPipe
        } else {
            CliError::Output(e)
        }
    }
}
