//! CRLs: v2 CRLs per issuer (RFC 5280 §5), signed by the issuer's own key.
//!
//! Each CRL carries the Authority Key Identifier of its issuer, a CRL Number that only
//! grows (allocated from the store, so it survives restarts), nextUpdate, and for each
//! entry the revocation time and reason (omitted for `unspecified`, as §5.3.1 asks).
//!
//! Two modes. Without delta CRLs (the default) a new complete CRL is published on every
//! revocation and on a schedule before nextUpdate. With `http.delta_crl_validity` set,
//! complete CRLs follow their (typically long) schedule only and carry a Freshest CRL
//! pointer; each revocation instead publishes a small delta CRL (Delta CRL Indicator naming
//! the complete CRL it updates, §5.2.4) listing what was revoked since, and deltas are
//! re-published on their own short schedule. Relying parties then fetch the large complete
//! CRL rarely and the delta often. The store keeps the newest few of each kind, and every
//! HTTP front end serves the newest from there.

use std::sync::Arc;
use std::time::Duration;

use time::OffsetDateTime;

use super::crl_der::{self, CrlContents, CrlEntry};
use super::RevocationListener;
use crate::ca::{Authority, CaError, Hierarchy};
use crate::store::{CrlRecord, RevocationRecord, Store};

/// How many CRLs per issuer the store keeps.
const KEEP_CRLS: i64 = 4;

/// CRL settings.
#[derive(Clone, Debug)]
pub struct CrlSettings {
    /// thisUpdate to nextUpdate of a complete CRL.
    pub validity: Duration,
    /// thisUpdate to nextUpdate of a delta CRL; `None` publishes no delta CRLs.
    pub delta_validity: Option<Duration>,
    /// Public base URL of the HTTP listener, for the Freshest CRL pointer of complete CRLs
    /// (`<base>/crl/<issuer>-delta.crl`); `None` leaves the pointer out.
    pub public_base: Option<String>,
}

/// The URL path under which the delta CRL of `issuer` is served.
pub fn delta_crl_path(issuer: &str) -> String {
    format!("/crl/{issuer}-delta.crl")
}

/// Builds and publishes CRLs.
pub struct CrlPublisher {
    store: Arc<Store>,
    ca: Arc<Hierarchy>,
    settings: CrlSettings,
    known_authorities: std::sync::atomic::AtomicUsize,
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

    fn entries(&self, revoked: &[RevocationRecord]) -> Result<Vec<CrlEntry>, CaError> {
        revoked
            .iter()
            .map(|r| {
                Ok(CrlEntry {
                    serial: hex::decode(&r.serial).map_err(|_| {
                        CaError::Corrupt(format!("stored serial {:?} is not hex", r.serial))
                    })?,
                    revoked_at: r.revoked_at,
                    reason: u32::try_from(r.reason).ok().filter(|c| *c != 0),
                })
            })
            .collect()
    }

    fn sign_and_store(
        &self,
        issuer: &Authority,
        number: i64,
        base_number: Option<i64>,
        validity: Duration,
        entries: Vec<CrlEntry>,
    ) -> Result<CrlRecord, CaError> {
        let now = OffsetDateTime::now_utc().unix_timestamp();
        let next_update = now + validity.as_secs() as i64;
        let freshest = match (&self.settings.public_base, self.settings.delta_validity) {
            (Some(base), Some(_)) => Some(format!(
                "{}{}",
                base.trim_end_matches('/'),
                delta_crl_path(issuer.name())
            )),
            _ => None,
        };
        let count = entries.len();
        let der = crl_der::sign_crl(
            &CrlContents {
                issuer_cert_der: issuer.cert_der(),
                this_update: now,
                next_update,
                number: u64::try_from(number)
                    .map_err(|_| CaError::Corrupt("negative CRL number".into()))?,
                base_number: base_number.and_then(|b| u64::try_from(b).ok()),
                freshest_url: freshest.as_deref(),
                entries,
            },
            issuer.signer().as_ref(),
        )?;
        let rec = CrlRecord {
            issuer: issuer.name().to_string(),
            number,
            base_number,
            this_update: now,
            next_update,
            der,
        };
        self.store.publish_crl(&rec, KEEP_CRLS)?;
        tracing::info!(
            issuer = issuer.name(),
            number,
            base = ?base_number,
            entries = count,
            "CRL published"
        );
        Ok(rec)
    }

    /// Signs and publishes a new complete CRL for `issuer`. Blocking (store, HSM).
    pub fn publish(&self, issuer: &Authority) -> Result<CrlRecord, CaError> {
        let revoked = self.store.revocations(Some(issuer.name()), 0)?;
        let entries = self.entries(&revoked)?;
        let number = self.store.next_crl_number(issuer.name())?;
        self.sign_and_store(issuer, number, None, self.settings.validity, entries)
    }

    /// Signs and publishes a delta CRL for `issuer`: what was revoked since its newest
    /// complete CRL. Publishes a complete CRL instead when there is none yet (a delta needs
    /// a base). Blocking.
    pub fn publish_delta(&self, issuer: &Authority) -> Result<CrlRecord, CaError> {
        let Some(validity) = self.settings.delta_validity else {
            return self.publish(issuer);
        };
        let Some(base) = self.store.latest_crl(issuer.name(), false)? else {
            return self.publish(issuer);
        };
        let listed = crl_der::listed_serials(&base.der)?;
        let revoked = self.store.revocations(Some(issuer.name()), 0)?;
        let entries: Vec<CrlEntry> = self
            .entries(&revoked)?
            .into_iter()
            .filter(|e| !listed.contains(&e.serial))
            .collect();
        let number = self.store.next_crl_number(issuer.name())?;
        self.sign_and_store(issuer, number, Some(base.number), validity, entries)
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
            let latest = match self.store.latest_crl(a.name(), false) {
                Ok(latest) => latest,
                Err(e) => {
                    tracing::error!(error = %e, "cannot read the latest CRL");
                    continue;
                }
            };
            let due = latest.as_ref().is_none_or(|c| past_half_life(c, now));
            if due {
                if let Err(e) = self.publish(&a) {
                    tracing::error!(issuer = a.name(), error = %e, "CRL publication failed");
                    continue;
                }
            }
            // After a new complete CRL a delta against it is always due; otherwise only
            // when the newest delta refers to an older base or is past half-life.
            if self.settings.delta_validity.is_some()
                && (due || latest.is_some_and(|base| self.delta_due(a.name(), base.number, now)))
            {
                if let Err(e) = self.publish_delta(&a) {
                    tracing::error!(issuer = a.name(), error = %e, "delta CRL publication failed");
                }
            }
        }
    }

    /// Whether the newest delta CRL of `issuer` is missing, refers to a base older than
    /// `base`, or is past half of its validity.
    fn delta_due(&self, issuer: &str, base: i64, now: i64) -> bool {
        match self.store.latest_crl(issuer, true) {
            Ok(Some(d)) => d.base_number != Some(base) || past_half_life(&d, now),
            Ok(None) => true,
            Err(e) => {
                tracing::error!(error = %e, "cannot read the latest delta CRL");
                false
            }
        }
    }
}

/// CRLs are re-published once half of their validity has passed.
fn past_half_life(c: &CrlRecord, now: i64) -> bool {
    now >= c.this_update + (c.next_update - c.this_update) / 2
}

impl RevocationListener for CrlPublisher {
    fn revoked(&self, rec: &RevocationRecord) {
        let now = OffsetDateTime::now_utc().unix_timestamp();
        let Ok(a) = self.ca.active_at(&rec.issuer, now) else {
            return;
        };
        // With delta CRLs a revocation goes into a new delta; without, into a new complete CRL.
        let published = if self.settings.delta_validity.is_some() {
            self.publish_delta(&a)
        } else {
            self.publish(&a)
        };
        if let Err(e) = published {
            tracing::error!(issuer = %rec.issuer, error = %e,
                "CRL publication after revocation failed; the scheduled run retries");
        }
    }
}
