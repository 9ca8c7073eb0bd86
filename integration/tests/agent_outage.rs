//! The agent survives a core outage: with the network to core cut mid-stream, open streams
//! stay open, new callers are still served the cached (valid) SVID, and once core is
//! reachable again the agent reconnects on its own and pushes a rotated SVID before the
//! held one expires.

use keygrid_integration::{uid, with_header, workload_client};
use std::time::{Duration, Instant};

use keygrid_integration::{Agent, DevEnv, TcpProxy};
use keygrid_proto::workload::{X509svidRequest, X509svidResponse};

fn leaf_facts(msg: &X509svidResponse) -> (Vec<u8>, i64) {
    let der = &msg.svids[0].x509_svid;
    let (_, cert) = x509_parser::parse_x509_certificate(der).unwrap();
    (
        cert.raw_serial().to_vec(),
        cert.validity().not_after.timestamp(),
    )
}

fn now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

#[tokio::test(flavor = "multi_thread")]
async fn agent_serves_its_cache_through_a_core_outage_and_reconnects() {
    let env = DevEnv::start("30s");
    let mut proxy = TcpProxy::start(&env.listen);
    let agent_id = format!("spiffe://{}/keygrid/node/outage", env.trust_domain);
    let workload_id = format!("spiffe://{}/outage/uid/{}", env.trust_domain, uid());
    let out = env.cli(&[
        "entry",
        "create",
        "--spiffe-id",
        &workload_id,
        "--parent-id",
        &agent_id,
        "--selector",
        &format!("unix:uid:{}", uid()),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let agent = Agent::start(&env, &agent_id, &proxy.address(), "");

    let mut client = workload_client(&agent.socket()).await;
    let mut stream = client
        .fetch_x509svid(with_header(X509svidRequest {}))
        .await
        .unwrap()
        .into_inner();
    let first = tokio::time::timeout(Duration::from_secs(30), stream.message())
        .await
        .expect("first SVID in time")
        .unwrap()
        .unwrap();
    assert_eq!(first.svids[0].spiffe_id, workload_id);
    let (serial, not_after) = leaf_facts(&first);

    // Core becomes unreachable.
    proxy.cut();

    // Past the renewal point (half-life, ±5 %) the agent cannot renew, but a new caller
    // still gets the cached SVID, which is still valid.
    let lifetime = not_after - now();
    tokio::time::sleep(Duration::from_secs((lifetime as u64 / 2) + 3)).await;
    assert!(
        now() < not_after,
        "test timing: the SVID must still be valid here"
    );
    let mut other = workload_client(&agent.socket()).await;
    let mut s2 = other
        .fetch_x509svid(with_header(X509svidRequest {}))
        .await
        .expect("served during the outage")
        .into_inner();
    let cached = tokio::time::timeout(Duration::from_secs(5), s2.message())
        .await
        .expect("cached SVID at once")
        .unwrap()
        .unwrap();
    assert_eq!(leaf_facts(&cached).0, serial, "the cached SVID is served");
    assert!(
        agent.log().contains("sync with core failed"),
        "{}",
        agent.log()
    );

    // Core is back: the agent reconnects by itself and the open stream gets a new SVID
    // before the one it holds expires.
    proxy.resume();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let msg = tokio::time::timeout_at(deadline.into(), stream.message())
            .await
            .unwrap_or_else(|_| panic!("no rotation after core came back:\n{}", agent.log()))
            .expect("stream stays open through the outage")
            .expect("a message");
        let (s, na) = leaf_facts(&msg);
        if s != serial {
            assert!(
                now() <= not_after,
                "the new SVID arrived after the old one expired"
            );
            assert!(na > not_after);
            break;
        }
    }
    // The agent logs the restored connection when its sync round ends, which may be just
    // after the pushed SVID arrived here.
    keygrid_integration::wait_until(
        "the agent to log the restored connection",
        Duration::from_secs(10),
        || agent.log().contains("connection to core restored"),
    );
}
