//! API messages a device must refuse: the bodies of gRPC calls (`cairn.v1.DeviceService`), as
//! an admin's client could send them over mutual TLS, so that no role check stops them first.
//!
//! Each file is one call's whole HTTP/2 request body, gRPC framing included (a flag byte, a
//! four-byte length, the protobuf message); its name is `<Method>.<what>.grpc`. They break the
//! framing (a compressed flag with no encoding, a length past the body, a message above the
//! size limit), the protobuf encoding (an unterminated varint, a field past the message's end,
//! a wrong wire type, a string that is not UTF-8), and each mutating call's rules (an upgrade
//! that does not start with its UpgradeStart, an upload shorter or longer than it declared or
//! of no size, a URL the device does not fetch, names and recovery keys out of bounds, a
//! config both dry-run and on trial), and carry hostile payloads the device itself must
//! refuse (an uploaded file that is not a bundle or is for another architecture, an alias
//! bomb as a machine config, a recovery key for disks that are not encrypted).

use crate::{bundles, configs};

/// A varint.
fn varint(mut v: u64, out: &mut Vec<u8>) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// A length-delimited field (wire type 2).
fn bytes_field(field: u32, value: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    varint(u64::from(field) << 3 | 2, &mut out);
    varint(value.len() as u64, &mut out);
    out.extend_from_slice(value);
    out
}

/// A varint field (wire type 0).
fn varint_field(field: u32, value: u64) -> Vec<u8> {
    let mut out = Vec::new();
    varint(u64::from(field) << 3, &mut out);
    varint(value, &mut out);
    out
}

/// One gRPC frame: not compressed, the message's length, the message.
fn frame(message: &[u8]) -> Vec<u8> {
    let mut out = vec![0];
    out.extend_from_slice(&(message.len() as u32).to_be_bytes());
    out.extend_from_slice(message);
    out
}

/// `framed` with its length raised past the size limit: the frame claims more than the device
/// takes, and the bytes that follow are far fewer (the device must refuse on the length alone,
/// before it waits for or buffers them).
fn oversize(framed: &[u8]) -> Vec<u8> {
    let mut out = framed.to_vec();
    out[1..5].copy_from_slice(&(MAX_MESSAGE as u32 + 1).to_be_bytes());
    out
}

/// `UpgradeRequest { start: UpgradeStart { upload: Upload { size } } }`.
fn upload_start(size: u64) -> Vec<u8> {
    bytes_field(1, &bytes_field(1, &varint_field(1, size)))
}

/// `UpgradeRequest { start: UpgradeStart { fetch: Fetch { url } } }`.
fn fetch_start(url: &str) -> Vec<u8> {
    bytes_field(1, &bytes_field(2, &bytes_field(1, url.as_bytes())))
}

/// `UpgradeRequest { chunk }`.
fn chunk(bytes: &[u8]) -> Vec<u8> {
    bytes_field(2, bytes)
}

/// An upload of `file`, declared as `declared` bytes long, in chunks of 64 KiB.
fn upload(file: &[u8], declared: u64) -> Vec<u8> {
    let mut out = frame(&upload_start(declared));
    for piece in file.chunks(64 * 1024) {
        out.extend(frame(&chunk(piece)));
    }
    out
}

/// The size above which the device refuses a message (`Limits::max_message`).
const MAX_MESSAGE: usize = 1024 * 1024 + 1024;

pub fn cases() -> Vec<(String, Vec<u8>, &'static str)> {
    let bundle = |name: &str| {
        bundles::cases()
            .into_iter()
            .find(|(n, _, _)| n == name)
            .unwrap_or_else(|| panic!("hostile/src/bundles.rs makes {name}"))
            .1
    };
    let not_a_bundle = bundle("not-a-bundle.cairn");
    let other_arch = bundle("other-arch.cairn");
    let good = bundles::good();
    let config = |yaml: &str| frame(&bytes_field(1, yaml.as_bytes()));
    let bomb = configs::alias_bomb();

    let mut compressed = frame(&bytes_field(1, b"cairnd"));
    compressed[0] = 1;
    let mut past_the_end = frame(&bytes_field(1, b"cairnd"));
    past_the_end[1..5].copy_from_slice(&1000u32.to_be_bytes());
    let mut unterminated = vec![0x0a];
    unterminated.extend([0xff; 5]);
    let mut not_utf8 = bytes_field(1, &[b'c', 0xff, 0xfe, b'd']);
    not_utf8.extend(varint_field(2, 1));

    let cases: Vec<(&str, Vec<u8>, &'static str)> = vec![
        // Framing.
        (
            "ServiceRestart.compressed-without-encoding.grpc",
            compressed,
            "compressed-flag",
        ),
        (
            "ServiceRestart.frame-longer-than-the-body.grpc",
            past_the_end,
            "EOF",
        ),
        (
            "ApplyConfig.over-the-size-limit.grpc",
            oversize(&config("update:\n  tries: 3\n")),
            "over the device's limit",
        ),
        (
            "Upgrade.chunk-over-the-size-limit.grpc",
            [
                frame(&upload_start(4 * MAX_MESSAGE as u64)),
                oversize(&frame(&chunk(&[0x5a; 64]))),
            ]
            .concat(),
            "over the device's limit",
        ),
        // Protobuf encoding.
        (
            "ApplyConfig.unterminated-varint.grpc",
            frame(&unterminated),
            "invalid varint",
        ),
        (
            "ApplyConfig.field-past-the-end.grpc",
            frame(&[0x0a, 0x40, b'u', b'p']),
            "buffer underflow",
        ),
        (
            "ApplyConfig.config-as-a-number.grpc",
            frame(&varint_field(1, 7)),
            "invalid wire type",
        ),
        (
            "ServiceRestart.name-not-utf8.grpc",
            frame(&not_utf8),
            "UTF-8",
        ),
        (
            "Unlock.key-not-utf8.grpc",
            frame(&bytes_field(1, &[0xc3, 0x28])),
            "UTF-8",
        ),
        // Each call's rules, checked by the API before the device.
        (
            "Upgrade.chunk-before-start.grpc",
            frame(&chunk(&not_a_bundle)),
            "must be an UpgradeStart",
        ),
        (
            "Upgrade.no-message.grpc",
            Vec::new(),
            "before its UpgradeStart",
        ),
        (
            "Upgrade.start-without-source.grpc",
            frame(&bytes_field(1, &varint_field(3, 1))),
            "needs a source",
        ),
        (
            "Upgrade.upload-of-no-bytes.grpc",
            frame(&upload_start(0)),
            "cannot be a bundle",
        ),
        (
            "Upgrade.upload-of-a-petabyte.grpc",
            upload(&not_a_bundle, 1 << 50),
            "cannot be a bundle",
        ),
        (
            "Upgrade.upload-shorter-than-declared.grpc",
            upload(&good[..good.len() - 100], good.len() as u64),
            "[releases B] ended",
        ),
        (
            "Upgrade.upload-longer-than-declared.grpc",
            upload(&good, good.len() as u64 - 100),
            "longer than",
        ),
        (
            "Upgrade.second-start.grpc",
            [
                upload(&other_arch[..1000], other_arch.len() as u64),
                frame(&upload_start(10)),
            ]
            .concat(),
            "UpgradeStart",
        ),
        (
            "Upgrade.file-url.grpc",
            frame(&fetch_start("file:///etc/cairn/keyring")),
            "not https:// or oci://",
        ),
        (
            "Upgrade.plain-http-url.grpc",
            frame(&fetch_start("http://updates.example/cairn.cairn")),
            "HTTPS only",
        ),
        (
            "Upgrade.oci-without-repository.grpc",
            frame(&fetch_start("oci://registry.example")),
            "oci://",
        ),
        (
            "Upgrade.url-of-4-kib.grpc",
            frame(&fetch_start(&format!(
                "https://updates.example/{}",
                "a".repeat(4096)
            ))),
            "at most 2048",
        ),
        (
            "ServiceRestart.empty-name.grpc",
            frame(&[]),
            "the service name is empty",
        ),
        (
            "ServiceRestart.name-of-64-kib.grpc",
            frame(&bytes_field(1, &vec![b'a'; 64 * 1024])),
            "at most 2048",
        ),
        (
            "Logs.no-source.grpc",
            frame(&varint_field(3, 10)),
            "needs a source",
        ),
        (
            "ApplyConfig.dry-run-on-trial.grpc",
            frame(
                &[
                    bytes_field(1, b"update:\n  tries: 3\n"),
                    varint_field(2, 1),
                    varint_field(3, 60),
                ]
                .concat(),
            ),
            "dry",
        ),
        (
            "ApplyConfig.trial-of-a-day.grpc",
            frame(
                &[
                    bytes_field(1, b"update:\n  tries: 3\n"),
                    varint_field(3, 86_400),
                ]
                .concat(),
            ),
            "3600",
        ),
        (
            "ApplyConfig.config-of-65-kib.grpc",
            config(&format!("# {}\n", "x".repeat(65 * 1024))),
            "65536",
        ),
        (
            "Unlock.empty-key.grpc",
            frame(&[]),
            "the recovery key is empty",
        ),
        (
            "Unlock.key-of-4-kib.grpc",
            frame(&bytes_field(1, &vec![b'1'; 4096])),
            "at most 256",
        ),
        // Payloads that pass the API's checks and reach the device, which refuses them.
        (
            "Upgrade.upload-not-a-bundle.grpc",
            upload(&not_a_bundle, not_a_bundle.len() as u64),
            "not a Cairn bundle",
        ),
        (
            "Upgrade.upload-for-another-arch.grpc",
            upload(&other_arch, other_arch.len() as u64),
            "aarch64",
        ),
        (
            "ApplyConfig.alias-bomb.grpc",
            config(&bomb),
            "network.search",
        ),
        (
            "ApplyConfig.unknown-section.grpc",
            config("updates:\n  tries: 3\n"),
            "updates",
        ),
        (
            "ConfirmConfig.no-config-on-trial.grpc",
            frame(&varint_field(1, 77)),
            "77",
        ),
        (
            "Unlock.wrong-key.grpc",
            frame(&bytes_field(
                1,
                b"cbhvdfgd-nvhlkkek-hfhrhfbd-ceivcdcb-ecrdjlrj-vkegvtdr-ijkebcng-ilcvbefg",
            )),
            "no valid LUKS2 header",
        ),
    ];
    cases
        .into_iter()
        .map(|(name, bytes, expect)| (name.to_string(), bytes, expect))
        .collect()
}

/// The call a file is for: the part of its name before the first dot.
pub fn method(name: &str) -> &str {
    name.split('.').next().unwrap_or(name)
}
