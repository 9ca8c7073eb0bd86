//! End to end: `keygrid dev` (SoftHSM2 root, core, agent) serves 5-minute X.509-SVIDs that
//! an independent SPIFFE client accepts and `openssl verify` chains to the root.

use keygrid_integration::{uid, with_header, workload_client};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use keygrid_integration::{bin, require_tool, run, DevEnv};
use keygrid_proto::keygrid::v1 as kg;
use keygrid_proto::workload::{X509BundlesRequest, X509svidRequest};
use spiffe::X509Source;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};
use x509_parser::extensions::GeneralName;

fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn pem_of(ders: &[&[u8]]) -> String {
    ders.iter()
        .map(|d| pem::encode(&pem::Pem::new("CERTIFICATE", d.to_vec())))
        .collect()
}

fn openssl_verify(
    dir: &Path,
    leaf: &[u8],
    intermediates: &[&[u8]],
    roots: &[&[u8]],
) -> std::process::Output {
    require_tool("openssl", "apt-get install openssl");
    std::fs::write(dir.join("leaf.pem"), pem_of(&[leaf])).unwrap();
    std::fs::write(dir.join("chain.pem"), pem_of(intermediates)).unwrap();
    std::fs::write(dir.join("roots.pem"), pem_of(roots)).unwrap();
    run(Command::new("openssl")
        .arg("verify")
        .arg("-x509_strict")
        .arg("-CAfile")
        .arg(dir.join("roots.pem"))
        .arg("-untrusted")
        .arg(dir.join("chain.pem"))
        .arg(dir.join("leaf.pem")))
}

#[tokio::test(flavor = "multi_thread")]
async fn spiffe_crate_fetches_a_five_minute_svid_that_openssl_verifies() {
    let env = DevEnv::start("5m");
    let source = tokio::time::timeout(
        Duration::from_secs(30),
        X509Source::builder().endpoint(env.endpoint()).build(),
    )
    .await
    .expect("X509Source did not sync within 30s")
    .expect("X509Source failed");
    let svid = source.svid().expect("an SVID");
    let want = format!("spiffe://{}/dev/uid/{}", env.trust_domain, uid());
    assert_eq!(svid.spiffe_id().to_string(), want);

    let chain = svid.cert_chain();
    let leaf_der = chain[0].as_bytes();
    let (_, leaf) = x509_parser::parse_x509_certificate(leaf_der).unwrap();
    let uris: Vec<String> = leaf
        .subject_alternative_name()
        .unwrap()
        .expect("SAN extension")
        .value
        .general_names
        .iter()
        .filter_map(|n| match n {
            GeneralName::URI(u) => Some(u.to_string()),
            _ => None,
        })
        .collect();
    assert_eq!(
        uris,
        vec![want.clone()],
        "exactly one URI SAN, the SPIFFE ID"
    );
    let bc = leaf
        .basic_constraints()
        .unwrap()
        .expect("explicit basicConstraints");
    assert!(!bc.value.ca, "leaf must not be a CA");
    let ku = leaf.key_usage().unwrap().expect("key usage");
    assert!(ku.critical && ku.value.digital_signature() && !ku.value.key_cert_sign());
    // Valid for 5 minutes from issuance (notBefore is back-dated 10 s for clock skew).
    let not_after = leaf.validity().not_after.timestamp();
    let not_before = leaf.validity().not_before.timestamp();
    let left = not_after - now_secs();
    assert!(
        (280..=300).contains(&left),
        "SVID expires in {left}s, expected about 300s"
    );
    assert_eq!(
        not_after - not_before,
        300 + 10,
        "validity is the 5-minute TTL plus the 10 s back-dating"
    );

    // The bundle the Workload API serves is the root core published, and openssl agrees
    // that the chain leads to it.
    let td = spiffe::TrustDomain::new(&env.trust_domain).unwrap();
    let bundle = source
        .bundle_set()
        .unwrap()
        .get(&td)
        .expect("own trust domain bundle");
    let roots: Vec<&[u8]> = bundle.authorities().iter().map(|c| c.as_bytes()).collect();
    let published = std::fs::read_to_string(env.bundle_pem()).unwrap();
    let published: Vec<Vec<u8>> = pem::parse_many(&published)
        .unwrap()
        .into_iter()
        .map(|p| p.into_contents())
        .collect();
    assert_eq!(
        roots,
        published.iter().map(Vec::as_slice).collect::<Vec<_>>()
    );
    let intermediates: Vec<&[u8]> = chain[1..].iter().map(|c| c.as_bytes()).collect();
    assert!(
        !intermediates.is_empty(),
        "the chain carries the workloads CA"
    );
    let out = openssl_verify(env.dir.path(), leaf_der, &intermediates, &roots);
    assert!(
        out.status.success(),
        "openssl verify failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains(": OK"));
    source.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn missing_header_is_invalid_argument_and_unmatched_caller_is_permission_denied() {
    let env = DevEnv::start("5m");
    let mut client = workload_client(&env.socket()).await;

    let err = client
        .fetch_x509svid(X509svidRequest {})
        .await
        .expect_err("no header must fail");
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
    let err = client
        .fetch_x509_bundles(X509BundlesRequest {})
        .await
        .expect_err("no header must fail");
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");

    // With the header, this uid has an identity.
    let mut stream = client
        .fetch_x509svid(with_header(X509svidRequest {}))
        .await
        .unwrap()
        .into_inner();
    let first = tokio::time::timeout(Duration::from_secs(30), stream.message())
        .await
        .expect("first message in time")
        .expect("stream ok")
        .expect("a message");
    assert_eq!(first.svids.len(), 1);

    // Replace this uid's entry with one for another uid: the caller now matches nothing.
    let list = env.cli(&["entry", "list"]);
    assert!(
        list.status.success(),
        "{}",
        String::from_utf8_lossy(&list.stderr)
    );
    let listing = String::from_utf8_lossy(&list.stdout).to_string();
    let id = listing
        .lines()
        .find_map(|l| l.strip_prefix("Entry ID      : "))
        .expect("an entry id in the listing")
        .to_string();
    let parent = format!("spiffe://{}/keygrid/node/dev", env.trust_domain);
    let other = env.cli(&[
        "entry",
        "create",
        "--spiffe-id",
        &format!("spiffe://{}/other", env.trust_domain),
        "--parent-id",
        &parent,
        "--selector",
        "unix:uid:4242",
    ]);
    assert!(
        other.status.success(),
        "{}",
        String::from_utf8_lossy(&other.stderr)
    );
    let del = env.cli(&["entry", "delete", "--id", &id]);
    assert!(
        del.status.success(),
        "{}",
        String::from_utf8_lossy(&del.stderr)
    );

    // The open stream is told its identity is gone...
    let ended = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            match stream.message().await {
                Ok(Some(_)) => continue,
                Ok(None) => panic!("stream ended without a status"),
                Err(status) => return status,
            }
        }
    })
    .await
    .expect("the open stream ends within 30s");
    assert_eq!(ended.code(), tonic::Code::PermissionDenied);
    assert_eq!(ended.message(), "no identity issued");

    // ...and a new call is refused the same way, for SVIDs and bundles alike.
    let err = match client.fetch_x509svid(with_header(X509svidRequest {})).await {
        Err(e) => e,
        Ok(resp) => resp.into_inner().message().await.expect_err("no identity"),
    };
    assert_eq!(err.code(), tonic::Code::PermissionDenied);
    assert_eq!(err.message(), "no identity issued");
    let err = match client
        .fetch_x509_bundles(with_header(X509BundlesRequest {}))
        .await
    {
        Err(e) => e,
        Ok(resp) => resp.into_inner().message().await.expect_err("no identity"),
    };
    assert_eq!(err.code(), tonic::Code::PermissionDenied);
}

#[tokio::test(flavor = "multi_thread")]
async fn rotation_is_pushed_on_the_open_stream_before_expiry() {
    let env = DevEnv::start("6s");
    let mut client = workload_client(&env.socket()).await;
    let mut stream = client
        .fetch_x509svid(with_header(X509svidRequest {}))
        .await
        .unwrap()
        .into_inner();
    let mut held: Option<(String, i64)> = None;
    let mut serials = std::collections::HashSet::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while serials.len() < 5 {
        assert!(
            Instant::now() < deadline,
            "five SVIDs were not delivered within 60s"
        );
        let msg = tokio::time::timeout(Duration::from_secs(20), stream.message())
            .await
            .expect("an update before the held SVID expired")
            .expect("stream ok")
            .expect("a message");
        let arrived = now_secs();
        let svid = &msg.svids[0];
        let (_, leaf) = x509_parser::parse_x509_certificate(&svid.x509_svid).unwrap();
        let serial = hex_of(leaf.raw_serial());
        let not_after = leaf.validity().not_after.timestamp();
        assert!(
            not_after > arrived,
            "received an SVID that is already expired"
        );
        if let Some((prev_serial, prev_not_after)) = &held {
            if *prev_serial != serial {
                assert!(
                    arrived < *prev_not_after,
                    "new SVID arrived at {arrived}, after the held one expired at {prev_not_after}"
                );
            }
        }
        serials.insert(serial.clone());
        held = Some((serial, not_after));
    }
}

fn hex_of(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn counts(db: &Path) -> (i64, i64, i64) {
    let conn = rusqlite::Connection::open(db).unwrap();
    let count = |t: &str| {
        conn.query_row(&format!("SELECT COUNT(*) FROM {t}"), [], |r| r.get(0))
            .unwrap()
    };
    (count("nodes"), count("certificates"), count("join_tokens"))
}

async fn node_client(env: &DevEnv) -> keygrid_proto::keygrid::v1::node_client::NodeClient<Channel> {
    let roots = std::fs::read_to_string(env.bundle_pem()).unwrap();
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(roots))
        .domain_name("localhost");
    let channel = Endpoint::from_shared(format!("https://{}", env.listen))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect()
        .await
        .expect("connect to core");
    keygrid_proto::keygrid::v1::node_client::NodeClient::new(channel)
}

fn agent_config(env: &DevEnv, dir: &Path, token_file: &Path) -> std::path::PathBuf {
    let cfg = dir.join("agent.toml");
    std::fs::write(
        &cfg,
        format!(
            "trust_domain = \"{}\"\nserver_address = \"https://{}\"\nserver_name = \"localhost\"\n\
             trust_bundle_path = {:?}\njoin_token_file = {:?}\ndata_dir = {:?}\nsocket_path = {:?}\n",
            env.trust_domain,
            env.listen,
            env.bundle_pem().display().to_string(),
            token_file.display().to_string(),
            dir.join("state").display().to_string(),
            dir.join("agent.sock").display().to_string(),
        ),
    )
    .unwrap();
    cfg
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_input_gets_clear_errors_and_leaves_the_store_unchanged() {
    let env = DevEnv::start("5m");
    let db = env.dir.path().join("keygrid.db");
    // Let the dev agent finish its own start-up writes first.
    let mut c = workload_client(&env.socket()).await;
    let mut s = c
        .fetch_x509svid(with_header(X509svidRequest {}))
        .await
        .unwrap()
        .into_inner();
    tokio::time::timeout(Duration::from_secs(30), s.message())
        .await
        .unwrap()
        .unwrap();
    drop(s);
    let before = counts(&db);

    // An unknown join token, through the real agent.
    let work = tempfile::tempdir().unwrap();
    let token_file = work.path().join("token");
    std::fs::write(&token_file, "0123456789abcdef-not-a-real-token").unwrap();
    let out = run(Command::new(bin("keygrid-agent"))
        .arg("run")
        .arg("--config")
        .arg(agent_config(&env, work.path(), &token_file)));
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("unknown or expired join token"), "{stderr}");

    // A missing token file.
    let out = run(Command::new(bin("keygrid-agent"))
        .arg("run")
        .arg("--config")
        .arg(agent_config(
            &env,
            work.path(),
            &work.path().join("no-such-file"),
        )));
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("cannot read join token file") && stderr.contains("no-such-file"),
        "{stderr}"
    );

    // Malformed requests straight to core's node API.
    let mut core = node_client(&env).await;
    let token_out = env.cli(&[
        "token",
        "create",
        "--agent-id",
        &format!("spiffe://{}/node/extra", env.trust_domain),
    ]);
    assert!(
        token_out.status.success(),
        "{}",
        String::from_utf8_lossy(&token_out.stderr)
    );
    let token = String::from_utf8_lossy(&token_out.stdout)
        .trim()
        .to_string();
    let with_token = counts(&db);
    assert_eq!(
        with_token.2,
        before.2 + 1,
        "the new token is stored (hashed)"
    );

    let err = core
        .attest_join_token(kg::AttestJoinTokenRequest {
            token: token.clone(),
            csr: b"not a csr".to_vec(),
        })
        .await
        .expect_err("garbage CSR");
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(err.message().contains("csr"), "{}", err.message());
    let err = core
        .attest_join_token(kg::AttestJoinTokenRequest {
            token: String::new(),
            csr: vec![],
        })
        .await
        .expect_err("empty request");
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    let err = core
        .attest_join_token(kg::AttestJoinTokenRequest {
            token: "x".repeat(10_000),
            csr: vec![1],
        })
        .await
        .expect_err("oversized token");
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    // Calls that need a node certificate, made without one.
    let err = core
        .fetch_entries(kg::FetchEntriesRequest {})
        .await
        .expect_err("no client cert");
    assert_eq!(err.code(), tonic::Code::Unauthenticated);
    assert_eq!(
        counts(&db),
        with_token,
        "refused requests wrote nothing, and the token was not consumed"
    );

    // Bad admin input is refused too, and writes nothing.
    let bad = env.cli(&[
        "entry",
        "create",
        "--spiffe-id",
        "spiffe://elsewhere.org/x",
        "--parent-id",
        "spiffe://example.org/keygrid/node/dev",
        "--selector",
        "unix:uid:1",
    ]);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("not in trust domain"));
    let bad = env.cli(&[
        "entry",
        "create",
        "--spiffe-id",
        "spiffe://example.org/x",
        "--parent-id",
        "spiffe://example.org/keygrid/node/dev",
        "--selector",
        "nocolon",
    ]);
    assert!(!bad.status.success());
    assert_eq!(counts(&db), with_token);
}

#[tokio::test(flavor = "multi_thread")]
async fn restart_keeps_the_root_and_stops_cleanly() {
    let env = DevEnv::start("5m");
    let bundle = std::fs::read(env.bundle_pem()).unwrap();
    let (status, dir) = env.stop();
    assert!(
        status.success(),
        "keygrid dev should exit 0 on SIGTERM, got {status}"
    );
    let env = DevEnv::start_in(dir, "5m");
    assert_eq!(
        std::fs::read(env.bundle_pem()).unwrap(),
        bundle,
        "the trust anchor survived the restart"
    );
    let source = tokio::time::timeout(
        Duration::from_secs(30),
        X509Source::builder().endpoint(env.endpoint()).build(),
    )
    .await
    .expect("sync in time")
    .expect("X509Source");
    assert!(source.svid().is_ok());
    source.shutdown().await;
}
