//! EST, Enrollment over Secure Transport (RFC 7030, updated by RFC 8951): how nodes and
//! kubelets get certificates from the nodes CA over HTTPS, with TPM-attested enrollment
//! for nodes that hold no credential yet. See `docs/est.md`.
//!
//! Table of contents (one job per file):
//! - [`approval`]: manual approval of deferred enrollments;
//! - [`config`]: the `[est]` configuration section;
//! - [`listener`]: TLS accept loop that tells handlers the client chain and channel binding;
//! - [`auth`]: client certificate checks with reasons, lab HTTP Basic;
//! - [`binding`]: the CSR ↔ TLS channel binding (RFC 7030 §3.5 via RFC 9266 tls-exporter);
//! - [`body`]: base64 bodies and media types;
//! - [`pkcs7`]: certs-only CMS SignedData;
//! - [`csrattrs`]: `/csrattrs` from policy;
//! - [`enroll`]: the enrollment decision (caller, identity, approval, policy, signing);
//! - [`tpm`]: TPM-attested first enrollment of a node;
//! - [`routes`]: the HTTP routes.

pub mod approval;
pub mod auth;
pub mod binding;
pub mod body;
pub mod config;
pub mod csrattrs;
pub mod enroll;
pub mod listener;
pub mod pkcs7;
pub mod routes;
pub mod tpm;

use std::sync::Arc;

use anyhow::Context;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

use crate::api::tls::{provider, ServingCert};
use crate::ca::Hierarchy;
use crate::issuance::Issuance;

pub use config::EstConfig;

/// The profile a CA label issues under: `nodes` → `node`; the kubelet labels are their
/// profiles. Only profiles the nodes CA signs are offered over EST.
pub fn label_profile(label: &str) -> Option<&'static str> {
    match label {
        "nodes" => Some("node"),
        "kubelet-client" => Some("kubelet-client"),
        "kubelet-serving" => Some("kubelet-serving"),
        _ => None,
    }
}

/// An EST failure: an HTTP status and a sentence for the client (`text/plain`, as
/// RFC 7030 errata 5108 allows).
#[derive(Debug)]
pub struct EstError {
    /// The status.
    pub status: StatusCode,
    /// What was wrong; never secrets or key material.
    pub message: String,
}

impl EstError {
    /// An error with `status` and `message`.
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        EstError {
            status,
            message: message.into(),
        }
    }
}

impl IntoResponse for EstError {
    fn into_response(self) -> Response {
        let mut resp = (self.status, format!("{}\n", self.message)).into_response();
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        resp
    }
}

/// Builds the EST TLS configuration: core's serving certificate, optional client
/// certificates checked by `verifier`, HTTP/1.1.
pub fn server_config(
    verifier: Arc<auth::ClientVerifier>,
    cert: Arc<ServingCert>,
) -> Result<Arc<rustls::ServerConfig>, String> {
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS versions: {e}"))?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(cert);
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Runs the EST server on `cfg.listen` until `shutdown` resolves. Returns at once when
/// EST is off.
pub async fn serve(
    cfg: EstConfig,
    issuance: Arc<Issuance>,
    hierarchy: Arc<Hierarchy>,
    cert: Arc<ServingCert>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let Some(addr) = cfg.listen else {
        return Ok(());
    };
    let mut bundle = hierarchy.subscribe_bundle();
    let verifier = Arc::new(
        auth::ClientVerifier::new(&bundle.borrow_and_update().roots).map_err(anyhow::Error::msg)?,
    );
    {
        let verifier = verifier.clone();
        tokio::spawn(async move {
            while bundle.changed().await.is_ok() {
                let roots = bundle.borrow_and_update().roots.clone();
                if let Err(e) = verifier.set_roots(&roots) {
                    tracing::error!(error = %e, "EST client verification cannot follow the bundle");
                }
            }
        });
    }
    let tls = server_config(verifier.clone(), cert).map_err(anyhow::Error::msg)?;
    let (_tls_tx, tls_rx) = tokio::sync::watch::channel(tls);
    let tcp = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr} for EST"))?;
    let listener = listener::EstListener::new(tcp, tls_rx)?;
    let tpm = match &cfg.tpm {
        Some(t) => Some(Arc::new(
            tpm::TpmEnrollment::new(t, hierarchy.trust_domain()).map_err(anyhow::Error::msg)?,
        )),
        None => None,
    };
    let enroller = Arc::new(enroll::Enroller::new(issuance, cfg.clone(), verifier));
    let state = Arc::new(routes::EstState { enroller, tpm });
    tracing::info!(listen = %addr, labels = ?cfg.labels, "EST server ready");
    axum::serve(
        listener,
        routes::router(state).into_make_service_with_connect_info::<listener::Peer>(),
    )
    .with_graceful_shutdown(shutdown)
    .await
    .context("EST server failed")
}
