//! The verifier: decides whether a TPM may join, without needing a TPM itself.
//!
//! [`Verifier::challenge`] checks the EK (certificate chain to a manufacturer CA, certificate
//! key equals the EK public key, allow-list policy) and the AK (attributes of a TPM-resident
//! restricted signing key, name), then seals a fresh secret to the EK for the AK's name and
//! remembers it under a fresh nonce. [`Verifier::verify`] consumes that challenge exactly once:
//! the activated secret must match and the AK must have signed the nonce.

use crate::credential::{check_ek_public, make_credential};
use crate::ek_certificate::{rsa_key_of, verify_ek_certificate, ManufacturerCas};
use crate::error::{AttestationError, Result};
use crate::public_area::{attr, PublicArea, ALG_RSAPSS, ALG_RSASSA, ALG_SHA256};
use crate::quote::{check_pcr_request, verify_quote};
use crate::wire::{
    signed_nonce_message, AttestationData, Challenge, ChallengeResponse, NONCE_LEN,
    PROTOCOL_VERSION,
};
use aws_lc_rs::constant_time::verify_slices_are_equal;
use aws_lc_rs::digest;
use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use aws_lc_rs::signature::{RsaParameters, RSA_PKCS1_2048_8192_SHA256, RSA_PSS_2048_8192_SHA256};
use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::{Duration, Instant};
use x509_parser::time::ASN1Time;

/// SPIRE selector type of this attestor.
pub const SELECTOR_TYPE: &str = "keygrid_tpm";
/// Path segment of agent SPIFFE IDs (`spiffe://<td>/spire/agent/keygrid_tpm/<ek hash>`).
pub const AGENT_PATH_PREFIX: &str = "/spire/agent/keygrid_tpm/";
/// Size of the sealed credential secret.
const SECRET_LEN: usize = 32;

/// What the verifier trusts and how long challenges live.
#[derive(Debug, Clone)]
pub struct VerifierConfig {
    /// Trust domain the agent SPIFFE IDs are minted in (e.g. `example.org`).
    pub trust_domain: String,
    /// TPM manufacturer CAs; an EK certificate must chain to one of them.
    pub manufacturer_cas: ManufacturerCas,
    /// Optional allow-list of EK hashes (lowercase hex SHA-256 of the EK SubjectPublicKeyInfo
    /// DER). When set, only listed EKs attest; a listed EK without a certificate is accepted.
    pub allowed_ek_hashes: Option<HashSet<String>>,
    /// EK hashes (same form) that never attest, whatever their certificate or the
    /// allow-list say: a lost, stolen or decommissioned TPM keeps a manufacturer-signed EK
    /// certificate for life, so trusting its CA cannot be the last word.
    pub denied_ek_hashes: HashSet<String>,
    /// How long an issued challenge may be answered.
    pub challenge_ttl: Duration,
    /// Cap on outstanding challenges (protects memory against unanswered requests).
    pub max_pending: usize,
    /// SHA-256 PCR indices every agent must quote (ascending, at most 8); each becomes a
    /// `pcr:sha256:<index>:<hex>` selector. Empty (the default): no quote.
    pub quote_pcrs: Vec<u8>,
}

impl VerifierConfig {
    /// A config with the defaults: 60 s challenges, 10 000 outstanding at most, no allow-list.
    pub fn new(trust_domain: impl Into<String>, manufacturer_cas: ManufacturerCas) -> Self {
        Self {
            trust_domain: trust_domain.into(),
            manufacturer_cas,
            allowed_ek_hashes: None,
            denied_ek_hashes: HashSet::new(),
            challenge_ttl: Duration::from_secs(60),
            max_pending: 10_000,
            quote_pcrs: Vec::new(),
        }
    }
}

/// A node whose TPM passed attestation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttestedNode {
    /// `spiffe://<td>/spire/agent/keygrid_tpm/<ek hash>`.
    pub spiffe_id: String,
    /// Lowercase hex SHA-256 of the EK SubjectPublicKeyInfo DER.
    pub ek_hash: String,
    /// TPM manufacturer from the EK certificate (absent for allow-listed EKs without one).
    pub manufacturer: Option<String>,
    /// Selector values of type [`SELECTOR_TYPE`] (`ek_hash:<hash>`, `ek_manufacturer:<m>`).
    pub selector_values: Vec<String>,
    /// The attested AK's `TPMT_PUBLIC`, for checking what else it signed in the same
    /// exchange (EST: the certification of the enrollment key).
    pub ak_public: Vec<u8>,
}

impl AttestedNode {
    /// Selectors in `type:value` form, e.g. `keygrid_tpm:ek_hash:<hash>`.
    pub fn selectors(&self) -> Vec<String> {
        self.selector_values
            .iter()
            .map(|v| format!("{SELECTOR_TYPE}:{v}"))
            .collect()
    }
}

/// A challenge waiting for its answer.
struct Pending {
    secret: Vec<u8>,
    ak: PublicArea,
    ek_hash: String,
    manufacturer: Option<String>,
    expires: Instant,
}

/// Verifies TPM attestations; share one per server (it holds the single-use challenge store).
pub struct Verifier {
    config: VerifierConfig,
    pending: Mutex<HashMap<Vec<u8>, Pending>>,
    rng: SystemRandom,
}

impl Verifier {
    /// Creates a verifier; refuses a config that could never accept any TPM.
    pub fn new(config: VerifierConfig) -> Result<Self> {
        if config.manufacturer_cas.is_empty()
            && config
                .allowed_ek_hashes
                .as_ref()
                .is_none_or(HashSet::is_empty)
        {
            return Err(AttestationError::Config(
                "configure manufacturer CA certificates, an EK hash allow-list, or both".into(),
            ));
        }
        check_pcr_request(&config.quote_pcrs)
            .map_err(|e| AttestationError::Config(format!("quote_pcrs: {e}")))?;
        if config.trust_domain.is_empty() || config.trust_domain.contains('/') {
            return Err(AttestationError::Config(format!(
                "bad trust domain {:?}",
                config.trust_domain
            )));
        }
        Ok(Self {
            config,
            pending: Mutex::new(HashMap::new()),
            rng: SystemRandom::new(),
        })
    }

    /// Checks the EK and AK and issues a single-use challenge for them.
    pub fn challenge(&self, data: &AttestationData) -> Result<Challenge> {
        if data.version != PROTOCOL_VERSION {
            return Err(AttestationError::UnsupportedVersion {
                got: data.version,
                supported: PROTOCOL_VERSION,
            });
        }
        let ek = PublicArea::from_tpm2b(&data.ek_public, "EK public")?;
        check_ek_public(&ek)?;
        let ek_hash = hex::encode(digest::digest(&digest::SHA256, &ek.spki_der()?));
        if self.config.denied_ek_hashes.contains(&ek_hash) {
            return Err(AttestationError::PolicyRefused(format!(
                "EK {ek_hash} is on the deny-list"
            )));
        }

        let manufacturer = match &data.ek_certificate {
            Some(cert) => {
                let info =
                    verify_ek_certificate(cert, &self.config.manufacturer_cas, ASN1Time::now())?;
                let (n, e) = rsa_key_of(cert)?;
                let ek_e = strip(&ek.exponent.to_be_bytes());
                if n != strip(&ek.modulus) || e != ek_e {
                    return Err(AttestationError::EkPublic(
                        "the EK certificate's key is not the EK public key the TPM presented"
                            .into(),
                    ));
                }
                Some(info.manufacturer)
            }
            None => None,
        };
        match (&self.config.allowed_ek_hashes, &manufacturer) {
            (Some(allowed), _) if !allowed.contains(&ek_hash) => {
                return Err(AttestationError::PolicyRefused(format!(
                    "EK {ek_hash} is not on the allow-list"
                )));
            }
            (None, None) => {
                return Err(AttestationError::PolicyRefused(format!(
                    "EK {ek_hash} has no certificate, and an EK without a certificate is accepted only \
                     when its hash is on the allow-list"
                )));
            }
            _ => {}
        }

        let ak = PublicArea::from_tpm2b(&data.ak_public, "AK public")?;
        check_ak_public(&ak)?;
        let ak_name = ak.name()?;
        if verify_slices_are_equal(&ak_name, &data.ak_name).is_err() {
            return Err(AttestationError::AttestationKey(
                "the AK name does not match the AK public area".into(),
            ));
        }

        let mut secret = vec![0u8; SECRET_LEN];
        let mut nonce = vec![0u8; NONCE_LEN];
        self.rng
            .fill(&mut secret)
            .map_err(|_| AttestationError::Crypto("random secret"))?;
        self.rng
            .fill(&mut nonce)
            .map_err(|_| AttestationError::Crypto("random nonce"))?;
        let sealed = make_credential(&ek, &ak_name, &secret)?;

        let now = Instant::now();
        let mut pending = self.lock_pending();
        pending.retain(|_, p| p.expires > now);
        if pending.len() >= self.config.max_pending {
            return Err(AttestationError::Challenge(format!(
                "{} challenges are outstanding; try again later",
                pending.len()
            )));
        }
        pending.insert(
            nonce.clone(),
            Pending {
                secret,
                ak,
                ek_hash,
                manufacturer,
                expires: now + self.config.challenge_ttl,
            },
        );
        Ok(Challenge {
            version: PROTOCOL_VERSION,
            nonce,
            credential_blob: sealed.credential_blob,
            encrypted_secret: sealed.encrypted_secret,
            pcrs: self.config.quote_pcrs.clone(),
        })
    }

    /// Consumes the challenge the response names and checks the answer.
    ///
    /// The challenge is removed before any check, so a response (right or wrong) can be
    /// presented only once.
    pub fn verify(&self, response: &ChallengeResponse) -> Result<AttestedNode> {
        self.verify_for(&response.nonce, response)
    }

    /// Like [`Verifier::verify`], for transports that know which challenge they issued (a
    /// SPIRE attestation stream): consumes that challenge and refuses a response to any other.
    pub fn verify_for(
        &self,
        challenge_nonce: &[u8],
        response: &ChallengeResponse,
    ) -> Result<AttestedNode> {
        let pending = self.lock_pending().remove(challenge_nonce);
        if response.version != PROTOCOL_VERSION {
            return Err(AttestationError::UnsupportedVersion {
                got: response.version,
                supported: PROTOCOL_VERSION,
            });
        }
        let pending = pending.ok_or_else(|| {
            AttestationError::Challenge(
                "unknown or already answered challenge (each challenge can be answered once)"
                    .into(),
            )
        })?;
        if verify_slices_are_equal(challenge_nonce, &response.nonce).is_err() {
            return Err(AttestationError::Challenge(
                "the response answers a different challenge than the one issued".into(),
            ));
        }
        if Instant::now() >= pending.expires {
            return Err(AttestationError::Challenge(format!(
                "challenge expired (challenges live {:?})",
                self.config.challenge_ttl
            )));
        }
        if verify_slices_are_equal(&pending.secret, &response.activated_secret).is_err() {
            return Err(AttestationError::ActivationFailed(
                "the returned secret does not match the sealed one: the EK and the AK are not in the same TPM"
                    .into(),
            ));
        }
        let params: &'static RsaParameters = match pending.ak.scheme {
            ALG_RSAPSS => &RSA_PSS_2048_8192_SHA256,
            _ => &RSA_PKCS1_2048_8192_SHA256,
        };
        pending
            .ak
            .rsa_components()
            .verify(
                params,
                &signed_nonce_message(&response.nonce),
                &response.nonce_signature,
            )
            .map_err(|_| {
                AttestationError::SignatureInvalid(
                    "the AK's signature over the nonce does not verify".into(),
                )
            })?;

        let mut selector_values = vec![format!("ek_hash:{}", pending.ek_hash)];
        if let Some(m) = &pending.manufacturer {
            selector_values.push(format!("ek_manufacturer:{m}"));
        }
        if !self.config.quote_pcrs.is_empty() {
            let quote = response.pcr_quote.as_ref().ok_or_else(|| {
                AttestationError::Challenge(
                    "the challenge asked for a PCR quote and none was sent".into(),
                )
            })?;
            let ak = pending.ak.rsa_components();
            selector_values.extend(verify_quote(
                quote,
                &response.nonce,
                &self.config.quote_pcrs,
                |msg, sig| ak.verify(params, msg, sig).is_ok(),
            )?);
        }
        Ok(AttestedNode {
            spiffe_id: format!(
                "spiffe://{}{AGENT_PATH_PREFIX}{}",
                self.config.trust_domain, pending.ek_hash
            ),
            ek_hash: pending.ek_hash,
            manufacturer: pending.manufacturer,
            selector_values,
            ak_public: pending.ak.tpmt_bytes().to_vec(),
        })
    }

    /// Number of challenges issued and not yet answered or expired.
    pub fn outstanding_challenges(&self) -> usize {
        let now = Instant::now();
        self.lock_pending()
            .values()
            .filter(|p| p.expires > now)
            .count()
    }

    fn lock_pending(&self) -> std::sync::MutexGuard<'_, HashMap<Vec<u8>, Pending>> {
        // A panic while holding the lock cannot leave the map inconsistent (single inserts/removes).
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Checks that the AK is a TPM-resident restricted signing key with a scheme the verifier can check.
pub fn check_ak_public(ak: &PublicArea) -> Result<()> {
    let required = [
        (attr::RESTRICTED, "restricted"),
        (attr::SIGN, "sign"),
        (attr::FIXED_TPM, "fixedTPM"),
        (attr::FIXED_PARENT, "fixedParent"),
        (attr::SENSITIVE_DATA_ORIGIN, "sensitiveDataOrigin"),
    ];
    let missing: Vec<&str> = required
        .iter()
        .filter(|(bit, _)| !ak.has(*bit))
        .map(|(_, n)| *n)
        .collect();
    if !missing.is_empty() {
        return Err(AttestationError::AttestationKey(format!(
            "missing attributes: {}",
            missing.join(", ")
        )));
    }
    if ak.has(attr::DECRYPT) {
        return Err(AttestationError::AttestationKey(
            "must not have the decrypt attribute".into(),
        ));
    }
    if ak.name_alg != ALG_SHA256 {
        return Err(AttestationError::AttestationKey(format!(
            "nameAlg 0x{:04x} unsupported (only SHA-256)",
            ak.name_alg
        )));
    }
    match (ak.scheme, ak.scheme_hash) {
        (ALG_RSASSA | ALG_RSAPSS, Some(ALG_SHA256)) => Ok(()),
        (s, h) => Err(AttestationError::AttestationKey(format!(
            "signing scheme 0x{s:04x} with hash {h:?} unsupported (need RSASSA or RSAPSS with SHA-256)"
        ))),
    }
}

fn strip(b: &[u8]) -> Vec<u8> {
    b.iter().skip_while(|x| **x == 0).copied().collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::public_area::tests::{rsa_tpmt, tpm2b};
    use crate::public_area::{SymmetricDef, ALG_AES, ALG_CFB, ALG_NULL};
    use aws_lc_rs::encoding::{AsDer, PublicKeyX509Der};
    use aws_lc_rs::rsa::{KeyPair, KeySize};
    use x509_parser::prelude::FromDer;

    const AK_ATTRS: u32 = attr::FIXED_TPM
        | attr::FIXED_PARENT
        | attr::SENSITIVE_DATA_ORIGIN
        | attr::USER_WITH_AUTH
        | attr::RESTRICTED
        | attr::SIGN;
    const EK_ATTRS: u32 = attr::FIXED_TPM
        | attr::FIXED_PARENT
        | attr::SENSITIVE_DATA_ORIGIN
        | attr::ADMIN_WITH_POLICY
        | attr::RESTRICTED
        | attr::DECRYPT;

    fn modulus_of(spki_der: &[u8]) -> Vec<u8> {
        let (_, spki) = x509_parser::x509::SubjectPublicKeyInfo::from_der(spki_der).unwrap();
        match spki.parsed().unwrap() {
            x509_parser::public_key::PublicKey::RSA(rsa) => strip(rsa.modulus),
            _ => unreachable!(),
        }
    }

    /// A software stand-in for a TPM's key pair (unit tests only; the real proof uses swtpm).
    struct SoftAk {
        key: KeyPair,
        tpm2b: Vec<u8>,
    }

    fn soft_ak(attrs: u32) -> SoftAk {
        let key = KeyPair::generate(KeySize::Rsa2048).unwrap();
        let der: PublicKeyX509Der = aws_lc_rs::signature::KeyPair::public_key(&key)
            .as_der()
            .unwrap();
        let tpmt = rsa_tpmt(
            attrs,
            None,
            ALG_RSASSA,
            Some(ALG_SHA256),
            &modulus_of(der.as_ref()),
        );
        SoftAk {
            key,
            tpm2b: tpm2b(&tpmt),
        }
    }

    fn ek_public() -> Vec<u8> {
        let key = KeyPair::generate(KeySize::Rsa2048).unwrap();
        let der: PublicKeyX509Der = aws_lc_rs::signature::KeyPair::public_key(&key)
            .as_der()
            .unwrap();
        let sym = SymmetricDef {
            algorithm: ALG_AES,
            key_bits: 128,
            mode: ALG_CFB,
        };
        tpm2b(&rsa_tpmt(
            EK_ATTRS,
            Some(sym),
            ALG_NULL,
            None,
            &modulus_of(der.as_ref()),
        ))
    }

    fn data(ak: &SoftAk, ek: &[u8]) -> AttestationData {
        let name = PublicArea::from_tpm2b(&ak.tpm2b, "AK")
            .unwrap()
            .name()
            .unwrap();
        AttestationData {
            version: PROTOCOL_VERSION,
            ek_certificate: None,
            ek_public: ek.to_vec(),
            ak_public: ak.tpm2b.clone(),
            ak_name: name,
        }
    }

    /// A config whose allow-list holds exactly `ek`, and `ek`'s hash.
    fn allowing(ek: &[u8]) -> (VerifierConfig, String) {
        let area = PublicArea::from_tpm2b(ek, "EK").unwrap();
        let hash = hex::encode(digest::digest(&digest::SHA256, &area.spki_der().unwrap()));
        let mut cfg = VerifierConfig::new("example.org", ManufacturerCas::default());
        cfg.allowed_ek_hashes = Some([hash.clone()].into_iter().collect());
        (cfg, hash)
    }

    fn allow_all(ek: &[u8]) -> Verifier {
        Verifier::new(allowing(ek).0).unwrap()
    }

    #[test]
    fn a_denied_ek_is_refused_even_when_allow_listed() {
        let ek = ek_public();
        let (mut cfg, hash) = allowing(&ek);
        cfg.denied_ek_hashes = [hash.clone()].into_iter().collect();
        let v = Verifier::new(cfg).unwrap();
        let ak = soft_ak(AK_ATTRS);
        let err = v.challenge(&data(&ak, &ek)).unwrap_err();
        assert!(
            matches!(&err, AttestationError::PolicyRefused(m) if m.contains("deny-list") && m.contains(&hash)),
            "{err}"
        );
        // The same TPM attests once it is off the deny-list.
        assert!(allow_all(&ek).challenge(&data(&ak, &ek)).is_ok());
    }

    #[test]
    fn refuses_aks_with_wrong_attributes() {
        let ek = ek_public();
        let v = allow_all(&ek);
        for (attrs, expect) in [
            (
                AK_ATTRS & !attr::RESTRICTED,
                "missing attributes: restricted",
            ),
            (AK_ATTRS & !attr::FIXED_TPM, "fixedTPM"),
            (
                AK_ATTRS & !attr::SENSITIVE_DATA_ORIGIN,
                "sensitiveDataOrigin",
            ),
            (AK_ATTRS | attr::DECRYPT, "decrypt"),
        ] {
            let err = v.challenge(&data(&soft_ak(attrs), &ek)).unwrap_err();
            assert!(matches!(err, AttestationError::AttestationKey(_)), "{err}");
            assert!(
                err.to_string().contains(expect),
                "{err} should mention {expect}"
            );
        }
        assert_eq!(
            v.outstanding_challenges(),
            0,
            "no challenge for refused AKs"
        );
    }

    #[test]
    fn refuses_ak_name_that_does_not_match() {
        let ek = ek_public();
        let v = allow_all(&ek);
        let mut d = data(&soft_ak(AK_ATTRS), &ek);
        d.ak_name[10] ^= 1;
        let err = v.challenge(&d).unwrap_err();
        assert!(err.to_string().contains("AK name does not match"), "{err}");
    }

    #[test]
    fn refuses_unlisted_ek_and_ek_without_certificate() {
        let ek = ek_public();
        let v = allow_all(&ek_public());
        let err = v.challenge(&data(&soft_ak(AK_ATTRS), &ek)).unwrap_err();
        assert!(err.to_string().contains("not on the allow-list"), "{err}");

        let root = {
            let key = rcgen::KeyPair::generate().unwrap();
            let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
            p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
            p.self_signed(&key).unwrap()
        };
        let mut cas = ManufacturerCas::default();
        cas.add_der(root.der().to_vec()).unwrap();
        let v = Verifier::new(VerifierConfig::new("example.org", cas)).unwrap();
        let err = v.challenge(&data(&soft_ak(AK_ATTRS), &ek)).unwrap_err();
        assert!(err.to_string().contains("has no certificate"), "{err}");
    }

    #[test]
    fn refuses_truncated_public_areas() {
        let ek = ek_public();
        let v = allow_all(&ek);
        let mut d = data(&soft_ak(AK_ATTRS), &ek);
        d.ak_public.truncate(100);
        let err = v.challenge(&d).unwrap_err();
        assert!(err.to_string().starts_with("malformed AK public"), "{err}");
        let mut d = data(&soft_ak(AK_ATTRS), &ek);
        d.ek_public.truncate(7);
        let err = v.challenge(&d).unwrap_err();
        assert!(err.to_string().starts_with("malformed EK public"), "{err}");
    }

    #[test]
    fn config_that_accepts_nothing_is_refused() {
        let err = Verifier::new(VerifierConfig::new(
            "example.org",
            ManufacturerCas::default(),
        ))
        .err()
        .unwrap();
        assert!(err.to_string().contains("allow-list"), "{err}");
    }

    #[test]
    fn responses_are_single_use_and_checked() {
        let ek = ek_public();
        let v = allow_all(&ek);
        let ak = soft_ak(AK_ATTRS);
        let c = v.challenge(&data(&ak, &ek)).unwrap();
        assert_eq!(c.nonce.len(), NONCE_LEN);
        assert_eq!(v.outstanding_challenges(), 1);
        // Without the EK private key the secret cannot be recovered: a guess is refused...
        let mut sig = vec![0u8; ak.key.public_modulus_len()];
        ak.key
            .sign(
                &aws_lc_rs::signature::RSA_PKCS1_SHA256,
                &SystemRandom::new(),
                &signed_nonce_message(&c.nonce),
                &mut sig,
            )
            .unwrap();
        let guess = ChallengeResponse {
            version: PROTOCOL_VERSION,
            nonce: c.nonce.clone(),
            activated_secret: vec![0; 32],
            nonce_signature: sig,
            pcr_quote: None,
        };
        let err = v.verify(&guess).unwrap_err();
        assert!(
            matches!(err, AttestationError::ActivationFailed(_)),
            "{err}"
        );
        // ...and the challenge is gone, so even a later correct answer would be refused.
        let err = v.verify(&guess).unwrap_err();
        assert!(err.to_string().contains("already answered"), "{err}");
        assert_eq!(v.outstanding_challenges(), 0);
    }

    #[test]
    fn response_to_another_challenge_is_refused_and_both_consumed() {
        let ek = ek_public();
        let v = allow_all(&ek);
        let ak = soft_ak(AK_ATTRS);
        let first = v.challenge(&data(&ak, &ek)).unwrap();
        let second = v.challenge(&data(&ak, &ek)).unwrap();
        let answer_to_first = ChallengeResponse {
            version: PROTOCOL_VERSION,
            nonce: first.nonce.clone(),
            activated_secret: vec![0; 32],
            nonce_signature: vec![0; 256],
            pcr_quote: None,
        };
        let err = v.verify_for(&second.nonce, &answer_to_first).unwrap_err();
        assert!(err.to_string().contains("different challenge"), "{err}");
        assert_eq!(
            v.outstanding_challenges(),
            1,
            "the stream's own challenge is consumed"
        );
        let err = v.verify_for(&second.nonce, &answer_to_first).unwrap_err();
        assert!(err.to_string().contains("already answered"), "{err}");
    }

    #[test]
    fn expired_challenges_are_refused() {
        let ek = ek_public();
        let (mut cfg, _) = allowing(&ek);
        cfg.challenge_ttl = Duration::ZERO;
        let v = Verifier::new(cfg).unwrap();
        let c = v.challenge(&data(&soft_ak(AK_ATTRS), &ek)).unwrap();
        let err = v
            .verify(&ChallengeResponse {
                version: PROTOCOL_VERSION,
                nonce: c.nonce,
                activated_secret: vec![0; 32],
                nonce_signature: vec![0; 256],
                pcr_quote: None,
            })
            .unwrap_err();
        assert!(err.to_string().contains("challenge expired"), "{err}");
    }
}
