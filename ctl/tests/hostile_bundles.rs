//! Hostile signed manifests cost no more memory than a genuine bundle: `cairnctl bundle verify`'s
//! peak resident set, measured by the kernel for each run, stays within twice that of verifying a
//! genuine bundle, whichever CBOR item the hostile bytes sit in (docs/bundle-format.md section 2).

use std::path::Path;
use std::process::{Command, Stdio};

use ed25519_dalek::{Signer, SigningKey};

const SEED: [u8; 32] = [1; 32];

/// Runs cairnctl and returns (success, stderr, peak RSS in KiB) from wait4's rusage.
///
/// The kernel's figure for a child also counts the memory of the process it was made from, as it
/// was when it called exec. So the child is made by fork (a `pre_exec` hook rules out the
/// shared-memory spawn, whose figure would be this test's own peak), and this test holds no large
/// buffer and gives its freed heap back first: the figure is cairnctl's own.
fn verify_rss(keyring: &Path, bundle: &Path) -> (bool, String, i64) {
    // SAFETY: returns freed heap memory to the kernel; no pointers are involved.
    unsafe { libc::malloc_trim(0) };
    let mut command = Command::new(env!("CARGO_BIN_EXE_cairnctl"));
    // SAFETY: the hook does nothing; it only makes std fork and exec.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut command, || Ok(()));
    }
    #[allow(clippy::zombie_processes)] // reaped by wait4 below, which also yields its rusage
    let child = command
        .args(["bundle", "verify", "--pubkey"])
        .arg(keyring)
        .arg(bundle)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id() as libc::pid_t;
    let mut stderr = child.stderr.unwrap();
    let mut err = String::new();
    std::io::Read::read_to_string(&mut stderr, &mut err).unwrap();
    let mut status = 0;
    // SAFETY: rusage is plain integers, for which all zeros is a valid value.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: plain out-parameters; the child is ours and not yet reaped (wait4 reaps it, which is
    // why std's Child is not waited on as well).
    let rc = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    assert_eq!(rc, pid);
    let ok = libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0;
    (ok, err, usage.ru_maxrss)
}

fn bstr_header(len: usize) -> Vec<u8> {
    match len {
        0..=23 => vec![0x40 | len as u8],
        24..=0xff => vec![0x58, len as u8],
        0x100..=0xffff => [&[0x59][..], &(len as u16).to_be_bytes()].concat(),
        _ => [&[0x5a][..], &(len as u32).to_be_bytes()].concat(),
    }
}

fn bstr(bytes: &[u8]) -> Vec<u8> {
    [bstr_header(bytes.len()), bytes.to_vec()].concat()
}

fn key_id() -> [u8; 8] {
    use sha2::Digest;
    let public = SigningKey::from_bytes(&SEED).verifying_key().to_bytes();
    sha2::Sha256::digest(public)[..8].try_into().unwrap()
}

fn protected() -> Vec<u8> {
    [&[0xa2, 0x01, 0x27, 0x04, 0x48][..], &key_id()].concat()
}

/// An envelope from raw parts, signed over `protected` and `payload` with the trusted key.
fn envelope(protected: &[u8], unprotected: &[u8], payload: &[u8]) -> Vec<u8> {
    let mut tbs = vec![0x84, 0x6a];
    tbs.extend_from_slice(b"Signature1");
    tbs.extend(bstr(protected));
    tbs.push(0x40);
    tbs.extend(bstr(payload));
    let sig = SigningKey::from_bytes(&SEED).sign(&tbs).to_bytes();
    [
        &[0xd2, 0x84][..],
        &bstr(protected),
        unprotected,
        &bstr(payload),
        &bstr(&sig),
    ]
    .concat()
}

fn bundle_file(envelope: &[u8]) -> Vec<u8> {
    let mut out = b"CAIRNBDL".to_vec();
    out.extend_from_slice(&1u32.to_be_bytes());
    out.extend_from_slice(&(envelope.len() as u32).to_be_bytes());
    out.extend_from_slice(envelope);
    out.resize(out.len().next_multiple_of(4096), 0);
    out
}

/// An array of `n` zero integers: n + 1 CBOR items in n + 5 bytes.
fn huge_array(n: u32) -> Vec<u8> {
    let mut out = vec![0x9a];
    out.extend_from_slice(&n.to_be_bytes());
    out.resize(5 + n as usize, 0x00);
    out
}

#[test]
fn hostile_cbor_costs_at_most_twice_a_genuine_bundle() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let secret = cairn_bundle::SecretKey::from_bytes(SEED);
    let keyring = dir.join("keyring");
    std::fs::write(&keyring, secret.public().to_text()).unwrap();

    // A genuine bundle shaped like a slot update: a 24 MiB root in 4 MiB chunks, a kernel in 1 MiB.
    let mut x = 0x2545_f491u32;
    let mut noise = |path: &Path, mib: usize| {
        let mut file = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
        for _ in 0..mib << 20 {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            std::io::Write::write_all(&mut file, &[x as u8]).unwrap();
        }
    };
    let root = dir.join("rootfs");
    noise(&root, 24);
    let kernel = dir.join("vmlinuz");
    noise(&kernel, 6);
    let source = |name: &str, role, path: &Path, chunk_size| cairn_bundle::PayloadSource {
        name: name.into(),
        role,
        path: path.to_path_buf(),
        chunk_size,
    };
    let meta = cairn_bundle::ManifestMeta {
        compatible: vec!["qemu-aarch64".into()],
        arch: "aarch64".into(),
        version: cairn_bundle::Version::parse("1.2.3").unwrap(),
        security_version: 1,
        min_installed_version: cairn_bundle::Version::parse("0.0.0").unwrap(),
        created: 1_700_000_000,
    };
    let genuine = dir.join("genuine.cairn");
    let mut out = std::fs::File::create(&genuine).unwrap();
    cairn_bundle::create(
        &mut out,
        &meta,
        &[
            source("rootfs", cairn_bundle::Role::Rootfs, &root, 4 << 20),
            source("vmlinuz", cairn_bundle::Role::Kernel, &kernel, 1 << 20),
        ],
        &secret,
    )
    .unwrap();
    drop(out);
    let (ok, err, genuine_kib) = verify_rss(&keyring, &genuine);
    assert!(ok, "the genuine bundle verifies: {err}");

    // Each hostile envelope fills most of the 4 MiB manifest limit with items.
    let items: u32 = 4_000_000;
    let mut huge_map = vec![0xba];
    huge_map.extend_from_slice(&(items / 2).to_be_bytes());
    huge_map.resize(5 + items as usize, 0x00);
    let mut indefinite = vec![0xbf, 0x01, 0x27, 0x04, 0x48];
    indefinite.extend_from_slice(&key_id());
    indefinite.push(0xff);
    let make = |case: usize| match case {
        0 => envelope(&huge_array(items), &[0xa0], b"m"),
        1 => envelope(&indefinite, &[0xa0], b"m"),
        2 => envelope(&protected(), &huge_map, b"m"),
        3 => envelope(&protected(), &[0xa0], &huge_array(items)),
        _ => [&[0xd2][..], &huge_array(items)].concat(),
    };
    let cases = [
        ("a protected header of 4 million items", "more than 4096"),
        ("an indefinite-length protected header", "indefinite"),
        ("an unprotected header of 4 million items", "more than 4096"),
        ("a signed manifest of 4 million items", "more than 4096"),
        ("an envelope of 4 million items", "more than 4096"),
    ];
    println!("peak RSS of `cairnctl bundle verify`: genuine bundle {genuine_kib} KiB");
    let mut worst = 0;
    for case in 0..cases.len() {
        let path = dir.join(format!("hostile-{case}.cairn"));
        std::fs::write(&path, bundle_file(&make(case))).unwrap();
    }
    drop(huge_map);
    for (case, (what, reason)) in cases.into_iter().enumerate() {
        let path = dir.join(format!("hostile-{case}.cairn"));
        let (ok, err, kib) = verify_rss(&keyring, &path);
        assert!(!ok, "{what} was accepted");
        assert!(err.contains(reason), "{what}: {err}");
        assert_eq!(err.trim_end().lines().count(), 1, "{what}: {err}");
        println!(
            "  {what}: {kib} KiB ({:.2}x)",
            kib as f64 / genuine_kib as f64
        );
        worst = worst.max(kib);
        assert!(
            kib <= 2 * genuine_kib,
            "{what} peaked at {kib} KiB, more than twice the genuine bundle's {genuine_kib} KiB"
        );
    }
    println!(
        "  worst hostile / genuine: {:.2}x",
        worst as f64 / genuine_kib as f64
    );
}
