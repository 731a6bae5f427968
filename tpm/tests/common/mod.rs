//! swtpm for the tests: one instance per test on free loopback ports with its own state
//! directory, stopped by pid when the test ends.
#![allow(dead_code)]

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use cairn_tpm::Tpm;

pub struct Swtpm {
    child: Child,
    _state: tempfile::TempDir,
    pub port: u16,
}

impl Drop for Swtpm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind a loopback port")
        .port()
}

/// Starts swtpm and returns it with a connection to its command port. The TPM is ready when
/// the port accepts a connection; a port taken in between makes swtpm exit, and the start is
/// retried on fresh ports.
pub fn start_swtpm() -> (Swtpm, Tpm) {
    if Command::new("swtpm").arg("--version").output().is_err() {
        panic!("swtpm is not installed: `cargo xtask setup` installs it (Debian packages swtpm, swtpm-tools)");
    }
    for _ in 0..5 {
        let state = tempfile::tempdir().expect("state dir");
        // The control port next to the command port, where the tss2 swtpm TCTI looks for it.
        let port = free_port();
        let ctrl = port.wrapping_add(1);
        let child = Command::new("swtpm")
            .arg("socket")
            .arg("--tpm2")
            .arg("--server")
            .arg(format!("type=tcp,port={port}"))
            .arg("--ctrl")
            .arg(format!("type=tcp,port={ctrl}"))
            .arg("--flags")
            .arg("not-need-init,startup-clear")
            .arg("--tpmstate")
            .arg(format!("dir={}", state.path().display()))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn swtpm");
        let mut swtpm = Swtpm {
            child,
            _state: state,
            port,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(mut tpm) = Tpm::connect_tcp(&format!("127.0.0.1:{port}")) {
                tpm.startup_clear().expect("TPM2_Startup");
                return (swtpm, tpm);
            }
            if swtpm.child.try_wait().expect("poll swtpm").is_some() || Instant::now() > deadline {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    panic!("swtpm did not come up on a loopback port");
}
