//! The PKCS#1 `RSAPublicKey` structure (RFC 8017 §A.1.1): built from the modulus and exponent
//! a PKCS#11 token reports, and taken apart again for JWKs (`n`, `e`).
//!
//! X.509 and rcgen carry an RSA key as this DER inside the SubjectPublicKeyInfo bit string,
//! so it is the one form KeyGrid keeps for every RSA key, wherever it lives.

use der::asn1::UintRef;
use der::{Decode, Encode, Header, Reader, SliceReader, Tag};

use super::KeyError;

fn der_err(what: &'static str) -> impl FnOnce(der::Error) -> KeyError {
    move |e| KeyError::Other(format!("{what}: {e}"))
}

/// Encodes `SEQUENCE { modulus INTEGER, publicExponent INTEGER }` from big-endian unsigned
/// bytes (leading zeros allowed).
pub fn encode(modulus: &[u8], exponent: &[u8]) -> Result<Vec<u8>, KeyError> {
    let n = UintRef::new(modulus).map_err(der_err("RSA modulus"))?;
    let e = UintRef::new(exponent).map_err(der_err("RSA exponent"))?;
    let body = (n.encoded_len().map_err(der_err("RSA modulus"))?
        + e.encoded_len().map_err(der_err("RSA exponent"))?)
    .map_err(der_err("RSA public key length"))?;
    let mut out = Vec::new();
    Header::new(Tag::Sequence, body)
        .map_err(der_err("RSA public key header"))?
        .encode_to_vec(&mut out)
        .map_err(der_err("RSA public key header"))?;
    n.encode_to_vec(&mut out).map_err(der_err("RSA modulus"))?;
    e.encode_to_vec(&mut out).map_err(der_err("RSA exponent"))?;
    Ok(out)
}

/// Splits a DER `RSAPublicKey` into its modulus and exponent (minimal big-endian bytes).
pub fn decode(der_bytes: &[u8]) -> Result<(Vec<u8>, Vec<u8>), KeyError> {
    let mut reader = SliceReader::new(der_bytes).map_err(der_err("RSA public key"))?;
    let (n, e) = reader
        .sequence(|r| {
            let n = UintRef::decode(r)?;
            let e = UintRef::decode(r)?;
            Ok((n.as_bytes().to_vec(), e.as_bytes().to_vec()))
        })
        .map_err(der_err("RSA public key"))?;
    reader.finish(()).map_err(der_err("RSA public key"))?;
    Ok((n, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_matches_aws_lc_encoding() {
        use aws_lc_rs::signature::KeyPair;
        let key = aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).unwrap();
        let reference = key.public_key().as_ref().to_vec();
        let (n, e) = decode(&reference).unwrap();
        assert_eq!(n.len(), 256);
        assert_eq!(e, vec![1, 0, 1]);
        // Leading zero bytes, as some tokens return them, do not change the encoding.
        let mut padded = vec![0u8];
        padded.extend_from_slice(&n);
        assert_eq!(encode(&padded, &[0, 1, 0, 1]).unwrap(), reference);
    }

    #[test]
    fn refuses_garbage_and_trailing_bytes() {
        assert!(decode(&[0x30, 0x03, 0x02, 0x01]).is_err());
        assert!(decode(b"not der").is_err());
        let key = aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).unwrap();
        use aws_lc_rs::signature::KeyPair;
        let mut der_bytes = key.public_key().as_ref().to_vec();
        der_bytes.push(0);
        assert!(decode(&der_bytes).is_err());
    }
}
