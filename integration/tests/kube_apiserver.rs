//! A real kube-apiserver (v1.36.3, built from the Go module proxy by
//! `scripts/build-kubernetes.sh`) on KeyGrid: serving, client-CA, kubelet-client,
//! front-proxy and etcd-client certificates from `keygrid kubeadm certs`, etcd on KeyGrid
//! mTLS, and service-account tokens signed in SoftHSM2 through KeyGrid's ExternalJWTSigner
//! (`--service-account-signing-endpoint`). A token it issues verifies against KeyGrid's
//! JWKS, passes kube-apiserver's own TokenReview, and still does after `keygrid sa rotate`,
//! while new tokens carry the new key.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use keygrid_integration::{bin, free_port, require_tool, run, wait_until, DevEnv, KillOnDrop};

const ETCD_HINT: &str = "apt-get install etcd-server etcd-client (scripts/install-deps.sh)";
const CURL_HINT: &str = "apt-get install curl (scripts/install-deps.sh)";
const ISSUER: &str = "https://kubernetes.default.svc.cluster.local";

fn kube_apiserver() -> PathBuf {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tools/bin/kube-apiserver");
    assert!(
        path.exists(),
        "{} is missing: run scripts/build-kubernetes.sh (make test does)",
        path.display()
    );
    path
}

fn text(o: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

struct Api {
    url: String,
    pki: PathBuf,
}

impl Api {
    /// Waits until kube-apiserver answers /readyz to the super-admin over KeyGrid TLS.
    fn wait_ready(&self) {
        let p = |f: &str| self.pki.join(f).display().to_string();
        wait_until(
            "kube-apiserver ready on KeyGrid's certificates",
            Duration::from_secs(120),
            || {
                run(Command::new("curl")
                    .args([
                        "-sSf",
                        "--cacert",
                        &p("ca.crt"),
                        "--cert",
                        &p("kubeconfig/super-admin.crt"),
                    ])
                    .args([
                        "--key",
                        &p("kubeconfig/super-admin.key"),
                        &format!("{}/readyz", self.url),
                    ]))
                .status
                .success()
            },
        );
    }

    /// A request as the break-glass super-admin (O=system:masters), checking the server
    /// certificate against KeyGrid's cluster CA.
    fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> serde_json::Value {
        let p = |f: &str| self.pki.join(f).display().to_string();
        let mut cmd = Command::new("curl");
        cmd.args([
            "-sS",
            "--fail-with-body",
            "-X",
            method,
            "--cacert",
            &p("ca.crt"),
        ])
        .args([
            "--cert",
            &p("kubeconfig/super-admin.crt"),
            "--key",
            &p("kubeconfig/super-admin.key"),
        ])
        .args(["-H", "Content-Type: application/json"]);
        if let Some(b) = body {
            cmd.args(["-d", &b.to_string()]);
        }
        let out = run(cmd.arg(format!("{}{path}", self.url)));
        assert!(out.status.success(), "{method} {path}: {}", text(&out));
        serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("{path}: {e}: {}", text(&out)))
    }

    fn token(&self, sa: &str) -> String {
        let r = self.call(
            "POST",
            &format!("/api/v1/namespaces/default/serviceaccounts/{sa}/token"),
            Some(&serde_json::json!({
                "apiVersion": "authentication.k8s.io/v1",
                "kind": "TokenRequest",
                "spec": {"expirationSeconds": 3600}
            })),
        );
        r["status"]["token"].as_str().unwrap().to_string()
    }

    /// kube-apiserver's own verdict on a token.
    fn review(&self, token: &str) -> (bool, String) {
        let r = self.call(
            "POST",
            "/apis/authentication.k8s.io/v1/tokenreviews",
            Some(&serde_json::json!({
                "apiVersion": "authentication.k8s.io/v1",
                "kind": "TokenReview",
                "spec": {"token": token}
            })),
        );
        (
            r["status"]["authenticated"].as_bool().unwrap_or(false),
            r["status"]["user"]["username"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
        )
    }
}

/// Verifies an ES256 token with the JWK Set KeyGrid serves; returns its kid and claims.
fn verify_with_jwks(token: &str, jwks: &serde_json::Value) -> (String, serde_json::Value) {
    let parts: Vec<&str> = token.split('.').collect();
    assert_eq!(parts.len(), 3);
    let header: serde_json::Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[0]).unwrap()).unwrap();
    assert_eq!(header["alg"], "ES256");
    let kid = header["kid"].as_str().unwrap().to_string();
    let key = jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["kid"] == kid.as_str())
        .unwrap_or_else(|| panic!("kid {kid} not in KeyGrid's JWKS: {jwks}"));
    let mut point = vec![4u8];
    point.extend(URL_SAFE_NO_PAD.decode(key["x"].as_str().unwrap()).unwrap());
    point.extend(URL_SAFE_NO_PAD.decode(key["y"].as_str().unwrap()).unwrap());
    aws_lc_rs::signature::UnparsedPublicKey::new(
        &aws_lc_rs::signature::ECDSA_P256_SHA256_FIXED,
        &point,
    )
    .verify(
        format!("{}.{}", parts[0], parts[1]).as_bytes(),
        &URL_SAFE_NO_PAD.decode(parts[2]).unwrap(),
    )
    .expect("the token verifies with KeyGrid's published key");
    let claims = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap();
    (kid, claims)
}

fn jwks(http: &str) -> serde_json::Value {
    let out = run(Command::new("curl").args(["-sSf", &format!("http://{http}/openid/v1/jwks")]));
    assert!(out.status.success(), "{}", text(&out));
    serde_json::from_slice(&out.stdout).unwrap()
}

fn start_etcd(pki: &Path, dir: &Path) -> (KillOnDrop, u16) {
    let (client, peer) = (free_port(), free_port());
    let p = |f: &str| pki.join(f).display().to_string();
    let log = std::fs::File::create(dir.join("etcd.log")).unwrap();
    let child = Command::new("etcd")
        .args([
            "--name",
            "cp1",
            "--data-dir",
            &dir.join("etcd").display().to_string(),
        ])
        .args([
            "--listen-client-urls",
            &format!("https://127.0.0.1:{client}"),
        ])
        .args([
            "--advertise-client-urls",
            &format!("https://127.0.0.1:{client}"),
        ])
        .args(["--listen-peer-urls", &format!("https://127.0.0.1:{peer}")])
        .args([
            "--initial-advertise-peer-urls",
            &format!("https://127.0.0.1:{peer}"),
        ])
        .args([
            "--initial-cluster",
            &format!("cp1=https://127.0.0.1:{peer}"),
        ])
        .args(["--client-cert-auth", "--trusted-ca-file", &p("etcd/ca.crt")])
        .args([
            "--cert-file",
            &p("etcd/server.crt"),
            "--key-file",
            &p("etcd/server.key"),
        ])
        .args([
            "--peer-client-cert-auth",
            "--peer-trusted-ca-file",
            &p("etcd/ca.crt"),
        ])
        .args([
            "--peer-cert-file",
            &p("etcd/peer.crt"),
            "--peer-key-file",
            &p("etcd/peer.key"),
        ])
        .args(["--logger", "zap", "--log-outputs", "stderr"])
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .expect("start etcd");
    (KillOnDrop(child), client)
}

/// `keygrid kubeadm certs` for a one-node control plane `cp1` whose API server listens on
/// 127.0.0.1:`port`: certificates in `<work>/pki`, kubeconfigs in `<work>/kube`.
fn write_control_plane_certs(env: &DevEnv, work: &Path, port: u16, extra: &[&str]) {
    let out = run(Command::new(bin("keygrid"))
        .args(["kubeadm", "certs", "--pki-dir"])
        .arg(work.join("pki"))
        .arg("--kubeconfig-dir")
        .arg(work.join("kube"))
        .args(["--node-name", "cp1", "--advertise-address", "127.0.0.1"])
        .args(["--bind-port", &port.to_string()])
        .args(extra)
        .arg("--socket")
        .arg(env.admin_socket()));
    assert!(out.status.success(), "{}", text(&out));
}

/// Starts kube-apiserver on the KeyGrid certificates in `pki`, against etcd on
/// `etcd_port`; `extra_args` choose how service-account tokens are signed and switch on
/// any beta APIs a test needs.
#[allow(clippy::too_many_arguments)]
fn start_apiserver(
    apiserver: &Path,
    pki: &Path,
    work: &Path,
    port: u16,
    etcd_port: u16,
    extra_args: &[String],
    log_name: &str,
) -> KillOnDrop {
    let p = |f: &str| pki.join(f).display().to_string();
    let log = std::fs::File::create(work.join(log_name)).unwrap();
    let child = Command::new(apiserver)
        .arg(format!("--etcd-servers=https://127.0.0.1:{etcd_port}"))
        .arg(format!("--etcd-cafile={}", p("etcd/ca.crt")))
        .arg(format!(
            "--etcd-certfile={}",
            p("apiserver-etcd-client.crt")
        ))
        .arg(format!("--etcd-keyfile={}", p("apiserver-etcd-client.key")))
        .arg(format!("--secure-port={port}"))
        .args(["--bind-address=127.0.0.1", "--advertise-address=127.0.0.1"])
        .arg(format!("--tls-cert-file={}", p("apiserver.crt")))
        .arg(format!("--tls-private-key-file={}", p("apiserver.key")))
        .arg(format!("--client-ca-file={}", p("ca.crt")))
        .arg(format!(
            "--kubelet-client-certificate={}",
            p("apiserver-kubelet-client.crt")
        ))
        .arg(format!(
            "--kubelet-client-key={}",
            p("apiserver-kubelet-client.key")
        ))
        .arg(format!(
            "--requestheader-client-ca-file={}",
            p("front-proxy-ca.crt")
        ))
        .arg(format!(
            "--proxy-client-cert-file={}",
            p("front-proxy-client.crt")
        ))
        .arg(format!(
            "--proxy-client-key-file={}",
            p("front-proxy-client.key")
        ))
        .args([
            "--requestheader-allowed-names=front-proxy-client",
            "--requestheader-username-headers=X-Remote-User",
        ])
        .args([
            "--requestheader-group-headers=X-Remote-Group",
            "--requestheader-extra-headers-prefix=X-Remote-Extra-",
        ])
        .args(extra_args)
        .args([
            "--service-cluster-ip-range=10.96.0.0/12",
            "--authorization-mode=Node,RBAC",
        ])
        .arg(format!(
            "--cert-dir={}",
            work.join("apiserver-certs").display()
        ))
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .expect("start kube-apiserver");
    KillOnDrop(child)
}

#[test]
fn kube_apiserver_signs_service_account_tokens_through_keygrid() {
    let apiserver = kube_apiserver();
    require_tool("etcd", ETCD_HINT);
    require_tool("curl", CURL_HINT);
    let (env, socket, http) = DevEnv::start_with_sa_signer(&format!(
        "issuer = \"{ISSUER}\"\nkeys_refresh_hint = \"2s\""
    ));
    let work = tempfile::tempdir().unwrap();
    let pki = work.path().join("pki");
    let port = free_port();
    write_control_plane_certs(&env, work.path(), port, &["--ttl", "40s"]);
    let (_etcd, etcd_port) = start_etcd(&pki, work.path());

    let p = |f: &str| pki.join(f).display().to_string();
    let _apiserver = start_apiserver(
        &apiserver,
        &pki,
        work.path(),
        port,
        etcd_port,
        &[
            format!("--service-account-signing-endpoint={}", socket.display()),
            format!("--service-account-issuer={ISSUER}"),
            "--feature-gates=ClusterTrustBundle=true".to_string(),
            "--runtime-config=certificates.k8s.io/v1beta1/clustertrustbundles=true".to_string(),
        ],
        "apiserver.log",
    );
    let api = Api {
        url: format!("https://127.0.0.1:{port}"),
        pki: pki.clone(),
    };
    let apiserver_log =
        || std::fs::read_to_string(work.path().join("apiserver.log")).unwrap_or_default();
    api.wait_ready();
    let version = api.call("GET", "/version", None);
    assert_eq!(version["gitVersion"], "v1.36.3", "{version}");

    // KeyGrid's roots as a ClusterTrustBundle: the API server validates and stores what
    // `keygrid kubeadm trust-bundle` wrote and finds it by signer name.
    let ctb_file = work.path().join("trust-bundle.json");
    let out = run(Command::new(bin("keygrid"))
        .args([
            "kubeadm",
            "trust-bundle",
            "--signer-name",
            "keygrid.example.com/nodes",
        ])
        .args(["--output", ctb_file.to_str().unwrap()])
        .arg("--socket")
        .arg(env.admin_socket()));
    assert!(out.status.success(), "{}", text(&out));
    let object: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&ctb_file).unwrap()).unwrap();
    let ctbs = "/apis/certificates.k8s.io/v1beta1/clustertrustbundles";
    let created = api.call("POST", ctbs, Some(&object));
    assert_eq!(
        created["metadata"]["name"],
        "keygrid.example.com:nodes:keygrid-roots"
    );
    let listed = api.call(
        "GET",
        &format!("{ctbs}?fieldSelector=spec.signerName%3Dkeygrid.example.com%2Fnodes"),
        None,
    );
    let items = listed["items"].as_array().expect("items");
    assert_eq!(items.len(), 1, "{listed}");
    let ders = |text: &str| -> Vec<Vec<u8>> {
        pem::parse_many(text)
            .unwrap()
            .into_iter()
            .map(|p| p.into_contents())
            .collect()
    };
    let published = std::fs::read_to_string(env.bundle_pem()).unwrap();
    assert_eq!(
        ders(items[0]["spec"]["trustBundle"].as_str().unwrap()),
        ders(&published),
        "the stored bundle is not KeyGrid's published one"
    );

    api.call(
        "POST",
        "/api/v1/namespaces/default/serviceaccounts",
        Some(&serde_json::json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "demo"}})),
    );
    let old = api.token("demo");
    let (old_kid, claims) = verify_with_jwks(&old, &jwks(&http));
    assert_eq!(claims["iss"], ISSUER);
    assert_eq!(claims["sub"], "system:serviceaccount:default:demo");
    assert_eq!(
        api.review(&old),
        (true, "system:serviceaccount:default:demo".to_string())
    );

    // Rotate in KeyGrid: kube-apiserver picks up the new key (FetchKeys refresh), signs
    // with it, and the token signed before still authenticates.
    let out = env.cli(&["sa", "rotate"]);
    assert!(out.status.success(), "{}", text(&out));
    let mut new = String::new();
    wait_until(
        "kube-apiserver signing with the rotated key",
        Duration::from_secs(60),
        || {
            new = api.token("demo");
            verify_with_jwks(&new, &jwks(&http)).0 != old_kid
        },
    );
    let keys = jwks(&http);
    verify_with_jwks(&old, &keys);
    assert!(
        api.review(&old).0,
        "a token signed before the rotation still authenticates"
    );
    assert!(
        api.review(&new).0,
        "the new token authenticates:\n{}",
        apiserver_log()
    );

    // Certificate rotation under a live kube-apiserver: 40 s certificates renewed at half
    // life by `keygrid kubeadm rotate --watch`; a client makes a new TLS connection (new
    // handshake, server certificate checked for validity) every 250 ms with the rotating
    // super-admin certificate. Nothing is restarted and no request fails.
    let log = std::fs::File::create(work.path().join("rotate.log")).unwrap();
    let rotator = Command::new(bin("keygrid"))
        .args([
            "kubeadm",
            "rotate",
            "--watch",
            "--renew-at",
            "0.5",
            "--interval",
            "1s",
        ])
        .args(["--pki-dir", pki.to_str().unwrap()])
        .arg("--socket")
        .arg(env.admin_socket())
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .expect("start keygrid kubeadm rotate --watch");
    let _rotator = KillOnDrop(rotator);
    let first_serving = std::fs::read(pki.join("apiserver.crt")).unwrap();
    let started = std::time::Instant::now();
    let mut requests = 0;
    while started.elapsed() < Duration::from_secs(90) {
        let out = run(Command::new("curl")
            .args([
                "-sS",
                "--fail-with-body",
                "--cacert",
                &p("ca.crt"),
                "--cert",
                &p("kubeconfig/super-admin.crt"),
            ])
            .args([
                "--key",
                &p("kubeconfig/super-admin.key"),
                &format!("{}/api/v1/namespaces/default/serviceaccounts/demo", api.url),
            ]));
        assert!(
            out.status.success(),
            "request {requests} failed after {:?}: {}\n{}",
            started.elapsed(),
            text(&out),
            std::fs::read_to_string(work.path().join("rotate.log")).unwrap_or_default()
        );
        requests += 1;
        std::thread::sleep(Duration::from_millis(250));
    }
    assert_ne!(
        std::fs::read(pki.join("apiserver.crt")).unwrap(),
        first_serving
    );
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(pki.join("keygrid-kubeadm.json")).unwrap()).unwrap();
    for c in manifest["certs"].as_array().unwrap() {
        assert!(c["issued_count"].as_u64().unwrap() >= 3, "{c}");
    }
    // The apiserver still reaches etcd and signs through KeyGrid after every original
    // certificate has expired.
    let late = api.token("demo");
    assert!(api.review(&late).0);
    eprintln!("{requests} requests to kube-apiserver during rotation, all succeeded");
}

/// Moving a cluster from key files to the external signer without invalidating tokens:
/// kube-apiserver first signs with `sa.key` (written by `keygrid kubeadm sa-keys init`);
/// KeyGrid is configured with that `sa.pub` as a legacy key; after kube-apiserver is
/// restarted on `--service-account-signing-endpoint`, the token signed with the file key
/// still authenticates (FetchKeys publishes it, verification only), new tokens carry
/// KeyGrid's key, and the legacy key stays out of OIDC discovery.
#[test]
fn moving_from_key_files_to_keygrid_keeps_old_tokens_valid() {
    let apiserver = kube_apiserver();
    require_tool("etcd", ETCD_HINT);
    require_tool("curl", CURL_HINT);
    let work = tempfile::tempdir().unwrap();
    let pki = work.path().join("pki");
    let out = run(Command::new(bin("keygrid")).args([
        "kubeadm",
        "sa-keys",
        "init",
        "--pki-dir",
        pki.to_str().unwrap(),
    ]));
    assert!(out.status.success(), "{}", text(&out));

    let (env, socket, http) = DevEnv::start_with_sa_signer(&format!(
        "issuer = \"{ISSUER}\"\nlegacy_key_files = [{:?}]",
        pki.join("sa.pub").display().to_string()
    ));
    let port = free_port();
    write_control_plane_certs(&env, work.path(), port, &[]);
    let (_etcd, etcd_port) = start_etcd(&pki, work.path());
    let api = Api {
        url: format!("https://127.0.0.1:{port}"),
        pki: pki.clone(),
    };

    // Key-file mode.
    let file_mode = start_apiserver(
        &apiserver,
        &pki,
        work.path(),
        port,
        etcd_port,
        &[
            format!(
                "--service-account-key-file={}",
                pki.join("sa-verify.pub").display()
            ),
            format!(
                "--service-account-signing-key-file={}",
                pki.join("sa.key").display()
            ),
            format!("--service-account-issuer={ISSUER}"),
        ],
        "apiserver-files.log",
    );
    api.wait_ready();
    api.call(
        "POST",
        "/api/v1/namespaces/default/serviceaccounts",
        Some(&serde_json::json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "demo"}})),
    );
    let old = api.token("demo");
    let header = |t: &str| -> serde_json::Value {
        serde_json::from_slice(
            &URL_SAFE_NO_PAD
                .decode(t.split('.').next().unwrap())
                .unwrap(),
        )
        .unwrap()
    };
    let old_kid = header(&old)["kid"].as_str().unwrap().to_string();
    assert!(api.review(&old).0);
    drop(file_mode);

    // The same cluster on KeyGrid's signer.
    let _signer_mode = start_apiserver(
        &apiserver,
        &pki,
        work.path(),
        port,
        etcd_port,
        &[
            format!("--service-account-signing-endpoint={}", socket.display()),
            format!("--service-account-issuer={ISSUER}"),
        ],
        "apiserver-signer.log",
    );
    api.wait_ready();
    assert_eq!(
        api.review(&old),
        (true, "system:serviceaccount:default:demo".to_string()),
        "a token signed with the former key file still authenticates"
    );
    let new = api.token("demo");
    let (new_kid, _) = verify_with_jwks(&new, &jwks(&http));
    assert_ne!(new_kid, old_kid);
    assert!(api.review(&new).0);
    let published: Vec<String> = jwks(&http)["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["kid"].as_str().unwrap().to_string())
        .collect();
    assert!(
        !published.contains(&old_kid),
        "the legacy key is verification-only, not in OIDC discovery"
    );
}
