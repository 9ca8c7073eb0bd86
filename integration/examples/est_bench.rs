//! Benchmark: EST enrollments per second on the client-certificate path, next to the node
//! API (gRPC) issuing the same kind of certificate in the same run, and the latency of one
//! TPM-attested enrollment with swtpm.
//!
//! `cargo run --release -p keygrid-integration --example est_bench -- [enrollments] [concurrency]`
//! (needs the workspace binaries built; `KEYGRID_BIN_DIR` may point at them).
//!
//! 1. `kubelet-client/simpleenroll` with the dev node's certificate: each enrollment is a
//!    new TLS connection (what an EST client does), a fresh P-256 CSR, policy, signing with
//!    the nodes CA in SoftHSM2, a store write, certs-only PKCS#7 back.
//!    Also `nodes/simplereenroll` of the node's own certificate (node row + certificate in
//!    one store transaction).
//! 2. Reference: `RenewNodeCredential` over the node API (gRPC, one persistent mTLS
//!    connection) with the same concurrency: the same signer and store transaction as
//!    `nodes/simplereenroll`, without a TLS handshake per certificate.
//! 3. TPM-attested enrollment (`tpm-challenge` + `tpm-enroll`) of a swtpm node, sequential,
//!    split into TPM session set-up (EK, AK, enrollment key) and the enrollment itself.

use std::sync::Arc;
use std::time::{Duration, Instant};

use keygrid_integration::swtpm::{LocalCa, Swtpm};
use keygrid_integration::{free_port, DevEnv};
use keygrid_proto::keygrid::v1 as pb;
use keygrid_workload_api::est_client::{software_identity, EstClient};
use keygrid_workload_api::tpm_key::TpmNodeKey;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

fn csr() -> Vec<u8> {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut p = rcgen::CertificateParams::default();
    p.distinguished_name
        .push(rcgen::DnType::OrganizationName, "system:nodes");
    p.distinguished_name
        .push(rcgen::DnType::CommonName, "system:node:dev");
    p.serialize_request(&key).unwrap().der().to_vec()
}

/// A CSR renewing the dev node's own certificate (same subject and SAN).
fn node_csr() -> Vec<u8> {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut p = rcgen::CertificateParams::default();
    p.distinguished_name
        .push(rcgen::DnType::OrganizationName, "KeyGrid");
    p.distinguished_name
        .push(rcgen::DnType::CommonName, "KeyGrid agent");
    p.subject_alt_names = vec![rcgen::SanType::URI(
        "spiffe://example.org/keygrid/node/dev".try_into().unwrap(),
    )];
    p.serialize_request(&key).unwrap().der().to_vec()
}

/// Runs `csrs` through EST `label/op` with `concurrency` tasks; (seconds, sorted latencies).
async fn est_run(
    est: &Arc<EstClient>,
    identity: &Arc<rustls::sign::CertifiedKey>,
    label: &'static str,
    reenroll: bool,
    csrs: Vec<Vec<u8>>,
    concurrency: usize,
) -> (f64, Vec<Duration>) {
    let queue = Arc::new(std::sync::Mutex::new(csrs));
    let t = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (est, identity, queue) = (est.clone(), identity.clone(), queue.clone());
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            loop {
                let Some(csr) = queue.lock().unwrap().pop() else {
                    break;
                };
                let s = Instant::now();
                let make = move |_: &str| Ok(csr.clone());
                est.enroll(label, reenroll, &make, identity.clone())
                    .await
                    .expect("enroll");
                lat.push(s.elapsed());
            }
            lat
        }));
    }
    let mut lat = Vec::new();
    for task in tasks {
        lat.extend(task.await.unwrap());
    }
    let secs = t.elapsed().as_secs_f64();
    lat.sort();
    (secs, lat)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let n: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(400);
    let concurrency: usize = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(4);

    let tpm_dir = tempfile::tempdir().unwrap();
    let ca = LocalCa::new(&tpm_dir.path().join("ca"));
    let tpm = Swtpm::provision_and_start(&ca, &tpm_dir.path().join("tpm"));
    let extra = tpm_dir.path().join("extra.toml");
    std::fs::write(
        &extra,
        format!(
            "[est.tpm]\nmanufacturer_cas = [{:?}, {:?}]\n",
            ca.root_cert().display().to_string(),
            ca.issuer_cert().display().to_string()
        ),
    )
    .unwrap();
    let est_addr = format!("127.0.0.1:{}", free_port());
    let dev = DevEnv::start_with_args(
        tempfile::tempdir().unwrap(),
        "5m",
        &[
            "--est-listen".into(),
            est_addr.clone(),
            "--config-append".into(),
            extra.display().to_string(),
        ],
    );
    let roots = std::fs::read_to_string(dev.bundle_pem()).unwrap();
    let node_cert = std::fs::read_to_string(dev.dir.path().join("agent/node-cert.pem")).unwrap();
    let node_key = std::fs::read_to_string(dev.dir.path().join("agent/node-key.pem")).unwrap();
    let chain: Vec<Vec<u8>> = pem::parse_many(&node_cert)
        .unwrap()
        .into_iter()
        .map(|p| p.into_contents())
        .collect();
    let identity = software_identity(&chain, &node_key).unwrap();
    let est =
        Arc::new(EstClient::new(&format!("https://{est_addr}/.well-known/est"), &roots).unwrap());
    // Wait for EST and warm up.
    let start = Instant::now();
    loop {
        let warm = csr();
        let make = move |_: &str| Ok(warm.clone());
        if est
            .enroll("kubelet-client", false, &make, identity.clone())
            .await
            .is_ok()
        {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "EST did not come up:\n{}",
            dev.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let csrs: Vec<Vec<u8>> = (0..n).map(|_| csr()).collect();

    // 1. EST simpleenroll (kubelet-client) and simplereenroll (the node's own certificate,
    //    the same store transaction as the gRPC renewal below).
    let (est_secs, est_lat) = est_run(
        &est,
        &identity,
        "kubelet-client",
        false,
        csrs.clone(),
        concurrency,
    )
    .await;
    let node_csrs: Vec<Vec<u8>> = (0..n).map(|_| node_csr()).collect();
    let (re_secs, re_lat) = est_run(
        &est,
        &identity,
        "nodes",
        true,
        node_csrs.clone(),
        concurrency,
    )
    .await;

    // 2. Reference: RenewNodeCredential over the node API.
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(&roots))
        .domain_name("localhost")
        .identity(Identity::from_pem(&node_cert, &node_key));
    let channel = Endpoint::from_shared(format!("https://{}", dev.listen))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect()
        .await
        .unwrap();
    let queue = Arc::new(std::sync::Mutex::new(node_csrs));
    let t = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (channel, queue) = (channel.clone(), queue.clone());
        tasks.push(tokio::spawn(async move {
            let mut client = pb::node_client::NodeClient::new(channel);
            let mut lat = Vec::new();
            loop {
                let Some(csr) = queue.lock().unwrap().pop() else {
                    break;
                };
                let s = Instant::now();
                client
                    .renew_node_credential(pb::RenewNodeCredentialRequest { csr })
                    .await
                    .expect("renew");
                lat.push(s.elapsed());
            }
            lat
        }));
    }
    let mut grpc_lat = Vec::new();
    for task in tasks {
        grpc_lat.extend(task.await.unwrap());
    }
    let grpc_secs = t.elapsed().as_secs_f64();
    grpc_lat.sort();

    // 3. TPM-attested enrollment with swtpm.
    let mut open_lat = Vec::new();
    let mut enroll_lat = Vec::new();
    for _ in 0..5 {
        let tcti = tpm.tcti();
        let s = Instant::now();
        let key = Arc::new(
            tokio::task::spawn_blocking(move || TpmNodeKey::open(&tcti))
                .await
                .unwrap()
                .unwrap(),
        );
        open_lat.push(s.elapsed());
        let s = Instant::now();
        est.tpm_enroll(&key, "bench-node")
            .await
            .expect("tpm enroll");
        enroll_lat.push(s.elapsed());
    }
    open_lat.sort();
    enroll_lat.sort();

    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!("enrollments: {n}, concurrency: {concurrency}");
    println!(
        "EST simpleenroll (new TLS connection each): {:.0}/s  p50 {:.1} ms  p99 {:.1} ms",
        n as f64 / est_secs,
        ms(percentile(&est_lat, 0.5)),
        ms(percentile(&est_lat, 0.99))
    );
    println!(
        "EST nodes/simplereenroll (new TLS connection each): {:.0}/s  p50 {:.1} ms  p99 {:.1} ms",
        n as f64 / re_secs,
        ms(percentile(&re_lat, 0.5)),
        ms(percentile(&re_lat, 0.99))
    );
    println!(
        "node API RenewNodeCredential (gRPC, one connection): {:.0}/s  p50 {:.1} ms  p99 {:.1} ms",
        n as f64 / grpc_secs,
        ms(percentile(&grpc_lat, 0.5)),
        ms(percentile(&grpc_lat, 0.99))
    );
    println!(
        "node renewal, EST simplereenroll / gRPC RenewNodeCredential rate: {:.0}%",
        100.0 * grpc_secs / re_secs
    );
    println!(
        "TPM session set-up (EK, AK, enrollment key; 5 runs): median {:.0} ms, max {:.0} ms",
        ms(percentile(&open_lat, 0.5)),
        ms(*open_lat.last().unwrap())
    );
    println!(
        "TPM-attested enrollment (challenge, activation, certify, CSR in TPM, enroll; 5 runs): median {:.0} ms, max {:.0} ms",
        ms(percentile(&enroll_lat, 0.5)),
        ms(*enroll_lat.last().unwrap())
    );
}
