//! Delegated OCSP responder credentials: one software key and certificate per issuer.
//!
//! The CA key (in the HSM) signs only this short-lived certificate, once per rotation; the
//! responder signs every OCSP response with the software key (aws-lc-rs), so HSM latency
//! and throughput never sit on the OCSP hot path. The certificate carries EKU
//! `id-kp-OCSPSigning` and `id-pkix-ocsp-nocheck` (RFC 6960 §4.2.2.2 and §4.2.2.2.1), so
//! clients do not ask for its own revocation status, which is why it must be short-lived.

use std::sync::Arc;
use std::time::Duration;

use der::Decode;
use rcgen::{
    CertificateParams, CustomExtension, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyUsagePurpose,
};
use time::OffsetDateTime;

use crate::ca::{Authority, CaError};
use crate::keys::software::SoftwareKey;
use crate::keys::{CaSigner, KeyAlgorithm, RcgenSigner};
use crate::store::Store;

/// Profile name recorded in the store for responder certificates.
pub const PROFILE_OCSP_RESPONDER: &str = "ocsp-responder";

/// `id-pkix-ocsp-nocheck` (1.3.6.1.5.5.7.48.1.5).
const OCSP_NOCHECK: &[u64] = &[1, 3, 6, 1, 5, 5, 7, 48, 1, 5];

/// A delegated responder: its key, its certificate and the facts responses need.
pub struct ResponderCredential {
    /// The signing key, in memory.
    pub key: Arc<SoftwareKey>,
    /// The certificate, DER.
    pub cert_der: Vec<u8>,
    /// The certificate decoded, for the `certs` field of responses.
    pub cert: x509_cert::Certificate,
    /// SHA-1 of the public key bits: the `ResponderID byKey` value.
    pub key_hash: Vec<u8>,
    /// Serial, lowercase hex.
    pub serial_hex: String,
    /// Validity start, Unix seconds.
    pub not_before: i64,
    /// Validity end, Unix seconds.
    pub not_after: i64,
    /// When to replace it: half of the requested lifetime after issuance.
    pub rotate_at: i64,
}

/// The profile of a delegated OCSP responder certificate for `issuer`.
fn profile(issuer: &str) -> CertificateParams {
    let mut p = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "KeyGrid");
    dn.push(
        DnType::CommonName,
        format!("KeyGrid OCSP responder ({issuer})"),
    );
    p.distinguished_name = dn;
    p.is_ca = IsCa::ExplicitNoCa;
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::OcspSigning];
    // extnValue is the DER NULL.
    p.custom_extensions = vec![CustomExtension::from_oid_content(
        OCSP_NOCHECK,
        vec![0x05, 0x00],
    )];
    p.use_authority_key_identifier_extension = true;
    p
}

impl ResponderCredential {
    /// Generates a key and has `authority` certify it for `ttl`. The certificate is
    /// recorded in the store like any other, so its own status is `good`.
    pub fn issue(
        authority: &Authority,
        algorithm: KeyAlgorithm,
        ttl: Duration,
        store: &Store,
    ) -> Result<Self, CaError> {
        let key = Arc::new(SoftwareKey::generate(algorithm)?);
        let now = OffsetDateTime::now_utc();
        let issued = authority.sign(
            profile(authority.name()),
            &RcgenSigner(key.as_ref()),
            ttl,
            now,
        )?;
        store.record_certificate(&issued.record(
            authority,
            PROFILE_OCSP_RESPONDER,
            &format!("KeyGrid OCSP responder ({})", authority.name()),
        ))?;
        let cert = x509_cert::Certificate::from_der(&issued.der)
            .map_err(|e| CaError::Corrupt(format!("responder certificate does not decode: {e}")))?;
        let key_hash = aws_lc_rs::digest::digest(
            &aws_lc_rs::digest::SHA1_FOR_LEGACY_USE_ONLY,
            key.public_key_raw(),
        )
        .as_ref()
        .to_vec();
        Ok(ResponderCredential {
            key,
            cert_der: issued.der,
            cert,
            key_hash,
            serial_hex: issued.serial_hex,
            not_before: issued.not_before,
            not_after: issued.not_after,
            rotate_at: now.unix_timestamp() + (ttl.as_secs() / 2) as i64,
        })
    }

    /// True once less than half of the certificate's lifetime is left: time to rotate,
    /// while responses signed with it (valid for much less) stay verifiable.
    pub fn due_for_rotation(&self, now: i64) -> bool {
        now >= self.rotate_at
    }
}
