//! Signing what `kubeadm certs generate-csr` wrote: `<cert-dir>/<name>.csr` next to its key
//! for each leaf, and `<kubeconfig-dir>/<file>.conf.csr` next to a partial kubeconfig that
//! holds only the client key. CSRs carry CN, O and SANs but no usages; the profile chosen by
//! file name supplies them. Everything is issued first and written only when all of it was.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use base64::Engine as _;
use keygrid_proto::keygrid::v1 as pb;
use keygrid_proto::keygrid::v1::control_plane_admin_client::ControlPlaneAdminClient;
use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::prelude::FromDer;

use super::write_replacing;

/// Leaf CSRs kubeadm writes (base path in the cert dir) and their profile and CA file.
pub const LEAF_CSRS: [(&str, &str, &str); 7] = [
    ("apiserver", "kube-apiserver", "ca.crt"),
    (
        "apiserver-kubelet-client",
        "kube-apiserver-kubelet-client",
        "ca.crt",
    ),
    (
        "front-proxy-client",
        "front-proxy-client",
        "front-proxy-ca.crt",
    ),
    ("etcd/server", "etcd-server", "etcd/ca.crt"),
    ("etcd/peer", "etcd-peer", "etcd/ca.crt"),
    (
        "etcd/healthcheck-client",
        "etcd-healthcheck-client",
        "etcd/ca.crt",
    ),
    (
        "apiserver-etcd-client",
        "kube-apiserver-etcd-client",
        "etcd/ca.crt",
    ),
];

/// Kubeconfig CSRs kubeadm writes and their profile.
pub const KUBECONFIG_CSRS: [(&str, &str); 5] = [
    ("admin.conf", "kubeconfig-admin"),
    ("super-admin.conf", "kubeconfig-super-admin"),
    ("controller-manager.conf", "kubeconfig-controller-manager"),
    ("scheduler.conf", "kubeconfig-scheduler"),
    ("kubelet.conf", "kubeconfig-kubelet"),
];

/// Subject and names a CSR asks for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CsrNames {
    /// CN.
    pub common_name: String,
    /// O values.
    pub organizations: Vec<String>,
    /// DNS SANs.
    pub dns_names: Vec<String>,
    /// IP SANs, textual.
    pub ips: Vec<String>,
}

/// Reads a PEM CSR file: DER and the names it asks for.
pub fn read_csr(path: &Path) -> anyhow::Result<(Vec<u8>, CsrNames)> {
    let data = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let p = pem::parse(&data).with_context(|| format!("{} is not PEM", path.display()))?;
    if p.tag() != "CERTIFICATE REQUEST" {
        bail!(
            "{} holds a PEM {:?}, not a CERTIFICATE REQUEST",
            path.display(),
            p.tag()
        );
    }
    let der = p.into_contents();
    let (_, csr) = x509_parser::certification_request::X509CertificationRequest::from_der(&der)
        .map_err(|e| anyhow::anyhow!("{}: CSR does not parse: {e}", path.display()))?;
    let info = &csr.certification_request_info;
    let text = |a: &x509_parser::x509::AttributeTypeAndValue| a.as_str().ok().map(str::to_string);
    let mut names = CsrNames {
        common_name: info
            .subject
            .iter_common_name()
            .next()
            .and_then(text)
            .unwrap_or_default(),
        organizations: info.subject.iter_organization().filter_map(text).collect(),
        ..Default::default()
    };
    for ext in csr.requested_extensions().into_iter().flatten() {
        if let ParsedExtension::SubjectAlternativeName(san) = ext {
            for n in &san.general_names {
                match n {
                    GeneralName::DNSName(d) => names.dns_names.push(d.to_string()),
                    GeneralName::IPAddress(b) => names.ips.push(ip_text(b)?),
                    other => bail!("{}: unsupported SAN {other:?}", path.display()),
                }
            }
        }
    }
    Ok((der, names))
}

fn ip_text(b: &[u8]) -> anyhow::Result<String> {
    Ok(match b.len() {
        4 => std::net::Ipv4Addr::new(b[0], b[1], b[2], b[3]).to_string(),
        16 => {
            let mut a = [0u8; 16];
            a.copy_from_slice(b);
            std::net::Ipv6Addr::from(a).to_string()
        }
        _ => bail!("malformed IP SAN"),
    })
}

/// Puts the signed client certificate and the CA into a partial kubeconfig kubeadm wrote.
pub fn complete_kubeconfig(text: &str, cert_pem: &str, ca_pem: &str) -> anyhow::Result<String> {
    use serde_yaml_ng::Value;
    let b64 = |s: &str| Value::String(base64::engine::general_purpose::STANDARD.encode(s));
    let mut doc: Value = serde_yaml_ng::from_str(text).context("the kubeconfig is not YAML")?;
    let users = doc
        .get_mut("users")
        .and_then(Value::as_sequence_mut)
        .filter(|u| !u.is_empty())
        .context("the kubeconfig has no users")?;
    for u in users.iter_mut() {
        let user = u
            .get_mut("user")
            .and_then(Value::as_mapping_mut)
            .context("a kubeconfig user has no `user` map")?;
        user.insert("client-certificate-data".into(), b64(cert_pem));
    }
    if let Some(clusters) = doc.get_mut("clusters").and_then(Value::as_sequence_mut) {
        for c in clusters.iter_mut() {
            if let Some(cluster) = c.get_mut("cluster").and_then(Value::as_mapping_mut) {
                cluster.insert("certificate-authority-data".into(), b64(ca_pem));
            }
        }
    }
    serde_yaml_ng::to_string(&doc).context("the kubeconfig does not serialise")
}

/// What `sign_generated_csrs` wrote.
#[derive(Debug, Clone)]
pub struct SignedFile {
    /// The file written.
    pub path: PathBuf,
    /// Expiry, Unix seconds.
    pub not_after: i64,
}

/// Signs every CSR kubeadm generated in `cert_dir` and `kubeconfig_dir`, then writes
/// `<name>.crt` files, completed kubeconfigs and the CA certificates kubeadm needs.
pub async fn sign_generated_csrs(
    socket: &Path,
    cert_dir: &Path,
    kubeconfig_dir: &Path,
    ttl_seconds: u64,
) -> anyhow::Result<Vec<SignedFile>> {
    std::fs::read_dir(cert_dir)
        .with_context(|| format!("cannot read the cert directory {}", cert_dir.display()))?;
    let mut jobs: Vec<(PathBuf, &str, String, Option<PathBuf>)> = Vec::new();
    for (base, profile, ca) in LEAF_CSRS {
        let csr = cert_dir.join(format!("{base}.csr"));
        if csr.exists() {
            jobs.push((csr, profile, ca.to_string(), None));
        }
    }
    for (file, profile) in KUBECONFIG_CSRS {
        let csr = kubeconfig_dir.join(format!("{file}.csr"));
        if csr.exists() {
            jobs.push((
                csr,
                profile,
                "ca.crt".into(),
                Some(kubeconfig_dir.join(file)),
            ));
        }
    }
    if jobs.is_empty() {
        bail!(
            "no CSRs from `kubeadm certs generate-csr` in {} or {}",
            cert_dir.display(),
            kubeconfig_dir.display()
        );
    }
    let mut client = ControlPlaneAdminClient::new(crate::admin_client::channel(socket).await?);
    let mut staged = Vec::new();
    for (csr_path, profile, ca_file, kubeconfig) in jobs {
        let (der, names) = read_csr(&csr_path)?;
        let res = client
            .issue_control_plane_certificate(pb::IssueControlPlaneCertificateRequest {
                profile: profile.into(),
                csr: der,
                common_name: names.common_name.clone(),
                organizations: names.organizations.clone(),
                dns_names: names.dns_names.clone(),
                ip_addresses: names.ips.clone(),
                ttl_seconds: ttl_seconds as i64,
            })
            .await
            .map_err(|s| anyhow::anyhow!("core refused {}: {}", csr_path.display(), s.message()))?
            .into_inner();
        let kube = match &kubeconfig {
            Some(path) => {
                let text = std::fs::read_to_string(path).with_context(|| {
                    format!("cannot read the partial kubeconfig {}", path.display())
                })?;
                Some(text)
            }
            None => None,
        };
        staged.push((csr_path, ca_file, kubeconfig, kube, res));
    }
    let mut out = Vec::new();
    for (csr_path, ca_file, kubeconfig, kube_text, res) in staged {
        let leaf = res
            .cert_chain
            .first()
            .context("core returned an empty chain")?;
        let cert_pem = pem::encode(&pem::Pem::new("CERTIFICATE", leaf.clone()));
        let ca_pem = pem::encode(&pem::Pem::new("CERTIFICATE", res.ca_certificate.clone()));
        let ca_path = cert_dir.join(&ca_file);
        if !ca_path.exists() {
            write_replacing(&ca_path, ca_pem.as_bytes(), 0o644)
                .with_context(|| format!("cannot write {}", ca_path.display()))?;
        }
        let path = match (kubeconfig, kube_text) {
            (Some(path), Some(text)) => {
                let yaml = complete_kubeconfig(&text, &cert_pem, &ca_pem)
                    .with_context(|| format!("{}", path.display()))?;
                write_replacing(&path, yaml.as_bytes(), 0o600)
                    .with_context(|| format!("cannot write {}", path.display()))?;
                path
            }
            _ => {
                let path = csr_path.with_extension("crt");
                write_replacing(&path, cert_pem.as_bytes(), 0o644)
                    .with_context(|| format!("cannot write {}", path.display()))?;
                path
            }
        };
        out.push(SignedFile {
            path,
            not_after: res.not_after_unix,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kubeconfig_gets_certificate_and_ca() {
        let partial = "apiVersion: v1\nclusters:\n- cluster:\n    server: https://10.0.0.1:6443\n  name: kubernetes\nusers:\n- name: kubernetes-admin\n  user:\n    client-key-data: S0VZ\n";
        let out = complete_kubeconfig(partial, "CERT", "CA").unwrap();
        let v: serde_yaml_ng::Value = serde_yaml_ng::from_str(&out).unwrap();
        assert_eq!(v["users"][0]["user"]["client-key-data"], "S0VZ");
        assert_eq!(v["users"][0]["user"]["client-certificate-data"], "Q0VSVA==");
        assert_eq!(
            v["clusters"][0]["cluster"]["certificate-authority-data"],
            "Q0E="
        );
        assert!(complete_kubeconfig("users: []\n", "C", "A").is_err());
    }
}
