//! `keygrid spire credential`: gets a SPIRE server its client credential for core's
//! SpireUpstream API. The key is generated here and only its CSR goes to core, so the
//! private key exists only in the output directory.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use keygrid_proto::keygrid::v1 as pb;
use keygrid_proto::keygrid::v1::spire_admin_client::SpireAdminClient;

use crate::server::{pem_certs, private_dir, write_atomic};

/// The files written.
#[derive(Debug, Clone)]
pub struct WrittenCredential {
    /// Certificate chain (leaf first), PEM: the plugin's `client_cert_path`.
    pub cert: PathBuf,
    /// Private key, PKCS#8 PEM, mode 0600: the plugin's `client_key_path`.
    pub key: PathBuf,
    /// KeyGrid's roots, PEM: the plugin's `trust_bundle_path`.
    pub bundle: PathBuf,
    /// Expiry of the certificate (RFC 3339).
    pub expires_at: String,
}

/// Issues the credential through core's admin socket and writes it to `out_dir`.
pub async fn issue(
    socket: &Path,
    spire_server_id: &str,
    out_dir: &Path,
    ttl: Option<Duration>,
) -> anyhow::Result<WrittenCredential> {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
        .context("cannot generate a key")?;
    let mut params = rcgen::CertificateParams::default();
    params.subject_alt_names =
        vec![rcgen::SanType::URI(spire_server_id.try_into().map_err(
            |_| anyhow::anyhow!("{spire_server_id:?} is not a valid URI"),
        )?)];
    let csr = params
        .serialize_request(&key)
        .context("cannot build the CSR")?;
    let mut client = SpireAdminClient::new(crate::admin_client::channel(socket).await?);
    let res = client
        .issue_spire_credential(pb::IssueSpireCredentialRequest {
            spire_server_id: spire_server_id.to_string(),
            csr: csr.der().to_vec(),
            ttl_seconds: ttl.map(|d| d.as_secs() as i64).unwrap_or(0),
        })
        .await
        .map_err(|s| anyhow::anyhow!("core refused: {}", s.message()))?
        .into_inner();
    private_dir(out_dir)?;
    let written = WrittenCredential {
        cert: out_dir.join("svid.pem"),
        key: out_dir.join("svid.key"),
        bundle: out_dir.join("bundle.pem"),
        expires_at: time::OffsetDateTime::from_unix_timestamp(res.expires_at_unix)
            .map(|t| t.to_string())
            .unwrap_or_else(|_| res.expires_at_unix.to_string()),
    };
    write_atomic(&written.key, key.serialize_pem().as_bytes(), 0o600)
        .with_context(|| format!("cannot write {}", written.key.display()))?;
    write_atomic(&written.cert, pem_certs(&res.cert_chain).as_bytes(), 0o644)
        .with_context(|| format!("cannot write {}", written.cert.display()))?;
    write_atomic(&written.bundle, pem_certs(&res.bundle).as_bytes(), 0o644)
        .with_context(|| format!("cannot write {}", written.bundle.display()))?;
    Ok(written)
}
