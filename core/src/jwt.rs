//! JWT-SVIDs: short-lived signed tokens for workloads, and the JWKS that verifies them.
//!
//! The signing key is created in the key backend (the HSM, beside the CA keys) and only its
//! label and key ID are stored. Tokens are JWS Compact Serialization built here with
//! serde_json and base64: the maintained JOSE crates want the private key in memory, and
//! ours never leaves the backend. The backend returns a DER ECDSA signature; JWS wants the
//! fixed-width `r || s` (RFC 7518 §3.4), so it is converted.
//!
//! Every token carries `kid` (go-spiffe and SPIRE refuse tokens without one), `sub`, `aud`
//! (always a list), `exp` and `iat`. The JWKS is a standard JWK Set with `kid` on every key.

use std::sync::Arc;
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use time::OffsetDateTime;

use crate::keys::{CaSigner, KeyAlgorithm, KeyBackend, KeyError};
use crate::store::{JwtKeyRecord, Store, StoreError};

/// The most audiences one token may carry.
pub const MAX_AUDIENCES: usize = 16;
/// The longest audience value accepted.
pub const MAX_AUDIENCE_LEN: usize = 512;

/// Errors from JWT key management and signing. Never carries key material.
#[derive(Debug, thiserror::Error)]
pub enum JwtError {
    /// The key backend failed.
    #[error("key backend: {0}")]
    Key(#[from] KeyError),
    /// The store failed.
    #[error("store: {0}")]
    Store(#[from] StoreError),
    /// The request is malformed (bad audience).
    #[error("{0}")]
    InvalidRequest(String),
    /// Stored or returned data does not make sense.
    #[error("{0}")]
    Corrupt(String),
}

/// One signing key with its published key ID.
struct JwtKey {
    kid: String,
    signer: Arc<dyn CaSigner>,
}

/// A JWT-SVID just signed.
#[derive(Clone, Debug)]
pub struct SignedJwt {
    /// The compact JWS.
    pub token: String,
    /// Expiry, Unix seconds.
    pub expires_at: i64,
}

/// Signs JWT-SVIDs for one trust domain and publishes the keys that verify them.
pub struct JwtIssuer {
    keys: Vec<JwtKey>,
}

impl JwtIssuer {
    /// Loads the JWT signing keys recorded in the store, or creates one in `backend` when
    /// there is none. Returns the issuer and whether a key was created.
    pub fn init_or_load(
        store: &Store,
        backend: &dyn KeyBackend,
        algorithm: KeyAlgorithm,
    ) -> Result<(Self, bool), JwtError> {
        let records = store.jwt_keys()?;
        if records.is_empty() {
            let mut suffix = [0u8; 4];
            aws_lc_rs::rand::fill(&mut suffix)
                .map_err(|_| JwtError::Corrupt("system random generator failed".into()))?;
            let label = format!("keygrid-jwt-{}", hex::encode(suffix));
            let signer = backend.generate(&label, algorithm)?;
            let kid = thumbprint(signer.as_ref())?;
            store.insert_jwt_key(
                &JwtKeyRecord {
                    kid: kid.clone(),
                    key_label: label,
                    algorithm: algorithm.name().into(),
                },
                OffsetDateTime::now_utc().unix_timestamp(),
            )?;
            return Ok((
                JwtIssuer {
                    keys: vec![JwtKey { kid, signer }],
                },
                true,
            ));
        }
        let mut keys = Vec::with_capacity(records.len());
        for rec in records {
            let alg = KeyAlgorithm::from_name(&rec.algorithm).ok_or_else(|| {
                JwtError::Corrupt(format!(
                    "JWT key {} has unknown algorithm {}",
                    rec.kid, rec.algorithm
                ))
            })?;
            let signer = backend.find(&rec.key_label, alg)?;
            if thumbprint(signer.as_ref())? != rec.kid {
                return Err(JwtError::Corrupt(format!(
                    "JWT key {} does not match the key labelled {}",
                    rec.kid, rec.key_label
                )));
            }
            keys.push(JwtKey {
                kid: rec.kid,
                signer,
            });
        }
        Ok((JwtIssuer { keys }, false))
    }

    /// An issuer over keys already at hand (tests, in-memory backends).
    pub fn from_signer(signer: Arc<dyn CaSigner>) -> Result<Self, JwtError> {
        let kid = thumbprint(signer.as_ref())?;
        Ok(JwtIssuer {
            keys: vec![JwtKey { kid, signer }],
        })
    }

    fn current(&self) -> Result<&JwtKey, JwtError> {
        self.keys
            .last()
            .ok_or_else(|| JwtError::Corrupt("no JWT signing key".into()))
    }

    /// Key ID of the key that signs new tokens.
    pub fn current_kid(&self) -> Result<&str, JwtError> {
        Ok(&self.current()?.kid)
    }

    /// Where the signing key lives, for operators.
    pub fn key_location(&self) -> Result<String, JwtError> {
        Ok(self.current()?.signer.location())
    }

    /// Signs a JWT-SVID for `spiffe_id` valid for `ttl` from `now`.
    pub fn sign(
        &self,
        spiffe_id: &str,
        audience: &[String],
        ttl: Duration,
        now: OffsetDateTime,
    ) -> Result<SignedJwt, JwtError> {
        check_audience(audience)?;
        let key = self.current()?;
        let alg = key.signer.algorithm();
        let header = serde_json::json!({
            "alg": jws_alg(alg),
            "kid": key.kid,
            "typ": "JWT",
        });
        let iat = now.unix_timestamp();
        let exp = iat + ttl.as_secs() as i64;
        let claims = serde_json::json!({
            "sub": spiffe_id,
            "aud": audience,
            "exp": exp,
            "iat": iat,
        });
        let signing_input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let der = key.signer.sign(signing_input.as_bytes())?;
        let fixed = der_to_fixed(&der, ecdsa_scalar_len(alg)?)?;
        Ok(SignedJwt {
            token: format!("{signing_input}.{}", URL_SAFE_NO_PAD.encode(fixed)),
            expires_at: exp,
        })
    }

    /// The JWT bundle: a standard JWK Set (RFC 7517), `kid` on every key, JSON bytes.
    pub fn jwks(&self) -> Result<Vec<u8>, JwtError> {
        let keys = self
            .keys
            .iter()
            .map(|k| {
                let mut jwk = public_jwk(k.signer.as_ref())?;
                jwk.insert("kid".into(), serde_json::Value::String(k.kid.clone()));
                Ok(serde_json::Value::Object(jwk))
            })
            .collect::<Result<Vec<_>, JwtError>>()?;
        serde_json::to_vec(&serde_json::json!({ "keys": keys }))
            .map_err(|e| JwtError::Corrupt(format!("JWKS does not serialise: {e}")))
    }
}

/// Refuses an empty audience list, empty values, and oversized lists or values.
pub fn check_audience(audience: &[String]) -> Result<(), JwtError> {
    if audience.is_empty() {
        return Err(JwtError::InvalidRequest(
            "audience must be specified".into(),
        ));
    }
    if audience.len() > MAX_AUDIENCES {
        return Err(JwtError::InvalidRequest(format!(
            "at most {MAX_AUDIENCES} audiences are allowed"
        )));
    }
    if audience.iter().any(|a| a.is_empty()) {
        return Err(JwtError::InvalidRequest(
            "audience values must not be empty".into(),
        ));
    }
    if audience.iter().any(|a| a.len() > MAX_AUDIENCE_LEN) {
        return Err(JwtError::InvalidRequest(format!(
            "audience values must be at most {MAX_AUDIENCE_LEN} bytes"
        )));
    }
    Ok(())
}

/// The JWS `alg` for a key algorithm.
pub fn jws_alg(alg: KeyAlgorithm) -> &'static str {
    match alg {
        KeyAlgorithm::EcdsaP256 => "ES256",
        KeyAlgorithm::EcdsaP384 => "ES384",
        KeyAlgorithm::Ed25519 => "EdDSA",
        KeyAlgorithm::Rsa3072 => "RS256",
        KeyAlgorithm::Rsa4096 => "RS384",
    }
}

fn curve(alg: KeyAlgorithm) -> &'static str {
    match alg {
        KeyAlgorithm::EcdsaP256 => "P-256",
        KeyAlgorithm::EcdsaP384 => "P-384",
        _ => "",
    }
}

/// JWT-SVID keys are ECDSA only: the SPIFFE JWT-SVID spec and the Workload API clients that
/// validate them know ES256/ES384, and EdDSA is not among the spec's algorithms.
pub fn ecdsa_scalar_len(alg: KeyAlgorithm) -> Result<usize, JwtError> {
    alg.ecdsa_scalar_len().ok_or_else(|| {
        JwtError::Corrupt(format!(
            "JWT signing keys must be ecdsa-p256 or ecdsa-p384, not {alg}"
        ))
    })
}

/// The public JWK members (`kty`, `crv`, `x`, `y`) of an EC key, from its uncompressed point.
fn public_jwk(
    signer: &dyn CaSigner,
) -> Result<serde_json::Map<String, serde_json::Value>, JwtError> {
    let alg = signer.algorithm();
    let n = ecdsa_scalar_len(alg)?;
    let point = signer.public_key_raw();
    if point.len() != 1 + 2 * n || point[0] != 0x04 {
        return Err(JwtError::Corrupt(
            "JWT key's public key is not an uncompressed EC point".into(),
        ));
    }
    let mut m = serde_json::Map::new();
    m.insert("kty".into(), "EC".into());
    m.insert("crv".into(), curve(alg).into());
    m.insert("x".into(), URL_SAFE_NO_PAD.encode(&point[1..1 + n]).into());
    m.insert("y".into(), URL_SAFE_NO_PAD.encode(&point[1 + n..]).into());
    Ok(m)
}

/// RFC 7638 JWK thumbprint (SHA-256, base64url): a key ID derived from the key itself, so a
/// stored `kid` can be checked against the key the backend returns.
fn thumbprint(signer: &dyn CaSigner) -> Result<String, JwtError> {
    let jwk = public_jwk(signer)?;
    let field = |k: &str| jwk.get(k).and_then(|v| v.as_str()).unwrap_or_default();
    // Members in lexicographic order, no whitespace (RFC 7638 §3.2).
    let canonical = format!(
        r#"{{"crv":"{}","kty":"EC","x":"{}","y":"{}"}}"#,
        field("crv"),
        field("x"),
        field("y")
    );
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, canonical.as_bytes());
    Ok(URL_SAFE_NO_PAD.encode(digest.as_ref()))
}

/// Converts a DER `ECDSA-Sig-Value` (SEQUENCE of two INTEGERs) to fixed-width `r || s`.
pub fn der_to_fixed(der: &[u8], scalar_len: usize) -> Result<Vec<u8>, JwtError> {
    let bad = || JwtError::Corrupt("the key backend returned a malformed ECDSA signature".into());
    let (tag, body, rest) = der_tlv(der).ok_or_else(bad)?;
    if tag != 0x30 || !rest.is_empty() {
        return Err(bad());
    }
    let (tag_r, r, rest) = der_tlv(body).ok_or_else(bad)?;
    let (tag_s, s, rest) = der_tlv(rest).ok_or_else(bad)?;
    if tag_r != 0x02 || tag_s != 0x02 || !rest.is_empty() {
        return Err(bad());
    }
    let mut out = vec![0u8; 2 * scalar_len];
    for (i, int) in [r, s].into_iter().enumerate() {
        let first = int.iter().position(|&b| b != 0).unwrap_or(int.len());
        let trimmed = &int[first..];
        if trimmed.len() > scalar_len {
            return Err(bad());
        }
        let end = (i + 1) * scalar_len;
        out[end - trimmed.len()..end].copy_from_slice(trimmed);
    }
    Ok(out)
}

/// Splits one DER TLV off the front: (tag, value, rest). Definite lengths up to 2 bytes.
fn der_tlv(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&len0, rest) = rest.split_first()?;
    let (len, rest) = match len0 {
        l if l < 0x80 => (l as usize, rest),
        0x81 => {
            let (&l, rest) = rest.split_first()?;
            (l as usize, rest)
        }
        0x82 => {
            let l = (*rest.first()? as usize) << 8 | *rest.get(1)? as usize;
            (l, rest.get(2..)?)
        }
        _ => return None,
    };
    if rest.len() < len {
        return None;
    }
    let (value, rest) = rest.split_at(len);
    Some((tag, value, rest))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::software::{MemoryBackend, SoftwareKey};
    use aws_lc_rs::signature::{self, UnparsedPublicKey};

    fn decode(part: &str) -> serde_json::Value {
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(part).unwrap()).unwrap()
    }

    #[test]
    fn tokens_verify_with_the_published_jwks() {
        for (alg, verify) in [
            (KeyAlgorithm::EcdsaP256, &signature::ECDSA_P256_SHA256_FIXED),
            (KeyAlgorithm::EcdsaP384, &signature::ECDSA_P384_SHA384_FIXED),
        ] {
            let issuer =
                JwtIssuer::from_signer(Arc::new(SoftwareKey::generate(alg).unwrap())).unwrap();
            let now = OffsetDateTime::from_unix_timestamp(1_700_000_000).unwrap();
            // Many tokens so that short r/s scalars (leading zeros) occur.
            for _ in 0..50 {
                let jwt = issuer
                    .sign(
                        "spiffe://example.org/w",
                        &["a".into(), "b".into()],
                        Duration::from_secs(300),
                        now,
                    )
                    .unwrap();
                assert_eq!(jwt.expires_at, 1_700_000_300);
                let parts: Vec<&str> = jwt.token.split('.').collect();
                assert_eq!(parts.len(), 3);
                let header = decode(parts[0]);
                assert_eq!(header["alg"], jws_alg(alg));
                assert_eq!(header["kid"], issuer.current_kid().unwrap());
                let claims = decode(parts[1]);
                assert_eq!(claims["sub"], "spiffe://example.org/w");
                assert_eq!(claims["aud"], serde_json::json!(["a", "b"]));
                assert_eq!(claims["exp"], 1_700_000_300);

                let jwks: serde_json::Value =
                    serde_json::from_slice(&issuer.jwks().unwrap()).unwrap();
                let key = &jwks["keys"][0];
                assert_eq!(key["kid"], header["kid"]);
                assert_eq!(key["kty"], "EC");
                let mut point = vec![4u8];
                point.extend(URL_SAFE_NO_PAD.decode(key["x"].as_str().unwrap()).unwrap());
                point.extend(URL_SAFE_NO_PAD.decode(key["y"].as_str().unwrap()).unwrap());
                let sig = URL_SAFE_NO_PAD.decode(parts[2]).unwrap();
                assert_eq!(sig.len(), 2 * alg.ecdsa_scalar_len().unwrap());
                let input = format!("{}.{}", parts[0], parts[1]);
                UnparsedPublicKey::new(verify, &point)
                    .verify(input.as_bytes(), &sig)
                    .unwrap();
            }
        }
    }

    #[test]
    fn audience_is_required_and_bounded() {
        let issuer = JwtIssuer::from_signer(Arc::new(
            SoftwareKey::generate(KeyAlgorithm::EcdsaP256).unwrap(),
        ))
        .unwrap();
        let now = OffsetDateTime::now_utc();
        let ttl = Duration::from_secs(60);
        let err = issuer.sign("spiffe://e/w", &[], ttl, now).unwrap_err();
        assert_eq!(err.to_string(), "audience must be specified");
        assert!(issuer.sign("spiffe://e/w", &["".into()], ttl, now).is_err());
        let many: Vec<String> = (0..17).map(|i| i.to_string()).collect();
        assert!(issuer.sign("spiffe://e/w", &many, ttl, now).is_err());
    }

    #[test]
    fn key_is_created_once_and_found_again() {
        let store = Store::in_memory().unwrap();
        let backend = MemoryBackend::default();
        let (a, created) =
            JwtIssuer::init_or_load(&store, &backend, KeyAlgorithm::EcdsaP256).unwrap();
        assert!(created);
        let (b, created) =
            JwtIssuer::init_or_load(&store, &backend, KeyAlgorithm::EcdsaP256).unwrap();
        assert!(!created);
        assert_eq!(a.current_kid().unwrap(), b.current_kid().unwrap());
        assert_eq!(store.jwt_keys().unwrap().len(), 1);
    }

    #[test]
    fn malformed_der_signatures_are_errors() {
        assert!(der_to_fixed(&[], 32).is_err());
        assert!(der_to_fixed(&[0x30, 0x03, 0x02, 0x01], 32).is_err());
        // r longer than the scalar.
        let mut long = vec![0x30, 0x26, 0x02, 0x21];
        long.extend([0x7f; 33]);
        long.extend([0x02, 0x01, 0x01]);
        assert!(der_to_fixed(&long, 32).is_err());
        // A valid minimal one: r = 1, s = 2.
        let ok = der_to_fixed(&[0x30, 0x06, 0x02, 0x01, 0x01, 0x02, 0x01, 0x02], 32).unwrap();
        assert_eq!(ok[31], 1);
        assert_eq!(ok[63], 2);
    }
}
