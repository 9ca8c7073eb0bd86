//! Software keys: private keys held in process memory by aws-lc-rs.
//!
//! For issuers whose keys are short-lived (sealed on disk by [`super::sealed`]) and for tests
//! that exercise certificate building without an HSM. The root CA never uses this backend;
//! configuration refuses it.

use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::rsa::KeySize;
use aws_lc_rs::signature::{self, EcdsaKeyPair, EcdsaSigningAlgorithm, Ed25519KeyPair, KeyPair};
use zeroize::Zeroizing;

use super::{CaSigner, KeyAlgorithm, KeyError};

/// The aws-lc-rs key object for each family.
enum Inner {
    Ecdsa(EcdsaKeyPair),
    Ed25519(Ed25519KeyPair),
    Rsa(signature::RsaKeyPair),
}

/// A private key in memory.
pub struct SoftwareKey {
    inner: Inner,
    algorithm: KeyAlgorithm,
    public: Vec<u8>,
    rng: SystemRandom,
}

fn ecdsa_alg(algorithm: KeyAlgorithm) -> Option<&'static EcdsaSigningAlgorithm> {
    match algorithm {
        KeyAlgorithm::EcdsaP256 => Some(&signature::ECDSA_P256_SHA256_ASN1_SIGNING),
        KeyAlgorithm::EcdsaP384 => Some(&signature::ECDSA_P384_SHA384_ASN1_SIGNING),
        _ => None,
    }
}

fn rsa_padding(algorithm: KeyAlgorithm) -> &'static dyn signature::RsaEncoding {
    match algorithm {
        KeyAlgorithm::Rsa4096 => &signature::RSA_PKCS1_SHA384,
        _ => &signature::RSA_PKCS1_SHA256,
    }
}

fn rejected(algorithm: KeyAlgorithm) -> KeyError {
    KeyError::Other(format!("{algorithm} private key rejected"))
}

impl SoftwareKey {
    /// Generates a fresh key.
    pub fn generate(algorithm: KeyAlgorithm) -> Result<Self, KeyError> {
        let rng = SystemRandom::new();
        let failed = || KeyError::Other(format!("{algorithm} key generation failed"));
        let inner = match algorithm {
            KeyAlgorithm::EcdsaP256 | KeyAlgorithm::EcdsaP384 => {
                let alg = ecdsa_alg(algorithm).ok_or_else(failed)?;
                let pkcs8 = EcdsaKeyPair::generate_pkcs8(alg, &rng).map_err(|_| failed())?;
                Inner::Ecdsa(
                    EcdsaKeyPair::from_pkcs8(alg, pkcs8.as_ref())
                        .map_err(|_| rejected(algorithm))?,
                )
            }
            KeyAlgorithm::Ed25519 => {
                Inner::Ed25519(Ed25519KeyPair::generate().map_err(|_| failed())?)
            }
            KeyAlgorithm::Rsa3072 => {
                Inner::Rsa(signature::RsaKeyPair::generate(KeySize::Rsa3072).map_err(|_| failed())?)
            }
            KeyAlgorithm::Rsa4096 => {
                Inner::Rsa(signature::RsaKeyPair::generate(KeySize::Rsa4096).map_err(|_| failed())?)
            }
        };
        Ok(Self::wrap(inner, algorithm, rng))
    }

    /// Loads a key from PKCS#8 DER (as unsealed from disk), checking it is `algorithm`.
    pub fn from_pkcs8(algorithm: KeyAlgorithm, pkcs8: &[u8]) -> Result<Self, KeyError> {
        let inner = match algorithm {
            KeyAlgorithm::EcdsaP256 | KeyAlgorithm::EcdsaP384 => {
                let alg = ecdsa_alg(algorithm).ok_or_else(|| rejected(algorithm))?;
                Inner::Ecdsa(EcdsaKeyPair::from_pkcs8(alg, pkcs8).map_err(|_| rejected(algorithm))?)
            }
            KeyAlgorithm::Ed25519 => {
                Inner::Ed25519(Ed25519KeyPair::from_pkcs8(pkcs8).map_err(|_| rejected(algorithm))?)
            }
            KeyAlgorithm::Rsa3072 | KeyAlgorithm::Rsa4096 => {
                let key =
                    signature::RsaKeyPair::from_pkcs8(pkcs8).map_err(|_| rejected(algorithm))?;
                if Some(key.public_modulus_len() * 8) != algorithm.rsa_bits() {
                    return Err(rejected(algorithm));
                }
                Inner::Rsa(key)
            }
        };
        Ok(Self::wrap(inner, algorithm, SystemRandom::new()))
    }

    fn wrap(inner: Inner, algorithm: KeyAlgorithm, rng: SystemRandom) -> Self {
        let public = match &inner {
            Inner::Ecdsa(k) => k.public_key().as_ref().to_vec(),
            Inner::Ed25519(k) => k.public_key().as_ref().to_vec(),
            Inner::Rsa(k) => k.public_key().as_ref().to_vec(),
        };
        SoftwareKey {
            inner,
            algorithm,
            public,
            rng,
        }
    }

    /// The private key as PKCS#8 DER, for sealing to disk. The buffer is wiped on drop.
    pub fn to_pkcs8(&self) -> Result<Zeroizing<Vec<u8>>, KeyError> {
        let failed = || KeyError::Other(format!("cannot encode {} key", self.algorithm));
        let der = match &self.inner {
            Inner::Ecdsa(k) => k.to_pkcs8v1().map_err(|_| failed())?.as_ref().to_vec(),
            Inner::Ed25519(k) => k.to_pkcs8v1().map_err(|_| failed())?.as_ref().to_vec(),
            Inner::Rsa(k) => {
                let der: aws_lc_rs::encoding::Pkcs8V1Der<'static> =
                    k.as_der().map_err(|_| failed())?;
                der.as_ref().to_vec()
            }
        };
        Ok(Zeroizing::new(der))
    }
}

impl CaSigner for SoftwareKey {
    fn algorithm(&self) -> KeyAlgorithm {
        self.algorithm
    }

    fn public_key_raw(&self) -> &[u8] {
        &self.public
    }

    fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, KeyError> {
        let failed = || KeyError::Other(format!("{} signing failed", self.algorithm));
        match &self.inner {
            Inner::Ecdsa(k) => k
                .sign(&self.rng, msg)
                .map(|s| s.as_ref().to_vec())
                .map_err(|_| failed()),
            Inner::Ed25519(k) => Ok(k.sign(msg).as_ref().to_vec()),
            Inner::Rsa(k) => {
                let mut sig = vec![0u8; k.public_modulus_len()];
                k.sign(rsa_padding(self.algorithm), &self.rng, msg, &mut sig)
                    .map_err(|_| failed())?;
                Ok(sig)
            }
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Every algorithm signs something its own public key verifies, and survives a PKCS#8
    /// round trip (the sealed backend's path) as the same key.
    #[test]
    fn every_algorithm_signs_verifiably_and_round_trips() {
        for alg in KeyAlgorithm::ALL {
            let key = SoftwareKey::generate(alg).unwrap();
            let sig = key.sign(b"to be signed").unwrap();
            let verify: &dyn signature::VerificationAlgorithm = match alg {
                KeyAlgorithm::EcdsaP256 => &signature::ECDSA_P256_SHA256_ASN1,
                KeyAlgorithm::EcdsaP384 => &signature::ECDSA_P384_SHA384_ASN1,
                KeyAlgorithm::Ed25519 => &signature::ED25519,
                KeyAlgorithm::Rsa3072 => &signature::RSA_PKCS1_2048_8192_SHA256,
                KeyAlgorithm::Rsa4096 => &signature::RSA_PKCS1_2048_8192_SHA384,
            };
            signature::UnparsedPublicKey::new(verify, key.public_key_raw())
                .verify(b"to be signed", &sig)
                .unwrap_or_else(|_| panic!("{alg} signature does not verify"));
            let again = SoftwareKey::from_pkcs8(alg, &key.to_pkcs8().unwrap()).unwrap();
            assert_eq!(again.public_key_raw(), key.public_key_raw(), "{alg}");
        }
    }

    #[test]
    fn pkcs8_of_another_algorithm_is_refused() {
        let p256 = SoftwareKey::generate(KeyAlgorithm::EcdsaP256).unwrap();
        let pkcs8 = p256.to_pkcs8().unwrap();
        assert!(SoftwareKey::from_pkcs8(KeyAlgorithm::EcdsaP384, &pkcs8).is_err());
        assert!(SoftwareKey::from_pkcs8(KeyAlgorithm::Ed25519, &pkcs8).is_err());
        let rsa = SoftwareKey::generate(KeyAlgorithm::Rsa3072).unwrap();
        assert!(SoftwareKey::from_pkcs8(KeyAlgorithm::Rsa4096, &rsa.to_pkcs8().unwrap()).is_err());
    }
}
