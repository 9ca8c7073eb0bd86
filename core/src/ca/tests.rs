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
        issuer_ttl: Duration::from_secs(30 * 24 * 3600),
        control_plane_constraints: Default::default(),
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
        [ROOT, CONTROL_PLANE, NODES, SPIRE_UPSTREAM, WORKLOADS]
    );
    assert_eq!(first.root().algorithm(), KeyAlgorithm::EcdsaP384);
    assert_eq!(first.workloads().algorithm(), KeyAlgorithm::EcdsaP256);
    assert_eq!(first.bundle(), vec![first.root().cert_der().to_vec()]);

    let records = store.authorities().unwrap();
    assert_eq!(records.len(), 5);
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
    assert_eq!(store.authorities().unwrap().len(), 5);

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
