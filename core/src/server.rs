//! `keygrid serve`: starts core (node API over TLS, admin API on a local socket).

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use cryptoki::types::AuthPin;
use keygrid_proto::keygrid::v1::{admin_server::AdminServer, node_server::NodeServer};
use tokio::net::{TcpListener, UnixListener};
use tokio_stream::wrappers::UnixListenerStream;

use crate::api::spire_upstream::{SpireAdminApi, SpireUpstream, SpireUpstreamApi};
use crate::api::{admin::AdminApi, node::NodeApi, tls};
use crate::ca::Hierarchy;
use crate::config::CoreConfig;
use crate::issuance::{Issuance, IssuanceSettings};
use crate::keys::pkcs11::Pkcs11Token;
use crate::store::Store;
use keygrid_proto::keygrid::v1::{
    control_plane_admin_server::ControlPlaneAdminServer, spire_admin_server::SpireAdminServer,
    spire_upstream_server::SpireUpstreamServer,
};

/// Writes `data` to `path` atomically (temp file + rename), with `mode`.
pub fn write_atomic(path: &Path, data: &[u8], mode: u32) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or_else(|| Path::new("."));
    let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
    std::io::Write::write_all(&mut tmp, data)?;
    tmp.as_file()
        .set_permissions(std::fs::Permissions::from_mode(mode))?;
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    Ok(())
}

/// Encodes DER certificates as concatenated PEM.
pub fn pem_certs(ders: &[Vec<u8>]) -> String {
    ders.iter()
        .map(|d| pem::encode(&pem::Pem::new("CERTIFICATE", d.clone())))
        .collect()
}

/// Creates a directory (and parents) readable only by its owner.
pub fn private_dir(path: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(path).with_context(|| format!("cannot create {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700))
        .with_context(|| format!("cannot restrict {}", path.display()))?;
    Ok(())
}

/// Re-evaluates the trust bundle every 30 s (a rotated root becomes due, an old one retires)
/// and rewrites the published PEM file when it changes.
/// Records every connection to the admin socket (an admin "login": one per CLI command)
/// with the peer's uid in the audit log. Whether that uid may act is decided per call.
fn audited_admin_connections(
    incoming: UnixListenerStream,
    store: Arc<Store>,
) -> impl tokio_stream::Stream<Item = std::io::Result<tokio::net::UnixStream>> {
    use tokio_stream::StreamExt;
    incoming.map(move |conn| {
        if let Ok(stream) = &conn {
            let uid = stream
                .peer_cred()
                .map(|c| c.uid().to_string())
                .unwrap_or_else(|_| "unknown".into());
            let event = crate::store::EventRecord {
                at: time::OffsetDateTime::now_utc().unix_timestamp(),
                kind: "admin.login".into(),
                actor: format!("admin uid {uid}"),
                subject: "admin socket".into(),
                rule: String::new(),
                detail: String::new(),
            };
            if let Err(e) = store.record_event(&event) {
                tracing::error!(error = %e, "cannot record the admin connection");
            }
        }
        conn
    })
}

/// Opens the store the configuration names (SQLite file or PostgreSQL server).
pub fn open_store(cfg: &CoreConfig) -> anyhow::Result<Store> {
    let location = cfg.store_location().map_err(anyhow::Error::msg)?;
    Store::open_location(&location)
        .with_context(|| format!("cannot open the store ({})", cfg.store_description()))
}

fn spawn_bundle_refresh(hierarchy: Arc<Hierarchy>, store: Arc<Store>, path: std::path::PathBuf) {
    let mut rx = hierarchy.subscribe_bundle();
    {
        let (hierarchy, store) = (hierarchy.clone(), store.clone());
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(std::time::Duration::from_secs(30)).await;
                let (h, s) = (hierarchy.clone(), store.clone());
                let now = time::OffsetDateTime::now_utc().unix_timestamp();
                match tokio::task::spawn_blocking(move || h.refresh_bundle(&s, now)).await {
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => tracing::error!(error = %e, "bundle refresh failed"),
                    Err(e) => tracing::error!(error = %e, "bundle refresh task failed"),
                }
            }
        });
    }
    tokio::spawn(async move {
        while rx.changed().await.is_ok() {
            let snapshot = rx.borrow_and_update().clone();
            match write_atomic(&path, pem_certs(&snapshot.roots).as_bytes(), 0o644) {
                Ok(()) => tracing::info!(
                    sequence = snapshot.sequence,
                    roots = snapshot.roots.len(),
                    "trust bundle updated"
                ),
                Err(e) => {
                    tracing::error!(error = %e, path = %path.display(), "cannot write the trust bundle")
                }
            }
        }
    });
}

/// Opens the key backends the configuration names and routes each issuer to its own: the
/// HSM token, plus the sealed software backend when a key-encryption key is configured (also
/// when no issuer uses it any more, so keys made there earlier are still found).
pub fn issuer_keys(
    cfg: &CoreConfig,
    token: &Arc<Pkcs11Token>,
) -> anyhow::Result<Arc<crate::keys::IssuerKeyRouter>> {
    let software: Option<Box<dyn crate::keys::KeyBackend>> = match cfg.software_kek()? {
        Some(kek) => Some(Box::new(crate::keys::sealed::SealedFileBackend::open(
            &cfg.sealed_keys_dir(),
            kek,
        )?)),
        None => None,
    };
    Ok(Arc::new(crate::keys::IssuerKeyRouter::new(
        Box::new(token.clone()),
        software,
        cfg.software_issuers(),
    )?))
}

/// Loads (or creates) the service-account signing keys in the HSM when the
/// ExternalJWTSigner is configured, and rotates them on schedule.
async fn start_sa_signer(
    cfg: &CoreConfig,
    store: Arc<Store>,
    token: &Arc<Pkcs11Token>,
) -> anyhow::Result<Option<Arc<crate::sa_signer::SaKeyRing>>> {
    let cp = &cfg.control_plane;
    if cp.signer_socket.is_none() {
        return Ok(None);
    }
    let settings = crate::sa_signer::SaSettings {
        algorithm: cp.sa_key_algorithm,
        rotation: cp.sa_key_rotation,
        max_token_expiration: cp.max_token_expiration,
        refresh_hint: cp.keys_refresh_hint,
    };
    let backend: Arc<dyn crate::keys::KeyBackend> = Arc::new(token.clone());
    let mut legacy = Vec::new();
    for f in &cp.legacy_key_files {
        legacy.extend(
            crate::sa_signer::read_legacy_keys(f)
                .map_err(|e| anyhow::anyhow!("control_plane.legacy_key_files: {e}"))?,
        );
    }
    let ring = tokio::task::spawn_blocking(move || {
        crate::sa_signer::SaKeyRing::init_or_load(
            store,
            backend,
            settings,
            time::OffsetDateTime::now_utc().unix_timestamp(),
        )
    })
    .await?
    .context("cannot load or create the service-account signing key")?;
    for l in &legacy {
        tracing::info!(kid = %l.kid, "verification-only service-account key from a former key file");
    }
    let ring = Arc::new(ring.with_legacy_keys(legacy));
    let current = ring.current()?;
    tracing::info!(kid = %current.kid, key = %current.location(), "service-account signing key loaded");
    let check = (cp.sa_key_rotation / 4).clamp(
        std::time::Duration::from_secs(1),
        std::time::Duration::from_secs(60),
    );
    let r = ring.clone();
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(check).await;
            let r = r.clone();
            let now = time::OffsetDateTime::now_utc().unix_timestamp();
            match tokio::task::spawn_blocking(move || r.rotate_if_due(now)).await {
                Ok(Ok(Some(k))) => {
                    tracing::info!(kid = %k.kid, "service-account signing key rotated")
                }
                Ok(Ok(None)) => {}
                Ok(Err(e)) => tracing::error!(error = %e, "service-account key rotation failed"),
                Err(e) => tracing::error!(error = %e, "service-account key rotation task failed"),
            }
        }
    });
    Ok(Some(ring))
}

/// Binds the ExternalJWTSigner socket (mode 0600) and returns its server future; a
/// finished future when the signer is off.
fn serve_sa_signer(
    cfg: &CoreConfig,
    ring: Option<Arc<crate::sa_signer::SaKeyRing>>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<futures::future::BoxFuture<'static, Result<(), tonic::transport::Error>>> {
    use keygrid_proto::externaljwt::{v1, v1alpha1};
    let (Some(ring), Some(path)) = (ring, cfg.control_plane.signer_socket.clone()) else {
        return Ok(Box::pin(async { Ok(()) }));
    };
    if path.exists() {
        std::fs::remove_file(&path)
            .with_context(|| format!("cannot remove stale socket {}", path.display()))?;
    }
    let listener = UnixListener::bind(&path)
        .with_context(|| format!("cannot bind signer socket {}", path.display()))?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
    tracing::info!(socket = %path.display(), "ExternalJWTSigner (v1, v1alpha1) ready");
    let service = crate::api::external_jwt::ExternalJwtSigner::new(ring);
    let server = tonic::transport::Server::builder()
        .add_service(v1::external_jwt_signer_server::ExternalJwtSignerServer::new(service.clone()))
        .add_service(v1alpha1::external_jwt_signer_server::ExternalJwtSignerServer::new(service))
        .serve_with_incoming_shutdown(UnixListenerStream::new(listener), shutdown);
    Ok(Box::pin(async move {
        let r = server.await;
        let _ = std::fs::remove_file(&path);
        r
    }))
}

/// Runs core until `shutdown` resolves.
pub async fn run(
    cfg: CoreConfig,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    private_dir(&cfg.data_dir)?;
    let pin = cfg.hsm_pin().map_err(anyhow::Error::msg)?;
    let token = Pkcs11Token::open(&cfg.hsm.module, &cfg.hsm.token_label, AuthPin::from(pin))
        .context("cannot open the HSM token")?;
    let store = Arc::new(open_store(&cfg)?);
    tracing::info!(store = %cfg.store_description(), "store opened");
    let federation = Arc::new(
        crate::federation::FederatedBundles::load(&cfg.trust_domain, &cfg.federation)
            .map_err(anyhow::Error::msg)?,
    );
    let keys = issuer_keys(&cfg, &token)?;
    // Replicas starting together take turns here, so keys and the hierarchy are created
    // once (`Store::exclusive`).
    let (audit_key, hierarchy, created) = {
        let (store, token, keys, cfg2) = (store.clone(), token.clone(), keys.clone(), cfg.clone());
        tokio::task::spawn_blocking(move || {
            store.exclusive(|| -> anyhow::Result<_> {
                if crate::audit::record_config_change(&store, &cfg2)? {
                    tracing::info!(
                        "configuration changed since the last start; recorded in the audit log"
                    );
                }
                let key = crate::audit::AuditKey::load_or_create(&token, &cfg2.audit.key_label)
                    .context("cannot load or create the audit checkpoint key")?;
                let (h, created) =
                    Hierarchy::init_or_load(&store, keys.as_ref(), &cfg2.hierarchy_settings())?;
                Ok((Arc::new(key), h, created))
            })
        })
        .await??
    };
    crate::audit::spawn_checkpoints(
        store.clone(),
        audit_key.clone(),
        cfg.audit.checkpoint_interval,
    );
    crate::audit::spawn_svid_retention(store.clone(), cfg.store.svid_retention);
    if created {
        tracing::info!(trust_domain = %cfg.trust_domain, "created a new CA hierarchy");
    }
    let hierarchy = Arc::new(hierarchy);
    for a in hierarchy.authorities() {
        tracing::info!(issuer = a.name(), key = %a.key_location(), algorithm = %a.algorithm(),
            fingerprint = %crate::ca::sha256_hex(a.cert_der()), "CA loaded");
    }
    write_atomic(
        &cfg.bundle_path(),
        pem_certs(&hierarchy.bundle()).as_bytes(),
        0o644,
    )
    .with_context(|| format!("cannot write {}", cfg.bundle_path().display()))?;
    spawn_bundle_refresh(hierarchy.clone(), store.clone(), cfg.bundle_path());

    let revocation =
        crate::revocation::runtime::start_in_core(store.clone(), hierarchy.clone(), &cfg.http)
            .await?;
    crate::revocation::runtime::spawn_maintenance(&revocation, cfg.http.maintenance_interval);

    let mut issuance = Issuance::new(
        store.clone(),
        hierarchy.clone(),
        cfg.compiled_policy(),
        IssuanceSettings {
            default_svid_ttl: cfg.workloads.default_svid_ttl,
            max_svid_ttl: cfg.workloads.max_svid_ttl,
            node_cert_ttl: cfg.nodes.cert_ttl,
            jwt_svid_ttl: cfg.workloads.jwt_svid_ttl,
            default_identities: cfg.workloads.default_identities,
        },
    );
    if let Some(base) = cfg.http.public_base() {
        issuance =
            issuance.with_revocation_urls(crate::revocation::pointers::RevocationUrls::new(&base));
    }
    let issuance = Arc::new(issuance);
    let jwt = {
        let (store, token, alg) = (store.clone(), token.clone(), cfg.workloads.jwt_algorithm);
        let (jwt, created) = tokio::task::spawn_blocking(move || {
            store.exclusive(|| -> anyhow::Result<_> {
                Ok(crate::jwt::JwtIssuer::init_or_load(&store, &token, alg)?)
            })
        })
        .await?
        .context("cannot load or create the JWT-SVID signing key")?;
        tracing::info!(kid = %jwt.current_kid()?, key = %jwt.key_location()?, created,
            "JWT-SVID signing key loaded");
        Arc::new(jwt)
    };
    let sa_ring = start_sa_signer(&cfg, store.clone(), &token).await?;
    let serving = Arc::new(
        tls::ServingCert::issue(&hierarchy, &store, &cfg)
            .map_err(|e| anyhow::anyhow!("cannot issue core's serving certificate: {e}"))?,
    );
    let tls_config =
        tls::follow_bundle(hierarchy.clone(), serving.clone()).map_err(anyhow::Error::msg)?;

    let listener = TcpListener::bind(cfg.server.listen)
        .await
        .with_context(|| format!("cannot listen on {}", cfg.server.listen))?;
    let listen_addr = listener.local_addr()?;

    let admin_path = cfg.admin_socket();
    if admin_path.exists() {
        std::fs::remove_file(&admin_path)
            .with_context(|| format!("cannot remove stale socket {}", admin_path.display()))?;
    }
    let admin_listener = UnixListener::bind(&admin_path)
        .with_context(|| format!("cannot bind admin socket {}", admin_path.display()))?;
    std::fs::set_permissions(&admin_path, std::fs::Permissions::from_mode(0o600))?;

    // Renew core's serving certificate at half-life.
    {
        let (serving, hierarchy, store, cfg) = (
            serving.clone(),
            hierarchy.clone(),
            store.clone(),
            cfg.clone(),
        );
        tokio::spawn(async move {
            let period = cfg.server.serving_cert_ttl / 2;
            loop {
                tokio::time::sleep(period).await;
                let (s, h, st, c) = (
                    serving.clone(),
                    hierarchy.clone(),
                    store.clone(),
                    cfg.clone(),
                );
                match tokio::task::spawn_blocking(move || s.renew(&h, &st, &c)).await {
                    Ok(Ok(())) => tracing::info!("core serving certificate renewed"),
                    Ok(Err(e)) => tracing::error!(error = %e, "serving certificate renewal failed"),
                    Err(e) => {
                        tracing::error!(error = %e, "serving certificate renewal task failed")
                    }
                }
            }
        });
    }

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|v| *v).await;
    };
    let spire = Arc::new(SpireUpstream::new(
        store.clone(),
        hierarchy.clone(),
        issuance.clone(),
    ));
    let node_server = tonic::transport::Server::builder()
        .add_service(NodeServer::new(
            NodeApi::new(issuance.clone())
                .with_jwt(jwt)
                .with_federation(federation),
        ))
        .add_service(SpireUpstreamServer::new(
            SpireUpstreamApi::new(spire.clone(), hierarchy.clone()).ending_on(stop_rx.clone()),
        ))
        .serve_with_incoming_shutdown(
            tls::incoming(listener, tls_config),
            stopped(stop_rx.clone()),
        );
    let admin_server = tonic::transport::Server::builder()
        .add_service(AdminServer::new(
            AdminApi::new(
                store.clone(),
                hierarchy.clone(),
                keys.clone(),
                crate::api::admin::AdminSettings {
                    join_token_ttl: cfg.nodes.join_token_ttl,
                    max_svid_ttl: cfg.workloads.max_svid_ttl,
                    rotation_preparation: cfg.ca.rotation_preparation,
                },
            )
            .with_revoker(revocation.revoker.clone()),
        ))
        .add_service(SpireAdminServer::new(SpireAdminApi::new(
            spire,
            hierarchy.clone(),
        )))
        .add_service(ControlPlaneAdminServer::new(
            crate::api::control_plane::ControlPlaneAdminApi::new(
                issuance.clone(),
                sa_ring.clone(),
                cfg.control_plane.cert_ttl,
            ),
        ))
        .serve_with_incoming_shutdown(
            audited_admin_connections(UnixListenerStream::new(admin_listener), store.clone()),
            stopped(stop_rx.clone()),
        );
    let oidc = match (&sa_ring, &cfg.control_plane.issuer, cfg.http.public_base()) {
        (Some(ring), Some(issuer), Some(base)) => Some(crate::http::oidc::router(
            ring.clone(),
            issuer.clone(),
            &base,
        )),
        _ => None,
    };
    let signer_server = serve_sa_signer(&cfg, sa_ring.clone(), stopped(stop_rx.clone()))?;
    let http_server = crate::revocation::runtime::serve_http(
        &cfg.http,
        store.clone(),
        hierarchy.clone(),
        revocation.responder.clone(),
        oidc,
        stopped(stop_rx.clone()),
    );
    let est_server = crate::est::serve(
        cfg.est.clone(),
        issuance.clone(),
        hierarchy.clone(),
        serving.clone(),
        stopped(stop_rx),
    );
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    });
    tracing::info!(listen = %listen_addr, admin_socket = %admin_path.display(),
        bundle = %cfg.bundle_path().display(), "keygrid core ready");
    let (a, b, c, d, e) = tokio::join!(
        node_server,
        admin_server,
        http_server,
        est_server,
        signer_server
    );
    a.context("node API server failed")?;
    b.context("admin API server failed")?;
    c?;
    d?;
    e.context("ExternalJWTSigner server failed")?;
    let _ = std::fs::remove_file(&admin_path);
    // A last checkpoint, so the chain as this core leaves it is signed.
    let (s, k) = (store.clone(), audit_key.clone());
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    match tokio::task::spawn_blocking(move || k.checkpoint(&s, now)).await {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => tracing::error!(error = %e, "final audit checkpoint failed"),
        Err(e) => tracing::error!(error = %e, "final audit checkpoint task failed"),
    }
    tracing::info!("keygrid core stopped");
    Ok(())
}
