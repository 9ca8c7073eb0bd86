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
    let mut p = CertificateParams::default();
    p.distinguished_name = subject(dns_names.first().map(String::as_str));
    p.is_ca = IsCa::ExplicitNoCa;
    p.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
        KeyUsagePurpose::KeyAgreement,
    ];
    p.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let mut sans = vec![uri(spiffe_id)?];
    for name in dns_names {
        sans.push(dns(name)?);
    }
    p.subject_alt_names = sans;
    p.use_authority_key_identifier_extension = true;
    Ok(p)
}

/// A node (agent) identity: client authentication to core only.
pub fn node(spiffe_id: &str) -> Result<CertificateParams, CaError> {
    let mut p = CertificateParams::default();
    p.distinguished_name = subject(Some("KeyGrid agent"));
    p.is_ca = IsCa::ExplicitNoCa;
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    p.subject_alt_names = vec![uri(spiffe_id)?];
    p.use_authority_key_identifier_extension = true;
    Ok(p)
}

/// Core's own TLS serving certificate.
pub fn core_server(
    spiffe_id: &str,
    dns_names: &[String],
    ips: &[IpAddr],
) -> Result<CertificateParams, CaError> {
    let mut p = CertificateParams::default();
    p.distinguished_name = subject(Some("KeyGrid core"));
    p.is_ca = IsCa::ExplicitNoCa;
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let mut sans = vec![uri(spiffe_id)?];
    for name in dns_names {
        sans.push(dns(name)?);
    }
    sans.extend(ips.iter().copied().map(SanType::IpAddress));
    p.subject_alt_names = sans;
    p.use_authority_key_identifier_extension = true;
    Ok(p)
}
