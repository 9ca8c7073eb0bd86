//! The node API (`keygrid.v1.Node`): how agents attest and obtain identities.

use std::sync::Arc;

use keygrid_proto::keygrid::v1 as pb;
use tonic::{Request, Response, Status};

use super::blocking;
use crate::issuance::Issuance;
use crate::jwt::JwtIssuer;
use crate::store::EntryRecord;

/// Serves `keygrid.v1.Node`.
pub struct NodeApi {
    issuance: Arc<Issuance>,
    jwt: Option<Arc<JwtIssuer>>,
    federation: Arc<crate::federation::FederatedBundles>,
}

impl NodeApi {
    /// Creates the service.
    pub fn new(issuance: Arc<Issuance>) -> Self {
        NodeApi {
            issuance,
            jwt: None,
            federation: Arc::default(),
        }
    }

    /// Hands agents these federated bundles with the trust domain's own.
    pub fn with_federation(mut self, federation: Arc<crate::federation::FederatedBundles>) -> Self {
        self.federation = federation;
        self
    }

    /// Enables JWT-SVIDs and the JWT bundle, signed by `jwt`.
    pub fn with_jwt(mut self, jwt: Arc<JwtIssuer>) -> Self {
        self.jwt = Some(jwt);
        self
    }

    fn jwt(&self) -> Result<Arc<JwtIssuer>, Status> {
        self.jwt
            .clone()
            .ok_or_else(|| Status::unimplemented("JWT-SVIDs are not enabled on this server"))
    }

    fn bundle(&self) -> pb::Bundle {
        let h = self.issuance.hierarchy();
        let snapshot = h.bundle_snapshot();
        pb::Bundle {
            trust_domain: h.trust_domain().to_string(),
            x509_authorities: snapshot.roots.clone(),
            sequence: snapshot.sequence.max(0) as u64,
            federated: self.federation.current(),
        }
    }

    /// Authenticates the caller by its TLS client certificate.
    async fn caller<T>(&self, req: &Request<T>) -> Result<String, Status> {
        let certs = req
            .peer_certs()
            .ok_or_else(|| Status::unauthenticated("a node client certificate is required"))?;
        let leaf = certs
            .first()
            .ok_or_else(|| Status::unauthenticated("a node client certificate is required"))?
            .to_vec();
        let issuance = self.issuance.clone();
        blocking(move || issuance.authenticate_node(&leaf))
            .await
            .map_err(|s| match s.code() {
                tonic::Code::PermissionDenied => Status::unauthenticated(s.message()),
                _ => s,
            })
    }
}

/// Converts a stored entry to its wire form (shared with the admin API).
pub fn entry_to_pb(e: EntryRecord) -> pb::Entry {
    pb::Entry {
        id: e.id,
        spiffe_id: e.spiffe_id,
        parent_id: e.parent_id,
        selectors: e
            .selectors
            .into_iter()
            .map(|s| pb::Selector {
                r#type: s.kind,
                value: s.value,
            })
            .collect(),
        x509_svid_ttl_seconds: e.x509_svid_ttl,
        dns_names: e.dns_names,
        hint: e.hint,
    }
}

#[tonic::async_trait]
impl pb::node_server::Node for NodeApi {
    async fn attest_join_token(
        &self,
        req: Request<pb::AttestJoinTokenRequest>,
    ) -> Result<Response<pb::NodeCredential>, Status> {
        let pb::AttestJoinTokenRequest { token, csr } = req.into_inner();
        let issuance = self.issuance.clone();
        let cred = blocking(move || issuance.redeem_join_token(&token, &csr)).await?;
        Ok(Response::new(pb::NodeCredential {
            spiffe_id: cred.spiffe_id,
            cert_chain: cred.chain,
            bundle: Some(self.bundle()),
        }))
    }

    async fn renew_node_credential(
        &self,
        req: Request<pb::RenewNodeCredentialRequest>,
    ) -> Result<Response<pb::NodeCredential>, Status> {
        let node = self.caller(&req).await?;
        let csr = req.into_inner().csr;
        let issuance = self.issuance.clone();
        let cred = blocking(move || issuance.renew_node(&node, &csr)).await?;
        Ok(Response::new(pb::NodeCredential {
            spiffe_id: cred.spiffe_id,
            cert_chain: cred.chain,
            bundle: Some(self.bundle()),
        }))
    }

    async fn fetch_entries(
        &self,
        req: Request<pb::FetchEntriesRequest>,
    ) -> Result<Response<pb::FetchEntriesResponse>, Status> {
        let node = self.caller(&req).await?;
        let issuance = self.issuance.clone();
        let entries = blocking(move || issuance.entries_for_node(&node)).await?;
        Ok(Response::new(pb::FetchEntriesResponse {
            entries: entries.into_iter().map(entry_to_pb).collect(),
        }))
    }

    async fn mint_x509svid(
        &self,
        req: Request<pb::MintX509svidRequest>,
    ) -> Result<Response<pb::MintX509svidResponse>, Status> {
        let node = self.caller(&req).await?;
        let pb::MintX509svidRequest {
            entry_id,
            csr,
            default_spiffe_id,
        } = req.into_inner();
        let issuance = self.issuance.clone();
        let svid = blocking(move || {
            issuance.mint_x509_svid_for(&node, &entry_id, &default_spiffe_id, &csr)
        })
        .await?;
        Ok(Response::new(pb::MintX509svidResponse {
            spiffe_id: svid.spiffe_id,
            cert_chain: svid.chain,
            bundle: Some(self.bundle()),
        }))
    }

    async fn fetch_bundle(
        &self,
        req: Request<pb::FetchBundleRequest>,
    ) -> Result<Response<pb::Bundle>, Status> {
        self.caller(&req).await?;
        Ok(Response::new(self.bundle()))
    }

    async fn mint_jwtsvid(
        &self,
        req: Request<pb::MintJwtsvidRequest>,
    ) -> Result<Response<pb::MintJwtsvidResponse>, Status> {
        let node = self.caller(&req).await?;
        let jwt = self.jwt()?;
        let pb::MintJwtsvidRequest {
            entry_id,
            audience,
            default_spiffe_id,
        } = req.into_inner();
        let issuance = self.issuance.clone();
        let (spiffe_id, signed) = blocking(move || {
            issuance.mint_jwt_svid(&jwt, &node, &entry_id, &default_spiffe_id, &audience)
        })
        .await?;
        Ok(Response::new(pb::MintJwtsvidResponse {
            spiffe_id,
            token: signed.token,
            expires_at: signed.expires_at,
        }))
    }

    async fn fetch_jwt_bundle(
        &self,
        req: Request<pb::FetchJwtBundleRequest>,
    ) -> Result<Response<pb::JwtBundle>, Status> {
        self.caller(&req).await?;
        let jwks = self.jwt()?.jwks().map_err(|e| {
            tracing::error!(error = %e, "JWKS could not be built");
            Status::internal("internal error; see the core log")
        })?;
        Ok(Response::new(pb::JwtBundle {
            trust_domain: self.issuance.hierarchy().trust_domain().to_string(),
            jwks,
        }))
    }
}
