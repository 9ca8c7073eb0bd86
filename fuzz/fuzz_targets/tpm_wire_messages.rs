//! Every TPM enrollment and attestation message a peer can send: decoding (size limit,
//! JSON, version, field bounds) must refuse bad input with an error, never panic.
#![no_main]

use keygrid_tpm_attestation::{
    AttestationData, Challenge, ChallengeResponse, EnrollmentFinish, EnrollmentStart, WireMessage,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = EnrollmentStart::decode(data);
    let _ = EnrollmentFinish::decode(data);
    let _ = AttestationData::decode(data);
    let _ = Challenge::decode(data);
    let _ = ChallengeResponse::decode(data);
});
