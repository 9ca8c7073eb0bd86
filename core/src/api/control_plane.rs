//! `keygrid.v1.ControlPlaneAdmin` on core's admin socket: kubeadm certificates for the
//! `keygrid kubeadm` CLI and service-account key rotation for `keygrid sa`.

use std::sync::Arc;
use std::time::Duration;

use keygrid_proto::keygrid::v1 as pb;
use tonic::{Request, Response, Status};

use super::admin::authorize_peer;
use super::blocking;
use crate::control_plane::ControlPlaneRequest;
use crate::issuance::{Issuance, IssueError};
use crate::sa_signer::SaKeyRing;

/// Serves `keygrid.v1.ControlPlaneAdmin`.
pub struct ControlPlaneAdminApi {
    issuance: Arc<Issuance>,
    sa: Option<Arc<SaKeyRing>>,
    default_ttl: Duration,
}

impl ControlPlaneAdminApi {
    /// Creates the service; `sa` is `None` when the service-account signer is off.
    pub fn new(issuance: Arc<Issuance>, sa: Option<Arc<SaKeyRing>>, default_ttl: Duration) -> Self {
        ControlPlaneAdminApi {
            issuance,
            sa,
            default_ttl,
        }
    }

    fn ring(&self) -> Result<Arc<SaKeyRing>, Status> {
        self.sa.clone().ok_or_else(|| {
            Status::failed_precondition(
                "the service-account signer is off; set control_plane.signer_socket",
            )
        })
    }
}

fn keys_pb(ring: &SaKeyRing) -> Result<pb::ServiceAccountKeys, Status> {
    let all = ring.all().map_err(internal)?;
    let current = ring.current().map_err(internal)?.kid;
    Ok(pb::ServiceAccountKeys {
        keys: all
            .iter()
            .map(|k| pb::ServiceAccountKey {
                key_id: k.kid.clone(),
                algorithm: k.algorithm().name().into(),
                created_at_unix: k.created_at,
                signing: k.kid == current,
                key_location: k.location(),
            })
            .collect(),
    })
}

fn internal(e: crate::jwt::JwtError) -> Status {
    tracing::error!(error = %e, "service-account key operation failed");
    Status::internal("internal error; see the core log")
}

#[tonic::async_trait]
impl pb::control_plane_admin_server::ControlPlaneAdmin for ControlPlaneAdminApi {
    async fn issue_control_plane_certificate(
        &self,
        req: Request<pb::IssueControlPlaneCertificateRequest>,
    ) -> Result<Response<pb::IssueControlPlaneCertificateResponse>, Status> {
        let uid = authorize_peer(&req)?;
        let r = req.into_inner();
        let ips = r
            .ip_addresses
            .iter()
            .map(|s| {
                s.parse()
                    .map_err(|_| Status::invalid_argument(format!("{s:?} is not an IP address")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        if r.ttl_seconds < 0 {
            return Err(Status::invalid_argument("ttl_seconds must not be negative"));
        }
        let request = ControlPlaneRequest {
            profile: r.profile,
            csr_der: r.csr,
            common_name: Some(r.common_name).filter(|c| !c.is_empty()),
            organizations: r.organizations,
            dns_names: r.dns_names,
            ips,
            ttl: if r.ttl_seconds > 0 {
                Duration::from_secs(r.ttl_seconds as u64)
            } else {
                self.default_ttl
            },
        };
        let issuance = self.issuance.clone();
        let actor = format!("admin:uid:{uid}");
        let cert = blocking(move || issuance.issue_control_plane(&actor, &request)).await?;
        Ok(Response::new(pb::IssueControlPlaneCertificateResponse {
            cert_chain: cert.chain,
            ca_certificate: cert.ca_der,
            bundle: self.issuance.hierarchy().bundle(),
            not_before_unix: cert.not_before,
            not_after_unix: cert.not_after,
            serial: cert.serial,
        }))
    }

    async fn rotate_service_account_key(
        &self,
        req: Request<pb::RotateServiceAccountKeyRequest>,
    ) -> Result<Response<pb::ServiceAccountKeys>, Status> {
        authorize_peer(&req)?;
        let ring = self.ring()?;
        let r = ring.clone();
        blocking(move || {
            r.rotate(time::OffsetDateTime::now_utc().unix_timestamp())
                .map_err(|e| {
                    tracing::error!(error = %e, "service-account key rotation failed");
                    IssueError::Internal
                })
        })
        .await?;
        Ok(Response::new(keys_pb(&ring)?))
    }

    async fn list_service_account_keys(
        &self,
        req: Request<pb::ListServiceAccountKeysRequest>,
    ) -> Result<Response<pb::ServiceAccountKeys>, Status> {
        authorize_peer(&req)?;
        let ring = self.ring()?;
        Ok(Response::new(keys_pb(&ring)?))
    }
}
