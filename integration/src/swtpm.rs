//! swtpm harness: a private swtpm local CA, TPM state provisioned with an EK certificate by
//! `swtpm_setup`, and a `swtpm socket` process on free loopback ports.
//!
//! Everything lives in the caller's temp directory: the harness writes its own copies of
//! `swtpm_setup.conf` and `swtpm-localca.conf` so tests never touch `/var/lib/swtpm-localca`.

use crate::{free_port, require_tool, wait_until};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const INSTALL_HINT: &str = "run scripts/install-deps.sh (Debian packages swtpm and swtpm-tools)";

/// A private swtpm local CA (root + issuing CA created by `swtpm_localca` on first use).
pub struct LocalCa {
    dir: PathBuf,
    setup_conf: PathBuf,
}

impl LocalCa {
    /// Writes the configuration of a local CA whose state lives in `dir`.
    pub fn new(dir: &Path) -> Self {
        let localca = require_tool("swtpm_localca", INSTALL_HINT);
        let state = dir.join("ca");
        std::fs::create_dir_all(&state).expect("create CA dir");
        let localca_conf = dir.join("swtpm-localca.conf");
        std::fs::write(
            &localca_conf,
            format!(
                "statedir = {s}\nsigningkey = {s}/signkey.pem\nissuercert = {s}/issuercert.pem\ncertserial = {s}/certserial\n",
                s = state.display()
            ),
        )
        .expect("write swtpm-localca.conf");
        let options = dir.join("swtpm-localca.options");
        std::fs::write(
            &options,
            "--platform-manufacturer KeyGrid\n--platform-version 2.1\n--platform-model swtpm-test\n",
        )
        .expect("write swtpm-localca.options");
        let setup_conf = dir.join("swtpm_setup.conf");
        std::fs::write(
            &setup_conf,
            format!(
                "create_certs_tool = {}\ncreate_certs_tool_config = {}\ncreate_certs_tool_options = {}\nactive_pcr_banks = sha256\n",
                localca.display(),
                localca_conf.display(),
                options.display()
            ),
        )
        .expect("write swtpm_setup.conf");
        LocalCa {
            dir: state,
            setup_conf,
        }
    }

    /// The CA's self-signed root certificate (exists after the first provisioning).
    pub fn root_cert(&self) -> PathBuf {
        self.dir.join("swtpm-localca-rootca-cert.pem")
    }

    /// The issuing (intermediate) CA certificate that signs EK certificates.
    pub fn issuer_cert(&self) -> PathBuf {
        self.dir.join("issuercert.pem")
    }
}

/// A running `swtpm socket` TPM 2.0, killed on drop.
pub struct Swtpm {
    /// The TPM's server (command) port on 127.0.0.1.
    pub port: u16,
    child: Child,
    log: PathBuf,
}

impl Swtpm {
    /// Provisions `state_dir` with `swtpm_setup --tpm2 --create-ek-cert --create-platform-cert`
    /// (EK certificate signed by `ca`) and starts swtpm on it.
    pub fn provision_and_start(ca: &LocalCa, state_dir: &Path) -> Self {
        let setup = require_tool("swtpm_setup", INSTALL_HINT);
        require_tool("swtpm", INSTALL_HINT);
        std::fs::create_dir_all(state_dir).expect("create TPM state dir");
        let out = Command::new(setup)
            .arg("--tpm2")
            .arg("--tpmstate")
            .arg(state_dir)
            .args([
                "--create-ek-cert",
                "--create-platform-cert",
                "--overwrite",
                "--config",
            ])
            .arg(&ca.setup_conf)
            .output()
            .expect("run swtpm_setup");
        assert!(
            out.status.success(),
            "swtpm_setup failed ({}):\n{}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        Self::start(state_dir)
    }

    /// Starts swtpm on an already provisioned state directory.
    ///
    /// Ports are picked free, but another process may take them before swtpm binds; swtpm
    /// then exits, and this retries on new ports. Ready means: swtpm wrote its pid file (it
    /// does so after binding), is still running, and its control port answers.
    pub fn start(state_dir: &Path) -> Self {
        let swtpm = require_tool("swtpm", INSTALL_HINT);
        let log = state_dir.join("swtpm.log");
        let pid_file = state_dir.join("swtpm.pid");
        for _attempt in 0..5 {
            let port = loop {
                let p = free_port();
                if p < u16::MAX && TcpListener::bind(("127.0.0.1", p + 1)).is_ok() {
                    break p;
                }
            };
            let _ = std::fs::remove_file(&pid_file);
            let child = Command::new(&swtpm)
                .args(["socket", "--tpm2", "--tpmstate"])
                .arg(format!("dir={}", state_dir.display()))
                .arg("--server")
                .arg(format!("type=tcp,port={port},bindaddr=127.0.0.1"))
                .arg("--ctrl")
                .arg(format!("type=tcp,port={},bindaddr=127.0.0.1", port + 1))
                .args(["--flags", "not-need-init,startup-clear", "--log"])
                .arg(format!("file={}", log.display()))
                .arg("--pid")
                .arg(format!("file={}", pid_file.display()))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("start swtpm");
            let mut tpm = Swtpm {
                port,
                child,
                log: log.clone(),
            };
            let pid = tpm.child.id().to_string();
            let mut exited = false;
            wait_until("swtpm to listen", Duration::from_secs(10), || {
                if matches!(tpm.child.try_wait(), Ok(Some(_))) {
                    exited = true;
                    return true;
                }
                std::fs::read_to_string(&pid_file).is_ok_and(|p| p.trim() == pid)
                    && TcpStream::connect(("127.0.0.1", port + 1)).is_ok()
            });
            if !exited && matches!(tpm.child.try_wait(), Ok(None)) {
                return tpm;
            }
        }
        panic!(
            "swtpm did not start after 5 attempts:\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
    }

    /// The TCTI string tss-esapi and tpm2-tools use to reach this TPM.
    pub fn tcti(&self) -> String {
        format!("swtpm:host=127.0.0.1,port={}", self.port)
    }

    /// swtpm's log so far (for failure messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Swtpm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
