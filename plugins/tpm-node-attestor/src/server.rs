//! The server NodeAttestor: runs the verifier over SPIRE's `Attest` stream.
//!
//! payload (AttestationData) → challenge (Challenge) → challenge_response (ChallengeResponse)
//! → agent_attributes. Every refusal is a gRPC error whose message says why; SPIRE logs it
//! and creates no agent entry.

use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use futures::Stream;
use keygrid_proto::spire::plugin::server::nodeattestor::v1::{
    attest_request, attest_response, node_attestor_server::NodeAttestor, AgentAttributes,
    AttestRequest, AttestResponse,
};
use keygrid_spire_plugin_sdk::{ConfigError, Configurable, CoreConfig};
use keygrid_tpm_attestation::{
    AttestationData, AttestationError, ChallengeResponse, ManufacturerCas, Verifier,
    VerifierConfig, WireMessage,
};
use serde::Deserialize;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::StreamExt;
use tonic::{Request, Response, Status, Streaming};

/// HCL `plugin_data` of the server plugin.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// PEM files with TPM manufacturer CA certificates (roots and intermediates).
    #[serde(default)]
    pub ek_ca_paths: Vec<PathBuf>,
    /// Optional allow-list of EK hashes (hex SHA-256 of the EK SubjectPublicKeyInfo).
    #[serde(default)]
    pub allowed_ek_hashes: Option<Vec<String>>,
    /// EK hashes (same form) that never attest, even with a trusted certificate or on the
    /// allow-list: for TPMs that were lost, stolen or retired.
    #[serde(default)]
    pub denied_ek_hashes: Vec<String>,
    /// Seconds an agent has to answer a challenge (default 60).
    #[serde(default)]
    pub challenge_ttl_seconds: Option<u64>,
    /// Optional SHA-256 PCR indices every agent must quote; each becomes a
    /// `pcr:sha256:<index>:<hex>` selector.
    #[serde(default)]
    pub quote_pcrs: Vec<u8>,
}

impl ServerConfig {
    fn verifier(&self, trust_domain: &str) -> Result<Verifier, ConfigError> {
        let cas = ManufacturerCas::from_pem_files(&self.ek_ca_paths)
            .map_err(|e| ConfigError::Invalid(e.to_string()))?;
        let mut cfg = VerifierConfig::new(trust_domain, cas);
        cfg.allowed_ek_hashes = self
            .allowed_ek_hashes
            .as_ref()
            .map(|l| l.iter().map(|h| h.trim().to_ascii_lowercase()).collect());
        cfg.denied_ek_hashes = self
            .denied_ek_hashes
            .iter()
            .map(|h| ek_hash_entry(h))
            .collect::<Result<_, _>>()?;
        cfg.quote_pcrs = self.quote_pcrs.clone();
        if let Some(s) = self.challenge_ttl_seconds {
            cfg.challenge_ttl = Duration::from_secs(s.clamp(1, 600));
        }
        Verifier::new(cfg).map_err(|e| ConfigError::Invalid(e.to_string()))
    }
}

/// One deny-list entry, lowercased; refused unless it is a hex SHA-256, because a mistyped
/// entry would deny nothing and look as if it did.
fn ek_hash_entry(h: &str) -> Result<String, ConfigError> {
    let h = h.trim().to_ascii_lowercase();
    if h.len() != 64 || !h.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(ConfigError::Invalid(format!(
            "denied_ek_hashes: {h:?} is not a hex SHA-256 (64 hex digits)"
        )));
    }
    Ok(h)
}

/// The server plugin: the verifier built from the current configuration.
#[derive(Default)]
pub struct ServerPlugin {
    verifier: RwLock<Option<Arc<Verifier>>>,
}

impl Configurable for ServerPlugin {
    type Config = ServerConfig;

    fn check(&self, core: &CoreConfig, config: &ServerConfig) -> Result<(), ConfigError> {
        config.verifier(&core.trust_domain).map(|_| ())
    }

    fn apply(&self, core: CoreConfig, config: ServerConfig) -> Result<(), ConfigError> {
        let verifier = config.verifier(&core.trust_domain)?;
        tracing::info!(
            ca_files = config.ek_ca_paths.len(),
            allow_list = config.allowed_ek_hashes.as_ref().map(Vec::len),
            "TPM attestor configured"
        );
        let mut slot = self
            .verifier
            .write()
            .map_err(|_| ConfigError::Invalid("configuration lock poisoned".into()))?;
        *slot = Some(Arc::new(verifier));
        Ok(())
    }
}

fn refusal(e: AttestationError) -> Status {
    tracing::warn!(reason = %e, "TPM attestation refused");
    match e {
        AttestationError::Malformed { .. } | AttestationError::UnsupportedVersion { .. } => {
            Status::invalid_argument(e.to_string())
        }
        AttestationError::Crypto(_)
        | AttestationError::Config(_)
        | AttestationError::Tpm { .. } => Status::internal(e.to_string()),
        _ => Status::permission_denied(e.to_string()),
    }
}

type AttestStream = Pin<Box<dyn Stream<Item = Result<AttestResponse, Status>> + Send>>;

async fn run_attestation(
    verifier: Arc<Verifier>,
    mut inbound: Streaming<AttestRequest>,
    out: mpsc::Sender<Result<AttestResponse, Status>>,
) -> Result<(), Status> {
    let payload = match inbound.next().await {
        Some(Ok(AttestRequest {
            request: Some(attest_request::Request::Payload(p)),
        })) => p,
        Some(Err(s)) => return Err(s),
        _ => {
            return Err(Status::invalid_argument(
                "expected the attestation payload first",
            ))
        }
    };
    let data = AttestationData::decode(&payload).map_err(refusal)?;
    let challenge = verifier.challenge(&data).map_err(refusal)?;
    let nonce = challenge.nonce.clone();
    out.send(Ok(AttestResponse {
        response: Some(attest_response::Response::Challenge(challenge.encode())),
    }))
    .await
    .map_err(|_| Status::cancelled("SPIRE closed the stream"))?;

    let answer = match inbound.next().await {
        Some(Ok(AttestRequest {
            request: Some(attest_request::Request::ChallengeResponse(r)),
        })) => r,
        Some(Err(s)) => return Err(s),
        _ => return Err(Status::invalid_argument("expected the challenge response")),
    };
    let response = ChallengeResponse::decode(&answer).map_err(refusal)?;
    // Bound to this stream: only the challenge issued above can be answered here.
    let node = verifier.verify_for(&nonce, &response).map_err(refusal)?;
    tracing::info!(spiffe_id = %node.spiffe_id, "TPM attestation succeeded");
    out.send(Ok(AttestResponse {
        response: Some(attest_response::Response::AgentAttributes(
            AgentAttributes {
                spiffe_id: node.spiffe_id,
                selector_values: node.selector_values,
                // Agents re-attest with a fresh AK and challenge rather than renewing forever.
                can_reattest: true,
            },
        )),
    }))
    .await
    .map_err(|_| Status::cancelled("SPIRE closed the stream"))
}

#[tonic::async_trait]
impl NodeAttestor for ServerPlugin {
    type AttestStream = AttestStream;

    async fn attest(
        &self,
        request: Request<Streaming<AttestRequest>>,
    ) -> Result<Response<AttestStream>, Status> {
        let verifier = self
            .verifier
            .read()
            .map_err(|_| Status::internal("configuration lock poisoned"))?
            .clone()
            .ok_or_else(|| Status::failed_precondition("plugin is not configured"))?;
        let (tx, rx) = mpsc::channel(2);
        let inbound = request.into_inner();
        tokio::spawn(async move {
            if let Err(status) = run_attestation(verifier, inbound, tx.clone()).await {
                let _ = tx.send(Err(status)).await;
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use keygrid_spire_plugin_sdk::parse_hcl;

    fn core() -> CoreConfig {
        CoreConfig {
            trust_domain: "example.org".into(),
        }
    }

    #[test]
    fn hcl_with_allow_list_only_configures() {
        let cfg: ServerConfig = parse_hcl(r#"allowed_ek_hashes = ["ABCDEF"]"#).unwrap();
        ServerPlugin::default().apply(core(), cfg).unwrap();
    }

    #[test]
    fn unusable_configs_are_refused_with_reasons() {
        let plugin = ServerPlugin::default();
        let cfg: ServerConfig = parse_hcl("").unwrap();
        let err = plugin.check(&core(), &cfg).unwrap_err();
        assert!(err.to_string().contains("allow-list"), "{err}");
        let cfg: ServerConfig = parse_hcl(r#"ek_ca_paths = ["/nonexistent/ca.pem"]"#).unwrap();
        let err = plugin.check(&core(), &cfg).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/ca.pem"), "{err}");
        let err = parse_hcl::<ServerConfig>(r#"ek_ca_path = "typo""#).unwrap_err();
        assert!(err.to_string().contains("ek_ca_path"), "{err}");
        let cfg: ServerConfig = parse_hcl(
            r#"allowed_ek_hashes = ["ABCDEF"]
               denied_ek_hashes = ["3f1c"]"#,
        )
        .unwrap();
        let err = plugin.check(&core(), &cfg).unwrap_err();
        assert!(err.to_string().contains("denied_ek_hashes"), "{err}");
    }

    #[test]
    fn deny_list_entries_are_normalised() {
        let hash = "AB".repeat(32);
        let cfg: ServerConfig = parse_hcl(&format!(
            r#"allowed_ek_hashes = ["ABCDEF"]
               denied_ek_hashes = [" {hash} "]"#
        ))
        .unwrap();
        assert_eq!(
            ek_hash_entry(&cfg.denied_ek_hashes[0]).unwrap(),
            "ab".repeat(32)
        );
        ServerPlugin::default().apply(core(), cfg).unwrap();
    }

    #[test]
    fn refusals_map_to_grpc_codes() {
        let s = refusal(AttestationError::EkUntrusted("x".into()));
        assert_eq!(s.code(), tonic::Code::PermissionDenied);
        assert!(s.message().contains("not trusted"));
        let s = refusal(AttestationError::Malformed {
            message: "challenge response",
            reason: "truncated".into(),
        });
        assert_eq!(s.code(), tonic::Code::InvalidArgument);
    }
}
