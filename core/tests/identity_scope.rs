//! Core decides which identities a node may have minted: entries it is the parent of, and
//! pod default identities (`spiffe://<td>/ns/<ns>/sa/<sa>`) when enabled. Everything else is
//! refused, recorded as an event, and signs nothing — for X.509 and JWT alike.

use std::sync::Arc;
use std::time::Duration;

use keygrid_core::ca::{Hierarchy, HierarchySettings};
use keygrid_core::issuance::{Issuance, IssuanceSettings, IssueError};
use keygrid_core::jwt::JwtIssuer;
use keygrid_core::keys::software::{MemoryBackend, SoftwareKey};
use keygrid_core::keys::KeyAlgorithm;
use keygrid_core::policy::Policy;
use keygrid_core::store::{EntryRecord, Selector, Store};

const NODE: &str = "spiffe://example.org/keygrid/node/n1";

fn setup(default_identities: bool) -> (Arc<Store>, Issuance, JwtIssuer) {
    let store = Arc::new(Store::in_memory().unwrap());
    let keys = MemoryBackend::default();
    let settings = HierarchySettings::new(
        "example.org",
        KeyAlgorithm::EcdsaP256,
        KeyAlgorithm::EcdsaP256,
    );
    let (h, _) = Hierarchy::init_or_load(&store, &keys, &settings).unwrap();
    let issuance = Issuance::new(
        store.clone(),
        Arc::new(h),
        Policy::new(vec![]).unwrap(),
        IssuanceSettings {
            default_svid_ttl: Duration::from_secs(300),
            max_svid_ttl: Duration::from_secs(3600),
            node_cert_ttl: Duration::from_secs(3600),
            jwt_svid_ttl: Duration::from_secs(300),
            default_identities,
        },
    );
    let jwt = JwtIssuer::from_signer(Arc::new(
        SoftwareKey::generate(KeyAlgorithm::EcdsaP256).unwrap(),
    ))
    .unwrap();
    (store, issuance, jwt)
}

fn csr() -> Vec<u8> {
    let key = rcgen::KeyPair::generate().unwrap();
    rcgen::CertificateParams::default()
        .serialize_request(&key)
        .unwrap()
        .der()
        .to_vec()
}

#[test]
fn default_pod_identities_are_granted_only_in_shape_and_when_enabled() {
    let (store, issuance, jwt) = setup(true);
    let id = "spiffe://example.org/ns/payments/sa/api";
    let svid = issuance.mint_x509_svid_for(NODE, "", id, &csr()).unwrap();
    assert_eq!(svid.spiffe_id, id);
    let (sub, token) = issuance
        .mint_jwt_svid(&jwt, NODE, "", id, &["aud".to_string()])
        .unwrap();
    assert_eq!(sub, id);
    assert_eq!(token.token.split('.').count(), 3);

    let before = store.certificate_count().unwrap();
    for bad in [
        "spiffe://example.org/admin",
        "spiffe://other.org/ns/a/sa/b",
        "spiffe://example.org/ns/a/sa/b/extra",
    ] {
        let err = issuance
            .mint_x509_svid_for(NODE, "", bad, &csr())
            .unwrap_err();
        assert!(
            matches!(err, IssueError::PermissionDenied(_)),
            "{bad}: {err:?}"
        );
        let err = issuance
            .mint_jwt_svid(&jwt, NODE, "", bad, &["aud".to_string()])
            .unwrap_err();
        assert!(
            matches!(err, IssueError::PermissionDenied(_)),
            "{bad}: {err:?}"
        );
    }
    assert_eq!(store.certificate_count().unwrap(), before, "nothing signed");
    let events = store.events("policy_refusal").unwrap();
    assert_eq!(events.len(), 6);
    assert!(events
        .iter()
        .all(|e| e.rule == "default-identity" && e.actor == NODE));

    let (_, disabled, jwt) = setup(false);
    assert!(matches!(
        disabled.mint_x509_svid_for(NODE, "", id, &csr()),
        Err(IssueError::PermissionDenied(_))
    ));
    assert!(matches!(
        disabled.mint_jwt_svid(&jwt, NODE, "", id, &["a".to_string()]),
        Err(IssueError::PermissionDenied(_))
    ));
}

#[test]
fn entries_of_other_nodes_and_missing_audiences_are_refused() {
    let (store, issuance, jwt) = setup(true);
    store
        .create_entry(
            &EntryRecord {
                id: "e-other".into(),
                spiffe_id: "spiffe://example.org/w".into(),
                parent_id: "spiffe://example.org/keygrid/node/other".into(),
                selectors: vec![Selector {
                    kind: "unix".into(),
                    value: "uid:1".into(),
                }],
                x509_svid_ttl: 0,
                dns_names: vec![],
                hint: String::new(),
            },
            0,
        )
        .unwrap();
    assert!(matches!(
        issuance.mint_jwt_svid(&jwt, NODE, "e-other", "", &["a".to_string()]),
        Err(IssueError::PermissionDenied(_))
    ));
    assert!(matches!(
        issuance.mint_x509_svid_for(NODE, "e-other", "", &csr()),
        Err(IssueError::PermissionDenied(_))
    ));
    let events = store.events("policy_refusal").unwrap();
    assert!(events.iter().any(|e| e.rule == "entry-parent"));
    match issuance.mint_jwt_svid(&jwt, NODE, "", "spiffe://example.org/ns/a/sa/b", &[]) {
        Err(IssueError::InvalidArgument(m)) => assert_eq!(m, "audience must be specified"),
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        issuance.mint_x509_svid_for(NODE, "", "", &csr()),
        Err(IssueError::InvalidArgument(_))
    ));
}
