//! TPM 2.0 node attestation for KeyGrid, implemented once and shared by the SPIRE
//! NodeAttestor plugin pair and by the KeyGrid agent's EST enrollment.
//!
//! The protocol (see `docs/tpm-attestation.md`):
//! 1. agent → verifier: [`wire::AttestationData`] (EK certificate, EK public, AK public, AK name);
//! 2. verifier → agent: [`wire::Challenge`] (a credential sealed to the EK for the AK's name by
//!    software MakeCredential, and a nonce);
//! 3. agent → verifier: [`wire::ChallengeResponse`] (the credential the TPM activated, and the
//!    AK's signature over the nonce).
//!
//! Table of contents:
//! - [`wire`]: the versioned, bounded wire messages;
//! - [`public_area`]: TPM public areas (parsing, names, SPKI) without libtss2;
//! - [`credential`]: KDFa and MakeCredential in software;
//! - [`ek_certificate`]: EK certificate chain to manufacturer CAs, manufacturer selector;
//! - [`key_certification`]: the AK certifying an enrollment key (TPM2_Certify) for EST;
//! - [`quote`]: optional PCR quote evidence and `pcr:` selectors;
//! - [`verifier`]: the server-side decision, single-use challenges, SPIFFE ID and selectors;
//! - [`tpm`] (feature `tpm`): the agent side on tss-esapi.

pub mod credential;
pub mod ek_certificate;
pub mod error;
pub mod key_certification;
pub mod public_area;
pub mod quote;
#[cfg(feature = "tpm")]
pub mod tpm;
pub mod verifier;
pub mod wire;

pub use ek_certificate::ManufacturerCas;
pub use error::{AttestationError, Result};
pub use key_certification::{verify_key_certification, EnrollmentFinish, EnrollmentStart};
#[cfg(feature = "tpm")]
pub use tpm::TpmAttestor;
pub use verifier::{AttestedNode, Verifier, VerifierConfig, SELECTOR_TYPE};
pub use wire::{AttestationData, Challenge, ChallengeResponse, WireMessage};
