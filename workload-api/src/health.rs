//! `grpc.health.v1.Health` and gRPC server reflection on the Workload API socket.
//!
//! The Workload API spec asks endpoints to support reflection, and SPIRE's agent serves
//! both on its socket; tools (grpcurl, grpc-health-probe) and orchestrator probes expect
//! them. Health follows the SVID cache: `NOT_SERVING` until the first sync with core (a
//! workload asking then would wait), `SERVING` from then on, including during a core
//! outage, when the agent keeps serving the valid SVIDs it holds.

use keygrid_proto::envoy::service::secret::v3::secret_discovery_service_server::SecretDiscoveryServiceServer;
use keygrid_proto::workload::spiffe_workload_api_server::SERVICE_NAME as SPIFFE_WORKLOAD_API_SERVICE_NAME;
use tonic::server::NamedService;
use tonic_health::server::HealthReporter;
use tonic_health::ServingStatus;

use crate::cache::Cache;

/// The fully qualified SDS service name, as registered on the socket.
const SDS_SERVICE: &str =
    <SecretDiscoveryServiceServer<crate::sds::SdsService> as NamedService>::NAME;

/// The service names the agent reports health for (`""` is the whole server).
pub fn service_names(sds: bool) -> Vec<&'static str> {
    let mut names = vec!["", SPIFFE_WORKLOAD_API_SERVICE_NAME];
    if sds {
        names.push(SDS_SERVICE);
    }
    names
}

/// Keeps the health statuses in step with the cache until the cache closes.
pub async fn follow_cache(reporter: HealthReporter, cache: Cache, sds: bool) {
    let mut rx = cache.subscribe();
    let mut last = None;
    loop {
        let status = if rx.borrow_and_update().synced {
            ServingStatus::Serving
        } else {
            ServingStatus::NotServing
        };
        if last != Some(status) {
            for name in service_names(sds) {
                reporter.set_service_status(name, status).await;
            }
            last = Some(status);
        }
        if rx.changed().await.is_err() {
            return;
        }
    }
}

/// The reflection services (v1 and v1alpha, which older grpcurl builds use), advertising
/// exactly the services on the socket.
pub fn reflection(
    sds: bool,
) -> Result<
    (
        tonic_reflection::server::v1::ServerReflectionServer<
            impl tonic_reflection::server::v1::ServerReflection,
        >,
        tonic_reflection::server::v1alpha::ServerReflectionServer<
            impl tonic_reflection::server::v1alpha::ServerReflection,
        >,
    ),
    tonic_reflection::server::Error,
> {
    let builder = || {
        let mut b = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(keygrid_proto::WORKLOAD_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .with_service_name(SPIFFE_WORKLOAD_API_SERVICE_NAME)
            .with_service_name("grpc.health.v1.Health");
        if sds {
            b = b
                .register_encoded_file_descriptor_set(keygrid_proto::KEYGRID_DESCRIPTOR_SET)
                .with_service_name(SDS_SERVICE);
        }
        b
    };
    Ok((builder().build_v1()?, builder().build_v1alpha()?))
}
