//! The HTTP routes under `/.well-known/est/` (RFC 7030 §3.2.2). A path without a label
//! means the `nodes` label.
//!
//! | path | method | what |
//! |---|---|---|
//! | `[<label>/]cacerts` | GET | CA certificates, certs-only PKCS#7, base64; no client auth |
//! | `[<label>/]csrattrs` | GET | what policy requires of a CSR |
//! | `[<label>/]simpleenroll` | POST | base64 PKCS#10 → certs-only PKCS#7 (or 202) |
//! | `[<label>/]simplereenroll` | POST | renewal authenticated by the certificate renewed |
//! | `nodes/tpm-challenge`, `nodes/tpm-enroll` | POST | TPM-attested enrollment (JSON; `docs/est.md`) |

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{ConnectInfo, Path, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use axum::Router;

use super::enroll::{Enroller, Operation, Outcome};
use super::listener::Peer;
use super::{body, csrattrs, label_profile, pkcs7, EstError};

/// What the handlers share.
pub struct EstState {
    /// The enrollment decision.
    pub enroller: Arc<Enroller>,
    /// TPM-attested enrollment, when configured.
    pub tpm: Option<Arc<super::tpm::TpmEnrollment>>,
}

/// The EST router.
pub fn router(state: Arc<EstState>) -> Router {
    Router::new()
        .route("/.well-known/est/{op}", any(unlabelled))
        .route("/.well-known/est/{label}/{op}", any(labelled))
        .with_state(state)
}

async fn unlabelled(
    State(st): State<Arc<EstState>>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    Path(op): Path<String>,
    method: Method,
    headers: HeaderMap,
    body: Body,
) -> Response {
    dispatch(st, peer, "nodes".into(), op, method, headers, body).await
}

async fn labelled(
    State(st): State<Arc<EstState>>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    Path((label, op)): Path<(String, String)>,
    method: Method,
    headers: HeaderMap,
    body: Body,
) -> Response {
    dispatch(st, peer, label, op, method, headers, body).await
}

fn base64_response(status: StatusCode, content_type: &'static str, der: &[u8]) -> Response {
    let mut resp = (status, body::encode(der)).into_response();
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    // RFC 7030 §4.1.3 names it; RFC 8951 says clients ignore it. Old clients look for it.
    resp.headers_mut().insert(
        "content-transfer-encoding",
        HeaderValue::from_static("base64"),
    );
    resp
}

/// Records an HTTP-level refusal of an enrollment request and returns the error.
fn reject(
    st: &EstState,
    peer: &Peer,
    label: &str,
    rule: &str,
    status: StatusCode,
    msg: String,
) -> Response {
    let actor = format!("{} (est client)", peer.remote.ip());
    if let Err(e) = st.enroller.issuance().refuse(&actor, label, rule, &msg) {
        return EstError::from(e).into_response();
    }
    EstError::new(status, msg).into_response()
}

/// Reads a bounded body: a declared or actual length over the limit is 413.
async fn read_body(
    headers: &HeaderMap,
    body: Body,
    max: usize,
) -> Result<axum::body::Bytes, String> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let too_big = || format!("the request body is larger than the limit of {max} bytes");
    if declared.is_some_and(|n| n > max as u64) {
        return Err(too_big());
    }
    axum::body::to_bytes(body, max).await.map_err(|_| too_big())
}

async fn dispatch(
    st: Arc<EstState>,
    peer: Peer,
    label: String,
    op: String,
    method: Method,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let enroller = st.enroller.clone();
    let cfg = enroller.config();
    let Some(profile) = label_profile(&label).filter(|_| cfg.labels.contains(&label)) else {
        return EstError::new(
            StatusCode::NOT_FOUND,
            format!(
                "no EST label {label:?}; this server serves {}",
                cfg.labels.join(", ")
            ),
        )
        .into_response();
    };
    // `Some(response)` when the method is wrong.
    let wrong_method = |m: Method| -> Option<Response> {
        if method == m {
            None
        } else {
            let mut r = EstError::new(StatusCode::METHOD_NOT_ALLOWED, format!("{op} takes {m}"))
                .into_response();
            r.headers_mut().insert(
                header::ALLOW,
                HeaderValue::from_static(if m == Method::GET { "GET" } else { "POST" }),
            );
            Some(r)
        }
    };
    match op.as_str() {
        "cacerts" => {
            if let Some(r) = wrong_method(Method::GET) {
                return r;
            }
            let h = enroller.issuance().hierarchy();
            let mut certs: Vec<Vec<u8>> = h
                .generations_of(crate::ca::NODES)
                .iter()
                .map(|a| a.cert_der().to_vec())
                .collect();
            certs.extend(h.bundle());
            base64_response(StatusCode::OK, body::PKCS7, &pkcs7::certs_only(&certs))
        }
        "csrattrs" => {
            if let Some(r) = wrong_method(Method::GET) {
                return r;
            }
            let allowed = enroller.issuance().policy().allowed_keys(profile);
            let der = csrattrs::encode(
                allowed.as_deref(),
                cfg.channel_binding == super::config::ChannelBinding::Required,
            );
            base64_response(StatusCode::OK, body::CSRATTRS, &der)
        }
        "simpleenroll" | "simplereenroll" => {
            if let Some(r) = wrong_method(Method::POST) {
                return r;
            }
            let operation = if op == "simpleenroll" {
                Operation::Enroll
            } else {
                Operation::Reenroll
            };
            let ctype = body::media_type(headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()));
            if ctype.as_deref() != Some(body::PKCS10) {
                return reject(
                    &st,
                    &peer,
                    &label,
                    "est-request",
                    StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    format!(
                        "{op} takes Content-Type: {}; got {}",
                        body::PKCS10,
                        ctype.as_deref().unwrap_or("none")
                    ),
                );
            }
            let raw = match read_body(&headers, body, cfg.max_body_bytes).await {
                Ok(b) => b,
                Err(m) => {
                    return reject(&st, &peer, &label, "est-request", StatusCode::PAYLOAD_TOO_LARGE, m)
                }
            };
            let der = match body::decode(&raw) {
                Ok(d) => d,
                Err(m) => return reject(&st, &peer, &label, "est-request", StatusCode::BAD_REQUEST, m),
            };
            let authorization = headers
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string);
            let retry_after = cfg.retry_after.as_secs().max(1);
            let result = tokio::task::spawn_blocking(move || {
                enroller.enroll(&label, operation, &peer, authorization.as_deref(), &der)
            })
            .await;
            match result {
                Ok(Ok(Outcome::Issued(chain))) => {
                    base64_response(StatusCode::OK, body::PKCS7_CERTS_ONLY, &pkcs7::certs_only(&chain))
                }
                Ok(Ok(Outcome::Deferred)) => {
                    let mut r = (
                        StatusCode::ACCEPTED,
                        "the enrollment waits for an operator's approval; repeat the same request later\n",
                    )
                        .into_response();
                    if let Ok(v) = HeaderValue::from_str(&retry_after.to_string()) {
                        r.headers_mut().insert(header::RETRY_AFTER, v);
                    }
                    r
                }
                Ok(Err(e)) => e.into_response(),
                Err(_) => EstError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal error").into_response(),
            }
        }
        "tpm-challenge" | "tpm-enroll" if label == "nodes" => {
            if let Some(r) = wrong_method(Method::POST) {
                return r;
            }
            let Some(tpm) = st.tpm.clone() else {
                return EstError::new(StatusCode::NOT_FOUND, "TPM enrollment is not enabled on this server")
                    .into_response();
            };
            let ctype = body::media_type(headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()));
            if ctype.as_deref() != Some("application/json") {
                return reject(
                    &st,
                    &peer,
                    &label,
                    "est-request",
                    StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    format!("{op} takes Content-Type: application/json"),
                );
            }
            let raw = match read_body(&headers, body, super::tpm::MAX_TPM_BODY).await {
                Ok(b) => b,
                Err(m) => {
                    return reject(&st, &peer, &label, "est-request", StatusCode::PAYLOAD_TOO_LARGE, m)
                }
            };
            let enroller = st.enroller.clone();
            let challenge = op == "tpm-challenge";
            let result = tokio::task::spawn_blocking(move || {
                if challenge {
                    tpm.challenge(&enroller, &peer, &raw).map(|json| {
                        let mut r = (StatusCode::OK, json).into_response();
                        r.headers_mut().insert(
                            header::CONTENT_TYPE,
                            HeaderValue::from_static("application/json"),
                        );
                        r
                    })
                } else {
                    tpm.enroll(&enroller, &peer, &raw).map(|chain| {
                        base64_response(StatusCode::OK, body::PKCS7_CERTS_ONLY, &pkcs7::certs_only(&chain))
                    })
                }
            })
            .await;
            match result {
                Ok(Ok(r)) => r,
                Ok(Err(e)) => e.into_response(),
                Err(_) => EstError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal error").into_response(),
            }
        }
        "fullcmc" | "serverkeygen" => EstError::new(
            StatusCode::NOT_IMPLEMENTED,
            format!("{op} is not offered: keys are made where they are used (in the TPM, or by the client)"),
        )
        .into_response(),
        _ => EstError::new(StatusCode::NOT_FOUND, format!("no EST operation {op:?}")).into_response(),
    }
}
