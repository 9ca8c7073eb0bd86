//! Stored JWT-SVID signing keys: the key ID published in the JWKS and the label of the
//! key in the key backend. The key itself stays in the backend (the HSM).

use rusqlite::params;

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
        let conn = self.conn()?;
        let mut stmt = conn
            .prepare("SELECT kid, key_label, algorithm FROM jwt_keys ORDER BY created_at, kid")?;
        let rows = stmt.query_map([], |r| {
            Ok(JwtKeyRecord {
                kid: r.get(0)?,
                key_label: r.get(1)?,
                algorithm: r.get(2)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Records a new JWT signing key; a duplicate `kid` is a conflict.
    pub fn insert_jwt_key(&self, rec: &JwtKeyRecord, now: i64) -> Result<(), StoreError> {
        self.conn()?
            .execute(
                "INSERT INTO jwt_keys (kid, key_label, algorithm, created_at) VALUES (?1, ?2, ?3, ?4)",
                params![rec.kid, rec.key_label, rec.algorithm, now],
            )
            .map_err(|e| conflict_or(e, || format!("JWT key {} already exists", rec.kid)))?;
        Ok(())
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
