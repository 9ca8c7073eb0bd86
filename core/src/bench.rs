//! `keygrid bench issue`: leaf issuance rate next to the raw signing rate of the same key.
//!
//! Issuance can never beat the key's own signing rate, so the raw rate of the very same
//! key, measured in the same run, is the ceiling the issuance figure is compared with. Each
//! measurement is single-threaded, so the figures are per core.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use cryptoki::types::AuthPin;

use crate::ca::{profiles, Hierarchy, HierarchySettings};
use crate::keys::pkcs11::Pkcs11Token;
use crate::keys::software::MemoryBackend;
use crate::keys::{IssuerKeys, KeyAlgorithm};
use crate::store::Store;

/// One measured configuration.
#[derive(Clone, Debug)]
pub struct BenchResult {
    /// `software` or `pkcs11`.
    pub backend: &'static str,
    /// CA key algorithm.
    pub algorithm: KeyAlgorithm,
    /// Raw signatures per second with the CA key (the ceiling).
    pub raw_signs_per_sec: f64,
    /// X.509-SVIDs issued per second (profile, sign, DER, fingerprint; CSR checked once).
    pub issues_per_sec: f64,
    /// The same, with the CSR's signature verified on every issuance.
    pub issues_with_csr_check_per_sec: f64,
}

/// Runs each workload in turn for `duration / ROUNDS`, `ROUNDS` times, so that load from
/// elsewhere on a shared machine falls on all of them alike; returns operations per second.
pub(crate) fn interleaved<const N: usize>(
    duration: Duration,
    workloads: &mut [&mut dyn FnMut() -> anyhow::Result<()>; N],
) -> anyhow::Result<[f64; N]> {
    const ROUNDS: u32 = 10;
    let slice = duration / ROUNDS;
    let mut counts = [0u64; N];
    let mut elapsed = [Duration::ZERO; N];
    for w in workloads.iter_mut() {
        // Warm up (session pool, caches).
        for _ in 0..20 {
            w()?;
        }
    }
    for _ in 0..ROUNDS {
        for (i, w) in workloads.iter_mut().enumerate() {
            let start = Instant::now();
            while start.elapsed() < slice {
                w()?;
                counts[i] += 1;
            }
            elapsed[i] += start.elapsed();
        }
    }
    let mut out = [0f64; N];
    for i in 0..N {
        out[i] = counts[i] as f64 / elapsed[i].as_secs_f64();
    }
    Ok(out)
}

fn measure(
    keys: &dyn IssuerKeys,
    backend: &'static str,
    algorithm: KeyAlgorithm,
    duration: Duration,
) -> anyhow::Result<BenchResult> {
    let store = Store::in_memory()?;
    let settings = HierarchySettings::new("bench.keygrid.local", algorithm, algorithm);
    let (h, _) = Hierarchy::init_or_load(&store, keys, &settings)?;
    let ca = h.workloads();
    let signer = ca.signer();
    // A message the size of a typical SVID's to-be-signed part.
    let msg = vec![0x5au8; 420];
    let leaf_key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let csr = rcgen::CertificateParams::default().serialize_request(&leaf_key)?;
    let csr_der = csr.der().clone();
    let parsed = rcgen::CertificateSigningRequestParams::from_der(&csr_der)?;
    let id = "spiffe://bench.keygrid.local/ns/bench/sa/bench";
    let ttl = Duration::from_secs(300);
    let mut raw = || -> anyhow::Result<()> {
        signer.sign(&msg)?;
        Ok(())
    };
    let mut issue = || -> anyhow::Result<()> {
        let params = profiles::x509_svid(id, &[])?;
        ca.sign(
            params,
            &parsed.public_key,
            ttl,
            time::OffsetDateTime::now_utc(),
        )?;
        Ok(())
    };
    let mut issue_checked = || -> anyhow::Result<()> {
        let csr = rcgen::CertificateSigningRequestParams::from_der(&csr_der)?;
        let params = profiles::x509_svid(id, &[])?;
        ca.sign(
            params,
            &csr.public_key,
            ttl,
            time::OffsetDateTime::now_utc(),
        )?;
        Ok(())
    };
    let [raw, issue, issue_checked] =
        interleaved(duration, &mut [&mut raw, &mut issue, &mut issue_checked])?;
    Ok(BenchResult {
        backend,
        algorithm,
        raw_signs_per_sec: raw,
        issues_per_sec: issue,
        issues_with_csr_check_per_sec: issue_checked,
    })
}

/// Creates a private SoftHSM2 token for the benchmark and points `SOFTHSM2_CONF` at it.
/// Must run before any other thread exists (it sets an environment variable).
pub fn prepare_softhsm(dir: &Path) -> anyhow::Result<PathBuf> {
    let tokens = dir.join("tokens");
    std::fs::create_dir_all(&tokens)?;
    let conf = dir.join("softhsm2.conf");
    std::fs::write(
        &conf,
        format!(
            "directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\n",
            tokens.display()
        ),
    )?;
    std::env::set_var("SOFTHSM2_CONF", &conf);
    Ok(conf)
}

/// Runs every requested combination and returns the results.
pub fn run(
    module: &Path,
    backends: &[String],
    algorithms: &[KeyAlgorithm],
    duration: Duration,
) -> anyhow::Result<Vec<BenchResult>> {
    let mut out = Vec::new();
    let mut token = None;
    for backend in backends {
        for &alg in algorithms {
            let result = match backend.as_str() {
                "software" => measure(&MemoryBackend::default(), "software", alg, duration)?,
                "pkcs11" => {
                    if token.is_none() {
                        let so = AuthPin::from("bench-so".to_string());
                        let user = AuthPin::from("bench-user".to_string());
                        Pkcs11Token::init_if_missing(module, "keygrid-bench", &so, &user)?;
                        token = Some(Pkcs11Token::open(module, "keygrid-bench", user)?);
                    }
                    match &token {
                        Some(t) => measure(t, "pkcs11", alg, duration)?,
                        None => anyhow::bail!("token not open"),
                    }
                }
                other => anyhow::bail!("unknown backend {other:?}; use software or pkcs11"),
            };
            out.push(result);
        }
    }
    Ok(out)
}

/// Prints results as a Markdown table (pasted into docs/benchmarks.md).
pub fn print(results: &[BenchResult]) {
    println!("| backend | CA key | raw sign/s (ceiling) | SVID issue/s | issue/s ÷ raw | issue incl. CSR check/s |");
    println!("|---|---|---:|---:|---:|---:|");
    for r in results {
        println!(
            "| {} | {} | {:.0} | {:.0} | {:.0}% | {:.0} |",
            r.backend,
            r.algorithm,
            r.raw_signs_per_sec,
            r.issues_per_sec,
            100.0 * r.issues_per_sec / r.raw_signs_per_sec,
            r.issues_with_csr_check_per_sec
        );
    }
}

/// One row of `keygrid bench audit`: issuance into one store engine with and without the
/// audit record.
#[derive(Clone, Debug)]
pub struct AuditBenchResult {
    /// `sqlite` (file, synchronous=FULL) or `postgres` (private server, fsync on).
    pub engine: &'static str,
    /// SVIDs issued and recorded per second, certificate row only (audit off).
    pub audit_off_per_sec: f64,
    /// The same with the hash-chained audit record in the same transaction (audit on).
    pub audit_on_per_sec: f64,
}

fn measure_audit(
    store: &Store,
    engine: &'static str,
    duration: Duration,
) -> anyhow::Result<AuditBenchResult> {
    let keys = MemoryBackend::default();
    let settings = HierarchySettings::new(
        "bench.keygrid.local",
        KeyAlgorithm::EcdsaP256,
        KeyAlgorithm::EcdsaP256,
    );
    let (h, _) = Hierarchy::init_or_load(store, &keys, &settings)?;
    let ca = h.workloads();
    let leaf_key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let csr = rcgen::CertificateParams::default().serialize_request(&leaf_key)?;
    let parsed = rcgen::CertificateSigningRequestParams::from_der(csr.der())?;
    let id = "spiffe://bench.keygrid.local/ns/bench/sa/bench";
    let ttl = Duration::from_secs(300);
    let sign = || -> anyhow::Result<crate::store::CertificateRecord> {
        let params = profiles::x509_svid(id, &[])?;
        let issued = ca.sign(
            params,
            &parsed.public_key,
            ttl,
            time::OffsetDateTime::now_utc(),
        )?;
        Ok(issued.record(&ca, crate::issuance::PROFILE_X509_SVID, id))
    };
    let mut off = || -> anyhow::Result<()> {
        let rec = sign()?;
        store.write(|tx| crate::store::insert_certificate(tx, &rec))?;
        Ok(())
    };
    let mut on = || -> anyhow::Result<()> {
        let rec = sign()?;
        store.record_issuance(&rec, "spiffe://bench.keygrid.local/node")?;
        Ok(())
    };
    let [off, on] = interleaved(duration, &mut [&mut off, &mut on])?;
    Ok(AuditBenchResult {
        engine,
        audit_off_per_sec: off,
        audit_on_per_sec: on,
    })
}

/// `keygrid bench audit`: single-threaded SVID issuance (software P-256 key) recorded in
/// an on-disk SQLite store and in a private PostgreSQL server, each with the audit record
/// off and on, interleaved in one run.
pub fn run_audit(engines: &[String], duration: Duration) -> anyhow::Result<Vec<AuditBenchResult>> {
    let mut out = Vec::new();
    for engine in engines {
        match engine.as_str() {
            "sqlite" => {
                let dir = tempfile::tempdir()?;
                let store = Store::open(&dir.path().join("bench.db"))?;
                out.push(measure_audit(&store, "sqlite", duration)?);
            }
            "postgres" => {
                let server =
                    crate::store::pg_server::PgServer::start().map_err(anyhow::Error::msg)?;
                server
                    .create_database("bench")
                    .map_err(anyhow::Error::msg)?;
                let store = Store::open_postgres(server.config("bench"))?;
                out.push(measure_audit(&store, "postgres", duration)?);
            }
            other => anyhow::bail!("unknown engine {other:?}; use sqlite or postgres"),
        }
    }
    Ok(out)
}

/// Prints `keygrid bench audit` results as a Markdown table.
pub fn print_audit(results: &[AuditBenchResult]) {
    println!(
        "| store | audit off: issue+record/s | audit on: issue+record+audit/s | cost of audit |"
    );
    println!("|---|---:|---:|---:|");
    for r in results {
        println!(
            "| {} | {:.0} | {:.0} | {:.1}% |",
            r.engine,
            r.audit_off_per_sec,
            r.audit_on_per_sec,
            100.0 * (1.0 - r.audit_on_per_sec / r.audit_off_per_sec)
        );
    }
}
