//! Kubernetes service-account token signing keys, kept in the key backend (the HSM).
//!
//! kube-apiserver builds the claims and asks KeyGrid to sign them over the ExternalJWTSigner
//! API (`api::external_jwt`); the private key never leaves the backend. Keys rotate on a
//! schedule: the new key signs at once, and the replaced one stays in `FetchKeys` and the
//! JWKS for `max_token_expiration` after its replacement, so every token it signed still
//! verifies until it expires. Key IDs are base64url(SHA-256(PKIX public key)), the same
//! derivation kube-apiserver uses for file-based keys.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;

use crate::jwt::{der_to_fixed, jws_alg, JwtError};
use crate::keys::ecdsa_der::tlv;
use crate::keys::{CaSigner, KeyAlgorithm, KeyBackend};
use crate::store::{SaKeyRecord, Store};

/// The largest claims segment accepted for signing. Real tokens are well under 4 KiB.
pub const MAX_CLAIMS_BYTES: usize = 64 * 1024;

/// Settings of the key ring (from `[control_plane]`).
#[derive(Clone, Debug)]
pub struct SaSettings {
    /// Algorithm of new keys.
    pub algorithm: KeyAlgorithm,
    /// A key older than this is replaced by `rotate_if_due`.
    pub rotation: Duration,
    /// Longest token lifetime; a replaced key is published this long after replacement.
    pub max_token_expiration: Duration,
    /// FetchKeys refresh hint.
    pub refresh_hint: Duration,
}

/// One key: its ID, public key (PKIX DER), signer and creation time.
#[derive(Clone)]
pub struct SaKey {
    /// Key ID.
    pub kid: String,
    /// PKIX SubjectPublicKeyInfo, DER.
    pub spki_der: Vec<u8>,
    /// Creation time, Unix seconds.
    pub created_at: i64,
    signer: Arc<dyn CaSigner>,
}

impl SaKey {
    /// Where the private key lives.
    pub fn location(&self) -> String {
        self.signer.location()
    }

    /// The key's algorithm.
    pub fn algorithm(&self) -> KeyAlgorithm {
        self.signer.algorithm()
    }
}

/// The signing keys: the newest signs, the others verify until their tokens expire.
pub struct SaKeyRing {
    store: Arc<Store>,
    backend: Arc<dyn KeyBackend>,
    settings: SaSettings,
    keys: RwLock<Vec<SaKey>>,
    legacy: Vec<LegacyKey>,
}

/// A public key from the cluster's former `--service-account-key-file`: published in
/// FetchKeys (verification only, excluded from OIDC discovery) so tokens signed before the
/// move to the external signer stay valid until they expire.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LegacyKey {
    /// Key ID as kube-apiserver derives it for key files.
    pub kid: String,
    /// PKIX SubjectPublicKeyInfo, DER.
    pub spki_der: Vec<u8>,
}

/// Reads the `PUBLIC KEY` (PKIX) blocks of a PEM file such as kubeadm's `sa.pub`.
pub fn read_legacy_keys(path: &std::path::Path) -> Result<Vec<LegacyKey>, String> {
    let data = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let blocks =
        pem::parse_many(&data).map_err(|e| format!("{} is not PEM: {e}", path.display()))?;
    let mut out = Vec::new();
    for b in blocks {
        if b.tag() != "PUBLIC KEY" {
            return Err(format!(
                "{} holds a PEM {:?}; only PKIX \"PUBLIC KEY\" blocks are accepted",
                path.display(),
                b.tag()
            ));
        }
        use x509_parser::prelude::FromDer;
        x509_parser::x509::SubjectPublicKeyInfo::from_der(b.contents())
            .map_err(|e| format!("{}: a public key does not parse: {e}", path.display()))?;
        let spki_der = b.into_contents();
        out.push(LegacyKey {
            kid: key_id(&spki_der),
            spki_der,
        });
    }
    if out.is_empty() {
        return Err(format!("{} holds no public key", path.display()));
    }
    Ok(out)
}

/// PKIX SubjectPublicKeyInfo of an EC key from its uncompressed point.
pub fn ec_spki_der(alg: KeyAlgorithm, point: &[u8]) -> Vec<u8> {
    // id-ecPublicKey 1.2.840.10045.2.1
    let oid = [0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01];
    let mut algid = oid.to_vec();
    // Configuration admits only ECDSA keys here (`control_plane.sa_key_algorithm`).
    algid.extend_from_slice(alg.ec_params_der().unwrap_or_default());
    let mut bits = vec![0u8];
    bits.extend_from_slice(point);
    let mut body = tlv(0x30, &algid);
    body.extend(tlv(0x03, &bits));
    tlv(0x30, &body)
}

/// Kubernetes' key ID: base64url(SHA-256(PKIX DER)).
pub fn key_id(spki_der: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(aws_lc_rs::digest::digest(
        &aws_lc_rs::digest::SHA256,
        spki_der,
    ))
}

fn make_key(signer: Arc<dyn CaSigner>, created_at: i64) -> SaKey {
    let spki_der = ec_spki_der(signer.algorithm(), signer.public_key_raw());
    SaKey {
        kid: key_id(&spki_der),
        spki_der,
        created_at,
        signer,
    }
}

fn poisoned() -> JwtError {
    JwtError::Corrupt("service-account key ring lock poisoned".into())
}

impl SaKeyRing {
    /// Loads the keys recorded in the store, or creates the first one in `backend`.
    pub fn init_or_load(
        store: Arc<Store>,
        backend: Arc<dyn KeyBackend>,
        settings: SaSettings,
        now: i64,
    ) -> Result<Self, JwtError> {
        let mut keys = Vec::new();
        for rec in store.sa_keys()? {
            let alg = KeyAlgorithm::from_name(&rec.algorithm).ok_or_else(|| {
                JwtError::Corrupt(format!(
                    "service-account key {} has unknown algorithm",
                    rec.kid
                ))
            })?;
            let key = make_key(backend.find(&rec.key_label, alg)?, rec.created_at);
            if key.kid != rec.kid {
                return Err(JwtError::Corrupt(format!(
                    "service-account key {} does not match the key labelled {}",
                    rec.kid, rec.key_label
                )));
            }
            keys.push(key);
        }
        let ring = SaKeyRing {
            store,
            backend,
            settings,
            keys: RwLock::new(keys),
            legacy: Vec::new(),
        };
        if ring.keys.read().map_err(|_| poisoned())?.is_empty() {
            ring.rotate(now)?;
        }
        Ok(ring)
    }

    /// Adds verification-only keys from former key files (see [`LegacyKey`]).
    pub fn with_legacy_keys(mut self, legacy: Vec<LegacyKey>) -> Self {
        self.legacy = legacy;
        self
    }

    /// The verification-only keys from former key files.
    pub fn legacy_keys(&self) -> &[LegacyKey] {
        &self.legacy
    }

    /// Creates a new signing key now; the previous one keeps verifying.
    pub fn rotate(&self, now: i64) -> Result<SaKey, JwtError> {
        let mut suffix = [0u8; 4];
        aws_lc_rs::rand::fill(&mut suffix)
            .map_err(|_| JwtError::Corrupt("system random generator failed".into()))?;
        let label = format!("keygrid-sa-{now}-{}", hex::encode(suffix));
        let signer = self.backend.generate(&label, self.settings.algorithm)?;
        // Keep creation times strictly increasing so "newest signs" is unambiguous.
        let created_at = {
            let keys = self.keys.read().map_err(|_| poisoned())?;
            keys.last().map_or(now, |k| now.max(k.created_at + 1))
        };
        let key = make_key(signer, created_at);
        self.store.insert_sa_key(&SaKeyRecord {
            kid: key.kid.clone(),
            key_label: label,
            algorithm: self.settings.algorithm.name().into(),
            created_at,
        })?;
        self.store.record_event(&crate::store::EventRecord {
            at: now,
            kind: "sa_key_rotation".into(),
            actor: "core".into(),
            subject: key.kid.clone(),
            rule: String::new(),
            detail: format!("service-account signing key created at {}", key.location()),
        })?;
        self.keys.write().map_err(|_| poisoned())?.push(key.clone());
        tracing::info!(kid = %key.kid, key = %key.location(), "service-account signing key created");
        Ok(key)
    }

    /// Rotates when the signing key is older than the rotation period. Returns the new key.
    pub fn rotate_if_due(&self, now: i64) -> Result<Option<SaKey>, JwtError> {
        let due = self
            .current()?
            .created_at
            .saturating_add(self.settings.rotation.as_secs() as i64)
            <= now;
        if due {
            return self.rotate(now).map(Some);
        }
        Ok(None)
    }

    /// The key that signs new tokens.
    pub fn current(&self) -> Result<SaKey, JwtError> {
        self.keys
            .read()
            .map_err(|_| poisoned())?
            .last()
            .cloned()
            .ok_or_else(|| JwtError::Corrupt("no service-account signing key".into()))
    }

    /// Keys tokens may still be verified with at `now`: the signing key and every older
    /// key replaced less than `max_token_expiration` ago. Oldest first.
    pub fn verification_keys(&self, now: i64) -> Result<Vec<SaKey>, JwtError> {
        let keys = self.keys.read().map_err(|_| poisoned())?;
        let keep = self.settings.max_token_expiration.as_secs() as i64;
        let mut out = Vec::new();
        for (i, k) in keys.iter().enumerate() {
            match keys.get(i + 1) {
                Some(next) if next.created_at.saturating_add(keep) <= now => {}
                _ => out.push(k.clone()),
            }
        }
        Ok(out)
    }

    /// Every key on record, oldest first (for `keygrid sa list`).
    pub fn all(&self) -> Result<Vec<SaKey>, JwtError> {
        Ok(self.keys.read().map_err(|_| poisoned())?.clone())
    }

    /// The settings.
    pub fn settings(&self) -> &SaSettings {
        &self.settings
    }

    /// Signs `claims` (a base64url JWT payload, as kube-apiserver sends it): returns the
    /// base64url header (`alg`, `kid`, `typ`) and the base64url JWS signature.
    pub fn sign(&self, claims: &str) -> Result<(String, String), JwtError> {
        check_claims(claims)?;
        let key = self.current()?;
        let alg = key.algorithm();
        let header = serde_json::json!({ "alg": jws_alg(alg), "kid": key.kid, "typ": "JWT" });
        let header = URL_SAFE_NO_PAD.encode(header.to_string());
        let input = format!("{header}.{claims}");
        let der = key.signer.sign(input.as_bytes())?;
        let sig = der_to_fixed(&der, crate::jwt::ecdsa_scalar_len(alg)?)?;
        Ok((header, URL_SAFE_NO_PAD.encode(sig)))
    }

    /// A raw signature with the signing key (DER), for `keygrid bench sa-sign`'s ceiling.
    pub fn raw_sign(&self, msg: &[u8]) -> Result<Vec<u8>, JwtError> {
        Ok(self.current()?.signer.sign(msg)?)
    }

    /// The JWK Set of the verification keys at `now` (OIDC discovery's `jwks_uri`).
    pub fn jwks(&self, now: i64) -> Result<Vec<u8>, JwtError> {
        let keys = self
            .verification_keys(now)?
            .iter()
            .map(|k| {
                let alg = k.algorithm();
                let n = crate::jwt::ecdsa_scalar_len(alg)?;
                let point = k.signer.public_key_raw();
                if point.len() != 1 + 2 * n {
                    return Err(JwtError::Corrupt(
                        "service-account key is not an EC point".into(),
                    ));
                }
                Ok(serde_json::json!({
                    "use": "sig",
                    "kty": "EC",
                    "crv": if n == 32 { "P-256" } else { "P-384" },
                    "alg": jws_alg(alg),
                    "kid": k.kid,
                    "x": URL_SAFE_NO_PAD.encode(&point[1..1 + n]),
                    "y": URL_SAFE_NO_PAD.encode(&point[1 + n..]),
                }))
            })
            .collect::<Result<Vec<_>, _>>()?;
        serde_json::to_vec(&serde_json::json!({ "keys": keys }))
            .map_err(|e| JwtError::Corrupt(format!("JWKS does not serialise: {e}")))
    }
}

/// The OIDC discovery document for `issuer` with keys at `jwks_uri` (KEP-1393 fields).
pub fn openid_configuration(issuer: &str, jwks_uri: &str, algs: &[&str]) -> Vec<u8> {
    serde_json::json!({
        "issuer": issuer,
        "jwks_uri": jwks_uri,
        "response_types_supported": ["id_token"],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": algs,
    })
    .to_string()
    .into_bytes()
}

/// Refuses claims that are not a base64url-encoded JSON object of sane size.
fn check_claims(claims: &str) -> Result<(), JwtError> {
    let bad = |m: &str| JwtError::InvalidRequest(format!("claims {m}"));
    if claims.is_empty() {
        return Err(bad("are empty"));
    }
    if claims.len() > MAX_CLAIMS_BYTES {
        return Err(bad(&format!("exceed {MAX_CLAIMS_BYTES} bytes")));
    }
    let raw = URL_SAFE_NO_PAD
        .decode(claims)
        .map_err(|_| bad("are not unpadded base64url"))?;
    match serde_json::from_slice::<serde_json::Value>(&raw) {
        Ok(serde_json::Value::Object(_)) => Ok(()),
        _ => Err(bad("are not a JSON object")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::software::MemoryBackend;
    use aws_lc_rs::signature::{UnparsedPublicKey, ECDSA_P256_SHA256_FIXED};

    fn ring(store: Arc<Store>, backend: Arc<MemoryBackend>) -> SaKeyRing {
        SaKeyRing::init_or_load(
            store,
            backend,
            SaSettings {
                algorithm: KeyAlgorithm::EcdsaP256,
                rotation: Duration::from_secs(100),
                max_token_expiration: Duration::from_secs(600),
                refresh_hint: Duration::from_secs(60),
            },
            1_000,
        )
        .unwrap()
    }

    fn verify(key: &SaKey, header: &str, claims: &str, sig: &str) -> bool {
        let point = &key.spki_der[key.spki_der.len() - 65..];
        UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, point)
            .verify(
                format!("{header}.{claims}").as_bytes(),
                &URL_SAFE_NO_PAD.decode(sig).unwrap(),
            )
            .is_ok()
    }

    #[test]
    fn rotation_keeps_the_old_key_until_its_tokens_expire() {
        let store = Arc::new(Store::in_memory().unwrap());
        let backend = Arc::new(MemoryBackend::default());
        let r = ring(store.clone(), backend.clone());
        let claims = URL_SAFE_NO_PAD.encode(r#"{"sub":"a"}"#);
        let (h1, s1) = r.sign(&claims).unwrap();
        let k1 = r.current().unwrap();
        assert!(verify(&k1, &h1, &claims, &s1));
        assert!(r.rotate_if_due(1_050).unwrap().is_none());
        let k2 = r.rotate_if_due(1_100).unwrap().unwrap();
        assert_ne!(k1.kid, k2.kid);
        let (h2, s2) = r.sign(&claims).unwrap();
        let header: serde_json::Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(&h2).unwrap()).unwrap();
        assert_eq!(header["kid"], k2.kid.as_str());
        assert!(verify(&k2, &h2, &claims, &s2));
        let kids = |now| -> Vec<String> {
            r.verification_keys(now)
                .unwrap()
                .into_iter()
                .map(|k| k.kid)
                .collect()
        };
        assert_eq!(kids(1_699), vec![k1.kid.clone(), k2.kid.clone()]);
        assert_eq!(kids(1_700), vec![k2.kid.clone()]);
        // Each key creation is an audit event.
        assert_eq!(store.events("sa_key_rotation").unwrap().len(), 2);
        // Found again after a restart, same order.
        let again = ring(store, backend);
        assert_eq!(again.current().unwrap().kid, k2.kid);
        assert_eq!(again.all().unwrap().len(), 2);
    }

    #[test]
    fn legacy_key_files_are_read_with_kubernetes_key_ids() {
        let dir = tempfile::tempdir().unwrap();
        let k = rcgen::KeyPair::generate().unwrap();
        let path = dir.path().join("sa.pub");
        std::fs::write(&path, k.public_key_pem()).unwrap();
        let keys = read_legacy_keys(&path).unwrap();
        assert_eq!(keys.len(), 1);
        let der = pem::parse(k.public_key_pem()).unwrap().into_contents();
        assert_eq!(keys[0].spki_der, der);
        assert_eq!(keys[0].kid, key_id(&der));
        std::fs::write(&path, k.serialize_pem()).unwrap();
        let err = read_legacy_keys(&path).unwrap_err();
        assert!(
            err.contains("PRIVATE KEY") && !err.contains("BEGIN"),
            "{err}"
        );
        std::fs::write(&path, "").unwrap();
        assert!(read_legacy_keys(&path).is_err());
        assert!(read_legacy_keys(&dir.path().join("missing")).is_err());
    }

    #[test]
    fn bad_claims_are_refused() {
        let r = ring(
            Arc::new(Store::in_memory().unwrap()),
            Arc::new(MemoryBackend::default()),
        );
        for bad in ["", "not base64!", &URL_SAFE_NO_PAD.encode("[1]")] {
            assert!(
                matches!(r.sign(bad), Err(JwtError::InvalidRequest(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn key_id_is_the_kubernetes_derivation() {
        let r = ring(
            Arc::new(Store::in_memory().unwrap()),
            Arc::new(MemoryBackend::default()),
        );
        let k = r.current().unwrap();
        // The SPKI parses as an EC public key and the kid is its SHA-256.
        use x509_parser::prelude::FromDer;
        let (rest, spki) = x509_parser::x509::SubjectPublicKeyInfo::from_der(&k.spki_der).unwrap();
        assert!(rest.is_empty());
        assert_eq!(
            spki.subject_public_key.data.as_ref(),
            &k.spki_der[k.spki_der.len() - 65..]
        );
        assert_eq!(k.kid, key_id(&k.spki_der));
    }
}
