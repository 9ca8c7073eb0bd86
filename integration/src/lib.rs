//! Test harness for KeyGrid's end-to-end tests: finds the built binaries and the external
//! tools the tests drive, and runs `keygrid dev` in a private directory.
//!
//! A missing tool is a test failure with an install hint, never a skip: these tests are
//! the proof that KeyGrid works with real components.

pub mod spire;
pub mod swtpm;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Directory holding the workspace's built binaries (`keygrid`, `keygrid-agent`).
///
/// `KEYGRID_BIN_DIR` overrides; otherwise the directory above the test executable's
/// `deps/` folder, which is where cargo puts the workspace binaries.
pub fn bin_dir() -> PathBuf {
    if let Ok(dir) = std::env::var("KEYGRID_BIN_DIR") {
        return PathBuf::from(dir);
    }
    let exe = std::env::current_exe().expect("test executable path");
    exe.parent()
        .and_then(Path::parent)
        .expect("test executable lives in target/<profile>/deps")
        .to_path_buf()
}

/// Path of a workspace binary; fails the test if it has not been built.
pub fn bin(name: &str) -> PathBuf {
    let path = bin_dir().join(name);
    assert!(
        path.exists(),
        "{} not found: build the workspace binaries first (`cargo build --workspace --bins`, which `make test` does)",
        path.display()
    );
    path
}

/// Path of a SPIRE binary built by `scripts/build-spire.sh`; fails the test if missing.
pub fn spire_tool(name: &str) -> PathBuf {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../tools/bin")
        .join(name);
    assert!(
        path.exists(),
        "{} is missing: run scripts/build-spire.sh (make test does)",
        path.display()
    );
    path
}

/// The uid this test runs as (the identity `keygrid dev` registers).
pub fn uid() -> u32 {
    // SAFETY: getuid(2) takes no arguments, touches no memory and cannot fail.
    unsafe { libc::getuid() }
}

/// A gRPC channel over a Unix socket (the authority is a dummy, as SPIFFE clients use).
pub async fn unix_channel(socket: &Path) -> tonic::transport::Channel {
    let path = socket.to_path_buf();
    tonic::transport::Endpoint::try_from("http://localhost")
        .expect("static URI")
        .connect_with_connector(tower::service_fn(move |_: tonic::transport::Uri| {
            let path = path.clone();
            async move {
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(
                    tokio::net::UnixStream::connect(path).await?,
                ))
            }
        }))
        .await
        .expect("connect to the Unix socket")
}

/// A raw Workload API client (generated from the SPIFFE proto) over an agent's socket, for
/// tests that need exact status codes and every stream message.
pub async fn workload_client(
    socket: &Path,
) -> keygrid_proto::workload::spiffe_workload_api_client::SpiffeWorkloadApiClient<
    tonic::transport::Channel,
> {
    keygrid_proto::workload::spiffe_workload_api_client::SpiffeWorkloadApiClient::new(
        unix_channel(socket).await,
    )
}

/// Wraps a Workload API request with the `workload.spiffe.io: true` security header.
pub fn with_header<T>(msg: T) -> tonic::Request<T> {
    let mut req = tonic::Request::new(msg);
    req.metadata_mut().insert(
        "workload.spiffe.io",
        tonic::metadata::MetadataValue::from_static("true"),
    );
    req
}

/// A child process (etcd, kube-apiserver, a rotation loop) that is killed and reaped when
/// the test ends, however it ends, so no server outlives its test.
pub struct KillOnDrop(pub Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Path of an external tool on PATH; fails the test with an install hint if it is missing.
pub fn require_tool(name: &str, install_hint: &str) -> PathBuf {
    let path = std::env::var_os("PATH").map(|p| {
        std::env::split_paths(&p)
            .map(|d| d.join(name))
            .find(|p| p.is_file())
    });
    match path.flatten() {
        Some(p) => p,
        None => panic!("required tool `{name}` is not installed: {install_hint}"),
    }
}

/// The SoftHSM2 PKCS#11 module; fails the test if SoftHSM2 is not installed.
pub fn softhsm_module() -> PathBuf {
    let module = PathBuf::from("/usr/lib/softhsm/libsofthsm2.so");
    assert!(
        module.exists(),
        "SoftHSM2 is not installed ({} missing): run scripts/install-deps.sh",
        module.display()
    );
    module
}

/// A free TCP port on loopback (bound then released; good enough for tests).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind an ephemeral port")
}

/// Waits until `check` is true, failing the test with `what` after `timeout`.
pub fn wait_until(what: &str, timeout: Duration, mut check: impl FnMut() -> bool) {
    let start = Instant::now();
    while !check() {
        assert!(
            start.elapsed() < timeout,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Runs a command and returns its output; fails the test if it cannot be started.
pub fn run(cmd: &mut Command) -> std::process::Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
}

/// A `keygrid dev` process (core + agent + SoftHSM2 token) in its own data directory.
pub struct DevEnv {
    /// The data directory (kept alive for the test's duration).
    pub dir: tempfile::TempDir,
    /// Address of core's node API.
    pub listen: String,
    /// Trust domain.
    pub trust_domain: String,
    child: Option<Child>,
}

impl DevEnv {
    /// Starts `keygrid dev` with the given X.509-SVID lifetime and waits for the agent socket.
    pub fn start(svid_ttl: &str) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        Self::start_in(dir, svid_ttl)
    }

    /// Starts `keygrid dev` with extra command-line arguments (e.g. `--jwt-svid-ttl 6s`).
    pub fn start_with(svid_ttl: &str, extra_args: &[&str]) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        Self::start_in_with(dir, svid_ttl, extra_args)
    }

    /// Starts `keygrid dev` in an existing data directory (to test restarts).
    pub fn start_in(dir: tempfile::TempDir, svid_ttl: &str) -> Self {
        Self::start_with_args(dir, svid_ttl, &[])
    }

    /// Starts `keygrid dev` in `dir` with extra command-line arguments.
    pub fn start_in_with(dir: tempfile::TempDir, svid_ttl: &str, extra_args: &[&str]) -> Self {
        let extra: Vec<String> = extra_args.iter().map(|a| a.to_string()).collect();
        Self::start_with_args(dir, svid_ttl, &extra)
    }

    /// Starts `keygrid dev` with extra command-line arguments (e.g. `--http-listen`).
    pub fn start_with_args(dir: tempfile::TempDir, svid_ttl: &str, extra: &[String]) -> Self {
        let listen = format!("127.0.0.1:{}", free_port());
        Self::start_at_with_args(dir, &listen, svid_ttl, extra)
    }

    /// Starts `keygrid dev` with the ExternalJWTSigner and the HTTP listener on.
    /// `control_plane` holds further `[control_plane]` lines (issuer, rotation, ...).
    /// Returns the environment, the signer's socket and the HTTP listener's address, once
    /// the socket exists.
    pub fn start_with_sa_signer(control_plane: &str) -> (Self, PathBuf, String) {
        let dir = tempfile::tempdir().expect("temp dir");
        let socket = dir.path().join("sa-signer.sock");
        let http = format!("127.0.0.1:{}", free_port());
        let extra = dir.path().join("extra.toml");
        std::fs::write(
            &extra,
            format!(
                "[control_plane]\nsigner_socket = {:?}\n{control_plane}\n",
                socket.display().to_string()
            ),
        )
        .expect("write the extra core configuration");
        let env = Self::start_with_args(
            dir,
            "5m",
            &[
                "--core-config-extra".into(),
                extra.display().to_string(),
                "--http-listen".into(),
                http.clone(),
            ],
        );
        wait_until("the signer socket", Duration::from_secs(30), || {
            socket.exists()
        });
        (env, socket, http)
    }

    /// Starts `keygrid dev` in `dir` with core listening on `listen` (to restart core at
    /// the address its clients are configured with).
    pub fn start_at(dir: tempfile::TempDir, listen: &str, svid_ttl: &str) -> Self {
        Self::start_at_with_args(dir, listen, svid_ttl, &[])
    }

    /// The general form of the constructors above.
    pub fn start_at_with_args(
        dir: tempfile::TempDir,
        listen: &str,
        svid_ttl: &str,
        extra: &[String],
    ) -> Self {
        softhsm_module();
        let listen = listen.to_string();
        let trust_domain = "example.org".to_string();
        let log = std::fs::File::create(dir.path().join("dev.log")).expect("log file");
        let child = Command::new(bin("keygrid"))
            .arg("dev")
            .arg("--data-dir")
            .arg(dir.path())
            .arg("--listen")
            .arg(&listen)
            .arg("--trust-domain")
            .arg(&trust_domain)
            .arg("--svid-ttl")
            .arg(svid_ttl)
            .args(extra)
            .env("KEYGRID_AGENT_BIN", bin("keygrid-agent"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log file"))
            .stderr(log)
            .spawn()
            .expect("start keygrid dev");
        let mut env = DevEnv {
            dir,
            listen,
            trust_domain,
            child: Some(child),
        };
        let socket = env.socket();
        let start = Instant::now();
        while !socket.exists() {
            if let Some(Ok(Some(status))) = env.child.as_mut().map(|c| c.try_wait()) {
                panic!("keygrid dev exited early ({status}):\n{}", env.log());
            }
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "keygrid dev did not start its agent within 60s:\n{}",
                env.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        env
    }

    /// The agent's Workload API socket.
    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("agent/workload.sock")
    }

    /// The `SPIFFE_ENDPOINT_SOCKET` value for the agent.
    pub fn endpoint(&self) -> String {
        format!("unix://{}", self.socket().display())
    }

    /// Core's admin socket.
    pub fn admin_socket(&self) -> PathBuf {
        self.dir.path().join("admin.sock")
    }

    /// The trust bundle core published (PEM).
    pub fn bundle_pem(&self) -> PathBuf {
        self.dir.path().join("bundle.pem")
    }

    /// A read-only connection to this core's SQLite store, for tests that check what was
    /// (and was not) recorded; waits up to 5 s for core's writes.
    pub fn store_db(&self) -> rusqlite::Connection {
        let db = rusqlite::Connection::open_with_flags(
            self.dir.path().join("keygrid.db"),
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
        )
        .expect("open the dev store read-only");
        db.busy_timeout(Duration::from_secs(5))
            .expect("set the store busy timeout");
        db
    }

    /// Policy refusals in the audit log under `rule` whose detail contains `detail`.
    pub fn policy_refusals(&self, rule: &str, detail: &str) -> i64 {
        self.store_db()
            .query_row(
                "SELECT COUNT(*) FROM audit_log WHERE kind = 'policy_refusal' AND rule = ?1 \
                 AND instr(detail, ?2) > 0",
                rusqlite::params![rule, detail],
                |r| r.get(0),
            )
            .expect("count policy refusals")
    }

    /// Everything `keygrid dev` logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("dev.log")).unwrap_or_default()
    }

    /// Runs the `keygrid` CLI against this environment's admin socket.
    pub fn cli(&self, args: &[&str]) -> std::process::Output {
        run(Command::new(bin("keygrid"))
            .args(args)
            .arg("--socket")
            .arg(self.admin_socket()))
    }

    /// Creates a join token for a new agent with SPIFFE ID `agent_id` (via the CLI).
    pub fn create_join_token(&self, agent_id: &str) -> String {
        let out = self.cli(&["token", "create", "--agent-id", agent_id]);
        assert!(
            out.status.success(),
            "token create failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// Stops `keygrid dev` with SIGTERM (as Ctrl-C would) and returns its exit status and
    /// the data directory.
    pub fn stop(mut self) -> (std::process::ExitStatus, tempfile::TempDir) {
        let status = self.terminate();
        let dir = std::mem::replace(&mut self.dir, tempfile::tempdir().expect("temp dir"));
        (status, dir)
    }

    fn terminate(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("running child");
        // SAFETY: kill(2) on a child we spawned and have not reaped, with a constant signal.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let start = Instant::now();
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return status;
            }
            if start.elapsed() > Duration::from_secs(20) {
                let _ = child.kill();
                return child.wait().expect("wait for killed child");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for DevEnv {
    fn drop(&mut self) {
        if self.child.is_some() {
            self.terminate();
        }
    }
}

/// Builds the go-spiffe test client (`integration/go/spiffe-client`) and returns it.
pub fn go_spiffe_client() -> PathBuf {
    go_program("spiffe-client")
}

/// Builds the SDS test client on go-control-plane (`integration/go/sds-client`).
pub fn go_sds_client() -> PathBuf {
    go_program("sds-client")
}

/// Builds the Go program in `integration/go/<name>` with `go build`, once per test
/// process, and returns the binary. Go fetches its modules from the module proxy on first
/// use.
pub fn go_program(name: &str) -> PathBuf {
    static BUILT: std::sync::Mutex<Vec<(String, PathBuf)>> = std::sync::Mutex::new(Vec::new());
    let mut built = BUILT.lock().unwrap_or_else(|p| p.into_inner());
    if let Some((_, p)) = built.iter().find(|(n, _)| n == name) {
        return p.clone();
    }
    let go = require_tool(
        "go",
        "install Go (https://go.dev/doc/install; scripts/install-deps.sh test does it)",
    );
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("go").join(name);
    let out_dir = std::env::temp_dir().join(format!("keygrid-go-{}", std::process::id()));
    std::fs::create_dir_all(&out_dir).expect("create go output dir");
    let out = out_dir.join(name);
    let result = run(Command::new(go)
        .current_dir(&src)
        .env("GOFLAGS", "-mod=mod")
        .arg("build")
        .arg("-o")
        .arg(&out)
        .arg("."));
    assert!(
        result.status.success(),
        "go build of {} failed:\n{}",
        src.display(),
        String::from_utf8_lossy(&result.stderr)
    );
    built.push((name.to_string(), out.clone()));
    out
}

/// A `keygrid-agent` started by a test with its own configuration, next to a `DevEnv`'s
/// core (e.g. with the Kubernetes attestor on, or through a proxy that can be cut).
pub struct Agent {
    /// Its directory (config, state, socket, log).
    pub dir: tempfile::TempDir,
    child: Option<Child>,
}

impl Agent {
    /// Starts an agent for `agent_id` against core at `server_address` (`host:port`),
    /// with `extra_toml` appended to its configuration, and waits for its socket.
    pub fn start(env: &DevEnv, agent_id: &str, server_address: &str, extra_toml: &str) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let token_file = dir.path().join("token");
        std::fs::write(&token_file, env.create_join_token(agent_id)).expect("write token");
        let cfg = dir.path().join("agent.toml");
        std::fs::write(
            &cfg,
            format!(
                "trust_domain = \"{}\"\nserver_address = \"https://{}\"\nserver_name = \"localhost\"\n\
                 trust_bundle_path = {:?}\njoin_token_file = {:?}\ndata_dir = {:?}\nsocket_path = {:?}\n\
                 sync_interval = \"500ms\"\n{}",
                env.trust_domain,
                server_address,
                env.bundle_pem().display().to_string(),
                token_file.display().to_string(),
                dir.path().join("state").display().to_string(),
                dir.path().join("agent.sock").display().to_string(),
                extra_toml,
            ),
        )
        .expect("write agent config");
        let log = std::fs::File::create(dir.path().join("agent.log")).expect("log file");
        let child = Command::new(bin("keygrid-agent"))
            .arg("run")
            .arg("--config")
            .arg(&cfg)
            .env("KEYGRID_LOG", "info,keygrid_workload_api=debug")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log file"))
            .stderr(log)
            .spawn()
            .expect("start keygrid-agent");
        let mut agent = Agent {
            dir,
            child: Some(child),
        };
        let socket = agent.socket();
        let start = Instant::now();
        while !socket.exists() {
            if let Some(Ok(Some(status))) = agent.child.as_mut().map(|c| c.try_wait()) {
                panic!("keygrid-agent exited early ({status}):\n{}", agent.log());
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "keygrid-agent did not open its socket within 30s:\n{}",
                agent.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        agent
    }

    /// The agent's Workload API socket.
    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("agent.sock")
    }

    /// The `SPIFFE_ENDPOINT_SOCKET` value for this agent.
    pub fn endpoint(&self) -> String {
        format!("unix://{}", self.socket().display())
    }

    /// Everything the agent logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("agent.log")).unwrap_or_default()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SAFETY: kill(2) on a child we spawned and have not reaped, with a constant signal.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            let start = Instant::now();
            while start.elapsed() < Duration::from_secs(10) {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A TCP forwarder on loopback that a test can cut and restore, to put a real network
/// outage between an agent and core.
pub struct TcpProxy {
    /// The port it listens on (stable across `stop`/`start`).
    pub port: u16,
    target: String,
    running: Option<ProxyRun>,
}

struct ProxyRun {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    conns: std::sync::Arc<std::sync::Mutex<Vec<std::net::TcpStream>>>,
    thread: std::thread::JoinHandle<()>,
}

impl TcpProxy {
    /// Starts forwarding a free loopback port to `target` (`host:port`).
    pub fn start(target: &str) -> Self {
        let mut p = TcpProxy {
            port: free_port(),
            target: target.to_string(),
            running: None,
        };
        p.resume();
        p
    }

    /// `127.0.0.1:<port>`.
    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Stops listening and cuts every open connection.
    pub fn cut(&mut self) {
        if let Some(run) = self.running.take() {
            run.stop.store(true, std::sync::atomic::Ordering::SeqCst);
            let _ = run.thread.join();
            for c in run
                .conns
                .lock()
                .map(|mut v| std::mem::take(&mut *v))
                .unwrap_or_default()
            {
                let _ = c.shutdown(std::net::Shutdown::Both);
            }
        }
    }

    /// Listens again on the same port.
    pub fn resume(&mut self) {
        use std::sync::atomic::{AtomicBool, Ordering};
        use std::sync::{Arc, Mutex};
        if self.running.is_some() {
            return;
        }
        let listener = {
            let start = Instant::now();
            loop {
                match TcpListener::bind(("127.0.0.1", self.port)) {
                    Ok(l) => break l,
                    Err(e) => {
                        assert!(
                            start.elapsed() < Duration::from_secs(10),
                            "rebind proxy port: {e}"
                        );
                        std::thread::sleep(Duration::from_millis(50));
                    }
                }
            }
        };
        listener
            .set_nonblocking(true)
            .expect("nonblocking listener");
        let stop = Arc::new(AtomicBool::new(false));
        let conns: Arc<Mutex<Vec<std::net::TcpStream>>> = Arc::new(Mutex::new(Vec::new()));
        let (stop2, conns2, target) = (stop.clone(), conns.clone(), self.target.clone());
        let thread = std::thread::spawn(move || {
            while !stop2.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((client, _)) => {
                        let _ = client.set_nonblocking(false);
                        let Ok(server) = std::net::TcpStream::connect(&target) else {
                            continue;
                        };
                        for s in [&client, &server] {
                            if let (Ok(c), Ok(mut v)) = (s.try_clone(), conns2.lock()) {
                                v.push(c);
                            }
                        }
                        for (mut from, mut to) in [
                            (client.try_clone(), server.try_clone()),
                            (server.try_clone(), client.try_clone()),
                        ]
                        .into_iter()
                        .filter_map(|(a, b)| Some((a.ok()?, b.ok()?)))
                        {
                            std::thread::spawn(move || {
                                let _ = std::io::copy(&mut from, &mut to);
                                let _ = to.shutdown(std::net::Shutdown::Write);
                            });
                        }
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        });
        self.running = Some(ProxyRun {
            stop,
            conns,
            thread,
        });
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.cut();
    }
}
