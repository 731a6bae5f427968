//! [`Fingerprint`]: how Cairn names a key, and so a CA, in messages.

use std::fmt;

use sha2::{Digest, Sha256};

/// The first 20 bytes of sha256 over a certificate's SubjectPublicKeyInfo (RFC 7093, method 1,
/// over the whole SPKI as rcgen computes it). For a Cairn CA this is also its Subject Key
/// Identifier, and the Authority Key Identifier of every certificate it issued, so
/// `openssl x509 -noout -ext subjectKeyIdentifier` shows the same bytes.
///
/// Displays short (`5e1f2a3b…`); the alternate form (`{:#}`) shows all 40 hex digits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Fingerprint(pub [u8; 20]);

impl Fingerprint {
    /// The fingerprint of a DER SubjectPublicKeyInfo.
    pub fn of_spki(spki_der: &[u8]) -> Fingerprint {
        let digest = Sha256::digest(spki_der);
        let mut id = [0u8; 20];
        id.copy_from_slice(&digest[..20]);
        Fingerprint(id)
    }

    /// A fingerprint from a key identifier, if it has the length of one.
    pub fn from_key_id(key_id: &[u8]) -> Option<Fingerprint> {
        key_id.try_into().ok().map(Fingerprint)
    }
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if f.alternate() {
            f.write_str(&hex::encode(self.0))
        } else {
            write!(f, "{}…", hex::encode(&self.0[..4]))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_and_long_forms() {
        let mut id = [0u8; 20];
        id[..4].copy_from_slice(&[0x5e, 0x1f, 0x2a, 0x3b]);
        id[19] = 0xff;
        let fp = Fingerprint(id);
        assert_eq!(fp.to_string(), "5e1f2a3b…");
        assert_eq!(format!("{fp:#}").len(), 40);
        assert!(format!("{fp:#}").ends_with("ff"));
    }

    #[test]
    fn key_ids_of_other_lengths_are_not_fingerprints() {
        assert!(Fingerprint::from_key_id(&[1; 20]).is_some());
        assert!(Fingerprint::from_key_id(&[1; 32]).is_none());
        assert!(Fingerprint::from_key_id(&[]).is_none());
    }

    #[test]
    fn is_sha256_of_the_spki() {
        // sha256("abc") starts ba7816bf.
        assert_eq!(Fingerprint::of_spki(b"abc").to_string(), "ba7816bf…");
    }
}
