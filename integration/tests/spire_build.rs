//! SPIRE v1.13.3, built from the Go module proxy by scripts/build-spire.sh, runs here.
//! Later SPIRE integration tests (UpstreamAuthority, TPM node attestor) depend on it.

use keygrid_integration::spire_tool;
use std::process::Command;

#[test]
fn spire_server_and_agent_report_version_1_13_3() {
    for name in ["spire-server", "spire-agent"] {
        let out = Command::new(spire_tool(name))
            .arg("--version")
            .output()
            .expect("run SPIRE");
        // SPIRE prints its version on stderr.
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "{name} --version failed: {text}");
        assert!(text.trim().starts_with("1.13.3"), "{name} reports {text:?}");
    }
}
