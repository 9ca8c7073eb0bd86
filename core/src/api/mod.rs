//! Core's network APIs: the node API over TLS and the admin API over a local socket.

pub mod admin;
pub mod control_plane;
pub mod external_jwt;
pub mod node;
pub mod revocation;
pub mod spire_upstream;
pub mod tls;

use crate::issuance::IssueError;

/// Maps an issuance refusal to the gRPC status a client sees.
pub fn status(e: IssueError) -> tonic::Status {
    match e {
        IssueError::InvalidArgument(m) => tonic::Status::invalid_argument(m),
        IssueError::PermissionDenied(m) => tonic::Status::permission_denied(m),
        IssueError::Internal => tonic::Status::internal("internal error; see the core log"),
    }
}

/// Runs blocking work (HSM signing, SQLite) off the async executor.
pub async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, IssueError> + Send + 'static,
) -> Result<T, tonic::Status> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|_| tonic::Status::internal("worker task failed"))?
        .map_err(status)
}
