//! `keygrid dev`: core and an agent on this machine, with a private SoftHSM2 token.
//!
//! Everything lives in one data directory: the SoftHSM2 token store and its PINs (mode
//! 0600), core's database, and the agent's state. A second start reuses all of it, so the
//! root CA (the trust anchor) survives restarts.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::Context;
use cryptoki::types::AuthPin;
use keygrid_proto::keygrid::v1 as pb;

use crate::config::CoreConfig;
use crate::keys::pkcs11::Pkcs11Token;
use crate::server::{private_dir, write_atomic};

/// Options of `keygrid dev`.
#[derive(Clone, Debug, clap::Args)]
pub struct DevArgs {
    /// Directory for the token, database and agent state.
    #[arg(long, default_value = ".keygrid")]
    pub data_dir: PathBuf,
    /// Trust domain of the dev deployment.
    #[arg(long, default_value = "keygrid.local")]
    pub trust_domain: String,
    /// Address of core's node API.
    #[arg(long, default_value = "127.0.0.1:8081")]
    pub listen: std::net::SocketAddr,
    /// Lifetime of X.509-SVIDs.
    #[arg(long, default_value = "5m", value_parser = humantime::parse_duration)]
    pub svid_ttl: Duration,
    /// Lifetime of JWT-SVIDs.
    #[arg(long, default_value = "5m", value_parser = humantime::parse_duration)]
    pub jwt_svid_ttl: Duration,
    /// PKCS#11 module (SoftHSM2 by default).
    #[arg(long, default_value = "/usr/lib/softhsm/libsofthsm2.so")]
    pub pkcs11_module: PathBuf,
    /// Address of the HTTP listener for OCSP and CRLs (off when not given).
    #[arg(long)]
    pub http_listen: Option<std::net::SocketAddr>,
    /// Publish delta CRLs with this validity (`http.delta_crl_validity`; needs --http-listen).
    #[arg(long, value_parser = humantime::parse_duration, requires = "http_listen")]
    pub delta_crl_validity: Option<Duration>,
    /// Federate with another trust domain: `<trust-domain>=<bundle file>` (SPIFFE bundle JSON
    /// or PEM), repeatable. Its bundle goes to every workload.
    #[arg(long = "federation", value_name = "TD=FILE")]
    pub federation: Vec<String>,
    /// Address of the EST server (HTTPS, `/.well-known/est/`; off when not given).
    #[arg(long)]
    pub est_listen: Option<std::net::SocketAddr>,
    /// A TOML file appended to the generated core configuration (policy rules, `[est]`
    /// options such as `manual_approval` or `[est.tpm]`), for trying features out.
    #[arg(long)]
    pub config_append: Option<PathBuf>,
    /// The agent binary; defaults to `keygrid-agent` beside this binary.
    #[arg(long, env = "KEYGRID_AGENT_BIN")]
    pub agent_bin: Option<PathBuf>,
    /// TOML appended to the generated core configuration (e.g. `[control_plane]` or
    /// `[ca]` sections), to try settings the flags above do not cover.
    #[arg(long)]
    pub core_config_extra: Option<PathBuf>,
}

/// What `prepare` set up, for `run`.
pub struct DevPlan {
    args: DevArgs,
    data_dir: PathBuf,
    core_config: PathBuf,
}

const TOKEN_LABEL: &str = "keygrid-dev";

fn read_or_create_secret(path: &Path) -> anyhow::Result<String> {
    if path.exists() {
        let s = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        return Ok(s.trim().to_string());
    }
    let mut buf = [0u8; 12];
    aws_lc_rs::rand::fill(&mut buf).map_err(|_| anyhow::anyhow!("random generator failed"))?;
    let secret = hex::encode(buf);
    write_atomic(path, secret.as_bytes(), 0o600)
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(secret)
}

/// Prepares the data directory and the SoftHSM2 token. Must run before any thread starts:
/// it sets `SOFTHSM2_CONF` for this process.
pub fn prepare(args: DevArgs) -> anyhow::Result<DevPlan> {
    if !args.pkcs11_module.exists() {
        anyhow::bail!(
            "PKCS#11 module {} not found; install SoftHSM2 (scripts/install-deps.sh run, or apt-get install softhsm2)",
            args.pkcs11_module.display()
        );
    }
    private_dir(&args.data_dir)?;
    let data_dir = std::fs::canonicalize(&args.data_dir)?;
    let tokens = data_dir.join("softhsm/tokens");
    private_dir(&tokens)?;
    let conf = data_dir.join("softhsm/softhsm2.conf");
    write_atomic(
        &conf,
        format!(
            "directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\nslots.removable = false\n",
            tokens.display()
        )
        .as_bytes(),
        0o600,
    )?;
    // Single-threaded at this point (called before the runtime starts), so this is race-free.
    std::env::set_var("SOFTHSM2_CONF", &conf);

    let user_pin = read_or_create_secret(&data_dir.join("hsm-pin"))?;
    let so_pin = read_or_create_secret(&data_dir.join("hsm-so-pin"))?;
    let created = Pkcs11Token::init_if_missing(
        &args.pkcs11_module,
        TOKEN_LABEL,
        &AuthPin::from(so_pin),
        &AuthPin::from(user_pin),
    )?;
    if created {
        eprintln!(
            "keygrid dev: created SoftHSM2 token {TOKEN_LABEL:?} in {}",
            tokens.display()
        );
    }

    let core_config = data_dir.join("core.toml");
    let toml = format!(
        "# Written by `keygrid dev`; regenerated on every start.\n\
         trust_domain = {td:?}\n\
         data_dir = {dd:?}\n\n\
         [server]\nlisten = \"{listen}\"\n\n\
         [hsm]\nmodule = {module:?}\ntoken_label = {TOKEN_LABEL:?}\npin_file = {pin:?}\n\n\
         [workloads]\ndefault_svid_ttl = \"{ttl}\"\nmax_svid_ttl = \"{max}\"\njwt_svid_ttl = \"{jwt}\"\n",
        td = args.trust_domain,
        dd = data_dir.display().to_string(),
        listen = args.listen,
        module = args.pkcs11_module.display().to_string(),
        pin = data_dir.join("hsm-pin").display().to_string(),
        ttl = humantime::format_duration(args.svid_ttl),
        max = humantime::format_duration(args.svid_ttl.max(Duration::from_secs(3600))),
        jwt = humantime::format_duration(args.jwt_svid_ttl),
    );
    let mut toml = toml;
    for f in &args.federation {
        let (td, file) = f.split_once('=').ok_or_else(|| {
            anyhow::anyhow!("--federation {f:?}: expected <trust-domain>=<bundle file>")
        })?;
        let file = std::path::absolute(file)
            .with_context(|| format!("--federation {f:?}: bad bundle file path"))?;
        toml.push_str(&format!(
            "\n[[federation]]\ntrust_domain = {td:?}\nbundle_file = {:?}\n",
            file.display().to_string()
        ));
    }
    if let Some(addr) = args.http_listen {
        toml.push_str(&format!("\n[http]\nlisten = \"{addr}\"\n"));
        if let Some(d) = args.delta_crl_validity {
            toml.push_str(&format!(
                "delta_crl_validity = \"{}\"\n",
                humantime::format_duration(d)
            ));
        }
    }
    if let Some(extra) = &args.config_append {
        let text = std::fs::read_to_string(extra)
            .with_context(|| format!("cannot read {}", extra.display()))?;
        toml.push_str(&format!("\n# Appended from {}\n{text}\n", extra.display()));
    }
    if let Some(addr) = args.est_listen {
        // Last, so that an appended file may add keys to [est] only through this table.
        if !toml.contains("\n[est]") {
            toml.push_str("\n[est]\n");
        }
        toml = toml.replacen("\n[est]\n", &format!("\n[est]\nlisten = \"{addr}\"\n"), 1);
    }
    if let Some(extra) = &args.core_config_extra {
        let text = std::fs::read_to_string(extra)
            .with_context(|| format!("cannot read {}", extra.display()))?;
        toml.push_str(&format!("\n# From {}\n{text}\n", extra.display()));
    }
    write_atomic(&core_config, toml.as_bytes(), 0o600)?;
    Ok(DevPlan {
        args,
        data_dir,
        core_config,
    })
}

fn current_uid() -> u32 {
    // SAFETY: getuid(2) takes no arguments, touches no memory and cannot fail.
    unsafe { libc::getuid() }
}

/// Runs core and the agent until Ctrl-C or SIGTERM.
pub async fn run(plan: DevPlan) -> anyhow::Result<()> {
    let cfg = CoreConfig::load(&plan.core_config)?;
    let td = cfg.trust_domain.clone();
    let admin_socket = cfg.admin_socket();
    let bundle_path = cfg.bundle_path();
    if admin_socket.exists() {
        // A live core would still answer on it; a dead one left it behind.
        if tokio::net::UnixStream::connect(&admin_socket).await.is_ok() {
            anyhow::bail!(
                "another keygrid is already running with {}",
                plan.data_dir.display()
            );
        }
    }

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut core = tokio::spawn(crate::server::run(cfg, async move {
        let mut rx = stop_rx;
        let _ = rx.wait_for(|v| *v).await;
    }));

    // Wait for core's admin socket.
    let mut admin = loop {
        if core.is_finished() {
            return match core.await {
                Ok(Err(e)) => Err(e),
                _ => Err(anyhow::anyhow!("core stopped during start-up")),
            };
        }
        if admin_socket.exists() {
            if let Ok(c) = crate::admin_client::connect(&admin_socket).await {
                break c;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };

    let agent_id = format!("spiffe://{td}/keygrid/node/dev");
    let uid = current_uid();
    let workload_id = format!("spiffe://{td}/dev/uid/{uid}");
    let entries = admin
        .list_entries(pb::ListEntriesRequest {})
        .await?
        .into_inner()
        .entries;
    let selector = pb::Selector {
        r#type: "unix".into(),
        value: format!("uid:{uid}"),
    };
    if !entries
        .iter()
        .any(|e| e.spiffe_id == workload_id && e.parent_id == agent_id)
    {
        admin
            .create_entry(pb::CreateEntryRequest {
                spiffe_id: workload_id.clone(),
                parent_id: agent_id.clone(),
                selectors: vec![selector],
                ..Default::default()
            })
            .await?;
    }
    let token = admin
        .create_join_token(pb::CreateJoinTokenRequest {
            agent_spiffe_id: agent_id.clone(),
            ttl_seconds: 600,
        })
        .await?
        .into_inner()
        .token;

    let agent_dir = plan.data_dir.join("agent");
    private_dir(&agent_dir)?;
    let token_file = agent_dir.join("join-token");
    write_atomic(&token_file, token.as_bytes(), 0o600)?;
    let socket = agent_dir.join("workload.sock");
    let agent_config = agent_dir.join("agent.toml");
    let agent_toml = format!(
        "# Written by `keygrid dev`; regenerated on every start.\n\
         trust_domain = {td:?}\n\
         server_address = \"https://{listen}\"\n\
         server_name = \"localhost\"\n\
         trust_bundle_path = {bundle:?}\n\
         join_token_file = {token:?}\n\
         data_dir = {dir:?}\n\
         socket_path = {socket:?}\n",
        listen = plan.args.listen,
        bundle = bundle_path.display().to_string(),
        token = token_file.display().to_string(),
        dir = agent_dir.display().to_string(),
        socket = socket.display().to_string(),
    );
    write_atomic(&agent_config, agent_toml.as_bytes(), 0o600)?;

    let agent_bin = match &plan.args.agent_bin {
        Some(p) => p.clone(),
        None => std::env::current_exe()?.with_file_name("keygrid-agent"),
    };
    let mut agent = tokio::process::Command::new(&agent_bin)
        .arg("run")
        .arg("--config")
        .arg(&agent_config)
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("cannot start the agent {}", agent_bin.display()))?;

    println!("KeyGrid dev is running (trust domain {td}).");
    println!("  root bundle:      {}", bundle_path.display());
    println!("  workload socket:  {}", socket.display());
    println!("  your identity:    {workload_id} (unix uid {uid})");
    println!(
        "  export SPIFFE_ENDPOINT_SOCKET=unix://{}",
        socket.display()
    );
    println!("Press Ctrl-C to stop.");

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let outcome: anyhow::Result<()> = tokio::select! {
        _ = tokio::signal::ctrl_c() => Ok(()),
        _ = term.recv() => Ok(()),
        status = agent.wait() => Err(anyhow::anyhow!("the agent exited: {}", status?)),
        res = &mut core => match res {
            Ok(Ok(())) => Err(anyhow::anyhow!("core stopped")),
            Ok(Err(e)) => Err(e),
            Err(e) => Err(anyhow::anyhow!("core task failed: {e}")),
        },
    };
    eprintln!("keygrid dev: stopping");
    if let Some(pid) = agent.id() {
        // SAFETY: kill(2) with a pid we spawned and still own (not yet reaped) and a
        // constant signal number; it touches no memory.
        unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    }
    let _ = tokio::time::timeout(Duration::from_secs(5), agent.wait()).await;
    let _ = stop_tx.send(true);
    if !core.is_finished() {
        let _ = tokio::time::timeout(Duration::from_secs(5), core).await;
    }
    let _ = std::fs::set_permissions(&plan.data_dir, std::fs::Permissions::from_mode(0o700));
    outcome
}
