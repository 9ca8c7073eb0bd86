//! The enrollment decision: who is asking (client certificate or lab user), for which
//! identity (from the CSR, checked against the caller), then policy, the nodes CA and the
//! store, in that order. Every refusal after the request is understood is recorded as a
//! `policy_refusal` event through [`Issuance::refuse`]; nothing is written on a refusal
//! except that event.

use std::net::IpAddr;
use std::sync::Arc;

use axum::http::StatusCode;
use time::OffsetDateTime;
use x509_parser::certification_request::X509CertificationRequest;
use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::prelude::FromDer;
use x509_parser::x509::X509Name;

use super::auth::{check_basic, ClientVerifier};
use super::binding;
use super::config::EstConfig;
use super::listener::Peer;
use super::{label_profile, EstError};
use crate::ca::{profiles, NODES};
use crate::issuance::{parse_csr, Issuance, IssueError, PROFILE_NODE};
use crate::policy::{csr_key_info, PolicyRequest};
use crate::store::{CertificateRecord, EkBinding, NodeRecord, PendingEnrollment, StoreError};

/// `simpleenroll` or `simplereenroll`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Operation {
    /// First enrollment for this identity (RFC 7030 §4.2.1).
    Enroll,
    /// Renewal authenticated by the certificate being renewed (§4.2.2).
    Reenroll,
}

/// What an enrollment produced.
#[derive(Debug)]
pub enum Outcome {
    /// Leaf first, then the nodes CA.
    Issued(Vec<Vec<u8>>),
    /// Waiting for an operator: answer 202 with Retry-After.
    Deferred,
}

/// Who the caller turned out to be.
#[derive(Clone, Debug)]
enum Caller {
    /// A node, by its node certificate.
    Node {
        spiffe_id: String,
        attestation: String,
    },
    /// The holder of a certificate KeyGrid issued under a label's profile (re-enrollment).
    Holder {
        record: CertificateRecord,
        leaf: Vec<u8>,
    },
    /// A lab user (HTTP Basic, only when configured).
    Lab { user: String },
}

impl Caller {
    fn actor(&self) -> String {
        match self {
            Caller::Node { spiffe_id, .. } => spiffe_id.clone(),
            Caller::Holder { record, .. } => {
                format!("{} (serial {})", record.subject, record.serial)
            }
            Caller::Lab { user } => format!("est lab user {user}"),
        }
    }
}

/// The name a node has in Kubernetes: the last path segment of its SPIFFE ID
/// (`spiffe://<td>/keygrid/node/<name>`).
pub fn node_name(spiffe_id: &str) -> &str {
    spiffe_id.rsplit('/').next().unwrap_or_default()
}

/// Whether `name` is a Kubernetes node name (a DNS-1123 subdomain).
pub fn valid_node_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        && !name.starts_with(['-', '.'])
        && !name.ends_with(['-', '.'])
}

/// The identity a CSR asks for, as comparable strings.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Names {
    /// Subject attributes as (OID, value), sorted.
    pub subject: Vec<(String, String)>,
    /// SANs as `dns:`, `ip:`, `uri:`, `other:` strings, sorted.
    pub sans: Vec<String>,
}

impl Names {
    fn common_name(&self) -> Option<&str> {
        self.subject
            .iter()
            .find(|(o, _)| o == "2.5.4.3")
            .map(|(_, v)| v.as_str())
    }

    fn organizations(&self) -> Vec<&str> {
        self.subject
            .iter()
            .filter(|(o, _)| o == "2.5.4.10")
            .map(|(_, v)| v.as_str())
            .collect()
    }

    fn others(&self) -> Vec<&str> {
        self.subject
            .iter()
            .filter(|(o, _)| o != "2.5.4.3" && o != "2.5.4.10")
            .map(|(o, _)| o.as_str())
            .collect()
    }

    fn with_prefix(&self, prefix: &str) -> Vec<&str> {
        self.sans
            .iter()
            .filter_map(|s| s.strip_prefix(prefix))
            .collect()
    }
}

fn subject_names(name: &X509Name<'_>) -> Result<Vec<(String, String)>, String> {
    let mut out = Vec::new();
    for a in name.iter_attributes() {
        let v = a
            .as_str()
            .map_err(|_| format!("subject attribute {} is not a string", a.attr_type()))?;
        out.push((a.attr_type().to_id_string(), v.to_string()));
    }
    out.sort();
    Ok(out)
}

fn san_strings(names: &[GeneralName<'_>]) -> Vec<String> {
    let mut out: Vec<String> = names
        .iter()
        .map(|n| match n {
            GeneralName::DNSName(d) => format!("dns:{}", d.to_ascii_lowercase()),
            GeneralName::URI(u) => format!("uri:{u}"),
            GeneralName::IPAddress(b) => match b.len() {
                4 => format!(
                    "ip:{}",
                    IpAddr::from(<[u8; 4]>::try_from(*b).unwrap_or_default())
                ),
                16 => format!(
                    "ip:{}",
                    IpAddr::from(<[u8; 16]>::try_from(*b).unwrap_or_default())
                ),
                _ => "other:ip".to_string(),
            },
            other => format!("other:{other}"),
        })
        .collect();
    out.sort();
    out
}

/// Reads the names a DER CSR asks for, and its challengePassword.
pub fn csr_names(der: &[u8]) -> Result<(Names, Option<String>), String> {
    let (_, csr) =
        X509CertificationRequest::from_der(der).map_err(|e| format!("csr does not parse: {e}"))?;
    let subject = subject_names(&csr.certification_request_info.subject)?;
    let mut sans = Vec::new();
    for ext in csr.requested_extensions().into_iter().flatten() {
        if let ParsedExtension::SubjectAlternativeName(san) = ext {
            sans.extend(san_strings(&san.general_names));
        }
    }
    sans.sort();
    Ok((Names { subject, sans }, binding::challenge_password(&csr)))
}

/// Reads the names a DER certificate carries.
pub fn cert_names(der: &[u8]) -> Result<Names, String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| format!("certificate does not parse: {e}"))?;
    let subject = subject_names(cert.subject())?;
    let sans = cert
        .subject_alternative_name()
        .ok()
        .flatten()
        .map(|s| san_strings(&s.value.general_names))
        .unwrap_or_default();
    Ok(Names { subject, sans })
}

/// Decides and issues EST enrollments.
pub struct Enroller {
    issuance: Arc<Issuance>,
    cfg: EstConfig,
    verifier: Arc<ClientVerifier>,
}

fn internal(e: impl std::fmt::Display) -> EstError {
    tracing::error!(error = %e, "EST enrollment failed");
    EstError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal error")
}

impl From<IssueError> for EstError {
    fn from(e: IssueError) -> Self {
        match e {
            IssueError::InvalidArgument(m) => EstError::new(StatusCode::BAD_REQUEST, m),
            IssueError::PermissionDenied(m) => EstError::new(StatusCode::FORBIDDEN, m),
            IssueError::Internal => {
                EstError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal error")
            }
        }
    }
}

impl From<StoreError> for EstError {
    fn from(e: StoreError) -> Self {
        internal(e)
    }
}

impl Enroller {
    /// An enroller over the shared issuance service.
    pub fn new(issuance: Arc<Issuance>, cfg: EstConfig, verifier: Arc<ClientVerifier>) -> Self {
        Enroller {
            issuance,
            cfg,
            verifier,
        }
    }

    /// The issuance service.
    pub fn issuance(&self) -> &Arc<Issuance> {
        &self.issuance
    }

    /// The `[est]` configuration.
    pub fn config(&self) -> &EstConfig {
        &self.cfg
    }

    /// Records a refusal and turns it into the client's error.
    fn refuse(
        &self,
        actor: &str,
        subject: &str,
        rule: &str,
        status: StatusCode,
        reason: String,
    ) -> EstError {
        if let Err(e) = self.issuance.refuse(actor, subject, rule, &reason) {
            return e.into();
        }
        EstError::new(status, reason)
    }

    /// Identifies the caller of `op` on `label`.
    fn caller(
        &self,
        label: &str,
        profile: &str,
        op: Operation,
        peer: &Peer,
        authorization: Option<&str>,
    ) -> Result<Caller, EstError> {
        let Some(leaf) = peer.chain.first() else {
            if op == Operation::Enroll {
                if let (Some(cfg), Some(h)) = (&self.cfg.lab_basic_auth, authorization) {
                    return match check_basic(h, cfg) {
                        Ok(user) => Ok(Caller::Lab { user }),
                        Err(why) => Err(self.refuse(
                            &format!("{} (basic auth)", peer.remote.ip()),
                            label,
                            "est-auth",
                            StatusCode::UNAUTHORIZED,
                            why,
                        )),
                    };
                }
            }
            let what = if op == Operation::Reenroll {
                "simplereenroll needs the TLS client certificate being renewed"
            } else {
                "a TLS client certificate is required (a KeyGrid node certificate)"
            };
            return Err(self.refuse(
                &format!("{} (anonymous)", peer.remote.ip()),
                label,
                "est-auth",
                StatusCode::UNAUTHORIZED,
                what.into(),
            ));
        };
        let (serial, cert_subject) = match x509_parser::parse_x509_certificate(leaf) {
            Ok((_, c)) => (hex::encode(c.raw_serial()), c.subject().to_string()),
            Err(_) => (String::new(), String::new()),
        };
        let actor = format!("tls client {cert_subject} (serial {serial})");
        let intermediates: Vec<Vec<u8>> = self
            .issuance
            .hierarchy()
            .generations_of(NODES)
            .iter()
            .map(|a| a.cert_der().to_vec())
            .collect();
        if let Err(why) = self.verifier.check_chain(&peer.chain, &intermediates) {
            return Err(self.refuse(&actor, label, "est-client-cert", StatusCode::FORBIDDEN, why));
        }
        let store = self.issuance.store();
        let Some(record) = store.certificate(NODES, &serial)? else {
            return Err(self.refuse(
                &actor,
                label,
                "est-client-cert",
                StatusCode::FORBIDDEN,
                "the client certificate was not issued by KeyGrid's nodes CA".into(),
            ));
        };
        let from_nodes = x509_parser::parse_x509_certificate(leaf)
            .map(|(_, c)| {
                self.issuance
                    .hierarchy()
                    .generations_of(NODES)
                    .iter()
                    .any(|ca| {
                        x509_parser::parse_x509_certificate(ca.cert_der())
                            .map(|(_, i)| i.subject().as_raw() == c.issuer().as_raw())
                            .unwrap_or(false)
                    })
            })
            .unwrap_or(false);
        if !from_nodes {
            return Err(self.refuse(
                &actor,
                label,
                "est-client-cert",
                StatusCode::FORBIDDEN,
                "the client certificate was not issued by KeyGrid's nodes CA".into(),
            ));
        }
        if store.revocation(NODES, &serial)?.is_some() {
            return Err(self.refuse(
                &actor,
                label,
                "est-client-cert",
                StatusCode::FORBIDDEN,
                "the client certificate is revoked".into(),
            ));
        }
        match op {
            Operation::Reenroll if record.profile != profile => Err(self.refuse(
                &actor,
                label,
                "est-reenroll",
                StatusCode::FORBIDDEN,
                format!(
                    "simplereenroll on {label} renews {profile} certificates; the client certificate is a {} certificate",
                    record.profile
                ),
            )),
            Operation::Reenroll => Ok(Caller::Holder {
                record,
                leaf: leaf.clone(),
            }),
            Operation::Enroll if record.profile == PROFILE_NODE => {
                let attestation = store
                    .node(&record.subject)?
                    .map(|n| n.attestation)
                    .unwrap_or_else(|| "est".into());
                Ok(Caller::Node {
                    spiffe_id: record.subject,
                    attestation,
                })
            }
            Operation::Enroll => Err(self.refuse(
                &actor,
                label,
                "est-auth",
                StatusCode::FORBIDDEN,
                format!(
                    "simpleenroll needs a node certificate; a {} certificate may only renew itself with simplereenroll",
                    record.profile
                ),
            )),
        }
    }

    /// Handles `simpleenroll` / `simplereenroll` of a DER CSR on `label`.
    pub fn enroll(
        &self,
        label: &str,
        op: Operation,
        peer: &Peer,
        authorization: Option<&str>,
        csr_der: &[u8],
    ) -> Result<Outcome, EstError> {
        let Some(profile_name) = label_profile(label) else {
            return Err(EstError::new(
                StatusCode::NOT_FOUND,
                format!("no EST label {label:?}"),
            ));
        };
        let caller = self.caller(label, profile_name, op, peer, authorization)?;
        let actor = caller.actor();
        let refuse = |rule: &str, status: StatusCode, reason: String| {
            self.refuse(&actor, label, rule, status, reason)
        };
        let csr = match parse_csr(csr_der) {
            Ok(c) => c,
            Err(e) => return Err(refuse("csr", StatusCode::BAD_REQUEST, e.to_string())),
        };
        let (names, password) =
            csr_names(csr_der).map_err(|e| refuse("csr", StatusCode::BAD_REQUEST, e))?;
        if let Err(why) = binding::check(
            self.cfg.channel_binding,
            password.as_deref(),
            peer.binding.as_deref().map(|b| &b[..]),
        ) {
            return Err(refuse("channel-binding", StatusCode::FORBIDDEN, why));
        }
        let td_id = format!("spiffe://{}", self.issuance.hierarchy().trust_domain());
        let (request, attestation) = self
            .identity(label, profile_name, &caller, &names, &td_id)
            .map_err(|(rule, why)| refuse(rule, StatusCode::FORBIDDEN, why))?;
        let subject = request
            .spiffe_id
            .clone()
            .or(request.common_name.clone())
            .unwrap_or_default();

        if op == Operation::Enroll && self.cfg.manual_approval.iter().any(|l| l == label) {
            // The same key asking for the same names is the same request, whatever its
            // challengePassword (the channel binding differs on every connection).
            let spki = X509CertificationRequest::from_der(csr_der)
                .map(|(_, c)| c.certification_request_info.subject_pki.raw.to_vec())
                .unwrap_or_default();
            let id = crate::ca::sha256_hex(
                &[
                    label.as_bytes(),
                    &[0],
                    &spki,
                    &[0],
                    format!("{names:?}").as_bytes(),
                ]
                .concat(),
            );
            let store = self.issuance.store();
            match store.est_pending(&id)? {
                None => {
                    store.est_defer(&PendingEnrollment {
                        id: id.clone(),
                        label: label.into(),
                        requester: actor.clone(),
                        subject: subject.clone(),
                        state: "pending".into(),
                        created_at: OffsetDateTime::now_utc().unix_timestamp(),
                    })?;
                    tracing::info!(%id, %label, %subject, requester = %actor, "EST enrollment waits for approval");
                    return Ok(Outcome::Deferred);
                }
                Some(p) if p.state == "pending" => return Ok(Outcome::Deferred),
                Some(p) if p.state == "approved" => {}
                Some(p) if p.state == "rejected" => {
                    return Err(refuse(
                        "manual-approval",
                        StatusCode::FORBIDDEN,
                        "this enrollment was rejected by an operator".into(),
                    ))
                }
                Some(_) => {
                    return Err(refuse(
                        "manual-approval",
                        StatusCode::FORBIDDEN,
                        "this request was already answered with a certificate; send a new CSR"
                            .into(),
                    ))
                }
            }
            let chain = self.sign(
                label,
                profile_name,
                &actor,
                &request,
                &attestation,
                csr_der,
                &csr,
                None,
            )?;
            // A second retry of the same request gets nothing more.
            store.est_set_state(
                &id,
                "approved",
                "issued",
                OffsetDateTime::now_utc().unix_timestamp(),
            )?;
            return Ok(Outcome::Issued(chain));
        }
        Ok(Outcome::Issued(self.sign(
            label,
            profile_name,
            &actor,
            &request,
            &attestation,
            csr_der,
            &csr,
            None,
        )?))
    }

    /// Policy, signature and store for an identity already authorised.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn sign(
        &self,
        label: &str,
        profile_name: &str,
        actor: &str,
        request: &profiles::LeafRequest,
        attestation: &str,
        csr_der: &[u8],
        csr: &rcgen::CertificateSigningRequestParams,
        ek: Option<&EkBinding>,
    ) -> Result<Vec<Vec<u8>>, EstError> {
        let subject = request
            .spiffe_id
            .clone()
            .or(request.common_name.clone())
            .unwrap_or_default();
        let key = match csr_key_info(csr_der) {
            Ok(k) => k,
            Err(e) => return Err(self.refuse(actor, label, "csr", StatusCode::BAD_REQUEST, e)),
        };
        let ttl = if profile_name == PROFILE_NODE {
            self.issuance.settings().node_cert_ttl
        } else {
            self.cfg.kubelet_cert_ttl
        };
        let ttl = self.issuance.apply_policy(
            actor,
            &subject,
            &PolicyRequest {
                profile: profile_name.into(),
                key: Some(key),
                ttl,
                spiffe_id: request.spiffe_id.clone(),
                dns_names: request.dns_names.clone(),
                ips: request.ips.clone(),
                attestation: attestation.to_string(),
            },
        )?;
        let profile = profiles::profile(profile_name)
            .ok_or_else(|| internal(format!("profile {profile_name} missing")))?;
        let td_id = format!("spiffe://{}", self.issuance.hierarchy().trust_domain());
        let mut params = match profile.build(&td_id, request) {
            Ok(p) => p,
            Err(e) => {
                return Err(self.refuse(
                    actor,
                    &subject,
                    "profile",
                    StatusCode::FORBIDDEN,
                    e.to_string(),
                ))
            }
        };
        let nodes = self.issuance.hierarchy().nodes();
        if let Some(urls) = self.issuance.revocation_urls() {
            urls.apply(&mut params, nodes.name()).map_err(internal)?;
        }
        let now = OffsetDateTime::now_utc();
        let ttl = ttl.min(profile.max_ttl);
        let issued = nodes
            .sign(params, &csr.public_key, ttl, now)
            .map_err(internal)?;
        let record = issued.record(&nodes, profile_name, &subject);
        let store = self.issuance.store();
        let node = NodeRecord {
            spiffe_id: subject.clone(),
            attestation: attestation.to_string(),
            serial: issued.serial_hex.clone(),
            not_after: issued.not_after,
        };
        if let Some(ek) = ek {
            // First come, first bound; a conflict means another TPM has this name (or this
            // TPM another name), and nothing is written.
            match store.est_enroll_tpm_node(ek, &node, &record, now.unix_timestamp()) {
                Ok(()) => {}
                Err(StoreError::Conflict(why)) => {
                    return Err(self.refuse(
                        actor,
                        &subject,
                        "tpm-node-binding",
                        StatusCode::FORBIDDEN,
                        why,
                    ))
                }
                Err(e) => return Err(e.into()),
            }
        } else if profile_name == PROFILE_NODE {
            store.renew_node(&node, &record, now.unix_timestamp())?;
        } else {
            store.record_certificate(&record)?;
        }
        tracing::info!(%label, %subject, serial = %issued.serial_hex, requester = %actor, "EST certificate issued");
        Ok(vec![issued.der, nodes.cert_der().to_vec()])
    }

    /// Works out the identity to certify and checks the caller may have it. Errors are
    /// (rule, reason).
    fn identity(
        &self,
        label: &str,
        profile: &str,
        caller: &Caller,
        names: &Names,
        td_id: &str,
    ) -> Result<(profiles::LeafRequest, String), (&'static str, String)> {
        if let Caller::Holder { record, leaf } = caller {
            // RFC 7030 §4.2.2: Subject and SubjectAltName must be those of the certificate
            // being renewed.
            let old = cert_names(leaf).map_err(|e| ("est-reenroll", e))?;
            if old.subject != names.subject {
                return Err((
                    "est-reenroll",
                    "the CSR's subject differs from the certificate being renewed; a subject change needs a new enrollment".into(),
                ));
            }
            if old.sans != names.sans {
                return Err((
                    "est-reenroll",
                    "the CSR's subjectAltNames differ from the certificate being renewed".into(),
                ));
            }
            let attestation = self
                .issuance
                .store()
                .node(&record.subject)
                .ok()
                .flatten()
                .map(|n| n.attestation)
                .unwrap_or_else(|| "est".into());
            return Ok((
                request_from(profile, names, Some(&record.subject)),
                attestation,
            ));
        }
        let (node, attestation) = match caller {
            Caller::Node {
                spiffe_id,
                attestation,
            } => (Some(spiffe_id.as_str()), attestation.clone()),
            _ => (None, "est-basic".to_string()),
        };
        if profile == PROFILE_NODE {
            let uris = names.with_prefix("uri:");
            let id = match (node, uris.as_slice()) {
                (Some(id), []) => id.to_string(),
                (Some(id), [u]) if *u == id => id.to_string(),
                (Some(id), _) => {
                    return Err((
                        "est-identity",
                        format!("a node may enroll only its own identity {id}"),
                    ))
                }
                (None, [u]) => u.to_string(),
                (None, _) => {
                    return Err((
                        "est-identity",
                        "a node enrollment names exactly one SPIFFE ID (URI SAN)".into(),
                    ))
                }
            };
            let prefix = format!("{td_id}/keygrid/node/");
            if !id.starts_with(&prefix) || !valid_node_name(node_name(&id)) {
                return Err((
                    "est-identity",
                    format!("node identities are {prefix}<node name>; {id} is not"),
                ));
            }
            if names.sans.iter().any(|s| !s.starts_with("uri:")) {
                return Err((
                    "est-identity",
                    "node certificates carry no DNS or IP names".into(),
                ));
            }
            return Ok((request_from(profile, names, Some(&id)), attestation));
        }
        // kubelet-client / kubelet-serving.
        let cn = names.common_name().unwrap_or_default();
        let Some(name) = cn.strip_prefix("system:node:") else {
            return Err((
                "est-identity",
                format!("{label} certificates need CN=system:node:<node name>; the CSR asks for CN={cn:?}"),
            ));
        };
        if let Some(node) = node {
            if name != node_name(node) {
                return Err((
                    "est-identity",
                    format!(
                        "node {} may enroll only system:node:{}; the CSR asks for {cn}",
                        node,
                        node_name(node)
                    ),
                ));
            }
        }
        if let Some(o) = names.organizations().iter().find(|o| **o != "system:nodes") {
            return Err((
                "est-identity",
                format!(
                    "organization {o:?} is not allowed; kubelet certificates carry O=system:nodes"
                ),
            ));
        }
        if let Some(o) = names.others().first() {
            return Err((
                "est-identity",
                format!("subject attribute {o} is not allowed"),
            ));
        }
        if profile == "kubelet-client" && !names.sans.is_empty() {
            return Err((
                "est-identity",
                "kubelet client certificates carry no subjectAltNames".into(),
            ));
        }
        if profile == "kubelet-serving" {
            if names.sans.is_empty() {
                return Err((
                    "est-identity",
                    "kubelet serving certificates need at least one DNS or IP name".into(),
                ));
            }
            for d in names.with_prefix("dns:") {
                if d != name && !d.starts_with(&format!("{name}.")) {
                    return Err((
                        "est-identity",
                        format!("DNS name {d} does not belong to node {name}"),
                    ));
                }
            }
            if let Some(s) = names
                .sans
                .iter()
                .find(|s| !(s.starts_with("dns:") || s.starts_with("ip:")))
            {
                return Err((
                    "est-identity",
                    format!("{s} is not allowed in a kubelet serving certificate"),
                ));
            }
        }
        Ok((request_from(profile, names, None), attestation))
    }
}

/// The profile request for `names` (already authorised).
fn request_from(profile: &str, names: &Names, spiffe_id: Option<&str>) -> profiles::LeafRequest {
    if profile == PROFILE_NODE {
        return profiles::LeafRequest {
            common_name: Some("KeyGrid agent".into()),
            spiffe_id: spiffe_id.map(str::to_string),
            ..Default::default()
        };
    }
    profiles::LeafRequest {
        common_name: names.common_name().map(str::to_string),
        organizations: vec![],
        spiffe_id: None,
        dns_names: names
            .with_prefix("dns:")
            .into_iter()
            .map(str::to_string)
            .collect(),
        ips: names
            .with_prefix("ip:")
            .into_iter()
            .filter_map(|s| s.parse().ok())
            .collect(),
        ..Default::default()
    }
}
