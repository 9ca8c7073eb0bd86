//! Backup and restore of the whole store (hierarchy, entries, nodes, certificates,
//! revocations, CRLs, JWT keys and the audit chain with its checkpoints).
//!
//! ## Archive format (version 1)
//! JSON lines. The first line is a [`BackupHeader`]: format name and version, the schema
//! version, when and from which engine, and the key labels the HSM must hold for the
//! restored core to work (keys never leave the HSM, so they are not in the archive). Then
//! one line per row, `{"t": "<table>", "r": [values...]}`, with the columns in the order
//! [`TABLES`] lists them; integers and text are JSON numbers and strings, bytes are
//! `{"b64": "..."}`. The last line, `{"end": true, "rows": N, "sha256": "..."}`, counts the
//! rows and hashes every line before it, so a cut or edited archive is refused.
//!
//! The dump is read in one snapshot transaction (SQLite: one read transaction; PostgreSQL:
//! REPEATABLE READ), so the archive is consistent even while core keeps issuing. The
//! archive is engine-neutral: a SQLite backup restores into PostgreSQL and back.

use std::io::{BufRead, Write};

use serde::{Deserialize, Serialize};

use super::sql::{Engine, Value};
use super::{Store, StoreError};

/// The archive format name in the header.
pub const FORMAT: &str = "keygrid-backup";
/// The archive format version this build writes and reads.
pub const FORMAT_VERSION: i64 = 1;

/// Tables and columns in the archive, parents before children.
pub const TABLES: &[(&str, &str)] = &[
    (
        "authority_generations",
        "name, generation, parent_name, parent_generation, cert_der, key_label, algorithm, backend, activate_at, created_at",
    ),
    (
        "certificates",
        "issuer, serial, profile, subject, not_before, not_after, sha256, issuer_generation",
    ),
    (
        "entries",
        "id, spiffe_id, parent_id, selectors, x509_svid_ttl, dns_names, hint, created_at",
    ),
    ("join_tokens", "token_sha256, agent_id, expires_at, created_at"),
    (
        "nodes",
        "spiffe_id, attestation, serial, not_after, created_at, updated_at",
    ),
    ("bundle_versions", "sequence, roots_sha256, created_at"),
    ("revocations", "seq, issuer, serial, reason, revoked_at"),
    (
        "crls",
        "issuer, number, base_number, this_update, next_update, der",
    ),
    ("jwt_keys", "kid, key_label, algorithm, created_at"),
    ("sa_keys", "kid, key_label, algorithm, created_at"),
    (
        "est_pending",
        "id, label, requester, subject, state, created_at, decided_at",
    ),
    (
        "est_ek_bindings",
        "ek_hash, node_name, manufacturer, bound_at",
    ),
    (
        "audit_log",
        "seq, at, kind, actor, subject, rule, serial, fingerprint, detail, prev_hash, hash",
    ),
    ("audit_head", "id, seq, hash"),
    (
        "audit_checkpoints",
        "seq, hash, at, key_label, algorithm, signature",
    ),
];

/// The first line of an archive.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct BackupHeader {
    /// Always [`FORMAT`].
    pub format: String,
    /// Archive format version ([`FORMAT_VERSION`]).
    pub version: i64,
    /// Store schema version of the data.
    pub schema_version: i64,
    /// When the backup was taken, Unix seconds.
    pub created_at: i64,
    /// Engine it was taken from (`sqlite`, `postgres`).
    pub engine: String,
    /// Key labels the key backend must hold: CA keys, JWT keys, the audit key.
    pub key_labels: Vec<KeyLabel>,
    /// Audit chain head at the time of the backup (sequence, hash).
    pub audit_head: (i64, String),
}

/// A key the restored core needs from the key backend.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct KeyLabel {
    /// Label in the backend.
    pub label: String,
    /// Key algorithm name.
    pub algorithm: String,
    /// Backend name (`pkcs11`, `software`).
    pub backend: String,
    /// What it is for (`root`, `workloads`, `jwt`, `audit`, ...).
    pub purpose: String,
}

/// The rows of an archive: table name and values in [`TABLES`] column order.
pub type BackupRows = Vec<(String, Vec<Value>)>;

#[derive(Serialize, Deserialize)]
struct Line {
    t: String,
    r: Vec<serde_json::Value>,
}

#[derive(Serialize, Deserialize)]
struct Trailer {
    end: bool,
    rows: i64,
    sha256: String,
}

fn to_json(v: &Value) -> serde_json::Value {
    match v {
        Value::Null => serde_json::Value::Null,
        Value::Int(i) => serde_json::Value::from(*i),
        Value::Text(s) => serde_json::Value::String(s.clone()),
        Value::Blob(b) => {
            use base64::Engine as _;
            serde_json::json!({ "b64": base64::engine::general_purpose::STANDARD.encode(b) })
        }
    }
}

fn from_json(v: &serde_json::Value) -> Result<Value, StoreError> {
    use base64::Engine as _;
    Ok(match v {
        serde_json::Value::Null => Value::Null,
        serde_json::Value::Number(n) => Value::Int(
            n.as_i64()
                .ok_or_else(|| StoreError::Corrupt(format!("backup: {n} is not an integer")))?,
        ),
        serde_json::Value::String(s) => Value::Text(s.clone()),
        serde_json::Value::Object(o) => match o.get("b64").and_then(|b| b.as_str()) {
            Some(b) => Value::Blob(
                base64::engine::general_purpose::STANDARD
                    .decode(b)
                    .map_err(|e| StoreError::Corrupt(format!("backup: bad base64: {e}")))?,
            ),
            None => return Err(StoreError::Corrupt("backup: unknown value object".into())),
        },
        other => {
            return Err(StoreError::Corrupt(format!(
                "backup: unexpected value {other}"
            )))
        }
    })
}

/// Hashes archive lines as they are written or read.
struct LineHasher(aws_lc_rs::digest::Context);

impl LineHasher {
    fn new() -> Self {
        LineHasher(aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256))
    }
    fn line(&mut self, l: &str) {
        self.0.update(l.as_bytes());
        self.0.update(b"\n");
    }
    fn finish(self) -> String {
        hex::encode(self.0.finish())
    }
}

fn io_err(e: std::io::Error) -> StoreError {
    StoreError::Corrupt(format!("backup file: {e}"))
}

fn json_err(e: serde_json::Error) -> StoreError {
    StoreError::Corrupt(format!("backup: {e}"))
}

impl Store {
    /// Writes a consistent archive of the whole store to `out`. `extra_labels` are keys the
    /// store does not name itself (the audit key). Returns the header written.
    pub fn backup(
        &self,
        out: &mut dyn Write,
        now: i64,
        extra_labels: &[KeyLabel],
    ) -> Result<BackupHeader, StoreError> {
        let engine = match self.engine() {
            Engine::Sqlite => "sqlite",
            Engine::Postgres => "postgres",
        };
        self.snapshot(|sql| {
            let schema_version = super::migrations::current_version_readonly(sql)?;
            let mut key_labels = Vec::new();
            for r in sql.query(
                "SELECT DISTINCT key_label, algorithm, backend, name FROM authority_generations ORDER BY name, key_label",
                &[],
            )? {
                key_labels.push(KeyLabel {
                    label: r.get(0)?,
                    algorithm: r.get(1)?,
                    backend: r.get(2)?,
                    purpose: r.get(3)?,
                });
            }
            for r in sql.query("SELECT key_label, algorithm FROM jwt_keys ORDER BY key_label", &[])? {
                key_labels.push(KeyLabel {
                    label: r.get(0)?,
                    algorithm: r.get(1)?,
                    backend: "pkcs11".into(),
                    purpose: "jwt".into(),
                });
            }
            key_labels.extend(extra_labels.iter().cloned());
            let head = sql.query_one("SELECT seq, hash FROM audit_head WHERE id = 1", &[])?;
            let header = BackupHeader {
                format: FORMAT.into(),
                version: FORMAT_VERSION,
                schema_version,
                created_at: now,
                engine: engine.into(),
                key_labels,
                audit_head: (head.get(0)?, head.get(1)?),
            };
            let mut hasher = LineHasher::new();
            let mut emit = |l: String, out: &mut dyn Write| -> Result<(), StoreError> {
                hasher.line(&l);
                writeln!(out, "{l}").map_err(io_err)
            };
            emit(serde_json::to_string(&header).map_err(json_err)?, out)?;
            let mut rows = 0i64;
            for (table, columns) in TABLES {
                for r in sql.query(&format!("SELECT {columns} FROM {table} ORDER BY 1, 2"), &[])? {
                    let line = Line {
                        t: table.to_string(),
                        r: r.0.iter().map(to_json).collect(),
                    };
                    emit(serde_json::to_string(&line).map_err(json_err)?, out)?;
                    rows += 1;
                }
            }
            let trailer = Trailer {
                end: true,
                rows,
                sha256: hasher.finish(),
            };
            writeln!(out, "{}", serde_json::to_string(&trailer).map_err(json_err)?)
                .map_err(io_err)?;
            out.flush().map_err(io_err)?;
            Ok(header)
        })
    }

    /// Reads an archive's header and checks the whole archive (format, version, row count,
    /// hash) without changing anything.
    pub fn read_backup(input: &mut dyn BufRead) -> Result<(BackupHeader, BackupRows), StoreError> {
        let mut lines = input.lines();
        let first = lines
            .next()
            .ok_or_else(|| StoreError::Corrupt("backup file is empty".into()))?
            .map_err(io_err)?;
        let header: BackupHeader = serde_json::from_str(&first)
            .map_err(|e| StoreError::Corrupt(format!("not a KeyGrid backup: {e}")))?;
        if header.format != FORMAT {
            return Err(StoreError::Corrupt(format!(
                "not a KeyGrid backup (format {:?})",
                header.format
            )));
        }
        if header.version != FORMAT_VERSION {
            return Err(StoreError::Corrupt(format!(
                "backup format version {} is not supported (this KeyGrid reads {FORMAT_VERSION})",
                header.version
            )));
        }
        let mut hasher = LineHasher::new();
        hasher.line(&first);
        let mut rows = Vec::new();
        let mut trailer = None;
        for l in lines {
            let l = l.map_err(io_err)?;
            if trailer.is_some() {
                return Err(StoreError::Corrupt("backup has data after its end".into()));
            }
            if l.starts_with("{\"end\"") {
                trailer = Some(serde_json::from_str::<Trailer>(&l).map_err(json_err)?);
                continue;
            }
            hasher.line(&l);
            let line: Line = serde_json::from_str(&l).map_err(json_err)?;
            let Some((_, columns)) = TABLES.iter().find(|(t, _)| *t == line.t) else {
                return Err(StoreError::Corrupt(format!(
                    "backup: unknown table {}",
                    line.t
                )));
            };
            if columns.split(',').count() != line.r.len() {
                return Err(StoreError::Corrupt(format!(
                    "backup: a {} row has {} values",
                    line.t,
                    line.r.len()
                )));
            }
            let values = line.r.iter().map(from_json).collect::<Result<_, _>>()?;
            rows.push((line.t, values));
        }
        let trailer = trailer
            .ok_or_else(|| StoreError::Corrupt("backup is truncated (no end line)".into()))?;
        if trailer.rows != rows.len() as i64 || trailer.sha256 != hasher.finish() {
            return Err(StoreError::Corrupt(
                "backup does not match its end line (edited or damaged)".into(),
            ));
        }
        Ok((header, rows))
    }

    /// Restores an archive into this store, which must be empty (a fresh data directory or
    /// database) and at the archive's schema version. All or nothing.
    pub fn restore(
        &self,
        header: &BackupHeader,
        rows: &[(String, Vec<Value>)],
    ) -> Result<(), StoreError> {
        let current = self.schema_version()?;
        if header.schema_version != current {
            return Err(StoreError::Corrupt(format!(
                "backup has schema version {}, this store is at {current}; restore with the KeyGrid version that took it",
                header.schema_version
            )));
        }
        self.write(|tx| {
            let used: i64 = tx
                .query_one(
                    "SELECT (SELECT COUNT(*) FROM authority_generations) + (SELECT COUNT(*) FROM audit_log)",
                    &[],
                )?
                .get(0)?;
            if used != 0 {
                return Err(StoreError::Conflict(
                    "the store is not empty; restore into a fresh data directory or database".into(),
                ));
            }
            tx.execute("DELETE FROM audit_head", &[])?;
            for (table, values) in rows {
                let Some((_, columns)) = TABLES.iter().find(|(t, _)| t == table) else {
                    return Err(StoreError::Corrupt(format!("backup: unknown table {table}")));
                };
                let placeholders: Vec<String> =
                    (1..=values.len()).map(|i| format!("?{i}")).collect();
                let overriding = if tx.engine() == Engine::Postgres && table == "revocations" {
                    "OVERRIDING SYSTEM VALUE "
                } else {
                    ""
                };
                tx.execute(
                    &format!(
                        "INSERT INTO {table} ({columns}) {overriding}VALUES ({})",
                        placeholders.join(", ")
                    ),
                    values,
                )?;
            }
            if tx.engine() == Engine::Postgres {
                tx.batch(
                    "SELECT setval(pg_get_serial_sequence('revocations', 'seq'), \
                     COALESCE((SELECT MAX(seq) FROM revocations), 0) + 1, false)",
                )?;
            }
            super::audit::ensure_head(tx)?;
            Ok(())
        })
    }
}

/// Verifies a restore: the chain head must be the one the archive recorded.
pub fn check_restored(store: &Store, header: &BackupHeader) -> Result<(), StoreError> {
    let head = store.audit_head()?;
    if head != header.audit_head {
        return Err(StoreError::Corrupt(format!(
            "restored audit head {:?} differs from the backup's {:?}",
            head, header.audit_head
        )));
    }
    Ok(())
}
