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
//! `sub` are required; expiry has no leeway ([`LEEWAY_S`]); `nbf` is checked
//! when present; `aud` and `iss` are required and must match when the
//! server is given an audience or an issuer ([`Verifier::with_audience`],
//! [`Verifier::with_issuer`]), else not checked. Key files are read and
//! checked in [`auth_key`](super::auth_key).

use std::collections::BTreeSet;
use std::fmt;
use std::path::Path;

use base64::Engine as _;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::backend::protocol::{Access, ScopeGrant, Session};

use super::auth_key::{self, read_key_file};
pub use super::auth_key::{read_secret, KeyError};
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
    Malformed(Malformed),
    /// `alg: none`: an unsigned token.
    Unsigned,
    /// Signed with an algorithm this server does not verify.
    WrongAlgorithm(Algorithm),
    BadSignature,
    Expired,
    /// `nbf` is in the future.
    NotYetValid,
    /// `aud` is not the `--auth-audience`.
    WrongAudience,
    /// `iss` is not the `--auth-issuer`.
    WrongIssuer,
    /// Not verifiable with this server's key for another reason (a key or
    /// crypto error): said without details.
    Unverifiable,
    /// A required claim (`sub`, `exp`; `aud`, `iss` when configured) is
    /// absent.
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
            AuthError::NotYetValid => f.write_str("token not yet valid ('nbf' is in the future)"),
            AuthError::WrongAudience => f.write_str("token audience ('aud') is not this server"),
            AuthError::WrongIssuer => {
                f.write_str("token issuer ('iss') is not the one this server trusts")
            }
            AuthError::Unverifiable => {
                f.write_str("token cannot be verified with this server's key")
            }
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

/// How a token is malformed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Malformed {
    /// Not three dot-separated parts.
    NotAJwt,
    /// A part is not base64url.
    Base64,
    /// A part is not UTF-8 (or the `Authorization` header is not).
    Utf8,
    /// The header or the claims are not the expected JSON (serde's reason).
    Json(String),
    /// The header cannot be read.
    Header,
}

impl fmt::Display for Malformed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Malformed::NotAJwt => {
                f.write_str("not a JWT (three base64url parts separated by dots)")
            }
            Malformed::Base64 => f.write_str("a part is not base64url"),
            Malformed::Utf8 => f.write_str("not UTF-8"),
            Malformed::Json(why) => write!(f, "header or claims are not the expected JSON: {why}"),
            Malformed::Header => f.write_str("unreadable header"),
        }
    }
}

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
            aud: None,
            iss: None,
        })
    }
}

/// The claims this server reads (others are ignored; `aud`, `iss` and
/// `nbf` are checked by the validation, not read here), and that
/// `syncd backend token` mints.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Claims {
    pub sub: String,
    pub exp: u64,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub scopes: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub read_scopes: Vec<String>,
    /// Minted only: the audience (`--auth-audience` of the server).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aud: Option<String>,
    /// Minted only: the issuer (`--auth-issuer` of the server).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iss: Option<String>,
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

/// Verifies users-mode bearer tokens with one key.
#[derive(Clone)]
pub struct Verifier {
    key: DecodingKey,
    validation: Validation,
    /// The one algorithm accepted (also the only one in `validation`).
    algorithm: Algorithm,
}

impl fmt::Debug for Verifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Verifier")
            .field("algorithm", &self.algorithm)
            .field("audience", &self.validation.aud)
            .field("issuer", &self.validation.iss)
            .finish()
    }
}

impl Verifier {
    fn new(key: DecodingKey, algorithm: Algorithm) -> Verifier {
        let mut validation = Validation::new(algorithm);
        validation.leeway = LEEWAY_S;
        // `aud` is checked only when an audience is configured
        // ([`with_audience`](Self::with_audience)); `nbf` whenever present.
        validation.validate_aud = false;
        validation.validate_nbf = true;
        validation.set_required_spec_claims(&["exp", "sub"]);
        Verifier {
            key,
            validation,
            algorithm,
        }
    }

    /// HS256 with this shared secret (its length is checked by
    /// [`read_secret`], for secrets read from a file).
    pub fn hs256(secret: &[u8]) -> Verifier {
        Verifier::new(DecodingKey::from_secret(secret), Algorithm::HS256)
    }

    /// HS256 with the secret in `path` ([`read_secret`]); warns when the
    /// file is readable by its group or by others.
    pub fn from_secret_file(path: &Path) -> Result<Verifier, KeyError> {
        let secret = read_secret(path)?;
        if auth_key::readable_by_others(path) {
            tracing::warn!(
                path = %path.display(),
                "the auth secret file is readable by its group or by others: anyone who \
                 reads it can mint tokens for any user (chmod 600 it)"
            );
        }
        Ok(Verifier::hs256(&secret))
    }

    /// A PEM public key: Ed25519 (EdDSA) or RSA (RS256), whichever it is.
    /// A private key is refused (the backend must not hold it).
    pub fn from_public_pem(pem: &[u8]) -> Result<Verifier, KeyError> {
        if auth_key::is_private_pem(pem) {
            return Err(KeyError::PrivateKey(None));
        }
        if let Ok(key) = DecodingKey::from_ed_pem(pem) {
            return Ok(Verifier::new(key, Algorithm::EdDSA));
        }
        match DecodingKey::from_rsa_pem(pem) {
            Ok(key) => Ok(Verifier::new(key, Algorithm::RS256)),
            Err(e) => Err(KeyError::NotAPublicKey {
                path: None,
                why: e.to_string(),
            }),
        }
    }

    /// [`from_public_pem`](Self::from_public_pem) of a file.
    pub fn from_public_key_file(path: &Path) -> Result<Verifier, KeyError> {
        let with_path = |e| match e {
            KeyError::PrivateKey(None) => KeyError::PrivateKey(Some(path.to_path_buf())),
            KeyError::NotAPublicKey { path: None, why } => KeyError::NotAPublicKey {
                path: Some(path.to_path_buf()),
                why,
            },
            other => other,
        };
        Verifier::from_public_pem(&read_key_file(path)?).map_err(with_path)
    }

    /// Requires `aud` to be (or to contain) `audience`.
    pub fn with_audience(mut self, audience: &str) -> Verifier {
        self.validation.set_audience(&[audience]);
        self.validation.validate_aud = true;
        self.validation.required_spec_claims.insert("aud".into());
        self
    }

    /// Requires `iss` to be `issuer`.
    pub fn with_issuer(mut self, issuer: &str) -> Verifier {
        self.validation.set_issuer(&[issuer]);
        self.validation.required_spec_claims.insert("iss".into());
        self
    }

    /// The one algorithm accepted.
    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    /// Whether tokens must name an audience ([`with_audience`](Self::with_audience)).
    pub fn checks_audience(&self) -> bool {
        self.validation.validate_aud
    }

    /// Checks `token` (the part after `Bearer `).
    pub fn verify(&self, token: &str) -> Result<Principal, AuthError> {
        match jsonwebtoken::decode::<SentClaims>(token, &self.key, &self.validation) {
            Ok(data) => Principal::from_claims(data.claims.into_claims()?),
            Err(e) => match e.into_kind() {
                ErrorKind::MissingRequiredClaim(c) => {
                    Err(AuthError::MissingClaim(self.first_missing_claim(token, c)))
                }
                kind => Err(refusal(token, kind)),
            },
        }
    }

    /// The first required claim, in [`CLAIM_ORDER`], that the token lacks.
    /// jsonwebtoken checks its required claims in hash-set order, so when
    /// several are missing the one it names varies from run to run; a
    /// client must get the same answer for the same token.
    fn first_missing_claim(&self, token: &str, reported: String) -> String {
        let Some(payload) = payload(token) else {
            return reported;
        };
        CLAIM_ORDER
            .iter()
            .find(|c| {
                self.validation.required_spec_claims.contains(**c) && payload.get(**c).is_none()
            })
            .map_or(reported, |c| (*c).to_owned())
    }
}

/// The order in which missing required claims are reported.
const CLAIM_ORDER: [&str; 4] = ["sub", "exp", "aud", "iss"];

/// The token's payload as JSON (only read after its signature was checked).
fn payload(token: &str) -> Option<serde_json::Map<String, serde_json::Value>> {
    let part = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(part)
        .ok()?;
    serde_json::from_slice(&bytes).ok()
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
        ErrorKind::ImmatureSignature => AuthError::NotYetValid,
        ErrorKind::InvalidAudience => AuthError::WrongAudience,
        ErrorKind::InvalidIssuer => AuthError::WrongIssuer,
        ErrorKind::MissingRequiredClaim(c) => AuthError::MissingClaim(c),
        ErrorKind::InvalidAlgorithm => match jsonwebtoken::decode_header(token) {
            Ok(h) => AuthError::WrongAlgorithm(h.alg),
            Err(_) => AuthError::Malformed(Malformed::Header),
        },
        _ if is_unsigned(token) => AuthError::Unsigned,
        ErrorKind::InvalidToken => AuthError::Malformed(Malformed::NotAJwt),
        ErrorKind::Base64(_) => AuthError::Malformed(Malformed::Base64),
        ErrorKind::Utf8(_) => AuthError::Malformed(Malformed::Utf8),
        ErrorKind::Json(e) => AuthError::Malformed(Malformed::Json(e.to_string())),
        // Key, crypto or library errors: nothing the client can act on
        // beyond "not accepted"; the details go to the server's log.
        other => {
            tracing::debug!(error = ?other, "token not verifiable");
            AuthError::Unverifiable
        }
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

#[cfg(test)]
#[path = "auth_tests.rs"]
mod tests;
