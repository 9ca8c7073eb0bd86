//! Every profile in the table, issued by its CA and checked by openssl: the chain passes
//! `openssl verify -x509_strict` against the bundle, and `openssl x509 -text` shows exactly
//! the extensions, key usages and extended key usages the profile declares.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use keygrid_core::ca::profiles::{self, Eku, LeafRequest, SpiffeIdRule, PROFILES};
use keygrid_core::ca::{Hierarchy, HierarchySettings, WORKLOADS};
use keygrid_core::keys::software::MemoryBackend;
use keygrid_core::keys::KeyAlgorithm;
use keygrid_core::store::Store;
use rcgen::KeyUsagePurpose;

fn sample(name: &str) -> LeafRequest {
    let s = |v: &str| Some(v.to_string());
    let ip = |v: &str| v.parse().unwrap();
    match name {
        "x509-svid" => LeafRequest {
            spiffe_id: s("spiffe://example.org/ns/a/sa/b"),
            dns_names: vec!["web.example.org".into()],
            ..Default::default()
        },
        "spire-intermediate" => LeafRequest {
            common_name: s("SPIRE server CA"),
            ..Default::default()
        },
        "node" => LeafRequest {
            common_name: s("KeyGrid agent"),
            spiffe_id: s("spiffe://example.org/keygrid/node/n1"),
            ..Default::default()
        },
        "core-server" => LeafRequest {
            common_name: s("KeyGrid core"),
            spiffe_id: s("spiffe://example.org/keygrid/server"),
            dns_names: vec!["localhost".into()],
            ips: vec![ip("127.0.0.1")],
            ..Default::default()
        },
        "kubelet-client" => LeafRequest {
            common_name: s("system:node:n1"),
            organizations: vec!["system:nodes".into()],
            ..Default::default()
        },
        "kubelet-serving" => LeafRequest {
            common_name: s("system:node:n1"),
            dns_names: vec!["n1".into()],
            ips: vec![ip("10.0.0.5")],
            ..Default::default()
        },
        "kube-apiserver" => LeafRequest {
            common_name: s("kube-apiserver"),
            dns_names: vec!["kubernetes".into(), "kubernetes.default.svc".into()],
            ips: vec![ip("10.96.0.1")],
            ..Default::default()
        },
        "kube-apiserver-kubelet-client" => LeafRequest {
            common_name: s("kube-apiserver-kubelet-client"),
            ..Default::default()
        },
        "kubeconfig-admin" => LeafRequest {
            common_name: s("kubernetes-admin"),
            organizations: vec!["kubeadm:cluster-admins".into()],
            ..Default::default()
        },
        "kubeconfig-super-admin" => LeafRequest {
            organizations: vec!["system:masters".into()],
            ..Default::default()
        },
        "kubeconfig-controller-manager" | "kubeconfig-scheduler" => LeafRequest::default(),
        "kubeconfig-kubelet" => LeafRequest {
            common_name: s("system:node:cp1"),
            ..Default::default()
        },
        "etcd-server" | "etcd-peer" => LeafRequest {
            common_name: s("n1"),
            dns_names: vec!["n1".into(), "localhost".into()],
            ips: vec![ip("127.0.0.1")],
            ..Default::default()
        },
        "etcd-healthcheck-client" => LeafRequest {
            common_name: s("kube-etcd-healthcheck-client"),
            ..Default::default()
        },
        "kube-apiserver-etcd-client" => LeafRequest::default(),
        "front-proxy-client" => LeafRequest {
            common_name: s("front-proxy-client"),
            ..Default::default()
        },
        "ocsp-signer" => LeafRequest {
            common_name: s("KeyGrid workloads OCSP responder"),
            ..Default::default()
        },
        other => panic!("no sample request for profile {other}: add one"),
    }
}

fn openssl(args: &[&str]) -> (bool, String) {
    let out = match Command::new("openssl").args(args).output() {
        Ok(o) => o,
        Err(e) => panic!("openssl is required (apt-get install openssl): {e}"),
    };
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

fn write_pem(path: &Path, der: &[u8]) {
    std::fs::write(
        path,
        pem::encode(&pem::Pem::new("CERTIFICATE", der.to_vec())),
    )
    .unwrap();
}

/// The extension names and their values as `openssl x509 -text` prints them.
fn extensions(text: &str) -> Vec<(String, bool, String)> {
    let mut out = Vec::new();
    let mut lines = text
        .lines()
        .skip_while(|l| !l.contains("X509v3 extensions:"))
        .skip(1)
        .peekable();
    while let Some(line) = lines.next() {
        if !line.starts_with("            ") || line.starts_with("             ") {
            if line.trim_start().starts_with("Signature Algorithm") {
                break;
            }
            continue;
        }
        let header = line.trim();
        let (name, critical) = match header.strip_suffix(": critical") {
            Some(n) => (n.to_string(), true),
            None => (header.trim_end_matches(':').to_string(), false),
        };
        let value = lines
            .peek()
            .filter(|l| l.starts_with("                "))
            .map(|l| l.trim().to_string())
            .unwrap_or_default();
        out.push((name, critical, value));
    }
    out
}

fn ku_name(k: &KeyUsagePurpose) -> &'static str {
    match k {
        KeyUsagePurpose::DigitalSignature => "Digital Signature",
        KeyUsagePurpose::KeyEncipherment => "Key Encipherment",
        KeyUsagePurpose::KeyAgreement => "Key Agreement",
        KeyUsagePurpose::KeyCertSign => "Certificate Sign",
        KeyUsagePurpose::CrlSign => "CRL Sign",
        other => panic!("unexpected key usage {other:?}"),
    }
}

fn eku_name(e: &Eku) -> &'static str {
    match e {
        Eku::ServerAuth => "TLS Web Server Authentication",
        Eku::ClientAuth => "TLS Web Client Authentication",
        Eku::OcspSigning => "OCSP Signing",
    }
}

fn set(s: &str) -> BTreeSet<String> {
    s.split(',')
        .map(|x| x.trim().to_string())
        .filter(|x| !x.is_empty())
        .collect()
}

#[test]
fn every_profile_chains_and_has_exactly_its_extensions() {
    let store = Store::in_memory().unwrap();
    let keys = MemoryBackend::default();
    let settings = HierarchySettings::new(
        "example.org",
        KeyAlgorithm::EcdsaP384,
        KeyAlgorithm::EcdsaP256,
    );
    let (h, _) = Hierarchy::init_or_load(&store, &keys, &settings).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root.pem");
    write_pem(&root, h.root().cert_der());

    for profile in PROFILES {
        let issuer_name = if profile.issuer == "*" {
            WORKLOADS
        } else {
            profile.issuer
        };
        let issuer = h
            .active_at(
                issuer_name,
                time::OffsetDateTime::now_utc().unix_timestamp(),
            )
            .unwrap();
        let params = profile
            .build("spiffe://example.org", &sample(profile.name))
            .unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let issued = issuer
            .sign(
                params,
                &key,
                Duration::from_secs(3600),
                time::OffsetDateTime::now_utc(),
            )
            .unwrap();
        let leaf = dir.path().join(format!("{}.pem", profile.name));
        let chain = dir.path().join(format!("{}-ca.pem", profile.name));
        write_pem(&leaf, &issued.der);
        write_pem(&chain, issuer.cert_der());

        let (ok, text) = openssl(&[
            "verify",
            "-x509_strict",
            "-CAfile",
            root.to_str().unwrap(),
            "-untrusted",
            chain.to_str().unwrap(),
            leaf.to_str().unwrap(),
        ]);
        assert!(ok, "{}: openssl verify failed: {text}", profile.name);

        let (ok, text) = openssl(&["x509", "-noout", "-text", "-in", leaf.to_str().unwrap()]);
        assert!(ok, "{text}");
        let exts = extensions(&text);
        let names: BTreeSet<String> = exts.iter().map(|(n, _, _)| n.clone()).collect();
        let mut want: BTreeSet<String> = [
            "X509v3 Subject Key Identifier",
            "X509v3 Authority Key Identifier",
            "X509v3 Key Usage",
            "X509v3 Basic Constraints",
        ]
        .into_iter()
        .map(String::from)
        .collect();
        if !profile.ekus.is_empty() {
            want.insert("X509v3 Extended Key Usage".into());
        }
        let has_names = profile.spiffe_id != SpiffeIdRule::Forbidden
            || !sample(profile.name).dns_names.is_empty()
            || !sample(profile.name).ips.is_empty();
        if has_names {
            want.insert("X509v3 Subject Alternative Name".into());
        }
        if profile.ocsp_nocheck {
            want.insert("OCSP No Check".into());
        }
        assert_eq!(
            names, want,
            "{}: extensions differ from the profile\n{text}",
            profile.name
        );

        let get = |n: &str| exts.iter().find(|(name, _, _)| name == n).cloned().unwrap();
        let (_, critical, ku) = get("X509v3 Key Usage");
        assert!(critical, "{}: key usage must be critical", profile.name);
        assert_eq!(
            set(&ku),
            profile
                .key_usages
                .iter()
                .map(|k| ku_name(k).to_string())
                .collect(),
            "{}: key usages",
            profile.name
        );
        if !profile.ekus.is_empty() {
            let (_, _, eku) = get("X509v3 Extended Key Usage");
            assert_eq!(
                set(&eku),
                profile
                    .ekus
                    .iter()
                    .map(|e| eku_name(e).to_string())
                    .collect(),
                "{}: EKUs",
                profile.name
            );
        }
        let (_, critical, bc) = get("X509v3 Basic Constraints");
        assert!(
            critical,
            "{}: basic constraints must be critical",
            profile.name
        );
        match profile.ca_path_len {
            Some(n) => assert_eq!(bc, format!("CA:TRUE, pathlen:{n}"), "{}", profile.name),
            None => assert_eq!(bc, "CA:FALSE", "{}", profile.name),
        }
        if profile.spiffe_id == SpiffeIdRule::Required {
            let (_, _, san) = get("X509v3 Subject Alternative Name");
            assert_eq!(
                san.matches("URI:").count(),
                1,
                "{}: exactly one URI SAN: {san}",
                profile.name
            );
        }
        if let Some(prefix) = profile.cn_prefix {
            assert!(
                text.contains(&format!("CN = {prefix}")) || text.contains(&format!("CN={prefix}")),
                "{}: subject CN",
                profile.name
            );
        }
        for org in profile.organizations {
            assert!(
                text.contains(&format!("O = {org}")) || text.contains(&format!("O={org}")),
                "{}: subject O {org}\n{text}",
                profile.name
            );
        }
    }
}

#[test]
fn profiles_refuse_what_they_do_not_allow() {
    let td = "spiffe://example.org";
    let svid = profiles::profile("x509-svid").unwrap();
    assert!(
        svid.build(td, &LeafRequest::default()).is_err(),
        "an SVID needs a SPIFFE ID"
    );
    let kubelet = profiles::profile("kubelet-client").unwrap();
    let err = kubelet
        .build(
            td,
            &LeafRequest {
                common_name: Some("admin".into()),
                ..Default::default()
            },
        )
        .unwrap_err();
    assert!(err.to_string().contains("system:node:"), "{err}");
    let err = kubelet
        .build(
            td,
            &LeafRequest {
                common_name: Some("system:node:n1".into()),
                organizations: vec!["system:masters".into()],
                ..Default::default()
            },
        )
        .unwrap_err();
    assert!(err.to_string().contains("system:masters"), "{err}");
    let err = kubelet
        .build(
            td,
            &LeafRequest {
                common_name: Some("system:node:n1".into()),
                dns_names: vec!["x".into()],
                ..Default::default()
            },
        )
        .unwrap_err();
    assert!(err.to_string().contains("not allowed"), "{err}");
    let apiserver = profiles::profile("kube-apiserver").unwrap();
    assert!(apiserver
        .build(
            td,
            &LeafRequest {
                spiffe_id: Some("spiffe://example.org/x".into()),
                ..Default::default()
            }
        )
        .is_err());
}
