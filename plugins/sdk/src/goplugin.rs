//! go-plugin's own services, which the host calls on every plugin process: the broker
//! stream (mandatory under SPIRE, which sends its host-services address on it), the
//! controller (Shutdown) and the stdio stream (kept open, never used).

use std::pin::Pin;
use std::sync::{Arc, Mutex};

use futures::Stream;
use keygrid_proto::goplugin::{
    grpc_broker_server::GrpcBroker, grpc_controller_server::GrpcController,
    grpc_stdio_server::GrpcStdio, ConnInfo, Empty, StdioData,
};
use tokio_stream::StreamExt;
use tonic::{Request, Response, Status, Streaming};

use crate::serve::ShutdownSignal;

/// Broker id under which SPIRE serves its host services (AgentStore, Metrics, ...).
pub const HOST_SERVICES_BROKER_ID: u32 = 1;

/// A stream that stays open and never yields, for streams the host opens but SPIRE's
/// plugins have nothing to send on.
type Silent<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

fn silent<T: Send + 'static>() -> Silent<T> {
    Box::pin(futures::stream::pending())
}

/// The host-services endpoint SPIRE announced over the broker, if any.
#[derive(Debug, Clone, Default)]
pub struct HostServices(Arc<Mutex<Option<ConnInfo>>>);

impl HostServices {
    /// The latest `ConnInfo` for [`HOST_SERVICES_BROKER_ID`] (network and address to dial).
    pub fn get(&self) -> Option<ConnInfo> {
        self.0.lock().ok().and_then(|g| g.clone())
    }

    fn set(&self, info: ConnInfo) {
        if let Ok(mut g) = self.0.lock() {
            *g = Some(info);
        }
    }
}

/// `plugin.GRPCBroker`: records what the host announces; when the host closes the
/// stream (it does so when it unloads the plugin) the process shuts down.
#[derive(Debug, Clone)]
pub struct Broker {
    host_services: HostServices,
    shutdown: ShutdownSignal,
}

impl Broker {
    /// A broker that stores host announcements in `host_services`.
    pub fn new(host_services: HostServices, shutdown: ShutdownSignal) -> Self {
        Broker {
            host_services,
            shutdown,
        }
    }
}

#[tonic::async_trait]
impl GrpcBroker for Broker {
    type StartStreamStream = Silent<ConnInfo>;

    async fn start_stream(
        &self,
        request: Request<Streaming<ConnInfo>>,
    ) -> Result<Response<Self::StartStreamStream>, Status> {
        let mut inbound = request.into_inner();
        let host_services = self.host_services.clone();
        let shutdown = self.shutdown.clone();
        tokio::spawn(async move {
            loop {
                match inbound.next().await {
                    Some(Ok(info)) => {
                        tracing::debug!(
                            service_id = info.service_id,
                            network = %info.network,
                            address = %info.address,
                            "host announced a brokered connection"
                        );
                        if info.service_id == HOST_SERVICES_BROKER_ID {
                            host_services.set(info);
                        }
                    }
                    Some(Err(e)) => {
                        tracing::debug!(error = %e, "broker stream failed");
                        break;
                    }
                    None => break,
                }
            }
            shutdown.trigger("host closed the plugin broker");
        });
        Ok(Response::new(silent()))
    }
}

/// `plugin.GRPCController`: the host's request to exit.
#[derive(Debug, Clone)]
pub struct Controller {
    shutdown: ShutdownSignal,
}

impl Controller {
    /// A controller that fires `shutdown` on the host's Shutdown call.
    pub fn new(shutdown: ShutdownSignal) -> Self {
        Controller { shutdown }
    }
}

#[tonic::async_trait]
impl GrpcController for Controller {
    async fn shutdown(&self, _: Request<Empty>) -> Result<Response<Empty>, Status> {
        self.shutdown.trigger("host requested shutdown");
        Ok(Response::new(Empty {}))
    }
}

/// `plugin.GRPCStdio`: SPIRE discards forwarded stdio, so the stream stays silent.
#[derive(Debug, Clone, Default)]
pub struct Stdio;

#[tonic::async_trait]
impl GrpcStdio for Stdio {
    type StreamStdioStream = Silent<StdioData>;

    async fn stream_stdio(
        &self,
        _: Request<()>,
    ) -> Result<Response<Self::StreamStdioStream>, Status> {
        Ok(Response::new(silent()))
    }
}
