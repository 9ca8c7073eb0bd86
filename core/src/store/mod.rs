//! The store: KeyGrid's durable state, embedded SQLite by default.
//!
//! Everything that must survive a restart lives here: the CA hierarchy (certificates and
//! the labels of their HSM keys, never the keys), registration entries, join tokens (as
//! hashes only), attested nodes and the record of every certificate issued. Each operation
//! that changes several rows runs in one transaction, so a refused or failed request leaves
//! no half-written state behind.

mod jwt_keys;
mod migrations;
mod revocation;
mod sa_keys;

pub use revocation::{CrlRecord, RevocationRecord};

use std::path::Path;
use std::sync::{Mutex, MutexGuard};

use rusqlite::{params, Connection, OptionalExtension};
use serde::{Deserialize, Serialize};

pub use jwt_keys::JwtKeyRecord;
pub use sa_keys::SaKeyRecord;

/// Errors from the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database reported an error.
    #[error("database: {0}")]
    Db(#[from] rusqlite::Error),
    /// A stored value could not be decoded.
    #[error("corrupt record: {0}")]
    Corrupt(String),
    /// A uniqueness rule was violated (duplicate serial, entry, token).
    #[error("conflict: {0}")]
    Conflict(String),
    /// The record does not exist.
    #[error("not found: {0}")]
    NotFound(String),
    /// The store's lock was poisoned by a panic elsewhere.
    #[error("store lock poisoned")]
    Poisoned,
}

/// One generation of one CA of the hierarchy: its certificate and where its key is.
///
/// Rotation adds a generation; old generations stay (their certificates still verify
/// leaves they signed) until the bundle logic retires them.
#[derive(Clone, Debug)]
pub struct AuthorityRecord {
    /// Issuer name (`root`, `workloads`, `nodes`, ...).
    pub name: String,
    /// Generation, from 1, increasing with each rotation.
    pub generation: i64,
    /// Name of the issuer that signed it; `None` for a root.
    pub parent: Option<String>,
    /// Generation of the issuer that signed it.
    pub parent_generation: Option<i64>,
    /// The CA certificate, DER.
    pub cert_der: Vec<u8>,
    /// Label of the key in the key backend.
    pub key_label: String,
    /// Key algorithm name (see `KeyAlgorithm::name`).
    pub algorithm: String,
    /// Key backend name (`pkcs11`, `software`).
    pub backend: String,
    /// From when it signs, Unix seconds (after the preparation window of a rotation).
    pub activate_at: i64,
}

/// A recorded event that is not an issuance: a policy refusal, a CA rotation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EventRecord {
    /// When, Unix seconds.
    pub at: i64,
    /// What happened (`policy_refusal`, `ca_rotation`, ...).
    pub kind: String,
    /// Who asked (a node SPIFFE ID, `admin uid 0`, ...).
    pub actor: String,
    /// What it was about (a SPIFFE ID, an issuer).
    pub subject: String,
    /// The rule that decided, for refusals.
    pub rule: String,
    /// Human-readable detail; never key material.
    pub detail: String,
}

/// The record kept for every certificate issued.
#[derive(Clone, Debug)]
pub struct CertificateRecord {
    /// Issuer name.
    pub issuer: String,
    /// Generation of the issuer that signed it.
    pub issuer_generation: i64,
    /// Serial number, lowercase hex.
    pub serial: String,
    /// Profile the certificate was built with (`x509-svid`, `node`, ...).
    pub profile: String,
    /// The identity it certifies (SPIFFE ID or name).
    pub subject: String,
    /// Validity start, Unix seconds.
    pub not_before: i64,
    /// Validity end, Unix seconds.
    pub not_after: i64,
    /// SHA-256 of the DER certificate, lowercase hex.
    pub sha256: String,
}

/// A workload selector, e.g. `unix:uid:1000`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Selector {
    /// Attestor type (`unix`).
    pub kind: String,
    /// Attestor-specific value (`uid:1000`).
    pub value: String,
}

/// A registration entry: workloads matching `selectors` on node `parent_id` get `spiffe_id`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EntryRecord {
    /// Random identifier.
    pub id: String,
    /// SPIFFE ID given to matching workloads.
    pub spiffe_id: String,
    /// SPIFFE ID of the node allowed to serve this entry.
    pub parent_id: String,
    /// All of these must match the caller.
    pub selectors: Vec<Selector>,
    /// Requested SVID lifetime in seconds; 0 for the default.
    pub x509_svid_ttl: i64,
    /// DNS SANs added to the SVID.
    pub dns_names: Vec<String>,
    /// Operator hint passed to workloads.
    pub hint: String,
}

/// An attested node.
#[derive(Clone, Debug)]
pub struct NodeRecord {
    /// The node's SPIFFE ID.
    pub spiffe_id: String,
    /// How it attested (`join_token`).
    pub attestation: String,
    /// Serial of its current node certificate.
    pub serial: String,
    /// Expiry of its current node certificate.
    pub not_after: i64,
}

/// The SQLite store. One connection behind a mutex: SQLite serialises writers anyway and
/// KeyGrid's writes are small.
pub struct Store {
    conn: Mutex<Connection>,
}

impl Store {
    /// Opens (creating if needed) the database at `path` and applies pending migrations.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let conn = Connection::open(path)?;
        Self::init(conn)
    }

    /// An in-memory store, for unit tests.
    pub fn in_memory() -> Result<Self, StoreError> {
        Self::init(Connection::open_in_memory()?)
    }

    fn init(mut conn: Connection) -> Result<Self, StoreError> {
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        conn.busy_timeout(std::time::Duration::from_secs(10))?;
        migrations::apply(&mut conn)?;
        Ok(Store {
            conn: Mutex::new(conn),
        })
    }

    fn conn(&self) -> Result<MutexGuard<'_, Connection>, StoreError> {
        self.conn.lock().map_err(|_| StoreError::Poisoned)
    }

    /// The schema version this build migrates databases to.
    pub fn latest_schema_version() -> i64 {
        migrations::latest()
    }

    /// The schema version now in force.
    pub fn schema_version(&self) -> Result<i64, StoreError> {
        let conn = self.conn()?;
        migrations::current_version(&conn)
    }

    // ---- hierarchy -------------------------------------------------------------------

    /// All CA generations, roots first, then by name and generation.
    pub fn authorities(&self) -> Result<Vec<AuthorityRecord>, StoreError> {
        let conn = self.conn()?;
        let mut stmt = conn.prepare(
            "SELECT name, generation, parent_name, parent_generation, cert_der, key_label, \
             algorithm, backend, activate_at FROM authority_generations \
             ORDER BY (parent_name IS NOT NULL), name, generation",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok(AuthorityRecord {
                name: r.get(0)?,
                generation: r.get(1)?,
                parent: r.get(2)?,
                parent_generation: r.get(3)?,
                cert_der: r.get(4)?,
                key_label: r.get(5)?,
                algorithm: r.get(6)?,
                backend: r.get(7)?,
                activate_at: r.get(8)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Saves CA generations at once (a whole hierarchy, or one rotation), so a failure
    /// leaves no partial tree. A parent must exist, in the batch or already stored.
    pub fn insert_authorities(
        &self,
        records: &[AuthorityRecord],
        now: i64,
    ) -> Result<(), StoreError> {
        let mut conn = self.conn()?;
        let tx = conn.transaction()?;
        for a in records {
            if let (Some(p), Some(pg)) = (&a.parent, a.parent_generation) {
                let exists: i64 = tx.query_row(
                    "SELECT COUNT(*) FROM authority_generations WHERE name = ?1 AND generation = ?2",
                    params![p, pg],
                    |r| r.get(0),
                )?;
                if exists == 0 {
                    return Err(StoreError::NotFound(format!(
                        "parent authority {p} generation {pg}"
                    )));
                }
            }
            tx.execute(
                "INSERT INTO authority_generations (name, generation, parent_name, parent_generation, \
                 cert_der, key_label, algorithm, backend, activate_at, created_at) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
                params![
                    a.name,
                    a.generation,
                    a.parent,
                    a.parent_generation,
                    a.cert_der,
                    a.key_label,
                    a.algorithm,
                    a.backend,
                    a.activate_at,
                    now
                ],
            )
            .map_err(|e| {
                conflict_or(e, || {
                    format!("authority {} generation {} already exists", a.name, a.generation)
                })
            })?;
        }
        tx.commit()?;
        Ok(())
    }

    /// The latest expiry of any certificate one CA generation signed, if it signed any.
    pub fn last_expiry_signed_by(
        &self,
        issuer: &str,
        generation: i64,
    ) -> Result<Option<i64>, StoreError> {
        Ok(self.conn()?.query_row(
            "SELECT MAX(not_after) FROM certificates WHERE issuer = ?1 AND issuer_generation = ?2",
            params![issuer, generation],
            |r| r.get(0),
        )?)
    }

    /// Records a bundle content hash; returns its sequence number, which increases only when
    /// the content changes.
    pub fn bundle_sequence(&self, roots_sha256: &str, now: i64) -> Result<i64, StoreError> {
        let mut conn = self.conn()?;
        let tx = conn.transaction()?;
        let last: Option<(i64, String)> = tx
            .query_row(
                "SELECT sequence, roots_sha256 FROM bundle_versions ORDER BY sequence DESC LIMIT 1",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?;
        let seq = match last {
            Some((seq, hash)) if hash == roots_sha256 => seq,
            Some((seq, _)) => seq + 1,
            None => 1,
        };
        tx.execute(
            "INSERT OR IGNORE INTO bundle_versions (sequence, roots_sha256, created_at) VALUES (?1, ?2, ?3)",
            params![seq, roots_sha256, now],
        )?;
        tx.commit()?;
        Ok(seq)
    }

    // ---- events ----------------------------------------------------------------------

    /// Appends an event (policy refusal, CA rotation).
    pub fn record_event(&self, e: &EventRecord) -> Result<(), StoreError> {
        self.conn()?.execute(
            "INSERT INTO events (at, kind, actor, subject, rule, detail) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![e.at, e.kind, e.actor, e.subject, e.rule, e.detail],
        )?;
        Ok(())
    }

    /// All events of one kind, oldest first.
    pub fn events(&self, kind: &str) -> Result<Vec<EventRecord>, StoreError> {
        let conn = self.conn()?;
        let mut stmt = conn.prepare(
            "SELECT at, kind, actor, subject, rule, detail FROM events WHERE kind = ?1 ORDER BY id",
        )?;
        let rows = stmt.query_map(params![kind], |r| {
            Ok(EventRecord {
                at: r.get(0)?,
                kind: r.get(1)?,
                actor: r.get(2)?,
                subject: r.get(3)?,
                rule: r.get(4)?,
                detail: r.get(5)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    // ---- certificates ----------------------------------------------------------------

    /// Records an issued certificate. The primary key (issuer, serial) makes a duplicate
    /// serial impossible.
    pub fn record_certificate(&self, rec: &CertificateRecord) -> Result<(), StoreError> {
        let conn = self.conn()?;
        insert_certificate(&conn, rec)
    }

    /// Looks up an issued certificate.
    pub fn certificate(
        &self,
        issuer: &str,
        serial: &str,
    ) -> Result<Option<CertificateRecord>, StoreError> {
        let conn = self.conn()?;
        Ok(conn
            .query_row(
                "SELECT issuer, serial, profile, subject, not_before, not_after, sha256, issuer_generation \
                 FROM certificates WHERE issuer = ?1 AND serial = ?2",
                params![issuer, serial],
                |r| {
                    Ok(CertificateRecord {
                        issuer: r.get(0)?,
                        serial: r.get(1)?,
                        profile: r.get(2)?,
                        subject: r.get(3)?,
                        not_before: r.get(4)?,
                        not_after: r.get(5)?,
                        sha256: r.get(6)?,
                        issuer_generation: r.get(7)?,
                    })
                },
            )
            .optional()?)
    }

    /// Number of certificates recorded, for tests and status.
    pub fn certificate_count(&self) -> Result<i64, StoreError> {
        Ok(self
            .conn()?
            .query_row("SELECT COUNT(*) FROM certificates", [], |r| r.get(0))?)
    }

    // ---- entries ---------------------------------------------------------------------

    /// Creates a registration entry. The same (spiffe_id, parent_id, selectors) twice is a
    /// conflict, as in SPIRE.
    pub fn create_entry(&self, e: &EntryRecord, now: i64) -> Result<(), StoreError> {
        let selectors = canonical_selectors(&e.selectors)?;
        let dns =
            serde_json::to_string(&e.dns_names).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        self.conn()?
            .execute(
                "INSERT INTO entries (id, spiffe_id, parent_id, selectors, x509_svid_ttl, dns_names, hint, created_at) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                params![e.id, e.spiffe_id, e.parent_id, selectors, e.x509_svid_ttl, dns, e.hint, now],
            )
            .map_err(|err| conflict_or(err, || format!("an entry for {} with these selectors and parent already exists", e.spiffe_id)))?;
        Ok(())
    }

    /// All entries, optionally only those a given node may serve.
    pub fn entries(&self, parent_id: Option<&str>) -> Result<Vec<EntryRecord>, StoreError> {
        let conn = self.conn()?;
        let mut stmt = conn.prepare(
            "SELECT id, spiffe_id, parent_id, selectors, x509_svid_ttl, dns_names, hint FROM entries \
             WHERE (?1 IS NULL OR parent_id = ?1) ORDER BY created_at, id",
        )?;
        let rows = stmt.query_map(params![parent_id], row_to_entry)?;
        let mut out = Vec::new();
        for row in rows {
            out.push(row??);
        }
        Ok(out)
    }

    /// One entry by ID.
    pub fn entry(&self, id: &str) -> Result<Option<EntryRecord>, StoreError> {
        let conn = self.conn()?;
        let row = conn
            .query_row(
                "SELECT id, spiffe_id, parent_id, selectors, x509_svid_ttl, dns_names, hint FROM entries WHERE id = ?1",
                params![id],
                row_to_entry,
            )
            .optional()?;
        row.transpose()
    }

    /// Deletes an entry; `NotFound` if there was none.
    pub fn delete_entry(&self, id: &str) -> Result<(), StoreError> {
        let n = self
            .conn()?
            .execute("DELETE FROM entries WHERE id = ?1", params![id])?;
        if n == 0 {
            return Err(StoreError::NotFound(format!("entry {id}")));
        }
        Ok(())
    }

    // ---- join tokens and nodes -------------------------------------------------------

    /// Stores a join token by its hash; the token itself is never stored.
    pub fn create_join_token(
        &self,
        token_sha256: &str,
        agent_id: &str,
        expires_at: i64,
        now: i64,
    ) -> Result<(), StoreError> {
        self.conn()?
            .execute(
                "INSERT INTO join_tokens (token_sha256, agent_id, expires_at, created_at) VALUES (?1, ?2, ?3, ?4)",
                params![token_sha256, agent_id, expires_at, now],
            )
            .map_err(|e| conflict_or(e, || "join token already exists".to_string()))?;
        Ok(())
    }

    /// The agent SPIFFE ID a still-valid token was created for.
    pub fn join_token_agent(
        &self,
        token_sha256: &str,
        now: i64,
    ) -> Result<Option<String>, StoreError> {
        Ok(self
            .conn()?
            .query_row(
                "SELECT agent_id FROM join_tokens WHERE token_sha256 = ?1 AND expires_at > ?2",
                params![token_sha256, now],
                |r| r.get(0),
            )
            .optional()?)
    }

    /// Consumes a join token and records the node and its certificate, all or nothing.
    /// Fails with `NotFound` if another request consumed the token first.
    pub fn redeem_join_token(
        &self,
        token_sha256: &str,
        node: &NodeRecord,
        cert: &CertificateRecord,
        now: i64,
    ) -> Result<(), StoreError> {
        let mut conn = self.conn()?;
        let tx = conn.transaction()?;
        let n = tx.execute(
            "DELETE FROM join_tokens WHERE token_sha256 = ?1 AND expires_at > ?2",
            params![token_sha256, now],
        )?;
        if n != 1 {
            return Err(StoreError::NotFound("join token".into()));
        }
        upsert_node(&tx, node, now)?;
        insert_certificate(&tx, cert)?;
        tx.commit()?;
        Ok(())
    }

    /// Replaces a node's current certificate after renewal.
    pub fn renew_node(
        &self,
        node: &NodeRecord,
        cert: &CertificateRecord,
        now: i64,
    ) -> Result<(), StoreError> {
        let mut conn = self.conn()?;
        let tx = conn.transaction()?;
        upsert_node(&tx, node, now)?;
        insert_certificate(&tx, cert)?;
        tx.commit()?;
        Ok(())
    }

    /// A node by SPIFFE ID.
    pub fn node(&self, spiffe_id: &str) -> Result<Option<NodeRecord>, StoreError> {
        Ok(self
            .conn()?
            .query_row(
                "SELECT spiffe_id, attestation, serial, not_after FROM nodes WHERE spiffe_id = ?1",
                params![spiffe_id],
                |r| {
                    Ok(NodeRecord {
                        spiffe_id: r.get(0)?,
                        attestation: r.get(1)?,
                        serial: r.get(2)?,
                        not_after: r.get(3)?,
                    })
                },
            )
            .optional()?)
    }
}

fn upsert_node(conn: &Connection, node: &NodeRecord, now: i64) -> Result<(), StoreError> {
    conn.execute(
        "INSERT INTO nodes (spiffe_id, attestation, serial, not_after, created_at, updated_at) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?5) \
         ON CONFLICT (spiffe_id) DO UPDATE SET attestation = excluded.attestation, \
         serial = excluded.serial, not_after = excluded.not_after, updated_at = excluded.updated_at",
        params![node.spiffe_id, node.attestation, node.serial, node.not_after, now],
    )?;
    Ok(())
}

fn insert_certificate(conn: &Connection, rec: &CertificateRecord) -> Result<(), StoreError> {
    conn.execute(
        "INSERT INTO certificates (issuer, serial, profile, subject, not_before, not_after, sha256, issuer_generation) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        params![rec.issuer, rec.serial, rec.profile, rec.subject, rec.not_before, rec.not_after, rec.sha256, rec.issuer_generation],
    )
    .map_err(|e| conflict_or(e, || format!("serial {} already used by issuer {}", rec.serial, rec.issuer)))?;
    Ok(())
}

fn conflict_or(err: rusqlite::Error, msg: impl FnOnce() -> String) -> StoreError {
    match err {
        rusqlite::Error::SqliteFailure(e, _)
            if e.code == rusqlite::ErrorCode::ConstraintViolation =>
        {
            StoreError::Conflict(msg())
        }
        other => StoreError::Db(other),
    }
}

/// Sorted, de-duplicated JSON so that equal selector sets compare equal in the unique index.
fn canonical_selectors(selectors: &[Selector]) -> Result<String, StoreError> {
    let mut sorted: Vec<&Selector> = selectors.iter().collect();
    sorted.sort_by(|a, b| (&a.kind, &a.value).cmp(&(&b.kind, &b.value)));
    sorted.dedup();
    serde_json::to_string(&sorted).map_err(|e| StoreError::Corrupt(e.to_string()))
}

type EntryRow = Result<EntryRecord, StoreError>;

fn row_to_entry(r: &rusqlite::Row<'_>) -> rusqlite::Result<EntryRow> {
    let selectors: String = r.get(3)?;
    let dns: String = r.get(5)?;
    let id: String = r.get(0)?;
    let decoded = (|| {
        let selectors: Vec<Selector> = serde_json::from_str(&selectors)
            .map_err(|e| StoreError::Corrupt(format!("entry {id} selectors: {e}")))?;
        let dns_names: Vec<String> = serde_json::from_str(&dns)
            .map_err(|e| StoreError::Corrupt(format!("entry {id} dns names: {e}")))?;
        Ok((selectors, dns_names))
    })();
    Ok(match decoded {
        Ok((selectors, dns_names)) => Ok(EntryRecord {
            id,
            spiffe_id: r.get(1)?,
            parent_id: r.get(2)?,
            selectors,
            x509_svid_ttl: r.get(4)?,
            dns_names,
            hint: r.get(6)?,
        }),
        Err(e) => Err(e),
    })
}

#[cfg(test)]
mod tests;
