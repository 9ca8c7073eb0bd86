//! The agent's socket serves `grpc.health.v1.Health` and gRPC server reflection beside the
//! Workload API and SDS, as SPIRE's agent does; checked with the grpc-rust project's own
//! health and reflection clients.

use keygrid_integration::{unix_channel, DevEnv};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;
use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
use tonic_reflection::pb::v1::ServerReflectionRequest;

#[tokio::test(flavor = "multi_thread")]
async fn health_and_reflection_on_the_workload_socket() {
    let env = DevEnv::start("5m");
    let channel = unix_channel(&env.socket()).await;

    // Serving once the cache has synced with core, for the whole server and each service;
    // an unknown service is NotFound, as the health protocol says.
    let mut health = HealthClient::new(channel.clone());
    for service in [
        "",
        "SpiffeWorkloadAPI",
        "envoy.service.secret.v3.SecretDiscoveryService",
    ] {
        let started = std::time::Instant::now();
        loop {
            let status = health
                .check(HealthCheckRequest {
                    service: service.into(),
                })
                .await
                .unwrap_or_else(|e| panic!("health check of {service:?}: {e}"))
                .into_inner()
                .status;
            if status == ServingStatus::Serving as i32 {
                break;
            }
            assert_eq!(status, ServingStatus::NotServing as i32, "{service:?}");
            assert!(
                started.elapsed() < std::time::Duration::from_secs(30),
                "{service:?} not serving within 30 s"
            );
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    }
    // Serving means a workload gets its SVID now.
    let mut wl = keygrid_integration::workload_client(&env.socket()).await;
    let first = wl
        .fetch_x509svid(keygrid_integration::with_header(
            keygrid_proto::workload::X509svidRequest {},
        ))
        .await
        .expect("stream")
        .into_inner()
        .message()
        .await
        .expect("message");
    assert!(first.is_some_and(|m| !m.svids.is_empty()));
    let unknown = health
        .check(HealthCheckRequest {
            service: "no.such.Service".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), tonic::Code::NotFound);

    // Reflection lists exactly the services on the socket and describes the Workload API.
    let mut reflection = ServerReflectionClient::new(channel);
    let requests = tokio_stream::iter(vec![
        ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::ListServices(String::new())),
        },
        ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::FileContainingSymbol(
                "SpiffeWorkloadAPI".into(),
            )),
        },
    ]);
    let mut answers = reflection
        .server_reflection_info(requests)
        .await
        .expect("reflection stream")
        .into_inner();
    let listed = match answers
        .message()
        .await
        .expect("answer")
        .expect("one")
        .message_response
    {
        Some(MessageResponse::ListServicesResponse(l)) => {
            l.service.into_iter().map(|s| s.name).collect::<Vec<_>>()
        }
        other => panic!("unexpected reflection answer {other:?}"),
    };
    for want in [
        "SpiffeWorkloadAPI",
        "grpc.health.v1.Health",
        "envoy.service.secret.v3.SecretDiscoveryService",
    ] {
        assert!(listed.iter().any(|s| s == want), "{want} not in {listed:?}");
    }
    assert!(
        !listed.iter().any(|s| s.starts_with("keygrid.")),
        "core's internal services are not advertised on the agent socket: {listed:?}"
    );
    match answers
        .message()
        .await
        .expect("answer")
        .expect("one")
        .message_response
    {
        Some(MessageResponse::FileDescriptorResponse(f)) => {
            assert!(!f.file_descriptor_proto.is_empty());
        }
        other => panic!("unexpected reflection answer {other:?}"),
    }
}
