//! OCSP requests as anyone on the network can POST them (RFC 6960 App. A.1): the cache
//! path and the full path (decoding, nonce and CertID bounds, issuer matching, status
//! lookup, signing) must answer every input with an OCSPResponse, never panic.
//!
//! The first input byte picks the mode. Raw mode hands the rest to the responder as is.
//! Structured mode builds a well-formed request for one of the responder's real issuers
//! from the rest (hash algorithm, serial bytes, nonce, number of CertIDs), so the fuzzer
//! reaches the status lookup and signing paths that random bytes never match an issuer for.
#![no_main]

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use der::asn1::{Null, ObjectIdentifier, OctetString};
use der::{Decode, Encode};
use keygrid_core::ca::{Hierarchy, HierarchySettings};
use keygrid_core::keys::software::MemoryBackend;
use keygrid_core::keys::KeyAlgorithm;
use keygrid_core::revocation::ocsp::{OcspResponder, OcspSettings};
use keygrid_core::revocation::record_ca_certificates;
use keygrid_core::store::Store;
use libfuzzer_sys::fuzz_target;
use x509_cert::ext::Extension;
use x509_ocsp::{CertId, OcspRequest, Request, TbsRequest};

struct Fixture {
    responder: OcspResponder,
    /// Each issuer's subject DER and public key bits, what CertIDs hash.
    issuers: Vec<(Vec<u8>, Vec<u8>)>,
}

/// One responder for the whole run: a hierarchy with software keys in an in-memory store.
fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let store = Arc::new(Store::in_memory().expect("in-memory store"));
        let keys = MemoryBackend::default();
        let settings = HierarchySettings::new(
            "fuzz.example",
            KeyAlgorithm::EcdsaP256,
            KeyAlgorithm::EcdsaP256,
        );
        let (ca, _) = Hierarchy::init_or_load(&store, &keys, &settings).expect("hierarchy");
        let ca = Arc::new(ca);
        record_ca_certificates(&store, &ca).expect("CA records");
        let issuers = ca
            .authorities()
            .iter()
            .map(|a| {
                let cert = x509_cert::Certificate::from_der(a.cert_der()).expect("CA cert");
                (
                    cert.tbs_certificate.subject.to_der().expect("subject"),
                    cert.tbs_certificate
                        .subject_public_key_info
                        .subject_public_key
                        .raw_bytes()
                        .to_vec(),
                )
            })
            .collect();
        let responder = OcspResponder::new(
            store,
            ca,
            OcspSettings {
                response_validity: Duration::from_secs(3600),
                responder_cert_ttl: Duration::from_secs(3600),
                responder_algorithm: KeyAlgorithm::EcdsaP256,
            },
        )
        .expect("responder");
        Fixture { responder, issuers }
    })
}

fn structured(f: &Fixture, data: &[u8]) -> Option<Vec<u8>> {
    let (&ctl, rest) = data.split_first()?;
    let (&serial_len, rest) = rest.split_first()?;
    let (serial, nonce) = rest.split_at((serial_len as usize % 24).min(rest.len()));
    let (name, key) = &f.issuers[(ctl as usize >> 3) % f.issuers.len()];
    let (oid, alg) = if ctl & 1 == 1 {
        ("2.16.840.1.101.3.4.2.1", &aws_lc_rs::digest::SHA256)
    } else {
        (
            "1.3.14.3.2.26",
            &aws_lc_rs::digest::SHA1_FOR_LEGACY_USE_ONLY,
        )
    };
    let hash = |d: &[u8]| OctetString::new(aws_lc_rs::digest::digest(alg, d).as_ref().to_vec());
    let id = CertId {
        hash_algorithm: x509_cert::spki::AlgorithmIdentifierOwned {
            oid: ObjectIdentifier::new_unwrap(oid),
            parameters: Some(Null.into()),
        },
        issuer_name_hash: hash(name).ok()?,
        issuer_key_hash: hash(key).ok()?,
        serial_number: x509_cert::serial_number::SerialNumber::new(serial).ok()?,
    };
    let count = 1 + (ctl as usize >> 6);
    // A nonce in RFC 9654's form (the extension value holds a DER OCTET STRING) or the
    // older raw form.
    let request_extensions = if ctl & 2 == 2 {
        let value = if ctl & 4 == 4 {
            OctetString::new(nonce.to_vec()).ok()?.to_der().ok()?
        } else {
            nonce.to_vec()
        };
        Some(vec![Extension {
            extn_id: ObjectIdentifier::new_unwrap("1.3.6.1.5.5.7.48.1.2"),
            critical: false,
            extn_value: OctetString::new(value).ok()?,
        }])
    } else {
        None
    };
    OcspRequest {
        tbs_request: TbsRequest {
            version: Default::default(),
            requestor_name: None,
            request_list: (0..count)
                .map(|_| Request {
                    req_cert: id.clone(),
                    single_request_extensions: None,
                })
                .collect(),
            request_extensions,
        },
        optional_signature: None,
    }
    .to_der()
    .ok()
}

fuzz_target!(|data: &[u8]| {
    let f = fixture();
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let request = if mode & 1 == 0 {
        rest.to_vec()
    } else {
        match structured(f, rest) {
            Some(r) => r,
            None => return,
        }
    };
    let _ = f.responder.answer_cached(&request);
    let answer = f.responder.answer(&request);
    assert!(!answer.der.is_empty(), "every request gets an OCSPResponse");
});
