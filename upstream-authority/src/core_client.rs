//! The connection to KeyGrid core: mutual TLS with the SPIRE server credential, opened
//! lazily so that a core outage never blocks SPIRE's plugin load or Configure.

use std::time::Duration;

use keygrid_proto::keygrid::v1::spire_upstream_client::SpireUpstreamClient;
use keygrid_spire_plugin_sdk::ConfigError;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use crate::config::LoadedConfig;

/// How long to wait for a TCP and TLS connection to core.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a unary call to core may take (signing happens in the HSM).
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// A client of core's `keygrid.v1.SpireUpstream` API.
#[derive(Debug, Clone)]
pub struct CoreClient {
    channel: Channel,
    address: String,
}

impl CoreClient {
    /// Builds the client from a loaded configuration; no connection is made yet.
    pub fn new(cfg: &LoadedConfig) -> Result<Self, ConfigError> {
        let tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&cfg.bundle_pem))
            .identity(Identity::from_pem(&cfg.cert_pem, &cfg.key_pem))
            .domain_name(cfg.config.server_name());
        let endpoint = Endpoint::from_shared(cfg.config.core_address.clone())
            .map_err(|e| {
                ConfigError::Invalid(format!(
                    "core_address {:?} is not a valid URL: {e}",
                    cfg.config.core_address
                ))
            })?
            .tls_config(tls)
            .map_err(|e| ConfigError::Invalid(format!("TLS settings rejected: {e}")))?
            .connect_timeout(CONNECT_TIMEOUT);
        Ok(CoreClient {
            channel: endpoint.connect_lazy(),
            address: cfg.config.core_address.clone(),
        })
    }

    /// The gRPC client for unary calls (with a deadline).
    pub fn unary(&self) -> SpireUpstreamClient<Channel> {
        SpireUpstreamClient::new(self.channel.clone())
    }

    /// The gRPC client for long-lived streams (no deadline).
    pub fn streaming(&self) -> SpireUpstreamClient<Channel> {
        SpireUpstreamClient::new(self.channel.clone())
    }

    /// Deadline for unary calls.
    pub fn call_timeout(&self) -> Duration {
        CALL_TIMEOUT
    }

    /// Core's address, for messages.
    pub fn address(&self) -> &str {
        &self.address
    }
}
