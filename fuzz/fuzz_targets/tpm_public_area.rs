//! TPM2B_PUBLIC areas (EK, AK and enrollment keys) as a peer sends them: parsing, and the
//! name and SubjectPublicKeyInfo computed from a parsed area, must never panic.
#![no_main]

use keygrid_tpm_attestation::public_area::PublicArea;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(area) = PublicArea::from_tpm2b(data, "fuzzed public area") {
        let _ = area.name();
        let _ = area.spki_der();
    }
});
