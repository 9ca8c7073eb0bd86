//! CRLs: a v2 CRL per issuer (RFC 5280 §5), signed by the issuer's own key.
//!
//! Each CRL carries the Authority Key Identifier of its issuer, a CRL Number that only
//! grows (allocated from the store, so it survives restarts), nextUpdate, and for each
//! entry the revocation time and reason (omitted for `unspecified`, as §5.3.1 asks). A new
//! CRL is published on every revocation and on a schedule before nextUpdate; the store
//! keeps the newest few, and every HTTP front end serves the newest from there.

use std::sync::Arc;
use std::time::Duration;

use rcgen::{
    CertificateRevocationListParams, KeyIdMethod, RevocationReason, RevokedCertParams, SerialNumber,
};
use time::OffsetDateTime;

use super::{Reason, RevocationListener};
use crate::ca::{Authority, CaError, Hierarchy};
use crate::store::{CrlRecord, RevocationRecord, Store};

/// How many CRLs per issuer the store keeps.
const KEEP_CRLS: i64 = 4;

/// CRL settings.
#[derive(Clone, Debug)]
pub struct CrlSettings {
    /// thisUpdate to nextUpdate.
    pub validity: Duration,
}

/// Builds and publishes CRLs.
pub struct CrlPublisher {
    store: Arc<Store>,
    ca: Arc<Hierarchy>,
    settings: CrlSettings,
    known_authorities: std::sync::atomic::AtomicUsize,
}

fn rcgen_reason(r: Reason) -> Option<RevocationReason> {
    Some(match r {
        Reason::Unspecified => return None,
        Reason::KeyCompromise => RevocationReason::KeyCompromise,
        Reason::CaCompromise => RevocationReason::CaCompromise,
        Reason::AffiliationChanged => RevocationReason::AffiliationChanged,
        Reason::Superseded => RevocationReason::Superseded,
        Reason::CessationOfOperation => RevocationReason::CessationOfOperation,
        Reason::PrivilegeWithdrawn => RevocationReason::PrivilegeWithdrawn,
        Reason::AaCompromise => RevocationReason::AaCompromise,
    })
}

/// The Subject Key Identifier of a CA certificate, so the CRL's AKI matches it exactly.
fn subject_key_id(cert_der: &[u8]) -> Option<Vec<u8>> {
    let (_, cert) = x509_parser::parse_x509_certificate(cert_der).ok()?;
    cert.extensions()
        .iter()
        .find_map(|e| match e.parsed_extension() {
            x509_parser::extensions::ParsedExtension::SubjectKeyIdentifier(k) => Some(k.0.to_vec()),
            _ => None,
        })
}

impl CrlPublisher {
    /// Creates the publisher.
    pub fn new(store: Arc<Store>, ca: Arc<Hierarchy>, settings: CrlSettings) -> Self {
        CrlPublisher {
            store,
            ca,
            settings,
            known_authorities: std::sync::atomic::AtomicUsize::new(0),
        }
    }

    /// The CA generation that signs each issuer's CRL: the active one.
    fn active_authorities(&self, now: i64) -> Vec<Arc<Authority>> {
        let mut names: Vec<String> = self
            .ca
            .authorities()
            .iter()
            .map(|a| a.name().to_string())
            .collect();
        names.dedup();
        names
            .iter()
            .filter_map(|n| self.ca.active_at(n, now).ok())
            .collect()
    }

    /// Signs and publishes a new complete CRL for `issuer`. Blocking (store, HSM).
    pub fn publish(&self, issuer: &Authority) -> Result<CrlRecord, CaError> {
        let revoked = self.store.revocations(Some(issuer.name()), 0)?;
        let number = self.store.next_crl_number(issuer.name())?;
        let now = OffsetDateTime::now_utc();
        let mut revoked_certs = Vec::with_capacity(revoked.len());
        for r in &revoked {
            let serial = hex::decode(&r.serial).map_err(|_| {
                CaError::Corrupt(format!("stored serial {:?} is not hex", r.serial))
            })?;
            revoked_certs.push(RevokedCertParams {
                serial_number: SerialNumber::from_slice(&serial),
                revocation_time: OffsetDateTime::from_unix_timestamp(r.revoked_at)
                    .map_err(|e| CaError::Corrupt(format!("revocation time: {e}")))?,
                reason_code: Reason::from_code(r.reason).and_then(rcgen_reason),
                invalidity_date: None,
            });
        }
        let key_identifier_method = match subject_key_id(issuer.cert_der()) {
            Some(ski) => KeyIdMethod::PreSpecified(ski),
            None => KeyIdMethod::Sha256,
        };
        let params = CertificateRevocationListParams {
            this_update: now,
            next_update: now + self.settings.validity,
            crl_number: SerialNumber::from_slice(&(number as u64).to_be_bytes()),
            issuing_distribution_point: None,
            revoked_certs,
            key_identifier_method,
        };
        let der = issuer.sign_crl(&params)?;
        let rec = CrlRecord {
            issuer: issuer.name().to_string(),
            number,
            base_number: None,
            this_update: now.unix_timestamp(),
            next_update: (now + self.settings.validity).unix_timestamp(),
            der,
        };
        self.store.publish_crl(&rec, KEEP_CRLS)?;
        tracing::info!(
            issuer = issuer.name(),
            number,
            entries = revoked.len(),
            "CRL published"
        );
        Ok(rec)
    }

    /// Publishes a CRL for each issuer whose newest one is missing or past half of its
    /// validity. Blocking.
    pub fn publish_due(&self) {
        let now = OffsetDateTime::now_utc().unix_timestamp();
        // A CA generation created by a rotation becomes revocable like the others.
        let count = self.ca.authorities().len();
        if self
            .known_authorities
            .swap(count, std::sync::atomic::Ordering::AcqRel)
            != count
        {
            if let Err(e) = super::record_ca_certificates(&self.store, &self.ca) {
                tracing::error!(error = %e, "cannot record new CA certificates");
            }
        }
        for a in self.active_authorities(now) {
            let due = match self.store.latest_crl(a.name(), false) {
                Ok(Some(c)) => now >= c.this_update + (c.next_update - c.this_update) / 2,
                Ok(None) => true,
                Err(e) => {
                    tracing::error!(error = %e, "cannot read the latest CRL");
                    continue;
                }
            };
            if due {
                if let Err(e) = self.publish(&a) {
                    tracing::error!(issuer = a.name(), error = %e, "CRL publication failed");
                }
            }
        }
    }
}

impl RevocationListener for CrlPublisher {
    fn revoked(&self, rec: &RevocationRecord) {
        let now = OffsetDateTime::now_utc().unix_timestamp();
        let Ok(a) = self.ca.active_at(&rec.issuer, now) else {
            return;
        };
        if let Err(e) = self.publish(&a) {
            tracing::error!(issuer = %rec.issuer, error = %e,
                "CRL publication after revocation failed; the scheduled run retries");
        }
    }
}
