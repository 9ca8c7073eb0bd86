//! Linking the CSR to the TLS connection (RFC 7030 §3.5).
//!
//! RFC 7030 puts the TLS 1.2 `tls-unique` value (RFC 5929) in the CSR's
//! challengePassword. `tls-unique` does not exist in TLS 1.3, and rustls does not expose
//! it for TLS 1.2 either, so KeyGrid uses the RFC 9266 `tls-exporter` value instead
//! (exporter label `EXPORTER-Channel-Binding`, no context, 32 bytes), base64-encoded, on
//! both TLS versions. It is defined for TLS 1.3 and, with the extended master secret
//! rustls always negotiates for TLS 1.2, is unique per connection there as well. A CSR
//! carrying a `tls-unique` value does not match and is refused with this explanation.

use base64::Engine;
use x509_parser::certification_request::X509CertificationRequest;
use x509_parser::cri_attributes::ParsedCriAttribute;

use super::config::ChannelBinding;

/// The challengePassword of a CSR, if it has one.
pub fn challenge_password(csr: &X509CertificationRequest<'_>) -> Option<String> {
    csr.certification_request_info
        .iter_attributes()
        .find_map(|a| match a.parsed_attribute() {
            ParsedCriAttribute::ChallengePassword(p) => Some(p.0.clone()),
            _ => None,
        })
}

/// The challengePassword value a client puts in its CSR for a connection whose
/// tls-exporter value is `exporter`.
pub fn expected_password(exporter: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(exporter)
}

/// Checks a CSR's binding to the connection under `mode`.
pub fn check(
    mode: ChannelBinding,
    password: Option<&str>,
    exporter: Option<&[u8]>,
) -> Result<(), String> {
    match (password, exporter) {
        (None, _) if mode == ChannelBinding::Optional => Ok(()),
        (None, _) => Err(
            "channel binding is required: put base64(tls-exporter \"EXPORTER-Channel-Binding\", 32 bytes) \
             of this TLS connection in the CSR's challengePassword (RFC 7030 §3.5, RFC 9266)"
                .into(),
        ),
        (Some(_), None) => Err("this connection has no channel-binding value".into()),
        (Some(p), Some(e)) => {
            let want = expected_password(e);
            if aws_lc_rs::constant_time::verify_slices_are_equal(p.trim().as_bytes(), want.as_bytes())
                .is_ok()
            {
                Ok(())
            } else {
                Err("the CSR's challengePassword is not this TLS connection's tls-exporter value \
                     (KeyGrid binds with RFC 9266 tls-exporter, not tls-unique): the CSR was made \
                     for another connection"
                    .into())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binding_modes() {
        let e = [7u8; 32];
        let good = expected_password(&e);
        assert!(check(ChannelBinding::Optional, None, Some(&e)).is_ok());
        assert!(check(ChannelBinding::Required, None, Some(&e)).is_err());
        assert!(check(ChannelBinding::Required, Some(&good), Some(&e)).is_ok());
        assert!(check(ChannelBinding::Optional, Some(&good), Some(&[8u8; 32])).is_err());
        assert!(check(ChannelBinding::Optional, Some("x"), None).is_err());
    }

    #[test]
    fn password_is_read_from_a_csr() {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        p.distinguished_name.push(rcgen::DnType::CommonName, "n");
        let plain = p.serialize_request(&key).unwrap();
        let (_, csr) =
            <X509CertificationRequest as x509_parser::prelude::FromDer<_>>::from_der(plain.der())
                .unwrap();
        assert_eq!(challenge_password(&csr), None);
    }
}
