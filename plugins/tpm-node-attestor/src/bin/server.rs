//! `keygrid-tpm-attestor-server`: started by SPIRE server as the `keygrid_tpm` NodeAttestor.

use std::process::ExitCode;
use std::sync::Arc;

use keygrid_proto::spire::plugin::server::nodeattestor::v1::node_attestor_server::NodeAttestorServer;
use keygrid_spire_plugin_sdk::PluginSpec;
use keygrid_tpm_node_attestor::server::ServerPlugin;
use keygrid_tpm_node_attestor::{PLUGIN_TYPE, SERVER_SERVICE_NAME};

fn main() -> ExitCode {
    keygrid_spire_plugin_sdk::run(
        PluginSpec {
            plugin_type: PLUGIN_TYPE,
            service_name: SERVER_SERVICE_NAME,
        },
        || {
            let plugin = Arc::new(ServerPlugin::default());
            let routes = tonic::service::Routes::new(NodeAttestorServer::from_arc(plugin.clone()));
            (plugin, routes)
        },
    )
}
