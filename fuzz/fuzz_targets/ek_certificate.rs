//! EK certificates as a TPM presents them: the size limit, DER parsing and the checks made
//! before the chain is built must refuse bad input with an error, never panic. (With no
//! manufacturer CA configured, nothing fuzzed here gets past the chain check.)
#![no_main]

use keygrid_tpm_attestation::ek_certificate::verify_ek_certificate;
use keygrid_tpm_attestation::ManufacturerCas;
use libfuzzer_sys::fuzz_target;
use x509_parser::time::ASN1Time;

fuzz_target!(|data: &[u8]| {
    let _ = verify_ek_certificate(data, &ManufacturerCas::default(), ASN1Time::now());
});
