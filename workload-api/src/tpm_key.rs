//! The node key that lives in the TPM: it signs the node's CSRs (rcgen) and its TLS
//! handshakes (rustls) inside the TPM, so the private key never exists in the agent.
//!
//! One TPM session serves every use, behind a mutex (TPM commands are serial anyway).

use std::sync::{Arc, Mutex};

use keygrid_tpm_attestation::tpm::EnrollmentKey;
use keygrid_tpm_attestation::TpmAttestor;
use rustls::pki_types::CertificateDer;
use rustls::sign::{CertifiedKey, Signer, SigningKey};
use rustls::{SignatureAlgorithm, SignatureScheme};
use x509_parser::prelude::FromDer;

/// A TPM session and the node's enrollment key in it.
pub struct TpmNodeKey {
    tpm: Mutex<TpmAttestor>,
    key: EnrollmentKey,
    /// PKCS#1 RSAPublicKey (the BIT STRING of the SPKI), what rcgen wants.
    rsa_public: Vec<u8>,
}

impl std::fmt::Debug for TpmNodeKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TpmNodeKey").finish_non_exhaustive()
    }
}

impl TpmNodeKey {
    /// Opens the TPM behind `tcti` and loads the node's enrollment key (re-derived from
    /// the TPM's owner seed: the same TPM always yields the same key).
    pub fn open(tcti: &str) -> anyhow::Result<Self> {
        let mut tpm = TpmAttestor::open(tcti)
            .map_err(|e| anyhow::anyhow!("cannot open the TPM ({tcti}): {e}"))?;
        let key = tpm
            .enrollment_key()
            .map_err(|e| anyhow::anyhow!("cannot load the node key in the TPM: {e}"))?;
        let (_, spki) = x509_parser::x509::SubjectPublicKeyInfo::from_der(&key.spki_der)
            .map_err(|e| anyhow::anyhow!("the TPM key's public key does not parse: {e}"))?;
        let rsa_public = spki.subject_public_key.data.to_vec();
        Ok(TpmNodeKey {
            tpm: Mutex::new(tpm),
            key,
            rsa_public,
        })
    }

    /// Runs `f` with the TPM session.
    pub fn with_tpm<T>(&self, f: impl FnOnce(&mut TpmAttestor, &EnrollmentKey) -> T) -> T {
        let mut tpm = self.tpm.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut tpm, &self.key)
    }

    /// The key's SubjectPublicKeyInfo, DER.
    pub fn spki_der(&self) -> &[u8] {
        &self.key.spki_der
    }

    /// A CSR for `params` carrying the connection's channel `binding`, signed in the TPM.
    pub fn csr(
        self: &Arc<Self>,
        params: &rcgen::CertificateParams,
        binding: &str,
    ) -> anyhow::Result<Vec<u8>> {
        let signer = CsrSigner(self.clone());
        Ok(params
            .serialize_request_with_attributes(
                &signer,
                vec![crate::est_client::binding_attribute(binding)],
            )?
            .der()
            .to_vec())
    }

    fn sign(&self, message: &[u8], pss: bool) -> Result<Vec<u8>, String> {
        self.with_tpm(|tpm, key| tpm.sign_sha256(key, message, pss))
            .map_err(|e| e.to_string())
    }

    /// A rustls certified key: `chain` (leaf first) with this TPM key.
    pub fn certified_key(self: &Arc<Self>, chain: &[Vec<u8>]) -> Arc<CertifiedKey> {
        Arc::new(CertifiedKey::new(
            chain
                .iter()
                .map(|c| CertificateDer::from(c.clone()))
                .collect(),
            Arc::new(TlsKey(self.clone())),
        ))
    }
}

struct CsrSigner(Arc<TpmNodeKey>);

impl rcgen::PublicKeyData for CsrSigner {
    fn der_bytes(&self) -> &[u8] {
        &self.0.rsa_public
    }
    fn algorithm(&self) -> &'static rcgen::SignatureAlgorithm {
        &rcgen::PKCS_RSA_SHA256
    }
}

impl rcgen::SigningKey for CsrSigner {
    fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, rcgen::Error> {
        self.0.sign(msg, false).map_err(|e| {
            tracing::error!(error = %e, "TPM signing failed");
            rcgen::Error::RemoteKeyError
        })
    }
}

/// The TPM key as a rustls signing key: RSA-PSS-SHA256 when offered (TLS 1.3 requires
/// PSS), else PKCS#1 v1.5 SHA-256.
#[derive(Debug)]
struct TlsKey(Arc<TpmNodeKey>);

#[derive(Debug)]
struct TlsSigner(Arc<TpmNodeKey>, SignatureScheme);

impl SigningKey for TlsKey {
    fn choose_scheme(&self, offered: &[SignatureScheme]) -> Option<Box<dyn Signer>> {
        [
            SignatureScheme::RSA_PSS_SHA256,
            SignatureScheme::RSA_PKCS1_SHA256,
        ]
        .into_iter()
        .find(|s| offered.contains(s))
        .map(|s| Box::new(TlsSigner(self.0.clone(), s)) as Box<dyn Signer>)
    }

    fn algorithm(&self) -> SignatureAlgorithm {
        SignatureAlgorithm::RSA
    }
}

impl Signer for TlsSigner {
    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, rustls::Error> {
        self.0
            .sign(message, self.1 == SignatureScheme::RSA_PSS_SHA256)
            .map_err(|e| rustls::Error::General(format!("TPM signing failed: {e}")))
    }

    fn scheme(&self) -> SignatureScheme {
        self.1
    }
}
