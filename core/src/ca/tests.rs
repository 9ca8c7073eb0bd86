//! CA tests.

use super::*;

use std::collections::HashSet;
use std::path::Path;
use std::process::Command;

use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::{GeneralName, ParsedExtension};

use crate::keys::software::MemoryBackend;

const TD: &str = "example.org";
const SVID_ID: &str = "spiffe://example.org/ns/default/sa/web";

fn settings(trust_domain: &str) -> HierarchySettings {
    HierarchySettings {
        trust_domain: trust_domain.into(),
        root_algorithm: KeyAlgorithm::EcdsaP384,
        root_ttl: Duration::from_secs(10 * 365 * 24 * 3600),
        issuer_algorithm: KeyAlgorithm::EcdsaP256,
        issuer_algorithms: Default::default(),
        issuer_ttl: Duration::from_secs(30 * 24 * 3600),
        control_plane_constraints: Default::default(),
        revocation_base_url: None,
    }
}

fn new_hierarchy() -> (Hierarchy, Store, MemoryBackend) {
    let store = Store::in_memory().unwrap();
    let keys = MemoryBackend::default();
    let (h, created) = Hierarchy::init_or_load(&store, &keys, &settings(TD)).unwrap();
    assert!(created);
    (h, store, keys)
}

/// A CA certificate that outlives the `Arc` it came from (tests only).
fn der(a: Arc<Authority>) -> &'static [u8] {
    a.cert_der().to_vec().leak()
}

fn parse(der: &[u8]) -> X509Certificate<'_> {
    let (rest, cert) = x509_parser::parse_x509_certificate(der).expect("certificate parses");
    assert!(rest.is_empty(), "trailing bytes after certificate");
    cert
}

fn ski(cert: &X509Certificate<'_>) -> Option<Vec<u8>> {
    cert.iter_extensions()
        .find_map(|e| match e.parsed_extension() {
            ParsedExtension::SubjectKeyIdentifier(k) => Some(k.0.to_vec()),
            _ => None,
        })
}

fn aki(cert: &X509Certificate<'_>) -> Option<Vec<u8>> {
    cert.iter_extensions()
        .find_map(|e| match e.parsed_extension() {
            ParsedExtension::AuthorityKeyIdentifier(a) => {
                a.key_identifier.as_ref().map(|k| k.0.to_vec())
            }
            _ => None,
        })
}

fn uri_sans(cert: &X509Certificate<'_>) -> Vec<String> {
    cert.subject_alternative_name()
        .expect("SAN extension parses")
        .map(|san| {
            san.value
                .general_names
                .iter()
                .filter_map(|n| match n {
                    GeneralName::URI(u) => Some(u.to_string()),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default()
}

fn sign_svid(h: &Hierarchy, id: &str, ttl: Duration, now: OffsetDateTime) -> Issued {
    let leaf_key = rcgen::KeyPair::generate().unwrap();
    h.workloads()
        .sign(profiles::x509_svid(id, &[]).unwrap(), &leaf_key, ttl, now)
        .unwrap()
}

#[test]
fn init_creates_hierarchy_then_loads_the_same_one() {
    let store = Store::in_memory().unwrap();
    let keys = MemoryBackend::default();
    let (first, created) = Hierarchy::init_or_load(&store, &keys, &settings(TD)).unwrap();
    assert!(created, "first call must create the hierarchy");
    assert_eq!(first.trust_domain(), TD);
    let all = first.authorities();
    let names: Vec<&str> = all.iter().map(|a| a.name()).collect();
    assert_eq!(
        names,
        [
            ROOT,
            CONTROL_PLANE,
            FRONT_PROXY,
            ETCD,
            NODES,
            SPIRE_UPSTREAM,
            WORKLOADS
        ]
    );
    assert_eq!(first.root().algorithm(), KeyAlgorithm::EcdsaP384);
    assert_eq!(first.workloads().algorithm(), KeyAlgorithm::EcdsaP256);
    assert_eq!(first.bundle(), vec![first.root().cert_der().to_vec()]);

    let records = store.authorities().unwrap();
    assert_eq!(records.len(), 7);
    assert_eq!(records[0].name, ROOT);
    assert_eq!(records[0].parent, None);
    for rec in &records[1..] {
        assert_eq!(rec.parent.as_deref(), Some(ROOT));
    }

    // Root: self-signed CA, pathLen 2 (root → spire-upstream → SPIRE CA → SVID).
    let root = parse(der(first.root()));
    assert_eq!(root.subject(), root.issuer());
    let bc = root.basic_constraints().unwrap().unwrap();
    assert!(bc.value.ca);
    assert_eq!(bc.value.path_len_constraint, Some(2));
    assert_eq!(uri_sans(&root), vec![format!("spiffe://{TD}")]);
    root.verify_signature(None).expect("root is self-signed");
    // Issuing CAs: signed by the root, pathLen 0 (1 for spire-upstream), AKI = root SKI.
    for issuing in [
        first.workloads(),
        first.nodes(),
        first.control_plane(),
        first.front_proxy(),
        first.etcd(),
        first.spire_upstream(),
    ] {
        let cert = parse(der(issuing.clone()));
        assert_eq!(cert.issuer(), root.subject());
        let bc = cert.basic_constraints().unwrap().unwrap();
        assert!(bc.value.ca);
        let want = if issuing.name() == SPIRE_UPSTREAM {
            1
        } else {
            0
        };
        assert_eq!(
            bc.value.path_len_constraint,
            Some(want),
            "{}",
            issuing.name()
        );
        cert.verify_signature(Some(root.public_key()))
            .expect("issuing CA signed by root");
        assert_eq!(aki(&cert), ski(&root));
        assert!(cert.validity().not_after <= root.validity().not_after);
    }

    let (second, created) = Hierarchy::init_or_load(&store, &keys, &settings(TD)).unwrap();
    assert!(!created, "second call must load, not create");
    for (a, b) in first.authorities().iter().zip(second.authorities()) {
        assert_eq!(a.name(), b.name());
        assert_eq!(
            a.cert_der(),
            b.cert_der(),
            "{} certificate changed",
            a.name()
        );
        assert_eq!(a.not_after(), b.not_after());
    }
    // The store still holds exactly one hierarchy.
    assert_eq!(store.authorities().unwrap().len(), 7);

    // The loaded hierarchy signs certificates that chain to the same root.
    let issued = sign_svid(
        &second,
        SVID_ID,
        Duration::from_secs(300),
        OffsetDateTime::now_utc(),
    );
    let leaf = parse(&issued.der);
    let workloads = parse(der(first.workloads()));
    leaf.verify_signature(Some(workloads.public_key()))
        .expect("leaf from reloaded hierarchy verifies under the original workloads CA");
}

#[test]
fn loading_with_other_trust_domain_fails() {
    let (_h, store, keys) = new_hierarchy();
    let err = match Hierarchy::init_or_load(&store, &keys, &settings("other.test")) {
        Ok(_) => panic!("a hierarchy of another trust domain must not load"),
        Err(e) => e,
    };
    let msg = err.to_string();
    assert!(
        msg.contains("other.test"),
        "message names the trust domain: {msg}"
    );
    // Nothing was overwritten.
    let (_again, created) = Hierarchy::init_or_load(&store, &keys, &settings(TD)).unwrap();
    assert!(!created);
}

#[test]
fn loading_without_keys_fails() {
    let (_h, store, _keys) = new_hierarchy();
    let empty = MemoryBackend::default();
    let err = match Hierarchy::init_or_load(&store, &empty, &settings(TD)) {
        Ok(_) => panic!("loading must fail when the backend lacks the CA keys"),
        Err(e) => e,
    };
    assert!(
        matches!(err, CaError::Key(KeyError::NotFound { .. })),
        "{err:?}"
    );
}

#[test]
fn x509_svid_follows_the_spiffe_profile() {
    let (h, _store, _keys) = new_hierarchy();
    let ttl = Duration::from_secs(300);
    let now = OffsetDateTime::now_utc();
    let issued = sign_svid(&h, SVID_ID, ttl, now);
    assert!(!issued.clamped);
    let cert = parse(&issued.der);

    // Exactly one URI SAN: the SPIFFE ID.
    assert_eq!(uri_sans(&cert), vec![SVID_ID.to_string()]);

    // basicConstraints present, CA false.
    let bc = cert
        .basic_constraints()
        .unwrap()
        .expect("basicConstraints present");
    assert!(!bc.value.ca);
    assert!(!cert.is_ca());

    // Key usage: critical, digitalSignature, never certificate or CRL signing.
    let ku = cert.key_usage().unwrap().expect("key usage present");
    assert!(ku.critical, "key usage must be critical");
    assert!(ku.value.digital_signature());
    assert!(!ku.value.key_cert_sign());
    assert!(!ku.value.crl_sign());

    // EKU: serverAuth and clientAuth.
    let eku = cert
        .extended_key_usage()
        .unwrap()
        .expect("extended key usage present");
    assert!(eku.value.server_auth);
    assert!(eku.value.client_auth);
    assert!(!eku.value.any);

    // Lifetime: 10 s of back-dating plus the TTL, matching what Issued reports.
    let nb = cert.validity().not_before.timestamp();
    let na = cert.validity().not_after.timestamp();
    assert_eq!(na - nb, ttl.as_secs() as i64 + 10);
    assert_eq!(nb, issued.not_before);
    assert_eq!(na, issued.not_after);
    assert_eq!(na, (now + ttl).unix_timestamp());

    // Serial: 16 bytes, positive, as reported.
    let serial = cert.raw_serial();
    assert_eq!(serial.len(), 16, "serial {}", hex::encode(serial));
    assert_eq!(serial[0] & 0x80, 0, "serial must be positive");
    assert_ne!(serial[0], 0, "serial must not carry a leading zero byte");
    assert_eq!(hex::encode(serial), issued.serial_hex);
    assert_eq!(sha256_hex(&issued.der), issued.sha256_hex);

    // Chained to the workloads CA: issuer name, AKI and signature.
    let workloads = parse(der(h.workloads()));
    assert_eq!(cert.issuer(), workloads.subject());
    let workloads_ski = ski(&workloads).expect("workloads CA has a SKI");
    assert_eq!(aki(&cert), Some(workloads_ski));
    cert.verify_signature(Some(workloads.public_key()))
        .expect("signed by the workloads CA");
    let nodes = parse(der(h.nodes()));
    assert!(cert.verify_signature(Some(nodes.public_key())).is_err());
}

#[test]
fn x509_svid_with_dns_names_still_has_one_uri() {
    let (h, _store, _keys) = new_hierarchy();
    let leaf_key = rcgen::KeyPair::generate().unwrap();
    let dns = vec!["web.default.svc".to_string(), "web".to_string()];
    let issued = h
        .workloads()
        .sign(
            profiles::x509_svid(SVID_ID, &dns).unwrap(),
            &leaf_key,
            Duration::from_secs(300),
            OffsetDateTime::now_utc(),
        )
        .unwrap();
    let cert = parse(&issued.der);
    assert_eq!(uri_sans(&cert), vec![SVID_ID.to_string()]);
    let san = cert.subject_alternative_name().unwrap().unwrap();
    let dns_sans: Vec<String> = san
        .value
        .general_names
        .iter()
        .filter_map(|n| match n {
            GeneralName::DNSName(d) => Some(d.to_string()),
            _ => None,
        })
        .collect();
    assert_eq!(dns_sans, dns);
}

#[test]
fn ttl_beyond_issuer_expiry_is_clamped() {
    let (h, _store, _keys) = new_hierarchy();
    let now = OffsetDateTime::now_utc();
    let issuer_not_after = h.workloads().not_after();
    let too_long = Duration::from_secs(365 * 24 * 3600);
    assert!(now + too_long > issuer_not_after);
    let issued = sign_svid(&h, SVID_ID, too_long, now);
    assert!(issued.clamped);
    assert_eq!(issued.not_after, issuer_not_after.unix_timestamp());
    let cert = parse(&issued.der);
    let workloads = parse(der(h.workloads()));
    assert_eq!(cert.validity().not_after, workloads.validity().not_after);
    assert_eq!(
        cert.validity().not_after.timestamp(),
        issuer_not_after.unix_timestamp()
    );

    // Just inside the issuer's lifetime is not clamped.
    let fits = Duration::from_secs(3600);
    let issued = sign_svid(&h, SVID_ID, fits, now);
    assert!(!issued.clamped);
    assert_eq!(issued.not_after, (now + fits).unix_timestamp());
}

#[test]
fn serials_are_distinct() {
    let (h, _store, _keys) = new_hierarchy();
    let leaf_key = rcgen::KeyPair::generate().unwrap();
    let now = OffsetDateTime::now_utc();
    let mut serials = HashSet::new();
    for _ in 0..200 {
        let issued = h
            .workloads()
            .sign(
                profiles::x509_svid(SVID_ID, &[]).unwrap(),
                &leaf_key,
                Duration::from_secs(300),
                now,
            )
            .unwrap();
        let cert = parse(&issued.der);
        assert_eq!(cert.raw_serial().len(), 16);
        assert_eq!(hex::encode(cert.raw_serial()), issued.serial_hex);
        serials.insert(issued.serial_hex);
    }
    assert_eq!(serials.len(), 200, "duplicate serials issued");
}

fn write_pem(path: &Path, der: &[u8]) {
    std::fs::write(
        path,
        pem::encode(&pem::Pem::new("CERTIFICATE", der.to_vec())),
    )
    .unwrap();
}

/// Runs `openssl verify -x509_strict`; returns (success, combined output).
fn openssl_verify(ca: &Path, untrusted: &Path, leaf: &Path) -> (bool, String) {
    let out = match Command::new("openssl")
        .arg("verify")
        .arg("-x509_strict")
        .arg("-CAfile")
        .arg(ca)
        .arg("-untrusted")
        .arg(untrusted)
        .arg(leaf)
        .output()
    {
        Ok(out) => out,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            panic!("openssl is not installed; run `apt-get install openssl` (needed by this test)")
        }
        Err(e) => panic!("cannot run openssl: {e}"),
    };
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn openssl_strictly_verifies_svid_chain() {
    let (h, _store, _keys) = new_hierarchy();
    let issued = sign_svid(
        &h,
        SVID_ID,
        Duration::from_secs(300),
        OffsetDateTime::now_utc(),
    );
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root.pem");
    let workloads = dir.path().join("workloads.pem");
    let nodes = dir.path().join("nodes.pem");
    let leaf = dir.path().join("leaf.pem");
    write_pem(&root, h.root().cert_der());
    write_pem(&workloads, h.workloads().cert_der());
    write_pem(&nodes, h.nodes().cert_der());
    write_pem(&leaf, &issued.der);

    let (ok, text) = openssl_verify(&root, &workloads, &leaf);
    assert!(ok, "openssl verify failed:\n{text}");
    assert!(text.contains("OK"), "{text}");

    // The check is real: the wrong intermediate or another root must fail.
    let (ok, text) = openssl_verify(&root, &nodes, &leaf);
    assert!(!ok, "leaf verified through the nodes CA:\n{text}");
    let (other, _s, _k) = new_hierarchy();
    let other_root = dir.path().join("other-root.pem");
    write_pem(&other_root, other.root().cert_der());
    let (ok, text) = openssl_verify(&other_root, &workloads, &leaf);
    assert!(!ok, "leaf verified under an unrelated root:\n{text}");
}

/// Verifies `leaf` (with its issuing CA) against `roots` as of `at` with openssl.
fn verify_at(
    dir: &Path,
    roots: &[Vec<u8>],
    issuing: &[u8],
    leaf: &[u8],
    at: i64,
) -> (bool, String) {
    let pem_all = |ders: &[Vec<u8>]| -> String {
        ders.iter()
            .map(|d| pem::encode(&pem::Pem::new("CERTIFICATE", d.clone())))
            .collect()
    };
    std::fs::write(dir.join("bundle.pem"), pem_all(roots)).unwrap();
    std::fs::write(dir.join("issuing.pem"), pem_all(&[issuing.to_vec()])).unwrap();
    std::fs::write(dir.join("leaf.pem"), pem_all(&[leaf.to_vec()])).unwrap();
    let out = Command::new("openssl")
        .args([
            "verify",
            "-x509_strict",
            "-attime",
            &at.to_string(),
            "-CAfile",
        ])
        .arg(dir.join("bundle.pem"))
        .arg("-untrusted")
        .arg(dir.join("issuing.pem"))
        .arg(dir.join("leaf.pem"))
        .output()
        .expect("openssl is not installed; run `apt-get install openssl`");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// Issues an SVID from the workloads generation active at `at` and records it, as the
/// issuance path does.
fn issue_recorded(h: &Hierarchy, store: &Store, at: i64, ttl: u64) -> (Vec<u8>, Vec<u8>) {
    let ca = h.active_at(WORKLOADS, at).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let now = OffsetDateTime::from_unix_timestamp(at).unwrap();
    let issued = ca
        .sign(
            profiles::x509_svid(SVID_ID, &[]).unwrap(),
            &key,
            Duration::from_secs(ttl),
            now,
        )
        .unwrap();
    store
        .record_certificate(&crate::store::CertificateRecord {
            issuer: WORKLOADS.into(),
            issuer_generation: issued.issuer_generation,
            serial: issued.serial_hex.clone(),
            profile: "x509-svid".into(),
            subject: SVID_ID.into(),
            not_before: issued.not_before,
            not_after: issued.not_after,
            sha256: issued.sha256_hex.clone(),
        })
        .unwrap();
    (issued.der, ca.cert_der().to_vec())
}

#[test]
fn root_rotation_keeps_every_valid_certificate_verifiable() {
    let (h, store, keys) = new_hierarchy();
    let dir = tempfile::tempdir().unwrap();
    let t0 = OffsetDateTime::now_utc().unix_timestamp();
    let r1 = h.root().cert_der().to_vec();
    let mut leaves: Vec<(Vec<u8>, Vec<u8>, i64)> = Vec::new(); // leaf, issuing CA, expiry

    let check_all = |leaves: &[(Vec<u8>, Vec<u8>, i64)], at: i64| {
        let roots = h.bundle_roots_at(&store, at).unwrap();
        for (leaf, issuing, expiry) in leaves {
            if *expiry > at {
                let (ok, text) = verify_at(dir.path(), &roots, issuing, leaf, at);
                assert!(
                    ok,
                    "a valid certificate failed against the bundle at t0+{}: {text}",
                    at - t0
                );
            }
        }
        roots
    };

    let (leaf, ca) = issue_recorded(&h, &store, t0, 100);
    leaves.push((leaf, ca, t0 + 100));
    assert_eq!(check_all(&leaves, t0), vec![r1.clone()]);

    // Rotate the root at t0+10 with a 20 s preparation window.
    let created = h
        .rotate(
            &store,
            &keys,
            ROOT,
            Duration::from_secs(20),
            OffsetDateTime::from_unix_timestamp(t0 + 10).unwrap(),
        )
        .unwrap();
    assert_eq!(
        created.len(),
        7,
        "a new root and a new generation of each issuing CA"
    );
    let r2 = created[0].cert_der().to_vec();
    // Published at once, before it signs.
    assert_eq!(check_all(&leaves, t0 + 10), vec![r1.clone(), r2.clone()]);
    assert_eq!(
        h.active_at(WORKLOADS, t0 + 15).unwrap().generation(),
        1,
        "old issuer signs during preparation"
    );
    let (leaf, ca) = issue_recorded(&h, &store, t0 + 15, 100);
    leaves.push((leaf, ca, t0 + 115));
    check_all(&leaves, t0 + 15);

    // After the window the new chain signs; both roots stay while old leaves live.
    assert_eq!(h.active_at(WORKLOADS, t0 + 31).unwrap().generation(), 2);
    let (leaf, ca) = issue_recorded(&h, &store, t0 + 31, 300);
    leaves.push((leaf, ca, t0 + 331));
    assert_eq!(check_all(&leaves, t0 + 31), vec![r1.clone(), r2.clone()]);
    assert_eq!(
        check_all(&leaves, t0 + 114),
        vec![r1.clone(), r2.clone()],
        "old root kept until its last leaf expired"
    );

    // The last leaf under the old root expired at t0+115: the old root leaves the bundle.
    assert_eq!(check_all(&leaves, t0 + 116), vec![r2.clone()]);
    // A certificate under the old chain no longer verifies against the new bundle alone.
    let (ok, _) = verify_at(
        dir.path(),
        std::slice::from_ref(&r2),
        &leaves[0].1,
        &leaves[0].0,
        t0 + 50,
    );
    assert!(!ok, "the old chain must not verify against the new root");
}

#[test]
fn issuer_rotation_keeps_the_root_and_switches_after_preparation() {
    let (h, store, keys) = new_hierarchy();
    let t0 = OffsetDateTime::now_utc().unix_timestamp();
    let before = h.bundle_roots_at(&store, t0).unwrap();
    let created = h
        .rotate(
            &store,
            &keys,
            NODES,
            Duration::from_secs(60),
            OffsetDateTime::from_unix_timestamp(t0).unwrap(),
        )
        .unwrap();
    assert_eq!(created.len(), 1);
    assert_eq!(created[0].generation(), 2);
    assert_eq!(h.active_at(NODES, t0 + 59).unwrap().generation(), 1);
    assert_eq!(h.active_at(NODES, t0 + 60).unwrap().generation(), 2);
    assert_eq!(
        h.bundle_roots_at(&store, t0 + 60).unwrap(),
        before,
        "an issuer rotation does not change the roots"
    );
    // Stored, so a restart finds both generations.
    let (reloaded, _) = Hierarchy::init_or_load(&store, &keys, &settings(TD)).unwrap();
    assert_eq!(reloaded.generations_of(NODES).len(), 2);
    let err = h
        .rotate(
            &store,
            &keys,
            "nope",
            Duration::ZERO,
            OffsetDateTime::now_utc(),
        )
        .err()
        .unwrap();
    assert!(err.to_string().contains("unknown issuer"), "{err}");
}

#[test]
fn spiffe_issuers_carry_critical_uri_name_constraints() {
    let (h, _store, _keys) = new_hierarchy();
    for a in [h.workloads(), h.spire_upstream()] {
        let cert = parse(der(a.clone()));
        let nc = cert
            .iter_extensions()
            .find(|e| e.oid.to_id_string() == "2.5.29.30")
            .expect("name constraints");
        assert!(nc.critical);
        match nc.parsed_extension() {
            ParsedExtension::NameConstraints(c) => {
                let permitted = c.permitted_subtrees.as_ref().expect("permitted subtrees");
                assert_eq!(permitted.len(), 1);
                assert!(matches!(permitted[0].base, GeneralName::URI(u) if u == TD));
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    let nodes = parse(der(h.nodes()));
    assert!(nodes
        .iter_extensions()
        .all(|e| e.oid.to_id_string() != "2.5.29.30"));
}

#[test]
fn control_plane_names_are_checked_against_the_constraints() {
    let store = Store::in_memory().unwrap();
    let keys = MemoryBackend::default();
    let mut s = settings(TD);
    s.control_plane_constraints = profiles::IssuerConstraints {
        dns: vec!["cluster.local".into(), "kubernetes".into()],
        ips: vec![("10.96.0.0".parse().unwrap(), 12)],
        ..Default::default()
    };
    let (h, _) = Hierarchy::init_or_load(&store, &keys, &s).unwrap();
    let ip = |s: &str| -> std::net::IpAddr { s.parse().unwrap() };
    for issuer in [CONTROL_PLANE, ETCD] {
        assert!(h
            .names_permitted(
                issuer,
                &["kubernetes".into(), "a.svc.cluster.local".into()],
                &[ip("10.96.0.1")]
            )
            .is_ok());
        let err = h
            .names_permitted(issuer, &["evil.com".into()], &[])
            .unwrap_err();
        assert!(err.contains("evil.com"), "{err}");
        assert!(h
            .names_permitted(issuer, &["notcluster.local".into()], &[])
            .is_err());
        assert!(h.names_permitted(issuer, &[], &[ip("10.112.0.1")]).is_err());
        assert!(h.names_permitted(issuer, &[], &[ip("::1")]).is_err());
    }
    // The front-proxy CA signs no names, so it carries no constraints.
    assert!(h
        .names_permitted(FRONT_PROXY, &["anything".into()], &[])
        .is_ok());
}
