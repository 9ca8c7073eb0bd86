//! A private PostgreSQL server for tests and benchmarks: `initdb` and `postgres` from the
//! Debian package, on a free loopback port, with data and socket in a temporary directory,
//! stopped when dropped.
//!
//! PostgreSQL refuses to run as root, and CI runs as root: then the server runs as the
//! `postgres` system user (`setpriv`, from util-linux), in a directory that user owns. It trusts
//! local connections (nothing but this machine's tests can reach the loopback port) and
//! has one superuser, `keygrid`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running private PostgreSQL server.
pub struct PgServer {
    dir: tempfile::TempDir,
    port: u16,
    child: Child,
    tls: TlsMode,
}

/// How the server speaks TLS.
#[derive(Clone, Copy, PartialEq, Eq)]
enum TlsMode {
    Off,
    /// TLS offered; the usual (trust) authentication.
    On,
    /// TLS required over TCP and clients authenticated by certificate (`hostssl ... cert`,
    /// the certificate's CN being the user); the Unix socket stays `trust` for set-up.
    ClientCert,
}

/// [`TlsMode`] with what setting it up needs.
enum Tls<'a> {
    Off,
    On,
    /// The CA (PEM) client certificates must chain to.
    ClientCert(&'a str),
}

impl Tls<'_> {
    fn mode(&self) -> TlsMode {
        match self {
            Tls::Off => TlsMode::Off,
            Tls::On => TlsMode::On,
            Tls::ClientCert(_) => TlsMode::ClientCert,
        }
    }
}

/// A test CA and what it signed for [`PgServer::start_tls_client_auth`].
pub struct ClientAuthFiles {
    /// The CA (PEM) that signed the server's and the client's certificates.
    pub ca: String,
    /// A client certificate (PEM) with CN `keygrid`, the database user.
    pub client_cert: String,
    /// Its private key (PKCS#8 PEM).
    pub client_key: String,
}

/// Where the PostgreSQL server binaries are, newest version first.
pub fn find_bin_dir() -> Result<PathBuf, String> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map_err(|_| {
            "PostgreSQL is not installed (/usr/lib/postgresql missing); install it with \
             `apt-get install postgresql` (scripts/install-deps.sh)"
                .to_string()
        })?
        .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
        .filter(|p| p.join("postgres").exists() && p.join("initdb").exists())
        .collect();
    dirs.sort();
    dirs.pop().ok_or_else(|| {
        "no PostgreSQL server binaries under /usr/lib/postgresql/*/bin; install the \
         `postgresql` package (scripts/install-deps.sh)"
            .to_string()
    })
}

fn free_port() -> Result<u16, String> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| format!("no free port: {e}"))
}

/// A command run as the `postgres` user when we are root, as ourselves otherwise.
/// `setpriv` execs the program, so the child's id is the server's own (to stop it by id).
fn as_server_user(bin: &Path) -> Command {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } == 0 {
        let mut c = Command::new("setpriv");
        c.args([
            "--reuid=postgres",
            "--regid=postgres",
            "--init-groups",
            "--",
        ])
        .arg(bin);
        c
    } else {
        Command::new(bin)
    }
}

impl PgServer {
    /// Initialises and starts a server; waits until it accepts connections.
    pub fn start() -> Result<Self, String> {
        Self::start_inner(None, Tls::Off)
    }

    /// Starts a server that also accepts TLS, with a certificate for `localhost` and
    /// 127.0.0.1 from a fresh test CA; returns the server and that CA (PEM).
    pub fn start_tls() -> Result<(Self, String), String> {
        let (ca, server_files, _) = test_certificates()?;
        let server = Self::start_inner(Some(server_files), Tls::On)?;
        Ok((server, ca))
    }

    /// Starts a server that accepts TCP clients only over TLS and only with a client
    /// certificate from the test CA whose CN is the user (`hostssl all all 127.0.0.1/32
    /// cert`); returns the server and the CA, client certificate and key.
    pub fn start_tls_client_auth() -> Result<(Self, ClientAuthFiles), String> {
        let (ca, server_files, (client_cert, client_key)) = test_certificates()?;
        let server = Self::start_inner(Some(server_files), Tls::ClientCert(&ca))?;
        Ok((
            server,
            ClientAuthFiles {
                ca,
                client_cert,
                client_key,
            },
        ))
    }

    fn start_inner(files: Option<(String, String)>, tls: Tls<'_>) -> Result<Self, String> {
        let bin = find_bin_dir()?;
        let dir = tempfile::Builder::new()
            .prefix("keygrid-pg")
            .tempdir()
            .map_err(|e| format!("temp dir: {e}"))?;
        if let Some((cert, key)) = &files {
            use std::os::unix::fs::PermissionsExt;
            std::fs::write(dir.path().join("server.crt"), cert).map_err(|e| format!("{e}"))?;
            let key_path = dir.path().join("server.key");
            std::fs::write(&key_path, key).map_err(|e| format!("{e}"))?;
            std::fs::set_permissions(&key_path, std::fs::Permissions::from_mode(0o600))
                .map_err(|e| format!("{e}"))?;
        }
        let data = dir.path().join("data");
        // SAFETY: geteuid has no preconditions and cannot fail.
        if unsafe { libc::geteuid() } == 0 {
            let st = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(dir.path())
                .status()
                .map_err(|e| format!("chown: {e}"))?;
            if !st.success() {
                return Err("cannot give the temp dir to the postgres user".into());
            }
        }
        let out = as_server_user(&bin.join("initdb"))
            .arg("-D")
            .arg(&data)
            .args(["-U", "keygrid", "--auth=trust", "-E", "UTF8", "--no-sync"])
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("initdb: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "initdb failed: {}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        if let Tls::ClientCert(ca) = tls {
            // The CA the server checks client certificates against; the rules replace
            // initdb's trust-everything pg_hba.conf.
            std::fs::write(dir.path().join("client-ca.crt"), ca.as_bytes())
                .map_err(|e| format!("{e}"))?;
            std::fs::write(
                data.join("pg_hba.conf"),
                "local all all trust\nhostssl all all 127.0.0.1/32 cert\n",
            )
            .map_err(|e| format!("pg_hba.conf: {e}"))?;
        }
        let port = free_port()?;
        let mode = tls.mode();
        let child = spawn_server(&bin, dir.path(), port, mode)?;
        let server = PgServer {
            dir,
            port,
            child,
            tls: mode,
        };
        server.wait_ready()?;
        Ok(server)
    }

    fn wait_ready(&self) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                // Accepting TCP is not yet accepting queries; try a real connection.
                if self.connect_check("postgres").is_ok() {
                    return Ok(());
                }
            }
            if Instant::now() > deadline {
                let log = std::fs::read_to_string(self.dir.path().join("postgres.log"))
                    .unwrap_or_default();
                return Err(format!("PostgreSQL did not start within 30 s: {log}"));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Stops the server (fast shutdown, every connection dropped) and starts it again on
    /// the same port and data: what a failover or maintenance restart looks like to core.
    pub fn restart(&mut self) -> Result<(), String> {
        self.stop();
        self.child = spawn_server(&find_bin_dir()?, self.dir.path(), self.port, self.tls)?;
        self.wait_ready()
    }

    fn stop(&mut self) {
        // SIGINT: PostgreSQL's "fast shutdown". We started this process; stop it by its id.
        // SAFETY: kill has no memory-safety preconditions.
        unsafe {
            libc::kill(self.child.id() as libc::pid_t, libc::SIGINT);
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Connects over the Unix socket, which every mode leaves open to the test user.
    fn connect_check(&self, db: &str) -> Result<(), String> {
        let mut c = self.config(db);
        c.host_path(self.dir.path());
        crate::store::sql::PgPool::connect(c, 1)
            .map(drop)
            .map_err(|e| e.to_string())
    }

    /// The directory holding the server's Unix socket (`.s.PGSQL.<port>`).
    pub fn socket_dir(&self) -> &Path {
        self.dir.path()
    }

    /// The TCP port the server listens on (127.0.0.1).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// A connection URL for database `db`.
    pub fn url(&self, db: &str) -> String {
        format!("postgres://keygrid@127.0.0.1:{}/{db}", self.port)
    }

    /// Connection settings for database `db`.
    pub fn config(&self, db: &str) -> tokio_postgres::Config {
        let mut c = tokio_postgres::Config::new();
        c.host("127.0.0.1")
            .port(self.port)
            .user("keygrid")
            .dbname(db);
        c
    }

    /// Creates an empty database.
    pub fn create_database(&self, name: &str) -> Result<(), String> {
        let bin = find_bin_dir()?;
        let out = Command::new(bin.join("createdb"))
            .arg("-h")
            .arg(self.dir.path())
            .args(["-p", &self.port.to_string(), "-U", "keygrid", name])
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("createdb: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "createdb {name} failed: {}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        Ok(())
    }

    /// Runs SQL with `psql` (tests use it to tamper with the audit log behind the store's
    /// back).
    pub fn psql(&self, db: &str, sql: &str) -> Result<String, String> {
        let bin = find_bin_dir()?;
        let out = Command::new(bin.join("psql"))
            .arg("-h")
            .arg(self.dir.path())
            .args(["-p", &self.port.to_string(), "-U", "keygrid", "-d", db])
            .args(["-v", "ON_ERROR_STOP=1", "-At", "-c", sql])
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("psql: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "psql failed: {}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

/// A fresh test CA (PEM), a server certificate and key for `localhost` and 127.0.0.1, and
/// a client certificate and key with CN `keygrid`, all signed by that CA.
#[allow(clippy::type_complexity)]
fn test_certificates() -> Result<(String, (String, String), (String, String)), String> {
    let err = |e: rcgen::Error| format!("test certificates: {e}");
    let ca_key = rcgen::KeyPair::generate().map_err(err)?;
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).map_err(err)?;
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "keygrid test PostgreSQL CA");
    let ca_cert = ca_params.self_signed(&ca_key).map_err(err)?;
    let ca = rcgen::Issuer::new(ca_params, ca_key);
    let key = rcgen::KeyPair::generate().map_err(err)?;
    let params =
        rcgen::CertificateParams::new(vec!["localhost".into(), "127.0.0.1".into()]).map_err(err)?;
    let cert = params.signed_by(&key, &ca).map_err(err)?;
    let client_key = rcgen::KeyPair::generate().map_err(err)?;
    let mut client = rcgen::CertificateParams::new(Vec::<String>::new()).map_err(err)?;
    client
        .distinguished_name
        .push(rcgen::DnType::CommonName, "keygrid");
    client.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    let client_cert = client.signed_by(&client_key, &ca).map_err(err)?;
    Ok((
        ca_cert.pem(),
        (cert.pem(), key.serialize_pem()),
        (client_cert.pem(), client_key.serialize_pem()),
    ))
}

impl Drop for PgServer {
    fn drop(&mut self) {
        self.stop();
    }
}

fn spawn_server(bin: &Path, dir: &Path, port: u16, tls: TlsMode) -> Result<Child, String> {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("postgres.log"))
        .map_err(|e| format!("log file: {e}"))?;
    let log2 = log.try_clone().map_err(|e| format!("log file: {e}"))?;
    as_server_user(&bin.join("postgres"))
        .arg("-D")
        .arg(dir.join("data"))
        .args(["-p", &port.to_string(), "-h", "127.0.0.1", "-k"])
        .arg(dir)
        .args(["-c", "fsync=on", "-c", "max_connections=200"])
        .args(match tls {
            TlsMode::Off => Vec::new(),
            TlsMode::On | TlsMode::ClientCert => vec![
                "-c".to_string(),
                "ssl=on".to_string(),
                "-c".to_string(),
                format!("ssl_cert_file={}", dir.join("server.crt").display()),
                "-c".to_string(),
                format!("ssl_key_file={}", dir.join("server.key").display()),
            ],
        })
        .args(if tls == TlsMode::ClientCert {
            vec![
                "-c".to_string(),
                format!("ssl_ca_file={}", dir.join("client-ca.crt").display()),
            ]
        } else {
            Vec::new()
        })
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log2)
        .spawn()
        .map_err(|e| format!("postgres: {e}"))
}
