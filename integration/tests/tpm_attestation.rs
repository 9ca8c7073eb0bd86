//! TPM node attestation against real swtpm TPMs provisioned by `swtpm_setup` with EK
//! certificates from private swtpm local CAs.
//!
//! The agent side runs tss-esapi against swtpm; the verifier runs in software. Every message
//! crosses the wire encoding (encode on one side, bounded decode on the other).

use keygrid_integration::swtpm::{LocalCa, Swtpm};
use keygrid_tpm_attestation::{
    AttestationData, AttestationError, AttestedNode, Challenge, ChallengeResponse, ManufacturerCas,
    TpmAttestor, Verifier, VerifierConfig, WireMessage,
};
use std::path::Path;
use x509_parser::prelude::FromDer;

const TRUST_DOMAIN: &str = "example.org";

/// A private local CA and `n` swtpm TPMs whose EK certificates it signed.
struct Lab {
    _dir: tempfile::TempDir,
    ca: LocalCa,
    tpms: Vec<Swtpm>,
}

impl Lab {
    fn new(n: usize) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let ca = LocalCa::new(dir.path());
        let tpms = (0..n)
            .map(|i| Swtpm::provision_and_start(&ca, &dir.path().join(format!("tpm{i}"))))
            .collect();
        Lab {
            _dir: dir,
            ca,
            tpms,
        }
    }

    fn cas(&self) -> ManufacturerCas {
        ManufacturerCas::from_pem_files(&[self.ca.root_cert(), self.ca.issuer_cert()])
            .expect("load local CA")
    }

    fn tpm(&self, i: usize) -> TpmAttestor {
        let tpm = &self.tpms[i];
        TpmAttestor::open(&tpm.tcti())
            .unwrap_or_else(|e| panic!("open swtpm {i}: {e}\n{}", tpm.log()))
    }
}

fn verifier(cas: ManufacturerCas, allow: Option<&[String]>) -> Verifier {
    let mut cfg = VerifierConfig::new(TRUST_DOMAIN, cas);
    cfg.allowed_ek_hashes = allow.map(|a| a.iter().cloned().collect());
    Verifier::new(cfg).expect("verifier config")
}

/// Agent → verifier → agent → verifier, through the wire encoding.
fn challenge(v: &Verifier, data: &AttestationData) -> Result<Challenge, AttestationError> {
    let data = AttestationData::decode(&data.encode())?;
    let c = v.challenge(&data)?;
    Challenge::decode(&c.encode())
}

fn attest(
    tpm: &mut TpmAttestor,
    v: &Verifier,
) -> Result<(AttestedNode, ChallengeResponse), AttestationError> {
    let c = challenge(v, tpm.attestation_data())?;
    let response = ChallengeResponse::decode(&tpm.answer(&c)?.encode())?;
    Ok((v.verify(&response)?, response))
}

/// The EK hash computed independently of the crate: SHA-256 of the SubjectPublicKeyInfo DER
/// as it appears inside the EK certificate swtpm_localca issued.
fn ek_hash_from_certificate(tpm: &TpmAttestor) -> String {
    let der = tpm
        .attestation_data()
        .ek_certificate
        .as_ref()
        .expect("swtpm has an EK certificate");
    let (_, cert) =
        x509_parser::certificate::X509Certificate::from_der(der).expect("EK certificate parses");
    hex::encode(aws_lc_rs::digest::digest(
        &aws_lc_rs::digest::SHA256,
        cert.public_key().raw,
    ))
}

fn file_len(p: &Path) -> u64 {
    std::fs::metadata(p).map(|m| m.len()).unwrap_or(0)
}

#[test]
fn full_attestation_yields_spiffe_id_with_ek_hash() {
    let lab = Lab::new(1);
    assert!(
        file_len(&lab.ca.root_cert()) > 0,
        "swtpm_localca created a root CA"
    );
    let mut tpm = lab.tpm(0);
    let data = tpm.attestation_data().clone();
    assert!(
        data.ek_certificate.is_some(),
        "EK certificate read from NV 0x01c00002"
    );

    let v = verifier(lab.cas(), None);
    let (node, _) = attest(&mut tpm, &v).expect("attestation with swtpm succeeds");
    let hash = ek_hash_from_certificate(&tpm);
    assert_eq!(
        node.spiffe_id,
        format!("spiffe://{TRUST_DOMAIN}/spire/agent/keygrid_tpm/{hash}")
    );
    assert_eq!(
        node.selectors(),
        vec![
            format!("keygrid_tpm:ek_hash:{hash}"),
            // swtpm's EK certificate carries the TCG manufacturer attribute of IBM's TPM code.
            "keygrid_tpm:ek_manufacturer:id:00001014".to_string(),
        ]
    );
    assert_eq!(v.outstanding_challenges(), 0);

    // A second attestation of the same TPM (new AK, new challenge) gives the same identity.
    drop(tpm);
    let mut again = lab.tpm(0);
    assert_ne!(
        again.attestation_data().ak_name,
        data.ak_name,
        "each attestation uses a fresh AK"
    );
    let (node2, _) = attest(&mut again, &v).expect("re-attestation succeeds");
    assert_eq!(node2.spiffe_id, node.spiffe_id);
}

#[test]
fn replayed_response_is_refused() {
    let lab = Lab::new(1);
    let mut tpm = lab.tpm(0);
    let v = verifier(lab.cas(), None);
    let (_, response) = attest(&mut tpm, &v).expect("first attestation succeeds");
    let err = v.verify(&response).expect_err("replay must be refused");
    assert!(matches!(err, AttestationError::Challenge(_)), "{err}");
    assert!(err.to_string().contains("already answered"), "{err}");
}

#[test]
fn ek_certificate_from_unknown_ca_is_refused() {
    // swtpm_localca creates a CA on its first provisioning, so each lab provisions one TPM.
    let trusted = Lab::new(1);
    let untrusted = Lab::new(1);
    let mut tpm = untrusted.tpm(0);
    let v = verifier(trusted.cas(), None);
    let err = attest(&mut tpm, &v).expect_err("EK from another CA must be refused");
    assert!(matches!(err, AttestationError::EkUntrusted(_)), "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains("does not chain to any configured manufacturer CA")
            && msg.contains("swtpm-localca"),
        "{msg}"
    );
    assert_eq!(
        v.outstanding_challenges(),
        0,
        "no challenge issued for an untrusted EK"
    );
}

#[test]
fn ak_from_a_different_tpm_than_the_ek_is_refused() {
    let lab = Lab::new(2);
    let mut a = lab.tpm(0);
    let mut b = lab.tpm(1);
    let v = verifier(lab.cas(), None);

    // TPM A's EK (certificate and public) with TPM B's AK.
    let mut mixed = a.attestation_data().clone();
    mixed.ak_public = b.attestation_data().ak_public.clone();
    mixed.ak_name = b.attestation_data().ak_name.clone();
    let c = challenge(&v, &mixed).expect("EK and AK each look valid on their own");

    // Neither TPM can open the credential: B lacks A's EK, A does not hold B's AK.
    let err_b = b
        .answer(&c)
        .expect_err("TPM B cannot activate a credential sealed to A's EK");
    assert!(
        err_b.to_string().contains("activating the credential"),
        "{err_b}"
    );
    let err_a = a
        .answer(&c)
        .expect_err("TPM A cannot activate a credential bound to B's AK");
    assert!(
        err_a.to_string().contains("activating the credential"),
        "{err_a}"
    );

    // The best B can send is a guess with a valid AK signature: the verifier refuses it.
    let forged = ChallengeResponse {
        version: c.version,
        nonce: c.nonce.clone(),
        activated_secret: vec![0; 32],
        nonce_signature: b.sign_nonce(&c.nonce).expect("B's AK signs"),
        pcr_quote: None,
    };
    let err = v
        .verify(&forged)
        .expect_err("forged activation must be refused");
    assert!(
        matches!(err, AttestationError::ActivationFailed(_)),
        "{err}"
    );
    assert!(err.to_string().contains("not in the same TPM"), "{err}");

    // And A's EK certificate with B's EK public is caught before any challenge.
    let mut swapped = a.attestation_data().clone();
    swapped.ek_public = b.attestation_data().ek_public.clone();
    let err = challenge(&v, &swapped).expect_err("certificate/key mismatch must be refused");
    assert!(err.to_string().contains("not the EK public key"), "{err}");
}

#[test]
fn tpm_not_on_the_allow_list_is_refused() {
    let lab = Lab::new(2);
    let mut a = lab.tpm(0);
    let mut b = lab.tpm(1);
    let allowed = vec![ek_hash_from_certificate(&a)];
    let v = verifier(lab.cas(), Some(&allowed));
    let (node, _) = attest(&mut a, &v).expect("allow-listed TPM attests");
    assert!(node.spiffe_id.ends_with(&allowed[0]));
    let err = attest(&mut b, &v).expect_err("second TPM is not on the allow-list");
    assert!(matches!(err, AttestationError::PolicyRefused(_)), "{err}");
    assert!(err.to_string().contains("not on the allow-list"), "{err}");
    assert!(
        err.to_string().contains(&ek_hash_from_certificate(&b)),
        "{err}"
    );
}

#[test]
fn allow_listed_tpm_without_ek_certificate_attests() {
    let lab = Lab::new(1);
    let mut tpm = lab.tpm(0);
    let hash = ek_hash_from_certificate(&tpm);
    // Present only the EK public, as a TPM without an EK certificate in NV would.
    let mut data = tpm.attestation_data().clone();
    data.ek_certificate = None;
    let v = verifier(
        ManufacturerCas::default(),
        Some(std::slice::from_ref(&hash)),
    );
    let c = challenge(&v, &data).expect("allow-listed EK without certificate gets a challenge");
    let node = v
        .verify(&tpm.answer(&c).expect("TPM answers"))
        .expect("attests");
    assert_eq!(node.selector_values, vec![format!("ek_hash:{hash}")]);
}

#[test]
fn pcr_quote_yields_pcr_selectors_and_lies_are_refused() {
    let lab = Lab::new(1);
    // Extend PCR 16 with a known digest: PCR16 = SHA-256(0^32 || d).
    let d = [0x5au8; 32];
    let out = std::process::Command::new(keygrid_integration::require_tool(
        "tpm2_pcrextend",
        "run scripts/install-deps.sh (Debian package tpm2-tools)",
    ))
    .arg(format!("16:sha256={}", hex::encode(d)))
    .env("TPM2TOOLS_TCTI", lab.tpms[0].tcti())
    .output()
    .expect("run tpm2_pcrextend");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    ctx.update(&[0u8; 32]);
    ctx.update(&d);
    let pcr16 = hex::encode(ctx.finish());

    let mut cfg = VerifierConfig::new(TRUST_DOMAIN, lab.cas());
    cfg.quote_pcrs = vec![0, 16];
    let v = Verifier::new(cfg).expect("verifier");
    let mut tpm = lab.tpm(0);
    let (node, _) = attest(&mut tpm, &v).expect("attestation with a PCR quote succeeds");
    assert!(
        node.selector_values
            .contains(&format!("pcr:sha256:0:{}", "00".repeat(32))),
        "{node:?}"
    );
    assert!(
        node.selector_values
            .contains(&format!("pcr:sha256:16:{pcr16}")),
        "{node:?}"
    );

    // An agent that lies about a PCR value is caught by the quoted digest.
    let c = challenge(&v, tpm.attestation_data()).expect("challenge");
    assert_eq!(c.pcrs, vec![0, 16]);
    let mut response = tpm.answer(&c).expect("TPM answers");
    response.pcr_quote.as_mut().expect("quote sent").pcr_values[1] = vec![0; 32];
    let err = v
        .verify(&response)
        .expect_err("lying about PCRs must be refused");
    assert!(
        err.to_string()
            .contains("do not match the quoted PCR digest"),
        "{err}"
    );

    // And a response without the quote is refused when one was asked for.
    let c = challenge(&v, tpm.attestation_data()).expect("challenge");
    let mut response = tpm.answer(&c).expect("TPM answers");
    response.pcr_quote = None;
    let err = v
        .verify(&response)
        .expect_err("missing quote must be refused");
    assert!(err.to_string().contains("asked for a PCR quote"), "{err}");
}
