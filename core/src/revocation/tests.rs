//! Unit tests of the responder and CRL publisher against an in-memory hierarchy. The
//! protocol proof with real clients (openssl) is `integration/tests/ocsp_crl.rs`.

use std::sync::Arc;
use std::time::Duration;

use der::asn1::{Null, OctetString};
use der::{Decode, Encode};
use x509_cert::ext::Extension;
use x509_ocsp::{
    BasicOcspResponse, OcspRequest, OcspResponse, OcspResponseStatus, Request, TbsRequest,
};

use super::crl::{CrlPublisher, CrlSettings};
use super::ocsp::{OcspResponder, OcspSettings};
use super::*;
use crate::ca::HierarchySettings;
use crate::keys::software::MemoryBackend;
use crate::keys::KeyAlgorithm;
use crate::store::CertificateRecord;

struct Fixture {
    keys: MemoryBackend,
    store: Arc<Store>,
    ca: Arc<Hierarchy>,
    responder: Arc<OcspResponder>,
    revoker: Revoker,
}

fn fixture() -> Fixture {
    fixture_with(KeyAlgorithm::EcdsaP256)
}

fn fixture_with(responder_algorithm: KeyAlgorithm) -> Fixture {
    let store = Arc::new(Store::in_memory().unwrap());
    let keys = MemoryBackend::default();
    let settings = HierarchySettings::new(
        "example.org",
        KeyAlgorithm::EcdsaP256,
        KeyAlgorithm::EcdsaP256,
    );
    let (h, _) = Hierarchy::init_or_load(&store, &keys, &settings).unwrap();
    let ca = Arc::new(h);
    record_ca_certificates(&store, &ca).unwrap();
    let responder = Arc::new(
        OcspResponder::new(
            store.clone(),
            ca.clone(),
            OcspSettings {
                response_validity: Duration::from_secs(3600),
                responder_cert_ttl: Duration::from_secs(3600),
                responder_algorithm,
            },
        )
        .unwrap(),
    );
    let crls = Arc::new(CrlPublisher::new(
        store.clone(),
        ca.clone(),
        CrlSettings {
            validity: Duration::from_secs(3600),
            delta_validity: None,
            public_base: None,
        },
    ));
    let revoker = Revoker::new(store.clone(), ca.clone(), vec![crls, responder.clone()]);
    Fixture {
        keys,
        store,
        ca,
        responder,
        revoker,
    }
}

fn record(store: &Store, serial: &str) {
    store
        .record_certificate(&CertificateRecord {
            issuer: "nodes".into(),
            issuer_generation: 1,
            serial: serial.into(),
            profile: "node".into(),
            subject: "spiffe://example.org/node".into(),
            not_before: 0,
            not_after: i64::MAX / 2,
            sha256: "00".into(),
        })
        .unwrap();
}

fn cert_id(ca: &Hierarchy, serial: &[u8]) -> x509_ocsp::CertId {
    let nodes_ca = ca.nodes();
    let (_, nodes) = x509_parser::parse_x509_certificate(nodes_ca.cert_der()).unwrap();
    let sha1 = |d: &[u8]| {
        aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA1_FOR_LEGACY_USE_ONLY, d)
            .as_ref()
            .to_vec()
    };
    x509_ocsp::CertId {
        hash_algorithm: x509_cert::spki::AlgorithmIdentifierOwned {
            oid: der::asn1::ObjectIdentifier::new_unwrap("1.3.14.3.2.26"),
            parameters: Some(Null.into()),
        },
        issuer_name_hash: OctetString::new(sha1(nodes.subject().as_raw())).unwrap(),
        issuer_key_hash: OctetString::new(sha1(&nodes.public_key().subject_public_key.data))
            .unwrap(),
        serial_number: x509_cert::serial_number::SerialNumber::new(serial).unwrap(),
    }
}

fn request(ids: Vec<x509_ocsp::CertId>, nonce: Option<Vec<u8>>) -> Vec<u8> {
    let request_extensions = nonce.map(|n| {
        vec![Extension {
            extn_id: der::asn1::ObjectIdentifier::new_unwrap("1.3.6.1.5.5.7.48.1.2"),
            critical: false,
            extn_value: OctetString::new(OctetString::new(n).unwrap().to_der().unwrap()).unwrap(),
        }]
    });
    OcspRequest {
        tbs_request: TbsRequest {
            version: Default::default(),
            requestor_name: None,
            request_list: ids
                .into_iter()
                .map(|req_cert| Request {
                    req_cert,
                    single_request_extensions: None,
                })
                .collect(),
            request_extensions,
        },
        optional_signature: None,
    }
    .to_der()
    .unwrap()
}

/// Decodes a successful answer, checks its signature with the embedded responder
/// certificate, and returns it.
fn decode(der: &[u8]) -> BasicOcspResponse {
    let resp = OcspResponse::from_der(der).unwrap();
    assert_eq!(resp.response_status, OcspResponseStatus::Successful);
    let basic =
        BasicOcspResponse::from_der(resp.response_bytes.unwrap().response.as_bytes()).unwrap();
    let cert = &basic.certs.as_ref().unwrap()[0];
    let key = cert
        .tbs_certificate
        .subject_public_key_info
        .subject_public_key
        .raw_bytes();
    let tbs = basic.tbs_response_data.to_der().unwrap();
    use aws_lc_rs::signature as sig;
    let verifier: &dyn sig::VerificationAlgorithm =
        match basic.signature_algorithm.oid.to_string().as_str() {
            "1.2.840.10045.4.3.2" => &sig::ECDSA_P256_SHA256_ASN1,
            "1.2.840.10045.4.3.3" => &sig::ECDSA_P384_SHA384_ASN1,
            "1.3.101.112" => &sig::ED25519,
            "1.2.840.113549.1.1.11" => &sig::RSA_PKCS1_2048_8192_SHA256,
            "1.2.840.113549.1.1.12" => &sig::RSA_PKCS1_2048_8192_SHA384,
            other => panic!("unexpected signature algorithm {other}"),
        };
    sig::UnparsedPublicKey::new(verifier, key)
        .verify(&tbs, basic.signature.raw_bytes())
        .expect("response signature verifies");
    basic
}

#[test]
fn responders_of_every_algorithm_sign_answers_that_verify() {
    for alg in KeyAlgorithm::ALL {
        let f = fixture_with(alg);
        let serial = [0x33u8; 16];
        record(&f.store, &hex::encode(serial));
        let answer = f
            .responder
            .answer(&request(vec![cert_id(&f.ca, &serial)], None));
        let basic = decode(&answer.der);
        // RSA identifiers carry an explicit NULL; ECDSA and Ed25519 ones none.
        assert_eq!(
            basic.signature_algorithm.parameters.is_some(),
            alg.rsa_bits().is_some(),
            "{alg}"
        );
        assert!(matches!(status(&basic), x509_ocsp::CertStatus::Good(_)));
    }
}

fn status(basic: &BasicOcspResponse) -> x509_ocsp::CertStatus {
    basic.tbs_response_data.responses[0].cert_status
}

fn error_status(der: &[u8]) -> OcspResponseStatus {
    OcspResponse::from_der(der).unwrap().response_status
}

#[test]
fn good_unknown_and_revoked_with_cache_refreshed_on_revocation() {
    let f = fixture();
    let serial = [0x11u8; 16];
    record(&f.store, &hex::encode(serial));
    let req = request(vec![cert_id(&f.ca, &serial)], None);
    let good = f.responder.answer(&req);
    assert!(matches!(
        status(&decode(&good.der)),
        x509_ocsp::CertStatus::Good(_)
    ));
    // Served from the cache the second time, byte for byte; the third time by the
    // request's bytes alone.
    let cached = f.responder.answer_cached(&req).expect("cached");
    assert_eq!(cached.der, good.der);
    assert!(cached.cache.is_some());
    let by_bytes = f
        .responder
        .answer_cached(&req)
        .expect("cached by request bytes");
    assert_eq!(by_bytes.der, good.der);

    let unknown = f
        .responder
        .answer(&request(vec![cert_id(&f.ca, &[0x22; 16])], None));
    assert!(matches!(
        status(&decode(&unknown.der)),
        x509_ocsp::CertStatus::Unknown(_)
    ));

    f.revoker
        .revoke(&RevokeRequest {
            issuer: String::new(),
            serial: hex::encode(serial),
            certificate_der: Vec::new(),
            reason: Reason::KeyCompromise,
            actor: "test".into(),
        })
        .unwrap();
    // The cache was re-signed at once: even the cache-only path says revoked now.
    let after = f
        .responder
        .answer_cached(&req)
        .expect("re-signed into the cache");
    match status(&decode(&after.der)) {
        x509_ocsp::CertStatus::Revoked(info) => assert_eq!(
            info.revocation_reason,
            Some(x509_cert::ext::pkix::CrlReason::KeyCompromise)
        ),
        other => panic!("expected revoked, got {other:?}"),
    }
    // And the request's bytes, remembered while the certificate was good, now lead to the
    // revoked answer too.
    let again = f.responder.answer_cached(&req).expect("still cached");
    assert_eq!(again.der, after.der);
    // The CRL was re-published with the entry.
    let crl = f.store.latest_crl("nodes", false).unwrap().unwrap();
    let (_, parsed) = x509_parser::parse_x509_crl(&crl.der).unwrap();
    assert_eq!(parsed.iter_revoked_certificates().count(), 1);
}

#[test]
fn nonces_are_echoed_and_bounded() {
    let f = fixture();
    let serial = [0x33u8; 16];
    record(&f.store, &hex::encode(serial));
    let id = cert_id(&f.ca, &serial);
    let a = f
        .responder
        .answer(&request(vec![id.clone()], Some(vec![7; 32])));
    let basic = decode(&a.der);
    let ext = &basic
        .tbs_response_data
        .response_extensions
        .as_ref()
        .unwrap()[0];
    assert_eq!(
        OctetString::from_der(ext.extn_value.as_bytes())
            .unwrap()
            .as_bytes(),
        &[7u8; 32]
    );
    assert!(a.cache.is_none(), "a nonce answer must not be shared");
    let ok128 = f
        .responder
        .answer(&request(vec![id.clone()], Some(vec![1; 128])));
    decode(&ok128.der);
    for bad in [vec![], vec![1; 129]] {
        let a = f.responder.answer(&request(vec![id.clone()], Some(bad)));
        assert_eq!(error_status(&a.der), OcspResponseStatus::MalformedRequest);
    }
}

#[test]
fn bad_requests_get_error_statuses() {
    let f = fixture();
    assert_eq!(
        error_status(&f.responder.answer(b"").der),
        OcspResponseStatus::MalformedRequest
    );
    assert_eq!(
        error_status(&f.responder.answer(&[0x30, 0x82, 0xff]).der),
        OcspResponseStatus::MalformedRequest
    );
    let many: Vec<_> = (0..17u8).map(|i| cert_id(&f.ca, &[i + 1; 8])).collect();
    assert_eq!(
        error_status(&f.responder.answer(&request(many, None)).der),
        OcspResponseStatus::MalformedRequest
    );
    let mut foreign = cert_id(&f.ca, &[1; 8]);
    foreign.issuer_key_hash = OctetString::new(vec![0; 20]).unwrap();
    assert_eq!(
        error_status(&f.responder.answer(&request(vec![foreign], None)).der),
        OcspResponseStatus::Unauthorized
    );
}

#[test]
fn unknown_serial_cannot_be_revoked_and_nothing_is_written() {
    let f = fixture();
    let err = f
        .revoker
        .revoke(&RevokeRequest {
            issuer: "nodes".into(),
            serial: "0a0b".into(),
            certificate_der: Vec::new(),
            reason: Reason::Superseded,
            actor: "test".into(),
        })
        .unwrap_err();
    assert!(matches!(err, RevokeError::NotFound(_)), "{err}");
    assert!(f.store.revocations(None, 0).unwrap().is_empty());
}

#[test]
fn a_rotated_ca_generation_gets_its_own_responder() {
    let f = fixture();
    let created =
        f.ca.rotate(
            &f.store,
            &f.keys,
            "nodes",
            Duration::from_secs(0),
            time::OffsetDateTime::now_utc(),
        )
        .unwrap();
    let new_nodes = created.iter().find(|a| a.name() == "nodes").unwrap();
    let (_, cert) = x509_parser::parse_x509_certificate(new_nodes.cert_der()).unwrap();
    let sha1 = |d: &[u8]| {
        aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA1_FOR_LEGACY_USE_ONLY, d)
            .as_ref()
            .to_vec()
    };
    let mut id = cert_id(&f.ca, &[0x44; 16]);
    id.issuer_name_hash = OctetString::new(sha1(cert.subject().as_raw())).unwrap();
    id.issuer_key_hash =
        OctetString::new(sha1(&cert.public_key().subject_public_key.data)).unwrap();
    let req = request(vec![id], None);
    assert_eq!(
        error_status(&f.responder.answer(&req).der),
        OcspResponseStatus::Unauthorized,
        "unknown generation before upkeep"
    );
    f.responder.maintain();
    let a = f.responder.answer(&req);
    assert!(matches!(
        status(&decode(&a.der)),
        x509_ocsp::CertStatus::Unknown(_)
    ));
}

/// Decodes a stored CRL with the RustCrypto types and checks its signature with the
/// issuer's key (P-256 in these fixtures).
fn crl_checked(f: &Fixture, der: &[u8]) -> x509_cert::crl::CertificateList {
    let crl = x509_cert::crl::CertificateList::from_der(der).unwrap();
    let issuer = x509_cert::Certificate::from_der(f.ca.nodes().cert_der()).unwrap();
    aws_lc_rs::signature::UnparsedPublicKey::new(
        &aws_lc_rs::signature::ECDSA_P256_SHA256_ASN1,
        issuer
            .tbs_certificate
            .subject_public_key_info
            .subject_public_key
            .raw_bytes(),
    )
    .verify(
        &crl.tbs_cert_list.to_der().unwrap(),
        crl.signature.raw_bytes(),
    )
    .expect("CRL signature verifies with the issuer's key");
    assert_eq!(crl.tbs_cert_list.issuer, issuer.tbs_certificate.subject);
    crl
}

fn crl_ext<'a>(crl: &'a x509_cert::crl::CertificateList, oid: &str) -> Option<&'a Extension> {
    crl.tbs_cert_list
        .crl_extensions
        .as_ref()?
        .iter()
        .find(|e| e.extn_id.to_string() == oid)
}

fn listed(crl: &x509_cert::crl::CertificateList) -> usize {
    crl.tbs_cert_list
        .revoked_certificates
        .as_ref()
        .map_or(0, |r| r.len())
}

#[test]
fn delta_crls_carry_what_was_revoked_since_their_base() {
    let mut f = fixture();
    let crls = Arc::new(CrlPublisher::new(
        f.store.clone(),
        f.ca.clone(),
        CrlSettings {
            validity: Duration::from_secs(24 * 3600),
            delta_validity: Some(Duration::from_secs(600)),
            public_base: Some("http://pki.example.org".into()),
        },
    ));
    f.revoker = Revoker::new(f.store.clone(), f.ca.clone(), vec![crls.clone()]);
    let nodes = f.ca.nodes();
    let base = crls.publish(&nodes).unwrap();
    let parsed = crl_checked(&f, &base.der);
    assert_eq!(listed(&parsed), 0);
    assert!(
        crl_ext(&parsed, "2.5.29.27").is_none(),
        "a complete CRL has no delta indicator"
    );
    let freshest = crl_ext(&parsed, "2.5.29.46").expect("Freshest CRL pointer");
    assert!(String::from_utf8_lossy(freshest.extn_value.as_bytes())
        .contains("http://pki.example.org/crl/nodes-delta.crl"));

    for (i, serial) in [[0x41u8; 16], [0x42u8; 16]].iter().enumerate() {
        record(&f.store, &hex::encode(serial));
        f.revoker
            .revoke(&RevokeRequest {
                issuer: String::new(),
                serial: hex::encode(serial),
                certificate_der: Vec::new(),
                reason: if i == 0 {
                    Reason::KeyCompromise
                } else {
                    Reason::Unspecified
                },
                actor: "test".into(),
            })
            .unwrap();
    }
    // The complete CRL is untouched; the newest delta lists both, pointing at the base.
    assert_eq!(
        f.store.latest_crl("nodes", false).unwrap().unwrap().number,
        base.number
    );
    let delta = f.store.latest_crl("nodes", true).unwrap().unwrap();
    assert_eq!(delta.base_number, Some(base.number));
    assert!(delta.number > base.number, "one CRL number sequence");
    let parsed = crl_checked(&f, &delta.der);
    assert_eq!(listed(&parsed), 2);
    let indicator = crl_ext(&parsed, "2.5.29.27").expect("Delta CRL Indicator");
    assert!(
        indicator.critical,
        "RFC 5280 §5.2.4: the indicator is critical"
    );
    let base_number = der::asn1::Uint::from_der(indicator.extn_value.as_bytes()).unwrap();
    assert_eq!(base_number.as_bytes(), &[base.number as u8]);
    assert!(
        crl_ext(&parsed, "2.5.29.46").is_none(),
        "deltas carry no Freshest CRL"
    );
    // Reason codes survive; `unspecified` is left out (§5.3.1).
    let entries = parsed.tbs_cert_list.revoked_certificates.as_ref().unwrap();
    let with_reason = entries
        .iter()
        .filter(|e| e.crl_entry_extensions.is_some())
        .count();
    assert_eq!(with_reason, 1);

    // Many deltas later the complete CRL they refer to is still in the store.
    for _ in 0..10 {
        crls.publish_delta(&nodes).unwrap();
    }
    assert_eq!(
        f.store.latest_crl("nodes", false).unwrap().unwrap().number,
        base.number
    );

    // A new complete CRL absorbs the entries; the next delta against it is empty.
    let base2 = crls.publish(&nodes).unwrap();
    assert_eq!(listed(&crl_checked(&f, &base2.der)), 2);
    let delta2 = crls.publish_delta(&nodes).unwrap();
    assert_eq!(delta2.base_number, Some(base2.number));
    assert_eq!(listed(&crl_checked(&f, &delta2.der)), 0);
}
