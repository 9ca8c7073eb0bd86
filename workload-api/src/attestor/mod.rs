//! Workload attestation: who is calling, as selectors, from what the kernel and the
//! orchestrator say about the calling process, never from anything it sends.
//!
//! Every configured attestor runs on the caller's PID; their selectors are unioned. The
//! process is pinned first ([`process::ProcessWatch`]) and checked again after attestation,
//! so a caller that exits and whose PID is reused by another process mid-attestation is
//! refused instead of getting the other process's identity.

pub mod k8s;
pub mod process;
pub mod unix;

use tokio::net::unix::UCred;

use crate::config::AgentConfig;

/// One workload selector, `type:value` (e.g. `unix` / `uid:1000`).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Selector {
    /// Attestor type.
    pub kind: String,
    /// Attestor-specific value.
    pub value: String,
}

impl Selector {
    /// A selector of type `kind`.
    pub fn new(kind: &str, value: impl Into<String>) -> Self {
        Selector {
            kind: kind.to_string(),
            value: value.into(),
        }
    }
}

/// Why a caller could not be attested.
#[derive(Debug, thiserror::Error)]
pub enum AttestError {
    /// The socket gave no peer credentials or PID.
    #[error("caller has no peer credentials")]
    NoCredentials,
    /// The calling process went away (or its PID was reused) during attestation.
    #[error("could not verify existence of the original caller")]
    CallerGone,
    /// Every attestor failed.
    #[error("workload attestation failed: {0}")]
    Failed(String),
}

/// The attestors the agent is configured with.
pub struct Attestor {
    unix: unix::UnixAttestor,
    k8s: Option<k8s::K8sAttestor>,
}

impl Attestor {
    /// Builds the attestors from the agent configuration.
    pub fn from_config(cfg: &AgentConfig) -> anyhow::Result<Self> {
        let k8s = match &cfg.k8s {
            Some(k) if k.enabled => Some(k8s::K8sAttestor::new(k)?),
            _ => None,
        };
        Ok(Attestor {
            unix: unix::UnixAttestor::new(cfg.unix.discover_workload_path),
            k8s,
        })
    }

    /// Whether pods get their default identity when no entry matches.
    pub fn default_identity_enabled(&self) -> bool {
        self.k8s.as_ref().is_some_and(|k| k.default_identity())
    }

    /// Attests the process behind `cred`.
    pub async fn attest(&self, cred: &UCred) -> Result<Vec<Selector>, AttestError> {
        let pid = cred
            .pid()
            .filter(|p| *p > 0)
            .ok_or(AttestError::NoCredentials)?;
        let watch = process::ProcessWatch::new(pid as u32, cred.uid(), cred.gid())
            .map_err(|_| AttestError::CallerGone)?;
        let mut selectors = self.unix.attest(cred);
        if let Some(k8s) = &self.k8s {
            match k8s.attest(pid as u32).await {
                Ok(s) => selectors.extend(s),
                Err(e) => {
                    tracing::warn!(pid, error = %e, "kubernetes workload attestation failed");
                    // Unix selectors still identify the caller; the union of what worked counts.
                }
            }
        }
        if !watch.is_alive() {
            tracing::warn!(
                pid,
                "caller exited or its PID was reused during attestation"
            );
            return Err(AttestError::CallerGone);
        }
        selectors.sort();
        selectors.dedup();
        Ok(selectors)
    }
}
