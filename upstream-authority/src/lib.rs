//! `keygrid-upstream-authority`: a SPIRE server UpstreamAuthority plugin that has each of
//! SPIRE's CA keys certified by KeyGrid's `spire-upstream` issuer.
//!
//! - [`config`]: the HCL `plugin_data` fields and their checks.
//! - [`core_client`]: the mTLS connection to KeyGrid core.
//! - [`service`]: the UpstreamAuthority interface SPIRE calls.

pub mod config;
pub mod core_client;
pub mod service;

/// The plugin type SPIRE loads this binary as (also go-plugin's magic cookie).
pub const PLUGIN_TYPE: &str = "UpstreamAuthority";
/// The interface this plugin implements.
pub const SERVICE_NAME: &str = "spire.plugin.server.upstreamauthority.v1.UpstreamAuthority";
