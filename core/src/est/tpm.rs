//! TPM-attested enrollment (placeholder while the protocol lands).

use super::config::TpmEnrollConfig;
use super::enroll::Enroller;
use super::listener::Peer;
use super::EstError;

/// Largest TPM enrollment message read.
pub const MAX_TPM_BODY: usize = 64 * 1024;

/// TPM enrollment state.
pub struct TpmEnrollment;

impl TpmEnrollment {
    /// Creates it.
    pub fn new(_cfg: &TpmEnrollConfig, _td: &str) -> Result<Self, String> {
        Ok(TpmEnrollment)
    }
    /// Challenge.
    pub fn challenge(&self, _e: &Enroller, _p: &Peer, _b: &[u8]) -> Result<String, EstError> {
        Err(EstError::new(
            axum::http::StatusCode::NOT_IMPLEMENTED,
            "todo",
        ))
    }
    /// Enroll.
    pub fn enroll(&self, _e: &Enroller, _p: &Peer, _b: &[u8]) -> Result<String, EstError> {
        Err(EstError::new(
            axum::http::StatusCode::NOT_IMPLEMENTED,
            "todo",
        ))
    }
}
