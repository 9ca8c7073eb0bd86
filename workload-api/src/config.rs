//! Agent configuration: one TOML file, documented in `docs/configuration.md`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// The `keygrid-agent` configuration file.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    /// Trust domain the agent serves.
    pub trust_domain: String,
    /// URL of core's node API, e.g. `https://keygrid.example.org:8081`.
    pub server_address: String,
    /// Name to verify in core's certificate; defaults to the host of `server_address`.
    #[serde(default)]
    pub server_name: Option<String>,
    /// PEM file with the root certificates used to authenticate core on first contact.
    pub trust_bundle_path: PathBuf,
    /// File holding a one-time join token, used when the agent has no valid node certificate.
    #[serde(default)]
    pub join_token_file: Option<PathBuf>,
    /// Directory for the node credential (mode 0700).
    pub data_dir: PathBuf,
    /// Workload API Unix socket.
    pub socket_path: PathBuf,
    /// How often entries and the bundle are synchronised from core.
    #[serde(default = "default_sync_interval", with = "humantime_serde")]
    pub sync_interval: Duration,
    /// The unix workload attestor.
    #[serde(default)]
    pub unix: UnixConfig,
    /// The Kubernetes workload attestor; off unless `[k8s] enabled = true`.
    #[serde(default)]
    pub k8s: Option<K8sConfig>,
    /// Envoy SDS on the Workload API socket.
    #[serde(default)]
    pub sds: crate::sds::SdsConfig,
    /// EST enrollment (TPM-attested node identity, kubelet certificates); off unless present.
    #[serde(default)]
    pub est: Option<EstConfig>,
}

/// `[est]`: the agent as EST client of core (`docs/est.md`).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EstConfig {
    /// Core's EST base URL, e.g. `https://keygrid.example.org:8443/.well-known/est`.
    pub url: String,
    /// This node's Kubernetes name; the node identity is
    /// `spiffe://<trust domain>/keygrid/node/<node_name>`.
    pub node_name: String,
    /// TCTI of the TPM (`device:/dev/tpmrm0`, `swtpm:host=...,port=...`). When set, a node
    /// without a valid credential enrolls with TPM attestation (instead of a join token)
    /// and its node key lives in the TPM.
    #[serde(default)]
    pub tpm_tcti: Option<String>,
    /// Directory for the kubelet's client and serving certificates and keys; none are
    /// requested when absent.
    #[serde(default)]
    pub kubelet_dir: Option<PathBuf>,
    /// DNS names of the kubelet serving certificate (default: the node name).
    #[serde(default)]
    pub serving_dns_names: Vec<String>,
    /// IP addresses of the kubelet serving certificate.
    #[serde(default)]
    pub serving_ips: Vec<std::net::IpAddr>,
}

fn default_sync_interval() -> Duration {
    Duration::from_secs(5)
}

/// The unix workload attestor.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UnixConfig {
    /// Adds `unix:path:<binary>` (from `/proc/<pid>/exe`) to each caller's selectors.
    pub discover_workload_path: bool,
}

impl Default for UnixConfig {
    fn default() -> Self {
        UnixConfig {
            discover_workload_path: true,
        }
    }
}

/// The Kubernetes workload attestor.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct K8sConfig {
    /// Turns the attestor on.
    pub enabled: bool,
    /// The kubelet's secure port.
    pub kubelet_url: String,
    /// File with the bearer token for the kubelet (re-read on every request).
    pub token_path: PathBuf,
    /// PEM CA that signed the kubelet's serving certificate.
    pub kubelet_ca_path: Option<PathBuf>,
    /// Accept any kubelet certificate. INSECURE: anything listening on `kubelet_url` could
    /// then invent pods; only for kubelets with self-signed serving certificates.
    pub skip_kubelet_verification: bool,
    /// Give pods `spiffe://<td>/ns/<namespace>/sa/<service-account>` when no entry matches.
    pub default_identity: bool,
    /// Where `/proc` is (the host's, when the agent runs in a container).
    pub proc_root: PathBuf,
    /// How many times to list pods while a new container is not yet listed.
    pub max_poll_attempts: u32,
    /// Pause between those attempts.
    #[serde(with = "humantime_serde")]
    pub poll_retry_interval: Duration,
}

impl Default for K8sConfig {
    fn default() -> Self {
        K8sConfig {
            enabled: false,
            kubelet_url: "https://127.0.0.1:10250".into(),
            token_path: "/var/run/secrets/kubernetes.io/serviceaccount/token".into(),
            kubelet_ca_path: Some("/var/run/secrets/kubernetes.io/serviceaccount/ca.crt".into()),
            skip_kubelet_verification: false,
            default_identity: true,
            proc_root: "/proc".into(),
            max_poll_attempts: 60,
            poll_retry_interval: Duration::from_millis(500),
        }
    }
}

impl AgentConfig {
    /// Reads and validates a configuration file; errors carry the file name and, for
    /// syntax errors, the line and column.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?;
        Self::parse(&text, path)
    }

    /// Parses configuration text; `path` is used in messages.
    pub fn parse(text: &str, path: &Path) -> anyhow::Result<Self> {
        let cfg: AgentConfig =
            toml::from_str(text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        if !cfg.server_address.starts_with("https://") {
            anyhow::bail!(
                "{}: server_address must be an https:// URL, got {:?}",
                path.display(),
                cfg.server_address
            );
        }
        if let Some(est) = &cfg.est {
            if !est.url.starts_with("https://") {
                anyhow::bail!("{}: est.url must be an https:// URL", path.display());
            }
            if est.node_name.is_empty()
                || !est
                    .node_name
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
            {
                anyhow::bail!(
                    "{}: est.node_name {:?} is not a Kubernetes node name",
                    path.display(),
                    est.node_name
                );
            }
        }
        if cfg.sync_interval < Duration::from_millis(100) {
            anyhow::bail!("{}: sync_interval must be at least 100ms", path.display());
        }
        Ok(cfg)
    }

    /// The TLS name of core.
    pub fn server_name(&self) -> String {
        if let Some(n) = &self.server_name {
            return n.clone();
        }
        let rest = self.server_address.trim_start_matches("https://");
        let host = rest.split('/').next().unwrap_or(rest);
        match host.rsplit_once(':') {
            Some((h, _)) => h.trim_start_matches('[').trim_end_matches(']').to_string(),
            None => host.to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> String {
        "trust_domain = \"example.org\"\nserver_address = \"https://core.example.org:8081\"\n\
         trust_bundle_path = \"/b.pem\"\ndata_dir = \"/d\"\nsocket_path = \"/s.sock\"\n"
            .to_string()
    }

    #[test]
    fn server_name_defaults_to_the_url_host() {
        let cfg = AgentConfig::parse(&base(), Path::new("a.toml")).unwrap();
        assert_eq!(cfg.server_name(), "core.example.org");
        assert_eq!(cfg.sync_interval, Duration::from_secs(5));
    }

    #[test]
    fn plain_http_is_refused() {
        let text = base().replace("https://", "http://");
        let err = AgentConfig::parse(&text, Path::new("a.toml")).unwrap_err();
        assert!(err.to_string().contains("https://"), "{err}");
    }

    #[test]
    fn the_documented_agent_sections_parse() {
        let doc = include_str!("../../docs/configuration.md");
        let start = doc.find("## Agent").unwrap();
        let block = &doc[start..];
        let toml_start = block.find("```toml\n").unwrap() + 8;
        let toml_end = block[toml_start..].find("```").unwrap();
        let mut text = block[toml_start..toml_start + toml_end].to_string();
        text = text.replace("enabled = false", "enabled = true");
        let cfg = AgentConfig::parse(&text, Path::new("doc.toml")).unwrap();
        let k8s = cfg.k8s.unwrap();
        assert!(k8s.enabled && k8s.default_identity && !k8s.skip_kubelet_verification);
        assert_eq!(k8s.poll_retry_interval, Duration::from_millis(500));
        assert_eq!(cfg.sds.default_bundle_name, "ROOTCA");
        assert!(cfg.unix.discover_workload_path);
        assert!(AgentConfig::parse(
            &(base() + "[k8s]\nkubelet_urll = \"x\"\n"),
            Path::new("a.toml")
        )
        .is_err());
    }

    #[test]
    fn unknown_fields_are_errors() {
        let text = base() + "sokcet = 1\n";
        let err = AgentConfig::parse(&text, Path::new("a.toml")).unwrap_err();
        assert!(err.to_string().contains("sokcet"), "{err}");
    }
}
