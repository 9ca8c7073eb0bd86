//! EK certificate checks: the certificate chains to a configured TPM manufacturer CA, and what
//! it says about the TPM (manufacturer, model) becomes selectors.
//!
//! EK certificates are not TLS certificates (empty subjects, a critical SAN holding a directory
//! name with TCG attributes, the TCG EK EKU), so they are checked here directly rather than with
//! a web PKI verifier: signature by issuer, validity, CA basic constraints on issuers, and a
//! path to a self-signed certificate from the configured files.

use crate::error::{AttestationError, Result};
use std::path::Path;
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::prelude::FromDer;
use x509_parser::public_key::PublicKey;
use x509_parser::time::ASN1Time;

/// Largest EK certificate accepted.
pub const MAX_EK_CERT: usize = 8 * 1024;
/// Longest chain (EK certificate excluded) walked towards a root.
const MAX_CHAIN_DEPTH: usize = 4;
/// `tcg-at-tpmManufacturer` (TCG EK Credential Profile §3.1.2).
const OID_TPM_MANUFACTURER: &str = "2.23.133.2.1";
/// `tcg-at-tpmModel`.
const OID_TPM_MODEL: &str = "2.23.133.2.2";

/// The manufacturer CA certificates an operator trusts to vouch for EKs.
///
/// Self-signed certificates are trust anchors; any other certificate in the set is only an
/// intermediate that must itself chain to an anchor.
#[derive(Debug, Clone, Default)]
pub struct ManufacturerCas {
    certs: Vec<Vec<u8>>,
}

/// What a verified EK certificate tells about the TPM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EkCertificateInfo {
    /// The TPM manufacturer from the certificate's TCG attributes (e.g. `id:00001014`), or the
    /// issuer's common name when the certificate has none.
    pub manufacturer: String,
    /// The TPM model from the TCG attributes, if present.
    pub model: Option<String>,
    /// Subject of the anchor the chain ended at.
    pub anchor_subject: String,
}

impl ManufacturerCas {
    /// Loads every certificate from the given PEM files.
    pub fn from_pem_files<P: AsRef<Path>>(paths: &[P]) -> Result<Self> {
        let mut cas = Self::default();
        for path in paths {
            let path = path.as_ref();
            let text = std::fs::read(path).map_err(|e| {
                AttestationError::Config(format!(
                    "cannot read manufacturer CA file {}: {e}",
                    path.display()
                ))
            })?;
            let added = cas.add_pem(&text).map_err(|e| {
                AttestationError::Config(format!("manufacturer CA file {}: {e}", path.display()))
            })?;
            if added == 0 {
                return Err(AttestationError::Config(format!(
                    "manufacturer CA file {} holds no CERTIFICATE block",
                    path.display()
                )));
            }
        }
        Ok(cas)
    }

    /// Adds every `CERTIFICATE` block of a PEM text; returns how many were added.
    pub fn add_pem(&mut self, pem_text: &[u8]) -> Result<usize> {
        let blocks = pem::parse_many(pem_text)
            .map_err(|e| AttestationError::Config(format!("bad PEM: {e}")))?;
        let mut n = 0;
        for block in blocks.into_iter().filter(|b| b.tag() == "CERTIFICATE") {
            self.add_der(block.contents().to_vec())?;
            n += 1;
        }
        Ok(n)
    }

    /// Adds one DER certificate.
    pub fn add_der(&mut self, der: Vec<u8>) -> Result<()> {
        parse_whole(&der)
            .map_err(|e| AttestationError::Config(format!("bad CA certificate: {e}")))?;
        self.certs.push(der);
        Ok(())
    }

    /// Whether no CA is configured (then only allow-listed EKs can attest).
    pub fn is_empty(&self) -> bool {
        self.certs.is_empty()
    }
}

fn parse_whole(der: &[u8]) -> std::result::Result<X509Certificate<'_>, String> {
    match X509Certificate::from_der(der) {
        Ok(([], cert)) => Ok(cert),
        Ok((rest, _)) => Err(format!(
            "{} trailing bytes after the certificate",
            rest.len()
        )),
        Err(e) => Err(format!("not a DER X.509 certificate ({e})")),
    }
}

/// RSA `(modulus, exponent)` of a certificate's key, leading zeros stripped.
pub(crate) fn rsa_key_of(der: &[u8]) -> Result<(Vec<u8>, Vec<u8>)> {
    let cert = parse_whole(der).map_err(AttestationError::EkCertificate)?;
    match cert.public_key().parsed() {
        Ok(PublicKey::RSA(rsa)) => Ok((strip(rsa.modulus), strip(rsa.exponent))),
        Ok(_) => Err(AttestationError::EkCertificate(
            "EK certificate key is not RSA".into(),
        )),
        Err(e) => Err(AttestationError::EkCertificate(format!(
            "EK certificate key unreadable: {e}"
        ))),
    }
}

fn strip(b: &[u8]) -> Vec<u8> {
    b.iter().skip_while(|x| **x == 0).copied().collect()
}

/// Verifies an EK certificate against the manufacturer CAs at time `now`.
pub fn verify_ek_certificate(
    der: &[u8],
    cas: &ManufacturerCas,
    now: ASN1Time,
) -> Result<EkCertificateInfo> {
    if der.len() > MAX_EK_CERT {
        return Err(AttestationError::EkCertificate(format!(
            "{} bytes exceeds the {MAX_EK_CERT}-byte limit",
            der.len()
        )));
    }
    let ek = parse_whole(der).map_err(AttestationError::EkCertificate)?;
    if !ek.validity().is_valid_at(now) {
        return Err(AttestationError::EkCertificate(format!(
            "outside its validity ({} to {})",
            ek.validity().not_before,
            ek.validity().not_after
        )));
    }
    if ek.is_ca() {
        return Err(AttestationError::EkCertificate(
            "is a CA certificate, not an EK certificate".into(),
        ));
    }
    if cas.is_empty() {
        return Err(AttestationError::EkUntrusted(
            "no manufacturer CA is configured".into(),
        ));
    }
    let parsed: Vec<X509Certificate<'_>> = cas
        .certs
        .iter()
        .filter_map(|d| parse_whole(d).ok())
        .collect();
    let anchor = find_path(&ek, &parsed, now, 0).ok_or_else(|| {
        AttestationError::EkUntrusted(format!(
            "issuer \"{}\" does not chain to any configured manufacturer CA ({} configured)",
            ek.issuer(),
            parsed.len()
        ))
    })?;
    let (manufacturer, model) = tcg_attributes(&ek);
    let manufacturer = manufacturer
        .or_else(|| {
            ek.issuer()
                .iter_common_name()
                .next()
                .and_then(|cn| cn.as_str().ok())
                .map(str::to_string)
        })
        .unwrap_or_else(|| "unknown".to_string());
    Ok(EkCertificateInfo {
        manufacturer: selector_safe(&manufacturer),
        model: model.map(|m| selector_safe(&m)),
        anchor_subject: anchor,
    })
}

/// Depth-first search for a path from `cert` to a self-signed configured CA; returns its subject.
fn find_path(
    cert: &X509Certificate<'_>,
    cas: &[X509Certificate<'_>],
    now: ASN1Time,
    depth: usize,
) -> Option<String> {
    if depth > MAX_CHAIN_DEPTH {
        return None;
    }
    for ca in cas {
        if ca.subject().as_raw() != cert.issuer().as_raw()
            || !ca.is_ca()
            || !ca.validity().is_valid_at(now)
            || cert.verify_signature(Some(ca.public_key())).is_err()
        {
            continue;
        }
        let self_signed =
            ca.subject().as_raw() == ca.issuer().as_raw() && ca.verify_signature(None).is_ok();
        if self_signed {
            return Some(ca.subject().to_string());
        }
        if let Some(anchor) = find_path(ca, cas, now, depth + 1) {
            return Some(anchor);
        }
    }
    None
}

/// Reads the TCG manufacturer and model from the SAN directory name.
fn tcg_attributes(cert: &X509Certificate<'_>) -> (Option<String>, Option<String>) {
    let mut manufacturer = None;
    let mut model = None;
    for ext in cert.extensions() {
        let ParsedExtension::SubjectAlternativeName(san) = ext.parsed_extension() else {
            continue;
        };
        for name in &san.general_names {
            let GeneralName::DirectoryName(dn) = name else {
                continue;
            };
            for attr in dn.iter_attributes() {
                let value = attr.as_str().ok().map(str::to_string);
                match attr.attr_type().to_id_string().as_str() {
                    OID_TPM_MANUFACTURER => manufacturer = manufacturer.or(value),
                    OID_TPM_MODEL => model = model.or(value),
                    _ => {}
                }
            }
        }
    }
    (manufacturer, model)
}

/// Keeps selector values to a conservative character set.
fn selector_safe(s: &str) -> String {
    s.chars()
        .take(64)
        .map(|c| {
            if c.is_ascii_alphanumeric() || ":._- ".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{
        BasicConstraints, CertificateParams, CustomExtension, DnType, IsCa, Issuer, KeyPair,
    };

    struct Ca {
        cert: rcgen::Certificate,
        issuer: Issuer<'static, KeyPair>,
    }

    fn ca(name: &str, parent: Option<&Ca>) -> Ca {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.distinguished_name.push(DnType::CommonName, name);
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let cert = match parent {
            None => p.self_signed(&key).unwrap(),
            Some(parent) => p.signed_by(&key, &parent.issuer).unwrap(),
        };
        Ca {
            cert,
            issuer: Issuer::new(p, key),
        }
    }

    /// A leaf shaped like a TPM EK certificate: critical SAN with a TCG directory name.
    fn ek_cert(issuer: &Ca) -> Vec<u8> {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        // SAN: [4] directoryName { SET { SEQ { OID 2.23.133.2.1, UTF8 "id:00001014" } } }
        let oid = [0x06, 0x05, 0x67, 0x81, 0x05, 0x02, 0x01];
        let val = b"id:00001014";
        let mut atv = oid.to_vec();
        atv.extend_from_slice(&[0x0c, val.len() as u8]);
        atv.extend_from_slice(val);
        let seq = [&[0x30, atv.len() as u8][..], &atv].concat();
        let set = [&[0x31, seq.len() as u8][..], &seq].concat();
        let rdn_seq = [&[0x30, set.len() as u8][..], &set].concat();
        let dirname = [&[0xa4, rdn_seq.len() as u8][..], &rdn_seq].concat();
        let san = [&[0x30, dirname.len() as u8][..], &dirname].concat();
        let mut ext = CustomExtension::from_oid_content(&[2, 5, 29, 17], san);
        ext.set_criticality(true);
        p.custom_extensions.push(ext);
        p.signed_by(&key, &issuer.issuer).unwrap().der().to_vec()
    }

    fn cas(list: &[&Ca]) -> ManufacturerCas {
        let mut c = ManufacturerCas::default();
        for ca in list {
            c.add_der(ca.cert.der().to_vec()).unwrap();
        }
        c
    }

    #[test]
    fn accepts_chain_through_intermediate_and_reads_manufacturer() {
        let root = ca("tpm-root", None);
        let issuing = ca("tpm-issuing", Some(&root));
        let ek = ek_cert(&issuing);
        let info = verify_ek_certificate(&ek, &cas(&[&root, &issuing]), ASN1Time::now()).unwrap();
        assert_eq!(info.manufacturer, "id:00001014");
        assert!(info.anchor_subject.contains("tpm-root"));
    }

    #[test]
    fn intermediate_alone_is_not_an_anchor() {
        let root = ca("tpm-root", None);
        let issuing = ca("tpm-issuing", Some(&root));
        let err = verify_ek_certificate(&ek_cert(&issuing), &cas(&[&issuing]), ASN1Time::now())
            .unwrap_err();
        assert!(matches!(err, AttestationError::EkUntrusted(_)), "{err}");
    }

    #[test]
    fn unknown_ca_is_refused_with_issuer_named() {
        let root = ca("tpm-root", None);
        let other = ca("someone-else", None);
        let err =
            verify_ek_certificate(&ek_cert(&root), &cas(&[&other]), ASN1Time::now()).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("not trusted") && msg.contains("tpm-root"),
            "{msg}"
        );
    }

    #[test]
    fn same_name_different_key_is_refused() {
        let root = ca("tpm-root", None);
        let impostor = ca("tpm-root", None);
        let err = verify_ek_certificate(&ek_cert(&impostor), &cas(&[&root]), ASN1Time::now())
            .unwrap_err();
        assert!(matches!(err, AttestationError::EkUntrusted(_)), "{err}");
    }

    #[test]
    fn malformed_certificates_are_clear_errors() {
        let root = ca("tpm-root", None);
        let good = ek_cert(&root);
        let c = cas(&[&root]);
        for bad in [
            &b""[..],
            &b"not a certificate"[..],
            &good[..good.len() / 2],
            &good[..good.len() - 1],
        ] {
            let err = verify_ek_certificate(bad, &c, ASN1Time::now()).unwrap_err();
            assert!(
                err.to_string().starts_with("invalid EK certificate"),
                "{err}"
            );
        }
        let mut trailing = good.clone();
        trailing.push(0);
        let err = verify_ek_certificate(&trailing, &c, ASN1Time::now()).unwrap_err();
        assert!(err.to_string().contains("trailing"), "{err}");
        let huge = vec![0x30; MAX_EK_CERT + 1];
        let err = verify_ek_certificate(&huge, &c, ASN1Time::now()).unwrap_err();
        assert!(err.to_string().contains("limit"), "{err}");
        // A tampered signature no longer chains.
        let mut tampered = good.clone();
        let last = tampered.len() - 1;
        tampered[last] ^= 0xff;
        let err = verify_ek_certificate(&tampered, &c, ASN1Time::now()).unwrap_err();
        assert!(matches!(err, AttestationError::EkUntrusted(_)), "{err}");
    }

    #[test]
    fn ca_certificate_is_not_an_ek() {
        let root = ca("tpm-root", None);
        let issuing = ca("tpm-issuing", Some(&root));
        let err =
            verify_ek_certificate(issuing.cert.der(), &cas(&[&root]), ASN1Time::now()).unwrap_err();
        assert!(err.to_string().contains("CA certificate"), "{err}");
    }

    #[test]
    fn pem_loading_reports_files() {
        let dir = std::env::temp_dir().join(format!("kg-tpm-ca-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let empty = dir.join("empty.pem");
        std::fs::write(&empty, "nothing here").unwrap();
        let err = ManufacturerCas::from_pem_files(&[&empty]).unwrap_err();
        assert!(err.to_string().contains("no CERTIFICATE"), "{err}");
        let err = ManufacturerCas::from_pem_files(&[dir.join("missing.pem")]).unwrap_err();
        assert!(err.to_string().contains("cannot read"), "{err}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
