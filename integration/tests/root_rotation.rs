//! A root rotation through the running system: the new root reaches workloads in the
//! bundle before anything is signed under it, SVIDs move to the new chain after the
//! preparation window, and every SVID a workload held keeps verifying against the bundle.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use keygrid_integration::{require_tool, run, with_header, workload_client, DevEnv};
use keygrid_proto::workload::{X509BundlesRequest, X509svidRequest};

/// Splits concatenated DER certificates (the Workload API's bundle and chain encoding).
fn split_der(mut data: &[u8]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    while !data.is_empty() {
        let (rest, _) = x509_parser::parse_x509_certificate(data).expect("a certificate");
        out.push(data[..data.len() - rest.len()].to_vec());
        data = rest;
    }
    out
}

fn pem_file(path: &Path, ders: &[Vec<u8>]) {
    let text: String = ders
        .iter()
        .map(|d| pem::encode(&pem::Pem::new("CERTIFICATE", d.clone())))
        .collect();
    std::fs::write(path, text).unwrap();
}

/// `openssl verify -x509_strict` of a chain (leaf first) against `roots`.
fn verifies(dir: &Path, chain: &[Vec<u8>], roots: &[Vec<u8>]) -> bool {
    pem_file(&dir.join("roots.pem"), roots);
    pem_file(&dir.join("chain.pem"), &chain[1..]);
    pem_file(&dir.join("leaf.pem"), &chain[..1]);
    let out = run(Command::new("openssl")
        .args(["verify", "-x509_strict", "-CAfile"])
        .arg(dir.join("roots.pem"))
        .arg("-untrusted")
        .arg(dir.join("chain.pem"))
        .arg(dir.join("leaf.pem")));
    out.status.success()
}

#[tokio::test(flavor = "multi_thread")]
async fn root_rotation_reaches_workloads_without_a_verification_gap() {
    require_tool("openssl", "apt-get install openssl");
    let env = DevEnv::start("6s");
    let dir = tempfile::tempdir().unwrap();
    let td = format!("spiffe://{}", env.trust_domain);
    let mut client = workload_client(&env.socket()).await;

    let mut bundles = client
        .fetch_x509_bundles(with_header(X509BundlesRequest {}))
        .await
        .unwrap()
        .into_inner();
    let first = bundles.message().await.unwrap().expect("a bundle");
    let old_roots = split_der(&first.bundles[&td]);
    assert_eq!(old_roots.len(), 1);

    let mut svids = client
        .fetch_x509svid(with_header(X509svidRequest {}))
        .await
        .unwrap()
        .into_inner();
    let before = split_der(&svids.message().await.unwrap().expect("an SVID").svids[0].x509_svid);
    assert!(verifies(dir.path(), &before, &old_roots));

    let out = env.cli(&["ca", "rotate", "root", "--prepare", "4s"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // The new root is pushed to workloads while the old chain still signs.
    let both = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            let msg = bundles
                .message()
                .await
                .unwrap()
                .expect("bundle stream open");
            let roots = split_der(&msg.bundles[&td]);
            if roots.len() == 2 {
                return roots;
            }
        }
    })
    .await
    .expect("the rotated root reached the Workload API within 30 s");
    assert_eq!(both[0], old_roots[0], "the old root stays, first");
    assert!(
        verifies(dir.path(), &before, &both),
        "an SVID from before still verifies"
    );
    // The agent adopted the new bundle for its own connection to core, and saved it.
    let agent_bundle = std::fs::read_to_string(env.dir.path().join("agent/bundle.pem"))
        .expect("the agent saved the bundle it adopted");
    assert_eq!(pem::parse_many(&agent_bundle).unwrap().len(), 2);

    // After the preparation window SVIDs come from the new chain, and verify against the
    // bundle, but not against the old root alone.
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        assert!(
            Instant::now() < deadline,
            "no SVID under the new root within 40 s"
        );
        let msg = tokio::time::timeout(Duration::from_secs(20), svids.message())
            .await
            .expect("SVID updates keep coming")
            .unwrap()
            .expect("stream open");
        let chain = split_der(&msg.svids[0].x509_svid);
        assert!(
            verifies(dir.path(), &chain, &both),
            "every SVID verifies against the current bundle"
        );
        if !verifies(dir.path(), &chain, &old_roots) {
            assert!(
                verifies(dir.path(), &chain, &both[1..]),
                "signed under the new root"
            );
            break;
        }
    }
}
