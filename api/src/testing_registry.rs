//! A real OCI registry for tests: Debian's `docker-registry` (distribution 2.8) started on a
//! loopback port with a storage directory of its own and a certificate from a throwaway CA,
//! optionally with token auth against a token server written here; and a TCP proxy that cuts
//! one connection mid-answer. The test owns the processes: [`Registry`]'s drop kills the
//! registry by its pid.
//!
//! Behind the `testing` feature, like [`crate::testing`]: none of this is in the device binary.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SigningKey as _,
};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{RootCertStore, ServerConfig, ServerConnection, StreamOwned};

/// The registry binary Debian's `docker-registry` package installs.
pub const BINARY: &str = "/usr/bin/docker-registry";
/// The credentials the token server takes.
pub const USER: &str = "cairn";
pub const PASSWORD: &str = "s3cret-pass";
const SERVICE: &str = "cairn-test-registry";
const ISSUER: &str = "cairn-test-issuer";

/// A CA and certificates made with rcgen.
pub(crate) struct Ca {
    pub(crate) issuer: CertifiedIssuer<'static, KeyPair>,
}

impl Ca {
    pub(crate) fn new(name: &str) -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate().expect("a key");
        Ca {
            issuer: CertifiedIssuer::self_signed(params, key).expect("a CA"),
        }
    }

    /// A leaf for 127.0.0.1 and localhost: (certificate PEM, DER, key).
    fn leaf(&self, server: bool) -> (String, Vec<u8>, KeyPair) {
        let mut params =
            CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
                .expect("leaf params");
        params
            .distinguished_name
            .push(DnType::CommonName, "cairn test registry");
        if server {
            params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        }
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        let key = KeyPair::generate().expect("a key");
        let cert = params.signed_by(&key, &self.issuer).expect("a leaf");
        (cert.pem(), cert.der().to_vec(), key)
    }
}

/// A directory removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(what: &str) -> TempDir {
        static N: AtomicUsize = AtomicUsize::new(0);
        let path = std::env::temp_dir().join(format!(
            "cairn-{what}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        std::fs::create_dir_all(&path).expect("a temp dir");
        TempDir(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

pub(crate) fn tls_server(chain_pem: &str, key: &KeyPair) -> Arc<ServerConfig> {
    let chain = CertificateDer::pem_slice_iter(chain_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .expect("PEM");
    let key = PrivateKeyDer::from_pem_slice(key.serialize_pem().as_bytes()).expect("a key");
    let config =
        ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_protocol_versions(&[&rustls::version::TLS13])
            .expect("TLS 1.3")
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .expect("a server config");
    Arc::new(config)
}

/// A running `docker-registry serve`, over HTTPS on 127.0.0.1.
pub struct Registry {
    child: Child,
    dir: TempDir,
    addr: SocketAddr,
    ca_pem: String,
    token: Option<TokenServer>,
}

impl Registry {
    /// Starts the registry (with token auth when `token_auth`), or prints one line and returns
    /// `None` when the binary is not installed.
    pub fn start(token_auth: bool) -> Option<Registry> {
        if !Path::new(BINARY).exists() {
            println!("skipped: {BINARY} is not installed (apt-get install docker-registry)");
            return None;
        }
        let dir = TempDir::new("registry");
        let ca = Ca::new("cairn test registry CA");
        let (cert, _, key) = ca.leaf(true);
        std::fs::write(dir.0.join("cert.pem"), &cert).expect("write");
        std::fs::write(dir.0.join("key.pem"), key.serialize_pem()).expect("write");
        let server = tls_server(&cert, &key);
        let token = token_auth.then(|| TokenServer::start(server.clone(), &dir.0));
        let port = free_port();
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let auth = match &token {
            Some(t) => format!(
                "auth:\n  token:\n    realm: https://127.0.0.1:{}/token\n    service: {SERVICE}\n    \
                 issuer: {ISSUER}\n    rootcertbundle: {}\n",
                t.addr.port(),
                dir.0.join("token-ca.pem").display()
            ),
            None => String::new(),
        };
        let config = format!(
            "version: 0.1\nlog:\n  level: warn\n  accesslog:\n    disabled: true\nstorage:\n  \
             filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: {addr}\n  \
             secret: cairn-test\n  tls:\n    certificate: {}\n    key: {}\n{auth}",
            dir.0.join("storage").display(),
            dir.0.join("cert.pem").display(),
            dir.0.join("key.pem").display(),
        );
        std::fs::write(dir.0.join("config.yml"), config).expect("write");
        let log = std::fs::File::create(dir.0.join("registry.log")).expect("a log");
        let child = Command::new(BINARY)
            .arg("serve")
            .arg(dir.0.join("config.yml"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("a log"))
            .stderr(log)
            .spawn()
            .expect("docker-registry starts");
        let mut registry = Registry {
            child,
            dir,
            addr,
            ca_pem: ca.issuer.pem(),
            token,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(addr).is_err() {
            if let Ok(Some(status)) = registry.child.try_wait() {
                panic!(
                    "docker-registry exited ({status}): {}",
                    std::fs::read_to_string(registry.dir.0.join("registry.log"))
                        .unwrap_or_default()
                );
            }
            assert!(
                Instant::now() < deadline,
                "docker-registry did not listen on {addr} within 20 s"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Some(registry)
    }

    /// `127.0.0.1:PORT`.
    pub fn host(&self) -> String {
        self.addr.to_string()
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The CA of the registry's (and the token server's) certificate, PEM.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    pub fn roots(&self) -> RootCertStore {
        crate::fetch::roots_from_pem(&self.ca_pem).expect("the test CA")
    }

    /// Where the registry keeps a blob's bytes (manifests are blobs too).
    pub fn blob_path(&self, digest: &str) -> PathBuf {
        let hex = digest.strip_prefix("sha256:").expect("a sha256 digest");
        self.dir
            .0
            .join("storage/docker/registry/v2/blobs/sha256")
            .join(&hex[..2])
            .join(hex)
            .join("data")
    }

    /// The token server's requests so far: (request target, whether the credentials were right).
    pub fn token_requests(&self) -> Vec<(String, bool)> {
        self.token
            .as_ref()
            .map(|t| t.requests.lock().expect("lock").clone())
            .unwrap_or_default()
    }

    /// The registry's log, for a failing test's message.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.0.join("registry.log")).unwrap_or_default()
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Issues the registry's JWTs (ES256, the signing certificate in `x5c`, chained to the CA the
/// registry's `rootcertbundle` names) to clients that show [`USER`] and [`PASSWORD`].
struct TokenServer {
    addr: SocketAddr,
    requests: Arc<Mutex<Vec<(String, bool)>>>,
}

impl TokenServer {
    fn start(tls: Arc<ServerConfig>, dir: &Path) -> TokenServer {
        let ca = Ca::new("cairn test token CA");
        std::fs::write(dir.join("token-ca.pem"), ca.issuer.pem()).expect("write");
        let (_, der, key) = ca.leaf(false);
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("an address");
        let requests = Arc::new(Mutex::new(Vec::new()));
        let seen = requests.clone();
        let signer = Arc::new((der, key));
        std::thread::spawn(move || {
            for tcp in listener.incoming().flatten() {
                let (tls, seen, signer) = (tls.clone(), seen.clone(), signer.clone());
                std::thread::spawn(move || {
                    let _ = serve_token(tcp, tls, &seen, &signer.0, &signer.1);
                });
            }
        });
        TokenServer { addr, requests }
    }
}

fn serve_token(
    tcp: TcpStream,
    tls: Arc<ServerConfig>,
    seen: &Mutex<Vec<(String, bool)>>,
    cert_der: &[u8],
    key: &KeyPair,
) -> io::Result<()> {
    let conn = ServerConnection::new(tls).map_err(io::Error::other)?;
    let mut stream = BufReader::new(StreamOwned::new(conn, tcp));
    let mut target = String::new();
    let mut authorized = false;
    let mut first = true;
    loop {
        let mut line = String::new();
        if stream.read_line(&mut line)? == 0 {
            return Ok(());
        }
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if first {
            target = line.split(' ').nth(1).unwrap_or_default().to_string();
            first = false;
        } else if let Some((name, value)) = line.split_once(':') {
            if name.eq_ignore_ascii_case("authorization") {
                let expected =
                    base64::engine::general_purpose::STANDARD.encode(format!("{USER}:{PASSWORD}"));
                authorized = value.trim() == format!("Basic {expected}");
            }
        }
    }
    seen.lock()
        .expect("lock")
        .push((target.clone(), authorized));
    let (status, body) = if authorized {
        let scope = query(&target, "scope").unwrap_or_default();
        (
            "200 OK",
            format!(r#"{{"token":"{}"}}"#, jwt(&scope, cert_der, key)),
        )
    } else {
        (
            "401 Unauthorized",
            r#"{"errors":[{"code":"UNAUTHORIZED","message":"wrong user name or password"}]}"#
                .to_string(),
        )
    };
    let stream = stream.get_mut();
    write!(
        stream,
        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{body}",
        body.len()
    )?;
    stream.flush()?;
    stream.conn.send_close_notify();
    stream.flush()
}

/// A query parameter's value, percent-decoded.
fn query(target: &str, name: &str) -> Option<String> {
    let (_, q) = target.split_once('?')?;
    let value = q
        .split('&')
        .find_map(|kv| kv.strip_prefix(&format!("{name}=")))?;
    let mut out = Vec::new();
    let bytes = value.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

/// A JWT granting `scope` (`repository:NAME:ACTIONS`), signed ES256.
fn jwt(scope: &str, cert_der: &[u8], key: &KeyPair) -> String {
    let b64 = |bytes: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
    let header = serde_json::json!({
        "typ": "JWT",
        "alg": "ES256",
        "x5c": [base64::engine::general_purpose::STANDARD.encode(cert_der)],
    });
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after 1970")
        .as_secs();
    let access: Vec<serde_json::Value> = scope
        .split(' ')
        .filter_map(|s| {
            let mut parts = s.splitn(3, ':');
            let (kind, name, actions) = (parts.next()?, parts.next()?, parts.next()?);
            Some(serde_json::json!({
                "type": kind,
                "name": name,
                "actions": actions.split(',').collect::<Vec<_>>(),
            }))
        })
        .collect();
    let claims = serde_json::json!({
        "iss": ISSUER,
        "sub": USER,
        "aud": SERVICE,
        "exp": now + 600,
        "nbf": now - 60,
        "iat": now - 60,
        "jti": format!("{now}-{}", std::process::id()),
        "access": access,
    });
    let signed = format!(
        "{}.{}",
        b64(header.to_string().as_bytes()),
        b64(claims.to_string().as_bytes())
    );
    let der = key.sign(signed.as_bytes()).expect("a signature");
    format!("{signed}.{}", b64(&der_to_raw(&der)))
}

/// An ECDSA signature as DER (SEQUENCE of two INTEGERs) to JOSE's r ‖ s, 32 bytes each.
fn der_to_raw(der: &[u8]) -> Vec<u8> {
    let mut at = 2;
    let mut out = Vec::new();
    for _ in 0..2 {
        assert_eq!(der[at], 0x02, "an INTEGER");
        let len = der[at + 1] as usize;
        let int = &der[at + 2..at + 2 + len];
        let int = &int[int.len().saturating_sub(32)..];
        out.extend(std::iter::repeat_n(0u8, 32 - int.len()));
        out.extend_from_slice(int);
        at += 2 + len;
    }
    out
}

/// A TCP proxy to `target` that cuts the first connection whose answer passes `cut_after`
/// bytes (both directions shut), and forwards everything else.
pub struct CuttingProxy {
    pub addr: SocketAddr,
    /// Bytes each connection carried from the server, in the order connections closed.
    pub answered: Arc<Mutex<Vec<u64>>>,
    pub cut: Arc<AtomicBool>,
}

impl CuttingProxy {
    pub fn start(target: SocketAddr, cut_after: u64) -> CuttingProxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("an address");
        let answered = Arc::new(Mutex::new(Vec::new()));
        let cut = Arc::new(AtomicBool::new(false));
        let (a, c) = (answered.clone(), cut.clone());
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                let Ok(server) = TcpStream::connect(target) else {
                    continue;
                };
                let (a, c) = (a.clone(), c.clone());
                std::thread::spawn(move || proxy(client, server, cut_after, &a, &c));
            }
        });
        CuttingProxy {
            addr,
            answered,
            cut,
        }
    }
}

fn proxy(
    client: TcpStream,
    server: TcpStream,
    cut_after: u64,
    answered: &Mutex<Vec<u64>>,
    cut: &AtomicBool,
) {
    let (Ok(mut c2), Ok(mut s2)) = (client.try_clone(), server.try_clone()) else {
        return;
    };
    let up = std::thread::spawn(move || {
        let _ = io::copy(&mut c2, &mut s2);
        let _ = s2.shutdown(Shutdown::Write);
    });
    let (mut from, mut to) = (server, client);
    let mut total = 0u64;
    let mut buf = [0u8; 16384];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if total + n as u64 > cut_after && !cut.swap(true, Ordering::SeqCst) {
            let keep = (cut_after - total) as usize;
            let _ = to.write_all(&buf[..keep]);
            total += keep as u64;
            let _ = to.shutdown(Shutdown::Both);
            let _ = from.shutdown(Shutdown::Both);
            break;
        }
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
        total += n as u64;
    }
    let _ = to.shutdown(Shutdown::Write);
    let _ = up.join();
    answered.lock().expect("lock").push(total);
}
