//! A client for the kubelet's `/pods` endpoint on its secure port.
//!
//! HTTPS with rustls: the kubelet's certificate is checked against the configured CA
//! (`kubelet_ca_path`), unless `skip_kubelet_verification` is set, which is insecure (any
//! server on that address could then answer with made-up pods) and only meant for
//! clusters whose kubelet serving certificate is self-signed. Authentication is a bearer
//! token read from a file on every request, because projected service account tokens
//! rotate.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use http_body_util::{BodyExt, Empty, Limited};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};

use super::pods::PodList;

/// Largest `/pods` body accepted (a node with hundreds of pods stays well below).
const MAX_BODY: usize = 64 * 1024 * 1024;

/// Talks to one kubelet.
pub struct KubeletClient {
    host: String,
    port: u16,
    server_name: ServerName<'static>,
    token_path: PathBuf,
    tls: Arc<rustls::ClientConfig>,
}

/// Accepts any server certificate: `skip_kubelet_verification = true` (insecure).
#[derive(Debug)]
struct NoVerification(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for NoVerification {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

impl KubeletClient {
    /// A client for `url` (`https://host:port`), authenticating with the token in
    /// `token_path`, verifying the kubelet with `ca_path` unless `skip_verification`.
    pub fn new(
        url: &str,
        token_path: PathBuf,
        ca_path: Option<&std::path::Path>,
        skip_verification: bool,
    ) -> anyhow::Result<Self> {
        let uri: hyper::Uri = url
            .parse()
            .with_context(|| format!("kubelet_url {url:?} is not a URL"))?;
        if uri.scheme_str() != Some("https") {
            anyhow::bail!("kubelet_url must be an https:// URL (the kubelet's secure port)");
        }
        let host = uri
            .host()
            .context("kubelet_url has no host")?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let port = uri.port_u16().unwrap_or(10250);
        let server_name = ServerName::try_from(host.clone())
            .with_context(|| format!("bad host {host:?} in kubelet_url"))?;
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()?;
        let tls = if skip_verification {
            tracing::warn!("kubelet certificate verification is disabled (skip_kubelet_verification = true): insecure");
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(NoVerification(provider)))
                .with_no_client_auth()
        } else {
            let ca_path = ca_path
                .context("kubelet_ca_path is required unless skip_kubelet_verification is set")?;
            let pem_text = std::fs::read(ca_path)
                .with_context(|| format!("cannot read kubelet CA {}", ca_path.display()))?;
            let mut roots = rustls::RootCertStore::empty();
            for p in pem::parse_many(&pem_text)
                .with_context(|| format!("kubelet CA {} is not PEM", ca_path.display()))?
            {
                roots
                    .add(CertificateDer::from(p.into_contents()))
                    .context("bad kubelet CA certificate")?;
            }
            if roots.is_empty() {
                anyhow::bail!("kubelet CA {} holds no certificates", ca_path.display());
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        };
        Ok(KubeletClient {
            host,
            port,
            server_name,
            token_path,
            tls: Arc::new(tls),
        })
    }

    /// `GET /pods`.
    pub async fn pods(&self) -> anyhow::Result<PodList> {
        let token = std::fs::read_to_string(&self.token_path)
            .with_context(|| format!("cannot read kubelet token {}", self.token_path.display()))?;
        let token = token.trim();
        let tcp = tokio::time::timeout(
            Duration::from_secs(5),
            tokio::net::TcpStream::connect((self.host.as_str(), self.port)),
        )
        .await
        .context("kubelet connect timed out")?
        .with_context(|| {
            format!(
                "cannot connect to the kubelet at {}:{}",
                self.host, self.port
            )
        })?;
        let tls = tokio_rustls::TlsConnector::from(self.tls.clone())
            .connect(self.server_name.clone(), tcp)
            .await
            .context("TLS handshake with the kubelet failed")?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .context("HTTP handshake with the kubelet failed")?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let req = hyper::Request::get("/pods")
            .header(hyper::header::HOST, format!("{}:{}", self.host, self.port))
            .header(hyper::header::AUTHORIZATION, format!("Bearer {token}"))
            .header(hyper::header::ACCEPT, "application/json")
            .body(Empty::<Bytes>::new())
            .context("cannot build the kubelet request")?;
        let res = tokio::time::timeout(Duration::from_secs(10), sender.send_request(req))
            .await
            .context("kubelet request timed out")?
            .context("kubelet request failed")?;
        let status = res.status();
        let body = Limited::new(res.into_body(), MAX_BODY)
            .collect()
            .await
            .map_err(|e| anyhow::anyhow!("reading the kubelet's answer failed: {e}"))?
            .to_bytes();
        if !status.is_success() {
            anyhow::bail!("kubelet answered /pods with HTTP {status}");
        }
        serde_json::from_slice(&body).context("kubelet /pods answer is not a pod list")
    }
}
