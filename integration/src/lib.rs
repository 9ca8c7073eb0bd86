//! Test harness for KeyGrid's end-to-end tests: finds the built binaries and the external
//! tools the tests drive, and runs `keygrid dev` in a private directory.
//!
//! A missing tool is a test failure with an install hint, never a skip: these tests are
//! the proof that KeyGrid works with real components.

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

    /// Starts `keygrid dev` in an existing data directory (to test restarts).
    pub fn start_in(dir: tempfile::TempDir, svid_ttl: &str) -> Self {
        Self::start_with_args(dir, svid_ttl, &[])
    }

    /// Starts `keygrid dev` with extra command-line arguments (e.g. `--http-listen`).
    pub fn start_with_args(dir: tempfile::TempDir, svid_ttl: &str, extra: &[String]) -> Self {
        let listen = format!("127.0.0.1:{}", free_port());
        Self::start_at_with_args(dir, &listen, svid_ttl, extra)
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
