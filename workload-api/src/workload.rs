//! The SPIFFE Workload API on the agent's Unix socket.
//!
//! Follows the SPIFFE Workload Endpoint and Workload API standards: every call must carry
//! the `workload.spiffe.io: true` header (else InvalidArgument); the caller is identified
//! out of band by the kernel (SO_PEERCRED), never by anything it sends; each stream message
//! carries the full state and is sent at once and on every change; a caller with no
//! identity gets PermissionDenied "no identity issued", the text SPIFFE clients match on.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use keygrid_proto::workload as pb;
use keygrid_proto::workload::spiffe_workload_api_server::SpiffeWorkloadApi;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::UdsConnectInfo;
use tonic::{Request, Response, Status};

use crate::attestor::{unix_selectors, Selector};
use crate::cache::{Cache, Snapshot};

/// The message SPIFFE clients match on when a caller has no identity.
pub const NO_IDENTITY: &str = "no identity issued";

type ResponseStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// Serves the Workload API from the SVID cache.
pub struct WorkloadApi {
    cache: Cache,
}

impl WorkloadApi {
    /// Creates the service.
    pub fn new(cache: Cache) -> Self {
        WorkloadApi { cache }
    }
}

/// Rejects calls without the security header the SPIFFE Workload Endpoint spec requires.
fn check_header<T>(req: &Request<T>) -> Result<(), Status> {
    let values: Vec<_> = req
        .metadata()
        .get_all("workload.spiffe.io")
        .iter()
        .collect();
    match values.as_slice() {
        [v] if v.as_bytes() == b"true" => Ok(()),
        _ => Err(Status::invalid_argument(
            "security header missing from request",
        )),
    }
}

/// Attests the caller from its socket credentials.
fn attest<T>(req: &Request<T>) -> Result<Vec<Selector>, Status> {
    let cred = req
        .extensions()
        .get::<UdsConnectInfo>()
        .and_then(|i| i.peer_cred)
        .ok_or_else(|| Status::permission_denied(NO_IDENTITY))?;
    Ok(unix_selectors(&cred))
}

fn concat(ders: &[Vec<u8>]) -> Vec<u8> {
    ders.concat()
}

/// What one caller should see of a snapshot: `None` while SVIDs it is entitled to are
/// still being minted; `Some(Err)` when it is entitled to nothing.
fn x509_svid_response(
    snap: &Snapshot,
    caller: &[Selector],
) -> Option<Result<pb::X509svidResponse, Status>> {
    if !snap.synced {
        return None;
    }
    let entries = snap.matching(caller);
    if entries.is_empty() {
        return Some(Err(Status::permission_denied(NO_IDENTITY)));
    }
    let bundle = concat(&snap.bundle);
    let mut svids = Vec::with_capacity(entries.len());
    let mut seen_hints = std::collections::HashSet::new();
    for e in entries {
        let svid = snap.svids.get(&e.id)?;
        // Hints must be unique within a response; the oldest entry keeps a shared hint.
        if !e.hint.is_empty() && !seen_hints.insert(e.hint.clone()) {
            continue;
        }
        svids.push(pb::X509svid {
            spiffe_id: svid.spiffe_id.clone(),
            x509_svid: concat(&svid.chain),
            x509_svid_key: svid.key_pkcs8.clone(),
            bundle: bundle.clone(),
            hint: e.hint.clone(),
        });
    }
    Some(Ok(pb::X509svidResponse {
        svids,
        crl: vec![],
        federated_bundles: HashMap::new(),
    }))
}

fn x509_bundles_response(
    snap: &Snapshot,
    caller: &[Selector],
) -> Option<Result<pb::X509BundlesResponse, Status>> {
    if !snap.synced {
        return None;
    }
    if snap.matching(caller).is_empty() {
        return Some(Err(Status::permission_denied(NO_IDENTITY)));
    }
    let mut bundles = HashMap::new();
    bundles.insert(
        format!("spiffe://{}", snap.trust_domain),
        concat(&snap.bundle),
    );
    Some(Ok(pb::X509BundlesResponse {
        crl: vec![],
        bundles,
    }))
}

/// Streams `compose(snapshot)` to the caller now and after every cache change, ending
/// the stream on the first error. With `dedup`, an unchanged message is not re-sent.
fn watch_stream<T, F>(
    mut rx: watch::Receiver<Arc<Snapshot>>,
    dedup: bool,
    compose: F,
) -> ResponseStream<T>
where
    T: PartialEq + Clone + Send + 'static,
    F: Fn(&Snapshot) -> Option<Result<T, Status>> + Send + 'static,
{
    let (tx, out) = mpsc::channel(4);
    tokio::spawn(async move {
        let mut last: Option<T> = None;
        loop {
            let snap = rx.borrow_and_update().clone();
            match compose(&snap) {
                Some(Ok(msg)) if !(dedup && last.as_ref() == Some(&msg)) => {
                    if tx.send(Ok(msg.clone())).await.is_err() {
                        return;
                    }
                    last = Some(msg);
                }
                Some(Ok(_)) => {}
                Some(Err(status)) => {
                    let _ = tx.send(Err(status)).await;
                    return;
                }
                None => {}
            }
            tokio::select! {
                changed = rx.changed() => if changed.is_err() { return },
                _ = tx.closed() => return,
            }
        }
    });
    Box::pin(ReceiverStream::new(out))
}

#[tonic::async_trait]
impl SpiffeWorkloadApi for WorkloadApi {
    type FetchX509SVIDStream = ResponseStream<pb::X509svidResponse>;
    type FetchX509BundlesStream = ResponseStream<pb::X509BundlesResponse>;
    type FetchJWTBundlesStream = ResponseStream<pb::JwtBundlesResponse>;
    type FetchWITSVIDStream = ResponseStream<pb::WitsvidResponse>;
    type FetchWITBundlesStream = ResponseStream<pb::WitBundlesResponse>;

    async fn fetch_x509svid(
        &self,
        req: Request<pb::X509svidRequest>,
    ) -> Result<Response<Self::FetchX509SVIDStream>, Status> {
        check_header(&req)?;
        let caller = attest(&req)?;
        let stream = watch_stream(self.cache.subscribe(), false, move |snap| {
            x509_svid_response(snap, &caller)
        });
        Ok(Response::new(stream))
    }

    async fn fetch_x509_bundles(
        &self,
        req: Request<pb::X509BundlesRequest>,
    ) -> Result<Response<Self::FetchX509BundlesStream>, Status> {
        check_header(&req)?;
        let caller = attest(&req)?;
        let stream = watch_stream(self.cache.subscribe(), true, move |snap| {
            x509_bundles_response(snap, &caller)
        });
        Ok(Response::new(stream))
    }

    async fn fetch_jwtsvid(
        &self,
        req: Request<pb::JwtsvidRequest>,
    ) -> Result<Response<pb::JwtsvidResponse>, Status> {
        check_header(&req)?;
        Err(Status::unimplemented(
            "JWT-SVIDs are not served by this agent yet",
        ))
    }

    async fn fetch_jwt_bundles(
        &self,
        req: Request<pb::JwtBundlesRequest>,
    ) -> Result<Response<Self::FetchJWTBundlesStream>, Status> {
        check_header(&req)?;
        Err(Status::unimplemented(
            "JWT bundles are not served by this agent yet",
        ))
    }

    async fn validate_jwtsvid(
        &self,
        req: Request<pb::ValidateJwtsvidRequest>,
    ) -> Result<Response<pb::ValidateJwtsvidResponse>, Status> {
        check_header(&req)?;
        Err(Status::unimplemented(
            "JWT-SVID validation is not served by this agent yet",
        ))
    }

    async fn fetch_witsvid(
        &self,
        req: Request<pb::WitsvidRequest>,
    ) -> Result<Response<Self::FetchWITSVIDStream>, Status> {
        check_header(&req)?;
        Err(Status::unimplemented(
            "the WIT-SVID profile is not supported",
        ))
    }

    async fn fetch_wit_bundles(
        &self,
        req: Request<pb::WitBundlesRequest>,
    ) -> Result<Response<Self::FetchWITBundlesStream>, Status> {
        check_header(&req)?;
        Err(Status::unimplemented(
            "the WIT-SVID profile is not supported",
        ))
    }
}
