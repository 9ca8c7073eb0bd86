//! Who is calling: TLS client certificates, checked so that a refusal can say why, and
//! HTTP Basic for labs when explicitly configured.
//!
//! The TLS layer accepts any client certificate whose handshake signature verifies (so
//! the client proves it holds the key) and leaves the chain decision to the request
//! handler, which checks it against the current trust bundle with webpki. An expired or
//! foreign certificate thus gets a 4xx with a reason and an audit event, not a bare TLS
//! alert that neither the operator nor the client can read.

use std::sync::{Arc, RwLock};

use aws_lc_rs::constant_time::verify_slices_are_equal;
use aws_lc_rs::digest;
use base64::Engine;
use rustls::client::danger::HandshakeSignatureValid;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::WebPkiClientVerifier;
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, RootCertStore};

use super::config::BasicAuthConfig;
use crate::api::tls::provider;

/// A client certificate verifier whose chain check is deferred to the handler and whose
/// trust anchors follow the bundle.
#[derive(Debug)]
pub struct ClientVerifier {
    inner: RwLock<Arc<dyn ClientCertVerifier>>,
}

fn webpki(roots: &[Vec<u8>]) -> Result<Arc<dyn ClientCertVerifier>, String> {
    let mut store = RootCertStore::empty();
    for der in roots {
        store
            .add(CertificateDer::from(der.clone()))
            .map_err(|e| format!("trust bundle certificate rejected: {e}"))?;
    }
    WebPkiClientVerifier::builder_with_provider(Arc::new(store), provider())
        .allow_unauthenticated()
        .build()
        .map_err(|e| format!("client verifier: {e}"))
}

impl ClientVerifier {
    /// A verifier trusting `roots`.
    pub fn new(roots: &[Vec<u8>]) -> Result<Self, String> {
        Ok(ClientVerifier {
            inner: RwLock::new(webpki(roots)?),
        })
    }

    /// Trusts `roots` from now on (a rotated root entered or left the bundle).
    pub fn set_roots(&self, roots: &[Vec<u8>]) -> Result<(), String> {
        let fresh = webpki(roots)?;
        if let Ok(mut cur) = self.inner.write() {
            *cur = fresh;
        }
        Ok(())
    }

    fn current(&self) -> Arc<dyn ClientCertVerifier> {
        match self.inner.read() {
            Ok(c) => c.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Checks a client's chain (leaf first) against the bundle now, with `known`
    /// intermediates added (clients often send their leaf alone); the error is a sentence
    /// for the client and the audit log.
    pub fn check_chain(&self, chain: &[Vec<u8>], known: &[Vec<u8>]) -> Result<(), String> {
        let Some((leaf, rest)) = chain.split_first() else {
            return Err("no client certificate was presented".into());
        };
        let leaf = CertificateDer::from(leaf.as_slice());
        let rest: Vec<CertificateDer<'_>> = rest
            .iter()
            .chain(known)
            .map(|c| CertificateDer::from(c.as_slice()))
            .collect();
        self.current()
            .verify_client_cert(&leaf, &rest, UnixTime::now())
            .map(|_| ())
            .map_err(|e| match e {
                rustls::Error::InvalidCertificate(CertificateError::Expired)
                | rustls::Error::InvalidCertificate(CertificateError::ExpiredContext { .. }) => {
                    "the client certificate has expired".to_string()
                }
                rustls::Error::InvalidCertificate(CertificateError::NotValidYet)
                | rustls::Error::InvalidCertificate(CertificateError::NotValidYetContext {
                    ..
                }) => "the client certificate is not valid yet".to_string(),
                rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer) => {
                    "the client certificate is not issued under KeyGrid's trust bundle".to_string()
                }
                other => format!("the client certificate was rejected: {other}"),
            })
    }
}

impl ClientCertVerifier for ClientVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        // Hints would have to follow the bundle; clients send their configured certificate
        // without them.
        &[]
    }

    fn verify_client_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        // Deferred to `check_chain` in the handler, which can answer with a reason.
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.current().verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.current().verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.current().supported_verify_schemes()
    }
}

/// Checks an `Authorization: Basic` header against the lab user. Returns the user name.
pub fn check_basic(header: &str, cfg: &BasicAuthConfig) -> Result<String, String> {
    let encoded = header
        .strip_prefix("Basic ")
        .ok_or("only HTTP Basic authorization is supported")?;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .map_err(|_| "malformed Basic credentials")?;
    let text = String::from_utf8(decoded).map_err(|_| "malformed Basic credentials")?;
    let (user, password) = text.split_once(':').ok_or("malformed Basic credentials")?;
    let got = digest::digest(&digest::SHA256, password.as_bytes());
    let want = hex::decode(&cfg.password_sha256).map_err(|_| "bad configuration")?;
    let user_ok = verify_slices_are_equal(user.as_bytes(), cfg.username.as_bytes()).is_ok();
    let pass_ok = verify_slices_are_equal(got.as_ref(), &want).is_ok();
    if user_ok && pass_ok {
        Ok(user.to_string())
    } else {
        Err("wrong user name or password".into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn basic_auth_checks_user_and_password() {
        let cfg = BasicAuthConfig {
            username: "lab".into(),
            password_sha256: hex::encode(digest::digest(&digest::SHA256, b"s3cret")),
        };
        let h = |s: &str| {
            format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(s)
            )
        };
        assert_eq!(check_basic(&h("lab:s3cret"), &cfg).unwrap(), "lab");
        assert!(check_basic(&h("lab:wrong"), &cfg).is_err());
        assert!(check_basic(&h("other:s3cret"), &cfg).is_err());
        assert!(check_basic("Bearer x", &cfg).is_err());
        assert!(check_basic("Basic !!!", &cfg).is_err());
    }
}
