//! Encodes and signs CRLs (RFC 5280 §5) with the RustCrypto `x509-cert` types.
//!
//! rcgen builds complete CRLs but cannot write the Delta CRL Indicator or Freshest CRL
//! extensions, so KeyGrid encodes both kinds here, in one place: the TBSCertList is
//! assembled from typed values, DER-encoded, and signed by the issuer's key through
//! [`CaSigner`] (HSM or software), exactly as certificates are.

use std::time::Duration;

use der::asn1::{BitString, Ia5String, OctetString, UtcTime};
use der::{Decode, Encode};
use x509_cert::crl::{CertificateList, RevokedCert, TbsCertList};
use x509_cert::ext::pkix::crl::dp::DistributionPoint;
use x509_cert::ext::pkix::name::{DistributionPointName, GeneralName};
use x509_cert::ext::pkix::{
    AuthorityKeyIdentifier, BaseCrlNumber, CrlNumber, CrlReason, FreshestCrl,
};
use x509_cert::ext::Extension;
use x509_cert::serial_number::SerialNumber;
use x509_cert::time::Time;

use crate::ca::CaError;
use crate::keys::CaSigner;

/// One revoked certificate as it appears in a CRL.
#[derive(Clone, Debug)]
pub struct CrlEntry {
    /// Serial number, big-endian bytes as issued.
    pub serial: Vec<u8>,
    /// Revocation time, Unix seconds.
    pub revoked_at: i64,
    /// RFC 5280 reason code; `None` (or 0) leaves the reasonCode extension out, as §5.3.1 asks
    /// for `unspecified`.
    pub reason: Option<u32>,
}

/// Everything that goes into one CRL besides the issuer's key.
#[derive(Clone, Debug)]
pub struct CrlContents<'a> {
    /// The issuing CA's certificate: its subject is the CRL issuer, its SKI the CRL's AKI.
    pub issuer_cert_der: &'a [u8],
    /// thisUpdate, Unix seconds.
    pub this_update: i64,
    /// nextUpdate, Unix seconds.
    pub next_update: i64,
    /// CRL Number, shared by complete and delta CRLs of one issuer (RFC 5280 §5.2.3).
    pub number: u64,
    /// For a delta CRL, the number of the complete CRL it updates (§5.2.4).
    pub base_number: Option<u64>,
    /// For a complete CRL, where its delta CRLs are published (Freshest CRL, §5.2.6).
    pub freshest_url: Option<&'a str>,
    /// The revoked certificates listed.
    pub entries: Vec<CrlEntry>,
}

fn der_err(what: &'static str) -> impl FnOnce(der::Error) -> CaError {
    move |e| CaError::Corrupt(format!("CRL {what}: {e}"))
}

fn extension(
    oid: der::asn1::ObjectIdentifier,
    critical: bool,
    value: &impl Encode,
) -> Result<Extension, CaError> {
    Ok(Extension {
        extn_id: oid,
        critical,
        extn_value: OctetString::new(value.to_der().map_err(der_err("extension"))?)
            .map_err(der_err("extension"))?,
    })
}

/// UTCTime through 2049 and GeneralizedTime after, as RFC 5280 §5.1.2.4 requires.
fn crl_time(unix: i64) -> Result<Time, CaError> {
    let secs = u64::try_from(unix).map_err(|_| CaError::Corrupt("CRL time before 1970".into()))?;
    let d = Duration::from_secs(secs);
    match UtcTime::from_unix_duration(d) {
        Ok(t) => Ok(Time::UtcTime(t)),
        Err(_) => Ok(Time::GeneralTime(
            der::asn1::GeneralizedTime::from_unix_duration(d).map_err(der_err("time"))?,
        )),
    }
}

fn uint(n: u64) -> Result<der::asn1::Uint, CaError> {
    der::asn1::Uint::new(&n.to_be_bytes()).map_err(der_err("number"))
}

fn reason(code: u32) -> Option<CrlReason> {
    Some(match code {
        1 => CrlReason::KeyCompromise,
        2 => CrlReason::CaCompromise,
        3 => CrlReason::AffiliationChanged,
        4 => CrlReason::Superseded,
        5 => CrlReason::CessationOfOperation,
        9 => CrlReason::PrivilegeWithdrawn,
        10 => CrlReason::AaCompromise,
        _ => return None,
    })
}

/// Builds the CRL described by `c` and signs it with `signer`, returning DER.
pub fn sign_crl(c: &CrlContents<'_>, signer: &dyn CaSigner) -> Result<Vec<u8>, CaError> {
    let issuer = x509_cert::Certificate::from_der(c.issuer_cert_der)
        .map_err(der_err("issuer certificate"))?;
    let ski = issuer
        .tbs_certificate
        .extensions
        .iter()
        .flatten()
        .find(|e| e.extn_id == const_oid_ski())
        .and_then(|e| OctetString::from_der(e.extn_value.as_bytes()).ok());
    let signature_algorithm = super::signature_algorithm(signer.algorithm());

    let mut revoked = Vec::with_capacity(c.entries.len());
    for e in &c.entries {
        let crl_entry_extensions = match e.reason.and_then(reason) {
            Some(r) => Some(vec![extension(
                der::asn1::ObjectIdentifier::new_unwrap("2.5.29.21"),
                false,
                &r,
            )?]),
            None => None,
        };
        revoked.push(RevokedCert {
            serial_number: SerialNumber::new(&e.serial).map_err(der_err("serial"))?,
            revocation_date: crl_time(e.revoked_at)?,
            crl_entry_extensions,
        });
    }

    let mut exts = vec![
        extension(
            der::asn1::ObjectIdentifier::new_unwrap("2.5.29.35"),
            false,
            &AuthorityKeyIdentifier {
                key_identifier: ski,
                authority_cert_issuer: None,
                authority_cert_serial_number: None,
            },
        )?,
        extension(
            der::asn1::ObjectIdentifier::new_unwrap("2.5.29.20"),
            false,
            &CrlNumber(uint(c.number)?),
        )?,
    ];
    if let Some(base) = c.base_number {
        exts.push(extension(
            der::asn1::ObjectIdentifier::new_unwrap("2.5.29.27"),
            true,
            &BaseCrlNumber(uint(base)?),
        )?);
    }
    if let (Some(url), None) = (c.freshest_url, c.base_number) {
        let uri = Ia5String::new(url).map_err(der_err("Freshest CRL URL"))?;
        exts.push(extension(
            der::asn1::ObjectIdentifier::new_unwrap("2.5.29.46"),
            false,
            &FreshestCrl(vec![DistributionPoint {
                distribution_point: Some(DistributionPointName::FullName(vec![
                    GeneralName::UniformResourceIdentifier(uri),
                ])),
                reasons: None,
                crl_issuer: None,
            }]),
        )?);
    }

    let tbs = TbsCertList {
        version: x509_cert::Version::V2,
        signature: signature_algorithm.clone(),
        issuer: issuer.tbs_certificate.subject,
        this_update: crl_time(c.this_update)?,
        next_update: Some(crl_time(c.next_update)?),
        revoked_certificates: (!revoked.is_empty()).then_some(revoked),
        crl_extensions: Some(exts),
    };
    let tbs_der = tbs.to_der().map_err(der_err("TBSCertList"))?;
    let signature = signer.sign(&tbs_der)?;
    CertificateList {
        tbs_cert_list: tbs,
        signature_algorithm,
        signature: BitString::from_bytes(&signature).map_err(der_err("signature"))?,
    }
    .to_der()
    .map_err(der_err("CertificateList"))
}

fn const_oid_ski() -> der::asn1::ObjectIdentifier {
    der::asn1::ObjectIdentifier::new_unwrap("2.5.29.14")
}

/// The serial numbers (big-endian bytes) a CRL lists; used to compute what a delta adds.
pub fn listed_serials(crl_der: &[u8]) -> Result<Vec<Vec<u8>>, CaError> {
    let crl = CertificateList::from_der(crl_der).map_err(der_err("stored CRL"))?;
    Ok(crl
        .tbs_cert_list
        .revoked_certificates
        .unwrap_or_default()
        .iter()
        .map(|r| r.serial_number.as_bytes().to_vec())
        .collect())
}
