//! The manifest's signature envelope: a tagged COSE_Sign1 (RFC 9052, section 4.2) with EdDSA.
//!
//! Cairn accepts exactly one shape: protected header `{1: -8, 4: kid}` with an 8-byte kid, an empty
//! unprotected header, an attached payload and a 64-byte signature over the Sig_structure
//! `["Signature1", protected, h'', payload]`. Anything else is refused rather than interpreted.

use coset::{iana, CoseSign1, CoseSign1Builder, HeaderBuilder, TaggedCborSerializable};

use crate::error::{Error, Result};
use crate::keys::{KeyId, Keyring, SecretKey};

/// Wraps manifest CBOR in a signed, tagged COSE_Sign1.
pub(crate) fn sign(payload: Vec<u8>, key: &SecretKey) -> Result<Vec<u8>> {
    let protected = HeaderBuilder::new()
        .algorithm(iana::Algorithm::EdDSA)
        .key_id(key.key_id().0.to_vec())
        .build();
    CoseSign1Builder::new()
        .protected(protected)
        .payload(payload)
        .create_signature(b"", |data| key.sign(data).to_vec())
        .build()
        .to_tagged_vec()
        .map_err(|e| Error::Cose {
            reason: e.to_string(),
        })
}

/// A parsed envelope whose signature has not been checked yet.
pub(crate) struct Envelope {
    sign1: CoseSign1,
    pub kid: KeyId,
}

fn malformed(reason: impl Into<String>) -> Error {
    Error::Cose {
        reason: reason.into(),
    }
}

/// Parses the envelope and checks its shape, without checking the signature.
pub(crate) fn parse(bytes: &[u8]) -> Result<Envelope> {
    crate::cbor_bounds::check(bytes).map_err(malformed)?;
    let sign1 = CoseSign1::from_tagged_slice(bytes)
        .map_err(|e| malformed(format!("not a tagged COSE_Sign1: {e}")))?;
    let h = &sign1.protected.header;
    if h.alg != Some(coset::Algorithm::Assigned(iana::Algorithm::EdDSA)) {
        return Err(malformed("the protected header's alg is not EdDSA (-8)"));
    }
    let only_alg_and_kid = h.crit.is_empty()
        && h.content_type.is_none()
        && h.iv.is_empty()
        && h.partial_iv.is_empty()
        && h.counter_signatures.is_empty()
        && h.rest.is_empty();
    if !only_alg_and_kid {
        return Err(malformed(
            "the protected header has parameters other than alg and kid",
        ));
    }
    let kid: [u8; 8] = h
        .key_id
        .as_slice()
        .try_into()
        .map_err(|_| malformed(format!("the kid is {} bytes, expected 8", h.key_id.len())))?;
    if !sign1.unprotected.is_empty() {
        return Err(malformed("the unprotected header is not empty"));
    }
    if sign1.payload.is_none() {
        return Err(malformed("the manifest payload is detached"));
    }
    if sign1.signature.len() != 64 {
        return Err(malformed(format!(
            "the signature is {} bytes, expected 64",
            sign1.signature.len()
        )));
    }
    Ok(Envelope {
        sign1,
        kid: KeyId(kid),
    })
}

impl Envelope {
    /// The manifest CBOR, unverified.
    pub(crate) fn payload_unverified(&self) -> &[u8] {
        self.sign1.payload.as_deref().unwrap_or_default()
    }

    /// Checks the signature with the keyring's key for the kid; returns the verified payload.
    pub(crate) fn verify(&self, keyring: &Keyring) -> Result<&[u8]> {
        let key = keyring.key_for(self.kid)?;
        // coset builds the Sig_structure from the protected header's original bytes.
        self.sign1.verify_signature(b"", |sig, data| {
            if key.verify(data, sig) {
                Ok(())
            } else {
                Err(Error::BadSignature { kid: self.kid })
            }
        })?;
        Ok(self.payload_unverified())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use coset::CborSerializable;

    fn keyring(key: &SecretKey) -> Keyring {
        Keyring::from_keys([key.public()]).unwrap()
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
    fn sig_structure_is_the_rfc_9052_one() {
        let key = SecretKey::from_bytes([5; 32]);
        let bytes = sign(b"abc".to_vec(), &key).unwrap();
        let env = parse(&bytes).unwrap();
        let protected = env.sign1.protected.original_data.clone().unwrap();
        // Protected header: {1: -8, 4: h'<kid>'}.
        let mut expected_protected = vec![0xa2, 0x01, 0x27, 0x04, 0x48];
        expected_protected.extend_from_slice(&key.key_id().0);
        assert_eq!(protected, expected_protected);
        // ["Signature1", protected, h'', payload], built by hand.
        let mut tbs = vec![0x84, 0x6a];
        tbs.extend_from_slice(b"Signature1");
        tbs.push(0x40 + protected.len() as u8);
        tbs.extend_from_slice(&protected);
        tbs.push(0x40);
        tbs.push(0x43);
        tbs.extend_from_slice(b"abc");
        assert!(key.public().verify(&tbs, &env.sign1.signature));
    }

    #[test]
    fn untagged_and_odd_headers_are_refused() {
        let key = SecretKey::from_bytes([5; 32]);
        let bytes = sign(b"x".to_vec(), &key).unwrap();
        let sign1 = CoseSign1::from_tagged_slice(&bytes).unwrap();
        assert!(matches!(
            parse(&sign1.clone().to_vec().unwrap()),
            Err(Error::Cose { .. })
        ));

        let mut extra = sign1.clone();
        extra.unprotected.key_id = vec![1];
        let err = parse(&extra.to_tagged_vec().unwrap()).err().unwrap();
        assert!(err.to_string().contains("unprotected"), "{err}");

        let mut detached = sign1.clone();
        detached.payload = None;
        let err = parse(&detached.to_tagged_vec().unwrap()).err().unwrap();
        assert!(err.to_string().contains("detached"), "{err}");

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
        let err = parse(&other_alg.to_tagged_vec().unwrap()).err().unwrap();
        assert!(err.to_string().contains("EdDSA"), "{err}");
    }
}
