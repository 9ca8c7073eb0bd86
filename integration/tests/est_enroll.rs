//! EST (RFC 7030) driven by independent clients only: curl speaks HTTPS, openssl makes
//! the CSRs, reads every PKCS#7 response and verifies every certificate. Refusals are
//! checked for their status, their reason, that nothing was issued, and that they were
//! recorded as policy refusal events.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use keygrid_integration::{free_port, require_tool, run, wait_until, DevEnv};

const OPENSSL_HINT: &str = "apt-get install openssl (scripts/install-deps.sh)";
const CURL_HINT: &str = "apt-get install curl (scripts/install-deps.sh)";

/// A `keygrid dev` with EST on, and a client directory.
struct Est {
    dev: DevEnv,
    url: String,
    dir: PathBuf,
}

/// What curl got back.
struct Reply {
    status: u16,
    body: Vec<u8>,
}

impl Reply {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).to_string()
    }
}

impl Est {
    fn start(extra_toml: &str) -> Self {
        require_tool("openssl", OPENSSL_HINT);
        require_tool("curl", CURL_HINT);
        let dir = tempfile::tempdir().unwrap();
        let extra = dir.path().join("extra.toml");
        std::fs::write(&extra, extra_toml).unwrap();
        let est = format!("127.0.0.1:{}", free_port());
        let dev = DevEnv::start_in_with(
            dir,
            "5m",
            &[
                "--est-listen",
                &est,
                "--config-append",
                extra.to_str().unwrap(),
            ],
        );
        let client = dev.dir.path().join("client");
        std::fs::create_dir_all(&client).unwrap();
        let est = Est {
            url: format!("https://{est}/.well-known/est"),
            dev,
            dir: client,
        };
        wait_until("EST server", Duration::from_secs(30), || {
            est.get("cacerts").status == 200
        });
        est
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    fn node_cert(&self) -> PathBuf {
        self.dev.dir.path().join("agent/node-cert.pem")
    }

    fn node_key(&self) -> PathBuf {
        self.dev.dir.path().join("agent/node-key.pem")
    }

    /// curl with the bundle as trust anchor; `args` add client credentials and bodies.
    fn curl(&self, op: &str, args: &[&str]) -> Reply {
        let out_file = self.path("reply.bin");
        let _ = std::fs::remove_file(&out_file);
        let out = run(Command::new("curl")
            .args(["-s", "--cacert"])
            .arg(self.dev.bundle_pem())
            .arg("-o")
            .arg(&out_file)
            .args(["-w", "%{http_code}"])
            .args(args)
            .arg(format!("{}/{op}", self.url)));
        Reply {
            status: String::from_utf8_lossy(&out.stdout)
                .trim()
                .parse()
                .unwrap_or(0),
            body: std::fs::read(&out_file).unwrap_or_default(),
        }
    }

    fn get(&self, op: &str) -> Reply {
        self.curl(op, &[])
    }

    /// POSTs the base64 file `body` as application/pkcs10 with the client certificate
    /// `cert` (if any).
    fn post(&self, op: &str, body: &Path, cert: Option<(&Path, &Path)>) -> Reply {
        self.post_with(op, body, cert, &[])
    }

    /// `post` with extra request headers.
    fn post_with(
        &self,
        op: &str,
        body: &Path,
        cert: Option<(&Path, &Path)>,
        headers: &[&str],
    ) -> Reply {
        let mut args: Vec<String> = headers
            .iter()
            .flat_map(|h| ["-H".to_string(), h.to_string()])
            .collect();
        args.extend([
            "-H".into(),
            "Content-Type: application/pkcs10".into(),
            "--data-binary".into(),
            format!("@{}", body.display()),
        ]);
        if let Some((c, k)) = cert {
            args.extend([
                "--cert".into(),
                c.display().to_string(),
                "--key".into(),
                k.display().to_string(),
            ]);
        }
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        self.curl(op, &refs)
    }

    fn openssl(&self, args: &[&str]) -> String {
        let out = run(Command::new("openssl").args(args).current_dir(&self.dir));
        assert!(
            out.status.success(),
            "openssl {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).to_string()
    }

    /// Makes a key (unless `key` exists) and a base64 DER CSR file for it.
    fn csr(&self, name: &str, key: &str, subject: &str, san: Option<&str>) -> PathBuf {
        if !self.path(key).exists() {
            self.openssl(&[
                "genpkey",
                "-algorithm",
                "EC",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-out",
                key,
            ]);
        }
        let der = format!("{name}.der");
        let mut args = vec![
            "req", "-new", "-key", key, "-subj", subject, "-outform", "DER", "-out", &der,
        ];
        let ext;
        if let Some(s) = san {
            ext = format!("subjectAltName={s}");
            args.extend(["-addext", &ext]);
        }
        self.openssl(&args);
        let b64 = self.path(&format!("{name}.b64"));
        let encoded = run(Command::new("base64").arg(self.path(&der)));
        std::fs::write(&b64, &encoded.stdout).unwrap();
        b64
    }

    /// Decodes a base64 certs-only PKCS#7 reply with openssl and writes the certificates
    /// to `name` (PEM); returns openssl's listing.
    fn certs(&self, reply: &Reply, name: &str) -> String {
        assert_eq!(reply.status, 200, "{}", reply.text());
        let b64 = self.path(&format!("{name}.p7.b64"));
        std::fs::write(&b64, &reply.body).unwrap();
        let der = run(Command::new("base64").arg("-d").arg(&b64));
        assert!(der.status.success(), "response is not base64");
        std::fs::write(self.path(&format!("{name}.p7")), &der.stdout).unwrap();
        self.openssl(&[
            "pkcs7",
            "-inform",
            "DER",
            "-in",
            &format!("{name}.p7"),
            "-print_certs",
            "-out",
            name,
        ]);
        std::fs::read_to_string(self.path(name)).unwrap()
    }

    /// Writes the leaf of `chain` (the certificate that is not the nodes CA; certs-only
    /// PKCS#7 is a SET, so order carries no meaning) to `leaf`.
    fn leaf(&self, chain: &str, leaf: &str) -> String {
        let all = std::fs::read_to_string(self.path(chain)).unwrap();
        std::fs::write(
            self.path(leaf),
            pem_block_without(&all, self, "KeyGrid nodes CA"),
        )
        .unwrap();
        self.openssl(&[
            "x509",
            "-in",
            leaf,
            "-noout",
            "-subject",
            "-serial",
            "-ext",
            "subjectAltName,extendedKeyUsage",
        ])
    }

    fn verify(&self, leaf: &str, purpose: &str) {
        let bundle = self.dev.bundle_pem();
        let out = self.openssl(&[
            "verify",
            "-CAfile",
            bundle.to_str().unwrap(),
            "-untrusted",
            "nodes-ca.pem",
            "-purpose",
            purpose,
            leaf,
        ]);
        assert!(out.contains(": OK"), "{out}");
    }

    fn db(&self) -> rusqlite::Connection {
        self.dev.store_db()
    }

    /// Certificates of the profiles EST issues (the dev agent mints SVIDs meanwhile).
    fn certificate_count(&self) -> i64 {
        self.db()
            .query_row(
                "SELECT COUNT(*) FROM certificates WHERE profile IN ('node', 'kubelet-client', 'kubelet-serving')",
                [],
                |r| r.get(0),
            )
            .unwrap()
    }

    /// Asserts a refusal: status, reason in the body, nothing issued, one event recorded.
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
            self.certificate_count(),
            before,
            "{what}: something was issued"
        );
        assert_eq!(
            self.dev.policy_refusals(rule, reason),
            1,
            "{what}: not recorded as {rule}"
        );
    }
}

const EXTRA: &str = r#"
[[policy]]
name = "kubelet-serving-keys"
profiles = ["kubelet-serving"]
allowed_keys = ["ecdsa-p256", "ecdsa-p384"]

[est]
kubelet_cert_ttl = "15s"
"#;

#[test]
fn curl_and_openssl_enroll_reenroll_and_are_refused_with_reasons() {
    let est = Est::start(EXTRA);
    let node = (est.node_cert(), est.node_key());
    let node = Some((node.0.as_path(), node.1.as_path()));

    // cacerts: no client authentication; root and nodes CA, both verifiable.
    for op in ["cacerts", "kubelet-client/cacerts"] {
        let listing = est.certs(&est.get(op), "cacerts.pem");
        assert!(
            listing.contains("KeyGrid nodes CA") && listing.contains("KeyGrid Root CA"),
            "{listing}"
        );
    }
    let all = std::fs::read_to_string(est.path("cacerts.pem")).unwrap();
    let nodes_ca = pem_block_with(&all, &est, "KeyGrid nodes CA");
    std::fs::write(est.path("nodes-ca.pem"), nodes_ca).unwrap();
    est.openssl(&[
        "verify",
        "-CAfile",
        est.dev.bundle_pem().to_str().unwrap(),
        "nodes-ca.pem",
    ]);

    // csrattrs: the curves policy allows, for the label's profile.
    let attrs = est.get("kubelet-serving/csrattrs");
    assert_eq!(attrs.status, 200, "{}", attrs.text());
    std::fs::write(est.path("attrs.b64"), &attrs.body).unwrap();
    let der = run(Command::new("base64").arg("-d").arg(est.path("attrs.b64")));
    std::fs::write(est.path("attrs.der"), &der.stdout).unwrap();
    let parsed = est.openssl(&["asn1parse", "-inform", "DER", "-in", "attrs.der"]);
    assert!(
        parsed.contains("id-ecPublicKey")
            && parsed.contains("prime256v1")
            && parsed.contains("secp384r1"),
        "{parsed}"
    );

    // simpleenroll: the node's kubelet client and serving certificates.
    let csr = est.csr("kc", "kc.key", "/O=system:nodes/CN=system:node:dev", None);
    let chain = est.certs(
        &est.post("kubelet-client/simpleenroll", &csr, node),
        "kc-chain.pem",
    );
    assert!(chain.contains("KeyGrid nodes CA"));
    let first = est.leaf("kc-chain.pem", "kc.pem");
    assert!(
        first.contains("CN = system:node:dev") && first.contains("O = system:nodes"),
        "{first}"
    );
    assert!(first.contains("TLS Web Client Authentication"), "{first}");
    est.verify("kc.pem", "sslclient");
    // The same over TLS 1.2 (client certificate signature in the TLS 1.2 handshake).
    let (cert, key) = (est.node_cert(), est.node_key());
    let tls12 = est.curl(
        "kubelet-client/simpleenroll",
        &[
            "--tls-max",
            "1.2",
            "-H",
            "Content-Type: application/pkcs10",
            "--data-binary",
            &format!("@{}", est.path("kc.b64").display()),
            "--cert",
            cert.to_str().unwrap(),
            "--key",
            key.to_str().unwrap(),
        ],
    );
    est.certs(&tls12, "kc-tls12.pem");

    // RFC 8951: CRLF line breaks in the body are fine.
    let csr = est.csr(
        "ks",
        "ks.key",
        "/O=system:nodes/CN=system:node:dev",
        Some("DNS:dev,DNS:dev.cluster.internal,IP:10.0.0.7"),
    );
    let crlf = std::fs::read_to_string(&csr).unwrap().replace('\n', "\r\n");
    std::fs::write(&csr, crlf).unwrap();
    est.certs(
        &est.post("kubelet-serving/simpleenroll", &csr, node),
        "ks-chain.pem",
    );
    let serving = est.leaf("ks-chain.pem", "ks.pem");
    assert!(
        serving.contains("DNS:dev.cluster.internal") && serving.contains("IP Address:10.0.0.7"),
        "{serving}"
    );
    est.verify("ks.pem", "sslserver");

    // simplereenroll: authenticated by the certificate being renewed, same subject.
    let kc = (est.path("kc.pem"), est.path("kc.key"));
    let kc = Some((kc.0.as_path(), kc.1.as_path()));
    let csr = est.csr("kc2", "kc.key", "/O=system:nodes/CN=system:node:dev", None);
    est.certs(
        &est.post("kubelet-client/simplereenroll", &csr, kc),
        "kc2-chain.pem",
    );
    let renewed = est.leaf("kc2-chain.pem", "kc2.pem");
    assert_ne!(serial_of(&first), serial_of(&renewed));
    est.verify("kc2.pem", "sslclient");
    // The node renews its own node certificate (unlabelled path = nodes).
    let csr = est.csr(
        "node2",
        "node2.key",
        "/O=KeyGrid/CN=KeyGrid agent",
        Some("URI:spiffe://example.org/keygrid/node/dev"),
    );
    est.certs(&est.post("simplereenroll", &csr, node), "node2-chain.pem");
    est.leaf("node2-chain.pem", "node2.pem");
    est.verify("node2.pem", "sslclient");

    // Refusals.
    let before = est.certificate_count();

    // A CSR bound to another TLS connection (challengePassword that is not this
    // connection's tls-exporter value): refused even though binding is optional.
    std::fs::write(
        est.path("bound.cnf"),
        "[req]\nprompt = no\ndistinguished_name = dn\nattributes = attrs\n[dn]\nO = system:nodes\n\
         CN = system:node:dev\n[attrs]\nchallengePassword = c29tZSBvdGhlciBjb25uZWN0aW9uJ3MgdmFsdWU=\n",
    )
    .unwrap();
    est.openssl(&[
        "req",
        "-new",
        "-key",
        "kc.key",
        "-config",
        "bound.cnf",
        "-outform",
        "DER",
        "-out",
        "bound.der",
    ]);
    let encoded = run(Command::new("base64").arg(est.path("bound.der")));
    std::fs::write(est.path("bound.b64"), &encoded.stdout).unwrap();
    est.refused(
        "CSR bound to another connection",
        est.post("kubelet-client/simpleenroll", &est.path("bound.b64"), node),
        403,
        "channel-binding",
        "is not this TLS connection's tls-exporter value",
        before,
    );
    let csr = est.csr(
        "anon",
        "anon.key",
        "/O=system:nodes/CN=system:node:dev",
        None,
    );
    est.refused(
        "no client certificate",
        est.post("kubelet-client/simpleenroll", &csr, None),
        401,
        "est-auth",
        "a TLS client certificate is required",
        before,
    );
    est.refused(
        "reenroll without certificate",
        est.post("kubelet-client/simplereenroll", &csr, None),
        401,
        "est-auth",
        "simplereenroll needs the TLS client certificate",
        before,
    );

    let csr = est.csr(
        "other",
        "kc.key",
        "/O=system:nodes/CN=system:node:other",
        None,
    );
    est.refused(
        "subject change",
        est.post("kubelet-client/simplereenroll", &csr, kc),
        403,
        "est-reenroll",
        "subject differs",
        before,
    );
    est.refused(
        "another node's name",
        est.post("kubelet-client/simpleenroll", &csr, node),
        403,
        "est-identity",
        "may enroll only system:node:dev",
        before,
    );
    est.refused(
        "kubelet cert used to enroll",
        est.post("kubelet-client/simpleenroll", &csr, kc),
        403,
        "est-auth",
        "simpleenroll needs a node certificate",
        before,
    );

    est.openssl(&[
        "genpkey",
        "-algorithm",
        "RSA",
        "-pkeyopt",
        "rsa_keygen_bits:2048",
        "-out",
        "rsa.key",
    ]);
    let csr = est.csr(
        "rsa",
        "rsa.key",
        "/O=system:nodes/CN=system:node:dev",
        Some("DNS:dev"),
    );
    est.refused(
        "key type",
        est.post("kubelet-serving/simpleenroll", &csr, node),
        403,
        "kubelet-serving-keys",
        "key type rsa-2048 is not allowed",
        before,
    );

    std::fs::write(est.path("garbage.b64"), "MIIB!!notbase64\r\n").unwrap();
    est.refused(
        "malformed base64",
        est.post(
            "kubelet-client/simpleenroll",
            &est.path("garbage.b64"),
            node,
        ),
        400,
        "est-request",
        "outside the base64 alphabet",
        before,
    );
    let node_cert = est.node_cert();
    let node_key = est.node_key();
    let wrong_type = est.curl(
        "kubelet-client/simpleenroll",
        &[
            "-H",
            "Content-Type: text/plain",
            "--data-binary",
            &format!("@{}", est.path("kc.b64").display()),
            "--cert",
            node_cert.to_str().unwrap(),
            "--key",
            node_key.to_str().unwrap(),
        ],
    );
    est.refused(
        "wrong content type",
        wrong_type,
        415,
        "est-request",
        "takes Content-Type: application/pkcs10; got text/plain",
        before,
    );
    std::fs::write(est.path("big.b64"), "A".repeat(40_000)).unwrap();
    est.refused(
        "oversized body",
        // As large uploads do, wait for the server's go-ahead: the 413 then arrives before
        // the body is sent (without it the refusal can race curl's upload into a reset).
        est.post_with(
            "kubelet-client/simpleenroll",
            &est.path("big.b64"),
            node,
            &["Expect: 100-continue"],
        ),
        413,
        "est-request",
        "larger than the limit",
        before,
    );

    // Revoked: the renewed kubelet client certificate, revoked by the operator.
    let out = est.dev.cli(&[
        "cert",
        "revoke",
        est.path("kc2.pem").to_str().unwrap(),
        "--reason",
        "keyCompromise",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let kc2 = (est.path("kc2.pem"), est.path("kc.key"));
    let csr = est.csr("kc3", "kc.key", "/O=system:nodes/CN=system:node:dev", None);
    est.refused(
        "revoked",
        est.post(
            "kubelet-client/simplereenroll",
            &csr,
            Some((&kc2.0, &kc2.1)),
        ),
        403,
        "est-client-cert",
        "the client certificate is revoked",
        before,
    );

    // Expired: the first kubelet client certificate (15 s lifetime).
    let expired = || {
        !run(Command::new("openssl")
            .args(["x509", "-checkend", "0", "-noout", "-in"])
            .arg(est.path("kc.pem")))
        .status
        .success()
    };
    wait_until(
        "the first kubelet certificate to expire",
        Duration::from_secs(40),
        expired,
    );
    // openssl counts the notAfter second as expired, webpki as valid.
    std::thread::sleep(Duration::from_millis(1500));
    est.refused(
        "expired",
        est.post("kubelet-client/simplereenroll", &csr, kc),
        403,
        "est-client-cert",
        "the client certificate has expired",
        before,
    );
}

fn serial_of(listing: &str) -> String {
    listing
        .lines()
        .find_map(|l| l.strip_prefix("serial="))
        .unwrap_or_default()
        .to_string()
}

/// The PEM block of `all` whose subject contains `cn`.
fn pem_block_with(all: &str, est: &Est, cn: &str) -> String {
    pem_block(all, est, cn, true)
}

/// The PEM block of `all` whose subject does not contain `cn`.
fn pem_block_without(all: &str, est: &Est, cn: &str) -> String {
    pem_block(all, est, cn, false)
}

fn pem_block(all: &str, est: &Est, cn: &str, with: bool) -> String {
    for (i, block) in all.split("-----END CERTIFICATE-----").enumerate() {
        let Some(start) = block.find("-----BEGIN CERTIFICATE-----") else {
            continue;
        };
        let pem = format!("{}-----END CERTIFICATE-----\n", &block[start..]);
        let f = format!("block{i}.pem");
        std::fs::write(est.path(&f), &pem).unwrap();
        if est
            .openssl(&["x509", "-in", &f, "-noout", "-subject"])
            .contains(cn)
            == with
        {
            return pem;
        }
    }
    panic!("no certificate with {cn} in {all}");
}

#[test]
fn deferred_enrollment_waits_for_the_operator_and_lab_basic_auth_is_opt_in() {
    let password_sha256 = hex::encode(aws_lc_rs::digest::digest(
        &aws_lc_rs::digest::SHA256,
        b"lab-password",
    ));
    let est = Est::start(&format!(
        "[est]\nmanual_approval = [\"kubelet-serving\"]\nretry_after = \"7s\"\n\n\
         [est.lab_basic_auth]\nusername = \"lab\"\npassword_sha256 = \"{password_sha256}\"\n"
    ));
    let (node_cert, node_key) = (est.node_cert(), est.node_key());
    let node = Some((node_cert.as_path(), node_key.as_path()));
    let config = est.dev.dir.path().join("core.toml");
    let cli = |args: &[&str]| {
        let out = run(Command::new(keygrid_integration::bin("keygrid"))
            .args(args)
            .arg("--config")
            .arg(&config));
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).to_string()
    };

    // Lab user: HTTP Basic enrolls any node's kubelet client certificate.
    let csr = est.csr(
        "lab",
        "lab.key",
        "/O=system:nodes/CN=system:node:lab1",
        None,
    );
    let body = format!("@{}", csr.display());
    let with_basic = |user: &str, op: &str| {
        est.curl(
            op,
            &[
                "-u",
                user,
                "-H",
                "Content-Type: application/pkcs10",
                "--data-binary",
                &body,
            ],
        )
    };
    est.certs(
        &with_basic("lab:lab-password", "kubelet-client/simpleenroll"),
        "lab-chain.pem",
    );
    assert!(est
        .leaf("lab-chain.pem", "lab.pem")
        .contains("CN = system:node:lab1"));
    let before = est.certificate_count();
    est.refused(
        "wrong password",
        with_basic("lab:nope", "kubelet-client/simpleenroll"),
        401,
        "est-auth",
        "wrong user name or password",
        before,
    );
    est.refused(
        "basic auth cannot renew",
        with_basic("lab:lab-password", "kubelet-client/simplereenroll"),
        401,
        "est-auth",
        "simplereenroll needs the TLS client certificate",
        before,
    );

    // Deferred: 202 with Retry-After until approved, then the certificate, once.
    let csr = est.csr(
        "ks",
        "ks.key",
        "/O=system:nodes/CN=system:node:dev",
        Some("DNS:dev"),
    );
    let headers = est.path("headers.txt");
    let post_with_headers = || {
        est.curl(
            "kubelet-serving/simpleenroll",
            &[
                "-D",
                headers.to_str().unwrap(),
                "-H",
                "Content-Type: application/pkcs10",
                "--data-binary",
                &format!("@{}", csr.display()),
                "--cert",
                node_cert.to_str().unwrap(),
                "--key",
                node_key.to_str().unwrap(),
            ],
        )
    };
    for _ in 0..2 {
        let r = post_with_headers();
        assert_eq!(r.status, 202, "{}", r.text());
        let h = std::fs::read_to_string(&headers)
            .unwrap()
            .to_ascii_lowercase();
        assert!(h.contains("retry-after: 7"), "{h}");
        assert_eq!(
            est.certificate_count(),
            before,
            "nothing issued while pending"
        );
    }
    let listed = cli(&["est", "pending"]);
    let id = listed.split('\t').next().unwrap().trim().to_string();
    assert!(
        listed.contains("kubelet-serving") && listed.contains("system:node:dev"),
        "{listed}"
    );
    cli(&["est", "approve", &id]);
    assert!(cli(&["est", "pending"]).trim().is_empty());
    est.certs(&post_with_headers(), "approved.pem");
    est.leaf("approved.pem", "approved-leaf.pem");
    let chain = std::fs::read_to_string(est.path("approved.pem")).unwrap();
    std::fs::write(
        est.path("nodes-ca.pem"),
        pem_block_with(&chain, &est, "KeyGrid nodes CA"),
    )
    .unwrap();
    est.verify("approved-leaf.pem", "sslserver");
    let after = est.certificate_count();
    assert_eq!(after, before + 1);
    est.refused(
        "answered twice",
        post_with_headers(),
        403,
        "manual-approval",
        "already answered",
        after,
    );

    // Rejected: 403 on the retry.
    let csr2 = est.csr(
        "ks2",
        "ks.key",
        "/O=system:nodes/CN=system:node:dev",
        Some("DNS:dev.example"),
    );
    let post2 = || est.post("kubelet-serving/simpleenroll", &csr2, node);
    assert_eq!(post2().status, 202);
    let id = cli(&["est", "pending"])
        .split('\t')
        .next()
        .unwrap()
        .trim()
        .to_string();
    cli(&["est", "reject", &id]);
    est.refused(
        "rejected",
        post2(),
        403,
        "manual-approval",
        "rejected by an operator",
        after,
    );
    let count = |kinds: &str| -> i64 {
        est.db()
            .query_row(
                &format!("SELECT COUNT(*) FROM audit_log WHERE kind IN ({kinds})"),
                [],
                |r| r.get(0),
            )
            .unwrap()
    };
    assert_eq!(
        count("'est_enrollment_approved', 'est_enrollment_rejected'"),
        2,
        "approval and rejection are audit events"
    );
    assert_eq!(
        count("'est_enrollment_deferred'"),
        2,
        "each deferral is an audit event"
    );
}

#[test]
fn a_join_token_agent_gets_kubelet_files_over_est_with_its_software_node_key() {
    let est = Est::start("");
    let agent = keygrid_integration::Agent::start(
        &est.dev,
        "spiffe://example.org/keygrid/node/node-s",
        &est.dev.listen,
        &format!(
            "\n[est]\nurl = {:?}\nnode_name = \"node-s\"\nkubelet_dir = {:?}\n",
            est.url,
            est.dir.join("kubelet").display().to_string()
        ),
    );
    let dir = est.dir.join("kubelet");
    wait_until("kubelet files", Duration::from_secs(30), || {
        dir.join("kubelet-client-current.pem").exists()
            && dir.join("kubelet-serving-current.pem").exists()
    });
    assert!(
        agent.dir.path().join("state/node-key.pem").exists(),
        "a join-token node keeps its software key"
    );
    let client = est.openssl(&[
        "x509",
        "-in",
        dir.join("kubelet-client.crt").to_str().unwrap(),
        "-noout",
        "-subject",
    ]);
    assert!(client.contains("CN = system:node:node-s"), "{client}");
    let serving = est.openssl(&[
        "x509",
        "-in",
        dir.join("kubelet-serving.crt").to_str().unwrap(),
        "-noout",
        "-ext",
        "subjectAltName",
    ]);
    assert!(serving.contains("DNS:node-s"), "{serving}");
}
