//! The plugin binary as a process, driven the way go-plugin drives it: environment
//! cookie, handshake line on stdout, gRPC over the announced Unix socket, Shutdown.
//! (The proof against a real SPIRE server is in `integration/tests/spire_upstream.rs`.)

use std::io::{BufRead, BufReader, Read};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use hyper_util::rt::TokioIo;
use keygrid_proto::goplugin::{grpc_controller_client::GrpcControllerClient, Empty};
use keygrid_proto::spire::service::common::config::v1::{
    config_client::ConfigClient, ConfigureRequest, CoreConfiguration,
};
use keygrid_proto::spire::service::private::init::v1::{init_client::InitClient, InitRequest};
use tonic::transport::{Endpoint, Uri};

const BIN: &str = env!("CARGO_BIN_EXE_keygrid-upstream-authority");

#[test]
fn without_cookie_it_refuses_and_prints_nothing_on_stdout() {
    let out = Command::new(BIN)
        .env_remove("UpstreamAuthority")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty(), "stdout must stay clean");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not meant to be run directly"), "{err}");
}

#[test]
fn wrong_cookie_is_refused() {
    let out = Command::new(BIN)
        .env("UpstreamAuthority", "NodeAttestor")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty());
    assert!(String::from_utf8_lossy(&out.stderr).contains("UpstreamAuthority=\"NodeAttestor\""));
}

#[tokio::test]
async fn handshake_init_configure_and_shutdown() {
    let tmp = tempfile::tempdir().unwrap();
    let mut child = Command::new(BIN)
        .env("UpstreamAuthority", "UpstreamAuthority")
        .env("PLUGIN_PROTOCOL_VERSIONS", "1")
        .env("PLUGIN_UNIX_SOCKET_DIR", tmp.path())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    stdout.read_line(&mut line).unwrap();
    let parts: Vec<&str> = line.trim_end().split('|').collect();
    assert_eq!(parts.len(), 6, "{line:?}");
    assert_eq!(&parts[..3], &["1", "1", "unix"]);
    assert_eq!(parts[4], "grpc");
    let socket = PathBuf::from(parts[3]);
    assert!(
        socket.starts_with(tmp.path()),
        "socket in PLUGIN_UNIX_SOCKET_DIR"
    );

    let path = socket.clone();
    let channel = Endpoint::try_from("http://unused")
        .unwrap()
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let path = path.clone();
            async move {
                Ok::<_, std::io::Error>(TokioIo::new(tokio::net::UnixStream::connect(path).await?))
            }
        }))
        .await
        .unwrap();

    let names = InitClient::new(channel.clone())
        .init(InitRequest {
            host_service_names: vec!["spire.hostservice.common.metrics.v1.Metrics".into()],
        })
        .await
        .unwrap()
        .into_inner()
        .plugin_service_names;
    assert_eq!(
        names,
        vec![
            "spire.plugin.server.upstreamauthority.v1.UpstreamAuthority",
            "spire.service.common.config.v1.Config"
        ]
    );

    let mut config = ConfigClient::new(channel.clone());
    for (hcl, expect) in [
        ("core_address = ", "plugin_data:"),
        ("", "missing field `core_address`"),
        (
            "core_address = \"https://x:1\"\ntrust_bundle_path = \"/nonexistent\"\nclient_cert_path = \"/nonexistent\"\nclient_key_path = \"/nonexistent\"\n",
            "trust_bundle_path: cannot read /nonexistent",
        ),
    ] {
        let st = config
            .configure(ConfigureRequest {
                core_configuration: Some(CoreConfiguration {
                    trust_domain: "example.org".into(),
                }),
                hcl_configuration: hcl.into(),
            })
            .await
            .unwrap_err();
        assert_eq!(st.code(), tonic::Code::InvalidArgument);
        assert!(st.message().contains(expect), "{hcl:?}: {}", st.message());
    }

    GrpcControllerClient::new(channel)
        .shutdown(Empty {})
        .await
        .unwrap();
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "plugin did not exit after Shutdown"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success());
    assert!(!socket.exists(), "socket removed on exit");
    let mut rest = String::new();
    stdout.read_to_string(&mut rest).unwrap();
    assert!(
        rest.is_empty(),
        "nothing after the handshake line: {rest:?}"
    );
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    for l in err.lines() {
        let v: serde_json::Value =
            serde_json::from_str(l).unwrap_or_else(|_| panic!("not hclog JSON: {l}"));
        assert!(
            v["@level"].is_string() && v["@message"].is_string() && v["@timestamp"].is_string()
        );
    }
    assert!(err.contains("plugin configuration rejected"), "{err}");
}
