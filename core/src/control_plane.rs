//! Control-plane certificates: kubeadm's external-CA set, signed by the cluster
//! (`control-plane`), `front-proxy` and `etcd` CAs.
//!
//! The requester (the `keygrid kubeadm` CLI on a control-plane node) sends a CSR and the
//! names it wants; the profile fixes subject, usages and issuer. A CSR that asks for more
//! (other names, other usages) is refused, not trimmed, so what kubeadm or an operator
//! expects is exactly what is issued. Refusals are recorded as policy events.

use std::net::IpAddr;
use std::time::Duration;

use rcgen::{ExtendedKeyUsagePurpose, KeyUsagePurpose, SanType};
use time::OffsetDateTime;

use crate::ca::profiles::{self, Eku, LeafRequest, Profile};
use crate::issuance::{parse_csr, Issuance, IssueError};
use crate::policy::{csr_key_info, PolicyRequest};

/// Profiles of kubeadm's certificate set: only these may be requested here.
pub const KUBEADM_PROFILES: [&str; 12] = [
    "kube-apiserver",
    "kube-apiserver-kubelet-client",
    "kubeconfig-admin",
    "kubeconfig-super-admin",
    "kubeconfig-controller-manager",
    "kubeconfig-scheduler",
    "kubeconfig-kubelet",
    "front-proxy-client",
    "etcd-server",
    "etcd-peer",
    "etcd-healthcheck-client",
    "kube-apiserver-etcd-client",
];

/// One certificate asked of the control-plane CAs.
#[derive(Clone, Debug, Default)]
pub struct ControlPlaneRequest {
    /// Profile name (one of [`KUBEADM_PROFILES`]).
    pub profile: String,
    /// PKCS#10 CSR, DER.
    pub csr_der: Vec<u8>,
    /// Subject CN; `None` for the profile's fixed name.
    pub common_name: Option<String>,
    /// Subject organisations.
    pub organizations: Vec<String>,
    /// DNS SANs.
    pub dns_names: Vec<String>,
    /// IP SANs.
    pub ips: Vec<IpAddr>,
    /// Requested lifetime.
    pub ttl: Duration,
}

/// A signed control-plane certificate.
#[derive(Clone, Debug)]
pub struct ControlPlaneCert {
    /// Leaf, then the signing CA, DER.
    pub chain: Vec<Vec<u8>>,
    /// The signing CA's certificate, DER.
    pub ca_der: Vec<u8>,
    /// Validity start, Unix seconds.
    pub not_before: i64,
    /// Validity end, Unix seconds.
    pub not_after: i64,
    /// Serial, hex.
    pub serial: String,
}

fn usage_name(k: &KeyUsagePurpose) -> String {
    format!("{k:?}")
}

fn eku_allowed(profile: &Profile, e: &ExtendedKeyUsagePurpose) -> bool {
    profile.ekus.iter().any(|p| {
        matches!(
            (p, e),
            (Eku::ServerAuth, ExtendedKeyUsagePurpose::ServerAuth)
                | (Eku::ClientAuth, ExtendedKeyUsagePurpose::ClientAuth)
        )
    })
}

/// Checks that a CSR asks for nothing the profile and the request do not grant: key
/// usages, extended key usages and names. Returns the reason of the first excess.
fn csr_excess(
    profile: &Profile,
    csr: &rcgen::CertificateSigningRequestParams,
    req: &ControlPlaneRequest,
    rsa: bool,
) -> Option<String> {
    let p = &csr.params;
    for k in &p.key_usages {
        let ok = profile.key_usages.contains(k)
            || (rsa && profile.rsa_key_encipherment && *k == KeyUsagePurpose::KeyEncipherment);
        if !ok {
            return Some(format!(
                "the CSR asks for key usage {} which profile {} forbids",
                usage_name(k),
                profile.name
            ));
        }
    }
    for e in &p.extended_key_usages {
        if !eku_allowed(profile, e) {
            return Some(format!(
                "the CSR asks for extended key usage {e:?} which profile {} forbids",
                profile.name
            ));
        }
    }
    if matches!(p.is_ca, rcgen::IsCa::Ca(_)) {
        return Some("the CSR asks for a CA certificate".into());
    }
    for san in &p.subject_alt_names {
        let granted = match san {
            SanType::DnsName(d) => req.dns_names.iter().any(|n| n == d.as_str()),
            SanType::IpAddress(ip) => req.ips.contains(ip),
            _ => false,
        };
        if !granted {
            return Some(format!(
                "the CSR asks for name {san:?}, which was not requested"
            ));
        }
    }
    None
}

impl Issuance {
    /// Signs one certificate of kubeadm's set for `actor` (the admin caller): profile and
    /// CSR checks, the CA's allowed names, policy, signing with the profile's CA, and the
    /// issuance record, in that order. A refusal writes only its event.
    pub fn issue_control_plane(
        &self,
        actor: &str,
        req: &ControlPlaneRequest,
    ) -> Result<ControlPlaneCert, IssueError> {
        if !KUBEADM_PROFILES.contains(&req.profile.as_str()) {
            return Err(IssueError::InvalidArgument(format!(
                "profile {:?} is not a control-plane profile; use one of {}",
                req.profile,
                KUBEADM_PROFILES.join(", ")
            )));
        }
        let profile = profiles::profile(&req.profile).ok_or(IssueError::Internal)?;
        let subject = req
            .common_name
            .clone()
            .or(profile.common_name.map(str::to_string))
            .unwrap_or_default();
        let csr = parse_csr(&req.csr_der)?;
        let key = csr_key_info(&req.csr_der).map_err(IssueError::InvalidArgument)?;
        let rsa = key.kind == "rsa";
        if let Some(reason) = csr_excess(profile, &csr, req, rsa) {
            self.refuse(actor, &subject, "csr-usages", &reason)?;
            return Err(IssueError::InvalidArgument(reason));
        }
        let hierarchy = self.hierarchy();
        if let Err(reason) = hierarchy.names_permitted(profile.issuer, &req.dns_names, &req.ips) {
            self.refuse(actor, &subject, "control-plane-names", &reason)?;
            return Err(IssueError::PermissionDenied(format!(
                "refused by rule control-plane-names: {reason}"
            )));
        }
        let ttl = self.apply_policy(
            actor,
            &subject,
            &PolicyRequest {
                profile: profile.name.into(),
                key: Some(key),
                ttl: req.ttl.min(profile.max_ttl),
                dns_names: req.dns_names.clone(),
                ips: req.ips.clone(),
                attestation: "admin".into(),
                ..Default::default()
            },
        )?;
        let td_id = format!("spiffe://{}", hierarchy.trust_domain());
        let params = profile.build(
            &td_id,
            &LeafRequest {
                common_name: req.common_name.clone(),
                organizations: req.organizations.clone(),
                dns_names: req.dns_names.clone(),
                ips: req.ips.clone(),
                rsa_key: rsa,
                ..Default::default()
            },
        )?;
        let now = OffsetDateTime::now_utc();
        let ca = hierarchy.active_at(profile.issuer, now.unix_timestamp())?;
        let issued = ca.sign(params, &csr.public_key, ttl, now)?;
        self.store()
            .record_certificate(&issued.record(&ca, profile.name, &subject))?;
        tracing::info!(%actor, profile = profile.name, %subject, serial = %issued.serial_hex,
            issuer = ca.name(), not_after = issued.not_after, "control-plane certificate issued");
        Ok(ControlPlaneCert {
            ca_der: ca.cert_der().to_vec(),
            chain: vec![issued.der, ca.cert_der().to_vec()],
            not_before: issued.not_before,
            not_after: issued.not_after,
            serial: issued.serial_hex,
        })
    }
}
