//! Real SPIRE v1.13.3 with KeyGrid's `keygrid_tpm` NodeAttestor plugin pair: a spire-agent
//! whose TPM is a swtpm (EK certificate from a private swtpm local CA) joins a spire-server,
//! gets the EK-hash SPIFFE ID, and then serves a workload SVID. A TPM whose EK certificate
//! comes from an unknown CA is refused with the reason in the server log and no agent entry.

use keygrid_integration::spire_tool;
use keygrid_integration::swtpm::{LocalCa, Swtpm};
use keygrid_integration::{bin, free_port, run, wait_until};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use x509_parser::prelude::FromDer;

const TD: &str = "example.org";

/// A child process killed on drop, with its log file.
struct Proc {
    child: Child,
    log: PathBuf,
}

impl Proc {
    fn start(cmd: &mut Command, log: PathBuf) -> Self {
        let f = std::fs::File::create(&log).expect("log file");
        let child = cmd
            .stdin(Stdio::null())
            .stdout(f.try_clone().expect("log"))
            .stderr(f)
            .spawn()
            .unwrap_or_else(|e| panic!("start {cmd:?}: {e}"));
        Proc { child, log }
    }
    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct SpireServer {
    proc: Proc,
    socket: PathBuf,
    port: u16,
}

impl SpireServer {
    /// Starts spire-server with the server plugin trusting `ca_files`; `extra` adds
    /// `plugin_data` lines (e.g. an allow-list).
    fn start(dir: &Path, ca_files: &[PathBuf], extra: &str) -> Self {
        let port = free_port();
        let socket = dir.join("server.sock");
        let cas = ca_files
            .iter()
            .map(|p| format!("{:?}", p.display().to_string()))
            .collect::<Vec<_>>()
            .join(", ");
        let conf = format!(
            r#"server {{
  bind_address = "127.0.0.1"
  bind_port = "{port}"
  socket_path = "{socket}"
  trust_domain = "{TD}"
  data_dir = "{dir}/server-data"
  log_level = "DEBUG"
}}
plugins {{
  DataStore "sql" {{
    plugin_data {{
      database_type = "sqlite3"
      connection_string = "{dir}/datastore.sqlite3"
    }}
  }}
  KeyManager "memory" {{
    plugin_data {{}}
  }}
  NodeAttestor "keygrid_tpm" {{
    plugin_cmd = "{plugin}"
    plugin_data {{
      ek_ca_paths = [{cas}]
      {extra}
    }}
  }}
}}
"#,
            socket = socket.display(),
            dir = dir.display(),
            plugin = bin("keygrid-tpm-attestor-server").display(),
        );
        let path = dir.join("server.conf");
        std::fs::write(&path, conf).expect("server.conf");
        let proc = Proc::start(
            Command::new(spire_tool("spire-server"))
                .arg("run")
                .arg("-config")
                .arg(&path),
            dir.join("server.log"),
        );
        let server = SpireServer { proc, socket, port };
        wait_until(
            "spire-server to become healthy",
            Duration::from_secs(30),
            || {
                Command::new(spire_tool("spire-server"))
                    .args(["healthcheck", "-socketPath"])
                    .arg(&server.socket)
                    .output()
                    .map(|o| o.status.success())
                    .unwrap_or(false)
            },
        );
        server
    }

    fn cmd(&self, args: &[&str]) -> String {
        let out = run(Command::new(spire_tool("spire-server"))
            .args(args)
            .arg("-socketPath")
            .arg(&self.socket));
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    }
}

fn start_agent(dir: &Path, server: &SpireServer, tpm: &Swtpm) -> (Proc, PathBuf) {
    let bundle = dir.join("bundle.pem");
    std::fs::write(&bundle, server.cmd(&["bundle", "show"])).expect("bundle");
    let socket = dir.join("agent.sock");
    let conf = format!(
        r#"agent {{
  data_dir = "{dir}/agent-data"
  log_level = "DEBUG"
  server_address = "127.0.0.1"
  server_port = "{port}"
  socket_path = "{socket}"
  trust_bundle_path = "{bundle}"
  trust_domain = "{TD}"
}}
plugins {{
  NodeAttestor "keygrid_tpm" {{
    plugin_cmd = "{plugin}"
    plugin_data {{
      tcti = "{tcti}"
    }}
  }}
  KeyManager "memory" {{
    plugin_data {{}}
  }}
  WorkloadAttestor "unix" {{
    plugin_data {{}}
  }}
}}
"#,
        dir = dir.display(),
        port = server.port,
        socket = socket.display(),
        bundle = bundle.display(),
        plugin = bin("keygrid-tpm-attestor-agent").display(),
        tcti = tpm.tcti(),
    );
    let path = dir.join("agent.conf");
    std::fs::write(&path, conf).expect("agent.conf");
    let proc = Proc::start(
        Command::new(spire_tool("spire-agent"))
            .arg("run")
            .arg("-config")
            .arg(&path),
        dir.join("agent.log"),
    );
    (proc, socket)
}

fn ek_hash(tpm: &Swtpm) -> String {
    let out = run(Command::new("tpm2_nvread")
        .arg("0x1c00002")
        .env("TPM2TOOLS_TCTI", tpm.tcti()));
    assert!(
        out.status.success(),
        "tpm2_nvread: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (_, cert) =
        x509_parser::certificate::X509Certificate::from_der(&out.stdout).expect("EK certificate");
    hex::encode(aws_lc_rs::digest::digest(
        &aws_lc_rs::digest::SHA256,
        cert.public_key().raw,
    ))
}

#[test]
fn spire_agent_with_swtpm_attests_and_serves_a_workload_svid() {
    keygrid_integration::require_tool(
        "tpm2_nvread",
        "run scripts/install-deps.sh (Debian package tpm2-tools)",
    );
    let dir = tempfile::tempdir().expect("temp dir");
    let ca = LocalCa::new(dir.path());
    let tpm = Swtpm::provision_and_start(&ca, &dir.path().join("tpm"));
    let hash = ek_hash(&tpm);
    let server = SpireServer::start(dir.path(), &[ca.root_cert(), ca.issuer_cert()], "");
    let (agent, agent_socket) = start_agent(dir.path(), &server, &tpm);

    let agent_id = format!("spiffe://{TD}/spire/agent/keygrid_tpm/{hash}");
    wait_until("the agent to attest", Duration::from_secs(60), || {
        server.cmd(&["agent", "list"]).contains(&agent_id)
    });
    let show = server.cmd(&["agent", "show", "-spiffeID", &agent_id]);
    assert!(
        show.contains(&format!("keygrid_tpm:ek_hash:{hash}")),
        "{show}"
    );
    assert!(
        show.contains("keygrid_tpm:ek_manufacturer:id:00001014"),
        "{show}"
    );

    // A workload on this node (our own uid) gets an SVID through the attested agent.
    // SAFETY: getuid has no preconditions and cannot fail.
    let uid = unsafe { libc::getuid() }.to_string();
    let created = server.cmd(&[
        "entry",
        "create",
        "-parentID",
        &agent_id,
        "-spiffeID",
        &format!("spiffe://{TD}/workload"),
        "-selector",
        &format!("unix:uid:{uid}"),
    ]);
    assert!(created.contains("Entry ID"), "{created}");
    let mut last = String::new();
    wait_until(
        "a workload SVID from the SPIRE agent",
        Duration::from_secs(60),
        || {
            let out = run(Command::new(spire_tool("spire-agent"))
                .args(["api", "fetch", "x509", "-socketPath"])
                .arg(&agent_socket));
            last = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            out.status.success() && last.contains(&format!("spiffe://{TD}/workload"))
        },
    );
    drop(agent);
    assert!(
        server.proc.log().contains("TPM attestation succeeded"),
        "{}",
        server.proc.log()
    );
}

#[test]
fn spire_refuses_a_tpm_whose_ek_certificate_is_from_an_unknown_ca() {
    let dir = tempfile::tempdir().expect("temp dir");
    let trusted = LocalCa::new(&dir.path().join("trusted"));
    let _trusted_tpm = Swtpm::provision_and_start(&trusted, &dir.path().join("tpm-trusted"));
    let other = LocalCa::new(&dir.path().join("other"));
    let tpm = Swtpm::provision_and_start(&other, &dir.path().join("tpm"));
    let server = SpireServer::start(
        dir.path(),
        &[trusted.root_cert(), trusted.issuer_cert()],
        "",
    );
    let (mut agent, _) = start_agent(dir.path(), &server, &tpm);

    wait_until(
        "the server to log the refusal",
        Duration::from_secs(60),
        || {
            server
                .proc
                .log()
                .contains("does not chain to any configured manufacturer CA")
        },
    );
    // The agent gives up (SPIRE agents exit when attestation is refused) ...
    wait_until("the refused agent to exit", Duration::from_secs(60), || {
        matches!(agent.child.try_wait(), Ok(Some(_)))
    });
    assert!(
        agent
            .log()
            .contains("does not chain to any configured manufacturer CA"),
        "the agent sees the reason too:\n{}",
        agent.log()
    );
    // ... and the server created no agent entry.
    let list = server.cmd(&["agent", "list"]);
    assert!(!list.contains("keygrid_tpm"), "{list}");
}

#[test]
fn spire_refuses_a_second_tpm_that_is_not_on_the_allow_list() {
    let dir = tempfile::tempdir().expect("temp dir");
    let ca = LocalCa::new(dir.path());
    let listed = Swtpm::provision_and_start(&ca, &dir.path().join("tpm-listed"));
    let unlisted = Swtpm::provision_and_start(&ca, &dir.path().join("tpm-unlisted"));
    let (listed_hash, unlisted_hash) = (ek_hash(&listed), ek_hash(&unlisted));
    drop(listed);
    let server = SpireServer::start(
        dir.path(),
        &[ca.root_cert(), ca.issuer_cert()],
        &format!("allowed_ek_hashes = [\"{listed_hash}\"]"),
    );
    let (mut agent, _) = start_agent(dir.path(), &server, &unlisted);
    let reason = format!("EK {unlisted_hash} is not on the allow-list");
    wait_until(
        "the server to log the refusal",
        Duration::from_secs(60),
        || server.proc.log().contains(&reason),
    );
    wait_until("the refused agent to exit", Duration::from_secs(60), || {
        matches!(agent.child.try_wait(), Ok(Some(_)))
    });
    let list = server.cmd(&["agent", "list"]);
    assert!(!list.contains("keygrid_tpm"), "{list}");
}
