//! SPIRE v1.13.3, built from the Go module proxy by scripts/build-spire.sh, runs here.
//! Later SPIRE integration tests (UpstreamAuthority, TPM node attestor) depend on it.

use std::path::PathBuf;
use std::process::Command;

fn tool(name: &str) -> PathBuf {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../tools/bin")
        .join(name);
    assert!(
        path.exists(),
        "{} is missing: run scripts/build-spire.sh (make test does)",
        path.display()
    );
    path
}

#[test]
fn spire_server_and_agent_report_version_1_13_3() {
    for name in ["spire-server", "spire-agent"] {
        let out = Command::new(tool(name))
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
