//! Host container images from a registry: what cairnd does for a `containers:` entry whose
//! image is `oci://…` ([`cairn_daemon::registry::pull_archive`]), against Debian's
//! docker-registry (distribution 2.8) started by the test; skipped with one line when it is
//! not installed. The archive it writes is the one the containers capability then checks and
//! imports, as it does an archive from DATA (daemon/tests/containers.rs runs those).

#[path = "../../systest/src/oci.rs"]
mod oci_writer;

use std::path::Path;
use std::process::Command;

use cairn_api::registry::{self, Client, Reference};
use cairn_api::testing_registry::Registry;
use cairn_daemon::oci;
use cairn_facts::containers::RegistryImage;

/// Unpacks an archive `oci_writer` made and pushes its blobs and manifest to `r`'s
/// repository (by digest); returns the manifest's descriptor.
fn push_archive(client: &Client, r: &Reference, archive: &[u8], dir: &Path) -> serde_json::Value {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("a.tar"), archive).unwrap();
    let ok = Command::new("tar")
        .arg("-xf")
        .arg(dir.join("a.tar"))
        .arg("-C")
        .arg(dir)
        .status()
        .unwrap()
        .success();
    assert!(ok);
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("index.json")).unwrap()).unwrap();
    let desc = index["manifests"][0].clone();
    let blob = |digest: &str| {
        std::fs::read(dir.join("blobs/sha256").join(&digest["sha256:".len()..])).unwrap()
    };
    let manifest_digest = desc["digest"].as_str().unwrap();
    let manifest: serde_json::Value = serde_json::from_slice(&blob(manifest_digest)).unwrap();
    let config = std::iter::once(&manifest["config"]);
    for d in config.chain(manifest["layers"].as_array().unwrap()) {
        let digest = d["digest"].as_str().unwrap();
        let data = blob(digest);
        client
            .push_blob(
                r,
                &mut std::io::Cursor::new(&data),
                data.len() as u64,
                digest,
            )
            .unwrap();
    }
    client
        .push_manifest(
            &r.at(manifest_digest),
            registry::OCI_MANIFEST,
            &blob(manifest_digest),
        )
        .unwrap();
    desc
}

fn image(registry: &Registry, path: &str) -> RegistryImage {
    RegistryImage {
        reference: format!("oci://{}/{path}", registry.host()),
        ca: registry.ca_pem().to_string(),
        credentials: None,
    }
}

#[test]
fn a_registry_image_is_pulled_for_this_machine_and_others_are_refused() {
    let Some(reg) = Registry::start(false) else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let client = Client::new(reg.roots(), None).unwrap();
    let repo = Reference::parse(&format!("{}/apps/web:multi", reg.host())).unwrap();
    let here = oci::machine_arch();
    let other = if here == "amd64" { "arm64" } else { "amd64" };
    let mut entries = Vec::new();
    for arch in [here, other] {
        let fake_busybox = format!("busybox for {arch}").into_bytes();
        let img = oci_writer::busybox_image(fake_busybox, arch, "hi", &["/bin/sh"]);
        entries.push(push_archive(
            &client,
            &repo,
            &img.archive().unwrap(),
            &tmp.path().join(arch),
        ));
    }
    let index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": registry::OCI_INDEX,
        "manifests": entries,
    });
    client
        .push_manifest(
            &repo,
            registry::OCI_INDEX,
            &serde_json::to_vec(&index).unwrap(),
        )
        .unwrap();
    // One tag with only the other architecture's image.
    let foreign = Reference::parse(&format!("{}/apps/web:foreign", reg.host())).unwrap();
    let other_manifest = client
        .manifest(&repo.at(entries[1]["digest"].as_str().unwrap()))
        .unwrap();
    client
        .push_manifest(&foreign, registry::OCI_MANIFEST, &other_manifest.bytes)
        .unwrap();

    let pulled = tmp.path().join("pulled");
    let path = cairn_daemon::registry::pull_archive(&image(&reg, "apps/web:multi"), "web", &pulled)
        .unwrap();
    assert_eq!(path, pulled.join("web.tar"));
    let checked = oci::check_archive(&path, here).unwrap();
    assert_eq!(checked.manifest, entries[0]["digest"].as_str().unwrap());
    assert_eq!(checked.architecture, here);
    assert!(!pulled.join("web.tar.part").exists());

    let (e, retry) =
        cairn_daemon::registry::pull_archive(&image(&reg, "apps/web:foreign"), "db", &pulled)
            .unwrap_err();
    assert!(
        e.ends_with(&format!(
            "has no image for linux/{here} (it has linux/{other})"
        )),
        "{e}"
    );
    assert!(!retry, "another architecture does not pass by waiting");
    assert!(!pulled.join("db.tar").exists());

    let (e, retry) =
        cairn_daemon::registry::pull_archive(&image(&reg, "apps/none:1"), "none", &pulled)
            .unwrap_err();
    assert!(e.contains("404") && !retry, "{e}");

    // The registry goes away: the image pulled earlier from the same reference still runs;
    // one never pulled waits for the registry.
    let host = reg.host();
    let ca = reg.ca_pem().to_string();
    drop(reg);
    let gone = |path: &str| RegistryImage {
        reference: format!("oci://{host}/{path}"),
        ca: ca.clone(),
        credentials: None,
    };
    let again =
        cairn_daemon::registry::pull_archive(&gone("apps/web:multi"), "web", &pulled).unwrap();
    assert_eq!(again, path);
    assert!(oci::check_archive(&again, here).is_ok());
    let (e, retry) =
        cairn_daemon::registry::pull_archive(&gone("apps/web:multi"), "cache", &pulled)
            .unwrap_err();
    assert!(retry && e.contains("cannot connect"), "{e}");
}
