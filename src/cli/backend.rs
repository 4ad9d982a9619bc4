//! `backend`: the reference backend server (docs/backend-protocol.md),
//! with fault injection for tests and demos; `backend token` mints a
//! users-mode token.
//!
//! Exists so that syncd can be tried, tested and benchmarked end to end
//! without writing a server first. It does not talk to a daemon, so it
//! takes no --socket or --config.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Subcommand};
use syncd::backend::server::auth::{self, Claims, Verifier};
use syncd::backend::server::{self, Faults, ServerOptions};

use super::error::CliError;

#[derive(Args, Debug)]
#[command(
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true,
    after_help = "Auth: --token T serves one tenant (protocol revision 2). \
                  --auth-secret-file or --auth-public-key serve users and scopes \
                  (revision 3): every request but v1/health needs a JWT with `sub` and \
                  `exp` (no leeway), optional `scopes` (read+write) and `read_scopes`; \
                  `syncd backend token` mints HS256 ones."
)]
pub struct BackendArgs {
    #[command(subcommand)]
    cmd: Option<BackendCmd>,
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
    /// Require this bearer token (single-tenant, protocol revision 2).
    #[arg(long, env = "SYNCD_BACKEND_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Users and scopes: verify HS256 JWTs with the secret in FILE
    /// (trailing whitespace ignored).
    #[arg(long, value_name = "FILE", conflicts_with = "auth_public_key")]
    auth_secret_file: Option<PathBuf>,
    /// Users and scopes: verify JWTs with this PEM public key (Ed25519:
    /// EdDSA; RSA: RS256).
    #[arg(long, value_name = "FILE")]
    auth_public_key: Option<PathBuf>,
    /// Users and scopes: tokens must carry this `aud` (else `aud` is not
    /// checked). Set it with --auth-public-key, so that tokens your auth
    /// server mints for other services are refused.
    #[arg(long, value_name = "AUD")]
    auth_audience: Option<String>,
    /// Users and scopes: tokens must carry this `iss` (else not checked).
    #[arg(long, value_name = "ISS")]
    auth_issuer: Option<String>,
    /// Serve single-tenant (--token or no auth) even a store that has held
    /// users and scopes: every user's records become writable by this
    /// server's clients (on PostgreSQL, v1/changes carries only the
    /// `default` scope's changes). Without it, such a start is refused.
    #[arg(long)]
    allow_single_tenant_over_users: bool,
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
    /// Keep attachment content no record references (and unfinished
    /// uploads) this long before collecting it (e.g. 24h, 30m, 5s).
    #[arg(long, default_value = "24h", value_parser = parse_ttl, value_name = "DURATION")]
    blob_retention: u64,
}

#[derive(Subcommand, Debug)]
enum BackendCmd {
    /// Print an HS256 token for a users-mode backend (one line on stdout).
    Token(TokenArgs),
}

#[derive(Args, Debug)]
struct TokenArgs {
    /// The backend's --auth-secret-file.
    #[arg(long, value_name = "FILE")]
    secret_file: PathBuf,
    /// The user (its private scope is user:<sub>).
    #[arg(long)]
    sub: String,
    /// A scope the user may read and write (repeatable).
    #[arg(long = "scope", value_name = "S")]
    scopes: Vec<String>,
    /// A scope the user may only read (repeatable).
    #[arg(long = "read-scope", value_name = "S")]
    read_scopes: Vec<String>,
    /// How long the token is valid: a number with s, m, h or d.
    #[arg(long, default_value = "1h", value_parser = parse_ttl)]
    ttl: u64,
    /// The `aud` claim (the backend's --auth-audience).
    #[arg(long, value_name = "AUD")]
    audience: Option<String>,
    /// The `iss` claim (the backend's --auth-issuer).
    #[arg(long, value_name = "ISS")]
    issuer: Option<String>,
}

/// Why a `--ttl` is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TtlError {
    /// Not digits with an optional `s`, `m`, `h` or `d`.
    Syntax(String),
    /// Zero.
    Zero(String),
    /// Too many seconds for a u64.
    TooLong(String),
}

impl std::fmt::Display for TtlError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TtlError::Syntax(s) => write!(
                f,
                "invalid ttl {s:?}: expected a number with s, m, h or d (e.g. 1h)"
            ),
            TtlError::Zero(s) => write!(f, "invalid ttl {s:?}: a token must live at least 1s"),
            TtlError::TooLong(s) => write!(f, "invalid ttl {s:?}: too long"),
        }
    }
}

impl std::error::Error for TtlError {}

/// Parses a time to live: whole seconds with an `s`, `m`, `h` or `d`
/// suffix (`90s`, `15m`, `1h`, `30d`); a bare number is seconds.
pub fn parse_ttl(s: &str) -> Result<u64, TtlError> {
    let syntax = || TtlError::Syntax(s.to_owned());
    let (digits, unit) = match s.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => (&s[..i], c),
        _ => (s, 's'),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(syntax());
    }
    let mult = match unit {
        's' => 1,
        'm' => 60,
        'h' => 3600,
        'd' => 86_400,
        _ => return Err(syntax()),
    };
    let n: u64 = digits
        .parse()
        .map_err(|_| TtlError::TooLong(s.to_owned()))?;
    match n.checked_mul(mult) {
        Some(0) => Err(TtlError::Zero(s.to_owned())),
        Some(v) => Ok(v),
        None => Err(TtlError::TooLong(s.to_owned())),
    }
}

/// Prints the token `a` asks for.
fn token(a: &TokenArgs) -> Result<(), CliError> {
    let secret = auth::read_secret(&a.secret_file).map_err(|e| CliError::Usage(e.to_string()))?;
    let now = u64::try_from(syncd::now_ms() / 1000).unwrap_or(0);
    let claims = Claims {
        sub: a.sub.clone(),
        exp: now.saturating_add(a.ttl),
        scopes: a.scopes.clone(),
        read_scopes: a.read_scopes.clone(),
        aud: a.audience.clone(),
        iss: a.issuer.clone(),
    };
    let token = auth::mint_hs256(&secret, &claims).map_err(|e| match e {
        auth::MintError::Encode(_) => CliError::Failed(e.to_string()),
        _ => CliError::Usage(e.to_string()),
    })?;
    super::output::line(&token)
}

/// The users-mode verifier the options ask for, if any.
fn verifier(a: &BackendArgs) -> Result<Option<Verifier>, CliError> {
    if a.token.is_some() && (a.auth_secret_file.is_some() || a.auth_public_key.is_some()) {
        return Err(CliError::Usage(
            "--token (one tenant) cannot be combined with --auth-secret-file or \
             --auth-public-key (users and scopes)"
                .into(),
        ));
    }
    let usage = |e: auth::KeyError| CliError::Usage(format!("backend auth: {e}"));
    let verifier = match (&a.auth_secret_file, &a.auth_public_key) {
        (Some(f), _) => Verifier::from_secret_file(f).map_err(usage)?,
        (None, Some(f)) => Verifier::from_public_key_file(f).map_err(usage)?,
        (None, None) => {
            if a.auth_audience.is_some() || a.auth_issuer.is_some() {
                return Err(CliError::Usage(
                    "--auth-audience and --auth-issuer need --auth-secret-file or \
                     --auth-public-key"
                        .into(),
                ));
            }
            return Ok(None);
        }
    };
    let verifier = match &a.auth_audience {
        Some(aud) => verifier.with_audience(aud),
        None => verifier,
    };
    let verifier = match &a.auth_issuer {
        Some(iss) => verifier.with_issuer(iss),
        None => verifier,
    };
    if a.auth_public_key.is_some() && !verifier.checks_audience() {
        tracing::warn!(
            "--auth-public-key without --auth-audience: any token this key signed is \
             accepted, including tokens your auth server mints for other services; \
             give the audience this backend's tokens carry"
        );
    }
    Ok(Some(verifier))
}

/// Serves until interrupted (or runs `backend token`).
pub async fn run(a: &BackendArgs) -> Result<(), CliError> {
    if let Some(BackendCmd::Token(t)) = &a.cmd {
        return token(t);
    }
    // Logging first: reading the keys may warn.
    let _log = syncd::daemon::init_logging("info", syncd::config::LogFormat::Text);
    let users = verifier(a)?;
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
        users,
        allow_single_tenant_over_users: a.allow_single_tenant_over_users,
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
        blob_retention: std::time::Duration::from_secs(a.blob_retention),
    };
    server::run(opts)
        .await
        .map_err(|e| CliError::Failed(format!("backend: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttl_suffixes() {
        assert_eq!(parse_ttl("90"), Ok(90));
        assert_eq!(parse_ttl("90s"), Ok(90));
        assert_eq!(parse_ttl("15m"), Ok(900));
        assert_eq!(parse_ttl("1h"), Ok(3600));
        assert_eq!(parse_ttl("2d"), Ok(172_800));
        for bad in ["", "h", "1w", "-1h", "1.5h", "+1h"] {
            assert_eq!(parse_ttl(bad), Err(TtlError::Syntax(bad.into())), "{bad}");
        }
        assert_eq!(parse_ttl("0s"), Err(TtlError::Zero("0s".into())));
        for long in ["99999999999999999999d", "999999999999999999d"] {
            assert_eq!(parse_ttl(long), Err(TtlError::TooLong(long.into())));
        }
    }
}
