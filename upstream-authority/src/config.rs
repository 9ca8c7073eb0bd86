//! The plugin's `plugin_data`: where KeyGrid core is and the credential to reach it.

use std::path::{Path, PathBuf};

use keygrid_spire_plugin_sdk::ConfigError;
use serde::Deserialize;

/// HCL fields of `plugin_data`. Unknown fields are errors, so a typo is reported rather
/// than silently ignored.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct UpstreamConfig {
    /// Core's TLS endpoint, `https://host:port`.
    pub core_address: String,
    /// TLS name to expect in core's certificate; defaults to the host of `core_address`.
    #[serde(default)]
    pub core_server_name: Option<String>,
    /// PEM file with KeyGrid's root certificates (to verify core).
    pub trust_bundle_path: PathBuf,
    /// PEM file with the SPIRE server credential (certificate first, then its CA), as
    /// written by `keygrid spire credential`.
    pub client_cert_path: PathBuf,
    /// PEM file with the credential's private key.
    pub client_key_path: PathBuf,
}

/// The configuration's files, read and checked.
#[derive(Debug, Clone)]
pub struct LoadedConfig {
    /// The HCL as given.
    pub config: UpstreamConfig,
    /// Root certificates, PEM.
    pub bundle_pem: String,
    /// Client certificate chain, PEM.
    pub cert_pem: String,
    /// Client private key, PEM.
    pub key_pem: String,
}

fn read_pem(field: &str, path: &Path, want: &[&str]) -> Result<String, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        ConfigError::Invalid(format!("{field}: cannot read {}: {e}", path.display()))
    })?;
    let blocks = pem::parse_many(&text).map_err(|e| {
        ConfigError::Invalid(format!("{field}: {} is not PEM: {e}", path.display()))
    })?;
    if !blocks.iter().any(|b| want.contains(&b.tag())) {
        return Err(ConfigError::Invalid(format!(
            "{field}: {} holds no {} block",
            path.display(),
            want.join(" or ")
        )));
    }
    Ok(text)
}

impl UpstreamConfig {
    /// TLS name of core.
    pub fn server_name(&self) -> String {
        if let Some(n) = &self.core_server_name {
            return n.clone();
        }
        let rest = self.core_address.trim_start_matches("https://");
        let host = rest.split('/').next().unwrap_or(rest);
        match host.rsplit_once(':') {
            Some((h, _)) => h.trim_start_matches('[').trim_end_matches(']').to_string(),
            None => host.to_string(),
        }
    }

    /// Checks the values and reads the files they name.
    pub fn load(self) -> Result<LoadedConfig, ConfigError> {
        if !self.core_address.starts_with("https://") || self.core_address.len() <= "https://".len()
        {
            return Err(ConfigError::Invalid(format!(
                "core_address must be an https:// URL, got {:?}",
                self.core_address
            )));
        }
        let bundle_pem = read_pem(
            "trust_bundle_path",
            &self.trust_bundle_path,
            &["CERTIFICATE"],
        )?;
        let cert_pem = read_pem("client_cert_path", &self.client_cert_path, &["CERTIFICATE"])?;
        let key_pem = read_pem(
            "client_key_path",
            &self.client_key_path,
            &["PRIVATE KEY", "EC PRIVATE KEY", "RSA PRIVATE KEY"],
        )?;
        Ok(LoadedConfig {
            config: self,
            bundle_pem,
            cert_pem,
            key_pem,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use keygrid_spire_plugin_sdk::parse_hcl;

    const CERT: &str = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
    const KEY: &str = "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n";

    fn files() -> (tempfile::TempDir, String) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("bundle.pem"), CERT).unwrap();
        std::fs::write(dir.path().join("svid.pem"), CERT).unwrap();
        std::fs::write(dir.path().join("svid.key"), KEY).unwrap();
        let d = dir.path().display().to_string();
        let hcl = format!(
            "core_address = \"https://127.0.0.1:8443\"\ntrust_bundle_path = \"{d}/bundle.pem\"\nclient_cert_path = \"{d}/svid.pem\"\nclient_key_path = \"{d}/svid.key\"\n"
        );
        (dir, hcl)
    }

    #[test]
    fn complete_config_loads() {
        let (_d, hcl) = files();
        let cfg: UpstreamConfig = parse_hcl(&hcl).unwrap();
        assert_eq!(cfg.server_name(), "127.0.0.1");
        let loaded = cfg.load().unwrap();
        assert!(loaded.key_pem.contains("PRIVATE KEY"));
    }

    #[test]
    fn missing_field_is_named() {
        let err = parse_hcl::<UpstreamConfig>("core_address = \"https://x:1\"").unwrap_err();
        assert!(err.to_string().contains("trust_bundle_path"), "{err}");
    }

    #[test]
    fn typo_is_an_error() {
        let (_d, hcl) = files();
        let err = parse_hcl::<UpstreamConfig>(&format!("{hcl}core_adress = \"x\"\n")).unwrap_err();
        assert!(err.to_string().contains("core_adress"), "{err}");
    }

    #[test]
    fn bad_values_are_explained() {
        let (d, hcl) = files();
        let cfg: UpstreamConfig =
            parse_hcl(&hcl.replace("https://127.0.0.1:8443", "127.0.0.1:8443")).unwrap();
        assert!(cfg.load().unwrap_err().to_string().contains("https://"));
        std::fs::remove_file(d.path().join("svid.key")).unwrap();
        let cfg: UpstreamConfig = parse_hcl(&hcl).unwrap();
        let msg = cfg.load().unwrap_err().to_string();
        assert!(
            msg.contains("client_key_path") && msg.contains("cannot read"),
            "{msg}"
        );
        std::fs::write(d.path().join("svid.key"), CERT).unwrap();
        let cfg: UpstreamConfig = parse_hcl(&hcl).unwrap();
        let msg = cfg.load().unwrap_err().to_string();
        assert!(msg.contains("no PRIVATE KEY"), "{msg}");
    }
}
