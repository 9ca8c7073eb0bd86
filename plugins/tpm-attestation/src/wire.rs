//! The three wire messages of TPM attestation, as versioned JSON with base64 byte fields.
//!
//! Both transports (SPIRE's NodeAttestor stream payloads and KeyGrid's EST enrollment) carry
//! these bytes unchanged. Decoding is bounded: the whole message and every field have a size
//! limit, unknown fields are refused, and the version must match.
//!
//! Flow: agent → verifier [`AttestationData`]; verifier → agent [`Challenge`]; agent → verifier
//! [`ChallengeResponse`].

use crate::error::{AttestationError, Result};
use crate::quote::{check_pcr_request, PcrQuote, MAX_QUOTED_PCRS};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// Protocol version carried in every message.
pub const PROTOCOL_VERSION: u32 = 1;
/// Largest encoded message accepted.
pub const MAX_MESSAGE_BYTES: usize = 32 * 1024;
/// Length of the verifier's nonce.
pub const NONCE_LEN: usize = 32;

/// Agent → verifier: who the TPM is (EK) and the key it will prove it holds (AK).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AttestationData {
    /// Protocol version ([`PROTOCOL_VERSION`]).
    pub version: u32,
    /// The EK certificate (DER) read from the TPM's NV, when the TPM has one.
    #[serde(default, skip_serializing_if = "Option::is_none", with = "b64_opt")]
    pub ek_certificate: Option<Vec<u8>>,
    /// The EK public area (`TPM2B_PUBLIC`, marshalled).
    #[serde(with = "b64")]
    pub ek_public: Vec<u8>,
    /// The AK public area (`TPM2B_PUBLIC`, marshalled).
    #[serde(with = "b64")]
    pub ak_public: Vec<u8>,
    /// The AK's TPM name (`nameAlg || digest`), as the TPM reported it.
    #[serde(with = "b64")]
    pub ak_name: Vec<u8>,
}

/// Verifier → agent: a credential only the TPM holding both the EK and the AK can open, and a
/// nonce the AK must sign.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Challenge {
    /// Protocol version.
    pub version: u32,
    /// Fresh random nonce; also names the challenge in the verifier's single-use store.
    #[serde(with = "b64")]
    pub nonce: Vec<u8>,
    /// `TPM2B_ID_OBJECT` contents from MakeCredential.
    #[serde(with = "b64")]
    pub credential_blob: Vec<u8>,
    /// `TPM2B_ENCRYPTED_SECRET` contents from MakeCredential.
    #[serde(with = "b64")]
    pub encrypted_secret: Vec<u8>,
    /// SHA-256 PCR indices the agent must quote (ascending); empty: no quote wanted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pcrs: Vec<u8>,
}

/// Agent → verifier: the activated credential and the AK's signature over the nonce.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChallengeResponse {
    /// Protocol version.
    pub version: u32,
    /// The nonce of the challenge being answered.
    #[serde(with = "b64")]
    pub nonce: Vec<u8>,
    /// The secret `TPM2_ActivateCredential` recovered.
    #[serde(with = "b64")]
    pub activated_secret: Vec<u8>,
    /// AK signature (raw RSA signature bytes) over [`signed_nonce_message`] of the nonce.
    #[serde(with = "b64")]
    pub nonce_signature: Vec<u8>,
    /// The PCR quote, when the challenge asked for one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pcr_quote: Option<PcrQuote>,
}

/// The bytes the AK signs: a fixed context string, then the nonce. The prefix keeps the data
/// from ever starting with `TPM_GENERATED_VALUE`, so the TPM hashes it and issues the ticket a
/// restricted key needs, and it separates this signature from any other use of the AK.
pub fn signed_nonce_message(nonce: &[u8]) -> Vec<u8> {
    let mut m = b"keygrid-tpm-attestation/v1 nonce\0".to_vec();
    m.extend_from_slice(nonce);
    m
}

/// A message of this protocol: bounded decoding plus per-field checks.
pub trait WireMessage: Serialize + DeserializeOwned {
    /// Name used in error messages.
    const NAME: &'static str;

    /// The message's version field.
    fn version(&self) -> u32;

    /// Field-size checks after decoding.
    fn check_fields(&self) -> Result<()>;

    /// Encodes to JSON bytes.
    fn encode(&self) -> Vec<u8> {
        // Serialising plain structs of integers and strings cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Decodes from bytes received from the peer, refusing oversized, malformed, unknown-version
    /// or out-of-bounds messages.
    fn decode(bytes: &[u8]) -> Result<Self> {
        if bytes.len() > MAX_MESSAGE_BYTES {
            return Err(AttestationError::malformed(
                Self::NAME,
                format!(
                    "{} bytes exceeds the {MAX_MESSAGE_BYTES}-byte limit",
                    bytes.len()
                ),
            ));
        }
        let msg: Self = serde_json::from_slice(bytes)
            .map_err(|e| AttestationError::malformed(Self::NAME, e.to_string()))?;
        if msg.version() != PROTOCOL_VERSION {
            return Err(AttestationError::UnsupportedVersion {
                got: msg.version(),
                supported: PROTOCOL_VERSION,
            });
        }
        msg.check_fields()?;
        Ok(msg)
    }
}

fn bound(message: &'static str, field: &str, value: &[u8], min: usize, max: usize) -> Result<()> {
    if value.len() < min || value.len() > max {
        return Err(AttestationError::malformed(
            message,
            format!("{field} is {} bytes, expected {min}..={max}", value.len()),
        ));
    }
    Ok(())
}

impl WireMessage for AttestationData {
    const NAME: &'static str = "attestation data";
    fn version(&self) -> u32 {
        self.version
    }
    fn check_fields(&self) -> Result<()> {
        if let Some(cert) = &self.ek_certificate {
            bound(
                Self::NAME,
                "ek_certificate",
                cert,
                1,
                crate::ek_certificate::MAX_EK_CERT,
            )?;
        }
        bound(
            Self::NAME,
            "ek_public",
            &self.ek_public,
            2,
            2 + crate::public_area::MAX_PUBLIC_AREA,
        )?;
        bound(
            Self::NAME,
            "ak_public",
            &self.ak_public,
            2,
            2 + crate::public_area::MAX_PUBLIC_AREA,
        )?;
        bound(Self::NAME, "ak_name", &self.ak_name, 34, 66)
    }
}

impl WireMessage for Challenge {
    const NAME: &'static str = "challenge";
    fn version(&self) -> u32 {
        self.version
    }
    fn check_fields(&self) -> Result<()> {
        bound(Self::NAME, "nonce", &self.nonce, NONCE_LEN, NONCE_LEN)?;
        bound(Self::NAME, "credential_blob", &self.credential_blob, 1, 256)?;
        bound(
            Self::NAME,
            "encrypted_secret",
            &self.encrypted_secret,
            1,
            512,
        )?;
        check_pcr_request(&self.pcrs)
    }
}

impl WireMessage for ChallengeResponse {
    const NAME: &'static str = "challenge response";
    fn version(&self) -> u32 {
        self.version
    }
    fn check_fields(&self) -> Result<()> {
        bound(Self::NAME, "nonce", &self.nonce, NONCE_LEN, NONCE_LEN)?;
        bound(
            Self::NAME,
            "activated_secret",
            &self.activated_secret,
            1,
            64,
        )?;
        bound(Self::NAME, "nonce_signature", &self.nonce_signature, 1, 512)?;
        if let Some(q) = &self.pcr_quote {
            bound(Self::NAME, "pcr_quote.attest", &q.attest, 1, 1024)?;
            bound(Self::NAME, "pcr_quote.signature", &q.signature, 1, 512)?;
            if q.pcr_values.len() > MAX_QUOTED_PCRS {
                return Err(AttestationError::malformed(
                    Self::NAME,
                    "too many PCR values",
                ));
            }
            for v in &q.pcr_values {
                bound(Self::NAME, "pcr_quote.pcr_values", v, 32, 32)?;
            }
        }
        Ok(())
    }
}

pub(crate) mod b64 {
    use base64::engine::general_purpose::STANDARD;
    use base64::Engine;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&STANDARD.encode(v))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let s = <&str>::deserialize(d)?;
        STANDARD.decode(s).map_err(serde::de::Error::custom)
    }
}

pub(crate) mod b64_list {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    #[derive(Serialize, Deserialize)]
    struct Item(#[serde(with = "super::b64")] Vec<u8>);

    pub fn serialize<S: Serializer>(v: &[Vec<u8>], s: S) -> Result<S::Ok, S::Error> {
        v.iter()
            .map(|b| Item(b.clone()))
            .collect::<Vec<_>>()
            .serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Vec<u8>>, D::Error> {
        Ok(Vec::<Item>::deserialize(d)?
            .into_iter()
            .map(|i| i.0)
            .collect())
    }
}

mod b64_opt {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &Option<Vec<u8>>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(v) => super::b64::serialize(v, s),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<u8>>, D::Error> {
        #[derive(Deserialize)]
        struct Wrap(#[serde(with = "super::b64")] Vec<u8>);
        Ok(Option::<Wrap>::deserialize(d)?.map(|w| w.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> ChallengeResponse {
        ChallengeResponse {
            version: PROTOCOL_VERSION,
            nonce: vec![1; NONCE_LEN],
            activated_secret: vec![2; 32],
            nonce_signature: vec![3; 256],
            pcr_quote: None,
        }
    }

    #[test]
    fn round_trips() {
        let r = sample();
        assert_eq!(ChallengeResponse::decode(&r.encode()).unwrap(), r);
        let d = AttestationData {
            version: 1,
            ek_certificate: None,
            ek_public: vec![0, 1, 2],
            ak_public: vec![0, 1, 2],
            ak_name: vec![0; 34],
        };
        let bytes = d.encode();
        assert!(!String::from_utf8_lossy(&bytes).contains("ek_certificate"));
        assert_eq!(AttestationData::decode(&bytes).unwrap(), d);
    }

    #[test]
    fn refuses_bad_input_with_reasons() {
        let good = sample().encode();
        for cut in [0, 1, good.len() / 2, good.len() - 1] {
            let err = ChallengeResponse::decode(&good[..cut]).unwrap_err();
            assert!(
                err.to_string().starts_with("malformed challenge response"),
                "{err}"
            );
        }
        let huge = vec![b' '; MAX_MESSAGE_BYTES + 1];
        assert!(ChallengeResponse::decode(&huge)
            .unwrap_err()
            .to_string()
            .contains("limit"));

        let mut v: serde_json::Value = serde_json::from_slice(&good).unwrap();
        v["version"] = 2.into();
        let err = ChallengeResponse::decode(&serde_json::to_vec(&v).unwrap()).unwrap_err();
        assert!(
            matches!(err, AttestationError::UnsupportedVersion { got: 2, .. }),
            "{err}"
        );

        let mut v: serde_json::Value = serde_json::from_slice(&good).unwrap();
        v["nonce"] = "AAAA".into();
        let err = ChallengeResponse::decode(&serde_json::to_vec(&v).unwrap()).unwrap_err();
        assert!(err.to_string().contains("nonce is 3 bytes"), "{err}");

        let mut v: serde_json::Value = serde_json::from_slice(&good).unwrap();
        v["nonce"] = "!!notbase64".into();
        assert!(ChallengeResponse::decode(&serde_json::to_vec(&v).unwrap()).is_err());

        let mut v: serde_json::Value = serde_json::from_slice(&good).unwrap();
        v["extra"] = 1.into();
        let err = ChallengeResponse::decode(&serde_json::to_vec(&v).unwrap()).unwrap_err();
        assert!(err.to_string().contains("unknown field"), "{err}");
    }

    #[test]
    fn signed_message_never_looks_tpm_generated() {
        let m = signed_nonce_message(&[0xff, 0x54, 0x43, 0x47]);
        assert_ne!(&m[..4], &[0xff, 0x54, 0x43, 0x47]);
    }
}
