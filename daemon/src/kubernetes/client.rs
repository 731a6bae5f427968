//! A client of k3s's API server with the credentials of its admin kubeconfig: the server's
//! address and CA, and the client certificate and key, all read from the `*-data` fields k3s
//! writes into `/etc/rancher/k3s/k3s.yaml`. Requests are single GETs through
//! [`cairn_api::fetch::get`] (rustls, TLS 1.3, the device's one HTTPS client); answers are JSON.
//!
//! The kubeconfig is read on first use and again after a failure, since k3s writes it only once
//! its API server is up (and anew when its certificates rotate).

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use cairn_api::fetch::{self, Answer, FetchError, FetchLimits};
use rustls::ClientConfig;

/// Where k3s writes its admin kubeconfig (`--write-kubeconfig`'s default).
pub const ADMIN_KUBECONFIG: &str = "/etc/rancher/k3s/k3s.yaml";

/// What a kubeconfig's first cluster and user hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credentials {
    /// `https://host:port`, no trailing slash.
    pub server: String,
    pub ca_pem: Vec<u8>,
    pub cert_pem: Vec<u8>,
    pub key_pem: Vec<u8>,
}

impl Credentials {
    /// Reads a kubeconfig as k3s writes it: one cluster with `server` and
    /// `certificate-authority-data`, one user with `client-certificate-data` and
    /// `client-key-data` (base64 of PEM), each a `key: value` line; the first of each is
    /// taken. (A line reader rather than a YAML parser: the device binary stays smaller, and
    /// k3s writes this file from a fixed template.)
    pub fn parse(text: &str) -> Result<Credentials, String> {
        let field = |key: &str| -> Result<String, String> {
            text.lines()
                .filter_map(|l| l.trim_start().strip_prefix(key)?.strip_prefix(':'))
                .map(|v| v.trim().trim_matches(|c| c == '"' || c == '\'').to_string())
                .find(|v| !v.is_empty())
                .ok_or_else(|| format!("no {key}"))
        };
        let data = |key: &str| -> Result<Vec<u8>, String> {
            base64::engine::general_purpose::STANDARD
                .decode(field(key)?)
                .map_err(|e| format!("{key} is not base64: {e}"))
        };
        Ok(Credentials {
            server: field("server")?.trim_end_matches('/').to_string(),
            ca_pem: data("certificate-authority-data")?,
            cert_pem: data("client-certificate-data")?,
            key_pem: data("client-key-data")?,
        })
    }
}

/// A k3s API client; see the module documentation.
pub struct Client {
    kubeconfig: PathBuf,
    limits: FetchLimits,
    loaded: Mutex<Option<(String, Arc<ClientConfig>)>>,
}

impl Client {
    /// A client that reads its credentials from `kubeconfig` when first used.
    pub fn new(kubeconfig: impl Into<PathBuf>) -> Client {
        Client {
            kubeconfig: kubeconfig.into(),
            limits: FetchLimits {
                // A kube-system PodList with managed fields runs to a few hundred KiB.
                max_len: 8 * 1024 * 1024,
                retries: 0,
                connect_timeout: Duration::from_secs(3),
                head_timeout: Duration::from_secs(10),
                read_timeout: Duration::from_secs(10),
                ..FetchLimits::default()
            },
            loaded: Mutex::new(None),
        }
    }

    fn load(&self) -> Result<(String, Arc<ClientConfig>), String> {
        let mut loaded = self.loaded.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(l) = &*loaded {
            return Ok(l.clone());
        }
        let path = self.kubeconfig.display();
        let text = std::fs::read_to_string(&self.kubeconfig).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => {
                format!("{path} does not exist yet (k3s writes it once its API server is up)")
            }
            _ => format!("reading {path}: {e}"),
        })?;
        let creds = Credentials::parse(&text).map_err(|e| format!("{path}: {e}"))?;
        let ca = String::from_utf8_lossy(&creds.ca_pem);
        let roots = fetch::roots_from_pem(&ca)
            .map_err(|e| format!("{path}: certificate-authority-data: {e}"))?;
        let config = fetch::client_config(roots, Some((&creds.cert_pem, &creds.key_pem)))
            .map_err(|e| format!("{path}: {e}"))?;
        *loaded = Some((creds.server, config));
        Ok(loaded.clone().expect("just set"))
    }

    /// GETs `path` (`/readyz?verbose`, `/api/v1/…`): the answer of any status, or one line
    /// saying why there is none.
    pub fn get(&self, path: &str) -> Result<Answer, String> {
        let (server, config) = self.load()?;
        fetch::get(&format!("{server}{path}"), &config, &self.limits).map_err(|e| {
            // New credentials may fix it (k3s rotated its certificates): read them again.
            *self.loaded.lock().unwrap_or_else(|e| e.into_inner()) = None;
            describe(&e)
        })
    }

    /// GETs `path` and reads a 200 answer as JSON; any other status is an error naming it.
    pub fn get_json(&self, path: &str) -> Result<serde_json::Value, String> {
        let answer = self.get(path)?;
        match answer.status.code {
            200 => serde_json::from_slice(&answer.body)
                .map_err(|e| format!("GET {path}: the answer is not JSON: {e}")),
            401 | 403 => Err(format!(
                "GET {path}: {}: the API server refused the credentials of {}",
                answer.status,
                self.kubeconfig.display()
            )),
            _ => Err(format!(
                "GET {path}: {}{}",
                answer.status,
                status_detail(&answer.body)
            )),
        }
    }
}

/// A Kubernetes `Status` answer's message, as ": message" (empty when there is none).
fn status_detail(body: &[u8]) -> String {
    serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v.get("message")?.as_str().map(|m| format!(": {m}")))
        .unwrap_or_default()
}

/// One line for a failed request: the TLS alert a server sends when it refuses the client
/// certificate is named as that.
fn describe(e: &FetchError) -> String {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(s) = source {
        // io::Error's source() skips the error it wraps: look inside.
        let inner = s
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
            .map(|i| i as &(dyn std::error::Error + 'static));
        for candidate in [Some(s), inner].into_iter().flatten() {
            if let Some(rustls::Error::AlertReceived(alert)) =
                candidate.downcast_ref::<rustls::Error>()
            {
                use rustls::AlertDescription as A;
                if matches!(
                    alert,
                    A::BadCertificate
                        | A::UnknownCA
                        | A::CertificateRequired
                        | A::CertificateUnknown
                        | A::CertificateRevoked
                        | A::CertificateExpired
                        | A::AccessDenied
                ) {
                    return format!(
                        "{}: the API server refused our client certificate (TLS alert {alert:?})",
                        url_of(e)
                    );
                }
            }
        }
        source = inner.or_else(|| s.source());
    }
    let mut line = match e {
        FetchError::Broke { url, .. } => format!("the connection to {url} broke"),
        other => other.to_string(),
    };
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        line.push_str(&format!(": {s}"));
        source = s.source();
    }
    line
}

/// The URL a failed request was for.
fn url_of(e: &FetchError) -> String {
    use FetchError as F;
    match e {
        F::Url { url, .. }
        | F::BadRedirect { url, .. }
        | F::Redirects { url, .. }
        | F::Connect { url, .. }
        | F::Certificate { url, .. }
        | F::Tls { url, .. }
        | F::Broke { url, .. }
        | F::Status { url, .. }
        | F::Malformed { url, .. }
        | F::NoFraming { url }
        | F::TooLong { url, .. }
        | F::CannotResume { url, .. }
        | F::NoLength { url, .. }
        | F::GaveUp { url, .. }
        | F::Failed { url } => url.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_kubeconfig_as_k3s_writes_it() {
        let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        // The layout of the file `k3s server` writes (pkg/cli/server, the kubeconfig template
        // in k3s's source: one cluster, context and user, all named "default").
        let text = format!(
            "apiVersion: v1\nclusters:\n- cluster:\n    certificate-authority-data: {}\n    server: https://127.0.0.1:6443\n  name: default\ncontexts:\n- context:\n    cluster: default\n    user: default\n  name: default\ncurrent-context: default\nkind: Config\npreferences: {{}}\nusers:\n- name: default\n  user:\n    client-certificate-data: {}\n    client-key-data: {}\n",
            b64("CA"),
            b64("CERT"),
            b64("KEY")
        );
        let c = Credentials::parse(&text).unwrap();
        assert_eq!(c.server, "https://127.0.0.1:6443");
        assert_eq!(
            (c.ca_pem, c.cert_pem, c.key_pem),
            (b"CA".to_vec(), b"CERT".to_vec(), b"KEY".to_vec())
        );
        let e = Credentials::parse("apiVersion: v1\nclusters: []\n").unwrap_err();
        assert_eq!(e, "no server");
    }
}
