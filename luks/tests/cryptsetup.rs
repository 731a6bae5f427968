//! Interop with Debian's cryptsetup: headers we write are accepted by cryptsetup, headers
//! cryptsetup writes are unlocked by us, and keyslot changes on either side are seen by the other.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use cairn_luks::{Credential, FormatOptions, Kdf, Luks2, Token, VolumeKey, DEFAULT_HDR_SIZE};
use serde_json::{json, Map};

const FAST_PBKDF2: Kdf = Kdf::Pbkdf2 { iterations: 1000 };
const SMALL_ARGON2: Kdf = Kdf::Argon2id {
    time: 2,
    memory_kib: 32 * 1024,
    cpus: 2,
};

fn cryptsetup_path() -> PathBuf {
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    dirs.extend(["/usr/sbin", "/sbin"].map(PathBuf::from));
    dirs.into_iter()
        .map(|d| d.join("cryptsetup"))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "cryptsetup is not installed; these interop tests need it: \
                 `cargo xtask setup` installs cryptsetup-bin"
            )
        })
}

/// Runs cryptsetup with `stdin` as its input and returns the output, whatever the status.
fn cryptsetup(args: &[&str], stdin: &[u8]) -> Output {
    let mut child = Command::new(cryptsetup_path())
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawning cryptsetup");
    child.stdin.take().unwrap().write_all(stdin).unwrap();
    child.wait_with_output().unwrap()
}

fn ok(args: &[&str], stdin: &[u8]) -> String {
    let out = cryptsetup(args, stdin);
    assert!(
        out.status.success(),
        "cryptsetup {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn accepts(path: &Path, passphrase: &[u8]) -> bool {
    let p = path.to_str().unwrap();
    let out = cryptsetup(
        &["open", "--test-passphrase", "--key-file", "-", p],
        passphrase,
    );
    out.status.success()
}

fn image(dir: &tempfile::TempDir) -> (PathBuf, File) {
    let path = dir.path().join("disk.img");
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&path)
        .unwrap();
    f.set_len(32 << 20).unwrap();
    (path, f)
}

fn opts(kdf: Kdf) -> FormatOptions {
    FormatOptions {
        kdf,
        digest_iterations: 1000,
        sector_size: 4096,
        label: "cairn-test".into(),
    }
}

/// The volume key cryptsetup reports, as bytes.
fn cryptsetup_volume_key(path: &Path, passphrase: &[u8]) -> Vec<u8> {
    let p = path.to_str().unwrap();
    let mut out = cryptsetup(
        &[
            "luksDump",
            "--dump-volume-key",
            "--batch-mode",
            "--key-file",
            "-",
            p,
        ],
        passphrase,
    );
    if !out.status.success() {
        // cryptsetup before 2.5 calls it the master key.
        out = cryptsetup(
            &[
                "luksDump",
                "--dump-master-key",
                "--batch-mode",
                "--key-file",
                "-",
                p,
            ],
            passphrase,
        );
    }
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let start = text.find("MK dump:").expect("MK dump in output") + "MK dump:".len();
    let hex: String = text[start..]
        .split_whitespace()
        .take_while(|w| w.len() == 2 && w.chars().all(|c| c.is_ascii_hexdigit()))
        .collect();
    hex::decode(hex).unwrap()
}

#[test]
fn cryptsetup_accepts_our_format_keyslots_and_tokens() {
    let dir = tempfile::tempdir().unwrap();
    let (path, dev) = image(&dir);
    let vk = VolumeKey::generate();
    let mut luks = Luks2::format(&dev, &vk, b"first passphrase", &opts(SMALL_ARGON2)).unwrap();
    let second = luks
        .add_keyslot(&dev, Credential::VolumeKey(&vk), b"second", FAST_PBKDF2)
        .unwrap();
    let mut fields = Map::new();
    fields.insert("tpm2-pcrs".into(), json!([7, 11]));
    fields.insert("tpm2-blob".into(), json!("AAECAw=="));
    luks.add_token(
        &dev,
        Token {
            kind: "systemd-tpm2".into(),
            keyslots: vec![second.to_string()],
            fields,
        },
    )
    .unwrap();

    let p = path.to_str().unwrap();
    let dump = ok(&["luksDump", p], b"");
    for want in [
        "Version:       \t2",
        "Keyslots area: \t16744448 [bytes]",
        "offset: 16777216 [bytes]",
        "cipher: aes-xts-plain64",
        "sector: 4096 [bytes]",
        "PBKDF:      argon2id",
        "Memory:     32768",
        "PBKDF:      pbkdf2",
        "systemd-tpm2",
        "Label:         \tcairn-test",
        luks.uuid(),
    ] {
        assert!(dump.contains(want), "luksDump lacks {want:?}:\n{dump}");
    }
    assert!(accepts(&path, b"first passphrase"));
    assert!(accepts(&path, b"second"));
    assert!(!accepts(&path, b"wrong"));
    assert_eq!(cryptsetup_volume_key(&path, b"second"), vk.as_bytes());

    // cryptsetup reads our token back as we wrote it.
    let token = ok(&["token", "export", "--token-id", "0", p], b"");
    let token: serde_json::Value = serde_json::from_str(&token).unwrap();
    assert_eq!(token["type"], "systemd-tpm2");
    assert_eq!(token["keyslots"], json!(["1"]));
    assert_eq!(token["tpm2-pcrs"], json!([7, 11]));

    // Removing it with ours: cryptsetup no longer lists it.
    luks.remove_token(&dev, 0).unwrap();
    let dump = ok(&["luksDump", p], b"");
    assert!(!dump.contains("systemd-tpm2"), "{dump}");
}

#[test]
fn we_unlock_what_cryptsetup_formats() {
    for pbkdf in [
        &[
            "--pbkdf",
            "argon2id",
            "--pbkdf-memory",
            "32768",
            "--pbkdf-force-iterations",
            "4",
        ][..],
        &["--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000"][..],
    ] {
        let dir = tempfile::tempdir().unwrap();
        let (path, dev) = image(&dir);
        let p = path.to_str().unwrap();
        let mut args = vec![
            "luksFormat",
            "--type",
            "luks2",
            "--batch-mode",
            "--key-file",
            "-",
        ];
        args.extend_from_slice(pbkdf);
        args.push(p);
        ok(&args, b"their passphrase");
        let want = cryptsetup_volume_key(&path, b"their passphrase");
        assert_eq!(want.len(), 64);

        let luks = Luks2::open(&dev).unwrap();
        let (slot, vk) = luks.unlock(&dev, b"their passphrase").unwrap();
        assert_eq!(slot, 0);
        assert_eq!(vk.as_bytes(), &want[..], "volume key differs for {pbkdf:?}");
        assert!(luks.unlock(&dev, b"not it").is_err());
    }
}

#[test]
fn keyslot_changes_are_seen_by_cryptsetup() {
    let dir = tempfile::tempdir().unwrap();
    let (path, dev) = image(&dir);
    let p = path.to_str().unwrap();
    ok(
        &[
            "luksFormat",
            "--type",
            "luks2",
            "--batch-mode",
            "--key-file",
            "-",
            "--pbkdf",
            "pbkdf2",
            "--pbkdf-force-iterations",
            "1000",
            p,
        ],
        b"keep",
    );
    // Add a second slot with cryptsetup (argon2id), then change slots with our code.
    let newkey = dir.path().join("new");
    std::fs::write(&newkey, b"drop").unwrap();
    let add = cryptsetup(
        &[
            "luksAddKey",
            "--batch-mode",
            "--pbkdf",
            "argon2id",
            "--pbkdf-memory",
            "32768",
            "--pbkdf-force-iterations",
            "4",
            "--key-file",
            "-",
            p,
            newkey.to_str().unwrap(),
        ],
        b"keep",
    );
    assert!(
        add.status.success(),
        "{}",
        String::from_utf8_lossy(&add.stderr)
    );
    assert!(accepts(&path, b"drop"));

    // A token imported by cryptsetup is read by us, unknown fields and all. (Not of type
    // systemd-tpm2: systemd's token plugin, when installed, rejects one without a real blob.)
    let token = dir.path().join("token.json");
    std::fs::write(
        &token,
        r#"{"type":"cairn-test","keyslots":["0"],"pcrs":[7],"pin":false}"#,
    )
    .unwrap();
    ok(
        &["token", "import", "--json-file", token.to_str().unwrap(), p],
        b"",
    );

    let mut luks = Luks2::open(&dev).unwrap();
    let t = luks.token(0).expect("the imported token");
    assert_eq!(t.kind, "cairn-test");
    assert_eq!(t.keyslots, ["0"]);
    assert_eq!(t.fields["pcrs"], json!([7]));
    assert_eq!(t.fields["pin"], json!(false));
    let (drop_slot, _) = luks.unlock(&dev, b"drop").unwrap();
    luks.remove_keyslot(&dev, drop_slot).unwrap();
    assert!(
        !accepts(&path, b"drop"),
        "cryptsetup still accepts a removed keyslot"
    );
    assert!(accepts(&path, b"keep"));

    let added = luks
        .add_keyslot(
            &dev,
            Credential::Passphrase(b"keep"),
            b"added by us",
            SMALL_ARGON2,
        )
        .unwrap();
    assert!(accepts(&path, b"added by us"));
    let dump = ok(&["luksDump", p], b"");
    assert!(dump.contains(&format!("  {added}: luks2")), "{dump}");
}

#[test]
fn corrupted_primary_header_is_read_from_the_secondary() {
    let dir = tempfile::tempdir().unwrap();
    let (path, dev) = image(&dir);
    let vk = VolumeKey::generate();
    let luks = Luks2::format(&dev, &vk, b"pw", &opts(FAST_PBKDF2)).unwrap();
    // Break the primary's JSON area: its checksum no longer matches.
    dev.write_all_at(b"garbage", 4096 + 10).unwrap();
    dev.sync_all().unwrap();

    let back = Luks2::open(&dev).unwrap();
    assert_eq!(back.uuid(), luks.uuid());
    assert_eq!(
        back.unlock(&dev, b"pw").unwrap().1.as_bytes(),
        vk.as_bytes()
    );
    // cryptsetup recovers from the secondary too (it may repair the primary when it can write).
    assert!(accepts(&path, b"pw"));

    // With both copies broken, nothing opens.
    dev.write_all_at(b"garbage", 4096 + 10).unwrap();
    dev.write_all_at(b"garbage", DEFAULT_HDR_SIZE + 4096 + 10)
        .unwrap();
    dev.sync_all().unwrap();
    assert!(Luks2::open(&dev).is_err());
    assert!(!accepts(&path, b"pw"));
}
