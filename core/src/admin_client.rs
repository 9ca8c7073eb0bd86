//! The client side of the admin socket, used by the `keygrid` CLI and `keygrid dev`.

use std::path::{Path, PathBuf};

use anyhow::Context;
use hyper_util::rt::TokioIo;
use keygrid_proto::keygrid::v1::admin_client::AdminClient;
use tonic::transport::{Channel, Endpoint, Uri};

/// Connects to core's admin socket.
pub async fn connect(socket: &Path) -> anyhow::Result<AdminClient<Channel>> {
    Ok(AdminClient::new(channel(socket).await?))
}

/// A channel to core's admin socket, for any of the services served there.
pub async fn channel(socket: &Path) -> anyhow::Result<Channel> {
    if !socket.exists() {
        anyhow::bail!(
            "admin socket {} does not exist: is keygrid core running, and is this its data directory?",
            socket.display()
        );
    }
    let path: PathBuf = socket.to_path_buf();
    // The URI is required by tonic but unused: the connector always dials the socket.
    let channel = Endpoint::try_from("http://localhost")?
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let path = path.clone();
            async move {
                Ok::<_, std::io::Error>(TokioIo::new(tokio::net::UnixStream::connect(path).await?))
            }
        }))
        .await
        .with_context(|| format!("cannot connect to admin socket {}", socket.display()))?;
    Ok(channel)
}
