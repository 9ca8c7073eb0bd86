//! The tamper-evident audit log: an append-only chain of records, each hashing its content
//! and the hash of the record before it, plus checkpoints signed by an audit key.
//!
//! Every change the store makes that an auditor cares about (issuance, renewal, refusal,
//! revocation, entry, token and CA changes, admin actions) appends its record in the same
//! transaction as the change itself, so neither exists without the other.
//!
//! ## One chain under several replicas
//! The chain head (last sequence number and hash) is one row, `audit_head`. An append first
//! runs `UPDATE audit_head SET seq = seq + 1 ... RETURNING`, which takes the row's write
//! lock (PostgreSQL) or runs under SQLite's single writer, so concurrent appenders from any
//! number of core processes queue up behind each other until commit: sequence numbers have
//! no gaps and the chain never forks. A rolled-back transaction gives its number back.
//!
//! ## Hash
//! `hash = SHA-256(prev_hash || seq || at || kind || actor || subject || rule || serial ||
//! fingerprint || detail)`, with `seq` and `at` as 8-byte big-endian integers and each text
//! field preceded by its 4-byte big-endian length, so no two records encode alike. The first
//! record's `prev_hash` is 32 zero bytes. Hashes are stored as lowercase hex.
//!
//! ## Checkpoints
//! Editing a record breaks the chain, but an attacker with database access could rewrite
//! the whole tail, or cut it off and move the head back. A checkpoint signs
//! `"keygrid-audit-checkpoint-v1" || seq || hash` with the audit key held by the key
//! backend (the HSM), which the attacker does not have: a rewritten or truncated chain no
//! longer matches the last checkpoint.

use serde::{Deserialize, Serialize};

use super::sql::{args, Row, Sql};
use super::{Store, StoreError};

/// `prev_hash` of the first record.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Label of the audit checkpoint key in the key backend.
pub const AUDIT_KEY_LABEL: &str = "keygrid-audit";

/// What is being recorded (everything but the chain fields).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEvent {
    /// When, Unix seconds.
    pub at: i64,
    /// What happened: `certificate.issued`, `certificate.renewed`, `node.attested`,
    /// `policy_refusal`, `certificate.revoked`, `entry.created`, ...
    pub kind: String,
    /// Who asked (a node SPIFFE ID, `admin uid 0`, `keygrid` for core itself).
    pub actor: String,
    /// What it was about (a SPIFFE ID, an issuer).
    pub subject: String,
    /// The policy rule that decided, for refusals.
    pub rule: String,
    /// Certificate serial, lowercase hex, when a certificate is concerned.
    pub serial: String,
    /// SHA-256 of the certificate, lowercase hex, when a certificate is concerned.
    pub fingerprint: String,
    /// Human-readable detail; never key material.
    pub detail: String,
}

/// One record of the chain.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditRecord {
    /// Position in the chain, from 1, without gaps.
    pub seq: i64,
    /// The event.
    #[serde(flatten)]
    pub event: AuditEvent,
    /// Hash of the record before (hex).
    pub prev_hash: String,
    /// Hash of this record (hex).
    pub hash: String,
}

/// A signed checkpoint of the chain.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Checkpoint {
    /// The last record it covers.
    pub seq: i64,
    /// That record's hash (hex).
    pub hash: String,
    /// When it was signed, Unix seconds.
    pub at: i64,
    /// Label of the signing key in the key backend.
    pub key_label: String,
    /// Key algorithm name.
    pub algorithm: String,
    /// DER signature.
    #[serde(skip)]
    pub signature: Vec<u8>,
}

/// The first thing wrong with a chain, by sequence number.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Break {
    /// The sequence number where the chain stops being trustworthy.
    pub seq: i64,
    /// What is wrong there.
    pub reason: String,
}

impl std::fmt::Display for Break {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "audit record {}: {}", self.seq, self.reason)
    }
}

/// The result of a full verification.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verification {
    /// Records checked.
    pub records: i64,
    /// Checkpoints whose signature and hash were checked.
    pub checkpoints: i64,
    /// The first problem, or `None` if the chain is intact.
    pub first_break: Option<Break>,
}

/// Signs checkpoint bytes with the audit key (an error says why it could not).
pub type CheckpointSigner<'a> = &'a dyn Fn(&[u8]) -> Result<Vec<u8>, String>;

/// Checks a checkpoint signature; `Ok(false)` if it does not verify.
pub trait CheckpointVerifier {
    /// Verifies `signature` over `message` with the key `label`.
    fn verify(&self, label: &str, message: &[u8], signature: &[u8]) -> Result<bool, String>;
}

/// The hash of one record, hex.
pub fn record_hash(prev_hash: &str, seq: i64, e: &AuditEvent) -> String {
    let mut buf = Vec::with_capacity(256);
    buf.extend_from_slice(
        &hex::decode(prev_hash).unwrap_or_else(|_| prev_hash.as_bytes().to_vec()),
    );
    buf.extend_from_slice(&seq.to_be_bytes());
    buf.extend_from_slice(&e.at.to_be_bytes());
    for field in [
        &e.kind,
        &e.actor,
        &e.subject,
        &e.rule,
        &e.serial,
        &e.fingerprint,
        &e.detail,
    ] {
        buf.extend_from_slice(&(field.len() as u32).to_be_bytes());
        buf.extend_from_slice(field.as_bytes());
    }
    hex::encode(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &buf))
}

/// Checks an exported run of records (`keygrid audit export`) on its own: consecutive
/// sequence numbers, each record's hash, each link. The first record's `prev_hash` is the
/// anchor (it must be [`GENESIS`] when the run starts at record 1). Returns the first
/// break, if any.
pub fn verify_exported(records: &[AuditRecord]) -> Option<Break> {
    let mut prev: Option<&AuditRecord> = None;
    for r in records {
        match prev {
            None if r.seq == 1 && r.prev_hash != GENESIS => {
                return Some(Break {
                    seq: 1,
                    reason: "the first record does not start from the genesis hash".into(),
                })
            }
            Some(p) if r.seq != p.seq + 1 => {
                return Some(Break {
                    seq: p.seq + 1,
                    reason: format!("missing (the next record present is {})", r.seq),
                })
            }
            Some(p) if r.prev_hash != p.hash => {
                return Some(Break {
                    seq: r.seq,
                    reason: "does not follow its predecessor (previous hash differs)".into(),
                })
            }
            _ => {}
        }
        if record_hash(&r.prev_hash, r.seq, &r.event) != r.hash {
            return Some(Break {
                seq: r.seq,
                reason: "content does not match its hash (edited or moved)".into(),
            });
        }
        prev = Some(r);
    }
    None
}

/// The bytes a checkpoint signature covers.
pub fn checkpoint_message(seq: i64, hash: &str) -> Vec<u8> {
    let mut m = b"keygrid-audit-checkpoint-v1".to_vec();
    m.extend_from_slice(&seq.to_be_bytes());
    m.extend_from_slice(hash.as_bytes());
    m
}

/// Creates the chain head if missing and chains any events recorded before the audit log
/// existed (schema version 4 and older), oldest first.
pub(crate) fn ensure_head(tx: &mut dyn Sql) -> Result<(), StoreError> {
    tx.execute(
        "INSERT INTO audit_head (id, seq, hash) VALUES (1, 0, ?1) ON CONFLICT (id) DO NOTHING",
        args![GENESIS],
    )?;
    let old = tx.query(
        "SELECT at, kind, actor, subject, rule, detail FROM events ORDER BY id",
        &[],
    )?;
    for r in &old {
        append(
            tx,
            &AuditEvent {
                at: r.get(0)?,
                kind: r.get(1)?,
                actor: r.get(2)?,
                subject: r.get(3)?,
                rule: r.get(4)?,
                detail: r.get(5)?,
                ..Default::default()
            },
        )?;
    }
    if !old.is_empty() {
        tx.execute("DELETE FROM events", &[])?;
    }
    Ok(())
}

/// Appends one record in the caller's transaction; returns its sequence number.
pub(crate) fn append(tx: &mut dyn Sql, e: &AuditEvent) -> Result<i64, StoreError> {
    // Takes the head row's lock until the caller's transaction ends: one chain, no forks.
    let head = tx.query_one(
        "UPDATE audit_head SET seq = seq + 1 WHERE id = 1 RETURNING seq, hash",
        &[],
    )?;
    let seq: i64 = head.get(0)?;
    let prev: String = head.get(1)?;
    let hash = record_hash(&prev, seq, e);
    tx.execute_pipelined(&[
        (
            "INSERT INTO audit_log (seq, at, kind, actor, subject, rule, serial, fingerprint, detail, prev_hash, hash) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
            args![seq, e.at, e.kind, e.actor, e.subject, e.rule, e.serial, e.fingerprint, e.detail, prev, hash],
        ),
        ("UPDATE audit_head SET hash = ?1 WHERE id = 1", args![hash]),
    ])?;
    Ok(seq)
}

const RECORD_COLUMNS: &str =
    "seq, at, kind, actor, subject, rule, serial, fingerprint, detail, prev_hash, hash";

fn row_to_record(r: &Row) -> Result<AuditRecord, StoreError> {
    Ok(AuditRecord {
        seq: r.get(0)?,
        event: AuditEvent {
            at: r.get(1)?,
            kind: r.get(2)?,
            actor: r.get(3)?,
            subject: r.get(4)?,
            rule: r.get(5)?,
            serial: r.get(6)?,
            fingerprint: r.get(7)?,
            detail: r.get(8)?,
        },
        prev_hash: r.get(9)?,
        hash: r.get(10)?,
    })
}

fn row_to_checkpoint(r: &Row) -> Result<Checkpoint, StoreError> {
    Ok(Checkpoint {
        seq: r.get(0)?,
        hash: r.get(1)?,
        at: r.get(2)?,
        key_label: r.get(3)?,
        algorithm: r.get(4)?,
        signature: r.get(5)?,
    })
}

/// Records fetched per query while walking the chain.
const PAGE: i64 = 5000;

impl Store {
    /// Audit records with `seq > after_seq`, at most `limit`, oldest first.
    pub fn audit_records(
        &self,
        after_seq: i64,
        limit: i64,
    ) -> Result<Vec<AuditRecord>, StoreError> {
        let rows = self.read(|c| {
            c.query(
                &format!(
                    "SELECT {RECORD_COLUMNS} FROM audit_log WHERE seq > ?1 ORDER BY seq LIMIT ?2"
                ),
                args![after_seq, limit],
            )
        })?;
        rows.iter().map(row_to_record).collect()
    }

    /// Audit records at or after `since` (Unix seconds), from sequence `after_seq` on, at
    /// most `limit`, in chain order.
    pub fn audit_records_since(
        &self,
        since: i64,
        after_seq: i64,
        limit: i64,
    ) -> Result<Vec<AuditRecord>, StoreError> {
        let rows = self.read(|c| {
            c.query(
                &format!(
                    "SELECT {RECORD_COLUMNS} FROM audit_log WHERE at >= ?1 AND seq > ?2 ORDER BY seq LIMIT ?3"
                ),
                args![since, after_seq, limit],
            )
        })?;
        rows.iter().map(row_to_record).collect()
    }

    /// The chain head: last sequence number and hash (0 and [`GENESIS`] when empty).
    pub fn audit_head(&self) -> Result<(i64, String), StoreError> {
        let r = self.read(|c| c.query_one("SELECT seq, hash FROM audit_head WHERE id = 1", &[]))?;
        Ok((r.get(0)?, r.get(1)?))
    }

    /// The last `n` records, oldest first.
    pub fn audit_tail(&self, n: i64) -> Result<Vec<AuditRecord>, StoreError> {
        let rows = self.read(|c| {
            c.query(
                &format!("SELECT {RECORD_COLUMNS} FROM audit_log ORDER BY seq DESC LIMIT ?1"),
                args![n],
            )
        })?;
        let mut out: Vec<AuditRecord> = rows.iter().map(row_to_record).collect::<Result<_, _>>()?;
        out.reverse();
        Ok(out)
    }

    /// Signs the current head with `sign` (the audit key) and stores the checkpoint.
    /// Returns `None` when the head is already checkpointed or the log is empty.
    pub fn audit_checkpoint(
        &self,
        key_label: &str,
        algorithm: &str,
        now: i64,
        sign: CheckpointSigner<'_>,
    ) -> Result<Option<Checkpoint>, StoreError> {
        let (seq, hash) = self.audit_head()?;
        if seq == 0 {
            return Ok(None);
        }
        let exists = self
            .read(|c| c.query_opt("SELECT 1 FROM audit_checkpoints WHERE seq = ?1", args![seq]))?;
        if exists.is_some() {
            return Ok(None);
        }
        // The key may be in an HSM: sign outside any transaction, then store.
        let signature = sign(&checkpoint_message(seq, &hash))
            .map_err(|e| StoreError::Corrupt(format!("cannot sign the audit checkpoint: {e}")))?;
        let cp = Checkpoint {
            seq,
            hash,
            at: now,
            key_label: key_label.to_string(),
            algorithm: algorithm.to_string(),
            signature,
        };
        self.write(|tx| {
            tx.execute(
                "INSERT INTO audit_checkpoints (seq, hash, at, key_label, algorithm, signature) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6) ON CONFLICT (seq) DO NOTHING",
                args![
                    cp.seq,
                    cp.hash,
                    cp.at,
                    cp.key_label,
                    cp.algorithm,
                    cp.signature
                ],
            )
        })?;
        Ok(Some(cp))
    }

    /// Removes the audit records older than `before` (Unix seconds) up to the newest signed
    /// checkpoint among them, which stays as the anchor the rest of the chain is verified
    /// from; records an `audit.pruned` record naming it. Export first: pruned records are
    /// gone from the store. Returns the last removed sequence number, or `None` when no
    /// checkpoint lies in the range (nothing is removed then).
    pub fn prune_audit(
        &self,
        before: i64,
        actor: &str,
        now: i64,
    ) -> Result<Option<i64>, StoreError> {
        self.write(|tx| {
            let row = tx.query_one(
                "SELECT MAX(c.seq) FROM audit_checkpoints c WHERE c.seq <= \
                 (SELECT MAX(seq) FROM audit_log WHERE at < ?1)",
                args![before],
            )?;
            let Some(anchor) = row.get::<Option<i64>>(0)? else {
                return Ok(None);
            };
            let first: Option<i64> = tx
                .query_one("SELECT MIN(seq) FROM audit_log", &[])?
                .get(0)?;
            if first.is_some_and(|f| f > anchor) {
                return Ok(None);
            }
            let removed = tx.execute("DELETE FROM audit_log WHERE seq <= ?1", args![anchor])?;
            tx.execute("DELETE FROM audit_checkpoints WHERE seq < ?1", args![anchor])?;
            append(
                tx,
                &AuditEvent {
                    at: now,
                    kind: "audit.pruned".into(),
                    actor: actor.to_string(),
                    subject: anchor.to_string(),
                    detail: format!(
                        "{removed} records up to {anchor} removed (older than {before}); the chain continues from the signed checkpoint at {anchor}"
                    ),
                    ..Default::default()
                },
            )?;
            Ok(Some(anchor))
        })
    }

    /// All checkpoints, oldest first.
    pub fn audit_checkpoints(&self) -> Result<Vec<Checkpoint>, StoreError> {
        let rows = self.read(|c| {
            c.query(
                "SELECT seq, hash, at, key_label, algorithm, signature FROM audit_checkpoints ORDER BY seq",
                &[],
            )
        })?;
        rows.iter().map(row_to_checkpoint).collect()
    }

    /// Verifies the whole chain, the head and every checkpoint (signatures with `verifier`;
    /// `None` checks checkpoint hashes only). Reports the first bad record by sequence.
    pub fn verify_audit(
        &self,
        verifier: Option<&dyn CheckpointVerifier>,
    ) -> Result<Verification, StoreError> {
        // Checkpoints first, then the head: every checkpoint read is at or below the head
        // read, even while core keeps appending. Records appended after the head was read
        // are left for the next verification.
        let checkpoints = self.audit_checkpoints()?;
        let (head_seq, head_hash) = self.audit_head()?;
        let mut cps = checkpoints.iter().peekable();
        let mut expected_seq = 1;
        let mut prev = GENESIS.to_string();
        let mut checked_cps = 0;
        let brk = |seq: i64, reason: String| Some(Break { seq, reason });
        let mut first_break = None;
        // After `prune_audit` the chain starts later, anchored by a signed checkpoint of the
        // last removed record and recorded by an `audit.pruned` record.
        if let Some(first) = self.audit_records(0, 1)?.into_iter().next() {
            if first.seq > 1 && first.seq <= head_seq {
                let anchor = first.seq - 1;
                let pruned = self.read(|c| {
                    c.query_opt(
                        "SELECT 1 FROM audit_log WHERE kind = 'audit.pruned' AND subject = ?1",
                        args![anchor.to_string()],
                    )
                })?;
                match checkpoints.iter().find(|c| c.seq == anchor) {
                    Some(cp) if cp.hash == first.prev_hash && pruned.is_some() => {
                        if let Err(reason) = check_signature(verifier, cp) {
                            return Ok(Verification {
                                records: 0,
                                checkpoints: 0,
                                first_break: brk(anchor, reason),
                            });
                        }
                        checked_cps += 1;
                        while cps.peek().is_some_and(|c| c.seq <= anchor) {
                            cps.next();
                        }
                        expected_seq = first.seq;
                        prev = first.prev_hash.clone();
                    }
                    _ => {
                        return Ok(Verification {
                            records: 0,
                            checkpoints: 0,
                            first_break: brk(
                                1,
                                format!(
                                    "missing: the log starts at {} and no recorded prune with a signed checkpoint anchors it",
                                    first.seq
                                ),
                            ),
                        })
                    }
                }
            }
        }
        let first_seq = expected_seq;
        'walk: while expected_seq <= head_seq {
            let page =
                self.audit_records(expected_seq - 1, PAGE.min(head_seq - expected_seq + 1))?;
            if page.is_empty() {
                break;
            }
            for r in &page {
                if r.seq != expected_seq {
                    first_break = brk(
                        expected_seq,
                        format!("missing (the next record present is {})", r.seq),
                    );
                    break 'walk;
                }
                if r.prev_hash != prev {
                    first_break = brk(
                        r.seq,
                        "does not follow its predecessor (previous hash differs; deleted, moved or edited)".into(),
                    );
                    break 'walk;
                }
                if record_hash(&prev, r.seq, &r.event) != r.hash {
                    first_break = brk(
                        r.seq,
                        "content does not match its hash (edited or moved)".into(),
                    );
                    break 'walk;
                }
                while let Some(cp) = cps.peek() {
                    if cp.seq > r.seq {
                        break;
                    }
                    if cp.seq == r.seq && cp.hash != r.hash {
                        first_break = brk(
                            r.seq,
                            "differs from the signed checkpoint at this position".into(),
                        );
                        break 'walk;
                    }
                    if let Err(reason) = check_signature(verifier, cp) {
                        first_break = brk(cp.seq, reason);
                        break 'walk;
                    }
                    checked_cps += 1;
                    cps.next();
                }
                prev = r.hash.clone();
                expected_seq += 1;
            }
        }
        let records = expected_seq - first_seq;
        let last = expected_seq - 1;
        if first_break.is_none() {
            if let Some(cp) = cps.next() {
                first_break = brk(
                    last + 1,
                    format!(
                        "missing: the log ends at {last} but a signed checkpoint covers up to {} (truncated)",
                        cp.seq
                    ),
                );
            } else if last < head_seq {
                first_break = brk(
                    last + 1,
                    format!(
                        "missing: the log ends at {last} but the chain head is at {head_seq} (truncated)"
                    ),
                );
            } else if head_hash != prev {
                first_break = brk(head_seq, "differs from the chain head's hash".into());
            }
        }
        Ok(Verification {
            records,
            checkpoints: checked_cps,
            first_break,
        })
    }
}

fn check_signature(
    verifier: Option<&dyn CheckpointVerifier>,
    cp: &Checkpoint,
) -> Result<(), String> {
    let Some(v) = verifier else { return Ok(()) };
    match v.verify(
        &cp.key_label,
        &checkpoint_message(cp.seq, &cp.hash),
        &cp.signature,
    ) {
        Ok(true) => Ok(()),
        Ok(false) => Err(format!(
            "checkpoint signature does not verify with key {}",
            cp.key_label
        )),
        Err(e) => Err(format!("cannot check the checkpoint signature: {e}")),
    }
}
