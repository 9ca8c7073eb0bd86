//! Kubernetes workload attestation end to end: a real `keygrid-agent` with the k8s attestor
//! on asks a test kubelet (HTTPS, bearer token, real-shaped `/pods` JSON) about the pod of
//! the calling process (found through its cgroup file), and serves the pod its default
//! identity `spiffe://<td>/ns/<ns>/sa/<sa>`, minted by core; an entry with `k8s:` selectors
//! takes precedence over the default.

use keygrid_integration::{with_header, workload_client};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http_body_util::Full;
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use keygrid_integration::{Agent, DevEnv};
use keygrid_proto::workload::spiffe_workload_api_client::SpiffeWorkloadApiClient;
use keygrid_proto::workload::{JwtsvidRequest, X509svidRequest};
use tonic::transport::Channel;

const CONTAINER_ID: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
const POD_UID: &str = "0ab1c2d3-e4f5-4a6b-9c8d-7e6f5a4b3c21";
const TOKEN: &str = "kubelet-test-token-5f2a";

/// `/pods` as a kubelet returns it (trimmed to typical fields, same shape).
fn pods_json() -> String {
    format!(
        r#"{{"kind":"PodList","apiVersion":"v1","metadata":{{}},"items":[
  {{"metadata":{{"name":"api-6c9f7d8b5-x2x7k","generateName":"api-6c9f7d8b5-","namespace":"payments",
     "uid":"{POD_UID}","resourceVersion":"48213","creationTimestamp":"2026-12-04T10:00:00Z",
     "labels":{{"app":"api","pod-template-hash":"6c9f7d8b5"}},
     "ownerReferences":[{{"apiVersion":"apps/v1","kind":"ReplicaSet","name":"api-6c9f7d8b5","uid":"7d0e6f1a-0000-4000-8000-000000000001","controller":true}}]}},
   "spec":{{"serviceAccountName":"api","serviceAccount":"api","nodeName":"node-1",
     "containers":[{{"name":"app","image":"ghcr.io/example/api:1.4.2"}}]}},
   "status":{{"phase":"Running","podIP":"10.244.1.17","qosClass":"Burstable",
     "containerStatuses":[{{"name":"app","ready":true,"restartCount":0,
       "image":"ghcr.io/example/api:1.4.2",
       "imageID":"ghcr.io/example/api@sha256:9b2a0c1d",
       "containerID":"containerd://{CONTAINER_ID}","started":true,
       "state":{{"running":{{"startedAt":"2026-12-04T10:00:02Z"}}}}}}]}}}},
  {{"metadata":{{"name":"coredns-abc","namespace":"kube-system","uid":"11111111-2222-4333-8444-555555555555"}},
   "spec":{{"serviceAccountName":"coredns","nodeName":"node-1"}},
   "status":{{"containerStatuses":[{{"name":"coredns","image":"coredns:1.11",
       "containerID":"containerd://{}"}}]}}}}]}}"#,
        "a".repeat(64)
    )
}

/// A kubelet stand-in on HTTPS that checks the bearer token and records requests.
async fn start_kubelet(dir: &Path) -> (SocketAddr, Arc<Mutex<Vec<String>>>) {
    let ca = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(vec!["localhost".to_string()]).unwrap();
    params
        .subject_alt_names
        .push(rcgen::SanType::IpAddress("127.0.0.1".parse().unwrap()));
    let cert = params.self_signed(&ca).unwrap();
    std::fs::write(dir.join("kubelet-ca.pem"), cert.pem()).unwrap();
    let tls = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(
        vec![cert.der().clone()],
        rustls::pki_types::PrivateKeyDer::Pkcs8(ca.serialize_der().into()),
    )
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let seen2 = seen.clone();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let acceptor = acceptor.clone();
            let seen = seen2.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let svc = hyper::service::service_fn(
                    move |req: hyper::Request<hyper::body::Incoming>| {
                        let seen = seen.clone();
                        async move {
                            let auth = req
                                .headers()
                                .get("authorization")
                                .and_then(|v| v.to_str().ok())
                                .unwrap_or_default()
                                .to_string();
                            seen.lock()
                                .unwrap()
                                .push(format!("{} {}", req.uri().path(), auth));
                            let (status, body) = if auth != format!("Bearer {TOKEN}") {
                                (401, "Unauthorized".to_string())
                            } else if req.uri().path() == "/pods" {
                                (200, pods_json())
                            } else {
                                (404, "not found".to_string())
                            };
                            Ok::<_, std::convert::Infallible>(
                                hyper::Response::builder()
                                    .status(status)
                                    .header("content-type", "application/json")
                                    .body(Full::new(Bytes::from(body)))
                                    .unwrap(),
                            )
                        }
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tls), svc)
                    .await;
            });
        }
    });
    (addr, seen)
}

async fn first_svid_id(
    client: &mut SpiffeWorkloadApiClient<Channel>,
) -> Result<String, tonic::Status> {
    let mut stream = client
        .fetch_x509svid(with_header(X509svidRequest {}))
        .await?
        .into_inner();
    let msg = tokio::time::timeout(Duration::from_secs(30), stream.message())
        .await
        .expect("a first message within 30s")?
        .expect("a message");
    Ok(msg.svids[0].spiffe_id.clone())
}

#[tokio::test(flavor = "multi_thread")]
async fn pods_get_their_default_identity_and_entries_override_it() {
    let env = DevEnv::start("5m");
    let work = tempfile::tempdir().unwrap();
    let (kubelet, seen) = start_kubelet(work.path()).await;
    std::fs::write(work.path().join("token"), format!("{TOKEN}\n")).unwrap();

    // This test process plays the pod: a host /proc view where its cgroup is a
    // containerd container of the pod above (cgroup v2, systemd driver).
    let proc_root = work.path().join("proc");
    let me = proc_root.join(std::process::id().to_string());
    std::fs::create_dir_all(&me).unwrap();
    std::fs::write(
        me.join("cgroup"),
        format!(
            "0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{}.slice/cri-containerd-{CONTAINER_ID}.scope\n",
            POD_UID.replace('-', "_")
        ),
    )
    .unwrap();

    let agent_id = format!("spiffe://{}/keygrid/node/k8s-1", env.trust_domain);
    let agent = Agent::start(
        &env,
        &agent_id,
        &env.listen,
        &format!(
            "\n[k8s]\nenabled = true\nkubelet_url = \"https://{kubelet}\"\ntoken_path = {:?}\n\
             kubelet_ca_path = {:?}\nproc_root = {:?}\nmax_poll_attempts = 3\npoll_retry_interval = \"100ms\"\n",
            work.path().join("token").display().to_string(),
            work.path().join("kubelet-ca.pem").display().to_string(),
            proc_root.display().to_string(),
        ),
    );
    let mut client = workload_client(&agent.socket()).await;

    // No entry matches: the pod's default identity, X.509 and JWT.
    let default_id = format!("spiffe://{}/ns/payments/sa/api", env.trust_domain);
    let got = first_svid_id(&mut client)
        .await
        .unwrap_or_else(|e| panic!("{e:?}\n{}", agent.log()));
    assert_eq!(got, default_id);
    let jwt = client
        .fetch_jwtsvid(with_header(JwtsvidRequest {
            audience: vec!["payments".into()],
            spiffe_id: String::new(),
        }))
        .await
        .expect("JWT-SVID for the default identity")
        .into_inner();
    assert_eq!(jwt.svids[0].spiffe_id, default_id);

    // The kubelet was asked for /pods with the bearer token.
    let requests = seen.lock().unwrap().clone();
    assert!(
        requests
            .iter()
            .any(|r| r == &format!("/pods Bearer {TOKEN}")),
        "{requests:?}"
    );

    // An entry on k8s selectors (label and container) wins over the default.
    let entry_id = format!("spiffe://{}/payments/api-frontdoor", env.trust_domain);
    let out = env.cli(&[
        "entry",
        "create",
        "--spiffe-id",
        &entry_id,
        "--parent-id",
        &agent_id,
        "--selector",
        "k8s:pod-label:app:api",
        "--selector",
        "k8s:container-name:app",
        "--selector",
        "k8s:ns:payments",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let start = std::time::Instant::now();
    loop {
        let got = first_svid_id(&mut client).await.unwrap();
        if got == entry_id {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "entry not applied: still {got}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_wrong_kubelet_token_or_certificate_gives_no_pod_identity() {
    let env = DevEnv::start("5m");
    let work = tempfile::tempdir().unwrap();
    let (kubelet, _seen) = start_kubelet(work.path()).await;
    std::fs::write(work.path().join("token"), "wrong-token").unwrap();
    // A CA that did not sign the kubelet's certificate.
    let other = rcgen::KeyPair::generate().unwrap();
    let other_ca = rcgen::CertificateParams::new(vec!["localhost".to_string()])
        .unwrap()
        .self_signed(&other)
        .unwrap();
    std::fs::write(work.path().join("other-ca.pem"), other_ca.pem()).unwrap();
    let proc_root = work.path().join("proc");
    let me = proc_root.join(std::process::id().to_string());
    std::fs::create_dir_all(&me).unwrap();
    std::fs::write(
        me.join("cgroup"),
        format!("0::/kubepods/burstable/pod{POD_UID}/{CONTAINER_ID}\n"),
    )
    .unwrap();

    for (i, ca) in ["kubelet-ca.pem", "other-ca.pem"].iter().enumerate() {
        let agent = Agent::start(
            &env,
            &format!("spiffe://{}/keygrid/node/k8s-neg-{i}", env.trust_domain),
            &env.listen,
            &format!(
                "\n[k8s]\nenabled = true\nkubelet_url = \"https://{kubelet}\"\ntoken_path = {:?}\n\
                 kubelet_ca_path = {:?}\nproc_root = {:?}\nmax_poll_attempts = 2\npoll_retry_interval = \"50ms\"\n",
                work.path().join("token").display().to_string(),
                work.path().join(ca).display().to_string(),
                proc_root.display().to_string(),
            ),
        );
        let mut client = workload_client(&agent.socket()).await;
        let err = first_svid_id(&mut client).await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::PermissionDenied, "{err:?}");
        assert_eq!(err.message(), "no identity issued");
        let log = agent.log();
        assert!(
            log.contains("kubernetes workload attestation failed"),
            "{log}"
        );
    }
}
