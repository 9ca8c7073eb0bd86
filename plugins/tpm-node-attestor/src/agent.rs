//! The agent NodeAttestor: drives the TPM over SPIRE's `AidAttestation` stream.
//!
//! The TPM session (tss-esapi context, EK and AK handles) lives on one dedicated thread for
//! the stream's lifetime: it sends the payload, answers each challenge, and flushes its
//! objects when SPIRE closes the stream.

use std::pin::Pin;
use std::sync::RwLock;

use futures::Stream;
use keygrid_proto::spire::plugin::agent::nodeattestor::v1::{
    node_attestor_server::NodeAttestor, payload_or_challenge_response, Challenge as SpireChallenge,
    PayloadOrChallengeResponse,
};
use keygrid_spire_plugin_sdk::{ConfigError, Configurable, CoreConfig};
use keygrid_tpm_attestation::{AttestationError, Challenge, TpmAttestor, WireMessage};
use serde::Deserialize;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::StreamExt;
use tonic::{Request, Response, Status, Streaming};

/// HCL `plugin_data` of the agent plugin.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    /// TCTI of the TPM: `device:/dev/tpmrm0` (default), `swtpm:host=127.0.0.1,port=2321`, `tabrmd:`.
    #[serde(default = "default_tcti")]
    pub tcti: String,
}

fn default_tcti() -> String {
    "device:/dev/tpmrm0".to_string()
}

/// The agent plugin: the TCTI from the current configuration.
#[derive(Default)]
pub struct AgentPlugin {
    tcti: RwLock<Option<String>>,
}

impl Configurable for AgentPlugin {
    type Config = AgentConfig;

    fn check(&self, _core: &CoreConfig, config: &AgentConfig) -> Result<(), ConfigError> {
        if config.tcti.trim().is_empty() {
            return Err(ConfigError::Invalid("tcti must not be empty".into()));
        }
        Ok(())
    }

    fn apply(&self, _core: CoreConfig, config: AgentConfig) -> Result<(), ConfigError> {
        tracing::info!(tcti = %config.tcti, "TPM attestor configured");
        let mut slot = self
            .tcti
            .write()
            .map_err(|_| ConfigError::Invalid("configuration lock poisoned".into()))?;
        *slot = Some(config.tcti);
        Ok(())
    }
}

fn status(e: AttestationError) -> Status {
    tracing::error!(error = %e, "TPM attestation step failed");
    match e {
        AttestationError::Malformed { .. } | AttestationError::UnsupportedVersion { .. } => {
            Status::invalid_argument(e.to_string())
        }
        _ => Status::internal(e.to_string()),
    }
}

/// The TPM thread: payload first, then one response per challenge until the stream ends.
fn tpm_session(
    tcti: String,
    challenges: std::sync::mpsc::Receiver<Vec<u8>>,
    out: mpsc::Sender<Result<PayloadOrChallengeResponse, Status>>,
) {
    let send = |item| out.blocking_send(item).is_ok();
    let mut tpm = match TpmAttestor::open(&tcti) {
        Ok(t) => t,
        Err(e) => {
            send(Err(status(e)));
            return;
        }
    };
    if !send(Ok(PayloadOrChallengeResponse {
        data: Some(payload_or_challenge_response::Data::Payload(
            tpm.attestation_data().encode(),
        )),
    })) {
        return;
    }
    while let Ok(bytes) = challenges.recv() {
        let answer = Challenge::decode(&bytes).and_then(|c| tpm.answer(&c));
        let item = answer.map(|r| PayloadOrChallengeResponse {
            data: Some(payload_or_challenge_response::Data::ChallengeResponse(
                r.encode(),
            )),
        });
        let failed = item.is_err();
        if !send(item.map_err(status)) || failed {
            return;
        }
    }
}

type AidStream = Pin<Box<dyn Stream<Item = Result<PayloadOrChallengeResponse, Status>> + Send>>;

#[tonic::async_trait]
impl NodeAttestor for AgentPlugin {
    type AidAttestationStream = AidStream;

    async fn aid_attestation(
        &self,
        request: Request<Streaming<SpireChallenge>>,
    ) -> Result<Response<AidStream>, Status> {
        let tcti = self
            .tcti
            .read()
            .map_err(|_| Status::internal("configuration lock poisoned"))?
            .clone()
            .ok_or_else(|| Status::failed_precondition("plugin is not configured"))?;
        let (out_tx, out_rx) = mpsc::channel(2);
        let (challenge_tx, challenge_rx) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name("tpm-session".into())
            .spawn(move || tpm_session(tcti, challenge_rx, out_tx))
            .map_err(|e| Status::internal(format!("cannot start the TPM thread: {e}")))?;
        let mut inbound = request.into_inner();
        tokio::spawn(async move {
            // Ends (dropping the sender, which ends the TPM thread) when SPIRE closes the stream.
            while let Some(Ok(c)) = inbound.next().await {
                if challenge_tx.send(c.challenge).is_err() {
                    break;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(out_rx))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use keygrid_spire_plugin_sdk::parse_hcl;

    #[test]
    fn tcti_defaults_to_the_kernel_resource_manager() {
        let cfg: AgentConfig = parse_hcl("").unwrap();
        assert_eq!(cfg.tcti, "device:/dev/tpmrm0");
        let core = CoreConfig {
            trust_domain: "example.org".into(),
        };
        let err = AgentPlugin::default()
            .check(&core, &AgentConfig { tcti: " ".into() })
            .unwrap_err();
        assert!(err.to_string().contains("tcti"), "{err}");
    }
}
