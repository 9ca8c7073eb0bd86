//! The certificate authority: the hierarchy of CAs and the one place certificates are signed.
//!
//! The root key is generated in the key backend (the HSM) and signs only the issuing CAs;
//! `workloads` signs X.509-SVIDs and `nodes` signs agent identities. Every certificate is
//! built from a profile (see [`profiles`]), gets a random 128-bit serial, and never outlives
//! the CA that signed it.

pub mod profiles;

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio::sync::watch;

use rcgen::{CertificateParams, Issuer, PublicKeyData, SerialNumber, SigningKey};
use time::OffsetDateTime;

use crate::keys::{CaSigner, IssuerKeys, KeyAlgorithm, KeyError};
use crate::store::{AuthorityRecord, CertificateRecord, Store, StoreError};

/// Errors from the CA.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    /// The key backend failed.
    #[error("key backend: {0}")]
    Key(#[from] KeyError),
    /// Building or signing a certificate failed.
    #[error("certificate: {0}")]
    Cert(#[from] rcgen::Error),
    /// The request cannot be honoured as asked (bad name, bad CSR, ...).
    #[error("{0}")]
    InvalidRequest(String),
    /// The store failed.
    #[error("store: {0}")]
    Store(#[from] StoreError),
    /// Stored hierarchy data does not make sense.
    #[error("hierarchy: {0}")]
    Corrupt(String),
}

/// Issuer names, as stored and shown by `keygrid ca show`.
pub const ROOT: &str = "root";
/// The Kubernetes cluster CA (kubeadm's `ca`): kube-apiserver serving, apiserver →
/// kubelet client, and the kubeconfig client certificates.
pub const CONTROL_PLANE: &str = "control-plane";
/// kubeadm's `front-proxy-ca`: a separate CA because kube-apiserver trusts every
/// certificate it signs as an authenticating proxy (`--requestheader-client-ca-file`).
pub const FRONT_PROXY: &str = "front-proxy";
/// kubeadm's `etcd-ca`: etcd trusts every certificate it signs as a peer or client, so it
/// signs etcd certificates only.
pub const ETCD: &str = "etcd";
/// The issuer of node (agent, kubelet) and core serving certificates.
pub const NODES: &str = "nodes";
/// The issuer of SPIRE servers' CA certificates (UpstreamAuthority).
pub const SPIRE_UPSTREAM: &str = "spire-upstream";
/// The issuer of X.509-SVIDs.
pub const WORKLOADS: &str = "workloads";
/// Every issuing CA under the root, in display order.
pub const ISSUERS: [&str; 6] = [
    CONTROL_PLANE,
    FRONT_PROXY,
    ETCD,
    NODES,
    SPIRE_UPSTREAM,
    WORKLOADS,
];

/// An owned handle to a CA signer in the form rcgen's `Issuer` wants.
#[derive(Clone)]
pub struct SharedSigner(pub Arc<dyn CaSigner>);

impl PublicKeyData for SharedSigner {
    fn der_bytes(&self) -> &[u8] {
        self.0.public_key_raw()
    }

    fn algorithm(&self) -> &'static rcgen::SignatureAlgorithm {
        self.0.algorithm().rcgen()
    }
}

impl SigningKey for SharedSigner {
    fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, rcgen::Error> {
        crate::keys::RcgenSigner(self.0.as_ref()).sign(msg)
    }
}

/// A certificate the CA has just signed, with the facts the store records about it.
#[derive(Clone, Debug)]
pub struct Issued {
    /// The certificate, DER.
    pub der: Vec<u8>,
    /// Serial number, lowercase hex.
    pub serial_hex: String,
    /// Validity start, Unix seconds.
    pub not_before: i64,
    /// Validity end, Unix seconds.
    pub not_after: i64,
    /// SHA-256 of the DER, lowercase hex.
    pub sha256_hex: String,
    /// True when the requested lifetime was cut to the issuer's own expiry.
    pub clamped: bool,
    /// Generation of the CA that signed it.
    pub issuer_generation: i64,
}

impl Issued {
    /// The store record of this certificate, signed by `issuer` under `profile` for
    /// `subject`: the one place a signed certificate becomes an issuance record.
    pub fn record(&self, issuer: &Authority, profile: &str, subject: &str) -> CertificateRecord {
        CertificateRecord {
            issuer: issuer.name().to_string(),
            issuer_generation: self.issuer_generation,
            serial: self.serial_hex.clone(),
            profile: profile.to_string(),
            subject: subject.to_string(),
            not_before: self.not_before,
            not_after: self.not_after,
            sha256: self.sha256_hex.clone(),
        }
    }
}

/// One generation of one CA: its certificate and its signing key.
pub struct Authority {
    name: String,
    generation: i64,
    activate_at: i64,
    backend: String,
    key_label: String,
    cert_der: Vec<u8>,
    signer: Arc<dyn CaSigner>,
    issuer: Issuer<'static, SharedSigner>,
    not_after: OffsetDateTime,
}

impl Authority {
    fn new(rec: &AuthorityRecord, signer: Arc<dyn CaSigner>) -> Result<Self, CaError> {
        let name = &rec.name;
        let cert_der = rec.cert_der.clone();
        let (_, cert) = x509_parser::parse_x509_certificate(&cert_der)
            .map_err(|e| CaError::Corrupt(format!("{name} certificate does not parse: {e}")))?;
        let spki = cert.public_key().subject_public_key.data.as_ref();
        if spki != signer.public_key_raw() {
            return Err(CaError::Corrupt(format!(
                "{name} certificate does not match its key {}",
                signer.location()
            )));
        }
        let not_after = cert.validity().not_after.to_datetime();
        let issuer =
            Issuer::from_ca_cert_der(&cert_der.clone().into(), SharedSigner(signer.clone()))?;
        Ok(Authority {
            name: name.to_string(),
            generation: rec.generation,
            activate_at: rec.activate_at,
            backend: rec.backend.clone(),
            key_label: rec.key_label.clone(),
            cert_der,
            signer,
            issuer,
            not_after,
        })
    }

    /// The issuer's name (`root`, `workloads`, `nodes`, ...).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its generation (1 for the first; each rotation adds one).
    pub fn generation(&self) -> i64 {
        self.generation
    }

    /// From when it signs (Unix seconds).
    pub fn activate_at(&self) -> i64 {
        self.activate_at
    }

    /// The CA certificate, DER.
    pub fn cert_der(&self) -> &[u8] {
        &self.cert_der
    }

    /// When this CA expires; nothing it signs may outlive it.
    pub fn not_after(&self) -> OffsetDateTime {
        self.not_after
    }

    /// Where its key lives, for `keygrid ca show`.
    pub fn key_location(&self) -> String {
        self.signer.location()
    }

    /// Label of its key in the key backend.
    pub fn key_label(&self) -> &str {
        &self.key_label
    }

    /// The key backend's name.
    pub fn backend(&self) -> &str {
        &self.backend
    }

    /// The CA key's algorithm.
    pub fn algorithm(&self) -> KeyAlgorithm {
        self.signer.algorithm()
    }

    /// The CA's signing key (for CRLs and other structures signed outside rcgen's
    /// certificate builder).
    pub fn signer(&self) -> Arc<dyn CaSigner> {
        self.signer.clone()
    }

    /// Signs `params` for `public_key`, valid from 10 s ago (clock skew) for `ttl`, cut at
    /// this CA's own expiry.
    pub fn sign(
        &self,
        mut params: CertificateParams,
        public_key: &impl PublicKeyData,
        ttl: Duration,
        now: OffsetDateTime,
    ) -> Result<Issued, CaError> {
        let serial = random_serial()?;
        let not_before = now - Duration::from_secs(10);
        let wanted = now + ttl;
        let clamped = wanted > self.not_after;
        params.not_before = not_before;
        params.not_after = if clamped { self.not_after } else { wanted };
        params.serial_number = Some(SerialNumber::from_slice(&serial));
        let cert = params.signed_by(public_key, &self.issuer)?;
        let der = cert.der().to_vec();
        Ok(Issued {
            sha256_hex: sha256_hex(&der),
            serial_hex: hex::encode(serial),
            not_before: params.not_before.unix_timestamp(),
            not_after: params.not_after.unix_timestamp(),
            der,
            clamped,
            issuer_generation: self.generation,
        })
    }
}

/// 16 random bytes with the top bit cleared: a positive 127-bit serial, well above the
/// 64 bits of entropy CA/B Forum rules ask for.
fn random_serial() -> Result<[u8; 16], CaError> {
    let mut serial = [0u8; 16];
    aws_lc_rs::rand::fill(&mut serial)
        .map_err(|_| CaError::Corrupt("system random generator failed".into()))?;
    serial[0] &= 0x7f;
    // A leading zero byte would be dropped by DER; keep the length fixed.
    serial[0] |= 0x01;
    Ok(serial)
}

/// Lowercase hex SHA-256, the fingerprint format used in records and output.
pub fn sha256_hex(data: &[u8]) -> String {
    hex::encode(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, data))
}

/// Lifetimes, algorithms and constraints of the CA hierarchy.
#[derive(Clone, Debug)]
pub struct HierarchySettings {
    /// Trust domain name, e.g. `example.org`.
    pub trust_domain: String,
    /// Root key algorithm.
    pub root_algorithm: KeyAlgorithm,
    /// Root lifetime.
    pub root_ttl: Duration,
    /// Issuing CA key algorithm.
    pub issuer_algorithm: KeyAlgorithm,
    /// Per-issuer key algorithms that differ from `issuer_algorithm`.
    pub issuer_algorithms: BTreeMap<String, KeyAlgorithm>,
    /// Issuing CA lifetime.
    pub issuer_ttl: Duration,
    /// DNS and IP name constraints of the control-plane CA (empty: none).
    pub control_plane_constraints: profiles::IssuerConstraints,
    /// Public base URL of the OCSP/CRL listener: issuing CAs then carry AIA and CDP
    /// pointing at the root's OCSP answers and CRL (`None`: no pointers).
    pub revocation_base_url: Option<String>,
}

impl HierarchySettings {
    /// Settings with defaults for everything but the trust domain and algorithms.
    pub fn new(
        trust_domain: &str,
        root_algorithm: KeyAlgorithm,
        issuer_algorithm: KeyAlgorithm,
    ) -> Self {
        HierarchySettings {
            trust_domain: trust_domain.to_string(),
            root_algorithm,
            root_ttl: Duration::from_secs(10 * 365 * 24 * 3600),
            issuer_algorithm,
            issuer_algorithms: BTreeMap::new(),
            issuer_ttl: Duration::from_secs(365 * 24 * 3600),
            control_plane_constraints: profiles::IssuerConstraints::default(),
            revocation_base_url: None,
        }
    }

    /// The key algorithm new generations of `issuer` get.
    pub fn algorithm_for(&self, issuer: &str) -> KeyAlgorithm {
        self.issuer_algorithms
            .get(issuer)
            .copied()
            .unwrap_or(self.issuer_algorithm)
    }

    fn constraints(&self, issuer: &str) -> profiles::IssuerConstraints {
        match issuer {
            WORKLOADS | SPIRE_UPSTREAM => profiles::IssuerConstraints {
                uri_host: Some(self.trust_domain.clone()),
                ..Default::default()
            },
            CONTROL_PLANE | ETCD => self.control_plane_constraints.clone(),
            _ => profiles::IssuerConstraints::default(),
        }
    }
}

fn path_len(issuer: &str) -> u8 {
    if issuer == SPIRE_UPSTREAM {
        1
    } else {
        0
    }
}

/// The published trust bundle: the root certificates relying parties trust, versioned.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BundleSnapshot {
    /// Increases on every change of `roots`.
    pub sequence: i64,
    /// Root certificates, DER, oldest generation first.
    pub roots: Vec<Vec<u8>>,
}

/// The CA hierarchy of one trust domain, with every generation of every CA.
///
/// Rotation adds generations; `active` picks, per issuer, the newest generation whose
/// preparation window has passed. Roots are published in the bundle from the moment they
/// are created and stay until the last certificate under them has expired.
pub struct Hierarchy {
    trust_domain: String,
    settings: HierarchySettings,
    generations: RwLock<BTreeMap<String, Vec<Arc<Authority>>>>,
    parents: RwLock<BTreeMap<(String, i64), i64>>,
    bundle: watch::Sender<Arc<BundleSnapshot>>,
}

fn now_unix() -> i64 {
    OffsetDateTime::now_utc().unix_timestamp()
}

impl Hierarchy {
    /// Loads the hierarchy from the store, or creates it (keys from `keys`) when the store has
    /// none; issuers missing from an older store are added under the active root. Creation
    /// writes the store only after every key and certificate exists.
    pub fn init_or_load(
        store: &Store,
        keys: &dyn IssuerKeys,
        settings: &HierarchySettings,
    ) -> Result<(Self, bool), CaError> {
        let (tx, _) = watch::channel(Arc::new(BundleSnapshot::default()));
        let hierarchy = Hierarchy {
            trust_domain: settings.trust_domain.clone(),
            settings: settings.clone(),
            generations: RwLock::new(BTreeMap::new()),
            parents: RwLock::new(BTreeMap::new()),
            bundle: tx,
        };
        let records = store.authorities()?;
        let created = records.is_empty();
        for rec in &records {
            let alg = KeyAlgorithm::from_name(&rec.algorithm).ok_or_else(|| {
                CaError::Corrupt(format!(
                    "{} has unknown algorithm {}",
                    rec.name, rec.algorithm
                ))
            })?;
            let signer = keys
                .backend_of_kind(&rec.backend)?
                .find(&rec.key_label, alg)?;
            hierarchy.add(rec, Arc::new(Authority::new(rec, signer)?))?;
        }
        let now = OffsetDateTime::now_utc();
        if created {
            hierarchy.create_generation(store, keys, &[ROOT], Duration::ZERO, now)?;
        } else {
            hierarchy.check_trust_domain()?;
            let missing: Vec<&str> = ISSUERS
                .iter()
                .copied()
                .filter(|n| !hierarchy.has(n))
                .collect();
            if !missing.is_empty() {
                hierarchy.create_generation(store, keys, &missing, Duration::ZERO, now)?;
            }
        }
        hierarchy.refresh_bundle(store, now.unix_timestamp())?;
        Ok((hierarchy, created))
    }

    fn has(&self, name: &str) -> bool {
        self.generations
            .read()
            .map(|g| g.get(name).is_some_and(|v| !v.is_empty()))
            .unwrap_or(false)
    }

    fn add(&self, rec: &AuthorityRecord, auth: Arc<Authority>) -> Result<(), CaError> {
        let mut gens = self.generations.write().map_err(|_| poisoned())?;
        let list = gens.entry(rec.name.clone()).or_default();
        list.push(auth);
        list.sort_by_key(|a| a.generation);
        if let Some(pg) = rec.parent_generation {
            self.parents
                .write()
                .map_err(|_| poisoned())?
                .insert((rec.name.clone(), rec.generation), pg);
        }
        Ok(())
    }

    /// Creates new generations. `names` containing `root` means a root rotation: a new root
    /// and a new generation of every issuing CA under it. All become active after
    /// `preparation`; until then the current ones keep signing.
    fn create_generation(
        &self,
        store: &Store,
        keys: &dyn IssuerKeys,
        names: &[&str],
        preparation: Duration,
        now: OffsetDateTime,
    ) -> Result<Vec<Arc<Authority>>, CaError> {
        let s = &self.settings;
        let td_id = format!("spiffe://{}", s.trust_domain);
        let activate_at = (now + preparation).unix_timestamp();
        let suffix = hex::encode(random_serial()?.get(..4).unwrap_or_default());
        let mut records = Vec::new();
        let mut authorities = Vec::new();

        let (root, issuers): (Arc<Authority>, Vec<&str>) = if names.contains(&ROOT) {
            let generation = self.next_generation(ROOT);
            let label = format!("keygrid-root-{generation}-{suffix}");
            let backend = keys.backend(ROOT);
            let key = backend.generate(&label, s.root_algorithm)?;
            let mut params = profiles::root_ca(&td_id)?;
            params.not_before = now - Duration::from_secs(60);
            params.not_after = now + s.root_ttl;
            params.serial_number = Some(SerialNumber::from_slice(&random_serial()?));
            let cert = params.self_signed(&crate::keys::RcgenSigner(key.as_ref()))?;
            let rec = AuthorityRecord {
                name: ROOT.into(),
                generation,
                parent: None,
                parent_generation: None,
                cert_der: cert.der().to_vec(),
                key_label: label,
                algorithm: s.root_algorithm.name().into(),
                backend: backend.kind().into(),
                activate_at,
            };
            let root = Arc::new(Authority::new(&rec, key)?);
            records.push(rec);
            authorities.push(root.clone());
            (root, ISSUERS.to_vec())
        } else {
            (self.active_at(ROOT, now.unix_timestamp())?, names.to_vec())
        };

        for name in issuers {
            let generation = self.next_generation(name);
            let label = format!("keygrid-{name}-{generation}-{suffix}");
            let backend = keys.backend(name);
            let algorithm = s.algorithm_for(name);
            let key = backend.generate(&label, algorithm)?;
            let mut params =
                profiles::issuing_ca(&td_id, name, path_len(name), &s.constraints(name))?;
            if let Some(base) = &s.revocation_base_url {
                crate::revocation::pointers::RevocationUrls::new(base).apply(&mut params, ROOT)?;
            }
            let issued = root.sign(params, &SharedSigner(key.clone()), s.issuer_ttl, now)?;
            let rec = AuthorityRecord {
                name: name.into(),
                generation,
                parent: Some(ROOT.into()),
                parent_generation: Some(root.generation),
                cert_der: issued.der,
                key_label: label,
                algorithm: algorithm.name().into(),
                backend: backend.kind().into(),
                activate_at,
            };
            authorities.push(Arc::new(Authority::new(&rec, key)?));
            records.push(rec);
        }
        store.insert_authorities(&records, now.unix_timestamp())?;
        for (rec, auth) in records.iter().zip(&authorities) {
            self.add(rec, auth.clone())?;
        }
        Ok(authorities)
    }

    fn next_generation(&self, name: &str) -> i64 {
        self.generations
            .read()
            .ok()
            .and_then(|g| g.get(name).and_then(|v| v.last()).map(|a| a.generation + 1))
            .unwrap_or(1)
    }

    /// Rotates `issuer` (or the root and everything under it): new keys and certificates,
    /// published now, used for signing after `preparation`. Returns the new generations.
    pub fn rotate(
        &self,
        store: &Store,
        keys: &dyn IssuerKeys,
        issuer: &str,
        preparation: Duration,
        now: OffsetDateTime,
    ) -> Result<Vec<Arc<Authority>>, CaError> {
        if issuer != ROOT && !ISSUERS.contains(&issuer) {
            return Err(CaError::InvalidRequest(format!(
                "unknown issuer {issuer:?}; issuers are root, {}",
                ISSUERS.join(", ")
            )));
        }
        let created = self.create_generation(store, keys, &[issuer], preparation, now)?;
        self.refresh_bundle(store, now.unix_timestamp())?;
        Ok(created)
    }

    /// Refuses to serve a hierarchy created for another trust domain.
    fn check_trust_domain(&self) -> Result<(), CaError> {
        let want = format!("spiffe://{}", self.trust_domain);
        let root = self.active_at(ROOT, now_unix())?;
        let (_, cert) = x509_parser::parse_x509_certificate(root.cert_der())
            .map_err(|e| CaError::Corrupt(format!("root certificate does not parse: {e}")))?;
        let has = cert
            .subject_alternative_name()
            .ok()
            .flatten()
            .map(|san| {
                san.value.general_names.iter().any(
                    |n| matches!(n, x509_parser::extensions::GeneralName::URI(u) if *u == want),
                )
            })
            .unwrap_or(false);
        if !has {
            return Err(CaError::Corrupt(format!(
                "the stored root CA was not created for trust domain {}; use the data directory of that trust domain",
                self.trust_domain
            )));
        }
        Ok(())
    }

    /// Checks DNS and IP names against `issuer`'s name constraints (the cluster's allowed
    /// names), so a name outside them is refused with a reason instead of producing a
    /// certificate that relying parties would reject.
    pub fn names_permitted(
        &self,
        issuer: &str,
        dns_names: &[String],
        ips: &[std::net::IpAddr],
    ) -> Result<(), String> {
        let c = self.settings.constraints(issuer);
        if !c.dns.is_empty() || !c.ips.is_empty() {
            for d in dns_names {
                let d = d.to_ascii_lowercase();
                let ok = c.dns.iter().any(|base| {
                    let base = base.trim_start_matches('.').to_ascii_lowercase();
                    d == base || d.ends_with(&format!(".{base}"))
                });
                if !ok {
                    return Err(format!(
                        "DNS name {d:?} is outside the {issuer} CA's allowed names ({})",
                        c.dns.join(", ")
                    ));
                }
            }
            for ip in ips {
                if !c
                    .ips
                    .iter()
                    .any(|(net, len)| profiles::ip_in(ip, net, *len))
                {
                    return Err(format!(
                        "IP address {ip} is outside the {issuer} CA's allowed ranges"
                    ));
                }
            }
        }
        Ok(())
    }

    /// The trust domain name.
    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    /// The generation of `name` that signs at `now`: the newest whose preparation window
    /// has passed (the oldest if, impossibly, none has).
    pub fn active_at(&self, name: &str, now: i64) -> Result<Arc<Authority>, CaError> {
        let gens = self.generations.read().map_err(|_| poisoned())?;
        let list = gens
            .get(name)
            .filter(|l| !l.is_empty())
            .ok_or_else(|| CaError::Corrupt(format!("no {name} CA in the hierarchy")))?;
        Ok(list
            .iter()
            .rev()
            .find(|a| a.activate_at <= now)
            .unwrap_or(&list[0])
            .clone())
    }

    fn active_now(&self, name: &str) -> Arc<Authority> {
        match self.active_at(name, now_unix()) {
            Ok(a) => a,
            // init_or_load guarantees every issuer exists; reaching this is a bug, and the
            // root is the safest thing to return (signing with it is refused by profiles).
            Err(e) => {
                tracing::error!(error = %e, "issuer missing from a loaded hierarchy");
                self.any_root()
            }
        }
    }

    fn any_root(&self) -> Arc<Authority> {
        self.generations
            .read()
            .ok()
            .and_then(|g| g.get(ROOT).and_then(|l| l.last().cloned()))
            .unwrap_or_else(|| unreachable!("a loaded hierarchy always has a root"))
    }

    /// The active root CA.
    pub fn root(&self) -> Arc<Authority> {
        self.active_now(ROOT)
    }

    /// The active issuer of X.509-SVIDs.
    pub fn workloads(&self) -> Arc<Authority> {
        self.active_now(WORKLOADS)
    }

    /// The active issuer of node and core serving certificates.
    pub fn nodes(&self) -> Arc<Authority> {
        self.active_now(NODES)
    }

    /// The active issuer of SPIRE servers' CAs.
    pub fn spire_upstream(&self) -> Arc<Authority> {
        self.active_now(SPIRE_UPSTREAM)
    }

    /// The active issuer of control-plane certificates.
    pub fn control_plane(&self) -> Arc<Authority> {
        self.active_now(CONTROL_PLANE)
    }

    /// The active front-proxy CA.
    pub fn front_proxy(&self) -> Arc<Authority> {
        self.active_now(FRONT_PROXY)
    }

    /// The active etcd CA.
    pub fn etcd(&self) -> Arc<Authority> {
        self.active_now(ETCD)
    }

    /// Every generation of every CA: roots first, then issuers by name, oldest first.
    pub fn authorities(&self) -> Vec<Arc<Authority>> {
        let gens = match self.generations.read() {
            Ok(g) => g,
            Err(_) => return Vec::new(),
        };
        let mut out: Vec<Arc<Authority>> = gens.get(ROOT).cloned().unwrap_or_default();
        for name in ISSUERS {
            out.extend(gens.get(name).cloned().unwrap_or_default());
        }
        out
    }

    /// All generations of one CA, oldest first (to find the one that signed a certificate).
    pub fn generations_of(&self, name: &str) -> Vec<Arc<Authority>> {
        self.generations
            .read()
            .ok()
            .and_then(|g| g.get(name).cloned())
            .unwrap_or_default()
    }

    /// The root generation an issuing CA generation was signed by.
    pub fn parent_generation(&self, name: &str, generation: i64) -> Option<i64> {
        self.parents
            .read()
            .ok()?
            .get(&(name.to_string(), generation))
            .copied()
    }

    /// The roots that belong in the bundle at `now`: every root not yet active (published
    /// ahead of use), the active one, and any older one while a certificate signed under
    /// it may still be presented.
    pub fn bundle_roots_at(&self, store: &Store, now: i64) -> Result<Vec<Vec<u8>>, CaError> {
        let active = self.active_at(ROOT, now)?;
        let mut roots = Vec::new();
        for root in self.generations_of(ROOT) {
            let keep = root.generation >= active.generation
                || self.has_live_leaves(store, root.generation, now)?;
            if keep && root.not_after().unix_timestamp() > now {
                roots.push(root.cert_der().to_vec());
            }
        }
        Ok(roots)
    }

    /// Whether anything signed under root generation `root_gen` is still valid at `now`.
    fn has_live_leaves(&self, store: &Store, root_gen: i64, now: i64) -> Result<bool, CaError> {
        for name in ISSUERS {
            for ca in self.generations_of(name) {
                if self.parent_generation(name, ca.generation) != Some(root_gen) {
                    continue;
                }
                // A CA of this root that still signs keeps the root, whatever it signed so far.
                if self.active_at(name, now)?.generation == ca.generation {
                    return Ok(true);
                }
                if store
                    .last_expiry_signed_by(name, ca.generation)?
                    .is_some_and(|t| t > now)
                {
                    return Ok(true);
                }
            }
        }
        Ok(false)
    }

    /// Recomputes the published bundle; subscribers see a new snapshot only on change.
    pub fn refresh_bundle(&self, store: &Store, now: i64) -> Result<Arc<BundleSnapshot>, CaError> {
        let roots = self.bundle_roots_at(store, now)?;
        let digest = sha256_hex(&roots.concat());
        let sequence = store.bundle_sequence(&digest, now)?;
        let snapshot = Arc::new(BundleSnapshot { sequence, roots });
        self.bundle.send_if_modified(|cur| {
            if **cur == *snapshot {
                false
            } else {
                *cur = snapshot.clone();
                true
            }
        });
        Ok(snapshot)
    }

    /// The trust bundle relying parties use now: root certificates, DER.
    pub fn bundle(&self) -> Vec<Vec<u8>> {
        self.bundle.borrow().roots.clone()
    }

    /// The current bundle with its sequence number.
    pub fn bundle_snapshot(&self) -> Arc<BundleSnapshot> {
        self.bundle.borrow().clone()
    }

    /// A receiver that sees every new bundle (for streaming it to agents and plugins).
    pub fn subscribe_bundle(&self) -> watch::Receiver<Arc<BundleSnapshot>> {
        self.bundle.subscribe()
    }
}

fn poisoned() -> CaError {
    CaError::Corrupt("hierarchy lock poisoned".into())
}

#[cfg(test)]
mod tests;
