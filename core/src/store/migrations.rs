//! Schema migrations, one set per engine, applied in order at start.
//!
//! All pending migrations run in the caller's transaction together with the version bumps,
//! so a crash mid-migration leaves the previous version intact. On PostgreSQL an advisory
//! lock makes replicas that start at the same moment migrate one after the other.
//!
//! Both engines reach the same logical schema at the same version number; PostgreSQL starts
//! at version 4 (it was added then) with one script equal to SQLite's versions 1 to 4.

use super::sql::{args, Engine, Sql};
use super::StoreError;

/// SQLite migrations in order; index + 1 is the schema version each one produces. Never
/// edit a released migration: add a new one.
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
    // 5 (store-audit): the hash-chained audit log, its head and signed checkpoints. Rows of
    //    the old `events` table are chained into the log by `audit::ensure_head` (and removed).
    AUDIT_SQLITE,
    // 6 (EST, issue #7): enrollments waiting for manual approval, and the
    // first-come binding of a TPM's EK to the node name it enrolled.
    "CREATE TABLE est_pending (
        id TEXT PRIMARY KEY,
        label TEXT NOT NULL,
        requester TEXT NOT NULL,
        subject TEXT NOT NULL,
        state TEXT NOT NULL,
        created_at INTEGER NOT NULL,
        decided_at INTEGER
    );
    CREATE TABLE est_ek_bindings (
        ek_hash TEXT PRIMARY KEY,
        node_name TEXT NOT NULL UNIQUE,
        manufacturer TEXT NOT NULL,
        bound_at INTEGER NOT NULL
    );",
    // 7 (control plane, issue #9): Kubernetes service-account signing keys
    // (labels in the key backend, never the keys).
    "CREATE TABLE sa_keys (
        kid TEXT PRIMARY KEY,
        key_label TEXT NOT NULL,
        algorithm TEXT NOT NULL,
        created_at INTEGER NOT NULL
    );",
];

const AUDIT_SQLITE: &str = "CREATE TABLE audit_log (
        seq INTEGER PRIMARY KEY,
        at INTEGER NOT NULL,
        kind TEXT NOT NULL,
        actor TEXT NOT NULL,
        subject TEXT NOT NULL,
        rule TEXT NOT NULL,
        serial TEXT NOT NULL,
        fingerprint TEXT NOT NULL,
        detail TEXT NOT NULL,
        prev_hash TEXT NOT NULL,
        hash TEXT NOT NULL
    );
    CREATE INDEX audit_log_at ON audit_log (at);
    CREATE INDEX audit_log_kind ON audit_log (kind);
    CREATE TABLE audit_head (
        id INTEGER PRIMARY KEY,
        seq INTEGER NOT NULL,
        hash TEXT NOT NULL
    );
    CREATE TABLE audit_checkpoints (
        seq INTEGER PRIMARY KEY,
        hash TEXT NOT NULL,
        at INTEGER NOT NULL,
        key_label TEXT NOT NULL,
        algorithm TEXT NOT NULL,
        signature BLOB NOT NULL
    );";

/// PostgreSQL migrations as (version, script).
const PG_MIGRATIONS: &[(i64, &str)] = &[
    (
        4,
        "CREATE TABLE authority_generations (
            name TEXT NOT NULL,
            generation BIGINT NOT NULL,
            parent_name TEXT,
            parent_generation BIGINT,
            cert_der BYTEA NOT NULL,
            key_label TEXT NOT NULL,
            algorithm TEXT NOT NULL,
            backend TEXT NOT NULL,
            activate_at BIGINT NOT NULL,
            created_at BIGINT NOT NULL,
            PRIMARY KEY (name, generation)
        );
        CREATE TABLE certificates (
            issuer TEXT NOT NULL,
            serial TEXT NOT NULL,
            profile TEXT NOT NULL,
            subject TEXT NOT NULL,
            not_before BIGINT NOT NULL,
            not_after BIGINT NOT NULL,
            sha256 TEXT NOT NULL,
            issuer_generation BIGINT NOT NULL DEFAULT 1,
            PRIMARY KEY (issuer, serial)
        );
        CREATE INDEX certificates_not_after ON certificates (not_after);
        CREATE INDEX certificates_issuer_generation ON certificates (issuer, issuer_generation, not_after);
        CREATE TABLE entries (
            id TEXT PRIMARY KEY,
            spiffe_id TEXT NOT NULL,
            parent_id TEXT NOT NULL,
            selectors TEXT NOT NULL,
            x509_svid_ttl BIGINT NOT NULL,
            dns_names TEXT NOT NULL,
            hint TEXT NOT NULL,
            created_at BIGINT NOT NULL,
            UNIQUE (spiffe_id, parent_id, selectors)
        );
        CREATE INDEX entries_parent ON entries (parent_id);
        CREATE TABLE join_tokens (
            token_sha256 TEXT PRIMARY KEY,
            agent_id TEXT NOT NULL,
            expires_at BIGINT NOT NULL,
            created_at BIGINT NOT NULL
        );
        CREATE TABLE nodes (
            spiffe_id TEXT PRIMARY KEY,
            attestation TEXT NOT NULL,
            serial TEXT NOT NULL,
            not_after BIGINT NOT NULL,
            created_at BIGINT NOT NULL,
            updated_at BIGINT NOT NULL
        );
        CREATE TABLE bundle_versions (
            sequence BIGINT PRIMARY KEY,
            roots_sha256 TEXT NOT NULL,
            created_at BIGINT NOT NULL
        );
        CREATE TABLE events (
            id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            at BIGINT NOT NULL,
            kind TEXT NOT NULL,
            actor TEXT NOT NULL,
            subject TEXT NOT NULL,
            rule TEXT NOT NULL,
            detail TEXT NOT NULL
        );
        CREATE TABLE revocations (
            seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            issuer TEXT NOT NULL,
            serial TEXT NOT NULL,
            reason BIGINT NOT NULL,
            revoked_at BIGINT NOT NULL,
            UNIQUE (issuer, serial)
        );
        CREATE TABLE crls (
            issuer TEXT NOT NULL,
            number BIGINT NOT NULL,
            base_number BIGINT,
            this_update BIGINT NOT NULL,
            next_update BIGINT NOT NULL,
            der BYTEA NOT NULL,
            PRIMARY KEY (issuer, number)
        );
        CREATE TABLE jwt_keys (
            kid TEXT PRIMARY KEY,
            key_label TEXT NOT NULL,
            algorithm TEXT NOT NULL,
            created_at BIGINT NOT NULL
        );",
    ),
    (
        5,
        "CREATE TABLE audit_log (
            seq BIGINT PRIMARY KEY,
            at BIGINT NOT NULL,
            kind TEXT NOT NULL,
            actor TEXT NOT NULL,
            subject TEXT NOT NULL,
            rule TEXT NOT NULL,
            serial TEXT NOT NULL,
            fingerprint TEXT NOT NULL,
            detail TEXT NOT NULL,
            prev_hash TEXT NOT NULL,
            hash TEXT NOT NULL
        );
        CREATE INDEX audit_log_at ON audit_log (at);
        CREATE INDEX audit_log_kind ON audit_log (kind);
        CREATE TABLE audit_head (
            id BIGINT PRIMARY KEY,
            seq BIGINT NOT NULL,
            hash TEXT NOT NULL
        );
        CREATE TABLE audit_checkpoints (
            seq BIGINT PRIMARY KEY,
            hash TEXT NOT NULL,
            at BIGINT NOT NULL,
            key_label TEXT NOT NULL,
            algorithm TEXT NOT NULL,
            signature BYTEA NOT NULL
        );",
    ),
    (
        6,
        "CREATE TABLE est_pending (
            id TEXT PRIMARY KEY,
            label TEXT NOT NULL,
            requester TEXT NOT NULL,
            subject TEXT NOT NULL,
            state TEXT NOT NULL,
            created_at BIGINT NOT NULL,
            decided_at BIGINT
        );
        CREATE TABLE est_ek_bindings (
            ek_hash TEXT PRIMARY KEY,
            node_name TEXT NOT NULL UNIQUE,
            manufacturer TEXT NOT NULL,
            bound_at BIGINT NOT NULL
        );",
    ),
    (
        7,
        "CREATE TABLE sa_keys (
            kid TEXT PRIMARY KEY,
            key_label TEXT NOT NULL,
            algorithm TEXT NOT NULL,
            created_at BIGINT NOT NULL
        );",
    ),
];

/// SQLite's migration scripts, for tests that build an old database.
#[cfg(test)]
pub fn sqlite_scripts() -> &'static [&'static str] {
    MIGRATIONS
}

fn steps(engine: Engine) -> Vec<(i64, &'static str)> {
    match engine {
        Engine::Sqlite => MIGRATIONS
            .iter()
            .enumerate()
            .map(|(i, sql)| (i as i64 + 1, *sql))
            .collect(),
        Engine::Postgres => PG_MIGRATIONS.to_vec(),
    }
}

/// The schema version this build of KeyGrid migrates to.
pub fn latest(engine: Engine) -> i64 {
    steps(engine).last().map(|(v, _)| *v).unwrap_or(0)
}

/// The version the database is at (0 for a new database).
pub fn current_version(sql: &mut dyn Sql) -> Result<i64, StoreError> {
    sql.batch("CREATE TABLE IF NOT EXISTS schema_version (version BIGINT NOT NULL)")?;
    sql.query_one("SELECT MAX(version) FROM schema_version", &[])?
        .get::<Option<i64>>(0)
        .map(|v| v.unwrap_or(0))
}

/// The version, without creating anything (inside read-only transactions).
pub fn current_version_readonly(sql: &mut dyn Sql) -> Result<i64, StoreError> {
    sql.query_one("SELECT MAX(version) FROM schema_version", &[])?
        .get::<Option<i64>>(0)
        .map(|v| v.unwrap_or(0))
}

/// Applies every migration newer than the database, in the caller's transaction. Refuses a
/// database from a newer KeyGrid.
pub fn apply(sql: &mut dyn Sql) -> Result<(), StoreError> {
    let engine = sql.engine();
    if engine == Engine::Postgres {
        // Replicas starting together: the second waits here, then sees the new version.
        sql.batch("SELECT pg_advisory_xact_lock(7262737301)")?;
    }
    let current = current_version(sql)?;
    let latest = latest(engine);
    if current > latest {
        return Err(StoreError::Corrupt(format!(
            "database schema version {current} is newer than this KeyGrid understands ({latest}); upgrade KeyGrid"
        )));
    }
    for (version, script) in steps(engine) {
        if version <= current {
            continue;
        }
        sql.batch(script)?;
        sql.execute(
            "INSERT INTO schema_version (version) VALUES (?1)",
            args![version],
        )?;
    }
    Ok(())
}
