//! What an EST client sends and what the agent reads back (RFC 7030, RFC 8951): base64
//! bodies, the PKCS#10 CSR and its challengePassword inside, media types, and the
//! hand-written certs-only PKCS#7 reader. Bad input must be refused, never panic.
#![no_main]

use keygrid_core::est::{binding, body, pkcs7};
use libfuzzer_sys::fuzz_target;
use x509_parser::certification_request::X509CertificationRequest;
use x509_parser::prelude::FromDer;

fuzz_target!(|data: &[u8]| {
    let _ = pkcs7::read_certs(data);
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = body::media_type(Some(text));
    }
    if let Ok(der) = body::decode(data) {
        let _ = pkcs7::read_certs(&der);
        if let Ok((_, csr)) = X509CertificationRequest::from_der(&der) {
            let _ = binding::challenge_password(&csr);
        }
    }
});
