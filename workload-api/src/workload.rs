//! The SPIFFE Workload API on the agent's Unix socket.
//!
//! Follows the SPIFFE Workload Endpoint and Workload API standards: every call must carry
//! the `workload.spiffe.io: true` header (else InvalidArgument); the caller is identified
//! out of band by the kernel and the orchestrator, never by anything it sends; each stream
//! message carries the full state and is sent at once and on every change; a caller with no
//! identity gets PermissionDenied "no identity issued", the text SPIFFE clients match on.

use std::collections::{HashMap, HashSet};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::Stream;
use keygrid_proto::keygrid::v1 as kg;
use keygrid_proto::workload as pb;
use keygrid_proto::workload::spiffe_workload_api_server::SpiffeWorkloadApi;
use tokio::sync::watch;
use tonic::transport::server::UdsConnectInfo;
use tonic::{Request, Response, Status};

use crate::attestor::{AttestError, Attestor, Selector};
use crate::cache::{now_ms, Cache, CachedSvid, Snapshot};
use crate::identity::{self, Identities};
use crate::jwt::{self, JwtSvidCache};
use crate::node_client::CoreClient;

/// The message SPIFFE clients match on when a caller has no identity.
pub const NO_IDENTITY: &str = "no identity issued";

type ResponseStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// Serves the Workload API from the SVID cache.
pub struct WorkloadApi {
    cache: Cache,
    core: Arc<CoreClient>,
    attestor: Arc<Attestor>,
    jwt_svids: Arc<JwtSvidCache>,
}

impl WorkloadApi {
    /// Creates the service.
    pub fn new(cache: Cache, core: Arc<CoreClient>, attestor: Arc<Attestor>) -> Self {
        WorkloadApi {
            cache,
            core,
            attestor,
            jwt_svids: Arc::new(JwtSvidCache::default()),
        }
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

/// Attests the caller of `req` from its socket credentials; shared with the SDS service.
pub async fn attest_request<T>(
    attestor: &Attestor,
    req: &Request<T>,
) -> Result<Vec<Selector>, Status> {
    let cred = req
        .extensions()
        .get::<UdsConnectInfo>()
        .and_then(|i| i.peer_cred)
        .ok_or_else(|| Status::permission_denied(NO_IDENTITY))?;
    attestor.attest(&cred).await.map_err(|e| match e {
        AttestError::CallerGone => Status::unauthenticated(e.to_string()),
        AttestError::NoCredentials => Status::permission_denied(NO_IDENTITY),
        AttestError::Failed(_) => Status::unavailable("workload attestation failed"),
    })
}

fn concat(ders: &[Vec<u8>]) -> Vec<u8> {
    ders.concat()
}

/// An SVID is served only while it is valid.
fn usable(svid: Option<&CachedSvid>) -> Option<&CachedSvid> {
    svid.filter(|s| s.not_after_ms > now_ms())
}

/// What one caller should see of a snapshot: `None` while SVIDs it is entitled to are
/// still being minted; `Some(Err)` when it is entitled to nothing.
pub fn x509_svid_response(
    snap: &Snapshot,
    caller: &[Selector],
    default_id: Option<&str>,
) -> Option<Result<pb::X509svidResponse, Status>> {
    if !snap.synced {
        return None;
    }
    let bundle = concat(&snap.bundle);
    let mut svids = Vec::new();
    match identity::resolve(snap, caller, default_id) {
        Identities::None => return Some(Err(Status::permission_denied(NO_IDENTITY))),
        Identities::Entries(entries) => {
            let mut seen_hints = HashSet::new();
            for e in entries {
                let svid = usable(snap.svids.get(&e.id))?;
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
        }
        Identities::Default(id) => {
            let svid = usable(snap.default_svids.get(id))?;
            svids.push(pb::X509svid {
                spiffe_id: svid.spiffe_id.clone(),
                x509_svid: concat(&svid.chain),
                x509_svid_key: svid.key_pkcs8.clone(),
                bundle,
                hint: String::new(),
            });
        }
    }
    Some(Ok(pb::X509svidResponse {
        svids,
        crl: vec![],
        federated_bundles: federated_x509(snap).collect(),
    }))
}

/// Federated X.509 bundles keyed by trust-domain ID (`spiffe://<td>`), concatenated DER.
fn federated_x509(snap: &Snapshot) -> impl Iterator<Item = (String, Vec<u8>)> + '_ {
    snap.federated
        .iter()
        .filter(|f| !f.x509_authorities.is_empty())
        .map(|f| {
            (
                format!("spiffe://{}", f.trust_domain),
                concat(&f.x509_authorities),
            )
        })
}

fn has_identity(snap: &Snapshot, caller: &[Selector], default_id: Option<&str>) -> bool {
    !matches!(
        identity::resolve(snap, caller, default_id),
        Identities::None
    )
}

fn x509_bundles_response(
    snap: &Snapshot,
    caller: &[Selector],
    default_id: Option<&str>,
) -> Option<Result<pb::X509BundlesResponse, Status>> {
    if !snap.synced {
        return None;
    }
    if !has_identity(snap, caller, default_id) {
        return Some(Err(Status::permission_denied(NO_IDENTITY)));
    }
    let mut bundles: HashMap<String, Vec<u8>> = federated_x509(snap).collect();
    bundles.insert(
        format!("spiffe://{}", snap.trust_domain),
        concat(&snap.bundle),
    );
    Some(Ok(pb::X509BundlesResponse {
        crl: vec![],
        bundles,
    }))
}

fn jwt_bundles_response(
    snap: &Snapshot,
    caller: &[Selector],
    default_id: Option<&str>,
) -> Option<Result<pb::JwtBundlesResponse, Status>> {
    if !snap.synced || snap.jwt_bundle.is_empty() {
        return None;
    }
    if !has_identity(snap, caller, default_id) {
        return Some(Err(Status::permission_denied(NO_IDENTITY)));
    }
    let mut bundles: HashMap<String, Vec<u8>> = snap
        .federated
        .iter()
        .filter(|f| !f.jwks.is_empty())
        .map(|f| (format!("spiffe://{}", f.trust_domain), f.jwks.clone()))
        .collect();
    bundles.insert(
        format!("spiffe://{}", snap.trust_domain),
        snap.jwt_bundle.clone(),
    );
    Some(Ok(pb::JwtBundlesResponse { bundles }))
}

/// Streams `compose(snapshot)` to the caller now and after every cache change, ending
/// the stream on the first error. With `dedup`, an unchanged message is not re-sent.
/// `hold` lives as long as the stream (it keeps a default identity minted).
///
/// The stream is computed when the transport polls it, not by a task of its own: no task
/// and no channel per open stream (a channel's first block alone is ~3 KB, which at 10,000
/// streams was a quarter of the agent's memory). A slow reader is simply polled later and
/// gets the newest state, since every message carries the full state anyway.
fn watch_stream<T, F, H>(
    rx: watch::Receiver<Arc<Snapshot>>,
    dedup: bool,
    hold: H,
    compose: F,
) -> ResponseStream<T>
where
    T: PartialEq + Clone + Send + 'static,
    F: Fn(&Snapshot) -> Option<Result<T, Status>> + Send + 'static,
    H: Send + 'static,
{
    struct State<T, F, H> {
        rx: watch::Receiver<Arc<Snapshot>>,
        compose: F,
        dedup: bool,
        /// What a deduplicating stream last sent (others keep no copy).
        last: Option<T>,
        /// Whether the current snapshot still has to be looked at.
        fresh: bool,
        done: bool,
        _hold: H,
    }
    let state = State {
        rx,
        compose,
        dedup,
        last: None,
        fresh: true,
        done: false,
        _hold: hold,
    };
    Box::pin(futures::stream::unfold(state, |mut st| async move {
        if st.done {
            return None;
        }
        loop {
            if !st.fresh && st.rx.changed().await.is_err() {
                return None;
            }
            st.fresh = false;
            let snap = st.rx.borrow_and_update().clone();
            match (st.compose)(&snap) {
                Some(Ok(msg)) if !(st.dedup && st.last.as_ref() == Some(&msg)) => {
                    st.last = st.dedup.then(|| msg.clone());
                    return Some((Ok(msg), st));
                }
                Some(Ok(_)) | None => {}
                Some(Err(status)) => {
                    st.done = true;
                    return Some((Err(status), st));
                }
            }
        }
    }))
}

impl WorkloadApi {
    /// Attests the caller and works out its default identity (if it may have one).
    async fn caller<T>(&self, req: &Request<T>) -> Result<(Vec<Selector>, Option<String>), Status> {
        let selectors = attest_request(&self.attestor, req).await?;
        let default_id = if self.attestor.default_identity_enabled() {
            identity::default_id(&self.cache.subscribe().borrow().trust_domain, &selectors)
        } else {
            None
        };
        Ok((selectors, default_id))
    }

    /// The current snapshot once the cache has synced with core (waits briefly).
    async fn synced_snapshot(&self) -> Result<Arc<Snapshot>, Status> {
        let mut rx = self.cache.subscribe();
        let synced = tokio::time::timeout(Duration::from_secs(5), async {
            rx.wait_for(|s| s.synced).await.map(|s| s.clone())
        })
        .await;
        match synced {
            Ok(Ok(s)) => Ok(s),
            _ => Err(Status::unavailable(
                "agent has not synchronised with core yet",
            )),
        }
    }

    async fn mint_jwt(
        &self,
        spiffe_id: &str,
        entry_id: &str,
        default_id: &str,
        audience: &[String],
    ) -> Result<String, Status> {
        if let Some(t) = self.jwt_svids.get(spiffe_id, audience, now_ms()) {
            return Ok(t);
        }
        let res = self
            .core
            .client()
            .mint_jwtsvid(kg::MintJwtsvidRequest {
                entry_id: entry_id.to_string(),
                audience: audience.to_vec(),
                default_spiffe_id: default_id.to_string(),
            })
            .await
            .map_err(|s| match s.code() {
                tonic::Code::PermissionDenied => {
                    tracing::warn!(spiffe_id, reason = %s.message(), "core refused a JWT-SVID");
                    Status::permission_denied(NO_IDENTITY)
                }
                tonic::Code::InvalidArgument => Status::invalid_argument(s.message()),
                _ => Status::unavailable(format!("unable to mint JWT-SVID: {}", s.message())),
            })?
            .into_inner();
        self.jwt_svids.put(
            spiffe_id,
            audience,
            res.token.clone(),
            now_ms(),
            res.expires_at,
        );
        Ok(res.token)
    }
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
        let (caller, default_id) = self.caller(&req).await?;
        let hold = default_id.as_deref().map(|id| self.cache.want_default(id));
        let stream = watch_stream(self.cache.subscribe(), false, hold, move |snap| {
            x509_svid_response(snap, &caller, default_id.as_deref())
        });
        Ok(Response::new(stream))
    }

    async fn fetch_x509_bundles(
        &self,
        req: Request<pb::X509BundlesRequest>,
    ) -> Result<Response<Self::FetchX509BundlesStream>, Status> {
        check_header(&req)?;
        let (caller, default_id) = self.caller(&req).await?;
        let hold = default_id.as_deref().map(|id| self.cache.want_default(id));
        let stream = watch_stream(self.cache.subscribe(), true, hold, move |snap| {
            x509_bundles_response(snap, &caller, default_id.as_deref())
        });
        Ok(Response::new(stream))
    }

    async fn fetch_jwtsvid(
        &self,
        req: Request<pb::JwtsvidRequest>,
    ) -> Result<Response<pb::JwtsvidResponse>, Status> {
        check_header(&req)?;
        if req.get_ref().audience.is_empty() {
            return Err(Status::invalid_argument("audience must be specified"));
        }
        if req.get_ref().audience.iter().any(|a| a.is_empty()) {
            return Err(Status::invalid_argument(
                "audience values must not be empty",
            ));
        }
        let wanted_id = req.get_ref().spiffe_id.clone();
        if !wanted_id.is_empty() && !identity::is_spiffe_id(&wanted_id) {
            return Err(Status::invalid_argument(format!(
                "invalid requested SPIFFE ID {wanted_id:?}"
            )));
        }
        let (caller, default_id) = self.caller(&req).await?;
        let audience = req.into_inner().audience;
        let snap = self.synced_snapshot().await?;
        // (spiffe_id, entry_id, default_spiffe_id, hint)
        let mut targets: Vec<(String, String, String, String)> =
            match identity::resolve(&snap, &caller, default_id.as_deref()) {
                Identities::None => vec![],
                Identities::Entries(entries) => entries
                    .into_iter()
                    .map(|e| {
                        (
                            e.spiffe_id.clone(),
                            e.id.clone(),
                            String::new(),
                            e.hint.clone(),
                        )
                    })
                    .collect(),
                Identities::Default(id) => {
                    vec![(id.to_string(), String::new(), id.to_string(), String::new())]
                }
            };
        if !wanted_id.is_empty() {
            targets.retain(|t| t.0 == wanted_id);
        }
        if targets.is_empty() {
            return Err(Status::permission_denied(NO_IDENTITY));
        }
        let mut svids = Vec::with_capacity(targets.len());
        let mut seen_hints = HashSet::new();
        let mut seen_ids = HashSet::new();
        for (spiffe_id, entry_id, default, hint) in targets {
            // Several entries may grant one ID; one token per ID is enough.
            if !seen_ids.insert(spiffe_id.clone())
                || (!hint.is_empty() && !seen_hints.insert(hint.clone()))
            {
                continue;
            }
            let token = self
                .mint_jwt(&spiffe_id, &entry_id, &default, &audience)
                .await?;
            svids.push(pb::Jwtsvid {
                spiffe_id,
                svid: token,
                hint,
            });
        }
        Ok(Response::new(pb::JwtsvidResponse { svids }))
    }

    async fn fetch_jwt_bundles(
        &self,
        req: Request<pb::JwtBundlesRequest>,
    ) -> Result<Response<Self::FetchJWTBundlesStream>, Status> {
        check_header(&req)?;
        let (caller, default_id) = self.caller(&req).await?;
        let hold = default_id.as_deref().map(|id| self.cache.want_default(id));
        let stream = watch_stream(self.cache.subscribe(), true, hold, move |snap| {
            jwt_bundles_response(snap, &caller, default_id.as_deref())
        });
        Ok(Response::new(stream))
    }

    async fn validate_jwtsvid(
        &self,
        req: Request<pb::ValidateJwtsvidRequest>,
    ) -> Result<Response<pb::ValidateJwtsvidResponse>, Status> {
        check_header(&req)?;
        let pb::ValidateJwtsvidRequest { audience, svid } = req.get_ref().clone();
        if audience.is_empty() {
            return Err(Status::invalid_argument("audience must be specified"));
        }
        if svid.is_empty() {
            return Err(Status::invalid_argument("svid must be specified"));
        }
        // Validation needs no identity, only the bundles; the caller is still attested so a
        // process that cannot be identified at all is refused as for every other call.
        attest_request(&self.attestor, &req).await?;
        let snap = self.synced_snapshot().await?;
        let mut bundles = HashMap::new();
        if !snap.jwt_bundle.is_empty() {
            bundles.insert(snap.trust_domain.clone(), snap.jwt_bundle.clone());
        }
        // A token from a federated trust domain validates against that domain's keys.
        for f in snap.federated.iter().filter(|f| !f.jwks.is_empty()) {
            bundles.insert(f.trust_domain.clone(), f.jwks.clone());
        }
        let now = now_ms() / 1000;
        let validated =
            jwt::validate(&svid, &audience, &bundles, now).map_err(Status::invalid_argument)?;
        Ok(Response::new(pb::ValidateJwtsvidResponse {
            spiffe_id: validated.spiffe_id,
            claims: Some(jwt::to_struct(validated.claims)),
        }))
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
