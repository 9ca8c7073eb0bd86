//! TLS to PostgreSQL with rustls (the TLS stack core already uses), so replicas can reach a
//! database on another host without sending statements and the password in clear.
//!
//! The server certificate is verified against the CA file named by `[store] tls_ca_file`
//! and the host name in the URL. With `tls_client_cert_file` and `tls_client_key_file`,
//! core also presents a client certificate, so the database can authenticate it by
//! certificate (`hostssl ... cert` in pg_hba.conf) instead of a password. Channel binding is
//! not offered (SCRAM-SHA-256 without `-PLUS`).

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_postgres::tls::{ChannelBinding, MakeTlsConnect, TlsConnect, TlsStream};

/// Makes rustls TLS connections for `tokio-postgres`.
#[derive(Clone)]
pub struct MakeRustls(Arc<rustls::ClientConfig>);

impl std::fmt::Debug for MakeRustls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MakeRustls")
    }
}

impl MakeRustls {
    /// Trusts the CA certificates (PEM) in `ca_pem` for the database server.
    pub fn from_ca_pem(ca_pem: &[u8]) -> Result<Self, String> {
        Self::new(ca_pem, None)
    }

    /// Trusts `ca_pem` for the server and, when `client` is given, authenticates with that
    /// certificate chain (PEM) and private key (PEM: PKCS#8, SEC1 or PKCS#1). Errors name
    /// the part at fault and never include key material.
    pub fn new(ca_pem: &[u8], client: Option<(&[u8], &[u8])>) -> Result<Self, String> {
        let mut roots = rustls::RootCertStore::empty();
        let blocks = pem::parse_many(ca_pem).map_err(|e| format!("CA file: {e}"))?;
        for b in blocks.iter().filter(|b| b.tag() == "CERTIFICATE") {
            roots
                .add(b.contents().to_vec().into())
                .map_err(|e| format!("CA file: {e}"))?;
        }
        if roots.is_empty() {
            return Err("CA file holds no CERTIFICATE block".into());
        }
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS: {e}"))?
        .with_root_certificates(roots);
        let config = match client {
            None => config.with_no_client_auth(),
            Some((cert_pem, key_pem)) => {
                use rustls::pki_types::pem::PemObject;
                use rustls::pki_types::{CertificateDer, PrivateKeyDer};
                let chain = CertificateDer::pem_slice_iter(cert_pem)
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|_| "client certificate file: not PEM certificates".to_string())?;
                if chain.is_empty() {
                    return Err("client certificate file holds no CERTIFICATE block".into());
                }
                let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|_| {
                    "client key file: no PKCS#8, SEC1 or PKCS#1 private key in PEM".to_string()
                })?;
                config
                    .with_client_auth_cert(chain, key)
                    .map_err(|e| format!("client certificate and key: {e}"))?
            }
        };
        Ok(MakeRustls(Arc::new(config)))
    }
}

/// One pending TLS handshake.
pub struct RustlsConnect {
    config: Arc<rustls::ClientConfig>,
    name: ServerName<'static>,
}

impl<S> MakeTlsConnect<S> for MakeRustls
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = RustlsStream<S>;
    type TlsConnect = RustlsConnect;
    type Error = rustls::pki_types::InvalidDnsNameError;

    fn make_tls_connect(&mut self, domain: &str) -> Result<RustlsConnect, Self::Error> {
        Ok(RustlsConnect {
            config: self.0.clone(),
            name: ServerName::try_from(domain.to_string())?,
        })
    }
}

impl<S> TlsConnect<S> for RustlsConnect
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = RustlsStream<S>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<RustlsStream<S>>> + Send>>;

    fn connect(self, stream: S) -> Self::Future {
        Box::pin(async move {
            let tls = tokio_rustls::TlsConnector::from(self.config)
                .connect(self.name, stream)
                .await?;
            Ok(RustlsStream(tls))
        })
    }
}

/// A TLS-wrapped connection to PostgreSQL.
pub struct RustlsStream<S>(tokio_rustls::client::TlsStream<S>);

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for RustlsStream<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for RustlsStream<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> TlsStream for RustlsStream<S> {
    fn channel_binding(&self) -> ChannelBinding {
        ChannelBinding::none()
    }
}
