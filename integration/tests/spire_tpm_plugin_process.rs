//! The `keygrid-tpm-attestor-server` plugin binary driven as SPIRE server drives it (cookie,
//! handshake line, gRPC over the announced Unix socket, Configure, `Attest` streams), with
//! evidence from real swtpm TPMs. This reaches the refusals a stock spire-agent cannot
//! produce: a replayed response, an AK from a different TPM than the EK, malformed payloads.
//! The plugin's stderr is what SPIRE writes to its server log, so the reasons are checked there.

use std::io::{BufRead, BufReader, Read};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use hyper_util::rt::TokioIo;
use keygrid_integration::bin;
use keygrid_integration::swtpm::{LocalCa, Swtpm};
use keygrid_proto::spire::plugin::server::nodeattestor::v1::{
    attest_request, attest_response, node_attestor_client::NodeAttestorClient, AttestRequest,
};
use keygrid_proto::spire::service::common::config::v1::{
    config_client::ConfigClient, ConfigureRequest, CoreConfiguration,
};
use keygrid_tpm_attestation::{Challenge, ChallengeResponse, TpmAttestor, WireMessage};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Channel, Endpoint, Uri};

struct Plugin {
    child: Child,
    channel: Channel,
    _dir: tempfile::TempDir,
}

impl Plugin {
    async fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut child = Command::new(bin("keygrid-tpm-attestor-server"))
            .env("NodeAttestor", "NodeAttestor")
            .env("PLUGIN_PROTOCOL_VERSIONS", "1")
            .env("PLUGIN_UNIX_SOCKET_DIR", dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let socket = PathBuf::from(line.trim_end().split('|').nth(3).expect("handshake line"));
        let channel = Endpoint::try_from("http://unused")
            .unwrap()
            .connect_with_connector(tower::service_fn(move |_: Uri| {
                let path = socket.clone();
                async move {
                    Ok::<_, std::io::Error>(TokioIo::new(
                        tokio::net::UnixStream::connect(path).await?,
                    ))
                }
            }))
            .await
            .unwrap();
        Plugin {
            child,
            channel,
            _dir: dir,
        }
    }

    /// Stops the plugin and returns what it logged (SPIRE's server log gets these lines).
    fn stop(mut self) -> String {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let mut log = String::new();
        if let Some(mut e) = self.child.stderr.take() {
            let _ = e.read_to_string(&mut log);
        }
        log
    }
}

/// One `Attest` stream: sends `payload`, hands the challenge to `answer`, sends its bytes back.
async fn attest_stream(
    channel: &Channel,
    payload: Vec<u8>,
    answer: impl FnOnce(Challenge) -> Vec<u8>,
) -> Result<(String, Vec<String>), tonic::Status> {
    let (tx, rx) = mpsc::channel(2);
    tx.send(AttestRequest {
        request: Some(attest_request::Request::Payload(payload)),
    })
    .await
    .unwrap();
    let mut responses = NodeAttestorClient::new(channel.clone())
        .attest(ReceiverStream::new(rx))
        .await?
        .into_inner();
    let challenge = match responses.message().await?.and_then(|r| r.response) {
        Some(attest_response::Response::Challenge(c)) => c,
        other => panic!("expected a challenge, got {other:?}"),
    };
    let challenge = Challenge::decode(&challenge).expect("plugin sends a valid challenge");
    tx.send(AttestRequest {
        request: Some(attest_request::Request::ChallengeResponse(answer(
            challenge,
        ))),
    })
    .await
    .unwrap();
    match responses.message().await?.and_then(|r| r.response) {
        Some(attest_response::Response::AgentAttributes(a)) => {
            assert!(a.can_reattest);
            Ok((a.spiffe_id, a.selector_values))
        }
        other => panic!("expected agent attributes, got {other:?}"),
    }
}

#[tokio::test]
async fn server_plugin_attests_and_refuses_replays_mixed_keys_and_garbage() {
    let dir = tempfile::tempdir().unwrap();
    let ca = LocalCa::new(dir.path());
    let tpm_a = Swtpm::provision_and_start(&ca, &dir.path().join("a"));
    let tpm_b = Swtpm::provision_and_start(&ca, &dir.path().join("b"));
    let mut a = TpmAttestor::open(&tpm_a.tcti()).expect("open swtpm A");
    let mut b = TpmAttestor::open(&tpm_b.tcti()).expect("open swtpm B");

    let plugin = Plugin::start().await;
    let hcl = format!(
        "ek_ca_paths = [{:?}, {:?}]",
        ca.root_cert().display().to_string(),
        ca.issuer_cert().display().to_string()
    );
    ConfigClient::new(plugin.channel.clone())
        .configure(ConfigureRequest {
            core_configuration: Some(CoreConfiguration {
                trust_domain: "example.org".into(),
            }),
            hcl_configuration: hcl,
        })
        .await
        .expect("configure");

    // A good attestation, keeping its response for the replay below.
    let mut first_response = Vec::new();
    let (id, selectors) = attest_stream(&plugin.channel, a.attestation_data().encode(), |c| {
        first_response = a.answer(&c).expect("TPM A answers").encode();
        first_response.clone()
    })
    .await
    .expect("TPM A attests");
    assert!(
        id.starts_with("spiffe://example.org/spire/agent/keygrid_tpm/"),
        "{id}"
    );
    assert!(
        selectors.iter().any(|s| s.starts_with("ek_hash:")),
        "{selectors:?}"
    );

    // Replay: a new stream, the old response.
    let replay = first_response.clone();
    let err = attest_stream(&plugin.channel, a.attestation_data().encode(), |_| replay)
        .await
        .expect_err("replayed response must be refused");
    assert_eq!(err.code(), tonic::Code::PermissionDenied);
    assert!(
        err.message().contains("different challenge"),
        "{}",
        err.message()
    );

    // A's EK with B's AK: B cannot activate; its best guess is refused.
    let mut mixed = a.attestation_data().clone();
    mixed.ak_public = b.attestation_data().ak_public.clone();
    mixed.ak_name = b.attestation_data().ak_name.clone();
    let err = attest_stream(&plugin.channel, mixed.encode(), |c| {
        assert!(
            b.answer(&c).is_err(),
            "TPM B cannot activate A's credential"
        );
        ChallengeResponse {
            version: c.version,
            nonce: c.nonce.clone(),
            activated_secret: vec![0; 32],
            nonce_signature: b.sign_nonce(&c.nonce).expect("B signs"),
            pcr_quote: None,
        }
        .encode()
    })
    .await
    .expect_err("AK from another TPM must be refused");
    assert_eq!(err.code(), tonic::Code::PermissionDenied);
    assert!(
        err.message().contains("not in the same TPM"),
        "{}",
        err.message()
    );

    // Garbage and truncated payloads: InvalidArgument with a reason, and the plugin lives on.
    let good = a.attestation_data().encode();
    for payload in [b"garbage".to_vec(), good[..good.len() / 2].to_vec()] {
        let (tx, rx) = mpsc::channel(1);
        tx.send(AttestRequest {
            request: Some(attest_request::Request::Payload(payload)),
        })
        .await
        .unwrap();
        let mut stream = NodeAttestorClient::new(plugin.channel.clone())
            .attest(ReceiverStream::new(rx))
            .await
            .expect("stream opens")
            .into_inner();
        let err = stream
            .message()
            .await
            .expect_err("malformed payload must be refused");
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
        assert!(
            err.message().contains("malformed attestation data"),
            "{}",
            err.message()
        );
    }
    let (id2, _) = attest_stream(&plugin.channel, a.attestation_data().encode(), |c| {
        a.answer(&c).expect("TPM A answers").encode()
    })
    .await
    .expect("the plugin still attests after refusals");
    assert_eq!(id2, id);

    let log = plugin.stop();
    for reason in [
        "different challenge",
        "not in the same TPM",
        "malformed attestation data",
        "TPM attestation succeeded",
    ] {
        assert!(log.contains(reason), "plugin log lacks {reason:?}:\n{log}");
    }
}
