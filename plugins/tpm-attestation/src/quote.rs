//! Optional platform-state evidence: a `TPM2_Quote` by the AK over SHA-256 PCRs, with the
//! verifier's nonce as qualifying data (TPM 2.0 Part 2 §10.12 `TPMS_ATTEST`, §10.12.1 quote info).
//!
//! The verifier asks for PCR indices in the challenge; the agent returns the quote, its
//! signature and the PCR values; the verifier checks the signature, the nonce, the selection
//! and that the values hash to the quoted digest, then turns them into selectors.

use crate::error::{AttestationError, Result};
use crate::public_area::{Reader, ALG_SHA256};
use aws_lc_rs::digest;
use serde::{Deserialize, Serialize};

/// `TPM_GENERATED_VALUE`: the TPM made this structure.
const TPM_GENERATED: u32 = 0xff54_4347;
/// `TPM_ST_ATTEST_QUOTE`.
const ST_ATTEST_QUOTE: u16 = 0x8018;
/// Highest PCR index accepted.
pub const MAX_PCR_INDEX: u8 = 23;
/// Most PCRs one quote may cover (one `TPM2_PCR_Read` returns at most 8 digests).
pub const MAX_QUOTED_PCRS: usize = 8;

/// The agent's quote evidence.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PcrQuote {
    /// Marshalled `TPMS_ATTEST` the AK signed.
    #[serde(with = "crate::wire::b64")]
    pub attest: Vec<u8>,
    /// Raw RSA signature by the AK over `attest`.
    #[serde(with = "crate::wire::b64")]
    pub signature: Vec<u8>,
    /// SHA-256 PCR values, in the order of the challenge's `pcrs` (ascending index).
    #[serde(with = "crate::wire::b64_list")]
    pub pcr_values: Vec<Vec<u8>>,
}

/// Checks a requested PCR list: ascending, unique, within range, not too many.
pub fn check_pcr_request(pcrs: &[u8]) -> Result<()> {
    if pcrs.len() > MAX_QUOTED_PCRS {
        return Err(AttestationError::malformed(
            "PCR selection",
            format!("{} PCRs requested, at most {MAX_QUOTED_PCRS}", pcrs.len()),
        ));
    }
    if pcrs.iter().any(|p| *p > MAX_PCR_INDEX) || pcrs.windows(2).any(|w| w[0] >= w[1]) {
        return Err(AttestationError::malformed(
            "PCR selection",
            format!("PCR indices must be ascending, unique and at most {MAX_PCR_INDEX}: {pcrs:?}"),
        ));
    }
    Ok(())
}

/// What a checked quote says: the nonce it is bound to and the PCRs it covers.
struct QuoteInfo {
    extra_data: Vec<u8>,
    selected: Vec<u8>,
    pcr_digest: Vec<u8>,
}

fn parse_quote(attest: &[u8]) -> Result<QuoteInfo> {
    const WHAT: &str = "PCR quote";
    let mut r = Reader::new(attest, WHAT);
    if r.u32("magic")? != TPM_GENERATED {
        return Err(AttestationError::malformed(
            WHAT,
            "not TPM-generated (bad magic)",
        ));
    }
    if r.u16("type")? != ST_ATTEST_QUOTE {
        return Err(AttestationError::malformed(WHAT, "not a quote structure"));
    }
    r.tpm2b("qualifiedSigner")?;
    let extra_data = r.tpm2b("extraData")?.to_vec();
    // clockInfo: clock (8), resetCount (4), restartCount (4), safe (1); firmwareVersion (8).
    r.u32("clock")?;
    r.u32("clock")?;
    r.u32("resetCount")?;
    r.u32("restartCount")?;
    r.u8("safe")?;
    r.u32("firmwareVersion")?;
    r.u32("firmwareVersion")?;
    let count = r.u32("pcrSelect.count")?;
    let mut selected = Vec::new();
    for _ in 0..count.min(16) {
        let hash = r.u16("pcrSelect.hash")?;
        let size = r.u8("pcrSelect.sizeofSelect")? as usize;
        let bitmap = r.bytes(size, "pcrSelect.pcrSelect")?;
        for (byte_idx, byte) in bitmap.iter().enumerate() {
            for bit in 0..8 {
                if byte & (1 << bit) != 0 {
                    if hash != ALG_SHA256 {
                        return Err(AttestationError::malformed(
                            WHAT,
                            "quotes a bank other than SHA-256",
                        ));
                    }
                    selected.push((byte_idx * 8 + bit) as u8);
                }
            }
        }
    }
    let pcr_digest = r.tpm2b("pcrDigest")?.to_vec();
    r.finish()?;
    Ok(QuoteInfo {
        extra_data,
        selected,
        pcr_digest,
    })
}

/// Verifies a quote for `nonce` over `requested` PCRs; returns the selector values
/// `pcr:sha256:<index>:<hex value>`. `verify_signature` checks the AK's signature over the
/// attest bytes.
pub fn verify_quote(
    quote: &PcrQuote,
    nonce: &[u8],
    requested: &[u8],
    verify_signature: impl FnOnce(&[u8], &[u8]) -> bool,
) -> Result<Vec<String>> {
    if !verify_signature(&quote.attest, &quote.signature) {
        return Err(AttestationError::SignatureInvalid(
            "the AK's signature over the PCR quote does not verify".into(),
        ));
    }
    let info = parse_quote(&quote.attest)?;
    if info.extra_data != nonce {
        return Err(AttestationError::Challenge(
            "the PCR quote is not bound to this challenge's nonce".into(),
        ));
    }
    if info.selected != requested {
        return Err(AttestationError::Challenge(format!(
            "the PCR quote covers PCRs {:?}, the challenge asked for {requested:?}",
            info.selected
        )));
    }
    if quote.pcr_values.len() != requested.len() || quote.pcr_values.iter().any(|v| v.len() != 32) {
        return Err(AttestationError::malformed(
            "PCR quote",
            "one 32-byte SHA-256 value per requested PCR",
        ));
    }
    let mut ctx = digest::Context::new(&digest::SHA256);
    for v in &quote.pcr_values {
        ctx.update(v);
    }
    if ctx.finish().as_ref() != info.pcr_digest.as_slice() {
        return Err(AttestationError::Challenge(
            "the PCR values do not match the quoted PCR digest".into(),
        ));
    }
    Ok(requested
        .iter()
        .zip(&quote.pcr_values)
        .map(|(i, v)| format!("pcr:sha256:{i}:{}", hex::encode(v)))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attest(nonce: &[u8], pcrs: &[u8], values: &[[u8; 32]]) -> Vec<u8> {
        let mut b = TPM_GENERATED.to_be_bytes().to_vec();
        b.extend_from_slice(&ST_ATTEST_QUOTE.to_be_bytes());
        b.extend_from_slice(&[0, 2, 0, 0xB]);
        b.extend_from_slice(&(nonce.len() as u16).to_be_bytes());
        b.extend_from_slice(nonce);
        b.extend_from_slice(&[0; 17 + 8]);
        b.extend_from_slice(&1u32.to_be_bytes());
        b.extend_from_slice(&ALG_SHA256.to_be_bytes());
        let mut bitmap = [0u8; 3];
        for p in pcrs {
            bitmap[(*p / 8) as usize] |= 1 << (p % 8);
        }
        b.push(3);
        b.extend_from_slice(&bitmap);
        let mut ctx = digest::Context::new(&digest::SHA256);
        values.iter().for_each(|v| ctx.update(v));
        b.extend_from_slice(&32u16.to_be_bytes());
        b.extend_from_slice(ctx.finish().as_ref());
        b
    }

    fn quote(nonce: &[u8], pcrs: &[u8], values: &[[u8; 32]]) -> PcrQuote {
        PcrQuote {
            attest: attest(nonce, pcrs, values),
            signature: vec![1],
            pcr_values: values.iter().map(|v| v.to_vec()).collect(),
        }
    }

    #[test]
    fn good_quote_gives_pcr_selectors() {
        let q = quote(&[7; 32], &[0, 7], &[[0; 32], [0xAB; 32]]);
        let sel = verify_quote(&q, &[7; 32], &[0, 7], |_, _| true).unwrap();
        assert_eq!(sel[0], format!("pcr:sha256:0:{}", "00".repeat(32)));
        assert_eq!(sel[1], format!("pcr:sha256:7:{}", "ab".repeat(32)));
    }

    #[test]
    fn refusals() {
        let q = quote(&[7; 32], &[0, 7], &[[0; 32], [0xAB; 32]]);
        let e = verify_quote(&q, &[7; 32], &[0, 7], |_, _| false).unwrap_err();
        assert!(e.to_string().contains("signature"), "{e}");
        let e = verify_quote(&q, &[8; 32], &[0, 7], |_, _| true).unwrap_err();
        assert!(e.to_string().contains("nonce"), "{e}");
        let e = verify_quote(&q, &[7; 32], &[0, 1], |_, _| true).unwrap_err();
        assert!(e.to_string().contains("covers PCRs"), "{e}");
        let mut lied = q.clone();
        lied.pcr_values[1] = vec![0xCD; 32];
        let e = verify_quote(&lied, &[7; 32], &[0, 7], |_, _| true).unwrap_err();
        assert!(e.to_string().contains("do not match"), "{e}");
        for cut in 0..q.attest.len() {
            let mut t = q.clone();
            t.attest.truncate(cut);
            assert!(
                verify_quote(&t, &[7; 32], &[0, 7], |_, _| true).is_err(),
                "cut {cut}"
            );
        }
        assert!(check_pcr_request(&[7, 0]).is_err());
        assert!(check_pcr_request(&[24]).is_err());
        assert!(check_pcr_request(&[0, 1, 2, 3, 4, 5, 6, 7, 8]).is_err());
        assert!(check_pcr_request(&[0, 7, 23]).is_ok());
    }
}
