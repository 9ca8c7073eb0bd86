//! TPM-attested EST enrollment against real swtpm TPMs whose EK certificates a private
//! swtpm local CA signed. curl carries the messages; the TPM side is tss-esapi over swtpm;
//! openssl reads and verifies the certificates.
//!
//! Proves: a node without credentials enrolls a key that lives in its TPM (the TPM
//! re-derives the same key, the certificate carries it); refusals, each audited and with
//! nothing issued: an EK from an unknown manufacturer, a replayed attestation, a stolen
//! CSR, a TPM claiming a node name bound to another EK, a bound TPM claiming another name.

use std::path::PathBuf;
use std::process::Command;
use std::sync::Mutex;
use std::time::Duration;

use keygrid_integration::swtpm::{LocalCa, Swtpm};
use keygrid_integration::{free_port, require_tool, run, wait_until, DevEnv};
use keygrid_tpm_attestation::public_area::PublicArea;
use keygrid_tpm_attestation::tpm::EnrollmentKey;
use keygrid_tpm_attestation::{
    Challenge, EnrollmentFinish, EnrollmentStart, TpmAttestor, WireMessage,
};
use x509_parser::prelude::FromDer;

const HINT: &str = "apt-get install openssl curl (scripts/install-deps.sh)";

/// A CSR signer whose key is the TPM's enrollment key.
struct TpmCsrKey<'a> {
    tpm: &'a Mutex<TpmAttestor>,
    key: EnrollmentKey,
    rsa_public: Vec<u8>,
}

impl rcgen::PublicKeyData for TpmCsrKey<'_> {
    fn der_bytes(&self) -> &[u8] {
        &self.rsa_public
    }
    fn algorithm(&self) -> &'static rcgen::SignatureAlgorithm {
        &rcgen::PKCS_RSA_SHA256
    }
}

impl rcgen::SigningKey for TpmCsrKey<'_> {
    fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, rcgen::Error> {
        self.tpm
            .lock()
            .unwrap()
            .sign_sha256(&self.key, msg, false)
            .map_err(|_| rcgen::Error::RemoteKeyError)
    }
}

/// A CSR for the node identity, signed inside the TPM.
fn tpm_csr(tpm: &Mutex<TpmAttestor>, key: &EnrollmentKey) -> Vec<u8> {
    let (_, spki) = x509_parser::x509::SubjectPublicKeyInfo::from_der(&key.spki_der).expect("spki");
    let signer = TpmCsrKey {
        tpm,
        key: key.clone(),
        rsa_public: spki.subject_public_key.data.to_vec(),
    };
    let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    p.distinguished_name
        .push(rcgen::DnType::CommonName, "KeyGrid agent");
    p.serialize_request(&signer).expect("csr").der().to_vec()
}

struct Lab {
    est: String,
    dev: DevEnv,
    dir: PathBuf,
    tpms: Vec<Swtpm>,
    _tpm_dir: tempfile::TempDir,
}

struct Reply {
    status: u16,
    body: Vec<u8>,
}

impl std::fmt::Debug for Reply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.status, self.text())
    }
}

impl Reply {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).to_string()
    }
}

impl Lab {
    /// Two TPMs from the trusted local CA, one from a CA core does not know.
    fn start() -> Self {
        Self::start_with(2, "", &[])
    }

    /// `trusted` TPMs from the trusted local CA, then one from an unknown CA; `extra` is
    /// appended to core's configuration before `[est.tpm]`; the EKs of the TPMs at
    /// `denied` go on `est.tpm.denied_ek_hashes`.
    fn start_with(trusted_tpms: usize, extra_toml: &str, denied: &[usize]) -> Self {
        require_tool("curl", HINT);
        require_tool("openssl", HINT);
        let tpm_dir = tempfile::tempdir().unwrap();
        let trusted = LocalCa::new(&tpm_dir.path().join("trusted"));
        let unknown = LocalCa::new(&tpm_dir.path().join("unknown"));
        let mut tpms: Vec<Swtpm> = (0..trusted_tpms)
            .map(|i| Swtpm::provision_and_start(&trusted, &tpm_dir.path().join(format!("tpm{i}"))))
            .collect();
        tpms.push(Swtpm::provision_and_start(
            &unknown,
            &tpm_dir.path().join("unknown"),
        ));
        let denied: Vec<String> = denied.iter().map(|i| ek_hash(&tpms[*i])).collect();
        let dir = tempfile::tempdir().unwrap();
        let extra = dir.path().join("extra.toml");
        std::fs::write(
            &extra,
            format!(
                "{extra_toml}\n[est.tpm]\nmanufacturer_cas = [{:?}, {:?}]\ndenied_ek_hashes = {denied:?}\n",
                trusted.root_cert().display().to_string(),
                trusted.issuer_cert().display().to_string()
            ),
        )
        .unwrap();
        let addr = format!("127.0.0.1:{}", free_port());
        let dev = DevEnv::start_in_with(
            dir,
            "5m",
            &[
                "--est-listen",
                &addr,
                "--config-append",
                extra.to_str().unwrap(),
            ],
        );
        let client = dev.dir.path().join("client");
        std::fs::create_dir_all(&client).unwrap();
        let lab = Lab {
            est: format!("https://{addr}/.well-known/est/nodes"),
            dev,
            dir: client,
            tpms,
            _tpm_dir: tpm_dir,
        };
        wait_until("EST server", Duration::from_secs(30), || {
            lab.curl("cacerts", None).status == 200
        });
        lab
    }

    fn curl(&self, op: &str, json: Option<&[u8]>) -> Reply {
        let out_file = self.dir.join("reply.bin");
        let _ = std::fs::remove_file(&out_file);
        let mut cmd = Command::new("curl");
        cmd.args(["-s", "--cacert"])
            .arg(self.dev.bundle_pem())
            .arg("-o")
            .arg(&out_file)
            .args(["-w", "%{http_code}"]);
        if let Some(body) = json {
            let f = self.dir.join("request.json");
            std::fs::write(&f, body).unwrap();
            cmd.args(["-H", "Content-Type: application/json", "--data-binary"])
                .arg(format!("@{}", f.display()));
        }
        let out = run(cmd.arg(format!("{}/{op}", self.est)));
        Reply {
            status: String::from_utf8_lossy(&out.stdout)
                .trim()
                .parse()
                .unwrap_or(0),
            body: std::fs::read(&out_file).unwrap_or_default(),
        }
    }

    fn tpm(&self, i: usize) -> Mutex<TpmAttestor> {
        Mutex::new(
            TpmAttestor::open(&self.tpms[i].tcti())
                .unwrap_or_else(|e| panic!("open swtpm {i}: {e}\n{}", self.tpms[i].log())),
        )
    }

    /// Step 1 with TPM `tpm` claiming `name`.
    fn start_enrollment(&self, tpm: &Mutex<TpmAttestor>, name: &str) -> Result<Challenge, Reply> {
        let data = tpm.lock().unwrap().attestation_data().clone();
        let reply = self.curl(
            "tpm-challenge",
            Some(&EnrollmentStart::new(name, data).encode()),
        );
        if reply.status != 200 {
            return Err(reply);
        }
        Ok(Challenge::decode(&reply.body).expect("challenge"))
    }

    /// Step 2 message: answer, key certification, CSR (all from `tpm`).
    fn finish_message(
        &self,
        tpm: &Mutex<TpmAttestor>,
        name: &str,
        c: &Challenge,
    ) -> (EnrollmentFinish, EnrollmentKey) {
        let response = tpm.lock().unwrap().answer(c).expect("answer");
        let key = tpm
            .lock()
            .unwrap()
            .enrollment_key()
            .expect("enrollment key");
        let (certify_info, certify_signature) = tpm
            .lock()
            .unwrap()
            .certify(&key, &c.nonce)
            .expect("certify");
        let csr = tpm_csr(tpm, &key);
        (
            EnrollmentFinish {
                version: 1,
                node_name: name.into(),
                response,
                key_public: key.public.clone(),
                certify_info,
                certify_signature,
                csr,
            },
            key,
        )
    }

    fn finish(&self, msg: &EnrollmentFinish) -> Reply {
        self.curl("tpm-enroll", Some(&msg.encode()))
    }

    fn db(&self) -> rusqlite::Connection {
        self.dev.store_db()
    }

    fn node_certs(&self) -> i64 {
        self.db()
            .query_row(
                "SELECT COUNT(*) FROM certificates WHERE profile = 'node'",
                [],
                |r| r.get(0),
            )
            .unwrap()
    }

    fn refused(
        &self,
        what: &str,
        reply: Reply,
        status: u16,
        rule: &str,
        reason: &str,
        before: i64,
    ) {
        assert_eq!(reply.status, status, "{what}: {}", reply.text());
        assert!(reply.text().contains(reason), "{what}: {}", reply.text());
        assert_eq!(
            self.node_certs(),
            before,
            "{what}: a node certificate was issued"
        );
        assert!(
            self.dev.policy_refusals(rule, reason) >= 1,
            "{what}: not recorded under {rule}"
        );
    }

    /// The certificates of a successful tpm-enroll reply, via openssl; returns the leaf
    /// (PEM) after `openssl verify` accepted it.
    fn certificate(&self, reply: &Reply, name: &str) -> String {
        assert_eq!(reply.status, 200, "{}", reply.text());
        let b64 = self.dir.join(format!("{name}.b64"));
        std::fs::write(&b64, &reply.body).unwrap();
        let der = run(Command::new("base64").arg("-d").arg(&b64));
        std::fs::write(self.dir.join(format!("{name}.p7")), &der.stdout).unwrap();
        let ossl = |args: &[&str]| {
            let out = run(Command::new("openssl").args(args).current_dir(&self.dir));
            assert!(
                out.status.success(),
                "openssl {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            String::from_utf8_lossy(&out.stdout).to_string()
        };
        let all = ossl(&[
            "pkcs7",
            "-inform",
            "DER",
            "-in",
            &format!("{name}.p7"),
            "-print_certs",
        ]);
        let blocks: Vec<String> = pem_blocks(&all);
        let (mut leaf, mut ca) = (String::new(), String::new());
        for b in blocks {
            std::fs::write(self.dir.join("one.pem"), &b).unwrap();
            if ossl(&["x509", "-in", "one.pem", "-noout", "-subject"]).contains("KeyGrid nodes CA")
            {
                ca = b;
            } else {
                leaf = b;
            }
        }
        std::fs::write(self.dir.join(format!("{name}.pem")), &leaf).unwrap();
        std::fs::write(self.dir.join("nodes-ca.pem"), &ca).unwrap();
        let ok = ossl(&[
            "verify",
            "-CAfile",
            self.dev.bundle_pem().to_str().unwrap(),
            "-untrusted",
            "nodes-ca.pem",
            "-purpose",
            "sslclient",
            &format!("{name}.pem"),
        ]);
        assert!(ok.contains(": OK"), "{ok}");
        leaf
    }
}

/// The hex SHA-256 of a TPM's EK SubjectPublicKeyInfo: the form `denied_ek_hashes` takes.
fn ek_hash(tpm: &Swtpm) -> String {
    let attestor =
        TpmAttestor::open(&tpm.tcti()).unwrap_or_else(|e| panic!("open swtpm: {e}\n{}", tpm.log()));
    let ek = &attestor.attestation_data().ek_public;
    let spki = PublicArea::from_tpm2b(ek, "EK public")
        .and_then(|a| a.spki_der())
        .expect("EK SPKI");
    hex::encode(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &spki))
}

fn pem_blocks(all: &str) -> Vec<String> {
    all.split("-----END CERTIFICATE-----")
        .filter_map(|b| {
            b.find("-----BEGIN CERTIFICATE-----")
                .map(|i| format!("{}-----END CERTIFICATE-----\n", &b[i..]))
        })
        .collect()
}

fn spki_of(pem_text: &str) -> Vec<u8> {
    let der = pem::parse(pem_text).unwrap().into_contents();
    let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
    cert.public_key().raw.to_vec()
}

#[test]
fn a_node_enrolls_a_tpm_resident_key_and_forged_or_replayed_attestations_are_refused() {
    let lab = Lab::start();

    // Node A (TPM 0) enrolls with no credential but its TPM.
    let tpm0 = lab.tpm(0);
    let c = lab
        .start_enrollment(&tpm0, "node-a")
        .unwrap_or_else(|r| panic!("{}", r.text()));
    let (msg, key) = lab.finish_message(&tpm0, "node-a", &c);
    let leaf = lab.certificate(&lab.finish(&msg), "node-a");
    let der = pem::parse(&leaf).unwrap().into_contents();
    let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
    let san = format!(
        "{:?}",
        cert.subject_alternative_name().unwrap().unwrap().value
    );
    assert!(
        san.contains("spiffe://example.org/keygrid/node/node-a"),
        "{san}"
    );
    // The certified key is the TPM's: a fresh session re-derives the same key inside the
    // TPM (nothing was written to disk), and the server checked fixedTPM in its certification.
    assert_eq!(spki_of(&leaf), key.spki_der);
    drop(tpm0);
    let tpm0 = lab.tpm(0);
    let again = tpm0.lock().unwrap().enrollment_key().unwrap();
    assert_eq!(
        again.spki_der, key.spki_der,
        "the TPM re-derives the same enrollment key"
    );
    let before = lab.node_certs();

    // Replay: the same finished exchange again.
    lab.refused(
        "replayed attestation",
        lab.finish(&msg),
        403,
        "tpm-attestation",
        "unknown or already answered challenge",
        before,
    );

    // Unknown manufacturer: TPM 2's EK certificate chains to a CA core does not trust.
    let tpm2 = lab.tpm(2);
    let reply = lab.start_enrollment(&tpm2, "node-c").expect_err("refused");
    lab.refused(
        "unknown EK CA",
        reply,
        403,
        "tpm-attestation",
        "EK certificate is not trusted",
        before,
    );

    // A TPM claiming node-a, which TPM 0 holds.
    let tpm1 = lab.tpm(1);
    let reply = lab.start_enrollment(&tpm1, "node-a").expect_err("refused");
    lab.refused(
        "name bound to another EK",
        reply,
        403,
        "tpm-node-binding",
        "node name node-a is bound to another TPM",
        before,
    );

    // A bound TPM claiming another name.
    let reply = lab.start_enrollment(&tpm0, "node-z").expect_err("refused");
    lab.refused(
        "bound TPM, other name",
        reply,
        403,
        "tpm-node-binding",
        "this TPM is bound to node node-a",
        before,
    );

    // Stolen CSR: TPM 1 attests itself but sends node A's CSR (made by TPM 0's key).
    let c = lab
        .start_enrollment(&tpm1, "node-b")
        .unwrap_or_else(|r| panic!("{}", r.text()));
    let (mut stolen, _) = lab.finish_message(&tpm1, "node-b", &c);
    stolen.csr = msg.csr.clone();
    lab.refused(
        "stolen CSR",
        lab.finish(&stolen),
        403,
        "tpm-key-certification",
        "the CSR's key is not the key the TPM certified",
        before,
    );
    // ... or with node A's key certification too: not signed by TPM 1's AK.
    let c = lab.start_enrollment(&tpm1, "node-b").unwrap();
    let (mut stolen, _) = lab.finish_message(&tpm1, "node-b", &c);
    stolen.csr = msg.csr.clone();
    stolen.key_public = msg.key_public.clone();
    stolen.certify_info = msg.certify_info.clone();
    stolen.certify_signature = msg.certify_signature.clone();
    lab.refused(
        "stolen certification",
        lab.finish(&stolen),
        403,
        "tpm-key-certification",
        "not signed by the attested AK",
        before,
    );

    // TPM 1 enrolls as node-b; node A re-enrolls with its bound TPM.
    let c = lab.start_enrollment(&tpm1, "node-b").unwrap();
    let (msg, _) = lab.finish_message(&tpm1, "node-b", &c);
    lab.certificate(&lab.finish(&msg), "node-b");
    let c = lab.start_enrollment(&tpm0, "node-a").unwrap();
    let (msg, _) = lab.finish_message(&tpm0, "node-a", &c);
    lab.certificate(&lab.finish(&msg), "node-a2");
    assert_eq!(lab.node_certs(), before + 2);
    let attested: String = lab
        .db()
        .query_row("SELECT attestation FROM nodes WHERE spiffe_id = 'spiffe://example.org/keygrid/node/node-b'", [], |r| r.get(0))
        .unwrap();
    assert_eq!(attested, "tpm");
}

#[test]
fn a_tpm_on_the_deny_list_is_refused_though_its_manufacturer_is_trusted() {
    let lab = Lab::start_with(2, "", &[0]);
    let before = lab.node_certs();
    let tpm0 = lab.tpm(0);
    match lab.start_enrollment(&tpm0, "node-a") {
        Ok(_) => panic!("a denied TPM was given a challenge"),
        Err(reply) => lab.refused(
            "denied TPM",
            reply,
            403,
            "tpm-attestation",
            "is on the deny-list",
            before,
        ),
    }
    // A TPM certified by the same manufacturer CA still enrolls.
    let tpm1 = lab.tpm(1);
    let c = lab
        .start_enrollment(&tpm1, "node-b")
        .unwrap_or_else(|r| panic!("{}", r.text()));
    let (msg, _) = lab.finish_message(&tpm1, "node-b", &c);
    lab.certificate(&lab.finish(&msg), "node-b");
}

fn serial_and_spki(pem_text: &str) -> (String, Vec<u8>) {
    let block = pem::parse_many(pem_text)
        .unwrap()
        .into_iter()
        .find(|p| p.tag() == "CERTIFICATE")
        .expect("a certificate");
    let (_, c) = x509_parser::parse_x509_certificate(block.contents()).unwrap();
    (hex::encode(c.raw_serial()), c.public_key().raw.to_vec())
}

/// Reads a `*-current.pem` (key then chain) and checks that the key is the certificate's.
fn consistent(text: &str) -> Result<String, String> {
    let blocks = pem::parse_many(text).map_err(|e| format!("not PEM: {e}"))?;
    let key = blocks
        .iter()
        .find(|p| p.tag() == "PRIVATE KEY")
        .ok_or("no key")?;
    let key = rcgen::KeyPair::from_pem(&pem::encode(key)).map_err(|e| format!("bad key: {e}"))?;
    let (serial, spki) = serial_and_spki(text);
    if rcgen::PublicKeyData::subject_public_key_info(&key) != spki {
        return Err(format!("key does not match certificate {serial}"));
    }
    Ok(serial)
}

#[tokio::test(flavor = "multi_thread")]
async fn the_agent_enrolls_with_its_tpm_and_keeps_kubelet_files_current() {
    use keygrid_integration::{with_header, workload_client, Agent};
    use keygrid_proto::workload::X509svidRequest;

    // Every CSR the agent sends must carry its connection's channel binding.
    let lab = Lab::start_with(
        1,
        "[nodes]\ncert_ttl = \"1m\"\n\n[est]\nkubelet_cert_ttl = \"24s\"\nchannel_binding = \"required\"\n",
        &[],
    );
    let node_id = "spiffe://example.org/keygrid/node/node-a";
    let workload_id = "spiffe://example.org/tpm-node-workload";
    let uid = keygrid_integration::uid();
    let out = lab.dev.cli(&[
        "entry",
        "create",
        "--spiffe-id",
        workload_id,
        "--parent-id",
        node_id,
        "--selector",
        &format!("unix:uid:{uid}"),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let kubelet_dir = lab.dir.join("kubelet");
    let agent = Agent::start(
        &lab.dev,
        "spiffe://example.org/keygrid/node/join-token-unused",
        &lab.dev.listen,
        &format!(
            "\n[est]\nurl = {:?}\nnode_name = \"node-a\"\ntpm_tcti = {:?}\nkubelet_dir = {:?}\nserving_ips = [\"10.1.2.3\"]\n",
            lab.est.trim_end_matches("/nodes"),
            lab.tpms[0].tcti(),
            kubelet_dir.display().to_string()
        ),
    );
    assert!(
        agent.log().contains("enrolled with TPM attestation"),
        "{}",
        agent.log()
    );
    let state = agent.dir.path().join("state");
    assert!(
        !state.join("node-key.pem").exists(),
        "a TPM node keeps no key file"
    );
    let node_cert = || std::fs::read_to_string(state.join("node-cert.pem")).unwrap();
    let (first_node_serial, node_spki) = serial_and_spki(&node_cert());

    // The node API works over TLS signed by the TPM key: the workload gets its SVID.
    let fetch = || async {
        let mut client = workload_client(&agent.socket()).await;
        let mut stream = client
            .fetch_x509svid(with_header(X509svidRequest {}))
            .await
            .unwrap()
            .into_inner();
        let msg = tokio::time::timeout(Duration::from_secs(30), stream.message())
            .await
            .expect("SVID in time")
            .unwrap()
            .unwrap();
        msg.svids[0].spiffe_id.clone()
    };
    assert_eq!(fetch().await, workload_id, "{}", agent.log());

    // Kubelet files: client and serving, each key with its certificate, 0600.
    let client_pem = kubelet_dir.join("kubelet-client-current.pem");
    let serving_pem = kubelet_dir.join("kubelet-serving-current.pem");
    wait_until("kubelet files", Duration::from_secs(30), || {
        client_pem.exists() && serving_pem.exists()
    });
    use std::os::unix::fs::PermissionsExt;
    for f in [
        &client_pem,
        &serving_pem,
        &kubelet_dir.join("kubelet-client.key"),
    ] {
        assert_eq!(
            std::fs::metadata(f).unwrap().permissions().mode() & 0o777,
            0o600,
            "{}",
            f.display()
        );
    }
    let client_text = std::fs::read_to_string(&client_pem).unwrap();
    let first_client_serial = consistent(&client_text).unwrap();
    let ossl = |args: &[&str]| {
        let out = run(Command::new("openssl").args(args).current_dir(&kubelet_dir));
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    let subject = ossl(&[
        "x509",
        "-in",
        "kubelet-client.crt",
        "-noout",
        "-subject",
        "-ext",
        "extendedKeyUsage",
    ]);
    assert!(
        subject.contains("O = system:nodes")
            && subject.contains("CN = system:node:node-a")
            && subject.contains("Client Authentication"),
        "{subject}"
    );
    let serving = ossl(&[
        "x509",
        "-in",
        "kubelet-serving.crt",
        "-noout",
        "-ext",
        "subjectAltName,extendedKeyUsage",
    ]);
    assert!(
        serving.contains("DNS:node-a")
            && serving.contains("IP Address:10.1.2.3")
            && serving.contains("Server Authentication"),
        "{serving}"
    );
    std::fs::write(
        kubelet_dir.join("chain.pem"),
        std::fs::read(kubelet_dir.join("kubelet-client.crt")).unwrap(),
    )
    .unwrap();
    let ok = ossl(&[
        "verify",
        "-CAfile",
        "ca.pem",
        "-untrusted",
        "chain.pem",
        "-purpose",
        "sslclient",
        "kubelet-client.crt",
    ]);
    assert!(ok.contains(": OK"), "{ok}");

    // Renewal (two thirds of 24 s) while a reader polls the file: every read is a whole,
    // consistent key + certificate; the serial changes.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reader = {
        let (path, stop) = (client_pem.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut serials = std::collections::BTreeSet::new();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let text = std::fs::read_to_string(&path).unwrap();
                serials
                    .insert(consistent(&text).unwrap_or_else(|e| panic!("inconsistent read: {e}")));
            }
            serials
        })
    };
    wait_until("kubelet client renewal", Duration::from_secs(40), || {
        consistent(&std::fs::read_to_string(&client_pem).unwrap()).unwrap() != first_client_serial
    });
    // Let the reader see the new file too.
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let seen = reader.join().expect("reader saw only consistent files");
    assert!(seen.len() >= 2, "{seen:?}");
    assert!(
        !agent.log().contains("re-enrollment refused"),
        "renewed with simplereenroll:\n{}",
        agent.log()
    );

    // The node certificate (1 minute) is re-enrolled over EST with the TPM key, and the
    // node API keeps working with the new certificate.
    wait_until("node certificate renewal", Duration::from_secs(60), || {
        serial_and_spki(&node_cert()).0 != first_node_serial
    });
    let (_, renewed_spki) = serial_and_spki(&node_cert());
    assert_eq!(
        renewed_spki, node_spki,
        "the renewed node certificate certifies the same TPM key"
    );
    assert_eq!(fetch().await, workload_id);
    let log = agent.log();
    drop(agent);

    // The node key is the TPM's: the TPM re-derives it.
    let tpm = lab.tpm(0);
    let key = tpm.lock().unwrap().enrollment_key().unwrap();
    assert_eq!(key.spki_der, node_spki, "{log}");
}
