//! Real SPIRE v1.13.3 server and agent processes for tests and benchmarks.
//!
//! Each instance lives in its own temp directory with a SQLite datastore, in-memory keys
//! and join-token node attestation; callers add what they test (an UpstreamAuthority
//! plugin, SVID lifetimes) through extra configuration lines. Processes are killed on drop.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::{free_port, run, spire_tool};

/// A running `spire-server`.
pub struct SpireServer {
    /// Its directory: `server.conf`, `server.log`, `api.sock`, `data/`.
    pub dir: tempfile::TempDir,
    /// The port agents connect to.
    pub port: u16,
    /// Its trust domain.
    pub trust_domain: String,
    child: Option<Child>,
}

impl SpireServer {
    /// Starts a server for `trust_domain`. `server_extra` is added inside the `server {}`
    /// block (e.g. `default_x509_svid_ttl = "30s"`), `plugins_extra` inside `plugins {}`.
    pub fn start(trust_domain: &str, server_extra: &str, plugins_extra: &str) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let port = free_port();
        let conf = format!(
            r#"server {{
  bind_address = "127.0.0.1"
  bind_port = "{port}"
  socket_path = "{d}/api.sock"
  trust_domain = "{trust_domain}"
  data_dir = "{d}/data"
  log_level = "DEBUG"
  {server_extra}
}}
plugins {{
  DataStore "sql" {{
    plugin_data {{
      database_type = "sqlite3"
      connection_string = "{d}/data/datastore.sqlite3"
    }}
  }}
  KeyManager "memory" {{
    plugin_data {{}}
  }}
  NodeAttestor "join_token" {{
    plugin_data {{}}
  }}
  {plugins_extra}
}}
"#,
            d = dir.path().display(),
        );
        std::fs::write(dir.path().join("server.conf"), conf).expect("write server.conf");
        let log = std::fs::File::create(dir.path().join("server.log")).expect("server.log");
        let child = Command::new(spire_tool("spire-server"))
            .arg("run")
            .arg("-config")
            .arg(dir.path().join("server.conf"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log handle"))
            .stderr(log)
            .spawn()
            .expect("start spire-server");
        SpireServer {
            dir,
            port,
            trust_domain: trust_domain.to_string(),
            child: Some(child),
        }
    }

    /// Everything the server logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }

    /// Whether the server process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }

    /// The admin API socket.
    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("api.sock")
    }

    /// Runs a `spire-server` subcommand against this server's admin socket.
    pub fn cli(&self, args: &[&str]) -> std::process::Output {
        run(Command::new(spire_tool("spire-server"))
            .args(args)
            .arg("-socketPath")
            .arg(self.socket()))
    }

    /// Waits until `spire-server healthcheck` passes; panics with the log if the server
    /// exits or takes over a minute.
    pub fn wait_ready(&mut self) {
        let start = Instant::now();
        loop {
            if self.cli(&["healthcheck"]).status.success() {
                return;
            }
            if let Some(Ok(Some(status))) = self.child.as_mut().map(|c| c.try_wait()) {
                panic!("spire-server exited ({status}):\n{}", self.log());
            }
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "spire-server not healthy within 60s:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Waits for the server to exit on its own and returns its status and log.
    pub fn wait_exit(&mut self) -> (std::process::ExitStatus, String) {
        let start = Instant::now();
        loop {
            let status = match self.child.as_mut() {
                Some(child) => child.try_wait().expect("wait for spire-server"),
                None => panic!("spire-server already reaped"),
            };
            if let Some(status) = status {
                self.child = None;
                return (status, self.log());
            }
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "spire-server still running after 60s:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The roots in `spire-server bundle show` (PEM).
    pub fn bundle_pem(&self) -> String {
        let out = self.cli(&["bundle", "show"]);
        assert!(out.status.success(), "bundle show: {out:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// A join token for an agent that will get `agent_id`.
    pub fn join_token(&self, agent_id: &str) -> String {
        let out = self.cli(&["token", "generate", "-spiffeID", agent_id]);
        assert!(out.status.success(), "token generate: {out:?}");
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .trim_start_matches("Token:")
            .trim()
            .to_string()
    }

    /// Registers `spiffe_id` under `parent_id` for `selector`, plus any extra
    /// `spire-server entry create` flags.
    pub fn create_entry(&self, parent_id: &str, spiffe_id: &str, selector: &str, extra: &[&str]) {
        let mut args = vec![
            "entry",
            "create",
            "-parentID",
            parent_id,
            "-spiffeID",
            spiffe_id,
            "-selector",
            selector,
        ];
        args.extend_from_slice(extra);
        let out = self.cli(&args);
        assert!(out.status.success(), "entry create: {out:?}");
    }
}

impl Drop for SpireServer {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A running `spire-agent` with the unix workload attestor.
pub struct SpireAgent {
    /// Its directory: `agent.conf`, `agent.log`, `workload.sock`, `data/`.
    pub dir: tempfile::TempDir,
    child: Child,
}

impl SpireAgent {
    /// Starts an agent that joins `server` with `token`, trusting `bootstrap_pem`.
    pub fn start(server: &SpireServer, token: &str, bootstrap_pem: &str) -> Self {
        Self::start_with(
            server,
            bootstrap_pem,
            &format!("join_token = \"{token}\""),
            "NodeAttestor \"join_token\" {\n    plugin_data {}\n  }",
        )
    }

    /// Starts an agent with `agent_extra` inside its `agent {}` block and
    /// `node_attestor` as its NodeAttestor plugin block.
    pub fn start_with(
        server: &SpireServer,
        bootstrap_pem: &str,
        agent_extra: &str,
        node_attestor: &str,
    ) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::write(dir.path().join("bootstrap.pem"), bootstrap_pem).expect("bootstrap");
        let conf = format!(
            r#"agent {{
  data_dir = "{d}/data"
  log_level = "DEBUG"
  server_address = "127.0.0.1"
  server_port = "{port}"
  socket_path = "{d}/workload.sock"
  trust_bundle_path = "{d}/bootstrap.pem"
  trust_domain = "{td}"
  {agent_extra}
}}
plugins {{
  {node_attestor}
  KeyManager "memory" {{
    plugin_data {{}}
  }}
  WorkloadAttestor "unix" {{
    plugin_data {{}}
  }}
}}
"#,
            d = dir.path().display(),
            port = server.port,
            td = server.trust_domain,
        );
        std::fs::write(dir.path().join("agent.conf"), conf).expect("write agent.conf");
        let log = std::fs::File::create(dir.path().join("agent.log")).expect("agent.log");
        let child = Command::new(spire_tool("spire-agent"))
            .arg("run")
            .arg("-config")
            .arg(dir.path().join("agent.conf"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log handle"))
            .stderr(log)
            .spawn()
            .expect("start spire-agent");
        SpireAgent { dir, child }
    }

    /// The Workload API socket.
    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("workload.sock")
    }

    /// The Workload API endpoint as `unix://<path>`.
    pub fn endpoint(&self) -> String {
        format!("unix://{}", self.socket().display())
    }

    /// The agent's process ID (for RSS readings).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether the agent process has exited (SPIRE agents exit when attestation fails).
    pub fn has_exited(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(Some(_)))
    }

    /// Everything the agent logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("agent.log")).unwrap_or_default()
    }
}

impl Drop for SpireAgent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
