//! The one error type of the attestation protocol.
//!
//! Every refusal carries a reason an operator can act on (which check failed and why), and
//! never a secret: activated secrets, seeds and HMAC keys stay out of messages.

use thiserror::Error;

/// Why an attestation message was refused or could not be produced.
#[derive(Debug, Error)]
pub enum AttestationError {
    /// A wire message could not be decoded (too large, truncated, not JSON, bad base64, field out of bounds).
    #[error("malformed {message}: {reason}")]
    Malformed {
        /// Which message or structure was being decoded.
        message: &'static str,
        /// What was wrong with it.
        reason: String,
    },
    /// The peer speaks a protocol version this build does not.
    #[error("unsupported protocol version {got} (this build speaks version {supported})")]
    UnsupportedVersion {
        /// Version in the message.
        got: u32,
        /// Version this build speaks.
        supported: u32,
    },
    /// The EK certificate could not be parsed or is not a usable EK certificate.
    #[error("invalid EK certificate: {0}")]
    EkCertificate(String),
    /// The EK certificate does not chain to any configured manufacturer CA.
    #[error("EK certificate is not trusted: {0}")]
    EkUntrusted(String),
    /// The EK public area is unusable or does not match the EK certificate.
    #[error("invalid EK public key: {0}")]
    EkPublic(String),
    /// The attestation key does not have the attributes of a TPM-resident restricted signing key.
    #[error("invalid attestation key: {0}")]
    AttestationKey(String),
    /// The EK is refused by policy (not on the allow-list, or no certificate and no allow-list entry).
    #[error("EK refused by policy: {0}")]
    PolicyRefused(String),
    /// The response names a challenge that was never issued, was already answered, or expired.
    #[error("challenge refused: {0}")]
    Challenge(String),
    /// The TPM did not recover the credential: the EK and AK are not in the same TPM.
    #[error("credential activation failed: {0}")]
    ActivationFailed(String),
    /// The nonce signature does not verify with the attestation key.
    #[error("nonce signature invalid: {0}")]
    SignatureInvalid(String),
    /// The verifier's own configuration is unusable (bad CA file, no trust anchors).
    #[error("attestation verifier configuration: {0}")]
    Config(String),
    /// A local cryptographic operation failed (random source, RSA encryption).
    #[error("cryptographic operation failed: {0}")]
    Crypto(&'static str),
    /// A TPM command failed on the agent side.
    #[error("TPM error during {operation}: {reason}")]
    Tpm {
        /// What the agent was doing.
        operation: &'static str,
        /// The TSS error text.
        reason: String,
    },
}

impl AttestationError {
    pub(crate) fn malformed(message: &'static str, reason: impl Into<String>) -> Self {
        Self::Malformed {
            message,
            reason: reason.into(),
        }
    }
}

/// Result alias for this crate.
pub type Result<T, E = AttestationError> = std::result::Result<T, E>;
