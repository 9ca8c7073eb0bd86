//! Benchmark: many concurrent `FetchX509SVID` streams on one `keygrid-agent`, and the same
//! load on one SPIRE agent in the same run.
//!
//! Starts `keygrid dev` (SoftHSM2, core, agent) with 30-second SVIDs, and a SPIRE v1.13.3
//! server and agent with a 30-second entry for this process's uid; against each agent it
//! opens N streams from this process over C Unix-socket connections and reports:
//! first-response latency (p50/p99) for a cached identity, how long it takes from the first
//! to the last stream receiving the rotated SVID, and the agent's peak RSS (VmHWM).
//!
//! `cargo run --release -p keygrid-integration --example workload_bench -- [streams] [connections] [keygrid|spire|both]`
//! (needs the workspace binaries built and SPIRE in tools/bin, `scripts/build-spire.sh`).

use std::path::Path;
use std::time::{Duration, Instant};

use keygrid_integration::spire::{SpireAgent, SpireServer};
use keygrid_integration::{uid, unix_channel, wait_until, DevEnv};
use keygrid_proto::workload::spiffe_workload_api_client::SpiffeWorkloadApiClient;
use keygrid_proto::workload::X509svidRequest;

fn request() -> tonic::Request<X509svidRequest> {
    let mut req = tonic::Request::new(X509svidRequest {});
    req.metadata_mut()
        .insert("workload.spiffe.io", "true".parse().unwrap());
    req
}

fn serial(der: &[u8]) -> Vec<u8> {
    x509_parser::parse_x509_certificate(der)
        .map(|(_, c)| c.raw_serial().to_vec())
        .unwrap_or_default()
}

/// The PID of the agent `keygrid dev` started in `dir`.
fn agent_pid(dir: &Path) -> Option<u32> {
    let needle = dir.join("agent/agent.toml").display().to_string();
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let pid: u32 = e.file_name().to_str()?.parse().ok()?;
        let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
        let cmd = String::from_utf8_lossy(&cmd);
        (cmd.contains("keygrid-agent") && cmd.contains(&needle)).then_some(pid)
    })
}

fn status_kb(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

/// What one agent did under the load.
struct Figures {
    streams_rotated: usize,
    already_rotated: usize,
    sequential: Vec<Duration>,
    first_latencies: Vec<Duration>,
    spread: Duration,
    rss_idle_kb: u64,
    rss_peak_kb: u64,
}

/// Drives one agent: warm-up, 500 sequential opens, then `streams` concurrent streams that
/// each wait for an SVID other than the one current at the start.
async fn measure(socket: &Path, pid: u32, streams: usize, conns: usize) -> Figures {
    // Warm the cache: one stream gets its first SVID (retried while the agent still has
    // no identity for us, as a freshly started SPIRE agent does until its first sync).
    let warm = unix_channel(socket).await;
    let started = Instant::now();
    let first = loop {
        let attempt = SpiffeWorkloadApiClient::new(warm.clone())
            .fetch_x509svid(request())
            .await;
        if let Ok(resp) = attempt {
            if let Ok(Some(msg)) = resp.into_inner().message().await {
                break msg;
            }
        }
        assert!(
            started.elapsed() < Duration::from_secs(90),
            "no SVID from the agent within 90 s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let initial_serial = serial(&first.svids[0].x509_svid);
    println!(
        "X509SVIDResponse payload: {} bytes (chain {}, key {}, bundle {})",
        first.svids[0].x509_svid.len()
            + first.svids[0].x509_svid_key.len()
            + first.svids[0].bundle.len()
            + first.svids[0].spiffe_id.len(),
        first.svids[0].x509_svid.len(),
        first.svids[0].x509_svid_key.len(),
        first.svids[0].bundle.len()
    );
    let rss_idle_kb = status_kb(pid, "VmRSS:");

    // First-response latency of one new stream at a time (cached identity, idle agent).
    let seq_channel = unix_channel(socket).await;
    let mut sequential = Vec::new();
    for _ in 0..500 {
        let mut client = SpiffeWorkloadApiClient::new(seq_channel.clone());
        let t0 = Instant::now();
        let mut stream = client.fetch_x509svid(request()).await.unwrap().into_inner();
        stream.message().await.unwrap().unwrap();
        sequential.push(t0.elapsed());
    }
    sequential.sort();

    let mut channels = Vec::new();
    for _ in 0..conns {
        channels.push(unix_channel(socket).await);
    }
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    for i in 0..streams {
        let ch = channels[i % conns].clone();
        let tx = tx.clone();
        let initial = initial_serial.clone();
        tokio::spawn(async move {
            let mut client = SpiffeWorkloadApiClient::new(ch);
            let t0 = Instant::now();
            let mut stream = client.fetch_x509svid(request()).await.unwrap().into_inner();
            let msg = stream.message().await.unwrap().unwrap();
            let first_latency = t0.elapsed();
            let mut already = true;
            let mut current = serial(&msg.svids[0].x509_svid);
            while current == initial {
                already = false;
                let msg = stream.message().await.unwrap().unwrap();
                current = serial(&msg.svids[0].x509_svid);
            }
            let _ = tx.send((first_latency, Instant::now(), already));
            // Keep the stream open until the end of the run.
            std::future::pending::<()>().await;
        });
    }
    drop(tx);
    let mut first_latencies = Vec::with_capacity(streams);
    let mut rotated_at = Vec::with_capacity(streams);
    let mut already_rotated = 0;
    while rotated_at.len() < streams {
        match tokio::time::timeout(Duration::from_secs(90), rx.recv()).await {
            Ok(Some((l, at, already))) => {
                first_latencies.push(l);
                rotated_at.push(at);
                already_rotated += usize::from(already);
            }
            _ => break,
        }
    }
    let rss_peak_kb = status_kb(pid, "VmHWM:");
    println!(
        "agent RSS with all streams open after the rotation: {} kB",
        status_kb(pid, "VmRSS:")
    );
    first_latencies.sort();
    rotated_at.sort();
    let spread = rotated_at
        .last()
        .zip(rotated_at.first())
        .map(|(l, f)| l.duration_since(*f))
        .unwrap_or_default();
    Figures {
        streams_rotated: rotated_at.len(),
        already_rotated,
        sequential,
        first_latencies,
        spread,
        rss_idle_kb,
        rss_peak_kb,
    }
}

fn report(name: &str, streams: usize, conns: usize, f: &Figures) {
    println!("== {name}: {streams} streams over {conns} connections");
    println!(
        "streams that saw the rotation: {} ({} of them already in their first message)",
        f.streams_rotated, f.already_rotated
    );
    println!(
        "first response, one new stream at a time (500): p50 {:?}, p99 {:?}, max {:?}",
        pct(&f.sequential, 0.5),
        pct(&f.sequential, 0.99),
        f.sequential.last().unwrap()
    );
    if !f.first_latencies.is_empty() {
        println!(
            "first response, all streams opened at once: p50 {:?}, p99 {:?}, max {:?}",
            pct(&f.first_latencies, 0.5),
            pct(&f.first_latencies, 0.99),
            f.first_latencies.last().unwrap()
        );
    }
    println!(
        "rotation delivered to all streams within {:?} (first to last)",
        f.spread
    );
    println!(
        "agent RSS: idle {} kB, peak (VmHWM) {} kB",
        f.rss_idle_kb, f.rss_peak_kb
    );
}

/// A SPIRE server and agent for this process's uid, with 30-second X.509-SVIDs.
fn start_spire() -> (SpireServer, SpireAgent) {
    let mut server = SpireServer::start("bench.example", "default_x509_svid_ttl = \"30s\"", "");
    server.wait_ready();
    let agent_id = "spiffe://bench.example/agent";
    let token = server.join_token(agent_id);
    server.create_entry(
        agent_id,
        "spiffe://bench.example/workload",
        &format!("unix:uid:{}", uid()),
        &["-x509SVIDTTL", "30"],
    );
    let bundle = server.bundle_pem();
    let agent = SpireAgent::start(&server, &token, &bundle);
    wait_until("the SPIRE agent's socket", Duration::from_secs(60), || {
        agent.socket().exists()
    });
    (server, agent)
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let streams: usize = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(10_000);
    let conns: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(100);
    let which = args.get(3).map(String::as_str).unwrap_or("both");
    let mut results = Vec::new();
    if which == "keygrid" || which == "both" {
        let env = DevEnv::start("30s");
        let pid = agent_pid(env.dir.path()).expect("agent pid");
        let f = measure(&env.socket(), pid, streams, conns).await;
        report("keygrid-agent", streams, conns, &f);
        results.push(("keygrid-agent", f));
    }
    if which == "spire" || which == "both" {
        let (_server, agent) = start_spire();
        let f = measure(&agent.socket(), agent.pid(), streams, conns).await;
        report("spire-agent 1.13.3", streams, conns, &f);
        results.push(("spire-agent", f));
    }
    if let [(_, k), (_, s)] = results.as_slice() {
        println!("== side by side (keygrid / spire)");
        println!(
            "rotation spread: {:?} / {:?}; sequential first-response p99: {:?} / {:?}; peak RSS: {} / {} kB ({:.2}x)",
            k.spread,
            s.spread,
            pct(&k.sequential, 0.99),
            pct(&s.sequential, 0.99),
            k.rss_peak_kb,
            s.rss_peak_kb,
            k.rss_peak_kb as f64 / s.rss_peak_kb.max(1) as f64
        );
    }
}
