//! `keygrid kubeadm certs` and `sign-csrs` end to end: `keygrid dev` (SoftHSM2-held CAs),
//! the CLI writing kubeadm's external-CA set, and openssl checking every file. Table-driven:
//! each row is a file of the set with the CA it must verify against and exactly the
//! subject, SANs, key usages and extended key usages the research note lists.

use std::collections::BTreeSet;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use keygrid_integration::{bin, require_tool, run, DevEnv};
use x509_parser::extensions::{GeneralName, ParsedExtension};

const OPENSSL_HINT: &str = "apt-get install openssl (scripts/install-deps.sh)";

/// Allowed names of the cluster CAs in this test: the kubeadm names of a cluster with
/// node cp1, dnsDomain cluster.local, endpoint api.example.internal.
const CORE_EXTRA: &str = r#"
[ca]
control_plane_dns = ["cp1", "localhost", "kubernetes", "default", "svc", "cluster.local", "example.internal"]
control_plane_ips = ["10.0.0.0/8", "127.0.0.0/8", "::1/128"]

[control_plane]
cert_ttl = "24h"
"#;

const KUBEADM_CONFIG: &str = r#"apiVersion: kubeadm.k8s.io/v1beta4
kind: InitConfiguration
localAPIEndpoint:
  advertiseAddress: 10.0.0.10
  bindPort: 6443
nodeRegistration:
  name: cp1
---
apiVersion: kubeadm.k8s.io/v1beta4
kind: ClusterConfiguration
kubernetesVersion: v1.36.3
certificatesDir: PKI_DIR
controlPlaneEndpoint: api.example.internal:6443
networking:
  serviceSubnet: 10.96.0.0/12
  dnsDomain: cluster.local
apiServer:
  certSANs: ["extra.example.internal", "10.0.0.99"]
etcd:
  local:
    serverCertSANs: ["etcd.example.internal"]
"#;

pub fn start_dev() -> DevEnv {
    let dir = tempfile::tempdir().unwrap();
    let extra = dir.path().join("extra.toml");
    std::fs::write(&extra, CORE_EXTRA).unwrap();
    DevEnv::start_with_args(
        dir,
        "5m",
        &["--core-config-extra".into(), extra.display().to_string()],
    )
}

fn keygrid(env: &DevEnv, args: &[&str]) -> std::process::Output {
    run(Command::new(bin("keygrid"))
        .args(args)
        .arg("--socket")
        .arg(env.admin_socket()))
}

/// Runs `keygrid <args>` and fails the test, with its stderr and core's log, unless it
/// succeeded.
fn keygrid_ok(env: &DevEnv, args: &[&str]) -> std::process::Output {
    let out = keygrid(env, args);
    assert!(
        out.status.success(),
        "keygrid {} failed: {}\n{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr),
        env.log()
    );
    out
}

fn openssl(args: &[&str]) -> (bool, String) {
    let out = Command::new("openssl")
        .args(args)
        .output()
        .expect("openssl");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

struct Row {
    file: &'static str,
    ca: &'static str,
    subject: &'static str,
    dns: &'static [&'static str],
    ips: &'static [&'static str],
    ekus: &'static [&'static str],
}

const SERVER: &[&str] = &["serverAuth"];
const CLIENT: &[&str] = &["clientAuth"];
const BOTH: &[&str] = &["serverAuth", "clientAuth"];
const ETCD_DNS: &[&str] = &["cp1", "localhost"];
const ETCD_IPS: &[&str] = &["10.0.0.10", "127.0.0.1", "::1"];

/// The research table (kubernetes-pki.md §1.2 and §1.3) for node cp1.
const TABLE: &[Row] = &[
    Row {
        file: "apiserver.crt",
        ca: "ca.crt",
        subject: "CN=kube-apiserver",
        dns: &[
            "cp1",
            "kubernetes",
            "kubernetes.default",
            "kubernetes.default.svc",
            "kubernetes.default.svc.cluster.local",
            "api.example.internal",
            "extra.example.internal",
        ],
        ips: &["10.96.0.1", "10.0.0.10", "10.0.0.99"],
        ekus: SERVER,
    },
    Row {
        file: "apiserver-kubelet-client.crt",
        ca: "ca.crt",
        subject: "CN=kube-apiserver-kubelet-client",
        dns: &[],
        ips: &[],
        ekus: CLIENT,
    },
    Row {
        file: "front-proxy-client.crt",
        ca: "front-proxy-ca.crt",
        subject: "CN=front-proxy-client",
        dns: &[],
        ips: &[],
        ekus: CLIENT,
    },
    Row {
        file: "etcd/server.crt",
        ca: "etcd/ca.crt",
        subject: "CN=cp1",
        dns: &["cp1", "localhost", "etcd.example.internal"],
        ips: ETCD_IPS,
        ekus: BOTH,
    },
    Row {
        file: "etcd/peer.crt",
        ca: "etcd/ca.crt",
        subject: "CN=cp1",
        dns: ETCD_DNS,
        ips: ETCD_IPS,
        ekus: BOTH,
    },
    Row {
        file: "etcd/healthcheck-client.crt",
        ca: "etcd/ca.crt",
        subject: "CN=kube-etcd-healthcheck-client",
        dns: &[],
        ips: &[],
        ekus: CLIENT,
    },
    Row {
        file: "apiserver-etcd-client.crt",
        ca: "etcd/ca.crt",
        subject: "CN=kube-apiserver-etcd-client",
        dns: &[],
        ips: &[],
        ekus: CLIENT,
    },
    Row {
        file: "kubeconfig/admin.crt",
        ca: "ca.crt",
        subject: "O=kubeadm:cluster-admins, CN=kubernetes-admin",
        dns: &[],
        ips: &[],
        ekus: CLIENT,
    },
    Row {
        file: "kubeconfig/super-admin.crt",
        ca: "ca.crt",
        subject: "O=system:masters, CN=kubernetes-super-admin",
        dns: &[],
        ips: &[],
        ekus: CLIENT,
    },
    Row {
        file: "kubeconfig/controller-manager.crt",
        ca: "ca.crt",
        subject: "CN=system:kube-controller-manager",
        dns: &[],
        ips: &[],
        ekus: CLIENT,
    },
    Row {
        file: "kubeconfig/scheduler.crt",
        ca: "ca.crt",
        subject: "CN=system:kube-scheduler",
        dns: &[],
        ips: &[],
        ekus: CLIENT,
    },
    Row {
        file: "kubeconfig/kubelet.crt",
        ca: "ca.crt",
        subject: "O=system:nodes, CN=system:node:cp1",
        dns: &[],
        ips: &[],
        ekus: CLIENT,
    },
];

struct Facts {
    subject: String,
    dns: Vec<String>,
    ips: Vec<String>,
    key_usages: BTreeSet<String>,
    ekus: BTreeSet<String>,
    uris: Vec<String>,
    is_ca: bool,
}

fn facts(path: &Path) -> Facts {
    let data = std::fs::read(path).unwrap();
    let der = pem::parse(&data).unwrap().into_contents();
    let (_, c) = x509_parser::parse_x509_certificate(&der).unwrap();
    let mut f = Facts {
        subject: c.subject().to_string(),
        dns: vec![],
        ips: vec![],
        key_usages: BTreeSet::new(),
        ekus: BTreeSet::new(),
        uris: vec![],
        is_ca: c.is_ca(),
    };
    for ext in c.extensions() {
        match ext.parsed_extension() {
            ParsedExtension::SubjectAlternativeName(san) => {
                for n in &san.general_names {
                    match n {
                        GeneralName::DNSName(d) => f.dns.push(d.to_string()),
                        GeneralName::IPAddress(b) => f.ips.push(match b.len() {
                            4 => std::net::Ipv4Addr::new(b[0], b[1], b[2], b[3]).to_string(),
                            _ => std::net::Ipv6Addr::from(<[u8; 16]>::try_from(*b).unwrap())
                                .to_string(),
                        }),
                        GeneralName::URI(u) => f.uris.push(u.to_string()),
                        other => panic!("{}: unexpected SAN {other:?}", path.display()),
                    }
                }
            }
            ParsedExtension::KeyUsage(ku) => {
                if ku.digital_signature() {
                    f.key_usages.insert("digitalSignature".into());
                }
                if ku.key_encipherment() {
                    f.key_usages.insert("keyEncipherment".into());
                }
                if ku.key_cert_sign() {
                    f.key_usages.insert("keyCertSign".into());
                }
                if ku.crl_sign() {
                    f.key_usages.insert("cRLSign".into());
                }
                if ku.key_agreement() || ku.non_repudiation() || ku.data_encipherment() {
                    f.key_usages.insert("other".into());
                }
            }
            ParsedExtension::ExtendedKeyUsage(e) => {
                if e.server_auth {
                    f.ekus.insert("serverAuth".into());
                }
                if e.client_auth {
                    f.ekus.insert("clientAuth".into());
                }
                if e.any
                    || e.code_signing
                    || e.email_protection
                    || e.ocsp_signing
                    || !e.other.is_empty()
                {
                    f.ekus.insert("other".into());
                }
            }
            _ => {}
        }
    }
    f
}

/// Every file: `openssl verify` against its CA alone (kubeadm's trust anchor) and up to
/// KeyGrid's root, and exactly the table's subject, SANs and usages.
pub fn check_table(pki: &Path, bundle: &Path) {
    for row in TABLE {
        let cert = pki.join(row.file);
        let ca = pki.join(row.ca);
        let (ok, out) = openssl(&[
            "verify",
            "-x509_strict",
            "-partial_chain",
            "-CAfile",
            ca.to_str().unwrap(),
            cert.to_str().unwrap(),
        ]);
        assert!(
            ok,
            "{}: does not verify against {}: {out}",
            row.file, row.ca
        );
        let (ok, out) = openssl(&[
            "verify",
            "-x509_strict",
            "-CAfile",
            bundle.to_str().unwrap(),
            "-untrusted",
            ca.to_str().unwrap(),
            cert.to_str().unwrap(),
        ]);
        assert!(ok, "{}: does not chain to KeyGrid's root: {out}", row.file);
        let f = facts(&cert);
        assert_eq!(f.subject, row.subject, "{}: subject", row.file);
        assert_eq!(f.dns, row.dns, "{}: DNS SANs", row.file);
        assert_eq!(f.ips, row.ips, "{}: IP SANs", row.file);
        assert!(f.uris.is_empty(), "{}: no URI SANs", row.file);
        assert_eq!(
            f.ekus,
            row.ekus.iter().map(|s| s.to_string()).collect(),
            "{}: extended key usages",
            row.file
        );
        // EC keys: digitalSignature only (keyEncipherment is for RSA keys).
        assert_eq!(
            f.key_usages,
            ["digitalSignature".to_string()].into_iter().collect(),
            "{}: key usages",
            row.file
        );
        assert!(!f.is_ca, "{}: must not be a CA", row.file);
        let key = pki.join(row.file.replace(".crt", ".key"));
        let mode = std::fs::metadata(&key).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{}: key mode", key.display());
        // The key belongs to the certificate.
        let (ok, out) = openssl(&["x509", "-noout", "-pubkey", "-in", cert.to_str().unwrap()]);
        assert!(ok, "{out}");
        let (ok2, out2) = openssl(&["pkey", "-pubout", "-in", key.to_str().unwrap()]);
        assert!(ok2, "{out2}");
        assert_eq!(out, out2, "{}: key and certificate differ", row.file);
    }
    for ca in ["ca", "front-proxy-ca", "etcd/ca"] {
        assert!(pki.join(format!("{ca}.crt")).exists(), "{ca}.crt missing");
        assert!(
            !pki.join(format!("{ca}.key")).exists(),
            "{ca}.key must not be written"
        );
        assert!(facts(&pki.join(format!("{ca}.crt"))).is_ca);
    }
    // Three distinct CAs.
    let ders: BTreeSet<Vec<u8>> = ["ca.crt", "front-proxy-ca.crt", "etcd/ca.crt"]
        .iter()
        .map(|f| std::fs::read(pki.join(f)).unwrap())
        .collect();
    assert_eq!(
        ders.len(),
        3,
        "the cluster, front-proxy and etcd CAs are separate issuers"
    );
}

fn files_in(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(files_in(&p));
            } else {
                out.push(p);
            }
        }
    }
    out
}

fn kubeadm() -> PathBuf {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tools/bin/kubeadm");
    assert!(
        path.exists(),
        "{} is missing: run scripts/build-kubernetes.sh (make test does)",
        path.display()
    );
    path
}

/// kubeadm v1.36.3 validates the directory the way `kubeadm init` does before anything
/// else: the CA certificates without keys switch it to external-CA mode, then it checks
/// apiserver, apiserver-kubelet-client and front-proxy-client against their CAs and every
/// kubeconfig (admin, super-admin, kubelet, controller-manager, scheduler) for CA and
/// server. `certs check-expiration` reads every certificate of the set.
fn kubeadm_accepts(cfg: &Path, kube: &Path) {
    let out = run(Command::new(kubeadm())
        .args([
            "init",
            "phase",
            "kubeconfig",
            "all",
            "--config",
            cfg.to_str().unwrap(),
        ])
        .args(["--kubeconfig-dir", kube.to_str().unwrap()]));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "kubeadm refused the set:\n{text}");
    for f in [
        "admin.conf",
        "super-admin.conf",
        "kubelet.conf",
        "controller-manager.conf",
        "scheduler.conf",
    ] {
        assert!(
            text.contains(&format!("External CA mode: Using user provided {f}")),
            "{f}:\n{text}"
        );
    }
    let out = run(Command::new(kubeadm()).args([
        "certs",
        "check-expiration",
        "--config",
        cfg.to_str().unwrap(),
    ]));
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for (cert, ca) in [
        ("apiserver", "ca"),
        ("apiserver-etcd-client", "etcd-ca"),
        ("apiserver-kubelet-client", "ca"),
        ("etcd-healthcheck-client", "etcd-ca"),
        ("etcd-peer", "etcd-ca"),
        ("etcd-server", "etcd-ca"),
        ("front-proxy-client", "front-proxy-ca"),
    ] {
        let line = text
            .lines()
            .find(|l| l.split_whitespace().next() == Some(cert))
            .unwrap_or_else(|| panic!("{cert} not listed by kubeadm:\n{text}"));
        let cols: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(cols[cols.len() - 2..], [ca, "yes"], "{line}");
    }
    for ca in ["ca", "etcd-ca", "front-proxy-ca"] {
        assert!(
            text.lines()
                .any(|l| l.starts_with(&format!("{ca} ")) && l.trim_end().ends_with("yes")),
            "{ca} not externally managed:\n{text}"
        );
    }
}

#[test]
fn kubeadm_set_has_exactly_the_expected_certificates() {
    require_tool("openssl", OPENSSL_HINT);
    let env = start_dev();
    let work = tempfile::tempdir().unwrap();
    let pki = work.path().join("pki");
    let kube = work.path().join("kubernetes");
    let cfg = work.path().join("kubeadm.yaml");
    std::fs::write(
        &cfg,
        KUBEADM_CONFIG.replace("PKI_DIR", pki.to_str().unwrap()),
    )
    .unwrap();
    keygrid_ok(
        &env,
        &[
            "kubeadm",
            "certs",
            "--pki-dir",
            pki.to_str().unwrap(),
            "--kubeconfig-dir",
            kube.to_str().unwrap(),
            "--kubeadm-config",
            cfg.to_str().unwrap(),
        ],
    );
    check_table(&pki, &env.bundle_pem());

    // Kubeconfigs: the server, the CA embedded, certificate and key by path.
    let ca_b64 = {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.encode(std::fs::read(pki.join("ca.crt")).unwrap())
    };
    let pki_abs = std::fs::canonicalize(&pki).unwrap();
    for (file, server, user, base) in [
        (
            "admin.conf",
            "https://api.example.internal:6443",
            "kubernetes-admin",
            "admin",
        ),
        (
            "super-admin.conf",
            "https://api.example.internal:6443",
            "kubernetes-super-admin",
            "super-admin",
        ),
        (
            "controller-manager.conf",
            "https://10.0.0.10:6443",
            "system:kube-controller-manager",
            "controller-manager",
        ),
        (
            "kubelet.conf",
            "https://api.example.internal:6443",
            "system:node:cp1",
            "kubelet",
        ),
        (
            "scheduler.conf",
            "https://10.0.0.10:6443",
            "system:kube-scheduler",
            "scheduler",
        ),
    ] {
        let text = std::fs::read_to_string(kube.join(file)).unwrap();
        assert!(
            text.contains(&format!("server: {server}\n")),
            "{file}:\n{text}"
        );
        assert!(
            text.contains(&format!("certificate-authority-data: {ca_b64}\n")),
            "{file}"
        );
        assert!(text.contains(&format!("- name: {user}\n")), "{file}");
        let cert = pki_abs.join(format!("kubeconfig/{base}.crt"));
        let key = pki_abs.join(format!("kubeconfig/{base}.key"));
        assert!(
            text.contains(&format!("client-certificate: {}\n", cert.display())),
            "{file}:\n{text}"
        );
        assert!(
            text.contains(&format!("client-key: {}\n", key.display())),
            "{file}"
        );
        assert!(
            !text.contains("client-certificate-data"),
            "{file}: must reference files"
        );
    }

    // kubeadm itself accepts the set in external-CA mode.
    kubeadm_accepts(&cfg, &kube);

    // Status lists every managed file; a forced renewal keeps the key and bumps the count.
    let out = keygrid(
        &env,
        &["kubeadm", "status", "--pki-dir", pki.to_str().unwrap()],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let status = String::from_utf8_lossy(&out.stdout);
    for row in TABLE {
        assert!(
            status.contains(row.file),
            "status lacks {}:\n{status}",
            row.file
        );
    }
    let key_before = std::fs::read(pki.join("etcd/server.key")).unwrap();
    let cert_before = std::fs::read(pki.join("etcd/server.crt")).unwrap();
    keygrid_ok(
        &env,
        &[
            "kubeadm",
            "rotate",
            "--force",
            "--pki-dir",
            pki.to_str().unwrap(),
        ],
    );
    assert_eq!(
        std::fs::read(pki.join("etcd/server.key")).unwrap(),
        key_before
    );
    assert_ne!(
        std::fs::read(pki.join("etcd/server.crt")).unwrap(),
        cert_before
    );
    check_table(&pki, &env.bundle_pem());
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(pki.join("keygrid-kubeadm.json")).unwrap()).unwrap();
    for c in manifest["certs"].as_array().unwrap() {
        assert_eq!(c["issued_count"], 2, "{c}");
    }

    // The store recorded every issuance under its profile and CA.
    let out = keygrid(&env, &["cert", "list"]);
    let list = String::from_utf8_lossy(&out.stdout);
    for (profile, issuer) in [
        ("kube-apiserver", "control-plane"),
        ("front-proxy-client", "front-proxy"),
        ("etcd-peer", "etcd"),
        ("kubeconfig-super-admin", "control-plane"),
    ] {
        assert!(
            list.contains(&format!(
                "Issuer        : {issuer}\nProfile       : {profile}\n"
            )),
            "{profile} by {issuer} not recorded:\n{list}"
        );
    }
}

#[test]
fn bad_input_is_refused_and_nothing_is_written() {
    require_tool("openssl", OPENSSL_HINT);
    let env = start_dev();
    let work = tempfile::tempdir().unwrap();

    // A SAN outside the cluster CA's allowed names.
    let pki = work.path().join("pki");
    let kube = work.path().join("kube");
    let out = keygrid(
        &env,
        &[
            "kubeadm",
            "certs",
            "--pki-dir",
            pki.to_str().unwrap(),
            "--kubeconfig-dir",
            kube.to_str().unwrap(),
            "--node-name",
            "cp1",
            "--advertise-address",
            "10.0.0.10",
            "--apiserver-cert-san",
            "evil.example.com",
        ],
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("evil.example.com")
            && err.contains("outside the control-plane CA's allowed names"),
        "{err}"
    );
    assert_eq!(
        files_in(&pki),
        Vec::<PathBuf>::new(),
        "nothing written on refusal"
    );
    assert_eq!(files_in(&kube), Vec::<PathBuf>::new());

    // An unusable pki directory: refused before anything is issued.
    let not_dir = work.path().join("file");
    std::fs::write(&not_dir, b"x").unwrap();
    let out = keygrid(
        &env,
        &[
            "kubeadm",
            "certs",
            "--pki-dir",
            not_dir.to_str().unwrap(),
            "--node-name",
            "cp1",
        ],
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("is not a directory"), "{err}");

    // A CSR (in kubeadm generate-csr's layout) asking for usages the profile forbids.
    let csr_dir = work.path().join("csrs");
    std::fs::create_dir_all(&csr_dir).unwrap();
    let key = csr_dir.join("front-proxy-client.key");
    let (ok, o) = openssl(&[
        "req",
        "-new",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-keyout",
        key.to_str().unwrap(),
        "-out",
        csr_dir.join("front-proxy-client.csr").to_str().unwrap(),
        "-subj",
        "/CN=front-proxy-client",
        "-addext",
        "extendedKeyUsage=serverAuth,clientAuth",
    ]);
    assert!(ok, "{o}");
    let before = files_in(&csr_dir);
    let out = keygrid(
        &env,
        &[
            "kubeadm",
            "sign-csrs",
            "--cert-dir",
            csr_dir.to_str().unwrap(),
            "--kubeconfig-dir",
            csr_dir.to_str().unwrap(),
        ],
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("ServerAuth") && err.contains("forbids"),
        "{err}"
    );
    assert_eq!(files_in(&csr_dir), before, "nothing written on refusal");
    // The refusals are policy events in core's log.
    assert!(env.log().contains("issuance refused"), "{}", env.log());
}

#[test]
fn csrs_from_kubeadm_generate_csr_are_signed() {
    require_tool("openssl", OPENSSL_HINT);
    let env = start_dev();
    let work = tempfile::tempdir().unwrap();
    let certs = work.path().join("pki");
    let kube = work.path().join("kube");
    std::fs::create_dir_all(certs.join("etcd")).unwrap();
    std::fs::create_dir_all(&kube).unwrap();
    // CSRs as kubeadm writes them: CN, O and SANs, no usages; RSA-2048 is kubeadm's default.
    let req = |out: &Path, key: &Path, subj: &str, san: Option<&str>, rsa: bool| {
        let mut args = vec![
            "req",
            "-new",
            "-nodes",
            "-keyout",
            key.to_str().unwrap(),
            "-out",
            out.to_str().unwrap(),
            "-subj",
            subj,
        ];
        if rsa {
            args.extend(["-newkey", "rsa:2048"]);
        } else {
            args.extend(["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"]);
        }
        let san_arg;
        if let Some(s) = san {
            san_arg = format!("subjectAltName={s}");
            args.extend(["-addext", &san_arg]);
        }
        let (ok, o) = openssl(&args);
        assert!(ok, "{o}");
    };
    req(
        &certs.join("apiserver.csr"),
        &certs.join("apiserver.key"),
        "/CN=kube-apiserver",
        Some("DNS:cp1,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local,IP:10.96.0.1,IP:10.0.0.10"),
        true,
    );
    req(
        &certs.join("etcd/peer.csr"),
        &certs.join("etcd/peer.key"),
        "/CN=cp1",
        Some("DNS:cp1,DNS:localhost,IP:10.0.0.10,IP:127.0.0.1,IP:::1"),
        false,
    );
    req(
        &kube.join("admin.conf.csr"),
        &work.path().join("admin.key"),
        "/O=kubeadm:cluster-admins/CN=kubernetes-admin",
        None,
        false,
    );
    std::fs::write(
        kube.join("admin.conf"),
        "apiVersion: v1\nclusters:\n- cluster:\n    server: https://api.example.internal:6443\n  name: kubernetes\ncontexts:\n- context:\n    cluster: kubernetes\n    user: kubernetes-admin\n  name: kubernetes-admin@kubernetes\ncurrent-context: kubernetes-admin@kubernetes\nkind: Config\nusers:\n- name: kubernetes-admin\n  user:\n    client-key-data: S0VZ\n",
    )
    .unwrap();
    keygrid_ok(
        &env,
        &[
            "kubeadm",
            "sign-csrs",
            "--cert-dir",
            certs.to_str().unwrap(),
            "--kubeconfig-dir",
            kube.to_str().unwrap(),
        ],
    );
    // The apiserver's RSA key gets keyEncipherment, as kubeadm does for RSA.
    let api = facts(&certs.join("apiserver.crt"));
    assert_eq!(api.subject, "CN=kube-apiserver");
    assert_eq!(
        api.key_usages,
        ["digitalSignature", "keyEncipherment"]
            .iter()
            .map(|s| s.to_string())
            .collect()
    );
    assert_eq!(api.ekus, ["serverAuth".to_string()].into_iter().collect());
    let peer = facts(&certs.join("etcd/peer.crt"));
    assert_eq!(
        peer.ekus,
        ["serverAuth", "clientAuth"]
            .iter()
            .map(|s| s.to_string())
            .collect()
    );
    assert_eq!(
        peer.key_usages,
        ["digitalSignature".to_string()].into_iter().collect()
    );
    for (crt, ca) in [
        ("apiserver.crt", "ca.crt"),
        ("etcd/peer.crt", "etcd/ca.crt"),
    ] {
        let (ok, o) = openssl(&[
            "verify",
            "-x509_strict",
            "-partial_chain",
            "-CAfile",
            certs.join(ca).to_str().unwrap(),
            certs.join(crt).to_str().unwrap(),
        ]);
        assert!(ok, "{crt}: {o}");
    }
    assert!(!certs.join("ca.key").exists());
    let admin = std::fs::read_to_string(kube.join("admin.conf")).unwrap();
    assert!(admin.contains("client-certificate-data:"), "{admin}");
    assert!(admin.contains("certificate-authority-data:"), "{admin}");
    assert!(admin.contains("client-key-data: S0VZ"), "{admin}");
}
