//! Benchmark: many concurrent `FetchX509SVID` streams on one `keygrid-agent`.
//!
//! Starts `keygrid dev` (SoftHSM2, core, agent) with short-lived SVIDs, opens N streams
//! from this process over C Unix-socket connections, and reports: first-response latency
//! (p50/p99) for a cached identity, how long it takes from the first to the last stream
//! receiving the rotated SVID, and the agent's peak RSS (VmHWM).
//!
//! `cargo run --release -p keygrid-integration --example workload_bench -- [streams] [connections]`
//! (needs the workspace binaries built; `KEYGRID_BIN_DIR` may point at them).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hyper_util::rt::TokioIo;
use keygrid_integration::DevEnv;
use keygrid_proto::workload::spiffe_workload_api_client::SpiffeWorkloadApiClient;
use keygrid_proto::workload::X509svidRequest;
use tonic::transport::{Channel, Endpoint, Uri};

async fn connect(socket: &Path) -> Channel {
    let path = socket.to_path_buf();
    Endpoint::try_from("http://localhost")
        .unwrap()
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let path = path.clone();
            async move {
                Ok::<_, std::io::Error>(TokioIo::new(tokio::net::UnixStream::connect(path).await?))
            }
        }))
        .await
        .expect("connect to workload socket")
}

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

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let streams: usize = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(10_000);
    let conns: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(100);
    let env = DevEnv::start("30s");
    let socket: PathBuf = env.socket();
    let pid = agent_pid(env.dir.path()).expect("agent pid");

    // Warm the cache: one stream gets its first SVID.
    let warm = connect(&socket).await;
    let mut s = SpiffeWorkloadApiClient::new(warm)
        .fetch_x509svid(request())
        .await
        .unwrap()
        .into_inner();
    let first = s.message().await.unwrap().unwrap();
    let initial_serial = serial(&first.svids[0].x509_svid);
    let rss_idle = status_kb(pid, "VmRSS:");

    // First-response latency of one new stream at a time (cached identity, idle agent).
    let seq_channel = connect(&socket).await;
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
        channels.push(connect(&socket).await);
    }
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let started = Instant::now();
    let barrier = Arc::new(tokio::sync::Barrier::new(streams));
    for i in 0..streams {
        let ch = channels[i % conns].clone();
        let tx = tx.clone();
        let initial = initial_serial.clone();
        let barrier = barrier.clone();
        tokio::spawn(async move {
            let mut client = SpiffeWorkloadApiClient::new(ch);
            let t0 = Instant::now();
            let mut stream = client.fetch_x509svid(request()).await.unwrap().into_inner();
            let msg = stream.message().await.unwrap().unwrap();
            let first_latency = t0.elapsed();
            assert_eq!(serial(&msg.svids[0].x509_svid), initial);
            barrier.wait().await;
            loop {
                let msg = stream.message().await.unwrap().unwrap();
                if serial(&msg.svids[0].x509_svid) != initial {
                    let _ = tx.send((first_latency, Instant::now()));
                    // Keep the stream open until the end of the run.
                    std::future::pending::<()>().await;
                }
            }
        });
    }
    drop(tx);
    let mut first_latencies = Vec::with_capacity(streams);
    let mut rotated_at = Vec::with_capacity(streams);
    while rotated_at.len() < streams {
        match tokio::time::timeout(Duration::from_secs(60), rx.recv()).await {
            Ok(Some((l, at))) => {
                first_latencies.push(l);
                rotated_at.push(at);
            }
            _ => break,
        }
    }
    let open_time = started.elapsed();
    let rss_peak = status_kb(pid, "VmHWM:");
    first_latencies.sort();
    rotated_at.sort();
    let spread = rotated_at
        .last()
        .zip(rotated_at.first())
        .map(|(l, f)| l.duration_since(*f))
        .unwrap_or_default();
    println!("streams: {streams} over {conns} connections");
    println!("streams that saw the rotation: {}", rotated_at.len());
    println!(
        "first response, one new stream at a time (500): p50 {:?}, p99 {:?}, max {:?}",
        pct(&sequential, 0.5),
        pct(&sequential, 0.99),
        sequential.last().unwrap()
    );
    println!(
        "first response, all streams opened at once: p50 {:?}, p99 {:?}, max {:?}",
        pct(&first_latencies, 0.5),
        pct(&first_latencies, 0.99),
        first_latencies.last().unwrap()
    );
    println!("rotation delivered to all streams within {spread:?} (first to last)");
    println!("agent RSS: idle {rss_idle} kB, peak (VmHWM) {rss_peak} kB");
    println!("wall time {open_time:?}");
}
