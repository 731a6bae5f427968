//! Sends one API message, a raw gRPC request body, to the device's API server as an admin, and
//! returns how the call ended: `Ok` when the device answered OK, else the gRPC status message.

use std::net::TcpListener;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use cairn_api::{Device, Limits, Options, TlsConfig};
use cairn_pki::{issue_client, issue_server, Ca, CaKind, Role, Validity};
use http_body_util::{BodyExt as _, Full};
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};
use tower::ServiceExt as _;

/// The device's trust and an admin's identity, made once per test run with Cairn's own PKI.
struct Pki {
    server: TlsConfig,
    device_ca: String,
    admin_cert: String,
    admin_key: String,
}

fn pki() -> &'static Pki {
    static PKI: OnceLock<Pki> = OnceLock::new();
    PKI.get_or_init(|| {
        let client_ca = Ca::generate(CaKind::Client, "hostile client CA").unwrap();
        let device_ca = Ca::generate(CaKind::Device, "hostile device CA").unwrap();
        let server =
            issue_server(&device_ca, "localhost", &[], Validity::days_from_now(1)).unwrap();
        let admin = issue_client(
            &client_ca,
            "hostile admin",
            Role::Admin,
            Validity::days_from_now(1),
        )
        .unwrap();
        Pki {
            server: TlsConfig::from_pem(
                client_ca.cert_pem().as_bytes(),
                server.cert_pem.as_bytes(),
                server.key_pem.as_bytes(),
            )
            .unwrap(),
            device_ca: device_ca.cert_pem().to_string(),
            admin_cert: admin.cert_pem,
            admin_key: admin.key_pem,
        }
    })
}

/// Serves `device` on loopback with the device's limits, sends `body` as the whole
/// request body of `method`, and stops the server.
pub fn call(device: Arc<dyn Device>, method: &str, body: &[u8]) -> Result<(), String> {
    let pki = pki();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let options = Options {
        // The device's limits, but for the wait at shutdown: every call has ended by then.
        limits: Limits {
            shutdown_grace: Duration::from_millis(50),
            ..Limits::default()
        },
        log: Arc::new(|_: &str| {}),
    };
    let server = cairn_api::serve(listener, &pki.server, device, options).unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let got = runtime.block_on(send(port, method, body.to_vec()));
    server.shutdown().unwrap();
    got
}

async fn send(port: u16, method: &str, body: Vec<u8>) -> Result<(), String> {
    let pki = pki();
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(&pki.device_ca))
        .identity(Identity::from_pem(&pki.admin_cert, &pki.admin_key))
        .domain_name("localhost");
    let channel = Endpoint::from_shared(format!("https://127.0.0.1:{port}"))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect()
        .await
        .map_err(|e| format!("no connection: {e:?}"))?;
    let request = http::Request::builder()
        .method("POST")
        .uri(format!(
            "https://127.0.0.1:{port}/{}/{method}",
            cairn_api::SERVICE
        ))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(tonic::body::Body::new(Full::new(Bytes::from(body))))
        .unwrap();
    let response = channel
        .oneshot(request)
        .await
        .map_err(|e| format!("the call failed below gRPC: {e}"))?;
    // A refusal before any answer comes in the headers (trailers-only); else in the trailers.
    let (parts, body) = response.into_parts();
    let trailers = if parts.headers.contains_key("grpc-status") {
        parts.headers
    } else {
        body.collect()
            .await
            .map_err(|e| format!("the answer broke off: {e}"))?
            .trailers()
            .cloned()
            .ok_or("the answer has no gRPC status")?
    };
    let status = trailers
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .ok_or("the answer has no gRPC status")?;
    if status == "0" {
        return Ok(());
    }
    let message = trailers
        .get("grpc-message")
        .map(|v| percent_decode(v.as_bytes()))
        .unwrap_or_default();
    Err(format!("status {status}: {message}"))
}

/// grpc-message is percent-encoded UTF-8.
fn percent_decode(raw: &[u8]) -> String {
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        let hex = raw
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (raw[i], hex) {
            (b'%', Some(b)) => {
                out.push(b);
                i += 3;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}
