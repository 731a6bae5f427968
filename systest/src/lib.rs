//! Shared helpers of the system tests.
//!
//! The tests need what `cargo xtask test` prepares first: the device binaries and one image per
//! QEMU board. They find them through the environment xtask sets (CAIRN_IMAGES, CAIRN_CACHE,
//! CAIRN_DEVICE_BIN_<ARCH>) and are `#[ignore]`d for a plain `cargo test`, which has no images.

pub mod abuse;
pub mod ctl;
pub mod fault_init;
pub mod oci;
pub mod powercut;
pub mod release;
pub mod soak;
pub mod stick;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use cairn_board::{Arch, Board};

fn env_path(name: &str) -> PathBuf {
    match std::env::var_os(name) {
        Some(v) => PathBuf::from(v),
        None => panic!("{name} is not set: run the system tests through `cargo xtask test`"),
    }
}

/// The folder `cargo xtask images` built for `board`.
pub fn image_dir(board: &Board) -> PathBuf {
    let dir = env_path("CAIRN_IMAGES").join(board.name);
    assert!(
        dir.join("disk.img").is_file(),
        "{} has no disk.img: run `cargo xtask test`",
        dir.display()
    );
    dir
}

/// The development signing key xtask made (`dev.key`, `dev.pub`); the built images trust it.
pub fn keys_dir() -> PathBuf {
    env_path("CAIRN_KEYS")
}

pub fn cache_dir() -> PathBuf {
    env_path("CAIRN_CACHE")
}

pub fn device_bin(arch: Arch) -> PathBuf {
    env_path(match arch {
        Arch::Aarch64 => "CAIRN_DEVICE_BIN_AARCH64",
        Arch::X86_64 => "CAIRN_DEVICE_BIN_X86_64",
    })
}

pub fn manifest(board: &Board) -> serde_json::Value {
    let path = image_dir(board).join("image.json");
    let text = std::fs::read_to_string(&path).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// Runs a host tool and returns its stdout; panics with its stderr when it fails or is missing.
pub fn tool(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{cmd:?}: {e} (`cargo xtask setup` installs it)"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A temporary folder for one test's machine (disk copy, console log); `CAIRN_KEEP_RIG=1` keeps
/// it for a look after a failure. Its path is printed.
pub fn rig_dir(prefix: &str) -> tempfile::TempDir {
    let dir = tempfile::Builder::new()
        .prefix(prefix)
        .disable_cleanup(std::env::var_os("CAIRN_KEEP_RIG").is_some())
        .tempdir()
        .unwrap();
    eprintln!("rig: {}", dir.path().display());
    dir
}

/// QEMU guests under TCG want both cores: one at a time.
pub fn qemu_lock() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// The `cairnctl` binary of this build: `cargo test --workspace` builds it next to the tests.
pub fn cairnctl() -> PathBuf {
    // target/<profile>/deps/<test> -> target/<profile>/cairnctl
    let exe = std::env::current_exe().unwrap();
    let bin = exe.parent().unwrap().parent().unwrap().join("cairnctl");
    assert!(
        bin.is_file(),
        "{} is missing: run `cargo build -p cairnctl` (or `cargo xtask test`)",
        bin.display()
    );
    bin
}

/// Byte offset and length of the partition labelled `label` in the disk image `disk`, read
/// with Debian's sfdisk.
pub fn partition(disk: &std::path::Path, label: &str) -> (u64, u64) {
    let out = tool(Command::new("sfdisk").arg("--json").arg(disk));
    let table: serde_json::Value = serde_json::from_str(&out).unwrap();
    let sector = table["partitiontable"]["sectorsize"]
        .as_u64()
        .unwrap_or(512);
    let part = table["partitiontable"]["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == label)
        .unwrap_or_else(|| panic!("no {label} partition"));
    (
        part["start"].as_u64().unwrap() * sector,
        part["size"].as_u64().unwrap() * sector,
    )
}

/// Copies the partition labelled `label` out of `disk` into the file `to`; returns its bytes.
pub fn extract_partition(disk: &std::path::Path, label: &str, to: &std::path::Path) -> Vec<u8> {
    use std::io::{Read, Seek, SeekFrom};
    let (start, len) = partition(disk, label);
    let mut f = std::fs::File::open(disk).unwrap();
    f.seek(SeekFrom::Start(start)).unwrap();
    let mut buf = vec![0u8; len as usize];
    f.read_exact(&mut buf).unwrap();
    std::fs::write(to, &buf).unwrap();
    buf
}

/// Whether `needle` occurs in `haystack`.
pub fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// The variable `name` parsed, or `default` when it is not set; a value that does not parse
/// stops the test with its name.
pub fn var<T: std::str::FromStr>(name: &str, default: T) -> T {
    match std::env::var(name) {
        Err(_) => default,
        Ok(v) => v
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v:?} is not a valid value")),
    }
}

/// An OCI archive of a busybox image for `board` (Debian's `busybox-static` for its
/// architecture) running `script` with `sh -c`, written to `dir/<name>.tar`.
pub fn busybox_archive(board: &Board, dir: &Path, name: &str, script: &str) -> PathBuf {
    let cache = cairn_image::deb::Cache::new(cache_dir());
    let pkg = cache
        .fetch("busybox-static", board.arch.deb_arch())
        .unwrap();
    let busybox = std::fs::read(pkg.root.join("bin/busybox")).unwrap();
    // Debian and OCI name the architectures alike (arm64, amd64).
    let arch = board.arch.deb_arch();
    let page = format!("hello from {name}\n");
    let image = oci::busybox_image(busybox, arch, &page, &["/bin/sh", "-c", script]);
    let path = dir.join(format!("{name}.tar"));
    std::fs::write(&path, image.archive().unwrap()).unwrap();
    path
}

/// The body of `GET <path>` on the host's `port`, if it answers.
pub fn http_get(port: u16, path: &str) -> Option<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").as_bytes())
        .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    out.split_once("\r\n\r\n").map(|(_, body)| body.to_string())
}

/// The text after `marker` on the next console line holding it, waiting up to `timeout`.
pub fn value_after(m: &mut cairn_qemu::Machine, marker: &str, timeout: Duration) -> String {
    let line = m.wait_for_line(marker, timeout).unwrap();
    let at = line.find(marker).unwrap() + marker.len();
    line[at..].trim().to_string()
}

/// Asserts that Debian's cryptsetup opens the LUKS2 volume in `part` (a partition copied out
/// of a disk) with the recovery key in `key_file`; `label` names it in the failure.
pub fn cryptsetup_takes_key(part: &Path, key_file: &Path, label: &str) {
    let ok = Command::new("cryptsetup")
        .args(["open", "--test-passphrase", "--key-file"])
        .arg(key_file)
        .arg(part)
        .status()
        .expect("cryptsetup (Debian package cryptsetup-bin)")
        .success();
    assert!(ok, "cryptsetup refuses the recovery key on {label}");
}
