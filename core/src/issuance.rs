//! Issuance: the decisions between an authenticated request and a signed certificate.
//!
//! The gRPC layer parses and authenticates; this module decides (is the token valid, may
//! this node serve this entry), asks the CA to sign, and records the result in the store
//! before anything is returned. A refusal writes nothing.

use std::sync::Arc;
use std::time::Duration;

use rcgen::CertificateSigningRequestParams;
use rustls_pki_types::CertificateSigningRequestDer;
use time::OffsetDateTime;

use crate::ca::{self, profiles, Authority, CaError, Hierarchy, Issued};
use crate::jwt::{self, JwtIssuer, SignedJwt};
use crate::policy::{csr_key_info, Decision, Policy, PolicyRequest};
use crate::store::{CertificateRecord, EntryRecord, EventRecord, NodeRecord, Store, StoreError};

/// The largest CSR accepted. Real CSRs are well under 2 KiB.
pub const MAX_CSR_BYTES: usize = 16 * 1024;

/// Why a request was not honoured. Each maps to one gRPC status.
#[derive(Debug, thiserror::Error)]
pub enum IssueError {
    /// The request is malformed.
    #[error("{0}")]
    InvalidArgument(String),
    /// The caller is not allowed what it asked.
    #[error("{0}")]
    PermissionDenied(String),
    /// Something on KeyGrid's side failed; details are logged, not returned.
    #[error("internal error")]
    Internal,
}

impl From<StoreError> for IssueError {
    fn from(e: StoreError) -> Self {
        tracing::error!(error = %e, "store failure during issuance");
        IssueError::Internal
    }
}

impl From<CaError> for IssueError {
    fn from(e: CaError) -> Self {
        match e {
            CaError::InvalidRequest(msg) => IssueError::InvalidArgument(msg),
            other => {
                tracing::error!(error = %other, "CA failure during issuance");
                IssueError::Internal
            }
        }
    }
}

/// Lifetimes the issuance path applies.
#[derive(Clone, Debug)]
pub struct IssuanceSettings {
    /// X.509-SVID lifetime when the entry sets none.
    pub default_svid_ttl: Duration,
    /// Cap on any X.509-SVID lifetime.
    pub max_svid_ttl: Duration,
    /// Node certificate lifetime.
    pub node_cert_ttl: Duration,
    /// JWT-SVID lifetime.
    pub jwt_svid_ttl: Duration,
    /// Whether nodes may mint pod default identities (`/ns/<ns>/sa/<sa>`) without an entry.
    pub default_identities: bool,
}

/// An identity a node has been found to be allowed to mint.
#[derive(Clone, Debug)]
pub struct AuthorizedIdentity {
    /// The SPIFFE ID.
    pub spiffe_id: String,
    /// DNS SANs for the X.509-SVID.
    pub dns_names: Vec<String>,
    /// Requested X.509-SVID lifetime in seconds; 0 for the default.
    pub ttl_seconds: i64,
}

/// A node certificate and the chain that goes with it.
#[derive(Clone, Debug)]
pub struct NodeCredential {
    /// The node's SPIFFE ID.
    pub spiffe_id: String,
    /// Leaf first, then the nodes CA.
    pub chain: Vec<Vec<u8>>,
}

/// An X.509-SVID just minted.
#[derive(Clone, Debug)]
pub struct MintedSvid {
    /// The SVID's SPIFFE ID.
    pub spiffe_id: String,
    /// Leaf first, then the workloads CA.
    pub chain: Vec<Vec<u8>>,
}

/// The issuance service shared by the node API handlers.
pub struct Issuance {
    store: Arc<Store>,
    ca: Arc<Hierarchy>,
    policy: Policy,
    settings: IssuanceSettings,
    revocation_urls: Option<crate::revocation::pointers::RevocationUrls>,
}

/// Parses a DER CSR and checks its self-signature (proof of possession of the key).
pub(crate) fn parse_csr(der: &[u8]) -> Result<CertificateSigningRequestParams, IssueError> {
    if der.is_empty() {
        return Err(IssueError::InvalidArgument("csr is required".into()));
    }
    if der.len() > MAX_CSR_BYTES {
        return Err(IssueError::InvalidArgument(format!(
            "csr is {} bytes; the limit is {MAX_CSR_BYTES}",
            der.len()
        )));
    }
    CertificateSigningRequestParams::from_der(&CertificateSigningRequestDer::from(der))
        .map_err(|e| IssueError::InvalidArgument(format!("csr rejected: {e}")))
}

/// Profile names recorded in the store.
pub const PROFILE_NODE: &str = "node";
/// Profile name of X.509-SVIDs.
pub const PROFILE_X509_SVID: &str = "x509-svid";

impl Issuance {
    /// Creates the service.
    pub fn new(
        store: Arc<Store>,
        ca: Arc<Hierarchy>,
        policy: Policy,
        settings: IssuanceSettings,
    ) -> Self {
        Issuance {
            store,
            ca,
            policy,
            settings,
            revocation_urls: None,
        }
    }

    /// Makes node certificates carry AIA (OCSP, caIssuers) and CDP pointing at `urls`.
    pub fn with_revocation_urls(
        mut self,
        urls: crate::revocation::pointers::RevocationUrls,
    ) -> Self {
        self.revocation_urls = Some(urls);
        self
    }

    /// Asks the policy engine; a refusal is recorded as an event (and nothing else is
    /// written) and becomes PermissionDenied naming the rule.
    pub(crate) fn apply_policy(
        &self,
        actor: &str,
        subject: &str,
        req: &PolicyRequest,
    ) -> Result<Duration, IssueError> {
        match self.policy.check(req) {
            Decision::Allow { ttl, notes } => {
                for n in notes {
                    tracing::info!(%actor, %subject, profile = %req.profile, "{n}");
                }
                Ok(ttl)
            }
            Decision::Refuse { rule, reason } => {
                self.refuse(actor, subject, &rule, &reason)?;
                Err(IssueError::PermissionDenied(format!(
                    "refused by policy rule {rule}: {reason}"
                )))
            }
        }
    }

    /// Records a refusal. If even that fails, the request fails as an internal error.
    pub(crate) fn refuse(
        &self,
        actor: &str,
        subject: &str,
        rule: &str,
        reason: &str,
    ) -> Result<(), IssueError> {
        tracing::warn!(%actor, %subject, %rule, %reason, "issuance refused");
        self.store.record_event(&EventRecord {
            at: OffsetDateTime::now_utc().unix_timestamp(),
            kind: "policy_refusal".into(),
            actor: actor.to_string(),
            subject: subject.to_string(),
            rule: rule.to_string(),
            detail: reason.to_string(),
        })?;
        Ok(())
    }

    /// The CA hierarchy.
    pub fn hierarchy(&self) -> &Hierarchy {
        &self.ca
    }

    /// The store issuance records go to.
    pub(crate) fn store(&self) -> &Store {
        &self.store
    }

    /// Exchanges a one-time join token and a CSR for a node certificate.
    pub fn redeem_join_token(
        &self,
        token: &str,
        csr_der: &[u8],
    ) -> Result<NodeCredential, IssueError> {
        if token.is_empty() || token.len() > 256 {
            return Err(IssueError::InvalidArgument(
                "token must be 1 to 256 characters".into(),
            ));
        }
        let csr = parse_csr(csr_der)?;
        let now = OffsetDateTime::now_utc();
        let token_hash = ca::sha256_hex(token.as_bytes());
        let agent_id = self
            .store
            .join_token_agent(&token_hash, now.unix_timestamp())?
            .ok_or_else(|| IssueError::PermissionDenied("unknown or expired join token".into()))?;
        let (issued, cert, nodes_ca) =
            self.sign_node(&agent_id, "join_token", csr_der, &csr, now)?;
        let node = NodeRecord {
            spiffe_id: agent_id.clone(),
            attestation: "join_token".into(),
            serial: issued.serial_hex.clone(),
            not_after: issued.not_after,
        };
        match self
            .store
            .redeem_join_token(&token_hash, &node, &cert, now.unix_timestamp())
        {
            Ok(()) => {}
            // Another request redeemed it between our check and now: this one gets nothing.
            Err(StoreError::NotFound(_)) => {
                return Err(IssueError::PermissionDenied(
                    "unknown or expired join token".into(),
                ))
            }
            Err(e) => return Err(e.into()),
        }
        tracing::info!(node = %agent_id, serial = %issued.serial_hex, "node attested with join token");
        Ok(self.node_credential(agent_id, issued, &nodes_ca))
    }

    /// Issues a fresh node certificate to an already authenticated node.
    pub fn renew_node(&self, node_id: &str, csr_der: &[u8]) -> Result<NodeCredential, IssueError> {
        let csr = parse_csr(csr_der)?;
        let now = OffsetDateTime::now_utc();
        let existing = self
            .store
            .node(node_id)?
            .ok_or_else(|| IssueError::PermissionDenied("node is not registered".into()))?;
        let (issued, cert, nodes_ca) =
            self.sign_node(node_id, &existing.attestation, csr_der, &csr, now)?;
        let node = NodeRecord {
            serial: issued.serial_hex.clone(),
            not_after: issued.not_after,
            ..existing
        };
        self.store.renew_node(&node, &cert, now.unix_timestamp())?;
        tracing::info!(node = %node_id, serial = %issued.serial_hex, "node certificate renewed");
        Ok(self.node_credential(node_id.to_string(), issued, &nodes_ca))
    }

    fn sign_node(
        &self,
        node_id: &str,
        attestation: &str,
        csr_der: &[u8],
        csr: &CertificateSigningRequestParams,
        now: OffsetDateTime,
    ) -> Result<(Issued, CertificateRecord, Arc<Authority>), IssueError> {
        let key = csr_key_info(csr_der).map_err(IssueError::InvalidArgument)?;
        let ttl = self.apply_policy(
            node_id,
            node_id,
            &PolicyRequest {
                profile: PROFILE_NODE.into(),
                key: Some(key),
                ttl: self.settings.node_cert_ttl,
                spiffe_id: Some(node_id.to_string()),
                attestation: attestation.to_string(),
                ..Default::default()
            },
        )?;
        let mut params = profiles::node(node_id)?;
        let nodes = self.ca.nodes();
        if let Some(urls) = &self.revocation_urls {
            urls.apply(&mut params, nodes.name())?;
        }
        let issued = nodes.sign(params, &csr.public_key, ttl, now)?;
        let cert = issued.record(&nodes, PROFILE_NODE, node_id);
        Ok((issued, cert, nodes))
    }

    fn node_credential(&self, spiffe_id: String, issued: Issued, ca: &Authority) -> NodeCredential {
        NodeCredential {
            spiffe_id,
            chain: vec![issued.der, ca.cert_der().to_vec()],
        }
    }

    /// Identifies a node from the leaf certificate it presented over TLS.
    ///
    /// TLS already checked the chain up to the root. This checks that the leaf was issued
    /// by the nodes CA (an X.509-SVID, which also chains to the root, is refused) and that
    /// the store recorded it as a node certificate for the SPIFFE ID it names.
    pub fn authenticate_node(&self, leaf_der: &[u8]) -> Result<String, IssueError> {
        let spiffe_id = self.authenticate_credential(leaf_der, PROFILE_NODE, "node")?;
        if self.store.node(&spiffe_id)?.is_none() {
            return Err(IssueError::PermissionDenied(
                "not a node credential: node is not registered".into(),
            ));
        }
        Ok(spiffe_id)
    }

    /// Identifies a TLS client by a credential KeyGrid issued under `profile` from the
    /// nodes CA: TLS checked the chain up to the root; this checks that the leaf came from
    /// the nodes CA (any generation: credentials outlive a rotation; an X.509-SVID, which
    /// also chains to the root, is refused) and that the store recorded that serial under
    /// `profile` for the SPIFFE ID the certificate names. `what` names the credential in
    /// refusals.
    pub fn authenticate_credential(
        &self,
        leaf_der: &[u8],
        profile: &str,
        what: &str,
    ) -> Result<String, IssueError> {
        let denied =
            |why: &str| IssueError::PermissionDenied(format!("not a {what} credential: {why}"));
        let (_, leaf) = x509_parser::parse_x509_certificate(leaf_der)
            .map_err(|_| denied("certificate does not parse"))?;
        let from_nodes_ca = self.ca.generations_of(crate::ca::NODES).iter().any(|ca| {
            x509_parser::parse_x509_certificate(ca.cert_der())
                .map(|(_, c)| c.subject().as_raw() == leaf.issuer().as_raw())
                .unwrap_or(false)
        });
        if !from_nodes_ca {
            return Err(denied("not issued by the nodes CA"));
        }
        let spiffe_id = leaf
            .subject_alternative_name()
            .ok()
            .flatten()
            .and_then(|san| {
                san.value.general_names.iter().find_map(|n| match n {
                    x509_parser::extensions::GeneralName::URI(u) => Some(u.to_string()),
                    _ => None,
                })
            })
            .ok_or_else(|| denied("no SPIFFE ID"))?;
        let serial = hex::encode(leaf.raw_serial());
        let rec = self
            .store
            .certificate(crate::ca::NODES, &serial)?
            .ok_or_else(|| denied("unknown certificate"))?;
        if rec.profile != profile || rec.subject != spiffe_id {
            return Err(denied(&format!(
                "certificate was not issued to this {what}"
            )));
        }
        Ok(spiffe_id)
    }

    /// Entries the node may serve.
    pub fn entries_for_node(&self, node_id: &str) -> Result<Vec<EntryRecord>, IssueError> {
        Ok(self.store.entries(Some(node_id))?)
    }

    /// Decides which identity a node may have minted: the entry `entry_id` if the node is
    /// its parent, else (with `entry_id` empty) the pod default ID `default_spiffe_id` if
    /// default identities are enabled. Anything else is refused and recorded as an event.
    pub fn authorize_identity(
        &self,
        node_id: &str,
        entry_id: &str,
        default_spiffe_id: &str,
    ) -> Result<AuthorizedIdentity, IssueError> {
        if !entry_id.is_empty() {
            let Some(entry) = self
                .store
                .entry(entry_id)?
                .filter(|e| e.parent_id == node_id)
            else {
                self.refuse(
                    node_id,
                    entry_id,
                    "entry-parent",
                    "node asked for an entry it is not the parent of",
                )?;
                return Err(IssueError::PermissionDenied(format!(
                    "node {node_id} is not authorised for entry {entry_id}"
                )));
            };
            return Ok(AuthorizedIdentity {
                spiffe_id: entry.spiffe_id,
                dns_names: entry.dns_names,
                ttl_seconds: entry.x509_svid_ttl,
            });
        }
        if default_spiffe_id.is_empty() {
            return Err(IssueError::InvalidArgument(
                "entry_id or default_spiffe_id is required".into(),
            ));
        }
        let td = self.ca.trust_domain();
        let allowed = self.settings.default_identities
            && crate::default_identity::parse_default_id(default_spiffe_id, td).is_some();
        if !allowed {
            let reason = if self.settings.default_identities {
                "node asked for an identity outside its scope: no entry grants it and it is not a pod default identity"
            } else {
                "node asked for an identity outside its scope: default identities are disabled"
            };
            self.refuse(node_id, default_spiffe_id, "default-identity", reason)?;
            return Err(IssueError::PermissionDenied(format!(
                "node {node_id} is not authorised for {default_spiffe_id}: no entry and no default identity allows it"
            )));
        }
        Ok(AuthorizedIdentity {
            spiffe_id: default_spiffe_id.to_string(),
            dns_names: vec![],
            ttl_seconds: 0,
        })
    }

    /// Signs an X.509-SVID for `entry_id` if the entry belongs to `node_id`.
    pub fn mint_x509_svid(
        &self,
        node_id: &str,
        entry_id: &str,
        csr_der: &[u8],
    ) -> Result<MintedSvid, IssueError> {
        if entry_id.is_empty() {
            return Err(IssueError::InvalidArgument("entry_id is required".into()));
        }
        self.mint_x509_svid_for(node_id, entry_id, "", csr_der)
    }

    /// Signs an X.509-SVID for an entry of `node_id` or, with `entry_id` empty, for a pod
    /// default identity (see [`Issuance::authorize_identity`]).
    pub fn mint_x509_svid_for(
        &self,
        node_id: &str,
        entry_id: &str,
        default_spiffe_id: &str,
        csr_der: &[u8],
    ) -> Result<MintedSvid, IssueError> {
        let subject = if entry_id.is_empty() {
            default_spiffe_id
        } else {
            entry_id
        };
        let csr = match parse_csr(csr_der) {
            Ok(c) => c,
            Err(e) => {
                self.refuse(node_id, subject, "csr", &e.to_string())?;
                return Err(e);
            }
        };
        let identity = self.authorize_identity(node_id, entry_id, default_spiffe_id)?;
        // Defence in depth: an identity outside the trust domain is never served.
        if let Err(reason) = crate::identity::member_id(&identity.spiffe_id, self.ca.trust_domain())
        {
            self.refuse(node_id, &identity.spiffe_id, "trust-domain", &reason)?;
            return Err(IssueError::PermissionDenied(format!(
                "refused by rule trust-domain: {reason}"
            )));
        }
        // A CSR may not ask for names the entry does not grant: refuse rather than ignore.
        let granted = |san: &rcgen::SanType| match san {
            rcgen::SanType::URI(u) => u.as_str() == identity.spiffe_id,
            rcgen::SanType::DnsName(d) => identity.dns_names.iter().any(|n| n == d.as_str()),
            _ => false,
        };
        if let Some(extra) = csr.params.subject_alt_names.iter().find(|s| !granted(s)) {
            let reason = format!("csr requests a name the entry does not grant: {extra:?}");
            self.refuse(node_id, &identity.spiffe_id, "csr-names", &reason)?;
            return Err(IssueError::InvalidArgument(reason));
        }
        let requested = if identity.ttl_seconds > 0 {
            Duration::from_secs(identity.ttl_seconds as u64)
        } else {
            self.settings.default_svid_ttl
        }
        .min(self.settings.max_svid_ttl);
        let attestation = self
            .store
            .node(node_id)?
            .map(|n| n.attestation)
            .unwrap_or_default();
        let key = csr_key_info(csr_der).map_err(IssueError::InvalidArgument)?;
        let ttl = self.apply_policy(
            node_id,
            &identity.spiffe_id,
            &PolicyRequest {
                profile: PROFILE_X509_SVID.into(),
                key: Some(key),
                ttl: requested,
                spiffe_id: Some(identity.spiffe_id.clone()),
                dns_names: identity.dns_names.clone(),
                attestation,
                ..Default::default()
            },
        )?;
        let now = OffsetDateTime::now_utc();
        let params = profiles::x509_svid(&identity.spiffe_id, &identity.dns_names)?;
        let workloads = self.ca.workloads();
        let issued = workloads.sign(params, &csr.public_key, ttl, now)?;
        if issued.clamped {
            tracing::warn!(spiffe_id = %identity.spiffe_id, "SVID lifetime cut to the workloads CA's expiry");
        }
        self.store.record_certificate(&issued.record(
            &workloads,
            PROFILE_X509_SVID,
            &identity.spiffe_id,
        ))?;
        tracing::debug!(spiffe_id = %identity.spiffe_id, node = %node_id, serial = %issued.serial_hex, "X.509-SVID issued");
        Ok(MintedSvid {
            spiffe_id: identity.spiffe_id,
            chain: vec![issued.der, workloads.cert_der().to_vec()],
        })
    }

    /// Signs a JWT-SVID with `jwt` for an entry of `node_id` or a pod default identity.
    pub fn mint_jwt_svid(
        &self,
        jwt: &JwtIssuer,
        node_id: &str,
        entry_id: &str,
        default_spiffe_id: &str,
        audience: &[String],
    ) -> Result<(String, SignedJwt), IssueError> {
        jwt::check_audience(audience).map_err(|e| IssueError::InvalidArgument(e.to_string()))?;
        let identity = self.authorize_identity(node_id, entry_id, default_spiffe_id)?;
        if let Err(reason) = crate::identity::member_id(&identity.spiffe_id, self.ca.trust_domain())
        {
            self.refuse(node_id, &identity.spiffe_id, "trust-domain", &reason)?;
            return Err(IssueError::PermissionDenied(format!(
                "refused by rule trust-domain: {reason}"
            )));
        }
        let signed = jwt
            .sign(
                &identity.spiffe_id,
                audience,
                self.settings.jwt_svid_ttl,
                OffsetDateTime::now_utc(),
            )
            .map_err(|e| match e {
                jwt::JwtError::InvalidRequest(m) => IssueError::InvalidArgument(m),
                other => {
                    tracing::error!(error = %other, "JWT-SVID signing failed");
                    IssueError::Internal
                }
            })?;
        tracing::debug!(spiffe_id = %identity.spiffe_id, node = %node_id, "JWT-SVID issued");
        Ok((identity.spiffe_id, signed))
    }
}
