//! The plugin process's life: cookie check, Unix socket, gRPC server with go-plugin's
//! and SPIRE's services, the handshake line, and a clean exit when SPIRE goes away.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use keygrid_proto::goplugin::{
    grpc_broker_server::GrpcBrokerServer, grpc_controller_server::GrpcControllerServer,
    grpc_stdio_server::GrpcStdioServer,
};
use keygrid_proto::spire::service::common::config::v1::config_server::ConfigServer;
use keygrid_proto::spire::service::private::init::v1::init_server::InitServer;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::watch;
use tokio_stream::wrappers::UnixListenerStream;
use tonic::service::Routes;

use crate::config::{ConfigService, Configurable};
use crate::goplugin::{Broker, Controller, HostServices, Stdio};
use crate::handshake::{check_cookie, handshake_line, host_offers_our_version};
use crate::init::{InitService, CONFIG_SERVICE_NAME};

/// What SPIRE knows the plugin as.
#[derive(Debug, Clone, Copy)]
pub struct PluginSpec {
    /// The plugin type, which is also go-plugin's magic cookie (e.g. `UpstreamAuthority`).
    pub plugin_type: &'static str,
    /// Fully qualified name of the plugin interface the process implements.
    pub service_name: &'static str,
}

/// A one-shot, cloneable "time to exit" flag with the reason that set it first.
#[derive(Debug, Clone)]
pub struct ShutdownSignal(Arc<watch::Sender<Option<&'static str>>>);

impl Default for ShutdownSignal {
    fn default() -> Self {
        ShutdownSignal(Arc::new(watch::channel(None).0))
    }
}

impl ShutdownSignal {
    /// Asks the process to exit; later reasons are ignored.
    pub fn trigger(&self, reason: &'static str) {
        self.0.send_if_modified(|r| {
            if r.is_none() {
                *r = Some(reason);
                true
            } else {
                false
            }
        });
    }

    /// Resolves with the first reason once shutdown was asked for.
    pub async fn wait(&self) -> &'static str {
        let mut rx = self.0.subscribe();
        let reason = match rx.wait_for(|r| r.is_some()).await {
            Ok(r) => r.unwrap_or("shutdown"),
            // The sender lives in `self`, so it cannot be dropped while we wait.
            Err(_) => "shutdown",
        };
        reason
    }
}

/// Why serving stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The Unix socket could not be created.
    #[error("cannot create the plugin socket in {dir}: {source}")]
    Socket {
        /// Directory tried.
        dir: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// The handshake line could not be written (the host closed stdout).
    #[error("cannot write the handshake line to stdout: {0}")]
    Handshake(std::io::Error),
    /// Signal handlers could not be installed.
    #[error("cannot install signal handlers: {0}")]
    Signals(std::io::Error),
}

/// Runs a SPIRE plugin process to completion and returns its exit code.
///
/// Checks the cookie before anything else (a wrong or missing cookie prints a message
/// on stderr and exits 1, stdout untouched), installs hclog logging, then calls `make`
/// inside the async runtime to build the plugin and its interface routes, and serves
/// them next to the go-plugin and SPIRE services until SPIRE leaves.
pub fn run<P, F>(spec: PluginSpec, make: F) -> ExitCode
where
    P: Configurable,
    F: FnOnce() -> (Arc<P>, Routes),
{
    if let Err(e) = check_cookie(spec.plugin_type, |k| std::env::var(k).ok()) {
        eprintln!("{e}");
        return ExitCode::from(1);
    }
    crate::log::init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!(error = %e, "cannot start the async runtime");
            return ExitCode::from(1);
        }
    };
    let result = runtime.block_on(async {
        let (plugin, routes) = make();
        serve(spec, plugin, routes).await
    });
    // Streams SPIRE left open must not hold the process.
    runtime.shutdown_timeout(Duration::from_millis(200));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "plugin stopped");
            ExitCode::from(1)
        }
    }
}

/// Directory for the plugin socket: `$PLUGIN_UNIX_SOCKET_DIR` if the host set it,
/// otherwise the system temp dir (as go-plugin's own servers do).
fn socket_parent() -> PathBuf {
    std::env::var_os("PLUGIN_UNIX_SOCKET_DIR")
        .map(PathBuf::from)
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or_else(std::env::temp_dir)
}

/// Serves the plugin until SPIRE unloads it (Shutdown, broker closed), SPIRE's process
/// disappears, or SIGTERM arrives. SIGINT is ignored, as in go-plugin, so a Ctrl-C in
/// SPIRE's terminal lets SPIRE unload its plugins in order.
pub async fn serve<P: Configurable>(
    spec: PluginSpec,
    plugin: Arc<P>,
    routes: Routes,
) -> Result<(), ServeError> {
    if !host_offers_our_version(std::env::var("PLUGIN_PROTOCOL_VERSIONS").ok().as_deref()) {
        tracing::warn!("host does not offer plugin protocol version 1; answering 1 anyway");
    }
    let parent = socket_parent();
    let dir = tempfile::Builder::new()
        .prefix("plugin")
        .tempdir_in(&parent)
        .map_err(|source| ServeError::Socket {
            dir: parent.clone(),
            source,
        })?;
    let path = dir.path().join("plugin.sock");
    let listener = tokio::net::UnixListener::bind(&path).map_err(|source| ServeError::Socket {
        dir: parent.clone(),
        source,
    })?;

    let shutdown = ShutdownSignal::default();
    let mut sigterm = signal(SignalKind::terminate()).map_err(ServeError::Signals)?;
    let mut sigint = signal(SignalKind::interrupt()).map_err(ServeError::Signals)?;

    let routes = routes
        .add_service(GrpcBrokerServer::new(Broker::new(
            HostServices::default(),
            shutdown.clone(),
        )))
        .add_service(GrpcControllerServer::new(Controller::new(shutdown.clone())))
        .add_service(GrpcStdioServer::new(Stdio))
        .add_service(InitServer::new(InitService::new(vec![
            spec.service_name.to_string(),
            CONFIG_SERVICE_NAME.to_string(),
        ])))
        .add_service(ConfigServer::new(ConfigService::new(plugin)));
    let stop = shutdown.clone();
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .add_routes(routes)
            .serve_with_incoming_shutdown(UnixListenerStream::new(listener), async move {
                stop.wait().await;
            }),
    );

    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "{}", handshake_line(&path)).map_err(ServeError::Handshake)?;
        out.flush().map_err(ServeError::Handshake)?;
    }
    tracing::debug!(socket = %path.display(), "plugin serving");

    // SPIRE sets PDEATHSIG=SIGKILL on Linux; the parent check also covers hosts that
    // do not. stdin is not a signal here: go-plugin hands SPIRE's own stdin to the
    // plugin, which is /dev/null (immediate EOF) under most service managers.
    // SAFETY: getppid(2) has no preconditions and cannot fail.
    let parent_pid = unsafe { libc::getppid() };
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let reason = loop {
        tokio::select! {
            r = shutdown.wait() => break r,
            _ = sigterm.recv() => break "SIGTERM received",
            _ = sigint.recv() => tracing::debug!("SIGINT ignored; waiting for the host to unload the plugin"),
            _ = tick.tick() => {
                // SAFETY: as above.
                if unsafe { libc::getppid() } != parent_pid {
                    break "host process exited";
                }
            }
        }
    };
    tracing::debug!(reason, "plugin exiting");
    shutdown.trigger(reason);
    // Give the server a moment to answer the Shutdown call in flight, but do not wait
    // for long-lived streams the host left open.
    let _ = tokio::time::timeout(Duration::from_millis(500), server).await;
    drop(dir);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn shutdown_keeps_the_first_reason() {
        let s = ShutdownSignal::default();
        let waiter = {
            let s = s.clone();
            tokio::spawn(async move { s.wait().await })
        };
        s.trigger("first");
        s.trigger("second");
        assert_eq!(waiter.await.unwrap(), "first");
        assert_eq!(s.wait().await, "first");
    }
}
