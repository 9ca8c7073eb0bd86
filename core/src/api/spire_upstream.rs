//! KeyGrid's API for SPIRE servers (`keygrid.v1.SpireUpstream`) and the admin call that
//! issues their credentials (`keygrid.v1.SpireAdmin`).
//!
//! A SPIRE server's UpstreamAuthority plugin calls `MintX509CA` with the CSR for SPIRE's
//! next CA key. The request flows one way: the caller's client certificate is checked
//! against the store ([`SpireUpstream::authenticate`]), the CSR against policy (trust
//! domain, key algorithm, lifetime), the spire-upstream issuer signs, the store records
//! the new intermediate, and only then does the plugin get the chain. A refusal writes
//! nothing and says why in a status SPIRE logs verbatim.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::{Stream, StreamExt};
use keygrid_proto::keygrid::v1 as pb;
use rcgen::{CertificateSigningRequestParams, DistinguishedName, DnType};
use rustls_pki_types::CertificateSigningRequestDer;
use time::OffsetDateTime;
use tonic::{Request, Response, Status};
use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::prelude::FromDer;
use x509_parser::public_key::PublicKey;

use super::admin::authorize_peer;
use super::blocking;
use crate::ca::{profiles, Authority, Hierarchy};
use crate::issuance::{Issuance, IssueError, MAX_CSR_BYTES};
use crate::policy::{csr_key_info, PolicyRequest};
use crate::store::Store;

/// Store profile of a SPIRE server's client credential for this API.
pub const PROFILE_SPIRE_SERVER: &str = "spire-server";
/// Store profile of a SPIRE server's CA certificate signed by spire-upstream.
pub const PROFILE_SPIRE_INTERMEDIATE: &str = "spire-intermediate";
/// SPIRE CA lifetime when SPIRE asks for none.
pub const DEFAULT_SPIRE_CA_TTL: Duration = Duration::from_secs(24 * 3600);
/// Longest SPIRE CA lifetime KeyGrid grants, whatever SPIRE asks (also cut to the
/// issuer's own expiry when signing).
pub const MAX_SPIRE_CA_TTL: Duration = Duration::from_secs(7 * 24 * 3600);
/// Default lifetime of a SPIRE server credential.
pub const DEFAULT_CREDENTIAL_TTL: Duration = Duration::from_secs(30 * 24 * 3600);
/// Smallest RSA modulus accepted in a SPIRE CA CSR.
pub const MIN_RSA_BITS: usize = 2048;

/// The issuer that signs SPIRE servers' CAs.
fn spire_issuer(ca: &Hierarchy) -> Arc<Authority> {
    ca.spire_upstream()
}

/// A CA certificate just minted for a SPIRE server.
#[derive(Clone, Debug)]
pub struct MintedCa {
    /// The new SPIRE CA, then the spire-upstream CA.
    pub chain: Vec<Vec<u8>>,
    /// KeyGrid's roots.
    pub roots: Vec<Vec<u8>>,
}

/// A SPIRE server credential just issued.
#[derive(Clone, Debug)]
pub struct SpireCredential {
    /// Client certificate, then its issuing CA.
    pub chain: Vec<Vec<u8>>,
    /// Expiry, Unix seconds.
    pub not_after: i64,
}

/// Checks that `id` is `spiffe://<trust_domain>/spire/server/<name>`.
pub fn check_spire_server_id(trust_domain: &str, id: &str) -> Result<(), IssueError> {
    let prefix = format!("spiffe://{trust_domain}/spire/server/");
    let name = id.strip_prefix(&prefix).ok_or_else(|| {
        IssueError::InvalidArgument(format!(
            "SPIRE server ID must look like {prefix}<name>, got {id:?}"
        ))
    })?;
    let ok = !name.is_empty()
        && name.len() <= 128
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b));
    if !ok {
        return Err(IssueError::InvalidArgument(format!(
            "SPIRE server name {name:?} must be 1 to 128 characters of letters, digits, '-', '.', '_'"
        )));
    }
    Ok(())
}

/// Checks the CSR's key against policy: ECDSA P-256 or P-384, or RSA of at least
/// [`MIN_RSA_BITS`] bits. Returns a short description for logs.
pub fn check_key(spki: &x509_parser::x509::SubjectPublicKeyInfo<'_>) -> Result<String, IssueError> {
    let refused = |what: String| {
        IssueError::PermissionDenied(format!(
            "KeyGrid policy refuses SPIRE CA key {what}; allowed: ECDSA P-256, ECDSA P-384, RSA >= {MIN_RSA_BITS} bits"
        ))
    };
    let parsed = spki
        .parsed()
        .map_err(|_| IssueError::InvalidArgument("CSR public key does not parse".into()))?;
    match parsed {
        PublicKey::EC(_) => {
            let curve = spki
                .algorithm
                .parameters
                .as_ref()
                .and_then(|p| p.as_oid().ok())
                .map(|o| o.to_id_string())
                .unwrap_or_default();
            match curve.as_str() {
                "1.2.840.10045.3.1.7" => Ok("ECDSA P-256".into()),
                "1.3.132.0.34" => Ok("ECDSA P-384".into()),
                other => Err(refused(format!("ECDSA on curve {other}"))),
            }
        }
        PublicKey::RSA(rsa) => {
            let bits = rsa.key_size();
            if bits >= MIN_RSA_BITS {
                Ok(format!("RSA {bits}"))
            } else {
                Err(refused(format!("RSA {bits}")))
            }
        }
        _ => Err(refused(format!(
            "with algorithm {}",
            spki.algorithm.algorithm.to_id_string()
        ))),
    }
}

/// Checks the CSR's SPIFFE ID: exactly one URI SAN, the trust domain's own ID
/// (`spiffe://<trust_domain>`), which is what SPIRE puts in its CA CSRs.
pub fn check_csr_identity(trust_domain: &str, uris: &[String]) -> Result<(), IssueError> {
    let want = format!("spiffe://{trust_domain}");
    match uris {
        [] => Err(IssueError::InvalidArgument(format!(
            "CSR has no URI SAN; a SPIRE CA CSR names its trust domain ({want})"
        ))),
        [one] if *one == want => Ok(()),
        [one] => Err(IssueError::PermissionDenied(format!(
            "CSR is for {one}, but this KeyGrid serves trust domain {trust_domain}: \
             set SPIRE's trust_domain to {trust_domain} or use that trust domain's KeyGrid"
        ))),
        more => Err(IssueError::InvalidArgument(format!(
            "CSR has {} URI SANs; a SPIRE CA has exactly one ({want})",
            more.len()
        ))),
    }
}

/// The lifetime granted for a requested one (seconds; 0 or less: the default), capped
/// at [`MAX_SPIRE_CA_TTL`].
pub fn granted_ttl(preferred_seconds: i64) -> Duration {
    if preferred_seconds <= 0 {
        DEFAULT_SPIRE_CA_TTL
    } else {
        Duration::from_secs(preferred_seconds as u64).min(MAX_SPIRE_CA_TTL)
    }
}

fn csr_bytes(der: &[u8]) -> Result<(), IssueError> {
    if der.is_empty() {
        return Err(IssueError::InvalidArgument("csr is required".into()));
    }
    if der.len() > MAX_CSR_BYTES {
        return Err(IssueError::InvalidArgument(format!(
            "csr is {} bytes; the limit is {MAX_CSR_BYTES}",
            der.len()
        )));
    }
    Ok(())
}

/// The URI SANs a CSR requests.
fn csr_uris(csr: &x509_parser::certification_request::X509CertificationRequest<'_>) -> Vec<String> {
    let mut uris = Vec::new();
    for ext in csr.requested_extensions().into_iter().flatten() {
        if let ParsedExtension::SubjectAlternativeName(san) = ext {
            for n in &san.general_names {
                if let GeneralName::URI(u) = n {
                    uris.push(u.to_string());
                }
            }
        }
    }
    uris
}

/// Decisions and signing for SPIRE servers.
pub struct SpireUpstream {
    store: Arc<Store>,
    ca: Arc<Hierarchy>,
    /// For the configured `[[policy]]` rules, which apply to `spire-intermediate` too.
    issuance: Arc<Issuance>,
}

impl SpireUpstream {
    /// Creates the service.
    pub fn new(store: Arc<Store>, ca: Arc<Hierarchy>, issuance: Arc<Issuance>) -> Self {
        SpireUpstream {
            store,
            ca,
            issuance,
        }
    }

    /// Issues a SPIRE server's client credential (signed by the nodes CA, client
    /// authentication only) and records it under [`PROFILE_SPIRE_SERVER`].
    pub fn issue_credential(
        &self,
        spire_server_id: &str,
        csr_der: &[u8],
        ttl: Duration,
    ) -> Result<SpireCredential, IssueError> {
        check_spire_server_id(self.ca.trust_domain(), spire_server_id)?;
        csr_bytes(csr_der)?;
        let csr =
            CertificateSigningRequestParams::from_der(&CertificateSigningRequestDer::from(csr_der))
                .map_err(|e| IssueError::InvalidArgument(format!("csr rejected: {e}")))?;
        let mut params = profiles::node(spire_server_id)?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, "KeyGrid");
        dn.push(DnType::CommonName, "SPIRE server");
        params.distinguished_name = dn;
        let nodes = self.ca.nodes();
        let issued = nodes.sign(params, &csr.public_key, ttl, OffsetDateTime::now_utc())?;
        self.store.record_issuance(
            &issued.record(&nodes, PROFILE_SPIRE_SERVER, spire_server_id),
            "admin",
        )?;
        tracing::info!(spire_server = %spire_server_id, serial = %issued.serial_hex, "SPIRE server credential issued");
        Ok(SpireCredential {
            chain: vec![issued.der, nodes.cert_der().to_vec()],
            not_after: issued.not_after,
        })
    }

    /// Identifies a SPIRE server from the client certificate it presented over TLS (TLS
    /// already verified the chain to the root): issued by the nodes CA and recorded as a
    /// [`PROFILE_SPIRE_SERVER`] credential for the SPIFFE ID it names.
    pub fn authenticate(&self, leaf_der: &[u8]) -> Result<String, IssueError> {
        self.issuance
            .authenticate_credential(leaf_der, PROFILE_SPIRE_SERVER, "SPIRE server")
    }

    /// Signs a SPIRE server's CA CSR after the policy checks, and records the result
    /// under [`PROFILE_SPIRE_INTERMEDIATE`] with the calling SPIRE server as subject.
    pub fn mint_ca(
        &self,
        caller: &str,
        csr_der: &[u8],
        preferred_ttl_seconds: i64,
    ) -> Result<MintedCa, IssueError> {
        csr_bytes(csr_der)?;
        // Parses and checks the CSR's self-signature (proof of possession).
        CertificateSigningRequestParams::from_der(&CertificateSigningRequestDer::from(csr_der))
            .map_err(|e| IssueError::InvalidArgument(format!("csr rejected: {e}")))?;
        let (_, csr) =
            x509_parser::certification_request::X509CertificationRequest::from_der(csr_der)
                .map_err(|e| IssueError::InvalidArgument(format!("csr rejected: {e}")))?;
        let td = self.ca.trust_domain();
        let td_id = format!("spiffe://{td}");
        let baseline = check_csr_identity(td, &csr_uris(&csr))
            .and_then(|()| check_key(&csr.certification_request_info.subject_pki));
        if let Err(IssueError::PermissionDenied(reason)) = &baseline {
            // Recorded like a configured rule's refusal, so the audit trail has it.
            self.issuance
                .refuse(caller, &td_id, "spire-upstream-baseline", reason)?;
        }
        let key = baseline?;
        let public_key = rcgen::SubjectPublicKeyInfo::from_der(
            csr.certification_request_info.subject_pki.raw,
        )
        .map_err(|e| IssueError::InvalidArgument(format!("CSR public key not usable: {e}")))?;
        // Fleet-wide `[[policy]]` rules apply on top of the baseline above.
        let key_info = csr_key_info(csr_der).map_err(IssueError::InvalidArgument)?;
        let ttl = self.issuance.apply_policy(
            caller,
            &td_id,
            &PolicyRequest {
                profile: PROFILE_SPIRE_INTERMEDIATE.into(),
                key: Some(key_info),
                ttl: granted_ttl(preferred_ttl_seconds),
                spiffe_id: Some(td_id.clone()),
                attestation: "admin".into(),
                ..Default::default()
            },
        )?;
        let params = profiles::profile(PROFILE_SPIRE_INTERMEDIATE)
            .ok_or(IssueError::Internal)?
            .build(
                &td_id,
                &profiles::LeafRequest {
                    common_name: Some(format!(
                        "SPIRE server CA {}",
                        caller.rsplit('/').next().unwrap_or("")
                    )),
                    spiffe_id: Some(td_id.clone()),
                    ..Default::default()
                },
            )?;
        let issuer = spire_issuer(&self.ca);
        let issued = issuer.sign(params, &public_key, ttl, OffsetDateTime::now_utc())?;
        self.store.record_issuance(
            &issued.record(&issuer, PROFILE_SPIRE_INTERMEDIATE, caller),
            caller,
        )?;
        tracing::info!(spire_server = %caller, serial = %issued.serial_hex, key = %key,
            not_after = issued.not_after, clamped = issued.clamped, "SPIRE CA signed");
        Ok(MintedCa {
            chain: vec![issued.der, issuer.cert_der().to_vec()],
            roots: self.ca.bundle(),
        })
    }
}

type BundleStream = Pin<Box<dyn Stream<Item = Result<pb::Bundle, Status>> + Send>>;

/// Serves `keygrid.v1.SpireUpstream` on core's TLS listener.
pub struct SpireUpstreamApi {
    service: Arc<SpireUpstream>,
    ca: Arc<Hierarchy>,
    stop: Option<tokio::sync::watch::Receiver<bool>>,
}

impl SpireUpstreamApi {
    /// Creates the gRPC service.
    pub fn new(service: Arc<SpireUpstream>, ca: Arc<Hierarchy>) -> Self {
        SpireUpstreamApi {
            service,
            ca,
            stop: None,
        }
    }

    /// Ends open `WatchBundle` streams once `stop` turns true, so that a graceful
    /// shutdown of core is not held open by SPIRE servers' subscriptions (the plugin
    /// reconnects when core is back).
    pub fn ending_on(mut self, stop: tokio::sync::watch::Receiver<bool>) -> Self {
        self.stop = Some(stop);
        self
    }

    async fn caller<T>(&self, req: &Request<T>) -> Result<String, Status> {
        let leaf = req
            .peer_certs()
            .and_then(|c| c.first().map(|l| l.to_vec()))
            .ok_or_else(|| {
                Status::unauthenticated(
                    "a SPIRE server client certificate is required (issue one with `keygrid spire credential`)",
                )
            })?;
        let service = self.service.clone();
        blocking(move || service.authenticate(&leaf))
            .await
            .map_err(|s| match s.code() {
                tonic::Code::PermissionDenied => Status::unauthenticated(s.message()),
                _ => s,
            })
    }
}

#[tonic::async_trait]
impl pb::spire_upstream_server::SpireUpstream for SpireUpstreamApi {
    async fn mint_x509ca(
        &self,
        req: Request<pb::MintX509caRequest>,
    ) -> Result<Response<pb::MintX509caResponse>, Status> {
        let caller = self.caller(&req).await?;
        let pb::MintX509caRequest {
            csr,
            preferred_ttl_seconds,
        } = req.into_inner();
        let service = self.service.clone();
        let who = caller.clone();
        let minted = blocking(move || service.mint_ca(&who, &csr, preferred_ttl_seconds))
            .await
            .inspect_err(|s| {
                tracing::warn!(spire_server = %caller, reason = %s.message(), "SPIRE CA request refused")
            })?;
        Ok(Response::new(pb::MintX509caResponse {
            x509_ca_chain: minted.chain,
            upstream_x509_roots: minted.roots,
        }))
    }

    type WatchBundleStream = BundleStream;

    async fn watch_bundle(
        &self,
        req: Request<pb::WatchBundleRequest>,
    ) -> Result<Response<Self::WatchBundleStream>, Status> {
        self.caller(&req).await?;
        let trust_domain = self.ca.trust_domain().to_string();
        // The watch yields the current bundle first, then each new one.
        let rx = self.ca.subscribe_bundle();
        let stream = tokio_stream::wrappers::WatchStream::new(rx).map(move |snap| {
            Ok(pb::Bundle {
                trust_domain: trust_domain.clone(),
                x509_authorities: snap.roots.clone(),
                sequence: snap.sequence.max(0) as u64,
                // SPIRE manages its own federation; the upstream plugin carries only roots.
                federated: Vec::new(),
            })
        });
        let stop = self.stop.clone();
        let stream = stream.take_until(async move {
            match stop {
                Some(mut rx) => {
                    let _ = rx.wait_for(|v| *v).await;
                }
                None => std::future::pending::<()>().await,
            }
        });
        Ok(Response::new(Box::pin(stream)))
    }
}

/// Serves `keygrid.v1.SpireAdmin` on core's admin socket.
pub struct SpireAdminApi {
    service: Arc<SpireUpstream>,
    ca: Arc<Hierarchy>,
}

impl SpireAdminApi {
    /// Creates the gRPC service.
    pub fn new(service: Arc<SpireUpstream>, ca: Arc<Hierarchy>) -> Self {
        SpireAdminApi { service, ca }
    }
}

#[tonic::async_trait]
impl pb::spire_admin_server::SpireAdmin for SpireAdminApi {
    async fn issue_spire_credential(
        &self,
        req: Request<pb::IssueSpireCredentialRequest>,
    ) -> Result<Response<pb::IssueSpireCredentialResponse>, Status> {
        authorize_peer(&req)?;
        let pb::IssueSpireCredentialRequest {
            spire_server_id,
            csr,
            ttl_seconds,
        } = req.into_inner();
        let ttl = if ttl_seconds > 0 {
            Duration::from_secs(ttl_seconds as u64)
        } else {
            DEFAULT_CREDENTIAL_TTL
        };
        let service = self.service.clone();
        let cred = blocking(move || service.issue_credential(&spire_server_id, &csr, ttl)).await?;
        Ok(Response::new(pb::IssueSpireCredentialResponse {
            cert_chain: cred.chain,
            bundle: self.ca.bundle(),
            expires_at_unix: cred.not_after,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spire_server_ids_are_checked() {
        assert!(
            check_spire_server_id("example.org", "spiffe://example.org/spire/server/a-1").is_ok()
        );
        for bad in [
            "spiffe://other.org/spire/server/a",
            "spiffe://example.org/spire/server/",
            "spiffe://example.org/spire/agent/a",
            "spiffe://example.org/spire/server/a/b",
            "spiffe://example.org/spire/server/a b",
        ] {
            assert!(
                matches!(
                    check_spire_server_id("example.org", bad),
                    Err(IssueError::InvalidArgument(_))
                ),
                "{bad}"
            );
        }
    }

    #[test]
    fn csr_identity_must_be_the_trust_domain() {
        assert!(check_csr_identity("example.org", &["spiffe://example.org".into()]).is_ok());
        let e = check_csr_identity("example.org", &["spiffe://evil.org".into()]).unwrap_err();
        match e {
            IssueError::PermissionDenied(m) => {
                assert!(
                    m.contains("spiffe://evil.org") && m.contains("example.org"),
                    "{m}"
                )
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            check_csr_identity("example.org", &[]),
            Err(IssueError::InvalidArgument(_))
        ));
        assert!(matches!(
            check_csr_identity(
                "example.org",
                &["spiffe://example.org".into(), "spiffe://example.org".into()]
            ),
            Err(IssueError::InvalidArgument(_))
        ));
    }

    #[test]
    fn ttl_is_defaulted_and_capped() {
        assert_eq!(granted_ttl(0), DEFAULT_SPIRE_CA_TTL);
        assert_eq!(granted_ttl(-5), DEFAULT_SPIRE_CA_TTL);
        assert_eq!(granted_ttl(60), Duration::from_secs(60));
        assert_eq!(granted_ttl(i64::MAX), MAX_SPIRE_CA_TTL);
    }

    fn spki_of(alg: &'static rcgen::SignatureAlgorithm) -> Vec<u8> {
        let key = rcgen::KeyPair::generate_for(alg).unwrap();
        rcgen::PublicKeyData::subject_public_key_info(&key)
    }

    #[test]
    fn key_policy_allows_p256_p384_and_refuses_others() {
        for (alg, want) in [
            (&rcgen::PKCS_ECDSA_P256_SHA256, "ECDSA P-256"),
            (&rcgen::PKCS_ECDSA_P384_SHA384, "ECDSA P-384"),
        ] {
            let der = spki_of(alg);
            let (_, spki) = x509_parser::x509::SubjectPublicKeyInfo::from_der(&der).unwrap();
            assert_eq!(check_key(&spki).unwrap(), want);
        }
        let der = spki_of(&rcgen::PKCS_ED25519);
        let (_, spki) = x509_parser::x509::SubjectPublicKeyInfo::from_der(&der).unwrap();
        let e = check_key(&spki).unwrap_err();
        assert!(
            matches!(e, IssueError::PermissionDenied(ref m) if m.contains("allowed")),
            "{e:?}"
        );
    }

    mod service {
        use super::super::*;
        use crate::ca::HierarchySettings;
        use crate::keys::software::MemoryBackend;
        use crate::keys::KeyAlgorithm;

        const SERVER: &str = "spiffe://example.org/spire/server/s1";

        fn setup() -> (SpireUpstream, Arc<Store>) {
            setup_with(crate::policy::Policy::default())
        }

        fn setup_with(policy: crate::policy::Policy) -> (SpireUpstream, Arc<Store>) {
            let store = Arc::new(Store::in_memory().unwrap());
            let keys = MemoryBackend::default();
            let settings = HierarchySettings::new(
                "example.org",
                KeyAlgorithm::EcdsaP256,
                KeyAlgorithm::EcdsaP256,
            );
            let (h, _) = Hierarchy::init_or_load(&store, &keys, &settings).unwrap();
            let h = Arc::new(h);
            let issuance = Arc::new(Issuance::new(
                store.clone(),
                h.clone(),
                policy,
                crate::issuance::IssuanceSettings {
                    default_svid_ttl: Duration::from_secs(300),
                    max_svid_ttl: Duration::from_secs(3600),
                    node_cert_ttl: Duration::from_secs(3600),
                    jwt_svid_ttl: Duration::from_secs(300),
                    default_identities: false,
                },
            ));
            (SpireUpstream::new(store.clone(), h, issuance), store)
        }

        fn csr(alg: &'static rcgen::SignatureAlgorithm, uri: Option<&str>) -> Vec<u8> {
            let key = rcgen::KeyPair::generate_for(alg).unwrap();
            let mut p = rcgen::CertificateParams::default();
            if let Some(u) = uri {
                p.subject_alt_names = vec![rcgen::SanType::URI(u.try_into().unwrap())];
            }
            p.serialize_request(&key).unwrap().der().to_vec()
        }

        fn count(store: &Store) -> i64 {
            store.certificate_count().unwrap()
        }

        #[test]
        fn credential_authenticates_and_mint_records_the_ca() {
            let (svc, store) = setup();
            let cred = svc
                .issue_credential(
                    SERVER,
                    &csr(&rcgen::PKCS_ECDSA_P256_SHA256, Some(SERVER)),
                    DEFAULT_CREDENTIAL_TTL,
                )
                .unwrap();
            assert_eq!(svc.authenticate(&cred.chain[0]).unwrap(), SERVER);

            let before = count(&store);
            let minted = svc
                .mint_ca(
                    SERVER,
                    &csr(&rcgen::PKCS_ECDSA_P384_SHA384, Some("spiffe://example.org")),
                    120,
                )
                .unwrap();
            assert_eq!(count(&store), before + 1);
            assert_eq!(minted.chain.len(), 2);
            let (_, ca) = x509_parser::parse_x509_certificate(&minted.chain[0]).unwrap();
            let bc = ca.basic_constraints().unwrap().unwrap().value;
            assert!(bc.ca && bc.path_len_constraint == Some(0));
            let ku = ca.key_usage().unwrap().unwrap().value;
            assert!(ku.key_cert_sign() && ku.crl_sign() && !ku.digital_signature());
            let life = ca.validity().not_after.timestamp() - ca.validity().not_before.timestamp();
            assert_eq!(life, 120 + 10, "requested TTL plus the 10 s back-dating");
            let rec = store
                .certificate(crate::ca::SPIRE_UPSTREAM, &hex::encode(ca.raw_serial()))
                .unwrap()
                .unwrap();
            assert_eq!(rec.profile, PROFILE_SPIRE_INTERMEDIATE);
            assert_eq!(rec.subject, SERVER);
        }

        #[test]
        fn configured_policy_rules_govern_spire_cas() {
            let rule: crate::policy::PolicyRule = toml::from_str(
                "name = \"spire-keys\"\nprofiles = [\"spire-intermediate\"]\nallowed_keys = [\"ecdsa-p256\"]\nmax_ttl = \"1m\"",
            )
            .unwrap();
            let (svc, store) = setup_with(crate::policy::Policy::new(vec![rule]).unwrap());
            let before = count(&store);
            let err = svc
                .mint_ca(
                    SERVER,
                    &csr(&rcgen::PKCS_ECDSA_P384_SHA384, Some("spiffe://example.org")),
                    120,
                )
                .unwrap_err();
            match err {
                IssueError::PermissionDenied(m) => assert!(m.contains("spire-keys"), "{m}"),
                other => panic!("{other:?}"),
            }
            assert_eq!(count(&store), before);
            let minted = svc
                .mint_ca(
                    SERVER,
                    &csr(&rcgen::PKCS_ECDSA_P256_SHA256, Some("spiffe://example.org")),
                    120,
                )
                .unwrap();
            let (_, ca) = x509_parser::parse_x509_certificate(&minted.chain[0]).unwrap();
            let life = ca.validity().not_after.timestamp() - ca.validity().not_before.timestamp();
            assert_eq!(life, 60 + 10, "lifetime cut to the rule's max_ttl");
        }

        #[test]
        fn refusals_write_nothing() {
            let (svc, store) = setup();
            let before = count(&store);
            let cases = [
                csr(&rcgen::PKCS_ECDSA_P256_SHA256, Some("spiffe://other.org")),
                csr(&rcgen::PKCS_ED25519, Some("spiffe://example.org")),
                csr(&rcgen::PKCS_ECDSA_P256_SHA256, None),
                vec![0x30, 0x03, 0x02, 0x01, 0x00],
                Vec::new(),
            ];
            for der in cases {
                assert!(svc.mint_ca(SERVER, &der, 60).is_err());
            }
            assert_eq!(count(&store), before, "no certificate for a refusal");
            let events = store.events("policy_refusal").unwrap();
            assert!(
                events.iter().any(|e| e.kind == "policy_refusal"
                    && e.rule == "spire-upstream-baseline"
                    && e.detail.contains("spiffe://other.org")),
                "the wrong-trust-domain refusal is in the event log: {events:?}"
            );
        }

        #[test]
        fn other_certificates_do_not_authenticate() {
            let (svc, _) = setup();
            // A certificate the store does not know, even with a matching name.
            let key = rcgen::KeyPair::generate().unwrap();
            let mut p = rcgen::CertificateParams::default();
            p.subject_alt_names = vec![rcgen::SanType::URI(SERVER.try_into().unwrap())];
            let stranger = p.self_signed(&key).unwrap();
            assert!(matches!(
                svc.authenticate(stranger.der()),
                Err(IssueError::PermissionDenied(_))
            ));
            assert!(svc.authenticate(b"junk").is_err());
            // A credential request for a non-SPIRE identity is refused.
            assert!(svc
                .issue_credential(
                    "spiffe://example.org/agent1",
                    &csr(&rcgen::PKCS_ECDSA_P256_SHA256, None),
                    DEFAULT_CREDENTIAL_TTL
                )
                .is_err());
        }
    }
}
