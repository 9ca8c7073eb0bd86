//! Key backends: where CA private keys live and how they sign.
//!
//! Every issuing path signs through [`CaSigner`], so the code that builds certificates never
//! sees a private key and never needs to know whether the key sits in an HSM or in memory.

pub mod ecdsa_der;
pub mod pkcs11;
pub mod software;

use std::fmt;

use serde::Deserialize;

/// Signature algorithms KeyGrid's CA keys can use.
///
/// Kept as a closed enum so that policy and configuration can only name algorithms the
/// backends really implement.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, serde::Serialize)]
pub enum KeyAlgorithm {
    /// ECDSA over NIST P-256 with SHA-256.
    #[serde(rename = "ecdsa-p256")]
    EcdsaP256,
    /// ECDSA over NIST P-384 with SHA-384.
    #[serde(rename = "ecdsa-p384")]
    EcdsaP384,
}

impl KeyAlgorithm {
    /// The rcgen signature algorithm a certificate signed by this key declares.
    pub fn rcgen(self) -> &'static rcgen::SignatureAlgorithm {
        match self {
            KeyAlgorithm::EcdsaP256 => &rcgen::PKCS_ECDSA_P256_SHA256,
            KeyAlgorithm::EcdsaP384 => &rcgen::PKCS_ECDSA_P384_SHA384,
        }
    }

    /// DER of the named-curve OID, as PKCS#11 `CKA_EC_PARAMS` wants it.
    pub fn ec_params_der(self) -> &'static [u8] {
        match self {
            // 1.2.840.10045.3.1.7 (prime256v1)
            KeyAlgorithm::EcdsaP256 => {
                &[0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07]
            }
            // 1.3.132.0.34 (secp384r1)
            KeyAlgorithm::EcdsaP384 => &[0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x22],
        }
    }

    /// Length in bytes of one scalar (r or s) of a signature.
    pub fn scalar_len(self) -> usize {
        match self {
            KeyAlgorithm::EcdsaP256 => 32,
            KeyAlgorithm::EcdsaP384 => 48,
        }
    }

    /// Hashes a message with the digest this algorithm signs over.
    pub fn digest(self, msg: &[u8]) -> Vec<u8> {
        let alg = match self {
            KeyAlgorithm::EcdsaP256 => &aws_lc_rs::digest::SHA256,
            KeyAlgorithm::EcdsaP384 => &aws_lc_rs::digest::SHA384,
        };
        aws_lc_rs::digest::digest(alg, msg).as_ref().to_vec()
    }

    /// The name used in configuration and in `keygrid ca show`.
    pub fn name(self) -> &'static str {
        match self {
            KeyAlgorithm::EcdsaP256 => "ecdsa-p256",
            KeyAlgorithm::EcdsaP384 => "ecdsa-p384",
        }
    }

    /// Parses the configuration name back, for values read from the store.
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "ecdsa-p256" => Some(KeyAlgorithm::EcdsaP256),
            "ecdsa-p384" => Some(KeyAlgorithm::EcdsaP384),
            _ => None,
        }
    }
}

impl fmt::Display for KeyAlgorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Errors from a key backend. They name the key and the operation, never key material or PINs.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The PKCS#11 module or token reported an error.
    #[error("PKCS#11 {operation} failed: {source}")]
    Pkcs11 {
        /// What KeyGrid was doing.
        operation: &'static str,
        /// The token's error.
        #[source]
        source: cryptoki::error::Error,
    },
    /// A key KeyGrid expects is not in the token.
    #[error("key {label:?} not found in token {token:?}")]
    NotFound {
        /// The key's label.
        label: String,
        /// The token's label.
        token: String,
    },
    /// The configured token does not exist or cannot be used.
    #[error("token: {0}")]
    Token(String),
    /// Any other backend failure.
    #[error("{0}")]
    Other(String),
}

/// A CA private key that can sign, wherever it lives.
///
/// Implementations must be safe to call from several threads at once; the PKCS#11 backend
/// keeps a pool of sessions for that.
pub trait CaSigner: Send + Sync {
    /// The key's algorithm.
    fn algorithm(&self) -> KeyAlgorithm;
    /// The public key as the raw SubjectPublicKey bits (an uncompressed EC point).
    fn public_key_raw(&self) -> &[u8];
    /// Signs `msg` (hashing it as the algorithm requires), returning a DER signature.
    fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, KeyError>;
    /// Where the key lives, for operators (`pkcs11:<token>/<label>`, `software`).
    fn location(&self) -> String;
}

/// Adapts any [`CaSigner`] to rcgen's signing interface.
pub struct RcgenSigner<'a>(pub &'a dyn CaSigner);

impl rcgen::PublicKeyData for RcgenSigner<'_> {
    fn der_bytes(&self) -> &[u8] {
        self.0.public_key_raw()
    }

    fn algorithm(&self) -> &'static rcgen::SignatureAlgorithm {
        self.0.algorithm().rcgen()
    }
}

impl rcgen::SigningKey for RcgenSigner<'_> {
    fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, rcgen::Error> {
        self.0.sign(msg).map_err(|e| {
            // rcgen's error carries no detail, so say here which key failed and why.
            tracing::error!(key = %self.0.location(), error = %e, "CA signing failed");
            rcgen::Error::RemoteKeyError
        })
    }
}

/// Where CA keys are created and found again by label.
///
/// The hierarchy asks a backend for keys by label and records only the label in the store,
/// so the store never holds key material.
pub trait KeyBackend: Send + Sync {
    /// The backend's name as recorded in the store (`pkcs11`, `software`).
    fn kind(&self) -> &'static str;
    /// Creates a new key under `label`.
    fn generate(
        &self,
        label: &str,
        algorithm: KeyAlgorithm,
    ) -> Result<std::sync::Arc<dyn CaSigner>, KeyError>;
    /// Finds a key created earlier under `label`.
    fn find(
        &self,
        label: &str,
        algorithm: KeyAlgorithm,
    ) -> Result<std::sync::Arc<dyn CaSigner>, KeyError>;
}

impl KeyBackend for std::sync::Arc<pkcs11::Pkcs11Token> {
    fn kind(&self) -> &'static str {
        "pkcs11"
    }

    fn generate(
        &self,
        label: &str,
        algorithm: KeyAlgorithm,
    ) -> Result<std::sync::Arc<dyn CaSigner>, KeyError> {
        Ok(std::sync::Arc::new(self.generate_ec_key(label, algorithm)?))
    }

    fn find(
        &self,
        label: &str,
        algorithm: KeyAlgorithm,
    ) -> Result<std::sync::Arc<dyn CaSigner>, KeyError> {
        Ok(std::sync::Arc::new(self.find_ec_key(label, algorithm)?))
    }
}

/// Chooses the key backend for each issuer, so configuration can keep the root in the HSM
/// and put a short-lived issuer's key elsewhere.
pub trait IssuerKeys: Send + Sync {
    /// The backend that holds (or will hold) `issuer`'s keys.
    fn backend(&self, issuer: &str) -> &dyn KeyBackend;
}

impl<T: KeyBackend> IssuerKeys for T {
    fn backend(&self, _issuer: &str) -> &dyn KeyBackend {
        self
    }
}
