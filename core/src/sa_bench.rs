//! `keygrid bench sa-sign`: what a service-account token costs kube-apiserver through the
//! ExternalJWTSigner, next to the raw signing rate of the same key.
//!
//! Three workloads on one key, interleaved so machine noise falls on all alike: the raw
//! signature (the ceiling), a JWS signed by the key ring (header, base64url, DER → r‖s),
//! and the full `v1.ExternalJWTSigner/Sign` call over a Unix socket from a gRPC client, as
//! kube-apiserver makes it. Sequential, one call at a time: the figures are latencies.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use cryptoki::types::AuthPin;
use keygrid_proto::externaljwt::v1;

use crate::keys::pkcs11::Pkcs11Token;
use crate::keys::software::MemoryBackend;
use crate::keys::{KeyAlgorithm, KeyBackend};
use crate::sa_signer::{SaKeyRing, SaSettings};
use crate::store::Store;

/// One measured backend.
#[derive(Clone, Debug)]
pub struct SaBenchResult {
    /// `software` or `pkcs11`.
    pub backend: &'static str,
    /// Raw signatures per second with the key.
    pub raw_per_sec: f64,
    /// Tokens signed per second by the key ring (no RPC).
    pub jws_per_sec: f64,
    /// `Sign` RPCs per second over the Unix socket, one at a time.
    pub rpc_per_sec: f64,
}

fn measure(
    backend: Arc<dyn KeyBackend>,
    name: &'static str,
    duration: Duration,
) -> anyhow::Result<SaBenchResult> {
    let dir = tempfile::tempdir()?;
    let store = Arc::new(Store::in_memory()?);
    let ring = Arc::new(SaKeyRing::init_or_load(
        store,
        backend,
        SaSettings {
            algorithm: KeyAlgorithm::EcdsaP256,
            rotation: Duration::from_secs(3600),
            max_token_expiration: Duration::from_secs(3600),
            refresh_hint: Duration::from_secs(60),
        },
        time::OffsetDateTime::now_utc().unix_timestamp(),
    )?);
    // Claims the size of a projected service-account token's.
    let claims = URL_SAFE_NO_PAD.encode(
        serde_json::json!({
            "aud": ["https://kubernetes.default.svc.cluster.local"],
            "exp": 1_900_000_000u64, "iat": 1_800_000_000u64, "nbf": 1_800_000_000u64,
            "iss": "https://kubernetes.default.svc.cluster.local",
            "jti": "0c7e3b9e-1f4a-4d8e-9a57-3c2b1d0e9f11",
            "kubernetes.io": {"namespace": "default",
                "node": {"name": "worker-1", "uid": "5a1c2f7e-8b3d-4e6f-9a0b-1c2d3e4f5a6b"},
                "pod": {"name": "web-7d9f8c6b5-abcde", "uid": "7e6d5c4b-3a29-1807-f6e5-d4c3b2a19087"},
                "serviceaccount": {"name": "default", "uid": "1b2c3d4e-5f60-7182-93a4-b5c6d7e8f901"},
                "warnafter": 1_800_003_607u64},
            "sub": "system:serviceaccount:default:default",
        })
        .to_string(),
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let socket = dir.path().join("signer.sock");
    let listener = {
        let _g = rt.enter();
        tokio::net::UnixListener::bind(&socket)?
    };
    let service = crate::api::external_jwt::ExternalJwtSigner::new(ring.clone());
    rt.spawn(
        tonic::transport::Server::builder()
            .add_service(v1::external_jwt_signer_server::ExternalJwtSignerServer::new(service))
            .serve_with_incoming(tokio_stream::wrappers::UnixListenerStream::new(listener)),
    );
    let mut client = rt.block_on(async {
        anyhow::Ok(
            v1::external_jwt_signer_client::ExternalJwtSignerClient::new(
                crate::admin_client::channel(&socket).await?,
            ),
        )
    })?;
    let msg = vec![0x5au8; 700];
    let mut raw = || -> anyhow::Result<()> {
        key_sign(&ring, &msg)?;
        Ok(())
    };
    let mut jws = || -> anyhow::Result<()> {
        ring.sign(&claims)?;
        Ok(())
    };
    let mut rpc = || -> anyhow::Result<()> {
        let c = claims.clone();
        rt.block_on(client.sign(v1::SignJwtRequest { claims: c }))?;
        Ok(())
    };
    let [raw, jws, rpc] = crate::bench::interleaved(duration, &mut [&mut raw, &mut jws, &mut rpc])?;
    Ok(SaBenchResult {
        backend: name,
        raw_per_sec: raw,
        jws_per_sec: jws,
        rpc_per_sec: rpc,
    })
}

/// A raw signature with the ring's current key (the ceiling of the other two).
fn key_sign(ring: &SaKeyRing, msg: &[u8]) -> anyhow::Result<Vec<u8>> {
    Ok(ring.raw_sign(msg)?)
}

/// Runs the requested backends (a SoftHSM2 token `keygrid-bench` for `pkcs11`; call
/// `bench::prepare_softhsm` first).
pub fn run(
    module: &Path,
    backends: &[String],
    duration: Duration,
) -> anyhow::Result<Vec<SaBenchResult>> {
    let mut out = Vec::new();
    for backend in backends {
        out.push(match backend.as_str() {
            "software" => measure(Arc::new(MemoryBackend::default()), "software", duration)?,
            "pkcs11" => {
                let so = AuthPin::from("bench-so".to_string());
                let user = AuthPin::from("bench-user".to_string());
                Pkcs11Token::init_if_missing(module, "keygrid-bench", &so, &user)?;
                let token = Pkcs11Token::open(module, "keygrid-bench", user)?;
                measure(Arc::new(token), "pkcs11", duration)?
            }
            other => anyhow::bail!("unknown backend {other:?}; use software or pkcs11"),
        });
    }
    Ok(out)
}

/// Prints results as a Markdown table (pasted into docs/benchmarks.md).
pub fn print(results: &[SaBenchResult]) {
    println!("| backend | raw ES256 sign/s (ceiling) | JWS/s (key ring) | Sign RPC/s (UDS) | RPC ÷ raw | RPC latency |");
    println!("|---|---:|---:|---:|---:|---:|");
    for r in results {
        println!(
            "| {} | {:.0} | {:.0} | {:.0} | {:.0}% | {:.0} µs |",
            r.backend,
            r.raw_per_sec,
            r.jws_per_sec,
            r.rpc_per_sec,
            100.0 * r.rpc_per_sec / r.raw_per_sec,
            1e6 / r.rpc_per_sec
        );
    }
}
