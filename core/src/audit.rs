//! Core's side of the audit log: the checkpoint key in the key backend, periodic signed
//! checkpoints, verification of checkpoint signatures, and the retention of short-lived
//! certificate rows. The chain itself lives in the store ([`crate::store::audit`]), which
//! writes every record in the same transaction as the change it records.

use std::sync::Arc;
use std::time::Duration;

use crate::keys::{CaSigner, KeyAlgorithm, KeyBackend, KeyError};
use crate::store::audit::CheckpointVerifier;
use crate::store::Store;

/// The audit key: signs checkpoints of the chain. Lives in the key backend (the HSM), so
/// someone with write access to the database alone cannot forge a checkpoint.
pub struct AuditKey {
    label: String,
    signer: Arc<dyn CaSigner>,
}

/// Checkpoint keys are ECDSA P-256 (fast in SoftHSM2 and real HSMs alike).
const AUDIT_ALGORITHM: KeyAlgorithm = KeyAlgorithm::EcdsaP256;

impl AuditKey {
    /// Finds the audit key under `label`, creating it on first start.
    pub fn load_or_create(backend: &dyn KeyBackend, label: &str) -> Result<Self, KeyError> {
        let signer = match backend.find(label, AUDIT_ALGORITHM) {
            Ok(s) => s,
            Err(KeyError::NotFound { .. }) => {
                tracing::info!(label, "creating the audit checkpoint key");
                backend.generate(label, AUDIT_ALGORITHM)?
            }
            Err(e) => return Err(e),
        };
        Ok(AuditKey {
            label: label.to_string(),
            signer,
        })
    }

    /// Finds the existing audit key (for verification; never creates one).
    pub fn find(backend: &dyn KeyBackend, label: &str) -> Result<Self, KeyError> {
        Ok(AuditKey {
            label: label.to_string(),
            signer: backend.find(label, AUDIT_ALGORITHM)?,
        })
    }

    /// The key's label in the backend.
    pub fn label(&self) -> &str {
        &self.label
    }

    /// Signs a checkpoint of the current chain head, unless it is already checkpointed.
    pub fn checkpoint(
        &self,
        store: &Store,
        now: i64,
    ) -> Result<Option<crate::store::audit::Checkpoint>, crate::store::StoreError> {
        store.audit_checkpoint(&self.label, self.signer.algorithm().name(), now, &|m| {
            self.signer.sign(m).map_err(|e| e.to_string())
        })
    }
}

impl CheckpointVerifier for AuditKey {
    fn verify(&self, label: &str, message: &[u8], signature: &[u8]) -> Result<bool, String> {
        if label != self.label {
            return Err(format!(
                "checkpoint was signed by key {label}, but the audit key is {}",
                self.label
            ));
        }
        let alg = self.signer.algorithm().verification_algorithm();
        let key = aws_lc_rs::signature::UnparsedPublicKey::new(alg, self.signer.public_key_raw());
        Ok(key.verify(message, signature).is_ok())
    }
}

fn now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

/// Signs a checkpoint every `interval` (and does nothing when the head has not moved).
pub fn spawn_checkpoints(store: Arc<Store>, key: Arc<AuditKey>, interval: Duration) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(interval.max(Duration::from_secs(1)));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let (s, k) = (store.clone(), key.clone());
            match tokio::task::spawn_blocking(move || k.checkpoint(&s, now())).await {
                Ok(Ok(Some(cp))) => tracing::debug!(seq = cp.seq, "audit checkpoint signed"),
                Ok(Ok(None)) => {}
                Ok(Err(e)) => tracing::error!(error = %e, "audit checkpoint failed"),
                Err(e) => tracing::error!(error = %e, "audit checkpoint task failed"),
            }
        }
    });
}

/// Forgets certificate rows of expired X.509-SVIDs older than `retention`, hourly (their
/// audit records stay), so a large fleet does not grow the store without bound.
pub fn spawn_svid_retention(store: Arc<Store>, retention: Duration) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(3600));
        loop {
            tick.tick().await;
            let s = store.clone();
            let before = now() - retention.as_secs() as i64;
            match tokio::task::spawn_blocking(move || {
                s.prune_certificates(crate::issuance::PROFILE_X509_SVID, before)
            })
            .await
            {
                Ok(Ok(n)) if n > 0 => tracing::info!(rows = n, "expired SVID rows pruned"),
                Ok(Ok(_)) => {}
                Ok(Err(e)) => tracing::error!(error = %e, "SVID retention failed"),
                Err(e) => tracing::error!(error = %e, "SVID retention task failed"),
            }
        }
    });
}

/// Records a `config.changed` audit event when the issuance-relevant configuration (policy
/// rules, CA, workload and node settings, store retention) differs from the one recorded at
/// the last start, so policy changes made in the file are in the chain too. Returns whether
/// it recorded one.
pub fn record_config_change(
    store: &Store,
    cfg: &crate::config::CoreConfig,
) -> Result<bool, crate::store::StoreError> {
    let relevant = format!(
        "{:?}\n{:?}\n{:?}\n{:?}\n{:?}",
        cfg.policy, cfg.ca, cfg.workloads, cfg.nodes, cfg.store.svid_retention
    );
    let digest = crate::ca::sha256_hex(relevant.as_bytes());
    let prefix = format!("configuration sha256 {digest};");
    let last = store.events("config.changed")?.pop();
    if last.is_some_and(|e| e.detail.starts_with(&prefix)) {
        return Ok(false);
    }
    store.record_event(&crate::store::EventRecord {
        at: now(),
        kind: "config.changed".into(),
        actor: "keygrid".into(),
        subject: cfg.trust_domain.clone(),
        rule: String::new(),
        detail: format!(
            "{prefix} {} policy rules: {}",
            cfg.policy.len(),
            cfg.policy
                .iter()
                .map(|r| format!("{r:?}"))
                .collect::<Vec<_>>()
                .join("; ")
        ),
    })?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_changes_are_recorded_once_each() {
        let store = Store::in_memory().unwrap();
        let base = "trust_domain = \"example.org\"\ndata_dir = \"/d\"\n";
        let cfg = crate::config::CoreConfig::parse(base, std::path::Path::new("/c.toml")).unwrap();
        assert!(record_config_change(&store, &cfg).unwrap());
        assert!(!record_config_change(&store, &cfg).unwrap(), "unchanged");
        let with_policy = format!(
            "{base}[[policy]]\nname = \"keys\"\nprofiles = [\"*\"]\nallowed_keys = [\"ecdsa-p384\"]\n"
        );
        let cfg2 = crate::config::CoreConfig::parse(&with_policy, std::path::Path::new("/c.toml"))
            .unwrap();
        assert!(record_config_change(&store, &cfg2).unwrap());
        let events = store.events("config.changed").unwrap();
        assert_eq!(events.len(), 2);
        assert!(
            events[1].detail.contains("1 policy rules"),
            "{}",
            events[1].detail
        );
        assert!(events[1].detail.contains("keys"), "{}", events[1].detail);
    }

    #[test]
    fn checkpoints_verify_only_with_the_audit_key() {
        let backend = crate::keys::software::MemoryBackend::default();
        let key = AuditKey::load_or_create(&backend, "keygrid-audit").unwrap();
        let store = Store::in_memory().unwrap();
        store
            .record_event(&crate::store::EventRecord {
                at: 1,
                kind: "k".into(),
                actor: "a".into(),
                subject: "s".into(),
                rule: String::new(),
                detail: String::new(),
            })
            .unwrap();
        key.checkpoint(&store, 2).unwrap().unwrap();
        let v = store.verify_audit(Some(&key)).unwrap();
        assert_eq!((v.checkpoints, v.first_break), (1, None));
        // Another key of the same label (an attacker's) does not verify it.
        let other_backend = crate::keys::software::MemoryBackend::default();
        let other = AuditKey::load_or_create(&other_backend, "keygrid-audit").unwrap();
        let b = store
            .verify_audit(Some(&other))
            .unwrap()
            .first_break
            .unwrap();
        assert!(b.reason.contains("signature"), "{b}");
    }
}
