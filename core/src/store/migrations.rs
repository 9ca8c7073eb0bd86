//! Schema migrations for the SQLite store, applied in order at start.
//!
//! Each migration runs in its own transaction together with the version bump, so a crash
//! mid-migration leaves the previous version intact.

use rusqlite::{params, Connection};

use super::StoreError;

/// Migrations in order; index + 1 is the schema version each one produces. Never edit a
/// released migration: add a new one.
const MIGRATIONS: &[&str] = &[
    // 1: hierarchy, issued certificates, entries, join tokens, nodes.
    "CREATE TABLE authorities (
        name TEXT PRIMARY KEY,
        parent TEXT REFERENCES authorities(name),
        cert_der BLOB NOT NULL,
        key_label TEXT NOT NULL,
        algorithm TEXT NOT NULL,
        created_at INTEGER NOT NULL
    );
    CREATE TABLE certificates (
        issuer TEXT NOT NULL,
        serial TEXT NOT NULL,
        profile TEXT NOT NULL,
        subject TEXT NOT NULL,
        not_before INTEGER NOT NULL,
        not_after INTEGER NOT NULL,
        sha256 TEXT NOT NULL,
        PRIMARY KEY (issuer, serial)
    );
    CREATE INDEX certificates_not_after ON certificates (not_after);
    CREATE TABLE entries (
        id TEXT PRIMARY KEY,
        spiffe_id TEXT NOT NULL,
        parent_id TEXT NOT NULL,
        selectors TEXT NOT NULL,
        x509_svid_ttl INTEGER NOT NULL,
        dns_names TEXT NOT NULL,
        hint TEXT NOT NULL,
        created_at INTEGER NOT NULL,
        UNIQUE (spiffe_id, parent_id, selectors)
    );
    CREATE INDEX entries_parent ON entries (parent_id);
    CREATE TABLE join_tokens (
        token_sha256 TEXT PRIMARY KEY,
        agent_id TEXT NOT NULL,
        expires_at INTEGER NOT NULL,
        created_at INTEGER NOT NULL
    );
    CREATE TABLE nodes (
        spiffe_id TEXT PRIMARY KEY,
        attestation TEXT NOT NULL,
        serial TEXT NOT NULL,
        not_after INTEGER NOT NULL,
        created_at INTEGER NOT NULL,
        updated_at INTEGER NOT NULL
    );",
    // 2: CA generations (rotation with overlap) and the issuing generation of each certificate;
    //    a versioned trust bundle; an append-only log of policy refusals and CA changes.
    "CREATE TABLE authority_generations (
        name TEXT NOT NULL,
        generation INTEGER NOT NULL,
        parent_name TEXT,
        parent_generation INTEGER,
        cert_der BLOB NOT NULL,
        key_label TEXT NOT NULL,
        algorithm TEXT NOT NULL,
        backend TEXT NOT NULL,
        activate_at INTEGER NOT NULL,
        created_at INTEGER NOT NULL,
        PRIMARY KEY (name, generation)
    );
    INSERT INTO authority_generations
        SELECT name, 1, parent, CASE WHEN parent IS NULL THEN NULL ELSE 1 END,
               cert_der, key_label, algorithm, 'pkcs11', created_at, created_at
        FROM authorities;
    DROP TABLE authorities;
    ALTER TABLE certificates ADD COLUMN issuer_generation INTEGER NOT NULL DEFAULT 1;
    CREATE INDEX certificates_issuer_generation ON certificates (issuer, issuer_generation, not_after);
    CREATE TABLE bundle_versions (
        sequence INTEGER PRIMARY KEY,
        roots_sha256 TEXT NOT NULL,
        created_at INTEGER NOT NULL
    );
    CREATE TABLE events (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        at INTEGER NOT NULL,
        kind TEXT NOT NULL,
        actor TEXT NOT NULL,
        subject TEXT NOT NULL,
        rule TEXT NOT NULL,
        detail TEXT NOT NULL
    );",
    // 3: revocations and the CRLs published for them.
    "CREATE TABLE revocations (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        issuer TEXT NOT NULL,
        serial TEXT NOT NULL,
        reason INTEGER NOT NULL,
        revoked_at INTEGER NOT NULL,
        UNIQUE (issuer, serial)
    );
    CREATE TABLE crls (
        issuer TEXT NOT NULL,
        number INTEGER NOT NULL,
        base_number INTEGER,
        this_update INTEGER NOT NULL,
        next_update INTEGER NOT NULL,
        der BLOB NOT NULL,
        PRIMARY KEY (issuer, number)
    );",
    // 4: JWT-SVID signing keys (labels in the key backend, never the keys).
    "CREATE TABLE jwt_keys (
        kid TEXT PRIMARY KEY,
        key_label TEXT NOT NULL,
        algorithm TEXT NOT NULL,
        created_at INTEGER NOT NULL
    );",
    // 5 (feature: control plane, issue #9): Kubernetes service-account signing keys
    // (labels in the key backend, never the keys). The lead renumbers on merge.
    "CREATE TABLE sa_keys (
        kid TEXT PRIMARY KEY,
        key_label TEXT NOT NULL,
        algorithm TEXT NOT NULL,
        created_at INTEGER NOT NULL
    );",
];

/// The schema version this build of KeyGrid migrates to.
pub fn latest() -> i64 {
    MIGRATIONS.len() as i64
}

/// The version the database is at (0 for a new database).
pub fn current_version(conn: &Connection) -> Result<i64, StoreError> {
    conn.execute(
        "CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)",
        [],
    )?;
    let v: Option<i64> =
        conn.query_row("SELECT MAX(version) FROM schema_version", [], |r| r.get(0))?;
    Ok(v.unwrap_or(0))
}

/// Applies every migration newer than the database. Refuses a database from a newer KeyGrid.
pub fn apply(conn: &mut Connection) -> Result<(), StoreError> {
    let current = current_version(conn)?;
    let latest = latest();
    if current > latest {
        return Err(StoreError::Corrupt(format!(
            "database schema version {current} is newer than this KeyGrid understands ({latest}); upgrade KeyGrid"
        )));
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(current as usize) {
        let tx = conn.transaction()?;
        tx.execute_batch(sql)?;
        tx.execute(
            "INSERT INTO schema_version (version) VALUES (?1)",
            params![i as i64 + 1],
        )?;
        tx.commit()?;
    }
    Ok(())
}
