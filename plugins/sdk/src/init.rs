//! SPIRE's private Init service. SPIRE binds its facades only from the names the plugin
//! returns here, so the list must hold exactly the plugin interface and the Config
//! service, and nothing of go-plugin's own.

use keygrid_proto::spire::service::private::init::v1::{
    init_server::Init, DeinitRequest, DeinitResponse, InitRequest, InitResponse,
};
use tonic::{Request, Response, Status};

/// Fully qualified name of SPIRE's Config service, which every configurable plugin lists.
pub const CONFIG_SERVICE_NAME: &str = "spire.service.common.config.v1.Config";

/// Answers Init with a fixed list of service names.
#[derive(Debug, Clone)]
pub struct InitService {
    names: Vec<String>,
}

impl InitService {
    /// An Init service advertising `names` (fully qualified gRPC service names).
    pub fn new(names: Vec<String>) -> Self {
        InitService { names }
    }
}

#[tonic::async_trait]
impl Init for InitService {
    async fn init(&self, request: Request<InitRequest>) -> Result<Response<InitResponse>, Status> {
        tracing::debug!(
            host_services = ?request.get_ref().host_service_names,
            "plugin initialised by host"
        );
        Ok(Response::new(InitResponse {
            plugin_service_names: self.names.clone(),
        }))
    }

    async fn deinit(&self, _: Request<DeinitRequest>) -> Result<Response<DeinitResponse>, Status> {
        tracing::debug!("plugin deinitialised by host");
        Ok(Response::new(DeinitResponse {}))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn init_returns_exactly_the_advertised_names() {
        let svc = InitService::new(vec![
            "spire.plugin.server.upstreamauthority.v1.UpstreamAuthority".into(),
            CONFIG_SERVICE_NAME.into(),
        ]);
        // Unknown or odd host names do not matter: the answer is fixed.
        let resp = svc
            .init(Request::new(InitRequest {
                host_service_names: vec!["".into(), "not.a.Service".into()],
            }))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            resp.plugin_service_names,
            vec![
                "spire.plugin.server.upstreamauthority.v1.UpstreamAuthority".to_string(),
                "spire.service.common.config.v1.Config".to_string()
            ]
        );
        assert!(svc.deinit(Request::new(DeinitRequest {})).await.is_ok());
    }
}
