//! `backend`: the reference backend server (docs/backend-protocol.md),
//! with fault injection for tests and demos.
//!
//! Exists so that syncd can be tried, tested and benchmarked end to end
//! without writing a server first. It does not talk to a daemon, so it
//! takes no --socket or --config.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Args;
use syncd::backend::server::{self, Faults, ServerOptions};

use super::error::CliError;

#[derive(Args, Debug)]
pub struct BackendArgs {
    /// Address to listen on (port 0 picks one; the chosen address is printed).
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// Directory of the backend's store (redb).
    #[arg(long, value_name = "DIR", required_unless_present = "postgres")]
    data: Option<PathBuf>,
    /// Store in this PostgreSQL database instead of --data (a postgres:// URL
    /// or a key=value string); several backends may share one database.
    #[arg(
        long,
        value_name = "URL",
        conflicts_with = "data",
        env = "SYNCD_BACKEND_POSTGRES",
        hide_env_values = true
    )]
    postgres: Option<String>,
    /// Require this bearer token.
    #[arg(long, env = "SYNCD_BACKEND_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Fraction of requests answered 503 with Retry-After.
    #[arg(long, default_value_t = 0.0, value_name = "FRACTION")]
    fail_503: f64,
    /// Retry-After seconds on injected 503s.
    #[arg(long, default_value_t = 1, value_name = "SECONDS")]
    retry_after: u64,
    /// Fraction of requests that hang for --hang-ms before answering.
    #[arg(long, default_value_t = 0.0, value_name = "FRACTION")]
    hang: f64,
    /// How long a request picked by --hang hangs, milliseconds.
    #[arg(long, default_value_t = 30_000, value_name = "MS")]
    hang_ms: u64,
    /// Fraction of op requests applied and then dropped without a reply.
    #[arg(long, default_value_t = 0.0, value_name = "FRACTION")]
    drop_after_apply: f64,
    /// Answer 404 to v1/ops/batch (a server without batch support).
    #[arg(long)]
    no_batch: bool,
    /// Largest request body, bytes.
    #[arg(long, default_value_t = 8 * 1024 * 1024, value_name = "BYTES")]
    max_body_bytes: usize,
    /// Serve https: PEM certificate chain (with --tls-key).
    #[arg(long, requires = "tls_key", value_name = "PEM")]
    tls_cert: Option<PathBuf>,
    /// PEM private key for --tls-cert.
    #[arg(long, requires = "tls_cert", value_name = "PEM")]
    tls_key: Option<PathBuf>,
}

/// Serves until interrupted.
pub async fn run(a: &BackendArgs) -> Result<(), CliError> {
    let _log = syncd::daemon::init_logging("info", syncd::config::LogFormat::Text);
    let tls = match (&a.tls_cert, &a.tls_key) {
        (Some(c), Some(k)) => {
            Some(server::load_tls(c, k).map_err(|e| CliError::Usage(format!("backend TLS: {e}")))?)
        }
        _ => None,
    };
    let opts = ServerOptions {
        listen: a.listen,
        data_dir: a.data.clone().unwrap_or_default(),
        postgres: a.postgres.clone(),
        token: a.token.clone(),
        faults: Faults {
            fail_503: a.fail_503,
            retry_after_s: a.retry_after,
            hang: a.hang,
            hang_ms: a.hang_ms,
            drop_after_apply: a.drop_after_apply,
            no_batch: a.no_batch,
        },
        max_body_bytes: a.max_body_bytes,
        tls,
    };
    server::run(opts)
        .await
        .map_err(|e| CliError::Failed(format!("backend: {e}")))
}
