//! `keygrid kubeadm`: kubeadm's external-CA certificate set, issued by KeyGrid and kept
//! renewed on a control-plane node.
//!
//! Private keys are generated here, on the node, and never leave it: only CSRs go to core
//! (admin socket, `ControlPlaneAdmin`), where the profile decides subject and usages and
//! the HSM-held CA signs. CA certificates are written without keys, which is what switches
//! kubeadm into external-CA mode. Kubeconfigs reference their client certificate and key
//! *files*, because client-go reloads those on change but never reloads embedded data.
//!
//! Every write is a temp file renamed into place, and nothing is written until every
//! certificate of a run has been issued: a refusal leaves the directory as it was.
//! Renewal keeps the existing key, so only the certificate file changes, atomically:
//! etcd and client-go read certificate and key per handshake and never see a mismatched
//! pair.

pub mod csr;
pub mod sa_keys;
pub mod spec;
pub mod trust_bundle;

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use base64::Engine as _;
use keygrid_proto::keygrid::v1 as pb;
use keygrid_proto::keygrid::v1::control_plane_admin_client::ControlPlaneAdminClient;
use serde::{Deserialize, Serialize};
use tonic::transport::Channel;

use crate::server::pem_certs;
pub use spec::{certificate_set, CertSpec, ClusterSpec, KubeCa, KubeconfigSpec};

/// Writes `data` to `path` atomically (temp file in the same directory, then rename) with
/// `mode`, keeping the owner and group of the file it replaces: a key that etcd reads as
/// user `etcd` must stay readable by it after a renewal run as root.
pub fn write_replacing(path: &Path, data: &[u8], mode: u32) -> std::io::Result<()> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let owner = std::fs::metadata(path).ok().map(|m| (m.uid(), m.gid()));
    let dir = path.parent().unwrap_or_else(|| Path::new("."));
    let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
    std::io::Write::write_all(&mut tmp, data)?;
    tmp.as_file()
        .set_permissions(std::fs::Permissions::from_mode(mode))?;
    if let Some((uid, gid)) = owner {
        let now = tmp.as_file().metadata()?;
        if (now.uid(), now.gid()) != (uid, gid) {
            std::os::unix::fs::fchown(tmp.as_file(), Some(uid), Some(gid)).map_err(|e| {
                std::io::Error::new(
                    e.kind(),
                    format!("cannot keep owner {uid}:{gid} of {}: {e}", path.display()),
                )
            })?;
        }
    }
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    Ok(())
}

/// Name of the file, in the pki directory, that records what KeyGrid manages there.
pub const MANIFEST: &str = "keygrid-kubeadm.json";

/// Key algorithms for the node-generated keys.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LeafKeyAlgorithm {
    /// ECDSA P-256.
    EcdsaP256,
    /// ECDSA P-384.
    EcdsaP384,
}

impl LeafKeyAlgorithm {
    /// Parses `ecdsa-p256` / `ecdsa-p384`.
    pub fn parse(s: &str) -> anyhow::Result<Self> {
        match s {
            "ecdsa-p256" => Ok(LeafKeyAlgorithm::EcdsaP256),
            "ecdsa-p384" => Ok(LeafKeyAlgorithm::EcdsaP384),
            other => bail!("unknown key algorithm {other:?}; use ecdsa-p256 or ecdsa-p384"),
        }
    }

    fn rcgen(self) -> &'static rcgen::SignatureAlgorithm {
        match self {
            LeafKeyAlgorithm::EcdsaP256 => &rcgen::PKCS_ECDSA_P256_SHA256,
            LeafKeyAlgorithm::EcdsaP384 => &rcgen::PKCS_ECDSA_P384_SHA384,
        }
    }
}

/// One managed certificate, as recorded in the manifest.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ManagedCert {
    /// Base path relative to the pki directory.
    pub base: String,
    /// KeyGrid profile.
    pub profile: String,
    /// CA file relative to the pki directory.
    pub ca_file: String,
    /// Subject CN.
    pub common_name: String,
    /// Subject O.
    pub organizations: Vec<String>,
    /// DNS SANs.
    pub dns_names: Vec<String>,
    /// IP SANs.
    pub ips: Vec<IpAddr>,
    /// The kubeconfig written for it, if any (absolute path).
    pub kubeconfig: Option<PathBuf>,
    /// Last issuance, Unix seconds.
    pub last_renewal: i64,
    /// Issuances so far (1 after the first).
    pub issued_count: u64,
}

/// What KeyGrid manages in one pki directory.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Manifest {
    /// Requested lifetime in seconds (0: core's default).
    pub ttl_seconds: u64,
    /// The certificates.
    pub certs: Vec<ManagedCert>,
}

impl Manifest {
    /// Reads `<pki>/keygrid-kubeadm.json`.
    pub fn load(pki: &Path) -> anyhow::Result<Self> {
        let path = pki.join(MANIFEST);
        let text = std::fs::read(&path).with_context(|| {
            format!(
                "cannot read {}: run `keygrid kubeadm certs` for this pki directory first",
                path.display()
            )
        })?;
        serde_json::from_slice(&text).with_context(|| format!("{} is not valid", path.display()))
    }

    fn save(&self, pki: &Path) -> anyhow::Result<()> {
        let path = pki.join(MANIFEST);
        let data = serde_json::to_vec_pretty(self).context("manifest does not serialise")?;
        write_replacing(&path, &data, 0o600)
            .with_context(|| format!("cannot write {}", path.display()))
    }
}

/// Options of `keygrid kubeadm certs`.
#[derive(Clone, Debug)]
pub struct CertsOptions {
    /// Core's admin socket.
    pub socket: PathBuf,
    /// The pki directory (`/etc/kubernetes/pki`).
    pub pki_dir: PathBuf,
    /// Where kubeconfigs go (`/etc/kubernetes`).
    pub kubeconfig_dir: PathBuf,
    /// The cluster's names.
    pub spec: ClusterSpec,
    /// Only these bases (`etcd/server`, `admin.conf`, ...); empty for all.
    pub only: Vec<String>,
    /// Lifetime (`None`: core's `control_plane.cert_ttl`).
    pub ttl: Option<Duration>,
    /// Algorithm of new keys.
    pub key_algorithm: LeafKeyAlgorithm,
}

/// Makes sure `dir` exists (created with `mode` if not) and that files can be created in
/// it, before anything is issued.
fn preflight_dir(dir: &Path, mode: u32) -> anyhow::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    match std::fs::metadata(dir) {
        Ok(m) if !m.is_dir() => bail!("{} exists and is not a directory", dir.display()),
        Ok(_) => {}
        Err(_) => {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(mode)
                .create(dir)
                .with_context(|| format!("cannot create directory {}", dir.display()))?;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode))
                .with_context(|| format!("cannot set the mode of {}", dir.display()))?;
        }
    }
    tempfile::NamedTempFile::new_in(dir)
        .with_context(|| format!("cannot write in {}", dir.display()))?;
    std::fs::read_dir(dir).with_context(|| format!("cannot read directory {}", dir.display()))?;
    Ok(())
}

fn pem(tag: &str, der: &[u8]) -> String {
    pem::encode(&pem::Pem::new(tag, der.to_vec()))
}

/// A CSR for `cert` with `key`.
fn build_csr(cert: &ManagedCert, key: &rcgen::KeyPair) -> anyhow::Result<Vec<u8>> {
    let mut params = rcgen::CertificateParams::default();
    let mut dn = rcgen::DistinguishedName::new();
    for o in &cert.organizations {
        dn.push(rcgen::DnType::OrganizationName, o.as_str());
    }
    dn.push(rcgen::DnType::CommonName, cert.common_name.as_str());
    params.distinguished_name = dn;
    for d in &cert.dns_names {
        params.subject_alt_names.push(rcgen::SanType::DnsName(
            d.as_str()
                .try_into()
                .map_err(|_| anyhow::anyhow!("{d:?} is not a valid DNS name"))?,
        ));
    }
    params
        .subject_alt_names
        .extend(cert.ips.iter().copied().map(rcgen::SanType::IpAddress));
    Ok(params
        .serialize_request(key)
        .context("cannot build the CSR")?
        .der()
        .to_vec())
}

async fn issue(
    client: &mut ControlPlaneAdminClient<Channel>,
    cert: &ManagedCert,
    csr: Vec<u8>,
    ttl_seconds: u64,
) -> anyhow::Result<pb::IssueControlPlaneCertificateResponse> {
    client
        .issue_control_plane_certificate(pb::IssueControlPlaneCertificateRequest {
            profile: cert.profile.clone(),
            csr,
            common_name: cert.common_name.clone(),
            organizations: cert.organizations.clone(),
            dns_names: cert.dns_names.clone(),
            ip_addresses: cert.ips.iter().map(|i| i.to_string()).collect(),
            ttl_seconds: ttl_seconds as i64,
        })
        .await
        .map(|r| r.into_inner())
        .map_err(|s| {
            anyhow::anyhow!(
                "core refused {} ({}): {}",
                cert.base,
                cert.profile,
                s.message()
            )
        })
}

/// The kubeconfig text for a client certificate: CA embedded (kubeadm compares it with
/// ca.crt; CA files in kubeconfigs are not reloaded anyway), certificate and key by path.
pub fn kubeconfig_yaml(server: &str, user: &str, ca_pem: &str, cert: &Path, key: &Path) -> String {
    let ca = base64::engine::general_purpose::STANDARD.encode(ca_pem);
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- cluster:\n    certificate-authority-data: {ca}\n    server: {server}\n  name: kubernetes\ncontexts:\n- context:\n    cluster: kubernetes\n    user: {user}\n  name: {user}@kubernetes\ncurrent-context: {user}@kubernetes\npreferences: {{}}\nusers:\n- name: {user}\n  user:\n    client-certificate: {}\n    client-key: {}\n",
        cert.display(),
        key.display()
    )
}

/// Merges a CA certificate into the PEM bundle already at `path`: the new CA first (kubeadm
/// reads the first certificate as *the* CA), then earlier ones that are still valid, so
/// certificates from the previous CA generation keep verifying through a CA rotation.
fn merged_ca_pem(path: &Path, ca_der: &[u8], now: i64) -> String {
    let mut out = vec![ca_der.to_vec()];
    if let Ok(existing) = std::fs::read(path) {
        for p in pem::parse_many(&existing).unwrap_or_default() {
            let der = p.into_contents();
            let live = x509_parser::parse_x509_certificate(&der)
                .map(|(_, c)| c.validity().not_after.timestamp() > now)
                .unwrap_or(false);
            if live && !out.contains(&der) {
                out.push(der);
            }
        }
    }
    pem_certs(&out)
}

fn load_or_generate_key(
    path: &Path,
    alg: LeafKeyAlgorithm,
) -> anyhow::Result<(rcgen::KeyPair, bool)> {
    match std::fs::read_to_string(path) {
        Ok(text) => rcgen::KeyPair::from_pem(&text)
            .map(|k| (k, false))
            .map_err(|_| {
                anyhow::anyhow!(
                    "{} is not a usable private key (PKCS#8 ECDSA)",
                    path.display()
                )
            }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok((
            rcgen::KeyPair::generate_for(alg.rcgen()).context("cannot generate a key")?,
            true,
        )),
        Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
}

/// A file of the set as written.
#[derive(Debug, Clone)]
pub struct WrittenCert {
    /// Base path.
    pub base: String,
    /// Expiry, Unix seconds.
    pub not_after: i64,
}

fn managed(spec: &CertSpec, kubeconfig_dir: &Path) -> ManagedCert {
    ManagedCert {
        base: spec.base.clone(),
        profile: spec.profile.to_string(),
        ca_file: spec.ca.file().to_string(),
        common_name: spec.common_name.clone(),
        organizations: spec.organizations.clone(),
        dns_names: spec.dns_names.clone(),
        ips: spec.ips.clone(),
        kubeconfig: spec
            .kubeconfig
            .as_ref()
            .map(|k| kubeconfig_dir.join(k.file)),
        last_renewal: 0,
        issued_count: 0,
    }
}

fn selected(spec: &CertSpec, only: &[String]) -> bool {
    only.is_empty()
        || only.iter().any(|o| {
            o == &spec.base
                || spec
                    .kubeconfig
                    .as_ref()
                    .is_some_and(|k| k.file == o.as_str())
        })
}

/// `keygrid kubeadm certs`: issues the set and writes it; returns what was written.
pub async fn write_certificate_set(opts: &CertsOptions) -> anyhow::Result<Vec<WrittenCert>> {
    if opts.spec.node_name.is_empty() {
        bail!(
            "the node name is required (--node-name or nodeRegistration.name in --kubeadm-config)"
        );
    }
    let specs: Vec<CertSpec> = certificate_set(&opts.spec)
        .map_err(anyhow::Error::msg)?
        .into_iter()
        .filter(|s| selected(s, &opts.only))
        .collect();
    if specs.is_empty() {
        bail!("--only matched no certificate of the set");
    }
    // Everything that will be written must be writable before anything is issued.
    preflight_dir(&opts.pki_dir, 0o755)?;
    let pki = std::fs::canonicalize(&opts.pki_dir)
        .with_context(|| format!("cannot resolve {}", opts.pki_dir.display()))?;
    for sub in ["etcd", "kubeconfig"] {
        if specs
            .iter()
            .any(|s| s.base.starts_with(&format!("{sub}/")) || s.ca.file().starts_with(sub))
        {
            preflight_dir(
                &pki.join(sub),
                if sub == "kubeconfig" { 0o700 } else { 0o755 },
            )?;
        }
    }
    if specs.iter().any(|s| s.kubeconfig.is_some()) {
        preflight_dir(&opts.kubeconfig_dir, 0o755)?;
    }
    let kubeconfig_dir =
        std::fs::canonicalize(&opts.kubeconfig_dir).unwrap_or(opts.kubeconfig_dir.clone());
    let mut manifest = Manifest::load(&pki).unwrap_or_default();
    manifest.ttl_seconds = opts.ttl.map(|d| d.as_secs()).unwrap_or(0);

    let mut client =
        ControlPlaneAdminClient::new(crate::admin_client::channel(&opts.socket).await?);
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let mut staged = Vec::new();
    for spec in &specs {
        let mut m = managed(spec, &kubeconfig_dir);
        let key_path = pki.join(format!("{}.key", m.base));
        let (key, new_key) = load_or_generate_key(&key_path, opts.key_algorithm)?;
        let res = issue(&mut client, &m, build_csr(&m, &key)?, manifest.ttl_seconds).await?;
        m.last_renewal = now;
        m.issued_count = manifest
            .certs
            .iter()
            .find(|c| c.base == m.base)
            .map_or(0, |c| c.issued_count)
            + 1;
        staged.push((spec.clone(), m, key, new_key, res));
    }
    // Every certificate was issued: now write.
    let mut written = Vec::new();
    let mut cas: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    for (spec, m, key, new_key, res) in &staged {
        let key_path = pki.join(format!("{}.key", m.base));
        let cert_path = pki.join(format!("{}.crt", m.base));
        if *new_key {
            write_replacing(&key_path, key.serialize_pem().as_bytes(), 0o600)
                .with_context(|| format!("cannot write {}", key_path.display()))?;
        }
        let leaf = res
            .cert_chain
            .first()
            .context("core returned an empty chain")?;
        write_replacing(&cert_path, pem("CERTIFICATE", leaf).as_bytes(), 0o644)
            .with_context(|| format!("cannot write {}", cert_path.display()))?;
        cas.insert(m.ca_file.clone(), res.ca_certificate.clone());
        if let (Some(k), Some(path)) = (&spec.kubeconfig, &m.kubeconfig) {
            let yaml = kubeconfig_yaml(
                &k.server,
                &m.common_name,
                &pem("CERTIFICATE", &res.ca_certificate),
                &cert_path,
                &key_path,
            );
            write_replacing(path, yaml.as_bytes(), 0o600)
                .with_context(|| format!("cannot write {}", path.display()))?;
        }
        manifest.certs.retain(|c| c.base != m.base);
        manifest.certs.push(m.clone());
        written.push(WrittenCert {
            base: m.base.clone(),
            not_after: res.not_after_unix,
        });
    }
    for (file, der) in &cas {
        let path = pki.join(file);
        write_replacing(&path, merged_ca_pem(&path, der, now).as_bytes(), 0o644)
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    manifest.save(&pki)?;
    Ok(written)
}

/// One renewal done by [`renew_due`].
#[derive(Debug, Clone)]
pub struct Renewal {
    /// Base path.
    pub base: String,
    /// New expiry.
    pub not_after: i64,
}

/// Validity of the certificate file at `path`: (not_before, not_after).
pub fn cert_validity(path: &Path) -> anyhow::Result<(i64, i64)> {
    let data = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let p = pem::parse(&data).with_context(|| format!("{} is not PEM", path.display()))?;
    let (_, c) = x509_parser::parse_x509_certificate(p.contents())
        .map_err(|e| anyhow::anyhow!("{} does not parse: {e}", path.display()))?;
    Ok((
        c.validity().not_before.timestamp(),
        c.validity().not_after.timestamp(),
    ))
}

/// Whether a certificate valid `nb..na` is due for renewal at `now`, renewing at
/// `fraction` of its life.
pub fn is_due(nb: i64, na: i64, now: i64, fraction: f64) -> bool {
    let life = (na - nb).max(0) as f64;
    now as f64 >= nb as f64 + life * fraction
}

/// Options of the rotation daemon.
#[derive(Clone, Debug)]
pub struct RotateOptions {
    /// Core's admin socket.
    pub socket: PathBuf,
    /// The pki directory.
    pub pki_dir: PathBuf,
    /// Renew at this fraction of the lifetime (0 < f < 1).
    pub renew_at: f64,
    /// Renew everything now, due or not.
    pub force: bool,
    /// Commands run (`sh -c`) after a base's certificate was renewed, for components that
    /// do not reload by themselves.
    pub reload_hooks: BTreeMap<String, String>,
}

/// Renews every managed certificate that is due: same key, new certificate, written
/// atomically; then the reload hook of that base, if any. Returns what was renewed.
pub async fn renew_due(opts: &RotateOptions) -> anyhow::Result<Vec<Renewal>> {
    if !(opts.renew_at > 0.0 && opts.renew_at < 1.0) {
        bail!("--renew-at must be between 0 and 1 (exclusive)");
    }
    let pki = &opts.pki_dir;
    let mut manifest = Manifest::load(pki)?;
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let mut client: Option<ControlPlaneAdminClient<Channel>> = None;
    let mut done = Vec::new();
    let mut failed = Vec::new();
    for i in 0..manifest.certs.len() {
        let m = manifest.certs[i].clone();
        let cert_path = pki.join(format!("{}.crt", m.base));
        let due = opts.force
            || match cert_validity(&cert_path) {
                Ok((nb, na)) => is_due(nb, na, now, opts.renew_at),
                Err(_) => true,
            };
        if !due {
            continue;
        }
        if client.is_none() {
            client = Some(ControlPlaneAdminClient::new(
                crate::admin_client::channel(&opts.socket).await?,
            ));
        }
        let Some(c) = client.as_mut() else { continue };
        // One certificate failing (a refusal, an unwritable file) does not stop the others.
        match renew_one(c, pki, &m, manifest.ttl_seconds, now).await {
            Ok(not_after) => {
                manifest.certs[i].last_renewal = now;
                manifest.certs[i].issued_count += 1;
                manifest.save(pki)?;
                tracing::info!(base = %m.base, not_after, "certificate renewed");
                if let Some(cmd) = opts.reload_hooks.get(&m.base) {
                    run_hook(&m.base, cmd).await;
                }
                done.push(Renewal {
                    base: m.base,
                    not_after,
                });
            }
            Err(e) => {
                tracing::error!(base = %m.base, error = %format!("{e:#}"), "renewal failed");
                failed.push(format!("{}: {e:#}", m.base));
            }
        }
    }
    if !failed.is_empty() {
        bail!(
            "{} renewed, {} failed: {}",
            done.len(),
            failed.len(),
            failed.join("; ")
        );
    }
    Ok(done)
}

/// Renews one certificate with its existing key; returns the new expiry.
async fn renew_one(
    client: &mut ControlPlaneAdminClient<Channel>,
    pki: &Path,
    m: &ManagedCert,
    ttl_seconds: u64,
    now: i64,
) -> anyhow::Result<i64> {
    let cert_path = pki.join(format!("{}.crt", m.base));
    let key_path = pki.join(format!("{}.key", m.base));
    let (key, new_key) = load_or_generate_key(&key_path, LeafKeyAlgorithm::EcdsaP256)?;
    let res = issue(client, m, build_csr(m, &key)?, ttl_seconds).await?;
    if new_key {
        write_replacing(&key_path, key.serialize_pem().as_bytes(), 0o600)
            .with_context(|| format!("cannot write {}", key_path.display()))?;
    }
    let ca_path = pki.join(&m.ca_file);
    let ca_known = std::fs::read(&ca_path)
        .ok()
        .and_then(|d| pem::parse_many(d).ok())
        .is_some_and(|ps| {
            ps.first()
                .is_some_and(|p| p.contents() == res.ca_certificate.as_slice())
        });
    if !ca_known {
        write_replacing(
            &ca_path,
            merged_ca_pem(&ca_path, &res.ca_certificate, now).as_bytes(),
            0o644,
        )
        .with_context(|| format!("cannot write {}", ca_path.display()))?;
    }
    let leaf = res
        .cert_chain
        .first()
        .context("core returned an empty chain")?;
    write_replacing(&cert_path, pem("CERTIFICATE", leaf).as_bytes(), 0o644)
        .with_context(|| format!("cannot write {}", cert_path.display()))?;
    Ok(res.not_after_unix)
}

async fn run_hook(base: &str, cmd: &str) {
    match tokio::process::Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .status()
        .await
    {
        Ok(s) if s.success() => tracing::info!(%base, "reload hook ran"),
        Ok(s) => tracing::error!(%base, status = %s, "reload hook failed"),
        Err(e) => tracing::error!(%base, error = %e, "reload hook could not start"),
    }
}

/// `keygrid kubeadm rotate --watch`: renews due certificates every `interval` until
/// `shutdown`. A failed pass is logged and retried at the next tick.
pub async fn watch(
    opts: RotateOptions,
    interval: Duration,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    tokio::pin!(shutdown);
    // The manifest must exist; anything else is retried.
    Manifest::load(&opts.pki_dir)?;
    loop {
        match renew_due(&opts).await {
            Ok(r) if !r.is_empty() => tracing::info!(renewed = r.len(), "rotation pass done"),
            Ok(_) => {}
            Err(e) => tracing::error!(error = %format!("{e:#}"), "rotation pass failed; retrying"),
        }
        tokio::select! {
            _ = &mut shutdown => return Ok(()),
            _ = tokio::time::sleep(interval) => {}
        }
    }
}

/// One row of `keygrid kubeadm status`.
#[derive(Debug, Clone)]
pub struct StatusRow {
    /// Certificate file.
    pub cert_file: PathBuf,
    /// Profile.
    pub profile: String,
    /// Subject CN.
    pub common_name: String,
    /// Expiry (None: file missing or unreadable).
    pub not_after: Option<i64>,
    /// Last renewal, Unix seconds.
    pub last_renewal: i64,
    /// Issuances so far.
    pub issued_count: u64,
    /// The kubeconfig that references it.
    pub kubeconfig: Option<PathBuf>,
}

/// Every managed file with its expiry and last renewal.
pub fn status(pki: &Path) -> anyhow::Result<Vec<StatusRow>> {
    let manifest = Manifest::load(pki)?;
    Ok(manifest
        .certs
        .iter()
        .map(|m| {
            let cert_file = pki.join(format!("{}.crt", m.base));
            StatusRow {
                not_after: cert_validity(&cert_file).ok().map(|(_, na)| na),
                cert_file,
                profile: m.profile.clone(),
                common_name: m.common_name.clone(),
                last_renewal: m.last_renewal,
                issued_count: m.issued_count,
                kubeconfig: m.kubeconfig.clone(),
            }
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replacing_keeps_owner_and_sets_mode() {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("server.key");
        std::fs::write(&path, b"old").unwrap();
        // As root, give the file another owner, as a key read by the etcd user has.
        let root = std::fs::metadata(dir.path()).unwrap().uid() == 0
            && std::os::unix::fs::chown(&path, Some(4242), Some(4243)).is_ok();
        write_replacing(&path, b"new", 0o600).unwrap();
        let m = std::fs::metadata(&path).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"new");
        assert_eq!(m.permissions().mode() & 0o777, 0o600);
        if root {
            assert_eq!((m.uid(), m.gid()), (4242, 4243));
        }
    }

    #[test]
    fn due_at_the_fraction_of_life() {
        assert!(!is_due(100, 200, 149, 0.5));
        assert!(is_due(100, 200, 150, 0.5));
        assert!(is_due(100, 100, 100, 0.5));
    }

    #[test]
    fn unwritable_pki_dir_is_refused_before_anything() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("pki");
        std::fs::write(&file, b"x").unwrap();
        let err = preflight_dir(&file, 0o755).unwrap_err();
        assert!(err.to_string().contains("is not a directory"), "{err}");
    }

    #[test]
    fn ca_bundle_keeps_the_previous_ca_after_the_new_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ca.crt");
        let mk = |cn: &str| {
            let mut p = rcgen::CertificateParams::new(vec![]).unwrap();
            p.distinguished_name.push(rcgen::DnType::CommonName, cn);
            p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
            p.self_signed(&rcgen::KeyPair::generate().unwrap())
                .unwrap()
                .der()
                .to_vec()
        };
        let (old, new) = (mk("old"), mk("new"));
        std::fs::write(&path, pem_certs(std::slice::from_ref(&old))).unwrap();
        let merged = merged_ca_pem(&path, &new, 0);
        let ders: Vec<Vec<u8>> = pem::parse_many(merged)
            .unwrap()
            .into_iter()
            .map(|p| p.into_contents())
            .collect();
        assert_eq!(ders, vec![new, old]);
    }
}
