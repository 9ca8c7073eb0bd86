//! `TPM2_MakeCredential` in software (TPM 2.0 Part 1 §24, Part 3 §12.6), so the verifier can
//! challenge a TPM without owning one.
//!
//! The credential (a fresh secret) is sealed so that only the TPM holding the EK's private key
//! can recover it, and only while the object named `ak_name` is loaded in that same TPM.
//! For an RSA EK: a random seed is RSA-OAEP-encrypted to the EK (label `"IDENTITY\0"`), the
//! seed derives (KDFa) an AES key that encrypts the credential and an HMAC key that binds the
//! ciphertext to the AK's name.

use crate::error::{AttestationError, Result};
use crate::public_area::{attr, digest_len, PublicArea, ALG_AES, ALG_CFB, ALG_SHA256};
use aws_lc_rs::cipher::{EncryptingKey, EncryptionContext, UnboundCipherKey, AES_128, AES_256};
use aws_lc_rs::hmac;
use aws_lc_rs::iv::FixedLength;
use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use aws_lc_rs::rsa::{OaepPublicEncryptingKey, PublicEncryptingKey, OAEP_SHA256_MGF1SHA256};

/// The OAEP label for credential seeds ("IDENTITY" with its terminating zero, Part 1 §24.4).
const IDENTITY_LABEL: &[u8] = b"IDENTITY\0";

/// A sealed credential as `TPM2_ActivateCredential` takes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SealedCredential {
    /// Contents of the `TPM2B_ID_OBJECT` (without its size): `TPM2B_DIGEST(integrity) || encIdentity`.
    pub credential_blob: Vec<u8>,
    /// Contents of the `TPM2B_ENCRYPTED_SECRET` (without its size): the OAEP-encrypted seed.
    pub encrypted_secret: Vec<u8>,
}

/// KDFa (Part 1 §11.4.10.2): SP 800-108 counter-mode KDF with HMAC-SHA-256.
///
/// `label` is given without its terminating zero; the zero is added as the spec requires.
pub fn kdfa_sha256(
    key: &[u8],
    label: &str,
    context_u: &[u8],
    context_v: &[u8],
    bits: u32,
) -> Vec<u8> {
    let hkey = hmac::Key::new(hmac::HMAC_SHA256, key);
    let want = (bits as usize).div_ceil(8);
    let mut out = Vec::with_capacity(want + 32);
    let mut counter: u32 = 1;
    while out.len() < want {
        let mut ctx = hmac::Context::with_key(&hkey);
        ctx.update(&counter.to_be_bytes());
        ctx.update(label.as_bytes());
        ctx.update(&[0]);
        ctx.update(context_u);
        ctx.update(context_v);
        ctx.update(&bits.to_be_bytes());
        out.extend_from_slice(ctx.sign().as_ref());
        counter += 1;
    }
    out.truncate(want);
    out
}

/// Checks that `ek` is a key MakeCredential can target: an RSA restricted decryption key with a
/// SHA-256 name algorithm and an AES-CFB symmetric definition (the TCG default EK templates).
pub fn check_ek_public(ek: &PublicArea) -> Result<()> {
    if !ek.has(attr::RESTRICTED | attr::DECRYPT) || ek.has(attr::SIGN) {
        return Err(AttestationError::EkPublic(
            "EK must be a restricted decryption key without the sign attribute".into(),
        ));
    }
    if !ek.has(attr::FIXED_TPM | attr::FIXED_PARENT | attr::SENSITIVE_DATA_ORIGIN) {
        return Err(AttestationError::EkPublic(
            "EK must have fixedTPM, fixedParent and sensitiveDataOrigin".into(),
        ));
    }
    if ek.name_alg != ALG_SHA256 {
        return Err(AttestationError::EkPublic(format!(
            "EK nameAlg 0x{:04x} unsupported (only SHA-256, the low-range EK template)",
            ek.name_alg
        )));
    }
    match ek.symmetric {
        Some(s)
            if s.algorithm == ALG_AES && s.mode == ALG_CFB && matches!(s.key_bits, 128 | 256) =>
        {
            Ok(())
        }
        other => Err(AttestationError::EkPublic(format!(
            "EK symmetric definition {other:?} unsupported (need AES-128-CFB or AES-256-CFB)"
        ))),
    }
}

/// Seals `credential` to the EK for the object named `ak_name`.
pub fn make_credential(
    ek: &PublicArea,
    ak_name: &[u8],
    credential: &[u8],
) -> Result<SealedCredential> {
    check_ek_public(ek)?;
    let digest_size =
        digest_len(ek.name_alg).ok_or(AttestationError::Crypto("EK name algorithm"))?;
    if credential.is_empty() || credential.len() > digest_size {
        return Err(AttestationError::Crypto(
            "credential must be 1..=digest size bytes",
        ));
    }
    let mut seed = vec![0u8; digest_size];
    SystemRandom::new()
        .fill(&mut seed)
        .map_err(|_| AttestationError::Crypto("random seed"))?;

    let ek_key: PublicEncryptingKey = ek.rsa_components().try_into().map_err(|_| {
        AttestationError::EkPublic("EK RSA key rejected by the crypto library".into())
    })?;
    let oaep =
        OaepPublicEncryptingKey::new(ek_key).map_err(|_| AttestationError::Crypto("OAEP key"))?;
    let mut encrypted_secret = vec![0u8; oaep.ciphertext_size()];
    let n = oaep
        .encrypt(
            &OAEP_SHA256_MGF1SHA256,
            &seed,
            &mut encrypted_secret,
            Some(IDENTITY_LABEL),
        )
        .map_err(|_| AttestationError::Crypto("RSA-OAEP encryption of the seed"))?
        .len();
    encrypted_secret.truncate(n);

    let credential_blob = seal_with_seed(ek, ak_name, credential, &seed)?;
    Ok(SealedCredential {
        credential_blob,
        encrypted_secret,
    })
}

/// The symmetric half of MakeCredential: given the seed, builds the `TPM2B_ID_OBJECT` contents.
fn seal_with_seed(
    ek: &PublicArea,
    ak_name: &[u8],
    credential: &[u8],
    seed: &[u8],
) -> Result<Vec<u8>> {
    let sym = ek
        .symmetric
        .ok_or(AttestationError::Crypto("EK symmetric definition"))?;
    let sym_key = kdfa_sha256(seed, "STORAGE", ak_name, &[], u32::from(sym.key_bits));
    let cipher = if sym.key_bits == 256 {
        &AES_256
    } else {
        &AES_128
    };

    // encIdentity = CFB(TPM2B_DIGEST(credential)), IV zero.
    let mut enc_identity = (credential.len() as u16).to_be_bytes().to_vec();
    enc_identity.extend_from_slice(credential);
    let key =
        UnboundCipherKey::new(cipher, &sym_key).map_err(|_| AttestationError::Crypto("AES key"))?;
    EncryptingKey::cfb128(key)
        .and_then(|k| {
            k.less_safe_encrypt(
                &mut enc_identity,
                EncryptionContext::Iv128(FixedLength::from([0u8; 16])),
            )
        })
        .map_err(|_| AttestationError::Crypto("AES-CFB encryption of the credential"))?;

    // outerHMAC = HMAC(KDFa(seed, "INTEGRITY"), encIdentity || AK name).
    let hmac_key = kdfa_sha256(seed, "INTEGRITY", &[], &[], 256);
    let mut ctx = hmac::Context::with_key(&hmac::Key::new(hmac::HMAC_SHA256, &hmac_key));
    ctx.update(&enc_identity);
    ctx.update(ak_name);
    let integrity = ctx.sign();

    let mut blob = (integrity.as_ref().len() as u16).to_be_bytes().to_vec();
    blob.extend_from_slice(integrity.as_ref());
    blob.extend_from_slice(&enc_identity);
    Ok(blob)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::public_area::tests::{rsa_tpmt, tpm2b};
    use crate::public_area::{SymmetricDef, ALG_NULL};
    use aws_lc_rs::cipher::{DecryptingKey, DecryptionContext};
    use aws_lc_rs::rsa::{KeySize, OaepPrivateDecryptingKey, PrivateDecryptingKey};

    const EK_ATTRS: u32 = attr::FIXED_TPM
        | attr::FIXED_PARENT
        | attr::SENSITIVE_DATA_ORIGIN
        | attr::ADMIN_WITH_POLICY
        | attr::RESTRICTED
        | attr::DECRYPT;

    fn ek_with_key(key: &PrivateDecryptingKey) -> PublicArea {
        use aws_lc_rs::encoding::{AsDer, PublicKeyX509Der};
        use x509_parser::prelude::FromDer;
        let der: PublicKeyX509Der = key.public_key().as_der().unwrap();
        // Pull the modulus out of the SPKI with x509-parser (independent of our own encoder).
        let (_, spki) = x509_parser::x509::SubjectPublicKeyInfo::from_der(der.as_ref()).unwrap();
        let modulus: Vec<u8> = match spki.parsed().unwrap() {
            x509_parser::public_key::PublicKey::RSA(rsa) => rsa
                .modulus
                .iter()
                .skip_while(|b| **b == 0)
                .copied()
                .collect(),
            _ => unreachable!("RSA key"),
        };
        let sym = SymmetricDef {
            algorithm: ALG_AES,
            key_bits: 128,
            mode: ALG_CFB,
        };
        let ek = PublicArea::from_tpm2b(
            &tpm2b(&rsa_tpmt(EK_ATTRS, Some(sym), ALG_NULL, None, &modulus)),
            "EK",
        )
        .unwrap();
        assert_eq!(
            ek.spki_der().unwrap(),
            der.as_ref(),
            "SPKI encoding round-trips"
        );
        ek
    }

    /// ActivateCredential as the TPM does it (Part 3 §12.5), written independently of the
    /// sealing code path: decrypt seed, check HMAC, decrypt identity.
    fn activate(
        key: &PrivateDecryptingKey,
        ak_name: &[u8],
        sealed: &SealedCredential,
    ) -> Option<Vec<u8>> {
        let oaep = OaepPrivateDecryptingKey::new(key.clone()).unwrap();
        let mut seed = vec![0u8; 512];
        let seed = oaep
            .decrypt(
                &OAEP_SHA256_MGF1SHA256,
                &sealed.encrypted_secret,
                &mut seed,
                Some(IDENTITY_LABEL),
            )
            .ok()?
            .to_vec();
        let blob = &sealed.credential_blob;
        let hlen = u16::from_be_bytes([blob[0], blob[1]]) as usize;
        let (integrity, enc_identity) = blob[2..].split_at(hlen);
        let hmac_key = kdfa_sha256(&seed, "INTEGRITY", &[], &[], 256);
        let mut msg = enc_identity.to_vec();
        msg.extend_from_slice(ak_name);
        hmac::verify(
            &hmac::Key::new(hmac::HMAC_SHA256, &hmac_key),
            &msg,
            integrity,
        )
        .ok()?;
        let sym_key = kdfa_sha256(&seed, "STORAGE", ak_name, &[], 128);
        let mut plain = enc_identity.to_vec();
        DecryptingKey::cfb128(UnboundCipherKey::new(&AES_128, &sym_key).unwrap())
            .unwrap()
            .decrypt(
                &mut plain,
                DecryptionContext::Iv128(FixedLength::from([0u8; 16])),
            )
            .unwrap();
        let n = u16::from_be_bytes([plain[0], plain[1]]) as usize;
        Some(plain[2..2 + n].to_vec())
    }

    #[test]
    fn kdfa_matches_the_counter_mode_definition() {
        // One block: HMAC(key, 00000001 || "STORAGE" || 00 || U || V || bits).
        let key = [7u8; 32];
        let mut msg = 1u32.to_be_bytes().to_vec();
        msg.extend_from_slice(b"STORAGE\0");
        msg.extend_from_slice(b"name");
        msg.extend_from_slice(&128u32.to_be_bytes());
        let expected = hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, &key), &msg);
        assert_eq!(
            kdfa_sha256(&key, "STORAGE", b"name", &[], 128),
            expected.as_ref()[..16]
        );
        // Two blocks for 512 bits, and the second block uses counter 2.
        let long = kdfa_sha256(&key, "INTEGRITY", &[], &[], 512);
        assert_eq!(long.len(), 64);
        let mut msg2 = 2u32.to_be_bytes().to_vec();
        msg2.extend_from_slice(b"INTEGRITY\0");
        msg2.extend_from_slice(&512u32.to_be_bytes());
        let second = hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, &key), &msg2);
        assert_eq!(&long[32..], second.as_ref());
    }

    #[test]
    fn sealed_credential_opens_only_for_the_named_key() {
        let key = PrivateDecryptingKey::generate(KeySize::Rsa2048).unwrap();
        let ek = ek_with_key(&key);
        let ak_name = [0x00, 0x0B]
            .iter()
            .chain([9u8; 32].iter())
            .copied()
            .collect::<Vec<_>>();
        let secret = [42u8; 32];
        let sealed = make_credential(&ek, &ak_name, &secret).unwrap();
        assert_eq!(sealed.encrypted_secret.len(), 256);
        assert_eq!(sealed.credential_blob.len(), 2 + 32 + 2 + 32);
        assert_eq!(
            activate(&key, &ak_name, &sealed).as_deref(),
            Some(&secret[..])
        );

        let mut other_name = ak_name.clone();
        other_name[5] ^= 1;
        assert_eq!(
            activate(&key, &other_name, &sealed),
            None,
            "bound to the AK name"
        );
        let other_key = PrivateDecryptingKey::generate(KeySize::Rsa2048).unwrap();
        assert_eq!(
            activate(&other_key, &ak_name, &sealed),
            None,
            "bound to the EK"
        );
    }

    #[test]
    fn refuses_signing_or_unrestricted_eks() {
        let key = PrivateDecryptingKey::generate(KeySize::Rsa2048).unwrap();
        let mut ek = ek_with_key(&key);
        ek.attributes |= attr::SIGN;
        let err = make_credential(&ek, &[0; 34], &[1; 32]).unwrap_err();
        assert!(err.to_string().contains("restricted decryption"), "{err}");
        ek.attributes &= !(attr::SIGN | attr::RESTRICTED);
        assert!(make_credential(&ek, &[0; 34], &[1; 32]).is_err());
    }
}
