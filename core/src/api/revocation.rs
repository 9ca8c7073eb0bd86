//! Admin API glue for revocation: request validation and the mapping of results to
//! protobuf messages and gRPC statuses.

use keygrid_proto::keygrid::v1 as pb;
use tonic::Status;

use crate::revocation::{Reason, RevokeError, RevokeRequest};
use crate::store::{CertificateRecord, RevocationRecord};

/// Largest certificate accepted in a revocation request.
const MAX_CERT_BYTES: usize = 64 * 1024;

/// Validates a `RevokeCertificateRequest` from the admin caller `uid`.
pub fn revoke_request(r: pb::RevokeCertificateRequest, uid: u32) -> Result<RevokeRequest, Status> {
    let reason = if r.reason.is_empty() {
        Reason::Unspecified
    } else {
        Reason::from_name(&r.reason).ok_or_else(|| {
            Status::invalid_argument(format!(
                "reason {:?} is not one of {}",
                r.reason,
                Reason::names().join(", ")
            ))
        })?
    };
    if r.serial.is_empty() == r.certificate_der.is_empty() {
        return Err(Status::invalid_argument(
            "give exactly one of serial and certificate",
        ));
    }
    if r.certificate_der.len() > MAX_CERT_BYTES || r.serial.len() > 128 || r.issuer.len() > 64 {
        return Err(Status::invalid_argument("request field too long"));
    }
    Ok(RevokeRequest {
        issuer: r.issuer,
        serial: r.serial,
        certificate_der: r.certificate_der,
        reason,
        actor: format!("uid:{uid}"),
    })
}

/// Maps a refusal to the status the CLI shows.
pub fn revoke_status(e: RevokeError) -> Status {
    match e {
        RevokeError::InvalidArgument(m) => Status::invalid_argument(m),
        RevokeError::NotFound(m) => Status::not_found(m),
        RevokeError::AlreadyRevoked(m) => Status::already_exists(m),
        RevokeError::Internal => Status::internal("internal error; see the core log"),
    }
}

/// A certificate record (and its revocation) as the admin API returns it.
pub fn certificate_info(c: CertificateRecord, r: Option<RevocationRecord>) -> pb::CertificateInfo {
    pb::CertificateInfo {
        issuer: c.issuer,
        serial: c.serial,
        profile: c.profile,
        subject: c.subject,
        not_before_unix: c.not_before,
        not_after_unix: c.not_after,
        sha256_fingerprint: c.sha256,
        revoked: r.is_some(),
        revocation_reason: r
            .as_ref()
            .map(|r| {
                Reason::from_code(r.reason)
                    .map(Reason::name)
                    .unwrap_or("unspecified")
                    .to_string()
            })
            .unwrap_or_default(),
        revoked_at_unix: r.map(|r| r.revoked_at).unwrap_or(0),
    }
}
