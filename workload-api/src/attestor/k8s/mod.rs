//! The Kubernetes attestor: `k8s:` selectors for processes running in pods.
//!
//! The pod UID and container ID come from the caller's cgroup ([`cgroup`]), which the
//! workload cannot change; the pod's namespace, service account, name, labels and the
//! container's name and image come from the kubelet's `/pods` ([`kubelet`], [`pods`]),
//! matched by that container ID. A process that is not in a container gets no `k8s:`
//! selectors. A container the kubelet does not list yet (it was just started) is polled
//! for a while before attestation gives up.

pub mod cgroup;
pub mod kubelet;
pub mod pods;

use std::path::PathBuf;
use std::time::Duration;

use super::Selector;
use crate::config::K8sConfig;

/// Attests pods through the cgroup file and the kubelet.
pub struct K8sAttestor {
    proc_root: PathBuf,
    kubelet: kubelet::KubeletClient,
    max_poll_attempts: u32,
    poll_interval: Duration,
    default_identity: bool,
}

impl K8sAttestor {
    /// Builds the attestor from its configuration.
    pub fn new(cfg: &K8sConfig) -> anyhow::Result<Self> {
        Ok(K8sAttestor {
            proc_root: cfg.proc_root.clone(),
            kubelet: kubelet::KubeletClient::new(
                &cfg.kubelet_url,
                cfg.token_path.clone(),
                cfg.kubelet_ca_path.as_deref(),
                cfg.skip_kubelet_verification,
            )?,
            max_poll_attempts: cfg.max_poll_attempts.max(1),
            poll_interval: cfg.poll_retry_interval,
            default_identity: cfg.default_identity,
        })
    }

    /// Whether pods get `spiffe://<td>/ns/<ns>/sa/<sa>` when no entry matches.
    pub fn default_identity(&self) -> bool {
        self.default_identity
    }

    /// `k8s:` selectors of `pid`; empty when it is not in a container.
    pub async fn attest(&self, pid: u32) -> anyhow::Result<Vec<Selector>> {
        let path = self.proc_root.join(pid.to_string()).join("cgroup");
        let text = std::fs::read_to_string(&path)
            .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?;
        let Some(info) = cgroup::parse(&text).map_err(anyhow::Error::msg)? else {
            return Ok(vec![]);
        };
        let mut last_error = None;
        for attempt in 0..self.max_poll_attempts {
            if attempt > 0 {
                tokio::time::sleep(self.poll_interval).await;
            }
            match self.kubelet.pods().await {
                Ok(list) => {
                    match pods::find(&list, info.pod_uid.as_deref(), &info.container_id)
                        .map_err(anyhow::Error::msg)?
                    {
                        Some(found) => return Ok(pods::selectors(&found)),
                        None => last_error = None,
                    }
                }
                Err(e) => last_error = Some(e),
            }
        }
        Err(match last_error {
            Some(e) => e.context("cannot list pods from the kubelet"),
            None => anyhow::anyhow!(
                "container {} not found in the kubelet's pods after {} attempts",
                info.container_id,
                self.max_poll_attempts
            ),
        })
    }
}
