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

/// The root CA: signs only issuing CAs (pathLen 1), carries the trust domain's SPIFFE ID.
pub fn root_ca(trust_domain_id: &str) -> Result<CertificateParams, CaError> {
    let mut p = CertificateParams::default();
    p.distinguished_name = subject(Some("KeyGrid Root CA"));
    p.is_ca = IsCa::Ca(BasicConstraints::Constrained(1));
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    p.subject_alt_names = vec![uri(trust_domain_id)?];
    Ok(p)
}

/// An issuing CA under the root: signs leaves only (pathLen 0).
pub fn issuing_ca(trust_domain_id: &str, name: &str) -> Result<CertificateParams, CaError> {
    let mut p = CertificateParams::default();
    p.distinguished_name = subject(Some(&format!("KeyGrid {name} CA")));
    p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    p.subject_alt_names = vec![uri(trust_domain_id)?];
    p.use_authority_key_identifier_extension = true;
    Ok(p)
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
