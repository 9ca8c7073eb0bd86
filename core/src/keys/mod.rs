//! Key backends: where CA private keys live and how they sign.
//!
//! Every issuing path signs through [`CaSigner`], so the code that builds certificates never
//! sees a private key and never needs to know whether the key sits in an HSM or in memory.

pub mod ecdsa_der;
pub mod pkcs11;
pub mod rsa_public;
pub mod sealed;
pub mod software;

use std::fmt;

use serde::Deserialize;

/// Signature algorithms KeyGrid's CA keys can use.
///
/// Kept as a closed enum so that policy and configuration can only name algorithms the
/// backends really implement. RSA sizes below 3072 bits are deliberately absent: the brief's
/// compliance story ("no RSA-2048") starts with KeyGrid's own keys.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, serde::Serialize)]
pub enum KeyAlgorithm {
    /// ECDSA over NIST P-256 with SHA-256.
    #[serde(rename = "ecdsa-p256")]
    EcdsaP256,
    /// ECDSA over NIST P-384 with SHA-384.
    #[serde(rename = "ecdsa-p384")]
    EcdsaP384,
    /// Ed25519 (pure EdDSA, RFC 8032/8410).
    #[serde(rename = "ed25519")]
    Ed25519,
    /// RSA 3072-bit, PKCS#1 v1.5 signatures with SHA-256.
    #[serde(rename = "rsa-3072")]
    Rsa3072,
    /// RSA 4096-bit, PKCS#1 v1.5 signatures with SHA-384.
    #[serde(rename = "rsa-4096")]
    Rsa4096,
}

/// The family of a [`KeyAlgorithm`], for code whose encoding differs per family (public key
/// layout, signature format) but not per size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyFamily {
    /// Public key is an uncompressed SEC1 point; signatures are DER `Ecdsa-Sig-Value`.
    Ecdsa,
    /// Public key is the 32-byte RFC 8032 encoding; signatures are 64 raw bytes.
    Ed25519,
    /// Public key is a DER PKCS#1 `RSAPublicKey`; signatures are modulus-sized.
    Rsa,
}

impl KeyAlgorithm {
    /// Every algorithm, for documentation and exhaustive tests.
    pub const ALL: [KeyAlgorithm; 5] = [
        KeyAlgorithm::EcdsaP256,
        KeyAlgorithm::EcdsaP384,
        KeyAlgorithm::Ed25519,
        KeyAlgorithm::Rsa3072,
        KeyAlgorithm::Rsa4096,
    ];

    /// The algorithm's family.
    pub fn family(self) -> KeyFamily {
        match self {
            KeyAlgorithm::EcdsaP256 | KeyAlgorithm::EcdsaP384 => KeyFamily::Ecdsa,
            KeyAlgorithm::Ed25519 => KeyFamily::Ed25519,
            KeyAlgorithm::Rsa3072 | KeyAlgorithm::Rsa4096 => KeyFamily::Rsa,
        }
    }

    /// The rcgen signature algorithm a certificate signed by this key declares.
    pub fn rcgen(self) -> &'static rcgen::SignatureAlgorithm {
        match self {
            KeyAlgorithm::EcdsaP256 => &rcgen::PKCS_ECDSA_P256_SHA256,
            KeyAlgorithm::EcdsaP384 => &rcgen::PKCS_ECDSA_P384_SHA384,
            KeyAlgorithm::Ed25519 => &rcgen::PKCS_ED25519,
            KeyAlgorithm::Rsa3072 => &rcgen::PKCS_RSA_SHA256,
            KeyAlgorithm::Rsa4096 => &rcgen::PKCS_RSA_SHA384,
        }
    }

    /// DER of the curve OID, as PKCS#11 `CKA_EC_PARAMS` wants it; `None` for RSA.
    pub fn ec_params_der(self) -> Option<&'static [u8]> {
        match self {
            // 1.2.840.10045.3.1.7 (prime256v1)
            KeyAlgorithm::EcdsaP256 => {
                Some(&[0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07])
            }
            // 1.3.132.0.34 (secp384r1)
            KeyAlgorithm::EcdsaP384 => Some(&[0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x22]),
            // 1.3.101.112 (id-Ed25519, RFC 8410), the form PKCS#11 3.0 allows for Edwards curves.
            KeyAlgorithm::Ed25519 => Some(&[0x06, 0x03, 0x2b, 0x65, 0x70]),
            KeyAlgorithm::Rsa3072 | KeyAlgorithm::Rsa4096 => None,
        }
    }

    /// Length in bytes of one scalar (r or s) of an ECDSA signature; `None` for other families.
    pub fn ecdsa_scalar_len(self) -> Option<usize> {
        match self {
            KeyAlgorithm::EcdsaP256 => Some(32),
            KeyAlgorithm::EcdsaP384 => Some(48),
            _ => None,
        }
    }

    /// RSA modulus size in bits; `None` for other families.
    pub fn rsa_bits(self) -> Option<usize> {
        match self {
            KeyAlgorithm::Rsa3072 => Some(3072),
            KeyAlgorithm::Rsa4096 => Some(4096),
            _ => None,
        }
    }

    /// Hashes a message with the digest this algorithm signs over. Ed25519 signs the message
    /// itself (pure EdDSA), so it has no separate digest and gets `None`.
    pub fn digest(self, msg: &[u8]) -> Option<Vec<u8>> {
        let alg = match self {
            KeyAlgorithm::EcdsaP256 | KeyAlgorithm::Rsa3072 => &aws_lc_rs::digest::SHA256,
            KeyAlgorithm::EcdsaP384 | KeyAlgorithm::Rsa4096 => &aws_lc_rs::digest::SHA384,
            KeyAlgorithm::Ed25519 => return None,
        };
        Some(aws_lc_rs::digest::digest(alg, msg).as_ref().to_vec())
    }

    /// The aws-lc-rs algorithm that verifies this key's signatures in the form
    /// [`CaSigner::sign`] returns them, for checking signatures KeyGrid made itself.
    pub fn verification_algorithm(
        self,
    ) -> &'static dyn aws_lc_rs::signature::VerificationAlgorithm {
        use aws_lc_rs::signature as sig;
        match self {
            KeyAlgorithm::EcdsaP256 => &sig::ECDSA_P256_SHA256_ASN1,
            KeyAlgorithm::EcdsaP384 => &sig::ECDSA_P384_SHA384_ASN1,
            KeyAlgorithm::Ed25519 => &sig::ED25519,
            KeyAlgorithm::Rsa3072 => &sig::RSA_PKCS1_2048_8192_SHA256,
            KeyAlgorithm::Rsa4096 => &sig::RSA_PKCS1_2048_8192_SHA384,
        }
    }

    /// The name used in configuration and in `keygrid ca show`.
    pub fn name(self) -> &'static str {
        match self {
            KeyAlgorithm::EcdsaP256 => "ecdsa-p256",
            KeyAlgorithm::EcdsaP384 => "ecdsa-p384",
            KeyAlgorithm::Ed25519 => "ed25519",
            KeyAlgorithm::Rsa3072 => "rsa-3072",
            KeyAlgorithm::Rsa4096 => "rsa-4096",
        }
    }

    /// Parses the configuration name back, for values read from the store.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|a| a.name() == name)
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
    /// The public key as the raw SubjectPublicKey bits: an uncompressed EC point, the 32-byte
    /// Ed25519 key, or a DER PKCS#1 `RSAPublicKey` (see [`KeyFamily`]).
    fn public_key_raw(&self) -> &[u8];
    /// Signs `msg` (hashing it as the algorithm requires), returning the signature in its
    /// X.509 form: DER `Ecdsa-Sig-Value` for ECDSA, raw bytes for Ed25519 and RSA.
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
        Ok(std::sync::Arc::new(self.generate_key(label, algorithm)?))
    }

    fn find(
        &self,
        label: &str,
        algorithm: KeyAlgorithm,
    ) -> Result<std::sync::Arc<dyn CaSigner>, KeyError> {
        Ok(std::sync::Arc::new(self.find_key(label, algorithm)?))
    }
}

/// Chooses the key backend for each issuer, so configuration can keep the root in the HSM
/// and put a short-lived issuer's key elsewhere.
pub trait IssuerKeys: Send + Sync {
    /// The backend that will hold new keys of `issuer`.
    fn backend(&self, issuer: &str) -> &dyn KeyBackend;
    /// The backend of `kind` (as recorded in the store when a key was made), so an existing
    /// key is looked for where it was created even if configuration has changed since.
    fn backend_of_kind(&self, kind: &str) -> Result<&dyn KeyBackend, KeyError>;
}

impl<T: KeyBackend> IssuerKeys for T {
    fn backend(&self, _issuer: &str) -> &dyn KeyBackend {
        self
    }

    fn backend_of_kind(&self, kind: &str) -> Result<&dyn KeyBackend, KeyError> {
        if kind == self.kind() {
            Ok(self)
        } else {
            Err(not_configured(kind))
        }
    }
}

fn not_configured(kind: &str) -> KeyError {
    KeyError::Token(format!(
        "the store has keys in the {kind:?} backend, which is not configured"
    ))
}

/// The per-issuer choice configuration makes: the HSM for everything, except issuers listed
/// for the sealed software backend. The root is never among those (configuration refuses it).
pub struct IssuerKeyRouter {
    hsm: Box<dyn KeyBackend>,
    software: Option<Box<dyn KeyBackend>>,
    software_issuers: std::collections::BTreeSet<String>,
}

impl IssuerKeyRouter {
    /// Routes `software_issuers` to `software` and everything else to `hsm`. Refuses a
    /// software issuer list without a software backend, and the root in that list.
    pub fn new(
        hsm: Box<dyn KeyBackend>,
        software: Option<Box<dyn KeyBackend>>,
        software_issuers: impl IntoIterator<Item = String>,
    ) -> Result<Self, KeyError> {
        let software_issuers: std::collections::BTreeSet<String> =
            software_issuers.into_iter().collect();
        if software_issuers.contains("root") {
            return Err(KeyError::Token(
                "the root CA key must stay in the HSM; it cannot use the software backend".into(),
            ));
        }
        if !software_issuers.is_empty() && software.is_none() {
            return Err(KeyError::Token(
                "issuers are configured for the software backend but no key-encryption key is set"
                    .into(),
            ));
        }
        Ok(IssuerKeyRouter {
            hsm,
            software,
            software_issuers,
        })
    }
}

impl IssuerKeys for IssuerKeyRouter {
    fn backend(&self, issuer: &str) -> &dyn KeyBackend {
        match &self.software {
            Some(sw) if self.software_issuers.contains(issuer) => sw.as_ref(),
            _ => self.hsm.as_ref(),
        }
    }

    fn backend_of_kind(&self, kind: &str) -> Result<&dyn KeyBackend, KeyError> {
        if kind == self.hsm.kind() {
            return Ok(self.hsm.as_ref());
        }
        match &self.software {
            Some(sw) if sw.kind() == kind => Ok(sw.as_ref()),
            _ => Err(not_configured(kind)),
        }
    }
}

#[cfg(test)]
mod router_tests {
    use super::software::MemoryBackend;
    use super::*;

    /// A second in-memory backend reporting the HSM's kind, to tell the two apart.
    struct FakeHsm(MemoryBackend);
    impl KeyBackend for FakeHsm {
        fn kind(&self) -> &'static str {
            "pkcs11"
        }
        fn generate(
            &self,
            label: &str,
            algorithm: KeyAlgorithm,
        ) -> Result<std::sync::Arc<dyn CaSigner>, KeyError> {
            self.0.generate(label, algorithm)
        }
        fn find(
            &self,
            label: &str,
            algorithm: KeyAlgorithm,
        ) -> Result<std::sync::Arc<dyn CaSigner>, KeyError> {
            self.0.find(label, algorithm)
        }
    }

    #[test]
    fn issuers_go_where_configured_and_root_stays_in_the_hsm() {
        let router = IssuerKeyRouter::new(
            Box::new(FakeHsm(MemoryBackend::default())),
            Some(Box::new(MemoryBackend::default())),
            ["workloads".to_string()],
        )
        .unwrap();
        assert_eq!(router.backend("workloads").kind(), "software");
        assert_eq!(router.backend("root").kind(), "pkcs11");
        assert_eq!(router.backend("nodes").kind(), "pkcs11");
        assert_eq!(
            router.backend_of_kind("software").unwrap().kind(),
            "software"
        );
        assert_eq!(router.backend_of_kind("pkcs11").unwrap().kind(), "pkcs11");
        assert!(router.backend_of_kind("cloudkms").is_err());

        let e = IssuerKeyRouter::new(
            Box::new(FakeHsm(MemoryBackend::default())),
            Some(Box::new(MemoryBackend::default())),
            ["root".to_string()],
        )
        .err()
        .unwrap();
        assert!(e.to_string().contains("must stay in the HSM"), "{e}");
        assert!(IssuerKeyRouter::new(
            Box::new(FakeHsm(MemoryBackend::default())),
            None,
            ["nodes".to_string()],
        )
        .is_err());
    }
}
