//! `keygrid-agent run`: node attestation, the SVID cache and the Workload API socket.

use std::os::unix::fs::PermissionsExt;

use anyhow::Context;
use keygrid_proto::workload::spiffe_workload_api_server::SpiffeWorkloadApiServer;
use tokio::net::UnixListener;
use tokio_stream::wrappers::UnixListenerStream;

use crate::attestor::Attestor;
use crate::config::AgentConfig;
use crate::sds::SdsService;
use crate::{cache, node_client::CoreClient, workload::WorkloadApi};
use keygrid_proto::envoy::service::secret::v3::secret_discovery_service_server::SecretDiscoveryServiceServer;

/// Runs the agent until `shutdown` resolves.
pub async fn run(
    cfg: AgentConfig,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    std::fs::create_dir_all(&cfg.data_dir)
        .with_context(|| format!("cannot create {}", cfg.data_dir.display()))?;
    std::fs::set_permissions(&cfg.data_dir, std::fs::Permissions::from_mode(0o700))?;
    let attestor = std::sync::Arc::new(Attestor::from_config(&cfg)?);
    let core = CoreClient::start(cfg.clone()).await?;
    let cache = cache::start(core.clone(), cfg.trust_domain.clone(), cfg.sync_interval);
    if let Some(est) = &cfg.est {
        if let Some(dir) = &est.kubelet_dir {
            tokio::spawn(crate::kubelet::run(core.clone(), est.clone(), dir.clone()));
        }
    }

    if let Some(dir) = cfg.socket_path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    if cfg.socket_path.exists() {
        std::fs::remove_file(&cfg.socket_path)
            .with_context(|| format!("cannot remove stale socket {}", cfg.socket_path.display()))?;
    }
    let listener = UnixListener::bind(&cfg.socket_path)
        .with_context(|| format!("cannot bind {}", cfg.socket_path.display()))?;
    // Any local process may call the Workload API; what it gets depends on who it is.
    std::fs::set_permissions(&cfg.socket_path, std::fs::Permissions::from_mode(0o777))?;
    tracing::info!(node = %core.node_id(), socket = %cfg.socket_path.display(), "keygrid agent ready");

    let sds = cfg.sds.enabled.then(|| {
        SecretDiscoveryServiceServer::new(SdsService::new(
            cache.clone(),
            attestor.clone(),
            cfg.sds.clone(),
        ))
    });
    let (health_reporter, health) = tonic_health::server::health_reporter();
    tokio::spawn(crate::health::follow_cache(
        health_reporter,
        cache.clone(),
        cfg.sds.enabled,
    ));
    let (reflection_v1, reflection_v1alpha) =
        crate::health::reflection(cfg.sds.enabled).context("cannot set up gRPC reflection")?;
    tonic::transport::Server::builder()
        .add_service(SpiffeWorkloadApiServer::new(WorkloadApi::new(
            cache,
            core.clone(),
            attestor,
        )))
        .add_optional_service(sds)
        .add_service(health)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .serve_with_incoming_shutdown(UnixListenerStream::new(listener), shutdown)
        .await
        .context("Workload API server failed")?;
    let _ = std::fs::remove_file(&cfg.socket_path);
    tracing::info!("keygrid agent stopped");
    Ok(())
}
