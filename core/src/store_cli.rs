//! The offline store commands of the `keygrid` CLI: `audit verify|export|tail`, `backup`
//! and `restore`. They open the store (and, where needed, the HSM) named by a core
//! configuration directly, so they work while core is down, which is when an operator
//! restores or investigates.

use std::io::Write;
use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use cryptoki::types::AuthPin;

use crate::audit::AuditKey;
use crate::config::CoreConfig;
use crate::keys::pkcs11::Pkcs11Token;
use crate::store::audit::{AuditRecord, Verification};
use crate::store::backup::{self, KeyLabel};
use crate::store::Store;

fn now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

fn uid() -> u32 {
    // SAFETY: getuid has no preconditions and cannot fail.
    unsafe { libc::getuid() }
}

fn open_token(cfg: &CoreConfig) -> anyhow::Result<std::sync::Arc<Pkcs11Token>> {
    let pin = cfg.hsm_pin().map_err(anyhow::Error::msg)?;
    Pkcs11Token::open(&cfg.hsm.module, &cfg.hsm.token_label, AuthPin::from(pin))
        .context("cannot open the HSM token")
}

/// `keygrid audit verify`: the whole chain, the head and every checkpoint signature.
/// Returns the verification; the caller turns a break into a failing exit status.
pub fn verify(cfg: &CoreConfig) -> anyhow::Result<Verification> {
    let store = crate::server::open_store(cfg)?;
    let has_checkpoints = !store.audit_checkpoints()?.is_empty();
    let key = if has_checkpoints {
        let token = open_token(cfg)?;
        Some(
            AuditKey::find(&token, &cfg.audit.key_label).with_context(|| {
                format!(
                    "the audit key {} is not in the HSM; checkpoints cannot be checked",
                    cfg.audit.key_label
                )
            })?,
        )
    } else {
        None
    };
    Ok(store.verify_audit(key.as_ref().map(|k| k as _))?)
}

/// Parses `--since`: RFC 3339 time, Unix seconds, or a duration back from now (`1h`).
pub fn parse_since(s: &str, now: i64) -> anyhow::Result<i64> {
    if let Ok(t) = s.parse::<i64>() {
        return Ok(t);
    }
    if let Ok(t) = time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339) {
        return Ok(t.unix_timestamp());
    }
    if let Ok(d) = humantime::parse_duration(s) {
        return Ok(now - d.as_secs() as i64);
    }
    anyhow::bail!("--since {s:?}: use an RFC 3339 time, Unix seconds or a duration like 1h")
}

fn write_json(out: &mut dyn Write, r: &AuditRecord) -> anyhow::Result<()> {
    serde_json::to_writer(&mut *out, r)?;
    out.write_all(b"\n")?;
    Ok(())
}

/// `keygrid audit export --since`: records from `since` on, as JSON lines, in chain order.
pub fn export(cfg: &CoreConfig, since: i64, out: &mut dyn Write) -> anyhow::Result<i64> {
    let store = crate::server::open_store(cfg)?;
    let mut after = 0;
    let mut n = 0;
    loop {
        let page = store.audit_records_since(since, after, 5000)?;
        let Some(last) = page.last() else { break };
        after = last.seq;
        for r in &page {
            write_json(out, r)?;
            n += 1;
        }
    }
    out.flush()?;
    Ok(n)
}

/// `keygrid audit prune --before`: see [`Store::prune_audit`].
pub fn prune(cfg: &CoreConfig, before: i64) -> anyhow::Result<Option<i64>> {
    let store = crate::server::open_store(cfg)?;
    Ok(store.prune_audit(before, &format!("admin uid {}", uid()), now())?)
}

/// `keygrid audit tail`: the last `n` records, then (with `follow`) new ones as they come.
pub fn tail(cfg: &CoreConfig, n: i64, follow: bool, out: &mut dyn Write) -> anyhow::Result<()> {
    let store = crate::server::open_store(cfg)?;
    let mut last = 0;
    for r in store.audit_tail(n.max(0))? {
        last = r.seq;
        write_json(out, &r)?;
    }
    out.flush()?;
    if last == 0 {
        last = store.audit_head()?.0;
    }
    if !follow {
        return Ok(());
    }
    loop {
        std::thread::sleep(Duration::from_secs(1));
        for r in store.audit_records(last, 1000)? {
            last = r.seq;
            write_json(out, &r)?;
        }
        out.flush()?;
    }
}

/// `keygrid backup <file>`: a consistent archive of store and audit. Written to a temporary
/// file next to `file` and renamed, so a failed backup never leaves a partial archive.
pub fn backup(cfg: &CoreConfig, file: &Path) -> anyhow::Result<backup::BackupHeader> {
    let store = crate::server::open_store(cfg)?;
    store.record_event(&crate::store::EventRecord {
        at: now(),
        kind: "admin.backup".into(),
        actor: format!("admin uid {}", uid()),
        subject: file.display().to_string(),
        rule: String::new(),
        detail: "backup started".into(),
    })?;
    let dir = file
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let mut tmp = tempfile::NamedTempFile::new_in(dir)
        .with_context(|| format!("cannot create a file in {}", dir.display()))?;
    let audit_label = KeyLabel {
        label: cfg.audit.key_label.clone(),
        algorithm: "ecdsa-p256".into(),
        backend: "pkcs11".into(),
        purpose: "audit".into(),
    };
    let header = {
        let mut w = std::io::BufWriter::new(tmp.as_file_mut());
        let h = store.backup(&mut w, now(), &[audit_label])?;
        w.flush()?;
        h
    };
    tmp.as_file().sync_all()?;
    tmp.persist(file)
        .with_context(|| format!("cannot write {}", file.display()))?;
    Ok(header)
}

/// `keygrid restore <file>`: rebuilds a fresh core's store from an archive, after checking
/// the archive whole and that the HSM holds every key it names.
pub fn restore(cfg: &CoreConfig, file: &Path) -> anyhow::Result<backup::BackupHeader> {
    let f = std::fs::File::open(file).with_context(|| format!("cannot open {}", file.display()))?;
    let (header, rows) = Store::read_backup(&mut std::io::BufReader::new(f))
        .with_context(|| format!("{} is not a usable backup", file.display()))?;
    let token = open_token(cfg)?;
    let mut missing = Vec::new();
    for k in &header.key_labels {
        let Some(alg) = crate::keys::KeyAlgorithm::from_name(&k.algorithm) else {
            missing.push(format!("{} (unknown algorithm {})", k.label, k.algorithm));
            continue;
        };
        if k.backend == "pkcs11" {
            if let Err(e) = crate::keys::KeyBackend::find(&token, &k.label, alg) {
                missing.push(format!("{} ({}): {e}", k.label, k.purpose));
            }
        }
    }
    if !missing.is_empty() {
        anyhow::bail!(
            "the HSM token {} lacks keys this backup needs: {}",
            cfg.hsm.token_label,
            missing.join("; ")
        );
    }
    crate::server::private_dir(&cfg.data_dir)?;
    let store = crate::server::open_store(cfg)?;
    store.restore(&header, &rows)?;
    backup::check_restored(&store, &header)?;
    let key = AuditKey::find(&token, &cfg.audit.key_label).ok();
    let v = store.verify_audit(key.as_ref().map(|k| k as _))?;
    if let Some(b) = v.first_break {
        anyhow::bail!("the restored audit chain does not verify: {b}");
    }
    store.record_event(&crate::store::EventRecord {
        at: now(),
        kind: "admin.restore".into(),
        actor: format!("admin uid {}", uid()),
        subject: file.display().to_string(),
        rule: String::new(),
        detail: format!(
            "restored backup taken at {} from {} (audit head {})",
            header.created_at, header.engine, header.audit_head.0
        ),
    })?;
    Ok(header)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_takes_times_seconds_and_durations() {
        let now = 1_800_000_000;
        assert_eq!(parse_since("0", now).unwrap(), 0);
        assert_eq!(parse_since("1700000000", now).unwrap(), 1_700_000_000);
        assert_eq!(parse_since("1h", now).unwrap(), now - 3600);
        assert_eq!(
            parse_since("2023-11-14T22:13:20Z", now).unwrap(),
            1_700_000_000
        );
        let err = parse_since("yesterday-ish", now).unwrap_err().to_string();
        assert!(err.contains("RFC 3339"), "{err}");
    }
}
