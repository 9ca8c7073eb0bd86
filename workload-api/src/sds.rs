//! Envoy's Secret Discovery Service (v3) on the Workload API socket, for Envoy and Istio.
//!
//! The Envoy process is attested like any workload (no security header is required). It
//! asks for secrets by name: `default` (its first X.509-SVID), `ROOTCA` (the trust
//! domain's bundle), `ALL` (own and federated bundles in one validation context), a SPIFFE
//! ID (that SVID) or a trust domain ID (its bundle); an empty list means everything. A name
//! the caller is not entitled to ends the stream with InvalidArgument, so Envoy does not
//! wait forever on a secret that will never come.
//!
//! `StreamSecrets` follows the xDS state-of-the-world protocol: each response carries a
//! version and a fresh nonce; a request whose `response_nonce` is not the last nonce sent
//! is stale and ignored; a request with the last nonce is an ACK (version equals the one
//! sent) or a NACK (older version plus `error_detail`, logged); a response is sent on the
//! first request, when the set of requested names changes, and on every change of the
//! caller's secrets (rotation, bundle change), without waiting for the previous ACK.

use std::collections::BTreeSet;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::{Stream, StreamExt};
use keygrid_proto::envoy::config::core::v3 as core;
use keygrid_proto::envoy::extensions::transport_sockets::tls::v3 as tls;
use keygrid_proto::envoy::service::discovery::v3 as xds;
use keygrid_proto::envoy::service::secret::v3::secret_discovery_service_server::SecretDiscoveryService;
use prost::Message;
use serde::Deserialize;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::attestor::{Attestor, Selector};
use crate::cache::{now_ms, Cache, Snapshot};
use crate::identity::{self, Identities};
use crate::workload::attest_request;

/// The resource type Envoy asks for.
pub const SECRET_TYPE_URL: &str =
    "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret";
const SPIFFE_VALIDATOR_TYPE_URL: &str =
    "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.SPIFFECertValidatorConfig";
const SPIFFE_VALIDATOR_NAME: &str = "envoy.tls.cert_validator.spiffe";

/// SDS settings (`[sds]` in the agent configuration).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SdsConfig {
    /// Serve SDS on the Workload API socket.
    pub enabled: bool,
    /// Name of the caller's default (first) X.509-SVID.
    pub default_svid_name: String,
    /// Name of the own trust domain's bundle. Istio asks for `ROOTCA`.
    pub default_bundle_name: String,
    /// Name of the validation context with own and federated bundles. Set it to `ROOTCA`
    /// (and `default_bundle_name` to something unused) to give Istio federated bundles.
    pub default_all_bundles_name: String,
    /// Send plain `trusted_ca` instead of Envoy's SPIFFE validator (also per Envoy with node
    /// metadata `disable_spiffe_cert_validation`).
    pub disable_spiffe_cert_validation: bool,
}

impl Default for SdsConfig {
    fn default() -> Self {
        SdsConfig {
            enabled: true,
            default_svid_name: "default".into(),
            default_bundle_name: "ROOTCA".into(),
            default_all_bundles_name: "ALL".into(),
            disable_spiffe_cert_validation: false,
        }
    }
}

/// What one caller may be sent, extracted from a snapshot.
#[derive(Clone, PartialEq, Eq)]
struct View {
    trust_domain: String,
    /// (SPIFFE ID, DER chain leaf first, PKCS#8 key), default first.
    identities: Vec<(String, Vec<Vec<u8>>, Vec<u8>)>,
    bundle: Vec<Vec<u8>>,
    /// Federated trust domains (name, roots), sorted by name.
    federated: Vec<(String, Vec<Vec<u8>>)>,
}

/// The caller's view, or `None` while SVIDs it is entitled to are still being minted.
fn view(snap: &Snapshot, caller: &[Selector], default_id: Option<&str>) -> Option<View> {
    if !snap.synced {
        return None;
    }
    let now = now_ms();
    let usable = |s: Option<&crate::cache::CachedSvid>| s.filter(|s| s.not_after_ms > now).cloned();
    let mut identities = Vec::new();
    match identity::resolve(snap, caller, default_id) {
        Identities::None => {}
        Identities::Entries(entries) => {
            for e in entries {
                let s = usable(snap.svids.get(&e.id))?;
                identities.push((s.spiffe_id, s.chain, s.key_pkcs8));
            }
        }
        Identities::Default(id) => {
            let s = usable(snap.default_svids.get(id))?;
            identities.push((s.spiffe_id, s.chain, s.key_pkcs8));
        }
    }
    Some(View {
        trust_domain: snap.trust_domain.clone(),
        identities,
        bundle: snap.bundle.clone(),
        federated: snap
            .federated
            .iter()
            .filter(|f| !f.x509_authorities.is_empty())
            .map(|f| (f.trust_domain.clone(), f.x509_authorities.clone()))
            .collect(),
    })
}

fn pem_certs(ders: &[Vec<u8>]) -> Vec<u8> {
    ders.iter()
        .map(|d| pem::encode(&pem::Pem::new("CERTIFICATE", d.clone())))
        .collect::<String>()
        .into_bytes()
}

fn inline(bytes: Vec<u8>) -> Option<core::DataSource> {
    Some(core::DataSource {
        specifier: Some(core::data_source::Specifier::InlineBytes(bytes)),
    })
}

fn any<M: Message>(type_url: &str, msg: &M) -> prost_types::Any {
    prost_types::Any {
        type_url: type_url.to_string(),
        value: msg.encode_to_vec(),
    }
}

fn tls_certificate(name: &str, chain: &[Vec<u8>], key: &[u8]) -> tls::Secret {
    tls::Secret {
        name: name.to_string(),
        r#type: Some(tls::secret::Type::TlsCertificate(tls::TlsCertificate {
            certificate_chain: inline(pem_certs(chain)),
            private_key: inline(
                pem::encode(&pem::Pem::new("PRIVATE KEY", key.to_vec())).into_bytes(),
            ),
        })),
    }
}

/// A validation context for `bundles` (trust domain name → CA certificates).
fn validation_context(name: &str, bundles: &[(&str, &[Vec<u8>])], spiffe: bool) -> tls::Secret {
    let ctx = if spiffe {
        let mut trust_domains: Vec<_> = bundles
            .iter()
            .map(
                |(td, certs)| tls::spiffe_cert_validator_config::TrustDomain {
                    name: td.to_string(),
                    trust_bundle: inline(pem_certs(certs)),
                },
            )
            .collect();
        trust_domains.sort_by(|a, b| a.name.cmp(&b.name));
        let config = tls::SpiffeCertValidatorConfig { trust_domains };
        tls::CertificateValidationContext {
            trusted_ca: None,
            custom_validator_config: Some(core::TypedExtensionConfig {
                name: SPIFFE_VALIDATOR_NAME.into(),
                typed_config: Some(any(SPIFFE_VALIDATOR_TYPE_URL, &config)),
            }),
        }
    } else {
        let all: Vec<Vec<u8>> = bundles
            .iter()
            .flat_map(|(_, c)| c.iter().cloned())
            .collect();
        tls::CertificateValidationContext {
            trusted_ca: inline(pem_certs(&all)),
            custom_validator_config: None,
        }
    };
    tls::Secret {
        name: name.to_string(),
        r#type: Some(tls::secret::Type::ValidationContext(ctx)),
    }
}

/// Whether this Envoy understands the SPIFFE validator (Envoy ≥ 1.18; unknown = yes).
fn supports_spiffe_validator(node: Option<&core::Node>) -> bool {
    let version = node.and_then(|n| match &n.user_agent_version_type {
        Some(core::node::UserAgentVersionType::UserAgentBuildVersion(b)) => b.version.as_ref(),
        _ => None,
    });
    match version {
        Some(v) => (v.major_number == 1 && v.minor_number > 17) || v.major_number > 1,
        None => true,
    }
}

/// Node metadata `disable_spiffe_cert_validation` (bool, or a string like Go's ParseBool).
fn node_disables_validator(node: Option<&core::Node>) -> Option<bool> {
    use prost_types::value::Kind;
    let v = node?
        .metadata
        .as_ref()?
        .fields
        .get("disable_spiffe_cert_validation")?;
    match v.kind.as_ref()? {
        Kind::BoolValue(b) => Some(*b),
        Kind::StringValue(s) => match s.as_str() {
            "1" | "t" | "T" | "true" | "TRUE" | "True" => Some(true),
            "0" | "f" | "F" | "false" | "FALSE" | "False" => Some(false),
            _ => None,
        },
        _ => None,
    }
}

/// Builds the response for `names` (empty = everything) from `view`.
fn build_response(
    cfg: &SdsConfig,
    view: &View,
    names: &[String],
    node: Option<&core::Node>,
    type_url: &str,
    version: &str,
    nonce: &str,
) -> Result<xds::DiscoveryResponse, Status> {
    let mut wanted: BTreeSet<&str> = names
        .iter()
        .map(String::as_str)
        .filter(|n| !n.is_empty())
        .collect();
    let all = wanted.is_empty();
    let disabled = node_disables_validator(node).unwrap_or(cfg.disable_spiffe_cert_validation);
    let spiffe = !disabled && supports_spiffe_validator(node);
    let td_id = format!("spiffe://{}", view.trust_domain);
    let own = [(view.trust_domain.as_str(), view.bundle.as_slice())];
    let mut secrets = Vec::new();

    // The own trust domain's bundle, at most once (first match wins).
    if all || wanted.contains(td_id.as_str()) {
        wanted.remove(td_id.as_str());
        secrets.push(validation_context(&td_id, &own, spiffe));
    } else if wanted.contains(cfg.default_bundle_name.as_str()) {
        wanted.remove(cfg.default_bundle_name.as_str());
        secrets.push(validation_context(&cfg.default_bundle_name, &own, spiffe));
    } else if wanted.contains(cfg.default_all_bundles_name.as_str()) {
        if !spiffe {
            return Err(Status::internal(
                "unable to use \"SPIFFE validator\" on Envoy below 1.17",
            ));
        }
        wanted.remove(cfg.default_all_bundles_name.as_str());
        let mut all_bundles: Vec<(&str, &[Vec<u8>])> = own.to_vec();
        all_bundles.extend(
            view.federated
                .iter()
                .map(|(td, certs)| (td.as_str(), certs.as_slice())),
        );
        secrets.push(validation_context(
            &cfg.default_all_bundles_name,
            &all_bundles,
            true,
        ));
    }

    // Each federated trust domain's bundle, named by its trust-domain ID.
    for (td, certs) in &view.federated {
        let id = format!("spiffe://{td}");
        if all || wanted.contains(id.as_str()) {
            wanted.remove(id.as_str());
            secrets.push(validation_context(
                &id,
                &[(td.as_str(), certs.as_slice())],
                spiffe,
            ));
        }
    }

    for (i, (id, chain, key)) in view.identities.iter().enumerate() {
        if all || wanted.contains(id.as_str()) {
            wanted.remove(id.as_str());
            secrets.push(tls_certificate(id, chain, key));
        } else if i == 0 && wanted.contains(cfg.default_svid_name.as_str()) {
            wanted.remove(cfg.default_svid_name.as_str());
            secrets.push(tls_certificate(&cfg.default_svid_name, chain, key));
        }
    }

    if !wanted.is_empty() {
        let list: Vec<String> = wanted.iter().map(|n| format!("{n:?}")).collect();
        return Err(Status::invalid_argument(format!(
            "workload is not authorized for the requested identities [{}]",
            list.join(" ")
        )));
    }
    Ok(xds::DiscoveryResponse {
        version_info: version.to_string(),
        resources: secrets.iter().map(|s| any(SECRET_TYPE_URL, s)).collect(),
        canary: false,
        type_url: type_url.to_string(),
        nonce: nonce.to_string(),
        control_plane: None,
    })
}

fn new_nonce() -> String {
    let mut b = [0u8; 4];
    if aws_lc_rs::rand::fill(&mut b).is_err() {
        b = (now_ms() as u32).to_be_bytes();
    }
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Serves `envoy.service.secret.v3.SecretDiscoveryService` from the SVID cache.
pub struct SdsService {
    cache: Cache,
    attestor: Arc<Attestor>,
    cfg: Arc<SdsConfig>,
}

impl SdsService {
    /// Creates the service.
    pub fn new(cache: Cache, attestor: Arc<Attestor>, cfg: SdsConfig) -> Self {
        if cfg.default_bundle_name == cfg.default_all_bundles_name {
            tracing::warn!(name = %cfg.default_all_bundles_name,
                "sds: default_bundle_name equals default_all_bundles_name; the latter is ignored");
        }
        SdsService {
            cache,
            attestor,
            cfg: Arc::new(cfg),
        }
    }

    async fn caller<T>(&self, req: &Request<T>) -> Result<(Vec<Selector>, Option<String>), Status> {
        let selectors = attest_request(&self.attestor, req).await?;
        let default_id = if self.attestor.default_identity_enabled() {
            identity::default_id(&self.cache.subscribe().borrow().trust_domain, &selectors)
        } else {
            None
        };
        Ok((selectors, default_id))
    }
}

type SdsStream = Pin<Box<dyn Stream<Item = Result<xds::DiscoveryResponse, Status>> + Send>>;
type DeltaStream = Pin<Box<dyn Stream<Item = Result<xds::DeltaDiscoveryResponse, Status>> + Send>>;

/// Per-stream xDS state.
struct StreamState {
    version_counter: u64,
    last_nonce: String,
    last_node: Option<core::Node>,
    last_names: Option<BTreeSet<String>>,
    last_type_url: String,
    view: Option<View>,
}

impl StreamState {
    fn version(&self) -> String {
        self.version_counter.to_string()
    }

    fn respond(&mut self, cfg: &SdsConfig) -> Option<Result<xds::DiscoveryResponse, Status>> {
        let names: Vec<String> = self.last_names.as_ref()?.iter().cloned().collect();
        let view = self.view.as_ref()?;
        let nonce = new_nonce();
        let res = build_response(
            cfg,
            view,
            &names,
            self.last_node.as_ref(),
            &self.last_type_url,
            &self.version(),
            &nonce,
        );
        if res.is_ok() {
            self.last_nonce = nonce;
        }
        Some(res)
    }
}

#[tonic::async_trait]
impl SecretDiscoveryService for SdsService {
    type DeltaSecretsStream = DeltaStream;
    type StreamSecretsStream = SdsStream;

    async fn delta_secrets(
        &self,
        _req: Request<Streaming<xds::DeltaDiscoveryRequest>>,
    ) -> Result<Response<Self::DeltaSecretsStream>, Status> {
        Err(Status::unimplemented("DeltaSecrets is not implemented"))
    }

    async fn stream_secrets(
        &self,
        req: Request<Streaming<xds::DiscoveryRequest>>,
    ) -> Result<Response<Self::StreamSecretsStream>, Status> {
        let (caller, default_id) = self.caller(&req).await?;
        let hold = default_id.as_deref().map(|id| self.cache.want_default(id));
        let mut requests = req.into_inner();
        let mut rx = self.cache.subscribe();
        let cfg = self.cfg.clone();
        let (tx, out) = mpsc::channel(4);
        tokio::spawn(async move {
            let _hold = hold;
            let mut st = StreamState {
                version_counter: 0,
                last_nonce: String::new(),
                last_node: None,
                last_names: None,
                last_type_url: SECRET_TYPE_URL.into(),
                view: None,
            };
            // The current state counts as the first update.
            let mut pending_update = true;
            loop {
                if pending_update {
                    pending_update = false;
                    let snap = rx.borrow_and_update().clone();
                    let v = view(&snap, &caller, default_id.as_deref());
                    if v.is_some() && v != st.view {
                        st.view = v;
                        st.version_counter += 1;
                        if let Some(res) = st.respond(&cfg) {
                            let end = res.is_err();
                            if tx.send(res).await.is_err() || end {
                                return;
                            }
                        }
                    }
                }
                tokio::select! {
                    changed = rx.changed() => {
                        if changed.is_err() { return; }
                        pending_update = true;
                    }
                    msg = requests.next() => {
                        let req = match msg {
                            Some(Ok(r)) => r,
                            // Envoy went away or the stream broke: nothing more to do.
                            _ => return,
                        };
                        if let Some(err) = &req.error_detail {
                            tracing::warn!(code = err.code, error = %err.message,
                                "sds: Envoy reported errors applying secrets");
                        }
                        if !st.last_nonce.is_empty() {
                            if req.response_nonce != st.last_nonce {
                                tracing::debug!(nonce = %req.response_nonce, "sds: stale request ignored");
                                continue;
                            }
                            if req.version_info.is_empty() || req.version_info != st.version() {
                                tracing::warn!(version = %req.version_info, expected = %st.version(),
                                    "sds: client rejected expected version and rolled back");
                            }
                        }
                        if req.node.is_some() {
                            st.last_node = req.node.clone();
                        }
                        if !req.type_url.is_empty() {
                            st.last_type_url = req.type_url.clone();
                        }
                        let names: BTreeSet<String> = req.resource_names.iter().filter(|n| !n.is_empty()).cloned().collect();
                        let first = st.last_names.is_none();
                        if first || st.last_names.as_ref() != Some(&names) {
                            st.last_names = Some(names);
                            if let Some(res) = st.respond(&cfg) {
                                let end = res.is_err();
                                if tx.send(res).await.is_err() || end {
                                    return;
                                }
                            }
                        }
                    }
                    _ = tx.closed() => return,
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(out))))
    }

    async fn fetch_secrets(
        &self,
        req: Request<xds::DiscoveryRequest>,
    ) -> Result<Response<xds::DiscoveryResponse>, Status> {
        let (caller, default_id) = self.caller(&req).await?;
        let _hold = default_id.as_deref().map(|id| self.cache.want_default(id));
        let mut rx = self.cache.subscribe();
        let found = tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                let snap = rx.borrow_and_update().clone();
                if let Some(v) = view(&snap, &caller, default_id.as_deref()) {
                    return Some(v);
                }
                if rx.changed().await.is_err() {
                    return None;
                }
            }
        })
        .await;
        let Ok(Some(v)) = found else {
            return Err(Status::unavailable("secrets are not available yet"));
        };
        let r = req.into_inner();
        let type_url = if r.type_url.is_empty() {
            SECRET_TYPE_URL.to_string()
        } else {
            r.type_url.clone()
        };
        build_response(
            &self.cfg,
            &v,
            &r.resource_names,
            r.node.as_ref(),
            &type_url,
            "",
            "",
        )
        .map(Response::new)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn test_view() -> View {
        View {
            trust_domain: "example.org".into(),
            identities: vec![
                (
                    "spiffe://example.org/a".into(),
                    vec![vec![1, 2, 3]],
                    vec![9],
                ),
                ("spiffe://example.org/b".into(), vec![vec![4]], vec![8]),
            ],
            bundle: vec![vec![7, 7]],
            federated: vec![],
        }
    }

    fn secrets(res: &xds::DiscoveryResponse) -> Vec<tls::Secret> {
        res.resources
            .iter()
            .map(|a| {
                assert_eq!(a.type_url, SECRET_TYPE_URL);
                tls::Secret::decode(a.value.as_slice()).unwrap()
            })
            .collect()
    }

    fn names(res: &xds::DiscoveryResponse) -> Vec<String> {
        secrets(res).into_iter().map(|s| s.name).collect()
    }

    fn build(names: &[&str], node: Option<&core::Node>) -> Result<xds::DiscoveryResponse, Status> {
        let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
        build_response(
            &SdsConfig::default(),
            &test_view(),
            &names,
            node,
            SECRET_TYPE_URL,
            "1",
            "n",
        )
    }

    #[test]
    fn istio_names_default_and_rootca() {
        let res = build(&["default", "ROOTCA"], None).unwrap();
        assert_eq!(names(&res), vec!["ROOTCA", "default"]);
        let s = secrets(&res);
        let Some(tls::secret::Type::ValidationContext(ctx)) = &s[0].r#type else {
            panic!("ROOTCA is a validation context")
        };
        let custom = ctx.custom_validator_config.as_ref().unwrap();
        assert_eq!(custom.name, SPIFFE_VALIDATOR_NAME);
        let any = custom.typed_config.as_ref().unwrap();
        assert_eq!(any.type_url, SPIFFE_VALIDATOR_TYPE_URL);
        let cfg = tls::SpiffeCertValidatorConfig::decode(any.value.as_slice()).unwrap();
        assert_eq!(cfg.trust_domains[0].name, "example.org");
        let Some(tls::secret::Type::TlsCertificate(cert)) = &s[1].r#type else {
            panic!("default is a TLS certificate")
        };
        let Some(core::data_source::Specifier::InlineBytes(chain)) =
            &cert.certificate_chain.as_ref().unwrap().specifier
        else {
            panic!("inline chain")
        };
        assert!(String::from_utf8_lossy(chain).starts_with("-----BEGIN CERTIFICATE-----"));
    }

    #[test]
    fn everything_by_id_and_by_empty_list() {
        let all = build(&[], None).unwrap();
        assert_eq!(
            names(&all),
            vec![
                "spiffe://example.org",
                "spiffe://example.org/a",
                "spiffe://example.org/b"
            ]
        );
        let one = build(&["spiffe://example.org/b"], None).unwrap();
        assert_eq!(names(&one), vec!["spiffe://example.org/b"]);
        let allb = build(&["ALL"], None).unwrap();
        assert_eq!(names(&allb), vec!["ALL"]);
    }

    /// Trust domains inside a SPIFFE-validator validation context, with their PEM bundles.
    fn validator_domains(secret: &tls::Secret) -> Vec<(String, String)> {
        let Some(tls::secret::Type::ValidationContext(ctx)) = &secret.r#type else {
            panic!("{} is not a validation context", secret.name);
        };
        let any = ctx
            .custom_validator_config
            .as_ref()
            .and_then(|c| c.typed_config.as_ref())
            .expect("SPIFFE validator config");
        let cfg = tls::SpiffeCertValidatorConfig::decode(any.value.as_slice()).unwrap();
        cfg.trust_domains
            .into_iter()
            .map(|td| {
                let pem = match td.trust_bundle.and_then(|d| d.specifier) {
                    Some(core::data_source::Specifier::InlineBytes(b)) => {
                        String::from_utf8(b).unwrap()
                    }
                    other => panic!("unexpected data source {other:?}"),
                };
                (td.name, pem)
            })
            .collect()
    }

    #[test]
    fn federated_bundles_by_id_in_all_and_in_the_empty_list() {
        let mut view = test_view();
        view.federated = vec![
            ("partner.example".into(), vec![vec![5, 5]]),
            ("zeta.example".into(), vec![vec![6]]),
        ];
        let build = |names: &[&str]| {
            let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
            build_response(
                &SdsConfig::default(),
                &view,
                &names,
                None,
                SECRET_TYPE_URL,
                "1",
                "n",
            )
        };
        // Every resource when none is named: own bundle, each federated one, each identity.
        let all = build(&[]).unwrap();
        assert_eq!(
            names(&all),
            vec![
                "spiffe://example.org",
                "spiffe://partner.example",
                "spiffe://zeta.example",
                "spiffe://example.org/a",
                "spiffe://example.org/b"
            ]
        );
        // One federated domain by its ID: a context with exactly that domain.
        let one = build(&["spiffe://partner.example"]).unwrap();
        let s = secrets(&one);
        assert_eq!(names(&one), vec!["spiffe://partner.example"]);
        let domains = validator_domains(&s[0]);
        assert_eq!(domains.len(), 1);
        assert_eq!(domains[0].0, "partner.example");
        assert_eq!(
            domains[0].1,
            pem::encode(&pem::Pem::new("CERTIFICATE", vec![5u8, 5]))
        );
        // ALL: own and every federated domain, sorted by name.
        let allb = build(&["ALL"]).unwrap();
        let domains: Vec<String> = validator_domains(&secrets(&allb)[0])
            .into_iter()
            .map(|(n, _)| n)
            .collect();
        assert_eq!(
            domains,
            vec!["example.org", "partner.example", "zeta.example"]
        );
        // A domain nobody federates with is still refused.
        assert_eq!(
            build(&["spiffe://other.example"]).unwrap_err().code(),
            tonic::Code::InvalidArgument
        );
    }

    #[test]
    fn unknown_names_are_refused() {
        let err = build(&["default", "file-root:/etc/certs/root.pem"], None).unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
        assert_eq!(
            err.message(),
            "workload is not authorized for the requested identities [\"file-root:/etc/certs/root.pem\"]"
        );
        // The own bundle is served once: asking for its ID and ROOTCA leaves ROOTCA unmatched.
        assert!(build(&["spiffe://example.org", "ROOTCA"], None).is_err());
    }

    #[test]
    fn old_envoy_and_metadata_get_trusted_ca() {
        let old = core::Node {
            user_agent_version_type: Some(core::node::UserAgentVersionType::UserAgentBuildVersion(
                core::BuildVersion {
                    version: Some(keygrid_proto::envoy::r#type::v3::SemanticVersion {
                        major_number: 1,
                        minor_number: 17,
                        patch: 0,
                    }),
                    metadata: None,
                },
            )),
            ..Default::default()
        };
        let res = build(&["ROOTCA"], Some(&old)).unwrap();
        let Some(tls::secret::Type::ValidationContext(ctx)) = &secrets(&res)[0].r#type else {
            panic!()
        };
        assert!(ctx.trusted_ca.is_some() && ctx.custom_validator_config.is_none());
        assert_eq!(
            build(&["ALL"], Some(&old)).unwrap_err().code(),
            tonic::Code::Internal
        );

        let mut meta = prost_types::Struct::default();
        meta.fields.insert(
            "disable_spiffe_cert_validation".into(),
            prost_types::Value {
                kind: Some(prost_types::value::Kind::StringValue("true".into())),
            },
        );
        let node = core::Node {
            metadata: Some(meta),
            ..Default::default()
        };
        let res = build(&["ROOTCA"], Some(&node)).unwrap();
        let Some(tls::secret::Type::ValidationContext(ctx)) = &secrets(&res)[0].r#type else {
            panic!()
        };
        assert!(ctx.trusted_ca.is_some());
    }
}
