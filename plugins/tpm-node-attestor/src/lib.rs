//! SPIRE NodeAttestor plugins for KeyGrid's TPM attestation (selector type and plugin name
//! `keygrid_tpm`): the server side verifies, the agent side drives the TPM. Both carry the
//! `keygrid-tpm-attestation` wire messages unchanged as SPIRE payloads and challenges.
//!
//! - [`server`]: `spire.plugin.server.nodeattestor.v1.NodeAttestor` (binary `keygrid-tpm-attestor-server`);
//! - [`agent`]: `spire.plugin.agent.nodeattestor.v1.NodeAttestor` (binary `keygrid-tpm-attestor-agent`).

pub mod agent;
pub mod server;

/// go-plugin magic cookie / SPIRE plugin type of both sides.
pub const PLUGIN_TYPE: &str = "NodeAttestor";
/// Service name of the server interface.
pub const SERVER_SERVICE_NAME: &str = "spire.plugin.server.nodeattestor.v1.NodeAttestor";
/// Service name of the agent interface.
pub const AGENT_SERVICE_NAME: &str = "spire.plugin.agent.nodeattestor.v1.NodeAttestor";
