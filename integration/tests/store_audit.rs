//! Store and audit log end to end, with real `keygrid serve` processes, SoftHSM2 and a
//! private PostgreSQL server: two cores on one database issuing concurrently, tampering
//! found by `keygrid audit verify`, and a kill -9 in the middle of sustained issuance.

use std::collections::{BTreeSet, HashSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use hyper_util::rt::TokioIo;
use keygrid_core::store::pg_server::PgServer;
use keygrid_integration::{bin, free_port, require_tool, run, softhsm_module};
use keygrid_proto::keygrid::v1 as pb;
use pb::spire_admin_client::SpireAdminClient;
use tonic::transport::{Channel, Endpoint, Uri};

const TOKEN: &str = "keygrid-store-test";
const PIN: &str = "4321";

/// A SoftHSM2 token shared by every core of a test (as an HSM would be).
struct Hsm {
    dir: tempfile::TempDir,
}

impl Hsm {
    fn new() -> Self {
        softhsm_module();
        let util = require_tool(
            "softhsm2-util",
            "install SoftHSM2 (scripts/install-deps.sh, apt-get install softhsm2)",
        );
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::create_dir_all(dir.path().join("tokens")).expect("tokens dir");
        std::fs::write(
            dir.path().join("softhsm2.conf"),
            format!(
                "directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\n",
                dir.path().join("tokens").display()
            ),
        )
        .expect("softhsm conf");
        std::fs::write(dir.path().join("pin"), PIN).expect("pin file");
        let hsm = Hsm { dir };
        let out = run(Command::new(util).env("SOFTHSM2_CONF", hsm.conf()).args([
            "--init-token",
            "--free",
            "--label",
            TOKEN,
            "--so-pin",
            "8765",
            "--pin",
            PIN,
        ]));
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        hsm
    }

    fn conf(&self) -> PathBuf {
        self.dir.path().join("softhsm2.conf")
    }
}

/// One `keygrid serve` process.
struct Core {
    config: PathBuf,
    admin: PathBuf,
    log: PathBuf,
    hsm_conf: PathBuf,
    child: Option<Child>,
}

impl Core {
    /// Writes a configuration in `dir` (store section given as TOML) and starts core.
    fn start(hsm: &Hsm, dir: &Path, store_toml: &str) -> Self {
        let mut core = Self::configure(hsm, dir, store_toml);
        core.restart();
        core
    }

    /// Writes the configuration only (for store commands on a core that is not running).
    fn configure(hsm: &Hsm, dir: &Path, store_toml: &str) -> Self {
        std::fs::create_dir_all(dir).expect("core dir");
        let config = dir.join("core.toml");
        std::fs::write(
            &config,
            format!(
                "trust_domain = \"example.org\"\ndata_dir = {data:?}\n\n\
                 [server]\nlisten = \"127.0.0.1:{port}\"\n\n\
                 [hsm]\nmodule = {module:?}\ntoken_label = {TOKEN:?}\npin_file = {pin:?}\n\n\
                 [audit]\ncheckpoint_interval = \"1s\"\n\n{store_toml}",
                data = dir.join("data").display().to_string(),
                port = free_port(),
                module = softhsm_module().display().to_string(),
                pin = hsm.dir.path().join("pin").display().to_string(),
            ),
        )
        .expect("core config");
        Core {
            admin: dir.join("data/admin.sock"),
            log: dir.join("core.log"),
            config,
            hsm_conf: hsm.conf(),
            child: None,
        }
    }

    fn restart(&mut self) {
        self.spawn();
        self.wait_ready();
    }

    fn spawn(&mut self) {
        let _ = std::fs::remove_file(&self.admin);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("log");
        let child = Command::new(bin("keygrid"))
            .args(["serve", "--config"])
            .arg(&self.config)
            .env("SOFTHSM2_CONF", &self.hsm_conf)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("start keygrid serve");
        self.child = Some(child);
    }

    fn wait_ready(&mut self) {
        let start = Instant::now();
        while !self.admin.exists() {
            if let Some(Ok(Some(st))) = self.child.as_mut().map(|c| c.try_wait()) {
                panic!("core exited early ({st}):\n{}", self.log());
            }
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "core did not start within 60 s:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGKILL, as a crash would.
    fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            // SAFETY: kill(2) on a child we spawned and have not reaped, constant signal.
            unsafe { libc::kill(c.id() as i32, libc::SIGKILL) };
            let _ = c.wait();
        }
    }

    /// Runs a `keygrid` store command against this core's configuration.
    fn cli(&self, args: &[&str]) -> std::process::Output {
        run(Command::new(bin("keygrid"))
            .args(args)
            .arg("--config")
            .arg(&self.config)
            .env("SOFTHSM2_CONF", &self.hsm_conf))
    }
}

impl Drop for Core {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // SAFETY: as in kill9; SIGTERM for an orderly stop.
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
            let start = Instant::now();
            while start.elapsed() < Duration::from_secs(10) {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

async fn admin_client(socket: &Path) -> SpireAdminClient<Channel> {
    let path = socket.to_path_buf();
    let channel = Endpoint::try_from("http://localhost")
        .expect("endpoint")
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let path = path.clone();
            async move {
                Ok::<_, std::io::Error>(TokioIo::new(tokio::net::UnixStream::connect(path).await?))
            }
        }))
        .await
        .expect("connect to the admin socket");
    SpireAdminClient::new(channel)
}

fn csr() -> Vec<u8> {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
    rcgen::CertificateParams::default()
        .serialize_request(&key)
        .expect("csr")
        .der()
        .to_vec()
}

fn serial_of(der: &[u8]) -> String {
    let (_, cert) = x509_parser::parse_x509_certificate(der).expect("certificate parses");
    // The store's form: lowercase hex without leading zero bytes.
    let raw = cert.raw_serial();
    let trimmed: Vec<u8> = raw.iter().copied().skip_while(|b| *b == 0).collect();
    hex::encode(trimmed)
}

/// Issues certificates through `socket` from `tasks` concurrent clients until `n` per task
/// are done or a request fails (core gone); returns the serials of every certificate a
/// client received.
async fn issue(socket: &Path, tasks: usize, n: usize, name: &str) -> Vec<String> {
    let csr = csr();
    let mut handles = Vec::new();
    for t in 0..tasks {
        let (socket, csr) = (socket.to_path_buf(), csr.clone());
        let id = format!("spiffe://example.org/spire/server/{name}-{t}");
        handles.push(tokio::spawn(async move {
            let mut client = admin_client(&socket).await;
            let mut got = Vec::new();
            for _ in 0..n {
                let res = client
                    .issue_spire_credential(pb::IssueSpireCredentialRequest {
                        spire_server_id: id.clone(),
                        csr: csr.clone(),
                        ttl_seconds: 3600,
                    })
                    .await;
                match res {
                    Ok(r) => got.push(serial_of(&r.into_inner().cert_chain[0])),
                    Err(_) => break,
                }
            }
            got
        }));
    }
    let mut all = Vec::new();
    for h in handles {
        all.extend(h.await.expect("client task"));
    }
    all
}

fn exported(core: &Core) -> Vec<serde_json::Value> {
    let out = core.cli(&["audit", "export", "--since", "0"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("export line is JSON"))
        .collect()
}

fn verify_ok(core: &Core) -> String {
    let out = core.cli(&["audit", "verify"]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "audit verify failed: {}{}",
        text,
        String::from_utf8_lossy(&out.stderr)
    );
    text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_cores_on_one_postgres_issue_into_one_unbroken_chain() {
    let pg = PgServer::start().unwrap_or_else(|e| panic!("{e}"));
    pg.create_database("keygrid").expect("create database");
    let hsm = Hsm::new();
    let root = tempfile::tempdir().expect("temp dir");
    let store = format!(
        "[store]\nengine = \"postgres\"\nurl = \"{}\"\n",
        pg.url("keygrid")
    );
    // Both start at the same moment: one creates the hierarchy and the keys, the other
    // waits for it and loads them.
    let mut a = Core::configure(&hsm, &root.path().join("a"), &store);
    let mut b = Core::configure(&hsm, &root.path().join("b"), &store);
    a.spawn();
    b.spawn();
    a.wait_ready();
    b.wait_ready();
    let created = [&a, &b]
        .iter()
        .filter(|c| c.log().contains("created a new CA hierarchy"))
        .count();
    assert_eq!(created, 1, "exactly one core creates the hierarchy");

    const TASKS: usize = 4;
    const PER_TASK: usize = 300;
    let (from_a, from_b) = tokio::join!(
        issue(&a.admin, TASKS, PER_TASK, "a"),
        issue(&b.admin, TASKS, PER_TASK, "b")
    );
    assert_eq!(from_a.len(), TASKS * PER_TASK, "core a:\n{}", a.log());
    assert_eq!(from_b.len(), TASKS * PER_TASK, "core b:\n{}", b.log());
    let all: Vec<&String> = from_a.iter().chain(&from_b).collect();
    let unique: HashSet<&String> = all.iter().copied().collect();
    eprintln!("issued {} certificates through two cores", all.len());
    assert_eq!(unique.len(), all.len(), "a serial was issued twice");

    // Let a checkpoint cover the end of the run, then check the one chain from each side.
    std::thread::sleep(Duration::from_secs(2));
    let records = exported(&a);
    let seqs: Vec<i64> = records
        .iter()
        .map(|r| r["seq"].as_i64().expect("seq"))
        .collect();
    assert_eq!(
        seqs,
        (1..=seqs.len() as i64).collect::<Vec<_>>(),
        "gaps or forks"
    );
    let logins = records
        .iter()
        .filter(|r| r["kind"] == "admin.login")
        .count();
    assert!(
        logins >= 2 * TASKS,
        "each admin connection is recorded ({logins})"
    );
    let audited: BTreeSet<&str> = records
        .iter()
        .filter(|r| r["kind"] == "certificate.issued")
        .filter_map(|r| r["serial"].as_str())
        .collect();
    for s in &all {
        assert!(
            audited.contains(s.as_str()),
            "serial {s} has no audit record"
        );
    }
    for core in [&a, &b] {
        let text = verify_ok(core);
        eprintln!("{text}");
        assert!(text.contains("audit chain intact"), "{text}");
        assert!(
            !text.contains(" 0 signed checkpoints"),
            "no checkpoint verified: {text}"
        );
    }

    // The export verifies on its own (as a SIEM would check it), and an edit in it shows.
    let export = root.path().join("audit.jsonl");
    let out = a.cli(&[
        "audit",
        "export",
        "--output",
        export.to_str().expect("utf-8"),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = a.cli(&[
        "audit",
        "verify",
        "--export",
        export.to_str().expect("utf-8"),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(&export).expect("export");
    let line = text.lines().nth(99).expect("record 100");
    std::fs::write(
        &export,
        text.replacen(
            line,
            &line.replacen("certificate.issued", "certificate.revoked", 1),
            1,
        ),
    )
    .expect("write");
    let out = a.cli(&[
        "audit",
        "verify",
        "--export",
        export.to_str().expect("utf-8"),
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("broken at record 100:"), "{err}");

    // Tampering behind core's back is found and named.
    let victim = seqs.len() as i64 / 2;
    pg.psql(
        "keygrid",
        &format!("UPDATE audit_log SET actor = 'someone else' WHERE seq = {victim}"),
    )
    .expect("tamper");
    let out = a.cli(&["audit", "verify"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("broken at record {victim}:")),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_during_issuance_loses_no_audit_record() {
    let hsm = Hsm::new();
    let root = tempfile::tempdir().expect("temp dir");
    let mut core = Core::start(&hsm, &root.path().join("core"), "");
    let socket = core.admin.clone();
    // Sustained issuance; the core is killed in the middle of it.
    let clients = tokio::spawn(async move { issue(&socket, 4, 100_000, "crash").await });
    let start = Instant::now();
    tokio::time::sleep(Duration::from_secs(3)).await;
    core.kill9();
    let received = tokio::time::timeout(Duration::from_secs(30), clients)
        .await
        .expect("clients stop once core is gone")
        .expect("client task");
    assert!(
        received.len() > 50,
        "too few certificates before the kill ({} in {:?}):\n{}",
        received.len(),
        start.elapsed(),
        core.log()
    );
    eprintln!("{} certificates received before kill -9", received.len());
    core.restart();
    eprintln!("{}", verify_ok(&core));
    let records = exported(&core);
    let audited: HashSet<&str> = records
        .iter()
        .filter_map(|r| r["serial"].as_str())
        .collect();
    for s in &received {
        assert!(
            audited.contains(s.as_str()),
            "certificate {s} was handed out without its audit record"
        );
    }
    // And core goes on issuing into the same chain after the crash.
    let more = issue(&core.admin, 1, 5, "after").await;
    assert_eq!(more.len(), 5);
    verify_ok(&core);

    // Retention: everything up to the last checkpoint is pruned; the rest still verifies
    // from that signed anchor.
    std::thread::sleep(Duration::from_secs(2));
    let later = (time::OffsetDateTime::now_utc().unix_timestamp() + 60).to_string();
    let out = core.cli(&["audit", "prune", "--before", &later]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.contains("removed"), "{said}");
    let text = verify_ok(&core);
    // The anchor (and any checkpoint core signed since) verified.
    assert!(!text.contains(" 0 signed checkpoints"), "{text}");
    assert!(exported(&core).len() < records.len());
}

fn split_ders(mut data: &[u8]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    while !data.is_empty() {
        let (rest, _) = x509_parser::parse_x509_certificate(data).expect("certificate parses");
        out.push(data[..data.len() - rest.len()].to_vec());
        data = rest;
    }
    out
}

fn pem(ders: &[Vec<u8>]) -> String {
    ders.iter()
        .map(|d| pem::encode(&pem::Pem::new("CERTIFICATE", d.clone())))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn disaster_recovery_restores_the_same_trust_and_agents_carry_on() {
    use keygrid_integration::{uid, with_header, workload_client, Agent, DevEnv};
    use keygrid_proto::workload::X509svidRequest;
    let openssl = require_tool("openssl", "apt-get install openssl");

    let env = DevEnv::start("30s");
    let listen = env.listen.clone();
    let agent_id = format!("spiffe://{}/keygrid/node/dr", env.trust_domain);
    let workload_id = format!("spiffe://{}/dr/uid/{}", env.trust_domain, uid());
    let out = env.cli(&[
        "entry",
        "create",
        "--spiffe-id",
        &workload_id,
        "--parent-id",
        &agent_id,
        "--selector",
        &format!("unix:uid:{}", uid()),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let agent = Agent::start(&env, &agent_id, &listen, "");
    let mut client = workload_client(&agent.socket()).await;
    let mut stream = client
        .fetch_x509svid(with_header(X509svidRequest {}))
        .await
        .expect("fetch")
        .into_inner();
    let first = tokio::time::timeout(Duration::from_secs(30), stream.message())
        .await
        .expect("first SVID in time")
        .expect("stream")
        .expect("message");
    let old_bundle = std::fs::read(env.bundle_pem()).expect("bundle");
    let first_serial = split_ders(&first.svids[0].x509_svid)[0].clone();

    // Back up while core runs.
    let safe = tempfile::tempdir().expect("temp dir");
    let archive = safe.path().join("keygrid.backup");
    let data = env.dir.path().to_path_buf();
    let config = data.join("core.toml");
    let hsm_conf = data.join("softhsm/softhsm2.conf");
    let out = run(Command::new(bin("keygrid"))
        .arg("backup")
        .arg(&archive)
        .arg("--config")
        .arg(&config));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        said.contains("keygrid-audit") && said.contains("(root)"),
        "{said}"
    );

    // Disaster: core and its whole data directory are gone. The HSM (the SoftHSM2 token
    // and its PINs) and the configuration survive elsewhere.
    let (_, dir) = env.stop();
    let keep = safe.path().join("hsm");
    std::fs::create_dir_all(&keep).expect("hsm copy");
    for f in ["hsm-pin", "hsm-so-pin", "core.toml"] {
        std::fs::copy(data.join(f), keep.join(f)).expect("keep file");
    }
    let cp = run(Command::new("cp")
        .arg("-a")
        .arg(data.join("softhsm"))
        .arg(&keep));
    assert!(cp.status.success());
    std::fs::remove_dir_all(&data).expect("delete the data directory");
    std::fs::create_dir_all(&data).expect("fresh data directory");
    let cp = run(Command::new("cp")
        .arg("-a")
        .arg(keep.join("softhsm"))
        .arg(&data));
    assert!(cp.status.success());
    for f in ["hsm-pin", "hsm-so-pin", "core.toml"] {
        std::fs::copy(keep.join(f), data.join(f)).expect("put back");
    }

    let out = run(Command::new(bin("keygrid"))
        .arg("restore")
        .arg(&archive)
        .arg("--config")
        .arg(&config)
        .env("SOFTHSM2_CONF", &hsm_conf));
    assert!(
        out.status.success(),
        "restore: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // A second restore into the now non-empty store is refused.
    let again = run(Command::new(bin("keygrid"))
        .arg("restore")
        .arg(&archive)
        .arg("--config")
        .arg(&config)
        .env("SOFTHSM2_CONF", &hsm_conf));
    assert!(!again.status.success());

    let env = DevEnv::start_at(dir, &listen, "30s");
    assert_eq!(
        std::fs::read(env.bundle_pem()).expect("bundle"),
        old_bundle,
        "the restored core publishes the same trust bundle"
    );
    // The agent, which kept running, reconnects and keeps rotating; new SVIDs verify
    // against the bundle from before the disaster.
    let deadline = Instant::now() + Duration::from_secs(60);
    let fresh = loop {
        let msg = tokio::time::timeout_at(deadline.into(), stream.message())
            .await
            .unwrap_or_else(|_| panic!("no new SVID after restore:\n{}", agent.log()))
            .expect("stream")
            .expect("message");
        let chain = split_ders(&msg.svids[0].x509_svid);
        if chain[0] != first_serial {
            break chain;
        }
    };
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(dir.path().join("bundle.pem"), &old_bundle).expect("write");
    std::fs::write(dir.path().join("leaf.pem"), pem(&fresh[..1])).expect("write");
    std::fs::write(dir.path().join("chain.pem"), pem(&fresh[1..])).expect("write");
    let out = run(Command::new(openssl).current_dir(dir.path()).args([
        "verify",
        "-CAfile",
        "bundle.pem",
        "-untrusted",
        "chain.pem",
        "leaf.pem",
    ]));
    assert!(
        out.status.success(),
        "new SVID does not verify against the old bundle: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // The restored audit chain verifies, with the restore itself recorded in it.
    let out = run(Command::new(bin("keygrid"))
        .args(["audit", "verify", "--config"])
        .arg(&config)
        .env("SOFTHSM2_CONF", &hsm_conf));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // ... and shows the new SVID issued by the restored core, after the restore.
    let out = run(Command::new(bin("keygrid"))
        .args(["audit", "tail", "-n", "100000", "--config"])
        .arg(&config));
    let records: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON line"))
        .collect();
    let seq_of = |pred: &dyn Fn(&serde_json::Value) -> bool| {
        records
            .iter()
            .find(|r| pred(r))
            .and_then(|r| r["seq"].as_i64())
    };
    let restore_seq = seq_of(&|r| r["kind"] == "admin.restore").expect("restore recorded");
    let fresh_serial = serial_of(&fresh[0]);
    let svid_seq = seq_of(&|r| r["serial"] == fresh_serial.as_str())
        .unwrap_or_else(|| panic!("SVID {fresh_serial} not audited"));
    assert!(
        svid_seq > restore_seq,
        "the new SVID came from the restored core"
    );
    drop(env);
}

#[tokio::test(flavor = "multi_thread")]
async fn restore_refuses_a_damaged_archive_and_an_hsm_without_the_keys() {
    let hsm = Hsm::new();
    let root = tempfile::tempdir().expect("temp dir");
    let core = Core::start(&hsm, &root.path().join("old"), "");
    assert_eq!(issue(&core.admin, 1, 3, "x").await.len(), 3);
    let archive = root.path().join("backup.kgb");
    let out = core.cli(&["backup", archive.to_str().expect("utf-8 path")]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    drop(core);

    // A new core on another (empty) token: the keys the archive needs are not there.
    let other = Hsm::new();
    let fresh = Core::configure(&other, &root.path().join("new"), "");
    let out = fresh.cli(&["restore", archive.to_str().expect("utf-8 path")]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("lacks keys") && err.contains("keygrid-audit"),
        "{err}"
    );

    // A cut archive is refused before anything is written, even with the right token.
    let text = std::fs::read_to_string(&archive).expect("archive");
    let cut = root.path().join("cut.kgb");
    let half: String = text
        .lines()
        .take(text.lines().count() / 2)
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(&cut, half).expect("write");
    let same = Core::configure(&hsm, &root.path().join("same"), "");
    let out = same.cli(&["restore", cut.to_str().expect("utf-8 path")]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("truncated"), "{err}");
    // The whole archive then restores there, and the chain verifies.
    let out = same.cli(&["restore", archive.to_str().expect("utf-8 path")]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    verify_ok(&same);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn killing_one_postgres_replica_mid_issuance_keeps_one_chain() {
    let pg = PgServer::start().unwrap_or_else(|e| panic!("{e}"));
    pg.create_database("keygrid").expect("create database");
    let hsm = Hsm::new();
    let root = tempfile::tempdir().expect("temp dir");
    let store = format!(
        "[store]\nengine = \"postgres\"\nurl = \"{}\"\n",
        pg.url("keygrid")
    );
    let a = Core::start(&hsm, &root.path().join("a"), &store);
    let mut b = Core::start(&hsm, &root.path().join("b"), &store);
    let (sa, sb) = (a.admin.clone(), b.admin.clone());
    let from_a = tokio::spawn(async move { issue(&sa, 2, 400, "a").await });
    let from_b = tokio::spawn(async move { issue(&sb, 2, 100_000, "b").await });
    // b dies (perhaps holding the chain head's lock) while a keeps issuing.
    tokio::time::sleep(Duration::from_secs(2)).await;
    b.kill9();
    let from_b = tokio::time::timeout(Duration::from_secs(30), from_b)
        .await
        .expect("b's clients stop")
        .expect("client task");
    let from_a = tokio::time::timeout(Duration::from_secs(120), from_a)
        .await
        .expect("a finishes")
        .expect("client task");
    assert_eq!(from_a.len(), 800, "core a kept issuing:\n{}", a.log());
    assert!(!from_b.is_empty(), "b issued before it died:\n{}", b.log());
    eprintln!(
        "a issued {}, b {} before kill -9",
        from_a.len(),
        from_b.len()
    );
    b.restart();
    assert_eq!(issue(&b.admin, 1, 5, "b2").await.len(), 5);
    let records = exported(&a);
    let seqs: Vec<i64> = records
        .iter()
        .map(|r| r["seq"].as_i64().expect("seq"))
        .collect();
    assert_eq!(
        seqs,
        (1..=seqs.len() as i64).collect::<Vec<_>>(),
        "gaps or forks"
    );
    let audited: HashSet<&str> = records
        .iter()
        .filter_map(|r| r["serial"].as_str())
        .collect();
    for s in from_a.iter().chain(&from_b) {
        assert!(
            audited.contains(s.as_str()),
            "certificate {s} has no audit record"
        );
    }
    eprintln!("{}", verify_ok(&a));
    verify_ok(&b);
}
