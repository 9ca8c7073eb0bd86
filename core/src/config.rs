//! Core configuration: one TOML file, every field documented in `docs/configuration.md`.
//!
//! Unknown fields are errors (a typo must not silently fall back to a default), and parse
//! errors carry the line and column the `toml` crate reports.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::keys::KeyAlgorithm;

/// The whole `keygrid` core configuration file.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CoreConfig {
    /// Trust domain name, e.g. `example.org`; SPIFFE IDs are `spiffe://<trust_domain>/...`.
    pub trust_domain: String,
    /// Directory for the SQLite database, the admin socket and the published bundle.
    pub data_dir: PathBuf,
    /// Network endpoints.
    #[serde(default)]
    pub server: ServerConfig,
    /// The PKCS#11 token that holds the CA keys.
    #[serde(default)]
    pub hsm: HsmConfig,
    /// CA hierarchy algorithms and lifetimes.
    #[serde(default)]
    pub ca: CaConfig,
    /// Workload (X.509-SVID) issuance.
    #[serde(default)]
    pub workloads: WorkloadsConfig,
    /// Node (agent) attestation and credentials.
    #[serde(default)]
    pub nodes: NodesConfig,
    /// Issuance policy rules (`[[policy]]` tables), checked on every issuance path.
    #[serde(default)]
    pub policy: Vec<crate::policy::PolicyRule>,
    /// The HTTP listener for OCSP, CRLs and CA certificates (revocation).
    #[serde(default)]
    pub http: HttpConfig,
    /// Where issuers configured with `backend = "software"` keep their sealed keys.
    #[serde(default)]
    pub software_keys: SoftwareKeysConfig,
    /// Trust domains this one federates with (`[[federation]]` tables): their bundles go to
    /// every workload with the own one.
    #[serde(default)]
    pub federation: Vec<crate::federation::FederationConfig>,
    /// Where the store lives: embedded SQLite (default) or PostgreSQL.
    #[serde(default)]
    pub store: StoreConfig,
    /// The tamper-evident audit log.
    #[serde(default)]
    pub audit: AuditConfig,
    /// The EST enrollment server (RFC 7030); off unless `[est] listen` is set.
    #[serde(default)]
    pub est: crate::est::EstConfig,
    /// Kubernetes control plane: kubeadm certificates and service-account token signing.
    #[serde(default)]
    pub control_plane: ControlPlaneConfig,
}

/// Environment variable that carries the software backend's key-encryption key; it wins over
/// `software_keys.kek_file` so a secret store can inject it without touching files.
pub const SOFTWARE_KEK_ENV: &str = "KEYGRID_SOFTWARE_KEK";

/// The sealed software key backend, used only by issuers whose `[ca.issuers.<name>]` table
/// says `backend = "software"`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SoftwareKeysConfig {
    /// Directory of sealed key files (default `<data_dir>/sealed-keys`), created 0700.
    pub dir: Option<PathBuf>,
    /// File holding the 32-byte key-encryption key as 64 hex digits or base64, mode 0600.
    /// `KEYGRID_SOFTWARE_KEK` overrides it.
    pub kek_file: Option<PathBuf>,
}

/// Where an issuing CA's keys live.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendChoice {
    /// The PKCS#11 token of `[hsm]` (the default, and the only choice for the root).
    #[default]
    Pkcs11,
    /// Sealed software keys (`[software_keys]`), for short-lived issuers kept out of the HSM.
    Software,
}

/// Per-issuer settings that differ from the `[ca]` defaults.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IssuerOverride {
    /// Key backend for this issuer's new generations.
    pub backend: BackendChoice,
    /// Key algorithm for this issuer's new generations (default `ca.issuer_algorithm`).
    pub algorithm: Option<KeyAlgorithm>,
}

/// Store engine.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StoreEngine {
    /// Embedded SQLite file; zero setup, one core process.
    #[default]
    Sqlite,
    /// A PostgreSQL server; several core replicas may share it.
    Postgres,
}

/// The `[store]` section.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    /// `sqlite` (default) or `postgres`.
    pub engine: StoreEngine,
    /// SQLite database file; defaults to `<data_dir>/keygrid.db`.
    pub path: Option<PathBuf>,
    /// PostgreSQL connection URL without the password, e.g.
    /// `postgres://keygrid@db.example:5432/keygrid`.
    pub url: Option<String>,
    /// File whose first line is the PostgreSQL password (wins over `password_env`).
    pub password_file: Option<PathBuf>,
    /// Environment variable holding the PostgreSQL password, if set.
    pub password_env: String,
    /// CA certificate(s), PEM, that the PostgreSQL server's certificate must chain to;
    /// when set, connections use TLS (`sslmode=require` unless the URL says otherwise).
    pub tls_ca_file: Option<PathBuf>,
    /// Client certificate chain (PEM) core presents to PostgreSQL, so the database can
    /// authenticate it by certificate (`hostssl ... cert`) rather than by a password that
    /// has to be stored and rotated. Needs `tls_ca_file` and `tls_client_key_file`.
    pub tls_client_cert_file: Option<PathBuf>,
    /// Private key (PEM) of `tls_client_cert_file`; keep it readable by core only.
    pub tls_client_key_file: Option<PathBuf>,
    /// How long certificate rows of short-lived X.509-SVIDs are kept after they expire;
    /// their audit records are kept for good. Long-lived certificates are always kept.
    #[serde(with = "humantime_serde")]
    pub svid_retention: Duration,
}

/// Reads a file named by `[store] <field>`; the error names the field and the path, never
/// the contents (a key file's contents are secret).
fn read_store_file(path: &std::path::Path, field: &str) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("cannot read store.{field} {}: {e}", path.display()))
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            engine: StoreEngine::Sqlite,
            path: None,
            url: None,
            password_file: None,
            password_env: "KEYGRID_STORE_PASSWORD".into(),
            tls_ca_file: None,
            tls_client_cert_file: None,
            tls_client_key_file: None,
            svid_retention: Duration::from_secs(24 * 3600),
        }
    }
}

/// The `[audit]` section.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuditConfig {
    /// How often core signs a checkpoint of the audit chain with the audit key.
    #[serde(with = "humantime_serde")]
    pub checkpoint_interval: Duration,
    /// Label of the audit checkpoint key in the HSM (created on first start).
    pub key_label: String,
}

impl Default for AuditConfig {
    fn default() -> Self {
        AuditConfig {
            checkpoint_interval: Duration::from_secs(60),
            key_label: crate::store::audit::AUDIT_KEY_LABEL.into(),
        }
    }
}

/// Kubernetes control plane: lifetimes of kubeadm's certificates and the
/// ExternalJWTSigner for service-account tokens.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ControlPlaneConfig {
    /// Lifetime of kubeadm certificates when the request sets none (the brief: 24 h).
    #[serde(with = "humantime_serde")]
    pub cert_ttl: Duration,
    /// Unix socket of the ExternalJWTSigner (kube-apiserver's
    /// `--service-account-signing-endpoint`); off when unset.
    pub signer_socket: Option<PathBuf>,
    /// `iss` of service-account tokens, for the OIDC discovery document served on the
    /// HTTP listener (must equal kube-apiserver's `--service-account-issuer`).
    pub issuer: Option<String>,
    /// Algorithm of the service-account signing key, created in the HSM.
    pub sa_key_algorithm: KeyAlgorithm,
    /// How often the signing key is replaced (the old one keeps verifying).
    #[serde(with = "humantime_serde")]
    pub sa_key_rotation: Duration,
    /// Longest token lifetime the signer accepts (Metadata); at least 10m. A replaced key
    /// is published until this long after its replacement.
    #[serde(with = "humantime_serde")]
    pub max_token_expiration: Duration,
    /// How often kube-apiserver should fetch the keys again (FetchKeys refresh hint).
    #[serde(with = "humantime_serde")]
    pub keys_refresh_hint: Duration,
    /// PEM public-key files of the cluster's former `--service-account-key-file` (e.g.
    /// kubeadm's `sa.pub`): published in FetchKeys as verification-only keys so tokens
    /// signed before moving to the external signer stay valid.
    pub legacy_key_files: Vec<PathBuf>,
}

impl Default for ControlPlaneConfig {
    fn default() -> Self {
        ControlPlaneConfig {
            cert_ttl: Duration::from_secs(24 * 3600),
            signer_socket: None,
            issuer: None,
            sa_key_algorithm: KeyAlgorithm::EcdsaP256,
            sa_key_rotation: Duration::from_secs(30 * 24 * 3600),
            max_token_expiration: Duration::from_secs(24 * 3600),
            keys_refresh_hint: Duration::from_secs(60),
            legacy_key_files: Vec::new(),
        }
    }
}

/// The HTTP listener: OCSP responder, CRLs, CA certificates. Off unless `listen` is set.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Plain-HTTP listen address (OCSP and CRLs are signed objects and are served over
    /// HTTP by convention, RFC 5280 §4.2.1.13 / RFC 6960 App. A).
    pub listen: Option<SocketAddr>,
    /// URL relying parties reach the listener at, written into certificates' AIA and CDP;
    /// defaults to `http://<listen>`.
    pub public_url: Option<String>,
    /// How long an OCSP answer is valid (thisUpdate to nextUpdate); cached answers are
    /// re-signed after half of it.
    #[serde(with = "humantime_serde")]
    pub ocsp_response_validity: Duration,
    /// Lifetime of each delegated OCSP responder certificate; rotated at half-life.
    #[serde(with = "humantime_serde")]
    pub ocsp_responder_cert_ttl: Duration,
    /// Key type of the delegated OCSP responder (`ecdsa-p256` or `ecdsa-p384`).
    pub ocsp_responder_algorithm: KeyAlgorithm,
    /// How long a CRL is valid (thisUpdate to nextUpdate); re-published after half of it
    /// and on every revocation.
    #[serde(with = "humantime_serde")]
    pub crl_validity: Duration,
    /// Validity of delta CRLs. Set it to publish them: each revocation then goes into a new
    /// delta CRL (served at `/crl/<issuer>-delta.crl`, named by complete CRLs' Freshest CRL
    /// extension) and complete CRLs follow `crl_validity` alone. Unset (default): no deltas,
    /// a complete CRL on every revocation.
    #[serde(default, with = "humantime_serde")]
    pub delta_crl_validity: Option<Duration>,
    /// How often the responder looks for new revocations (made by another process),
    /// rotates certificates and refreshes cached answers.
    #[serde(with = "humantime_serde")]
    pub maintenance_interval: Duration,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            listen: None,
            public_url: None,
            ocsp_response_validity: Duration::from_secs(3600),
            ocsp_responder_cert_ttl: Duration::from_secs(24 * 3600),
            ocsp_responder_algorithm: KeyAlgorithm::EcdsaP256,
            crl_validity: Duration::from_secs(24 * 3600),
            delta_crl_validity: None,
            maintenance_interval: Duration::from_secs(1),
        }
    }
}

impl HttpConfig {
    /// The public base URL, if the listener is on.
    pub fn public_base(&self) -> Option<String> {
        match (&self.public_url, self.listen) {
            (Some(u), _) => Some(u.clone()),
            (None, Some(addr)) => Some(format!("http://{addr}")),
            (None, None) => None,
        }
    }
}

/// Network endpoints of core.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// TLS listener for the node API.
    pub listen: SocketAddr,
    /// Admin Unix socket; defaults to `<data_dir>/admin.sock`.
    pub admin_socket: Option<PathBuf>,
    /// DNS names in core's serving certificate.
    pub dns_names: Vec<String>,
    /// IP addresses in core's serving certificate.
    pub ip_addresses: Vec<IpAddr>,
    /// Lifetime of core's serving certificate; renewed at half-life.
    #[serde(with = "humantime_serde")]
    pub serving_cert_ttl: Duration,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: SocketAddr::from((Ipv4Addr::LOCALHOST, 8081)),
            admin_socket: None,
            dns_names: vec!["localhost".into()],
            ip_addresses: vec![IpAddr::V4(Ipv4Addr::LOCALHOST)],
            serving_cert_ttl: Duration::from_secs(24 * 3600),
        }
    }
}

/// The PKCS#11 token holding CA keys.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HsmConfig {
    /// Path of the PKCS#11 module.
    pub module: PathBuf,
    /// Label of the token.
    pub token_label: String,
    /// File whose first line is the user PIN. Takes precedence over `pin_env`.
    pub pin_file: Option<PathBuf>,
    /// Environment variable holding the user PIN.
    pub pin_env: String,
}

impl Default for HsmConfig {
    fn default() -> Self {
        HsmConfig {
            module: PathBuf::from("/usr/lib/softhsm/libsofthsm2.so"),
            token_label: "keygrid".into(),
            pin_file: None,
            pin_env: "KEYGRID_HSM_PIN".into(),
        }
    }
}

/// Algorithms and lifetimes of the CA hierarchy, used when it is first created.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CaConfig {
    /// Root key algorithm.
    pub root_algorithm: KeyAlgorithm,
    /// Root lifetime.
    #[serde(with = "humantime_serde")]
    pub root_ttl: Duration,
    /// Issuing CA key algorithm.
    pub issuer_algorithm: KeyAlgorithm,
    /// Issuing CA lifetime.
    #[serde(with = "humantime_serde")]
    pub issuer_ttl: Duration,
    /// How long a rotated CA is published before it signs (`keygrid ca rotate` default).
    #[serde(with = "humantime_serde")]
    pub rotation_preparation: Duration,
    /// DNS name constraints of the control-plane CA, e.g. `["cluster.local", "example.internal"]`.
    pub control_plane_dns: Vec<String>,
    /// IP name constraints of the control-plane CA, CIDR, e.g. `["10.96.0.0/12"]`.
    pub control_plane_ips: Vec<String>,
    /// Per-issuer overrides, `[ca.issuers.<name>]` with `backend` and `algorithm`. Changes
    /// apply to generations created afterwards; existing keys stay where they were made.
    pub issuers: std::collections::BTreeMap<String, IssuerOverride>,
}

impl Default for CaConfig {
    fn default() -> Self {
        CaConfig {
            root_algorithm: KeyAlgorithm::EcdsaP384,
            root_ttl: Duration::from_secs(10 * 365 * 24 * 3600),
            issuer_algorithm: KeyAlgorithm::EcdsaP384,
            issuer_ttl: Duration::from_secs(365 * 24 * 3600),
            rotation_preparation: Duration::from_secs(3600),
            control_plane_dns: Vec::new(),
            control_plane_ips: Vec::new(),
            issuers: Default::default(),
        }
    }
}

/// Parses `10.0.0.0/8` or `fd00::/8` into an address and prefix length.
pub fn parse_cidr(s: &str) -> Result<(IpAddr, u8), String> {
    let (addr, prefix) = s
        .split_once('/')
        .ok_or_else(|| format!("{s:?} is not CIDR notation (address/prefix)"))?;
    let addr: IpAddr = addr.parse().map_err(|_| format!("{s:?}: bad IP address"))?;
    let prefix: u8 = prefix
        .parse()
        .map_err(|_| format!("{s:?}: bad prefix length"))?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    if prefix > max {
        return Err(format!("{s:?}: prefix longer than {max}"));
    }
    Ok((addr, prefix))
}

/// X.509-SVID issuance.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WorkloadsConfig {
    /// Lifetime of an X.509-SVID when the entry sets none.
    #[serde(with = "humantime_serde")]
    pub default_svid_ttl: Duration,
    /// Upper bound on any entry's requested lifetime.
    #[serde(with = "humantime_serde")]
    pub max_svid_ttl: Duration,
    /// Lifetime of a JWT-SVID.
    #[serde(with = "humantime_serde")]
    pub jwt_svid_ttl: Duration,
    /// Algorithm of the JWT-SVID signing key, created in the HSM on first start
    /// (`ecdsa-p256` signs ES256, `ecdsa-p384` ES384).
    pub jwt_algorithm: KeyAlgorithm,
    /// Whether agents may mint a pod's default identity
    /// `spiffe://<td>/ns/<namespace>/sa/<service-account>` without a registration entry.
    pub default_identities: bool,
}

impl Default for WorkloadsConfig {
    fn default() -> Self {
        WorkloadsConfig {
            default_svid_ttl: Duration::from_secs(300),
            max_svid_ttl: Duration::from_secs(3600),
            jwt_svid_ttl: Duration::from_secs(300),
            jwt_algorithm: KeyAlgorithm::EcdsaP256,
            default_identities: true,
        }
    }
}

/// Node attestation and node credentials.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NodesConfig {
    /// Lifetime of a node certificate; agents renew at half-life.
    #[serde(with = "humantime_serde")]
    pub cert_ttl: Duration,
    /// How long a join token stays redeemable when the operator sets no TTL.
    #[serde(with = "humantime_serde")]
    pub join_token_ttl: Duration,
}

impl Default for NodesConfig {
    fn default() -> Self {
        NodesConfig {
            cert_ttl: Duration::from_secs(24 * 3600),
            join_token_ttl: Duration::from_secs(3600),
        }
    }
}

/// Errors reading the configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The TOML is malformed or has unknown/ill-typed fields (message carries line/column).
    #[error("{path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's message, with position.
        message: String,
    },
    /// A value is well-formed but not acceptable.
    #[error("{path}: {message}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
}

impl CoreConfig {
    /// Reads and validates a configuration file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text, path)
    }

    /// Parses and validates configuration text; `path` is used only in messages.
    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let mut cfg: CoreConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        let invalid = |message: String| ConfigError::Invalid {
            path: path.to_path_buf(),
            message,
        };
        spiffe::TrustDomain::new(&cfg.trust_domain)
            .map_err(|e| invalid(format!("trust_domain {:?}: {e}", cfg.trust_domain)))?;
        if cfg.workloads.default_svid_ttl.is_zero() {
            return Err(invalid(
                "workloads.default_svid_ttl must be greater than zero".into(),
            ));
        }
        if cfg.workloads.default_svid_ttl > cfg.workloads.max_svid_ttl {
            return Err(invalid(
                "workloads.default_svid_ttl is longer than workloads.max_svid_ttl".into(),
            ));
        }
        if cfg.nodes.cert_ttl < Duration::from_secs(60) {
            return Err(invalid("nodes.cert_ttl must be at least 1m".into()));
        }
        if cfg.server.serving_cert_ttl < Duration::from_secs(60) {
            return Err(invalid(
                "server.serving_cert_ttl must be at least 1m".into(),
            ));
        }
        let cp = &cfg.control_plane;
        if cp.cert_ttl < Duration::from_secs(10) {
            return Err(invalid(
                "control_plane.cert_ttl must be at least 10s".into(),
            ));
        }
        if cp.max_token_expiration < Duration::from_secs(600) {
            return Err(invalid(
                "control_plane.max_token_expiration must be at least 10m (kube-apiserver refuses less)".into(),
            ));
        }
        if cp.sa_key_rotation < Duration::from_secs(1)
            || cp.keys_refresh_hint < Duration::from_secs(1)
        {
            return Err(invalid(
                "control_plane.sa_key_rotation and control_plane.keys_refresh_hint must be at least 1s".into(),
            ));
        }
        if let Some(u) = &cp.issuer {
            if !u.starts_with("https://") && !u.starts_with("http://") {
                return Err(invalid(format!("control_plane.issuer {u:?} must be a URL")));
            }
        }
        let h = &cfg.http;
        if h.ocsp_responder_cert_ttl < Duration::from_secs(10) {
            return Err(invalid(
                "http.ocsp_responder_cert_ttl must be at least 10s".into(),
            ));
        }
        if h.ocsp_response_validity < Duration::from_secs(2)
            || h.crl_validity < Duration::from_secs(2)
        {
            return Err(invalid(
                "http.ocsp_response_validity and http.crl_validity must be at least 2s".into(),
            ));
        }
        if let Some(d) = h.delta_crl_validity {
            if d < Duration::from_secs(2) || d > h.crl_validity {
                return Err(invalid(
                    "http.delta_crl_validity must be at least 2s and no longer than http.crl_validity".into(),
                ));
            }
        }
        if h.maintenance_interval < Duration::from_millis(100) {
            return Err(invalid(
                "http.maintenance_interval must be at least 100ms".into(),
            ));
        }
        if let Some(u) = &h.public_url {
            if !(u.starts_with("http://") || u.starts_with("https://")) || !u.is_ascii() {
                return Err(invalid(format!(
                    "http.public_url {u:?} must be an http:// or https:// URL"
                )));
            }
        }
        if let Err(e) = crate::policy::Policy::new(cfg.policy.clone()) {
            // Point at the `[[policy]]` table the error names (policy[i]).
            let index = e
                .split_once("policy[")
                .and_then(|(_, rest)| rest.split_once(']'))
                .and_then(|(i, _)| i.parse::<usize>().ok());
            let line = index.and_then(|i| {
                text.lines()
                    .enumerate()
                    .filter(|(_, l)| l.trim_start().starts_with("[[policy]]"))
                    .nth(i)
                    .map(|(n, _)| n + 1)
            });
            return Err(invalid(match line {
                Some(n) => format!("line {n}: {e}"),
                None => e,
            }));
        }
        cfg.est.validate().map_err(invalid)?;
        for c in &cfg.ca.control_plane_ips {
            parse_cidr(c).map_err(|e| invalid(format!("ca.control_plane_ips: {e}")))?;
        }
        for d in &cfg.ca.control_plane_dns {
            if d.is_empty() || d.contains(['/', ' ', '*']) {
                return Err(invalid(format!(
                    "ca.control_plane_dns: {d:?} is not a DNS name"
                )));
            }
        }
        for (name, o) in &cfg.ca.issuers {
            if name == crate::ca::ROOT {
                return Err(invalid(
                    "ca.issuers.root: the root's key stays in the HSM; set its algorithm with ca.root_algorithm".into(),
                ));
            }
            if !crate::ca::ISSUERS.contains(&name.as_str()) {
                return Err(invalid(format!(
                    "ca.issuers.{name}: unknown issuer; issuers are {}",
                    crate::ca::ISSUERS.join(", ")
                )));
            }
            if o.backend == BackendChoice::Software
                && cfg.software_keys.kek_file.is_none()
                && std::env::var_os(SOFTWARE_KEK_ENV).is_none()
            {
                return Err(invalid(format!(
                    "ca.issuers.{name} uses the software backend but neither software_keys.kek_file nor {SOFTWARE_KEK_ENV} is set"
                )));
            }
        }
        if cfg
            .control_plane
            .sa_key_algorithm
            .ecdsa_scalar_len()
            .is_none()
        {
            return Err(invalid(format!(
                "control_plane.sa_key_algorithm {} is not allowed: service-account tokens are signed ES256 or ES384 (ecdsa-p256, ecdsa-p384)",
                cfg.control_plane.sa_key_algorithm
            )));
        }
        if cfg.workloads.jwt_algorithm.ecdsa_scalar_len().is_none() {
            return Err(invalid(format!(
                "workloads.jwt_algorithm {} is not allowed: JWT-SVIDs are signed ES256 or ES384 (ecdsa-p256, ecdsa-p384)",
                cfg.workloads.jwt_algorithm
            )));
        }
        if cfg.data_dir.is_relative() {
            // Relative paths are taken from the config file's directory, not the caller's cwd.
            if let Some(base) = path.parent() {
                cfg.data_dir = base.join(&cfg.data_dir);
            }
        }
        if let Some(base) = path.parent() {
            for f in &mut cfg.federation {
                if f.bundle_file.is_relative() {
                    f.bundle_file = base.join(&f.bundle_file);
                }
            }
            let (sk, st) = (&mut cfg.software_keys, &mut cfg.store);
            for p in [
                &mut sk.dir,
                &mut sk.kek_file,
                &mut st.path,
                &mut st.password_file,
                &mut st.tls_ca_file,
                &mut st.tls_client_cert_file,
                &mut st.tls_client_key_file,
            ]
            .into_iter()
            .flatten()
            {
                if p.is_relative() {
                    *p = base.join(&*p);
                }
            }
        }
        match cfg.store.engine {
            StoreEngine::Sqlite if cfg.store.url.is_some() => {
                return Err(invalid(
                    "store.url is set but store.engine is sqlite; set engine = \"postgres\"".into(),
                ))
            }
            StoreEngine::Postgres => {
                let url =
                    cfg.store.url.as_deref().ok_or_else(|| {
                        invalid("store.engine = \"postgres\" needs store.url".into())
                    })?;
                let pg: tokio_postgres::Config = url.parse().map_err(|e| {
                    // The URL is not echoed: it might hold a password after all.
                    invalid(format!("store.url is not a PostgreSQL URL: {e}"))
                })?;
                if pg.get_password().is_some() {
                    return Err(invalid(
                        "store.url must not hold the password; use store.password_file or store.password_env".into(),
                    ));
                }
                let st = &cfg.store;
                match (&st.tls_client_cert_file, &st.tls_client_key_file) {
                    (Some(_), None) | (None, Some(_)) => {
                        return Err(invalid(
                            "store.tls_client_cert_file and store.tls_client_key_file go together"
                                .into(),
                        ))
                    }
                    (Some(_), Some(_)) if st.tls_ca_file.is_none() => return Err(invalid(
                        "store.tls_client_cert_file needs store.tls_ca_file (TLS to the database)"
                            .into(),
                    )),
                    _ => {}
                }
            }
            StoreEngine::Sqlite => {}
        }
        Ok(cfg)
    }

    /// Issuers whose new keys go to the sealed software backend.
    pub fn software_issuers(&self) -> Vec<String> {
        self.ca
            .issuers
            .iter()
            .filter(|(_, o)| o.backend == BackendChoice::Software)
            .map(|(n, _)| n.clone())
            .collect()
    }

    /// The software backend's key-encryption key: `KEYGRID_SOFTWARE_KEK`, else the KEK file;
    /// `None` when neither is configured.
    pub fn software_kek(&self) -> Result<Option<crate::keys::sealed::Kek>, crate::keys::KeyError> {
        use crate::keys::sealed::Kek;
        if let Ok(v) = std::env::var(SOFTWARE_KEK_ENV) {
            return Kek::parse(&v, SOFTWARE_KEK_ENV).map(Some);
        }
        match &self.software_keys.kek_file {
            Some(p) => Kek::from_file(p).map(Some),
            None => Ok(None),
        }
    }

    /// Directory of sealed software keys.
    pub fn sealed_keys_dir(&self) -> PathBuf {
        self.software_keys
            .dir
            .clone()
            .unwrap_or_else(|| self.data_dir.join("sealed-keys"))
    }

    /// The compiled policy (validated when the file was parsed).
    pub fn compiled_policy(&self) -> crate::policy::Policy {
        crate::policy::Policy::new(self.policy.clone()).unwrap_or_default()
    }

    /// The CA hierarchy settings this configuration asks for.
    pub fn hierarchy_settings(&self) -> crate::ca::HierarchySettings {
        let mut s = crate::ca::HierarchySettings::new(
            &self.trust_domain,
            self.ca.root_algorithm,
            self.ca.issuer_algorithm,
        );
        s.root_ttl = self.ca.root_ttl;
        s.issuer_ttl = self.ca.issuer_ttl;
        s.issuer_algorithms = self
            .ca
            .issuers
            .iter()
            .filter_map(|(name, o)| o.algorithm.map(|a| (name.clone(), a)))
            .collect();
        s.revocation_base_url = self.http.public_base();
        s.control_plane_constraints = crate::ca::profiles::IssuerConstraints {
            uri_host: None,
            dns: self.ca.control_plane_dns.clone(),
            // Validated in `parse`.
            ips: self
                .ca
                .control_plane_ips
                .iter()
                .filter_map(|c| parse_cidr(c).ok())
                .collect(),
        };
        s
    }

    /// The admin socket path.
    pub fn admin_socket(&self) -> PathBuf {
        self.server
            .admin_socket
            .clone()
            .unwrap_or_else(|| self.data_dir.join("admin.sock"))
    }

    /// The SQLite database path.
    pub fn database_path(&self) -> PathBuf {
        self.store
            .path
            .clone()
            .unwrap_or_else(|| self.data_dir.join("keygrid.db"))
    }

    /// Where the store is, with the PostgreSQL password read from its file or variable.
    pub fn store_location(&self) -> Result<crate::store::StoreLocation, String> {
        match self.store.engine {
            StoreEngine::Sqlite => Ok(crate::store::StoreLocation::Sqlite(self.database_path())),
            StoreEngine::Postgres => {
                let url = self.store.url.as_deref().unwrap_or_default();
                let mut pg: tokio_postgres::Config = url
                    .parse()
                    .map_err(|e| format!("store.url is not a PostgreSQL URL: {e}"))?;
                if let Some(file) = &self.store.password_file {
                    let text = std::fs::read_to_string(file).map_err(|e| {
                        format!("cannot read store password file {}: {e}", file.display())
                    })?;
                    pg.password(text.lines().next().unwrap_or("").trim());
                } else if let Ok(pw) = std::env::var(&self.store.password_env) {
                    pg.password(pw);
                }
                pg.application_name("keygrid");
                match &self.store.tls_ca_file {
                    None => Ok(crate::store::StoreLocation::Postgres(Box::new(pg))),
                    Some(file) => {
                        let pem = std::fs::read(file).map_err(|e| {
                            format!("cannot read store.tls_ca_file {}: {e}", file.display())
                        })?;
                        let client = match (
                            &self.store.tls_client_cert_file,
                            &self.store.tls_client_key_file,
                        ) {
                            (Some(c), Some(k)) => Some((
                                read_store_file(c, "tls_client_cert_file")?,
                                read_store_file(k, "tls_client_key_file")?,
                            )),
                            _ => None,
                        };
                        let tls = crate::store::pg_tls::MakeRustls::new(
                            &pem,
                            client.as_ref().map(|(c, k)| (c.as_slice(), k.as_slice())),
                        )
                        .map_err(|e| format!("store TLS ({}): {e}", file.display()))?;
                        if pg.get_ssl_mode() == tokio_postgres::config::SslMode::Prefer {
                            pg.ssl_mode(tokio_postgres::config::SslMode::Require);
                        }
                        Ok(crate::store::StoreLocation::PostgresTls(Box::new(pg), tls))
                    }
                }
            }
        }
    }

    /// A human-readable description of the store location, without secrets.
    pub fn store_description(&self) -> String {
        match self.store.engine {
            StoreEngine::Sqlite => format!("sqlite {}", self.database_path().display()),
            StoreEngine::Postgres => {
                format!("postgres {}", self.store.url.as_deref().unwrap_or_default())
            }
        }
    }

    /// Where core publishes the trust bundle (PEM) for bootstrapping agents.
    pub fn bundle_path(&self) -> PathBuf {
        self.data_dir.join("bundle.pem")
    }

    /// Reads the HSM user PIN from the configured file or environment variable.
    pub fn hsm_pin(&self) -> Result<String, String> {
        if let Some(file) = &self.hsm.pin_file {
            let text = std::fs::read_to_string(file)
                .map_err(|e| format!("cannot read HSM PIN file {}: {e}", file.display()))?;
            let pin = text.lines().next().unwrap_or("").trim().to_string();
            if pin.is_empty() {
                return Err(format!("HSM PIN file {} is empty", file.display()));
            }
            return Ok(pin);
        }
        std::env::var(&self.hsm.pin_env).map_err(|_| {
            format!(
                "no HSM PIN: set hsm.pin_file or the {} environment variable",
                self.hsm.pin_env
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minimal_config_gets_defaults() {
        let cfg = CoreConfig::parse(
            "trust_domain = \"example.org\"\ndata_dir = \"/var/lib/keygrid\"\n",
            Path::new("/etc/keygrid/core.toml"),
        )
        .unwrap();
        assert_eq!(cfg.workloads.default_svid_ttl, Duration::from_secs(300));
        assert_eq!(cfg.ca.root_algorithm, KeyAlgorithm::EcdsaP384);
        assert_eq!(
            cfg.admin_socket(),
            PathBuf::from("/var/lib/keygrid/admin.sock")
        );
    }

    #[test]
    fn unknown_field_is_reported_with_its_line() {
        let err = CoreConfig::parse(
            "trust_domain = \"example.org\"\ndata_dir = \"/d\"\n[workloads]\nsvid_tll = \"5m\"\n",
            Path::new("core.toml"),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("svid_tll"), "{err}");
        assert!(err.contains("line 4"), "{err}");
    }

    #[test]
    fn http_section_defaults_and_checks() {
        let cfg = CoreConfig::parse(
            "trust_domain = \"example.org\"\ndata_dir = \"/d\"\n[http]\nlisten = \"127.0.0.1:8082\"\n",
            Path::new("core.toml"),
        )
        .unwrap();
        assert_eq!(
            cfg.http.public_base().as_deref(),
            Some("http://127.0.0.1:8082")
        );
        assert_eq!(cfg.http.ocsp_responder_algorithm, KeyAlgorithm::EcdsaP256);
        let err = CoreConfig::parse(
            "trust_domain = \"example.org\"\ndata_dir = \"/d\"\n[http]\npublic_url = \"ftp://x\"\n",
            Path::new("core.toml"),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("public_url"), "{err}");
    }

    #[test]
    fn bad_trust_domain_is_refused() {
        let err = CoreConfig::parse(
            "trust_domain = \"Not A Domain\"\ndata_dir = \"/d\"\n",
            Path::new("core.toml"),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("trust_domain"), "{err}");
    }

    #[test]
    fn policy_errors_point_at_the_rule_line() {
        let text = "trust_domain = \"example.org\"\ndata_dir = \"/d\"\n\n[[policy]]\nprofiles = [\"*\"]\n\n[[policy]]\nname = \"keys\"\nprofiles = [\"x509-svid\"]\nallowed_keys = [\"rsa-1024\"]\n";
        let err = CoreConfig::parse(text, Path::new("core.toml"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("line 7") && err.contains("keys") && err.contains("rsa-1024"),
            "{err}"
        );
        let typo = "trust_domain = \"example.org\"\ndata_dir = \"/d\"\n[[policy]]\nprofiles = [\"*\"]\nmax_tll = \"1h\"\n";
        let err = CoreConfig::parse(typo, Path::new("core.toml"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("max_tll") && err.contains("line 5"), "{err}");
    }

    #[test]
    fn per_issuer_backends_and_algorithms() {
        let base = "trust_domain = \"example.org\"\ndata_dir = \"/d\"\n";
        let parse =
            |extra: &str| CoreConfig::parse(&format!("{base}{extra}"), Path::new("/etc/k.toml"));
        let cfg = parse(
            "[software_keys]\nkek_file = \"kek\"\n[ca.issuers.workloads]\nbackend = \"software\"\nalgorithm = \"ed25519\"\n[ca.issuers.nodes]\nalgorithm = \"rsa-3072\"\n",
        )
        .unwrap();
        assert_eq!(cfg.software_issuers(), vec!["workloads".to_string()]);
        assert_eq!(cfg.software_keys.kek_file, Some(PathBuf::from("/etc/kek")));
        assert_eq!(cfg.sealed_keys_dir(), PathBuf::from("/d/sealed-keys"));
        let s = cfg.hierarchy_settings();
        assert_eq!(s.algorithm_for("workloads"), KeyAlgorithm::Ed25519);
        assert_eq!(s.algorithm_for("nodes"), KeyAlgorithm::Rsa3072);
        assert_eq!(s.algorithm_for("control-plane"), KeyAlgorithm::EcdsaP384);

        let err = |extra: &str| parse(extra).unwrap_err().to_string();
        let e = err("[ca.issuers.root]\nalgorithm = \"ed25519\"\n");
        assert!(e.contains("stays in the HSM"), "{e}");
        let e = err("[ca.issuers.kitchen]\nalgorithm = \"ed25519\"\n");
        assert!(e.contains("unknown issuer"), "{e}");
        if std::env::var_os(SOFTWARE_KEK_ENV).is_none() {
            let e = err("[ca.issuers.nodes]\nbackend = \"software\"\n");
            assert!(e.contains("kek_file"), "{e}");
        }
        let e = err("[ca.issuers.nodes]\nalgorithm = \"rsa-2048\"\n");
        assert!(e.contains("rsa-2048"), "{e}");
        let e = err("[workloads]\njwt_algorithm = \"ed25519\"\n");
        assert!(e.contains("ES256"), "{e}");
    }

    #[test]
    fn store_section_chooses_the_engine_and_keeps_passwords_out_of_the_url() {
        let base = "trust_domain = \"example.org\"\ndata_dir = \"/d\"\n";
        let cfg = CoreConfig::parse(base, Path::new("/etc/keygrid/core.toml")).unwrap();
        assert_eq!(cfg.store.engine, StoreEngine::Sqlite);
        assert_eq!(cfg.database_path(), PathBuf::from("/d/keygrid.db"));
        let pg = format!(
            "{base}[store]\nengine = \"postgres\"\nurl = \"postgres://kg@127.0.0.1:5432/kg\"\npassword_env = \"KEYGRID_TEST_PG_PW_UNSET\"\n"
        );
        let cfg = CoreConfig::parse(&pg, Path::new("/etc/keygrid/core.toml")).unwrap();
        assert!(matches!(
            cfg.store_location().unwrap(),
            crate::store::StoreLocation::Postgres(_)
        ));
        let with_pw = format!(
            "{base}[store]\nengine = \"postgres\"\nurl = \"postgres://kg:hunter2@127.0.0.1/kg\"\n"
        );
        let err = CoreConfig::parse(&with_pw, Path::new("/c.toml"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("must not hold the password"), "{err}");
        assert!(!err.contains("hunter2"), "{err}");
        let no_url = format!("{base}[store]\nengine = \"postgres\"\n");
        assert!(CoreConfig::parse(&no_url, Path::new("/c.toml")).is_err());
    }

    #[test]
    fn store_tls_ca_file_is_read_relative_to_the_config() {
        let dir = tempfile::tempdir().unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let ca = rcgen::CertificateParams::new(Vec::<String>::new())
            .unwrap()
            .self_signed(&key)
            .unwrap();
        std::fs::write(dir.path().join("pg-ca.pem"), ca.pem()).unwrap();
        std::fs::write(dir.path().join("empty.pem"), "").unwrap();
        let text = |ca: &str| {
            format!(
                "trust_domain = \"example.org\"\ndata_dir = \"/d\"\n[store]\nengine = \"postgres\"\n\
                 url = \"postgres://kg@db.example.org/kg\"\ntls_ca_file = \"{ca}\"\n"
            )
        };
        let path = dir.path().join("core.toml");
        let cfg = CoreConfig::parse(&text("pg-ca.pem"), &path).unwrap();
        assert_eq!(cfg.store.tls_ca_file, Some(dir.path().join("pg-ca.pem")));
        match cfg.store_location().unwrap() {
            crate::store::StoreLocation::PostgresTls(pg, _) => {
                assert_eq!(pg.get_ssl_mode(), tokio_postgres::config::SslMode::Require)
            }
            other => panic!("expected TLS, got {other:?}"),
        }
        let cfg = CoreConfig::parse(&text("empty.pem"), &path).unwrap();
        let err = cfg.store_location().unwrap_err();
        assert!(err.contains("no CERTIFICATE"), "{err}");
    }

    #[test]
    fn store_client_certificates_come_in_pairs_and_bad_keys_say_so_without_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(Vec::<String>::new())
            .unwrap()
            .self_signed(&key)
            .unwrap();
        std::fs::write(dir.path().join("ca.pem"), cert.pem()).unwrap();
        std::fs::write(dir.path().join("client.pem"), cert.pem()).unwrap();
        std::fs::write(dir.path().join("client.key"), key.serialize_pem()).unwrap();
        let secret =
            "-----BEGIN PRIVATE KEY-----\nc2VjcmV0LWtleS1ieXRlcw==\n-----END PRIVATE KEY-----\n";
        std::fs::write(dir.path().join("bad.key"), secret).unwrap();
        let text = |extra: &str| {
            format!(
                "trust_domain = \"example.org\"\ndata_dir = \"/d\"\n[store]\nengine = \"postgres\"\n\
                 url = \"postgres://kg@db.example.org/kg\"\n{extra}"
            )
        };
        let path = dir.path().join("core.toml");
        let ok = text(
            "tls_ca_file = \"ca.pem\"\ntls_client_cert_file = \"client.pem\"\ntls_client_key_file = \"client.key\"\n",
        );
        let cfg = CoreConfig::parse(&ok, &path).unwrap();
        assert_eq!(
            cfg.store.tls_client_key_file,
            Some(dir.path().join("client.key"))
        );
        assert!(matches!(
            cfg.store_location().unwrap(),
            crate::store::StoreLocation::PostgresTls(..)
        ));

        let half = text("tls_ca_file = \"ca.pem\"\ntls_client_cert_file = \"client.pem\"\n");
        let err = CoreConfig::parse(&half, &path).unwrap_err().to_string();
        assert!(err.contains("go together"), "{err}");
        let no_ca =
            text("tls_client_cert_file = \"client.pem\"\ntls_client_key_file = \"client.key\"\n");
        let err = CoreConfig::parse(&no_ca, &path).unwrap_err().to_string();
        assert!(err.contains("needs store.tls_ca_file"), "{err}");

        let bad = text(
            "tls_ca_file = \"ca.pem\"\ntls_client_cert_file = \"client.pem\"\ntls_client_key_file = \"bad.key\"\n",
        );
        let err = CoreConfig::parse(&bad, &path)
            .unwrap()
            .store_location()
            .unwrap_err();
        assert!(err.contains("client"), "{err}");
        assert!(!err.contains("c2VjcmV0"), "the key leaked into: {err}");
    }

    #[test]
    fn relative_data_dir_is_taken_from_the_config_directory() {
        let cfg = CoreConfig::parse(
            "trust_domain = \"example.org\"\ndata_dir = \"data\"\n",
            Path::new("/etc/keygrid/core.toml"),
        )
        .unwrap();
        assert_eq!(cfg.data_dir, PathBuf::from("/etc/keygrid/data"));
    }
}
