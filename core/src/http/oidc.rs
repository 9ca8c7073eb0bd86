//! OIDC discovery for Kubernetes service-account tokens (KEP-1393): the discovery document
//! and the JWK Set of the keys tokens verify with, served on core's HTTP listener so relying
//! parties outside the cluster can verify tokens KeyGrid signed for kube-apiserver.
//!
//! | path | what |
//! |---|---|
//! | `GET /.well-known/openid-configuration` | `issuer`, `jwks_uri`, supported algorithms |
//! | `GET /openid/v1/jwks` | `application/jwk-set+json`, current and still-valid previous keys |

use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

use crate::sa_signer::{openid_configuration, SaKeyRing};

/// Path of the JWK Set.
pub const JWKS_PATH: &str = "/openid/v1/jwks";

struct Oidc {
    ring: Arc<SaKeyRing>,
    issuer: String,
    jwks_uri: String,
}

/// Routes for `issuer`, with keys from `ring` published at `<public_base>/openid/v1/jwks`.
pub fn router(ring: Arc<SaKeyRing>, issuer: String, public_base: &str) -> Router {
    let state = Arc::new(Oidc {
        ring,
        issuer,
        jwks_uri: format!("{}{JWKS_PATH}", public_base.trim_end_matches('/')),
    });
    Router::new()
        .route("/.well-known/openid-configuration", get(discovery))
        .route(JWKS_PATH, get(jwks))
        .with_state(state)
}

async fn discovery(State(s): State<Arc<Oidc>>) -> Response {
    let alg = crate::jwt::jws_alg(s.ring.settings().algorithm);
    (
        [(header::CONTENT_TYPE, "application/json")],
        openid_configuration(&s.issuer, &s.jwks_uri, &[alg]),
    )
        .into_response()
}

async fn jwks(State(s): State<Arc<Oidc>>) -> Response {
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    match s.ring.jwks(now) {
        Ok(body) => ([(header::CONTENT_TYPE, "application/jwk-set+json")], body).into_response(),
        Err(e) => {
            tracing::error!(error = %e, "JWKS unavailable");
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
    }
}
