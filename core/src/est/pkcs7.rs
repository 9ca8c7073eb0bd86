//! Certs-only CMS SignedData ("degenerate PKCS#7"), the container EST uses for
//! `/cacerts` and enrollment responses (RFC 7030 §4.1.3, §4.2.3; RFC 5652 §5).
//!
//! Encoded by hand with DER TLVs: the structure is fixed (no signers, no digest
//! algorithms, no content), and RustCrypto `cms` would pull in a second `der`/`x509-cert`
//! generation next to the one `x509-ocsp` uses.

use crate::keys::ecdsa_der::tlv;

/// id-signedData, 1.2.840.113549.1.7.2.
const OID_SIGNED_DATA: [u8; 11] = [
    0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x07, 0x02,
];
/// id-data, 1.2.840.113549.1.7.1.
const OID_DATA: [u8; 11] = [
    0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x07, 0x01,
];

/// Encodes `certs` (DER certificates) as a certs-only SignedData ContentInfo, DER.
///
/// `certificates` is a SET OF, so its members are sorted by encoding as DER requires.
pub fn certs_only(certs: &[Vec<u8>]) -> Vec<u8> {
    let mut sorted: Vec<&Vec<u8>> = certs.iter().collect();
    sorted.sort();
    sorted.dedup();
    let cert_bytes: Vec<u8> = sorted.into_iter().flatten().copied().collect();
    let signed_data = [
        tlv(0x02, &[0x01]),     // version 1
        tlv(0x31, &[]),         // digestAlgorithms: empty SET
        tlv(0x30, &OID_DATA),   // encapContentInfo without content
        tlv(0xa0, &cert_bytes), // certificates [0] IMPLICIT
        tlv(0x31, &[]),         // signerInfos: empty SET
    ]
    .concat();
    tlv(
        0x30,
        &[&OID_SIGNED_DATA[..], &tlv(0xa0, &tlv(0x30, &signed_data))].concat(),
    )
}

/// One DER TLV split off its input: (tag, content, whole TLV, rest).
type Tlv<'a> = (u8, &'a [u8], &'a [u8], &'a [u8]);

/// Splits one DER TLV off `input`. Definite lengths only.
fn take(input: &[u8]) -> Option<Tlv<'_>> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n]
            .iter()
            .fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
        (len, &rest[n..])
    };
    if rest.len() < len {
        return None;
    }
    let header = input.len() - rest.len();
    Some((tag, &rest[..len], &input[..header + len], &rest[len..]))
}

/// Reads the certificates out of a certs-only SignedData (the inverse of [`certs_only`]),
/// for clients and tests. Returns `None` for anything else.
pub fn read_certs(der: &[u8]) -> Option<Vec<Vec<u8>>> {
    let (0x30, content_info, _, []) = take(der)? else {
        return None;
    };
    let (0x06, _, oid, rest) = take(content_info)? else {
        return None;
    };
    if oid != OID_SIGNED_DATA {
        return None;
    }
    let (0xa0, explicit, _, _) = take(rest)? else {
        return None;
    };
    let (0x30, signed_data, _, _) = take(explicit)? else {
        return None;
    };
    let (0x02, _, _, rest) = take(signed_data)? else {
        return None;
    };
    let (0x31, _, _, rest) = take(rest)? else {
        return None;
    };
    let (0x30, _, _, rest) = take(rest)? else {
        return None;
    };
    let (0xa0, mut certs, _, _) = take(rest)? else {
        return Some(Vec::new());
    };
    let mut out = Vec::new();
    while !certs.is_empty() {
        let (tag, _, whole, rest) = take(certs)?;
        if tag == 0x30 {
            out.push(whole.to_vec());
        }
        certs = rest;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert(cn: &str) -> Vec<u8> {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut p = rcgen::CertificateParams::new(vec![cn.to_string()]).unwrap();
        p.distinguished_name.push(rcgen::DnType::CommonName, cn);
        p.self_signed(&key).unwrap().der().to_vec()
    }

    #[test]
    fn certs_round_trip_sorted_and_deduplicated() {
        let (a, b) = (cert("a.example"), cert("b.example"));
        let der = certs_only(&[b.clone(), a.clone(), b.clone()]);
        let mut got = read_certs(&der).unwrap();
        let mut want = vec![a, b];
        want.sort();
        got.sort();
        assert_eq!(got, want);
    }

    #[test]
    fn other_structures_are_not_read() {
        assert!(read_certs(&[0x30, 0x00]).is_none());
        assert!(read_certs(b"not der").is_none());
        let c = cert("c.example");
        let mut der = certs_only(&[c]);
        der.push(0);
        assert!(read_certs(&der).is_none(), "trailing bytes");
    }
}
