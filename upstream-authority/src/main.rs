//! `keygrid-upstream-authority`: started by SPIRE server as an UpstreamAuthority plugin.

use std::process::ExitCode;
use std::sync::Arc;

use keygrid_proto::spire::plugin::server::upstreamauthority::v1::upstream_authority_server::UpstreamAuthorityServer;
use keygrid_spire_plugin_sdk::PluginSpec;
use keygrid_upstream_authority::service::UpstreamAuthorityPlugin;
use keygrid_upstream_authority::{PLUGIN_TYPE, SERVICE_NAME};

fn main() -> ExitCode {
    keygrid_spire_plugin_sdk::run(
        PluginSpec {
            plugin_type: PLUGIN_TYPE,
            service_name: SERVICE_NAME,
        },
        || {
            let plugin = Arc::new(UpstreamAuthorityPlugin::default());
            let routes =
                tonic::service::Routes::new(UpstreamAuthorityServer::from_arc(plugin.clone()));
            (plugin, routes)
        },
    )
}
