//! Software key backend: ECDSA keys held in process memory by aws-lc-rs.
//!
//! For issuers whose keys are short-lived and for tests that exercise certificate building
//! without an HSM. The root CA never uses this backend.

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{self, EcdsaKeyPair, EcdsaSigningAlgorithm, KeyPair};

use super::{CaSigner, KeyAlgorithm, KeyError};

/// An ECDSA private key in memory.
pub struct SoftwareKey {
    key: EcdsaKeyPair,
    algorithm: KeyAlgorithm,
    rng: SystemRandom,
}

fn signing_alg(algorithm: KeyAlgorithm) -> &'static EcdsaSigningAlgorithm {
    match algorithm {
        KeyAlgorithm::EcdsaP256 => &signature::ECDSA_P256_SHA256_ASN1_SIGNING,
        KeyAlgorithm::EcdsaP384 => &signature::ECDSA_P384_SHA384_ASN1_SIGNING,
    }
}

impl SoftwareKey {
    /// Generates a fresh key.
    pub fn generate(algorithm: KeyAlgorithm) -> Result<Self, KeyError> {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(signing_alg(algorithm), &rng)
            .map_err(|_| KeyError::Other("ECDSA key generation failed".into()))?;
        let key = EcdsaKeyPair::from_pkcs8(signing_alg(algorithm), pkcs8.as_ref())
            .map_err(|_| KeyError::Other("generated ECDSA key rejected".into()))?;
        Ok(SoftwareKey {
            key,
            algorithm,
            rng,
        })
    }
}

impl CaSigner for SoftwareKey {
    fn algorithm(&self) -> KeyAlgorithm {
        self.algorithm
    }

    fn public_key_raw(&self) -> &[u8] {
        self.key.public_key().as_ref()
    }

    fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, KeyError> {
        self.key
            .sign(&self.rng, msg)
            .map(|s| s.as_ref().to_vec())
            .map_err(|_| KeyError::Other("ECDSA signing failed".into()))
    }

    fn location(&self) -> String {
        "software".into()
    }
}

/// A key backend that keeps generated keys in memory for the life of the process.
///
/// Used by tests that exercise the hierarchy without an HSM.
#[derive(Default)]
pub struct MemoryBackend {
    keys: std::sync::Mutex<std::collections::HashMap<String, std::sync::Arc<SoftwareKey>>>,
}

impl super::KeyBackend for MemoryBackend {
    fn kind(&self) -> &'static str {
        "software"
    }

    fn generate(
        &self,
        label: &str,
        algorithm: KeyAlgorithm,
    ) -> Result<std::sync::Arc<dyn CaSigner>, KeyError> {
        let key = std::sync::Arc::new(SoftwareKey::generate(algorithm)?);
        self.keys
            .lock()
            .map_err(|_| KeyError::Other("key map lock poisoned".into()))?
            .insert(label.to_string(), key.clone());
        Ok(key)
    }

    fn find(
        &self,
        label: &str,
        _algorithm: KeyAlgorithm,
    ) -> Result<std::sync::Arc<dyn CaSigner>, KeyError> {
        let keys = self
            .keys
            .lock()
            .map_err(|_| KeyError::Other("key map lock poisoned".into()))?;
        match keys.get(label) {
            Some(k) => Ok(k.clone()),
            None => Err(KeyError::NotFound {
                label: label.to_string(),
                token: "memory".into(),
            }),
        }
    }
}
