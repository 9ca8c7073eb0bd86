//! Certificate profiles: which extensions each kind of certificate carries.
//!
//! A profile alone decides extensions and key usages; a caller supplies only the identity
//! (SPIFFE ID, names) and the lifetime, so nothing a requester puts in a CSR can add an
//! extension the profile does not allow.

use std::net::IpAddr;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyUsagePurpose, SanType,
};

use super::CaError;

/// Organisation name written into every subject KeyGrid issues.
const ORGANIZATION: &str = "KeyGrid";

fn uri(s: &str) -> Result<SanType, CaError> {
    Ok(SanType::URI(s.try_into().map_err(|_| {
        CaError::InvalidRequest(format!("{s:?} is not a valid URI SAN"))
    })?))
}

fn dns(s: &str) -> Result<SanType, CaError> {
    Ok(SanType::DnsName(s.try_into().map_err(|_| {
        CaError::InvalidRequest(format!("{s:?} is not a valid DNS name"))
    })?))
}

fn subject(common_name: Option<&str>) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, ORGANIZATION);
    if let Some(cn) = common_name {
        dn.push(DnType::CommonName, cn);
    }
    dn
}

/// The root CA: signs only issuing CAs, carries the trust domain's SPIFFE ID. pathLen 2
/// because the deepest chain is root → spire-upstream → a SPIRE server's CA → SVID.
pub fn root_ca(trust_domain_id: &str) -> Result<CertificateParams, CaError> {
    let mut p = CertificateParams::default();
    p.distinguished_name = subject(Some("KeyGrid Root CA"));
    p.is_ca = IsCa::Ca(BasicConstraints::Constrained(2));
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    p.subject_alt_names = vec![uri(trust_domain_id)?];
    Ok(p)
}

/// Name constraints an issuing CA carries.
#[derive(Clone, Debug, Default)]
pub struct IssuerConstraints {
    /// Permitted URI host (the trust domain) for SPIFFE issuers: URI SANs below must be
    /// `spiffe://<trust domain>/...`.
    pub uri_host: Option<String>,
    /// Permitted DNS subtrees (control plane).
    pub dns: Vec<String>,
    /// Permitted IP ranges (control plane).
    pub ips: Vec<(IpAddr, u8)>,
}

/// An issuing CA under the root. `path_len` is 0 for CAs that sign leaves only and 1 for
/// `spire-upstream`, whose children are SPIRE servers' CAs.
pub fn issuing_ca(
    trust_domain_id: &str,
    name: &str,
    path_len: u8,
    constraints: &IssuerConstraints,
) -> Result<CertificateParams, CaError> {
    let mut p = CertificateParams::default();
    p.distinguished_name = subject(Some(&format!("KeyGrid {name} CA")));
    p.is_ca = IsCa::Ca(BasicConstraints::Constrained(path_len));
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    p.subject_alt_names = vec![uri(trust_domain_id)?];
    p.use_authority_key_identifier_extension = true;
    if !constraints.dns.is_empty() || !constraints.ips.is_empty() {
        let mut permitted = Vec::new();
        for d in &constraints.dns {
            permitted.push(rcgen::GeneralSubtree::DnsName(d.clone()));
        }
        for (ip, prefix) in &constraints.ips {
            permitted.push(rcgen::GeneralSubtree::IpAddress(
                rcgen::CidrSubnet::from_addr_prefix(*ip, *prefix),
            ));
        }
        p.name_constraints = Some(rcgen::NameConstraints {
            permitted_subtrees: permitted,
            excluded_subtrees: vec![],
        });
    }
    if let Some(host) = &constraints.uri_host {
        // rcgen has no URI subtree, so the extension is encoded here (RFC 5280 §4.2.1.10:
        // a URI constraint names a host; it must be critical).
        let mut ext = rcgen::CustomExtension::from_oid_content(
            &[2, 5, 29, 30],
            uri_name_constraints_der(host),
        );
        ext.set_criticality(true);
        p.custom_extensions.push(ext);
    }
    Ok(p)
}

/// Whether `ip` is inside `net`/`prefix` (same address family only).
pub fn ip_in(ip: &IpAddr, net: &IpAddr, prefix: u8) -> bool {
    let bits = |a: &IpAddr| -> (u128, u32) {
        match a {
            IpAddr::V4(v) => (u32::from(*v) as u128, 32),
            IpAddr::V6(v) => (u128::from(*v), 128),
        }
    };
    let ((a, wa), (b, wb)) = (bits(ip), bits(net));
    if wa != wb || u32::from(prefix) > wa {
        return false;
    }
    let shift = wa - u32::from(prefix);
    if shift >= 128 {
        return true;
    }
    (a >> shift) == (b >> shift)
}

/// DER of `NameConstraints { permittedSubtrees [0] { GeneralSubtree { uniformResourceIdentifier [6] host } } }`.
fn uri_name_constraints_der(host: &str) -> Vec<u8> {
    use crate::keys::ecdsa_der::tlv;
    let uri = tlv(0x86, host.as_bytes());
    let subtree = tlv(0x30, &uri);
    let permitted = tlv(0xa0, &subtree);
    tlv(0x30, &permitted)
}

/// An X.509-SVID leaf as the SPIFFE X.509-SVID standard defines it: exactly one URI SAN,
/// an explicit `CA:FALSE`, key usage digitalSignature (plus keyEncipherment and
/// keyAgreement, as SPIRE sets), and both serverAuth and clientAuth.
pub fn x509_svid(spiffe_id: &str, dns_names: &[String]) -> Result<CertificateParams, CaError> {
    let req = LeafRequest {
        common_name: dns_names.first().cloned(),
        spiffe_id: Some(spiffe_id.to_string()),
        dns_names: dns_names.to_vec(),
        ..Default::default()
    };
    table("x509-svid")?.build("", &req)
}

fn table(name: &str) -> Result<&'static Profile, CaError> {
    profile(name).ok_or_else(|| CaError::Corrupt(format!("profile {name} missing from the table")))
}

/// A node (agent) identity: client authentication to core only.
pub fn node(spiffe_id: &str) -> Result<CertificateParams, CaError> {
    let req = LeafRequest {
        common_name: Some("KeyGrid agent".into()),
        spiffe_id: Some(spiffe_id.to_string()),
        ..Default::default()
    };
    table("node")?.build("", &req)
}

/// Core's own TLS serving certificate.
pub fn core_server(
    spiffe_id: &str,
    dns_names: &[String],
    ips: &[IpAddr],
) -> Result<CertificateParams, CaError> {
    let req = LeafRequest {
        common_name: Some("KeyGrid core".into()),
        spiffe_id: Some(spiffe_id.to_string()),
        dns_names: dns_names.to_vec(),
        ips: ips.to_vec(),
        ..Default::default()
    };
    table("core-server")?.build("", &req)
}

/// Extended key usages a profile may grant.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Eku {
    /// id-kp-serverAuth.
    ServerAuth,
    /// id-kp-clientAuth.
    ClientAuth,
    /// id-kp-OCSPSigning.
    OcspSigning,
}

/// What a profile does with a SPIFFE ID.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SpiffeIdRule {
    /// Exactly one SPIFFE ID (with a path) is required.
    Required,
    /// The trust domain's own ID (`spiffe://<td>`, no path), as on CA certificates.
    TrustDomain,
    /// No URI SAN at all.
    Forbidden,
}

/// One row of the profile table: everything about a certificate that the requester does
/// not get to choose.
#[derive(Debug)]
pub struct Profile {
    /// Name used in configuration, policy and the store.
    pub name: &'static str,
    /// The issuer that signs it (`*`: any issuer, e.g. its own OCSP signer).
    pub issuer: &'static str,
    /// Key usages (always critical).
    pub key_usages: &'static [KeyUsagePurpose],
    /// Extended key usages.
    pub ekus: &'static [Eku],
    /// SPIFFE ID handling.
    pub spiffe_id: SpiffeIdRule,
    /// Whether DNS and IP SANs may be requested.
    pub names_allowed: bool,
    /// `Some(pathLen)` for CA certificates.
    pub ca_path_len: Option<u8>,
    /// Adds id-pkix-ocsp-nocheck (delegated OCSP responders).
    pub ocsp_nocheck: bool,
    /// Common name must start with this (kubelet: `system:node:`).
    pub cn_prefix: Option<&'static str>,
    /// Organisations always written (kubelet: `system:nodes`); others are refused.
    pub organizations: &'static [&'static str],
    /// The only common name allowed (kubeadm identities are fixed names that RBAC and
    /// `--requestheader-allowed-names` match exactly); used when the request names none.
    pub common_name: Option<&'static str>,
    /// Whether `O=KeyGrid` is written when the profile fixes no organisation. Kubernetes
    /// reads O as group membership, so Kubernetes identities get exactly their own O.
    pub keygrid_organization: bool,
    /// Adds keyEncipherment when the subject key is RSA (kubeadm's rule; meaningless and
    /// left out for EC keys).
    pub rsa_key_encipherment: bool,
    /// Hard cap on lifetime, whatever policy allows.
    pub max_ttl: Duration,
}

use std::time::Duration;
use KeyUsagePurpose::{CrlSign, DigitalSignature, KeyAgreement, KeyCertSign, KeyEncipherment};

const HOUR: u64 = 3600;
const DAY: u64 = 24 * HOUR;

/// The profile table. Adding a kind of certificate means adding a row here.
pub const PROFILES: &[Profile] = &[
    Profile {
        name: "x509-svid",
        issuer: super::WORKLOADS,
        key_usages: &[DigitalSignature, KeyEncipherment, KeyAgreement],
        ekus: &[Eku::ServerAuth, Eku::ClientAuth],
        spiffe_id: SpiffeIdRule::Required,
        names_allowed: true,
        ca_path_len: None,
        ocsp_nocheck: false,
        cn_prefix: None,
        organizations: &[],
        common_name: None,
        keygrid_organization: true,
        rsa_key_encipherment: false,
        max_ttl: Duration::from_secs(DAY),
    },
    Profile {
        name: "spire-intermediate",
        issuer: super::SPIRE_UPSTREAM,
        key_usages: &[KeyCertSign, CrlSign],
        ekus: &[],
        spiffe_id: SpiffeIdRule::TrustDomain,
        names_allowed: false,
        ca_path_len: Some(0),
        ocsp_nocheck: false,
        cn_prefix: None,
        organizations: &[],
        common_name: None,
        keygrid_organization: true,
        rsa_key_encipherment: false,
        max_ttl: Duration::from_secs(365 * DAY),
    },
    Profile {
        name: "node",
        issuer: super::NODES,
        key_usages: &[DigitalSignature],
        ekus: &[Eku::ClientAuth],
        spiffe_id: SpiffeIdRule::Required,
        names_allowed: false,
        ca_path_len: None,
        ocsp_nocheck: false,
        cn_prefix: None,
        organizations: &[],
        common_name: None,
        keygrid_organization: true,
        rsa_key_encipherment: false,
        max_ttl: Duration::from_secs(30 * DAY),
    },
    Profile {
        name: "core-server",
        issuer: super::NODES,
        key_usages: &[DigitalSignature],
        ekus: &[Eku::ServerAuth],
        spiffe_id: SpiffeIdRule::Required,
        names_allowed: true,
        ca_path_len: None,
        ocsp_nocheck: false,
        cn_prefix: None,
        organizations: &[],
        common_name: None,
        keygrid_organization: true,
        rsa_key_encipherment: false,
        max_ttl: Duration::from_secs(30 * DAY),
    },
    Profile {
        name: "kubelet-client",
        issuer: super::NODES,
        key_usages: &[DigitalSignature, KeyEncipherment],
        ekus: &[Eku::ClientAuth],
        spiffe_id: SpiffeIdRule::Forbidden,
        names_allowed: false,
        ca_path_len: None,
        ocsp_nocheck: false,
        cn_prefix: Some("system:node:"),
        organizations: &["system:nodes"],
        common_name: None,
        keygrid_organization: true,
        rsa_key_encipherment: false,
        max_ttl: Duration::from_secs(365 * DAY),
    },
    Profile {
        name: "kubelet-serving",
        issuer: super::NODES,
        key_usages: &[DigitalSignature, KeyEncipherment],
        ekus: &[Eku::ServerAuth],
        spiffe_id: SpiffeIdRule::Forbidden,
        names_allowed: true,
        ca_path_len: None,
        ocsp_nocheck: false,
        cn_prefix: Some("system:node:"),
        organizations: &["system:nodes"],
        common_name: None,
        keygrid_organization: true,
        rsa_key_encipherment: false,
        max_ttl: Duration::from_secs(365 * DAY),
    },
    // kubeadm's certificate set (research note kubernetes-pki.md §1.2, §1.3): subjects carry
    // only what kubeadm writes (no KeyGrid O), usages are digitalSignature plus
    // keyEncipherment for RSA keys, and each CA signs only its own kind.
    Profile {
        name: "kube-apiserver",
        issuer: super::CONTROL_PLANE,
        key_usages: &[DigitalSignature],
        ekus: &[Eku::ServerAuth],
        spiffe_id: SpiffeIdRule::Forbidden,
        names_allowed: true,
        ca_path_len: None,
        ocsp_nocheck: false,
        cn_prefix: None,
        organizations: &[],
        common_name: Some("kube-apiserver"),
        keygrid_organization: false,
        rsa_key_encipherment: true,
        max_ttl: Duration::from_secs(365 * DAY),
    },
    Profile {
        name: "kube-apiserver-kubelet-client",
        issuer: super::CONTROL_PLANE,
        key_usages: &[DigitalSignature],
        ekus: &[Eku::ClientAuth],
        spiffe_id: SpiffeIdRule::Forbidden,
        names_allowed: false,
        ca_path_len: None,
        ocsp_nocheck: false,
        cn_prefix: None,
        organizations: &[],
        common_name: Some("kube-apiserver-kubelet-client"),
        keygrid_organization: false,
        rsa_key_encipherment: true,
        max_ttl: Duration::from_secs(365 * DAY),
    },
    Profile {
        name: "kubeconfig-admin",
        issuer: super::CONTROL_PLANE,
        key_usages: &[DigitalSignature],
        ekus: &[Eku::ClientAuth],
        spiffe_id: SpiffeIdRule::Forbidden,
        names_allowed: false,
        ca_path_len: None,
        ocsp_nocheck: false,
        cn_prefix: None,
        organizations: &["kubeadm:cluster-admins"],
        common_name: Some("kubernetes-admin"),
        keygrid_organization: false,
        rsa_key_encipherment: true,
        max_ttl: Duration::from_secs(365 * DAY),
    },
    Profile {
        name: "kubeconfig-super-admin",
        issuer: super::CONTROL_PLANE,
        key_usages: &[DigitalSignature],
        ekus: &[Eku::ClientAuth],
        spiffe_id: SpiffeIdRule::Forbidden,
        names_allowed: false,
        ca_path_len: None,
        ocsp_nocheck: false,
        cn_prefix: None,
        organizations: &["system:masters"],
        common_name: Some("kubernetes-super-admin"),
        keygrid_organization: false,
        rsa_key_encipherment: true,
        max_ttl: Duration::from_secs(365 * DAY),
    },
    Profile {
        name: "kubeconfig-controller-manager",
        issuer: super::CONTROL_PLANE,
        key_usages: &[DigitalSignature],
        ekus: &[Eku::ClientAuth],
        spiffe_id: SpiffeIdRule::Forbidden,
        names_allowed: false,
        ca_path_len: None,
        ocsp_nocheck: false,
        cn_prefix: None,
        organizations: &[],
        common_name: Some("system:kube-controller-manager"),
        keygrid_organization: false,
        rsa_key_encipherment: true,
        max_ttl: Duration::from_secs(365 * DAY),
    },
    Profile {
        name: "kubeconfig-scheduler",
        issuer: super::CONTROL_PLANE,
        key_usages: &[DigitalSignature],
        ekus: &[Eku::ClientAuth],
        spiffe_id: SpiffeIdRule::Forbidden,
        names_allowed: false,
        ca_path_len: None,
        ocsp_nocheck: false,
        cn_prefix: None,
        organizations: &[],
        common_name: Some("system:kube-scheduler"),
        keygrid_organization: false,
        rsa_key_encipherment: true,
        max_ttl: Duration::from_secs(365 * DAY),
    },
    Profile {
        name: "kubeconfig-kubelet",
        issuer: super::CONTROL_PLANE,
        key_usages: &[DigitalSignature],
        ekus: &[Eku::ClientAuth],
        spiffe_id: SpiffeIdRule::Forbidden,
        names_allowed: false,
        ca_path_len: None,
        ocsp_nocheck: false,
        cn_prefix: Some("system:node:"),
        organizations: &["system:nodes"],
        common_name: None,
        keygrid_organization: false,
        rsa_key_encipherment: true,
        max_ttl: Duration::from_secs(365 * DAY),
    },
    Profile {
        name: "front-proxy-client",
        issuer: super::FRONT_PROXY,
        key_usages: &[DigitalSignature],
        ekus: &[Eku::ClientAuth],
        spiffe_id: SpiffeIdRule::Forbidden,
        names_allowed: false,
        ca_path_len: None,
        ocsp_nocheck: false,
        cn_prefix: None,
        organizations: &[],
        common_name: Some("front-proxy-client"),
        keygrid_organization: false,
        rsa_key_encipherment: true,
        max_ttl: Duration::from_secs(365 * DAY),
    },
    Profile {
        name: "etcd-server",
        issuer: super::ETCD,
        key_usages: &[DigitalSignature],
        ekus: &[Eku::ServerAuth, Eku::ClientAuth],
        spiffe_id: SpiffeIdRule::Forbidden,
        names_allowed: true,
        ca_path_len: None,
        ocsp_nocheck: false,
        cn_prefix: None,
        organizations: &[],
        common_name: None,
        keygrid_organization: false,
        rsa_key_encipherment: true,
        max_ttl: Duration::from_secs(365 * DAY),
    },
    Profile {
        name: "etcd-peer",
        issuer: super::ETCD,
        key_usages: &[DigitalSignature],
        ekus: &[Eku::ServerAuth, Eku::ClientAuth],
        spiffe_id: SpiffeIdRule::Forbidden,
        names_allowed: true,
        ca_path_len: None,
        ocsp_nocheck: false,
        cn_prefix: None,
        organizations: &[],
        common_name: None,
        keygrid_organization: false,
        rsa_key_encipherment: true,
        max_ttl: Duration::from_secs(365 * DAY),
    },
    Profile {
        name: "etcd-healthcheck-client",
        issuer: super::ETCD,
        key_usages: &[DigitalSignature],
        ekus: &[Eku::ClientAuth],
        spiffe_id: SpiffeIdRule::Forbidden,
        names_allowed: false,
        ca_path_len: None,
        ocsp_nocheck: false,
        cn_prefix: None,
        organizations: &[],
        common_name: Some("kube-etcd-healthcheck-client"),
        keygrid_organization: false,
        rsa_key_encipherment: true,
        max_ttl: Duration::from_secs(365 * DAY),
    },
    Profile {
        name: "kube-apiserver-etcd-client",
        issuer: super::ETCD,
        key_usages: &[DigitalSignature],
        ekus: &[Eku::ClientAuth],
        spiffe_id: SpiffeIdRule::Forbidden,
        names_allowed: false,
        ca_path_len: None,
        ocsp_nocheck: false,
        cn_prefix: None,
        organizations: &[],
        common_name: Some("kube-apiserver-etcd-client"),
        keygrid_organization: false,
        rsa_key_encipherment: true,
        max_ttl: Duration::from_secs(365 * DAY),
    },
    Profile {
        name: "ocsp-signer",
        issuer: "*",
        key_usages: &[DigitalSignature],
        ekus: &[Eku::OcspSigning],
        spiffe_id: SpiffeIdRule::Forbidden,
        names_allowed: false,
        ca_path_len: None,
        ocsp_nocheck: true,
        cn_prefix: None,
        organizations: &[],
        common_name: None,
        keygrid_organization: true,
        rsa_key_encipherment: false,
        max_ttl: Duration::from_secs(7 * DAY),
    },
];

/// Looks up a profile by name.
pub fn profile(name: &str) -> Option<&'static Profile> {
    PROFILES.iter().find(|p| p.name == name)
}

/// The identity a requester asks a profile for. Everything else comes from the profile.
#[derive(Clone, Debug, Default)]
pub struct LeafRequest {
    /// Subject common name.
    pub common_name: Option<String>,
    /// Subject organisations (only those the profile fixes are accepted).
    pub organizations: Vec<String>,
    /// SPIFFE ID for URI SAN.
    pub spiffe_id: Option<String>,
    /// DNS SANs.
    pub dns_names: Vec<String>,
    /// IP SANs.
    pub ips: Vec<IpAddr>,
    /// The subject key is RSA (profiles with `rsa_key_encipherment` then add keyEncipherment).
    pub rsa_key: bool,
}

impl Profile {
    /// Builds certificate parameters for `req`, refusing anything the profile does not allow.
    /// `trust_domain_id` is `spiffe://<td>`.
    pub fn build(
        &self,
        trust_domain_id: &str,
        req: &LeafRequest,
    ) -> Result<CertificateParams, CaError> {
        let bad = |m: String| CaError::InvalidRequest(format!("profile {}: {m}", self.name));
        let mut p = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        if self.organizations.is_empty() && self.keygrid_organization {
            dn.push(DnType::OrganizationName, ORGANIZATION);
        }
        for o in &req.organizations {
            if !self.organizations.contains(&o.as_str()) {
                return Err(bad(format!("organization {o:?} is not allowed")));
            }
        }
        for o in self.organizations {
            dn.push(DnType::OrganizationName, *o);
        }
        if let Some(prefix) = self.cn_prefix {
            match &req.common_name {
                Some(cn) if cn.starts_with(prefix) && cn.len() > prefix.len() => {}
                _ => return Err(bad(format!("common name must be {prefix}<name>"))),
            }
        }
        let fixed_cn = self.common_name.map(str::to_string);
        let common_name = match (&fixed_cn, &req.common_name) {
            (Some(want), Some(got)) if want != got => {
                return Err(bad(format!("common name must be {want:?}, not {got:?}")))
            }
            (Some(_), _) => &fixed_cn,
            (None, got) => got,
        };
        if let Some(cn) = common_name {
            if cn.is_empty() || cn.len() > 64 {
                return Err(bad("common name must be 1 to 64 characters".into()));
            }
            dn.push(DnType::CommonName, cn.as_str());
        }
        p.distinguished_name = dn;
        let mut sans = Vec::new();
        match (self.spiffe_id, &req.spiffe_id) {
            (SpiffeIdRule::Required, Some(id)) => sans.push(uri(id)?),
            (SpiffeIdRule::Required, None) => return Err(bad("a SPIFFE ID is required".into())),
            (SpiffeIdRule::TrustDomain, _) => sans.push(uri(trust_domain_id)?),
            (SpiffeIdRule::Forbidden, Some(_)) => {
                return Err(bad("a SPIFFE ID is not allowed".into()))
            }
            (SpiffeIdRule::Forbidden, None) => {}
        }
        if !self.names_allowed && (!req.dns_names.is_empty() || !req.ips.is_empty()) {
            return Err(bad("DNS and IP names are not allowed".into()));
        }
        for d in &req.dns_names {
            sans.push(dns(d)?);
        }
        sans.extend(req.ips.iter().copied().map(SanType::IpAddress));
        p.subject_alt_names = sans;
        p.key_usages = self.key_usages.to_vec();
        if self.rsa_key_encipherment && req.rsa_key {
            p.key_usages.push(KeyEncipherment);
        }
        p.extended_key_usages = self
            .ekus
            .iter()
            .map(|e| match e {
                Eku::ServerAuth => ExtendedKeyUsagePurpose::ServerAuth,
                Eku::ClientAuth => ExtendedKeyUsagePurpose::ClientAuth,
                Eku::OcspSigning => ExtendedKeyUsagePurpose::OcspSigning,
            })
            .collect();
        p.is_ca = match self.ca_path_len {
            Some(n) => IsCa::Ca(BasicConstraints::Constrained(n)),
            None => IsCa::ExplicitNoCa,
        };
        if self.ocsp_nocheck {
            // id-pkix-ocsp-nocheck (RFC 6960 §4.2.2.2.1), value NULL.
            p.custom_extensions
                .push(rcgen::CustomExtension::from_oid_content(
                    &[1, 3, 6, 1, 5, 5, 7, 48, 1, 5],
                    vec![0x05, 0x00],
                ));
        }
        p.use_authority_key_identifier_extension = true;
        Ok(p)
    }
}
