//! Unit tests of token checking (`auth.rs`): refusals by reason, and the
//! three key kinds (keys under tests/data, test-only).

use super::*;

const SECRET: &[u8] = b"test-secret-test-secret-test-secret";
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
        ..Claims::default()
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
fn audience_and_issuer_are_checked_only_when_configured() {
    let plain = Verifier::hs256(SECRET);
    let with = |extra: serde_json::Value| {
        let mut c = alice();
        if let (Some(c), Some(e)) = (c.as_object_mut(), extra.as_object()) {
            c.extend(e.clone());
        }
        hs(c)
    };
    let other_aud = with(serde_json::json!({"aud": "billing", "iss": "elsewhere"}));
    assert!(
        plain.verify(&other_aud).is_ok(),
        "not configured: not checked"
    );
    let v = Verifier::hs256(SECRET)
        .with_audience("syncd")
        .with_issuer("https://auth.example");
    assert!(v.checks_audience() && !plain.checks_audience());
    let good = with(serde_json::json!({"aud": "syncd", "iss": "https://auth.example"}));
    assert_eq!(v.verify(&good).map(|p| p.sub), Ok("alice".into()));
    let many =
        with(serde_json::json!({"aud": ["billing", "syncd"], "iss": "https://auth.example"}));
    assert!(
        v.verify(&many).is_ok(),
        "an audience list naming this server"
    );
    let wrong_aud = with(serde_json::json!({"aud": "billing", "iss": "https://auth.example"}));
    assert_eq!(v.verify(&wrong_aud), Err(AuthError::WrongAudience));
    let wrong_iss = with(serde_json::json!({"aud": "syncd", "iss": "https://evil.example"}));
    assert_eq!(v.verify(&wrong_iss), Err(AuthError::WrongIssuer));
    let no_aud = with(serde_json::json!({"iss": "https://auth.example"}));
    assert_eq!(
        v.verify(&no_aud),
        Err(AuthError::MissingClaim("aud".into()))
    );
    let no_iss = with(serde_json::json!({"aud": "syncd"}));
    assert_eq!(
        v.verify(&no_iss),
        Err(AuthError::MissingClaim("iss".into()))
    );
    // Minted tokens carry them.
    let claims = Claims {
        sub: "bob".into(),
        exp: now() + 60,
        aud: Some("syncd".into()),
        iss: Some("https://auth.example".into()),
        ..Claims::default()
    };
    let minted = mint_hs256(SECRET, &claims).expect("mint");
    assert!(v.verify(&minted).is_ok());
}

#[test]
fn several_missing_claims_always_name_the_same_one() {
    // Each verifier has its own hash-set order for the required claims;
    // the answer must not depend on it.
    let neither = hs(alice());
    let without_sub = hs(serde_json::json!({"exp": now() + 60}));
    for _ in 0..32 {
        let v = Verifier::hs256(SECRET)
            .with_audience("syncd")
            .with_issuer("me");
        assert_eq!(
            v.verify(&neither),
            Err(AuthError::MissingClaim("aud".into()))
        );
        assert_eq!(
            v.verify(&without_sub),
            Err(AuthError::MissingClaim("sub".into()))
        );
    }
}

#[test]
fn nbf_is_checked_when_present() {
    let v = Verifier::hs256(SECRET);
    let future = hs(serde_json::json!({"sub": "a", "exp": now() + 600, "nbf": now() + 300}));
    assert_eq!(v.verify(&future), Err(AuthError::NotYetValid));
    let past = hs(serde_json::json!({"sub": "a", "exp": now() + 600, "nbf": now() - 300}));
    assert!(v.verify(&past).is_ok());
}

#[test]
fn malformed_tokens_get_human_reasons() {
    let v = Verifier::hs256(SECRET);
    let cases = [
        (
            "not a token",
            "malformed token: not a JWT (three base64url parts separated by dots)",
        ),
        ("a.b.c", "malformed token: a part is not base64url"),
    ];
    for (token, reason) in cases {
        assert_eq!(
            v.verify(token).map_err(|e| e.to_string()),
            Err(reason.to_owned())
        );
    }
    let not_json = format!("bm90IGpzb24.{}.sig", b64(&alice()));
    let e = v.verify(&not_json).expect_err("refused");
    assert!(
        matches!(e, AuthError::Malformed(Malformed::Json(_))),
        "{e:?}"
    );
    // No Rust Debug text reaches a client.
    for token in ["", ".", "..", "a.b", "a.b.c.d", &not_json] {
        if let Err(e) = v.verify(token) {
            let text = e.to_string();
            for debug in ["Kind", "InvalidToken", "Base64(", "Error {"] {
                assert!(!text.contains(debug), "{token:?}: {text}");
            }
        }
    }
}

#[test]
fn a_private_key_is_refused_as_the_public_key() {
    for pem in [ED_PRIVATE, RSA_PRIVATE] {
        let e = Verifier::from_public_pem(pem).expect_err("private key");
        assert!(matches!(e, KeyError::PrivateKey(None)), "{e:?}");
        assert!(
            e.to_string()
                .contains("this is a private key; give the public key"),
            "{e}"
        );
    }
}
