//! The SNTP client against a real NTP server: chrony, run in the foreground inside a network
//! namespace of the test's own, so it can listen on port 123 without meeting the host's.
//!
//! Nothing here sets the host's clock: chronyd runs with `-x` (no clock control), and the
//! client reads the real clock or a [`FakeClock`] whose steps are only recorded.

mod support;

use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use cairn_netcfg::sntp::{
    self, from_unix_nanos, query, unix_nanos, Clock, Error, Offset, Sync, SyncConfig,
};
use support::{NetNs, Proc};

const SERVER: &str = "127.0.0.1:123";
const HOUR_NS: i64 = 3_600_000_000_000;

/// chronyd serving its own clock as a stratum-1 source (`local stratum 1`): it answers at once,
/// with no upstream source, and never touches the clock (`-x`).
struct Chrony {
    _proc: Proc,
    dir: tempfile::TempDir,
}

impl Chrony {
    fn start(ns: &NetNs) -> Chrony {
        let dir = tempfile::tempdir().unwrap();
        let conf = dir.path().join("chrony.conf");
        let text = format!(
            "local stratum 1\n\
             allow 127.0.0.1\n\
             bindaddress 127.0.0.1\n\
             port 123\n\
             cmdport 0\n\
             pidfile {}\n",
            dir.path().join("chronyd.pid").display()
        );
        std::fs::write(&conf, text).unwrap();
        let log = std::fs::File::create(dir.path().join("chronyd.log")).unwrap();
        let child = ns
            .command("chronyd")
            .args(["-d", "-x", "-f"])
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start chronyd (apt-get install chrony)");
        let chrony = Chrony {
            _proc: Proc(child),
            dir,
        };
        chrony.wait_until_serving(ns);
        chrony
    }

    /// Waits for chronyd's first good answer, not for a fixed time.
    fn wait_until_serving(&self, ns: &NetNs) {
        let last = ns.run(|| {
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                match query(SERVER.parse().unwrap(), Duration::from_millis(200)) {
                    Ok(_) => return None,
                    Err(e) if Instant::now() > deadline => return Some(e.to_string()),
                    Err(_) => std::thread::sleep(Duration::from_millis(50)),
                }
            }
        });
        if let Some(e) = last {
            let log = std::fs::read_to_string(self.dir.path().join("chronyd.log"));
            panic!(
                "chronyd never answered ({e}); its log:\n{}",
                log.unwrap_or_default()
            );
        }
    }
}

/// A clock `skew` ahead of the real one; a step is recorded and moves the skew, never the host.
#[derive(Clone, Default)]
struct FakeClock {
    skew: Arc<Mutex<i64>>,
    steps: Arc<Mutex<Vec<Offset>>>,
}

impl Clock for FakeClock {
    fn now(&self) -> SystemTime {
        let skew = i128::from(*self.skew.lock().unwrap());
        from_unix_nanos(unix_nanos(SystemTime::now()) + skew).unwrap()
    }

    fn step(&mut self, by: Offset) -> io::Result<()> {
        *self.skew.lock().unwrap() += by.as_nanos();
        self.steps.lock().unwrap().push(by);
        Ok(())
    }
}

#[test]
fn chrony_agrees_with_our_clock() {
    let ns = NetNs::new("sntp");
    let _chrony = Chrony::start(&ns);
    let sample = ns
        .run(|| query(SERVER.parse().unwrap(), Duration::from_secs(2)))
        .unwrap();
    assert_eq!(sample.server, SERVER.parse::<SocketAddr>().unwrap());
    // The server reads the same clock as we do.
    assert!(
        sample.offset.abs() < Duration::from_millis(50),
        "{}",
        sample.offset
    );
    assert!(
        sample.delay < Duration::from_millis(50),
        "{:?}",
        sample.delay
    );
    // `local stratum 1` makes chronyd answer as a primary server (reference id 127.127.1.1).
    assert_eq!(sample.stratum, 1);
}

#[test]
fn sync_steps_a_clock_that_is_an_hour_ahead() {
    let ns = NetNs::new("sntp");
    let _chrony = Chrony::start(&ns);
    let clock = FakeClock::default();
    *clock.skew.lock().unwrap() = HOUR_NS;
    let steps = clock.steps.clone();

    let (first, second, interval) = ns.run(move || {
        let config = SyncConfig {
            sample_spacing: Duration::from_millis(20),
            ..SyncConfig::new(vec!["127.0.0.1".parse().unwrap()])
        };
        let mut sync = Sync::new(config, clock);
        let first = sync.boot(Duration::from_secs(10)).unwrap();
        let second = sync.round().unwrap();
        (first, second, sync.interval())
    });

    assert!(first.stepped);
    assert_eq!((first.server.as_str(), first.stratum), (SERVER, 1));
    let error = first.offset.as_nanos() + HOUR_NS;
    assert!(error.abs() < 50_000_000, "offset {}", first.offset);
    assert_eq!(steps.lock().unwrap().as_slice(), &[first.offset]);
    // After the step the fake clock agrees with chrony: the next round only reports.
    assert!(!second.stepped);
    assert!(
        second.offset.abs() < Duration::from_millis(50),
        "{}",
        second.offset
    );
    assert_eq!(steps.lock().unwrap().len(), 1);
    assert_eq!(interval, Duration::from_secs(128));
}

#[test]
fn a_silent_server_times_out_naming_it() {
    let ns = NetNs::new("sntp");
    let (silent, e, refused) = ns.run(|| {
        // Bound, so no ICMP "port unreachable" comes back, but it never answers.
        let socket = UdpSocket::bind("127.0.0.1:123").unwrap();
        let silent = socket.local_addr().unwrap();
        let e = query(silent, Duration::from_millis(300)).unwrap_err();
        drop(socket);
        let refused = query(silent, Duration::from_secs(2)).unwrap_err();
        (silent, e, refused)
    });
    assert!(matches!(e, Error::Timeout { .. }), "{e}");
    assert_eq!(
        e.to_string(),
        format!("ntp server {silent} did not answer within 300ms")
    );
    // With nothing bound, the kernel's port-unreachable ends the wait early.
    assert!(matches!(refused, Error::Socket { .. }), "{refused}");
    assert_eq!(
        refused.to_string(),
        format!("ntp server {silent}: receiving the reply")
    );
    let source = std::error::Error::source(&refused).unwrap().to_string();
    assert!(source.contains("refused"), "{source}");
}

#[test]
fn sync_reports_when_no_server_answers() {
    let ns = NetNs::new("sntp");
    let e = ns.run(|| {
        let config = SyncConfig {
            timeout: Duration::from_millis(200),
            ..SyncConfig::new(vec!["127.0.0.1:1123".parse::<sntp::Server>().unwrap()])
        };
        let mut sync = Sync::new(config, FakeClock::default());
        sync.boot(Duration::ZERO).unwrap_err()
    });
    assert_eq!(
        e.to_string(),
        "no ntp server answered (tried 127.0.0.1:1123)"
    );
}
