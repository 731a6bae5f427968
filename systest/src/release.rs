//! New releases for update tests: an image of another version, and its signed bundle, both
//! made with the code `cairnctl image build` and `cairnctl bundle create` run.

use std::path::{Path, PathBuf};

use cairn_board::Board;
use cairn_image::{build, BuildOptions, RootExtras};

use crate::{cache_dir, device_bin, keys_dir};

/// The development signing key xtask made; the built images trust it.
pub fn dev_key() -> cairn_bundle::SecretKey {
    let text = std::fs::read_to_string(keys_dir().join("dev.key")).unwrap();
    cairn_bundle::SecretKey::from_text(&text).unwrap()
}

/// The development API secrets, as `cargo xtask images` puts them on STATE.
pub fn dev_api_secrets() -> cairn_image::ApiSecrets {
    let s = cairn_pki::secrets::DeviceSecrets::load(&keys_dir().join("secrets")).unwrap();
    cairn_image::ApiSecrets {
        client_ca: s.client_ca,
        device_ca: s.device_ca,
        device_ca_key: s.device_ca_key,
    }
}

/// Builds an image of `board` at version `version` into `out` (trusting the development key)
/// and returns `out`. `seed` tells the builds of one test apart.
pub fn build_release(
    board: &'static Board,
    out: &Path,
    version: &str,
    security: u32,
    seed: &str,
    extras: RootExtras,
) -> PathBuf {
    build_with(board, out, version, security, seed, extras, None)
}

/// As [`build_release`], signed for Secure Boot with the keys in `secure_boot` (a folder
/// `cairnctl keys gen-secureboot` made: its UKIs carry the release's PCR 11 signature too),
/// with the development API secrets and without the containers extension.
pub fn build_signed_release(
    board: &'static Board,
    out: &Path,
    version: &str,
    security: u32,
    seed: &str,
    secure_boot: &Path,
) -> PathBuf {
    let extras = RootExtras {
        api_secrets: Some(dev_api_secrets()),
        ..Default::default()
    };
    build_with(
        board,
        out,
        version,
        security,
        seed,
        extras,
        Some(secure_boot),
    )
}

fn build_with(
    board: &'static Board,
    out: &Path,
    version: &str,
    security: u32,
    seed: &str,
    extras: RootExtras,
    secure_boot: Option<&Path>,
) -> PathBuf {
    let keyring = std::fs::read_to_string(keys_dir().join("dev.pub")).unwrap();
    build(&BuildOptions {
        board,
        out: out.to_path_buf(),
        cache: cache_dir(),
        device_bin: device_bin(board.arch),
        version: version.into(),
        seed: seed.into(),
        root: RootExtras {
            keyring: Some(keyring),
            security_version: security,
            ..extras
        },
        secure_boot: secure_boot.map(Path::to_path_buf),
        // A Secure Boot image is built without the containers extension: the tests that sign
        // images are about the boot chain.
        extension: secure_boot.is_none().then(Default::default),
    })
    .unwrap();
    out.to_path_buf()
}

/// A bundle of the image in `image`, signed with `key`, written into that folder as
/// `update-<key id>.cairn`.
pub fn sign_bundle(image: &Path, key: &cairn_bundle::SecretKey) -> PathBuf {
    let work = tempfile::tempdir_in(image).unwrap();
    let input = cairn_image::bundle_input::bundle_input(image, work.path()).unwrap();
    let out = image.join(format!("update-{}.cairn", key.key_id()));
    let mut file = std::fs::File::create(&out).unwrap();
    cairn_bundle::create(
        &mut file,
        &cairn_bundle::ManifestMeta {
            compatible: vec![input.board],
            arch: input.arch,
            version: cairn_bundle::Version::parse(&input.version).unwrap(),
            security_version: input.security_version,
            min_installed_version: cairn_bundle::Version::new(0, 1, 0),
            created: 1_790_000_000,
        },
        &input.payloads,
        key,
    )
    .unwrap();
    out
}

/// A signed bundle of a new release of `board` at `version` (security version 0), its image
/// built in `dir/release-<version>`; `tag` tells one test's builds from another's.
pub fn signed_release(
    board: &'static Board,
    dir: &Path,
    version: &str,
    extras: RootExtras,
    tag: &str,
) -> PathBuf {
    let image = build_release(
        board,
        &dir.join(format!("release-{version}")),
        version,
        0,
        &format!("systest-{tag}-{}-{version}", board.name),
        extras,
    );
    sign_bundle(&image, &dev_key())
}
