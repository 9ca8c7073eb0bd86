//! TLS for the node API: core's serving certificate and the listener that accepts agents.
//!
//! Core issues its own serving certificate from the nodes CA at start and replaces it at
//! half-life without a restart (the resolver hands out whichever certificate is current).
//! Client certificates are optional at the TLS layer because `AttestJoinToken` is how a
//! node without one gets one; every other RPC requires one (checked in the node API).
//! Handshakes run in their own tasks with a deadline, so a slow client cannot stall others.

use std::io;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{RootCertStore, ServerConfig};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;
use tokio_stream::wrappers::ReceiverStream;

use crate::ca::{profiles, Hierarchy};
use crate::config::CoreConfig;
use crate::issuance::IssueError;
use crate::store::Store;

/// How long a client has to finish the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The crypto provider for all of core's TLS.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// Core's current serving certificate, swappable while connections are being accepted.
#[derive(Debug)]
pub struct ServingCert {
    current: RwLock<Arc<CertifiedKey>>,
}

impl ResolvesServerCert for ServingCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.current.read().ok().map(|c| c.clone())
    }
}

impl ServingCert {
    /// Issues a first serving certificate.
    pub fn issue(ca: &Hierarchy, store: &Store, cfg: &CoreConfig) -> Result<Self, IssueError> {
        Ok(ServingCert {
            current: RwLock::new(Arc::new(issue_serving_cert(ca, store, cfg)?)),
        })
    }

    /// Replaces the serving certificate with a freshly issued one.
    pub fn renew(&self, ca: &Hierarchy, store: &Store, cfg: &CoreConfig) -> Result<(), IssueError> {
        let fresh = Arc::new(issue_serving_cert(ca, store, cfg)?);
        let mut cur = self.current.write().map_err(|_| IssueError::Internal)?;
        *cur = fresh;
        Ok(())
    }
}

fn issue_serving_cert(
    ca: &Hierarchy,
    store: &Store,
    cfg: &CoreConfig,
) -> Result<CertifiedKey, IssueError> {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(|e| {
        tracing::error!(error = %e, "cannot generate serving key");
        IssueError::Internal
    })?;
    let id = format!("spiffe://{}/keygrid/server", ca.trust_domain());
    let params = profiles::core_server(&id, &cfg.server.dns_names, &cfg.server.ip_addresses)?;
    let nodes = ca.nodes();
    let issued = nodes.sign(
        params,
        &key,
        cfg.server.serving_cert_ttl,
        time::OffsetDateTime::now_utc(),
    )?;
    store.record_certificate(&issued.record(&nodes, "core-server", &id))?;
    let signing_key = provider()
        .key_provider
        .load_private_key(PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(
            key.serialize_der(),
        )))
        .map_err(|e| {
            tracing::error!(error = %e, "rustls refused the serving key");
            IssueError::Internal
        })?;
    Ok(CertifiedKey::new(
        vec![
            CertificateDer::from(issued.der),
            CertificateDer::from(nodes.cert_der().to_vec()),
        ],
        signing_key,
    ))
}

/// Builds the TLS server configuration: optional client certificates chaining to `roots`,
/// HTTP/2 only (gRPC).
pub fn server_config(
    roots: &[Vec<u8>],
    cert: Arc<ServingCert>,
) -> Result<Arc<ServerConfig>, String> {
    let mut store = RootCertStore::empty();
    for der in roots {
        store
            .add(CertificateDer::from(der.clone()))
            .map_err(|e| format!("trust bundle certificate rejected: {e}"))?;
    }
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(store), provider())
        .allow_unauthenticated()
        .build()
        .map_err(|e| format!("client verifier: {e}"))?;
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS versions: {e}"))?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(cert);
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

/// Keeps the TLS server configuration in step with the trust bundle: when a rotated root
/// enters the bundle, clients whose certificates chain to it must be accepted from then on.
pub fn follow_bundle(
    hierarchy: Arc<Hierarchy>,
    cert: Arc<ServingCert>,
) -> Result<tokio::sync::watch::Receiver<Arc<ServerConfig>>, String> {
    let mut bundle = hierarchy.subscribe_bundle();
    let first = server_config(&bundle.borrow_and_update().roots, cert.clone())?;
    let (tx, rx) = tokio::sync::watch::channel(first);
    tokio::spawn(async move {
        while bundle.changed().await.is_ok() {
            let roots = bundle.borrow_and_update().roots.clone();
            match server_config(&roots, cert.clone()) {
                Ok(cfg) => {
                    if tx.send(cfg).is_err() {
                        return;
                    }
                    tracing::info!(
                        roots = roots.len(),
                        "TLS client verification follows the new trust bundle"
                    );
                }
                Err(e) => {
                    tracing::error!(error = %e, "cannot rebuild the TLS configuration for the new bundle")
                }
            }
        }
    });
    Ok(rx)
}

/// Accepts TCP connections and yields those that complete a TLS handshake, each with the
/// configuration current when it was accepted.
pub fn incoming(
    listener: TcpListener,
    config: tokio::sync::watch::Receiver<Arc<ServerConfig>>,
) -> ReceiverStream<io::Result<TlsStream<TcpStream>>> {
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    tokio::spawn(async move {
        loop {
            let (tcp, peer) = match listener.accept().await {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            if tx.is_closed() {
                break;
            }
            // Small request/response messages: without this, Nagle's algorithm and the
            // peer's delayed ACK add ~40 ms to many calls.
            let _ = tcp.set_nodelay(true);
            let acceptor = TlsAcceptor::from(config.borrow().clone());
            let tx = tx.clone();
            tokio::spawn(async move {
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                    Ok(Ok(tls)) => {
                        let _ = tx.send(Ok(tls)).await;
                    }
                    Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                    Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                }
            });
        }
    });
    ReceiverStream::new(rx)
}
