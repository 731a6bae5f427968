//! Interop with a gRPC stack that is not ours: Python grpcio (Debian's python3-grpcio) calls
//! the server through stubs that Debian's protoc and gRPC Python plugin generate from the
//! shipped .proto files, with the test's certificates. `cargo xtask setup` installs all three.

mod common;

use std::path::Path;
use std::process::Command;

use cairn_api::testing::OS_VERSION;
use cairn_api::Rpc;
use common::Harness;

/// Debian's interpreter, which sees Debian's python3-grpcio (a pyenv or venv python may not).
const PYTHON: &str = "/usr/bin/python3";
const GRPC_PYTHON_PLUGIN: &str = "/usr/bin/grpc_python_plugin";

fn run(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{cmd:?}: {e} (run `cargo xtask setup`)"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn python_grpcio_calls_version_and_health_through_the_shipped_protos() {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    let protos = manifest.join("proto");
    let work = tempfile::tempdir().unwrap();
    let stubs = work.path().join("stubs");
    std::fs::create_dir(&stubs).unwrap();

    let mut files: Vec<_> = std::fs::read_dir(protos.join("cairn/v1"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    run(Command::new("protoc")
        .arg("-I")
        .arg(&protos)
        .arg(format!("--python_out={}", stubs.display()))
        .arg(format!("--grpc_python_out={}", stubs.display()))
        .arg(format!(
            "--plugin=protoc-gen-grpc_python={GRPC_PYTHON_PLUGIN}"
        ))
        .args(&files));

    let h = Harness::start();
    h.pki.write(work.path(), "reader", &h.pki.reader);
    let out = run(Command::new(PYTHON)
        .arg(manifest.join("tests/interop/client.py"))
        .arg(h.addr().to_string())
        .arg(work.path())
        .env("PYTHONPATH", &stubs)
        .env("PYTHONDONTWRITEBYTECODE", "1"));
    let seen: serde_json::Value = serde_json::from_str(out.trim()).unwrap();

    assert_eq!(seen["os_version"], OS_VERSION);
    assert_eq!(seen["arch"], "aarch64");
    assert_eq!(seen["running_slot"], "SLOT_A");
    assert_eq!(seen["api_version"], cairn_api::API_VERSION);
    assert_eq!(seen["healthy"], false);
    assert_eq!(
        seen["checks"],
        serde_json::json!([
            ["services", "CHECK_STATE_PASSING", ""],
            [
                "tcp 127.0.0.1:6443",
                "CHECK_STATE_FAILING",
                "connection refused"
            ]
        ])
    );
    assert_eq!(seen["log_lines"], serde_json::json!(["line 0", "line 1"]));
    let reboot = seen["reboot"].as_str().unwrap();
    assert!(
        reboot.starts_with("PERMISSION_DENIED: Reboot needs the operator role"),
        "{reboot}"
    );
    assert_eq!(
        h.device.take_calls(),
        [Rpc::Version, Rpc::Health, Rpc::Logs]
    );
    // The denial is logged before it is answered.
    assert!(
        h.log_lines()
            .iter()
            .any(|l| l.starts_with("denied Reboot to CN=test reader")),
        "{:#?}",
        h.log_lines()
    );
}
