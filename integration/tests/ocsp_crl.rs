//! Revocation end to end: `keygrid dev` with its HTTP listener, the `openssl ocsp` client
//! (POST and, through curl, GET), `openssl crl` and `openssl verify -crl_check`, and the
//! `keygrid cert revoke` CLI. The revocable certificates are the agent's node certificate,
//! core's serving certificate and the issuing CAs.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use keygrid_integration::{bin, free_port, require_tool, run, wait_until, DevEnv};

const OPENSSL_HINT: &str = "apt-get install openssl (scripts/install-deps.sh)";
const CURL_HINT: &str = "apt-get install curl (scripts/install-deps.sh)";

/// A dev environment with the HTTP listener on, and the files the clients need.
struct Env {
    dev: DevEnv,
    url: String,
    dir: PathBuf,
}

impl Env {
    fn start() -> Self {
        Self::start_with(&[])
    }

    fn start_with(extra: &[&str]) -> Self {
        require_tool("openssl", OPENSSL_HINT);
        require_tool("curl", CURL_HINT);
        let http = format!("127.0.0.1:{}", free_port());
        let mut args = vec!["--http-listen".to_string(), http.clone()];
        args.extend(extra.iter().map(|s| s.to_string()));
        let dev = DevEnv::start_with_args(tempfile::tempdir().unwrap(), "5m", &args);
        let url = format!("http://{http}");
        let dir = dev.dir.path().join("client");
        std::fs::create_dir_all(&dir).unwrap();
        let env = Env { dev, url, dir };
        wait_until("the HTTP listener", Duration::from_secs(30), || {
            env.curl(&[], "/healthz").status.success()
        });
        // The issuers, fetched the way a relying party would (AIA caIssuers).
        for issuer in ["root", "nodes", "workloads"] {
            let der = env.file(&format!("{issuer}.der"));
            env.get(&format!("/ca/{issuer}.crt"), &der);
            env.openssl(&[
                "x509",
                "-inform",
                "der",
                "-in",
                der.to_str().unwrap(),
                "-out",
                env.file(&format!("{issuer}.pem")).to_str().unwrap(),
            ]);
        }
        let chain = format!(
            "{}{}",
            std::fs::read_to_string(env.file("root.pem")).unwrap(),
            std::fs::read_to_string(env.file("nodes.pem")).unwrap()
        );
        std::fs::write(env.file("chain.pem"), chain).unwrap();
        // The agent's node certificate (first block of its chain file).
        let node = std::fs::read(env.dev.dir.path().join("agent/node-cert.pem")).unwrap();
        let leaf = pem::parse_many(&node)
            .unwrap()
            .into_iter()
            .find(|p| p.tag() == "CERTIFICATE")
            .unwrap();
        std::fs::write(env.file("leaf.pem"), pem::encode(&leaf)).unwrap();
        env
    }

    fn file(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    fn path(&self, name: &str) -> String {
        self.file(name).display().to_string()
    }

    /// curl with `opts`, for `path` on the HTTP listener.
    fn curl(&self, opts: &[&str], path: &str) -> std::process::Output {
        run(Command::new("curl")
            .args(["-s", "-S"])
            .args(opts)
            .arg(format!("{}{path}", self.url)))
    }

    /// GETs `path` into `out`; fails the test on a non-2xx answer.
    fn get(&self, path: &str, out: &Path) {
        let o = self.curl(&["-f", "-o", out.to_str().unwrap()], path);
        assert!(o.status.success(), "GET {path}: {}", text(&o));
    }

    fn openssl(&self, args: &[&str]) -> String {
        let o = run(Command::new("openssl").args(args).current_dir(&self.dir));
        text(&o)
    }

    /// `openssl ocsp` against the responder over POST; returns everything it printed.
    fn ocsp(&self, args: &[&str]) -> String {
        let url = format!("{}/ocsp", self.url);
        let mut all = vec!["ocsp", "-url", url.as_str()];
        all.extend_from_slice(args);
        self.openssl(&all)
    }

    /// Builds a request with `openssl ocsp -reqout`, sends it with GET (RFC 6960 A.1), and
    /// has `openssl ocsp -respin` verify the answer. Returns (headers, openssl output).
    fn ocsp_get(&self, request_args: &[&str], verify_args: &[&str]) -> (String, String) {
        let req = self.path("get-req.der");
        let mut a = vec!["ocsp", "-no_nonce", "-reqout", req.as_str()];
        a.extend_from_slice(request_args);
        self.openssl(&a);
        let der = std::fs::read(&req).unwrap();
        let b64 = base64_url(&der);
        let resp = self.path("get-resp.der");
        let o = self.curl(&["-D", "-", "-o", &resp], &format!("/ocsp/{b64}"));
        let headers = text(&o);
        let mut v = vec!["ocsp", "-respin", resp.as_str()];
        v.extend_from_slice(verify_args);
        (headers, self.openssl(&v))
    }

    fn cli(&self, args: &[&str]) -> std::process::Output {
        self.dev.cli(args)
    }
}

fn text(o: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Standard base64, then percent-encoded for a URL path segment.
fn base64_url(der: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in der.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (b[0] as u32) << 16 | (b[1] as u32) << 8 | b[2] as u32;
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out.replace('+', "%2B")
        .replace('/', "%2F")
        .replace('=', "%3D")
}

fn assert_verified(out: &str, status: &str) {
    assert!(out.contains("Response verify OK"), "not verified:\n{out}");
    assert!(out.contains(status), "expected {status:?}:\n{out}");
}

#[test]
fn openssl_sees_good_revoked_and_unknown_over_post_and_get_and_in_the_crl() {
    let env = Env::start();
    let (issuer, leaf, chain) = (
        env.path("nodes.pem"),
        env.path("leaf.pem"),
        env.path("chain.pem"),
    );
    let base = ["-issuer", issuer.as_str(), "-CAfile", chain.as_str()];
    let with = |extra: &[&str]| -> Vec<String> {
        base.iter().chain(extra).map(|s| s.to_string()).collect()
    };
    let ocsp = |extra: &[&str]| {
        let args = with(extra);
        env.ocsp(&args.iter().map(String::as_str).collect::<Vec<_>>())
    };

    // Long-lived certificates point at the responder and the CRL; the nodes CA at the root's.
    let text_of = |f: &str| env.openssl(&["x509", "-in", f, "-noout", "-text"]);
    let leaf_text = text_of(&leaf);
    for want in [
        format!("OCSP - URI:{}/ocsp", env.url),
        format!("CA Issuers - URI:{}/ca/nodes.crt", env.url),
        format!("URI:{}/crl/nodes.crl", env.url),
    ] {
        assert!(
            leaf_text.contains(&want),
            "node certificate lacks {want}:\n{leaf_text}"
        );
    }
    let ca_text = text_of(&issuer);
    for want in [
        format!("OCSP - URI:{}/ocsp", env.url),
        format!("CA Issuers - URI:{}/ca/root.crt", env.url),
        format!("URI:{}/crl/root.crl", env.url),
    ] {
        assert!(ca_text.contains(&want), "nodes CA lacks {want}:\n{ca_text}");
    }

    // good: SHA-1 and SHA-256 CertIDs, with and without a nonce, over POST.
    let out = ocsp(&["-cert", &leaf]);
    assert_verified(&out, "leaf.pem: good");
    assert!(
        !out.contains("WARNING: no nonce"),
        "nonce not echoed:\n{out}"
    );
    assert_verified(
        &ocsp(&["-no_nonce", "-sha256", "-cert", &leaf]),
        "leaf.pem: good",
    );
    // ... and over GET, with the RFC 5019 caching headers.
    let (headers, out) = env.ocsp_get(
        &["-issuer", &issuer, "-cert", &leaf],
        &with(&["-cert", &leaf])
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
    );
    assert_verified(&out, "leaf.pem: good");
    for h in [
        "cache-control: max-age=",
        "etag: \"",
        "last-modified:",
        "expires:",
    ] {
        assert!(
            headers.to_ascii_lowercase().contains(h),
            "missing {h}:\n{headers}"
        );
    }

    // unknown: a serial the nodes CA never issued.
    assert_verified(&ocsp(&["-serial", "0x1234567890"]), "0x1234567890: unknown");

    // The CRL before the revocation: valid, signed by the nodes CA, and the leaf passes.
    let crl = env.path("nodes.crl.pem");
    env.get("/crl/nodes.crl?format=pem", Path::new(&crl));
    let out = env.openssl(&["crl", "-in", &crl, "-CAfile", &chain, "-noout", "-text"]);
    assert!(out.contains("verify OK"), "{out}");
    assert!(out.contains("X509v3 CRL Number"), "{out}");
    assert!(out.contains("X509v3 Authority Key Identifier"), "{out}");
    let out = env.openssl(&[
        "verify",
        "-crl_check",
        "-CRLfile",
        &crl,
        "-CAfile",
        &chain,
        &leaf,
    ]);
    assert!(out.contains("leaf.pem: OK"), "{out}");

    // Revoking a serial KeyGrid never issued is a clear NotFound, and writes nothing.
    let o = env.cli(&[
        "cert",
        "revoke",
        "0x1234567890",
        "--reason",
        "keyCompromise",
    ]);
    assert!(!o.status.success());
    assert!(text(&o).contains("not found"), "{}", text(&o));
    let o = env.cli(&["cert", "revoke", &leaf, "--reason", "no-such-reason"]);
    assert!(!o.status.success());
    assert!(text(&o).contains("invalid argument"), "{}", text(&o));

    // Revoke the node certificate by file, with a reason.
    let o = env.cli(&["cert", "revoke", &leaf, "--reason", "keyCompromise"]);
    assert!(o.status.success(), "{}", text(&o));
    let o = env.cli(&["cert", "list", "--revoked"]);
    assert!(text(&o).contains("keyCompromise"), "{}", text(&o));

    // OCSP says revoked at once, with the reason, every way it is asked.
    for extra in [
        &["-cert", leaf.as_str()][..],
        &["-no_nonce", "-sha256", "-cert", leaf.as_str()],
    ] {
        let out = ocsp(&[extra, &["-resp_text"]].concat());
        assert_verified(&out, "leaf.pem: revoked");
        assert!(out.contains("Reason: keyCompromise"), "{out}");
    }
    let (_, out) = env.ocsp_get(
        &["-issuer", &issuer, "-sha256", "-cert", &leaf],
        &with(&["-sha256", "-cert", &leaf])
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
    );
    assert_verified(&out, "leaf.pem: revoked");

    // The CRL was re-published on revocation: new number, the entry with its reason, and
    // openssl verify now refuses the certificate.
    env.get("/crl/nodes.crl", &env.file("nodes.crl.der"));
    let out = env.openssl(&[
        "crl",
        "-inform",
        "der",
        "-in",
        &env.path("nodes.crl.der"),
        "-CAfile",
        &chain,
        "-noout",
        "-text",
    ]);
    assert!(out.contains("verify OK"), "{out}");
    assert!(out.contains("Key Compromise"), "{out}");
    env.get("/crl/nodes.crl?format=pem", Path::new(&crl));
    let out = env.openssl(&[
        "verify",
        "-crl_check",
        "-CRLfile",
        &crl,
        "-CAfile",
        &chain,
        &leaf,
    ]);
    assert!(out.contains("certificate revoked"), "{out}");

    // Revoking an issuing CA: the root's responder and CRL say so, and everything the CA
    // issued (here core's serving certificate) is answered as revoked too.
    let o = env.cli(&["cert", "list"]);
    let listing = text(&o);
    let core_serial = listing
        .split("\n\n")
        .find(|block| block.contains("core-server"))
        .and_then(|b| b.lines().find_map(|l| l.strip_prefix("Serial        : ")))
        .expect("core serving certificate listed")
        .to_string();
    let core_serial = format!("0x{core_serial}");
    assert_verified(&ocsp(&["-serial", &core_serial]), ": good");
    let root = env.path("root.pem");
    let nodes_ca = env.path("nodes.pem");
    let root_args = [
        "-issuer",
        root.as_str(),
        "-CAfile",
        root.as_str(),
        "-cert",
        nodes_ca.as_str(),
    ];
    assert_verified(&env.ocsp(&root_args), "nodes.pem: good");
    let o = env.cli(&["cert", "revoke", &nodes_ca, "--reason", "cACompromise"]);
    assert!(o.status.success(), "{}", text(&o));
    assert_verified(&env.ocsp(&root_args), "nodes.pem: revoked");
    let out = ocsp(&["-serial", &core_serial, "-resp_text"]);
    assert_verified(&out, ": revoked");
    assert!(out.contains("Reason: cACompromise"), "{out}");
    let root_crl = env.path("root.crl.pem");
    env.get("/crl/root.crl?format=pem", Path::new(&root_crl));
    let all_crls = format!(
        "{}{}",
        std::fs::read_to_string(&root_crl).unwrap(),
        std::fs::read_to_string(&crl).unwrap()
    );
    std::fs::write(env.file("all.crl.pem"), all_crls).unwrap();
    let out = env.openssl(&[
        "verify",
        "-crl_check",
        "-CRLfile",
        &env.path("all.crl.pem"),
        "-CAfile",
        &root,
        &nodes_ca,
    ]);
    assert!(out.contains("certificate revoked"), "{out}");
}

#[test]
fn malformed_oversized_and_unsupported_requests_get_the_right_status() {
    let env = Env::start();
    let issuer = env.path("nodes.pem");
    let leaf = env.path("leaf.pem");
    let post = |body: &Path, ctype: &str| -> (String, String) {
        let out = env.path("neg-resp.der");
        let o = env.curl(
            &[
                "-o",
                &out,
                "-w",
                "%{http_code}",
                "--data-binary",
                &format!("@{}", body.display()),
                "-H",
                &format!("Content-Type: {ctype}"),
            ],
            "/ocsp",
        );
        let code = String::from_utf8_lossy(&o.stdout).to_string();
        let parsed = env.openssl(&["ocsp", "-respin", &out, "-resp_text"]);
        (code, parsed)
    };
    let good_req = env.file("req.der");
    env.openssl(&[
        "ocsp",
        "-issuer",
        &issuer,
        "-cert",
        &leaf,
        "-no_nonce",
        "-reqout",
        good_req.to_str().unwrap(),
    ]);
    let der = std::fs::read(&good_req).unwrap();

    // Garbage.
    std::fs::write(env.file("garbage"), b"this is not DER at all").unwrap();
    let (code, out) = post(&env.file("garbage"), "application/ocsp-request");
    assert_eq!(code, "200");
    assert!(out.contains("malformedrequest"), "{out}");
    // Truncated DER.
    std::fs::write(env.file("truncated"), &der[..der.len() / 2]).unwrap();
    let (code, out) = post(&env.file("truncated"), "application/ocsp-request");
    assert_eq!(code, "200");
    assert!(out.contains("malformedrequest"), "{out}");
    // 1,000 CertIDs in one request.
    let mut args: Vec<String> = vec![
        "ocsp".into(),
        "-issuer".into(),
        issuer.clone(),
        "-no_nonce".into(),
    ];
    for i in 1..=1000 {
        args.push("-serial".into());
        args.push(i.to_string());
    }
    args.push("-reqout".into());
    args.push(env.path("many.der"));
    env.openssl(&args.iter().map(String::as_str).collect::<Vec<_>>());
    let (code, out) = post(&env.file("many.der"), "application/ocsp-request");
    assert!(code == "200" || code == "413", "{code}");
    assert!(out.contains("malformedrequest"), "{out}");
    // A 10 MB body.
    std::fs::write(env.file("big"), vec![0x30u8; 10 * 1024 * 1024]).unwrap();
    let (code, out) = post(&env.file("big"), "application/ocsp-request");
    assert_eq!(code, "413");
    assert!(out.contains("malformedrequest"), "{out}");
    // A wrong content type.
    let (code, out) = post(&good_req, "text/plain");
    assert_eq!(code, "415");
    assert!(out.contains("malformedrequest"), "{out}");
    // A nonce longer than RFC 9654 allows (the request is otherwise fine).
    let with_long_nonce = add_nonce(&der, 200);
    std::fs::write(env.file("long-nonce.der"), &with_long_nonce).unwrap();
    let (code, out) = post(&env.file("long-nonce.der"), "application/ocsp-request");
    assert_eq!(code, "200");
    assert!(out.contains("malformedrequest"), "{out}");
    // A certificate from an issuer KeyGrid does not serve: unauthorized.
    env.openssl(&[
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-keyout",
        "other.key",
        "-out",
        "other.pem",
        "-subj",
        "/CN=other",
        "-days",
        "1",
    ]);
    env.openssl(&[
        "ocsp",
        "-issuer",
        "other.pem",
        "-serial",
        "1",
        "-no_nonce",
        "-reqout",
        "other-req.der",
    ]);
    let (code, out) = post(&env.file("other-req.der"), "application/ocsp-request");
    assert_eq!(code, "200");
    assert!(out.contains("unauthorized"), "{out}");
    // A GET that is not base64.
    let o = env.curl(
        &["-o", "/dev/null", "-w", "%{http_code}"],
        "/ocsp/not*base64!",
    );
    assert_eq!(String::from_utf8_lossy(&o.stdout), "400");

    // After all that, the responder still answers properly.
    let out = env.ocsp(&[
        "-issuer",
        &issuer,
        "-CAfile",
        &env.path("chain.pem"),
        "-cert",
        &leaf,
    ]);
    assert_verified(&out, "leaf.pem: good");
    assert!(!env.dev.log().contains("panicked"), "{}", env.dev.log());
}

/// Re-encodes a nonce-less DER OCSPRequest with a nonce extension of `len` bytes.
fn add_nonce(req: &[u8], len: usize) -> Vec<u8> {
    fn tlv(tag: u8, content: &[u8]) -> Vec<u8> {
        let mut out = vec![tag];
        let n = content.len();
        if n < 128 {
            out.push(n as u8);
        } else if n < 256 {
            out.extend([0x81, n as u8]);
        } else {
            out.extend([0x82, (n >> 8) as u8, n as u8]);
        }
        out.extend_from_slice(content);
        out
    }
    fn split(der: &[u8]) -> (&[u8], &[u8]) {
        // Returns (content, rest) of the first TLV.
        let (len, hdr) = match der[1] {
            n if n < 128 => (n as usize, 2),
            0x81 => (der[2] as usize, 3),
            0x82 => (((der[2] as usize) << 8) | der[3] as usize, 4),
            _ => panic!("unexpected length"),
        };
        (&der[hdr..hdr + len], &der[hdr + len..])
    }
    let (ocsp_request, _) = split(req);
    let (tbs, _) = split(ocsp_request);
    // id-pkix-ocsp-nonce 1.3.6.1.5.5.7.48.1.2
    let oid = [
        0x06, 0x09, 0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x30, 0x01, 0x02,
    ];
    let nonce = tlv(0x04, &tlv(0x04, &vec![0x42; len]));
    let ext = tlv(0x30, &[&oid[..], &nonce].concat());
    let exts = tlv(0xa2, &tlv(0x30, &ext));
    let new_tbs = tlv(0x30, &[tbs, &exts].concat());
    tlv(0x30, &new_tbs)
}

#[test]
fn standalone_responder_rotates_its_certificate_and_sees_core_revocations() {
    require_tool("openssl", OPENSSL_HINT);
    require_tool("curl", CURL_HINT);
    // Core runs without HTTP; `keygrid ocsp serve` is the only responder.
    let dev = DevEnv::start("5m");
    let data = dev.dir.path().to_path_buf();
    let http = format!("127.0.0.1:{}", free_port());
    let core_toml = std::fs::read_to_string(data.join("core.toml")).unwrap();
    let cfg = data.join("ocsp.toml");
    std::fs::write(
        &cfg,
        format!(
            "{core_toml}\n[http]\nlisten = \"{http}\"\nocsp_responder_cert_ttl = \"12s\"\nmaintenance_interval = \"200ms\"\nocsp_responder_algorithm = \"ecdsa-p384\"\n"
        ),
    )
    .unwrap();
    let log = std::fs::File::create(data.join("ocsp.log")).unwrap();
    let mut child = Command::new(bin("keygrid"))
        .args(["ocsp", "serve", "--config"])
        .arg(&cfg)
        .env("SOFTHSM2_CONF", data.join("softhsm/softhsm2.conf"))
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .expect("start keygrid ocsp serve");
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let url = format!("http://{http}");
    wait_until("keygrid ocsp serve", Duration::from_secs(30), || {
        if let Ok(Some(s)) = child.try_wait() {
            panic!(
                "keygrid ocsp serve exited ({s}):\n{}",
                std::fs::read_to_string(data.join("ocsp.log")).unwrap_or_default()
            );
        }
        run(Command::new("curl").args(["-sf", &format!("{url}/healthz")]))
            .status
            .success()
    });
    let _guard = Kill(child);
    let dir = data.join("client");
    std::fs::create_dir_all(&dir).unwrap();
    let sh = |args: &[&str]| text(&run(Command::new("openssl").args(args).current_dir(&dir)));
    run(Command::new("curl").args([
        "-sf",
        "-o",
        dir.join("nodes.der").to_str().unwrap(),
        &format!("{url}/ca/nodes.crt"),
    ]));
    sh(&[
        "x509",
        "-inform",
        "der",
        "-in",
        "nodes.der",
        "-out",
        "nodes.pem",
    ]);
    let chain = format!(
        "{}{}",
        std::fs::read_to_string(dev.bundle_pem()).unwrap(),
        std::fs::read_to_string(dir.join("nodes.pem")).unwrap()
    );
    std::fs::write(dir.join("chain.pem"), chain).unwrap();
    let node = std::fs::read(data.join("agent/node-cert.pem")).unwrap();
    let leaf = pem::parse_many(&node)
        .unwrap()
        .into_iter()
        .find(|p| p.tag() == "CERTIFICATE")
        .unwrap();
    std::fs::write(dir.join("leaf.pem"), pem::encode(&leaf)).unwrap();
    let ocsp_url = format!("{url}/ocsp");
    let query = || {
        sh(&[
            "ocsp",
            "-url",
            &ocsp_url,
            "-issuer",
            "nodes.pem",
            "-CAfile",
            "chain.pem",
            "-cert",
            "leaf.pem",
            "-resp_text",
        ])
    };
    let responder_serial = |out: &str| -> String {
        // The responder certificate embedded in the response is the only one printed.
        out.split("Certificate:")
            .nth(1)
            .and_then(|c| {
                c.lines()
                    .skip_while(|l| !l.contains("Serial Number"))
                    .nth(1)
            })
            .map(|l| l.trim().to_string())
            .unwrap_or_default()
    };
    let first = query();
    assert_verified(&first, "leaf.pem: good");
    assert!(
        first.contains("ecdsa-with-SHA384"),
        "P-384 responder expected:\n{first}"
    );
    let first_serial = responder_serial(&first);
    assert!(!first_serial.is_empty(), "{first}");

    // Rotation at half of the 12 s lifetime: a new responder certificate, still verified.
    wait_until(
        "responder certificate rotation",
        Duration::from_secs(30),
        || {
            let out = query();
            out.contains("Response verify OK") && responder_serial(&out) != first_serial
        },
    );

    // A revocation made through core reaches the separate responder and its CRL.
    let o = dev.cli(&[
        "cert",
        "revoke",
        dir.join("leaf.pem").to_str().unwrap(),
        "--reason",
        "superseded",
    ]);
    assert!(o.status.success(), "{}", text(&o));
    wait_until(
        "the standalone responder to see the revocation",
        Duration::from_secs(15),
        || query().contains("leaf.pem: revoked"),
    );
    let out = query();
    assert_verified(&out, "leaf.pem: revoked");
    assert!(out.contains("superseded"), "{out}");
    run(Command::new("curl").args([
        "-sf",
        "-o",
        dir.join("nodes.crl").to_str().unwrap(),
        &format!("{url}/crl/nodes.crl"),
    ]));
    let out = sh(&[
        "crl",
        "-inform",
        "der",
        "-in",
        "nodes.crl",
        "-CAfile",
        "chain.pem",
        "-noout",
        "-text",
    ]);
    assert!(
        out.contains("verify OK") && out.contains("Superseded"),
        "{out}"
    );
}

#[test]
fn openssl_applies_delta_crls_that_carry_a_revocation_before_the_next_complete_crl() {
    let env = Env::start_with(&["--delta-crl-validity", "10m"]);
    let (leaf, chain) = (env.path("leaf.pem"), env.path("chain.pem"));
    let fetch = |path: &str, name: &str| {
        env.get(&format!("{path}?format=pem"), &env.file(name));
        env.path(name)
    };
    let crl_text = |file: &str| {
        let out = env.openssl(&["crl", "-in", file, "-CAfile", &chain, "-noout", "-text"]);
        assert!(out.contains("verify OK"), "{out}");
        out
    };
    let verify = |crls: &[&str], deltas: bool| {
        let bundle = env.file("crls.pem");
        let all: String = crls
            .iter()
            .map(|f| std::fs::read_to_string(f).unwrap())
            .collect();
        std::fs::write(&bundle, all).unwrap();
        let bundle = bundle.display().to_string();
        let mut args = vec!["verify", "-crl_check"];
        if deltas {
            args.push("-use_deltas");
        }
        args.extend(["-CRLfile", &bundle, "-CAfile", &chain, &leaf]);
        env.openssl(&args)
    };

    // At start: a complete CRL pointing at its delta, and an empty delta naming it as base.
    let base = fetch("/crl/nodes.crl", "base.pem");
    let base_text = crl_text(&base);
    assert!(base_text.contains("Freshest CRL"), "{base_text}");
    assert!(
        base_text.contains(&format!("{}/crl/nodes-delta.crl", env.url)),
        "{base_text}"
    );
    assert!(!base_text.contains("Delta CRL Indicator"), "{base_text}");
    let delta = fetch("/crl/nodes-delta.crl", "delta.pem");
    let delta_text = crl_text(&delta);
    assert!(
        delta_text.contains("Delta CRL Indicator: critical"),
        "{delta_text}"
    );
    let out = verify(&[&base, &delta], true);
    assert!(out.contains("leaf.pem: OK"), "{out}");

    let o = env.cli(&["cert", "revoke", &leaf, "--reason", "keyCompromise"]);
    assert!(o.status.success(), "{}", text(&o));

    // The revocation went into a new delta; the complete CRL is the same one as before.
    let base_after = fetch("/crl/nodes.crl", "base-after.pem");
    assert_eq!(
        std::fs::read(&base_after).unwrap(),
        std::fs::read(&base).unwrap(),
        "complete CRLs follow their own schedule when deltas are on"
    );
    let delta = fetch("/crl/nodes-delta.crl", "delta-after.pem");
    let delta_text = crl_text(&delta);
    assert!(delta_text.contains("Key Compromise"), "{delta_text}");
    // The complete CRL alone does not know yet; with the delta openssl refuses the leaf.
    let out = verify(&[&base], false);
    assert!(out.contains("leaf.pem: OK"), "{out}");
    let out = verify(&[&base, &delta], true);
    assert!(out.contains("certificate revoked"), "{out}");

    // An issuer without deltas published, or a bad name: clear 404s.
    let o = env.curl(
        &["-o", "/dev/null", "-w", "%{http_code}"],
        "/crl/nosuch-delta.crl",
    );
    assert_eq!(text(&o).trim(), "404");
}
