//! TPM-attested enrollment of a node that holds no credential yet.
//!
//! Two JSON exchanges under `/.well-known/est/nodes/` (the messages are defined in
//! `keygrid_tpm_attestation::key_certification`):
//! 1. `tpm-challenge`: [`EnrollmentStart`] (node name, EK certificate, EK and AK public) →
//!    a single-use [`Challenge`] (a credential sealed to the EK for the AK, and a nonce),
//!    after the EK chain, the allow-list and the node-name binding were checked;
//! 2. `tpm-enroll`: [`EnrollmentFinish`] (the activated credential and AK signature over
//!    the nonce; a key in the TPM certified by the AK with `TPM2_Certify` over the same
//!    nonce; a CSR signed by that key) → the node certificate, certs-only PKCS#7 (base64).
//!
//! The challenge is consumed before anything is checked, so a response (or a whole
//! recorded exchange) works once. The CSR is accepted only for the key the AK certified
//! over this challenge's nonce: a stolen CSR is useless without the TPM. The EK is bound
//! to the node name at the first enrollment; a TPM claiming a name bound to another EK
//! (or a bound TPM claiming another name) is refused.

use std::collections::HashSet;

use axum::http::StatusCode;
use keygrid_tpm_attestation::public_area::PublicArea;
use keygrid_tpm_attestation::{
    verify_key_certification, AttestationError, Challenge, EnrollmentFinish, EnrollmentStart,
    ManufacturerCas, Verifier, VerifierConfig, WireMessage,
};
use x509_parser::certification_request::X509CertificationRequest;
use x509_parser::prelude::FromDer;

use super::config::TpmEnrollConfig;
use super::enroll::{valid_node_name, Enroller};
use super::listener::Peer;
use super::{binding, EstError};
use crate::ca::sha256_hex;
use crate::issuance::{parse_csr, PROFILE_NODE};
use crate::store::EkBinding;

/// Largest TPM enrollment message read (EK certificate, public areas, CSR, base64).
pub const MAX_TPM_BODY: usize = 32 * 1024;

/// The attestation kind recorded for TPM-enrolled nodes (policy `attestation = ["tpm"]`).
pub const ATTESTATION_TPM: &str = "tpm";

/// The TPM enrollment verifier (holds the single-use challenges).
pub struct TpmEnrollment {
    verifier: Verifier,
}

/// Maps an attestation failure to a status: a refused or untrusted TPM is 403, a
/// malformed message 400.
fn status_of(e: &AttestationError) -> StatusCode {
    match e {
        AttestationError::Malformed { .. } | AttestationError::UnsupportedVersion { .. } => {
            StatusCode::BAD_REQUEST
        }
        _ => StatusCode::FORBIDDEN,
    }
}

impl TpmEnrollment {
    /// Loads the manufacturer CAs and the allow-list of `[est.tpm]`.
    pub fn new(cfg: &TpmEnrollConfig, trust_domain: &str) -> Result<Self, String> {
        let cas = if cfg.manufacturer_cas.is_empty() {
            ManufacturerCas::default()
        } else {
            ManufacturerCas::from_pem_files(&cfg.manufacturer_cas)
                .map_err(|e| format!("est.tpm: {e}"))?
        };
        let mut vc = VerifierConfig::new(trust_domain, cas);
        if !cfg.allowed_ek_hashes.is_empty() {
            vc.allowed_ek_hashes = Some(
                cfg.allowed_ek_hashes
                    .iter()
                    .map(|h| h.to_ascii_lowercase())
                    .collect::<HashSet<_>>(),
            );
        }
        vc.denied_ek_hashes = cfg
            .denied_ek_hashes
            .iter()
            .map(|h| h.to_ascii_lowercase())
            .collect();
        vc.challenge_ttl = cfg.challenge_ttl;
        Ok(TpmEnrollment {
            verifier: Verifier::new(vc).map_err(|e| format!("est.tpm: {e}"))?,
        })
    }

    fn refuse(
        enroller: &Enroller,
        actor: &str,
        node: &str,
        rule: &str,
        status: StatusCode,
        reason: String,
    ) -> EstError {
        if let Err(e) = enroller.issuance().refuse(actor, node, rule, &reason) {
            return e.into();
        }
        EstError::new(status, reason)
    }

    /// Step 1: checks the EK, the AK and the name binding; answers with a challenge.
    pub fn challenge(
        &self,
        enroller: &Enroller,
        peer: &Peer,
        body: &[u8],
    ) -> Result<String, EstError> {
        let anon = format!("{} (tpm enrollment)", peer.remote.ip());
        let start = EnrollmentStart::decode(body).map_err(|e| {
            Self::refuse(
                enroller,
                &anon,
                "nodes",
                "tpm-attestation",
                status_of(&e),
                e.to_string(),
            )
        })?;
        let name = start.node_name.as_str();
        if !valid_node_name(name) {
            return Err(Self::refuse(
                enroller,
                &anon,
                name,
                "tpm-attestation",
                StatusCode::BAD_REQUEST,
                format!("{name:?} is not a Kubernetes node name (lowercase DNS-1123 subdomain)"),
            ));
        }
        let ek_hash = PublicArea::from_tpm2b(&start.attestation.ek_public, "EK public")
            .and_then(|ek| ek.spki_der())
            .map(|spki| sha256_hex(&spki))
            .map_err(|e| {
                Self::refuse(
                    enroller,
                    &anon,
                    name,
                    "tpm-attestation",
                    status_of(&e),
                    e.to_string(),
                )
            })?;
        let actor = format!("tpm ek {ek_hash}");
        self.check_binding(enroller, &actor, &ek_hash, name)?;
        let challenge: Challenge = self.verifier.challenge(&start.attestation).map_err(|e| {
            Self::refuse(
                enroller,
                &actor,
                name,
                "tpm-attestation",
                status_of(&e),
                e.to_string(),
            )
        })?;
        Ok(String::from_utf8_lossy(&challenge.encode()).to_string())
    }

    /// The early, readable form of the first-come rule (the store enforces it again in
    /// the enrollment transaction).
    fn check_binding(
        &self,
        enroller: &Enroller,
        actor: &str,
        ek_hash: &str,
        name: &str,
    ) -> Result<(), EstError> {
        let store = enroller.issuance().store();
        if let Some(b) = store.ek_binding(ek_hash)? {
            if b.node_name != name {
                return Err(Self::refuse(
                    enroller,
                    actor,
                    name,
                    "tpm-node-binding",
                    StatusCode::FORBIDDEN,
                    format!(
                        "this TPM is bound to node {}; it cannot enroll as {name}",
                        b.node_name
                    ),
                ));
            }
        }
        if let Some(b) = store.ek_binding_of_node(name)? {
            if b.ek_hash != ek_hash {
                return Err(Self::refuse(
                    enroller,
                    actor,
                    name,
                    "tpm-node-binding",
                    StatusCode::FORBIDDEN,
                    format!("node name {name} is bound to another TPM"),
                ));
            }
        }
        Ok(())
    }

    /// Step 2: consumes the challenge, checks the answer, the key certification and the
    /// CSR, then issues the node certificate and binds the EK to the name.
    pub fn enroll(
        &self,
        enroller: &Enroller,
        peer: &Peer,
        body: &[u8],
    ) -> Result<Vec<Vec<u8>>, EstError> {
        let anon = format!("{} (tpm enrollment)", peer.remote.ip());
        let fin = EnrollmentFinish::decode(body).map_err(|e| {
            Self::refuse(
                enroller,
                &anon,
                "nodes",
                "tpm-attestation",
                status_of(&e),
                e.to_string(),
            )
        })?;
        let name = fin.node_name.clone();
        let attested = self.verifier.verify(&fin.response).map_err(|e| {
            Self::refuse(
                enroller,
                &anon,
                &name,
                "tpm-attestation",
                status_of(&e),
                e.to_string(),
            )
        })?;
        let actor = format!("tpm ek {}", attested.ek_hash);
        let refuse = |rule: &str, status: StatusCode, reason: String| {
            Self::refuse(enroller, &actor, &name, rule, status, reason)
        };
        if !valid_node_name(&name) {
            return Err(refuse(
                "tpm-attestation",
                StatusCode::BAD_REQUEST,
                format!("{name:?} is not a Kubernetes node name"),
            ));
        }
        let ak = PublicArea::from_tpmt(&attested.ak_public, "AK public")
            .map_err(|e| refuse("tpm-attestation", StatusCode::FORBIDDEN, e.to_string()))?;
        let key = verify_key_certification(
            &ak,
            &fin.key_public,
            &fin.certify_info,
            &fin.certify_signature,
            &fin.response.nonce,
        )
        .map_err(|e| refuse("tpm-key-certification", status_of(&e), e.to_string()))?;
        let csr = parse_csr(&fin.csr)
            .map_err(|e| refuse("csr", StatusCode::BAD_REQUEST, e.to_string()))?;
        let (_, parsed) = X509CertificationRequest::from_der(&fin.csr).map_err(|e| {
            refuse(
                "csr",
                StatusCode::BAD_REQUEST,
                format!("csr does not parse: {e}"),
            )
        })?;
        let spki = key.spki_der().map_err(|e| {
            refuse(
                "tpm-key-certification",
                StatusCode::FORBIDDEN,
                e.to_string(),
            )
        })?;
        if parsed.certification_request_info.subject_pki.raw != spki.as_slice() {
            return Err(refuse(
                "tpm-key-certification",
                StatusCode::FORBIDDEN,
                "the CSR's key is not the key the TPM certified for this challenge".into(),
            ));
        }
        binding::check(
            enroller.config().channel_binding,
            binding::challenge_password(&parsed).as_deref(),
            peer.binding.as_deref().map(|b| &b[..]),
        )
        .map_err(|why| refuse("channel-binding", StatusCode::FORBIDDEN, why))?;
        self.check_binding(enroller, &actor, &attested.ek_hash, &name)?;
        let td = enroller.issuance().hierarchy().trust_domain().to_string();
        let request = crate::ca::profiles::LeafRequest {
            common_name: Some("KeyGrid agent".into()),
            spiffe_id: Some(format!("spiffe://{td}/keygrid/node/{name}")),
            ..Default::default()
        };
        let ek = EkBinding {
            ek_hash: attested.ek_hash.clone(),
            node_name: name.clone(),
            manufacturer: attested
                .manufacturer
                .clone()
                .unwrap_or_else(|| "allow-list".into()),
        };
        let chain = enroller.sign(
            "nodes",
            PROFILE_NODE,
            &actor,
            &request,
            ATTESTATION_TPM,
            &fin.csr,
            &csr,
            Some(&ek),
        )?;
        tracing::info!(node = %name, ek = %attested.ek_hash, "node enrolled with TPM attestation");
        Ok(chain)
    }
}
