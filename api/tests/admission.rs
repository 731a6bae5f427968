//! No client below admin, and no peer without a certificate, can keep the admin out: the admin's
//! call is answered within a second while idle sockets, idle reader connections and a client
//! that reconnects as fast as it can are all held against the device. Prints the admin's latency
//! under each load beside the same call with no load.

mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cairn_api::proto;
use cairn_api::Limits;
use common::{Harness, Pem};
use tonic::Code;

/// Connects as `who` and calls Version: what `cairnctl version` does. Returns the time it took.
async fn admin_call(h: &Harness, who: &Pem) -> Duration {
    let start = Instant::now();
    let mut client = h.connect(Some(who)).await.expect("the admin connects");
    client
        .version(proto::VersionRequest {})
        .await
        .expect("the admin's call is answered");
    start.elapsed()
}

/// Five admin calls; returns (median, max).
async fn admin_latency(h: &Harness, who: &Pem) -> (Duration, Duration) {
    let mut times = Vec::new();
    for _ in 0..5 {
        times.push(admin_call(h, who).await);
    }
    times.sort();
    (times[2], times[4])
}

fn row(load: &str, (median, max): (Duration, Duration)) {
    println!(
        "  {load:<52} median {:>7.1} ms   max {:>7.1} ms",
        median.as_secs_f64() * 1e3,
        max.as_secs_f64() * 1e3
    );
    assert!(
        max < Duration::from_secs(1),
        "the admin waited {max:?} for an answer under {load}"
    );
}

/// Opens a reader connection and makes one call on it, so it is past the handshake and admitted
/// (or refused: then the refusal's status).
async fn idle_reader(h: &Harness, who: &Pem) -> Result<Client, tonic::Status> {
    let mut client = h
        .connect(Some(who))
        .await
        .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    client.version(proto::VersionRequest {}).await?;
    Ok(client)
}

/// The backlog of the socket listening on `addr`, as iproute2's `ss` reports it (Send-Q).
fn listen_queue(addr: std::net::SocketAddr) -> usize {
    let out = std::process::Command::new("ss")
        .args(["-Hltn", &format!("sport = :{}", addr.port())])
        .output()
        .expect("running ss (iproute2)");
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().next().unwrap_or_else(|| panic!("ss: {text}"));
    line.split_whitespace().nth(2).unwrap().parse().unwrap()
}

type Client = proto::device_service_client::DeviceServiceClient<tonic::transport::Channel>;

#[tokio::test]
async fn the_admin_gets_in_while_others_hold_every_place_they_can() {
    let h = Harness::start();
    let admin = h.pki.admin.clone();
    // A short listen queue overflows under the flood below and the kernel drops the admin's SYN.
    let somaxconn: usize = std::fs::read_to_string("/proc/sys/net/core/somaxconn")
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert_eq!(
        listen_queue(h.addr()),
        somaxconn.min(4096),
        "listen backlog"
    );
    println!("the admin's connect + Version call, 5 tries each:");
    row("no load", admin_latency(&h, &admin).await);

    // 200 sockets that never start TLS.
    let sockets: Vec<_> = (0..200)
        .map(|_| std::net::TcpStream::connect(h.addr()).unwrap())
        .collect();
    row("200 idle sockets", admin_latency(&h, &admin).await);

    // 32 idle connections with one reader certificate, as the lockout was first shown...
    let mut held = Vec::new();
    let mut refused = Vec::new();
    for _ in 0..32 {
        match idle_reader(&h, &h.pki.reader).await {
            Ok(client) => held.push(client),
            Err(status) => refused.push(status),
        }
    }
    let limits = Limits::default();
    assert_eq!(
        held.len(),
        limits.max_per_identity,
        "one certificate's share"
    );
    assert_eq!(
        refused[0].code(),
        Code::ResourceExhausted,
        "{:?}",
        refused[0]
    );
    assert!(
        refused[0]
            .message()
            .contains("CN=test reader, O=cairn:reader already holds 4 connections"),
        "{:?}",
        refused[0]
    );
    // ...and with eight reader certificates, 32 more.
    let readers: Vec<Pem> = (0..8)
        .map(|i| h.pki.ca.client(&format!("reader {i}"), &["cairn:reader"]))
        .collect();
    for who in &readers {
        for _ in 0..4 {
            match idle_reader(&h, who).await {
                Ok(client) => held.push(client),
                Err(status) => refused.push(status),
            }
        }
    }
    let shared = limits.max_connections - limits.admin_reserve;
    assert_eq!(
        held.len(),
        shared,
        "roles below admin hold the shared places only"
    );
    assert!(
        refused
            .iter()
            .any(|s| s.message().contains("kept for the admin")),
        "{refused:?}"
    );
    row(
        "+ 24 idle reader connections held (40 refused)",
        admin_latency(&h, &admin).await,
    );

    // A reader that reconnects as fast as it can, and a peer that opens sockets as fast as it can.
    let stop = Arc::new(AtomicBool::new(false));
    let attempts = Arc::new(AtomicUsize::new(0));
    let mut floods = Vec::new();
    for tls in [true, false] {
        let (stop, attempts) = (stop.clone(), attempts.clone());
        let (addr, reader) = (h.addr(), readers[0].clone());
        let ca = h.pki.ca.pem();
        floods.push(std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                while !stop.load(Ordering::Relaxed) {
                    attempts.fetch_add(1, Ordering::Relaxed);
                    if tls {
                        let _ = common::connect_to(addr, &ca, Some(&reader)).await;
                    } else {
                        let _ = tokio::net::TcpStream::connect(addr).await;
                    }
                }
            });
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    row(
        "+ a reader and a TCP peer reconnecting nonstop",
        admin_latency(&h, &admin).await,
    );
    stop.store(true, Ordering::Relaxed);
    for flood in floods {
        flood.join().unwrap();
    }
    println!(
        "  ({} reconnects during the last row)",
        attempts.load(Ordering::Relaxed)
    );
    drop((sockets, held));
}

#[tokio::test]
async fn an_idle_connection_is_closed_and_a_stream_is_not_idle() {
    let limits = Limits {
        idle_timeout: Duration::from_millis(400),
        max_per_identity: 1,
        ..Limits::default()
    };
    let h = Harness::with_limits(limits);
    let reader = h.pki.reader.clone();

    // While the first connection is open, the same certificate gets no second one.
    let mut first = idle_reader(&h, &reader).await.unwrap();
    let status = idle_reader(&h, &reader).await.err().unwrap();
    assert!(
        status.message().contains("already holds 1 connections"),
        "{status:?}"
    );

    // A stream that follows keeps its connection busy past the idle timeout.
    let mut follow = first
        .logs(proto::LogsRequest {
            source: Some(proto::logs_request::Source::Kernel(proto::KernelLog {})),
            tail: 1,
            follow: true,
        })
        .await
        .unwrap()
        .into_inner();
    follow.message().await.unwrap().unwrap();
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert!(
        idle_reader(&h, &reader).await.is_err(),
        "a connection with a stream in flight was closed as idle"
    );

    // Once the stream ends, the connection is idle, is closed, and its place is free again.
    drop(follow);
    let start = Instant::now();
    loop {
        match idle_reader(&h, &reader).await {
            Ok(_) => break,
            Err(_) if start.elapsed() < Duration::from_secs(5) => {
                tokio::time::sleep(Duration::from_millis(100)).await
            }
            Err(status) => panic!("the idle connection was never closed: {status:?}"),
        }
    }
    drop(first);
}
