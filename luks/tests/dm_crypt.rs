//! dm-crypt mapping through cairn-dm's device-mapper ioctls, checked against `cryptsetup open`.
//! Needs root, `/dev/mapper/control` and losetup; without them the test says why and passes.

use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::Command;

use cairn_luks::dm_crypt::{self, CryptTable};
use cairn_luks::{FormatOptions, Kdf, Luks2, VolumeKey};

fn skip(why: &str) {
    eprintln!("skipping the dm-crypt mapping test: {why}");
}

fn run(cmd: &str, args: &[&str]) -> String {
    let out = Command::new(cmd).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{cmd} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn our_mapping_reads_back_through_cryptsetup() {
    if !rustix::process::geteuid().is_root() {
        return skip("not running as root");
    }
    // The node can exist (libdevmapper creates it) while the kernel has no device-mapper.
    if let Err(e) = OpenOptions::new()
        .read(true)
        .write(true)
        .open(cairn_dm::CONTROL)
    {
        return skip(&format!(
            "cannot open {} ({e}): this kernel has no device-mapper (dm_mod, dm_crypt)",
            cairn_dm::CONTROL
        ));
    }
    if Command::new("losetup").arg("--version").output().is_err() {
        return skip("losetup (util-linux) is not installed");
    }
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("disk.img");
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&img)
        .unwrap();
    f.set_len(32 << 20).unwrap();
    let vk = VolumeKey::generate();
    let opts = FormatOptions {
        kdf: Kdf::Pbkdf2 { iterations: 1000 },
        digest_iterations: 1000,
        ..FormatOptions::default()
    };
    let luks = Luks2::format(&f, &vk, b"pw", &opts).unwrap();
    drop(f);
    let loopdev = run("losetup", &["--find", "--show", img.to_str().unwrap()]);
    let loopdev = loopdev.trim().to_owned();
    let name = format!("cairn-luks-test-{}", std::process::id());
    let result = std::panic::catch_unwind(|| {
        let table = CryptTable::new(&luks, &vk, Path::new(&loopdev), 32 << 20).unwrap();
        let node = dm_crypt::activate(&name, &table, false).unwrap();
        let pattern: Vec<u8> = (0..8192u32).map(|i| (i * 7) as u8).collect();
        {
            let d = OpenOptions::new().write(true).open(&node).unwrap();
            d.write_all_at(&pattern, 4096).unwrap();
            d.sync_all().unwrap();
        }
        dm_crypt::remove(&name).unwrap();
        // cryptsetup maps the same header and must see the same plaintext.
        let theirs = format!("{name}-cs");
        let out = Command::new("cryptsetup")
            .args(["open", "--key-file", "-", &loopdev, &theirs])
            .stdin(std::process::Stdio::piped())
            .spawn()
            .and_then(|mut c| {
                use std::io::Write;
                c.stdin.take().unwrap().write_all(b"pw")?;
                c.wait()
            })
            .unwrap();
        assert!(out.success(), "cryptsetup open failed");
        let mut got = vec![0u8; pattern.len()];
        let read = std::fs::File::open(format!("/dev/mapper/{theirs}"))
            .and_then(|d| d.read_exact_at(&mut got, 4096));
        run("cryptsetup", &["close", &theirs]);
        read.unwrap();
        assert_eq!(got, pattern);
    });
    let _ = dm_crypt::remove(&name);
    run("losetup", &["--detach", &loopdev]);
    if let Err(e) = result {
        std::panic::resume_unwind(e);
    }
}
