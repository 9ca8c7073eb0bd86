//! The store: KeyGrid's durable state, embedded SQLite by default, PostgreSQL for several
//! core replicas (high availability).
//!
//! Everything that must survive a restart lives here: the CA hierarchy (certificates and
//! the labels of their HSM keys, never the keys), registration entries, join tokens (as
//! hashes only), attested nodes, the record of every certificate issued and the
//! hash-chained audit log ([`audit`]). Each operation that changes several rows runs in one
//! transaction, and every change worth auditing appends its audit record in that same
//! transaction, so a refused or failed request leaves no half-written state and nothing is
//! ever stored without its audit record.
//!
//! `Store` is the one interface the rest of core uses. Its queries are written once, in
//! portable SQL, over the small runner in [`sql`] (see there for how PostgreSQL is driven
//! from synchronous code); only migrations differ per engine (`migrations.rs`).
//!
//! ## Adding store code
//! Put it in an `impl Store` block in its own file (like `jwt_keys.rs`). Reads go through
//! `self.read(|c| c.query(sql, args![...]))`, writes through `self.write(|tx| ...)` (one
//! transaction; return `Err` to roll back). Rows come back as [`sql::Row`]s: `r.get(i)?`.
//! Placeholders are `?1`, `?2`; use `INSERT ... ON CONFLICT DO NOTHING` (not `INSERT OR
//! IGNORE`), `RETURNING` (not `last_insert_rowid`), `CASE` (not boolean columns), and
//! compute arithmetic on parameters in Rust. Map unique violations with `conflict_or`. If
//! the change is worth auditing, call `audit::append(tx, ...)` in the same transaction. A
//! schema change is one entry at the end of each of `MIGRATIONS` (SQLite) and
//! `PG_MIGRATIONS` (PostgreSQL, `BIGINT`/`BYTEA`) with the same version number, and a new
//! table also goes into `backup::TABLES`.

pub mod audit;
pub mod backup;
mod est;
mod jwt_keys;
mod migrations;
pub mod pg_server;
pub mod pg_tls;
mod revocation;
mod sa_keys;
pub mod sql;

pub use revocation::{CrlRecord, RevocationRecord};

use std::path::Path;
use std::sync::{Arc, Mutex};

use rusqlite::Connection;
use serde::{Deserialize, Serialize};

pub use sql::DbError;
use sql::{args, Engine, Lite, PgPool, Sql};

pub use est::{EkBinding, PendingEnrollment};
pub use jwt_keys::JwtKeyRecord;
pub use sa_keys::SaKeyRecord;

/// Errors from the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database reported an error.
    #[error("database: {0}")]
    Db(DbError),
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

/// Where the store keeps its data.
#[derive(Clone, Debug)]
pub enum StoreLocation {
    /// An SQLite database file.
    Sqlite(std::path::PathBuf),
    /// A PostgreSQL server (connection settings, password included; never logged).
    Postgres(Box<tokio_postgres::Config>),
    /// A PostgreSQL server reached over TLS, its certificate checked against a CA.
    PostgresTls(Box<tokio_postgres::Config>, pg_tls::MakeRustls),
}

enum Backend {
    Sqlite(Mutex<Connection>),
    Postgres(Arc<PgPool>),
}

/// The store, over SQLite or PostgreSQL. With SQLite, one connection behind a mutex (SQLite
/// serialises writers anyway and KeyGrid's writes are small); with PostgreSQL, a small pool
/// of connections, and the audit chain's head row serialises appends across replicas.
pub struct Store {
    backend: Backend,
}

/// Connections each core process opens to PostgreSQL.
const PG_POOL_SIZE: usize = 4;

impl Store {
    /// Opens (creating if needed) the database at `path` and applies pending migrations.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let conn = Connection::open(path)?;
        Self::init_sqlite(conn)
    }

    /// Opens the store wherever the configuration puts it.
    pub fn open_location(location: &StoreLocation) -> Result<Self, StoreError> {
        match location {
            StoreLocation::Sqlite(path) => Self::open(path),
            StoreLocation::Postgres(config) => Self::open_postgres((**config).clone()),
            StoreLocation::PostgresTls(config, tls) => {
                Self::open_postgres_with((**config).clone(), Some(tls.clone()))
            }
        }
    }

    /// Connects to PostgreSQL and applies pending migrations (serialised across replicas
    /// starting at once by an advisory lock).
    pub fn open_postgres(config: tokio_postgres::Config) -> Result<Self, StoreError> {
        Self::open_postgres_with(config, None)
    }

    /// [`Store::open_postgres`], over TLS when `tls` is given.
    pub fn open_postgres_with(
        config: tokio_postgres::Config,
        tls: Option<pg_tls::MakeRustls>,
    ) -> Result<Self, StoreError> {
        let pool = PgPool::connect_with(config, tls, PG_POOL_SIZE)?;
        // One transaction under the migration lock: replicas starting together neither
        // migrate nor chain old events twice.
        pool.transaction(|tx| {
            migrations::apply(tx)?;
            audit::ensure_head(tx)
        })?;
        Ok(Store {
            backend: Backend::Postgres(pool),
        })
    }

    /// An in-memory store, for unit tests.
    pub fn in_memory() -> Result<Self, StoreError> {
        Self::init_sqlite(Connection::open_in_memory()?)
    }

    fn init_sqlite(conn: Connection) -> Result<Self, StoreError> {
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        conn.busy_timeout(std::time::Duration::from_secs(10))?;
        let store = Store {
            backend: Backend::Sqlite(Mutex::new(conn)),
        };
        store.write(|tx| {
            migrations::apply(tx)?;
            audit::ensure_head(tx)
        })?;
        Ok(store)
    }

    /// The engine this store runs on.
    pub fn engine(&self) -> Engine {
        match self.backend {
            Backend::Sqlite(_) => Engine::Sqlite,
            Backend::Postgres(_) => Engine::Postgres,
        }
    }

    /// Runs `f` outside an explicit transaction: for reads and single statements.
    pub(crate) fn read<R>(
        &self,
        f: impl FnOnce(&mut dyn Sql) -> Result<R, StoreError>,
    ) -> Result<R, StoreError> {
        match &self.backend {
            Backend::Sqlite(m) => {
                let conn = m.lock().map_err(|_| StoreError::Poisoned)?;
                f(&mut Lite(&conn))
            }
            Backend::Postgres(pool) => pool.run(f),
        }
    }

    /// Runs `f` in one write transaction, committed only if `f` succeeds. On SQLite the
    /// transaction takes the write lock up front (`BEGIN IMMEDIATE`), so another process on
    /// the same file (`keygrid ocsp serve`) waits instead of failing half-way.
    pub(crate) fn write<R>(
        &self,
        f: impl FnOnce(&mut dyn Sql) -> Result<R, StoreError>,
    ) -> Result<R, StoreError> {
        match &self.backend {
            Backend::Sqlite(m) => {
                let mut conn = m.lock().map_err(|_| StoreError::Poisoned)?;
                let tx =
                    conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
                let out = f(&mut Lite(&tx))?;
                tx.commit()?;
                Ok(out)
            }
            Backend::Postgres(pool) => pool.transaction(f),
        }
    }

    /// Runs `f` in one read-only snapshot: every query sees the same committed state
    /// (backups). Nothing `f` writes is kept.
    pub(crate) fn snapshot<R>(
        &self,
        f: impl FnOnce(&mut dyn Sql) -> Result<R, StoreError>,
    ) -> Result<R, StoreError> {
        match &self.backend {
            Backend::Sqlite(m) => {
                let mut conn = m.lock().map_err(|_| StoreError::Poisoned)?;
                let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Deferred)?;
                f(&mut Lite(&tx))
            }
            Backend::Postgres(pool) => pool.transaction(|sql| {
                sql.batch("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")?;
                f(sql)
            }),
        }
    }

    /// Runs `f` while no other core process sharing this store runs its own `exclusive`
    /// section: replicas starting at the same moment create the hierarchy, the audit key
    /// and the JWT key once, not twice. On PostgreSQL an advisory lock held by a
    /// transaction on one pooled connection (`f`'s own store calls use the others); SQLite
    /// serves one process, so there `f` just runs. `f` may be slow (HSM key generation).
    pub fn exclusive<R, E: From<StoreError>>(
        &self,
        f: impl FnOnce() -> Result<R, E>,
    ) -> Result<R, E> {
        match &self.backend {
            Backend::Sqlite(_) => f(),
            Backend::Postgres(pool) => {
                let mut out = None;
                pool.transaction(|tx| {
                    tx.batch("SELECT pg_advisory_xact_lock(7262737302)")?;
                    out = Some(f());
                    Ok(())
                })?;
                out.unwrap_or_else(|| Err(StoreError::Poisoned.into()))
            }
        }
    }

    /// The schema version this build migrates databases to.
    pub fn latest_schema_version() -> i64 {
        migrations::latest(Engine::Sqlite)
    }

    /// The schema version now in force.
    pub fn schema_version(&self) -> Result<i64, StoreError> {
        self.read(migrations::current_version)
    }

    // ---- hierarchy -------------------------------------------------------------------

    /// All CA generations, roots first, then by name and generation.
    pub fn authorities(&self) -> Result<Vec<AuthorityRecord>, StoreError> {
        let rows = self.read(|c| {
            c.query(
                "SELECT name, generation, parent_name, parent_generation, cert_der, key_label, \
                 algorithm, backend, activate_at FROM authority_generations \
                 ORDER BY (CASE WHEN parent_name IS NULL THEN 0 ELSE 1 END), name, generation",
                &[],
            )
        })?;
        rows.iter()
            .map(|r| {
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
            })
            .collect()
    }

    /// Saves CA generations at once (a whole hierarchy, or one rotation), so a failure
    /// leaves no partial tree. A parent must exist, in the batch or already stored.
    pub fn insert_authorities(
        &self,
        records: &[AuthorityRecord],
        now: i64,
    ) -> Result<(), StoreError> {
        self.write(|tx| {
            for a in records {
                if let (Some(p), Some(pg)) = (&a.parent, a.parent_generation) {
                    let exists: i64 = tx
                        .query_one(
                            "SELECT COUNT(*) FROM authority_generations WHERE name = ?1 AND generation = ?2",
                            args![p, pg],
                        )?
                        .get(0)?;
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
                    args![
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
                audit::append(
                    tx,
                    &audit::AuditEvent {
                        at: now,
                        kind: "authority.created".into(),
                        actor: "keygrid".into(),
                        subject: a.name.clone(),
                        fingerprint: crate::ca::sha256_hex(&a.cert_der),
                        detail: format!(
                            "generation {} ({} key {} in {}), signed by {}",
                            a.generation,
                            a.algorithm,
                            a.key_label,
                            a.backend,
                            a.parent.as_deref().unwrap_or("itself")
                        ),
                        ..Default::default()
                    },
                )?;
            }
            Ok(())
        })
    }

    /// The latest expiry of any certificate one CA generation signed, if it signed any.
    pub fn last_expiry_signed_by(
        &self,
        issuer: &str,
        generation: i64,
    ) -> Result<Option<i64>, StoreError> {
        self.read(|c| {
            c.query_one(
                "SELECT MAX(not_after) FROM certificates WHERE issuer = ?1 AND issuer_generation = ?2",
                args![issuer, generation],
            )?
            .get(0)
        })
    }

    /// Records a bundle content hash; returns its sequence number, which increases only when
    /// the content changes.
    pub fn bundle_sequence(&self, roots_sha256: &str, now: i64) -> Result<i64, StoreError> {
        self.write(|tx| {
            let last = tx.query_opt(
                "SELECT sequence, roots_sha256 FROM bundle_versions ORDER BY sequence DESC LIMIT 1",
                &[],
            )?;
            let last: Option<(i64, String)> = match last {
                Some(r) => Some((r.get(0)?, r.get(1)?)),
                None => None,
            };
            let seq = match last {
                Some((seq, hash)) if hash == roots_sha256 => seq,
                Some((seq, _)) => seq + 1,
                None => 1,
            };
            tx.execute(
                "INSERT INTO bundle_versions (sequence, roots_sha256, created_at) VALUES (?1, ?2, ?3) \
                 ON CONFLICT (sequence) DO NOTHING",
                args![seq, roots_sha256, now],
            )?;
            Ok(seq)
        })
    }

    // ---- events ----------------------------------------------------------------------

    /// Appends an event (policy refusal, CA rotation, admin action) to the audit log.
    pub fn record_event(&self, e: &EventRecord) -> Result<(), StoreError> {
        self.write(|tx| {
            audit::append(
                tx,
                &audit::AuditEvent {
                    at: e.at,
                    kind: e.kind.clone(),
                    actor: e.actor.clone(),
                    subject: e.subject.clone(),
                    rule: e.rule.clone(),
                    detail: e.detail.clone(),
                    ..Default::default()
                },
            )
            .map(|_| ())
        })
    }

    /// All audit events of one kind, oldest first.
    pub fn events(&self, kind: &str) -> Result<Vec<EventRecord>, StoreError> {
        let rows = self.read(|c| {
            c.query(
                "SELECT at, kind, actor, subject, rule, detail FROM audit_log WHERE kind = ?1 ORDER BY seq",
                args![kind],
            )
        })?;
        rows.iter()
            .map(|r| {
                Ok(EventRecord {
                    at: r.get(0)?,
                    kind: r.get(1)?,
                    actor: r.get(2)?,
                    subject: r.get(3)?,
                    rule: r.get(4)?,
                    detail: r.get(5)?,
                })
            })
            .collect()
    }

    // ---- certificates ----------------------------------------------------------------

    /// Records an issued certificate and its audit record in one transaction. The primary
    /// key (issuer, serial) makes a duplicate serial impossible.
    pub fn record_certificate(&self, rec: &CertificateRecord) -> Result<(), StoreError> {
        self.record_issuance(rec, "keygrid")
    }

    /// Records an issued certificate for `actor` (who asked) with its audit record, in one
    /// transaction: a certificate is handed out only once both are committed.
    pub fn record_issuance(&self, rec: &CertificateRecord, actor: &str) -> Result<(), StoreError> {
        self.write(|tx| {
            insert_certificate(tx, rec)?;
            audit_issuance(tx, rec, "certificate.issued", actor)
        })
    }

    /// Looks up an issued certificate.
    pub fn certificate(
        &self,
        issuer: &str,
        serial: &str,
    ) -> Result<Option<CertificateRecord>, StoreError> {
        let row = self.read(|c| {
            c.query_opt(
                "SELECT issuer, serial, profile, subject, not_before, not_after, sha256, issuer_generation \
                 FROM certificates WHERE issuer = ?1 AND serial = ?2",
                args![issuer, serial],
            )
        })?;
        row.map(|r| {
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
        })
        .transpose()
    }

    /// Number of certificates recorded, for tests and status.
    pub fn certificate_count(&self) -> Result<i64, StoreError> {
        self.read(|c| {
            c.query_one("SELECT COUNT(*) FROM certificates", &[])?
                .get(0)
        })
    }

    /// Forgets the certificate rows of one profile that expired before `before` (short-lived
    /// SVIDs after their retention period); their audit records stay. Returns how many.
    pub fn prune_certificates(&self, profile: &str, before: i64) -> Result<u64, StoreError> {
        self.write(|tx| {
            tx.execute(
                "DELETE FROM certificates WHERE profile = ?1 AND not_after < ?2 AND NOT EXISTS \
                 (SELECT 1 FROM revocations r WHERE r.issuer = certificates.issuer AND r.serial = certificates.serial)",
                args![profile, before],
            )
        })
    }

    // ---- entries ---------------------------------------------------------------------

    /// Creates a registration entry. The same (spiffe_id, parent_id, selectors) twice is a
    /// conflict, as in SPIRE.
    pub fn create_entry(&self, e: &EntryRecord, now: i64) -> Result<(), StoreError> {
        self.create_entry_by("admin", e, now)
    }

    /// [`Store::create_entry`] on behalf of `actor` (recorded in the audit log).
    pub fn create_entry_by(
        &self,
        actor: &str,
        e: &EntryRecord,
        now: i64,
    ) -> Result<(), StoreError> {
        let selectors = canonical_selectors(&e.selectors)?;
        let dns =
            serde_json::to_string(&e.dns_names).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        self.write(|tx| {
            tx.execute(
                "INSERT INTO entries (id, spiffe_id, parent_id, selectors, x509_svid_ttl, dns_names, hint, created_at) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                args![e.id, e.spiffe_id, e.parent_id, selectors, e.x509_svid_ttl, dns, e.hint, now],
            )
            .map_err(|err| conflict_or(err, || format!("an entry for {} with these selectors and parent already exists", e.spiffe_id)))?;
            audit::append(
                tx,
                &audit::AuditEvent {
                    at: now,
                    kind: "entry.created".into(),
                    actor: actor.into(),
                    subject: e.spiffe_id.clone(),
                    detail: format!(
                        "entry {} for parent {} selectors {selectors} dns {dns} ttl {}",
                        e.id, e.parent_id, e.x509_svid_ttl
                    ),
                    ..Default::default()
                },
            )?;
            Ok(())
        })
    }

    /// All entries, optionally only those a given node may serve.
    pub fn entries(&self, parent_id: Option<&str>) -> Result<Vec<EntryRecord>, StoreError> {
        let rows = self.read(|c| match parent_id {
            Some(p) => c.query(
                "SELECT id, spiffe_id, parent_id, selectors, x509_svid_ttl, dns_names, hint FROM entries \
                 WHERE parent_id = ?1 ORDER BY created_at, id",
                args![p],
            ),
            None => c.query(
                "SELECT id, spiffe_id, parent_id, selectors, x509_svid_ttl, dns_names, hint FROM entries \
                 ORDER BY created_at, id",
                &[],
            ),
        })?;
        rows.iter().map(row_to_entry).collect()
    }

    /// One entry by ID.
    pub fn entry(&self, id: &str) -> Result<Option<EntryRecord>, StoreError> {
        let row = self.read(|c| {
            c.query_opt(
                "SELECT id, spiffe_id, parent_id, selectors, x509_svid_ttl, dns_names, hint FROM entries WHERE id = ?1",
                args![id],
            )
        })?;
        row.as_ref().map(row_to_entry).transpose()
    }

    /// Deletes an entry; `NotFound` if there was none.
    pub fn delete_entry(&self, id: &str) -> Result<(), StoreError> {
        self.delete_entry_by("admin", id)
    }

    /// [`Store::delete_entry`] on behalf of `actor` (recorded in the audit log).
    pub fn delete_entry_by(&self, actor: &str, id: &str) -> Result<(), StoreError> {
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        self.write(|tx| {
            let row = tx.query_opt("SELECT spiffe_id FROM entries WHERE id = ?1", args![id])?;
            let Some(row) = row else {
                return Err(StoreError::NotFound(format!("entry {id}")));
            };
            let spiffe_id: String = row.get(0)?;
            tx.execute("DELETE FROM entries WHERE id = ?1", args![id])?;
            audit::append(
                tx,
                &audit::AuditEvent {
                    at: now,
                    kind: "entry.deleted".into(),
                    actor: actor.into(),
                    subject: spiffe_id,
                    detail: format!("entry {id}"),
                    ..Default::default()
                },
            )?;
            Ok(())
        })
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
        self.create_join_token_by("admin", token_sha256, agent_id, expires_at, now)
    }

    /// [`Store::create_join_token`] on behalf of `actor` (recorded in the audit log; the
    /// token and its hash are not).
    pub fn create_join_token_by(
        &self,
        actor: &str,
        token_sha256: &str,
        agent_id: &str,
        expires_at: i64,
        now: i64,
    ) -> Result<(), StoreError> {
        self.write(|tx| {
            tx.execute(
                "INSERT INTO join_tokens (token_sha256, agent_id, expires_at, created_at) VALUES (?1, ?2, ?3, ?4)",
                args![token_sha256, agent_id, expires_at, now],
            )
            .map_err(|e| conflict_or(e, || "join token already exists".to_string()))?;
            audit::append(
                tx,
                &audit::AuditEvent {
                    at: now,
                    kind: "join_token.created".into(),
                    actor: actor.into(),
                    subject: agent_id.to_string(),
                    detail: format!("expires at {expires_at}"),
                    ..Default::default()
                },
            )?;
            Ok(())
        })
    }

    /// The agent SPIFFE ID a still-valid token was created for.
    pub fn join_token_agent(
        &self,
        token_sha256: &str,
        now: i64,
    ) -> Result<Option<String>, StoreError> {
        let row = self.read(|c| {
            c.query_opt(
                "SELECT agent_id FROM join_tokens WHERE token_sha256 = ?1 AND expires_at > ?2",
                args![token_sha256, now],
            )
        })?;
        row.map(|r| r.get(0)).transpose()
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
        self.write(|tx| {
            let n = tx.execute(
                "DELETE FROM join_tokens WHERE token_sha256 = ?1 AND expires_at > ?2",
                args![token_sha256, now],
            )?;
            if n != 1 {
                return Err(StoreError::NotFound("join token".into()));
            }
            upsert_node(tx, node, now)?;
            insert_certificate(tx, cert)?;
            audit_issuance(tx, cert, "node.attested", &node.spiffe_id)
        })
    }

    /// Replaces a node's current certificate after renewal.
    pub fn renew_node(
        &self,
        node: &NodeRecord,
        cert: &CertificateRecord,
        now: i64,
    ) -> Result<(), StoreError> {
        self.write(|tx| {
            upsert_node(tx, node, now)?;
            insert_certificate(tx, cert)?;
            audit_issuance(tx, cert, "certificate.renewed", &node.spiffe_id)
        })
    }

    /// A node by SPIFFE ID.
    pub fn node(&self, spiffe_id: &str) -> Result<Option<NodeRecord>, StoreError> {
        let row = self.read(|c| {
            c.query_opt(
                "SELECT spiffe_id, attestation, serial, not_after FROM nodes WHERE spiffe_id = ?1",
                args![spiffe_id],
            )
        })?;
        row.map(|r| {
            Ok(NodeRecord {
                spiffe_id: r.get(0)?,
                attestation: r.get(1)?,
                serial: r.get(2)?,
                not_after: r.get(3)?,
            })
        })
        .transpose()
    }
}

fn upsert_node(tx: &mut dyn Sql, node: &NodeRecord, now: i64) -> Result<(), StoreError> {
    tx.execute(
        "INSERT INTO nodes (spiffe_id, attestation, serial, not_after, created_at, updated_at) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?5) \
         ON CONFLICT (spiffe_id) DO UPDATE SET attestation = excluded.attestation, \
         serial = excluded.serial, not_after = excluded.not_after, updated_at = excluded.updated_at",
        args![node.spiffe_id, node.attestation, node.serial, node.not_after, now],
    )?;
    Ok(())
}

pub(crate) fn insert_certificate(
    tx: &mut dyn Sql,
    rec: &CertificateRecord,
) -> Result<(), StoreError> {
    tx.execute(
        "INSERT INTO certificates (issuer, serial, profile, subject, not_before, not_after, sha256, issuer_generation) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        args![rec.issuer, rec.serial, rec.profile, rec.subject, rec.not_before, rec.not_after, rec.sha256, rec.issuer_generation],
    )
    .map_err(|e| conflict_or(e, || format!("serial {} already used by issuer {}", rec.serial, rec.issuer)))?;
    Ok(())
}

/// The audit record of one certificate: who asked, for what, serial and fingerprint.
fn audit_issuance(
    tx: &mut dyn Sql,
    rec: &CertificateRecord,
    kind: &str,
    actor: &str,
) -> Result<(), StoreError> {
    audit::append(
        tx,
        &audit::AuditEvent {
            at: time::OffsetDateTime::now_utc().unix_timestamp(),
            kind: kind.into(),
            actor: actor.into(),
            subject: rec.subject.clone(),
            serial: rec.serial.clone(),
            fingerprint: rec.sha256.clone(),
            detail: format!(
                "profile {} issuer {} generation {} valid {}..{}",
                rec.profile, rec.issuer, rec.issuer_generation, rec.not_before, rec.not_after
            ),
            ..Default::default()
        },
    )?;
    Ok(())
}

fn conflict_or(err: StoreError, msg: impl FnOnce() -> String) -> StoreError {
    match err {
        StoreError::Db(DbError {
            constraint: true, ..
        }) => StoreError::Conflict(msg()),
        other => other,
    }
}

/// Sorted, de-duplicated JSON so that equal selector sets compare equal in the unique index.
fn canonical_selectors(selectors: &[Selector]) -> Result<String, StoreError> {
    let mut sorted: Vec<&Selector> = selectors.iter().collect();
    sorted.sort_by(|a, b| (&a.kind, &a.value).cmp(&(&b.kind, &b.value)));
    sorted.dedup();
    serde_json::to_string(&sorted).map_err(|e| StoreError::Corrupt(e.to_string()))
}

fn row_to_entry(r: &sql::Row) -> Result<EntryRecord, StoreError> {
    let id: String = r.get(0)?;
    let selectors: String = r.get(3)?;
    let dns: String = r.get(5)?;
    let selectors: Vec<Selector> = serde_json::from_str(&selectors)
        .map_err(|e| StoreError::Corrupt(format!("entry {id} selectors: {e}")))?;
    let dns_names: Vec<String> = serde_json::from_str(&dns)
        .map_err(|e| StoreError::Corrupt(format!("entry {id} dns names: {e}")))?;
    Ok(EntryRecord {
        spiffe_id: r.get(1)?,
        parent_id: r.get(2)?,
        selectors,
        x509_svid_ttl: r.get(4)?,
        dns_names,
        hint: r.get(6)?,
        id,
    })
}

#[cfg(test)]
mod tests;
