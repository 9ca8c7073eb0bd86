//! Revocations and published CRLs.
//!
//! A revocation names a certificate the store recorded (issuer + serial); the CRLs built
//! from them are kept here too, so every process serving the store (core, `keygrid ocsp
//! serve`) publishes the same CRL with the same CRL Number.

use super::sql::{args, Row};
use super::{conflict_or, CertificateRecord, Store, StoreError};

/// One revoked certificate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RevocationRecord {
    /// Increasing sequence number; lets other processes pick up new revocations.
    pub seq: i64,
    /// Issuer name.
    pub issuer: String,
    /// Serial number, lowercase hex.
    pub serial: String,
    /// RFC 5280 CRLReason code.
    pub reason: i64,
    /// When it was revoked, Unix seconds.
    pub revoked_at: i64,
}

/// A published CRL.
#[derive(Clone, Debug)]
pub struct CrlRecord {
    /// Issuer name.
    pub issuer: String,
    /// CRL Number.
    pub number: i64,
    /// For a delta CRL, the number of the complete CRL it updates.
    pub base_number: Option<i64>,
    /// thisUpdate, Unix seconds.
    pub this_update: i64,
    /// nextUpdate, Unix seconds.
    pub next_update: i64,
    /// The signed CRL, DER.
    pub der: Vec<u8>,
}

fn row_to_revocation(r: &Row) -> Result<RevocationRecord, StoreError> {
    Ok(RevocationRecord {
        seq: r.get(0)?,
        issuer: r.get(1)?,
        serial: r.get(2)?,
        reason: r.get(3)?,
        revoked_at: r.get(4)?,
    })
}

fn row_to_crl(r: &Row) -> Result<CrlRecord, StoreError> {
    Ok(CrlRecord {
        issuer: r.get(0)?,
        number: r.get(1)?,
        base_number: r.get(2)?,
        this_update: r.get(3)?,
        next_update: r.get(4)?,
        der: r.get(5)?,
    })
}

const REVOCATION_COLUMNS: &str = "seq, issuer, serial, reason, revoked_at";
const CRL_COLUMNS: &str = "issuer, number, base_number, this_update, next_update, der";

impl Store {
    /// Records a revocation and its audit record for `actor`. The certificate must have
    /// been recorded as issued (`NotFound` otherwise) and not be revoked already
    /// (`Conflict`).
    pub fn revoke_by(
        &self,
        actor: &str,
        issuer: &str,
        serial: &str,
        reason: i64,
        revoked_at: i64,
    ) -> Result<RevocationRecord, StoreError> {
        self.write(|tx| {
            let issued = tx.query_opt(
                "SELECT subject, sha256 FROM certificates WHERE issuer = ?1 AND serial = ?2",
                args![issuer, serial],
            )?;
            let Some(issued) = issued else {
                return Err(StoreError::NotFound(format!(
                    "no certificate with serial {serial} was issued by {issuer}"
                )));
            };
            let row = tx
                .query_one(
                    "INSERT INTO revocations (issuer, serial, reason, revoked_at) VALUES (?1, ?2, ?3, ?4) RETURNING seq",
                    args![issuer, serial, reason, revoked_at],
                )
                .map_err(|e| {
                    conflict_or(e, || {
                        format!("serial {serial} of {issuer} is already revoked")
                    })
                })?;
            let seq: i64 = row.get(0)?;
            super::audit::append(
                tx,
                &super::audit::AuditEvent {
                    at: revoked_at,
                    kind: "certificate.revoked".into(),
                    actor: actor.to_string(),
                    subject: issued.get(0)?,
                    serial: serial.to_string(),
                    fingerprint: issued.get(1)?,
                    detail: format!("issuer {issuer} reason code {reason}"),
                    ..Default::default()
                },
            )?;
            Ok(RevocationRecord {
                seq,
                issuer: issuer.to_string(),
                serial: serial.to_string(),
                reason,
                revoked_at,
            })
        })
    }

    /// [`Store::revoke_by`] for core itself.
    pub fn revoke(
        &self,
        issuer: &str,
        serial: &str,
        reason: i64,
        revoked_at: i64,
    ) -> Result<RevocationRecord, StoreError> {
        self.revoke_by("keygrid", issuer, serial, reason, revoked_at)
    }

    /// The revocation of one certificate, if it is revoked.
    pub fn revocation(
        &self,
        issuer: &str,
        serial: &str,
    ) -> Result<Option<RevocationRecord>, StoreError> {
        let row = self.read(|c| {
            c.query_opt(
                &format!(
                    "SELECT {REVOCATION_COLUMNS} FROM revocations WHERE issuer = ?1 AND serial = ?2"
                ),
                args![issuer, serial],
            )
        })?;
        row.as_ref().map(row_to_revocation).transpose()
    }

    /// Revocations with a sequence number above `after_seq`, oldest first, optionally of
    /// one issuer only. `after_seq = 0` lists all.
    pub fn revocations(
        &self,
        issuer: Option<&str>,
        after_seq: i64,
    ) -> Result<Vec<RevocationRecord>, StoreError> {
        let rows = self.read(|c| match issuer {
            Some(i) => c.query(
                &format!(
                    "SELECT {REVOCATION_COLUMNS} FROM revocations WHERE issuer = ?1 AND seq > ?2 ORDER BY seq"
                ),
                args![i, after_seq],
            ),
            None => c.query(
                &format!("SELECT {REVOCATION_COLUMNS} FROM revocations WHERE seq > ?1 ORDER BY seq"),
                args![after_seq],
            ),
        })?;
        rows.iter().map(row_to_revocation).collect()
    }

    /// Issued certificates, newest first, at most `limit`; with `revoked_only`, only those
    /// revoked (each with its revocation).
    pub fn list_certificates(
        &self,
        revoked_only: bool,
        limit: i64,
    ) -> Result<Vec<(CertificateRecord, Option<RevocationRecord>)>, StoreError> {
        let filter = if revoked_only {
            "WHERE r.seq IS NOT NULL"
        } else {
            ""
        };
        let rows = self.read(|c| {
            c.query(
                &format!(
                    "SELECT c.issuer, c.serial, c.profile, c.subject, c.not_before, c.not_after, c.sha256,                             r.seq, r.reason, r.revoked_at, c.issuer_generation                      FROM certificates c LEFT JOIN revocations r ON r.issuer = c.issuer AND r.serial = c.serial                      {filter} ORDER BY c.not_before DESC, c.serial LIMIT ?1"
                ),
                args![limit],
            )
        })?;
        rows.iter()
            .map(|r| {
                let cert = CertificateRecord {
                    issuer: r.get(0)?,
                    issuer_generation: r.get(10)?,
                    serial: r.get(1)?,
                    profile: r.get(2)?,
                    subject: r.get(3)?,
                    not_before: r.get(4)?,
                    not_after: r.get(5)?,
                    sha256: r.get(6)?,
                };
                let seq: Option<i64> = r.get(7)?;
                let rev = match seq {
                    Some(seq) => Some(RevocationRecord {
                        seq,
                        issuer: cert.issuer.clone(),
                        serial: cert.serial.clone(),
                        reason: r.get(8)?,
                        revoked_at: r.get(9)?,
                    }),
                    None => None,
                };
                Ok((cert, rev))
            })
            .collect()
    }

    /// Records a certificate unless the same (issuer, serial) is already recorded; used
    /// for CA certificates, which the hierarchy creates outside the issuance path.
    pub fn record_certificate_if_absent(&self, rec: &CertificateRecord) -> Result<(), StoreError> {
        self.write(|tx| {
            let n = tx.execute(
                "INSERT INTO certificates (issuer, serial, profile, subject, not_before, not_after, sha256, issuer_generation)                  VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8) ON CONFLICT (issuer, serial) DO NOTHING",
                args![rec.issuer, rec.serial, rec.profile, rec.subject, rec.not_before, rec.not_after, rec.sha256, rec.issuer_generation],
            )?;
            if n == 1 {
                super::audit_issuance(tx, rec, "certificate.recorded", "keygrid")?;
            }
            Ok(())
        })
    }

    /// The number the next CRL of `issuer` gets (complete and delta CRLs share one
    /// sequence, RFC 5280 §5.2.3).
    pub fn next_crl_number(&self, issuer: &str) -> Result<i64, StoreError> {
        let max: Option<i64> = self.read(|c| {
            c.query_one(
                "SELECT MAX(number) FROM crls WHERE issuer = ?1",
                args![issuer],
            )?
            .get(0)
        })?;
        Ok(max.unwrap_or(0) + 1)
    }

    /// Publishes a CRL and forgets all but the newest `keep` of that issuer and kind
    /// (complete CRLs and delta CRLs are kept separately, so frequent deltas never push the
    /// complete CRL they refer to out of the store).
    pub fn publish_crl(&self, crl: &CrlRecord, keep: i64) -> Result<(), StoreError> {
        self.write(|tx| {
            tx.execute(
                &format!("INSERT INTO crls ({CRL_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6)"),
                args![
                    crl.issuer,
                    crl.number,
                    crl.base_number,
                    crl.this_update,
                    crl.next_update,
                    crl.der
                ],
            )
            .map_err(|e| {
                conflict_or(e, || {
                    format!("CRL number {} of {} already exists", crl.number, crl.issuer)
                })
            })?;
            let kind = if crl.base_number.is_some() {
                "base_number IS NOT NULL"
            } else {
                "base_number IS NULL"
            };
            tx.execute(
                &format!(
                    "DELETE FROM crls WHERE issuer = ?1 AND {kind} AND number NOT IN \
                     (SELECT number FROM crls WHERE issuer = ?1 AND {kind} \
                      ORDER BY number DESC LIMIT ?2)"
                ),
                args![crl.issuer, keep],
            )?;
            Ok(())
        })
    }

    /// The newest complete CRL (`delta = false`) or delta CRL (`delta = true`) of `issuer`.
    pub fn latest_crl(&self, issuer: &str, delta: bool) -> Result<Option<CrlRecord>, StoreError> {
        let kind = if delta {
            "base_number IS NOT NULL"
        } else {
            "base_number IS NULL"
        };
        let row = self.read(|c| {
            c.query_opt(
                &format!(
                    "SELECT {CRL_COLUMNS} FROM crls WHERE issuer = ?1 AND {kind} ORDER BY number DESC LIMIT 1"
                ),
                args![issuer],
            )
        })?;
        row.as_ref().map(row_to_crl).transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert(issuer: &str, serial: &str) -> CertificateRecord {
        CertificateRecord {
            issuer: issuer.into(),
            issuer_generation: 1,
            serial: serial.into(),
            profile: "node".into(),
            subject: "spiffe://example.org/node".into(),
            not_before: 1,
            not_after: 2,
            sha256: "00".into(),
        }
    }

    #[test]
    fn revoking_needs_an_issued_certificate_and_happens_once() {
        let store = Store::in_memory().unwrap();
        let err = store.revoke("nodes", "0a", 1, 100).unwrap_err();
        assert!(matches!(err, StoreError::NotFound(_)), "{err}");
        store.record_certificate(&cert("nodes", "0a")).unwrap();
        let rec = store.revoke("nodes", "0a", 1, 100).unwrap();
        assert_eq!(rec.reason, 1);
        let again = store.revoke("nodes", "0a", 4, 200).unwrap_err();
        assert!(matches!(again, StoreError::Conflict(_)), "{again}");
        assert_eq!(store.revocation("nodes", "0a").unwrap(), Some(rec.clone()));
        assert_eq!(store.revocation("workloads", "0a").unwrap(), None);
        assert_eq!(store.revocations(None, 0).unwrap(), vec![rec.clone()]);
        assert!(store.revocations(None, rec.seq).unwrap().is_empty());
        let listed = store.list_certificates(true, 10).unwrap();
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].1.as_ref().map(|r| r.reason), Some(1));
    }

    #[test]
    fn crl_numbers_increase_and_old_crls_are_pruned() {
        let store = Store::in_memory().unwrap();
        assert_eq!(store.next_crl_number("nodes").unwrap(), 1);
        for n in 1..=5 {
            assert_eq!(store.next_crl_number("nodes").unwrap(), n);
            store
                .publish_crl(
                    &CrlRecord {
                        issuer: "nodes".into(),
                        number: n,
                        base_number: None,
                        this_update: n,
                        next_update: n + 10,
                        der: vec![n as u8],
                    },
                    2,
                )
                .unwrap();
        }
        assert_eq!(store.latest_crl("nodes", false).unwrap().unwrap().number, 5);
        assert!(store.latest_crl("nodes", true).unwrap().is_none());
        assert!(store.latest_crl("root", false).unwrap().is_none());
        let dup = CrlRecord {
            issuer: "nodes".into(),
            number: 5,
            base_number: None,
            this_update: 0,
            next_update: 1,
            der: vec![],
        };
        assert!(matches!(
            store.publish_crl(&dup, 2),
            Err(StoreError::Conflict(_))
        ));
    }
}
