//! The SVID cache: entries this node serves and a current X.509-SVID for each, plus the
//! pod default identities callers currently need, and the trust domain's bundles.
//!
//! One manager task keeps it current: it syncs entries and the X.509 and JWT bundles from
//! core, mints an SVID for every new entry and every wanted default identity, re-mints each
//! SVID at half its life with a small random splay (so thousands of SVIDs minted together
//! do not all renew in the same second), and drops SVIDs of deleted entries. Each change
//! publishes a new immutable snapshot on a watch channel; Workload API streams wait on that
//! channel and push the full state to their caller. When core is unreachable the cache
//! keeps serving what it has (never an expired SVID) and the manager retries with a
//! jittered exponential backoff.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use keygrid_proto::keygrid::v1 as pb;
use tokio::sync::{watch, Notify};

use crate::attestor::Selector;
use crate::node_client::{new_key_and_csr, CoreClient};

/// How long a default identity stays cached after its last user went away, so unary
/// calls and reconnecting streams find it ready.
const DEFAULT_ID_LINGER: Duration = Duration::from_secs(600);

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
    /// Current SVID per pod default SPIFFE ID.
    pub default_svids: HashMap<String, CachedSvid>,
    /// Default IDs core refused to mint (outside this node's scope).
    pub refused_defaults: HashSet<String>,
    /// Root certificates of the trust domain, DER.
    pub bundle: Vec<Vec<u8>>,
    /// The trust domain's JWT bundle (JWK Set JSON); empty until core served one.
    pub jwt_bundle: Vec<u8>,
    /// Bundles of federated trust domains, sorted by trust domain.
    pub federated: Vec<FederatedBundle>,
}

/// Another trust domain's bundle, as core hands it out (`[[federation]]` in core).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FederatedBundle {
    /// Trust domain name, without scheme.
    pub trust_domain: String,
    /// Root certificates, DER.
    pub x509_authorities: Vec<Vec<u8>>,
    /// JWK Set JSON of its JWT keys; empty when it has none.
    pub jwks: Vec<u8>,
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

/// Unix time in milliseconds.
pub fn now_ms() -> i64 {
    (time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64
}

/// A uniformly random value in `[-max, max]` (0 if the system RNG fails).
fn splay(max: i64) -> i64 {
    if max <= 0 {
        return 0;
    }
    let mut b = [0u8; 8];
    if aws_lc_rs::rand::fill(&mut b).is_err() {
        return 0;
    }
    (u64::from_le_bytes(b) % (2 * max as u64 + 1)) as i64 - max
}

/// When to renew an SVID received at `received_ms` that expires at `not_after_ms`: at
/// half-life, moved by up to ±5 % of the lifetime so renewals spread out.
pub fn renewal_time(received_ms: i64, not_after_ms: i64) -> i64 {
    let life = (not_after_ms - received_ms).max(0);
    received_ms + life / 2 + splay(life / 20)
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

/// Who currently needs which default identity.
#[derive(Default)]
struct Wanted {
    /// SPIFFE ID → (open users, when the last one left).
    ids: HashMap<String, (usize, Instant)>,
}

/// Handle to subscribe to cache snapshots and to ask for default identities.
#[derive(Clone)]
pub struct Cache {
    rx: watch::Receiver<Arc<Snapshot>>,
    wanted: Arc<Mutex<Wanted>>,
    wake: Arc<Notify>,
}

/// Keeps a default identity minted and rotated while held.
pub struct DefaultIdGuard {
    id: String,
    wanted: Arc<Mutex<Wanted>>,
}

impl Drop for DefaultIdGuard {
    fn drop(&mut self) {
        if let Ok(mut w) = self.wanted.lock() {
            if let Some(slot) = w.ids.get_mut(&self.id) {
                slot.0 = slot.0.saturating_sub(1);
                slot.1 = Instant::now();
            }
        }
    }
}

impl Cache {
    /// A receiver that sees every new snapshot.
    pub fn subscribe(&self) -> watch::Receiver<Arc<Snapshot>> {
        self.rx.clone()
    }

    /// Asks the manager to mint and keep rotating the pod default identity `spiffe_id`
    /// while the returned guard lives (and for a while after).
    pub fn want_default(&self, spiffe_id: &str) -> DefaultIdGuard {
        let new = match self.wanted.lock() {
            Ok(mut w) => {
                let slot = w
                    .ids
                    .entry(spiffe_id.to_string())
                    .or_insert((0, Instant::now()));
                slot.0 += 1;
                slot.0 == 1
            }
            Err(_) => false,
        };
        if new && !self.rx.borrow().default_svids.contains_key(spiffe_id) {
            self.wake.notify_one();
        }
        DefaultIdGuard {
            id: spiffe_id.to_string(),
            wanted: self.wanted.clone(),
        }
    }
}

/// Starts the manager task and returns the cache it maintains.
pub fn start(core: Arc<CoreClient>, trust_domain: String, sync_interval: Duration) -> Cache {
    let initial = Snapshot {
        trust_domain,
        ..Snapshot::default()
    };
    let (tx, rx) = watch::channel(Arc::new(initial));
    let cache = Cache {
        rx,
        wanted: Arc::new(Mutex::new(Wanted::default())),
        wake: Arc::new(Notify::new()),
    };
    tokio::spawn(manage(core, tx, cache.clone(), sync_interval));
    cache
}

/// Backoff after `failures` consecutive failed syncs: 200 ms doubling, capped at `cap`,
/// with ±20 % jitter so agents restarted together do not reconnect in lockstep.
pub fn backoff(failures: u32, cap: Duration) -> Duration {
    let base = 200u64.saturating_mul(1 << failures.min(8)) as i64;
    let base = base.min(cap.as_millis() as i64);
    Duration::from_millis((base + splay(base / 5)).max(50) as u64)
}

async fn manage(
    core: Arc<CoreClient>,
    tx: watch::Sender<Arc<Snapshot>>,
    cache: Cache,
    sync_interval: Duration,
) {
    let mut failures: u32 = 0;
    loop {
        let result = sync_once(&core, &tx, &cache).await;
        let wait = match result {
            Ok(next_renewal_ms) => {
                if failures > 0 {
                    tracing::info!("connection to core restored");
                }
                failures = 0;
                let until_renewal =
                    Duration::from_millis((next_renewal_ms - now_ms()).max(0) as u64);
                sync_interval.min(until_renewal)
            }
            Err(e) => {
                failures = failures.saturating_add(1);
                let wait = backoff(failures, sync_interval.max(Duration::from_secs(5)));
                tracing::warn!(error = %e, retry_in = ?wait, "sync with core failed; serving cached SVIDs");
                wait
            }
        };
        if tx.is_closed() {
            return;
        }
        tokio::select! {
            _ = tokio::time::sleep(wait.max(Duration::from_millis(50))) => {}
            _ = cache.wake.notified() => {}
        }
        // The node credential is renewed from here too, so a single task owns all core calls.
        if now_ms() / 1000 >= core.renew_at() {
            if let Err(e) = core.renew().await {
                tracing::warn!(error = %e, "node credential renewal failed; will retry");
            }
        }
    }
}

/// Default IDs to keep: in use, or released less than [`DEFAULT_ID_LINGER`] ago.
fn wanted_defaults(cache: &Cache) -> Vec<String> {
    let Ok(mut w) = cache.wanted.lock() else {
        return vec![];
    };
    w.ids
        .retain(|_, (users, since)| *users > 0 || since.elapsed() < DEFAULT_ID_LINGER);
    let mut ids: Vec<String> = w.ids.keys().cloned().collect();
    ids.sort();
    ids
}

/// Keeps `existing` if it is not due; otherwise mints. On failure keeps the old SVID while
/// it is still valid. Returns (svid to keep, whether it changed, error).
async fn keep_or_mint(
    client: &mut pb::node_client::NodeClient<tonic::transport::Channel>,
    existing: Option<&CachedSvid>,
    request: MintTarget<'_>,
) -> (Option<CachedSvid>, bool, Option<tonic::Status>) {
    match existing {
        Some(s) if now_ms() < s.renew_at_ms => (Some(s.clone()), false, None),
        _ => match mint(client, request).await {
            Ok(s) => (Some(s), true, None),
            Err(status) => {
                let keep = existing.filter(|s| now_ms() < s.not_after_ms).cloned();
                (keep, false, Some(status))
            }
        },
    }
}

/// One round: sync entries and bundles, mint what is missing or due. Returns the earliest
/// renewal time among the SVIDs held.
async fn sync_once(
    core: &CoreClient,
    tx: &watch::Sender<Arc<Snapshot>>,
    cache: &Cache,
) -> anyhow::Result<i64> {
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
    if let Err(e) = core.adopt_bundle(&bundle.x509_authorities).await {
        tracing::warn!(error = %e, "cannot adopt the new trust bundle");
    }
    let current = tx.borrow().clone();
    let jwt_bundle = match client.fetch_jwt_bundle(pb::FetchJwtBundleRequest {}).await {
        Ok(r) => r.into_inner().jwks,
        // A core without JWT support: keep serving X.509 (JWT calls will fail clearly).
        Err(s) if s.code() == tonic::Code::Unimplemented => vec![],
        Err(s) => anyhow::bail!("fetch JWT bundle: {}", s.message()),
    };

    let mut federated: Vec<FederatedBundle> = bundle
        .federated
        .iter()
        .filter(|f| f.trust_domain != current.trust_domain)
        .map(|f| FederatedBundle {
            trust_domain: f.trust_domain.clone(),
            x509_authorities: f.x509_authorities.clone(),
            jwks: f.jwks.clone(),
        })
        .collect();
    federated.sort_by(|a, b| a.trust_domain.cmp(&b.trust_domain));
    federated.dedup_by(|a, b| a.trust_domain == b.trust_domain);

    let mut changed = !current.synced
        || current.entries != entries
        || current.bundle != bundle.x509_authorities
        || current.jwt_bundle != jwt_bundle
        || current.federated != federated;
    let mut first_error = None;

    let mut svids: HashMap<String, CachedSvid> = HashMap::new();
    for entry in &entries {
        let existing = current
            .svids
            .get(&entry.id)
            .filter(|s| s.spiffe_id == entry.spiffe_id);
        let (keep, minted, err) =
            keep_or_mint(&mut client, existing, MintTarget::Entry(entry)).await;
        if let Some(s) = keep {
            svids.insert(entry.id.clone(), s);
        }
        changed |= minted;
        if let Some(e) = err {
            first_error.get_or_insert(anyhow::anyhow!(
                "mint SVID for {}: {}",
                entry.spiffe_id,
                e.message()
            ));
        }
    }

    let mut default_svids = HashMap::new();
    let mut refused_defaults = HashSet::new();
    for id in wanted_defaults(cache) {
        let existing = current.default_svids.get(&id);
        let (keep, minted, err) =
            keep_or_mint(&mut client, existing, MintTarget::Default(&id)).await;
        if let Some(s) = keep {
            default_svids.insert(id.clone(), s);
        }
        changed |= minted;
        match err {
            Some(s) if s.code() == tonic::Code::PermissionDenied => {
                tracing::warn!(spiffe_id = %id, reason = %s.message(), "core refused a default identity");
                refused_defaults.insert(id);
            }
            Some(s) => {
                first_error.get_or_insert(anyhow::anyhow!(
                    "mint default SVID for {id}: {}",
                    s.message()
                ));
            }
            None => {}
        }
    }
    changed |= svids.len() != current.svids.len()
        || default_svids.len() != current.default_svids.len()
        || refused_defaults != current.refused_defaults;

    let next = svids
        .values()
        .chain(default_svids.values())
        .map(|s| s.renew_at_ms)
        .min()
        .unwrap_or(i64::MAX);
    if changed {
        tx.send_replace(Arc::new(Snapshot {
            synced: true,
            trust_domain: current.trust_domain.clone(),
            entries,
            svids,
            default_svids,
            refused_defaults,
            bundle: bundle.x509_authorities,
            jwt_bundle,
            federated,
        }));
    }
    if let Some(e) = first_error {
        return Err(e);
    }
    Ok(next)
}

/// What to mint: a registration entry or a pod default identity.
#[derive(Clone, Copy)]
enum MintTarget<'a> {
    Entry(&'a CachedEntry),
    Default(&'a str),
}

async fn mint(
    client: &mut pb::node_client::NodeClient<tonic::transport::Channel>,
    target: MintTarget<'_>,
) -> Result<CachedSvid, tonic::Status> {
    let (key, csr) = new_key_and_csr().map_err(|e| tonic::Status::internal(e.to_string()))?;
    let (entry_id, default_spiffe_id, what) = match target {
        MintTarget::Entry(e) => (e.id.clone(), String::new(), e.spiffe_id.as_str()),
        MintTarget::Default(id) => (String::new(), id.to_string(), id),
    };
    let res = client
        .mint_x509svid(pb::MintX509svidRequest {
            entry_id,
            csr,
            default_spiffe_id,
        })
        .await?
        .into_inner();
    let leaf = res.cert_chain.first().ok_or_else(|| {
        tonic::Status::internal(format!("core returned an empty chain for {what}"))
    })?;
    let (_, cert) = x509_parser::parse_x509_certificate(leaf)
        .map_err(|e| tonic::Status::internal(format!("SVID for {what} does not parse: {e}")))?;
    let not_after_ms = cert.validity().not_after.timestamp() * 1000;
    let received = now_ms();
    tracing::debug!(spiffe_id = %res.spiffe_id, "X.509-SVID minted");
    Ok(CachedSvid {
        spiffe_id: res.spiffe_id,
        chain: res.cert_chain,
        key_pkcs8: key.serialize_der(),
        not_after_ms,
        renew_at_ms: renewal_time(received, not_after_ms),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renewal_is_at_half_life_with_a_small_splay() {
        let mut seen = HashSet::new();
        for _ in 0..500 {
            let at = renewal_time(0, 300_000);
            assert!((135_000..=165_000).contains(&at), "{at}");
            seen.insert(at);
        }
        // Spread out, not one instant.
        assert!(seen.len() > 100, "{}", seen.len());
        assert_eq!(renewal_time(1000, 500), 1000);
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        let cap = Duration::from_secs(5);
        for _ in 0..100 {
            let first = backoff(1, cap);
            assert!(first >= Duration::from_millis(320) && first <= Duration::from_millis(480));
            let late = backoff(30, cap);
            assert!(late >= Duration::from_secs(4) && late <= Duration::from_secs(6));
        }
    }
}
