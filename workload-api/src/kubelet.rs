//! Kubelet credentials over EST: the agent enrolls the kubelet's client certificate
//! (`CN=system:node:<name>, O=system:nodes`) and serving certificate (node name, IPs),
//! renews each at two thirds of its lifetime with `simplereenroll`, and writes them where a
//! kubelet configured with file paths picks them up.
//!
//! Files in `est.kubelet_dir`, each replaced atomically (temporary file in the same
//! directory, fsync, rename), so a reader sees the old or the new file, never a mix:
//! - `kubelet-client-current.pem`, `kubelet-serving-current.pem`: key then chain in one
//!   file (0600), the form the kubelet itself uses; point both `client-certificate` and
//!   `client-key` (or `tlsCertFile` and `tlsPrivateKeyFile`) at it, so certificate and key
//!   always change together;
//! - `kubelet-client.crt`/`.key`, `kubelet-serving.crt`/`.key` for tools that want them
//!   apart (key written first);
//! - `ca.pem`: the trust bundle.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;

use crate::config::EstConfig;
use crate::est_client::{software_identity, EstClient};
use crate::node_client::{write_private, CoreClient};

/// Which kubelet certificate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// `kubelet-client`: the kubelet's identity towards the API server.
    Client,
    /// `kubelet-serving`: the kubelet's HTTPS server.
    Serving,
}

impl Kind {
    fn label(self) -> &'static str {
        match self {
            Kind::Client => "kubelet-client",
            Kind::Serving => "kubelet-serving",
        }
    }
}

/// A kubelet credential on disk.
#[derive(Clone, Debug)]
pub struct KubeletCredential {
    /// Chain, leaf first, DER.
    pub chain: Vec<Vec<u8>>,
    /// PKCS#8 key, PEM.
    key_pem: String,
    not_before: i64,
    not_after: i64,
}

fn now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

impl KubeletCredential {
    fn from_parts(chain: Vec<Vec<u8>>, key_pem: String) -> anyhow::Result<Self> {
        let leaf = chain.first().context("empty chain")?;
        let (_, c) =
            x509_parser::parse_x509_certificate(leaf).context("certificate does not parse")?;
        Ok(KubeletCredential {
            not_before: c.validity().not_before.timestamp(),
            not_after: c.validity().not_after.timestamp(),
            chain,
            key_pem,
        })
    }

    /// When to renew: two thirds into the lifetime.
    pub fn renew_at(&self) -> i64 {
        self.not_before + (self.not_after - self.not_before) * 2 / 3
    }

    fn current_path(dir: &Path, kind: Kind) -> PathBuf {
        dir.join(format!("{}-current.pem", kind.label()))
    }

    /// Loads the saved credential of `kind`, if it parses.
    pub fn load(dir: &Path, kind: Kind) -> Option<Self> {
        let text = std::fs::read_to_string(Self::current_path(dir, kind)).ok()?;
        let blocks = pem::parse_many(&text).ok()?;
        let key = blocks.iter().find(|p| p.tag() == "PRIVATE KEY")?;
        let chain = blocks
            .iter()
            .filter(|p| p.tag() == "CERTIFICATE")
            .map(|p| p.contents().to_vec())
            .collect();
        Self::from_parts(chain, pem::encode(key)).ok()
    }

    /// Writes every file of `kind` atomically.
    pub fn save(&self, dir: &Path, kind: Kind, bundle_pem: &str) -> anyhow::Result<()> {
        let certs: String = self
            .chain
            .iter()
            .map(|d| pem::encode(&pem::Pem::new("CERTIFICATE", d.clone())))
            .collect();
        let label = kind.label();
        write_private(
            &dir.join(format!("{label}.key")),
            self.key_pem.as_bytes(),
            0o600,
        )?;
        write_private(&dir.join(format!("{label}.crt")), certs.as_bytes(), 0o644)?;
        write_private(
            &Self::current_path(dir, kind),
            format!("{}{certs}", self.key_pem).as_bytes(),
            0o600,
        )?;
        write_private(&dir.join("ca.pem"), bundle_pem.as_bytes(), 0o644)?;
        Ok(())
    }
}

fn csr_params(est: &EstConfig, kind: Kind) -> anyhow::Result<rcgen::CertificateParams> {
    let mut p = rcgen::CertificateParams::default();
    p.distinguished_name
        .push(rcgen::DnType::OrganizationName, "system:nodes");
    p.distinguished_name.push(
        rcgen::DnType::CommonName,
        format!("system:node:{}", est.node_name),
    );
    if kind == Kind::Serving {
        let dns = if est.serving_dns_names.is_empty() {
            vec![est.node_name.clone()]
        } else {
            est.serving_dns_names.clone()
        };
        for d in dns {
            p.subject_alt_names.push(rcgen::SanType::DnsName(
                d.as_str().try_into().context("serving DNS name")?,
            ));
        }
        for ip in &est.serving_ips {
            p.subject_alt_names.push(rcgen::SanType::IpAddress(*ip));
        }
    }
    Ok(p)
}

/// Gets a fresh credential of `kind`: renews the current client certificate with itself
/// (`simplereenroll`); a serving certificate (serverAuth only, so it cannot be a TLS
/// client certificate), a missing one, or a refused renewal is enrolled with the node
/// certificate (`simpleenroll`).
async fn obtain(
    core: &CoreClient,
    est: &EstConfig,
    kind: Kind,
    current: Option<&KubeletCredential>,
) -> anyhow::Result<KubeletCredential> {
    let client = EstClient::new(&est.url, &core.roots_pem())?;
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let params = csr_params(est, kind)?;
    let make_csr = |binding: &str| -> anyhow::Result<Vec<u8>> {
        Ok(params
            .serialize_request_with_attributes(
                &key,
                vec![crate::est_client::binding_attribute(binding)],
            )?
            .der()
            .to_vec())
    };
    if let Some(cur) = current.filter(|c| kind == Kind::Client && c.not_after > now() + 5) {
        match client
            .enroll(
                kind.label(),
                true,
                &make_csr,
                software_identity(&cur.chain, &cur.key_pem)?,
            )
            .await
        {
            Ok(chain) => return KubeletCredential::from_parts(chain, key.serialize_pem()),
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), kind = kind.label(), "re-enrollment refused; enrolling anew")
            }
        }
    }
    let chain = client
        .enroll(
            kind.label(),
            false,
            &make_csr,
            core.credential().tls_identity()?,
        )
        .await?;
    KubeletCredential::from_parts(chain, key.serialize_pem())
}

/// Keeps the kubelet's certificates in `dir` enrolled and renewed, forever.
pub async fn run(core: Arc<CoreClient>, est: EstConfig, dir: PathBuf) {
    let prepared = std::fs::create_dir_all(&dir).and_then(|()| {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))
    });
    if let Err(e) = prepared {
        tracing::error!(error = %format!("{e:#}"), "cannot prepare the kubelet directory");
        return;
    }
    let mut creds = [
        KubeletCredential::load(&dir, Kind::Client),
        KubeletCredential::load(&dir, Kind::Serving),
    ];
    loop {
        let mut next = now() + 3600;
        for (i, kind) in [Kind::Client, Kind::Serving].into_iter().enumerate() {
            let due = creds[i].as_ref().is_none_or(|c| now() >= c.renew_at());
            if due {
                match obtain(&core, &est, kind, creds[i].as_ref()).await {
                    Ok(c) => match c.save(&dir, kind, &core.roots_pem()) {
                        Ok(()) => {
                            tracing::info!(
                                kind = kind.label(),
                                not_after = c.not_after,
                                "kubelet certificate written"
                            );
                            creds[i] = Some(c);
                        }
                        Err(e) => {
                            tracing::error!(error = %format!("{e:#}"), "cannot write kubelet files")
                        }
                    },
                    Err(e) => {
                        tracing::error!(error = %format!("{e:#}"), kind = kind.label(), "kubelet certificate enrollment failed");
                        next = next.min(now() + 5);
                    }
                }
            }
            if let Some(c) = &creds[i] {
                next = next.min(c.renew_at());
            }
        }
        let wait = (next - now()).clamp(1, 3600) as u64;
        tokio::time::sleep(Duration::from_secs(wait)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A reader polling a file while it is replaced thousands of times sees only whole
    /// versions: the replacement is a rename of a fully written, synced temporary file.
    #[test]
    fn readers_never_see_a_half_written_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kubelet-client-current.pem");
        let a = vec![b'a'; 64 * 1024];
        let b = vec![b'b'; 96 * 1024];
        write_private(&path, &a, 0o600).unwrap();
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let reader = {
            let (path, stop) = (path.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut reads = 0u32;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let got = std::fs::read(&path).unwrap();
                    let whole_a = got.len() == 64 * 1024 && got.iter().all(|c| *c == b'a');
                    let whole_b = got.len() == 96 * 1024 && got.iter().all(|c| *c == b'b');
                    assert!(
                        whole_a || whole_b,
                        "read a mixed or partial file of {} bytes",
                        got.len()
                    );
                    reads += 1;
                }
                reads
            })
        };
        for i in 0..300 {
            write_private(&path, if i % 2 == 0 { &b } else { &a }, 0o600).unwrap();
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        assert!(reader.join().unwrap() > 0);
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }
}
