//! Ed25519 signing keys, their text forms, key ids and the device keyring.
//!
//! A key id is the first 8 bytes of sha256 over the 32-byte public key; it travels in the COSE
//! header so a verifier can pick the key without trying them all. The keyring is a plain text file
//! so an operator can read, diff and review it.

use std::fmt;

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use rand_core::{OsRng, RngCore};
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};

const SECRET_PREFIX: &str = "cairn-ed25519-secret";
const PUBLIC_PREFIX: &str = "cairn-ed25519-public";
/// The most keys a keyring may list (revoked ones included).
pub const MAX_KEYRING_KEYS: usize = 64;
/// Longest keyring text accepted, so a hostile file cannot make the parser allocate much.
const MAX_KEYRING_BYTES: usize = 64 * 1024;

/// The 8-byte identifier of a public key: `sha256(public key)[..8]`. Displays as 16 hex digits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyId(pub [u8; 8]);

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

/// Parses `<prefix> <64 hex digits>` (without the newline) into 32 bytes.
fn parse_key_line(text: &str, prefix: &str) -> std::result::Result<[u8; 32], String> {
    let rest = text
        .strip_prefix(prefix)
        .ok_or_else(|| format!("expected it to start with \"{prefix} \""))?;
    let hex_part = rest
        .strip_prefix(' ')
        .ok_or_else(|| format!("expected a space after \"{prefix}\""))?;
    if hex_part.len() != 64 {
        return Err(format!(
            "expected 64 hex digits after \"{prefix} \", found {} characters",
            hex_part.len()
        ));
    }
    if let Some(c) = hex_part
        .chars()
        .find(|c| !matches!(c, '0'..='9' | 'a'..='f'))
    {
        return Err(format!(
            "the key holds {c:?}: expected 64 lowercase hex digits (0-9, a-f)"
        ));
    }
    let mut bytes = [0u8; 32];
    hex::decode_to_slice(hex_part, &mut bytes)
        .map_err(|e| format!("the key is not valid hex: {e}"))?;
    Ok(bytes)
}

/// Strips exactly one trailing `\n` (a file's final newline), if present.
fn strip_newline(text: &str) -> &str {
    text.strip_suffix('\n').unwrap_or(text)
}

/// An Ed25519 signing key. Its text form is `cairn-ed25519-secret <64 hex>\n`.
#[derive(Clone)]
pub struct SecretKey(SigningKey);

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretKey({})", self.key_id())
    }
}

impl SecretKey {
    /// Makes a new key from the operating system's random source.
    pub fn generate() -> Result<SecretKey> {
        let mut seed = [0u8; 32];
        OsRng
            .try_fill_bytes(&mut seed)
            .map_err(|source| Error::Random { source })?;
        Ok(SecretKey(SigningKey::from_bytes(&seed)))
    }

    /// The key from its 32-byte seed.
    pub fn from_bytes(seed: [u8; 32]) -> SecretKey {
        SecretKey(SigningKey::from_bytes(&seed))
    }

    /// Parses the text form; one trailing newline is allowed.
    pub fn from_text(text: &str) -> Result<SecretKey> {
        let seed =
            parse_key_line(strip_newline(text), SECRET_PREFIX).map_err(|reason| Error::Key {
                reason: format!("secret key: {reason}"),
            })?;
        Ok(SecretKey::from_bytes(seed))
    }

    /// The text form, ending in a newline.
    pub fn to_text(&self) -> String {
        format!("{SECRET_PREFIX} {}\n", hex::encode(self.0.to_bytes()))
    }

    /// The matching public key.
    pub fn public(&self) -> PublicKey {
        PublicKey(self.0.verifying_key())
    }

    /// The key id of the matching public key.
    pub fn key_id(&self) -> KeyId {
        self.public().key_id()
    }

    pub(crate) fn sign(&self, message: &[u8]) -> [u8; 64] {
        self.0.sign(message).to_bytes()
    }
}

/// An Ed25519 public key. Its text form is `cairn-ed25519-public <64 hex>\n`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PublicKey(VerifyingKey);

impl PublicKey {
    /// The key from its 32 bytes; fails if they are not a valid curve point.
    pub fn from_bytes(bytes: [u8; 32]) -> Result<PublicKey> {
        VerifyingKey::from_bytes(&bytes)
            .map(PublicKey)
            .map_err(|_| Error::Key {
                reason: "public key: the bytes are not a valid Ed25519 point".to_string(),
            })
    }

    /// Parses the text form; one trailing newline is allowed.
    pub fn from_text(text: &str) -> Result<PublicKey> {
        let bytes =
            parse_key_line(strip_newline(text), PUBLIC_PREFIX).map_err(|reason| Error::Key {
                reason: format!("public key: {reason}"),
            })?;
        PublicKey::from_bytes(bytes)
    }

    /// The text form, ending in a newline.
    pub fn to_text(&self) -> String {
        format!("{PUBLIC_PREFIX} {}\n", hex::encode(self.0.to_bytes()))
    }

    /// The 32 bytes of the key.
    pub fn to_bytes(&self) -> [u8; 32] {
        self.0.to_bytes()
    }

    /// `sha256(key)[..8]`.
    pub fn key_id(&self) -> KeyId {
        let digest = Sha256::digest(self.0.to_bytes());
        let mut id = [0u8; 8];
        id.copy_from_slice(&digest[..8]);
        KeyId(id)
    }

    /// Strict Ed25519 verification (rejects non-canonical and small-order encodings).
    pub(crate) fn verify(&self, message: &[u8], signature: &[u8]) -> bool {
        let Ok(sig) = Signature::from_slice(signature) else {
            return false;
        };
        self.0.verify_strict(message, &sig).is_ok()
    }
}

/// One keyring line: a public key and whether it is revoked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyringEntry {
    /// The key.
    pub key: PublicKey,
    /// A revoked key is remembered so that its bundles get a clear error, but never accepted.
    pub revoked: bool,
}

/// The public keys a device trusts to sign bundles.
///
/// Text form: one `cairn-ed25519-public <hex>` per line, optionally followed by ` revoked`; lines
/// starting with `#` and blank lines are ignored; at most [`MAX_KEYRING_KEYS`] keys.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Keyring {
    entries: Vec<KeyringEntry>,
}

impl Keyring {
    /// A keyring holding the given keys, none revoked.
    pub fn from_keys(keys: impl IntoIterator<Item = PublicKey>) -> Result<Keyring> {
        let mut ring = Keyring::default();
        for key in keys {
            ring.push(KeyringEntry {
                key,
                revoked: false,
            })
            .map_err(|reason| Error::Keyring {
                line: ring.entries.len() + 1,
                reason,
            })?;
        }
        Ok(ring)
    }

    fn push(&mut self, entry: KeyringEntry) -> std::result::Result<(), String> {
        if self.entries.len() >= MAX_KEYRING_KEYS {
            return Err(format!("too many keys (at most {MAX_KEYRING_KEYS})"));
        }
        let id = entry.key.key_id();
        if self.entries.iter().any(|e| e.key.key_id() == id) {
            return Err(format!("key {id} is listed twice"));
        }
        self.entries.push(entry);
        Ok(())
    }

    /// Parses the text form, exactly as docs/bundle-format.md section 3 states it: lines end in
    /// `\n` (the last one may lack it); a key line is `cairn-ed25519-public <64 lowercase hex>`,
    /// optionally followed by ` revoked`, with nothing before or after; a line whose first
    /// non-blank character is `#`, and a line of spaces and tabs only, are ignored. Anything else
    /// (a carriage return, uppercase hex, stray blanks) is refused with its line number.
    pub fn parse(text: &str) -> Result<Keyring> {
        if text.len() > MAX_KEYRING_BYTES {
            return Err(Error::Keyring {
                line: 0,
                reason: format!("the keyring is larger than {MAX_KEYRING_BYTES} bytes"),
            });
        }
        let mut ring = Keyring::default();
        for (index, raw) in text.split_terminator('\n').enumerate() {
            let line = index + 1;
            let err = |reason: String| Error::Keyring { line, reason };
            if raw.contains('\r') {
                return Err(err(
                    "the line holds a carriage return (CRLF line endings?); lines end in \\n only"
                        .to_string(),
                ));
            }
            let blank = |c: char| c == ' ' || c == '\t';
            let content = raw.trim_start_matches(blank);
            if content.is_empty() || content.starts_with('#') {
                continue;
            }
            if content.len() != raw.len() || raw.ends_with(blank) {
                return Err(err(
                    "a key line has spaces or tabs before or after it".to_string()
                ));
            }
            let (key_text, revoked) = match raw.strip_suffix(" revoked") {
                Some(k) => (k, true),
                None => (raw, false),
            };
            let bytes = parse_key_line(key_text, PUBLIC_PREFIX).map_err(err)?;
            let key = PublicKey::from_bytes(bytes).map_err(|e| err(e.to_string()))?;
            ring.push(KeyringEntry { key, revoked }).map_err(err)?;
        }
        Ok(ring)
    }

    /// Refuses a keyring that trusts no key, for the places that install one on a device: a
    /// device with it could never take an update again.
    pub fn require_trusted(&self) -> Result<()> {
        if self.trusted_ids().is_empty() {
            return Err(Error::Keyring {
                line: 0,
                reason: "it trusts no key (empty, comments only, or every key revoked), so a device with it could never be updated".to_string(),
            });
        }
        Ok(())
    }

    /// The text form.
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        for e in &self.entries {
            let line = e.key.to_text();
            out.push_str(line.trim_end());
            if e.revoked {
                out.push_str(" revoked");
            }
            out.push('\n');
        }
        out
    }

    /// All entries, in file order.
    pub fn entries(&self) -> &[KeyringEntry] {
        &self.entries
    }

    /// Key ids of the keys that are not revoked.
    pub fn trusted_ids(&self) -> Vec<KeyId> {
        self.entries
            .iter()
            .filter(|e| !e.revoked)
            .map(|e| e.key.key_id())
            .collect()
    }

    /// The usable key for `kid`, or the error that says why there is none.
    pub(crate) fn key_for(&self, kid: KeyId) -> Result<&PublicKey> {
        match self.entries.iter().find(|e| e.key.key_id() == kid) {
            Some(e) if e.revoked => Err(Error::RevokedKey { kid }),
            Some(e) => Ok(&e.key),
            None => Err(Error::UntrustedKey {
                kid,
                trusted: self.trusted_ids(),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_and_public_text_round_trip() {
        let key = SecretKey::generate().unwrap();
        let text = key.to_text();
        assert!(text.starts_with("cairn-ed25519-secret ") && text.ends_with('\n'));
        assert_eq!(text.len(), "cairn-ed25519-secret ".len() + 64 + 1);
        let back = SecretKey::from_text(&text).unwrap();
        assert_eq!(back.public(), key.public());
        let public = PublicKey::from_text(&key.public().to_text()).unwrap();
        assert_eq!(public, key.public());
        assert_eq!(public.key_id(), key.key_id());
    }

    #[test]
    fn key_id_is_the_sha256_prefix_of_the_public_key() {
        let key = SecretKey::from_bytes([7; 32]);
        let digest = Sha256::digest(key.public().to_bytes());
        assert_eq!(key.key_id().0[..], digest[..8]);
        assert_eq!(key.key_id().to_string(), hex::encode(&digest[..8]));
    }

    #[test]
    fn generated_keys_differ() {
        assert_ne!(
            SecretKey::generate().unwrap().key_id(),
            SecretKey::generate().unwrap().key_id()
        );
    }

    #[test]
    fn key_parse_errors_name_the_problem() {
        let public = SecretKey::from_bytes([1; 32]).public().to_text();
        let err = SecretKey::from_text(&public).unwrap_err().to_string();
        assert!(err.contains("cairn-ed25519-secret"), "{err}");
        let err = PublicKey::from_text("cairn-ed25519-public abcd")
            .unwrap_err()
            .to_string();
        assert!(err.contains("64 hex digits"), "{err}");
        let bad_hex = format!("cairn-ed25519-public {}", "zz".repeat(32));
        let err = PublicKey::from_text(&bad_hex).unwrap_err().to_string();
        assert!(err.contains("lowercase hex"), "{err}");
        let err = PublicKey::from_text(&format!("cairn-ed25519-public{}", "00".repeat(32)))
            .unwrap_err()
            .to_string();
        assert!(err.contains("space"), "{err}");
        assert!(!err.contains('\n'));
    }

    #[test]
    fn keyring_parses_comments_blanks_and_revocations() {
        let a = SecretKey::from_bytes([1; 32]).public();
        let b = SecretKey::from_bytes([2; 32]).public();
        let text = format!(
            "# release keys\n\n \t\n{}\n{} revoked\n   # old",
            a.to_text().trim_end(),
            b.to_text().trim_end()
        );
        let ring = Keyring::parse(&text).unwrap();
        assert_eq!(ring.entries().len(), 2);
        assert!(!ring.entries()[0].revoked);
        assert!(ring.entries()[1].revoked);
        assert_eq!(ring.trusted_ids(), vec![a.key_id()]);
        assert!(ring.key_for(a.key_id()).is_ok());
        assert!(matches!(
            ring.key_for(b.key_id()),
            Err(Error::RevokedKey { .. })
        ));
        let c = SecretKey::from_bytes([3; 32]).key_id();
        assert!(matches!(ring.key_for(c), Err(Error::UntrustedKey { .. })));
        assert_eq!(Keyring::parse(&ring.to_text()).unwrap(), ring);
    }

    #[test]
    fn keyring_rejects_bad_lines_with_their_number() {
        let a = SecretKey::from_bytes([1; 32]).public().to_text();
        let text = format!("# ok\n{a}cairn-ed25519-public 1234\n");
        match Keyring::parse(&text).unwrap_err() {
            Error::Keyring { line, .. } => assert_eq!(line, 3),
            e => panic!("unexpected {e}"),
        }
        let err = Keyring::parse(&format!("{} trusted\n", a.trim_end())).unwrap_err();
        assert!(matches!(err, Error::Keyring { line: 1, .. }), "{err}");
        let err = Keyring::parse(&format!("{a}{a}")).unwrap_err();
        assert!(err.to_string().contains("listed twice"), "{err}");
    }

    #[test]
    fn keyring_text_is_exactly_the_documented_form() {
        let a = SecretKey::from_bytes([1; 32]).public().to_text();
        let a = a.trim_end();
        let line_of = |text: String| match Keyring::parse(&text) {
            Err(Error::Keyring { line, reason }) => (line, reason),
            other => panic!("{text:?} gave {other:?}"),
        };
        let (line, reason) = line_of(format!("# keys\r\n{a}\r\n"));
        assert_eq!(line, 1);
        assert!(reason.contains("carriage return"), "{reason}");
        let (line, reason) = line_of(format!(
            "# keys\n{}\n",
            a.to_uppercase()
                .replace("CAIRN-ED25519-PUBLIC", "cairn-ed25519-public")
        ));
        assert_eq!(line, 2);
        assert!(reason.contains("lowercase hex"), "{reason}");
        for padded in [
            format!(" {a}\n"),
            format!("{a} \n"),
            format!("{a}\t\n"),
            format!("{a}  revoked\n"),
        ] {
            let (line, _) = line_of(padded.clone());
            assert_eq!(line, 1, "{padded:?}");
        }
        // The last line may lack its newline.
        assert_eq!(Keyring::parse(a).unwrap().entries().len(), 1);
    }

    #[test]
    fn a_keyring_that_trusts_no_key_parses_but_cannot_be_installed() {
        let a = SecretKey::from_bytes([1; 32]).public().to_text();
        for text in [
            String::new(),
            "# none yet\n\n".to_string(),
            format!("{} revoked\n", a.trim_end()),
        ] {
            let ring = Keyring::parse(&text).unwrap();
            assert!(ring.trusted_ids().is_empty());
            let err = ring.require_trusted().unwrap_err().to_string();
            assert!(err.starts_with("keyring: it trusts no key"), "{err}");
        }
        Keyring::parse(&a).unwrap().require_trusted().unwrap();
    }

    #[test]
    fn keyring_caps_the_number_of_keys() {
        let text: String = (0..=MAX_KEYRING_KEYS as u8)
            .map(|i| SecretKey::from_bytes([i; 32]).public().to_text())
            .collect();
        let err = Keyring::parse(&text).unwrap_err();
        assert!(
            matches!(err, Error::Keyring { line, .. } if line == MAX_KEYRING_KEYS + 1),
            "{err}"
        );
        let ok: String = text
            .lines()
            .take(MAX_KEYRING_KEYS)
            .map(|l| format!("{l}\n"))
            .collect();
        assert_eq!(
            Keyring::parse(&ok).unwrap().entries().len(),
            MAX_KEYRING_KEYS
        );
    }
}
