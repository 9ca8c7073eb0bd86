//! The OCSP responder (RFC 6960, with the RFC 5019 lightweight profile and RFC 9654 nonces).
//!
//! Each issuer has a delegated responder ([`ResponderCredential`]) whose software key signs
//! every response. A request for one certificate without a nonce (the RFC 5019 case, and
//! what caches and CDNs see) is answered from a cache of pre-signed responses: signed on
//! first request, re-signed in the background before half of its validity has passed, and
//! re-signed at once when the certificate is revoked. A request with a nonce is signed on
//! demand, since its answer cannot be shared.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use axum::body::Bytes;
use der::asn1::{BitString, GeneralizedTime, Null, ObjectIdentifier, OctetString};
use der::{Decode, Encode};
use spki_compat::AlgorithmIdentifierOwned;
use x509_cert::ext::pkix::CrlReason;
use x509_cert::ext::Extension;
use x509_ocsp::{
    BasicOcspResponse, CertId, OcspGeneralizedTime, OcspRequest, OcspResponse, OcspResponseStatus,
    ResponderId, ResponseData, RevokedInfo, SingleResponse, Version,
};

use super::answer_cache::AnswerCache;
use super::responder_cert::ResponderCredential;
use super::{serial_hex_from_bytes, CertStatus, Reason, RevocationListener};
use crate::ca::{Authority, CaError, Hierarchy};
use crate::keys::{CaSigner, KeyAlgorithm};
use crate::store::{RevocationRecord, Store, StoreError};

// x509-cert 0.2 re-exports the spki version it is built on.
use x509_cert::spki as spki_compat;

/// Most CertIDs answered in one request. RFC 5019 clients send one; a request for more
/// is refused with `malformedRequest` instead of making the responder sign a huge answer.
pub const MAX_CERT_IDS: usize = 16;
/// Largest nonce accepted (RFC 9654 §2.1: 1 to 128 octets, else `malformedRequest`).
pub const MAX_NONCE_LEN: usize = 128;
/// Most pre-signed responses kept; past it, answers are signed on demand.
pub const CACHE_CAPACITY: usize = 200_000;
/// Validity of an `unknown` answer: the serial may yet be issued, so keep it short.
pub const UNKNOWN_VALIDITY: Duration = Duration::from_secs(60);

const OID_SHA1: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.14.3.2.26");
const OID_SHA256: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.16.840.1.101.3.4.2.1");
const OID_SHA384: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.16.840.1.101.3.4.2.2");
const OID_SHA512: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.16.840.1.101.3.4.2.3");
const OID_NONCE: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.5.5.7.48.1.2");

/// Responder settings.
#[derive(Clone, Debug)]
pub struct OcspSettings {
    /// thisUpdate to nextUpdate of a `good` or `revoked` answer.
    pub response_validity: Duration,
    /// Lifetime of each delegated responder certificate; rotated at half-life.
    pub responder_cert_ttl: Duration,
    /// Key type of the delegated responder.
    pub responder_algorithm: KeyAlgorithm,
}

/// The CertID hash algorithms accepted (RFC 5019 requires SHA-1; SHA-256 and up are
/// what modern clients send).
const HASHES: [(ObjectIdentifier, &aws_lc_rs::digest::Algorithm); 4] = [
    (OID_SHA1, &aws_lc_rs::digest::SHA1_FOR_LEGACY_USE_ONLY),
    (OID_SHA256, &aws_lc_rs::digest::SHA256),
    (OID_SHA384, &aws_lc_rs::digest::SHA384),
    (OID_SHA512, &aws_lc_rs::digest::SHA512),
];

/// One issuer's identity as CertIDs name it.
#[derive(Clone)]
struct IssuerIndex {
    name: String,
    generation: i64,
    /// (hash OID, issuerNameHash, issuerKeyHash) for each accepted hash.
    hashes: Vec<(ObjectIdentifier, Vec<u8>, Vec<u8>)>,
    /// The issuer's own parent and serial, to answer for leaves of a revoked CA.
    parent: Option<String>,
    own_serial: String,
}

impl IssuerIndex {
    fn new(a: &Authority, parent: Option<String>) -> Result<Self, CaError> {
        let (_, cert) = x509_parser::parse_x509_certificate(a.cert_der())
            .map_err(|e| CaError::Corrupt(format!("{} certificate: {e}", a.name())))?;
        let name_der = cert.subject().as_raw();
        let key = cert.public_key().subject_public_key.data.as_ref();
        let hashes = HASHES
            .iter()
            .map(|(oid, alg)| {
                (
                    *oid,
                    aws_lc_rs::digest::digest(alg, name_der).as_ref().to_vec(),
                    aws_lc_rs::digest::digest(alg, key).as_ref().to_vec(),
                )
            })
            .collect();
        Ok(IssuerIndex {
            name: a.name().to_string(),
            generation: a.generation(),
            hashes,
            parent,
            own_serial: serial_hex_from_bytes(cert.raw_serial()),
        })
    }

    fn matches(&self, id: &CertId) -> bool {
        self.hashes.iter().any(|(oid, n, k)| {
            *oid == id.hash_algorithm.oid
                && n.as_slice() == id.issuer_name_hash.as_bytes()
                && k.as_slice() == id.issuer_key_hash.as_bytes()
        })
    }

    fn cert_id(&self, oid: ObjectIdentifier, serial: &[u8]) -> Option<CertId> {
        let (_, n, k) = self.hashes.iter().find(|(o, _, _)| *o == oid)?;
        Some(CertId {
            hash_algorithm: AlgorithmIdentifierOwned {
                oid,
                parameters: Some(Null.into()),
            },
            issuer_name_hash: OctetString::new(n.clone()).ok()?,
            issuer_key_hash: OctetString::new(k.clone()).ok()?,
            serial_number: x509_cert::serial_number::SerialNumber::new(serial).ok()?,
        })
    }
}

/// HTTP caching facts of a shareable (nonce-less) answer, for GET responses.
#[derive(Clone, Debug)]
pub struct CacheInfo {
    /// producedAt / thisUpdate, Unix seconds.
    pub produced_at: i64,
    /// nextUpdate, Unix seconds.
    pub next_update: i64,
    /// Strong validator: hex SHA-256 of the response.
    pub etag: String,
}

/// An OCSP answer ready to send.
#[derive(Clone, Debug)]
pub struct OcspAnswer {
    /// The DER `OCSPResponse`.
    pub der: Bytes,
    /// Its `responseStatus`.
    pub status: OcspResponseStatus,
    /// Set when the answer may be cached by HTTP caches.
    pub cache: Option<CacheInfo>,
}

impl OcspAnswer {
    /// An unsigned error answer (`malformedRequest`, `unauthorized`, ...).
    pub fn error(status: OcspResponseStatus) -> Self {
        let resp = OcspResponse {
            response_status: status,
            response_bytes: None,
        };
        // A two-field SEQUENCE of fixed content cannot fail to encode; fall back to the
        // literal internalError encoding all the same rather than panic.
        let der = resp
            .to_der()
            .unwrap_or_else(|_| vec![0x30, 0x03, 0x0a, 0x01, 0x02]);
        OcspAnswer {
            der: Bytes::from(der),
            status,
            cache: None,
        }
    }
}

struct Cached {
    answer: OcspAnswer,
    issuer: usize,
    serial: String,
    cert_id: CertId,
    status: CertStatus,
    refresh_at: i64,
}

type CacheKey = (usize, Vec<u8>);

/// The responder: issuers, their delegated signers and the response cache.
pub struct OcspResponder {
    store: Arc<Store>,
    ca: Arc<Hierarchy>,
    settings: OcspSettings,
    /// Append-only (new CA generations are added), so an index stays valid.
    issuers: RwLock<Arc<Vec<IssuerIndex>>>,
    signers: RwLock<Vec<Arc<ResponderCredential>>>,
    cache: RwLock<AnswerCache<CacheKey, Arc<Cached>>>,
    revocation_seq: AtomicI64,
}

fn now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

fn gtime(unix: i64) -> Result<OcspGeneralizedTime, der::Error> {
    Ok(OcspGeneralizedTime(GeneralizedTime::from_unix_duration(
        Duration::from_secs(unix.max(0) as u64),
    )?))
}

fn crl_reason(r: Reason) -> Option<CrlReason> {
    Some(match r {
        Reason::Unspecified => return None,
        Reason::KeyCompromise => CrlReason::KeyCompromise,
        Reason::CaCompromise => CrlReason::CaCompromise,
        Reason::AffiliationChanged => CrlReason::AffiliationChanged,
        Reason::Superseded => CrlReason::Superseded,
        Reason::CessationOfOperation => CrlReason::CessationOfOperation,
        Reason::PrivilegeWithdrawn => CrlReason::PrivilegeWithdrawn,
        Reason::AaCompromise => CrlReason::AaCompromise,
    })
}

fn ocsp_status(s: CertStatus) -> Result<x509_ocsp::CertStatus, der::Error> {
    Ok(match s {
        CertStatus::Good => x509_ocsp::CertStatus::good(),
        CertStatus::Unknown => x509_ocsp::CertStatus::unknown(),
        CertStatus::Revoked { at, reason } => x509_ocsp::CertStatus::Revoked(RevokedInfo {
            revocation_time: gtime(at)?,
            revocation_reason: crl_reason(reason),
        }),
    })
}

/// Why a well-formed request gets no signed answer.
enum Refusal {
    Malformed,
    Unauthorized,
    Internal,
}

impl From<StoreError> for Refusal {
    fn from(e: StoreError) -> Self {
        tracing::error!(error = %e, "store failure in the OCSP responder");
        Refusal::Internal
    }
}

impl From<der::Error> for Refusal {
    fn from(e: der::Error) -> Self {
        tracing::error!(error = %e, "cannot encode an OCSP response");
        Refusal::Internal
    }
}

/// A request reduced to what the responder needs.
struct Parsed {
    issuer: usize,
    cert_ids: Vec<CertId>,
    nonce: Option<Extension>,
}

impl OcspResponder {
    /// Sets up the responder for every CA of `ca`, issuing a delegated responder
    /// certificate for each (this signs with the CA keys, so it may block on the HSM).
    pub fn new(
        store: Arc<Store>,
        ca: Arc<Hierarchy>,
        settings: OcspSettings,
    ) -> Result<Self, CaError> {
        let parents: HashMap<(String, i64), Option<String>> = store
            .authorities()?
            .into_iter()
            .map(|r| ((r.name, r.generation), r.parent))
            .collect();
        let mut issuers = Vec::new();
        let mut signers = Vec::new();
        for a in ca.authorities() {
            // Every generation: a certificate signed by an older one is answered by the
            // responder that generation certified.
            let parent = parents
                .get(&(a.name().to_string(), a.generation()))
                .cloned()
                .flatten();
            issuers.push(IssuerIndex::new(&a, parent)?);
            signers.push(Arc::new(ResponderCredential::issue(
                &a,
                settings.responder_algorithm,
                settings.responder_cert_ttl,
                &store,
            )?));
        }
        let seq = store
            .revocations(None, 0)?
            .last()
            .map(|r| r.seq)
            .unwrap_or(0);
        for (a, s) in ca.authorities().iter().zip(&signers) {
            tracing::info!(issuer = a.name(), serial = %s.serial_hex, not_after = s.not_after,
                "OCSP responder certificate issued");
        }
        Ok(OcspResponder {
            store,
            ca,
            settings,
            issuers: RwLock::new(Arc::new(issuers)),
            signers: RwLock::new(signers),
            cache: RwLock::new(AnswerCache::new(CACHE_CAPACITY)),
            revocation_seq: AtomicI64::new(seq),
        })
    }

    fn issuers(&self) -> Arc<Vec<IssuerIndex>> {
        self.issuers
            .read()
            .map(|i| i.clone())
            .unwrap_or_else(|_| Arc::new(Vec::new()))
    }

    /// Starts answering for CA generations created since start (a `keygrid ca rotate` in
    /// this process): certifies a responder for each and adds it.
    fn adopt_new_generations(&self) -> Result<(), CaError> {
        let known: std::collections::HashSet<(String, i64)> = self
            .issuers()
            .iter()
            .map(|i| (i.name.clone(), i.generation))
            .collect();
        let fresh: Vec<_> = self
            .ca
            .authorities()
            .into_iter()
            .filter(|a| !known.contains(&(a.name().to_string(), a.generation())))
            .collect();
        if fresh.is_empty() {
            return Ok(());
        }
        let parents: HashMap<(String, i64), Option<String>> = self
            .store
            .authorities()?
            .into_iter()
            .map(|r| ((r.name, r.generation), r.parent))
            .collect();
        for a in fresh {
            let parent = parents
                .get(&(a.name().to_string(), a.generation()))
                .cloned()
                .flatten();
            let index = IssuerIndex::new(&a, parent)?;
            let signer = Arc::new(ResponderCredential::issue(
                &a,
                self.settings.responder_algorithm,
                self.settings.responder_cert_ttl,
                &self.store,
            )?);
            tracing::info!(issuer = a.name(), generation = a.generation(),
                serial = %signer.serial_hex, "OCSP responder certificate issued for a new CA generation");
            // Signer first: an issuer index found by a request always has its signer.
            let mut signers = self
                .signers
                .write()
                .map_err(|_| CaError::Corrupt("lock".into()))?;
            let mut issuers = self
                .issuers
                .write()
                .map_err(|_| CaError::Corrupt("lock".into()))?;
            signers.push(signer);
            let mut next = issuers.as_ref().clone();
            next.push(index);
            *issuers = Arc::new(next);
        }
        Ok(())
    }

    /// The current delegated responder certificate of the newest generation of `issuer`.
    pub fn responder_cert(&self, issuer: &str) -> Option<Vec<u8>> {
        let idx = self.issuers().iter().rposition(|i| i.name == issuer)?;
        let signers = self.signers.read().ok()?;
        signers.get(idx).map(|s| s.cert_der.clone())
    }

    fn parse(&self, der: &[u8]) -> Result<Parsed, Refusal> {
        let req = OcspRequest::from_der(der).map_err(|_| Refusal::Malformed)?;
        let list = req.tbs_request.request_list;
        if list.is_empty() || list.len() > MAX_CERT_IDS {
            return Err(Refusal::Malformed);
        }
        let mut nonce = None;
        for ext in req.tbs_request.request_extensions.iter().flatten() {
            if ext.extn_id == OID_NONCE {
                // RFC 9654: extnValue holds the DER OCTET STRING of the nonce; some older
                // clients put the raw nonce there instead.
                let raw = ext.extn_value.as_bytes();
                let len = OctetString::from_der(raw)
                    .map(|o| o.as_bytes().len())
                    .unwrap_or(raw.len());
                if len == 0 || len > MAX_NONCE_LEN {
                    return Err(Refusal::Malformed);
                }
                nonce = Some(Extension {
                    extn_id: OID_NONCE,
                    critical: false,
                    extn_value: ext.extn_value.clone(),
                });
            } else if ext.critical {
                // An unknown critical request extension cannot be honoured.
                return Err(Refusal::Malformed);
            }
        }
        let issuers = self.issuers();
        let mut issuer = None;
        let mut cert_ids = Vec::with_capacity(list.len());
        for r in list {
            let idx = issuers
                .iter()
                .position(|i| i.matches(&r.req_cert))
                .ok_or(Refusal::Unauthorized)?;
            // One delegated responder speaks for one issuer only.
            if *issuer.get_or_insert(idx) != idx {
                return Err(Refusal::Unauthorized);
            }
            cert_ids.push(r.req_cert);
        }
        Ok(Parsed {
            issuer: issuer.ok_or(Refusal::Malformed)?,
            cert_ids,
            nonce,
        })
    }

    /// Answers from the cache alone; `None` when the request needs the store or a
    /// signature (cache miss, nonce, several CertIDs, or an error to report).
    ///
    /// A request whose exact bytes were answered before is found without decoding it; the
    /// first time, it is decoded and its bytes remembered (see [`AnswerCache`]).
    pub fn answer_cached(&self, der: &[u8]) -> Option<OcspAnswer> {
        let now = now();
        {
            let cache = self.cache.read().ok()?;
            if let Some(hit) = cache.get_by_request(der) {
                return (now < hit.refresh_at).then(|| hit.answer.clone());
            }
        }
        let parsed = self.parse(der).ok()?;
        if parsed.nonce.is_some() || parsed.cert_ids.len() != 1 {
            return None;
        }
        let key = (parsed.issuer, parsed.cert_ids[0].to_der().ok()?);
        let answer = {
            let cache = self.cache.read().ok()?;
            let hit = cache.get(&key)?;
            (now < hit.refresh_at).then(|| hit.answer.clone())?
        };
        if let Ok(mut cache) = self.cache.write() {
            cache.remember_request(der, &key);
        }
        Some(answer)
    }

    /// Answers a DER `OCSPRequest`. Never panics; every failure is an `OCSPResponse`
    /// with the matching `responseStatus`.
    pub fn answer(&self, der: &[u8]) -> OcspAnswer {
        match self.try_answer(der) {
            Ok(a) => a,
            Err(Refusal::Malformed) => OcspAnswer::error(OcspResponseStatus::MalformedRequest),
            Err(Refusal::Unauthorized) => OcspAnswer::error(OcspResponseStatus::Unauthorized),
            Err(Refusal::Internal) => OcspAnswer::error(OcspResponseStatus::InternalError),
        }
    }

    fn try_answer(&self, der: &[u8]) -> Result<OcspAnswer, Refusal> {
        let parsed = self.parse(der)?;
        let shareable = parsed.nonce.is_none() && parsed.cert_ids.len() == 1;
        let now = now();
        if shareable {
            let key = (parsed.issuer, parsed.cert_ids[0].to_der()?);
            if let Some(hit) = self.cache.read().ok().and_then(|c| c.get(&key).cloned()) {
                if now < hit.refresh_at {
                    return Ok(hit.answer.clone());
                }
            }
            let id = &parsed.cert_ids[0];
            let serial = serial_hex_from_bytes(id.serial_number.as_bytes());
            let status = self.status(parsed.issuer, &serial)?;
            let entry = self.sign_entry(parsed.issuer, id.clone(), serial, status, now)?;
            let answer = entry.answer.clone();
            // `unknown` is not kept: the serial may be issued later.
            if status != CertStatus::Unknown {
                if let Ok(mut cache) = self.cache.write() {
                    cache.insert(key, Arc::new(entry));
                }
            }
            return Ok(answer);
        }
        let mut singles = Vec::with_capacity(parsed.cert_ids.len());
        for id in parsed.cert_ids {
            let serial = serial_hex_from_bytes(id.serial_number.as_bytes());
            let status = self.status(parsed.issuer, &serial)?;
            singles.push((id, status));
        }
        let (der, _) = self.sign(parsed.issuer, &singles, parsed.nonce, now)?;
        Ok(OcspAnswer {
            der: Bytes::from(der),
            status: OcspResponseStatus::Successful,
            cache: None,
        })
    }

    /// The status of `serial` under issuer `idx`, from the store.
    fn status(&self, idx: usize, serial: &str) -> Result<CertStatus, Refusal> {
        let issuers = self.issuers();
        let issuer = issuers.get(idx).ok_or(Refusal::Internal)?;
        if self.store.certificate(&issuer.name, serial)?.is_none() {
            return Ok(CertStatus::Unknown);
        }
        if let Some(r) = self.store.revocation(&issuer.name, serial)? {
            return Ok(CertStatus::Revoked {
                at: r.revoked_at,
                reason: Reason::from_code(r.reason).unwrap_or(Reason::Unspecified),
            });
        }
        // Everything a revoked CA issued is revoked with it.
        if let Some(parent) = &issuer.parent {
            if let Some(r) = self.store.revocation(parent, &issuer.own_serial)? {
                return Ok(CertStatus::Revoked {
                    at: r.revoked_at,
                    reason: Reason::CaCompromise,
                });
            }
        }
        Ok(CertStatus::Good)
    }

    fn sign_entry(
        &self,
        idx: usize,
        cert_id: CertId,
        serial: String,
        status: CertStatus,
        now: i64,
    ) -> Result<Cached, Refusal> {
        let singles = [(cert_id.clone(), status)];
        let (der, next_update) = self.sign(idx, &singles, None, now)?;
        let etag = crate::ca::sha256_hex(&der);
        let validity = next_update - now;
        Ok(Cached {
            answer: OcspAnswer {
                der: Bytes::from(der),
                status: OcspResponseStatus::Successful,
                cache: Some(CacheInfo {
                    produced_at: now,
                    next_update,
                    etag,
                }),
            },
            issuer: idx,
            serial,
            cert_id,
            status,
            // Re-signed once half the validity has passed, well ahead of nextUpdate.
            refresh_at: now + (validity / 2).max(1),
        })
    }

    /// Builds and signs a BasicOCSPResponse; returns the DER `OCSPResponse` and the
    /// nextUpdate used.
    fn sign(
        &self,
        idx: usize,
        singles: &[(CertId, CertStatus)],
        nonce: Option<Extension>,
        now: i64,
    ) -> Result<(Vec<u8>, i64), Refusal> {
        let signer = self
            .signers
            .read()
            .map_err(|_| Refusal::Internal)?
            .get(idx)
            .cloned()
            .ok_or(Refusal::Internal)?;
        let any_unknown = singles.iter().any(|(_, s)| *s == CertStatus::Unknown);
        let validity = if any_unknown {
            UNKNOWN_VALIDITY
        } else {
            self.settings.response_validity
        };
        // A response must not outlive the certificate that vouches for its signature.
        let next_update = (now + validity.as_secs() as i64).min(signer.not_after);
        let this_update = gtime(now)?;
        let next = gtime(next_update)?;
        let mut responses = Vec::with_capacity(singles.len());
        for (id, status) in singles {
            responses.push(SingleResponse {
                cert_id: id.clone(),
                cert_status: ocsp_status(*status)?,
                this_update,
                next_update: Some(next),
                single_extensions: None,
            });
        }
        let tbs = ResponseData {
            version: Version::V1,
            responder_id: ResponderId::ByKey(OctetString::new(signer.key_hash.clone())?),
            produced_at: this_update,
            responses,
            response_extensions: nonce.map(|n| vec![n]),
        };
        let tbs_der = tbs.to_der()?;
        let sig = signer.key.sign(&tbs_der).map_err(|e| {
            tracing::error!(error = %e, "OCSP responder key failed to sign");
            Refusal::Internal
        })?;
        let basic = BasicOcspResponse {
            tbs_response_data: tbs,
            signature_algorithm: super::signature_algorithm(signer.key.algorithm()),
            signature: BitString::from_bytes(&sig)?,
            certs: Some(vec![signer.cert.clone()]),
        };
        let resp = OcspResponse::successful(basic)?;
        Ok((resp.to_der()?, next_update))
    }

    /// Periodic upkeep: picks up revocations made by other processes, rotates responder
    /// certificates at half-life, and re-signs cached answers due for refresh. Blocking
    /// (store, and the HSM on rotation); run it off the async executor.
    pub fn maintain(&self) {
        match self
            .store
            .revocations(None, self.revocation_seq.load(Ordering::Acquire))
        {
            Ok(new) => {
                for r in &new {
                    self.invalidate(r);
                }
            }
            Err(e) => tracing::error!(error = %e, "cannot read new revocations"),
        }
        if let Err(e) = self.adopt_new_generations() {
            tracing::error!(error = %e, "cannot add new CA generations to the OCSP responder");
        }
        let now = now();
        let due: Vec<usize> = match self.signers.read() {
            Ok(s) => s
                .iter()
                .enumerate()
                .filter(|(_, s)| s.due_for_rotation(now))
                .map(|(i, _)| i)
                .collect(),
            Err(_) => Vec::new(),
        };
        for idx in due {
            if let Err(e) = self.rotate(idx) {
                tracing::error!(issuer = %self.issuers().get(idx).map(|i| i.name.clone()).unwrap_or_default(), error = %e,
                    "OCSP responder certificate rotation failed; retrying at the next tick");
            }
        }
        self.refresh(now);
    }

    /// Issues a new responder certificate for issuer `idx` and re-signs its cached answers.
    pub fn rotate(&self, idx: usize) -> Result<(), CaError> {
        let issuers = self.issuers();
        let wanted = issuers
            .get(idx)
            .ok_or_else(|| CaError::Corrupt("no such responder".into()))?;
        let authority = self
            .ca
            .generations_of(&wanted.name)
            .into_iter()
            .find(|a| a.generation() == wanted.generation)
            .ok_or_else(|| CaError::Corrupt("issuer disappeared".into()))?;
        let fresh = Arc::new(ResponderCredential::issue(
            &authority,
            self.settings.responder_algorithm,
            self.settings.responder_cert_ttl,
            &self.store,
        )?);
        tracing::info!(issuer = authority.name(), serial = %fresh.serial_hex,
            not_after = fresh.not_after, "OCSP responder certificate rotated");
        if let Ok(mut s) = self.signers.write() {
            if let Some(slot) = s.get_mut(idx) {
                *slot = fresh;
            }
        }
        self.resign_where(|c| c.issuer == idx);
        Ok(())
    }

    fn refresh(&self, now: i64) {
        self.resign_where(|c| c.refresh_at <= now + 1);
    }

    /// Re-signs every cached answer matching `pick` with its recorded status.
    fn resign_where(&self, pick: impl Fn(&Cached) -> bool) {
        let todo: Vec<(CacheKey, Arc<Cached>)> = match self.cache.read() {
            Ok(c) => c
                .iter()
                .filter(|(_, v)| pick(v))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            Err(_) => return,
        };
        let now = now();
        for (key, old) in todo {
            match self.sign_entry(
                old.issuer,
                old.cert_id.clone(),
                old.serial.clone(),
                old.status,
                now,
            ) {
                Ok(entry) => {
                    if let Ok(mut c) = self.cache.write() {
                        c.insert(key, Arc::new(entry));
                    }
                }
                Err(_) => {
                    if let Ok(mut c) = self.cache.write() {
                        c.remove(&key);
                    }
                }
            }
        }
    }

    /// Applies a revocation: drops what the cache said about the certificate (and, for a
    /// CA, about everything it issued), then pre-signs the new answer for SHA-1 and
    /// SHA-256 CertIDs so the next request is served from the cache.
    fn invalidate(&self, rec: &RevocationRecord) {
        self.revocation_seq.fetch_max(rec.seq, Ordering::AcqRel);
        let issuers = self.issuers();
        let same_name: Vec<usize> = (0..issuers.len())
            .filter(|i| issuers[*i].name == rec.issuer)
            .collect();
        if same_name.is_empty() {
            return;
        }
        let revoked_ca: Option<usize> = issuers.iter().position(|i| {
            i.parent.as_deref() == Some(rec.issuer.as_str()) && i.own_serial == rec.serial
        });
        if let Ok(mut c) = self.cache.write() {
            c.retain(|_, v| {
                !((same_name.contains(&v.issuer) && v.serial == rec.serial)
                    || Some(v.issuer) == revoked_ca)
            });
        }
        let Ok(serial) = hex::decode(&rec.serial) else {
            return;
        };
        let status = CertStatus::Revoked {
            at: rec.revoked_at,
            reason: Reason::from_code(rec.reason).unwrap_or(Reason::Unspecified),
        };
        let now = now();
        // The store knows which generation signed it; without that, pre-sign for each.
        let generation = self
            .store
            .certificate(&rec.issuer, &rec.serial)
            .ok()
            .flatten()
            .map(|c| c.issuer_generation);
        for idx in same_name {
            if generation.is_some_and(|g| g != issuers[idx].generation) {
                continue;
            }
            for oid in [OID_SHA1, OID_SHA256] {
                let Some(id) = issuers[idx].cert_id(oid, &serial) else {
                    continue;
                };
                let Ok(key_der) = id.to_der() else { continue };
                if let Ok(entry) = self.sign_entry(idx, id, rec.serial.clone(), status, now) {
                    if let Ok(mut c) = self.cache.write() {
                        c.insert((idx, key_der), Arc::new(entry));
                    }
                }
            }
        }
    }

    /// Number of pre-signed answers held, for metrics and tests.
    pub fn cached(&self) -> usize {
        self.cache.read().map(|c| c.len()).unwrap_or(0)
    }
}

impl RevocationListener for OcspResponder {
    fn revoked(&self, rec: &RevocationRecord) {
        self.invalidate(rec);
    }
}
