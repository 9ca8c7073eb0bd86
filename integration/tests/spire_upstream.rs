//! A real SPIRE v1.13.3 server loads `keygrid-upstream-authority`, and its CA is signed
//! by KeyGrid's spire-upstream issuer: the bundle SPIRE serves is KeyGrid's root, a real
//! SPIRE agent's SVIDs (fetched with the `spiffe` crate) verify with `openssl verify`
//! against it, SPIRE rotates its CA through KeyGrid, refusals reach SPIRE's log, and SPIRE
//! keeps serving while core is down.

use keygrid_integration::spire::{SpireAgent, SpireServer};
use keygrid_integration::uid;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use keygrid_integration::{bin, require_tool, run, wait_until, DevEnv};
use spiffe::X509Source;

/// SPIRE's CA lifetime in these tests. SPIRE prepares the next CA at half-life and
/// activates it at five sixths, checking every 10 s, so 60 s gives a rotation roughly
/// every 50 s with room for the 10 s check interval.
const CA_TTL: &str = "60s";

fn sha256_file(path: &Path) -> String {
    require_tool("sha256sum", "apt-get install coreutils");
    let out = run(Command::new("sha256sum").arg(path));
    assert!(out.status.success());
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .expect("sha256sum output")
        .to_string()
}

/// Issues a SPIRE server credential with `keygrid spire credential`; returns its dir.
fn credential(env: &DevEnv, name: &str) -> PathBuf {
    let out_dir = env.dir.path().join(format!("spire-{name}"));
    let id = format!("spiffe://{}/spire/server/{name}", env.trust_domain);
    let out = env.cli(&[
        "spire",
        "credential",
        "--spire-server-id",
        &id,
        "--out-dir",
        out_dir.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "keygrid spire credential failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out_dir
}

/// `plugin_data` pointing the plugin at `env`'s core with the credential in `cred`.
fn plugin_data(env: &DevEnv, cred: &Path) -> String {
    format!(
        "core_address = \"https://{}\"\n      trust_bundle_path = \"{}\"\n      client_cert_path = \"{}\"\n      client_key_path = \"{}\"",
        env.listen,
        cred.join("bundle.pem").display(),
        cred.join("svid.pem").display(),
        cred.join("svid.key").display()
    )
}

/// A SPIRE server for `trust_domain` whose UpstreamAuthority is KeyGrid's plugin.
fn spire_with_keygrid(trust_domain: &str, plugin_data: &str) -> SpireServer {
    let plugin = bin("keygrid-upstream-authority");
    SpireServer::start(
        trust_domain,
        &format!(
            "ca_ttl = \"{CA_TTL}\"\n  default_x509_svid_ttl = \"10s\"\n  default_jwt_svid_ttl = \"10s\""
        ),
        &format!(
            r#"UpstreamAuthority "keygrid" {{
    plugin_cmd = "{plugin}"
    plugin_checksum = "{sum}"
    plugin_data {{
      {plugin_data}
    }}
  }}"#,
            plugin = plugin.display(),
            sum = sha256_file(&plugin),
        ),
    )
}

/// Mints an X.509-SVID through the server API; returns the chain as DER.
fn mint_svid(server: &SpireServer, id: &str) -> Vec<Vec<u8>> {
    let out_dir = server.dir.path().join("mint");
    let _ = std::fs::remove_dir_all(&out_dir);
    std::fs::create_dir_all(&out_dir).unwrap();
    let out = server.cli(&[
        "x509",
        "mint",
        "-spiffeID",
        id,
        "-write",
        out_dir.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "x509 mint failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let pem = std::fs::read_to_string(out_dir.join("svid.pem")).unwrap();
    pem::parse_many(pem)
        .unwrap()
        .into_iter()
        .map(|p| p.into_contents())
        .collect()
}

fn pem_of(ders: &[&[u8]]) -> String {
    ders.iter()
        .map(|d| pem::encode(&pem::Pem::new("CERTIFICATE", d.to_vec())))
        .collect()
}

/// `openssl verify` of `leaf` through `intermediates` to the PEM roots in `roots_pem`.
fn openssl_verify(dir: &Path, leaf: &[u8], intermediates: &[&[u8]], roots_pem: &Path) {
    require_tool("openssl", "apt-get install openssl");
    std::fs::write(dir.join("leaf.pem"), pem_of(&[leaf])).unwrap();
    std::fs::write(dir.join("chain.pem"), pem_of(intermediates)).unwrap();
    let out = run(Command::new("openssl")
        .arg("verify")
        .arg("-CAfile")
        .arg(roots_pem)
        .arg("-untrusted")
        .arg(dir.join("chain.pem"))
        .arg(dir.join("leaf.pem")));
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains(": OK"),
        "openssl verify failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn serial_hex(der: &[u8]) -> String {
    let (_, c) = x509_parser::parse_x509_certificate(der).unwrap();
    c.raw_serial()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<String>()
}

/// SPIRE CAs KeyGrid recorded: (serial, subject) from core's store.
fn spire_intermediates(env: &DevEnv) -> Vec<(String, String)> {
    let db = env.store_db();
    let mut stmt = db
        .prepare(
            "SELECT serial, subject FROM certificates WHERE issuer = 'spire-upstream' \
             AND profile = 'spire-intermediate' ORDER BY not_before",
        )
        .unwrap();
    stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

async fn svid_chain(source: &X509Source) -> Vec<Vec<u8>> {
    let svid = source.svid().expect("an SVID");
    svid.cert_chain()
        .iter()
        .map(|c| c.as_bytes().to_vec())
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn spire_ca_is_signed_by_keygrid_and_rotates_through_it() {
    let env = DevEnv::start("5m");
    let cred = credential(&env, "main");
    let mut server = spire_with_keygrid("example.org", &plugin_data(&env, &cred));
    server.wait_ready();
    let log = server.log();
    assert!(log.contains("Plugin loaded") && log.contains("plugin_name=keygrid"));
    // PublishJWTKeyAndSubscribe answers Unimplemented: SPIRE keeps its JWT keys local.
    wait_until(
        "SPIRE to note that JWT keys stay local",
        Duration::from_secs(10),
        || {
            server
                .log()
                .contains("UpstreamAuthority plugin does not support JWT-SVIDs")
        },
    );

    // SPIRE's bundle is exactly KeyGrid's root, and openssl agrees it chains there.
    let bundle = server.bundle_pem();
    let spire_roots: Vec<Vec<u8>> = pem::parse_many(&bundle)
        .unwrap()
        .into_iter()
        .map(|p| p.into_contents())
        .collect();
    let keygrid_roots: Vec<Vec<u8>> =
        pem::parse_many(std::fs::read_to_string(env.bundle_pem()).unwrap())
            .unwrap()
            .into_iter()
            .map(|p| p.into_contents())
            .collect();
    assert_eq!(
        spire_roots, keygrid_roots,
        "SPIRE's bundle is KeyGrid's root"
    );
    let first_records = spire_intermediates(&env);
    assert_eq!(first_records.len(), 1, "one SPIRE CA minted at start");
    assert_eq!(
        first_records[0].1, "spiffe://example.org/spire/server/main",
        "recorded against the SPIRE server's identity"
    );

    // A SPIRE agent joins with a join token and serves an SVID to this process.
    let token = server.join_token("spiffe://example.org/agent1");
    server.create_entry(
        "spiffe://example.org/agent1",
        "spiffe://example.org/workload",
        &format!("unix:uid:{}", uid()),
        &[],
    );
    let agent = SpireAgent::start(&server, &token, &bundle);
    let source = match tokio::time::timeout(
        Duration::from_secs(60),
        X509Source::builder().endpoint(agent.endpoint()).build(),
    )
    .await
    {
        Ok(Ok(s)) => s,
        other => panic!(
            "no SVID from the SPIRE agent ({:?}):\n{}",
            other.err(),
            agent.log()
        ),
    };
    let chain = svid_chain(&source).await;
    assert!(chain.len() >= 3, "leaf, SPIRE CA, spire-upstream CA");
    let roots_pem = env.bundle_pem();
    let verify_dir = tempfile::tempdir().unwrap();
    let inter: Vec<&[u8]> = chain[1..].iter().map(Vec::as_slice).collect();
    openssl_verify(verify_dir.path(), &chain[0], &inter, &roots_pem);
    let first_ca = serial_hex(&chain[1]);
    assert_eq!(
        first_ca, first_records[0].0,
        "the SVID's CA is the one KeyGrid recorded"
    );

    // KeyGrid rotates its root (new root published now, signing in an hour): the plugin
    // pushes the new bundle on SPIRE's open stream and SPIRE adds the new root.
    let out = env.cli(&["ca", "rotate", "root", "--prepare", "1h"]);
    assert!(
        out.status.success(),
        "keygrid ca rotate root: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let published = || -> Vec<Vec<u8>> {
        pem::parse_many(std::fs::read_to_string(env.bundle_pem()).unwrap())
            .unwrap()
            .into_iter()
            .map(|p| p.into_contents())
            .collect()
    };
    wait_until(
        "core to publish the rotated root",
        Duration::from_secs(10),
        || published().len() == 2,
    );
    let new_root = published()
        .into_iter()
        .find(|r| !keygrid_roots.contains(r))
        .expect("a new root");
    wait_until(
        "SPIRE's bundle to gain KeyGrid's new root",
        Duration::from_secs(30),
        || {
            let out = server.cli(&["bundle", "show"]);
            out.status.success()
                && pem::parse_many(&out.stdout)
                    .map(|v| v.iter().any(|p| p.contents() == new_root.as_slice()))
                    .unwrap_or(false)
        },
    );
    assert!(server
        .log()
        .contains("KeyGrid trust bundle changed; updating SPIRE"));

    // SPIRE rotates its CA through the plugin; every new CA is recorded by KeyGrid, and
    // SVIDs issued under the new CA still verify against the KeyGrid root.
    wait_until(
        "SPIRE to mint two more CAs through KeyGrid",
        Duration::from_secs(150),
        || spire_intermediates(&env).len() >= 3,
    );
    let records = spire_intermediates(&env);
    let mut serials: Vec<&String> = records.iter().map(|r| &r.0).collect();
    serials.dedup();
    assert!(serials.len() >= 3, "distinct intermediates: {records:?}");
    let minted = server.log().matches("SPIRE CA minted by KeyGrid").count();
    assert!(minted >= 3, "SPIRE logged {minted} mints");

    let start = Instant::now();
    let rotated = loop {
        let chain = svid_chain(&source).await;
        if serial_hex(&chain[1]) != first_ca {
            break chain;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "agent SVIDs never moved to a rotated CA:\n{}",
            agent.log()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let rotated_ca = serial_hex(&rotated[1]);
    assert!(
        records.iter().any(|r| r.0 == rotated_ca),
        "rotated CA {rotated_ca} is recorded by KeyGrid: {records:?}"
    );
    let inter: Vec<&[u8]> = rotated[1..].iter().map(Vec::as_slice).collect();
    openssl_verify(verify_dir.path(), &rotated[0], &inter, &roots_pem);
    source.shutdown().await;
    assert!(
        !server.log().contains("panic"),
        "no panic in SPIRE's log:\n{}",
        server.log()
    );
}

#[test]
fn spire_keeps_serving_while_core_is_down_and_recovers() {
    let env = DevEnv::start("5m");
    let cred = credential(&env, "faults");
    let mut server = spire_with_keygrid("example.org", &plugin_data(&env, &cred));
    server.wait_ready();
    let verify_dir = tempfile::tempdir().unwrap();
    let roots_pem = verify_dir.path().join("roots.pem");
    std::fs::copy(env.bundle_pem(), &roots_pem).unwrap();
    let check_svid = |server: &SpireServer| {
        let chain = mint_svid(server, "spiffe://example.org/fault-check");
        let inter: Vec<&[u8]> = chain[1..].iter().map(Vec::as_slice).collect();
        openssl_verify(verify_dir.path(), &chain[0], &inter, &roots_pem);
    };
    check_svid(&server);

    // Core goes away. SPIRE's next CA preparation fails with the plugin's reason, but
    // SPIRE keeps serving with its current CA.
    let listen = env.listen.clone();
    let (_, dir) = env.stop();
    wait_until(
        "SPIRE to try a CA rotation while core is down",
        Duration::from_secs(60),
        || server.log().contains("is unreachable"),
    );
    assert!(
        server.cli(&["healthcheck"]).status.success(),
        "SPIRE still healthy"
    );
    check_svid(&server);
    assert!(server.is_running(), "spire-server still running");

    // Core returns on the same address; SPIRE's next attempt gets a CA from it.
    let env = DevEnv::start_at(dir, &listen, "5m");
    wait_until(
        "SPIRE to mint a CA after core came back",
        Duration::from_secs(60),
        || spire_intermediates(&env).len() >= 2,
    );
    check_svid(&server);
}

#[test]
fn refusals_and_config_errors_reach_spire_log() {
    let env = DevEnv::start("5m");
    let cred = credential(&env, "policy");

    // A SPIRE server for a trust domain this KeyGrid does not serve gets no CA, and SPIRE
    // logs KeyGrid's reason.
    let mut server = spire_with_keygrid("other.org", &plugin_data(&env, &cred));
    let (status, log) = server.wait_exit();
    assert!(!status.success(), "SPIRE cannot start without a CA");
    assert!(
        log.contains("KeyGrid refused: CSR is for spiffe://other.org, but this KeyGrid serves trust domain example.org"),
        "KeyGrid's reason in SPIRE's log:\n{log}"
    );
    assert!(log.contains("PermissionDenied"), "{log}");
    assert!(
        spire_intermediates(&env).is_empty(),
        "nothing recorded on refusal"
    );

    // A configuration error is a clear message from the plugin, not a crash.
    let bad = plugin_data(&env, &cred).replace("client_key_path", "client_keypath");
    let mut server = spire_with_keygrid("example.org", &bad);
    let (status, log) = server.wait_exit();
    assert!(!status.success());
    assert!(
        log.contains("Failed to configure plugin")
            && log.contains("plugin_data: unknown field `client_keypath`"),
        "configuration error in SPIRE's log:\n{log}"
    );
    assert!(!log.contains("panic"), "{log}");
    assert!(!log.contains("failed to exit gracefully"), "{log}");

    // A missing file is named with its field.
    let bad = plugin_data(&env, &cred).replace("svid.key", "missing.key");
    let mut server = spire_with_keygrid("example.org", &bad);
    let (_, log) = server.wait_exit();
    assert!(
        log.contains("client_key_path: cannot read") && log.contains("missing.key"),
        "{log}"
    );
}
