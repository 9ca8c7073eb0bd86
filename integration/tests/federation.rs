//! Federated bundles end to end: core reads a partner trust domain's SPIFFE bundle file,
//! the agent hands it to workloads, and the `spiffe` crate (a client nobody here wrote) sees
//! it in X509Source, FetchX509Bundles and FetchJWTBundles, validates a JWT-SVID the partner
//! signed, and picks up a changed bundle file without any restart.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use keygrid_integration::{with_header, workload_client, DevEnv};
use keygrid_proto::workload as wl;

const PARTNER: &str = "partner.example";

fn partner_ca() -> Vec<u8> {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    p.distinguished_name
        .push(rcgen::DnType::CommonName, "partner root");
    p.self_signed(&key).unwrap().der().to_vec()
}

/// The partner's SPIFFE bundle: one X.509 authority and one JWT key (kid `partner-1`).
fn bundle_json(ca_der: &[u8], jwt_key: &EcdsaKeyPair) -> String {
    let point = jwt_key.public_key().as_ref();
    serde_json::json!({
        "spiffe_sequence": 1,
        "keys": [
            { "use": "x509-svid", "kty": "EC", "crv": "P-256",
              "x": "unused", "y": "unused", "x5c": [STANDARD.encode(ca_der)] },
            { "use": "jwt-svid", "kty": "EC", "crv": "P-256", "kid": "partner-1",
              "x": URL_SAFE_NO_PAD.encode(&point[1..33]),
              "y": URL_SAFE_NO_PAD.encode(&point[33..65]) },
        ]
    })
    .to_string()
}

fn partner_jwt(key: &EcdsaKeyPair, audience: &str) -> String {
    let exp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 300;
    let header = serde_json::json!({"alg": "ES256", "kid": "partner-1", "typ": "JWT"});
    let claims = serde_json::json!({
        "sub": format!("spiffe://{PARTNER}/payments"),
        "aud": [audience],
        "exp": exp,
    });
    let input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    );
    let sig = key.sign(&SystemRandom::new(), input.as_bytes()).unwrap();
    format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig.as_ref()))
}

#[tokio::test(flavor = "multi_thread")]
async fn workloads_get_the_partner_bundle_and_its_updates() {
    use spiffe::{WorkloadApiClient, X509Source};

    let files = tempfile::tempdir().unwrap();
    let bundle_file = files.path().join("partner.json");
    let rng = SystemRandom::new();
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
    let jwt_key =
        EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref()).unwrap();
    let first_ca = partner_ca();
    std::fs::write(&bundle_file, bundle_json(&first_ca, &jwt_key)).unwrap();

    let federation = format!("{PARTNER}={}", bundle_file.display());
    let env = DevEnv::start_with("5m", &["--federation", &federation]);
    let partner = spiffe::TrustDomain::new(PARTNER).unwrap();
    let own = spiffe::TrustDomain::new(&env.trust_domain).unwrap();

    // X509Source holds the partner's roots beside its own.
    let source = tokio::time::timeout(
        Duration::from_secs(30),
        X509Source::builder().endpoint(env.endpoint()).build(),
    )
    .await
    .expect("X509Source in time")
    .expect("X509Source");
    let fed = source
        .try_bundle_for_trust_domain(&partner)
        .expect("the partner bundle");
    let ders: Vec<Vec<u8>> = fed
        .authorities()
        .iter()
        .map(|c| c.as_bytes().to_vec())
        .collect();
    assert_eq!(ders, vec![first_ca.clone()]);
    assert!(source.try_bundle_for_trust_domain(&own).is_some());

    // The raw FetchX509SVID message: federated_bundles keyed by trust-domain ID.
    let mut raw = workload_client(&env.socket()).await;
    let mut stream = raw
        .fetch_x509svid(with_header(wl::X509svidRequest {}))
        .await
        .expect("stream")
        .into_inner();
    let first = stream
        .message()
        .await
        .expect("message")
        .expect("a response");
    assert_eq!(
        first.federated_bundles.get(&format!("spiffe://{PARTNER}")),
        Some(&first_ca)
    );

    // FetchX509Bundles and FetchJWTBundles through the crate's client.
    let client = WorkloadApiClient::connect_to(env.endpoint())
        .await
        .expect("client");
    let x509_bundles = client.fetch_x509_bundles().await.expect("X.509 bundles");
    assert!(x509_bundles.get(&partner).is_some());
    assert!(x509_bundles.get(&own).is_some());
    let jwt_bundles = client.fetch_jwt_bundles().await.expect("JWT bundles");
    let partner_jwt_bundle = jwt_bundles.get(&partner).expect("partner JWT keys");
    assert_eq!(partner_jwt_bundle.jwt_authorities().count(), 1);

    // A JWT-SVID the partner signed validates on the agent and locally with those keys;
    // a tampered one does not.
    let token = partner_jwt(&jwt_key, "payments");
    let validated = client
        .validate_jwt_token("payments", &token)
        .await
        .expect("partner token validates");
    assert_eq!(
        validated.spiffe_id().to_string(),
        format!("spiffe://{PARTNER}/payments")
    );
    spiffe::JwtSvid::parse_and_validate(&token, &jwt_bundles, &["payments"])
        .expect("the crate validates the partner token with the fetched bundle");
    let other = partner_jwt(
        &EcdsaKeyPair::from_pkcs8(
            &ECDSA_P256_SHA256_FIXED_SIGNING,
            EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
                .unwrap()
                .as_ref(),
        )
        .unwrap(),
        "payments",
    );
    assert!(
        client.validate_jwt_token("payments", &other).await.is_err(),
        "a token signed by a key not in the partner bundle must fail"
    );

    // The partner rotates its root: the new bundle file reaches the open source.
    let second_ca = partner_ca();
    std::fs::write(&bundle_file, bundle_json(&second_ca, &jwt_key)).unwrap();
    tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            let now: Vec<Vec<u8>> = source
                .try_bundle_for_trust_domain(&partner)
                .map(|b| {
                    b.authorities()
                        .iter()
                        .map(|c| c.as_bytes().to_vec())
                        .collect()
                })
                .unwrap_or_default();
            if now == vec![second_ca.clone()] {
                return;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    })
    .await
    .expect("the rotated partner bundle within 30s");

    // A broken edit keeps the last good bundle (and core says why in its log).
    std::fs::write(&bundle_file, "{ not json").unwrap();
    tokio::time::sleep(Duration::from_secs(7)).await;
    let kept: Vec<Vec<u8>> = source
        .try_bundle_for_trust_domain(&partner)
        .expect("partner bundle kept")
        .authorities()
        .iter()
        .map(|c| c.as_bytes().to_vec())
        .collect();
    assert_eq!(kept, vec![second_ca]);
    assert!(
        env.log().contains("keeping the last good one"),
        "core log names the bad bundle:\n{}",
        env.log()
    );
    source.shutdown().await;
}

#[test]
fn a_bad_federation_bundle_stops_core_at_start_with_the_reason() {
    let files = tempfile::tempdir().unwrap();
    let bundle_file = files.path().join("partner.pem");
    std::fs::write(&bundle_file, "not a bundle").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(keygrid_integration::bin("keygrid"))
        .args(["dev", "--data-dir"])
        .arg(dir.path())
        .arg("--listen")
        .arg(format!("127.0.0.1:{}", keygrid_integration::free_port()))
        .arg("--federation")
        .arg(format!("{PARTNER}={}", bundle_file.display()))
        .output()
        .expect("keygrid runs");
    assert!(!out.status.success());
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(
        text.contains("federation with partner.example") && text.contains("partner.pem"),
        "{text}"
    );
}
