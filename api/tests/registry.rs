//! The OCI registry client against a real registry: Debian's `docker-registry` (distribution
//! 2.8) on loopback over HTTPS, started and stopped by each test
//! ([`cairn_api::testing_registry`]); skipped with one line when it is not installed.

mod common;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::sync::atomic::Ordering;
use std::time::Duration;

use cairn_api::fetch::{self, FetchLimits};
use cairn_api::registry::{
    self, Client, Credentials, Descriptor, ManifestDoc, Platform, Reference, RegistryError,
};
use cairn_api::testing_registry::{CuttingProxy, Registry, PASSWORD, USER};

const MIB: usize = 1024 * 1024;

/// Bytes that differ everywhere, so a misplaced resume shows.
fn bytes(len: usize, seed: u32) -> Vec<u8> {
    let mut x = seed.wrapping_mul(2654435761).max(1);
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

fn limits() -> FetchLimits {
    FetchLimits {
        backoff: Duration::from_millis(20),
        read_timeout: Duration::from_secs(10),
        ..FetchLimits::default()
    }
}

fn client(registry: &Registry, credentials: Option<Credentials>) -> Client {
    Client::with_limits(registry.roots(), credentials, limits()).unwrap()
}

fn reference(registry: &Registry, rest: &str) -> Reference {
    Reference::parse(&format!("oci://{}/{rest}", registry.host())).unwrap()
}

fn push_file(c: &Client, r: &Reference, data: &[u8]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("b.cairn");
    std::fs::write(&path, data).unwrap();
    let mut annotations = BTreeMap::new();
    annotations.insert(registry::ANNOTATION_BOARD.to_string(), "qemu-x86_64".into());
    annotations.insert(registry::ANNOTATION_ARCH.to_string(), "x86_64".into());
    annotations.insert(registry::ANNOTATION_VERSION.to_string(), "1.5.0".into());
    let mut file = std::fs::File::open(&path).unwrap();
    c.push_bundle(r, &mut file, "b.cairn", annotations).unwrap()
}

fn pull(c: &Client, r: &Reference) -> Result<Vec<u8>, String> {
    let (_, layer) = c.bundle(r).map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    c.blob(r, &layer)
        .map_err(|e| e.to_string())?
        .read_to_end(&mut out)
        .map_err(|e| e.to_string())?;
    Ok(out)
}

#[test]
fn a_pushed_bundle_pulls_back_byte_identical_by_tag_and_by_digest() {
    let Some(registry) = Registry::start(false) else {
        return;
    };
    let c = client(&registry, None);
    let data = bytes(3 * MIB + 123, 1);
    let r = reference(&registry, "cairn/bundles:1.5.0");
    let digest = push_file(&c, &r, &data);
    assert!(registry::is_digest(&digest), "{digest}");

    assert_eq!(pull(&c, &r).unwrap(), data, "{}", registry.log());
    let by_digest = reference(&registry, &format!("cairn/bundles@{digest}"));
    assert_eq!(pull(&c, &by_digest).unwrap(), data);

    let (manifest, layer) = c.bundle(&r).unwrap();
    assert_eq!(manifest.digest, digest);
    assert_eq!(layer.size, data.len() as u64);
    assert_eq!(layer.media_type, registry::BUNDLE_LAYER_TYPE);
    assert_eq!(
        manifest.doc.artifact_type.as_deref(),
        Some(registry::BUNDLE_ARTIFACT_TYPE)
    );
    assert_eq!(
        manifest.doc.annotations[registry::ANNOTATION_VERSION],
        "1.5.0"
    );
    assert_eq!(
        manifest.doc.annotations[registry::ANNOTATION_BOARD],
        "qemu-x86_64"
    );
    // The empty config is the registry's blob `{}`.
    assert_eq!(
        std::fs::read(registry.blob_path(&registry::digest_of(b"{}"))).unwrap(),
        b"{}"
    );

    // Pushing again uploads nothing new and gives the same manifest.
    assert_eq!(push_file(&c, &r, &data), digest);

    // distribution 2.8 has no referrers API: a 404, taken as "none known".
    assert_eq!(c.referrers(&r, &digest).unwrap(), None);

    // Range → 206 with the asked bytes.
    let config = fetch::client_config(registry.roots(), None).unwrap();
    let url = format!(
        "https://{}/v2/cairn/bundles/blobs/{}",
        registry.host(),
        layer.digest
    );
    let range = [("Range".to_string(), format!("bytes={}-", MIB))];
    let answer = fetch::request("GET", &url, &range, None, true, &config, &limits()).unwrap();
    assert_eq!(answer.status.code, 206);
    assert_eq!(
        answer.header("content-range"),
        Some(format!("bytes {}-{}/{}", MIB, data.len() - 1, data.len()).as_str())
    );
    assert_eq!(answer.body, data[MIB..]);

    // A tag that is not there: the registry's own words.
    let e = pull(&c, &reference(&registry, "cairn/bundles:9.9.9")).unwrap_err();
    assert!(e.contains("404") && e.contains("MANIFEST_UNKNOWN"), "{e}");
}

#[test]
fn a_connection_dropped_mid_layer_resumes_with_a_range() {
    let Some(registry) = Registry::start(false) else {
        return;
    };
    let c = client(&registry, None);
    let data = bytes(4 * MIB, 2);
    push_file(&c, &reference(&registry, "cairn/bundles:drop"), &data);

    let proxy = CuttingProxy::start(registry.addr(), MIB as u64);
    let through = Reference::parse(&format!(
        "127.0.0.1:{}/cairn/bundles:drop",
        proxy.addr.port()
    ))
    .unwrap();
    assert_eq!(pull(&c, &through).unwrap(), data);
    assert!(proxy.cut.load(Ordering::SeqCst), "the proxy never cut");
    // Wait for the connections to be accounted.
    std::thread::sleep(Duration::from_millis(200));
    let answered = proxy.answered.lock().unwrap().clone();
    assert!(answered.contains(&(MIB as u64)), "{answered:?}");
    // The connection after the cut carried the rest, not the whole blob again.
    let biggest_after = answered
        .iter()
        .filter(|&&n| n != MIB as u64)
        .max()
        .copied()
        .unwrap();
    assert!(
        biggest_after < data.len() as u64 - MIB as u64 + 64 * 1024,
        "{answered:?}"
    );
    assert!(
        biggest_after > data.len() as u64 - MIB as u64,
        "{answered:?}"
    );
}

#[test]
fn token_auth_asks_the_realm_with_the_credentials() {
    let Some(registry) = Registry::start(true) else {
        return;
    };
    let r = reference(&registry, "fleet/bundles:2.0.0");
    let data = bytes(200_000, 3);

    let anonymous = client(&registry, None);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("b.cairn");
    std::fs::write(&path, &data).unwrap();
    let e = anonymous
        .push_bundle(
            &r,
            &mut std::fs::File::open(&path).unwrap(),
            "b",
            BTreeMap::new(),
        )
        .unwrap_err();
    assert!(
        matches!(e, RegistryError::NeedsCredentials { .. }),
        "{e}\n{}",
        registry.log()
    );
    assert!(
        e.to_string().contains("asks for credentials (Bearer)"),
        "{e}"
    );

    let wrong = client(
        &registry,
        Some(Credentials {
            username: USER.into(),
            password: "nope".into(),
        }),
    );
    let e = pull(&wrong, &r).unwrap_err();
    assert!(
        e.contains("refused the credentials") && e.contains("UNAUTHORIZED"),
        "{e}"
    );

    let right = client(
        &registry,
        Some(Credentials {
            username: USER.into(),
            password: PASSWORD.into(),
        }),
    );
    push_file(&right, &r, &data);
    assert_eq!(pull(&right, &r).unwrap(), data);
    // A fresh client pulls with a pull-only token.
    let puller = client(
        &registry,
        Some(Credentials {
            username: USER.into(),
            password: PASSWORD.into(),
        }),
    );
    assert_eq!(pull(&puller, &r).unwrap(), data);
    let requests = registry.token_requests();
    assert!(
        requests.iter().any(|(t, ok)| *ok
            && t.contains("service=cairn-test-registry")
            && t.contains("scope=repository%3Afleet%2Fbundles%3Apull%2Cpush")),
        "{requests:?}"
    );
    assert!(
        requests
            .iter()
            .any(|(t, ok)| *ok && t.ends_with("scope=repository%3Afleet%2Fbundles%3Apull")),
        "{requests:?}"
    );
    assert!(requests.iter().any(|(_, ok)| !ok), "{requests:?}");
}

#[test]
fn a_wrong_digest_is_refused_and_its_last_byte_withheld() {
    let Some(registry) = Registry::start(false) else {
        return;
    };
    let c = client(&registry, None);
    let data = bytes(MIB + 7, 4);
    let r = reference(&registry, "cairn/bundles:bad");
    let digest = push_file(&c, &r, &data);
    let (_, layer) = c.bundle(&r).unwrap();

    // The registry's copy of the layer goes bad on its disk (same length).
    let path = registry.blob_path(&layer.digest);
    let mut stored = std::fs::read(&path).unwrap();
    stored[MIB / 2] ^= 0xff;
    std::fs::write(&path, &stored).unwrap();
    let mut blob = c.blob(&r, &layer).unwrap();
    let mut got = 0usize;
    let mut buf = vec![0u8; 64 * 1024];
    let e = loop {
        match blob.read(&mut buf) {
            Ok(0) => panic!("a corrupt blob read to its end"),
            Ok(n) => got += n,
            Err(e) => break e,
        }
    };
    assert!(got < data.len(), "all {got} bytes were handed over");
    let e = e.to_string();
    assert!(
        e.contains("wrong digest") && e.contains(&format!("expected {}", layer.digest)),
        "{e}"
    );

    // A manifest that changed in the registry's storage: by digest and by tag.
    let path = registry.blob_path(&digest);
    let manifest = String::from_utf8(std::fs::read(&path).unwrap()).unwrap();
    assert!(manifest.contains("\"1.5.0\""));
    std::fs::write(&path, manifest.replace("\"1.5.0\"", "\"1.5.1\"")).unwrap();
    let e = c
        .manifest(&reference(&registry, &format!("cairn/bundles@{digest}")))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("wrong digest: expected ") && e.contains(&digest),
        "{e}"
    );
    let e = c.manifest(&r).unwrap_err().to_string();
    assert!(e.contains("wrong digest"), "{e}");
}

/// Pushes a blob and returns its descriptor.
fn blob(c: &Client, r: &Reference, media_type: &str, data: &[u8]) -> Descriptor {
    let digest = registry::digest_of(data);
    c.push_blob(
        r,
        &mut std::io::Cursor::new(data),
        data.len() as u64,
        &digest,
    )
    .unwrap();
    Descriptor {
        media_type: media_type.into(),
        digest,
        size: data.len() as u64,
        artifact_type: None,
        platform: None,
        annotations: BTreeMap::new(),
    }
}

fn image_manifest(config: Descriptor, layers: Vec<Descriptor>) -> Vec<u8> {
    ManifestDoc {
        schema_version: 2,
        media_type: Some(registry::OCI_MANIFEST.into()),
        config: Some(config),
        layers: Some(layers),
        ..ManifestDoc::default()
    }
    .to_json()
}

#[test]
fn a_layer_larger_than_its_descriptor_and_another_artifact_type_are_refused() {
    let Some(registry) = Registry::start(false) else {
        return;
    };
    let c = client(&registry, None);
    let r = reference(&registry, "cairn/bundles:liar");
    let config = blob(&c, &r, registry::EMPTY_TYPE, b"{}");
    let mut layer = blob(&c, &r, registry::BUNDLE_LAYER_TYPE, &bytes(10_000, 5));
    layer.size = 9_000;
    let mut doc = ManifestDoc::parse(&image_manifest(config, vec![layer])).unwrap();
    doc.artifact_type = Some(registry::BUNDLE_ARTIFACT_TYPE.into());
    c.push_manifest(&r, registry::OCI_MANIFEST, &doc.to_json())
        .unwrap();
    let e = pull(&c, &r).unwrap_err();
    assert!(
        e.contains("larger than the 9000 bytes the manifest says"),
        "{e}"
    );

    // An ordinary image is not a bundle.
    let image = reference(&registry, "cairn/app:1");
    let config = blob(
        &c,
        &image,
        "application/vnd.oci.image.config.v1+json",
        br#"{"architecture":"amd64","os":"linux"}"#,
    );
    let layer = blob(
        &c,
        &image,
        "application/vnd.oci.image.layer.v1.tar",
        &bytes(512, 6),
    );
    c.push_manifest(
        &image,
        registry::OCI_MANIFEST,
        &image_manifest(config, vec![layer]),
    )
    .unwrap();
    let e = pull(&c, &image).unwrap_err();
    assert!(
        e.contains(
            "is not a Cairn bundle: its artifactType is application/vnd.oci.image.config.v1+json"
        ),
        "{e}"
    );
    assert_eq!(e.lines().count(), 1);
}

#[test]
fn a_multi_arch_index_gives_the_platform_asked_for_as_a_layout_archive() {
    let Some(registry) = Registry::start(false) else {
        return;
    };
    let c = client(&registry, None);
    let r = reference(&registry, "cairn/app:multi");
    let mut entries = Vec::new();
    let mut layers = BTreeMap::new();
    for (i, arch) in ["amd64", "arm64"].into_iter().enumerate() {
        let config = blob(
            &c,
            &r,
            "application/vnd.oci.image.config.v1+json",
            format!(r#"{{"architecture":"{arch}","os":"linux","rootfs":{{"type":"layers","diff_ids":[]}}}}"#)
                .as_bytes(),
        );
        let data = bytes(70_000 + i * 1000, 10 + i as u32);
        let layer = blob(&c, &r, "application/vnd.oci.image.layer.v1.tar", &data);
        layers.insert(arch, (layer.digest.clone(), data));
        let manifest = image_manifest(config, vec![layer]);
        let digest = c
            .push_manifest(
                &r.at(&registry::digest_of(&manifest)),
                registry::OCI_MANIFEST,
                &manifest,
            )
            .unwrap();
        entries.push(Descriptor {
            media_type: registry::OCI_MANIFEST.into(),
            digest,
            size: manifest.len() as u64,
            artifact_type: None,
            platform: Some(Platform {
                architecture: arch.into(),
                os: "linux".into(),
                variant: None,
            }),
            annotations: BTreeMap::new(),
        });
    }
    let index = ManifestDoc {
        schema_version: 2,
        media_type: Some(registry::OCI_INDEX.into()),
        manifests: Some(entries.clone()),
        ..ManifestDoc::default()
    }
    .to_json();
    c.push_manifest(&r, registry::OCI_INDEX, &index).unwrap();

    for (i, arch) in ["amd64", "arm64"].into_iter().enumerate() {
        let platform = Platform {
            architecture: arch.into(),
            os: "linux".into(),
            variant: None,
        };
        let mut archive = Vec::new();
        let digest = c.pull_image_archive(&r, &platform, &mut archive).unwrap();
        assert_eq!(digest, entries[i].digest);
        // GNU tar reads it, and the layout names the platform's manifest.
        let dir = tempfile::tempdir().unwrap();
        let tar = dir.path().join("image.tar");
        std::fs::write(&tar, &archive).unwrap();
        let status = std::process::Command::new("tar")
            .arg("-xf")
            .arg(&tar)
            .arg("-C")
            .arg(dir.path())
            .status()
            .unwrap();
        assert!(status.success());
        let index: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.path().join("index.json")).unwrap()).unwrap();
        assert_eq!(index["manifests"][0]["digest"], digest.as_str());
        assert_eq!(
            index["manifests"][0]["annotations"]["org.opencontainers.image.ref.name"],
            "multi"
        );
        let (layer_digest, data) = &layers[arch];
        let blob_file = dir
            .path()
            .join("blobs/sha256")
            .join(&layer_digest["sha256:".len()..]);
        assert_eq!(&std::fs::read(blob_file).unwrap(), data);
        assert!(dir.path().join("oci-layout").exists());
    }

    let mut sink = Vec::new();
    let e = c
        .pull_image_archive(
            &r,
            &Platform {
                architecture: "riscv64".into(),
                os: "linux".into(),
                variant: None,
            },
            &mut sink,
        )
        .unwrap_err()
        .to_string();
    assert!(
        e.ends_with("has no image for linux/riscv64 (it has linux/amd64, linux/arm64)"),
        "{e}"
    );
    let _ = sink.flush();
}

/// A registry double for what distribution 2.8 will not do: answer a blob with a redirect to
/// `http://`. It serves one bundle artifact's manifest and redirects every blob request.
#[test]
fn a_redirect_to_http_is_refused_with_one_line() {
    use std::io::BufRead;
    use std::net::TcpListener;

    use common::Ca;
    use rustls::{ServerConnection, StreamOwned};

    let ca = Ca::new("double CA");
    let config = common::https_server_config(&ca.server());
    let layer = registry::digest_of(b"bundle bytes");
    let manifest = registry::bundle_manifest(&layer, 12, "b.cairn", BTreeMap::new());
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for tcp in listener.incoming().flatten() {
            let conn = ServerConnection::new(config.clone()).unwrap();
            let mut tls = std::io::BufReader::new(StreamOwned::new(conn, tcp));
            let mut head = String::new();
            while !head.ends_with("\r\n\r\n") {
                if tls.read_line(&mut head).unwrap_or(0) == 0 {
                    break;
                }
            }
            let path = head.split(' ').nth(1).unwrap_or_default().to_string();
            let tls = tls.get_mut();
            let _ = if path.contains("/manifests/") {
                write!(
                    tls,
                    "HTTP/1.1 200 OK\r\nContent-Type: {}\r\nContent-Length: {}\r\n\r\n",
                    registry::OCI_MANIFEST,
                    manifest.len()
                )
                .and_then(|()| tls.write_all(&manifest))
            } else {
                write!(
                    tls,
                    "HTTP/1.1 307 Temporary Redirect\r\nLocation: http://127.0.0.1:9/blob\r\n\
                     Content-Length: 0\r\n\r\n"
                )
            };
            let _ = tls.flush();
        }
    });
    let roots = cairn_api::fetch::roots_from_pem(&ca.pem()).unwrap();
    let c = Client::with_limits(roots, None, limits()).unwrap();
    let r = Reference::parse(&format!("oci://{addr}/cairn/b:1")).unwrap();
    let e = pull(&c, &r).unwrap_err();
    assert!(
        e.contains("redirected to \"http://127.0.0.1:9/blob\", which cannot be fetched: only https:// URLs are fetched"),
        "{e}"
    );
    assert_eq!(e.lines().count(), 1);
}
