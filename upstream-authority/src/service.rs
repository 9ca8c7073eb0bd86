//! The UpstreamAuthority interface SPIRE calls, and the plugin's configuration state.
//!
//! `MintX509CAAndSubscribe` forwards SPIRE's CSR to core, answers with the chain and
//! KeyGrid's roots, then keeps the stream open and forwards every new root bundle core
//! publishes (root rotation) until SPIRE cancels the stream at its next CA rotation.
//! JWT key publishing and local-bundle subscription answer Unimplemented, which SPIRE
//! v1.13 accepts: it then keeps its JWT keys local.

use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use futures::Stream;
use keygrid_proto::keygrid::v1 as kg;
use keygrid_proto::spire::plugin::server::upstreamauthority::v1::{
    upstream_authority_server::UpstreamAuthority, MintX509caRequest, MintX509caResponse,
    PublishJwtKeyRequest, PublishJwtKeyResponse, SubscribeToLocalBundleRequest,
    SubscribeToLocalBundleResponse,
};
use keygrid_proto::spire::plugin::types::X509Certificate;
use keygrid_spire_plugin_sdk::{ConfigError, Configurable, CoreConfig};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::StreamExt;
use tonic::{Request, Response, Status};

use crate::config::UpstreamConfig;
use crate::core_client::CoreClient;

/// Longest pause between attempts to re-open the bundle watch after core went away.
const MAX_WATCH_BACKOFF: Duration = Duration::from_secs(30);

type ResponseStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// The plugin: its current configuration and the UpstreamAuthority methods.
#[derive(Debug, Default)]
pub struct UpstreamAuthorityPlugin {
    active: RwLock<Option<Arc<CoreClient>>>,
}

impl Configurable for UpstreamAuthorityPlugin {
    type Config = UpstreamConfig;

    fn check(&self, _core: &CoreConfig, config: &UpstreamConfig) -> Result<(), ConfigError> {
        config.clone().load().map(|_| ())
    }

    fn apply(&self, core: CoreConfig, config: UpstreamConfig) -> Result<(), ConfigError> {
        let client = CoreClient::new(&config.load()?)?;
        tracing::info!(core = client.address(), trust_domain = %core.trust_domain, "using KeyGrid core");
        let mut active = self
            .active
            .write()
            .map_err(|_| ConfigError::Invalid("configuration lock poisoned".into()))?;
        *active = Some(Arc::new(client));
        Ok(())
    }
}

fn certs(ders: Vec<Vec<u8>>) -> Vec<X509Certificate> {
    ders.into_iter()
        .map(|asn1| X509Certificate {
            asn1,
            tainted: false,
        })
        .collect()
}

/// Rewords a failure from core for SPIRE's log, keeping its code. Core's own refusals
/// (policy) pass through verbatim after a "KeyGrid" prefix.
fn from_core(address: &str, s: Status) -> Status {
    match s.code() {
        tonic::Code::Unavailable | tonic::Code::DeadlineExceeded | tonic::Code::Unknown => {
            Status::new(
                s.code(),
                format!("KeyGrid core at {address} is unreachable: {}", s.message()),
            )
        }
        code => Status::new(code, format!("KeyGrid refused: {}", s.message())),
    }
}

impl UpstreamAuthorityPlugin {
    fn client(&self) -> Result<Arc<CoreClient>, Status> {
        self.active
            .read()
            .ok()
            .and_then(|a| a.clone())
            .ok_or_else(|| Status::failed_precondition("not configured"))
    }
}

/// Forwards KeyGrid's root bundle changes to SPIRE until SPIRE drops the stream.
async fn forward_roots(
    client: Arc<CoreClient>,
    mut last: Vec<Vec<u8>>,
    tx: mpsc::Sender<Result<MintX509caResponse, Status>>,
) {
    let mut backoff = Duration::from_secs(1);
    loop {
        let mut watcher = client.streaming();
        let opened = tokio::select! {
            _ = tx.closed() => return,
            r = watcher.watch_bundle(kg::WatchBundleRequest {}) => r,
        };
        match opened {
            Ok(resp) => {
                let mut stream = resp.into_inner();
                loop {
                    let next = tokio::select! {
                        _ = tx.closed() => return,
                        n = stream.next() => n,
                    };
                    match next {
                        Some(Ok(bundle)) => {
                            backoff = Duration::from_secs(1);
                            let roots = bundle.x509_authorities;
                            if roots.is_empty() || roots == last {
                                continue;
                            }
                            tracing::info!(
                                roots = roots.len(),
                                sequence = bundle.sequence,
                                "KeyGrid trust bundle changed; updating SPIRE"
                            );
                            last = roots.clone();
                            let update = MintX509caResponse {
                                x509_ca_chain: Vec::new(),
                                upstream_x509_roots: certs(roots),
                            };
                            if tx.send(Ok(update)).await.is_err() {
                                return;
                            }
                        }
                        Some(Err(e)) => {
                            tracing::warn!(error = %e.message(), "bundle watch on KeyGrid core failed; retrying");
                            break;
                        }
                        None => {
                            tracing::debug!("KeyGrid core ended the bundle watch; reopening");
                            break;
                        }
                    }
                }
            }
            Err(e) => {
                tracing::warn!(error = %e.message(), retry_in = ?backoff, "cannot watch KeyGrid's bundle; SPIRE keeps its current roots");
            }
        }
        tokio::select! {
            _ = tx.closed() => return,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(MAX_WATCH_BACKOFF);
    }
}

#[tonic::async_trait]
impl UpstreamAuthority for UpstreamAuthorityPlugin {
    type MintX509CAAndSubscribeStream = ResponseStream<MintX509caResponse>;

    async fn mint_x509ca_and_subscribe(
        &self,
        request: Request<MintX509caRequest>,
    ) -> Result<Response<Self::MintX509CAAndSubscribeStream>, Status> {
        let client = self.client()?;
        let req = request.into_inner();
        if req.csr.is_empty() {
            return Err(Status::invalid_argument("SPIRE sent an empty CSR"));
        }
        let mut call = tonic::Request::new(kg::MintX509caRequest {
            csr: req.csr,
            preferred_ttl_seconds: i64::from(req.preferred_ttl),
        });
        call.set_timeout(client.call_timeout());
        let minted = client
            .unary()
            .mint_x509ca(call)
            .await
            .map_err(|s| from_core(client.address(), s))
            .inspect_err(|s| tracing::error!(reason = %s.message(), "SPIRE CA not minted"))?
            .into_inner();
        if minted.x509_ca_chain.is_empty() || minted.upstream_x509_roots.is_empty() {
            return Err(Status::internal(
                "KeyGrid core answered without a chain or roots",
            ));
        }
        tracing::info!(
            chain = minted.x509_ca_chain.len(),
            roots = minted.upstream_x509_roots.len(),
            "SPIRE CA minted by KeyGrid"
        );
        let (tx, rx) = mpsc::channel(4);
        let roots = minted.upstream_x509_roots.clone();
        let first = MintX509caResponse {
            x509_ca_chain: certs(minted.x509_ca_chain),
            upstream_x509_roots: certs(minted.upstream_x509_roots),
        };
        // Capacity 4, nothing sent yet: this cannot fail or wait.
        let _ = tx.try_send(Ok(first));
        tokio::spawn(forward_roots(client, roots, tx));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    type PublishJWTKeyAndSubscribeStream = ResponseStream<PublishJwtKeyResponse>;

    async fn publish_jwt_key_and_subscribe(
        &self,
        _: Request<PublishJwtKeyRequest>,
    ) -> Result<Response<Self::PublishJWTKeyAndSubscribeStream>, Status> {
        Err(Status::unimplemented(
            "KeyGrid does not take SPIRE's JWT keys; SPIRE keeps them in its own bundle",
        ))
    }

    type SubscribeToLocalBundleStream = ResponseStream<SubscribeToLocalBundleResponse>;

    async fn subscribe_to_local_bundle(
        &self,
        _: Request<SubscribeToLocalBundleRequest>,
    ) -> Result<Response<Self::SubscribeToLocalBundleStream>, Status> {
        Err(Status::unimplemented(
            "KeyGrid pushes root changes on the MintX509CAAndSubscribe stream",
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn calls_before_configure_fail_cleanly() {
        let p = UpstreamAuthorityPlugin::default();
        let r = p
            .mint_x509ca_and_subscribe(Request::new(MintX509caRequest {
                csr: vec![1],
                preferred_ttl: 60,
            }))
            .await;
        assert_eq!(
            r.err().map(|s| s.code()),
            Some(tonic::Code::FailedPrecondition)
        );
    }

    #[tokio::test]
    async fn optional_rpcs_are_unimplemented() {
        // SPIRE v1.13 treats Unimplemented as "keep JWT keys local"; any other error
        // would stop the SPIRE server.
        let p = UpstreamAuthorityPlugin::default();
        let r = p
            .publish_jwt_key_and_subscribe(Request::new(PublishJwtKeyRequest { jwt_key: None }))
            .await;
        assert_eq!(r.err().map(|s| s.code()), Some(tonic::Code::Unimplemented));
        let r = p
            .subscribe_to_local_bundle(Request::new(SubscribeToLocalBundleRequest {}))
            .await;
        assert_eq!(r.err().map(|s| s.code()), Some(tonic::Code::Unimplemented));
    }

    #[test]
    fn core_errors_keep_their_code_and_reason() {
        let s = from_core(
            "https://c:1",
            Status::permission_denied("CSR is for spiffe://evil.org"),
        );
        assert_eq!(s.code(), tonic::Code::PermissionDenied);
        assert_eq!(s.message(), "KeyGrid refused: CSR is for spiffe://evil.org");
        let s = from_core("https://c:1", Status::unavailable("connection refused"));
        assert!(s.message().contains("https://c:1 is unreachable"));
    }
}
