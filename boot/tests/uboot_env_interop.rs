//! Interop with the real peers of the U-Boot formats: libubootenv's `fw_printenv`/`fw_setenv`
//! (Debian libubootenv-tool) on a redundant environment in a file, and U-Boot's `mkimage`
//! (Debian u-boot-tools) on the boot script. A missing tool fails the test: run
//! `cargo xtask setup`.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use cairn_boot::uboot::env::{valid_flags, EnvCopy, FwEnvConfig, Limits, Vars, HEADER_LEN};
use cairn_boot::uboot::state::{initial_vars, BootState, Op};
use cairn_boot::uboot::BOOT_SCRIPT;
use cairn_boot::Slot;

const SIZE: usize = 0x4000;

fn tool(name: &str, package: &str) -> Command {
    match Command::new(name).arg("-V").output() {
        Ok(_) => Command::new(name),
        Err(e) => {
            panic!("`{name}` cannot run ({e}): install Debian's {package} with `cargo xtask setup`")
        }
    }
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().expect("spawn");
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8 output")
}

/// A file holding both copies and the fw_env.config that describes it, in libubootenv's plain
/// syntax: one `<device> <offset> <size>` line per copy; two lines make it redundant.
struct Fixture {
    _dir: tempfile::TempDir,
    env_file: PathBuf,
    config_file: PathBuf,
    config: FwEnvConfig,
}

impl Fixture {
    fn new() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let env_file = dir.path().join("uboot.env");
        fs::write(&env_file, vec![0u8; 2 * SIZE]).unwrap();
        let text = format!(
            "# device offset size\n{p} 0x0000 0x4000\n{p} 0x4000 0x4000\n",
            p = env_file.display()
        );
        let config_file = dir.path().join("fw_env.config");
        fs::write(&config_file, &text).unwrap();
        let config = FwEnvConfig::parse(&text, "fw_env.config").unwrap();
        assert_eq!(config.size, SIZE);
        Fixture {
            _dir: dir,
            env_file,
            config_file,
            config,
        }
    }

    fn copy(&self, which: EnvCopy) -> Vec<u8> {
        let bytes = fs::read(&self.env_file).unwrap();
        bytes[which.index() * SIZE..][..SIZE].to_vec()
    }

    fn printenv(&self) -> Vec<(String, String)> {
        let out = run(tool("fw_printenv", "libubootenv-tool")
            .arg("-c")
            .arg(&self.config_file));
        out.lines()
            .map(|l| {
                let (k, v) = l.split_once('=').expect("key=value");
                (k.to_string(), v.to_string())
            })
            .collect()
    }

    fn setenv(&self, key: &str, value: &str) {
        run(tool("fw_setenv", "libubootenv-tool")
            .arg("-c")
            .arg(&self.config_file)
            .args([key, value]));
    }
}

fn pairs(vars: &Vars) -> Vec<(String, String)> {
    vars.iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn fw_printenv_reads_what_cairn_writes() {
    let fx = Fixture::new();
    let mut vars = initial_vars(Slot::A);
    vars.set("cairn_bootargs", "console=ttyAMA0 panic=5")
        .unwrap();
    vars.set("bootcmd", "run distro_bootcmd; reset").unwrap();
    let store = fx.config.format(Limits::default(), vars.clone()).unwrap();
    assert_eq!(store.env().active(), Some(EnvCopy::Second));
    assert_eq!(fx.printenv(), pairs(&vars));

    // Every later write alternates copies; fw_printenv must follow the same flags.
    let mut state = BootState::new(store);
    state.set_trial(Slot::B, 3).unwrap();
    assert_eq!(state.store().env().active(), Some(EnvCopy::First));
    let printed = fx.printenv();
    assert!(
        printed.contains(&("BOOT_ORDER".into(), "B A".into())),
        "{printed:?}"
    );
    assert!(
        printed.contains(&("BOOT_B_LEFT".into(), "3".into())),
        "{printed:?}"
    );
    assert_eq!(printed, pairs(state.store().vars()));

    state.mark_good(Slot::B).unwrap();
    assert_eq!(state.store().env().active(), Some(EnvCopy::Second));
    assert_eq!(fx.printenv(), pairs(state.store().vars()));
}

#[test]
fn fw_printenv_agrees_on_the_flags_wraparound() {
    use cairn_boot::uboot::env::encode_copy;
    let fx = Fixture::new();
    let mut old = Vars::new();
    old.set("which", "old-255").unwrap();
    let mut new = Vars::new();
    new.set("which", "new-0").unwrap();
    let mut image = encode_copy(&old, SIZE, 255).unwrap();
    image.extend(encode_copy(&new, SIZE, 0).unwrap());
    fs::write(&fx.env_file, &image).unwrap();
    assert_eq!(fx.printenv(), vec![("which".into(), "new-0".into())]);
    let store = fx.config.open(Limits::default()).unwrap();
    assert_eq!(store.vars().get("which"), Some("new-0"));
    assert_eq!(store.env().active(), Some(EnvCopy::Second));

    // Corrupt the newer copy: both readers fall back to the older one.
    image[SIZE + 100] ^= 0xff;
    fs::write(&fx.env_file, &image).unwrap();
    assert_eq!(fx.printenv(), vec![("which".into(), "old-255".into())]);
    let store = fx.config.open(Limits::default()).unwrap();
    assert_eq!(store.vars().get("which"), Some("old-255"));
}

#[test]
fn cairn_reads_what_fw_setenv_writes_and_writes_the_other_copy() {
    let fx = Fixture::new();
    let mut vars = initial_vars(Slot::A);
    vars.set("BOOT_B_LEFT", "3").unwrap();
    vars.set("BOOT_ORDER", "A B").unwrap();
    fx.config.format(Limits::default(), vars).unwrap();
    // Cairn wrote the second copy (flags 1); fw_setenv must write the first with flags 2.
    fx.setenv("BOOT_ORDER", "B A");
    let fw_copy = fx.copy(EnvCopy::First);
    assert_eq!(valid_flags(&fw_copy), Some(2));

    let mut state = BootState::new(fx.config.open(Limits::default()).unwrap());
    let status = state.status().unwrap();
    assert_eq!(status.order, vec![Slot::B, Slot::A]);
    assert_eq!(status.next_boot(), Some(Slot::B));
    assert_eq!(state.store().env().active(), Some(EnvCopy::First));
    assert_eq!(state.store().env().flags(), 2);

    // libubootenv sorts and terminates the list exactly as Cairn does (its padding is
    // uninitialised memory, so only the list itself is compared).
    let cairn_copy = cairn_boot::uboot::env::encode_copy(state.store().vars(), SIZE, 2).unwrap();
    let len = state.store().vars().encoded_len();
    assert_eq!(
        &fw_copy[HEADER_LEN..HEADER_LEN + len],
        &cairn_copy[HEADER_LEN..HEADER_LEN + len]
    );

    state.apply(Op::MarkGood(Slot::B)).unwrap();
    assert_eq!(
        fx.copy(EnvCopy::First),
        fw_copy,
        "fw_setenv's copy must stay untouched"
    );
    let cairn_copy = fx.copy(EnvCopy::Second);
    assert_eq!(valid_flags(&cairn_copy), Some(3));
    let printed = fx.printenv();
    assert!(
        printed.contains(&("BOOT_B_LEFT".into(), "3".into())),
        "{printed:?}"
    );
    assert_eq!(printed, pairs(state.store().vars()));
}

/// mkimage compiles the boot script into a legacy image of type "script".
#[test]
fn boot_script_compiles_with_mkimage() {
    let dir = tempfile::tempdir().unwrap();
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("uboot/boot.cmd");
    assert_eq!(fs::read_to_string(&src).unwrap(), BOOT_SCRIPT);
    let scr = dir.path().join("boot.scr");
    run(tool("mkimage", "u-boot-tools")
        .args(["-A", "arm64", "-T", "script", "-C", "none", "-n", "cairn"])
        .arg("-d")
        .arg(&src)
        .arg(&scr));
    let img = fs::read(&scr).unwrap();
    let be = |at: usize| u32::from_be_bytes(img[at..at + 4].try_into().unwrap());
    // struct legacy_img_hdr: magic, hcrc, time, size, load, ep, dcrc, os, arch, type, comp.
    assert_eq!(be(0), 0x2705_1956, "image magic");
    let mut header = img[..64].to_vec();
    header[4..8].fill(0);
    assert_eq!(be(4), crc32fast::hash(&header), "header CRC");
    assert_eq!(be(12) as usize, img.len() - 64, "data size");
    assert_eq!(be(24), crc32fast::hash(&img[64..]), "data CRC");
    assert_eq!(
        (img[29], img[30], img[31]),
        (22, 6, 0),
        "arm64, script, uncompressed"
    );
    // A script image's data: a zero-terminated table of part lengths, then the text.
    assert_eq!(be(64) as usize, BOOT_SCRIPT.len());
    assert_eq!(be(68), 0);
    assert_eq!(&img[72..], BOOT_SCRIPT.as_bytes());
}
