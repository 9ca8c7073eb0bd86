//! `keygrid-tpm-attestor-agent`: started by SPIRE agent as the `keygrid_tpm` NodeAttestor.

use std::process::ExitCode;
use std::sync::Arc;

use keygrid_proto::spire::plugin::agent::nodeattestor::v1::node_attestor_server::NodeAttestorServer;
use keygrid_spire_plugin_sdk::PluginSpec;
use keygrid_tpm_node_attestor::agent::AgentPlugin;
use keygrid_tpm_node_attestor::{AGENT_SERVICE_NAME, PLUGIN_TYPE};

fn main() -> ExitCode {
    keygrid_spire_plugin_sdk::run(
        PluginSpec {
            plugin_type: PLUGIN_TYPE,
            service_name: AGENT_SERVICE_NAME,
        },
        || {
            let plugin = Arc::new(AgentPlugin::default());
            let routes = tonic::service::Routes::new(NodeAttestorServer::from_arc(plugin.clone()));
            (plugin, routes)
        },
    )
}
