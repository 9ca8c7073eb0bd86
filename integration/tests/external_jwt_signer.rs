//! The ExternalJWTSigner end to end, as kube-apiserver uses it: `keygrid dev` with the
//! signer socket on (key in SoftHSM2), a gRPC client generated from the published protos
//! (`v1` and `v1alpha1`) calling Metadata, FetchKeys and Sign, signatures verified with the
//! published keys, OIDC discovery and JWKS over HTTP (curl), and rotation: manual
//! (`keygrid sa rotate`) and scheduled, with tokens signed before still verifying.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use keygrid_integration::{require_tool, run, DevEnv};
use keygrid_proto::externaljwt::{v1, v1alpha1};
use tonic::transport::Channel;

const CURL_HINT: &str = "apt-get install curl (scripts/install-deps.sh)";

struct Env {
    dev: DevEnv,
    socket: PathBuf,
    http: String,
}

fn start(rotation: &str) -> Env {
    require_tool("curl", CURL_HINT);
    let (dev, socket, http) = DevEnv::start_with_sa_signer(&format!(
        "issuer = \"https://kubernetes.default.svc.cluster.local\"\nsa_key_rotation = \"{rotation}\"\nmax_token_expiration = \"1h\"\nkeys_refresh_hint = \"5s\""
    ));
    Env { dev, socket, http }
}

async fn channel(socket: &Path) -> Channel {
    let path = socket.to_path_buf();
    tonic::transport::Endpoint::try_from("http://localhost")
        .unwrap()
        .connect_with_connector(tower::service_fn(move |_: tonic::transport::Uri| {
            let path = path.clone();
            async move {
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(
                    tokio::net::UnixStream::connect(path).await?,
                ))
            }
        }))
        .await
        .expect("connect to the signer socket")
}

/// (kid, uncompressed EC point) from FetchKeys, checking the kid is Kubernetes' derivation.
fn parse_keys(keys: Vec<(String, Vec<u8>)>) -> Vec<(String, Vec<u8>)> {
    keys.into_iter()
        .map(|(kid, spki)| {
            let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &spki);
            assert_eq!(
                kid,
                URL_SAFE_NO_PAD.encode(digest),
                "kid is base64url(SHA-256(PKIX))"
            );
            use x509_parser::prelude::FromDer;
            let (rest, info) = x509_parser::x509::SubjectPublicKeyInfo::from_der(&spki).unwrap();
            assert!(rest.is_empty());
            assert_eq!(info.algorithm.algorithm.to_id_string(), "1.2.840.10045.2.1");
            (kid, info.subject_public_key.data.to_vec())
        })
        .collect()
}

/// Builds the token the way kube-apiserver does and verifies it with `keys`.
fn token_verifies(
    header: &str,
    claims: &str,
    signature: &str,
    keys: &[(String, Vec<u8>)],
) -> String {
    let h: serde_json::Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(header).unwrap()).unwrap();
    let obj = h.as_object().unwrap();
    assert_eq!(obj.len(), 3, "header has exactly alg, kid, typ: {h}");
    assert_eq!(h["alg"], "ES256");
    assert_eq!(h["typ"], "JWT");
    let kid = h["kid"].as_str().unwrap().to_string();
    let (_, point) = keys
        .iter()
        .find(|(k, _)| *k == kid)
        .unwrap_or_else(|| panic!("kid {kid} is not among the published keys"));
    let sig = URL_SAFE_NO_PAD.decode(signature).unwrap();
    assert_eq!(sig.len(), 64, "JWS ES256 signatures are raw r||s");
    aws_lc_rs::signature::UnparsedPublicKey::new(
        &aws_lc_rs::signature::ECDSA_P256_SHA256_FIXED,
        point,
    )
    .verify(format!("{header}.{claims}").as_bytes(), &sig)
    .expect("signature verifies with the published key");
    kid
}

async fn fetch_v1(
    c: &mut v1::external_jwt_signer_client::ExternalJwtSignerClient<Channel>,
) -> Vec<(String, Vec<u8>)> {
    let r = c
        .fetch_keys(v1::FetchKeysRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.refresh_hint_seconds, 5);
    let ts = r.data_timestamp.expect("data_timestamp set");
    assert!(ts.seconds > 1_700_000_000);
    parse_keys(
        r.keys
            .into_iter()
            .map(|k| {
                assert!(!k.exclude_from_oidc_discovery);
                (k.key_id, k.key)
            })
            .collect(),
    )
}

async fn fetch_v1alpha1(
    c: &mut v1alpha1::external_jwt_signer_client::ExternalJwtSignerClient<Channel>,
) -> Vec<(String, Vec<u8>)> {
    let r = c
        .fetch_keys(v1alpha1::FetchKeysRequest {})
        .await
        .unwrap()
        .into_inner();
    parse_keys(r.keys.into_iter().map(|k| (k.key_id, k.key)).collect())
}

fn curl_json(url: &str) -> serde_json::Value {
    let out = run(Command::new("curl").args(["-sSf", url]));
    assert!(
        out.status.success(),
        "curl {url}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn jwks_kids(env: &Env) -> Vec<String> {
    let jwks = curl_json(&format!("http://{}/openid/v1/jwks", env.http));
    jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| {
            assert_eq!(k["kty"], "EC");
            assert_eq!(k["alg"], "ES256");
            k["kid"].as_str().unwrap().to_string()
        })
        .collect()
}

fn claims(sub: &str) -> String {
    URL_SAFE_NO_PAD.encode(
        serde_json::json!({
            "iss": "https://kubernetes.default.svc.cluster.local",
            "sub": sub,
            "aud": ["https://kubernetes.default.svc.cluster.local"],
            "exp": 4_000_000_000u64,
            "iat": 1_700_000_000u64,
        })
        .to_string(),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn sign_fetch_keys_metadata_and_rotation_with_overlap() {
    let env = start("720h");
    let mut c1 =
        v1::external_jwt_signer_client::ExternalJwtSignerClient::new(channel(&env.socket).await);
    let mut c0 = v1alpha1::external_jwt_signer_client::ExternalJwtSignerClient::new(
        channel(&env.socket).await,
    );

    for max in [
        c1.metadata(v1::MetadataRequest {})
            .await
            .unwrap()
            .into_inner()
            .max_token_expiration_seconds,
        c0.metadata(v1alpha1::MetadataRequest {})
            .await
            .unwrap()
            .into_inner()
            .max_token_expiration_seconds,
    ] {
        assert_eq!(max, 3600);
    }
    let keys = fetch_v1(&mut c1).await;
    assert_eq!(keys.len(), 1);
    assert_eq!(
        fetch_v1alpha1(&mut c0).await,
        keys,
        "both API versions publish the same keys"
    );

    let old_claims = claims("system:serviceaccount:default:old");
    let old = c1
        .sign(v1::SignJwtRequest {
            claims: old_claims.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    let old_kid = token_verifies(&old.header, &old_claims, &old.signature, &keys);
    let via_alpha = c0
        .sign(v1alpha1::SignJwtRequest {
            claims: old_claims.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        token_verifies(&via_alpha.header, &old_claims, &via_alpha.signature, &keys),
        old_kid
    );

    // OIDC discovery and the JWKS.
    let disc = curl_json(&format!(
        "http://{}/.well-known/openid-configuration",
        env.http
    ));
    assert_eq!(
        disc["issuer"],
        "https://kubernetes.default.svc.cluster.local"
    );
    assert_eq!(
        disc["jwks_uri"],
        format!("http://{}/openid/v1/jwks", env.http)
    );
    assert_eq!(
        disc["id_token_signing_alg_values_supported"],
        serde_json::json!(["ES256"])
    );
    assert_eq!(jwks_kids(&env), vec![old_kid.clone()]);

    // The key lives in the HSM.
    let out = env.dev.cli(&["sa", "list"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let list = String::from_utf8_lossy(&out.stdout);
    assert!(
        list.contains(&old_kid) && list.contains("pkcs11:"),
        "{list}"
    );

    // Rotate: the new key signs, the old one is still published, old tokens still verify.
    let out = env.dev.cli(&["sa", "rotate"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let keys = fetch_v1(&mut c1).await;
    assert_eq!(keys.len(), 2);
    assert_eq!(
        token_verifies(&old.header, &old_claims, &old.signature, &keys),
        old_kid
    );
    let new_claims = claims("system:serviceaccount:default:new");
    let new = c1
        .sign(v1::SignJwtRequest {
            claims: new_claims.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    let new_kid = token_verifies(&new.header, &new_claims, &new.signature, &keys);
    assert_ne!(new_kid, old_kid, "new tokens use the new key");
    let alpha_keys = fetch_v1alpha1(&mut c0).await;
    token_verifies(&old.header, &old_claims, &old.signature, &alpha_keys);
    assert_eq!(jwks_kids(&env), vec![old_kid, new_kid]);

    // Bad input: clear gRPC errors, no panic.
    for bad in ["", "%%%", &URL_SAFE_NO_PAD.encode("[]")] {
        let err = c1
            .sign(v1::SignJwtRequest {
                claims: bad.to_string(),
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument, "{bad}: {err:?}");
    }
    assert!(
        c1.metadata(v1::MetadataRequest {}).await.is_ok(),
        "the server survives bad input"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn scheduled_rotation_keeps_previous_keys_published() {
    let env = start("2s");
    let mut c1 =
        v1::external_jwt_signer_client::ExternalJwtSignerClient::new(channel(&env.socket).await);
    let first = fetch_v1(&mut c1).await;
    let c = claims("system:serviceaccount:kube-system:early");
    let early = c1
        .sign(v1::SignJwtRequest { claims: c.clone() })
        .await
        .unwrap()
        .into_inner();
    let early_kid = token_verifies(&early.header, &c, &early.signature, &first);
    // Within a few seconds the scheduler creates new keys; the early token keeps verifying.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let keys = loop {
        let keys = fetch_v1(&mut c1).await;
        if keys.len() >= 3 {
            break keys;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no scheduled rotation:\n{}",
            env.dev.log()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    token_verifies(&early.header, &c, &early.signature, &keys);
    let now = c1
        .sign(v1::SignJwtRequest { claims: c.clone() })
        .await
        .unwrap()
        .into_inner();
    assert_ne!(
        token_verifies(&now.header, &c, &now.signature, &keys),
        early_kid
    );
    assert!(env
        .dev
        .log()
        .contains("service-account signing key rotated"));
}
