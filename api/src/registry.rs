//! An OCI distribution client: pulls manifests and blobs from a registry, and pushes them, over
//! the device's one HTTPS stack ([`crate::fetch`]). cairnd pulls bundles (`upgrade oci://…`)
//! and host container images with it; cairnctl pushes and pulls bundles.
//!
//! The one idea: nothing a registry sends is used before its digest is checked. A manifest is
//! hashed whole and compared with the digest it was asked by (or, by tag, with the
//! `Docker-Content-Digest` the registry announces); a blob is read through [`Blob`], which
//! hands over no byte past the size its descriptor gives and withholds the last byte until the
//! whole blob's sha256 matches. A blob download resumes after a dropped connection with
//! `Range` ([`Fetch`]).
//!
//! Auth: anonymous first; a `401` with `WWW-Authenticate: Bearer realm=…,service=…,scope=…`
//! gets a token from the realm (with the credentials, if any, as HTTP Basic) and the request is
//! made again with it; a `401` with a `Basic` challenge is answered with the credentials.
//! Everything is `https://`: a redirect to `http://` is refused, and the TLS roots are the
//! caller's (the machine config's CA on the device). Errors are one line naming the reference.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::sync::{Arc, Mutex};

use base64::Engine as _;
use rustls::{ClientConfig, RootCertStore};
use serde_json::Value;
use sha2::{Digest as _, Sha256};

use crate::fetch::{self, Answer, Fetch, FetchError, FetchLimits};

/// `artifactType` of a Cairn bundle pushed as an OCI artifact.
pub const BUNDLE_ARTIFACT_TYPE: &str = "application/vnd.cairn.bundle.v1";
/// The media type of the one layer of a bundle artifact: the bundle file as it is.
pub const BUNDLE_LAYER_TYPE: &str = "application/vnd.cairn.bundle.layer.v1";
/// The empty config of an artifact, and its content (`{}`).
pub const EMPTY_TYPE: &str = "application/vnd.oci.empty.v1+json";
pub const EMPTY_CONTENT: &[u8] = b"{}";
/// Annotations a bundle artifact carries, read from the bundle's manifest.
pub const ANNOTATION_BOARD: &str = "dev.cairn.bundle.board";
pub const ANNOTATION_ARCH: &str = "dev.cairn.bundle.arch";
pub const ANNOTATION_VERSION: &str = "dev.cairn.bundle.version";
pub const ANNOTATION_TITLE: &str = "org.opencontainers.image.title";
pub const ANNOTATION_REF_NAME: &str = "org.opencontainers.image.ref.name";

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";

/// Largest manifest or index read.
pub const MAX_MANIFEST: u64 = 4 << 20;
/// Largest image config read.
pub const MAX_CONFIG: u64 = 1 << 20;
/// Largest token answer read.
const MAX_TOKEN: u64 = 64 << 10;
/// Most layers an image may have, and entries an index.
const MAX_LAYERS: usize = 256;

/// A failed registry operation: one line naming the reference and the problem.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("{reference:?} is not an OCI reference: {why}")]
    Reference { reference: String, why: String },
    #[error("{what}: {source}")]
    Http {
        what: String,
        #[source]
        source: FetchError,
    },
    #[error("{what}: the registry answered {status}{detail}")]
    Status {
        what: String,
        status: fetch::Status,
        /// The registry's own error text, quoted, with a leading `: `; or empty.
        detail: String,
    },
    #[error("{what}: the registry refused the credentials{detail}")]
    Denied { what: String, detail: String },
    #[error("{what}: the registry asks for credentials ({scheme}) and none are configured")]
    NeedsCredentials { what: String, scheme: String },
    #[error("{what}: wrong digest: expected {expected}, got {actual}")]
    WrongDigest {
        what: String,
        expected: String,
        actual: String,
    },
    #[error("{what}: the blob is larger than the {size} bytes the manifest says")]
    TooLarge { what: String, size: u64 },
    #[error("{what}: the blob ended after {got} of the {size} bytes the manifest says")]
    TooShort { what: String, got: u64, size: u64 },
    #[error("{what}: {why}")]
    Malformed { what: String, why: String },
    #[error(
        "{what} is not a Cairn bundle: its artifactType is {found}, not {BUNDLE_ARTIFACT_TYPE}"
    )]
    ArtifactType { what: String, found: String },
    #[error("{what} has no image for {platform} (it has {available})")]
    NoPlatform {
        what: String,
        platform: String,
        available: String,
    },
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: io::Error,
    },
}

impl From<RegistryError> for io::Error {
    fn from(e: RegistryError) -> io::Error {
        io::Error::new(io::ErrorKind::InvalidData, e.to_string())
    }
}

type Result<T, E = RegistryError> = std::result::Result<T, E>;

/// `registry/repository:tag`, `registry/repository@sha256:…`, or both (the digest wins),
/// optionally written with `oci://` in front. The registry is always named: there is no default.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reference {
    /// `host` or `host:port`.
    pub registry: String,
    pub repository: String,
    pub tag: Option<String>,
    /// `sha256:` and 64 lower-case hex digits.
    pub digest: Option<String>,
}

impl Reference {
    pub fn parse(text: &str) -> Result<Reference> {
        let bad = |why: &str| RegistryError::Reference {
            reference: text.chars().take(200).collect(),
            why: why.into(),
        };
        let rest = text.strip_prefix("oci://").unwrap_or(text);
        if rest.len() > 1024 {
            return Err(bad("longer than 1024 characters"));
        }
        let (name, digest) = match rest.split_once('@') {
            Some((name, digest)) => {
                if !is_digest(digest) {
                    return Err(bad(
                        "the digest is not sha256: and 64 lower-case hex digits",
                    ));
                }
                (name, Some(digest.to_string()))
            }
            None => (rest, None),
        };
        let (registry, path) = name
            .split_once('/')
            .ok_or_else(|| bad("it names no registry (write registry.example:5000/repo:tag)"))?;
        if registry.is_empty()
            || !registry
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b))
        {
            return Err(bad("the registry is not host or host:port"));
        }
        let (repository, tag) = match path.rsplit_once(':') {
            Some((repo, tag)) if !tag.contains('/') => (repo, Some(tag.to_string())),
            _ => (path, None),
        };
        if let Some(tag) = &tag {
            let ok = tag.len() <= 128
                && tag.bytes().enumerate().all(|(i, b)| {
                    b.is_ascii_alphanumeric() || b == b'_' || (i > 0 && (b == b'.' || b == b'-'))
                });
            if !ok || tag.is_empty() {
                return Err(bad("the tag is not [A-Za-z0-9_][A-Za-z0-9_.-]{0,127}"));
            }
        }
        let component_ok = |c: &str| {
            !c.is_empty()
                && c.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
                && c.as_bytes()[0].is_ascii_alphanumeric()
                && c.as_bytes()[c.len() - 1].is_ascii_alphanumeric()
        };
        if repository.len() > 255 || !repository.split('/').all(component_ok) {
            return Err(bad(
                "the repository is not lower-case letters, digits and . _ - between slashes",
            ));
        }
        if tag.is_none() && digest.is_none() {
            return Err(bad("it names no tag (:1.2.0) or digest (@sha256:…)"));
        }
        Ok(Reference {
            registry: registry.to_string(),
            repository: repository.to_string(),
            tag,
            digest,
        })
    }

    /// The tag or digest a manifest is asked by: the digest when there is one.
    pub fn pin(&self) -> &str {
        self.digest
            .as_deref()
            .or(self.tag.as_deref())
            .expect("a parsed reference has a tag or a digest")
    }

    /// The same repository at `digest`.
    pub fn at(&self, digest: &str) -> Reference {
        Reference {
            digest: Some(digest.to_string()),
            ..self.clone()
        }
    }

    fn url(&self, rest: &str) -> String {
        format!("https://{}/v2/{}/{rest}", self.registry, self.repository)
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(tag) = &self.tag {
            write!(f, ":{tag}")?;
        }
        if let Some(digest) = &self.digest {
            write!(f, "@{digest}")?;
        }
        Ok(())
    }
}

/// `sha256:` and 64 lower-case hex digits.
pub fn is_digest(text: &str) -> bool {
    text.strip_prefix("sha256:").is_some_and(|hex| {
        hex.len() == 64
            && hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

/// `sha256:…` of `bytes`.
pub fn digest_of(bytes: &[u8]) -> String {
    format!("sha256:{}", hex(&Sha256::digest(bytes)))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// An OCI descriptor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Descriptor {
    pub media_type: String,
    pub digest: String,
    pub size: u64,
    pub artifact_type: Option<String>,
    pub platform: Option<Platform>,
    pub annotations: BTreeMap<String, String>,
}

/// An index entry's platform.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Platform {
    pub architecture: String,
    pub os: String,
    pub variant: Option<String>,
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

/// An image manifest or an index, as far as this client reads them.
///
/// Read and written through `serde_json::Value` rather than derived code: the device binary
/// has a size budget, and the Value code is there already.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ManifestDoc {
    pub schema_version: u32,
    pub media_type: Option<String>,
    pub artifact_type: Option<String>,
    pub config: Option<Descriptor>,
    pub layers: Option<Vec<Descriptor>>,
    pub manifests: Option<Vec<Descriptor>>,
    pub annotations: BTreeMap<String, String>,
}

type Object = serde_json::Map<String, Value>;

fn field_str(o: &Object, name: &str) -> Result<Option<String>, String> {
    match o.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(format!("{name} is not a string")),
    }
}

fn need_str(o: &Object, name: &str) -> Result<String, String> {
    field_str(o, name)?.ok_or_else(|| format!("no {name}"))
}

fn annotations_of(o: &Object) -> Result<BTreeMap<String, String>, String> {
    match o.get("annotations") {
        None | Some(Value::Null) => Ok(BTreeMap::new()),
        Some(Value::Object(map)) => map
            .iter()
            .map(|(k, v)| match v {
                Value::String(s) => Ok((k.clone(), s.clone())),
                _ => Err(format!("the annotation {k:?} is not a string")),
            })
            .collect(),
        Some(_) => Err("annotations is not an object".into()),
    }
}

fn put_str(o: &mut Object, name: &str, value: &Option<String>) {
    if let Some(v) = value {
        o.insert(name.into(), Value::String(v.clone()));
    }
}

fn put_annotations(o: &mut Object, annotations: &BTreeMap<String, String>) {
    if !annotations.is_empty() {
        let map = annotations
            .iter()
            .map(|(k, v)| (k.clone(), Value::String(v.clone())))
            .collect();
        o.insert("annotations".into(), Value::Object(map));
    }
}

impl Descriptor {
    fn from_value(v: &Value) -> Result<Descriptor, String> {
        let o = v.as_object().ok_or("a descriptor is not an object")?;
        let platform = match o.get("platform") {
            None | Some(Value::Null) => None,
            Some(Value::Object(p)) => Some(Platform {
                architecture: need_str(p, "architecture")?,
                os: need_str(p, "os")?,
                variant: field_str(p, "variant")?,
            }),
            Some(_) => return Err("platform is not an object".into()),
        };
        Ok(Descriptor {
            media_type: need_str(o, "mediaType")?,
            digest: need_str(o, "digest")?,
            size: o
                .get("size")
                .and_then(Value::as_u64)
                .ok_or("a descriptor without a size")?,
            artifact_type: field_str(o, "artifactType")?,
            platform,
            annotations: annotations_of(o)?,
        })
    }

    fn to_value(&self) -> Value {
        let mut o = Object::new();
        o.insert("mediaType".into(), Value::String(self.media_type.clone()));
        o.insert("digest".into(), Value::String(self.digest.clone()));
        o.insert("size".into(), Value::from(self.size));
        put_str(&mut o, "artifactType", &self.artifact_type);
        if let Some(p) = &self.platform {
            let mut po = Object::new();
            po.insert("architecture".into(), Value::String(p.architecture.clone()));
            po.insert("os".into(), Value::String(p.os.clone()));
            put_str(&mut po, "variant", &p.variant);
            o.insert("platform".into(), Value::Object(po));
        }
        put_annotations(&mut o, &self.annotations);
        Value::Object(o)
    }
}

impl ManifestDoc {
    /// A manifest or index from its JSON; the error says what is missing or wrong.
    pub fn parse(bytes: &[u8]) -> Result<ManifestDoc, String> {
        let v: Value = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
        let o = v.as_object().ok_or("not a JSON object")?;
        let list = |name: &str| -> Result<Option<Vec<Descriptor>>, String> {
            match o.get(name) {
                None | Some(Value::Null) => Ok(None),
                Some(Value::Array(items)) => items
                    .iter()
                    .map(|d| Descriptor::from_value(d).map_err(|e| format!("{name}: {e}")))
                    .collect::<Result<Vec<_>, _>>()
                    .map(Some),
                Some(_) => Err(format!("{name} is not an array")),
            }
        };
        let config = match o.get("config") {
            None | Some(Value::Null) => None,
            Some(c) => Some(Descriptor::from_value(c).map_err(|e| format!("config: {e}"))?),
        };
        Ok(ManifestDoc {
            schema_version: o
                .get("schemaVersion")
                .and_then(Value::as_u64)
                .and_then(|n| u32::try_from(n).ok())
                .ok_or("no schemaVersion")?,
            media_type: field_str(o, "mediaType")?,
            artifact_type: field_str(o, "artifactType")?,
            config,
            layers: list("layers")?,
            manifests: list("manifests")?,
            annotations: annotations_of(o)?,
        })
    }

    /// The JSON of the document.
    pub fn to_json(&self) -> Vec<u8> {
        let mut o = Object::new();
        o.insert("schemaVersion".into(), Value::from(self.schema_version));
        put_str(&mut o, "mediaType", &self.media_type);
        put_str(&mut o, "artifactType", &self.artifact_type);
        if let Some(c) = &self.config {
            o.insert("config".into(), c.to_value());
        }
        for (name, list) in [("layers", &self.layers), ("manifests", &self.manifests)] {
            if let Some(list) = list {
                let items = list.iter().map(Descriptor::to_value).collect();
                o.insert(name.into(), Value::Array(items));
            }
        }
        put_annotations(&mut o, &self.annotations);
        serde_json::to_vec(&Value::Object(o)).expect("a Value is JSON")
    }
}

/// A manifest as the registry sent it, its digest checked.
#[derive(Debug, Clone)]
pub struct Manifest {
    pub media_type: String,
    pub digest: String,
    pub bytes: Vec<u8>,
    pub doc: ManifestDoc,
}

impl Manifest {
    pub fn is_index(&self) -> bool {
        self.media_type == OCI_INDEX || self.media_type == DOCKER_LIST
    }
}

/// User name and password for a registry (Basic, or to get a token).
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub username: String,
    pub password: String,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .finish_non_exhaustive()
    }
}

/// A request body that can be sent again (after a `401`).
pub trait Payload: Read + Seek {}
impl<T: Read + Seek> Payload for T {}

/// A registry client: TLS roots, credentials, limits, and the tokens it got so far.
pub struct Client {
    config: Arc<ClientConfig>,
    limits: FetchLimits,
    credentials: Option<Credentials>,
    /// The Authorization header for a scope (`repository:NAME:pull`).
    auth: Mutex<HashMap<String, String>>,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("credentials", &self.credentials)
            .finish_non_exhaustive()
    }
}

/// What a blob download asks of [`Fetch`].
fn small(limits: &FetchLimits, max: u64) -> FetchLimits {
    FetchLimits {
        max_len: max,
        ..limits.clone()
    }
}

impl Client {
    pub fn new(roots: RootCertStore, credentials: Option<Credentials>) -> Result<Client> {
        Client::with_limits(roots, credentials, FetchLimits::default())
    }

    pub fn with_limits(
        roots: RootCertStore,
        credentials: Option<Credentials>,
        limits: FetchLimits,
    ) -> Result<Client> {
        let config = fetch::client_config(roots, None).map_err(|why| RegistryError::Malformed {
            what: "the registry client's TLS config".into(),
            why,
        })?;
        Ok(Client {
            config,
            limits,
            credentials,
            auth: Mutex::new(HashMap::new()),
        })
    }

    fn scope(r: &Reference, push: bool) -> String {
        let actions = if push { "pull,push" } else { "pull" };
        format!("repository:{}:{actions}", r.repository)
    }

    fn cached_auth(&self, scope: &str) -> Option<String> {
        self.auth
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(scope)
            .cloned()
    }

    /// One request to the registry for `r`, authenticated as the registry asks: a `401` is
    /// answered once (a token, or Basic) and the request made again.
    #[allow(clippy::too_many_arguments)]
    fn send(
        &self,
        what: &str,
        r: &Reference,
        push: bool,
        method: &str,
        url: &str,
        headers: &[(String, String)],
        mut body: Option<(&mut dyn Payload, u64)>,
        max: u64,
    ) -> Result<Answer> {
        let scope = Client::scope(r, push);
        let limits = small(&self.limits, max);
        let mut retried = false;
        loop {
            let mut all = headers.to_vec();
            if let Some(auth) = self.cached_auth(&scope) {
                all.push(("Authorization".into(), auth));
            }
            let payload = match body.as_mut() {
                Some((reader, len)) => {
                    reader
                        .seek(SeekFrom::Start(0))
                        .map_err(|source| RegistryError::Io {
                            what: what.into(),
                            source,
                        })?;
                    Some((&mut **reader as &mut dyn Read, *len))
                }
                None => None,
            };
            let follow = payload.is_none() && matches!(method, "GET" | "HEAD");
            let answer = fetch::request(method, url, &all, payload, follow, &self.config, &limits)
                .map_err(|source| RegistryError::Http {
                    what: what.into(),
                    source,
                })?;
            if answer.status.code != 401 {
                return Ok(answer);
            }
            if retried {
                return Err(RegistryError::Denied {
                    what: what.into(),
                    detail: registry_detail(&answer.body),
                });
            }
            retried = true;
            let challenge = answer.header("www-authenticate").unwrap_or_default();
            let auth = self.answer_challenge(what, challenge, &scope)?;
            self.auth
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(scope.clone(), auth);
        }
    }

    /// The Authorization header a `401`'s challenge asks for.
    fn answer_challenge(&self, what: &str, challenge: &str, scope: &str) -> Result<String> {
        let (scheme, params) =
            parse_challenge(challenge).ok_or_else(|| RegistryError::Malformed {
                what: what.into(),
                why: format!(
                    "a 401 answer whose WWW-Authenticate {:?} is not a Bearer or Basic challenge",
                    challenge.chars().take(100).collect::<String>()
                ),
            })?;
        let basic = self.credentials.as_ref().map(|c| {
            let pair = format!("{}:{}", c.username, c.password);
            format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(pair)
            )
        });
        if scheme.eq_ignore_ascii_case("basic") {
            return basic.ok_or_else(|| RegistryError::NeedsCredentials {
                what: what.into(),
                scheme: "Basic".into(),
            });
        }
        let realm = params
            .get("realm")
            .ok_or_else(|| RegistryError::Malformed {
                what: what.into(),
                why: "a Bearer challenge without a realm".into(),
            })?;
        let mut url = realm.clone();
        let mut sep = if realm.contains('?') { '&' } else { '?' };
        if let Some(service) = params.get("service") {
            url.push_str(&format!("{sep}service={}", form_encode(service)));
            sep = '&';
        }
        url.push_str(&format!("{sep}scope={}", form_encode(scope)));
        let token_what = format!("{what}: the token from {realm}");
        let mut headers = vec![("Accept".to_string(), "application/json".to_string())];
        if let Some(basic) = &basic {
            headers.push(("Authorization".into(), basic.clone()));
        }
        let answer = fetch::request(
            "GET",
            &url,
            &headers,
            None,
            true,
            &self.config,
            &small(&self.limits, MAX_TOKEN),
        )
        .map_err(|source| RegistryError::Http {
            what: token_what.clone(),
            source,
        })?;
        match answer.status.code {
            200 => {}
            401 | 403 if basic.is_some() => {
                return Err(RegistryError::Denied {
                    what: token_what,
                    detail: registry_detail(&answer.body),
                })
            }
            401 | 403 => {
                return Err(RegistryError::NeedsCredentials {
                    what: what.into(),
                    scheme: "Bearer".into(),
                })
            }
            _ => {
                return Err(RegistryError::Status {
                    what: token_what,
                    status: answer.status,
                    detail: registry_detail(&answer.body),
                })
            }
        }
        let token: Value =
            serde_json::from_slice(&answer.body).map_err(|e| RegistryError::Malformed {
                what: token_what.clone(),
                why: format!("not a token answer: {e}"),
            })?;
        let token = ["token", "access_token"]
            .into_iter()
            .find_map(|name| token.get(name).and_then(Value::as_str))
            .map(String::from)
            .filter(|t| !t.is_empty() && t.bytes().all(|b| b.is_ascii_graphic()))
            .ok_or_else(|| RegistryError::Malformed {
                what: token_what,
                why: "no usable token in the answer".into(),
            })?;
        Ok(format!("Bearer {token}"))
    }

    /// The manifest `r` names (by its digest if it has one, else its tag), its digest checked.
    pub fn manifest(&self, r: &Reference) -> Result<Manifest> {
        let what = format!("manifest {r}");
        let accept = [OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST, DOCKER_LIST].join(", ");
        let answer = self.send(
            &what,
            r,
            false,
            "GET",
            &r.url(&format!("manifests/{}", r.pin())),
            &[("Accept".into(), accept)],
            None,
            MAX_MANIFEST,
        )?;
        if answer.status.code != 200 {
            return Err(status_error(what, &answer));
        }
        let digest = digest_of(&answer.body);
        let expected = r.digest.clone().or_else(|| {
            answer
                .header("docker-content-digest")
                .filter(|d| d.starts_with("sha256:"))
                .map(String::from)
        });
        if let Some(expected) = expected.filter(|e| *e != digest) {
            return Err(RegistryError::WrongDigest {
                what,
                expected,
                actual: digest,
            });
        }
        let doc = ManifestDoc::parse(&answer.body).map_err(|e| RegistryError::Malformed {
            what: what.clone(),
            why: format!("not an OCI manifest or index: {e}"),
        })?;
        if doc.schema_version != 2 {
            return Err(RegistryError::Malformed {
                what,
                why: format!("schemaVersion {}, not 2", doc.schema_version),
            });
        }
        let media_type = doc
            .media_type
            .clone()
            .or_else(|| {
                answer
                    .header("content-type")
                    .map(|t| t.split(';').next().unwrap_or_default().trim().to_string())
            })
            .unwrap_or_default();
        let known = [OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST, DOCKER_LIST];
        if !known.contains(&media_type.as_str()) {
            return Err(RegistryError::Malformed {
                what,
                why: format!("the media type {media_type:?} is neither a manifest nor an index"),
            });
        }
        let manifest = Manifest {
            media_type,
            digest,
            bytes: answer.body,
            doc,
        };
        let count = match manifest.is_index() {
            true => manifest.doc.manifests.as_ref().map_or(0, Vec::len),
            false => manifest.doc.layers.as_ref().map_or(0, Vec::len),
        };
        if count > MAX_LAYERS {
            return Err(RegistryError::Malformed {
                what,
                why: format!("more than {MAX_LAYERS} entries"),
            });
        }
        if !manifest.is_index() && manifest.doc.config.is_none() {
            return Err(RegistryError::Malformed {
                what,
                why: "a manifest without a config".into(),
            });
        }
        for d in manifest
            .doc
            .layers
            .iter()
            .chain(manifest.doc.manifests.iter())
            .flatten()
            .chain(manifest.doc.config.iter())
        {
            if !is_digest(&d.digest) {
                return Err(RegistryError::Malformed {
                    what,
                    why: format!("the descriptor digest {:?} is not sha256", d.digest),
                });
            }
        }
        Ok(manifest)
    }

    /// The image manifest for `platform` that `r` names: `r`'s own manifest, or the entry of
    /// its index for the platform (checked against the index's digest and size).
    pub fn image_manifest(&self, r: &Reference, platform: &Platform) -> Result<Manifest> {
        let top = self.manifest(r)?;
        if !top.is_index() {
            return Ok(top);
        }
        let entries = top.doc.manifests.clone().unwrap_or_default();
        let fits = |p: &Platform| {
            p.os == platform.os
                && p.architecture == platform.architecture
                && match (&platform.variant, &p.variant) {
                    (Some(want), Some(have)) => want == have,
                    _ => true,
                }
        };
        let chosen = entries
            .iter()
            .filter(|d| d.media_type == OCI_MANIFEST || d.media_type == DOCKER_MANIFEST)
            .find(|d| d.platform.as_ref().is_some_and(fits));
        let Some(chosen) = chosen else {
            let available: Vec<String> = entries
                .iter()
                .filter_map(|d| d.platform.as_ref().map(ToString::to_string))
                .collect();
            return Err(RegistryError::NoPlatform {
                what: r.to_string(),
                platform: platform.to_string(),
                available: match available.is_empty() {
                    true => "no platforms".into(),
                    false => available.join(", "),
                },
            });
        };
        if chosen.size > MAX_MANIFEST {
            return Err(RegistryError::Malformed {
                what: format!("manifest {}", r.at(&chosen.digest)),
                why: format!("{} bytes, more than {MAX_MANIFEST}", chosen.size),
            });
        }
        let manifest = self.manifest(&r.at(&chosen.digest))?;
        if manifest.bytes.len() as u64 != chosen.size {
            return Err(RegistryError::Malformed {
                what: format!("manifest {}", r.at(&chosen.digest)),
                why: format!(
                    "{} bytes, not the {} its index says",
                    manifest.bytes.len(),
                    chosen.size
                ),
            });
        }
        if manifest.is_index() {
            return Err(RegistryError::Malformed {
                what: format!("manifest {}", r.at(&chosen.digest)),
                why: "an index inside an index".into(),
            });
        }
        Ok(manifest)
    }

    /// The bundle artifact `r` names: its manifest (artifactType checked, one layer) and the
    /// layer's descriptor.
    pub fn bundle(&self, r: &Reference) -> Result<(Manifest, Descriptor)> {
        let manifest = self.manifest(r)?;
        let what = format!("{r}");
        let artifact_type = manifest
            .doc
            .artifact_type
            .clone()
            .or_else(|| {
                manifest
                    .doc
                    .config
                    .as_ref()
                    .map(|c| c.media_type.clone())
                    .filter(|t| t != EMPTY_TYPE)
            })
            .unwrap_or_else(|| manifest.media_type.clone());
        if manifest.is_index() || artifact_type != BUNDLE_ARTIFACT_TYPE {
            return Err(RegistryError::ArtifactType {
                what,
                found: artifact_type,
            });
        }
        let layers = manifest.doc.layers.clone().unwrap_or_default();
        let [layer] = layers.as_slice() else {
            return Err(RegistryError::Malformed {
                what,
                why: format!("a bundle artifact has one layer, this one {}", layers.len()),
            });
        };
        Ok((manifest, layer.clone()))
    }

    /// A blob's bytes as they download (resuming after a dropped connection), checked
    /// against `desc`: see [`Blob`].
    pub fn blob(&self, r: &Reference, desc: &Descriptor) -> Result<Blob> {
        let what = format!("blob {}", r.at(&desc.digest));
        let scope = Client::scope(r, false);
        if self.cached_auth(&scope).is_none() {
            // A HEAD learns what auth the registry wants before the resumable download.
            let answer = self.send(
                &what,
                r,
                false,
                "HEAD",
                &r.url(&format!("blobs/{}", desc.digest)),
                &[],
                None,
                0,
            )?;
            if answer.status.code != 200 {
                return Err(status_error(what, &answer));
            }
        }
        let mut headers = Vec::new();
        if let Some(auth) = self.cached_auth(&scope) {
            headers.push(("Authorization".to_string(), auth));
        }
        let limits = FetchLimits {
            // One byte more than the descriptor says, so a longer blob is seen and refused.
            max_len: desc.size.saturating_add(1),
            ..self.limits.clone()
        };
        let url = r.url(&format!("blobs/{}", desc.digest));
        let fetch =
            Fetch::with_config(&url, self.config.clone(), headers, limits).map_err(|source| {
                match source {
                    FetchError::TooLong { .. } => RegistryError::TooLarge {
                        what: what.clone(),
                        size: desc.size,
                    },
                    source => RegistryError::Http {
                        what: what.clone(),
                        source,
                    },
                }
            })?;
        if fetch.len().is_some_and(|len| len > desc.size) {
            return Err(RegistryError::TooLarge {
                what,
                size: desc.size,
            });
        }
        Ok(Blob {
            what,
            fetch,
            size: desc.size,
            digest: desc.digest.clone(),
            hash: Sha256::new(),
            received: 0,
            failed: false,
        })
    }

    /// A small blob (an image config) read whole.
    pub fn blob_bytes(&self, r: &Reference, desc: &Descriptor, max: u64) -> Result<Vec<u8>> {
        if desc.size > max {
            return Err(RegistryError::Malformed {
                what: format!("blob {}", r.at(&desc.digest)),
                why: format!("{} bytes, more than {max}", desc.size),
            });
        }
        let mut out = Vec::new();
        self.blob(r, desc)?
            .read_to_end(&mut out)
            .map_err(|source| RegistryError::Io {
                what: format!("blob {}", r.at(&desc.digest)),
                source,
            })?;
        Ok(out)
    }

    /// Whether the repository has the blob already.
    pub fn has_blob(&self, r: &Reference, digest: &str, push: bool) -> Result<bool> {
        let what = format!("blob {}", r.at(digest));
        let answer = self.send(
            &what,
            r,
            push,
            "HEAD",
            &r.url(&format!("blobs/{digest}")),
            &[],
            None,
            0,
        )?;
        match answer.status.code {
            200 => Ok(true),
            404 => Ok(false),
            _ => Err(status_error(what, &answer)),
        }
    }

    /// Uploads a blob of `len` bytes whose digest is `digest` (a monolithic upload: POST, then
    /// PUT with the bytes), unless the repository has it already.
    pub fn push_blob(
        &self,
        r: &Reference,
        body: &mut dyn Payload,
        len: u64,
        digest: &str,
    ) -> Result<()> {
        if self.has_blob(r, digest, true)? {
            return Ok(());
        }
        let what = format!("uploading blob {}", r.at(digest));
        let answer = self.send(
            &what,
            r,
            true,
            "POST",
            &r.url("blobs/uploads/"),
            &[],
            None,
            MAX_TOKEN,
        )?;
        if answer.status.code != 202 {
            return Err(status_error(what, &answer));
        }
        let location = answer
            .header("location")
            .ok_or_else(|| RegistryError::Malformed {
                what: what.clone(),
                why: "a 202 answer without Location".into(),
            })?;
        let mut url = match location.starts_with('/') {
            true => format!("https://{}{location}", r.registry),
            false => location.to_string(),
        };
        url.push(if url.contains('?') { '&' } else { '?' });
        url.push_str(&format!("digest={}", form_encode(digest)));
        let headers = [(
            "Content-Type".to_string(),
            "application/octet-stream".to_string(),
        )];
        let answer = self.send(
            &what,
            r,
            true,
            "PUT",
            &url,
            &headers,
            Some((body, len)),
            MAX_TOKEN,
        )?;
        if answer.status.code != 201 {
            return Err(status_error(what, &answer));
        }
        check_announced(&what, &answer, digest)
    }

    /// Uploads a manifest under `r`'s tag (or digest); returns its digest.
    pub fn push_manifest(&self, r: &Reference, media_type: &str, bytes: &[u8]) -> Result<String> {
        let digest = digest_of(bytes);
        let what = format!("uploading manifest {r}");
        let headers = [("Content-Type".to_string(), media_type.to_string())];
        let mut body = io::Cursor::new(bytes);
        let answer = self.send(
            &what,
            r,
            true,
            "PUT",
            &r.url(&format!("manifests/{}", r.pin())),
            &headers,
            Some((&mut body, bytes.len() as u64)),
            MAX_TOKEN,
        )?;
        if answer.status.code != 201 {
            return Err(status_error(what, &answer));
        }
        check_announced(&what, &answer, &digest)?;
        Ok(digest)
    }

    /// The referrers of `digest` (OCI 1.1); `None` when the registry has no referrers API
    /// (it answers 404, as distribution 2.8 does).
    pub fn referrers(&self, r: &Reference, digest: &str) -> Result<Option<Vec<Descriptor>>> {
        let what = format!("referrers of {}", r.at(digest));
        let answer = self.send(
            &what,
            r,
            false,
            "GET",
            &r.url(&format!("referrers/{digest}")),
            &[("Accept".into(), OCI_INDEX.into())],
            None,
            MAX_MANIFEST,
        )?;
        match answer.status.code {
            200 => {}
            404 => return Ok(None),
            _ => return Err(status_error(what, &answer)),
        }
        let doc = ManifestDoc::parse(&answer.body).map_err(|e| RegistryError::Malformed {
            what,
            why: format!("not an index: {e}"),
        })?;
        Ok(Some(doc.manifests.unwrap_or_default()))
    }

    /// Pushes a bundle file as an artifact (empty config, one layer, `annotations` on the
    /// manifest); returns the manifest's digest.
    pub fn push_bundle(
        &self,
        r: &Reference,
        file: &mut std::fs::File,
        title: &str,
        annotations: BTreeMap<String, String>,
    ) -> Result<String> {
        let io_err = |source| RegistryError::Io {
            what: format!("reading the bundle for {r}"),
            source,
        };
        file.seek(SeekFrom::Start(0)).map_err(io_err)?;
        let mut hash = Sha256::new();
        let len = io::copy(file, &mut HashWriter(&mut hash)).map_err(io_err)?;
        let digest = format!("sha256:{}", hex(&hash.finalize()));
        self.push_blob(
            r,
            &mut io::Cursor::new(EMPTY_CONTENT),
            EMPTY_CONTENT.len() as u64,
            &digest_of(EMPTY_CONTENT),
        )?;
        self.push_blob(r, file, len, &digest)?;
        let manifest = bundle_manifest(&digest, len, title, annotations);
        self.push_manifest(r, OCI_MANIFEST, &manifest)
    }

    /// Pulls the image for `platform` that `r` names into an OCI image layout archive (a tar
    /// of `oci-layout`, `index.json`, `blobs/sha256/…`) written to `out`; returns the image
    /// manifest's digest. Every blob is checked against its digest as it is written.
    pub fn pull_image_archive(
        &self,
        r: &Reference,
        platform: &Platform,
        out: &mut dyn Write,
    ) -> Result<String> {
        let manifest = self.image_manifest(r, platform)?;
        let what = format!("{r}");
        let config_desc = manifest.doc.config.clone().expect("checked in manifest()");
        let config = self.blob_bytes(r, &config_desc, MAX_CONFIG)?;
        let parsed: Value =
            serde_json::from_slice(&config).map_err(|e| RegistryError::Malformed {
                what: format!("the image config of {what}"),
                why: format!("not JSON: {e}"),
            })?;
        let text = |name: &str| {
            parsed
                .get(name)
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string()
        };
        let (arch, os) = (text("architecture"), text("os"));
        if arch != platform.architecture || os != platform.os {
            return Err(RegistryError::NoPlatform {
                what,
                platform: platform.to_string(),
                available: format!("{os}/{arch}"),
            });
        }
        let io_err = |source| RegistryError::Io {
            what: format!("writing the archive of {r}"),
            source,
        };
        let mut tar = TarWriter { out, written: 0 };
        tar.file("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#)
            .map_err(io_err)?;
        let mut index_entry = Descriptor {
            media_type: manifest.media_type.clone(),
            digest: manifest.digest.clone(),
            size: manifest.bytes.len() as u64,
            artifact_type: None,
            platform: Some(platform.clone()),
            annotations: BTreeMap::new(),
        };
        if let Some(tag) = &r.tag {
            index_entry
                .annotations
                .insert(ANNOTATION_REF_NAME.into(), tag.clone());
        }
        let index = ManifestDoc {
            schema_version: 2,
            media_type: Some(OCI_INDEX.into()),
            manifests: Some(vec![index_entry]),
            ..ManifestDoc::default()
        };
        let index = index.to_json();
        tar.file("index.json", &index).map_err(io_err)?;
        tar.dir("blobs/").map_err(io_err)?;
        tar.dir("blobs/sha256/").map_err(io_err)?;
        let blob_name = |d: &str| format!("blobs/sha256/{}", &d["sha256:".len()..]);
        tar.file(&blob_name(&manifest.digest), &manifest.bytes)
            .map_err(io_err)?;
        tar.file(&blob_name(&config_desc.digest), &config)
            .map_err(io_err)?;
        let mut seen = vec![config_desc.digest.clone()];
        for layer in manifest.doc.layers.iter().flatten() {
            if seen.contains(&layer.digest) {
                continue;
            }
            seen.push(layer.digest.clone());
            let mut blob = self.blob(r, layer)?;
            tar.stream(&blob_name(&layer.digest), layer.size, &mut blob)
                .map_err(|source| RegistryError::Io {
                    what: format!("blob {}", r.at(&layer.digest)),
                    source,
                })?;
        }
        tar.finish().map_err(io_err)?;
        Ok(manifest.digest)
    }
}

/// The artifact manifest of a bundle whose file has `digest` and `len`.
pub fn bundle_manifest(
    digest: &str,
    len: u64,
    title: &str,
    annotations: BTreeMap<String, String>,
) -> Vec<u8> {
    let mut layer_annotations = BTreeMap::new();
    layer_annotations.insert(ANNOTATION_TITLE.to_string(), title.to_string());
    let doc = ManifestDoc {
        schema_version: 2,
        media_type: Some(OCI_MANIFEST.into()),
        artifact_type: Some(BUNDLE_ARTIFACT_TYPE.into()),
        config: Some(Descriptor {
            media_type: EMPTY_TYPE.into(),
            digest: digest_of(EMPTY_CONTENT),
            size: EMPTY_CONTENT.len() as u64,
            artifact_type: None,
            platform: None,
            annotations: BTreeMap::new(),
        }),
        layers: Some(vec![Descriptor {
            media_type: BUNDLE_LAYER_TYPE.into(),
            digest: digest.into(),
            size: len,
            artifact_type: None,
            platform: None,
            annotations: layer_annotations,
        }]),
        manifests: None,
        annotations,
    };
    doc.to_json()
}

/// A blob as it downloads: no byte past the descriptor's size is handed over, and the last
/// byte only once the sha256 of the whole blob matches the descriptor's digest; a blob that
/// ends short is an error too. After an error every read fails.
pub struct Blob {
    what: String,
    fetch: Fetch,
    size: u64,
    digest: String,
    hash: Sha256,
    received: u64,
    failed: bool,
}

impl fmt::Debug for Blob {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Blob")
            .field("what", &self.what)
            .field("received", &self.received)
            .finish_non_exhaustive()
    }
}

impl Blob {
    /// The size the descriptor gives.
    pub fn size(&self) -> u64 {
        self.size
    }

    fn fail(&mut self, e: RegistryError) -> io::Error {
        self.failed = true;
        e.into()
    }
}

impl Read for Blob {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.failed {
            return Err(io::Error::other(format!(
                "{}: the download failed already",
                self.what
            )));
        }
        if buf.is_empty() {
            return Ok(0);
        }
        let n = match self.fetch.read(buf) {
            Ok(n) => n,
            Err(e) => {
                let e = match e.get_ref().and_then(|i| i.downcast_ref::<FetchError>()) {
                    Some(FetchError::TooLong { .. }) => RegistryError::TooLarge {
                        what: self.what.clone(),
                        size: self.size,
                    },
                    _ => RegistryError::Io {
                        what: self.what.clone(),
                        source: e,
                    },
                };
                return Err(self.fail(e));
            }
        };
        if n == 0 {
            if self.received < self.size {
                let e = RegistryError::TooShort {
                    what: self.what.clone(),
                    got: self.received,
                    size: self.size,
                };
                return Err(self.fail(e));
            }
            return Ok(0);
        }
        if self.received + n as u64 > self.size {
            let e = RegistryError::TooLarge {
                what: self.what.clone(),
                size: self.size,
            };
            return Err(self.fail(e));
        }
        self.hash.update(&buf[..n]);
        self.received += n as u64;
        if self.received == self.size {
            let actual = format!("sha256:{}", hex(&self.hash.clone().finalize()));
            if actual != self.digest {
                let e = RegistryError::WrongDigest {
                    what: self.what.clone(),
                    expected: self.digest.clone(),
                    actual,
                };
                return Err(self.fail(e));
            }
        }
        Ok(n)
    }
}

struct HashWriter<'a>(&'a mut Sha256);

impl Write for HashWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.update(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A ustar writer for the layout archive: names are short (`blobs/sha256/<64 hex>`).
struct TarWriter<'a> {
    out: &'a mut dyn Write,
    written: u64,
}

impl TarWriter<'_> {
    fn header(&mut self, name: &str, size: u64, kind: u8, mode: u32) -> io::Result<()> {
        let mut h = [0u8; 512];
        if name.len() > 100 {
            return Err(io::Error::other(format!("tar name {name} is too long")));
        }
        h[..name.len()].copy_from_slice(name.as_bytes());
        let octal = |field: &mut [u8], value: u64| {
            let text = format!("{:0width$o}\0", value, width = field.len() - 1);
            field.copy_from_slice(text.as_bytes());
        };
        octal(&mut h[100..108], u64::from(mode));
        octal(&mut h[108..116], 0);
        octal(&mut h[116..124], 0);
        octal(&mut h[124..136], size);
        octal(&mut h[136..148], 0);
        h[156] = kind;
        h[257..263].copy_from_slice(b"ustar\0");
        h[263..265].copy_from_slice(b"00");
        h[148..156].copy_from_slice(b"        ");
        let sum: u32 = h.iter().map(|&b| u32::from(b)).sum();
        let text = format!("{sum:06o}\0 ");
        h[148..156].copy_from_slice(text.as_bytes());
        self.out.write_all(&h)?;
        self.written += 512;
        Ok(())
    }

    fn dir(&mut self, name: &str) -> io::Result<()> {
        self.header(name, 0, b'5', 0o755)
    }

    fn file(&mut self, name: &str, data: &[u8]) -> io::Result<()> {
        self.stream(name, data.len() as u64, &mut io::Cursor::new(data))
    }

    fn stream(&mut self, name: &str, size: u64, data: &mut dyn Read) -> io::Result<()> {
        self.header(name, size, b'0', 0o644)?;
        let copied = io::copy(&mut data.take(size), &mut self.out)?;
        if copied != size {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("{name}: {copied} of {size} bytes"),
            ));
        }
        // The reader must also be at its end: a blob checks its digest there.
        if data.read(&mut [0u8; 1])? != 0 {
            return Err(io::Error::other(format!(
                "{name}: longer than {size} bytes"
            )));
        }
        let pad = (512 - size % 512) % 512;
        self.out.write_all(&vec![0u8; pad as usize])?;
        self.written += size + pad;
        Ok(())
    }

    fn finish(&mut self) -> io::Result<()> {
        self.out.write_all(&[0u8; 1024])?;
        self.out.flush()
    }
}

/// `scheme k="v", k2=v2`: the scheme and the parameters (names in lower case).
fn parse_challenge(text: &str) -> Option<(String, HashMap<String, String>)> {
    let text = text.trim();
    let (scheme, mut rest) = match text.split_once(' ') {
        Some((s, r)) => (s, r.trim_start()),
        None => (text, ""),
    };
    if !scheme.eq_ignore_ascii_case("bearer") && !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let mut params = HashMap::new();
    while !rest.is_empty() {
        let (name, after) = rest.split_once('=')?;
        let name = name.trim().to_ascii_lowercase();
        let after = after.trim_start();
        let (value, remainder) = if let Some(quoted) = after.strip_prefix('"') {
            let mut value = String::new();
            let mut chars = quoted.char_indices();
            let mut end = None;
            while let Some((i, c)) = chars.next() {
                match c {
                    '\\' => value.push(chars.next()?.1),
                    '"' => {
                        end = Some(i + 1);
                        break;
                    }
                    c => value.push(c),
                }
            }
            (value, &quoted[end?..])
        } else {
            let end = after.find(',').unwrap_or(after.len());
            (after[..end].trim().to_string(), &after[end..])
        };
        params.insert(name, value);
        rest = remainder.trim_start();
        rest = rest.strip_prefix(',').unwrap_or(rest).trim_start();
    }
    Some((scheme.to_string(), params))
}

/// Percent-encodes a query parameter's value.
fn form_encode(text: &str) -> String {
    let mut out = String::new();
    for b in text.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(b as char)
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// The registry's own error text (`{"errors":[{"code":…,"message":…}]}`) for a message.
fn registry_detail(body: &[u8]) -> String {
    let Ok(errors) = serde_json::from_slice::<Value>(body) else {
        return String::new();
    };
    let Some(errors) = errors.get("errors").and_then(Value::as_array) else {
        return String::new();
    };
    let text: Vec<String> = errors
        .iter()
        .take(3)
        .map(|e| {
            let t = ["code", "message"]
                .into_iter()
                .filter_map(|name| e.get(name).and_then(Value::as_str))
                .collect::<Vec<_>>()
                .join(" ");
            t.chars()
                .filter(|c| !c.is_control())
                .take(120)
                .collect::<String>()
        })
        .collect();
    match text.is_empty() {
        true => String::new(),
        false => format!(": {:?}", text.join("; ")),
    }
}

fn status_error(what: String, answer: &Answer) -> RegistryError {
    RegistryError::Status {
        what,
        status: answer.status.clone(),
        detail: registry_detail(&answer.body),
    }
}

/// A registry's `Docker-Content-Digest` must name what was sent.
fn check_announced(what: &str, answer: &Answer, digest: &str) -> Result<()> {
    match answer.header("docker-content-digest") {
        Some(announced) if announced != digest => Err(RegistryError::WrongDigest {
            what: what.into(),
            expected: digest.into(),
            actual: announced.into(),
        }),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_parse_and_name_what_is_wrong() {
        let r = Reference::parse("oci://registry.example:5000/cairn/bundles:1.5.0").unwrap();
        assert_eq!(r.registry, "registry.example:5000");
        assert_eq!(r.repository, "cairn/bundles");
        assert_eq!(r.tag.as_deref(), Some("1.5.0"));
        assert_eq!(r.pin(), "1.5.0");
        assert_eq!(r.to_string(), "registry.example:5000/cairn/bundles:1.5.0");
        let d = format!("sha256:{}", "ab".repeat(32));
        let r = Reference::parse(&format!("127.0.0.1:5000/x@{d}")).unwrap();
        assert_eq!((r.tag, r.digest.as_deref()), (None, Some(d.as_str())));
        let r = Reference::parse(&format!("[::1]:5000/x:v1@{d}")).unwrap();
        assert_eq!(r.registry, "[::1]:5000");
        assert_eq!(r.pin(), d);
        for (bad, why) in [
            ("repo:tag", "no registry"),
            ("reg.example/Repo:1", "repository"),
            ("reg.example/repo", "no tag"),
            ("reg.example/repo:-x", "tag"),
            ("reg.example/repo@sha256:abc", "digest"),
            ("reg.example/a//b:1", "repository"),
            ("reg example/a:1", "registry"),
        ] {
            let e = Reference::parse(bad).unwrap_err().to_string();
            assert!(e.contains(why), "{bad}: {e}");
        }
    }

    #[test]
    fn challenges_parse_with_quoted_commas() {
        let (scheme, p) = parse_challenge(
            r#"Bearer realm="https://auth.example/token",service="reg",scope="repository:a/b:pull,push""#,
        )
        .unwrap();
        assert_eq!(scheme, "Bearer");
        assert_eq!(p["realm"], "https://auth.example/token");
        assert_eq!(p["service"], "reg");
        assert_eq!(p["scope"], "repository:a/b:pull,push");
        let (scheme, p) = parse_challenge(r#"Basic realm="Registry Realm""#).unwrap();
        assert_eq!(
            (scheme.as_str(), p["realm"].as_str()),
            ("Basic", "Registry Realm")
        );
        assert!(parse_challenge("Negotiate abc").is_none());
        assert!(parse_challenge(r#"Bearer realm="unterminated"#).is_none());
        assert_eq!(
            form_encode("repository:a/b:pull,push"),
            "repository%3Aa%2Fb%3Apull%2Cpush"
        );
    }

    #[test]
    fn a_bundle_manifest_is_an_artifact_with_the_empty_config() {
        let mut annotations = BTreeMap::new();
        annotations.insert(ANNOTATION_VERSION.to_string(), "1.5.0".to_string());
        let layer = digest_of(b"bundle");
        let bytes = bundle_manifest(&layer, 6, "b.cairn", annotations);
        let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(v["artifactType"], BUNDLE_ARTIFACT_TYPE);
        assert_eq!(v["mediaType"], OCI_MANIFEST);
        assert_eq!(v["config"]["mediaType"], EMPTY_TYPE);
        assert_eq!(
            v["config"]["digest"],
            "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a"
        );
        assert_eq!(v["layers"][0]["digest"], layer.as_str());
        assert_eq!(v["layers"][0]["size"], 6);
        assert_eq!(v["annotations"][ANNOTATION_VERSION], "1.5.0");
    }

    #[test]
    fn manifests_parse_and_name_what_is_missing() {
        let doc = ManifestDoc::parse(&bundle_manifest(&digest_of(b"x"), 1, "t", BTreeMap::new()))
            .unwrap();
        assert_eq!(
            doc.layers.as_ref().unwrap()[0].annotations[ANNOTATION_TITLE],
            "t"
        );
        assert_eq!(ManifestDoc::parse(&doc.to_json()).unwrap(), doc);
        for (bad, why) in [
            (&br#"[]"#[..], "not a JSON object"),
            (br#"{"layers":[]}"#, "no schemaVersion"),
            (
                br#"{"schemaVersion":2,"layers":[{"digest":"x","size":1}]}"#,
                "layers: no mediaType",
            ),
            (
                br#"{"schemaVersion":2,"config":{"mediaType":"a","digest":"x"}}"#,
                "config: a descriptor without a size",
            ),
            (
                br#"{"schemaVersion":2,"annotations":{"a":1}}"#,
                "the annotation \"a\" is not a string",
            ),
            (
                br#"{"schemaVersion":2,"manifests":{}}"#,
                "manifests is not an array",
            ),
        ] {
            let e = ManifestDoc::parse(bad).unwrap_err();
            assert!(e.contains(why), "{e}");
        }
    }

    #[test]
    fn registry_errors_are_quoted_and_short() {
        let body = br#"{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown\n","detail":{}}]}"#;
        assert_eq!(
            registry_detail(body),
            r#": "MANIFEST_UNKNOWN manifest unknown""#
        );
        assert_eq!(registry_detail(b"<html>"), "");
    }
}
