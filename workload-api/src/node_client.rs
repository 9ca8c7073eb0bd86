//! The agent's connection to core: node attestation, node credential renewal, and calls
//! made with the node certificate.
//!
//! The node's private key is generated here and never leaves the node; core sees only a
//! CSR. The credential is kept in the agent's data directory (key mode 0600) so a restart
//! does not need a new join token while the certificate is still valid.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use anyhow::Context;
use keygrid_proto::keygrid::v1 as pb;
use keygrid_proto::keygrid::v1::node_client::NodeClient;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use crate::config::AgentConfig;
use crate::tpm_key::TpmNodeKey;

/// Where the node's private key is.
#[derive(Clone)]
pub enum NodeKey {
    /// A software key, PKCS#8 PEM (join-token nodes).
    Software(String),
    /// The TPM's enrollment key (TPM-attested nodes): it never leaves the TPM.
    Tpm(Arc<TpmNodeKey>),
}

/// A node certificate chain (leaf first) and its private key.
#[derive(Clone)]
pub struct NodeCredential {
    /// The node's SPIFFE ID.
    pub spiffe_id: String,
    /// DER certificates, leaf first.
    pub chain: Vec<Vec<u8>>,
    /// The private key.
    key: NodeKey,
    /// Expiry of the leaf, Unix seconds.
    pub not_after: i64,
    /// When the agent received it, Unix seconds.
    pub received_at: i64,
}

impl std::fmt::Debug for NodeCredential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeCredential")
            .field("spiffe_id", &self.spiffe_id)
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

fn now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

fn pem_certs(ders: &[Vec<u8>]) -> String {
    ders.iter()
        .map(|d| pem::encode(&pem::Pem::new("CERTIFICATE", d.clone())))
        .collect()
}

fn leaf_not_after(der: &[u8]) -> anyhow::Result<i64> {
    let (_, cert) =
        x509_parser::parse_x509_certificate(der).context("node certificate does not parse")?;
    Ok(cert.validity().not_after.timestamp())
}

/// A fresh P-256 key and a CSR for it.
pub fn new_key_and_csr() -> anyhow::Result<(rcgen::KeyPair, Vec<u8>)> {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let csr = rcgen::CertificateParams::default().serialize_request(&key)?;
    Ok((key, csr.der().to_vec()))
}

/// Writes a file atomically (temporary file in the same directory, then rename).
pub fn write_private(path: &Path, data: &[u8], mode: u32) -> anyhow::Result<()> {
    let dir = path.parent().unwrap_or_else(|| Path::new("."));
    let mut tmp = tempfile::NamedTempFile::new_in(dir)
        .with_context(|| format!("cannot create a file in {}", dir.display()))?;
    std::io::Write::write_all(&mut tmp, data)?;
    tmp.as_file()
        .set_permissions(std::fs::Permissions::from_mode(mode))?;
    tmp.as_file().sync_all()?;
    tmp.persist(path)
        .map_err(|e| e.error)
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

impl NodeCredential {
    fn from_response(res: pb::NodeCredential, key: &rcgen::KeyPair) -> anyhow::Result<Self> {
        let leaf = res
            .cert_chain
            .first()
            .context("core returned an empty certificate chain")?;
        Ok(NodeCredential {
            not_after: leaf_not_after(leaf)?,
            spiffe_id: res.spiffe_id,
            chain: res.cert_chain,
            key: NodeKey::Software(key.serialize_pem()),
            received_at: now(),
        })
    }

    fn cert_path(dir: &Path) -> PathBuf {
        dir.join("node-cert.pem")
    }

    fn key_path(dir: &Path) -> PathBuf {
        dir.join("node-key.pem")
    }

    /// A credential for a chain (leaf first) whose key is `key`.
    pub fn new(chain: Vec<Vec<u8>>, key: NodeKey) -> anyhow::Result<Self> {
        let leaf = chain.first().context("empty certificate chain")?;
        let (_, cert) =
            x509_parser::parse_x509_certificate(leaf).context("node certificate does not parse")?;
        let spiffe_id = cert
            .subject_alternative_name()
            .ok()
            .flatten()
            .and_then(|san| {
                san.value.general_names.iter().find_map(|n| match n {
                    x509_parser::extensions::GeneralName::URI(u) => Some(u.to_string()),
                    _ => None,
                })
            })
            .context("node certificate has no SPIFFE ID")?;
        Ok(NodeCredential {
            spiffe_id,
            not_after: cert.validity().not_after.timestamp(),
            chain,
            key,
            received_at: now(),
        })
    }

    /// The private key.
    pub fn key(&self) -> &NodeKey {
        &self.key
    }

    /// The credential as a rustls client identity (EST).
    pub fn tls_identity(&self) -> anyhow::Result<Arc<rustls::sign::CertifiedKey>> {
        match &self.key {
            NodeKey::Software(pem) => crate::est_client::software_identity(&self.chain, pem),
            NodeKey::Tpm(k) => Ok(k.certified_key(&self.chain)),
        }
    }

    /// Loads a saved certificate for the TPM key `key` if it is valid for at least a
    /// minute and certifies that key.
    pub fn load_valid_tpm(dir: &Path, key: &Arc<TpmNodeKey>) -> anyhow::Result<Option<Self>> {
        let path = Self::cert_path(dir);
        if !path.exists() {
            return Ok(None);
        }
        let text = std::fs::read_to_string(&path)?;
        let chain: Vec<Vec<u8>> = pem::parse_many(&text)
            .context("saved node certificate is not PEM")?
            .into_iter()
            .map(|p| p.into_contents())
            .collect();
        let Ok(cred) = Self::new(chain, NodeKey::Tpm(key.clone())) else {
            return Ok(None);
        };
        let same_key = x509_parser::parse_x509_certificate(&cred.chain[0])
            .map(|(_, c)| c.public_key().raw == key.spki_der())
            .unwrap_or(false);
        if !same_key || cred.not_after <= now() + 60 {
            return Ok(None);
        }
        Ok(Some(cred))
    }

    /// Saves the credential: key first (0600), then the certificate, each atomically. A
    /// TPM key has nothing to save.
    pub fn save(&self, dir: &Path) -> anyhow::Result<()> {
        match &self.key {
            NodeKey::Software(pem) => write_private(&Self::key_path(dir), pem.as_bytes(), 0o600)?,
            NodeKey::Tpm(_) => {
                let _ = std::fs::remove_file(Self::key_path(dir));
            }
        }
        let mut cert = format!("# {}\n", self.spiffe_id);
        cert.push_str(&pem_certs(&self.chain));
        write_private(&Self::cert_path(dir), cert.as_bytes(), 0o644)?;
        Ok(())
    }

    /// Loads a saved credential if there is one that is still valid for at least a minute.
    pub fn load_valid(dir: &Path) -> anyhow::Result<Option<Self>> {
        let (cert_path, key_path) = (Self::cert_path(dir), Self::key_path(dir));
        if !cert_path.exists() || !key_path.exists() {
            return Ok(None);
        }
        let cert_text = std::fs::read_to_string(&cert_path)?;
        let key_pem = std::fs::read_to_string(&key_path)?;
        let spiffe_id = cert_text
            .lines()
            .next()
            .and_then(|l| l.strip_prefix("# "))
            .unwrap_or_default()
            .to_string();
        let chain: Vec<Vec<u8>> = pem::parse_many(&cert_text)
            .context("saved node certificate is not PEM")?
            .into_iter()
            .map(|p| p.into_contents())
            .collect();
        let Some(leaf) = chain.first() else {
            return Ok(None);
        };
        let not_after = leaf_not_after(leaf)?;
        if not_after <= now() + 60 || spiffe_id.is_empty() {
            return Ok(None);
        }
        Ok(Some(NodeCredential {
            spiffe_id,
            chain,
            key: NodeKey::Software(key_pem),
            not_after,
            received_at: now(),
        }))
    }

    /// When to renew: half-way between receipt and expiry.
    pub fn renew_at(&self) -> i64 {
        self.received_at + (self.not_after - self.received_at) / 2
    }
}

/// The agent's client of core, re-keyed whenever the node credential changes.
pub struct CoreClient {
    cfg: AgentConfig,
    roots_pem: RwLock<String>,
    channel: RwLock<Channel>,
    credential: RwLock<NodeCredential>,
}

async fn connect_cred(
    cfg: &AgentConfig,
    roots_pem: &str,
    cred: &NodeCredential,
) -> anyhow::Result<Channel> {
    match &cred.key {
        NodeKey::Software(pem) => {
            connect(
                cfg,
                roots_pem,
                Some(Identity::from_pem(pem_certs(&cred.chain), pem.clone())),
            )
            .await
        }
        NodeKey::Tpm(k) => connect_tpm(cfg, roots_pem, k.certified_key(&cred.chain)),
    }
}

/// A channel whose TLS (rustls, HTTP/2) signs with the TPM key: tonic's own TLS takes
/// only software keys, so the connection is made here and handed to tonic as plain IO.
fn connect_tpm(
    cfg: &AgentConfig,
    roots_pem: &str,
    identity: Arc<rustls::sign::CertifiedKey>,
) -> anyhow::Result<Channel> {
    let mut roots = rustls::RootCertStore::empty();
    for p in pem::parse_many(roots_pem).context("trust bundle is not PEM")? {
        roots
            .add(rustls::pki_types::CertificateDer::from(p.into_contents()))
            .map_err(|e| anyhow::anyhow!("trust bundle certificate rejected: {e}"))?;
    }
    let mut tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots)
    .with_client_cert_resolver(Arc::new(crate::est_client::FixedIdentity(identity)));
    tls.alpn_protocols = vec![b"h2".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(tls));
    let name = rustls::pki_types::ServerName::try_from(cfg.server_name())
        .map_err(|e| anyhow::anyhow!("bad server name: {e}"))?;
    let authority = cfg
        .server_address
        .trim_start_matches("https://")
        .split('/')
        .next()
        .unwrap_or_default()
        .to_string();
    let endpoint = Endpoint::from_shared(format!("http://{authority}"))
        .with_context(|| format!("bad server_address {:?}", cfg.server_address))?
        .connect_timeout(Duration::from_secs(10))
        .timeout(Duration::from_secs(30));
    let service = tower::service_fn(move |_: tonic::transport::Uri| {
        let (connector, name, authority) = (connector.clone(), name.clone(), authority.clone());
        async move {
            let tcp = tokio::net::TcpStream::connect(authority.as_str()).await?;
            let tls = connector.connect(name, tcp).await?;
            Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(tls))
        }
    });
    Ok(endpoint.connect_with_connector_lazy(service))
}

async fn connect(
    cfg: &AgentConfig,
    roots_pem: &str,
    identity: Option<Identity>,
) -> anyhow::Result<Channel> {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(roots_pem))
        .domain_name(cfg.server_name());
    if let Some(id) = identity {
        tls = tls.identity(id);
    }
    let endpoint = Endpoint::from_shared(cfg.server_address.clone())
        .with_context(|| format!("bad server_address {:?}", cfg.server_address))?
        .tls_config(tls)?
        .connect_timeout(Duration::from_secs(10))
        .timeout(Duration::from_secs(30));
    // Connect lazily: a core outage must not stop the agent from serving its cache.
    Ok(endpoint.connect_lazy())
}

impl CoreClient {
    /// Where the agent keeps the latest bundle core sent it (newer than the configured
    /// bootstrap bundle after a root rotation).
    fn saved_bundle_path(cfg: &AgentConfig) -> PathBuf {
        cfg.data_dir.join("bundle.pem")
    }

    /// Obtains a node credential (saved one, or by redeeming the join token) and connects.
    pub async fn start(cfg: AgentConfig) -> anyhow::Result<Arc<Self>> {
        let saved = Self::saved_bundle_path(&cfg);
        let bundle_path = if saved.exists() {
            saved
        } else {
            cfg.trust_bundle_path.clone()
        };
        let roots_pem = std::fs::read_to_string(&bundle_path)
            .with_context(|| format!("cannot read trust bundle {}", bundle_path.display()))?;
        if pem::parse_many(&roots_pem)
            .map(|v| v.is_empty())
            .unwrap_or(true)
        {
            anyhow::bail!(
                "trust bundle {} holds no PEM certificates",
                bundle_path.display()
            );
        }
        let tpm = match cfg.est.as_ref().and_then(|e| e.tpm_tcti.clone()) {
            Some(tcti) => Some(Arc::new(
                tokio::task::spawn_blocking(move || TpmNodeKey::open(&tcti)).await??,
            )),
            None => None,
        };
        let saved = match &tpm {
            Some(k) => NodeCredential::load_valid_tpm(&cfg.data_dir, k)?,
            None => NodeCredential::load_valid(&cfg.data_dir)?,
        };
        let credential = match saved {
            Some(c) => {
                tracing::info!(node = %c.spiffe_id, "using saved node credential");
                c
            }
            None if tpm.is_some() => {
                let (Some(key), Some(est)) = (&tpm, &cfg.est) else {
                    anyhow::bail!("TPM enrollment needs [est]");
                };
                let client = crate::est_client::EstClient::new(&est.url, &roots_pem)?;
                let chain = client.tpm_enroll(key, &est.node_name).await?;
                let cred = NodeCredential::new(chain, NodeKey::Tpm(key.clone()))?;
                cred.save(&cfg.data_dir)?;
                tracing::info!(node = %cred.spiffe_id, "enrolled with TPM attestation over EST");
                cred
            }
            None => {
                let token_file = cfg.join_token_file.as_ref().context(
                    "no valid node credential and no join_token_file configured; create a token with `keygrid token create`",
                )?;
                let token = std::fs::read_to_string(token_file).with_context(|| {
                    format!("cannot read join token file {}", token_file.display())
                })?;
                let token = token.trim();
                if token.is_empty() {
                    anyhow::bail!("join token file {} is empty", token_file.display());
                }
                let channel = connect(&cfg, &roots_pem, None).await?;
                let (key, csr) = new_key_and_csr()?;
                let res = NodeClient::new(channel)
                    .attest_join_token(pb::AttestJoinTokenRequest {
                        token: token.to_string(),
                        csr,
                    })
                    .await
                    .map_err(|s| {
                        anyhow::anyhow!("join token attestation refused: {}", s.message())
                    })?
                    .into_inner();
                let cred = NodeCredential::from_response(res, &key)?;
                cred.save(&cfg.data_dir)?;
                tracing::info!(node = %cred.spiffe_id, "attested to core with a join token");
                cred
            }
        };
        let channel = connect_cred(&cfg, &roots_pem, &credential).await?;
        Ok(Arc::new(CoreClient {
            cfg,
            roots_pem: RwLock::new(roots_pem),
            channel: RwLock::new(channel),
            credential: RwLock::new(credential),
        }))
    }

    /// A client over the current node credential.
    pub fn client(&self) -> NodeClient<Channel> {
        let ch = self
            .channel
            .read()
            .map(|c| c.clone())
            .unwrap_or_else(|p| p.into_inner().clone());
        NodeClient::new(ch)
    }

    /// The node's SPIFFE ID.
    pub fn node_id(&self) -> String {
        self.credential
            .read()
            .map(|c| c.spiffe_id.clone())
            .unwrap_or_default()
    }

    /// When the node credential should next be renewed (Unix seconds).
    pub fn renew_at(&self) -> i64 {
        self.credential.read().map(|c| c.renew_at()).unwrap_or(0)
    }

    /// The current node credential.
    pub fn credential(&self) -> NodeCredential {
        self.credential
            .read()
            .map(|c| c.clone())
            .unwrap_or_else(|p| p.into_inner().clone())
    }

    /// The trust bundle currently used for core (PEM).
    pub fn roots_pem(&self) -> String {
        self.roots()
    }

    /// Renews the node credential and switches to it: a TPM node re-enrolls its TPM key
    /// over EST (`simplereenroll`, authenticated by the current certificate); a software
    /// node gets a fresh key certified over the node API.
    pub async fn renew(&self) -> anyhow::Result<()> {
        let current = self.credential();
        let cred = match (current.key(), &self.cfg.est) {
            (NodeKey::Tpm(key), Some(est)) => {
                let mut params = rcgen::CertificateParams::default();
                params
                    .distinguished_name
                    .push(rcgen::DnType::OrganizationName, "KeyGrid");
                params
                    .distinguished_name
                    .push(rcgen::DnType::CommonName, "KeyGrid agent");
                params.subject_alt_names = vec![rcgen::SanType::URI(
                    current
                        .spiffe_id
                        .as_str()
                        .try_into()
                        .context("node SPIFFE ID")?,
                )];
                let key = key.clone();
                let client = crate::est_client::EstClient::new(&est.url, &self.roots())?;
                let signer = key.clone();
                let make_csr = move |binding: &str| signer.csr(&params, binding);
                let chain = client
                    .enroll("nodes", true, &make_csr, current.tls_identity()?)
                    .await?;
                NodeCredential::new(chain, NodeKey::Tpm(key))?
            }
            _ => {
                let (key, csr) = new_key_and_csr()?;
                let res = self
                    .client()
                    .renew_node_credential(pb::RenewNodeCredentialRequest { csr })
                    .await
                    .map_err(|s| {
                        anyhow::anyhow!("node credential renewal refused: {}", s.message())
                    })?
                    .into_inner();
                NodeCredential::from_response(res, &key)?
            }
        };
        cred.save(&self.cfg.data_dir)?;
        let channel = connect_cred(&self.cfg, &self.roots(), &cred).await?;
        if let Ok(mut c) = self.channel.write() {
            *c = channel;
        }
        if let Ok(mut c) = self.credential.write() {
            *c = cred;
        }
        tracing::info!("node credential renewed");
        Ok(())
    }

    fn roots(&self) -> String {
        self.roots_pem
            .read()
            .map(|r| r.clone())
            .unwrap_or_else(|p| p.into_inner().clone())
    }

    /// Adopts the trust bundle core published: after a root rotation, core's certificate
    /// chains to the new root, so the agent must trust it before the old one leaves. The
    /// bundle arrived over a TLS connection authenticated with the current roots; it is
    /// saved so a restart starts from it.
    pub async fn adopt_bundle(&self, roots: &[Vec<u8>]) -> anyhow::Result<()> {
        if roots.is_empty() {
            anyhow::bail!("core sent an empty trust bundle; keeping the current one");
        }
        let fresh = pem_certs(roots);
        if fresh == self.roots() {
            return Ok(());
        }
        write_private(&Self::saved_bundle_path(&self.cfg), fresh.as_bytes(), 0o644)?;
        let channel = connect_cred(&self.cfg, &fresh, &self.credential()).await?;
        if let Ok(mut r) = self.roots_pem.write() {
            *r = fresh;
        }
        if let Ok(mut c) = self.channel.write() {
            *c = channel;
        }
        tracing::info!(roots = roots.len(), "trust bundle for core updated");
        Ok(())
    }
}
