//! The `[est]` section of core's configuration: where the EST server listens, which CA
//! labels it serves, and the few switches an operator must turn on deliberately (HTTP
//! Basic for labs, manual approval, TPM enrollment). Off unless `listen` is set.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

/// Labels served when the configuration names none.
pub const DEFAULT_LABELS: [&str; 3] = ["nodes", "kubelet-client", "kubelet-serving"];

/// How the server treats the RFC 7030 §3.5 channel binding in a CSR's challengePassword.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum ChannelBinding {
    /// A challengePassword, when present, must carry this connection's binding; a CSR
    /// without one is accepted (curl + openssl clients cannot compute it).
    #[default]
    Optional,
    /// Every enrollment CSR must carry this connection's binding.
    Required,
}

/// `[est]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EstConfig {
    /// HTTPS listen address of the EST server (`/.well-known/est/...`); off when absent.
    pub listen: Option<SocketAddr>,
    /// CA labels served (`/.well-known/est/<label>/`): `nodes` (node identities) and the
    /// profiles signed by the nodes CA (`kubelet-client`, `kubelet-serving`).
    pub labels: Vec<String>,
    /// Largest request body read; bigger bodies get 413 before they are read.
    pub max_body_bytes: usize,
    /// Channel binding of CSRs to the TLS connection (`optional` or `required`).
    pub channel_binding: ChannelBinding,
    /// Labels whose enrollments wait for an operator (`keygrid est approve`); clients get
    /// 202 with Retry-After until then.
    pub manual_approval: Vec<String>,
    /// Lifetime of kubelet client and serving certificates (the profile caps it at a year).
    #[serde(with = "humantime_serde")]
    pub kubelet_cert_ttl: Duration,
    /// Retry-After sent with 202.
    #[serde(with = "humantime_serde")]
    pub retry_after: Duration,
    /// HTTP Basic authentication, for labs only; off unless this table is present.
    pub lab_basic_auth: Option<BasicAuthConfig>,
    /// TPM-attested enrollment of nodes without a credential; off unless present.
    pub tpm: Option<TpmEnrollConfig>,
}

impl Default for EstConfig {
    fn default() -> Self {
        EstConfig {
            listen: None,
            labels: DEFAULT_LABELS.iter().map(|s| s.to_string()).collect(),
            max_body_bytes: 16 * 1024,
            channel_binding: ChannelBinding::Optional,
            manual_approval: Vec::new(),
            kubelet_cert_ttl: Duration::from_secs(24 * 3600),
            retry_after: Duration::from_secs(30),
            lab_basic_auth: None,
            tpm: None,
        }
    }
}

/// `[est.lab_basic_auth]`: one user whose password's SHA-256 is configured (the password
/// itself never is).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BasicAuthConfig {
    /// User name.
    pub username: String,
    /// Lowercase hex SHA-256 of the password.
    pub password_sha256: String,
}

/// `[est.tpm]`: which TPMs may enroll a node identity without a prior credential.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TpmEnrollConfig {
    /// PEM files of TPM manufacturer (EK) CA certificates.
    #[serde(default)]
    pub manufacturer_cas: Vec<PathBuf>,
    /// Allow-listed EK hashes (hex SHA-256 of the EK SubjectPublicKeyInfo).
    #[serde(default)]
    pub allowed_ek_hashes: Vec<String>,
    /// EK hashes (same form) refused whatever their certificate or the allow-list say:
    /// lost, stolen or retired TPMs, whose manufacturer certificates stay valid for life.
    #[serde(default)]
    pub denied_ek_hashes: Vec<String>,
    /// How long an attestation challenge may be answered.
    #[serde(default = "default_challenge_ttl", with = "humantime_serde")]
    pub challenge_ttl: Duration,
}

fn default_challenge_ttl() -> Duration {
    Duration::from_secs(60)
}

impl EstConfig {
    /// Checks the section; the message names the field.
    pub fn validate(&self) -> Result<(), String> {
        let mut seen = HashSet::new();
        for l in &self.labels {
            if super::label_profile(l).is_none() {
                return Err(format!(
                    "est.labels: unknown label {l:?}; labels are {}",
                    DEFAULT_LABELS.join(", ")
                ));
            }
            if !seen.insert(l) {
                return Err(format!("est.labels: {l:?} is listed twice"));
            }
        }
        for l in &self.manual_approval {
            if !self.labels.contains(l) {
                return Err(format!(
                    "est.manual_approval: {l:?} is not one of est.labels"
                ));
            }
        }
        if self.kubelet_cert_ttl < Duration::from_secs(10) {
            return Err("est.kubelet_cert_ttl must be at least 10s".into());
        }
        if self.max_body_bytes < 1024 || self.max_body_bytes > 1024 * 1024 {
            return Err("est.max_body_bytes must be between 1024 and 1048576".into());
        }
        if let Some(b) = &self.lab_basic_auth {
            if b.username.is_empty() || b.username.contains(':') {
                return Err("est.lab_basic_auth.username must be non-empty without ':'".into());
            }
            if b.password_sha256.len() != 64
                || !b.password_sha256.bytes().all(|c| c.is_ascii_hexdigit())
            {
                return Err("est.lab_basic_auth.password_sha256 must be 64 hex digits".into());
            }
        }
        if let Some(t) = &self.tpm {
            if t.manufacturer_cas.is_empty() && t.allowed_ek_hashes.is_empty() {
                return Err("est.tpm: set manufacturer_cas, allowed_ek_hashes, or both".into());
            }
            if !self.labels.iter().any(|l| l == "nodes") {
                return Err("est.tpm needs the \"nodes\" label in est.labels".into());
            }
            // A mistyped entry would deny nothing while looking as if it did.
            for h in &t.denied_ek_hashes {
                if h.len() != 64 || !h.bytes().all(|c| c.is_ascii_hexdigit()) {
                    return Err(format!(
                        "est.tpm.denied_ek_hashes: {h:?} is not a hex SHA-256 (64 hex digits)"
                    ));
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use crate::config::CoreConfig;
    use std::path::Path;

    fn parse(est: &str) -> Result<CoreConfig, String> {
        CoreConfig::parse(
            &format!("trust_domain = \"example.org\"\ndata_dir = \"/d\"\n{est}"),
            Path::new("core.toml"),
        )
        .map_err(|e| e.to_string())
    }

    #[test]
    fn est_is_off_by_default_with_safe_defaults() {
        let cfg = parse("").unwrap();
        assert!(cfg.est.listen.is_none());
        assert!(cfg.est.lab_basic_auth.is_none() && cfg.est.tpm.is_none());
        assert_eq!(
            cfg.est.labels,
            ["nodes", "kubelet-client", "kubelet-serving"]
        );
        let on =
            parse("[est]\nlisten = \"127.0.0.1:8443\"\nchannel_binding = \"required\"\n").unwrap();
        assert_eq!(on.est.channel_binding, super::ChannelBinding::Required);
    }

    #[test]
    fn bad_est_sections_name_the_field() {
        for (text, field) in [
            ("[est]\nlabels = [\"control-plane\"]\n", "est.labels"),
            ("[est]\nlabels = [\"nodes\", \"nodes\"]\n", "est.labels"),
            ("[est]\nmanual_approval = [\"x\"]\n", "est.manual_approval"),
            ("[est]\nkubelet_cert_ttl = \"1s\"\n", "est.kubelet_cert_ttl"),
            ("[est]\nmax_body_bytes = 10\n", "est.max_body_bytes"),
            (
                "[est.lab_basic_auth]\nusername = \"a\"\npassword_sha256 = \"secret\"\n",
                "password_sha256",
            ),
            ("[est.tpm]\n", "est.tpm"),
            (
                "[est.tpm]\nallowed_ek_hashes = [\"ab\"]\ndenied_ek_hashes = [\"3f1c\"]\n",
                "est.tpm.denied_ek_hashes",
            ),
            ("[est]\nlisten_addr = \"x\"\n", "listen_addr"),
        ] {
            let err = parse(text).unwrap_err();
            assert!(err.contains(field), "{text}: {err}");
        }
    }
}
