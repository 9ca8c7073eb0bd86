//! The agent's EST client (RFC 7030; KeyGrid's TPM extension in `docs/est.md`): HTTPS with
//! rustls, the node's TPM key or a kubelet key as TLS client certificate, base64 bodies,
//! certs-only PKCS#7 responses, 202 + Retry-After honoured.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use base64::Engine;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use keygrid_tpm_attestation::{Challenge, EnrollmentFinish, EnrollmentStart, WireMessage};
use rustls::client::ResolvesClientCert;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::sign::CertifiedKey;
use rustls::RootCertStore;
use tokio_rustls::TlsConnector;

use crate::tpm_key::TpmNodeKey;

/// How many 202 answers the client waits through before giving up.
const MAX_DEFERRALS: u32 = 20;
/// Largest response read.
const MAX_RESPONSE: usize = 256 * 1024;

/// An EST server: base URL `https://host:port/.well-known/est` and its trust anchors.
#[derive(Clone)]
pub struct EstClient {
    host: String,
    port: u16,
    server_name: String,
    path: String,
    roots: Arc<RootCertStore>,
}

/// A client certificate resolver that always offers one identity.
#[derive(Debug)]
pub struct FixedIdentity(pub Arc<CertifiedKey>);

impl ResolvesClientCert for FixedIdentity {
    fn resolve(
        &self,
        _hints: &[&[u8]],
        _schemes: &[rustls::SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// A software key (PEM PKCS#8) with its chain, as a TLS client identity.
pub fn software_identity(chain: &[Vec<u8>], key_pem: &str) -> anyhow::Result<Arc<CertifiedKey>> {
    let der = pem::parse(key_pem)
        .context("key is not PEM")?
        .into_contents();
    let key = rustls::crypto::aws_lc_rs::default_provider()
        .key_provider
        .load_private_key(rustls::pki_types::PrivateKeyDer::Pkcs8(der.into()))
        .map_err(|e| anyhow::anyhow!("unusable key: {e}"))?;
    Ok(Arc::new(CertifiedKey::new(
        chain
            .iter()
            .map(|c| CertificateDer::from(c.clone()))
            .collect(),
        key,
    )))
}

/// The certificates in a certs-only PKCS#7 (base64 or DER).
pub fn certs_of(body: &[u8]) -> anyhow::Result<Vec<Vec<u8>>> {
    use x509_parser::der_parser::ber::BerObjectContent;
    let compact: Vec<u8> = body
        .iter()
        .copied()
        .filter(|b| !b.is_ascii_whitespace())
        .collect();
    let der = base64::engine::general_purpose::STANDARD
        .decode(&compact)
        .context("EST response is not base64")?;
    let (_, ci) = x509_parser::der_parser::parse_der(&der).context("EST response is not DER")?;
    let seq = ci.as_sequence().context("not a ContentInfo")?;
    let explicit = seq.get(1).context("ContentInfo without content")?;
    let inner = match &explicit.content {
        BerObjectContent::Unknown(any) => any.data,
        BerObjectContent::Tagged(_, _, obj) => obj.as_slice().unwrap_or_default(),
        _ => bail!("ContentInfo content is not [0]"),
    };
    let (_, sd) = x509_parser::der_parser::parse_der(inner).context("SignedData is not DER")?;
    let mut certs = Vec::new();
    for item in sd.as_sequence().context("SignedData is not a SEQUENCE")? {
        if item.header.tag().0 == 0 && !item.header.is_universal() {
            let mut rest = match &item.content {
                BerObjectContent::Unknown(any) => any.data,
                _ => bail!("unexpected certificates encoding"),
            };
            while !rest.is_empty() {
                let (r, _) = x509_parser::parse_x509_certificate(rest)
                    .context("a certificate in the response does not parse")?;
                certs.push(rest[..rest.len() - r.len()].to_vec());
                rest = r;
            }
        }
    }
    if certs.is_empty() {
        bail!("the EST response holds no certificates");
    }
    Ok(certs)
}

/// The CSR attribute carrying a connection's channel binding: challengePassword
/// (1.2.840.113549.1.9.7) = UTF8String of the base64 tls-exporter value.
pub fn binding_attribute(binding: &str) -> rcgen::Attribute {
    let mut utf8 = vec![0x0c, binding.len() as u8];
    utf8.extend_from_slice(binding.as_bytes());
    let mut set = vec![0x31, utf8.len() as u8];
    set.extend_from_slice(&utf8);
    rcgen::Attribute {
        oid: &[1, 2, 840, 113549, 1, 9, 7],
        values: set,
    }
}

/// Orders a chain leaf first: the one certificate that issued none of the others.
pub fn leaf_first(mut certs: Vec<Vec<u8>>) -> Vec<Vec<u8>> {
    let subjects: Vec<Vec<u8>> = certs
        .iter()
        .filter_map(|c| x509_parser::parse_x509_certificate(c).ok())
        .map(|(_, c)| c.subject().as_raw().to_vec())
        .collect();
    if let Some(i) = certs.iter().position(|c| {
        x509_parser::parse_x509_certificate(c)
            .map(|(_, c)| !c.is_ca() && subjects.iter().any(|s| s == c.issuer().as_raw()))
            .unwrap_or(false)
    }) {
        let leaf = certs.remove(i);
        certs.insert(0, leaf);
    }
    certs
}

struct Reply {
    status: u16,
    retry_after: Option<u64>,
    body: Vec<u8>,
}

impl EstClient {
    /// `url` is `https://host:port/.well-known/est`; `roots_pem` authenticates the server.
    pub fn new(url: &str, roots_pem: &str) -> anyhow::Result<Self> {
        let rest = url
            .strip_prefix("https://")
            .with_context(|| format!("EST URL {url:?} must be https://"))?;
        let (authority, path) = rest.split_once('/').unwrap_or((rest, ".well-known/est"));
        let (host, port) = match authority.rsplit_once(':') {
            Some((h, p)) => (h.to_string(), p.parse().context("bad port in the EST URL")?),
            None => (authority.to_string(), 443),
        };
        let mut roots = RootCertStore::empty();
        for p in pem::parse_many(roots_pem).context("trust bundle is not PEM")? {
            roots
                .add(CertificateDer::from(p.into_contents()))
                .map_err(|e| anyhow::anyhow!("trust bundle certificate rejected: {e}"))?;
        }
        Ok(EstClient {
            server_name: host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_string(),
            host,
            port,
            path: format!("/{}", path.trim_end_matches('/')),
            roots: Arc::new(roots),
        })
    }

    async fn send(
        &self,
        op: &str,
        content_type: &str,
        body: Vec<u8>,
        identity: Option<Arc<CertifiedKey>>,
    ) -> anyhow::Result<Reply> {
        self.send_bound(op, content_type, identity, |_| Ok(body))
            .await
    }

    /// Sends a request whose body is made once the TLS connection exists, from its
    /// channel-binding value (the challengePassword of a CSR, RFC 7030 §3.5 via RFC 9266).
    async fn send_bound(
        &self,
        op: &str,
        content_type: &str,
        identity: Option<Arc<CertifiedKey>>,
        make_body: impl FnOnce(&str) -> anyhow::Result<Vec<u8>>,
    ) -> anyhow::Result<Reply> {
        let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_safe_default_protocol_versions()?
        .with_root_certificates(self.roots.clone());
        let mut config = match identity {
            Some(id) => builder.with_client_cert_resolver(Arc::new(FixedIdentity(id))),
            None => builder.with_no_client_auth(),
        };
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let tcp = tokio::time::timeout(
            Duration::from_secs(10),
            tokio::net::TcpStream::connect((self.host.as_str(), self.port)),
        )
        .await
        .context("EST connect timed out")?
        .with_context(|| format!("cannot reach the EST server {}:{}", self.host, self.port))?;
        let name = ServerName::try_from(self.server_name.clone())
            .map_err(|e| anyhow::anyhow!("bad EST server name: {e}"))?;
        let tls = TlsConnector::from(Arc::new(config))
            .connect(name, tcp)
            .await
            .context("EST TLS handshake failed")?;
        let exporter = tls
            .get_ref()
            .1
            .export_keying_material([0u8; 32], b"EXPORTER-Channel-Binding", None)
            .map_err(|e| anyhow::anyhow!("no TLS exporter: {e}"))?;
        let body = make_body(&base64::engine::general_purpose::STANDARD.encode(exporter))?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let method = if body.is_empty() { "GET" } else { "POST" };
        let mut req = hyper::Request::builder()
            .method(method)
            .uri(format!("{}/{op}", self.path))
            .header("host", format!("{}:{}", self.host, self.port));
        if !body.is_empty() {
            req = req.header("content-type", content_type);
        }
        let resp = tokio::time::timeout(
            Duration::from_secs(60),
            sender.send_request(req.body(Full::new(Bytes::from(body)))?),
        )
        .await
        .context("EST request timed out")??;
        let status = resp.status().as_u16();
        let retry_after = resp
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok());
        let body = http_body_util::Limited::new(resp.into_body(), MAX_RESPONSE)
            .collect()
            .await
            .map_err(|e| anyhow::anyhow!("cannot read the EST response: {e}"))?
            .to_bytes()
            .to_vec();
        Ok(Reply {
            status,
            retry_after,
            body,
        })
    }

    /// `simpleenroll` (or `simplereenroll`) on `label` with `identity` as TLS client
    /// certificate. `make_csr` builds the DER CSR for each connection from its channel
    /// binding (put it in the challengePassword with [`binding_attribute`]); it must use
    /// the same key every time, so a deferred request is found again. Waits through 202s.
    /// Returns the chain, leaf first.
    pub async fn enroll(
        &self,
        label: &str,
        reenroll: bool,
        make_csr: &(dyn Fn(&str) -> anyhow::Result<Vec<u8>> + Send + Sync),
        identity: Arc<CertifiedKey>,
    ) -> anyhow::Result<Vec<Vec<u8>>> {
        let op = if reenroll {
            "simplereenroll"
        } else {
            "simpleenroll"
        };
        for _ in 0..MAX_DEFERRALS {
            let r = self
                .send_bound(
                    &format!("{label}/{op}"),
                    "application/pkcs10",
                    Some(identity.clone()),
                    |binding| {
                        Ok(base64::engine::general_purpose::STANDARD
                            .encode(make_csr(binding)?)
                            .into_bytes())
                    },
                )
                .await?;
            match r.status {
                200 => return Ok(leaf_first(certs_of(&r.body)?)),
                202 => {
                    let wait = r.retry_after.unwrap_or(30).clamp(1, 3600);
                    tracing::info!(%label, wait, "EST enrollment waits for approval");
                    tokio::time::sleep(Duration::from_secs(wait)).await;
                }
                s => bail!(
                    "EST {label}/{op} refused ({s}): {}",
                    String::from_utf8_lossy(&r.body).trim()
                ),
            }
        }
        bail!("EST {label}/{op}: still waiting for approval after {MAX_DEFERRALS} tries")
    }

    /// TPM-attested enrollment of the node `node_name`: attestation, challenge, key
    /// certification and a CSR signed in the TPM. Returns the node chain, leaf first.
    pub async fn tpm_enroll(
        &self,
        key: &Arc<TpmNodeKey>,
        node_name: &str,
    ) -> anyhow::Result<Vec<Vec<u8>>> {
        let data = key.with_tpm(|tpm, _| tpm.attestation_data().clone());
        let r = self
            .send(
                "nodes/tpm-challenge",
                "application/json",
                EnrollmentStart::new(node_name, data).encode(),
                None,
            )
            .await?;
        if r.status != 200 {
            bail!(
                "TPM enrollment refused ({}): {}",
                r.status,
                String::from_utf8_lossy(&r.body).trim()
            );
        }
        let challenge =
            Challenge::decode(&r.body).map_err(|e| anyhow::anyhow!("bad challenge: {e}"))?;
        let (response, certify) = key
            .with_tpm(|tpm, k| -> keygrid_tpm_attestation::Result<_> {
                let response = tpm.answer(&challenge)?;
                let certify = tpm.certify(k, &challenge.nonce)?;
                Ok((response, certify))
            })
            .map_err(|e| anyhow::anyhow!("TPM: {e}"))?;
        let mut params = rcgen::CertificateParams::default();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "KeyGrid agent");
        let r = self
            .send_bound("nodes/tpm-enroll", "application/json", None, |binding| {
                let finish = EnrollmentFinish {
                    version: keygrid_tpm_attestation::wire::PROTOCOL_VERSION,
                    node_name: node_name.to_string(),
                    response,
                    key_public: key.with_tpm(|_, k| k.public.clone()),
                    certify_info: certify.0,
                    certify_signature: certify.1,
                    csr: key.csr(&params, binding)?,
                };
                Ok(finish.encode())
            })
            .await?;
        if r.status != 200 {
            bail!(
                "TPM enrollment refused ({}): {}",
                r.status,
                String::from_utf8_lossy(&r.body).trim()
            );
        }
        Ok(leaf_first(certs_of(&r.body)?))
    }
}
