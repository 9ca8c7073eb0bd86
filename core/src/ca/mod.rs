//! The certificate authority: the hierarchy of CAs and the one place certificates are signed.
//!
//! The root key is generated in the key backend (the HSM) and signs only the issuing CAs;
//! `workloads` signs X.509-SVIDs and `nodes` signs agent identities. Every certificate is
//! built from a profile (see [`profiles`]), gets a random 128-bit serial, and never outlives
//! the CA that signed it.

pub mod profiles;

use std::sync::Arc;
use std::time::Duration;

use rcgen::{CertificateParams, Issuer, PublicKeyData, SerialNumber, SigningKey};
use time::OffsetDateTime;

use crate::keys::{CaSigner, KeyAlgorithm, KeyBackend, KeyError};
use crate::store::{AuthorityRecord, Store, StoreError};

/// Errors from the CA.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    /// The key backend failed.
    #[error("key backend: {0}")]
    Key(#[from] KeyError),
    /// Building or signing a certificate failed.
    #[error("certificate: {0}")]
    Cert(#[from] rcgen::Error),
    /// The request cannot be honoured as asked (bad name, bad CSR, ...).
    #[error("{0}")]
    InvalidRequest(String),
    /// The store failed.
    #[error("store: {0}")]
    Store(#[from] StoreError),
    /// Stored hierarchy data does not make sense.
    #[error("hierarchy: {0}")]
    Corrupt(String),
}

/// Issuer names, as stored and shown by `keygrid ca show`.
pub const ROOT: &str = "root";
/// The issuer of X.509-SVIDs.
pub const WORKLOADS: &str = "workloads";
/// The issuer of node (agent) and core serving certificates.
pub const NODES: &str = "nodes";

/// An owned handle to a CA signer in the form rcgen's `Issuer` wants.
#[derive(Clone)]
struct SharedSigner(Arc<dyn CaSigner>);

impl PublicKeyData for SharedSigner {
    fn der_bytes(&self) -> &[u8] {
        self.0.public_key_raw()
    }

    fn algorithm(&self) -> &'static rcgen::SignatureAlgorithm {
        self.0.algorithm().rcgen()
    }
}

impl SigningKey for SharedSigner {
    fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, rcgen::Error> {
        crate::keys::RcgenSigner(self.0.as_ref()).sign(msg)
    }
}

/// A certificate the CA has just signed, with the facts the store records about it.
#[derive(Clone, Debug)]
pub struct Issued {
    /// The certificate, DER.
    pub der: Vec<u8>,
    /// Serial number, lowercase hex.
    pub serial_hex: String,
    /// Validity start, Unix seconds.
    pub not_before: i64,
    /// Validity end, Unix seconds.
    pub not_after: i64,
    /// SHA-256 of the DER, lowercase hex.
    pub sha256_hex: String,
    /// True when the requested lifetime was cut to the issuer's own expiry.
    pub clamped: bool,
}

/// One CA: its certificate and its signing key.
pub struct Authority {
    name: String,
    cert_der: Vec<u8>,
    signer: Arc<dyn CaSigner>,
    issuer: Issuer<'static, SharedSigner>,
    not_after: OffsetDateTime,
}

impl Authority {
    fn new(name: &str, cert_der: Vec<u8>, signer: Arc<dyn CaSigner>) -> Result<Self, CaError> {
        let (_, cert) = x509_parser::parse_x509_certificate(&cert_der)
            .map_err(|e| CaError::Corrupt(format!("{name} certificate does not parse: {e}")))?;
        let spki = cert.public_key().subject_public_key.data.as_ref();
        if spki != signer.public_key_raw() {
            return Err(CaError::Corrupt(format!(
                "{name} certificate does not match its key {}",
                signer.location()
            )));
        }
        let not_after = cert.validity().not_after.to_datetime();
        let issuer =
            Issuer::from_ca_cert_der(&cert_der.clone().into(), SharedSigner(signer.clone()))?;
        Ok(Authority {
            name: name.to_string(),
            cert_der,
            signer,
            issuer,
            not_after,
        })
    }

    /// The issuer's name (`root`, `workloads`, `nodes`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The CA certificate, DER.
    pub fn cert_der(&self) -> &[u8] {
        &self.cert_der
    }

    /// When this CA expires; nothing it signs may outlive it.
    pub fn not_after(&self) -> OffsetDateTime {
        self.not_after
    }

    /// Where its key lives, for `keygrid ca show`.
    pub fn key_location(&self) -> String {
        self.signer.location()
    }

    /// The CA key's algorithm.
    pub fn algorithm(&self) -> KeyAlgorithm {
        self.signer.algorithm()
    }

    /// Signs a CRL with this CA's key (revocation publishes one per issuer).
    pub fn sign_crl(
        &self,
        params: &rcgen::CertificateRevocationListParams,
    ) -> Result<Vec<u8>, CaError> {
        Ok(params.signed_by(&self.issuer)?.der().to_vec())
    }

    /// Signs `params` for `public_key`, valid from 10 s ago (clock skew) for `ttl`, cut at
    /// this CA's own expiry.
    pub fn sign(
        &self,
        mut params: CertificateParams,
        public_key: &impl PublicKeyData,
        ttl: Duration,
        now: OffsetDateTime,
    ) -> Result<Issued, CaError> {
        let serial = random_serial()?;
        let not_before = now - Duration::from_secs(10);
        let wanted = now + ttl;
        let clamped = wanted > self.not_after;
        params.not_before = not_before;
        params.not_after = if clamped { self.not_after } else { wanted };
        params.serial_number = Some(SerialNumber::from_slice(&serial));
        let cert = params.signed_by(public_key, &self.issuer)?;
        let der = cert.der().to_vec();
        Ok(Issued {
            sha256_hex: sha256_hex(&der),
            serial_hex: hex::encode(serial),
            not_before: params.not_before.unix_timestamp(),
            not_after: params.not_after.unix_timestamp(),
            der,
            clamped,
        })
    }
}

/// 16 random bytes with the top bit cleared: a positive 127-bit serial, well above the
/// 64 bits of entropy CA/B Forum rules ask for.
fn random_serial() -> Result<[u8; 16], CaError> {
    let mut serial = [0u8; 16];
    aws_lc_rs::rand::fill(&mut serial)
        .map_err(|_| CaError::Corrupt("system random generator failed".into()))?;
    serial[0] &= 0x7f;
    // A leading zero byte would be dropped by DER; keep the length fixed.
    serial[0] |= 0x01;
    Ok(serial)
}

/// Lowercase hex SHA-256, the fingerprint format used in records and output.
pub fn sha256_hex(data: &[u8]) -> String {
    hex::encode(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, data))
}

/// Lifetimes and algorithms of the CA hierarchy.
#[derive(Clone, Debug)]
pub struct HierarchySettings {
    /// Trust domain name, e.g. `example.org`.
    pub trust_domain: String,
    /// Root key algorithm.
    pub root_algorithm: KeyAlgorithm,
    /// Root lifetime.
    pub root_ttl: Duration,
    /// Issuing CA key algorithm.
    pub issuer_algorithm: KeyAlgorithm,
    /// Issuing CA lifetime.
    pub issuer_ttl: Duration,
}

/// The CA hierarchy of one trust domain.
pub struct Hierarchy {
    trust_domain: String,
    root: Authority,
    workloads: Authority,
    nodes: Authority,
}

impl Hierarchy {
    /// Loads the hierarchy from the store, or creates it (keys in `keys`) when the store has
    /// none. Creation writes the store only after every key and certificate exists, so a
    /// failure leaves no partial hierarchy.
    pub fn init_or_load(
        store: &Store,
        keys: &dyn KeyBackend,
        settings: &HierarchySettings,
    ) -> Result<(Self, bool), CaError> {
        let records = store.authorities()?;
        if records.is_empty() {
            let (hierarchy, records) = Self::create(keys, settings)?;
            store.insert_authorities(&records, OffsetDateTime::now_utc().unix_timestamp())?;
            return Ok((hierarchy, true));
        }
        let mut by_name = std::collections::HashMap::new();
        for rec in records {
            let alg = KeyAlgorithm::from_name(&rec.algorithm).ok_or_else(|| {
                CaError::Corrupt(format!(
                    "{} has unknown algorithm {}",
                    rec.name, rec.algorithm
                ))
            })?;
            let signer = keys.find(&rec.key_label, alg)?;
            by_name.insert(
                rec.name.clone(),
                Authority::new(&rec.name, rec.cert_der, signer)?,
            );
        }
        let mut take = |name: &str| {
            by_name
                .remove(name)
                .ok_or_else(|| CaError::Corrupt(format!("store has no {name} CA")))
        };
        let hierarchy = Hierarchy {
            trust_domain: settings.trust_domain.clone(),
            root: take(ROOT)?,
            workloads: take(WORKLOADS)?,
            nodes: take(NODES)?,
        };
        hierarchy.check_trust_domain()?;
        Ok((hierarchy, false))
    }

    fn create(
        keys: &dyn KeyBackend,
        s: &HierarchySettings,
    ) -> Result<(Self, Vec<AuthorityRecord>), CaError> {
        let td_id = format!("spiffe://{}", s.trust_domain);
        let now = OffsetDateTime::now_utc();
        let suffix = hex::encode(random_serial()?.get(..4).unwrap_or_default());

        let root_label = format!("keygrid-root-{suffix}");
        let root_key = keys.generate(&root_label, s.root_algorithm)?;
        let mut root_params = profiles::root_ca(&td_id)?;
        root_params.not_before = now - Duration::from_secs(60);
        root_params.not_after = now + s.root_ttl;
        root_params.serial_number = Some(SerialNumber::from_slice(&random_serial()?));
        let root_cert = root_params.self_signed(&crate::keys::RcgenSigner(root_key.as_ref()))?;
        let root = Authority::new(ROOT, root_cert.der().to_vec(), root_key)?;

        let mut records = vec![AuthorityRecord {
            name: ROOT.into(),
            parent: None,
            cert_der: root.cert_der.clone(),
            key_label: root_label,
            algorithm: s.root_algorithm.name().into(),
        }];
        let mut issuing = Vec::new();
        for name in [WORKLOADS, NODES] {
            let label = format!("keygrid-{name}-{suffix}");
            let key = keys.generate(&label, s.issuer_algorithm)?;
            let params = profiles::issuing_ca(&td_id, name)?;
            let issued = root.sign(params, &SharedSigner(key.clone()), s.issuer_ttl, now)?;
            records.push(AuthorityRecord {
                name: name.into(),
                parent: Some(ROOT.into()),
                cert_der: issued.der.clone(),
                key_label: label,
                algorithm: s.issuer_algorithm.name().into(),
            });
            issuing.push(Authority::new(name, issued.der, key)?);
        }
        let nodes = issuing
            .pop()
            .ok_or_else(|| CaError::Corrupt("nodes CA missing".into()))?;
        let workloads = issuing
            .pop()
            .ok_or_else(|| CaError::Corrupt("workloads CA missing".into()))?;
        Ok((
            Hierarchy {
                trust_domain: s.trust_domain.clone(),
                root,
                workloads,
                nodes,
            },
            records,
        ))
    }

    /// Refuses to serve a hierarchy created for another trust domain.
    fn check_trust_domain(&self) -> Result<(), CaError> {
        let want = format!("spiffe://{}", self.trust_domain);
        let (_, cert) = x509_parser::parse_x509_certificate(&self.root.cert_der)
            .map_err(|e| CaError::Corrupt(format!("root certificate does not parse: {e}")))?;
        let has = cert
            .subject_alternative_name()
            .ok()
            .flatten()
            .map(|san| {
                san.value.general_names.iter().any(
                    |n| matches!(n, x509_parser::extensions::GeneralName::URI(u) if *u == want),
                )
            })
            .unwrap_or(false);
        if !has {
            return Err(CaError::Corrupt(format!(
                "the stored root CA was not created for trust domain {}; use the data directory of that trust domain",
                self.trust_domain
            )));
        }
        Ok(())
    }

    /// The trust domain name.
    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    /// The root CA.
    pub fn root(&self) -> &Authority {
        &self.root
    }

    /// The issuer of X.509-SVIDs.
    pub fn workloads(&self) -> &Authority {
        &self.workloads
    }

    /// The issuer of node and core serving certificates.
    pub fn nodes(&self) -> &Authority {
        &self.nodes
    }

    /// All CAs, root first.
    pub fn authorities(&self) -> [&Authority; 3] {
        [&self.root, &self.workloads, &self.nodes]
    }

    /// The trust bundle relying parties use: the root certificates, DER.
    pub fn bundle(&self) -> Vec<Vec<u8>> {
        vec![self.root.cert_der.clone()]
    }
}

#[cfg(test)]
mod tests;
