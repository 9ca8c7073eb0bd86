//! Stored Kubernetes service-account signing keys: key ID, label in the key backend and
//! creation time (which orders them: the newest signs, older ones only verify).

use super::sql::args;
use super::{conflict_or, Store, StoreError};

/// One service-account signing key as the store knows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SaKeyRecord {
    /// Key ID (`kid`), base64url SHA-256 of the PKIX public key, as Kubernetes derives it.
    pub kid: String,
    /// Label of the key in the key backend.
    pub key_label: String,
    /// Key algorithm name (see `KeyAlgorithm::name`).
    pub algorithm: String,
    /// Creation time, Unix seconds.
    pub created_at: i64,
}

impl Store {
    /// Service-account keys, oldest first (the newest is the one that signs).
    pub fn sa_keys(&self) -> Result<Vec<SaKeyRecord>, StoreError> {
        let rows = self.read(|c| {
            c.query(
                "SELECT kid, key_label, algorithm, created_at FROM sa_keys ORDER BY created_at, kid",
                args![],
            )
        })?;
        rows.iter()
            .map(|r| {
                Ok(SaKeyRecord {
                    kid: r.get(0)?,
                    key_label: r.get(1)?,
                    algorithm: r.get(2)?,
                    created_at: r.get(3)?,
                })
            })
            .collect()
    }

    /// Records a new service-account key; a duplicate `kid` is a conflict.
    pub fn insert_sa_key(&self, rec: &SaKeyRecord) -> Result<(), StoreError> {
        self.write(|tx| {
            tx.execute(
                "INSERT INTO sa_keys (kid, key_label, algorithm, created_at) VALUES (?1, ?2, ?3, ?4)",
                args![rec.kid, rec.key_label, rec.algorithm, rec.created_at],
            )
            .map_err(|e| {
                conflict_or(e, || format!("service-account key {} already exists", rec.kid))
            })?;
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sa_keys_round_trip_in_creation_order() {
        let store = Store::in_memory().unwrap();
        let rec = |kid: &str, at: i64| SaKeyRecord {
            kid: kid.into(),
            key_label: format!("l-{kid}"),
            algorithm: "ecdsa-p256".into(),
            created_at: at,
        };
        store.insert_sa_key(&rec("b", 2)).unwrap();
        store.insert_sa_key(&rec("a", 1)).unwrap();
        assert_eq!(store.sa_keys().unwrap(), vec![rec("a", 1), rec("b", 2)]);
        assert!(matches!(
            store.insert_sa_key(&rec("a", 3)),
            Err(StoreError::Conflict(_))
        ));
    }
}
