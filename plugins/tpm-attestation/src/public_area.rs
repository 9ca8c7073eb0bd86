//! Parsing of TPM 2.0 public areas (`TPM2B_PUBLIC` / `TPMT_PUBLIC`, TPM 2.0 Part 2 §12.2)
//! without libtss2, so the verifier can run on a server that has no TPM stack.
//!
//! Only what attestation needs is decoded: RSA keys (EK and AK), their attributes, name
//! algorithm, symmetric definition and signing scheme. Anything else is refused with a reason.

use crate::error::{AttestationError, Result};
use aws_lc_rs::digest;
use aws_lc_rs::encoding::{AsDer, PublicKeyX509Der};
use aws_lc_rs::rsa::PublicKeyComponents;

/// `TPM_ALG_RSA`.
pub const ALG_RSA: u16 = 0x0001;
/// `TPM_ALG_AES`.
pub const ALG_AES: u16 = 0x0006;
/// `TPM_ALG_SHA256`.
pub const ALG_SHA256: u16 = 0x000B;
/// `TPM_ALG_NULL`.
pub const ALG_NULL: u16 = 0x0010;
/// `TPM_ALG_RSASSA` (PKCS#1 v1.5 signatures).
pub const ALG_RSASSA: u16 = 0x0014;
/// `TPM_ALG_RSAPSS`.
pub const ALG_RSAPSS: u16 = 0x0016;
/// `TPM_ALG_ECC`.
pub const ALG_ECC: u16 = 0x0023;
/// `TPM_ALG_CFB`.
pub const ALG_CFB: u16 = 0x0043;

/// Object attribute bits (`TPMA_OBJECT`, Part 2 §8.3) the verifier looks at.
pub mod attr {
    /// The key cannot be duplicated off this TPM.
    pub const FIXED_TPM: u32 = 1 << 1;
    /// The key cannot be duplicated to another parent.
    pub const FIXED_PARENT: u32 = 1 << 4;
    /// The TPM generated the private part itself.
    pub const SENSITIVE_DATA_ORIGIN: u32 = 1 << 5;
    /// User role may authorise with the auth value.
    pub const USER_WITH_AUTH: u32 = 1 << 6;
    /// Admin role needs a policy session.
    pub const ADMIN_WITH_POLICY: u32 = 1 << 7;
    /// Restricted: signs only TPM-generated or TPM-hashed data (or decrypts only TPM formats).
    pub const RESTRICTED: u32 = 1 << 16;
    /// Decryption key.
    pub const DECRYPT: u32 = 1 << 17;
    /// Signing key.
    pub const SIGN: u32 = 1 << 18;
}

/// Largest `TPMT_PUBLIC` accepted (an RSA-4096 key with a SHA-512 policy is well under this).
pub const MAX_PUBLIC_AREA: usize = 1024;

/// A symmetric definition (`TPMT_SYM_DEF_OBJECT`) of a storage key such as the EK.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SymmetricDef {
    /// Algorithm (`TPM_ALG_AES`).
    pub algorithm: u16,
    /// Key size in bits.
    pub key_bits: u16,
    /// Mode (`TPM_ALG_CFB`).
    pub mode: u16,
}

/// A decoded RSA public area: the fields attestation checks plus the exact bytes it was read
/// from, which the TPM name is computed over.
#[derive(Debug, Clone)]
pub struct PublicArea {
    /// `nameAlg`: hash used for the object's name (and for credential protection of an EK).
    pub name_alg: u16,
    /// `objectAttributes` bit field.
    pub attributes: u32,
    /// `authPolicy` digest.
    pub auth_policy: Vec<u8>,
    /// Symmetric definition; `None` for `TPM_ALG_NULL` (signing keys).
    pub symmetric: Option<SymmetricDef>,
    /// Signing/encryption scheme algorithm (`TPM_ALG_NULL` when unset).
    pub scheme: u16,
    /// Hash of the scheme, when the scheme has one.
    pub scheme_hash: Option<u16>,
    /// RSA key size in bits.
    pub key_bits: u16,
    /// RSA public exponent (the TPM's 0 already mapped to 65537).
    pub exponent: u32,
    /// RSA modulus, big-endian.
    pub modulus: Vec<u8>,
    /// The marshalled `TPMT_PUBLIC` (without the `TPM2B` size).
    tpmt: Vec<u8>,
}

/// Big-endian reader over TPM marshalled bytes; every read is bounds-checked.
pub(crate) struct Reader<'a> {
    buf: &'a [u8],
    what: &'static str,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(buf: &'a [u8], what: &'static str) -> Self {
        Self { buf, what }
    }

    fn take(&mut self, n: usize, field: &str) -> Result<&'a [u8]> {
        if self.buf.len() < n {
            return Err(AttestationError::malformed(
                self.what,
                format!(
                    "truncated at {field}: need {n} bytes, have {}",
                    self.buf.len()
                ),
            ));
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }

    pub(crate) fn u8(&mut self, field: &str) -> Result<u8> {
        Ok(self.take(1, field)?[0])
    }

    pub(crate) fn bytes(&mut self, n: usize, field: &str) -> Result<&'a [u8]> {
        self.take(n, field)
    }

    pub(crate) fn u16(&mut self, field: &str) -> Result<u16> {
        let b = self.take(2, field)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    pub(crate) fn u32(&mut self, field: &str) -> Result<u32> {
        let b = self.take(4, field)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// A `TPM2B_*`: 16-bit size then that many bytes.
    pub(crate) fn tpm2b(&mut self, field: &str) -> Result<&'a [u8]> {
        let n = self.u16(field)? as usize;
        self.take(n, field)
    }

    pub(crate) fn finish(&self) -> Result<()> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(AttestationError::malformed(
                self.what,
                format!("{} trailing bytes", self.buf.len()),
            ))
        }
    }
}

/// Digest size in bytes of a TPM hash algorithm this crate supports.
pub fn digest_len(alg: u16) -> Option<usize> {
    match alg {
        ALG_SHA256 => Some(32),
        _ => None,
    }
}

impl PublicArea {
    /// Parses a `TPM2B_PUBLIC` (size-prefixed), as the agent sends it.
    pub fn from_tpm2b(bytes: &[u8], what: &'static str) -> Result<Self> {
        let mut r = Reader::new(bytes, what);
        let inner = r.tpm2b("size")?;
        r.finish()?;
        Self::from_tpmt(inner, what)
    }

    /// Parses a `TPMT_PUBLIC`.
    pub fn from_tpmt(bytes: &[u8], what: &'static str) -> Result<Self> {
        if bytes.len() > MAX_PUBLIC_AREA {
            return Err(AttestationError::malformed(
                what,
                format!(
                    "{} bytes exceeds the {MAX_PUBLIC_AREA}-byte limit",
                    bytes.len()
                ),
            ));
        }
        let mut r = Reader::new(bytes, what);
        let key_type = r.u16("type")?;
        match key_type {
            ALG_RSA => {}
            ALG_ECC => {
                return Err(AttestationError::malformed(
                    what,
                    "ECC keys are not supported yet; use the RSA-2048 EK and an RSA AK",
                ))
            }
            other => {
                return Err(AttestationError::malformed(
                    what,
                    format!("unsupported key type 0x{other:04x}"),
                ))
            }
        }
        let name_alg = r.u16("nameAlg")?;
        let attributes = r.u32("objectAttributes")?;
        let auth_policy = r.tpm2b("authPolicy")?.to_vec();
        let sym_alg = r.u16("symmetric.algorithm")?;
        let symmetric = if sym_alg == ALG_NULL {
            None
        } else {
            let key_bits = r.u16("symmetric.keyBits")?;
            let mode = r.u16("symmetric.mode")?;
            Some(SymmetricDef {
                algorithm: sym_alg,
                key_bits,
                mode,
            })
        };
        let scheme = r.u16("scheme")?;
        // RSAES and NULL carry no details; the signing schemes and OAEP carry a hash.
        let scheme_hash = match scheme {
            ALG_NULL | 0x0015 => None,
            _ => Some(r.u16("scheme.hashAlg")?),
        };
        let key_bits = r.u16("keyBits")?;
        let exponent = match r.u32("exponent")? {
            0 => 65537,
            e => e,
        };
        let modulus = r.tpm2b("unique")?.to_vec();
        r.finish()?;
        if modulus.len() * 8 != key_bits as usize {
            return Err(AttestationError::malformed(
                what,
                format!(
                    "modulus is {} bits but keyBits says {key_bits}",
                    modulus.len() * 8
                ),
            ));
        }
        if !(2048..=4096).contains(&key_bits) {
            return Err(AttestationError::malformed(
                what,
                format!("RSA key size {key_bits} outside 2048..=4096"),
            ));
        }
        Ok(Self {
            name_alg,
            attributes,
            auth_policy,
            symmetric,
            scheme,
            scheme_hash,
            key_bits,
            exponent,
            modulus,
            tpmt: bytes.to_vec(),
        })
    }

    /// Whether every bit in `mask` is set.
    pub fn has(&self, mask: u32) -> bool {
        self.attributes & mask == mask
    }

    /// The TPM name of the object: `nameAlg || H_nameAlg(TPMT_PUBLIC)` (Part 1 §16).
    pub fn name(&self) -> Result<Vec<u8>> {
        let alg = match self.name_alg {
            ALG_SHA256 => &digest::SHA256,
            other => {
                return Err(AttestationError::malformed(
                    "public area",
                    format!("unsupported nameAlg 0x{other:04x} (only SHA-256)"),
                ))
            }
        };
        let mut name = self.name_alg.to_be_bytes().to_vec();
        name.extend_from_slice(digest::digest(alg, &self.tpmt).as_ref());
        Ok(name)
    }

    /// The RSA public key as `(n, e)` components for aws-lc-rs.
    pub fn rsa_components(&self) -> PublicKeyComponents<Vec<u8>> {
        // aws-lc-rs wants minimal big-endian integers (no leading zero bytes).
        let strip = |b: &[u8]| {
            b.iter()
                .skip_while(|x| **x == 0)
                .copied()
                .collect::<Vec<u8>>()
        };
        PublicKeyComponents {
            n: strip(&self.modulus),
            e: strip(&self.exponent.to_be_bytes()),
        }
    }

    /// The key as a DER `SubjectPublicKeyInfo`, the form EK hashes are computed over.
    pub fn spki_der(&self) -> Result<Vec<u8>> {
        let der: PublicKeyX509Der<'static> = self
            .rsa_components()
            .as_der()
            .map_err(|_| AttestationError::malformed("public area", "unusable RSA key"))?;
        Ok(der.as_ref().to_vec())
    }

    /// The marshalled `TPMT_PUBLIC` bytes.
    pub fn tpmt_bytes(&self) -> &[u8] {
        &self.tpmt
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Marshals an RSA `TPMT_PUBLIC` (test helper shared with the other modules' tests).
    pub(crate) fn rsa_tpmt(
        attributes: u32,
        symmetric: Option<SymmetricDef>,
        scheme: u16,
        scheme_hash: Option<u16>,
        modulus: &[u8],
    ) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(&ALG_RSA.to_be_bytes());
        b.extend_from_slice(&ALG_SHA256.to_be_bytes());
        b.extend_from_slice(&attributes.to_be_bytes());
        b.extend_from_slice(&0u16.to_be_bytes());
        match symmetric {
            None => b.extend_from_slice(&ALG_NULL.to_be_bytes()),
            Some(s) => {
                b.extend_from_slice(&s.algorithm.to_be_bytes());
                b.extend_from_slice(&s.key_bits.to_be_bytes());
                b.extend_from_slice(&s.mode.to_be_bytes());
            }
        }
        b.extend_from_slice(&scheme.to_be_bytes());
        if let Some(h) = scheme_hash {
            b.extend_from_slice(&h.to_be_bytes());
        }
        b.extend_from_slice(&((modulus.len() * 8) as u16).to_be_bytes());
        b.extend_from_slice(&0u32.to_be_bytes());
        b.extend_from_slice(&(modulus.len() as u16).to_be_bytes());
        b.extend_from_slice(modulus);
        b
    }

    pub(crate) fn tpm2b(inner: &[u8]) -> Vec<u8> {
        let mut b = (inner.len() as u16).to_be_bytes().to_vec();
        b.extend_from_slice(inner);
        b
    }

    #[test]
    fn parses_rsa_public_and_computes_name() {
        let modulus = vec![0xC5; 256];
        let tpmt = rsa_tpmt(
            attr::RESTRICTED | attr::SIGN,
            None,
            ALG_RSASSA,
            Some(ALG_SHA256),
            &modulus,
        );
        let p = PublicArea::from_tpm2b(&tpm2b(&tpmt), "AK public").unwrap();
        assert_eq!(p.modulus, modulus);
        assert_eq!(p.exponent, 65537);
        assert_eq!(p.scheme_hash, Some(ALG_SHA256));
        let name = p.name().unwrap();
        assert_eq!(&name[..2], &[0x00, 0x0B]);
        assert_eq!(&name[2..], digest::digest(&digest::SHA256, &tpmt).as_ref());
    }

    #[test]
    fn every_truncation_is_a_clear_error() {
        let tpmt = rsa_tpmt(0, None, ALG_RSASSA, Some(ALG_SHA256), &[0xC5; 256]);
        let full = tpm2b(&tpmt);
        for cut in 0..full.len() {
            let err = PublicArea::from_tpm2b(&full[..cut], "AK public").unwrap_err();
            assert!(
                matches!(err, AttestationError::Malformed { .. }),
                "cut {cut}: {err}"
            );
        }
        let mut long = full.clone();
        long.push(0);
        let err = PublicArea::from_tpm2b(&long, "AK public").unwrap_err();
        assert!(err.to_string().contains("trailing"), "{err}");
    }

    #[test]
    fn rejects_ecc_and_inconsistent_sizes() {
        let mut tpmt = rsa_tpmt(0, None, ALG_NULL, None, &[0xC5; 256]);
        tpmt[1] = 0x23;
        let err = PublicArea::from_tpmt(&tpmt, "EK public").unwrap_err();
        assert!(err.to_string().contains("ECC"), "{err}");
        let tpmt = rsa_tpmt(0, None, ALG_NULL, None, &[0xC5; 64]);
        let err = PublicArea::from_tpmt(&tpmt, "EK public").unwrap_err();
        assert!(err.to_string().contains("outside 2048"), "{err}");
    }
}
