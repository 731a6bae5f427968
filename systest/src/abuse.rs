//! A hostile client of the management API that is not ours: Python grpcio (Debian's
//! python3-grpcio) through stubs Debian's protoc makes from the shipped .proto files, running
//! `systest/abuse/client.py` against a device. [`run`] prepares its certificates (the
//! development roles, a client CA the device does not know, an expired certificate from the
//! right CA) and returns what it saw, one entry per case.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime};

use cairn_pki::{Ca, CaKind, Role, Validity};

use crate::keys_dir;

/// Debian's interpreter, which sees Debian's python3-grpcio (a pyenv or venv python may not).
const PYTHON: &str = "/usr/bin/python3";
const GRPC_PYTHON_PLUGIN: &str = "/usr/bin/grpc_python_plugin";

fn run_tool(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{cmd:?}: {e} (run `cargo xtask setup`)"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Python stubs for the shipped protos in `out` (for `PYTHONPATH`).
pub fn python_stubs(out: &Path) {
    let protos = Path::new(env!("CARGO_MANIFEST_DIR")).join("../api/proto");
    let mut files: Vec<PathBuf> = std::fs::read_dir(protos.join("cairn/v1"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "proto"))
        .collect();
    files.sort();
    std::fs::create_dir_all(out).unwrap();
    run_tool(
        Command::new("protoc")
            .arg("-I")
            .arg(&protos)
            .arg(format!("--python_out={}", out.display()))
            .arg(format!("--grpc_python_out={}", out.display()))
            .arg(format!(
                "--plugin=protoc-gen-grpc_python={GRPC_PYTHON_PLUGIN}"
            ))
            .args(&files),
    );
}

/// Runs the hostile client against `endpoint` (a port forwarded to the device's API) with
/// `bundle` as the upload it cuts short; `dir` takes its stubs and certificates.
pub fn run(endpoint: &str, dir: &Path, bundle: &Path) -> serde_json::Value {
    let stubs = dir.join("abuse-stubs");
    python_stubs(&stubs);
    let certs = dir.join("abuse-certs");
    std::fs::create_dir_all(&certs).unwrap();
    let secrets = keys_dir().join("secrets");
    std::fs::copy(secrets.join("device-ca.crt"), certs.join("ca.pem")).unwrap();
    for role in ["reader", "operator", "admin"] {
        std::fs::copy(
            secrets.join(format!("{role}.crt")),
            certs.join(format!("{role}.pem")),
        )
        .unwrap();
        std::fs::copy(
            secrets.join(format!("{role}.key")),
            certs.join(format!("{role}.key")),
        )
        .unwrap();
    }
    let write = |name: &str, issued: cairn_pki::Issued| {
        std::fs::write(certs.join(format!("{name}.pem")), issued.cert_pem).unwrap();
        std::fs::write(certs.join(format!("{name}.key")), issued.key_pem).unwrap();
    };
    // An admin certificate from a client CA the device never heard of.
    let stranger = Ca::generate(CaKind::Client, "stranger client CA").unwrap();
    write(
        "stranger",
        cairn_pki::issue_client(&stranger, "stranger", Role::Admin, stranger.validity()).unwrap(),
    );
    // An admin certificate from the device's own client CA, expired yesterday.
    let client_ca = Ca::from_pem(
        &std::fs::read_to_string(secrets.join("client-ca.crt")).unwrap(),
        &std::fs::read_to_string(secrets.join("client-ca.key")).unwrap(),
    )
    .unwrap();
    let now = SystemTime::now();
    let day = Duration::from_secs(86_400);
    write(
        "expired",
        cairn_pki::issue_client(
            &client_ca,
            "expired admin",
            Role::Admin,
            Validity {
                not_before: now - 30 * day,
                not_after: now - day,
            },
        )
        .unwrap(),
    );
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("abuse/client.py");
    let out = run_tool(
        Command::new(PYTHON)
            .arg(script)
            .arg(endpoint)
            .arg(&certs)
            .arg(bundle)
            .env("PYTHONPATH", &stubs)
            .env("PYTHONDONTWRITEBYTECODE", "1"),
    );
    eprintln!("hostile client: {out}");
    serde_json::from_str(out.trim()).unwrap()
}
