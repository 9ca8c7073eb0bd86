//! The SVID cache: entries this node serves and a current X.509-SVID for each.
//!
//! One manager task keeps it current: it syncs entries and the bundle from core, mints an
//! SVID for every new entry, re-mints each SVID at half its remaining life (so a workload
//! always holds a valid one), and drops SVIDs of deleted entries. Each change publishes a
//! new immutable snapshot on a watch channel; Workload API streams wait on that channel
//! and push the full state to their caller. When core is unreachable the cache keeps
//! serving what it has and the manager retries with backoff.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use keygrid_proto::keygrid::v1 as pb;
use tokio::sync::watch;

use crate::attestor::Selector;
use crate::node_client::{new_key_and_csr, CoreClient};

/// An X.509-SVID held for workloads.
#[derive(Clone)]
pub struct CachedSvid {
    /// Its SPIFFE ID.
    pub spiffe_id: String,
    /// DER certificates, leaf first.
    pub chain: Vec<Vec<u8>>,
    /// DER PKCS#8 private key.
    pub key_pkcs8: Vec<u8>,
    /// Leaf expiry, Unix milliseconds.
    pub not_after_ms: i64,
    /// When to re-mint, Unix milliseconds.
    pub renew_at_ms: i64,
}

/// A registration entry as the agent uses it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CachedEntry {
    /// Entry ID.
    pub id: String,
    /// SPIFFE ID it grants.
    pub spiffe_id: String,
    /// All must match the caller.
    pub selectors: Vec<Selector>,
    /// Hint passed to workloads.
    pub hint: String,
}

/// An immutable view of the cache, replaced whole on every change.
#[derive(Clone, Default)]
pub struct Snapshot {
    /// False until the first successful sync with core.
    pub synced: bool,
    /// Trust domain name.
    pub trust_domain: String,
    /// Entries, in core's order (oldest first).
    pub entries: Vec<CachedEntry>,
    /// Current SVID per entry ID.
    pub svids: HashMap<String, CachedSvid>,
    /// Root certificates of the trust domain, DER.
    pub bundle: Vec<Vec<u8>>,
}

impl Snapshot {
    /// Entries whose selectors are all among the caller's.
    pub fn matching(&self, caller: &[Selector]) -> Vec<&CachedEntry> {
        self.entries
            .iter()
            .filter(|e| e.selectors.iter().all(|s| caller.contains(s)))
            .collect()
    }
}

fn now_ms() -> i64 {
    (time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64
}

fn entry_from_pb(e: pb::Entry) -> CachedEntry {
    CachedEntry {
        id: e.id,
        spiffe_id: e.spiffe_id,
        selectors: e
            .selectors
            .into_iter()
            .map(|s| Selector {
                kind: s.r#type,
                value: s.value,
            })
            .collect(),
        hint: e.hint,
    }
}

/// Handle to subscribe to cache snapshots.
#[derive(Clone)]
pub struct Cache {
    rx: watch::Receiver<Arc<Snapshot>>,
}

impl Cache {
    /// A receiver that sees every new snapshot.
    pub fn subscribe(&self) -> watch::Receiver<Arc<Snapshot>> {
        self.rx.clone()
    }
}

/// Starts the manager task and returns the cache it maintains.
pub fn start(core: Arc<CoreClient>, trust_domain: String, sync_interval: Duration) -> Cache {
    let initial = Snapshot {
        trust_domain,
        ..Snapshot::default()
    };
    let (tx, rx) = watch::channel(Arc::new(initial));
    tokio::spawn(manage(core, tx, sync_interval));
    Cache { rx }
}

async fn manage(core: Arc<CoreClient>, tx: watch::Sender<Arc<Snapshot>>, sync_interval: Duration) {
    let mut failures: u32 = 0;
    loop {
        let result = sync_once(&core, &tx).await;
        let wait = match result {
            Ok(next_renewal_ms) => {
                failures = 0;
                let until_renewal =
                    Duration::from_millis((next_renewal_ms - now_ms()).max(0) as u64);
                sync_interval.min(until_renewal)
            }
            Err(e) => {
                failures = failures.saturating_add(1);
                let backoff = Duration::from_millis(200u64.saturating_mul(1 << failures.min(6)));
                tracing::warn!(error = %e, retry_in = ?backoff, "sync with core failed; serving cached SVIDs");
                backoff.min(sync_interval.max(Duration::from_secs(1)))
            }
        };
        if tx.is_closed() {
            return;
        }
        tokio::time::sleep(wait.max(Duration::from_millis(50))).await;
        // The node credential is renewed from here too, so a single task owns all core calls.
        if now_ms() / 1000 >= core.renew_at() {
            if let Err(e) = core.renew().await {
                tracing::warn!(error = %e, "node credential renewal failed; will retry");
            }
        }
    }
}

/// One round: sync entries and bundle, mint what is missing or due. Returns the earliest
/// renewal time among the SVIDs held.
async fn sync_once(core: &CoreClient, tx: &watch::Sender<Arc<Snapshot>>) -> anyhow::Result<i64> {
    let mut client = core.client();
    let entries: Vec<CachedEntry> = client
        .fetch_entries(pb::FetchEntriesRequest {})
        .await
        .map_err(|s| anyhow::anyhow!("fetch entries: {}", s.message()))?
        .into_inner()
        .entries
        .into_iter()
        .map(entry_from_pb)
        .collect();
    let bundle = client
        .fetch_bundle(pb::FetchBundleRequest {})
        .await
        .map_err(|s| anyhow::anyhow!("fetch bundle: {}", s.message()))?
        .into_inner();

    let current = tx.borrow().clone();
    let mut svids: HashMap<String, CachedSvid> = HashMap::new();
    let mut changed =
        !current.synced || current.entries != entries || current.bundle != bundle.x509_authorities;
    let mut first_error = None;
    for entry in &entries {
        let existing = current
            .svids
            .get(&entry.id)
            .filter(|s| s.spiffe_id == entry.spiffe_id);
        match existing {
            Some(s) if now_ms() < s.renew_at_ms => {
                svids.insert(entry.id.clone(), s.clone());
            }
            _ => match mint(&mut client, entry).await {
                Ok(s) => {
                    svids.insert(entry.id.clone(), s);
                    changed = true;
                }
                Err(e) => {
                    // Keep the old SVID while it is still valid; retry soon.
                    if let Some(s) = existing.filter(|s| now_ms() < s.not_after_ms) {
                        svids.insert(entry.id.clone(), s.clone());
                    }
                    first_error.get_or_insert(e);
                }
            },
        }
    }
    if changed || svids.len() != current.svids.len() {
        tx.send_replace(Arc::new(Snapshot {
            synced: true,
            trust_domain: current.trust_domain.clone(),
            entries,
            svids: svids.clone(),
            bundle: bundle.x509_authorities,
        }));
    }
    if let Some(e) = first_error {
        return Err(e);
    }
    Ok(svids
        .values()
        .map(|s| s.renew_at_ms)
        .min()
        .unwrap_or(i64::MAX))
}

async fn mint(
    client: &mut keygrid_proto::keygrid::v1::node_client::NodeClient<tonic::transport::Channel>,
    entry: &CachedEntry,
) -> anyhow::Result<CachedSvid> {
    let (key, csr) = new_key_and_csr()?;
    let res = client
        .mint_x509svid(pb::MintX509svidRequest {
            entry_id: entry.id.clone(),
            csr,
        })
        .await
        .map_err(|s| anyhow::anyhow!("mint SVID for {}: {}", entry.spiffe_id, s.message()))?
        .into_inner();
    let leaf = res
        .cert_chain
        .first()
        .ok_or_else(|| anyhow::anyhow!("core returned an empty chain for {}", entry.spiffe_id))?;
    let (_, cert) = x509_parser::parse_x509_certificate(leaf)
        .map_err(|e| anyhow::anyhow!("SVID for {} does not parse: {e}", entry.spiffe_id))?;
    let not_after_ms = cert.validity().not_after.timestamp() * 1000;
    let received = now_ms();
    tracing::debug!(spiffe_id = %res.spiffe_id, "X.509-SVID minted");
    Ok(CachedSvid {
        spiffe_id: res.spiffe_id,
        chain: res.cert_chain,
        key_pkcs8: key.serialize_der(),
        not_after_ms,
        renew_at_ms: received + (not_after_ms - received) / 2,
    })
}
