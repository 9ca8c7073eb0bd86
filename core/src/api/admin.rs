//! The admin API (`keygrid.v1.Admin`), used by the `keygrid` CLI.
//!
//! It is served only on a local Unix socket created with mode 0600, and every call checks
//! the caller's kernel-reported uid (SO_PEERCRED): root or the user core runs as. A node
//! credential can never reach it.

use std::sync::Arc;
use std::time::Duration;

use keygrid_proto::keygrid::v1 as pb;
use tonic::transport::server::UdsConnectInfo;
use tonic::{Request, Response, Status};

use super::node::entry_to_pb;
use crate::ca::{sha256_hex, Hierarchy};
use crate::identity::member_id;
use crate::keys::IssuerKeys;
use crate::store::{EntryRecord, Selector, Store, StoreError};

/// Longest selector type or value accepted.
const MAX_SELECTOR_LEN: usize = 1024;
/// Most selectors on one entry.
const MAX_SELECTORS: usize = 64;

/// Limits and defaults the admin API applies.
#[derive(Clone, Debug)]
pub struct AdminSettings {
    /// Join token lifetime when the request sets none.
    pub join_token_ttl: Duration,
    /// Upper bound on an entry's SVID lifetime.
    pub max_svid_ttl: Duration,
    /// Default preparation window of `ca rotate`.
    pub rotation_preparation: Duration,
}

/// Serves `keygrid.v1.Admin`.
pub struct AdminApi {
    store: Arc<Store>,
    ca: Arc<Hierarchy>,
    keys: Arc<dyn IssuerKeys>,
    settings: AdminSettings,
    revoker: Option<Arc<crate::revocation::Revoker>>,
}

/// Checks the caller of the admin socket: only root or core's own user may administer.
pub fn authorize_peer<T>(req: &Request<T>) -> Result<u32, Status> {
    let cred = req
        .extensions()
        .get::<UdsConnectInfo>()
        .and_then(|i| i.peer_cred)
        .ok_or_else(|| {
            Status::unauthenticated("admin calls must come over the local admin socket")
        })?;
    // SAFETY: geteuid(2) takes no arguments, touches no memory and cannot fail; it is
    // `unsafe` only because every foreign call is.
    let own = unsafe { libc::geteuid() };
    let uid = cred.uid();
    if uid == 0 || uid == own {
        Ok(uid)
    } else {
        Err(Status::permission_denied(format!(
            "uid {uid} may not administer KeyGrid; run as root or uid {own}"
        )))
    }
}

fn store_status(e: StoreError) -> Status {
    match e {
        StoreError::Conflict(m) => Status::already_exists(m),
        StoreError::NotFound(m) => Status::not_found(m),
        other => {
            tracing::error!(error = %other, "store failure in admin API");
            Status::internal("internal error; see the core log")
        }
    }
}

fn random_hex(bytes: usize) -> Result<String, Status> {
    let mut buf = vec![0u8; bytes];
    aws_lc_rs::rand::fill(&mut buf).map_err(|_| Status::internal("random generator failed"))?;
    Ok(hex::encode(buf))
}

fn now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

impl AdminApi {
    /// Creates the service.
    pub fn new(
        store: Arc<Store>,
        ca: Arc<Hierarchy>,
        keys: Arc<dyn IssuerKeys>,
        settings: AdminSettings,
    ) -> Self {
        AdminApi {
            store,
            ca,
            keys,
            settings,
            revoker: None,
        }
    }

    /// Enables the revocation RPCs.
    pub fn with_revoker(mut self, revoker: Arc<crate::revocation::Revoker>) -> Self {
        self.revoker = Some(revoker);
        self
    }

    fn show(&self) -> Result<pb::ShowCaResponse, Status> {
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        let bundle = self.ca.bundle_snapshot();
        let mut out = Vec::new();
        for a in self.ca.authorities() {
            let (_, cert) = x509_parser::parse_x509_certificate(a.cert_der())
                .map_err(|_| Status::internal("stored CA certificate does not parse"))?;
            let active = self
                .ca
                .active_at(a.name(), now)
                .map(|act| act.generation() == a.generation())
                .unwrap_or(false);
            out.push(pb::CaInfo {
                name: a.name().to_string(),
                parent: if a.name() == crate::ca::ROOT {
                    String::new()
                } else {
                    crate::ca::ROOT.to_string()
                },
                subject: cert.subject().to_string(),
                algorithm: a.algorithm().name().to_string(),
                sha256_fingerprint: sha256_hex(a.cert_der()),
                not_before_unix: cert.validity().not_before.timestamp(),
                not_after_unix: cert.validity().not_after.timestamp(),
                key_location: a.key_location(),
                generation: a.generation(),
                activate_at_unix: a.activate_at(),
                active,
                in_bundle: bundle.roots.iter().any(|r| r.as_slice() == a.cert_der()),
                certificate_der: a.cert_der().to_vec(),
            });
        }
        Ok(pb::ShowCaResponse {
            authorities: out,
            bundle_sequence: bundle.sequence,
        })
    }

    fn validate_entry(&self, r: &pb::CreateEntryRequest) -> Result<EntryRecord, Status> {
        let td = self.ca.trust_domain();
        let bad = |m: String| Status::invalid_argument(m);
        member_id(&r.spiffe_id, td).map_err(|e| bad(format!("spiffe_id: {e}")))?;
        member_id(&r.parent_id, td).map_err(|e| bad(format!("parent_id: {e}")))?;
        if r.selectors.is_empty() {
            return Err(bad("an entry needs at least one selector".into()));
        }
        if r.selectors.len() > MAX_SELECTORS {
            return Err(bad(format!("at most {MAX_SELECTORS} selectors per entry")));
        }
        let mut selectors = Vec::with_capacity(r.selectors.len());
        for s in &r.selectors {
            if s.r#type.is_empty() || s.value.is_empty() {
                return Err(bad(
                    "selector type and value must both be set (type:value)".into()
                ));
            }
            if s.r#type.len() > MAX_SELECTOR_LEN || s.value.len() > MAX_SELECTOR_LEN {
                return Err(bad(format!(
                    "selectors are limited to {MAX_SELECTOR_LEN} bytes"
                )));
            }
            selectors.push(Selector {
                kind: s.r#type.clone(),
                value: s.value.clone(),
            });
        }
        if r.x509_svid_ttl_seconds < 0
            || r.x509_svid_ttl_seconds as u64 > self.settings.max_svid_ttl.as_secs()
        {
            return Err(bad(format!(
                "x509_svid_ttl_seconds must be between 0 and {}",
                self.settings.max_svid_ttl.as_secs()
            )));
        }
        for name in &r.dns_names {
            rcgen::string::Ia5String::try_from(name.as_str())
                .ok()
                .filter(|n| !n.as_str().is_empty() && n.as_str().len() <= 253)
                .ok_or_else(|| bad(format!("dns name {name:?} is not valid")))?;
        }
        if r.hint.len() > 1024 {
            return Err(bad("hint is limited to 1024 bytes".into()));
        }
        Ok(EntryRecord {
            id: random_hex(16)?,
            spiffe_id: r.spiffe_id.clone(),
            parent_id: r.parent_id.clone(),
            selectors,
            x509_svid_ttl: r.x509_svid_ttl_seconds,
            dns_names: r.dns_names.clone(),
            hint: r.hint.clone(),
        })
    }
}

#[tonic::async_trait]
impl pb::admin_server::Admin for AdminApi {
    async fn create_entry(
        &self,
        req: Request<pb::CreateEntryRequest>,
    ) -> Result<Response<pb::Entry>, Status> {
        let uid = authorize_peer(&req)?;
        let entry = self.validate_entry(req.get_ref())?;
        let store = self.store.clone();
        let e = entry.clone();
        let actor = format!("admin uid {uid}");
        tokio::task::spawn_blocking(move || store.create_entry_by(&actor, &e, now()))
            .await
            .map_err(|_| Status::internal("worker task failed"))?
            .map_err(store_status)?;
        tracing::info!(uid, entry = %entry.id, spiffe_id = %entry.spiffe_id, "entry created");
        Ok(Response::new(entry_to_pb(entry)))
    }

    async fn list_entries(
        &self,
        req: Request<pb::ListEntriesRequest>,
    ) -> Result<Response<pb::ListEntriesResponse>, Status> {
        authorize_peer(&req)?;
        let entries = self.store.entries(None).map_err(store_status)?;
        Ok(Response::new(pb::ListEntriesResponse {
            entries: entries.into_iter().map(entry_to_pb).collect(),
        }))
    }

    async fn delete_entry(
        &self,
        req: Request<pb::DeleteEntryRequest>,
    ) -> Result<Response<pb::DeleteEntryResponse>, Status> {
        let uid = authorize_peer(&req)?;
        let id = req.into_inner().id;
        if id.is_empty() {
            return Err(Status::invalid_argument("id is required"));
        }
        self.store
            .delete_entry_by(&format!("admin uid {uid}"), &id)
            .map_err(store_status)?;
        tracing::info!(uid, entry = %id, "entry deleted");
        Ok(Response::new(pb::DeleteEntryResponse {}))
    }

    async fn create_join_token(
        &self,
        req: Request<pb::CreateJoinTokenRequest>,
    ) -> Result<Response<pb::CreateJoinTokenResponse>, Status> {
        let uid = authorize_peer(&req)?;
        let r = req.into_inner();
        member_id(&r.agent_spiffe_id, self.ca.trust_domain())
            .map_err(|e| Status::invalid_argument(format!("agent_spiffe_id: {e}")))?;
        if r.ttl_seconds < 0 || r.ttl_seconds > 30 * 24 * 3600 {
            return Err(Status::invalid_argument(
                "ttl_seconds must be between 0 and 30 days",
            ));
        }
        let ttl = if r.ttl_seconds == 0 {
            self.settings.join_token_ttl.as_secs() as i64
        } else {
            r.ttl_seconds
        };
        let token = random_hex(32)?;
        let expires_at = now() + ttl;
        self.store
            .create_join_token_by(
                &format!("admin uid {uid}"),
                &sha256_hex(token.as_bytes()),
                &r.agent_spiffe_id,
                expires_at,
                now(),
            )
            .map_err(store_status)?;
        // The token itself is returned once and never logged or stored.
        tracing::info!(uid, agent = %r.agent_spiffe_id, expires_at, "join token created");
        Ok(Response::new(pb::CreateJoinTokenResponse {
            token,
            expires_at_unix: expires_at,
        }))
    }

    async fn show_ca(
        &self,
        req: Request<pb::ShowCaRequest>,
    ) -> Result<Response<pb::ShowCaResponse>, Status> {
        authorize_peer(&req)?;
        Ok(Response::new(self.show()?))
    }

    async fn rotate_ca(
        &self,
        req: Request<pb::RotateCaRequest>,
    ) -> Result<Response<pb::ShowCaResponse>, Status> {
        let uid = authorize_peer(&req)?;
        let r = req.into_inner();
        if r.preparation_seconds < 0 {
            return Err(Status::invalid_argument(
                "preparation_seconds must not be negative",
            ));
        }
        let preparation = if r.preparation_seconds == 0 {
            self.settings.rotation_preparation
        } else {
            Duration::from_secs(r.preparation_seconds as u64)
        };
        let (ca, store, keys, issuer) = (
            self.ca.clone(),
            self.store.clone(),
            self.keys.clone(),
            r.issuer.clone(),
        );
        let created = tokio::task::spawn_blocking(move || {
            ca.rotate(
                &store,
                keys.as_ref(),
                &issuer,
                preparation,
                time::OffsetDateTime::now_utc(),
            )
        })
        .await
        .map_err(|_| Status::internal("worker task failed"))?
        .map_err(|e| match e {
            crate::ca::CaError::InvalidRequest(m) => Status::invalid_argument(m),
            other => {
                tracing::error!(error = %other, "CA rotation failed");
                Status::internal("CA rotation failed; see the core log")
            }
        })?;
        for a in &created {
            let _ = self.store.record_event(&crate::store::EventRecord {
                at: time::OffsetDateTime::now_utc().unix_timestamp(),
                kind: "ca_rotation".into(),
                actor: format!("admin uid {uid}"),
                subject: format!("{} generation {}", a.name(), a.generation()),
                rule: String::new(),
                detail: format!(
                    "activates at {}; sha256 {}",
                    a.activate_at(),
                    sha256_hex(a.cert_der())
                ),
            });
            tracing::info!(
                uid,
                issuer = a.name(),
                generation = a.generation(),
                activate_at = a.activate_at(),
                "CA rotated"
            );
        }
        Ok(Response::new(self.show()?))
    }

    async fn revoke_certificate(
        &self,
        req: Request<pb::RevokeCertificateRequest>,
    ) -> Result<Response<pb::RevokeCertificateResponse>, Status> {
        let uid = authorize_peer(&req)?;
        let revoker = self
            .revoker
            .clone()
            .ok_or_else(|| Status::unimplemented("revocation is not enabled"))?;
        let request = super::revocation::revoke_request(req.into_inner(), uid)?;
        let (rev, cert) = tokio::task::spawn_blocking(move || revoker.revoke(&request))
            .await
            .map_err(|_| Status::internal("worker task failed"))?
            .map_err(super::revocation::revoke_status)?;
        Ok(Response::new(pb::RevokeCertificateResponse {
            certificate: Some(super::revocation::certificate_info(cert, Some(rev))),
        }))
    }

    async fn list_certificates(
        &self,
        req: Request<pb::ListCertificatesRequest>,
    ) -> Result<Response<pb::ListCertificatesResponse>, Status> {
        authorize_peer(&req)?;
        let r = req.into_inner();
        let limit = match r.limit {
            0 => 1000,
            n if (1..=100_000).contains(&n) => n,
            _ => {
                return Err(Status::invalid_argument(
                    "limit must be between 0 and 100000",
                ))
            }
        };
        let store = self.store.clone();
        let rows =
            tokio::task::spawn_blocking(move || store.list_certificates(r.revoked_only, limit))
                .await
                .map_err(|_| Status::internal("worker task failed"))?
                .map_err(store_status)?;
        Ok(Response::new(pb::ListCertificatesResponse {
            certificates: rows
                .into_iter()
                .map(|(c, r)| super::revocation::certificate_info(c, r))
                .collect(),
        }))
    }
}
