//! Unit tests of token checking (`auth.rs`): refusals by reason, and the
//! three key kinds (keys under tests/data, test-only).

use super::*;

const SECRET: &[u8] = b"test-secret";
const ED_PRIVATE: &[u8] = include_bytes!("../../../tests/data/jwt_ed25519_private.pem");
const ED_PUBLIC: &[u8] = include_bytes!("../../../tests/data/jwt_ed25519_public.pem");
const RSA_PRIVATE: &[u8] = include_bytes!("../../../tests/data/jwt_rsa_private.pem");
const RSA_PUBLIC: &[u8] = include_bytes!("../../../tests/data/jwt_rsa_public.pem");

fn now() -> u64 {
    jsonwebtoken::get_current_timestamp()
}

fn sign(alg: Algorithm, key: &EncodingKey, claims: &serde_json::Value) -> String {
    jsonwebtoken::encode(&Header::new(alg), claims, key).expect("encode")
}

fn hs(claims: serde_json::Value) -> String {
    sign(Algorithm::HS256, &EncodingKey::from_secret(SECRET), &claims)
}

fn alice() -> serde_json::Value {
    serde_json::json!({"sub": "alice", "exp": now() + 3600, "scopes": ["team-1"],
                       "read_scopes": ["news"]})
}

fn b64(v: &serde_json::Value) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
}

#[test]
fn a_good_hs256_token_gives_the_principal_and_session() {
    let p = Verifier::hs256(SECRET).verify(&hs(alice())).expect("valid");
    assert_eq!(p.sub, "alice");
    assert_eq!(p.private, "user:alice");
    assert!(p.write.contains("user:alice") && p.write.contains("team-1"));
    assert!(!p.write.contains("news") && p.read.contains("news"));
    let s = p.session();
    let names: Vec<_> = s
        .scopes
        .iter()
        .map(|g| (g.name.as_str(), g.access))
        .collect();
    assert_eq!(
        names,
        [
            ("news", Access::Read),
            ("team-1", Access::Write),
            ("user:alice", Access::Write)
        ]
    );
    assert_eq!(s.expires_at, Some(i64::try_from(p.exp * 1000).unwrap_or(0)));
}

#[test]
fn refusals_name_their_reason() {
    let v = Verifier::hs256(SECRET);
    let other = sign(
        Algorithm::HS256,
        &EncodingKey::from_secret(b"other"),
        &alice(),
    );
    assert_eq!(v.verify(&other), Err(AuthError::BadSignature));
    let expired = hs(serde_json::json!({"sub": "alice", "exp": now() - 1}));
    assert_eq!(v.verify(&expired), Err(AuthError::Expired));
    let no_sub = hs(serde_json::json!({"exp": now() + 60}));
    assert_eq!(
        v.verify(&no_sub),
        Err(AuthError::MissingClaim("sub".into()))
    );
    let no_exp = hs(serde_json::json!({"sub": "alice"}));
    assert_eq!(
        v.verify(&no_exp),
        Err(AuthError::MissingClaim("exp".into()))
    );
    let bad_sub = hs(serde_json::json!({"sub": "a b", "exp": now() + 60}));
    assert_eq!(
        v.verify(&bad_sub),
        Err(AuthError::BadSub(BadScope::BadChar(' ')))
    );
    let bad_scope = hs(serde_json::json!({"sub": "a", "exp": now() + 60, "read_scopes": ["x/y"]}));
    assert!(matches!(
        v.verify(&bad_scope),
        Err(AuthError::BadScopeClaim { name, .. }) if name == "x/y"
    ));
    assert!(matches!(
        v.verify("not a token"),
        Err(AuthError::Malformed(_))
    ));
    assert_eq!(
        AuthError::Expired.to_string(),
        "token expired",
        "the error text is part of the docs"
    );
}

#[test]
fn alg_none_and_other_algorithms_are_refused() {
    let v = Verifier::hs256(SECRET);
    let unsigned = format!(
        "{}.{}.",
        b64(&serde_json::json!({"alg": "none", "typ": "JWT"})),
        b64(&alice())
    );
    assert_eq!(v.verify(&unsigned), Err(AuthError::Unsigned));
    let unsigned_upper = format!(
        "{}.{}.",
        b64(&serde_json::json!({"alg": "NONE"})),
        b64(&alice())
    );
    assert_eq!(v.verify(&unsigned_upper), Err(AuthError::Unsigned));
    // An RS256 token presented to an HS256 server (and the reverse).
    let rsa = EncodingKey::from_rsa_pem(RSA_PRIVATE).expect("rsa key");
    let rs = sign(Algorithm::RS256, &rsa, &alice());
    assert_eq!(
        v.verify(&rs),
        Err(AuthError::WrongAlgorithm(Algorithm::RS256))
    );
    let rv = Verifier::from_public_pem(RSA_PUBLIC).expect("rsa public");
    assert_eq!(
        rv.verify(&hs(alice())),
        Err(AuthError::WrongAlgorithm(Algorithm::HS256))
    );
}

#[test]
fn public_keys_are_detected_and_verify() {
    let ed = Verifier::from_public_pem(ED_PUBLIC).expect("ed25519 public");
    assert_eq!(ed.algorithm(), Algorithm::EdDSA);
    let ed_key = EncodingKey::from_ed_pem(ED_PRIVATE).expect("ed25519 private");
    let token = sign(Algorithm::EdDSA, &ed_key, &alice());
    assert_eq!(ed.verify(&token).map(|p| p.sub), Ok("alice".into()));

    let rsa = Verifier::from_public_pem(RSA_PUBLIC).expect("rsa public");
    assert_eq!(rsa.algorithm(), Algorithm::RS256);
    let rsa_key = EncodingKey::from_rsa_pem(RSA_PRIVATE).expect("rsa private");
    let token = sign(Algorithm::RS256, &rsa_key, &alice());
    assert_eq!(rsa.verify(&token).map(|p| p.sub), Ok("alice".into()));
    // Signed by another Ed25519 key: the signature fails.
    let forged = sign(Algorithm::EdDSA, &ed_key, &alice());
    let mut parts: Vec<&str> = forged.split('.').collect();
    let tampered = b64(&serde_json::json!({"sub": "mallory", "exp": now() + 60}));
    parts[1] = &tampered;
    assert_eq!(ed.verify(&parts.join(".")), Err(AuthError::BadSignature));

    assert!(Verifier::from_public_pem(
        b"-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n"
    )
    .is_err());
    assert!(Verifier::from_public_pem(b"junk").is_err());
}

#[test]
fn minting_checks_names_and_round_trips() {
    let claims = Claims {
        sub: "bob".into(),
        exp: now() + 60,
        scopes: vec!["team-1".into()],
        read_scopes: vec![],
    };
    let t = mint_hs256(SECRET, &claims).expect("mint");
    let p = Verifier::hs256(SECRET).verify(&t).expect("verify");
    assert!(p.write.contains("team-1"));
    let bad = Claims {
        sub: "b@b".into(),
        ..claims.clone()
    };
    assert!(matches!(
        mint_hs256(SECRET, &bad),
        Err(MintError::BadSub(_))
    ));
    let bad = Claims {
        read_scopes: vec![String::new()],
        ..claims
    };
    assert!(matches!(
        mint_hs256(SECRET, &bad),
        Err(MintError::BadScope { .. })
    ));
}

#[test]
fn ttl_suffixes() {
    assert_eq!(parse_ttl("90"), Ok(90));
    assert_eq!(parse_ttl("90s"), Ok(90));
    assert_eq!(parse_ttl("15m"), Ok(900));
    assert_eq!(parse_ttl("1h"), Ok(3600));
    assert_eq!(parse_ttl("2d"), Ok(172_800));
    for bad in ["", "h", "0s", "1w", "-1h", "1.5h", "99999999999999999999d"] {
        assert!(parse_ttl(bad).is_err(), "{bad}");
    }
}

#[test]
fn secrets_lose_trailing_whitespace_and_may_not_be_empty() {
    let dir = tempfile::tempdir().expect("tempdir");
    let f = dir.path().join("s");
    std::fs::write(&f, b"abc \n").expect("write");
    assert_eq!(read_secret(&f).expect("secret"), b"abc");
    std::fs::write(&f, b"\n").expect("write");
    assert!(read_secret(&f).is_err());
    assert!(read_secret(&dir.path().join("missing")).is_err());
}
