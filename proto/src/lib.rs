//! Generated gRPC types for every protocol KeyGrid speaks.
//!
//! Keeping all `.proto` files in one crate means one code generator run, one set of
//! prost/tonic versions, and a single place an auditor reads to see what is on the wire.

pub mod codec;

/// KeyGrid's own API: the node API agents use and the admin API the CLI uses.
pub mod keygrid {
    /// Version 1 of the KeyGrid API.
    pub mod v1 {
        tonic::include_proto!("keygrid.v1");
    }
}

/// The SPIFFE Workload API. The upstream proto has no package, so prost names the
/// generated file `_`; the service on the wire is the bare `SpiffeWorkloadAPI`.
pub mod workload {
    tonic::include_proto!("_");
}

/// Envoy's Secret Discovery Service (v3): a hand-written, wire-compatible subset of
/// Envoy's API (see `proto/envoy/README.md`), for the agent's SDS server.
pub mod envoy {
    /// `envoy.config.*`
    pub mod config {
        /// `envoy.config.core`
        pub mod core {
            /// `envoy.config.core.v3`: Node, DataSource, TypedExtensionConfig.
            pub mod v3 {
                tonic::include_proto!("envoy.config.core.v3");
            }
        }
    }
    /// `envoy.type.*`
    pub mod r#type {
        /// `envoy.type.v3`: SemanticVersion.
        pub mod v3 {
            tonic::include_proto!("envoy.r#type.v3");
        }
    }
    /// `envoy.service.*`
    pub mod service {
        /// `envoy.service.discovery`
        pub mod discovery {
            /// `envoy.service.discovery.v3`: DiscoveryRequest/Response.
            pub mod v3 {
                tonic::include_proto!("envoy.service.discovery.v3");
            }
        }
        /// `envoy.service.secret`
        pub mod secret {
            /// `envoy.service.secret.v3`: SecretDiscoveryService.
            pub mod v3 {
                tonic::include_proto!("envoy.service.secret.v3");
            }
        }
    }
    /// `envoy.extensions.*`
    pub mod extensions {
        /// `envoy.extensions.transport_sockets`
        pub mod transport_sockets {
            /// `envoy.extensions.transport_sockets.tls`
            pub mod tls {
                /// `envoy.extensions.transport_sockets.tls.v3`: Secret and validators.
                pub mod v3 {
                    tonic::include_proto!("envoy.extensions.transport_sockets.tls.v3");
                }
            }
        }
    }
}

/// `google.rpc.Status`, carried in xDS NACKs.
pub mod google {
    /// `google.rpc`
    pub mod rpc {
        tonic::include_proto!("google.rpc");
    }
}
