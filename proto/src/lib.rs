//! Generated gRPC types for every protocol KeyGrid speaks.
//!
//! Keeping all `.proto` files in one crate means one code generator run, one set of
//! prost/tonic versions, and a single place an auditor reads to see what is on the wire.

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
