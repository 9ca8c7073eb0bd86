//! Real SPIRE v1.13.3 with KeyGrid's `keygrid_tpm` NodeAttestor plugin pair: a spire-agent
//! whose TPM is a swtpm (EK certificate from a private swtpm local CA) joins a spire-server,
//! gets the EK-hash SPIFFE ID, and then serves a workload SVID. A TPM whose EK certificate
//! comes from an unknown CA is refused with the reason in the server log and no agent entry.

use keygrid_integration::spire::{SpireAgent, SpireServer};
use keygrid_integration::spire_tool;
use keygrid_integration::swtpm::{LocalCa, Swtpm};
use keygrid_integration::{bin, run, wait_until};
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;
use x509_parser::prelude::FromDer;

const TD: &str = "example.org";

/// A spire-server with the `keygrid_tpm` server plugin trusting `ca_files`; `extra` adds
/// `plugin_data` lines (e.g. an allow-list). Waits until it is healthy.
fn tpm_server(ca_files: &[PathBuf], extra: &str) -> SpireServer {
    let cas = ca_files
        .iter()
        .map(|p| format!("{:?}", p.display().to_string()))
        .collect::<Vec<_>>()
        .join(", ");
    let mut server = SpireServer::start(
        TD,
        "",
        &format!(
            r#"NodeAttestor "keygrid_tpm" {{
    plugin_cmd = "{plugin}"
    plugin_data {{
      ek_ca_paths = [{cas}]
      {extra}
    }}
  }}"#,
            plugin = bin("keygrid-tpm-attestor-server").display(),
        ),
    );
    server.wait_ready();
    server
}

/// `spire-server` output (stdout and stderr) for `args`.
fn server_cmd(server: &SpireServer, args: &[&str]) -> String {
    let out = server.cli(args);
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// A spire-agent that attests with the `keygrid_tpm` agent plugin on `tpm`.
fn start_agent(server: &SpireServer, tpm: &Swtpm) -> SpireAgent {
    SpireAgent::start_with(
        server,
        &server.bundle_pem(),
        "",
        &format!(
            r#"NodeAttestor "keygrid_tpm" {{
    plugin_cmd = "{plugin}"
    plugin_data {{
      tcti = "{tcti}"
    }}
  }}"#,
            plugin = bin("keygrid-tpm-attestor-agent").display(),
            tcti = tpm.tcti(),
        ),
    )
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
    let server = tpm_server(&[ca.root_cert(), ca.issuer_cert()], "");
    let agent = start_agent(&server, &tpm);
    let agent_socket = agent.socket();

    let agent_id = format!("spiffe://{TD}/spire/agent/keygrid_tpm/{hash}");
    wait_until("the agent to attest", Duration::from_secs(60), || {
        server_cmd(&server, &["agent", "list"]).contains(&agent_id)
    });
    let show = server_cmd(&server, &["agent", "show", "-spiffeID", &agent_id]);
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
    let created = server_cmd(
        &server,
        &[
            "entry",
            "create",
            "-parentID",
            &agent_id,
            "-spiffeID",
            &format!("spiffe://{TD}/workload"),
            "-selector",
            &format!("unix:uid:{uid}"),
        ],
    );
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
        server.log().contains("TPM attestation succeeded"),
        "{}",
        server.log()
    );
}

#[test]
fn spire_refuses_a_tpm_whose_ek_certificate_is_from_an_unknown_ca() {
    let dir = tempfile::tempdir().expect("temp dir");
    let trusted = LocalCa::new(&dir.path().join("trusted"));
    let _trusted_tpm = Swtpm::provision_and_start(&trusted, &dir.path().join("tpm-trusted"));
    let other = LocalCa::new(&dir.path().join("other"));
    let tpm = Swtpm::provision_and_start(&other, &dir.path().join("tpm"));
    let server = tpm_server(&[trusted.root_cert(), trusted.issuer_cert()], "");
    let mut agent = start_agent(&server, &tpm);

    wait_until(
        "the server to log the refusal",
        Duration::from_secs(60),
        || {
            server
                .log()
                .contains("does not chain to any configured manufacturer CA")
        },
    );
    // The agent gives up (SPIRE agents exit when attestation is refused) ...
    wait_until("the refused agent to exit", Duration::from_secs(60), || {
        agent.has_exited()
    });
    assert!(
        agent
            .log()
            .contains("does not chain to any configured manufacturer CA"),
        "the agent sees the reason too:\n{}",
        agent.log()
    );
    // ... and the server created no agent entry.
    let list = server_cmd(&server, &["agent", "list"]);
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
    let server = tpm_server(
        &[ca.root_cert(), ca.issuer_cert()],
        &format!("allowed_ek_hashes = [\"{listed_hash}\"]"),
    );
    let mut agent = start_agent(&server, &unlisted);
    let reason = format!("EK {unlisted_hash} is not on the allow-list");
    wait_until(
        "the server to log the refusal",
        Duration::from_secs(60),
        || server.log().contains(&reason),
    );
    wait_until("the refused agent to exit", Duration::from_secs(60), || {
        agent.has_exited()
    });
    let list = server_cmd(&server, &["agent", "list"]);
    assert!(!list.contains("keygrid_tpm"), "{list}");
}
