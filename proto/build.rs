//! Generates Rust code for KeyGrid's protos with a vendored `protoc`, so a fresh machine
//! needs no system protobuf compiler.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // Build scripts are single-threaded, so setting the variable is race-free.
    std::env::set_var("PROTOC", protoc);
    let include = protoc_bin_vendored::include_path()?;
    let include = include
        .to_str()
        .ok_or("protoc include path is not UTF-8")?
        .to_string();

    let out_dir = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    tonic_prost_build::configure()
        .file_descriptor_set_path(out_dir.join("keygrid_descriptor.bin"))
        .compile_protos(
            &[
                "proto/keygrid/v1/node.proto",
                "proto/keygrid/v1/admin.proto",
                "proto/keygrid/v1/upstream.proto",
                "proto/keygrid/v1/control_plane.proto",
                "proto/externaljwt/v1/api.proto",
                "proto/externaljwt/v1alpha1/api.proto",
                "proto/goplugin/grpc_broker.proto",
                "proto/goplugin/grpc_controller.proto",
                "proto/goplugin/grpc_stdio.proto",
                "proto/spire/service/private/init/v1/init.proto",
                "proto/spire/service/common/config/v1/config.proto",
                "proto/spire/plugin/types/x509certificate.proto",
                "proto/spire/plugin/types/jwtkey.proto",
                "proto/spire/plugin/server/upstreamauthority/v1/upstreamauthority.proto",
                "proto/spire/plugin/server/nodeattestor/v1/nodeattestor.proto",
                "proto/spire/plugin/agent/nodeattestor/v1/nodeattestor.proto",
                "proto/google/rpc/status.proto",
                "proto/envoy/type/v3/semantic_version.proto",
                "proto/envoy/config/core/v3/base.proto",
                "proto/envoy/config/core/v3/extension.proto",
                "proto/envoy/service/discovery/v3/discovery.proto",
                "proto/envoy/service/secret/v3/sds.proto",
                "proto/envoy/extensions/transport_sockets/tls/v3/common.proto",
                "proto/envoy/extensions/transport_sockets/tls/v3/secret.proto",
                "proto/envoy/extensions/transport_sockets/tls/v3/tls_spiffe_validator_config.proto",
            ],
            &["proto", include.as_str()],
        )?;
    // The Workload API holds one response stream per workload open for hours: use the
    // codec with small per-stream buffers (src/codec.rs).
    tonic_prost_build::configure()
        .codec_path("crate::codec::LeanCodec")
        .file_descriptor_set_path(out_dir.join("workload_descriptor.bin"))
        .compile_protos(
            &["proto/spiffe/workload.proto"],
            &["proto", include.as_str()],
        )?;
    println!("cargo:rerun-if-changed=proto");
    Ok(())
}
