//! Revocation: recording revoked certificates and publishing their status over OCSP and CRLs.
//!
//! A revocation flows one way: the admin API validates it ([`Revoker::revoke`]), it is
//! audited and stored, then the CRL of its issuer is re-signed ([`crl`]) and the OCSP
//! responder ([`ocsp`]) re-signs the answer for that certificate at once. Only long-lived
//! certificates (node certificates, issuing CAs) need this: 5-minute SVIDs expire instead.

pub mod answer_cache;
pub mod crl;
pub mod crl_der;
pub mod ocsp;
pub mod pointers;
pub mod responder_cert;
pub mod runtime;

use std::fmt;
use std::sync::Arc;

use der::asn1::ObjectIdentifier;
use x509_cert::spki::AlgorithmIdentifierOwned;

use crate::ca::Hierarchy;
use crate::keys::KeyAlgorithm;
use crate::store::{CertificateRecord, RevocationRecord, Store, StoreError};

const OID_ECDSA_SHA256: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.4.3.2");
const OID_ECDSA_SHA384: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.4.3.3");
const OID_ED25519: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.101.112");
const OID_RSA_SHA256: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.11");
const OID_RSA_SHA384: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.12");

/// The signatureAlgorithm of an OCSP response or CRL signed by a key of `alg`. ECDSA and Ed25519
/// identifiers have absent parameters (RFC 5758 §3.2, RFC 8410 §3); PKCS#1 v1.5 RSA ones carry
/// an explicit NULL (RFC 4055 §5).
pub(crate) fn signature_algorithm(alg: KeyAlgorithm) -> AlgorithmIdentifierOwned {
    let (oid, null_params) = match alg {
        KeyAlgorithm::EcdsaP256 => (OID_ECDSA_SHA256, false),
        KeyAlgorithm::EcdsaP384 => (OID_ECDSA_SHA384, false),
        KeyAlgorithm::Ed25519 => (OID_ED25519, false),
        KeyAlgorithm::Rsa3072 => (OID_RSA_SHA256, true),
        KeyAlgorithm::Rsa4096 => (OID_RSA_SHA384, true),
    };
    AlgorithmIdentifierOwned {
        oid,
        parameters: null_params.then(|| der::asn1::Any::from(der::asn1::Null)),
    }
}

/// RFC 5280 §5.3.1 CRLReason values an operator may give.
///
/// `certificateHold` (a revocation that can be undone) and `removeFromCRL` (delta CRLs
/// only) are not offered: a KeyGrid revocation is final.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    /// No reason given; CRL entries and OCSP answers then omit the reason.
    Unspecified = 0,
    /// The certificate's private key is known or suspected to be compromised.
    KeyCompromise = 1,
    /// The issuing CA's key is compromised.
    CaCompromise = 2,
    /// The subject's name or affiliation changed.
    AffiliationChanged = 3,
    /// A new certificate replaces it.
    Superseded = 4,
    /// The subject no longer operates (node decommissioned).
    CessationOfOperation = 5,
    /// A privilege asserted in the certificate was withdrawn.
    PrivilegeWithdrawn = 9,
    /// An attribute authority was compromised.
    AaCompromise = 10,
}

const REASONS: &[(Reason, &str)] = &[
    (Reason::Unspecified, "unspecified"),
    (Reason::KeyCompromise, "keyCompromise"),
    (Reason::CaCompromise, "cACompromise"),
    (Reason::AffiliationChanged, "affiliationChanged"),
    (Reason::Superseded, "superseded"),
    (Reason::CessationOfOperation, "cessationOfOperation"),
    (Reason::PrivilegeWithdrawn, "privilegeWithdrawn"),
    (Reason::AaCompromise, "aACompromise"),
];

impl Reason {
    /// Parses the RFC 5280 name (case-insensitive, so `keycompromise` works too).
    pub fn from_name(name: &str) -> Option<Self> {
        REASONS
            .iter()
            .find(|(_, n)| n.eq_ignore_ascii_case(name))
            .map(|(r, _)| *r)
    }

    /// The code stored and encoded in CRLs and OCSP answers.
    pub fn code(self) -> i64 {
        self as i64
    }

    /// From a stored code.
    pub fn from_code(code: i64) -> Option<Self> {
        REASONS
            .iter()
            .find(|(r, _)| r.code() == code)
            .map(|(r, _)| *r)
    }

    /// The RFC 5280 name.
    pub fn name(self) -> &'static str {
        REASONS
            .iter()
            .find(|(r, _)| *r == self)
            .map(|(_, n)| *n)
            .unwrap_or("unspecified")
    }

    /// All names, for error messages and `--help`.
    pub fn names() -> Vec<&'static str> {
        REASONS.iter().map(|(_, n)| *n).collect()
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What a relying party is told about one certificate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CertStatus {
    /// Issued by KeyGrid and not revoked.
    Good,
    /// Revoked at `at` (Unix seconds) for `reason`.
    Revoked {
        /// Revocation time, Unix seconds.
        at: i64,
        /// Why.
        reason: Reason,
    },
    /// Never issued by this issuer.
    Unknown,
}

/// Why a revocation was refused.
#[derive(Debug, thiserror::Error)]
pub enum RevokeError {
    /// Bad serial, issuer, reason or certificate.
    #[error("{0}")]
    InvalidArgument(String),
    /// No such certificate was issued.
    #[error("{0}")]
    NotFound(String),
    /// Already revoked.
    #[error("{0}")]
    AlreadyRevoked(String),
    /// Store failure (logged).
    #[error("internal error")]
    Internal,
}

impl From<StoreError> for RevokeError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound(m) => RevokeError::NotFound(m),
            StoreError::Conflict(m) => RevokeError::AlreadyRevoked(m),
            other => {
                tracing::error!(error = %other, "store failure during revocation");
                RevokeError::Internal
            }
        }
    }
}

/// Something told about every revocation after it is stored: CRL publishing, the OCSP
/// responder's cache.
pub trait RevocationListener: Send + Sync {
    /// Called once the revocation is durable.
    fn revoked(&self, rec: &RevocationRecord);
}

/// The log line for a revocation. The tamper-evident audit record itself is written by
/// [`Store::revoke_by`] in the same transaction as the revocation.
pub fn audit_revocation(actor: &str, rec: &RevocationRecord, subject: &str) {
    tracing::info!(
        target: "keygrid::audit",
        event = "certificate.revoked",
        actor,
        issuer = %rec.issuer,
        serial = %rec.serial,
        subject,
        reason = Reason::from_code(rec.reason).map(Reason::name).unwrap_or("unspecified"),
        revoked_at = rec.revoked_at,
        "certificate revoked"
    );
}

/// Normalises a serial given by an operator (`0A:1b...`, `0x0a1b`) to the store's form:
/// lowercase hex without separators or leading zero bytes.
pub fn normalize_serial(input: &str) -> Result<String, RevokeError> {
    let s = input.trim();
    let s = s
        .strip_prefix("0x")
        .or_else(|| s.strip_prefix("0X"))
        .unwrap_or(s);
    let hex: String = s.chars().filter(|c| *c != ':').collect();
    if hex.is_empty() || hex.len() > 42 || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(RevokeError::InvalidArgument(format!(
            "serial {input:?} is not a hexadecimal serial number"
        )));
    }
    let hex = if hex.len() % 2 == 1 {
        format!("0{hex}")
    } else {
        hex
    };
    Ok(serial_hex_from_bytes(
        &hex::decode(hex.to_ascii_lowercase())
            .map_err(|_| RevokeError::InvalidArgument(format!("bad serial {input:?}")))?,
    ))
}

/// The store's form of a DER INTEGER's content bytes: leading zero bytes dropped (they
/// only keep a positive number positive), lowercase hex.
pub fn serial_hex_from_bytes(bytes: &[u8]) -> String {
    let start = bytes
        .iter()
        .position(|b| *b != 0)
        .unwrap_or(bytes.len().saturating_sub(1));
    hex::encode(&bytes[start..])
}

/// A revocation request, already authenticated.
#[derive(Clone, Debug)]
pub struct RevokeRequest {
    /// Issuer name; empty to find it from the serial or certificate.
    pub issuer: String,
    /// Serial (any common hex form); empty when `certificate_der` is given.
    pub serial: String,
    /// The certificate itself, as an alternative to the serial.
    pub certificate_der: Vec<u8>,
    /// Why.
    pub reason: Reason,
    /// Who asked, for the audit record.
    pub actor: String,
}

/// The revocation service used by the admin API.
pub struct Revoker {
    store: Arc<Store>,
    ca: Arc<Hierarchy>,
    listeners: Vec<Arc<dyn RevocationListener>>,
}

impl Revoker {
    /// Creates the service; `listeners` hear about each stored revocation.
    pub fn new(
        store: Arc<Store>,
        ca: Arc<Hierarchy>,
        listeners: Vec<Arc<dyn RevocationListener>>,
    ) -> Self {
        Revoker {
            store,
            ca,
            listeners,
        }
    }

    /// Resolves the request to one issued certificate, records the revocation, audits it
    /// and tells the listeners. Nothing is written if any check fails.
    pub fn revoke(
        &self,
        req: &RevokeRequest,
    ) -> Result<(RevocationRecord, CertificateRecord), RevokeError> {
        let (issuer, serial) = self.resolve(req)?;
        let cert = self.store.certificate(&issuer, &serial)?.ok_or_else(|| {
            RevokeError::NotFound(format!(
                "no certificate with serial {serial} was issued by {issuer}"
            ))
        })?;
        if !req.certificate_der.is_empty()
            && cert.sha256 != crate::ca::sha256_hex(&req.certificate_der)
        {
            return Err(RevokeError::InvalidArgument(
                "the certificate given is not the one KeyGrid issued with that serial".into(),
            ));
        }
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        let rec = self
            .store
            .revoke_by(&req.actor, &issuer, &serial, req.reason.code(), now)?;
        audit_revocation(&req.actor, &rec, &cert.subject);
        for l in &self.listeners {
            l.revoked(&rec);
        }
        Ok((rec, cert))
    }

    fn resolve(&self, req: &RevokeRequest) -> Result<(String, String), RevokeError> {
        let mut names: Vec<String> = self
            .ca
            .authorities()
            .iter()
            .map(|a| a.name().to_string())
            .collect();
        names.dedup();
        if !req.issuer.is_empty() && !names.contains(&req.issuer) {
            return Err(RevokeError::InvalidArgument(format!(
                "unknown issuer {:?}; issuers are {}",
                req.issuer,
                names.join(", ")
            )));
        }
        let (issuer_hint, serial) = if !req.certificate_der.is_empty() {
            let (_, cert) =
                x509_parser::parse_x509_certificate(&req.certificate_der).map_err(|_| {
                    RevokeError::InvalidArgument("the certificate does not parse".into())
                })?;
            let issuer = self
                .ca
                .authorities()
                .iter()
                .find(|a| {
                    x509_parser::parse_x509_certificate(a.cert_der())
                        .map(|(_, ca)| ca.subject().as_raw() == cert.issuer().as_raw())
                        .unwrap_or(false)
                })
                .map(|a| a.name().to_string())
                .ok_or_else(|| {
                    RevokeError::NotFound("the certificate was not issued by a KeyGrid CA".into())
                })?;
            (Some(issuer), serial_hex_from_bytes(cert.raw_serial()))
        } else {
            if req.serial.is_empty() {
                return Err(RevokeError::InvalidArgument(
                    "give a serial number or a certificate".into(),
                ));
            }
            (None, normalize_serial(&req.serial)?)
        };
        if let Some(issuer) =
            issuer_hint.or_else(|| (!req.issuer.is_empty()).then(|| req.issuer.clone()))
        {
            return Ok((issuer, serial));
        }
        let mut found = Vec::new();
        for name in &names {
            if self.store.certificate(name, &serial)?.is_some() {
                found.push(name.clone());
            }
        }
        match found.len() {
            0 => Err(RevokeError::NotFound(format!(
                "no certificate with serial {serial} was issued by KeyGrid"
            ))),
            1 => Ok((found.remove(0), serial)),
            _ => Err(RevokeError::InvalidArgument(format!(
                "serial {serial} exists under several issuers ({}); name one with --issuer",
                found.join(", ")
            ))),
        }
    }
}

/// Records the issuing CA certificates as issued by their parent, so that they can be
/// revoked and their status answered like any other certificate.
pub fn record_ca_certificates(store: &Store, ca: &Hierarchy) -> Result<(), StoreError> {
    let records = store.authorities()?;
    for rec in records {
        let Some(parent) = rec.parent else { continue };
        let (_, cert) = x509_parser::parse_x509_certificate(&rec.cert_der)
            .map_err(|e| StoreError::Corrupt(format!("{} certificate: {e}", rec.name)))?;
        store.record_certificate_if_absent(&CertificateRecord {
            issuer: parent,
            issuer_generation: rec.parent_generation.unwrap_or(1),
            serial: serial_hex_from_bytes(cert.raw_serial()),
            profile: "issuing-ca".into(),
            subject: format!("{} generation {}", rec.name, rec.generation),
            not_before: cert.validity().not_before.timestamp(),
            not_after: cert.validity().not_after.timestamp(),
            sha256: crate::ca::sha256_hex(&rec.cert_der),
        })?;
    }
    let _ = ca;
    Ok(())
}

#[cfg(test)]
mod unit_tests {
    use super::*;

    #[test]
    fn reasons_round_trip_and_refuse_hold() {
        assert_eq!(
            Reason::from_name("keyCompromise"),
            Some(Reason::KeyCompromise)
        );
        assert_eq!(
            Reason::from_name("KEYCOMPROMISE"),
            Some(Reason::KeyCompromise)
        );
        assert_eq!(Reason::from_name("certificateHold"), None);
        assert_eq!(Reason::from_name("removeFromCRL"), None);
        for name in Reason::names() {
            let r = Reason::from_name(name).unwrap();
            assert_eq!(Reason::from_code(r.code()), Some(r));
        }
    }

    #[test]
    fn serials_are_normalised() {
        assert_eq!(normalize_serial("0A:1B").unwrap(), "0a1b");
        assert_eq!(normalize_serial("0x00ff").unwrap(), "ff");
        assert_eq!(normalize_serial("abc").unwrap(), "0abc");
        assert!(normalize_serial("xyz").is_err());
        assert!(normalize_serial("").is_err());
        assert_eq!(serial_hex_from_bytes(&[0, 0x80, 1]), "8001");
        assert_eq!(serial_hex_from_bytes(&[0]), "00");
    }
}

#[cfg(test)]
mod tests;
