//! The EST server's TLS listener: completes handshakes in their own tasks (with a
//! deadline) and hands axum each connection together with what EST needs to know about
//! it: the client's certificate chain, the TLS version and the channel-binding value.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::connect_info::Connected;
use axum::serve::IncomingStream;
use rustls::ServerConfig;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

/// How long a client has to finish the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// RFC 9266 `tls-exporter` label.
pub const EXPORTER_LABEL: &[u8] = b"EXPORTER-Channel-Binding";

/// What the handlers learn about the connection a request came on.
#[derive(Clone, Debug)]
pub struct Peer {
    /// Remote address, for logs.
    pub remote: SocketAddr,
    /// The client's certificate chain (leaf first), empty when it sent none.
    pub chain: Arc<Vec<Vec<u8>>>,
    /// RFC 9266 tls-exporter value of this connection (32 bytes).
    pub binding: Option<Arc<[u8; 32]>>,
    /// Whether the connection is TLS 1.3.
    pub tls13: bool,
}

impl Connected<IncomingStream<'_, EstListener>> for Peer {
    fn connect_info(stream: IncomingStream<'_, EstListener>) -> Self {
        stream.remote_addr().clone()
    }
}

/// TLS connections ready for HTTP, each with its [`Peer`].
pub struct EstListener {
    rx: tokio::sync::mpsc::Receiver<(TlsStream<TcpStream>, Peer)>,
    local: SocketAddr,
}

impl EstListener {
    /// Accepts on `tcp`, handshaking with whatever configuration `config` holds when each
    /// connection arrives (it follows the trust bundle).
    pub fn new(
        tcp: TcpListener,
        config: tokio::sync::watch::Receiver<Arc<ServerConfig>>,
    ) -> std::io::Result<Self> {
        let local = tcp.local_addr()?;
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        tokio::spawn(async move {
            loop {
                let (stream, remote) = match tcp.accept().await {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::warn!(error = %e, "EST accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                if tx.is_closed() {
                    break;
                }
                let _ = stream.set_nodelay(true);
                let acceptor = TlsAcceptor::from(config.borrow().clone());
                let tx = tx.clone();
                tokio::spawn(async move {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                        Ok(Ok(tls)) => {
                            let peer = describe(&tls, remote);
                            let _ = tx.send((tls, peer)).await;
                        }
                        Ok(Err(e)) => {
                            tracing::debug!(%remote, error = %e, "EST TLS handshake failed")
                        }
                        Err(_) => tracing::debug!(%remote, "EST TLS handshake timed out"),
                    }
                });
            }
        });
        Ok(EstListener { rx, local })
    }
}

fn describe(tls: &TlsStream<TcpStream>, remote: SocketAddr) -> Peer {
    let conn = tls.get_ref().1;
    let chain = conn
        .peer_certificates()
        .map(|c| c.iter().map(|d| d.as_ref().to_vec()).collect())
        .unwrap_or_default();
    let binding = conn
        .export_keying_material([0u8; 32], EXPORTER_LABEL, None)
        .ok()
        .map(Arc::new);
    Peer {
        remote,
        chain: Arc::new(chain),
        binding,
        tls13: conn.protocol_version() == Some(rustls::ProtocolVersion::TLSv1_3),
    }
}

impl axum::serve::Listener for EstListener {
    type Io = TlsStream<TcpStream>;
    type Addr = Peer;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.rx.recv().await {
            Some(c) => c,
            // The accept task ended (never, in practice): stop accepting without spinning.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(Peer {
            remote: self.local,
            chain: Arc::new(Vec::new()),
            binding: None,
            tls13: false,
        })
    }
}
