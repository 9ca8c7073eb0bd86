//! Converts the fixed-width `r || s` ECDSA signature PKCS#11 returns into the DER
//! `ECDSA-Sig-Value` that X.509 carries (RFC 3279 §2.2.3).
//!
//! No maintained crate in the tree does just this without pulling a whole curve
//! implementation, and the encoding is two positive INTEGERs in a SEQUENCE, so it is written
//! here and tested against aws-lc-rs's own DER signatures.

use super::KeyError;

/// Encodes `r || s` (each `scalar_len` bytes, big-endian) as a DER SEQUENCE of two INTEGERs.
pub fn fixed_to_der(fixed: &[u8], scalar_len: usize) -> Result<Vec<u8>, KeyError> {
    if fixed.len() != 2 * scalar_len {
        return Err(KeyError::Other(format!(
            "ECDSA signature has {} bytes, expected {}",
            fixed.len(),
            2 * scalar_len
        )));
    }
    let (r, s) = fixed.split_at(scalar_len);
    let r = der_integer(r);
    let s = der_integer(s);
    let mut out = Vec::with_capacity(r.len() + s.len() + 4);
    out.push(0x30);
    push_len(&mut out, r.len() + s.len());
    out.extend_from_slice(&r);
    out.extend_from_slice(&s);
    Ok(out)
}

/// Encodes an unsigned big-endian integer as a minimal positive DER INTEGER.
fn der_integer(bytes: &[u8]) -> Vec<u8> {
    let first_nonzero = bytes.iter().position(|&b| b != 0).unwrap_or(bytes.len());
    let trimmed = &bytes[first_nonzero..];
    let mut content = Vec::with_capacity(trimmed.len() + 1);
    if trimmed.is_empty() || trimmed[0] & 0x80 != 0 {
        content.push(0);
    }
    content.extend_from_slice(trimmed);
    let mut out = Vec::with_capacity(content.len() + 3);
    out.push(0x02);
    push_len(&mut out, content.len());
    out.extend_from_slice(&content);
    out
}

/// Encodes one DER tag-length-value (short tags only), for the few structures KeyGrid
/// encodes by hand.
pub fn tlv(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(content.len() + 4);
    out.push(tag);
    push_len(&mut out, content.len());
    out.extend_from_slice(content);
    out
}

fn push_len(out: &mut Vec<u8>, len: usize) {
    if len < 0x80 {
        out.push(len as u8);
    } else if len <= 0xff {
        out.extend_from_slice(&[0x81, len as u8]);
    } else {
        out.extend_from_slice(&[0x82, (len >> 8) as u8, len as u8]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_lc_rs::rand::SystemRandom;
    use aws_lc_rs::signature::{self, EcdsaKeyPair, KeyPair};

    /// A fixed signature converted to DER must verify with aws-lc-rs's ASN.1 verifier.
    #[test]
    fn converted_signatures_verify_as_der() {
        let rng = SystemRandom::new();
        for (sign_fixed, verify_asn1, len) in [
            (
                &signature::ECDSA_P256_SHA256_FIXED_SIGNING,
                &signature::ECDSA_P256_SHA256_ASN1,
                32,
            ),
            (
                &signature::ECDSA_P384_SHA384_FIXED_SIGNING,
                &signature::ECDSA_P384_SHA384_ASN1,
                48,
            ),
        ] {
            let pkcs8 = EcdsaKeyPair::generate_pkcs8(sign_fixed, &rng).unwrap();
            let key = EcdsaKeyPair::from_pkcs8(sign_fixed, pkcs8.as_ref()).unwrap();
            // Many signatures so that high-bit and leading-zero scalars both occur.
            for i in 0..200u32 {
                let msg = i.to_be_bytes();
                let fixed = key.sign(&rng, &msg).unwrap();
                let der = fixed_to_der(fixed.as_ref(), len).unwrap();
                signature::UnparsedPublicKey::new(verify_asn1, key.public_key().as_ref())
                    .verify(&msg, &der)
                    .unwrap();
            }
        }
    }

    #[test]
    fn wrong_length_is_an_error() {
        assert!(fixed_to_der(&[1u8; 63], 32).is_err());
    }

    #[test]
    fn integers_are_minimal_and_positive() {
        assert_eq!(der_integer(&[0, 0, 1]), vec![2, 1, 1]);
        assert_eq!(der_integer(&[0x80]), vec![2, 2, 0, 0x80]);
        assert_eq!(der_integer(&[0, 0]), vec![2, 1, 0]);
    }
}
