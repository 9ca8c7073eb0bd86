//! `keygrid`: run core, the dev environment, and the admin CLI.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use keygrid_core::config::CoreConfig;
use keygrid_core::dev::{self, DevArgs};
use keygrid_proto::keygrid::v1 as pb;

/// KeyGrid: an external PKI for Kubernetes and SPIFFE workloads.
#[derive(Parser)]
#[command(name = "keygrid", version, about)]
struct Cli {
    /// Log format on stderr.
    #[arg(long, global = true, default_value = "text", value_parser = ["text", "json"])]
    log_format: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run core from a configuration file.
    Serve {
        /// Core configuration (TOML).
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Run core and an agent on this machine with a private SoftHSM2 token.
    Dev(DevArgs),
    /// Inspect the CA hierarchy.
    Ca {
        #[command(subcommand)]
        command: CaCommand,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Manage registration entries.
    Entry {
        #[command(subcommand)]
        command: EntryCommand,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Explain what the configured policy decides for a CSR, without issuing anything.
    Policy {
        #[command(subcommand)]
        command: PolicyCommand,
    },
    /// Measure issuance against the raw signing rate of the same key (see docs/benchmarks.md).
    Bench {
        #[command(subcommand)]
        command: BenchCommand,
    },
    /// Manage join tokens for node attestation.
    Token {
        #[command(subcommand)]
        command: TokenCommand,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Revoke and list issued certificates.
    Cert {
        #[command(subcommand)]
        command: CertCommand,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// EST enrollments waiting for manual approval (`est.manual_approval`).
    Est {
        #[command(subcommand)]
        command: EstCommand,
    },
    /// Run the OCSP responder on its own, against core's store.
    Ocsp {
        #[command(subcommand)]
        command: OcspCommand,
    },
    /// The tamper-evident audit log: verify, export, tail (reads the store directly).
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
        /// Core configuration (TOML) naming the store and the HSM.
        #[arg(long, short, global = true)]
        config: Option<PathBuf>,
    },
    /// Write a consistent, versioned archive of the store and audit log (keys stay in the
    /// HSM; the archive lists the key labels it expects).
    Backup {
        /// The archive to write.
        file: PathBuf,
        /// Core configuration (TOML) naming the store.
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Rebuild a fresh core's store from a backup archive (same HSM token).
    Restore {
        /// The archive to read.
        file: PathBuf,
        /// Core configuration (TOML) of the new core; its store must be empty.
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Credentials for SPIRE servers using the keygrid-upstream-authority plugin.
    Spire {
        #[command(subcommand)]
        command: SpireCommand,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// kubeadm's external-CA certificate set: issue, sign kubeadm's CSRs, renew, status.
    Kubeadm {
        #[command(subcommand)]
        command: KubeadmCommand,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Kubernetes service-account signing keys (the ExternalJWTSigner's keys in the HSM).
    Sa {
        #[command(subcommand)]
        command: SaCommand,
        #[command(flatten)]
        admin: AdminArgs,
    },
}

#[derive(Subcommand)]
enum SaCommand {
    /// Create a new signing key now; the previous key keeps verifying until its tokens expire.
    Rotate,
    /// List the keys: which signs, which only verify.
    List,
}

#[derive(Args)]
struct ClusterArgs {
    /// kubeadm configuration file (InitConfiguration / ClusterConfiguration YAML); flags
    /// below override it.
    #[arg(long)]
    kubeadm_config: Option<PathBuf>,
    /// The node's name (etcd CN and SANs, first apiserver SAN).
    #[arg(long)]
    node_name: Option<String>,
    /// localAPIEndpoint.advertiseAddress.
    #[arg(long)]
    advertise_address: Option<std::net::IpAddr>,
    /// localAPIEndpoint.bindPort.
    #[arg(long)]
    bind_port: Option<u16>,
    /// networking.serviceSubnet (first address goes into the apiserver certificate).
    #[arg(long)]
    service_cidr: Option<String>,
    /// networking.dnsDomain.
    #[arg(long)]
    dns_domain: Option<String>,
    /// controlPlaneEndpoint (host or host:port).
    #[arg(long)]
    control_plane_endpoint: Option<String>,
    /// Extra apiserver SAN (repeatable).
    #[arg(long = "apiserver-cert-san")]
    apiserver_sans: Vec<String>,
    /// Extra etcd server SAN (repeatable).
    #[arg(long = "etcd-server-cert-san")]
    etcd_server_sans: Vec<String>,
    /// Extra etcd peer SAN (repeatable).
    #[arg(long = "etcd-peer-cert-san")]
    etcd_peer_sans: Vec<String>,
}

impl ClusterArgs {
    fn spec(&self) -> anyhow::Result<keygrid_core::kubeadm::ClusterSpec> {
        let mut s = keygrid_core::kubeadm::ClusterSpec::default();
        if let Some(path) = &self.kubeadm_config {
            keygrid_core::kubeadm::spec::apply_kubeadm_config(&mut s, path)?;
        }
        if let Some(n) = &self.node_name {
            s.node_name = n.clone();
        }
        if let Some(a) = self.advertise_address {
            s.advertise_address = a;
        }
        if let Some(p) = self.bind_port {
            s.bind_port = p;
        }
        if let Some(c) = &self.service_cidr {
            s.service_cidr = keygrid_core::config::parse_cidr(c)
                .map_err(|e| anyhow::anyhow!("--service-cidr: {e}"))?;
        }
        if let Some(d) = &self.dns_domain {
            s.dns_domain = d.clone();
        }
        if let Some(e) = &self.control_plane_endpoint {
            s.control_plane_endpoint = Some(e.clone());
        }
        s.apiserver_sans.extend(self.apiserver_sans.iter().cloned());
        s.etcd_server_sans
            .extend(self.etcd_server_sans.iter().cloned());
        s.etcd_peer_sans.extend(self.etcd_peer_sans.iter().cloned());
        Ok(s)
    }
}

#[derive(Subcommand)]
enum KubeadmCommand {
    /// Issue kubeadm's certificate set into a pki directory (CA certificates without keys,
    /// leaves, kubeconfigs that reference certificate files).
    Certs {
        /// The pki directory.
        #[arg(long, default_value = "/etc/kubernetes/pki")]
        pki_dir: PathBuf,
        /// Where kubeconfigs go.
        #[arg(long, default_value = "/etc/kubernetes")]
        kubeconfig_dir: PathBuf,
        #[command(flatten)]
        cluster: Box<ClusterArgs>,
        /// Only these (repeatable): a base such as etcd/server, or a kubeconfig such as admin.conf.
        #[arg(long)]
        only: Vec<String>,
        /// Certificate lifetime (default: core's control_plane.cert_ttl, 24h).
        #[arg(long, value_parser = humantime::parse_duration)]
        ttl: Option<Duration>,
        /// Algorithm of keys generated on this node.
        #[arg(long, default_value = "ecdsa-p256")]
        key_algorithm: String,
    },
    /// Sign the CSRs `kubeadm certs generate-csr` wrote and put the certificates beside them.
    SignCsrs {
        /// kubeadm's --cert-dir.
        #[arg(long, default_value = "/etc/kubernetes/pki")]
        cert_dir: PathBuf,
        /// kubeadm's --kubeconfig-dir.
        #[arg(long, default_value = "/etc/kubernetes")]
        kubeconfig_dir: PathBuf,
        /// Certificate lifetime (default: core's control_plane.cert_ttl).
        #[arg(long, value_parser = humantime::parse_duration)]
        ttl: Option<Duration>,
    },
    /// Renew managed certificates that reached --renew-at of their life (same key, atomic
    /// write); with --watch, keep doing it.
    Rotate {
        /// The pki directory.
        #[arg(long, default_value = "/etc/kubernetes/pki")]
        pki_dir: PathBuf,
        /// Keep running and renew as certificates come due.
        #[arg(long)]
        watch: bool,
        /// Fraction of the lifetime at which to renew.
        #[arg(long, default_value_t = 0.5)]
        renew_at: f64,
        /// How often --watch checks.
        #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
        interval: Duration,
        /// Renew everything now.
        #[arg(long)]
        force: bool,
        /// BASE=COMMAND run with `sh -c` after BASE was renewed, for a component that does
        /// not reload its certificate by itself (repeatable).
        #[arg(long = "reload-hook")]
        reload_hooks: Vec<String>,
    },
    /// Service-account key files for clusters without the external signer: `init`, then
    /// the zero-downtime rotation `stage` → `promote` → `retire`, one step per run.
    SaKeys {
        /// Directory of sa.key / sa.pub / sa-verify.pub.
        #[arg(long, default_value = "/etc/kubernetes/pki")]
        pki_dir: PathBuf,
        /// init, stage, promote or retire.
        step: String,
    },
    /// Write KeyGrid's trust bundle (its published roots) as a Kubernetes
    /// ClusterTrustBundle (certificates.k8s.io/v1beta1), for `kubectl apply -f`.
    TrustBundle {
        /// Object name (after the signer prefix, when there is a signer).
        #[arg(long, default_value = "keygrid-roots")]
        name: String,
        /// Signer name `<domain>/<path>` the bundle is for; the object name then starts
        /// with it (`/` as `:`), as the API requires.
        #[arg(long)]
        signer_name: Option<String>,
        /// Write here (atomically, mode 0644) instead of to stdout.
        #[arg(long)]
        output: Option<PathBuf>,
    },
    /// Show every managed file, its expiry and its last renewal.
    Status {
        /// The pki directory.
        #[arg(long, default_value = "/etc/kubernetes/pki")]
        pki_dir: PathBuf,
    },
}

#[derive(Subcommand)]
enum CertCommand {
    /// Revoke a certificate by serial (hex) or by its PEM/DER file.
    Revoke {
        /// Serial number in hex, or the path of the certificate file.
        target: String,
        /// RFC 5280 reason: keyCompromise, cACompromise, affiliationChanged, superseded,
        /// cessationOfOperation, privilegeWithdrawn, aACompromise, unspecified.
        #[arg(long, default_value = "unspecified")]
        reason: String,
        /// Issuer name (root, nodes, workloads), when a serial alone is ambiguous.
        #[arg(long, default_value = "")]
        issuer: String,
    },
    /// List issued certificates, newest first.
    List {
        /// Only revoked certificates.
        #[arg(long)]
        revoked: bool,
        /// At most this many.
        #[arg(long, default_value_t = 1000)]
        limit: i64,
    },
}

#[derive(Subcommand)]
enum AuditCommand {
    /// Check the whole chain and every signed checkpoint; exits 1 naming the first bad
    /// record by sequence number.
    Verify {
        /// Check a file written by `keygrid audit export` instead of the store (links and
        /// hashes; no checkpoints). Needs no configuration.
        #[arg(long)]
        export: Option<PathBuf>,
    },
    /// Write records as JSON lines (for a SIEM), oldest first.
    Export {
        /// From when: RFC 3339 time, Unix seconds, or a duration back from now (`24h`).
        #[arg(long, default_value = "0")]
        since: String,
        /// Write here instead of standard output.
        #[arg(long, short)]
        output: Option<PathBuf>,
    },
    /// Remove records older than --before up to the newest signed checkpoint among them
    /// (export them first); the chain stays verifiable from that checkpoint.
    Prune {
        /// RFC 3339 time, Unix seconds, or a duration back from now (`2160h`).
        #[arg(long)]
        before: String,
    },
    /// Print the last records as JSON lines.
    Tail {
        /// How many.
        #[arg(short = 'n', long, default_value_t = 20)]
        lines: i64,
        /// Keep printing new records as they are appended.
        #[arg(long, short)]
        follow: bool,
    },
}

#[derive(Subcommand)]
enum EstCommand {
    /// List enrollments waiting for approval.
    Pending {
        /// Core configuration (TOML); the store it names is read directly.
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Approve a waiting enrollment; the client gets its certificate on its next retry.
    Approve {
        /// The enrollment id (from `keygrid est pending`).
        id: String,
        /// Core configuration (TOML).
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Reject a waiting enrollment; the client gets 403 on its next retry.
    Reject {
        /// The enrollment id.
        id: String,
        /// Core configuration (TOML).
        #[arg(long, short)]
        config: PathBuf,
    },
}

#[derive(Subcommand)]
enum OcspCommand {
    /// Serve OCSP and CRLs from core's store ([http] section of the core configuration).
    Serve {
        /// Core configuration (TOML).
        #[arg(long, short)]
        config: PathBuf,
    },
}

fn read_cert_file(path: &std::path::Path) -> anyhow::Result<Vec<u8>> {
    let data = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    if data.windows(10).any(|w| w == b"-----BEGIN") {
        // PEM, perhaps with comments or a chain: the first CERTIFICATE block is the leaf.
        let blocks = pem::parse_many(&data)
            .with_context(|| format!("{} is not valid PEM", path.display()))?;
        return blocks
            .into_iter()
            .find(|p| p.tag() == "CERTIFICATE")
            .map(|p| p.into_contents())
            .with_context(|| format!("{} holds no CERTIFICATE block", path.display()));
    }
    Ok(data)
}

fn print_cert(c: &pb::CertificateInfo) {
    let fmt = |t: i64| {
        time::OffsetDateTime::from_unix_timestamp(t)
            .map(|d| d.to_string())
            .unwrap_or_else(|_| t.to_string())
    };
    println!("Serial        : {}", c.serial);
    println!("Issuer        : {}", c.issuer);
    println!("Profile       : {}", c.profile);
    println!("Subject       : {}", c.subject);
    println!(
        "Valid         : {} .. {}",
        fmt(c.not_before_unix),
        fmt(c.not_after_unix)
    );
    if c.revoked {
        println!(
            "Revoked       : {} ({})",
            fmt(c.revoked_at_unix),
            c.revocation_reason
        );
    }
    println!();
}

#[derive(Subcommand)]
enum SpireCommand {
    /// Issue a SPIRE server's client credential and write it with KeyGrid's bundle.
    Credential {
        /// The SPIRE server's identity: spiffe://<trust domain>/spire/server/<name>.
        #[arg(long)]
        spire_server_id: String,
        /// Directory to write svid.pem, svid.key (0600) and bundle.pem into.
        #[arg(long)]
        out_dir: PathBuf,
        /// Credential lifetime (default 30 days, cut to the issuing CA's expiry).
        #[arg(long, value_parser = humantime::parse_duration)]
        ttl: Option<Duration>,
    },
}

/// How the CLI reaches core's admin socket.
#[derive(Args)]
struct AdminArgs {
    /// Admin socket of core.
    #[arg(long, global = true, env = "KEYGRID_ADMIN_SOCKET")]
    socket: Option<PathBuf>,
    /// Core configuration, to find the admin socket from.
    #[arg(long, short, global = true)]
    config: Option<PathBuf>,
}

impl AdminArgs {
    fn socket(&self) -> anyhow::Result<PathBuf> {
        if let Some(s) = &self.socket {
            return Ok(s.clone());
        }
        if let Some(c) = &self.config {
            return Ok(CoreConfig::load(c)?.admin_socket());
        }
        Ok(PathBuf::from(".keygrid/admin.sock"))
    }
}

#[derive(Subcommand)]
enum CaCommand {
    /// Show the hierarchy: every generation with algorithm, key location, fingerprint,
    /// validity, and whether it signs now / is in the trust bundle.
    Show,
    /// Create the hierarchy (keys in the configured HSM) without starting core; prints it.
    /// Needs `--config`.
    Init,
    /// Rotate an issuing CA, or the root (and everything under it): the new generation is
    /// published at once and signs after the preparation window.
    Rotate {
        /// `root`, `control-plane`, `nodes`, `spire-upstream` or `workloads`.
        issuer: String,
        /// Preparation window before the new generation signs (default: core's
        /// `ca.rotation_preparation`).
        #[arg(long, value_parser = humantime::parse_duration)]
        prepare: Option<Duration>,
    },
}

#[derive(Subcommand)]
enum EntryCommand {
    /// Create an entry: workloads matching all selectors on the parent node get the SPIFFE ID.
    Create {
        /// SPIFFE ID given to matching workloads.
        #[arg(long)]
        spiffe_id: String,
        /// SPIFFE ID of the node that may serve the entry.
        #[arg(long)]
        parent_id: String,
        /// Selector as type:value, e.g. unix:uid:1000 (repeatable; all must match).
        #[arg(long = "selector", required = true)]
        selectors: Vec<String>,
        /// X.509-SVID lifetime (default: core's default).
        #[arg(long, value_parser = humantime::parse_duration)]
        x509_svid_ttl: Option<Duration>,
        /// DNS name to add to the SVID (repeatable).
        #[arg(long = "dns")]
        dns_names: Vec<String>,
        /// Hint passed to workloads.
        #[arg(long, default_value = "")]
        hint: String,
    },
    /// List entries.
    List,
    /// Delete an entry by ID.
    Delete {
        /// Entry ID.
        #[arg(long)]
        id: String,
    },
}

#[derive(Subcommand)]
enum BenchCommand {
    /// ExternalJWTSigner Sign over its Unix socket, beside the raw rate of the same key.
    SaSign {
        /// Seconds per measurement.
        #[arg(long, default_value = "3")]
        seconds: u64,
        /// Key backends to measure (software, pkcs11).
        #[arg(long, value_delimiter = ',', default_value = "software,pkcs11")]
        backends: Vec<String>,
        /// PKCS#11 module for the pkcs11 backend (a private SoftHSM2 token is created).
        #[arg(long, default_value = "/usr/lib/softhsm/libsofthsm2.so")]
        pkcs11_module: PathBuf,
    },
    /// X.509-SVID issuance per second per core, beside the raw sign rate of the same CA key.
    Issue {
        /// Seconds per measurement.
        #[arg(long, default_value = "3")]
        seconds: u64,
        /// Key backends to measure (software, pkcs11).
        #[arg(long, value_delimiter = ',', default_value = "software,pkcs11")]
        backends: Vec<String>,
        /// CA key algorithms (ecdsa-p256, ecdsa-p384, ed25519, rsa-3072, rsa-4096).
        #[arg(
            long,
            value_delimiter = ',',
            default_value = "ecdsa-p256,ecdsa-p384,ed25519,rsa-3072,rsa-4096"
        )]
        algorithms: Vec<String>,
        /// PKCS#11 module for the pkcs11 backend (a private SoftHSM2 token is created).
        #[arg(long, default_value = "/usr/lib/softhsm/libsofthsm2.so")]
        pkcs11_module: PathBuf,
    },
    /// Issuance recorded in SQLite and PostgreSQL, with the audit record off and on.
    Audit {
        /// Seconds per measurement.
        #[arg(long, default_value = "10")]
        seconds: u64,
        /// Store engines (sqlite, postgres; postgres starts a private server).
        #[arg(long, value_delimiter = ',', default_value = "sqlite,postgres")]
        engines: Vec<String>,
    },
}

#[derive(Subcommand)]
enum PolicyCommand {
    /// Check a CSR (PEM or DER) against the `[[policy]]` rules of a core configuration.
    /// Exits 0 when allowed, 1 when refused.
    Check {
        /// The CSR file.
        csr: PathBuf,
        /// Core configuration holding the policy.
        #[arg(long, short)]
        config: PathBuf,
        /// Profile to check against (x509-svid, node, kubelet-client, ...).
        #[arg(long, default_value = "x509-svid")]
        profile: String,
        /// SPIFFE ID the certificate would carry.
        #[arg(long)]
        spiffe_id: Option<String>,
        /// DNS name the certificate would carry (repeatable).
        #[arg(long = "dns")]
        dns_names: Vec<String>,
        /// IP address the certificate would carry (repeatable).
        #[arg(long = "ip")]
        ips: Vec<std::net::IpAddr>,
        /// Requested lifetime.
        #[arg(long, default_value = "5m", value_parser = humantime::parse_duration)]
        ttl: Duration,
        /// How the requester attested (join_token, tpm, admin).
        #[arg(long, default_value = "join_token")]
        attestation: String,
    },
}

#[derive(Subcommand)]
enum TokenCommand {
    /// Create a one-time join token for a node.
    Create {
        /// SPIFFE ID the node gets when it redeems the token.
        #[arg(long)]
        agent_id: String,
        /// How long the token stays redeemable (default: core's default).
        #[arg(long, value_parser = humantime::parse_duration)]
        ttl: Option<Duration>,
    },
}

fn init_logging(format: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("KEYGRID_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
}

fn parse_selector(s: &str) -> anyhow::Result<pb::Selector> {
    match s.split_once(':') {
        Some((t, v)) if !t.is_empty() && !v.is_empty() => Ok(pb::Selector {
            r#type: t.into(),
            value: v.into(),
        }),
        _ => anyhow::bail!("selector {s:?} must be type:value, e.g. unix:uid:1000"),
    }
}

fn print_entry(e: &pb::Entry) {
    println!("Entry ID      : {}", e.id);
    println!("SPIFFE ID     : {}", e.spiffe_id);
    println!("Parent ID     : {}", e.parent_id);
    for s in &e.selectors {
        println!("Selector      : {}:{}", s.r#type, s.value);
    }
    if e.x509_svid_ttl_seconds > 0 {
        println!("X509-SVID TTL : {}s", e.x509_svid_ttl_seconds);
    }
    for d in &e.dns_names {
        println!("DNS name      : {d}");
    }
    if !e.hint.is_empty() {
        println!("Hint          : {}", e.hint);
    }
    println!();
}

fn fmt_time(t: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(t)
        .ok()
        .and_then(|d| {
            d.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| t.to_string())
}

fn print_ca(res: &pb::ShowCaResponse) {
    println!("trust bundle sequence {}", res.bundle_sequence);
    for a in &res.authorities {
        let root = a.parent.is_empty();
        let (head, pad) = if root {
            ("", "   ")
        } else {
            ("  └─ ", "       ")
        };
        let mut flags = Vec::new();
        if a.active {
            flags.push("active");
        } else if a.activate_at_unix > time::OffsetDateTime::now_utc().unix_timestamp() {
            flags.push("prepared");
        } else {
            flags.push("superseded");
        }
        if a.in_bundle {
            flags.push("in bundle");
        }
        println!(
            "{head}{} #{} [{}] ({})",
            a.name,
            a.generation,
            flags.join(", "),
            a.subject
        );
        println!("{pad}algorithm:   {}", a.algorithm);
        println!("{pad}key:         {}", a.key_location);
        println!("{pad}sha256:      {}", a.sha256_fingerprint);
        println!(
            "{pad}valid:       {} .. {}",
            fmt_time(a.not_before_unix),
            fmt_time(a.not_after_unix)
        );
        println!("{pad}signs from:  {}", fmt_time(a.activate_at_unix));
    }
}

fn ca_init(config: &std::path::Path) -> anyhow::Result<()> {
    let cfg = CoreConfig::load(config)?;
    keygrid_core::server::private_dir(&cfg.data_dir)?;
    let pin = cfg.hsm_pin().map_err(anyhow::Error::msg)?;
    let token = keygrid_core::keys::pkcs11::Pkcs11Token::open(
        &cfg.hsm.module,
        &cfg.hsm.token_label,
        cryptoki::types::AuthPin::from(pin),
    )?;
    let keys = keygrid_core::server::issuer_keys(&cfg, &token)?;
    let store = keygrid_core::server::open_store(&cfg)?;
    let (h, created) = keygrid_core::ca::Hierarchy::init_or_load(
        &store,
        keys.as_ref(),
        &cfg.hierarchy_settings(),
    )?;
    println!(
        "{} hierarchy for trust domain {}:",
        if created {
            "created the"
        } else {
            "already had a"
        },
        cfg.trust_domain
    );
    for a in h.authorities() {
        println!(
            "  {} #{}  {}  {}  sha256 {}",
            a.name(),
            a.generation(),
            a.algorithm(),
            a.key_location(),
            keygrid_core::ca::sha256_hex(a.cert_der())
        );
    }
    Ok(())
}

/// `keygrid policy check`: parse, verify the CSR's self-signature, evaluate, explain.
fn policy_check(cmd: PolicyCommand) -> anyhow::Result<bool> {
    let PolicyCommand::Check {
        csr,
        config,
        profile,
        spiffe_id,
        dns_names,
        ips,
        ttl,
        attestation,
    } = cmd;
    let cfg = CoreConfig::load(&config)?;
    let raw = std::fs::read(&csr).with_context(|| format!("cannot read {}", csr.display()))?;
    let der = match pem::parse(&raw) {
        Ok(p) if p.tag() == "CERTIFICATE REQUEST" || p.tag() == "NEW CERTIFICATE REQUEST" => {
            p.into_contents()
        }
        Ok(p) => anyhow::bail!(
            "{} holds a PEM {:?}, not a CERTIFICATE REQUEST",
            csr.display(),
            p.tag()
        ),
        Err(_) => raw,
    };
    rcgen::CertificateSigningRequestParams::from_der(&der.clone().into())
        .map_err(|e| anyhow::anyhow!("{}: CSR rejected: {e}", csr.display()))?;
    let key = keygrid_core::policy::csr_key_info(&der).map_err(anyhow::Error::msg)?;
    println!("key: {}", key.name());
    let decision = cfg
        .compiled_policy()
        .check(&keygrid_core::policy::PolicyRequest {
            profile,
            key: Some(key),
            ttl,
            spiffe_id,
            dns_names,
            ips,
            attestation,
        });
    match decision {
        keygrid_core::policy::Decision::Allow { ttl, notes } => {
            println!("allowed, lifetime {}", humantime::format_duration(ttl));
            for n in notes {
                println!("  note: {n}");
            }
            Ok(true)
        }
        keygrid_core::policy::Decision::Refuse { rule, reason } => {
            println!("refused by rule {rule}: {reason}");
            Ok(false)
        }
    }
}

fn status_error(s: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("{}: {}", code_name(s.code()), s.message())
}

fn code_name(c: tonic::Code) -> &'static str {
    match c {
        tonic::Code::InvalidArgument => "invalid argument",
        tonic::Code::PermissionDenied => "permission denied",
        tonic::Code::NotFound => "not found",
        tonic::Code::AlreadyExists => "already exists",
        tonic::Code::Unauthenticated => "unauthenticated",
        tonic::Code::Unavailable => "unavailable",
        _ => "error",
    }
}

/// The CA hierarchy as core reports it over the admin socket.
async fn show_ca(admin: &AdminArgs) -> anyhow::Result<pb::ShowCaResponse> {
    let mut c = keygrid_core::admin_client::connect(&admin.socket()?).await?;
    Ok(c.show_ca(pb::ShowCaRequest {})
        .await
        .map_err(status_error)?
        .into_inner())
}

async fn admin_command(cmd: Command) -> anyhow::Result<()> {
    match cmd {
        Command::Ca {
            command: CaCommand::Show,
            admin,
        } => print_ca(&show_ca(&admin).await?),
        Command::Ca {
            command: CaCommand::Rotate { issuer, prepare },
            admin,
        } => {
            let mut c = keygrid_core::admin_client::connect(&admin.socket()?).await?;
            let res = c
                .rotate_ca(pb::RotateCaRequest {
                    issuer,
                    preparation_seconds: prepare.map(|d| d.as_secs().max(1) as i64).unwrap_or(0),
                })
                .await
                .map_err(status_error)?
                .into_inner();
            print_ca(&res);
        }
        Command::Ca {
            command: CaCommand::Init,
            ..
        } => unreachable!("handled in run"),
        Command::Entry { command, admin } => {
            let mut c = keygrid_core::admin_client::connect(&admin.socket()?).await?;
            match command {
                EntryCommand::Create {
                    spiffe_id,
                    parent_id,
                    selectors,
                    x509_svid_ttl,
                    dns_names,
                    hint,
                } => {
                    let selectors = selectors
                        .iter()
                        .map(|s| parse_selector(s))
                        .collect::<Result<_, _>>()?;
                    let e = c
                        .create_entry(pb::CreateEntryRequest {
                            spiffe_id,
                            parent_id,
                            selectors,
                            x509_svid_ttl_seconds: x509_svid_ttl
                                .map(|d| d.as_secs() as i64)
                                .unwrap_or(0),
                            dns_names,
                            hint,
                        })
                        .await
                        .map_err(status_error)?
                        .into_inner();
                    print_entry(&e);
                }
                EntryCommand::List => {
                    let res = c
                        .list_entries(pb::ListEntriesRequest {})
                        .await
                        .map_err(status_error)?
                        .into_inner();
                    println!("Found {} entries", res.entries.len());
                    for e in &res.entries {
                        print_entry(e);
                    }
                }
                EntryCommand::Delete { id } => {
                    c.delete_entry(pb::DeleteEntryRequest { id: id.clone() })
                        .await
                        .map_err(status_error)?;
                    println!("Deleted entry {id}");
                }
            }
        }
        Command::Token {
            command: TokenCommand::Create { agent_id, ttl },
            admin,
        } => {
            let mut c = keygrid_core::admin_client::connect(&admin.socket()?).await?;
            let res = c
                .create_join_token(pb::CreateJoinTokenRequest {
                    agent_spiffe_id: agent_id,
                    ttl_seconds: ttl.map(|d| d.as_secs() as i64).unwrap_or(0),
                })
                .await
                .map_err(status_error)?
                .into_inner();
            println!("{}", res.token);
        }
        Command::Cert { command, admin } => {
            let mut c = keygrid_core::admin_client::connect(&admin.socket()?).await?;
            match command {
                CertCommand::Revoke {
                    target,
                    reason,
                    issuer,
                } => {
                    let path = std::path::Path::new(&target);
                    let (serial, certificate_der) = if path.is_file() {
                        (String::new(), read_cert_file(path)?)
                    } else {
                        (target.clone(), Vec::new())
                    };
                    let res = c
                        .revoke_certificate(pb::RevokeCertificateRequest {
                            serial,
                            issuer,
                            certificate_der,
                            reason,
                        })
                        .await
                        .map_err(status_error)?
                        .into_inner();
                    if let Some(cert) = res.certificate {
                        println!("Revoked certificate");
                        print_cert(&cert);
                    }
                }
                CertCommand::List { revoked, limit } => {
                    let res = c
                        .list_certificates(pb::ListCertificatesRequest {
                            revoked_only: revoked,
                            limit,
                        })
                        .await
                        .map_err(status_error)?
                        .into_inner();
                    println!("Found {} certificates", res.certificates.len());
                    for cert in &res.certificates {
                        print_cert(cert);
                    }
                }
            }
        }
        Command::Spire {
            command:
                SpireCommand::Credential {
                    spire_server_id,
                    out_dir,
                    ttl,
                },
            admin,
        } => {
            let written = keygrid_core::spire_credential::issue(
                &admin.socket()?,
                &spire_server_id,
                &out_dir,
                ttl,
            )
            .await?;
            println!("certificate: {}", written.cert.display());
            println!("key:         {}", written.key.display());
            println!("bundle:      {}", written.bundle.display());
            println!("expires:     {}", written.expires_at);
        }
        Command::Kubeadm { command, admin } => kubeadm_command(command, admin).await?,
        Command::Sa { command, admin } => {
            use keygrid_proto::keygrid::v1::control_plane_admin_client::ControlPlaneAdminClient;
            let mut c = ControlPlaneAdminClient::new(
                keygrid_core::admin_client::channel(&admin.socket()?).await?,
            );
            let keys = match command {
                SaCommand::Rotate => {
                    c.rotate_service_account_key(pb::RotateServiceAccountKeyRequest {})
                        .await
                }
                SaCommand::List => {
                    c.list_service_account_keys(pb::ListServiceAccountKeysRequest {})
                        .await
                }
            }
            .map_err(status_error)?
            .into_inner();
            for k in keys.keys {
                println!(
                    "{}  {}  {}  created {}  {}",
                    k.key_id,
                    k.algorithm,
                    if k.signing { "signing  " } else { "verifying" },
                    fmt_time(k.created_at_unix),
                    k.key_location
                );
            }
        }
        Command::Serve { .. }
        | Command::Audit { .. }
        | Command::Backup { .. }
        | Command::Restore { .. }
        | Command::Dev(_)
        | Command::Ocsp { .. }
        | Command::Est { .. }
        | Command::Policy { .. }
        | Command::Bench { .. } => {
            unreachable!("handled in run")
        }
    }
    Ok(())
}

fn est_command(command: EstCommand) -> anyhow::Result<()> {
    let open = |config: &std::path::Path| -> anyhow::Result<keygrid_core::store::Store> {
        let cfg = CoreConfig::load(config)?;
        keygrid_core::store::Store::open(&cfg.database_path())
            .with_context(|| format!("cannot open the store at {}", cfg.database_path().display()))
    };
    // SAFETY: getuid(2) takes no arguments, touches no memory and cannot fail.
    let operator = format!("admin uid {}", unsafe { libc::getuid() });
    match command {
        EstCommand::Pending { config } => {
            for p in keygrid_core::est::approval::pending(&open(&config)?)? {
                println!("{}\t{}\t{}\t{}", p.id, p.label, p.subject, p.requester);
            }
        }
        EstCommand::Approve { id, config } => {
            let p = keygrid_core::est::approval::decide(&open(&config)?, &id, true, &operator)?;
            println!("approved {} ({} for {})", p.id, p.label, p.subject);
        }
        EstCommand::Reject { id, config } => {
            let p = keygrid_core::est::approval::decide(&open(&config)?, &id, false, &operator)?;
            println!("rejected {} ({} for {})", p.id, p.label, p.subject);
        }
    }
    Ok(())
}

async fn kubeadm_command(cmd: KubeadmCommand, admin: AdminArgs) -> anyhow::Result<()> {
    use keygrid_core::kubeadm;
    match cmd {
        KubeadmCommand::Certs {
            pki_dir,
            kubeconfig_dir,
            cluster,
            only,
            ttl,
            key_algorithm,
        } => {
            let opts = kubeadm::CertsOptions {
                socket: admin.socket()?,
                pki_dir,
                kubeconfig_dir,
                spec: cluster.spec()?,
                only,
                ttl,
                key_algorithm: kubeadm::LeafKeyAlgorithm::parse(&key_algorithm)?,
            };
            for w in kubeadm::write_certificate_set(&opts).await? {
                println!("{:<32} expires {}", w.base, fmt_time(w.not_after));
            }
        }
        KubeadmCommand::SignCsrs {
            cert_dir,
            kubeconfig_dir,
            ttl,
        } => {
            let signed = kubeadm::csr::sign_generated_csrs(
                &admin.socket()?,
                &cert_dir,
                &kubeconfig_dir,
                ttl.map(|d| d.as_secs()).unwrap_or(0),
            )
            .await?;
            for f in signed {
                println!("{:<48} expires {}", f.path.display(), fmt_time(f.not_after));
            }
        }
        KubeadmCommand::Rotate {
            pki_dir,
            watch,
            renew_at,
            interval,
            force,
            reload_hooks,
        } => {
            let mut hooks = std::collections::BTreeMap::new();
            for h in reload_hooks {
                let (base, cmd) = h
                    .split_once('=')
                    .filter(|(b, c)| !b.is_empty() && !c.is_empty())
                    .ok_or_else(|| anyhow::anyhow!("--reload-hook {h:?} must be BASE=COMMAND"))?;
                hooks.insert(base.to_string(), cmd.to_string());
            }
            let opts = kubeadm::RotateOptions {
                socket: admin.socket()?,
                pki_dir,
                renew_at,
                force,
                reload_hooks: hooks,
            };
            if watch {
                kubeadm::watch(opts, interval, shutdown_signal()).await?;
            } else {
                for r in kubeadm::renew_due(&opts).await? {
                    println!("{:<32} renewed, expires {}", r.base, fmt_time(r.not_after));
                }
            }
        }
        KubeadmCommand::SaKeys { pki_dir, step } => {
            let next =
                kubeadm::sa_keys::run_step(&pki_dir, kubeadm::sa_keys::SaStep::parse(&step)?)?;
            println!("{step}: done. Next: {next}.");
        }
        KubeadmCommand::TrustBundle {
            name,
            signer_name,
            output,
        } => {
            let roots: Vec<Vec<u8>> = show_ca(&admin)
                .await?
                .authorities
                .into_iter()
                .filter(|a| a.in_bundle)
                .map(|a| a.certificate_der)
                .collect();
            let object =
                kubeadm::trust_bundle::cluster_trust_bundle(&name, signer_name.as_deref(), &roots)
                    .map_err(anyhow::Error::msg)?;
            let text = format!("{}\n", serde_json::to_string_pretty(&object)?);
            match output {
                None => print!("{text}"),
                Some(path) => {
                    kubeadm::write_replacing(&path, text.as_bytes(), 0o644)
                        .with_context(|| format!("cannot write {}", path.display()))?;
                    println!(
                        "{} written ({} root{})",
                        path.display(),
                        roots.len(),
                        if roots.len() == 1 { "" } else { "s" }
                    );
                }
            }
        }
        KubeadmCommand::Status { pki_dir } => {
            let now = time::OffsetDateTime::now_utc().unix_timestamp();
            println!(
                "{:<52} {:<30} {:<22} {:>10} {:<22} {:>7}",
                "CERTIFICATE", "PROFILE", "EXPIRES", "RESIDUAL", "LAST RENEWAL", "ISSUED"
            );
            for r in kubeadm::status(&pki_dir)? {
                let (exp, left) = match r.not_after {
                    Some(t) => (
                        fmt_time(t),
                        humantime::format_duration(Duration::from_secs((t - now).max(0) as u64))
                            .to_string(),
                    ),
                    None => ("missing".into(), "-".into()),
                };
                println!(
                    "{:<52} {:<30} {:<22} {:>10} {:<22} {:>7}",
                    r.cert_file.display(),
                    r.profile,
                    exp,
                    left,
                    fmt_time(r.last_renewal),
                    r.issued_count
                );
                if let Some(k) = r.kubeconfig {
                    println!("  referenced by {}", k.display());
                }
            }
        }
    }
    Ok(())
}

async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {},
        _ = term => {},
    }
}

fn bench(cmd: BenchCommand) -> anyhow::Result<()> {
    if let BenchCommand::SaSign {
        seconds,
        backends,
        pkcs11_module,
    } = cmd
    {
        let dir = tempfile::tempdir()?;
        if backends.iter().any(|b| b == "pkcs11") {
            if !pkcs11_module.exists() {
                anyhow::bail!(
                    "{} not found; install SoftHSM2 (scripts/install-deps.sh)",
                    pkcs11_module.display()
                );
            }
            keygrid_core::bench::prepare_softhsm(dir.path())?;
        }
        let results = keygrid_core::sa_bench::run(
            &pkcs11_module,
            &backends,
            Duration::from_secs(seconds.max(1)),
        )?;
        keygrid_core::sa_bench::print(&results);
        return Ok(());
    }
    let (seconds, backends, algorithms, pkcs11_module) = match cmd {
        BenchCommand::Audit { seconds, engines } => {
            let results =
                keygrid_core::bench::run_audit(&engines, Duration::from_secs(seconds.max(1)))?;
            keygrid_core::bench::print_audit(&results);
            return Ok(());
        }
        BenchCommand::Issue {
            seconds,
            backends,
            algorithms,
            pkcs11_module,
        } => (seconds, backends, algorithms, pkcs11_module),
        BenchCommand::SaSign { .. } => return Ok(()),
    };
    let algorithms = algorithms
        .iter()
        .map(|a| {
            keygrid_core::keys::KeyAlgorithm::from_name(a).ok_or_else(|| {
                anyhow::anyhow!(
                    "unknown algorithm {a:?}; use ecdsa-p256, ecdsa-p384, ed25519, rsa-3072 or rsa-4096"
                )
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let dir = tempfile::tempdir()?;
    if backends.iter().any(|b| b == "pkcs11") {
        if !pkcs11_module.exists() {
            anyhow::bail!(
                "{} not found; install SoftHSM2 (scripts/install-deps.sh)",
                pkcs11_module.display()
            );
        }
        keygrid_core::bench::prepare_softhsm(dir.path())?;
    }
    let results = keygrid_core::bench::run(
        &pkcs11_module,
        &backends,
        &algorithms,
        Duration::from_secs(seconds.max(1)),
    )?;
    keygrid_core::bench::print(&results);
    Ok(())
}

/// The offline store commands (no runtime needed: the store brings its own thread).
fn store_command(cmd: Command) -> anyhow::Result<()> {
    use keygrid_core::store_cli;
    match cmd {
        Command::Audit {
            command: AuditCommand::Verify { export: Some(file) },
            ..
        } => {
            let text = std::fs::read_to_string(&file)
                .with_context(|| format!("cannot read {}", file.display()))?;
            let mut records = Vec::new();
            for (i, line) in text
                .lines()
                .enumerate()
                .filter(|(_, l)| !l.trim().is_empty())
            {
                records.push(
                    serde_json::from_str::<keygrid_core::store::audit::AuditRecord>(line)
                        .with_context(|| format!("{} line {}", file.display(), i + 1))?,
                );
            }
            match keygrid_core::store::audit::verify_exported(&records) {
                None => {
                    println!(
                        "exported audit records intact: {} records{}",
                        records.len(),
                        records
                            .first()
                            .map(|r| format!(" from {}", r.seq))
                            .unwrap_or_default()
                    );
                    Ok(())
                }
                Some(b) => Err(anyhow::anyhow!(
                    "exported audit records broken at record {}: {}",
                    b.seq,
                    b.reason
                )),
            }
        }
        Command::Audit { command, config } => {
            let config = config
                .ok_or_else(|| anyhow::anyhow!("`keygrid audit` needs --config <core.toml>"))?;
            let cfg = CoreConfig::load(&config)?;
            match command {
                AuditCommand::Verify { .. } => {
                    let v = store_cli::verify(&cfg)?;
                    match v.first_break {
                        None => {
                            println!(
                                "audit chain intact: {} records, {} signed checkpoints verified",
                                v.records, v.checkpoints
                            );
                            Ok(())
                        }
                        Some(b) => Err(anyhow::anyhow!(
                            "audit chain broken at record {}: {} ({} records before it verified)",
                            b.seq,
                            b.reason,
                            b.seq - 1
                        )),
                    }
                }
                AuditCommand::Export { since, output } => {
                    let since = store_cli::parse_since(
                        &since,
                        time::OffsetDateTime::now_utc().unix_timestamp(),
                    )?;
                    let n = match output {
                        Some(path) => {
                            let f = std::fs::File::create(&path)
                                .with_context(|| format!("cannot create {}", path.display()))?;
                            store_cli::export(&cfg, since, &mut std::io::BufWriter::new(f))?
                        }
                        None => store_cli::export(&cfg, since, &mut std::io::stdout().lock())?,
                    };
                    eprintln!("exported {n} audit records");
                    Ok(())
                }
                AuditCommand::Prune { before } => {
                    let now = time::OffsetDateTime::now_utc().unix_timestamp();
                    let before = store_cli::parse_since(&before, now)?;
                    match store_cli::prune(&cfg, before)? {
                        Some(seq) => println!(
                            "audit records up to {seq} removed; the chain now starts at the signed checkpoint {seq}"
                        ),
                        None => println!(
                            "nothing pruned: no signed checkpoint among the records older than that"
                        ),
                    }
                    Ok(())
                }
                AuditCommand::Tail { lines, follow } => {
                    store_cli::tail(&cfg, lines, follow, &mut std::io::stdout().lock())
                }
            }
        }
        Command::Backup { file, config } => {
            let cfg = CoreConfig::load(&config)?;
            let h = store_cli::backup(&cfg, &file)?;
            println!(
                "backup written to {}: schema version {}, audit head {}",
                file.display(),
                h.schema_version,
                h.audit_head.0
            );
            println!("the HSM token must hold these keys to restore it:");
            for k in &h.key_labels {
                println!(
                    "  {}  {}  {} ({})",
                    k.label, k.algorithm, k.backend, k.purpose
                );
            }
            Ok(())
        }
        Command::Restore { file, config } => {
            let cfg = CoreConfig::load(&config)?;
            let h = store_cli::restore(&cfg, &file)?;
            println!(
                "restored {} into {}: audit chain verified up to record {}",
                file.display(),
                cfg.store_description(),
                h.audit_head.0
            );
            Ok(())
        }
        _ => anyhow::bail!("not a store command"),
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    if matches!(
        cli.command,
        Command::Audit { .. } | Command::Backup { .. } | Command::Restore { .. }
    ) {
        return store_command(cli.command);
    }
    // `bench` configures SoftHSM2's environment, so it runs before any thread exists.
    if let Command::Bench { command } = cli.command {
        return bench(command);
    }
    if let Command::Policy { command } = cli.command {
        return if policy_check(command)? {
            Ok(())
        } else {
            Err(anyhow::anyhow!("the policy refuses this request"))
        };
    }
    if let Command::Ca {
        command: CaCommand::Init,
        admin,
    } = &cli.command
    {
        let config = admin
            .config
            .as_ref()
            .ok_or_else(|| anyhow::anyhow!("`keygrid ca init` needs --config <core.toml>"))?;
        return ca_init(config);
    }
    // `dev` must configure SoftHSM2's environment before any thread exists.
    let dev_plan = match &cli.command {
        Command::Dev(args) => Some(dev::prepare(args.clone())?),
        _ => None,
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    rt.block_on(async move {
        match cli.command {
            Command::Serve { config } => {
                let cfg = CoreConfig::load(&config)?;
                keygrid_core::server::run(cfg, shutdown_signal()).await
            }
            Command::Ocsp {
                command: OcspCommand::Serve { config },
            } => {
                let cfg = CoreConfig::load(&config)?;
                keygrid_core::revocation::runtime::serve_standalone(cfg, shutdown_signal()).await
            }
            Command::Est { command } => est_command(command),
            Command::Dev(_) => match dev_plan {
                Some(plan) => dev::run(plan).await,
                None => anyhow::bail!("dev environment was not prepared"),
            },
            other => admin_command(other).await,
        }
    })
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(&cli.log_format);
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("keygrid: {e:#}");
            ExitCode::FAILURE
        }
    }
}
