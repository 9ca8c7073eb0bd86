//! `/csrattrs` (RFC 7030 §4.5): what the client should put in its CSR. KeyGrid says
//! which key types policy accepts for the label's profile (an `id-ecPublicKey` attribute
//! whose values are the curves, or the key OIDs), the signature algorithm it prefers,
//! and, when channel binding is required, the challengePassword OID.

use crate::keys::ecdsa_der::tlv;

const CHALLENGE_PASSWORD: &[u8] = &[
    0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x09, 0x07,
];
const EC_PUBLIC_KEY: &[u8] = &[0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01];
const P256: &[u8] = &[0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
const P384: &[u8] = &[0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x22];
const P521: &[u8] = &[0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x23];
const ED25519: &[u8] = &[0x06, 0x03, 0x2b, 0x65, 0x70];
const RSA: &[u8] = &[
    0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01,
];
const ECDSA_SHA256: &[u8] = &[0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x02];
const ECDSA_SHA384: &[u8] = &[0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x03];

/// Encodes `CsrAttrs` for a profile whose policy allows `allowed_keys` (policy key type
/// names; `None` = unrestricted, where KeyGrid recommends ECDSA P-256).
pub fn encode(allowed_keys: Option<&[String]>, require_binding: bool) -> Vec<u8> {
    let recommended = ["ecdsa-p256".to_string()];
    let keys = allowed_keys.unwrap_or(&recommended);
    let mut items: Vec<Vec<u8>> = Vec::new();
    if require_binding {
        items.push(CHALLENGE_PASSWORD.to_vec());
    }
    let curves: Vec<&[u8]> = keys
        .iter()
        .filter_map(|k| match k.as_str() {
            "ecdsa-p256" => Some(P256),
            "ecdsa-p384" => Some(P384),
            "ecdsa-p521" => Some(P521),
            _ => None,
        })
        .collect();
    if !curves.is_empty() {
        let values: Vec<u8> = curves.concat();
        items.push(tlv(0x30, &[EC_PUBLIC_KEY, &tlv(0x31, &values)].concat()));
    }
    if keys.iter().any(|k| k == "ed25519") {
        items.push(ED25519.to_vec());
    }
    if keys.iter().any(|k| k == "rsa") {
        items.push(RSA.to_vec());
    }
    if keys.iter().any(|k| k == "ecdsa-p256") {
        items.push(ECDSA_SHA256.to_vec());
    } else if keys.iter().any(|k| k.starts_with("ecdsa-")) {
        items.push(ECDSA_SHA384.to_vec());
    }
    tlv(0x30, &items.concat())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn p384_policy_names_the_curve_and_binding() {
        let der = encode(Some(&["ecdsa-p384".to_string()]), true);
        assert_eq!(der[0], 0x30);
        let has = |needle: &[u8]| der.windows(needle.len()).any(|w| w == needle);
        assert!(has(CHALLENGE_PASSWORD) && has(EC_PUBLIC_KEY) && has(P384));
        assert!(!has(P256), "P-256 is not allowed and must not be offered");
        assert!(has(ECDSA_SHA384));
    }

    #[test]
    fn unrestricted_recommends_p256_without_binding() {
        let der = encode(None, false);
        let has = |needle: &[u8]| der.windows(needle.len()).any(|w| w == needle);
        assert!(has(P256) && has(ECDSA_SHA256) && !has(CHALLENGE_PASSWORD));
    }
}
