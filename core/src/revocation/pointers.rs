//! Revocation pointers in certificates: Authority Information Access (OCSP URL and
//! caIssuers, RFC 5280 §4.2.2.1) and CRL Distribution Points (§4.2.1.13).
//!
//! Long-lived certificates (node certificates, issuing CAs) carry them so that a relying
//! party can find KeyGrid's responder and CRL; 5-minute X.509-SVIDs carry none, since
//! they expire before any revocation would propagate.

use der::asn1::{Ia5String, ObjectIdentifier};
use der::Encode;
use rcgen::{CertificateParams, CrlDistributionPoint, CustomExtension};
use x509_cert::ext::pkix::name::GeneralName;
use x509_cert::ext::pkix::{AccessDescription, AuthorityInfoAccessSyntax};

use crate::ca::CaError;

const ID_AD_OCSP: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.5.5.7.48.1");
const ID_AD_CA_ISSUERS: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.5.5.7.48.2");
/// id-pe-authorityInfoAccess (1.3.6.1.5.5.7.1.1).
const AIA_OID: &[u64] = &[1, 3, 6, 1, 5, 5, 7, 1, 1];

/// The public URLs of KeyGrid's revocation endpoints, from `http.public_url`.
#[derive(Clone, Debug)]
pub struct RevocationUrls {
    base: String,
}

impl RevocationUrls {
    /// `base` is the externally reachable URL of the HTTP listener, e.g.
    /// `http://pki.example.org`; a trailing slash is ignored.
    pub fn new(base: &str) -> Self {
        RevocationUrls {
            base: base.trim_end_matches('/').to_string(),
        }
    }

    /// The OCSP responder (AIA id-ad-ocsp).
    pub fn ocsp(&self) -> String {
        format!("{}/ocsp", self.base)
    }

    /// The CRL of `issuer` (CDP).
    pub fn crl(&self, issuer: &str) -> String {
        format!("{}/crl/{issuer}.crl", self.base)
    }

    /// The certificate of `issuer` (AIA id-ad-caIssuers).
    pub fn ca_issuers(&self, issuer: &str) -> String {
        format!("{}/ca/{issuer}.crt", self.base)
    }

    /// Adds AIA and CDP for a certificate that `issuer` signs.
    pub fn apply(&self, params: &mut CertificateParams, issuer: &str) -> Result<(), CaError> {
        let uri = |s: String| {
            Ia5String::new(&s)
                .map(GeneralName::UniformResourceIdentifier)
                .map_err(|_| CaError::InvalidRequest(format!("{s:?} is not a valid URL")))
        };
        let aia = AuthorityInfoAccessSyntax(vec![
            AccessDescription {
                access_method: ID_AD_OCSP,
                access_location: uri(self.ocsp())?,
            },
            AccessDescription {
                access_method: ID_AD_CA_ISSUERS,
                access_location: uri(self.ca_issuers(issuer))?,
            },
        ]);
        let der = aia
            .to_der()
            .map_err(|e| CaError::Corrupt(format!("cannot encode AIA: {e}")))?;
        params
            .custom_extensions
            .push(CustomExtension::from_oid_content(AIA_OID, der));
        params.crl_distribution_points = vec![CrlDistributionPoint {
            uris: vec![self.crl(issuer)],
        }];
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_profile_gets_aia_and_cdp() {
        let urls = RevocationUrls::new("http://pki.example.org/");
        let mut p = crate::ca::profiles::node("spiffe://example.org/node/a").unwrap();
        urls.apply(&mut p, "nodes").unwrap();
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let cert = p.self_signed(&key).unwrap();
        let (_, parsed) = x509_parser::parse_x509_certificate(cert.der()).unwrap();
        let mut saw_aia = false;
        let mut saw_cdp = false;
        for ext in parsed.extensions() {
            match ext.parsed_extension() {
                x509_parser::extensions::ParsedExtension::AuthorityInfoAccess(aia) => {
                    let text = format!("{aia:?}");
                    assert!(text.contains("http://pki.example.org/ocsp"), "{text}");
                    assert!(
                        text.contains("http://pki.example.org/ca/nodes.crt"),
                        "{text}"
                    );
                    saw_aia = true;
                }
                x509_parser::extensions::ParsedExtension::CRLDistributionPoints(cdp) => {
                    assert!(format!("{cdp:?}").contains("http://pki.example.org/crl/nodes.crl"));
                    saw_cdp = true;
                }
                _ => {}
            }
        }
        assert!(saw_aia && saw_cdp);
    }
}
