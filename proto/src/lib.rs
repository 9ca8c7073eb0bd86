//! Generated gRPC types for every protocol KeyGrid speaks.
//!
//! Keeping all `.proto` files in one crate means one code generator run, one set of
//! prost/tonic versions, and a single place an auditor reads to see what is on the wire.

pub mod codec;

/// Encoded descriptors of the SPIFFE Workload API, for gRPC server reflection on the agent
/// socket (the Workload API spec asks endpoints to support it).
pub const WORKLOAD_DESCRIPTOR_SET: &[u8] =
    tonic::include_file_descriptor_set!("workload_descriptor");

/// Encoded descriptors of every other proto here (KeyGrid, SPIRE plugins, Envoy SDS), for
/// reflection on the services each server registers.
pub const KEYGRID_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("keygrid_descriptor");

/// KeyGrid's own API: the node API agents use and the admin API the CLI uses.
pub mod keygrid {
    /// Version 1 of the KeyGrid API.
    pub mod v1 {
        tonic::include_proto!("keygrid.v1");
    }
}

/// Kubernetes' ExternalJWTSigner API (KEP-740), which kube-apiserver calls to sign
/// service-account tokens; both packages are served on one socket because apiservers of
/// 1.32–1.35 speak `v1alpha1` and newer ones `v1`.
pub mod externaljwt {
    /// Package `v1` (kube-apiserver 1.36+).
    pub mod v1 {
        tonic::include_proto!("v1");
    }
    /// Package `v1alpha1` (kube-apiserver 1.32–1.35).
    pub mod v1alpha1 {
        tonic::include_proto!("v1alpha1");
    }
}

/// The SPIFFE Workload API. The upstream proto has no package, so prost names the
/// generated file `_`; the service on the wire is the bare `SpiffeWorkloadAPI`.
pub mod workload {
    tonic::include_proto!("_");
}

/// hashicorp/go-plugin's own services (broker, controller, stdio), package `plugin` on
/// the wire; every SPIRE plugin process serves them next to its plugin interface.
pub mod goplugin {
    tonic::include_proto!("plugin");
}

/// The subset of the SPIRE plugin SDK's protos KeyGrid's plugins implement. Module
/// nesting mirrors the proto packages so generated cross-package paths resolve.
pub mod spire {
    /// Services SPIRE offers or requires around every plugin.
    pub mod service {
        /// SPIRE's private services (not part of the public SDK surface).
        pub mod private {
            /// The Init handshake that tells SPIRE which services the plugin implements.
            pub mod init {
                /// Version 1.
                pub mod v1 {
                    tonic::include_proto!("spire.service.private.init.v1");
                }
            }
        }
        /// Services common to server and agent plugins.
        pub mod common {
            /// Plugin configuration (HCL `plugin_data`).
            pub mod config {
                /// Version 1.
                pub mod v1 {
                    tonic::include_proto!("spire.service.common.config.v1");
                }
            }
        }
    }
    /// Plugin interfaces and their shared types.
    pub mod plugin {
        /// Types shared by plugin interfaces (certificates, JWT keys).
        pub mod types {
            tonic::include_proto!("spire.plugin.types");
        }
        /// Server-side plugin interfaces.
        pub mod server {
            /// The UpstreamAuthority interface: SPIRE's CA signed by an external CA.
            pub mod upstreamauthority {
                /// Version 1.
                pub mod v1 {
                    tonic::include_proto!("spire.plugin.server.upstreamauthority.v1");
                }
            }
            /// The server NodeAttestor interface: decides an agent's identity from its evidence.
            pub mod nodeattestor {
                /// Version 1.
                pub mod v1 {
                    tonic::include_proto!("spire.plugin.server.nodeattestor.v1");
                }
            }
        }
        /// Agent-side plugin interfaces.
        pub mod agent {
            /// The agent NodeAttestor interface: produces the agent's evidence and answers challenges.
            pub mod nodeattestor {
                /// Version 1.
                pub mod v1 {
                    tonic::include_proto!("spire.plugin.agent.nodeattestor.v1");
                }
            }
        }
    }
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
