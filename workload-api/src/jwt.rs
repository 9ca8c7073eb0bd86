//! JWT-SVIDs on the agent: a small cache of tokens minted by core, and validation of
//! tokens against the trust domain's JWT bundle (for `ValidateJWTSVID`).
//!
//! Validation follows the JWT-SVID standard and what SPIFFE clients enforce: one of the
//! allowed algorithms, `kid` required and found in the bundle of the `sub`'s trust domain,
//! a valid signature, `sub` a SPIFFE ID, `exp` in the future, and `aud` containing the
//! audience of the validating party.

use std::collections::HashMap;
use std::sync::Mutex;

use aws_lc_rs::signature::{self, UnparsedPublicKey, VerificationAlgorithm};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use serde_json::Value;

/// Most tokens kept; beyond this, expired and half-used ones are dropped.
const MAX_CACHED: usize = 10_000;

/// A token held for reuse.
#[derive(Clone)]
struct Held {
    token: String,
    issued_at_ms: i64,
    expires_at_ms: i64,
}

/// JWT-SVIDs minted by core, keyed by SPIFFE ID and audience set, reused while less than
/// half their lifetime has passed.
#[derive(Default)]
pub struct JwtSvidCache {
    tokens: Mutex<HashMap<(String, Vec<String>), Held>>,
}

fn key(spiffe_id: &str, audience: &[String]) -> (String, Vec<String>) {
    let mut aud = audience.to_vec();
    aud.sort();
    aud.dedup();
    (spiffe_id.to_string(), aud)
}

impl JwtSvidCache {
    /// A cached token for `spiffe_id` and exactly this audience set, if still fresh.
    pub fn get(&self, spiffe_id: &str, audience: &[String], now_ms: i64) -> Option<String> {
        let tokens = self.tokens.lock().ok()?;
        let held = tokens.get(&key(spiffe_id, audience))?;
        let half = held.issued_at_ms + (held.expires_at_ms - held.issued_at_ms) / 2;
        (now_ms < half).then(|| held.token.clone())
    }

    /// Remembers a token minted at `now_ms` that expires at `expires_at` (Unix seconds).
    pub fn put(
        &self,
        spiffe_id: &str,
        audience: &[String],
        token: String,
        now_ms: i64,
        expires_at: i64,
    ) {
        let Ok(mut tokens) = self.tokens.lock() else {
            return;
        };
        if tokens.len() >= MAX_CACHED {
            tokens.retain(|_, h| now_ms < h.issued_at_ms + (h.expires_at_ms - h.issued_at_ms) / 2);
            if tokens.len() >= MAX_CACHED {
                tokens.clear();
            }
        }
        tokens.insert(
            key(spiffe_id, audience),
            Held {
                token,
                issued_at_ms: now_ms,
                expires_at_ms: expires_at * 1000,
            },
        );
    }
}

/// A validated token: its SPIFFE ID and its claims (`aud` always a list).
#[derive(Debug)]
pub struct Validated {
    /// The `sub` claim.
    pub spiffe_id: String,
    /// All claims.
    pub claims: serde_json::Map<String, Value>,
}

fn decode_json(part: &str, what: &str) -> Result<serde_json::Map<String, Value>, String> {
    let bytes = URL_SAFE_NO_PAD
        .decode(part)
        .map_err(|_| format!("token {what} is not base64url"))?;
    match serde_json::from_slice(&bytes) {
        Ok(Value::Object(m)) => Ok(m),
        _ => Err(format!("token {what} is not a JSON object")),
    }
}

/// The trust domain name of a SPIFFE ID, if it is one.
fn trust_domain_of(id: &str) -> Option<&str> {
    let rest = id.strip_prefix("spiffe://")?;
    let td = rest.split('/').next()?;
    let valid = !td.is_empty()
        && td
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-._".contains(&b));
    valid.then_some(td)
}

fn verification_alg(
    alg: &str,
    jwk: &serde_json::Map<String, Value>,
) -> Result<&'static dyn VerificationAlgorithm, String> {
    let crv = jwk.get("crv").and_then(Value::as_str).unwrap_or_default();
    match (alg, crv) {
        ("ES256", "P-256") => Ok(&signature::ECDSA_P256_SHA256_FIXED),
        ("ES384", "P-384") => Ok(&signature::ECDSA_P384_SHA384_FIXED),
        ("ES256" | "ES384", _) => Err(format!("key curve {crv:?} does not match algorithm {alg}")),
        _ => Err(format!("unsupported token signature algorithm {alg:?}")),
    }
}

fn ec_point(jwk: &serde_json::Map<String, Value>) -> Result<Vec<u8>, String> {
    if jwk.get("kty").and_then(Value::as_str) != Some("EC") {
        return Err("JWT authority is not an EC key".into());
    }
    let coord = |name: &str| {
        jwk.get(name)
            .and_then(Value::as_str)
            .and_then(|s| URL_SAFE_NO_PAD.decode(s).ok())
            .ok_or_else(|| format!("JWT authority has no valid {name}"))
    };
    let mut point = vec![4u8];
    point.extend(coord("x")?);
    point.extend(coord("y")?);
    Ok(point)
}

/// Finds the key with `kid` in a JWK Set.
fn find_key(jwks: &[u8], kid: &str) -> Result<serde_json::Map<String, Value>, String> {
    let set: Value =
        serde_json::from_slice(jwks).map_err(|_| "JWT bundle is not valid JSON".to_string())?;
    set.get("keys")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_object)
        .find(|k| k.get("kid").and_then(Value::as_str) == Some(kid))
        .cloned()
        .ok_or_else(|| format!("no JWT authority found for key ID {kid:?}"))
}

/// Validates `token` for `audience` with the JWT bundles `bundles` (trust domain name →
/// JWK Set JSON) at Unix time `now`.
pub fn validate(
    token: &str,
    audience: &str,
    bundles: &HashMap<String, Vec<u8>>,
    now: i64,
) -> Result<Validated, String> {
    let parts: Vec<&str> = token.split('.').collect();
    let [h, c, s] = parts.as_slice() else {
        return Err("token is not a JWS in compact serialization".into());
    };
    let header = decode_json(h, "header")?;
    let alg = header
        .get("alg")
        .and_then(Value::as_str)
        .ok_or("token header has no alg")?;
    const ALLOWED: [&str; 9] = [
        "RS256", "RS384", "RS512", "ES256", "ES384", "ES512", "PS256", "PS384", "PS512",
    ];
    if !ALLOWED.contains(&alg) {
        return Err(format!("unsupported token signature algorithm {alg:?}"));
    }
    if let Some(typ) = header.get("typ") {
        if !matches!(typ.as_str(), Some("JWT" | "JOSE")) {
            return Err("token header typ must be JWT or JOSE".into());
        }
    }
    let kid = header
        .get("kid")
        .and_then(Value::as_str)
        .filter(|k| !k.is_empty())
        .ok_or("token header missing key id")?;
    let mut claims = decode_json(c, "claims")?;
    let sub = claims
        .get("sub")
        .and_then(Value::as_str)
        .ok_or("token missing subject claim")?
        .to_string();
    let td = trust_domain_of(&sub)
        .ok_or_else(|| format!("token has an invalid subject claim: {sub:?}"))?;
    let jwks = bundles
        .get(td)
        .ok_or_else(|| format!("no keys found for trust domain {td:?}"))?;
    let jwk = find_key(jwks, kid)?;
    let point = ec_point(&jwk)?;
    let verify_alg = verification_alg(alg, &jwk)?;
    let sig = URL_SAFE_NO_PAD
        .decode(s)
        .map_err(|_| "token signature is not base64url".to_string())?;
    let signed = format!("{h}.{c}");
    UnparsedPublicKey::new(verify_alg, &point)
        .verify(signed.as_bytes(), &sig)
        .map_err(|_| "unable to validate token: signature is invalid".to_string())?;

    let exp = claims
        .get("exp")
        .and_then(Value::as_i64)
        .ok_or("token missing exp claim")?;
    if exp <= now {
        return Err("token has expired".into());
    }
    if let Some(nbf) = claims.get("nbf").and_then(Value::as_i64) {
        if nbf > now {
            return Err("token is not valid yet".into());
        }
    }
    let aud: Vec<String> = match claims.get("aud") {
        Some(Value::String(a)) => vec![a.clone()],
        Some(Value::Array(list)) => list
            .iter()
            .filter_map(|v| v.as_str().map(str::to_string))
            .collect(),
        _ => return Err("token missing audience claim".into()),
    };
    if !aud.iter().any(|a| a == audience) {
        return Err(format!(
            "expected audience in {aud:?} (audience={audience:?})"
        ));
    }
    claims.insert(
        "aud".into(),
        Value::Array(aud.into_iter().map(Value::String).collect()),
    );
    Ok(Validated {
        spiffe_id: sub,
        claims,
    })
}

/// Converts JSON claims to the protobuf `Struct` the Workload API returns.
pub fn to_struct(claims: serde_json::Map<String, Value>) -> prost_types::Struct {
    prost_types::Struct {
        fields: claims.into_iter().map(|(k, v)| (k, to_value(v))).collect(),
    }
}

fn to_value(v: Value) -> prost_types::Value {
    use prost_types::value::Kind;
    let kind = match v {
        Value::Null => Kind::NullValue(0),
        Value::Bool(b) => Kind::BoolValue(b),
        Value::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or_default()),
        Value::String(s) => Kind::StringValue(s),
        Value::Array(a) => Kind::ListValue(prost_types::ListValue {
            values: a.into_iter().map(to_value).collect(),
        }),
        Value::Object(o) => Kind::StructValue(to_struct(o)),
    };
    prost_types::Value { kind: Some(kind) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_lc_rs::rand::SystemRandom;
    use aws_lc_rs::signature::{EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};

    struct Signer {
        key: EcdsaKeyPair,
        jwks: Vec<u8>,
    }

    fn signer() -> Signer {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
        let key =
            EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref()).unwrap();
        let p = key.public_key().as_ref();
        let jwks = serde_json::to_vec(&serde_json::json!({"keys": [{
            "kty": "EC", "crv": "P-256", "kid": "k1",
            "x": URL_SAFE_NO_PAD.encode(&p[1..33]), "y": URL_SAFE_NO_PAD.encode(&p[33..]),
        }]}))
        .unwrap();
        Signer { key, jwks }
    }

    fn token(s: &Signer, header: Value, claims: Value) -> String {
        let input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let sig = s.key.sign(&SystemRandom::new(), input.as_bytes()).unwrap();
        format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig.as_ref()))
    }

    fn bundles(s: &Signer) -> HashMap<String, Vec<u8>> {
        HashMap::from([("example.org".to_string(), s.jwks.clone())])
    }

    const NOW: i64 = 1_700_000_000;

    fn good_header() -> Value {
        serde_json::json!({"alg": "ES256", "kid": "k1", "typ": "JWT"})
    }

    fn claims(aud: Value, exp: i64) -> Value {
        serde_json::json!({"sub": "spiffe://example.org/w", "aud": aud, "exp": exp, "iat": NOW})
    }

    #[test]
    fn a_good_token_validates_and_aud_becomes_a_list() {
        let s = signer();
        let t = token(&s, good_header(), claims("a".into(), NOW + 60));
        let v = validate(&t, "a", &bundles(&s), NOW).unwrap();
        assert_eq!(v.spiffe_id, "spiffe://example.org/w");
        assert_eq!(v.claims["aud"], serde_json::json!(["a"]));
        let st = to_struct(v.claims);
        assert!(st.fields.contains_key("exp"));
    }

    #[test]
    fn wrong_audience_expiry_signature_and_missing_kid_fail() {
        let s = signer();
        let b = bundles(&s);
        let t = token(
            &s,
            good_header(),
            claims(serde_json::json!(["a"]), NOW + 60),
        );
        let err = validate(&t, "b", &b, NOW).unwrap_err();
        assert!(err.contains("audience"), "{err}");
        let expired = token(&s, good_header(), claims("a".into(), NOW - 1));
        assert_eq!(
            validate(&expired, "a", &b, NOW).unwrap_err(),
            "token has expired"
        );
        // Signature from another key.
        let other = signer();
        let forged = token(&other, good_header(), claims("a".into(), NOW + 60));
        assert!(validate(&forged, "a", &b, NOW)
            .unwrap_err()
            .contains("signature"));
        // Tampered claims.
        let parts: Vec<&str> = t.split('.').collect();
        let tampered_claims =
            URL_SAFE_NO_PAD.encode(claims(serde_json::json!(["a"]), NOW + 6000).to_string());
        let tampered = format!("{}.{}.{}", parts[0], tampered_claims, parts[2]);
        assert!(validate(&tampered, "a", &b, NOW)
            .unwrap_err()
            .contains("signature"));
        let no_kid = token(
            &s,
            serde_json::json!({"alg": "ES256"}),
            claims("a".into(), NOW + 60),
        );
        assert_eq!(
            validate(&no_kid, "a", &b, NOW).unwrap_err(),
            "token header missing key id"
        );
        let none = token(
            &s,
            serde_json::json!({"alg": "none", "kid": "k1"}),
            claims("a".into(), NOW + 60),
        );
        assert!(validate(&none, "a", &b, NOW)
            .unwrap_err()
            .contains("algorithm"));
        assert!(validate("garbage", "a", &b, NOW).is_err());
        assert!(validate("a.b.c", "a", &b, NOW).is_err());
        let foreign = token(
            &s,
            good_header(),
            serde_json::json!({"sub": "spiffe://other.org/w", "aud": "a", "exp": NOW + 60}),
        );
        assert!(validate(&foreign, "a", &b, NOW)
            .unwrap_err()
            .contains("other.org"));
    }

    #[test]
    fn cache_reuses_tokens_until_half_life_and_keys_by_audience_set() {
        let c = JwtSvidCache::default();
        let aud = vec!["b".to_string(), "a".to_string()];
        c.put("spiffe://e/w", &aud, "t1".into(), 0, 300);
        assert_eq!(
            c.get("spiffe://e/w", &["a".into(), "b".into()], 1000)
                .as_deref(),
            Some("t1")
        );
        assert_eq!(c.get("spiffe://e/w", &["a".into()], 1000), None);
        assert_eq!(c.get("spiffe://e/w", &aud, 150_001), None);
    }
}
