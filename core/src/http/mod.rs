//! KeyGrid's plain-HTTP endpoints: the OCSP responder, CRLs and CA certificates.
//!
//! | path | what |
//! |---|---|
//! | `POST /ocsp` (and `POST /`) | OCSP, body `application/ocsp-request` (RFC 6960 App. A.1) |
//! | `GET /ocsp/{base64 request}` | OCSP for caches (RFC 5019 §5), with caching headers |
//! | `GET /crl/{issuer}.crl` | newest complete CRL, DER; PEM with `?format=pem` or `Accept: application/x-pem-file` |
//! | `GET /crl/{issuer}-delta.crl` | newest delta CRL (when `http.delta_crl_validity` is set), same formats |
//! | `GET /ca/{issuer}.crt` | the issuer's certificate (AIA caIssuers), DER |
//! | `GET /healthz` | liveness |
//!
//! Requests are bounded before they are read: a body over [`MAX_BODY`] is refused with
//! 413, a GET path over [`MAX_GET_PATH`] with 414; OCSP-level failures are OCSP responses
//! with the matching `responseStatus` (HTTP 200, which is what OCSP clients parse),
//! HTTP-level failures carry the same `malformedRequest` body with a 4xx status.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use base64::Engine;
use serde::Deserialize;
use x509_ocsp::OcspResponseStatus;

pub mod oidc;

use crate::ca::Hierarchy;
use crate::revocation::ocsp::{OcspAnswer, OcspResponder};
use crate::store::Store;

/// Largest OCSP request body read. A request for one certificate is about 100 bytes.
pub const MAX_BODY: usize = 64 * 1024;
/// Longest GET path accepted (a base64 request for a handful of certificates).
pub const MAX_GET_PATH: usize = 4096;

const OCSP_REQUEST: &str = "application/ocsp-request";
const OCSP_RESPONSE: &str = "application/ocsp-response";
const PKIX_CRL: &str = "application/pkix-crl";
const PEM_FILE: &str = "application/x-pem-file";

/// What the HTTP handlers share.
pub struct HttpState {
    /// The responder; `None` serves CRLs and CA certificates only.
    pub responder: Option<Arc<OcspResponder>>,
    /// Where CRLs are read from.
    pub store: Arc<Store>,
    /// The hierarchy, for CA certificates.
    pub ca: Arc<Hierarchy>,
}

/// The router for all endpoints.
pub fn router(state: Arc<HttpState>) -> Router {
    Router::new()
        .route("/ocsp", post(ocsp_post))
        .route("/", post(ocsp_post))
        .route("/ocsp/{*request}", get(ocsp_get))
        .route("/crl/{file}", get(crl_get))
        .route("/ca/{file}", get(ca_get))
        .route("/healthz", get(|| async { "ok\n" }))
        .with_state(state)
}

/// Serves `router` on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    use axum::serve::ListenerExt;
    // Answers are one small write each; without TCP_NODELAY a client that delays its ACK
    // can hold the next answer on a keep-alive connection back by the delayed-ACK timer.
    let listener = listener.tap_io(|tcp| {
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "cannot set TCP_NODELAY on an HTTP connection");
        }
    });
    axum::serve(listener, router)
        .with_graceful_shutdown(shutdown)
        .await
}

fn ocsp_body(status: StatusCode, answer: OcspAnswer) -> Response {
    (
        status,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static(OCSP_RESPONSE),
        )],
        answer.der,
    )
        .into_response()
}

fn malformed(status: StatusCode) -> Response {
    ocsp_body(
        status,
        OcspAnswer::error(OcspResponseStatus::MalformedRequest),
    )
}

async fn answer(responder: &Arc<OcspResponder>, der: Bytes) -> OcspAnswer {
    if let Some(hit) = responder.answer_cached(&der) {
        return hit;
    }
    let r = responder.clone();
    match tokio::task::spawn_blocking(move || r.answer(&der)).await {
        Ok(a) => a,
        Err(_) => OcspAnswer::error(OcspResponseStatus::InternalError),
    }
}

async fn ocsp_post(State(st): State<Arc<HttpState>>, headers: HeaderMap, body: Body) -> Response {
    let Some(responder) = st.responder.as_ref() else {
        return (StatusCode::NOT_FOUND, "OCSP is not served here\n").into_response();
    };
    let ctype = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(|v| v.trim().to_ascii_lowercase());
    if ctype.as_deref() != Some(OCSP_REQUEST) {
        return malformed(StatusCode::UNSUPPORTED_MEDIA_TYPE);
    }
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_BODY as u64) {
        return malformed(StatusCode::PAYLOAD_TOO_LARGE);
    }
    let der = match axum::body::to_bytes(body, MAX_BODY).await {
        Ok(b) => b,
        Err(_) => return malformed(StatusCode::PAYLOAD_TOO_LARGE),
    };
    ocsp_body(StatusCode::OK, answer(responder, der).await)
}

fn http_date(unix: i64) -> Option<HeaderValue> {
    let t = UNIX_EPOCH + Duration::from_secs(u64::try_from(unix).ok()?);
    HeaderValue::from_str(&httpdate::fmt_http_date(t)).ok()
}

async fn ocsp_get(
    State(st): State<Arc<HttpState>>,
    Path(request): Path<String>,
    headers: HeaderMap,
) -> Response {
    let Some(responder) = st.responder.as_ref() else {
        return (StatusCode::NOT_FOUND, "OCSP is not served here\n").into_response();
    };
    if request.len() > MAX_GET_PATH {
        return malformed(StatusCode::URI_TOO_LONG);
    }
    // RFC 6960 App. A.1: url-encoding of base64 of the DER request. Accept the URL-safe
    // alphabet and missing padding too, as some clients send them.
    let trimmed = request.trim_matches('/');
    let der = base64::engine::general_purpose::STANDARD
        .decode(trimmed)
        .or_else(|_| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(trimmed.trim_end_matches('='))
        })
        .or_else(|_| {
            base64::engine::general_purpose::STANDARD_NO_PAD.decode(trimmed.trim_end_matches('='))
        });
    let Ok(der) = der else {
        return malformed(StatusCode::BAD_REQUEST);
    };
    let ans = answer(responder, Bytes::from(der)).await;
    let Some(info) = ans.cache.clone() else {
        return ocsp_body(StatusCode::OK, ans);
    };
    let etag = format!("\"{}\"", info.etag);
    if headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag))
    {
        return StatusCode::NOT_MODIFIED.into_response();
    }
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let max_age = (info.next_update - now).max(0);
    let mut resp = ocsp_body(StatusCode::OK, ans);
    let h = resp.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&format!(
        "max-age={max_age}, public, no-transform, must-revalidate"
    )) {
        h.insert(header::CACHE_CONTROL, v);
    }
    if let Ok(v) = HeaderValue::from_str(&etag) {
        h.insert(header::ETAG, v);
    }
    if let Some(v) = http_date(info.produced_at) {
        h.insert(header::LAST_MODIFIED, v);
    }
    if let Some(v) = http_date(info.next_update) {
        h.insert(header::EXPIRES, v);
    }
    resp
}

/// `?format=pem` asks for PEM.
#[derive(Deserialize)]
struct FormatQuery {
    format: Option<String>,
}

fn wants_pem(q: &FormatQuery, headers: &HeaderMap) -> bool {
    q.format.as_deref() == Some("pem")
        || headers
            .get(header::ACCEPT)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.contains(PEM_FILE))
}

async fn crl_get(
    State(st): State<Arc<HttpState>>,
    Path(file): Path<String>,
    Query(q): Query<FormatQuery>,
    headers: HeaderMap,
) -> Response {
    let Some(stem) = file.strip_suffix(".crl") else {
        return (StatusCode::NOT_FOUND, "no such CRL\n").into_response();
    };
    // Issuer names may contain '-', but none ends in "-delta".
    let (issuer, delta) = match stem.strip_suffix("-delta") {
        Some(i) => (i, true),
        None => (stem, false),
    };
    if !st.ca.authorities().iter().any(|a| a.name() == issuer) {
        return (StatusCode::NOT_FOUND, "no such issuer\n").into_response();
    }
    let store = st.store.clone();
    let name = issuer.to_string();
    let crl = match tokio::task::spawn_blocking(move || store.latest_crl(&name, delta)).await {
        Ok(Ok(Some(c))) => c,
        Ok(Ok(None)) if delta => return (
            StatusCode::NOT_FOUND,
            "no delta CRL published (delta CRLs are off unless http.delta_crl_validity is set)\n",
        )
            .into_response(),
        Ok(Ok(None)) => {
            return (StatusCode::SERVICE_UNAVAILABLE, "no CRL published yet\n").into_response()
        }
        Ok(Err(e)) => {
            tracing::error!(error = %e, "cannot read the CRL");
            return (StatusCode::INTERNAL_SERVER_ERROR, "internal error\n").into_response();
        }
        Err(_) => return (StatusCode::INTERNAL_SERVER_ERROR, "internal error\n").into_response(),
    };
    let mut resp = if wants_pem(&q, &headers) {
        (
            [(header::CONTENT_TYPE, HeaderValue::from_static(PEM_FILE))],
            pem::encode(&pem::Pem::new("X509 CRL", crl.der)),
        )
            .into_response()
    } else {
        (
            [(header::CONTENT_TYPE, HeaderValue::from_static(PKIX_CRL))],
            crl.der,
        )
            .into_response()
    };
    let h = resp.headers_mut();
    if let Some(v) = http_date(crl.this_update) {
        h.insert(header::LAST_MODIFIED, v);
    }
    if let Some(v) = http_date(crl.next_update) {
        h.insert(header::EXPIRES, v);
    }
    resp
}

async fn ca_get(State(st): State<Arc<HttpState>>, Path(file): Path<String>) -> Response {
    let issuer = file.strip_suffix(".crt").unwrap_or(&file);
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    match st.ca.active_at(issuer, now).ok() {
        Some(a) => (
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/pkix-cert"),
            )],
            a.cert_der().to_vec(),
        )
            .into_response(),
        None => (StatusCode::NOT_FOUND, "no such issuer\n").into_response(),
    }
}
