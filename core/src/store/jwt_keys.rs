//! Stored JWT-SVID signing keys: the key ID published in the JWKS and the label of the
//! key in the key backend. The key itself stays in the backend (the HSM).

use super::sql::args;
use super::{conflict_or, Store, StoreError};

/// One JWT-SVID signing key as the store knows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JwtKeyRecord {
    /// Key ID (`kid`) put in every token's header and in the JWKS.
    pub kid: String,
    /// Label of the key in the key backend.
    pub key_label: String,
    /// Key algorithm name (see `KeyAlgorithm::name`).
    pub algorithm: String,
}

impl Store {
    /// JWT signing keys, oldest first (the newest is the one that signs).
    pub fn jwt_keys(&self) -> Result<Vec<JwtKeyRecord>, StoreError> {
        let rows = self.read(|c| {
            c.query(
                "SELECT kid, key_label, algorithm FROM jwt_keys ORDER BY created_at, kid",
                &[],
            )
        })?;
        rows.iter()
            .map(|r| {
                Ok(JwtKeyRecord {
                    kid: r.get(0)?,
                    key_label: r.get(1)?,
                    algorithm: r.get(2)?,
                })
            })
            .collect()
    }

    /// Records a new JWT signing key; a duplicate `kid` is a conflict.
    pub fn insert_jwt_key(&self, rec: &JwtKeyRecord, now: i64) -> Result<(), StoreError> {
        self.write(|tx| {
            tx.execute(
                "INSERT INTO jwt_keys (kid, key_label, algorithm, created_at) VALUES (?1, ?2, ?3, ?4)",
                args![rec.kid, rec.key_label, rec.algorithm, now],
            )
            .map_err(|e| conflict_or(e, || format!("JWT key {} already exists", rec.kid)))?;
            super::audit::append(
                tx,
                &super::audit::AuditEvent {
                    at: now,
                    kind: "jwt_key.created".into(),
                    actor: "keygrid".into(),
                    subject: rec.kid.clone(),
                    detail: format!("{} key {}", rec.algorithm, rec.key_label),
                    ..Default::default()
                },
            )?;
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jwt_keys_round_trip_and_duplicates_conflict() {
        let store = Store::in_memory().unwrap();
        assert!(store.jwt_keys().unwrap().is_empty());
        let rec = JwtKeyRecord {
            kid: "k1".into(),
            key_label: "keygrid-jwt-1".into(),
            algorithm: "ecdsa-p256".into(),
        };
        store.insert_jwt_key(&rec, 1).unwrap();
        assert_eq!(store.jwt_keys().unwrap(), vec![rec.clone()]);
        assert!(matches!(
            store.insert_jwt_key(&rec, 2),
            Err(StoreError::Conflict(_))
        ));
    }
}
