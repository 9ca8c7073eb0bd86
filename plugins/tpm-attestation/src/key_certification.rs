//! Binding an enrollment key to an attested TPM: the AK certifies the new key with
//! `TPM2_Certify` over the verifier's nonce, so a CSR for that key can be accepted only
//! together with a fresh attestation of the same TPM (used by KeyGrid's EST enrollment).
//!
//! The verifier checks that the `TPMS_ATTEST` is TPM-generated (magic), of type
//! certify, carries the nonce of the challenge just answered as `extraData`, names the
//! presented key (name = nameAlg || H(TPMT_PUBLIC)), and is signed by the attested AK;
//! and that the key is a TPM-resident signing key (fixedTPM, fixedParent,
//! sensitiveDataOrigin, sign, not decrypt).

use aws_lc_rs::constant_time::verify_slices_are_equal;
use aws_lc_rs::signature::{RsaParameters, RSA_PKCS1_2048_8192_SHA256, RSA_PSS_2048_8192_SHA256};
use serde::{Deserialize, Serialize};

use crate::error::{AttestationError, Result};
use crate::public_area::{attr, PublicArea, Reader, ALG_RSAPSS};
use crate::wire::{
    b64, AttestationData, ChallengeResponse, WireMessage, MAX_MESSAGE_BYTES, PROTOCOL_VERSION,
};

/// `TPM_GENERATED_VALUE`: only the TPM itself produces structures starting with it.
const TPM_GENERATED: u32 = 0xff54_4347;
/// `TPM_ST_ATTEST_CERTIFY`.
const ST_ATTEST_CERTIFY: u16 = 0x8017;
/// Longest node name accepted (a DNS-1123 subdomain).
pub const MAX_NODE_NAME: usize = 253;

/// Agent → server, step 1: the TPM's attestation data and the node name it claims.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnrollmentStart {
    /// Protocol version.
    pub version: u32,
    /// The node name the TPM claims (first come, first bound).
    pub node_name: String,
    /// EK certificate, EK and AK public areas.
    pub attestation: AttestationData,
}

/// Agent → server, step 2: the answered challenge, the key certified by the AK over the
/// challenge nonce, and a CSR signed by that key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnrollmentFinish {
    /// Protocol version.
    pub version: u32,
    /// The node name claimed in step 1.
    pub node_name: String,
    /// The answer to the challenge (credential activation, AK signature over the nonce).
    pub response: ChallengeResponse,
    /// `TPM2B_PUBLIC` of the key to certify.
    #[serde(with = "b64")]
    pub key_public: Vec<u8>,
    /// Marshalled `TPMS_ATTEST` from `TPM2_Certify(key, AK, extraData = nonce)`.
    #[serde(with = "b64")]
    pub certify_info: Vec<u8>,
    /// The AK's signature over `certify_info`.
    #[serde(with = "b64")]
    pub certify_signature: Vec<u8>,
    /// DER PKCS#10 request signed by the key.
    #[serde(with = "b64")]
    pub csr: Vec<u8>,
}

fn check_name(message: &'static str, name: &str) -> Result<()> {
    if name.is_empty() || name.len() > MAX_NODE_NAME {
        return Err(AttestationError::malformed(
            message,
            format!("node_name must be 1 to {MAX_NODE_NAME} characters"),
        ));
    }
    Ok(())
}

impl WireMessage for EnrollmentStart {
    const NAME: &'static str = "enrollment start";

    fn version(&self) -> u32 {
        self.version
    }

    fn check_fields(&self) -> Result<()> {
        check_name(Self::NAME, &self.node_name)?;
        self.attestation.check_fields()
    }
}

impl WireMessage for EnrollmentFinish {
    const NAME: &'static str = "enrollment finish";

    fn version(&self) -> u32 {
        self.version
    }

    fn check_fields(&self) -> Result<()> {
        check_name(Self::NAME, &self.node_name)?;
        self.response.check_fields()?;
        for (field, v, max) in [
            ("key_public", &self.key_public, 1024),
            ("certify_info", &self.certify_info, 1024),
            ("certify_signature", &self.certify_signature, 1024),
            ("csr", &self.csr, MAX_MESSAGE_BYTES / 2),
        ] {
            if v.is_empty() || v.len() > max {
                return Err(AttestationError::malformed(
                    Self::NAME,
                    format!("{field} is {} bytes, expected 1..={max}", v.len()),
                ));
            }
        }
        Ok(())
    }
}

impl EnrollmentStart {
    /// A step-1 message.
    pub fn new(node_name: impl Into<String>, attestation: AttestationData) -> Self {
        EnrollmentStart {
            version: PROTOCOL_VERSION,
            node_name: node_name.into(),
            attestation,
        }
    }
}

/// Checks that `ak` certified `key_public` over `nonce` and that the key lives in the
/// TPM. Returns the certified key.
pub fn verify_key_certification(
    ak: &PublicArea,
    key_public: &[u8],
    certify_info: &[u8],
    certify_signature: &[u8],
    nonce: &[u8],
) -> Result<PublicArea> {
    let key = PublicArea::from_tpm2b(key_public, "certified key public")?;
    let required = attr::FIXED_TPM | attr::FIXED_PARENT | attr::SENSITIVE_DATA_ORIGIN | attr::SIGN;
    if !key.has(required) || key.has(attr::DECRYPT) {
        return Err(AttestationError::AttestationKey(
            "the enrollment key must be a TPM-generated signing key that cannot leave the TPM \
             (fixedTPM, fixedParent, sensitiveDataOrigin, sign, not decrypt)"
                .into(),
        ));
    }
    let params: &'static RsaParameters = match ak.scheme {
        ALG_RSAPSS => &RSA_PSS_2048_8192_SHA256,
        _ => &RSA_PKCS1_2048_8192_SHA256,
    };
    ak.rsa_components()
        .verify(params, certify_info, certify_signature)
        .map_err(|_| {
            AttestationError::SignatureInvalid(
                "the key certification is not signed by the attested AK".into(),
            )
        })?;
    let mut r = Reader::new(certify_info, "TPMS_ATTEST");
    if r.u32("magic")? != TPM_GENERATED {
        return Err(AttestationError::malformed(
            "TPMS_ATTEST",
            "not a TPM-generated structure",
        ));
    }
    if r.u16("type")? != ST_ATTEST_CERTIFY {
        return Err(AttestationError::malformed(
            "TPMS_ATTEST",
            "not a TPM2_Certify attestation",
        ));
    }
    r.tpm2b("qualifiedSigner")?;
    let extra = r.tpm2b("extraData")?;
    if verify_slices_are_equal(extra, nonce).is_err() {
        return Err(AttestationError::Challenge(
            "the key certification is not over this challenge's nonce (replayed or made for another challenge)"
                .into(),
        ));
    }
    r.bytes(17, "clockInfo")?;
    r.bytes(8, "firmwareVersion")?;
    let name = r.tpm2b("certified name")?;
    r.tpm2b("certified qualifiedName")?;
    r.finish()?;
    if verify_slices_are_equal(name, &key.name()?).is_err() {
        return Err(AttestationError::AttestationKey(
            "the key certification names another key than the one presented".into(),
        ));
    }
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::public_area::tests::{rsa_tpmt, tpm2b};
    use crate::public_area::{ALG_NULL, ALG_RSASSA, ALG_SHA256};
    use aws_lc_rs::encoding::{AsDer, PublicKeyX509Der};
    use aws_lc_rs::rand::SystemRandom;
    use aws_lc_rs::rsa::{KeyPair, KeySize};
    use aws_lc_rs::signature::RSA_PKCS1_SHA256;
    use x509_parser::prelude::FromDer;

    const KEY_ATTRS: u32 = attr::FIXED_TPM
        | attr::FIXED_PARENT
        | attr::SENSITIVE_DATA_ORIGIN
        | attr::USER_WITH_AUTH
        | attr::SIGN;
    const AK_ATTRS: u32 = KEY_ATTRS | attr::RESTRICTED;

    /// A software key pair with its public area (unit tests only; swtpm proves the rest).
    fn soft_key(attrs: u32, scheme: u16) -> (KeyPair, Vec<u8>) {
        let key = KeyPair::generate(KeySize::Rsa2048).unwrap();
        let der: PublicKeyX509Der = aws_lc_rs::signature::KeyPair::public_key(&key)
            .as_der()
            .unwrap();
        let (_, spki) = x509_parser::x509::SubjectPublicKeyInfo::from_der(der.as_ref()).unwrap();
        let modulus = match spki.parsed().unwrap() {
            x509_parser::public_key::PublicKey::RSA(rsa) => rsa
                .modulus
                .iter()
                .skip_while(|b| **b == 0)
                .copied()
                .collect::<Vec<u8>>(),
            _ => unreachable!(),
        };
        let hash = (scheme != ALG_NULL).then_some(ALG_SHA256);
        (key, tpm2b(&rsa_tpmt(attrs, None, scheme, hash, &modulus)))
    }

    fn attest(magic: u32, nonce: &[u8], name: &[u8]) -> Vec<u8> {
        let mut a = magic.to_be_bytes().to_vec();
        a.extend_from_slice(&ST_ATTEST_CERTIFY.to_be_bytes());
        a.extend_from_slice(&tpm2b(b""));
        a.extend_from_slice(&tpm2b(nonce));
        a.extend_from_slice(&[0u8; 17]);
        a.extend_from_slice(&[0u8; 8]);
        a.extend_from_slice(&tpm2b(name));
        a.extend_from_slice(&tpm2b(b""));
        a
    }

    fn sign(key: &KeyPair, msg: &[u8]) -> Vec<u8> {
        let mut sig = vec![0u8; key.public_modulus_len()];
        key.sign(&RSA_PKCS1_SHA256, &SystemRandom::new(), msg, &mut sig)
            .unwrap();
        sig
    }

    #[test]
    fn only_the_ak_certifying_this_key_over_this_nonce_is_accepted() {
        let (ak_key, ak_pub) = soft_key(AK_ATTRS, ALG_RSASSA);
        let ak = PublicArea::from_tpm2b(&ak_pub, "AK").unwrap();
        let (_, key_pub) = soft_key(KEY_ATTRS, ALG_NULL);
        let name = PublicArea::from_tpm2b(&key_pub, "key")
            .unwrap()
            .name()
            .unwrap();
        let nonce = [7u8; 32];
        let good = attest(TPM_GENERATED, &nonce, &name);
        let certified =
            verify_key_certification(&ak, &key_pub, &good, &sign(&ak_key, &good), &nonce).unwrap();
        assert_eq!(certified.name().unwrap(), name);

        // Another nonce (a replayed certification).
        let e = verify_key_certification(&ak, &key_pub, &good, &sign(&ak_key, &good), &[8u8; 32])
            .unwrap_err();
        assert!(matches!(e, AttestationError::Challenge(_)), "{e}");
        // Signed by another key than the attested AK.
        let (other, _) = soft_key(AK_ATTRS, ALG_RSASSA);
        let e = verify_key_certification(&ak, &key_pub, &good, &sign(&other, &good), &nonce)
            .unwrap_err();
        assert!(matches!(e, AttestationError::SignatureInvalid(_)), "{e}");
        // A certification of another key presented with this key.
        let (_, other_pub) = soft_key(KEY_ATTRS, ALG_NULL);
        let e = verify_key_certification(&ak, &other_pub, &good, &sign(&ak_key, &good), &nonce)
            .unwrap_err();
        assert!(matches!(e, AttestationError::AttestationKey(_)), "{e}");
        // Not TPM-generated.
        let forged = attest(0x1234_5678, &nonce, &name);
        let e = verify_key_certification(&ak, &key_pub, &forged, &sign(&ak_key, &forged), &nonce)
            .unwrap_err();
        assert!(e.to_string().contains("not a TPM-generated"), "{e}");
        // Trailing bytes.
        let mut long = good.clone();
        long.push(0);
        assert!(
            verify_key_certification(&ak, &key_pub, &long, &sign(&ak_key, &long), &nonce).is_err()
        );
    }

    #[test]
    fn keys_that_can_leave_the_tpm_or_decrypt_are_refused() {
        let (ak_key, ak_pub) = soft_key(AK_ATTRS, ALG_RSASSA);
        let ak = PublicArea::from_tpm2b(&ak_pub, "AK").unwrap();
        let nonce = [1u8; 32];
        for attrs in [
            KEY_ATTRS & !attr::FIXED_TPM,
            KEY_ATTRS & !attr::SENSITIVE_DATA_ORIGIN,
            KEY_ATTRS | attr::DECRYPT,
        ] {
            let (_, key_pub) = soft_key(attrs, ALG_NULL);
            let name = PublicArea::from_tpm2b(&key_pub, "key")
                .unwrap()
                .name()
                .unwrap();
            let a = attest(TPM_GENERATED, &nonce, &name);
            let e = verify_key_certification(&ak, &key_pub, &a, &sign(&ak_key, &a), &nonce)
                .unwrap_err();
            assert!(
                matches!(e, AttestationError::AttestationKey(_)),
                "{attrs:#x}: {e}"
            );
        }
    }

    #[test]
    fn enrollment_messages_are_bounded() {
        let start = EnrollmentStart::new(
            "x".repeat(MAX_NODE_NAME + 1),
            AttestationData {
                version: PROTOCOL_VERSION,
                ek_certificate: None,
                ek_public: vec![1; 10],
                ak_public: vec![1; 10],
                ak_name: vec![1; 34],
            },
        );
        assert!(EnrollmentStart::decode(&start.encode()).is_err());
        assert!(EnrollmentFinish::decode(b"{\"version\":1}").is_err());
    }
}
