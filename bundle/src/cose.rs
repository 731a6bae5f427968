//! The manifest's signature envelope: a tagged COSE_Sign1 (RFC 9052, section 4.2) with EdDSA.
//!
//! Cairn accepts exactly one shape: protected header `{1: -8, 4: kid}` with an 8-byte kid, an empty
//! unprotected header, an attached payload and a 64-byte signature over the Sig_structure
//! `["Signature1", protected, h'', payload]`. Anything else is refused rather than interpreted.
//!
//! The envelope is read by hand, not by a general COSE decoder: every CBOR item in it, the
//! protected header's contents included, first passes the non-allocating shape check of
//! [`crate::cbor_bounds`], and then only the fixed shape above is recognised. Nothing is decoded
//! into general values, so a hostile envelope costs no more memory than its own bytes.

use crate::cbor_bounds;
use crate::error::{Error, Result};
use crate::keys::{KeyId, Keyring, SecretKey};

/// CBOR tag 18 (COSE_Sign1) followed by a 4-element array.
const TAGGED_ARRAY_4: [u8; 2] = [0xd2, 0x84];
/// The protected header's encoding up to the kid: map(2), 1: -8, 4: bstr(8).
const PROTECTED_PREFIX: [u8; 5] = [0xa2, 0x01, 0x27, 0x04, 0x48];
/// Length of the protected header's contents: the prefix and the 8-byte kid.
const PROTECTED_LEN: usize = PROTECTED_PREFIX.len() + 8;

/// Appends a CBOR byte string header (shortest form) for `len` bytes.
fn push_bstr_header(out: &mut Vec<u8>, len: usize) {
    cbor_bounds::push_header(out, 2, len as u64);
}

/// The protected header bytes for `kid`, exactly as they are signed and stored.
fn protected_header(kid: KeyId) -> [u8; PROTECTED_LEN] {
    let mut out = [0u8; PROTECTED_LEN];
    out[..PROTECTED_PREFIX.len()].copy_from_slice(&PROTECTED_PREFIX);
    out[PROTECTED_PREFIX.len()..].copy_from_slice(&kid.0);
    out
}

/// The CBOR encoding of the Sig_structure `["Signature1", protected, h'', payload]`.
pub(crate) fn sig_structure(protected: &[u8], payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + protected.len() + 32);
    out.push(0x84);
    out.push(0x6a);
    out.extend_from_slice(b"Signature1");
    push_bstr_header(&mut out, protected.len());
    out.extend_from_slice(protected);
    out.push(0x40);
    push_bstr_header(&mut out, payload.len());
    out.extend_from_slice(payload);
    out
}

/// Wraps manifest CBOR in a signed, tagged COSE_Sign1.
pub(crate) fn sign(payload: Vec<u8>, key: &SecretKey) -> Result<Vec<u8>> {
    let protected = protected_header(key.key_id());
    let signature = key.sign(&sig_structure(&protected, &payload));
    let mut out = Vec::with_capacity(payload.len() + 96);
    out.extend_from_slice(&TAGGED_ARRAY_4);
    push_bstr_header(&mut out, protected.len());
    out.extend_from_slice(&protected);
    out.push(0xa0);
    push_bstr_header(&mut out, payload.len());
    out.extend_from_slice(&payload);
    push_bstr_header(&mut out, signature.len());
    out.extend_from_slice(&signature);
    Ok(out)
}

/// A parsed envelope whose signature has not been checked yet. It borrows the envelope's bytes.
pub(crate) struct Envelope<'a> {
    protected: &'a [u8],
    payload: &'a [u8],
    signature: &'a [u8],
    pub kid: KeyId,
}

fn malformed(reason: impl Into<String>) -> Error {
    Error::Cose {
        reason: reason.into(),
    }
}

/// Reads a byte string at `*pos` (its header already known to be well-formed and shortest by the
/// shape check); `None` if the item there is not a byte string.
fn bstr<'a>(bytes: &'a [u8], pos: &mut usize) -> Option<&'a [u8]> {
    let (major, len) = cbor_bounds::read_header(bytes, pos).ok()?;
    if major != 2 {
        return None;
    }
    let start = *pos;
    let end = start.checked_add(usize::try_from(len).ok()?)?;
    let out = bytes.get(start..end)?;
    *pos = end;
    Some(out)
}

/// Says what is wrong with protected header contents that are not exactly `{1: -8, 4: kid}`.
fn protected_reason(protected: &[u8]) -> String {
    if let Err(reason) = cbor_bounds::check(protected) {
        return format!("the protected header: {reason}");
    }
    let mut pos = 0;
    match cbor_bounds::read_header(protected, &mut pos) {
        Ok((5, 2)) => {}
        Ok((5, n)) => {
            return format!("the protected header has {n} parameters, expected alg and kid only")
        }
        _ => return "the protected header is not a CBOR map".to_string(),
    }
    // The map holds two pairs; say which part differs from `1: -8, 4: bstr(8)`.
    if protected.get(1) != Some(&0x01) {
        if protected.get(1) == Some(&0x04) {
            return "the protected header's labels are not in the order alg (1), kid (4)"
                .to_string();
        }
        return "the protected header has parameters other than alg and kid".to_string();
    }
    if protected.get(2) != Some(&0x27) {
        return "the protected header's alg is not EdDSA (-8)".to_string();
    }
    if protected.get(3) != Some(&0x04) {
        return "the protected header has parameters other than alg and kid".to_string();
    }
    let mut pos = 4;
    match bstr(protected, &mut pos) {
        Some(kid) => format!("the kid is {} bytes, expected 8", kid.len()),
        None => "the kid is not a byte string".to_string(),
    }
}

/// Parses the envelope and checks its shape, without checking the signature.
pub(crate) fn parse(bytes: &[u8]) -> Result<Envelope<'_>> {
    cbor_bounds::check(bytes).map_err(malformed)?;
    if bytes.first() != Some(&TAGGED_ARRAY_4[0]) {
        return Err(malformed(
            "not a tagged COSE_Sign1: the CBOR tag 18 is missing",
        ));
    }
    if bytes.get(1) != Some(&TAGGED_ARRAY_4[1]) {
        return Err(malformed(
            "not a tagged COSE_Sign1: tag 18 does not hold a 4-element array",
        ));
    }
    let mut pos = 2;
    let protected = bstr(bytes, &mut pos)
        .ok_or_else(|| malformed("the protected header is not a byte string"))?;
    if protected.len() != PROTECTED_LEN || protected[..PROTECTED_PREFIX.len()] != PROTECTED_PREFIX {
        return Err(malformed(protected_reason(protected)));
    }
    let kid = KeyId(
        protected[PROTECTED_PREFIX.len()..]
            .try_into()
            .expect("8 bytes"),
    );
    match bytes.get(pos) {
        Some(0xa0) => pos += 1,
        Some(b) if b >> 5 == 5 => return Err(malformed("the unprotected header is not empty")),
        _ => return Err(malformed("the unprotected header is not a CBOR map")),
    }
    if bytes.get(pos) == Some(&0xf6) {
        return Err(malformed("the manifest payload is detached"));
    }
    let payload =
        bstr(bytes, &mut pos).ok_or_else(|| malformed("the payload is not a byte string"))?;
    let signature =
        bstr(bytes, &mut pos).ok_or_else(|| malformed("the signature is not a byte string"))?;
    if signature.len() != 64 {
        return Err(malformed(format!(
            "the signature is {} bytes, expected 64",
            signature.len()
        )));
    }
    // The shape check already refused anything after the array's fourth item.
    debug_assert_eq!(pos, bytes.len());
    Ok(Envelope {
        protected,
        payload,
        signature,
        kid,
    })
}

impl Envelope<'_> {
    /// The manifest CBOR, unverified.
    pub(crate) fn payload_unverified(&self) -> &[u8] {
        self.payload
    }

    /// Checks the signature with the keyring's key for the kid; returns the verified payload.
    pub(crate) fn verify(&self, keyring: &Keyring) -> Result<&[u8]> {
        let key = keyring.key_for(self.kid)?;
        // The Sig_structure holds the protected header's bytes exactly as they are in the file.
        if key.verify(&sig_structure(self.protected, self.payload), self.signature) {
            Ok(self.payload)
        } else {
            Err(Error::BadSignature { kid: self.kid })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use coset::TaggedCborSerializable;
    use coset::{iana, CborSerializable, CoseSign1, CoseSign1Builder, HeaderBuilder};

    fn keyring(key: &SecretKey) -> Keyring {
        Keyring::from_keys([key.public()]).unwrap()
    }

    fn reason(bytes: &[u8]) -> String {
        parse(bytes).err().expect("refused").to_string()
    }

    /// An envelope around `protected` (raw header bytes), with a 64-byte signature of zeros.
    fn with_protected(protected: &[u8]) -> Vec<u8> {
        let mut out = TAGGED_ARRAY_4.to_vec();
        push_bstr_header(&mut out, protected.len());
        out.extend_from_slice(protected);
        out.extend_from_slice(&[0xa0, 0x41, b'x', 0x58, 0x40]);
        out.extend_from_slice(&[0; 64]);
        out
    }

    #[test]
    fn signs_and_verifies() {
        let key = SecretKey::from_bytes([5; 32]);
        let bytes = sign(b"hello".to_vec(), &key).unwrap();
        // Tag 18 (0xd2), then a 4-element array.
        assert_eq!(&bytes[..2], &[0xd2, 0x84]);
        let env = parse(&bytes).unwrap();
        assert_eq!(env.kid, key.key_id());
        assert_eq!(env.verify(&keyring(&key)).unwrap(), b"hello");
    }

    #[test]
    fn a_general_cose_library_reads_what_is_written_and_writes_what_is_read() {
        let key = SecretKey::from_bytes([5; 32]);
        let ours = sign(b"payload".to_vec(), &key).unwrap();
        let theirs = CoseSign1::from_tagged_slice(&ours).unwrap();
        assert_eq!(theirs.payload.as_deref(), Some(&b"payload"[..]));
        assert_eq!(theirs.protected.header.key_id, key.key_id().0.to_vec());
        theirs
            .verify_signature(b"", |sig, data| {
                key.public().verify(data, sig).then_some(()).ok_or(())
            })
            .unwrap();
        // coset builds the same envelope from the same parts, byte for byte.
        let built = CoseSign1Builder::new()
            .protected(
                HeaderBuilder::new()
                    .algorithm(iana::Algorithm::EdDSA)
                    .key_id(key.key_id().0.to_vec())
                    .build(),
            )
            .payload(b"payload".to_vec())
            .create_signature(b"", |data| key.sign(data).to_vec())
            .build()
            .to_tagged_vec()
            .unwrap();
        assert_eq!(built, ours);
    }

    #[test]
    fn sig_structure_is_the_rfc_9052_one() {
        let key = SecretKey::from_bytes([5; 32]);
        let bytes = sign(b"abc".to_vec(), &key).unwrap();
        let env = parse(&bytes).unwrap();
        // Protected header: {1: -8, 4: h'<kid>'}.
        let mut expected_protected = vec![0xa2, 0x01, 0x27, 0x04, 0x48];
        expected_protected.extend_from_slice(&key.key_id().0);
        assert_eq!(env.protected, expected_protected);
        // ["Signature1", protected, h'', payload], built by hand.
        let mut tbs = vec![0x84, 0x6a];
        tbs.extend_from_slice(b"Signature1");
        tbs.push(0x40 + env.protected.len() as u8);
        tbs.extend_from_slice(env.protected);
        tbs.push(0x40);
        tbs.push(0x43);
        tbs.extend_from_slice(b"abc");
        assert!(key.public().verify(&tbs, env.signature));
    }

    #[test]
    fn untagged_and_odd_headers_are_refused() {
        let key = SecretKey::from_bytes([5; 32]);
        let bytes = sign(b"x".to_vec(), &key).unwrap();
        let sign1 = CoseSign1::from_tagged_slice(&bytes).unwrap();
        assert!(reason(&sign1.clone().to_vec().unwrap()).contains("tag 18"));

        let mut extra = sign1.clone();
        extra.unprotected.key_id = vec![1];
        assert!(reason(&extra.to_tagged_vec().unwrap()).contains("unprotected"));

        let mut detached = sign1.clone();
        detached.payload = None;
        assert!(reason(&detached.to_tagged_vec().unwrap()).contains("detached"));

        let other_alg = CoseSign1Builder::new()
            .protected(
                HeaderBuilder::new()
                    .algorithm(iana::Algorithm::ES256)
                    .key_id(key.key_id().0.to_vec())
                    .build(),
            )
            .payload(b"x".to_vec())
            .signature(vec![0; 64])
            .build();
        assert!(reason(&other_alg.to_tagged_vec().unwrap()).contains("EdDSA"));

        let crit = CoseSign1Builder::new()
            .protected(
                HeaderBuilder::new()
                    .algorithm(iana::Algorithm::EdDSA)
                    .key_id(key.key_id().0.to_vec())
                    .add_critical(iana::HeaderParameter::Alg)
                    .build(),
            )
            .payload(b"x".to_vec())
            .signature(vec![0; 64])
            .build();
        assert!(reason(&crit.to_tagged_vec().unwrap()).contains("3 parameters"));

        let short_sig = CoseSign1Builder::new()
            .protected(sign1.protected.header.clone())
            .payload(b"x".to_vec())
            .signature(vec![0; 63])
            .build();
        assert!(reason(&short_sig.to_tagged_vec().unwrap()).contains("63 bytes"));
    }

    #[test]
    fn the_protected_header_passes_the_shape_check_and_has_one_encoding() {
        let kid = [0x34, 0x75, 0x0f, 0x98, 0xbd, 0x59, 0xfc, 0xfc];
        let mut good = PROTECTED_PREFIX.to_vec();
        good.extend_from_slice(&kid);
        assert!(parse(&with_protected(&good)).is_ok());

        // Indefinite-length map: bf 01 27 04 48 <kid> ff.
        let mut indefinite = vec![0xbf, 0x01, 0x27, 0x04, 0x48];
        indefinite.extend_from_slice(&kid);
        indefinite.push(0xff);
        assert!(reason(&with_protected(&indefinite)).contains("indefinite"));

        // Indefinite-length kid: 5f 48 <kid> ff.
        let mut indefinite_kid = vec![0xa2, 0x01, 0x27, 0x04, 0x5f, 0x48];
        indefinite_kid.extend_from_slice(&kid);
        indefinite_kid.push(0xff);
        assert!(reason(&with_protected(&indefinite_kid)).contains("indefinite"));

        // Labels in the other order.
        let mut reordered = vec![0xa2, 0x04, 0x48];
        reordered.extend_from_slice(&kid);
        reordered.extend_from_slice(&[0x01, 0x27]);
        assert!(reason(&with_protected(&reordered)).contains("order"));

        // The kid's length in a longer form than needed: 58 08.
        let mut long_form = vec![0xa2, 0x01, 0x27, 0x04, 0x58, 0x08];
        long_form.extend_from_slice(&kid);
        assert!(reason(&with_protected(&long_form)).contains("shortest"));

        // A kid of 7 bytes.
        let mut short_kid = vec![0xa2, 0x01, 0x27, 0x04, 0x47];
        short_kid.extend_from_slice(&kid[..7]);
        assert!(reason(&with_protected(&short_kid)).contains("7 bytes"));

        // A huge array where the header should be: refused by the count, never built.
        let mut huge = vec![0x9a, 0x00, 0x3d, 0x09, 0x00]; // array(4,000,000)
        huge.resize(5 + 4_000_000, 0x00);
        assert!(reason(&with_protected(&huge)).contains("more than"));
    }
}
