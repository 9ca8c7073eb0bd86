//! EST state: enrollments waiting for an operator, and which node name each TPM (EK)
//! enrolled first. Plain portable SQL (INTEGER/TEXT only).

use super::sql::{args, Row};
use super::{audit, audit_issuance, conflict_or, insert_certificate, upsert_node};
use super::{CertificateRecord, NodeRecord, Store, StoreError};

/// An enrollment deferred for manual approval (HTTP 202 until decided).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PendingEnrollment {
    /// SHA-256 (hex) of the label and the DER CSR: the same request retried finds it.
    pub id: String,
    /// EST label.
    pub label: String,
    /// Who asked (node SPIFFE ID or lab user).
    pub requester: String,
    /// The identity asked for (common name or SPIFFE ID).
    pub subject: String,
    /// `pending`, `approved`, `rejected` or `issued`.
    pub state: String,
    /// When it was first asked, Unix seconds.
    pub created_at: i64,
}

/// A TPM bound to a node name by its first enrollment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EkBinding {
    /// Hex SHA-256 of the EK SubjectPublicKeyInfo.
    pub ek_hash: String,
    /// The node name it enrolled.
    pub node_name: String,
    /// Manufacturer from the EK certificate (`allow-list` when enrolled by hash).
    pub manufacturer: String,
}

fn pending_from(r: &Row) -> Result<PendingEnrollment, StoreError> {
    Ok(PendingEnrollment {
        id: r.get(0)?,
        label: r.get(1)?,
        requester: r.get(2)?,
        subject: r.get(3)?,
        state: r.get(4)?,
        created_at: r.get(5)?,
    })
}

fn binding_from(r: &Row) -> Result<EkBinding, StoreError> {
    Ok(EkBinding {
        ek_hash: r.get(0)?,
        node_name: r.get(1)?,
        manufacturer: r.get(2)?,
    })
}

impl Store {
    /// A deferred enrollment by id.
    pub fn est_pending(&self, id: &str) -> Result<Option<PendingEnrollment>, StoreError> {
        let row = self.read(|c| {
            c.query_opt(
                "SELECT id, label, requester, subject, state, created_at FROM est_pending WHERE id = ?1",
                args![id],
            )
        })?;
        row.as_ref().map(pending_from).transpose()
    }

    /// Deferred enrollments still waiting, oldest first.
    pub fn est_pending_list(&self) -> Result<Vec<PendingEnrollment>, StoreError> {
        let rows = self.read(|c| {
            c.query(
                "SELECT id, label, requester, subject, state, created_at FROM est_pending \
                 WHERE state = 'pending' ORDER BY created_at, id",
                args![],
            )
        })?;
        rows.iter().map(pending_from).collect()
    }

    /// Records a new deferred enrollment (`Conflict` if it exists), audited.
    pub fn est_defer(&self, p: &PendingEnrollment) -> Result<(), StoreError> {
        self.write(|tx| {
            tx.execute(
                "INSERT INTO est_pending (id, label, requester, subject, state, created_at) \
                 VALUES (?1, ?2, ?3, ?4, 'pending', ?5)",
                args![p.id, p.label, p.requester, p.subject, p.created_at],
            )
            .map_err(|e| conflict_or(e, || format!("enrollment {} already recorded", p.id)))?;
            audit::append(
                tx,
                &audit::AuditEvent {
                    at: p.created_at,
                    kind: "est_enrollment_deferred".into(),
                    actor: p.requester.clone(),
                    subject: p.subject.clone(),
                    detail: format!("label {} enrollment {}", p.label, p.id),
                    ..Default::default()
                },
            )?;
            Ok(())
        })
    }

    /// Moves a deferred enrollment from `from` to `to` (`NotFound` unless it is in `from`).
    pub fn est_set_state(
        &self,
        id: &str,
        from: &str,
        to: &str,
        now: i64,
    ) -> Result<(), StoreError> {
        self.write(|tx| {
            let n = tx.execute(
                "UPDATE est_pending SET state = ?3, decided_at = ?4 WHERE id = ?1 AND state = ?2",
                args![id, from, to, now],
            )?;
            if n != 1 {
                return Err(StoreError::NotFound(format!("{from} enrollment {id}")));
            }
            Ok(())
        })
    }

    /// The binding of an EK, if it enrolled before.
    pub fn ek_binding(&self, ek_hash: &str) -> Result<Option<EkBinding>, StoreError> {
        let row = self.read(|c| {
            c.query_opt(
                "SELECT ek_hash, node_name, manufacturer FROM est_ek_bindings WHERE ek_hash = ?1",
                args![ek_hash],
            )
        })?;
        row.as_ref().map(binding_from).transpose()
    }

    /// The binding of a node name, if a TPM enrolled it before.
    pub fn ek_binding_of_node(&self, node_name: &str) -> Result<Option<EkBinding>, StoreError> {
        let row = self.read(|c| {
            c.query_opt(
                "SELECT ek_hash, node_name, manufacturer FROM est_ek_bindings WHERE node_name = ?1",
                args![node_name],
            )
        })?;
        row.as_ref().map(binding_from).transpose()
    }

    /// Enrolls a TPM-attested node, all or nothing: binds the EK to the node name (first
    /// come; `Conflict` if either is bound to another), records the node and its
    /// certificate with its audit record.
    pub fn est_enroll_tpm_node(
        &self,
        binding: &EkBinding,
        node: &NodeRecord,
        cert: &CertificateRecord,
        now: i64,
    ) -> Result<(), StoreError> {
        self.write(|tx| {
            let by_ek = tx.query_opt(
                "SELECT node_name FROM est_ek_bindings WHERE ek_hash = ?1",
                args![binding.ek_hash],
            )?;
            match by_ek.map(|r| r.get::<String>(0)).transpose()? {
                Some(name) if name != binding.node_name => {
                    return Err(StoreError::Conflict(format!(
                        "this TPM is bound to node {name}"
                    )))
                }
                Some(_) => {}
                None => {
                    tx.execute(
                        "INSERT INTO est_ek_bindings (ek_hash, node_name, manufacturer, bound_at) \
                         VALUES (?1, ?2, ?3, ?4)",
                        args![
                            binding.ek_hash,
                            binding.node_name,
                            binding.manufacturer,
                            now
                        ],
                    )
                    .map_err(|e| {
                        conflict_or(e, || {
                            format!("node name {} is bound to another TPM", binding.node_name)
                        })
                    })?;
                }
            }
            upsert_node(tx, node, now)?;
            insert_certificate(tx, cert)?;
            audit_issuance(tx, cert, "node.attested", &node.spiffe_id)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert(serial: &str) -> CertificateRecord {
        CertificateRecord {
            issuer: "nodes".into(),
            issuer_generation: 1,
            serial: serial.into(),
            profile: "node".into(),
            subject: "spiffe://example.org/keygrid/node/a".into(),
            not_before: 0,
            not_after: 10,
            sha256: serial.into(),
        }
    }

    fn node(id: &str, serial: &str) -> NodeRecord {
        NodeRecord {
            spiffe_id: id.into(),
            attestation: "tpm".into(),
            serial: serial.into(),
            not_after: 10,
        }
    }

    fn bind(ek: &str, name: &str) -> EkBinding {
        EkBinding {
            ek_hash: ek.into(),
            node_name: name.into(),
            manufacturer: "id:0".into(),
        }
    }

    #[test]
    fn ek_binds_first_come_and_nothing_is_written_on_conflict() {
        let s = Store::in_memory().unwrap();
        s.est_enroll_tpm_node(
            &bind("ek1", "a"),
            &node("spiffe://x/a", "01"),
            &cert("01"),
            1,
        )
        .unwrap();
        // Same TPM, same name: re-enrollment is fine.
        s.est_enroll_tpm_node(
            &bind("ek1", "a"),
            &node("spiffe://x/a", "02"),
            &cert("02"),
            2,
        )
        .unwrap();
        // Same TPM, other name; other TPM, same name: refused, nothing recorded.
        let e = s
            .est_enroll_tpm_node(
                &bind("ek1", "b"),
                &node("spiffe://x/b", "03"),
                &cert("03"),
                3,
            )
            .unwrap_err();
        assert!(matches!(e, StoreError::Conflict(_)), "{e}");
        let e = s
            .est_enroll_tpm_node(
                &bind("ek2", "a"),
                &node("spiffe://x/a", "04"),
                &cert("04"),
                4,
            )
            .unwrap_err();
        assert!(matches!(e, StoreError::Conflict(_)), "{e}");
        assert!(s.certificate("nodes", "03").unwrap().is_none());
        assert!(s.certificate("nodes", "04").unwrap().is_none());
        assert!(s.node("spiffe://x/b").unwrap().is_none());
        assert_eq!(s.ek_binding("ek1").unwrap().unwrap().node_name, "a");
        assert!(s.ek_binding("ek2").unwrap().is_none());
    }

    #[test]
    fn deferred_enrollments_move_through_states_once() {
        let s = Store::in_memory().unwrap();
        let p = PendingEnrollment {
            id: "abc".into(),
            label: "kubelet-serving".into(),
            requester: "n".into(),
            subject: "system:node:n".into(),
            state: "pending".into(),
            created_at: 5,
        };
        s.est_defer(&p).unwrap();
        assert!(matches!(s.est_defer(&p), Err(StoreError::Conflict(_))));
        assert_eq!(s.est_pending_list().unwrap(), vec![p.clone()]);
        s.est_set_state("abc", "pending", "approved", 6).unwrap();
        assert!(s.est_set_state("abc", "pending", "rejected", 7).is_err());
        assert_eq!(s.est_pending("abc").unwrap().unwrap().state, "approved");
        assert!(s.est_pending_list().unwrap().is_empty());
    }
}
