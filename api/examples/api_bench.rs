//! What the management API costs: Version latency over mutual TLS, upload throughput against a
//! plain TCP copy of the same file, and the idle server's resident memory. A benchmark, not a
//! test: it prints figures next to their budgets and asserts nothing about speed.
//!
//! `cargo xtask bench-api`, or `cargo run --release -p cairn-api --example api_bench`. Everything
//! runs on 127.0.0.1 with a throwaway PKI (the one `tests/common` makes).
//!
//! Both copies in the throughput figure write into the page cache of the same temporary
//! directory, and neither calls fsync: the figure is the network path's cost, not the disk's.
//! The plain copy is `std::io::copy`; the device is `cairn_api::testing::FakeDevice`, which
//! writes the upload in the pieces it reads (64 KiB at most) and reports progress after each,
//! as a device does.

#[path = "../tests/common/mod.rs"]
mod common;

use std::fs::File;
use std::io::{self, BufRead, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cairn_api::proto::device_service_client::DeviceServiceClient;
use cairn_api::proto::{self, upgrade_request, upgrade_response, upgrade_start};
use cairn_api::testing::FakeDevice;
use cairn_api::{Options, TlsConfig};
use common::{Pem, Pki};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

type Client = DeviceServiceClient<Channel>;

const VERSION_CALLS: usize = 2000;
const WARM_UP_CALLS: usize = 100;
const P99_BUDGET_MS: f64 = 2.0;
const FILE_SIZE: u64 = 256 * 1024 * 1024;
const CHUNK: usize = 256 * 1024;
const RUNS: usize = 3;
const RATIO_BUDGET: f64 = 0.7;
const MIB: f64 = 1024.0 * 1024.0;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let Some("--idle-rss") = args.first().map(String::as_str) {
        let dir = args
            .get(1)
            .expect("--idle-rss DIR: the PEM files' directory");
        return idle_rss(Path::new(dir));
    }
    let dir = tempfile::tempdir().expect("a temporary directory");
    let pki = Pki::new();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime for the client");

    let sink = dir.path().join("received.upload");
    let device = Arc::new(FakeDevice::new().uploads_into(&sink));
    let listener = TcpListener::bind("127.0.0.1:0").expect("a loopback port");
    let quiet = Options {
        log: Arc::new(|_: &str| {}),
        ..Options::default()
    };
    let server = cairn_api::serve(listener, &pki.tls(), device, quiet).expect("the API server");
    let addr = server.local_addr();

    println!("cairn-api benchmark (loopback, mutual TLS 1.3, HTTP/2)");
    runtime.block_on(version_latency(addr, &pki));

    let source = dir.path().join("bundle");
    random_file(&source, FILE_SIZE).expect("writing the random file");
    println!(
        "\nUpload of {} MiB of random bytes, {} KiB chunks, median of {RUNS} \
         (both sides write into the page cache, no fsync)",
        FILE_SIZE / (1024 * 1024),
        CHUNK / 1024
    );
    let plain_sink = dir.path().join("received.plain");
    let mut plain = Vec::new();
    let mut upload = Vec::new();
    for run in 1..=RUNS {
        plain.push(plain_copy(&source, &plain_sink).expect("the plain copy"));
        std::fs::remove_file(&plain_sink).expect("removing the copy");
        upload.push(
            runtime
                .block_on(upload_file(addr, &pki, &source))
                .expect("the upload"),
        );
        check_same(&source, &sink);
        std::fs::remove_file(&sink).expect("removing the upload");
        let (plain, upload) = (rate(plain[run - 1]), rate(upload[run - 1]));
        println!(
            "  run {run}: plain {plain:7.1} MiB/s, upload {upload:7.1} MiB/s, ratio {:.2}×",
            upload / plain
        );
    }
    let plain = median(&mut plain);
    let upload = median(&mut upload);
    println!(
        "  plain TCP copy        {:6.3} s  {:7.1} MiB/s",
        plain.as_secs_f64(),
        rate(plain)
    );
    println!(
        "  Upgrade upload (RPC)  {:6.3} s  {:7.1} MiB/s",
        upload.as_secs_f64(),
        rate(upload)
    );
    let ratio = rate(upload) / rate(plain);
    println!(
        "  ratio upload/plain    {ratio:.2}×   (budget ≥ {RATIO_BUDGET}×) {}",
        verdict(ratio >= RATIO_BUDGET)
    );
    server.shutdown().expect("stopping the server");

    println!("\nIdle memory of the API server (a child process: serve, one Version call, 1 s)");
    match idle_rss_of_child(dir.path(), &pki, &runtime) {
        Ok(lines) => lines.iter().for_each(|l| println!("  {l}")),
        Err(e) => println!("  could not measure: {e}"),
    }
}

/// One connection, a warm-up, then sequential Version calls.
async fn version_latency(addr: SocketAddr, pki: &Pki) {
    let mut client = connect(addr, pki, &pki.reader).await;
    for _ in 0..WARM_UP_CALLS {
        client.version(proto::VersionRequest {}).await.unwrap();
    }
    let mut took = Vec::with_capacity(VERSION_CALLS);
    for _ in 0..VERSION_CALLS {
        let start = Instant::now();
        client.version(proto::VersionRequest {}).await.unwrap();
        took.push(start.elapsed());
    }
    took.sort();
    let ms = |q: f64| {
        let i = ((took.len() as f64 * q).ceil() as usize).clamp(1, took.len()) - 1;
        took[i].as_secs_f64() * 1000.0
    };
    println!("\nVersion latency, one connection, {VERSION_CALLS} sequential calls after {WARM_UP_CALLS} to warm up");
    println!(
        "  p50 {:.3} ms  p90 {:.3} ms  p99 {:.3} ms  max {:.3} ms   (budget p99 ≤ {P99_BUDGET_MS} ms) {}",
        ms(0.50),
        ms(0.90),
        ms(0.99),
        ms(1.0),
        verdict(ms(0.99) <= P99_BUDGET_MS)
    );
}

/// Sends `source` through one Upgrade call; the time runs from the call's start to UpgradeDone,
/// which the device sends once the whole file is in its file.
async fn upload_file(addr: SocketAddr, pki: &Pki, source: &Path) -> io::Result<Duration> {
    let mut client = connect(addr, pki, &pki.operator).await;
    let size = std::fs::metadata(source)?.len();
    let mut file = File::open(source)?;
    let (tx, rx) = mpsc::channel(4);
    let start = Instant::now();
    let reader = std::thread::spawn(move || -> io::Result<()> {
        let start = proto::UpgradeRequest {
            message: Some(upgrade_request::Message::Start(proto::UpgradeStart {
                source: Some(upgrade_start::Source::Upload(proto::Upload { size })),
                reboot: false,
            })),
        };
        if tx.blocking_send(start).is_err() {
            return Ok(());
        }
        loop {
            let mut chunk = Vec::with_capacity(CHUNK);
            (&mut file).take(CHUNK as u64).read_to_end(&mut chunk)?;
            if chunk.is_empty() {
                return Ok(());
            }
            let message = proto::UpgradeRequest {
                message: Some(upgrade_request::Message::Chunk(chunk)),
            };
            if tx.blocking_send(message).is_err() {
                return Ok(());
            }
        }
    });
    let mut answers = client
        .upgrade(ReceiverStream::new(rx))
        .await
        .map_err(io::Error::other)?
        .into_inner();
    let mut done = false;
    while let Some(answer) = answers.message().await.map_err(io::Error::other)? {
        done |= matches!(answer.event, Some(upgrade_response::Event::Done(_)));
    }
    let took = start.elapsed();
    reader.join().expect("the file reader")?;
    if !done {
        return Err(io::Error::other("the upload ended without UpgradeDone"));
    }
    Ok(took)
}

/// The baseline: the same file over a plain loopback TCP connection into a file.
fn plain_copy(source: &Path, sink: &Path) -> io::Result<Duration> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let sink = sink.to_path_buf();
    let start = Instant::now();
    let receiver = std::thread::spawn(move || -> io::Result<u64> {
        let (mut tcp, _) = listener.accept()?;
        io::copy(&mut tcp, &mut File::create(sink)?)
    });
    let mut tcp = TcpStream::connect(addr)?;
    io::copy(&mut File::open(source)?, &mut tcp)?;
    tcp.shutdown(std::net::Shutdown::Write)?;
    let received = receiver.join().expect("the receiver")?;
    let took = start.elapsed();
    if received != FILE_SIZE {
        return Err(io::Error::other(format!("received {received} bytes")));
    }
    Ok(took)
}

/// `--idle-rss DIR`, in the child: serves with the PEM files in DIR, prints its address and
/// VmRSS, and after the parent's Version call (a line on stdin), waits 1 s and prints VmRSS.
fn idle_rss(dir: &Path) {
    let before = vm_rss().unwrap_or_default();
    let tls = TlsConfig::from_files(
        &dir.join("ca.pem"),
        &dir.join("server.pem"),
        &dir.join("server.key"),
    )
    .expect("the PEM files");
    let listener = TcpListener::bind("127.0.0.1:0").expect("a loopback port");
    let device = Arc::new(FakeDevice::new());
    let server = cairn_api::serve(listener, &tls, device, Options::default()).expect("serve");
    println!("{} {before}", server.local_addr());
    io::stdout().flush().unwrap();
    let mut line = String::new();
    io::stdin().read_line(&mut line).unwrap();
    std::thread::sleep(Duration::from_secs(1));
    println!("{}", vm_rss().unwrap_or_default());
    server.shutdown().unwrap();
}

/// Runs `api_bench --idle-rss` and makes the Version call from here, so the figure is the
/// server's alone (no client, no PKI generation in that process).
fn idle_rss_of_child(
    dir: &Path,
    pki: &Pki,
    runtime: &tokio::runtime::Runtime,
) -> io::Result<Vec<String>> {
    std::fs::write(dir.join("ca.pem"), pki.ca.pem())?;
    std::fs::write(dir.join("server.pem"), &pki.server.cert)?;
    std::fs::write(dir.join("server.key"), &pki.server.key)?;
    let mut child = Command::new(std::env::current_exe()?)
        .arg("--idle-rss")
        .arg(dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()?;
    let mut out = io::BufReader::new(child.stdout.take().expect("piped"));
    let mut first = String::new();
    out.read_line(&mut first)?;
    let (addr, before) = first
        .trim()
        .split_once(' ')
        .ok_or_else(|| io::Error::other(format!("the child printed {first:?}")))?;
    let addr: SocketAddr = addr.parse().map_err(io::Error::other)?;
    let answer = runtime.block_on(async {
        let mut client = connect(addr, pki, &pki.reader).await;
        client.version(proto::VersionRequest {}).await
    });
    answer.map_err(io::Error::other)?;
    writeln!(child.stdin.take().expect("piped"))?;
    let mut after = String::new();
    out.read_line(&mut after)?;
    child.wait()?;
    Ok(vec![
        format!("VmRSS at start, before serve:       {before}"),
        format!("VmRSS serving, idle after one call: {}", after.trim()),
        "(a glibc build of the example; the device binary is static musl)".to_string(),
    ])
}

/// The `VmRSS:` value of /proc/self/status, e.g. "4312 kB".
fn vm_rss() -> Option<String> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    Some(line["VmRSS:".len()..].trim().to_string())
}

async fn connect(addr: SocketAddr, pki: &Pki, identity: &Pem) -> Client {
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(pki.ca.pem()))
        .domain_name("localhost")
        .identity(Identity::from_pem(&identity.cert, &identity.key));
    let channel = Endpoint::from_shared(format!("https://{addr}"))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect()
        .await
        .expect("a connection to the API server");
    DeviceServiceClient::new(channel)
        .max_decoding_message_size(usize::MAX)
        .max_encoding_message_size(usize::MAX)
}

fn random_file(path: &Path, size: u64) -> io::Result<()> {
    let mut random = File::open("/dev/urandom")?.take(size);
    let copied = io::copy(&mut random, &mut File::create(path)?)?;
    assert_eq!(copied, size);
    Ok(())
}

/// The upload must have arrived whole, or the figure means nothing.
fn check_same(a: &Path, b: &Path) {
    let (a, b) = (std::fs::read(a).unwrap(), std::fs::read(b).unwrap());
    assert!(a == b, "the uploaded file differs from the source");
}

fn rate(took: Duration) -> f64 {
    FILE_SIZE as f64 / MIB / took.as_secs_f64()
}

fn median(runs: &mut [Duration]) -> Duration {
    runs.sort();
    runs[runs.len() / 2]
}

fn verdict(ok: bool) -> &'static str {
    if ok {
        "ok"
    } else {
        "OVER BUDGET"
    }
}
