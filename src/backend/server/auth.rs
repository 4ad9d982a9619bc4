//! Who is calling (protocol revision 3): the bearer JWTs of a users-mode
//! backend, checked into a [`Principal`], and the HS256 tokens that
//! `syncd backend token` mints.
//!
//! Why a file of its own: token checking is security-relevant and easy to
//! get subtly wrong (accepted algorithms, expiry leeway, claims that must be
//! present), so the whole policy is read here in one place, and refusals are
//! an enum ([`AuthError`]) that the HTTP layer only prints, never parses.
//!
//! Policy: the algorithm is fixed by the key (`--auth-secret-file`: HS256;
//! `--auth-public-key`: EdDSA for an Ed25519 key, RS256 for an RSA key);
//! a token naming any other `alg` (`none` included) is refused. `exp` and
//! `sub` are required; expiry has no leeway ([`LEEWAY_S`]); `aud`, `iss` and
//! `nbf` are not checked.

use std::collections::BTreeSet;
use std::fmt;
use std::path::Path;

use base64::Engine as _;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::backend::protocol::{Access, ScopeGrant, Session};
use crate::domain::scope::{check_scope, private_scope, BadScope};

/// Seconds of clock skew allowed on `exp`: none. A token is refused from
/// the first second after its `exp` (jsonwebtoken's default would be 60 s).
pub const LEEWAY_S: u64 = 0;

/// Why a bearer token was refused (401). `Display` is the `error` sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthError {
    /// No `Authorization: Bearer <token>` header.
    Missing,
    /// Not three base64url parts with a JSON header and claims.
    Malformed(String),
    /// `alg: none`: an unsigned token.
    Unsigned,
    /// Signed with an algorithm this server does not verify.
    WrongAlgorithm(Algorithm),
    BadSignature,
    Expired,
    /// A required claim (`sub` or `exp`) is absent.
    MissingClaim(String),
    /// `user:<sub>` is not a scope name.
    BadSub(BadScope),
    /// A name in `scopes` or `read_scopes` is not a scope name.
    BadScopeClaim {
        name: String,
        why: BadScope,
    },
    /// Single-tenant mode: no bearer token, or not the `--token`
    /// (revision 2's reply, which says no more).
    WrongToken,
}

impl fmt::Display for AuthError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AuthError::Missing => f.write_str("missing bearer token"),
            AuthError::Malformed(why) => write!(f, "malformed token: {why}"),
            AuthError::Unsigned => f.write_str("unsigned token (alg none) refused"),
            AuthError::WrongAlgorithm(a) => {
                write!(
                    f,
                    "token algorithm {a:?} is not the one this server verifies"
                )
            }
            AuthError::BadSignature => f.write_str("invalid token signature"),
            AuthError::Expired => f.write_str("token expired"),
            AuthError::MissingClaim(c) => write!(f, "token has no '{c}' claim"),
            AuthError::BadSub(why) => write!(f, "token 'sub' cannot name a private scope: {why}"),
            AuthError::BadScopeClaim { name, why } => {
                write!(f, "token names a bad scope {name:?}: {why}")
            }
            AuthError::WrongToken => f.write_str("unauthorized"),
        }
    }
}

impl std::error::Error for AuthError {}

/// The claims as sent: `sub` and `exp` optional here so that their absence
/// is reported as such by the validation (not as a JSON error).
#[derive(Debug, Deserialize)]
struct SentClaims {
    #[serde(default)]
    sub: Option<String>,
    #[serde(default)]
    exp: Option<u64>,
    #[serde(default)]
    scopes: Vec<String>,
    #[serde(default)]
    read_scopes: Vec<String>,
}

impl SentClaims {
    fn into_claims(self) -> Result<Claims, AuthError> {
        Ok(Claims {
            sub: self.sub.ok_or(AuthError::MissingClaim("sub".into()))?,
            exp: self.exp.ok_or(AuthError::MissingClaim("exp".into()))?,
            scopes: self.scopes,
            read_scopes: self.read_scopes,
        })
    }
}

/// The claims this server reads (others are ignored).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims {
    pub sub: String,
    pub exp: u64,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub scopes: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub read_scopes: Vec<String>,
}

/// A verified token: who, and which scopes it may write (W) and read (R).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub sub: String,
    /// `user:<sub>`.
    pub private: String,
    /// W = `{user:<sub>} ∪ scopes`.
    pub write: BTreeSet<String>,
    /// R = W ∪ read_scopes.
    pub read: BTreeSet<String>,
    /// `exp`, in seconds since the Unix epoch.
    pub exp: u64,
}

impl Principal {
    /// Checks the scope names of `claims` into a principal.
    pub fn from_claims(claims: Claims) -> Result<Principal, AuthError> {
        let private = private_scope(&claims.sub).map_err(AuthError::BadSub)?;
        let checked = |names: Vec<String>| -> Result<BTreeSet<String>, AuthError> {
            names
                .into_iter()
                .map(|name| match check_scope(&name) {
                    Ok(()) => Ok(name),
                    Err(why) => Err(AuthError::BadScopeClaim { name, why }),
                })
                .collect()
        };
        let mut write = checked(claims.scopes)?;
        write.insert(private.clone());
        let mut read = checked(claims.read_scopes)?;
        read.extend(write.iter().cloned());
        Ok(Principal {
            sub: claims.sub,
            private,
            write,
            read,
            exp: claims.exp,
        })
    }

    /// The `GET v1/session` body: every readable scope, sorted by name.
    pub fn session(&self) -> Session {
        let scopes = self
            .read
            .iter()
            .map(|name| ScopeGrant {
                name: name.clone(),
                access: if self.write.contains(name) {
                    Access::Write
                } else {
                    Access::Read
                },
            })
            .collect();
        Session {
            sub: self.sub.clone(),
            scopes,
            expires_at: Some(i64::try_from(self.exp.saturating_mul(1000)).unwrap_or(i64::MAX)),
        }
    }
}

/// Why a key file cannot be used.
#[derive(Debug)]
pub struct KeyError(pub String);

impl fmt::Display for KeyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for KeyError {}

fn read_key_file(path: &Path) -> Result<Vec<u8>, KeyError> {
    std::fs::read(path).map_err(|e| KeyError(format!("cannot read {}: {e}", path.display())))
}

/// A shared secret from a file: its bytes without trailing whitespace (so
/// `echo secret > file` works); empty is refused.
pub fn read_secret(path: &Path) -> Result<Vec<u8>, KeyError> {
    let mut bytes = read_key_file(path)?;
    while bytes.last().is_some_and(u8::is_ascii_whitespace) {
        bytes.pop();
    }
    if bytes.is_empty() {
        return Err(KeyError(format!("{}: the secret is empty", path.display())));
    }
    Ok(bytes)
}

/// Verifies users-mode bearer tokens with one key.
#[derive(Clone)]
pub struct Verifier {
    key: DecodingKey,
    validation: Validation,
}

impl fmt::Debug for Verifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Verifier")
            .field("algorithm", &self.algorithm())
            .finish()
    }
}

impl Verifier {
    fn new(key: DecodingKey, alg: Algorithm) -> Verifier {
        let mut validation = Validation::new(alg);
        validation.leeway = LEEWAY_S;
        validation.validate_aud = false;
        validation.set_required_spec_claims(&["exp", "sub"]);
        Verifier { key, validation }
    }

    /// HS256 with this shared secret.
    pub fn hs256(secret: &[u8]) -> Verifier {
        Verifier::new(DecodingKey::from_secret(secret), Algorithm::HS256)
    }

    /// HS256 with the secret in `path` ([`read_secret`]).
    pub fn from_secret_file(path: &Path) -> Result<Verifier, KeyError> {
        Ok(Verifier::hs256(&read_secret(path)?))
    }

    /// A PEM public key: Ed25519 (EdDSA) or RSA (RS256), whichever it is.
    pub fn from_public_pem(pem: &[u8]) -> Result<Verifier, KeyError> {
        if let Ok(key) = DecodingKey::from_ed_pem(pem) {
            return Ok(Verifier::new(key, Algorithm::EdDSA));
        }
        match DecodingKey::from_rsa_pem(pem) {
            Ok(key) => Ok(Verifier::new(key, Algorithm::RS256)),
            Err(e) => Err(KeyError(format!(
                "not a PEM Ed25519 or RSA public key ({e})"
            ))),
        }
    }

    /// [`from_public_pem`](Self::from_public_pem) of a file.
    pub fn from_public_key_file(path: &Path) -> Result<Verifier, KeyError> {
        Verifier::from_public_pem(&read_key_file(path)?)
            .map_err(|e| KeyError(format!("{}: {e}", path.display())))
    }

    /// The one algorithm accepted.
    pub fn algorithm(&self) -> Algorithm {
        self.validation.algorithms[0]
    }

    /// Checks `token` (the part after `Bearer `).
    pub fn verify(&self, token: &str) -> Result<Principal, AuthError> {
        match jsonwebtoken::decode::<SentClaims>(token, &self.key, &self.validation) {
            Ok(data) => Principal::from_claims(data.claims.into_claims()?),
            Err(e) => Err(refusal(token, e.into_kind())),
        }
    }
}

/// Whether the token's header says `alg: none` (which jsonwebtoken does
/// not parse at all, so it would otherwise read as "malformed").
fn is_unsigned(token: &str) -> bool {
    let Some(header) = token.split('.').next() else {
        return false;
    };
    let Ok(bytes) = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(header) else {
        return false;
    };
    serde_json::from_slice::<serde_json::Value>(&bytes)
        .ok()
        .and_then(|v| v.get("alg").and_then(|a| a.as_str()).map(str::to_owned))
        .is_some_and(|alg| alg.eq_ignore_ascii_case("none"))
}

fn refusal(token: &str, kind: ErrorKind) -> AuthError {
    match kind {
        ErrorKind::InvalidSignature => AuthError::BadSignature,
        ErrorKind::ExpiredSignature => AuthError::Expired,
        ErrorKind::MissingRequiredClaim(c) => AuthError::MissingClaim(c),
        ErrorKind::InvalidAlgorithm => match jsonwebtoken::decode_header(token) {
            Ok(h) => AuthError::WrongAlgorithm(h.alg),
            Err(_) => AuthError::Malformed("unreadable header".into()),
        },
        _ if is_unsigned(token) => AuthError::Unsigned,
        ErrorKind::Json(e) => AuthError::Malformed(e.to_string()),
        other => AuthError::Malformed(format!("{other:?}")),
    }
}

/// Why `syncd backend token` cannot mint a token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MintError {
    BadSub(BadScope),
    BadScope { name: String, why: BadScope },
    Encode(String),
}

impl fmt::Display for MintError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MintError::BadSub(why) => write!(f, "--sub cannot name a private scope: {why}"),
            MintError::BadScope { name, why } => write!(f, "bad scope {name:?}: {why}"),
            MintError::Encode(e) => write!(f, "cannot sign the token: {e}"),
        }
    }
}

impl std::error::Error for MintError {}

/// An HS256 token for `claims`, after checking its names with the rules
/// [`Verifier::verify`] applies.
pub fn mint_hs256(secret: &[u8], claims: &Claims) -> Result<String, MintError> {
    if let Err(e) = Principal::from_claims(claims.clone()) {
        return Err(match e {
            AuthError::BadSub(why) => MintError::BadSub(why),
            AuthError::BadScopeClaim { name, why } => MintError::BadScope { name, why },
            other => MintError::Encode(other.to_string()),
        });
    }
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(secret),
    )
    .map_err(|e| MintError::Encode(e.to_string()))
}

/// Parses a time to live: whole seconds with an `s`, `m`, `h` or `d`
/// suffix (`90s`, `15m`, `1h`, `30d`); a bare number is seconds.
pub fn parse_ttl(s: &str) -> Result<u64, String> {
    let bad = || format!("invalid ttl {s:?}: expected a number with s, m, h or d (e.g. 1h)");
    let (digits, unit) = match s.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => (&s[..i], c),
        _ => (s, 's'),
    };
    let n: u64 = digits.parse().map_err(|_| bad())?;
    let mult = match unit {
        's' => 1,
        'm' => 60,
        'h' => 3600,
        'd' => 86_400,
        _ => return Err(bad()),
    };
    match n.checked_mul(mult) {
        Some(0) | None => Err(bad()),
        Some(v) => Ok(v),
    }
}

#[cfg(test)]
#[path = "auth_tests.rs"]
mod tests;
