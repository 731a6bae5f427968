//! The disks' recovery key on this side: `recovery-key` prints it, `unlock` reads it and sends
//! it to a device in maintenance mode.
//!
//! The one idea: the key is read from a file or from standard input, never from the command
//! line, because every user of this machine can read a process's arguments in /proc. It is
//! checked here as the device's API checks it (not empty, at most
//! [`cairn_api::Limits::max_recovery_key`] bytes, one line) so that a wrong file fails before
//! anything is sent, and it is never part of an error message.

use std::fmt;
use std::io::{BufRead, Read as _, Write as _};
use std::path::Path;

use cairn_pki::Fingerprint;

/// A recovery key, read and checked. Its `Debug` does not show it.
pub struct RecoveryKey(String);

impl fmt::Debug for RecoveryKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("RecoveryKey(..)")
    }
}

/// Bytes read at most from a key file or standard input: a recovery key with generous
/// whitespace around it, not a file read whole by mistake.
const MAX_READ: u64 = 4096;

impl RecoveryKey {
    /// From `file`, or else one line of standard input.
    pub fn read(file: Option<&Path>) -> anyhow::Result<RecoveryKey> {
        match file {
            Some(path) => RecoveryKey::read_file(path),
            None => RecoveryKey::read_line(std::io::stdin().lock()),
        }
    }

    fn read_file(path: &Path) -> anyhow::Result<RecoveryKey> {
        let mut text = String::new();
        std::fs::File::open(path)
            .and_then(|f| f.take(MAX_READ + 1).read_to_string(&mut text))
            .map_err(|e| {
                anyhow::anyhow!("cannot read the recovery key file {}: {e}", path.display())
            })?;
        let from = format!("the recovery key file {}", path.display());
        if text.len() as u64 > MAX_READ {
            anyhow::bail!("{from} is larger than {MAX_READ} bytes, so it is not a recovery key");
        }
        let key = text.trim();
        if key.lines().count() > 1 {
            anyhow::bail!("{from} holds more than one line; put only the recovery key in it");
        }
        RecoveryKey::check(key, &from)
    }

    /// One line of `input` (standard input), without prompting: an empty one is refused.
    fn read_line(input: impl BufRead) -> anyhow::Result<RecoveryKey> {
        let mut line = String::new();
        input.take(MAX_READ).read_line(&mut line).map_err(|e| {
            anyhow::anyhow!("cannot read the recovery key from standard input: {e}")
        })?;
        if line.trim().is_empty() {
            anyhow::bail!(
                "no recovery key on standard input: give it as one line there (`cairnctl unlock \
                 < FILE`) or with --recovery-key-file FILE; it is never taken from the command \
                 line, where other users can read it"
            );
        }
        RecoveryKey::check(line.trim(), "the line on standard input")
    }

    fn check(key: &str, from: &str) -> anyhow::Result<RecoveryKey> {
        let max = cairn_api::Limits::default().max_recovery_key;
        if key.is_empty() {
            anyhow::bail!("{from} is empty: it should hold the recovery key");
        }
        if key.len() > max {
            anyhow::bail!(
                "{from} holds {} bytes; a recovery key is at most {max} (8 groups of 8 \
                 characters joined by dashes)",
                key.len()
            );
        }
        if key.chars().any(char::is_control) {
            anyhow::bail!("{from} holds control characters, so it is not a recovery key");
        }
        Ok(RecoveryKey(key.to_string()))
    }

    /// The key itself, for the request.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

/// A key fingerprint as the device's console shows it: 40 hex digits, in either case, with or
/// without `:` or spaces between them. The short form cairnctl uses to name CAs (8 digits) is
/// refused: 32 bits are too few to tell one key from a key made to look like it.
pub fn parse_fingerprint(s: &str) -> Result<Fingerprint, String> {
    let digits: Vec<u8> = s.bytes().filter(|b| !matches!(b, b':' | b' ')).collect();
    let not_one = || {
        format!("`{s}` is not a key fingerprint: give all 40 hex digits the device's console shows")
    };
    if digits.len() != 40 || !digits.iter().all(u8::is_ascii_hexdigit) {
        return Err(not_one());
    }
    let mut bytes = [0u8; 20];
    for (byte, pair) in bytes.iter_mut().zip(digits.chunks(2)) {
        let pair = std::str::from_utf8(pair).map_err(|_| not_one())?;
        *byte = u8::from_str_radix(pair, 16).map_err(|_| not_one())?;
    }
    Ok(Fingerprint(bytes))
}

/// Prints the key `recovery-key` got. The device has forgotten it, so a stdout that cannot be
/// written (a closed pipe, a full disk) must not lose it: it then goes to stderr.
pub fn print_key(key: &str, json: bool) -> anyhow::Result<()> {
    let text = if json {
        format!("{:#}\n", serde_json::json!({ "recovery_key": key }))
    } else {
        format!("{key}\n")
    };
    let mut out = std::io::stdout().lock();
    if let Err(e) = out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        eprintln!("{key}");
        anyhow::bail!(
            "recovery-key: cannot write the recovery key to standard output ({e}); it is on the \
             line above, on standard error, and the device has now forgotten it: store it \
             somewhere safe"
        );
    }
    eprintln!(
        "cairnctl: recovery-key: the device has now forgotten this key and will not give it out \
         again: store it somewhere safe, away from the device; `cairnctl unlock` needs it when \
         the TPM refuses to unlock the disks"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "cbdefghi-jklnrtuv-cbdefghi-jklnrtuv-cbdefghi-jklnrtuv-cbdefghi-jklnrtuv";

    #[test]
    fn a_line_of_input_is_trimmed_and_checked() {
        let key = RecoveryKey::read_line(format!("  {KEY}\r\nmore\n").as_bytes()).unwrap();
        assert_eq!(key.expose(), KEY);
        assert_eq!(format!("{key:?}"), "RecoveryKey(..)");
        for empty in ["", "\n", "   \n"] {
            let e = RecoveryKey::read_line(empty.as_bytes()).unwrap_err();
            assert!(
                e.to_string()
                    .starts_with("no recovery key on standard input"),
                "{e}"
            );
        }
        let long = "c".repeat(257);
        let e = RecoveryKey::read_line(long.as_bytes()).unwrap_err();
        assert!(e.to_string().contains("holds 257 bytes"), "{e}");
        let e = RecoveryKey::read_line("cbde\x1bfghi\n".as_bytes()).unwrap_err();
        assert!(e.to_string().contains("control characters"), "{e}");
    }

    #[test]
    fn a_key_file_holds_one_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key");
        std::fs::write(&path, format!("{KEY}\n")).unwrap();
        assert_eq!(RecoveryKey::read_file(&path).unwrap().expose(), KEY);
        std::fs::write(&path, format!("{KEY}\n{KEY}\n")).unwrap();
        let e = RecoveryKey::read_file(&path).unwrap_err().to_string();
        assert!(e.contains("more than one line"), "{e}");
        assert!(!e.contains("cbdefghi"), "the key is in the error: {e}");
        std::fs::write(&path, "\n").unwrap();
        let e = RecoveryKey::read_file(&path).unwrap_err().to_string();
        assert!(e.contains("is empty"), "{e}");
        std::fs::write(&path, vec![b'c'; 5000]).unwrap();
        let e = RecoveryKey::read_file(&path).unwrap_err().to_string();
        assert!(e.contains("larger than 4096 bytes"), "{e}");
        let e = RecoveryKey::read_file(&dir.path().join("missing"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("missing"), "{e}");
    }

    #[test]
    fn fingerprints_are_40_hex_digits() {
        let fp = parse_fingerprint("5e1f2a3b00112233445566778899aabbccddeeff").unwrap();
        assert_eq!(fp.0[..4], [0x5e, 0x1f, 0x2a, 0x3b]);
        assert_eq!(
            parse_fingerprint("5E:1F:2A:3B:00:11:22:33:44:55:66:77:88:99:AA:BB:CC:DD:EE:FF"),
            Ok(fp)
        );
        for bad in [
            "",
            "5e1f2a3b",
            "5e1f2a3b…",
            "5e1f2a3b00112233445566778899aabbccddeeffaa",
            "ze1f2a3b00112233445566778899aabbccddeeff",
            "+e1f2a3b00112233445566778899aabbccddeeff",
        ] {
            let e = parse_fingerprint(bad).unwrap_err();
            assert!(e.contains("all 40 hex digits"), "{bad}: {e}");
        }
    }
}
