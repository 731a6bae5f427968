//! What the API tests share: a throwaway PKI made with rcgen, a server on 127.0.0.1:0 with
//! [`FakeDevice`], and a tonic client over rustls.

#![allow(dead_code)]

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cairn_api::proto::{self, device_service_client::DeviceServiceClient};
use cairn_api::testing::FakeDevice;
use cairn_api::{Device, DeviceError, Limits, Options, Server, Sink, TlsConfig, UpgradeSource};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

/// A certificate and its key, PEM.
#[derive(Clone)]
pub struct Pem {
    pub cert: String,
    pub key: String,
}

pub struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

impl Ca {
    pub fn new(name: &str) -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let issuer = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        Ca { issuer }
    }

    pub fn pem(&self) -> String {
        self.issuer.pem()
    }

    /// A client certificate: CN `name`, one O per entry of `organizations`.
    pub fn client(&self, name: &str, organizations: &[&str]) -> Pem {
        self.client_valid(name, organizations, None)
    }

    /// A client certificate that expired in 2021.
    pub fn expired_client(&self, name: &str, organization: &str) -> Pem {
        let window = (
            rcgen::date_time_ymd(2020, 1, 1),
            rcgen::date_time_ymd(2021, 1, 1),
        );
        self.client_valid(name, &[organization], Some(window))
    }

    fn client_valid(
        &self,
        name: &str,
        organizations: &[&str],
        window: Option<(time::OffsetDateTime, time::OffsetDateTime)>,
    ) -> Pem {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        for o in organizations {
            params.distinguished_name.push(DnType::OrganizationName, *o);
        }
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        if let Some((from, to)) = window {
            params.not_before = from;
            params.not_after = to;
        }
        self.sign(params)
    }

    /// The device's server certificate, for `localhost` and 127.0.0.1.
    pub fn server(&self) -> Pem {
        let mut params =
            CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
        params
            .distinguished_name
            .push(DnType::CommonName, "cairn test device");
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        self.sign(params)
    }

    fn sign(&self, params: CertificateParams) -> Pem {
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        Pem {
            cert: cert.pem(),
            key: key.serialize_pem(),
        }
    }
}

/// Everything a test needs: the CA, the device's certificate, a client per role, and the bad
/// ones.
pub struct Pki {
    pub ca: Ca,
    pub server: Pem,
    pub reader: Pem,
    pub operator: Pem,
    pub admin: Pem,
    pub no_role: Pem,
    pub expired: Pem,
    pub other_ca: Ca,
    pub stranger: Pem,
}

impl Pki {
    pub fn new() -> Pki {
        let ca = Ca::new("cairn test CA");
        let other_ca = Ca::new("some other CA");
        Pki {
            server: ca.server(),
            reader: ca.client("test reader", &["cairn:reader"]),
            operator: ca.client("test operator", &["cairn:operator"]),
            admin: ca.client("test admin", &["cairn:admin"]),
            no_role: ca.client("test nobody", &["Acme Corp"]),
            expired: ca.expired_client("test expired", "cairn:admin"),
            stranger: other_ca.client("test stranger", &["cairn:admin"]),
            ca,
            other_ca,
        }
    }

    pub fn tls(&self) -> TlsConfig {
        TlsConfig::from_pem(
            self.ca.pem().as_bytes(),
            self.server.cert.as_bytes(),
            self.server.key.as_bytes(),
        )
        .unwrap()
    }

    /// Writes ca.pem and `<name>.pem` / `<name>.key` for a client, for tools that read files.
    pub fn write(&self, dir: &Path, name: &str, client: &Pem) {
        std::fs::write(dir.join("ca.pem"), self.ca.pem()).unwrap();
        std::fs::write(dir.join(format!("{name}.pem")), &client.cert).unwrap();
        std::fs::write(dir.join(format!("{name}.key")), &client.key).unwrap();
    }
}

/// The fake device without its RecoveryKey and Unlock: what [`Device`]'s defaults answer, as
/// a device with unencrypted disks does.
pub struct Unencrypted(pub Arc<FakeDevice>);

impl Device for Unencrypted {
    fn version(&self) -> Result<proto::VersionResponse, DeviceError> {
        self.0.version()
    }
    fn health(&self) -> Result<proto::HealthResponse, DeviceError> {
        self.0.health()
    }
    fn slot_status(&self) -> Result<proto::SlotStatusResponse, DeviceError> {
        self.0.slot_status()
    }
    fn service_list(&self) -> Result<proto::ServiceListResponse, DeviceError> {
        self.0.service_list()
    }
    fn service_restart(&self, name: &str) -> Result<proto::ServiceRestartResponse, DeviceError> {
        self.0.service_restart(name)
    }
    fn logs(
        &self,
        request: &proto::LogsRequest,
        sink: &Sink<proto::LogsResponse>,
    ) -> Result<(), DeviceError> {
        self.0.logs(request, sink)
    }
    fn upgrade(
        &self,
        source: UpgradeSource,
        reboot: bool,
        progress: &mut dyn FnMut(proto::UpgradeProgress),
    ) -> Result<proto::UpgradeDone, DeviceError> {
        self.0.upgrade(source, reboot, progress)
    }
    fn rollback(&self) -> Result<proto::RollbackResponse, DeviceError> {
        self.0.rollback()
    }
    fn reboot(&self) -> Result<(), DeviceError> {
        self.0.reboot()
    }
    fn shutdown(&self) -> Result<(), DeviceError> {
        self.0.shutdown()
    }
    fn apply_config(
        &self,
        request: &proto::ApplyConfigRequest,
    ) -> Result<proto::ApplyConfigResponse, DeviceError> {
        self.0.apply_config(request)
    }
    fn confirm_config(&self, generation: u64) -> Result<(), DeviceError> {
        self.0.confirm_config(generation)
    }
    fn events(
        &self,
        request: &proto::EventsRequest,
        sink: &Sink<proto::EventsResponse>,
    ) -> Result<(), DeviceError> {
        self.0.events(request, sink)
    }
}

/// The fake as these tests want it: streams end, so a call can be read to its end, and a wrong
/// recovery key is quoted back, so the server's log is tested for keeping it out.
fn fake() -> FakeDevice {
    FakeDevice::new().events_end().quoting_wrong_keys()
}

/// A server on 127.0.0.1:0 with a fake device; its log lines are kept.
pub struct Harness {
    pub pki: Pki,
    pub device: Arc<FakeDevice>,
    pub log: Arc<Mutex<Vec<String>>>,
    pub server: Option<Server>,
}

impl Harness {
    pub fn start() -> Harness {
        Harness::with_limits(Limits::default())
    }

    pub fn with_limits(limits: Limits) -> Harness {
        let device = Arc::new(fake());
        Harness::serving(limits, device.clone(), device)
    }

    /// Serves [`Unencrypted`]: the fake with [`Device`]'s default RecoveryKey and Unlock.
    pub fn unencrypted() -> Harness {
        let device = Arc::new(fake());
        Harness::serving(
            Limits::default(),
            Arc::new(Unencrypted(device.clone())),
            device,
        )
    }

    /// Serves `serve`, which records its calls in `device`.
    fn serving(limits: Limits, serve: Arc<dyn Device>, device: Arc<FakeDevice>) -> Harness {
        let pki = Pki::new();
        let log = Arc::new(Mutex::new(Vec::new()));
        let lines = log.clone();
        let options = Options {
            limits,
            log: Arc::new(move |line: &str| lines.lock().unwrap().push(line.to_string())),
        };
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let server = cairn_api::serve(listener, &pki.tls(), serve, options).unwrap();
        Harness {
            pki,
            device,
            log,
            server: Some(server),
        }
    }

    pub fn addr(&self) -> std::net::SocketAddr {
        self.server.as_ref().unwrap().local_addr()
    }

    pub fn log_lines(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }

    /// Waits (up to 5 s) for a log line containing `needle`; the server logs from its thread.
    pub async fn wait_for_log(&self, needle: &str) -> String {
        for _ in 0..250 {
            if let Some(line) = self.log_lines().into_iter().find(|l| l.contains(needle)) {
                return line;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("no log line contains {needle:?}: {:#?}", self.log_lines());
    }

    /// A client presenting `identity` (or none) and trusting `ca` for the server.
    pub async fn connect(
        &self,
        identity: Option<&Pem>,
    ) -> Result<DeviceServiceClient<Channel>, tonic::transport::Error> {
        connect_to(self.addr(), &self.pki.ca.pem(), identity).await
    }

    pub async fn client(&self, identity: &Pem) -> DeviceServiceClient<Channel> {
        self.connect(Some(identity)).await.unwrap()
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        if let Some(server) = self.server.take() {
            server.shutdown().unwrap();
        }
    }
}

/// A client of the server at `addr` presenting `identity` (or none) and trusting `ca_pem`.
pub async fn connect_to(
    addr: std::net::SocketAddr,
    ca_pem: &str,
    identity: Option<&Pem>,
) -> Result<DeviceServiceClient<Channel>, tonic::transport::Error> {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca_pem))
        .domain_name("localhost");
    if let Some(id) = identity {
        tls = tls.identity(Identity::from_pem(&id.cert, &id.key));
    }
    // The name the server certificate is checked against; the address stays 127.0.0.1.
    let channel = Endpoint::from_shared(format!("https://{addr}"))?
        .tls_config(tls)?
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await?;
    Ok(DeviceServiceClient::new(channel))
}

/// A TLS 1.3 server configuration presenting `cert`, without client certificates: the HTTPS
/// servers the fetch tests play.
pub fn https_server_config(cert: &Pem) -> Arc<rustls::ServerConfig> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let chain = CertificateDer::pem_slice_iter(cert.cert.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_slice(cert.key.as_bytes()).unwrap();
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13])
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(chain, key)
    .unwrap();
    Arc::new(config)
}
