//! The issuance path refuses non-compliant requests with a reason naming the rule, records
//! the refusal, and stores no certificate.

use std::sync::Arc;
use std::time::Duration;

use keygrid_core::ca::{Hierarchy, HierarchySettings};
use keygrid_core::issuance::{Issuance, IssuanceSettings, IssueError};
use keygrid_core::keys::software::MemoryBackend;
use keygrid_core::keys::KeyAlgorithm;
use keygrid_core::policy::{Policy, PolicyRule};
use keygrid_core::store::{CertificateRecord, EntryRecord, NodeRecord, Selector, Store};

const NODE: &str = "spiffe://example.org/keygrid/node/n1";

fn csr(alg: &'static rcgen::SignatureAlgorithm, dns: &[&str]) -> Vec<u8> {
    let key = rcgen::KeyPair::generate_for(alg).unwrap();
    let mut params =
        rcgen::CertificateParams::new(dns.iter().map(|s| s.to_string()).collect::<Vec<_>>())
            .unwrap();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.serialize_request(&key).unwrap().der().to_vec()
}

fn rsa_csr(bits: usize) -> Vec<u8> {
    use aws_lc_rs::encoding::AsDer;
    let size = match bits {
        2048 => aws_lc_rs::rsa::KeySize::Rsa2048,
        _ => aws_lc_rs::rsa::KeySize::Rsa3072,
    };
    let key = aws_lc_rs::rsa::KeyPair::generate(size).unwrap();
    let pkcs8 = key.as_der().unwrap();
    let key = rcgen::KeyPair::from_pkcs8_der_and_sign_algo(
        &pkcs8.as_ref().into(),
        &rcgen::PKCS_RSA_SHA256,
    )
    .unwrap();
    rcgen::CertificateParams::default()
        .serialize_request(&key)
        .unwrap()
        .der()
        .to_vec()
}

struct Fixture {
    store: Arc<Store>,
    issuance: Issuance,
    h: Arc<Hierarchy>,
}

fn fixture(rules: &str, issuer_ttl: Duration) -> Fixture {
    let store = Arc::new(Store::in_memory().unwrap());
    let keys = MemoryBackend::default();
    let mut settings = HierarchySettings::new(
        "example.org",
        KeyAlgorithm::EcdsaP384,
        KeyAlgorithm::EcdsaP384,
    );
    settings.issuer_ttl = issuer_ttl;
    let (h, _) = Hierarchy::init_or_load(&store, &keys, &settings).unwrap();
    let h = Arc::new(h);
    #[derive(serde::Deserialize)]
    struct Rules {
        policy: Vec<PolicyRule>,
    }
    let rules: Rules = toml::from_str(rules).unwrap();
    let policy = Policy::new(rules.policy).unwrap();
    let issuance = Issuance::new(
        store.clone(),
        h.clone(),
        policy,
        IssuanceSettings {
            default_svid_ttl: Duration::from_secs(300),
            max_svid_ttl: Duration::from_secs(10 * 3600),
            node_cert_ttl: Duration::from_secs(3600),
            jwt_svid_ttl: Duration::from_secs(300),
            default_identities: true,
        },
    );
    store
        .renew_node(
            &NodeRecord {
                spiffe_id: NODE.into(),
                attestation: "join_token".into(),
                serial: "01".into(),
                not_after: i64::MAX,
            },
            &CertificateRecord {
                issuer: "nodes".into(),
                issuer_generation: 1,
                serial: "01".into(),
                profile: "node".into(),
                subject: NODE.into(),
                not_before: 0,
                not_after: i64::MAX,
                sha256: "x".into(),
            },
            0,
        )
        .unwrap();
    Fixture { store, issuance, h }
}

fn entry(f: &Fixture, id: &str, spiffe_id: &str, ttl: i64) -> String {
    f.store
        .create_entry(
            &EntryRecord {
                id: id.into(),
                spiffe_id: spiffe_id.into(),
                parent_id: NODE.into(),
                selectors: vec![Selector {
                    kind: "unix".into(),
                    value: format!("uid:{id}"),
                }],
                x509_svid_ttl: ttl,
                dns_names: vec![],
                hint: String::new(),
            },
            0,
        )
        .unwrap();
    id.to_string()
}

const RULES: &str = r#"
[[policy]]
name = "fleet-keys"
profiles = ["*"]
allowed_keys = ["ecdsa-p384", "rsa"]
min_rsa_bits = 3072

[[policy]]
name = "workload-paths"
profiles = ["x509-svid"]
spiffe_id_paths = ["/ns/**"]
"#;

fn refused(r: Result<keygrid_core::issuance::MintedSvid, IssueError>) -> String {
    match r {
        Err(IssueError::PermissionDenied(m)) | Err(IssueError::InvalidArgument(m)) => m,
        Err(IssueError::Internal) => panic!("internal error instead of a refusal"),
        Ok(s) => panic!("issued {} although policy should refuse", s.spiffe_id),
    }
}

#[test]
fn non_compliant_requests_are_refused_and_only_the_refusal_is_recorded() {
    let f = fixture(RULES, Duration::from_secs(365 * 24 * 3600));
    let good = entry(&f, "good", "spiffe://example.org/ns/prod/sa/web", 0);
    let other_path = entry(&f, "path", "spiffe://example.org/other", 0);
    let before = f.store.certificate_count().unwrap();

    let cases: Vec<(&str, Result<_, _>, &str)> = vec![
        (
            "RSA-2048",
            f.issuance.mint_x509_svid(NODE, &good, &rsa_csr(2048)),
            "3072",
        ),
        (
            "P-256 under a P-384 policy",
            f.issuance
                .mint_x509_svid(NODE, &good, &csr(&rcgen::PKCS_ECDSA_P256_SHA256, &[])),
            "ecdsa-p256",
        ),
        (
            "SPIFFE ID path outside policy",
            f.issuance
                .mint_x509_svid(NODE, &other_path, &csr(&rcgen::PKCS_ECDSA_P384_SHA384, &[])),
            "/other",
        ),
        (
            "CSR asking for extra SANs",
            f.issuance.mint_x509_svid(
                NODE,
                &good,
                &csr(&rcgen::PKCS_ECDSA_P384_SHA384, &["evil.example.org"]),
            ),
            "evil.example.org",
        ),
    ];
    for (what, result, needle) in cases {
        let msg = refused(result);
        assert!(msg.contains(needle), "{what}: {msg}");
    }
    // A CSR whose signature does not verify.
    let mut bad = csr(&rcgen::PKCS_ECDSA_P384_SHA384, &[]);
    let last = bad.len() - 3;
    bad[last] ^= 0xff;
    let msg = refused(f.issuance.mint_x509_svid(NODE, &good, &bad));
    assert!(msg.contains("csr"), "{msg}");

    assert_eq!(
        f.store.certificate_count().unwrap(),
        before,
        "refusals store no certificate"
    );
    let events = f.store.events("policy_refusal").unwrap();
    let rules: Vec<&str> = events.iter().map(|e| e.rule.as_str()).collect();
    assert_eq!(
        rules,
        [
            "fleet-keys",
            "fleet-keys",
            "workload-paths",
            "csr-names",
            "csr"
        ],
        "{events:#?}"
    );
    assert!(events.iter().all(|e| e.actor == NODE));

    // The compliant request goes through and is recorded.
    let ok = f
        .issuance
        .mint_x509_svid(NODE, &good, &csr(&rcgen::PKCS_ECDSA_P384_SHA384, &[]))
        .unwrap();
    assert_eq!(ok.spiffe_id, "spiffe://example.org/ns/prod/sa/web");
    assert_eq!(f.store.certificate_count().unwrap(), before + 1);
    let rsa_ok = f.issuance.mint_x509_svid(NODE, &good, &rsa_csr(3072));
    assert!(rsa_ok.is_ok(), "RSA-3072 is allowed: {:?}", rsa_ok.err());
}

#[test]
fn an_out_of_domain_entry_is_never_served() {
    let f = fixture("policy = []", Duration::from_secs(24 * 3600));
    let foreign = entry(&f, "foreign", "spiffe://evil.org/ns/x", 0);
    let msg = refused(f.issuance.mint_x509_svid(
        NODE,
        &foreign,
        &csr(&rcgen::PKCS_ECDSA_P384_SHA384, &[]),
    ));
    assert!(msg.contains("trust domain"), "{msg}");
    assert_eq!(
        f.store.events("policy_refusal").unwrap()[0].rule,
        "trust-domain"
    );
}

#[test]
fn a_lifetime_beyond_the_issuer_is_cut_to_the_issuer() {
    // The workloads CA lives 1 h; the entry asks for 5 h.
    let f = fixture("policy = []", Duration::from_secs(3600));
    let long = entry(&f, "long", "spiffe://example.org/ns/a", 5 * 3600);
    let svid = f
        .issuance
        .mint_x509_svid(NODE, &long, &csr(&rcgen::PKCS_ECDSA_P384_SHA384, &[]))
        .unwrap();
    let (_, leaf) = x509_parser::parse_x509_certificate(&svid.chain[0]).unwrap();
    assert_eq!(
        leaf.validity().not_after.timestamp(),
        f.h.workloads().not_after().unix_timestamp()
    );
}

#[test]
fn a_node_from_another_node_cannot_mint_for_this_entry() {
    let f = fixture("policy = []", Duration::from_secs(24 * 3600));
    let e = entry(&f, "e", "spiffe://example.org/ns/a", 0);
    let msg = refused(f.issuance.mint_x509_svid(
        "spiffe://example.org/keygrid/node/n2",
        &e,
        &csr(&rcgen::PKCS_ECDSA_P384_SHA384, &[]),
    ));
    assert!(msg.contains("not authorised"), "{msg}");
}
