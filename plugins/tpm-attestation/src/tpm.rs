//! The TPM side of attestation (agent), on `tss-esapi` over any TCTI (`device:/dev/tpmrm0`,
//! `swtpm:host=127.0.0.1,port=2321`, `tabrmd:` ...).
//!
//! [`TpmAttestor::open`] recreates the TCG default RSA-2048 EK in the endorsement hierarchy,
//! reads its certificate from NV (index `0x01c00002`) when the TPM has one, and creates a fresh
//! attestation key under the EK (restricted, sign, fixedTPM, fixedParent, sensitiveDataOrigin,
//! userWithAuth; RSASSA-SHA256). [`TpmAttestor::answer`] activates the verifier's credential
//! with the EK and signs the verifier's nonce with the AK.

use crate::error::{AttestationError, Result};
use crate::quote::PcrQuote;
use crate::wire::{
    signed_nonce_message, AttestationData, Challenge, ChallengeResponse, PROTOCOL_VERSION,
};
use std::str::FromStr;
use tss_esapi::abstraction::{ak, ek, AsymmetricAlgorithmSelection};
use tss_esapi::constants::SessionType;
use tss_esapi::handles::{AuthHandle, KeyHandle, ObjectHandle, SessionHandle};
use tss_esapi::interface_types::algorithm::{
    AsymmetricAlgorithm, HashingAlgorithm, SignatureSchemeAlgorithm,
};
use tss_esapi::interface_types::key_bits::RsaKeyBits;
use tss_esapi::interface_types::resource_handles::Hierarchy;
use tss_esapi::interface_types::session_handles::{AuthSession, PolicySession};
use tss_esapi::structures::{
    Data, EncryptedSecret, IdObject, MaxBuffer, PcrSelectionList, PcrSlot, Public, Signature,
    SignatureScheme, SymmetricDefinition,
};
use tss_esapi::tcti_ldr::TctiNameConf;
use tss_esapi::traits::Marshall;
use tss_esapi::Context;

fn tpm_err(operation: &'static str) -> impl FnOnce(tss_esapi::Error) -> AttestationError {
    move |e| AttestationError::Tpm {
        operation,
        reason: e.to_string(),
    }
}

/// A TPM ready to attest: EK and a fresh AK loaded, attestation data prepared.
pub struct TpmAttestor {
    ctx: Context,
    ek: KeyHandle,
    ak: KeyHandle,
    data: AttestationData,
    /// The enrollment key once [`TpmAttestor::enrollment_key`] loaded it (flushed on drop).
    enrollment: Option<EnrollmentKey>,
}

/// A signing key that lives in the TPM: a primary key of the owner hierarchy, derived
/// from the TPM's owner seed and a fixed template, so the same TPM re-creates the same
/// key on every start and nothing about it is stored outside the TPM.
#[derive(Debug, Clone)]
pub struct EnrollmentKey {
    handle: KeyHandle,
    /// `TPM2B_PUBLIC` of the key.
    pub public: Vec<u8>,
    /// The key as a DER SubjectPublicKeyInfo (what a CSR and a certificate carry).
    pub spki_der: Vec<u8>,
}

/// The template's unique field: separates KeyGrid's key from other primaries.
const ENROLLMENT_KEY_UNIQUE: &[u8] = b"keygrid node identity v1";

impl TpmAttestor {
    /// Opens the TPM behind `tcti` (a TCTI name-conf string) and prepares EK and AK.
    pub fn open(tcti: &str) -> Result<Self> {
        let conf = TctiNameConf::from_str(tcti).map_err(|e| AttestationError::Tpm {
            operation: "parsing the TCTI string",
            reason: format!("{tcti:?}: {e}"),
        })?;
        let mut ctx = Context::new(conf).map_err(tpm_err("opening the TPM"))?;

        // The EK certificate is optional: a TPM without one can still attest via the allow-list.
        let ek_certificate = ek::retrieve_ek_pubcert(
            &mut ctx,
            AsymmetricAlgorithmSelection::Rsa(RsaKeyBits::Rsa2048),
        )
        .ok();
        let ek = ek::create_ek_object(&mut ctx, AsymmetricAlgorithm::Rsa, None)
            .map_err(tpm_err("creating the EK"))?;
        let mut attestor = Self {
            ctx,
            ek,
            ak: KeyHandle::Null,
            data: AttestationData {
                version: PROTOCOL_VERSION,
                ek_certificate,
                ek_public: Vec::new(),
                ak_public: Vec::new(),
                ak_name: Vec::new(),
            },
            enrollment: None,
        };
        attestor.create_ak()?;
        Ok(attestor)
    }

    fn create_ak(&mut self) -> Result<()> {
        let created = ak::create_ak(
            &mut self.ctx,
            self.ek,
            HashingAlgorithm::Sha256,
            SignatureSchemeAlgorithm::RsaSsa,
            None,
            None,
        )
        .map_err(tpm_err("creating the AK"))?;
        self.ak = ak::load_ak(
            &mut self.ctx,
            self.ek,
            None,
            created.out_private,
            created.out_public,
        )
        .map_err(tpm_err("loading the AK"))?;
        let (ek_public, _, _) = self
            .ctx
            .read_public(self.ek)
            .map_err(tpm_err("reading the EK public"))?;
        let (ak_public, ak_name, _) = self
            .ctx
            .read_public(self.ak)
            .map_err(tpm_err("reading the AK public"))?;
        self.data.ek_public = tpm2b_public(&ek_public)?;
        self.data.ak_public = tpm2b_public(&ak_public)?;
        self.data.ak_name = ak_name.value().to_vec();
        Ok(())
    }

    /// What the agent sends first.
    pub fn attestation_data(&self) -> &AttestationData {
        &self.data
    }

    /// Answers a challenge: activates the credential and signs the nonce.
    pub fn answer(&mut self, challenge: &Challenge) -> Result<ChallengeResponse> {
        let activated_secret =
            self.activate_credential(&challenge.credential_blob, &challenge.encrypted_secret)?;
        let nonce_signature = self.sign_nonce(&challenge.nonce)?;
        let pcr_quote = if challenge.pcrs.is_empty() {
            None
        } else {
            Some(self.quote_pcrs(&challenge.nonce, &challenge.pcrs)?)
        };
        Ok(ChallengeResponse {
            version: PROTOCOL_VERSION,
            nonce: challenge.nonce.clone(),
            activated_secret,
            nonce_signature,
            pcr_quote,
        })
    }

    /// `TPM2_ActivateCredential(AK, EK)`: the EK is authorised by PolicySecret(endorsement),
    /// as its default template requires; the AK by its (empty) password.
    pub fn activate_credential(
        &mut self,
        credential_blob: &[u8],
        encrypted_secret: &[u8],
    ) -> Result<Vec<u8>> {
        let blob = IdObject::try_from(credential_blob.to_vec())
            .map_err(tpm_err("reading the credential blob"))?;
        let secret = EncryptedSecret::try_from(encrypted_secret.to_vec())
            .map_err(tpm_err("reading the encrypted secret"))?;
        let session = self
            .ctx
            .start_auth_session(
                None,
                None,
                None,
                SessionType::Policy,
                SymmetricDefinition::AES_128_CFB,
                HashingAlgorithm::Sha256,
            )
            .map_err(tpm_err("starting the EK policy session"))?
            .ok_or(AttestationError::Tpm {
                operation: "starting the EK policy session",
                reason: "no session returned".into(),
            })?;
        let (ak, ek) = (self.ak, self.ek);
        let policy_handle: ObjectHandle = SessionHandle::from(session).into();
        let digest = self
            .ctx
            .execute_with_temporary_object(policy_handle, |ctx, _| {
                let policy = PolicySession::try_from(session)?;
                ctx.execute_with_nullauth_session(|ctx| {
                    ctx.policy_secret(
                        policy,
                        AuthHandle::Endorsement,
                        Default::default(),
                        Default::default(),
                        Default::default(),
                        None,
                    )
                })?;
                ctx.execute_with_sessions(
                    (Some(AuthSession::Password), Some(session), None),
                    |ctx| ctx.activate_credential(ak, ek, blob, secret),
                )
            })
            .map_err(tpm_err("activating the credential"))?;
        Ok(digest.value().to_vec())
    }

    /// Signs [`signed_nonce_message`] of `nonce` with the AK. The TPM hashes the message itself
    /// (`TPM2_Hash`), which yields the ticket a restricted key requires before it will sign.
    pub fn sign_nonce(&mut self, nonce: &[u8]) -> Result<Vec<u8>> {
        let message = MaxBuffer::try_from(signed_nonce_message(nonce))
            .map_err(tpm_err("preparing the nonce"))?;
        let ak = self.ak;
        let (digest, ticket) = self
            .ctx
            .execute_without_session(|ctx| {
                ctx.hash(message, HashingAlgorithm::Sha256, Hierarchy::Endorsement)
            })
            .map_err(tpm_err("hashing the nonce"))?;
        let signature = self
            .ctx
            .execute_with_session(Some(AuthSession::Password), |ctx| {
                ctx.sign(ak, digest, SignatureScheme::Null, ticket)
            })
            .map_err(tpm_err("signing the nonce"))?;
        match signature {
            Signature::RsaSsa(s) | Signature::RsaPss(s) => Ok(s.signature().value().to_vec()),
            _ => Err(AttestationError::Tpm {
                operation: "signing the nonce",
                reason: "the AK produced a non-RSA signature".into(),
            }),
        }
    }
}

impl TpmAttestor {
    /// `TPM2_Quote` by the AK over the SHA-256 PCRs `pcrs` with `nonce` as qualifying data,
    /// plus the PCR values (`TPM2_PCR_Read`) the verifier recomputes the digest from.
    pub fn quote_pcrs(&mut self, nonce: &[u8], pcrs: &[u8]) -> Result<PcrQuote> {
        crate::quote::check_pcr_request(pcrs)?;
        let slots = pcrs
            .iter()
            .map(|i| PcrSlot::try_from(1u32 << i))
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(tpm_err("selecting PCRs"))?;
        let selection = PcrSelectionList::builder()
            .with_selection(HashingAlgorithm::Sha256, &slots)
            .build()
            .map_err(tpm_err("selecting PCRs"))?;
        let qualifying =
            Data::try_from(nonce.to_vec()).map_err(tpm_err("preparing the quote nonce"))?;
        let ak = self.ak;
        let quote_selection = selection.clone();
        let (attest, signature) = self
            .ctx
            .execute_with_session(Some(AuthSession::Password), |ctx| {
                ctx.quote(ak, qualifying, SignatureScheme::Null, quote_selection)
            })
            .map_err(tpm_err("quoting PCRs"))?;
        let (_, _, digests) = self
            .ctx
            .execute_without_session(|ctx| ctx.pcr_read(selection))
            .map_err(tpm_err("reading PCRs"))?;
        let signature = match signature {
            Signature::RsaSsa(s) | Signature::RsaPss(s) => s.signature().value().to_vec(),
            _ => {
                return Err(AttestationError::Tpm {
                    operation: "quoting PCRs",
                    reason: "the AK produced a non-RSA signature".into(),
                })
            }
        };
        Ok(PcrQuote {
            attest: attest
                .marshall()
                .map_err(tpm_err("marshalling the quote"))?,
            signature,
            pcr_values: digests.value().iter().map(|d| d.value().to_vec()).collect(),
        })
    }
}

impl TpmAttestor {
    /// Loads KeyGrid's enrollment key (RSA-2048, unrestricted signing, scheme chosen per
    /// signature), re-deriving it from the owner seed; loaded once per session (a TPM has
    /// few object slots).
    pub fn enrollment_key(&mut self) -> Result<EnrollmentKey> {
        if let Some(k) = &self.enrollment {
            return Ok(k.clone());
        }
        use tss_esapi::structures::{PublicKeyRsa, RsaExponent, RsaScheme};
        let unique = PublicKeyRsa::try_from(ENROLLMENT_KEY_UNIQUE.to_vec())
            .map_err(tpm_err("preparing the enrollment key template"))?;
        let template = tss_esapi::utils::create_unrestricted_signing_rsa_public_with_unique(
            RsaScheme::Null,
            RsaKeyBits::Rsa2048,
            RsaExponent::default(),
            unique,
        )
        .map_err(tpm_err("preparing the enrollment key template"))?;
        let created = self
            .ctx
            .execute_with_session(Some(AuthSession::Password), |ctx| {
                ctx.create_primary(Hierarchy::Owner, template, None, None, None, None)
            })
            .map_err(tpm_err("creating the enrollment key"))?;
        let described = tpm2b_public(&created.out_public).and_then(|public| {
            let spki = crate::public_area::PublicArea::from_tpm2b(&public, "enrollment key")?
                .spki_der()?;
            Ok((public, spki))
        });
        let (public, spki_der) = match described {
            Ok(d) => d,
            Err(e) => {
                let _ = self.ctx.flush_context(created.key_handle.into());
                return Err(e);
            }
        };
        let key = EnrollmentKey {
            handle: created.key_handle,
            public,
            spki_der,
        };
        self.enrollment = Some(key.clone());
        Ok(key)
    }

    /// `TPM2_Certify(key, AK, extraData = nonce)`: the AK vouches that `key` is in this
    /// TPM, for this challenge. Returns the marshalled `TPMS_ATTEST` and the AK's signature.
    pub fn certify(&mut self, key: &EnrollmentKey, nonce: &[u8]) -> Result<(Vec<u8>, Vec<u8>)> {
        let qualifying = Data::try_from(nonce.to_vec()).map_err(tpm_err("preparing the nonce"))?;
        let (ak, object) = (self.ak, key.handle);
        let (attest, signature) = self
            .ctx
            .execute_with_sessions(
                (
                    Some(AuthSession::Password),
                    Some(AuthSession::Password),
                    None,
                ),
                |ctx| ctx.certify(object.into(), ak, qualifying, SignatureScheme::Null),
            )
            .map_err(tpm_err("certifying the enrollment key"))?;
        let signature = match signature {
            Signature::RsaSsa(s) | Signature::RsaPss(s) => s.signature().value().to_vec(),
            _ => {
                return Err(AttestationError::Tpm {
                    operation: "certifying the enrollment key",
                    reason: "the AK produced a non-RSA signature".into(),
                })
            }
        };
        Ok((
            attest
                .marshall()
                .map_err(tpm_err("marshalling the certification"))?,
            signature,
        ))
    }

    /// Signs SHA-256 of `message` with the enrollment key: RSASSA-PKCS1-v1_5, or RSA-PSS
    /// when `pss` (TLS 1.3 handshakes).
    pub fn sign_sha256(
        &mut self,
        key: &EnrollmentKey,
        message: &[u8],
        pss: bool,
    ) -> Result<Vec<u8>> {
        use tss_esapi::constants::tss::{TPM2_RH_NULL, TPM2_ST_HASHCHECK};
        use tss_esapi::structures::{Digest, HashScheme, HashcheckTicket};
        let hash = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, message);
        let digest =
            Digest::try_from(hash.as_ref().to_vec()).map_err(tpm_err("preparing the digest"))?;
        let hash_scheme = HashScheme::new(HashingAlgorithm::Sha256);
        let scheme = if pss {
            SignatureScheme::RsaPss { hash_scheme }
        } else {
            SignatureScheme::RsaSsa { hash_scheme }
        };
        // An unrestricted key signs any digest: the NULL ticket says "not hashed by the TPM".
        let ticket = HashcheckTicket::try_from(tss_esapi::tss2_esys::TPMT_TK_HASHCHECK {
            tag: TPM2_ST_HASHCHECK,
            hierarchy: TPM2_RH_NULL,
            digest: Default::default(),
        })
        .map_err(tpm_err("preparing the hash ticket"))?;
        let handle = key.handle;
        let signature = self
            .ctx
            .execute_with_session(Some(AuthSession::Password), |ctx| {
                ctx.sign(handle, digest, scheme, ticket)
            })
            .map_err(tpm_err("signing with the enrollment key"))?;
        match signature {
            Signature::RsaSsa(s) | Signature::RsaPss(s) => Ok(s.signature().value().to_vec()),
            _ => Err(AttestationError::Tpm {
                operation: "signing with the enrollment key",
                reason: "unexpected signature type".into(),
            }),
        }
    }
}

impl Drop for TpmAttestor {
    fn drop(&mut self) {
        if let Some(key) = self.enrollment.take() {
            let _ = self.ctx.flush_context(key.handle.into());
        }
        // Transient objects outlive the connection on a TPM without a resource manager (swtpm):
        // flush them so repeated attestations do not exhaust object slots.
        for handle in [self.ak, self.ek] {
            if handle != KeyHandle::Null {
                let _ = self.ctx.flush_context(handle.into());
            }
        }
    }
}

fn tpm2b_public(public: &Public) -> Result<Vec<u8>> {
    let tpmt = public
        .marshall()
        .map_err(tpm_err("marshalling a public area"))?;
    let len = u16::try_from(tpmt.len()).map_err(|_| AttestationError::Tpm {
        operation: "marshalling a public area",
        reason: "public area larger than 64 KiB".into(),
    })?;
    let mut out = len.to_be_bytes().to_vec();
    out.extend_from_slice(&tpmt);
    Ok(out)
}

#[cfg(test)]
mod send_check {
    #[test]
    fn attestor_can_move_between_threads() {
        fn send<T: Send>() {}
        send::<super::TpmAttestor>();
    }
}
