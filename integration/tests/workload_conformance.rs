//! Workload API conformance with clients KeyGrid did not write: go-spiffe (the SPIFFE
//! project's Go library, built from the Go module proxy) and the `spiffe` crate. Each
//! fetches X.509 and JWT SVIDs and bundles from a real `keygrid dev` (SoftHSM2 keys),
//! watches a rotation, validates a JWT, and sees a wrong audience, an expired token and a
//! bad signature fail validation. Also the exact error codes and messages of the API and
//! core's refusal of identities outside a node's scope.

use keygrid_integration::{uid, with_header, workload_client};
use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use keygrid_integration::{go_spiffe_client, run, DevEnv};
use keygrid_proto::keygrid::v1 as kg;
use keygrid_proto::workload as wl;
use serde_json::Value;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// Runs the go-spiffe client against `endpoint` and parses its JSON output.
fn go_client(endpoint: &str, args: &[&str]) -> Value {
    let out = run(Command::new(go_spiffe_client())
        .env("SPIFFE_ENDPOINT_SOCKET", endpoint)
        .args(args));
    assert!(
        out.status.success(),
        "spiffe-client {args:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("spiffe-client prints JSON")
}

/// A copy of `token` with one signature character changed.
fn tamper_signature(token: &str) -> String {
    let mut t: Vec<char> = token.chars().collect();
    let i = t.len() - 10;
    t[i] = if t[i] == 'A' { 'B' } else { 'A' };
    t.into_iter().collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn go_spiffe_fetches_rotates_and_validates() {
    let env = DevEnv::start_with("10s", &["--jwt-svid-ttl", "6s"]);
    let endpoint = env.endpoint();
    let want = format!("spiffe://{}/dev/uid/{}", env.trust_domain, uid());

    // X509Source: the SVID verifies against its bundle, and a rotation arrives.
    let x509 = go_client(
        &endpoint,
        &["-mode", "x509", "-rotations", "1", "-timeout", "60s"],
    );
    let svids = x509["svids"].as_array().unwrap();
    assert_eq!(svids.len(), 2, "{x509}");
    assert_eq!(svids[0]["spiffe_id"], want.as_str());
    assert_eq!(svids[1]["spiffe_id"], want.as_str());
    assert_ne!(
        svids[0]["serial"], svids[1]["serial"],
        "rotation gives a new certificate"
    );
    assert!(svids[1]["not_after"].as_i64() > svids[0]["not_after"].as_i64());
    assert_eq!(svids[0]["authorities"], 1);

    // Bundles: own trust domain, X.509 and JWT.
    let bundles = go_client(&endpoint, &["-mode", "bundles"]);
    assert_eq!(bundles["x509:spiffe://example.org"], 1, "{bundles}");
    assert_eq!(bundles["jwt:spiffe://example.org"], 1, "{bundles}");

    // JWTSource: a JWT-SVID that validates locally (JWT bundle) and through the agent.
    let jwt = go_client(&endpoint, &["-mode", "jwt", "-audience", "payments"]);
    assert_eq!(jwt["spiffe_id"], want.as_str(), "{jwt}");
    assert_eq!(jwt["local"]["ok"], true, "{jwt}");
    assert_eq!(jwt["remote"]["ok"], true, "{jwt}");
    assert_eq!(jwt["remote_spiffe_id"], want.as_str());
    assert_eq!(jwt["remote_claims"]["aud"], serde_json::json!(["payments"]));
    let token = jwt["token"].as_str().unwrap().to_string();
    let expiry = jwt["expiry"].as_i64().unwrap();
    let header: Value = serde_json::from_slice(
        &URL_SAFE_NO_PAD
            .decode(token.split('.').next().unwrap())
            .unwrap(),
    )
    .unwrap();
    assert_eq!(header["alg"], "ES256");
    assert!(header["kid"].as_str().is_some_and(|k| !k.is_empty()));

    // Wrong audience.
    let wrong = go_client(
        &endpoint,
        &[
            "-mode",
            "validate",
            "-token",
            &token,
            "-audience",
            "billing",
        ],
    );
    assert_eq!(wrong["remote"]["ok"], false, "{wrong}");
    assert_eq!(wrong["remote"]["code"], "InvalidArgument");
    assert!(wrong["remote"]["message"]
        .as_str()
        .unwrap()
        .contains("audience"));
    assert_eq!(wrong["local"]["ok"], false);

    // Bad signature.
    let forged = tamper_signature(&token);
    let bad = go_client(
        &endpoint,
        &[
            "-mode",
            "validate",
            "-token",
            &forged,
            "-audience",
            "payments",
        ],
    );
    assert_eq!(bad["remote"]["ok"], false, "{bad}");
    assert_eq!(bad["remote"]["code"], "InvalidArgument");
    assert_eq!(bad["local"]["ok"], false);

    // Expired: wait past the token's expiry.
    while now() <= expiry {
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let expired = go_client(
        &endpoint,
        &[
            "-mode",
            "validate",
            "-token",
            &token,
            "-audience",
            "payments",
        ],
    );
    assert_eq!(expired["remote"]["ok"], false, "{expired}");
    assert_eq!(expired["remote"]["code"], "InvalidArgument");
    assert_eq!(expired["remote"]["message"], "token has expired");
    // go-spiffe's local check allows go-jose's one-minute clock-skew leeway, so only the
    // agent's answer is asserted here; the agent allows no leeway.
}

#[tokio::test(flavor = "multi_thread")]
async fn spiffe_crate_fetches_rotates_and_validates() {
    use spiffe::{JwtSource, WorkloadApiClient, X509Source};

    let env = DevEnv::start_with("10s", &["--jwt-svid-ttl", "6s"]);
    let want = format!("spiffe://{}/dev/uid/{}", env.trust_domain, uid());

    // X509Source, then a rotation observed through it.
    let source = tokio::time::timeout(
        Duration::from_secs(30),
        X509Source::builder().endpoint(env.endpoint()).build(),
    )
    .await
    .expect("X509Source in time")
    .expect("X509Source");
    let first = source.svid().expect("an SVID");
    assert_eq!(first.spiffe_id().to_string(), want);
    let first_leaf = first.cert_chain()[0].as_bytes().to_vec();
    let rotated = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            let now = source.svid().expect("an SVID");
            if now.cert_chain()[0].as_bytes() != first_leaf.as_slice() {
                return now;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await
    .expect("a rotated SVID within 30s");
    assert_eq!(rotated.spiffe_id().to_string(), want);
    let td = spiffe::TrustDomain::new(&env.trust_domain).unwrap();
    let bundle = source.try_bundle_for_trust_domain(&td).expect("own bundle");
    assert_eq!(bundle.authorities().len(), 1);
    source.shutdown().await;

    // JwtSource and the client's JWT calls.
    let jwt_source = tokio::time::timeout(
        Duration::from_secs(30),
        JwtSource::builder().endpoint(env.endpoint()).build(),
    )
    .await
    .expect("JwtSource in time")
    .expect("JwtSource");
    let svid = jwt_source
        .fetch_jwt_svid(["payments"])
        .await
        .expect("a JWT-SVID");
    assert_eq!(svid.spiffe_id().to_string(), want);
    let token = svid.token().to_string();
    let jwt_bundle = jwt_source
        .try_bundle_for_trust_domain(&td)
        .expect("own JWT bundle");
    assert_eq!(jwt_bundle.jwt_authorities().count(), 1);
    jwt_source.shutdown().await;

    let client = WorkloadApiClient::connect_to(env.endpoint())
        .await
        .expect("client");
    let validated = client
        .validate_jwt_token("payments", &token)
        .await
        .expect("valid token");
    assert_eq!(validated.spiffe_id().to_string(), want);
    let bundles = client.fetch_jwt_bundles().await.expect("JWT bundles");
    assert!(bundles.get(&td).is_some());

    // Local validation with the crate's own verifier against the fetched bundle.
    spiffe::JwtSvid::parse_and_validate(&token, &bundles, &["payments"])
        .expect("the crate validates the token locally");
    assert!(spiffe::JwtSvid::parse_and_validate(&token, &bundles, &["billing"]).is_err());

    let wrong = client.validate_jwt_token("billing", &token).await;
    assert!(wrong.is_err(), "wrong audience must fail");
    let forged = tamper_signature(&token);
    assert!(client
        .validate_jwt_token("payments", &forged)
        .await
        .is_err());
    assert!(spiffe::JwtSvid::parse_and_validate(&forged, &bundles, &["payments"]).is_err());
    while now() <= svid.expiry().unix_timestamp() {
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let expired = client.validate_jwt_token("payments", &token).await;
    assert!(expired.is_err(), "expired token must fail");
}

#[tokio::test(flavor = "multi_thread")]
async fn jwt_rpcs_answer_with_the_exact_codes_and_messages() {
    let env = DevEnv::start("5m");
    let mut client = workload_client(&env.socket()).await;
    let want = format!("spiffe://{}/dev/uid/{}", env.trust_domain, uid());

    let err = client
        .fetch_jwtsvid(wl::JwtsvidRequest {
            audience: vec!["a".into()],
            spiffe_id: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert_eq!(err.message(), "security header missing from request");

    let err = client
        .fetch_jwtsvid(with_header(wl::JwtsvidRequest {
            audience: vec![],
            spiffe_id: String::new(),
        }))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert_eq!(err.message(), "audience must be specified");

    let err = client
        .fetch_jwtsvid(with_header(wl::JwtsvidRequest {
            audience: vec!["a".into()],
            spiffe_id: format!("spiffe://{}/not/mine", env.trust_domain),
        }))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied);
    assert_eq!(err.message(), "no identity issued");

    let err = client
        .fetch_jwtsvid(with_header(wl::JwtsvidRequest {
            audience: vec!["a".into()],
            spiffe_id: "not a spiffe id".into(),
        }))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);

    // The filter selects the caller's own ID.
    let ok = client
        .fetch_jwtsvid(with_header(wl::JwtsvidRequest {
            audience: vec!["a".into(), "b".into()],
            spiffe_id: want.clone(),
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ok.svids.len(), 1);
    assert_eq!(ok.svids[0].spiffe_id, want);
    let token = ok.svids[0].svid.clone();

    // ValidateJWTSVID: mandatory fields, then a multi-audience token.
    for (audience, svid, msg) in [
        ("", token.as_str(), "audience must be specified"),
        ("a", "", "svid must be specified"),
    ] {
        let err = client
            .validate_jwtsvid(with_header(wl::ValidateJwtsvidRequest {
                audience: audience.into(),
                svid: svid.into(),
            }))
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
        assert_eq!(err.message(), msg);
    }
    let v = client
        .validate_jwtsvid(with_header(wl::ValidateJwtsvidRequest {
            audience: "b".into(),
            svid: token.clone(),
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(v.spiffe_id, want);
    let claims = v.claims.unwrap();
    let aud = match claims.fields["aud"].kind.as_ref().unwrap() {
        prost_types::value::Kind::ListValue(l) => l.values.len(),
        other => panic!("aud must be a list, got {other:?}"),
    };
    assert_eq!(aud, 2);
    assert!(claims.fields.contains_key("exp") && claims.fields.contains_key("sub"));

    // JWT bundles stream: a standard JWK Set with kid on every key.
    let mut stream = client
        .fetch_jwt_bundles(with_header(wl::JwtBundlesRequest {}))
        .await
        .unwrap()
        .into_inner();
    let msg = tokio::time::timeout(Duration::from_secs(10), stream.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let jwks: Value = serde_json::from_slice(&msg.bundles["spiffe://example.org"]).unwrap();
    let keys = jwks["keys"].as_array().unwrap();
    assert_eq!(keys.len(), 1);
    assert!(keys[0]["kid"].as_str().is_some_and(|k| !k.is_empty()));
    assert_eq!(keys[0]["kty"], "EC");
    assert!(keys[0].get("d").is_none(), "no private part in the bundle");

    // WIT-SVID profile: Unimplemented.
    let err = match client
        .fetch_witsvid(with_header(wl::WitsvidRequest::default()))
        .await
    {
        Err(e) => e,
        Ok(r) => r.into_inner().message().await.unwrap_err(),
    };
    assert_eq!(err.code(), tonic::Code::Unimplemented);
}

/// A node client authenticated with the dev agent's node credential.
async fn dev_node_client(env: &DevEnv) -> kg::node_client::NodeClient<Channel> {
    let agent_dir = env.dir.path().join("agent");
    let cert = std::fs::read_to_string(agent_dir.join("node-cert.pem")).unwrap();
    let key = std::fs::read_to_string(agent_dir.join("node-key.pem")).unwrap();
    let roots = std::fs::read_to_string(env.bundle_pem()).unwrap();
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(roots))
        .identity(Identity::from_pem(cert, key))
        .domain_name("localhost");
    let channel = Endpoint::from_shared(format!("https://{}", env.listen))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect()
        .await
        .expect("connect to core with the node credential");
    kg::node_client::NodeClient::new(channel)
}

#[tokio::test(flavor = "multi_thread")]
async fn core_refuses_identities_outside_the_nodes_scope_and_logs_it() {
    let env = DevEnv::start("5m");
    let mut node = dev_node_client(&env).await;
    let key = rcgen::KeyPair::generate().unwrap();
    let csr = rcgen::CertificateParams::default()
        .serialize_request(&key)
        .unwrap()
        .der()
        .to_vec();

    // Not a default-identity shape: refused.
    let err = node
        .mint_x509svid(kg::MintX509svidRequest {
            entry_id: String::new(),
            csr: csr.clone(),
            default_spiffe_id: format!("spiffe://{}/admin", env.trust_domain),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied, "{err:?}");
    // Another trust domain: refused.
    let err = node
        .mint_jwtsvid(kg::MintJwtsvidRequest {
            entry_id: String::new(),
            audience: vec!["a".into()],
            default_spiffe_id: "spiffe://other.org/ns/a/sa/b".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied, "{err:?}");
    // An entry this node is not the parent of.
    let other = env.cli(&[
        "entry",
        "create",
        "--spiffe-id",
        &format!("spiffe://{}/elsewhere", env.trust_domain),
        "--parent-id",
        &format!("spiffe://{}/keygrid/node/other", env.trust_domain),
        "--selector",
        "unix:uid:1",
    ]);
    assert!(other.status.success());
    let other_id = String::from_utf8_lossy(&other.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("Entry ID      : ").map(str::to_string))
        .expect("entry id");
    let err = node
        .mint_jwtsvid(kg::MintJwtsvidRequest {
            entry_id: other_id,
            audience: vec!["a".into()],
            default_spiffe_id: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied, "{err:?}");
    // No audience.
    let err = node
        .mint_jwtsvid(kg::MintJwtsvidRequest {
            entry_id: String::new(),
            audience: vec![],
            default_spiffe_id: format!("spiffe://{}/ns/a/sa/b", env.trust_domain),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
    assert_eq!(err.message(), "audience must be specified");

    // A pod default identity is within scope (default identities are on by default).
    let ok = node
        .mint_x509svid(kg::MintX509svidRequest {
            entry_id: String::new(),
            csr,
            default_spiffe_id: format!("spiffe://{}/ns/payments/sa/api", env.trust_domain),
        })
        .await
        .expect("default identity")
        .into_inner();
    assert_eq!(
        ok.spiffe_id,
        format!("spiffe://{}/ns/payments/sa/api", env.trust_domain)
    );

    // Every refusal was logged for audit.
    let log = env.log();
    assert!(log.contains("outside its scope"), "{log}");
    assert!(log.contains("not the parent of"), "{log}");

    // The JWT bundle core serves matches what the agent hands out.
    let bundle = node
        .fetch_jwt_bundle(kg::FetchJwtBundleRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(bundle.trust_domain, env.trust_domain);
    let jwks: Value = serde_json::from_slice(&bundle.jwks).unwrap();
    assert_eq!(jwks["keys"][0]["crv"], "P-256");
}
