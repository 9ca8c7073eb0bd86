//! Wiring of revocation into a running process: inside core (`keygrid serve`), and as a
//! responder of its own (`keygrid ocsp serve`) against the same store.
//!
//! Core records revocations, publishes CRLs and (when `[http] listen` is set) answers
//! OCSP. A separate responder process answers OCSP and serves the CRLs core published; it
//! notices revocations by polling the store every `maintenance_interval`.

use std::sync::Arc;

use anyhow::Context;

use super::crl::{CrlPublisher, CrlSettings};
use super::ocsp::{OcspResponder, OcspSettings};
use super::{record_ca_certificates, RevocationListener, Revoker};
use crate::ca::Hierarchy;
use crate::config::HttpConfig;
use crate::http::{router, HttpState};
use crate::store::Store;

/// The revocation parts of one process.
pub struct RevocationRuntime {
    /// Takes revocations from the admin API.
    pub revoker: Arc<Revoker>,
    /// Publishes CRLs (core only).
    pub crls: Option<Arc<CrlPublisher>>,
    /// Answers OCSP (when the HTTP listener is on).
    pub responder: Option<Arc<OcspResponder>>,
}

fn ocsp_settings(h: &HttpConfig) -> OcspSettings {
    OcspSettings {
        response_validity: h.ocsp_response_validity,
        responder_cert_ttl: h.ocsp_responder_cert_ttl,
        responder_algorithm: h.ocsp_responder_algorithm,
    }
}

async fn new_responder(
    store: Arc<Store>,
    ca: Arc<Hierarchy>,
    h: &HttpConfig,
) -> anyhow::Result<Arc<OcspResponder>> {
    let settings = ocsp_settings(h);
    let responder = tokio::task::spawn_blocking(move || OcspResponder::new(store, ca, settings))
        .await
        .context("responder set-up task failed")?
        .context("cannot set up the OCSP responder")?;
    Ok(Arc::new(responder))
}

/// Sets up revocation inside core: CA certificates become revocable records, CRLs are
/// published for every issuer that has none, and the responder starts if HTTP is on.
pub async fn start_in_core(
    store: Arc<Store>,
    ca: Arc<Hierarchy>,
    h: &HttpConfig,
) -> anyhow::Result<RevocationRuntime> {
    let crls = Arc::new(CrlPublisher::new(
        store.clone(),
        ca.clone(),
        CrlSettings {
            validity: h.crl_validity,
            delta_validity: h.delta_crl_validity,
            public_base: h.public_base(),
        },
    ));
    {
        let (store, ca, crls) = (store.clone(), ca.clone(), crls.clone());
        tokio::task::spawn_blocking(move || {
            record_ca_certificates(&store, &ca)?;
            crls.publish_due();
            Ok::<_, crate::store::StoreError>(())
        })
        .await
        .context("revocation set-up task failed")?
        .context("cannot record the CA certificates")?;
    }
    let responder = match h.listen {
        Some(_) => Some(new_responder(store.clone(), ca.clone(), h).await?),
        None => None,
    };
    let mut listeners: Vec<Arc<dyn RevocationListener>> = vec![crls.clone()];
    if let Some(r) = &responder {
        listeners.push(r.clone());
    }
    Ok(RevocationRuntime {
        revoker: Arc::new(Revoker::new(store, ca, listeners)),
        crls: Some(crls),
        responder,
    })
}

/// Runs upkeep every `interval` until the process ends: responder maintenance (new
/// revocations, rotation, refresh) and, in core, CRL re-publication.
pub fn spawn_maintenance(rt: &RevocationRuntime, interval: std::time::Duration) {
    let responder = rt.responder.clone();
    let crls = rt.crls.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let (r, c) = (responder.clone(), crls.clone());
            let res = tokio::task::spawn_blocking(move || {
                if let Some(r) = r {
                    r.maintain();
                }
                if let Some(c) = c {
                    c.publish_due();
                }
            })
            .await;
            if res.is_err() {
                tracing::error!("revocation maintenance task failed");
            }
        }
    });
}

/// Serves the HTTP endpoints on `h.listen` until `shutdown`; a no-op when it is unset.
pub async fn serve_http(
    h: &HttpConfig,
    store: Arc<Store>,
    ca: Arc<Hierarchy>,
    responder: Option<Arc<OcspResponder>>,
    extra: Option<axum::Router>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let Some(addr) = h.listen else {
        return Ok(());
    };
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr} (http.listen)"))?;
    tracing::info!(listen = %addr, public_url = h.public_base().unwrap_or_default(),
        "OCSP and CRL endpoints ready");
    let mut app = router(Arc::new(HttpState {
        responder,
        store,
        ca,
    }));
    if let Some(extra) = extra {
        app = app.merge(extra);
    }
    crate::http::serve(listener, app, shutdown)
        .await
        .context("HTTP server failed")
}

/// `keygrid ocsp serve`: the responder alone, against core's store and HSM token.
pub async fn serve_standalone(
    cfg: crate::config::CoreConfig,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    use cryptoki::types::AuthPin;
    if cfg.http.listen.is_none() {
        anyhow::bail!("set [http] listen in the configuration to run the OCSP responder");
    }
    let pin = cfg.hsm_pin().map_err(anyhow::Error::msg)?;
    let token = crate::keys::pkcs11::Pkcs11Token::open(
        &cfg.hsm.module,
        &cfg.hsm.token_label,
        AuthPin::from(pin),
    )
    .context("cannot open the HSM token")?;
    let store = Arc::new(crate::server::open_store(&cfg)?);
    if store.authorities()?.is_empty() {
        anyhow::bail!(
            "the store ({}) has no CA hierarchy yet; start core (keygrid serve) first",
            cfg.store_description()
        );
    }
    let settings = cfg.hierarchy_settings();
    let (ca, _) = {
        let store = store.clone();
        tokio::task::spawn_blocking(move || Hierarchy::init_or_load(&store, &token, &settings))
            .await??
    };
    let ca = Arc::new(ca);
    let responder = new_responder(store.clone(), ca.clone(), &cfg.http).await?;
    let rt = RevocationRuntime {
        revoker: Arc::new(Revoker::new(store.clone(), ca.clone(), Vec::new())),
        crls: None,
        responder: Some(responder.clone()),
    };
    spawn_maintenance(&rt, cfg.http.maintenance_interval);
    serve_http(&cfg.http, store, ca, Some(responder), None, shutdown).await
}
