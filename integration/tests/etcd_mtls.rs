//! etcd over KeyGrid mTLS: a real three-member etcd cluster (Debian's etcd-server) on
//! loopback with peer and client certificate authentication, every certificate issued by
//! `keygrid kubeadm certs` from the etcd CA held in SoftHSM2. etcdctl with a KeyGrid client
//! certificate writes and reads; client certificates from another CA (a foreign CA, and
//! KeyGrid's own front-proxy CA) are refused. Then, with 30-second certificates, one
//! `keygrid kubeadm rotate --watch` per member renews everything several times while a
//! writer keeps writing through all three members: no write fails, no member drops out.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use keygrid_integration::{bin, free_port, require_tool, run, wait_until, DevEnv, KillOnDrop};

const ETCD_HINT: &str = "apt-get install etcd-server etcd-client (scripts/install-deps.sh)";
const OPENSSL_HINT: &str = "apt-get install openssl (scripts/install-deps.sh)";

struct Member {
    name: String,
    pki: PathBuf,
    client_port: u16,
    peer_port: u16,
}

impl Member {
    fn client_url(&self) -> String {
        format!("https://127.0.0.1:{}", self.client_port)
    }
    fn peer_url(&self) -> String {
        format!("https://127.0.0.1:{}", self.peer_port)
    }
    fn file(&self, f: &str) -> String {
        self.pki.join(f).display().to_string()
    }
}

fn keygrid(env: &DevEnv, args: &[&str]) -> std::process::Output {
    run(Command::new(bin("keygrid"))
        .args(args)
        .arg("--socket")
        .arg(env.admin_socket()))
}

/// etcdctl against `endpoints` with a client certificate `cert`/`key` and CA `ca`.
fn etcdctl(
    endpoints: &str,
    ca: &str,
    cert: &str,
    key: &str,
    args: &[&str],
) -> std::process::Output {
    run(Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .args([
            "--endpoints",
            endpoints,
            "--cacert",
            ca,
            "--cert",
            cert,
            "--key",
            key,
        ])
        .args(["--dial-timeout", "3s", "--command-timeout", "5s"])
        .args(args))
}

fn text(o: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn start_etcd(m: &Member, all: &[Member], data: &Path, log: &Path) -> KillOnDrop {
    let cluster: Vec<String> = all
        .iter()
        .map(|o| format!("{}={}", o.name, o.peer_url()))
        .collect();
    let log = std::fs::File::create(log).unwrap();
    let child = Command::new("etcd")
        .args(["--name", &m.name])
        .args(["--data-dir", &data.display().to_string()])
        .args(["--listen-client-urls", &m.client_url()])
        .args(["--advertise-client-urls", &m.client_url()])
        .args(["--listen-peer-urls", &m.peer_url()])
        .args(["--initial-advertise-peer-urls", &m.peer_url()])
        .args(["--initial-cluster", &cluster.join(",")])
        .args([
            "--initial-cluster-state",
            "new",
            "--initial-cluster-token",
            "keygrid-test",
        ])
        .arg("--client-cert-auth")
        .args(["--trusted-ca-file", &m.file("etcd/ca.crt")])
        .args([
            "--cert-file",
            &m.file("etcd/server.crt"),
            "--key-file",
            &m.file("etcd/server.key"),
        ])
        .arg("--peer-client-cert-auth")
        .args(["--peer-trusted-ca-file", &m.file("etcd/ca.crt")])
        .args([
            "--peer-cert-file",
            &m.file("etcd/peer.crt"),
            "--peer-key-file",
            &m.file("etcd/peer.key"),
        ])
        .args(["--logger", "zap", "--log-outputs", "stderr"])
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .expect("start etcd");
    KillOnDrop(child)
}

#[test]
fn etcd_cluster_runs_on_keygrid_mtls_and_survives_rotation() {
    require_tool("etcd", ETCD_HINT);
    require_tool("etcdctl", ETCD_HINT);
    require_tool("openssl", OPENSSL_HINT);
    let env = DevEnv::start("5m");
    let work = tempfile::tempdir().unwrap();
    let members: Vec<Member> = (1..=3)
        .map(|i| Member {
            name: format!("m{i}"),
            pki: work.path().join(format!("m{i}/pki")),
            client_port: free_port(),
            peer_port: free_port(),
        })
        .collect();
    for m in &members {
        let out = keygrid(
            &env,
            &[
                "kubeadm",
                "certs",
                "--pki-dir",
                m.pki.to_str().unwrap(),
                "--kubeconfig-dir",
                work.path().join("kube").to_str().unwrap(),
                "--node-name",
                &m.name,
                "--advertise-address",
                "127.0.0.1",
                "--only",
                "etcd/server",
                "--only",
                "etcd/peer",
                "--only",
                "etcd/healthcheck-client",
                "--only",
                "front-proxy-client",
                "--ttl",
                "30s",
            ],
        );
        assert!(
            out.status.success(),
            "kubeadm certs {}: {}\n{}",
            m.name,
            text(&out),
            env.log()
        );
    }
    let mut procs: Vec<KillOnDrop> = members
        .iter()
        .map(|m| {
            start_etcd(
                m,
                &members,
                &work.path().join(format!("{}/data", m.name)),
                &work.path().join(format!("{}/etcd.log", m.name)),
            )
        })
        .collect();
    let endpoints: Vec<String> = members.iter().map(Member::client_url).collect();
    let all = endpoints.join(",");
    let m1 = &members[0];
    let ca = m1.file("etcd/ca.crt");
    let (cert, key) = (
        m1.file("etcd/healthcheck-client.crt"),
        m1.file("etcd/healthcheck-client.key"),
    );
    let member_logs = || -> Vec<String> {
        members
            .iter()
            .map(|m| {
                std::fs::read_to_string(work.path().join(format!("{}/etcd.log", m.name)))
                    .unwrap_or_default()
            })
            .collect()
    };
    let logs = || member_logs().join("\n----\n");
    wait_until(
        "a healthy three-member etcd cluster",
        Duration::from_secs(60),
        || {
            etcdctl(&all, &ca, &cert, &key, &["endpoint", "health"])
                .status
                .success()
        },
    );
    let list = etcdctl(&all, &ca, &cert, &key, &["member", "list"]);
    assert!(list.status.success(), "{}", text(&list));
    assert_eq!(
        text(&list).matches(", started, ").count(),
        3,
        "{}",
        text(&list)
    );

    // A KeyGrid client certificate writes and reads.
    let put = etcdctl(
        &endpoints[1],
        &ca,
        &cert,
        &key,
        &["put", "/keygrid/hello", "world"],
    );
    assert!(put.status.success(), "{}", text(&put));
    let get = etcdctl(
        &endpoints[2],
        &ca,
        &cert,
        &key,
        &["get", "/keygrid/hello", "--print-value-only"],
    );
    assert!(get.status.success(), "{}", text(&get));
    assert_eq!(String::from_utf8_lossy(&get.stdout).trim(), "world");

    // A client certificate from another CA is refused: a foreign CA, and KeyGrid's own
    // front-proxy CA (same root, different issuer: segmentation holds).
    let foreign = work.path().join("foreign");
    std::fs::create_dir_all(&foreign).unwrap();
    let f = |n: &str| foreign.join(n).display().to_string();
    for args in [
        vec![
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            &f("ca.key"),
            "-out",
            &f("ca.crt"),
            "-subj",
            "/CN=foreign CA",
            "-days",
            "1",
        ],
        vec![
            "req",
            "-new",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            &f("client.key"),
            "-out",
            &f("client.csr"),
            "-subj",
            "/CN=kube-etcd-healthcheck-client",
        ],
    ] {
        let o = run(Command::new("openssl").args(&args));
        assert!(o.status.success(), "{}", text(&o));
    }
    std::fs::write(foreign.join("ext"), "extendedKeyUsage=clientAuth\n").unwrap();
    let o = run(Command::new("openssl").args([
        "x509",
        "-req",
        "-in",
        &f("client.csr"),
        "-CA",
        &f("ca.crt"),
        "-CAkey",
        &f("ca.key"),
        "-CAcreateserial",
        "-out",
        &f("client.crt"),
        "-days",
        "1",
        "-extfile",
        &f("ext"),
    ]));
    assert!(o.status.success(), "{}", text(&o));
    for (c, k, what) in [
        (f("client.crt"), f("client.key"), "a foreign CA"),
        (
            m1.file("front-proxy-client.crt"),
            m1.file("front-proxy-client.key"),
            "KeyGrid's front-proxy CA",
        ),
    ] {
        let o = etcdctl(
            &endpoints[0],
            &ca,
            &c,
            &k,
            &["put", "/keygrid/intruder", "x"],
        );
        assert!(
            !o.status.success(),
            "a client certificate from {what} was accepted"
        );
        let o = etcdctl(
            &endpoints[0],
            &ca,
            &cert,
            &key,
            &["get", "/keygrid/intruder", "--print-value-only"],
        );
        assert_eq!(
            String::from_utf8_lossy(&o.stdout).trim(),
            "",
            "{what}: nothing was written"
        );
    }

    // The refusals above are in the logs; from here on, nothing may be rejected.
    let before_rotation: Vec<usize> = member_logs().iter().map(String::len).collect();

    // Rotation under load: renew at half-life (every ~20 s of a 40 s validity window).
    let rotators: Vec<KillOnDrop> = members
        .iter()
        .map(|m| {
            let log =
                std::fs::File::create(work.path().join(format!("{}/rotate.log", m.name))).unwrap();
            let child = Command::new(bin("keygrid"))
                .args([
                    "kubeadm",
                    "rotate",
                    "--watch",
                    "--renew-at",
                    "0.5",
                    "--interval",
                    "1s",
                ])
                .args(["--pki-dir", m.pki.to_str().unwrap()])
                .arg("--socket")
                .arg(env.admin_socket())
                .stdin(Stdio::null())
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .spawn()
                .expect("start keygrid kubeadm rotate --watch");
            KillOnDrop(child)
        })
        .collect();
    let started = Instant::now();
    let mut writes = 0u32;
    while started.elapsed() < Duration::from_secs(75) {
        let ep = &endpoints[writes as usize % 3];
        let v = format!("v{writes}");
        let o = etcdctl(ep, &ca, &cert, &key, &["put", "/keygrid/counter", &v]);
        assert!(
            o.status.success(),
            "write {writes} via {ep} failed after {:?}: {}\n{}",
            started.elapsed(),
            text(&o),
            logs()
        );
        writes += 1;
        std::thread::sleep(Duration::from_millis(200));
    }
    // Every certificate was renewed several times.
    for m in &members {
        let manifest: serde_json::Value =
            serde_json::from_slice(&std::fs::read(m.pki.join("keygrid-kubeadm.json")).unwrap())
                .unwrap();
        for c in manifest["certs"].as_array().unwrap() {
            let n = c["issued_count"].as_u64().unwrap();
            assert!(
                n >= 4,
                "{} {}: issued {n} times (initial + renewals)",
                m.name,
                c["base"]
            );
        }
    }
    // The original 30 s certificates are long expired: every member still serves, with a
    // renewed certificate (etcdctl checks the server's validity), and all three are members.
    for ep in &endpoints {
        let o = etcdctl(ep, &ca, &cert, &key, &["endpoint", "health"]);
        assert!(
            o.status.success(),
            "{ep} unhealthy: {}\n{}",
            text(&o),
            logs()
        );
    }
    let list = etcdctl(&all, &ca, &cert, &key, &["member", "list"]);
    assert_eq!(
        text(&list).matches(", started, ").count(),
        3,
        "{}",
        text(&list)
    );
    let get = etcdctl(
        &endpoints[0],
        &ca,
        &cert,
        &key,
        &["get", "/keygrid/counter", "--print-value-only"],
    );
    assert_eq!(
        String::from_utf8_lossy(&get.stdout).trim(),
        format!("v{}", writes - 1)
    );
    // No peer was ever rejected and no leader was lost.
    let l: String = member_logs()
        .iter()
        .zip(&before_rotation)
        .map(|(log, from)| log.get(*from..).unwrap_or_default().to_string())
        .collect::<Vec<_>>()
        .join("\n----\n");
    // (A client hanging up mid-handshake is logged as "rejected connection ... EOF"; that is
    // not a certificate problem. Any certificate failure names x509 or a TLS alert.)
    let bad: Vec<&str> = l
        .lines()
        .filter(|line| {
            line.contains("rejected connection")
                && (line.contains("x509") || line.contains("tls:") || line.contains("certificate"))
        })
        .collect();
    assert!(
        bad.is_empty(),
        "a TLS handshake was rejected for its certificate:\n{}",
        bad.join("\n")
    );
    assert!(!l.contains("lost leader"), "a member lost its leader:\n{l}");
    eprintln!("{writes} writes, all succeeded, through 3 members during rotation");
    drop(rotators);
    procs.clear();
}
