//! Envoy SDS v3 on the agent's socket, driven by a client built on Envoy's published
//! protos (go-control-plane from the Go module proxy): Istio's `default` and `ROOTCA`,
//! ACK and NACK (neither answered), a rotation pushed on the open stream, a stale nonce
//! ignored, a name change answered, an unknown name refused, and FetchSecrets.

use keygrid_integration::uid;
use std::process::Command;

use keygrid_integration::{go_sds_client, run, DevEnv};
use serde_json::Value;

#[test]
fn envoy_sds_default_rootca_ack_nack_and_rotation() {
    let env = DevEnv::start("10s");
    let out = run(Command::new(go_sds_client())
        .arg("-socket")
        .arg(env.socket())
        .arg("-timeout")
        .arg("60s"));
    assert!(
        out.status.success(),
        "sds-client failed:\n{}\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        env.log()
    );
    let v: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    let want = format!("spiffe://{}/dev/uid/{}", env.trust_domain, uid());

    let first = &v["first"];
    assert_eq!(
        first["names"],
        serde_json::json!(["ROOTCA", "default"]),
        "{v}"
    );
    assert_eq!(first["kinds"]["default"], "tls_certificate");
    assert_eq!(
        first["kinds"]["ROOTCA"],
        "spiffe_validator:envoy.tls.cert_validator.spiffe"
    );
    assert_eq!(first["trust_domains"], serde_json::json!(["example.org"]));
    assert_eq!(first["spiffe_id"], want.as_str());
    assert_eq!(first["version"], "1");
    assert_eq!(first["nonce"].as_str().unwrap().len(), 8);

    // The ACK and the NACK got no answer: the next response is the rotation.
    let rotated = &v["rotated"];
    assert_ne!(rotated["serial"], first["serial"], "{v}");
    assert_eq!(rotated["spiffe_id"], want.as_str());
    assert_eq!(rotated["version"], "2");
    assert_ne!(rotated["nonce"], first["nonce"]);

    // The stale-nonce request (ROOTCA only) was ignored; the name change was answered.
    let after = v["after_name_change"].as_array().unwrap();
    assert!(
        after
            .iter()
            .all(|s| s["names"] != serde_json::json!(["ROOTCA"])),
        "a stale request was answered: {v}"
    );
    assert_eq!(
        after.last().unwrap()["names"],
        serde_json::json!(["default"]),
        "{v}"
    );

    assert_eq!(v["unknown_name"]["code"], "InvalidArgument", "{v}");
    assert_eq!(
        v["unknown_name"]["message"],
        "workload is not authorized for the requested identities [\"file-root:/etc/certs/root-cert.pem\"]"
    );
    assert_eq!(v["fetched"]["names"], serde_json::json!(["ROOTCA"]));
    assert_eq!(v["fetched"]["version"], "");

    let log = env.log();
    assert!(
        log.contains("Envoy reported errors applying secrets"),
        "{log}"
    );
    assert!(log.contains("client rejected expected version"), "{log}");
}
