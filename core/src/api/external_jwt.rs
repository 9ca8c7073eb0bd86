//! Kubernetes' ExternalJWTSigner (KEP-740) on a local Unix socket: kube-apiserver's
//! `--service-account-signing-endpoint`. Both API packages, `v1alpha1` (kube-apiserver
//! 1.32–1.35) and `v1` (1.36+), are served on the same socket by the same key ring.
//!
//! The socket is created mode 0600 and every call checks the caller's kernel-reported uid
//! (root or core's own user), as on the admin socket.

use std::sync::Arc;

use keygrid_proto::externaljwt::{v1, v1alpha1};
use tonic::{Request, Response, Status};

use super::admin::authorize_peer;
use crate::jwt::JwtError;
use crate::sa_signer::SaKeyRing;

/// Serves the ExternalJWTSigner service of one API package.
#[derive(Clone)]
pub struct ExternalJwtSigner {
    ring: Arc<SaKeyRing>,
}

impl ExternalJwtSigner {
    /// Creates the service over `ring`.
    pub fn new(ring: Arc<SaKeyRing>) -> Self {
        ExternalJwtSigner { ring }
    }

    async fn sign(&self, claims: String) -> Result<(String, String), Status> {
        let ring = self.ring.clone();
        tokio::task::spawn_blocking(move || ring.sign(&claims))
            .await
            .map_err(|_| Status::internal("worker task failed"))?
            .map_err(|e| match e {
                JwtError::InvalidRequest(m) => Status::invalid_argument(m),
                other => {
                    tracing::error!(error = %other, "service-account token signing failed");
                    Status::internal("internal error; see the core log")
                }
            })
    }

    fn keys(&self) -> Result<Vec<(String, Vec<u8>)>, Status> {
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        self.ring
            .verification_keys(now)
            .map(|ks| ks.into_iter().map(|k| (k.kid, k.spki_der)).collect())
            .map_err(|e| {
                tracing::error!(error = %e, "service-account keys unavailable");
                Status::internal("internal error; see the core log")
            })
    }

    fn timestamp() -> prost_types::Timestamp {
        let now = time::OffsetDateTime::now_utc();
        prost_types::Timestamp {
            seconds: now.unix_timestamp(),
            nanos: now.nanosecond() as i32,
        }
    }

    fn refresh_hint(&self) -> i64 {
        (self.ring.settings().refresh_hint.as_secs() as i64).max(1)
    }

    fn max_token_expiration(&self) -> i64 {
        self.ring.settings().max_token_expiration.as_secs() as i64
    }
}

/// Implements one package's service; the two packages have identical messages.
macro_rules! external_jwt_service {
    ($pkg:ident) => {
        #[tonic::async_trait]
        impl $pkg::external_jwt_signer_server::ExternalJwtSigner for ExternalJwtSigner {
            async fn sign(
                &self,
                req: Request<$pkg::SignJwtRequest>,
            ) -> Result<Response<$pkg::SignJwtResponse>, Status> {
                authorize_peer(&req)?;
                let (header, signature) =
                    ExternalJwtSigner::sign(self, req.into_inner().claims).await?;
                Ok(Response::new($pkg::SignJwtResponse { header, signature }))
            }

            async fn fetch_keys(
                &self,
                req: Request<$pkg::FetchKeysRequest>,
            ) -> Result<Response<$pkg::FetchKeysResponse>, Status> {
                authorize_peer(&req)?;
                let mut keys: Vec<$pkg::Key> = self
                    .keys()?
                    .into_iter()
                    .map(|(key_id, key)| $pkg::Key {
                        key_id,
                        key,
                        exclude_from_oidc_discovery: false,
                    })
                    .collect();
                // Keys of the former key files: verification only, not in OIDC discovery.
                keys.extend(self.ring.legacy_keys().iter().map(|l| $pkg::Key {
                    key_id: l.kid.clone(),
                    key: l.spki_der.clone(),
                    exclude_from_oidc_discovery: true,
                }));
                Ok(Response::new($pkg::FetchKeysResponse {
                    keys,
                    data_timestamp: Some(Self::timestamp()),
                    refresh_hint_seconds: self.refresh_hint(),
                }))
            }

            async fn metadata(
                &self,
                req: Request<$pkg::MetadataRequest>,
            ) -> Result<Response<$pkg::MetadataResponse>, Status> {
                authorize_peer(&req)?;
                Ok(Response::new($pkg::MetadataResponse {
                    max_token_expiration_seconds: self.max_token_expiration(),
                }))
            }
        }
    };
}

external_jwt_service!(v1);
external_jwt_service!(v1alpha1);
