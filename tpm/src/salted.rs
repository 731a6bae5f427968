//! The cryptography of a salted session with response encryption, so that an unsealed secret
//! does not cross the bus to a discrete TPM in the clear (TPM 2.0 Part 1: 11.4.9 KDFa,
//! 11.4.10.3 KDFe, C.6.1 ECDH salt, 19.6 session keys and HMACs, 21 parameter encryption).
//!
//! The caller makes an ephemeral P-256 key and sends its public point as the session's
//! encrypted salt; the TPM derives the same salt from its storage key's private half. Both sides
//! turn salt and nonces into a session key; the TPM then encrypts the first parameter of its
//! response with AES-128-CFB under a key and IV derived from the session key and the two newest
//! nonces.

use aes::cipher::{BlockEncrypt, KeyInit};
use hmac::{Hmac, Mac};
use p256::elliptic_curve::sec1::{EncodedPoint, FromEncodedPoint, ToEncodedPoint};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use crate::marshal::Reader;
use crate::{Error, Result};

/// `TPM_ALG_*` values read from a public area.
const ALG_ECC: u16 = 0x0023;
const ALG_SHA256: u16 = 0x000B;
const ALG_NULL: u16 = 0x0010;
const ECC_NIST_P256: u16 = 0x0003;

/// The session's hash output, and the salt and session key length.
pub const DIGEST_LEN: usize = 32;

/// KDFa with HMAC-SHA256: `bits` of output from `key`, a label (its terminating zero is added
/// here) and two context values.
pub fn kdfa(
    key: &[u8],
    label: &str,
    context_u: &[u8],
    context_v: &[u8],
    bits: u32,
) -> Zeroizing<Vec<u8>> {
    counter_mode(bits, |i| {
        hmac(
            key,
            &[
                &i.to_be_bytes(),
                label.as_bytes(),
                &[0],
                context_u,
                context_v,
                &bits.to_be_bytes(),
            ],
        )
    })
}

/// KDFe with SHA-256 (the counter-mode hash KDF of NIST SP 800-56A): `bits` of output from the
/// shared x coordinate `z`, a label (zero added here) and the two parties' x coordinates.
pub fn kdfe(
    z: &[u8],
    label: &str,
    party_u: &[u8],
    party_v: &[u8],
    bits: u32,
) -> Zeroizing<Vec<u8>> {
    counter_mode(bits, |i| {
        sha256(&[
            &i.to_be_bytes(),
            z,
            label.as_bytes(),
            &[0],
            party_u,
            party_v,
        ])
    })
}

/// `block(1)`, `block(2)`, … concatenated and cut to `bits`.
fn counter_mode(bits: u32, mut block: impl FnMut(u32) -> [u8; DIGEST_LEN]) -> Zeroizing<Vec<u8>> {
    let len = bits.div_ceil(8) as usize;
    let mut out = Zeroizing::new(Vec::with_capacity(len + DIGEST_LEN));
    let mut counter = 1u32;
    while out.len() < len {
        let mut b = block(counter);
        out.extend_from_slice(&b);
        zeroize::Zeroize::zeroize(&mut b);
        counter += 1;
    }
    out.truncate(len);
    out
}

/// AES-128 in CFB mode with a full-block feedback, decrypting in place.
pub fn cfb_decrypt(key: &[u8; 16], iv: &[u8; 16], data: &mut [u8]) {
    let cipher = aes::Aes128::new(key.into());
    let mut feedback = *iv;
    for chunk in data.chunks_mut(16) {
        let mut stream = aes::Block::from(feedback);
        cipher.encrypt_block(&mut stream);
        let mut next = [0u8; 16];
        next[..chunk.len()].copy_from_slice(chunk);
        for (byte, k) in chunk.iter_mut().zip(stream.iter()) {
            *byte ^= k;
        }
        feedback = next;
    }
}

/// AES-128-CFB encryption in place, the inverse of [`cfb_decrypt`].
pub fn cfb_encrypt(key: &[u8; 16], iv: &[u8; 16], data: &mut [u8]) {
    let cipher = aes::Aes128::new(key.into());
    let mut feedback = *iv;
    for chunk in data.chunks_mut(16) {
        let mut stream = aes::Block::from(feedback);
        cipher.encrypt_block(&mut stream);
        for (byte, k) in chunk.iter_mut().zip(stream.iter()) {
            *byte ^= k;
        }
        feedback[..chunk.len()].copy_from_slice(chunk);
    }
}

/// HMAC-SHA256 over the concatenation of `parts`.
pub fn hmac(key: &[u8], parts: &[&[u8]]) -> [u8; DIGEST_LEN] {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key).expect("HMAC takes any key");
    for p in parts {
        mac.update(p);
    }
    mac.finalize().into_bytes().into()
}

/// SHA-256 over the concatenation of `parts`.
pub fn sha256(parts: &[&[u8]]) -> [u8; DIGEST_LEN] {
    let mut h = Sha256::new();
    for p in parts {
        h.update(p);
    }
    h.finalize().into()
}

/// An object's Name: its name algorithm followed by the hash of its `TPMT_PUBLIC`.
pub fn name(public: &[u8]) -> Result<Vec<u8>> {
    let mut r = Reader::new("public area", public);
    let _type = r.u16()?;
    let name_alg = r.u16()?;
    if name_alg != ALG_SHA256 {
        return Err(r.malformed(format!(
            "name algorithm {name_alg:#06x}; only SHA-256 is supported"
        )));
    }
    let mut out = ALG_SHA256.to_be_bytes().to_vec();
    out.extend_from_slice(&sha256(&[public]));
    Ok(out)
}

/// The P-256 public key in an ECC `TPMT_PUBLIC` (a storage primary key's public area).
pub fn ecc_public_key(public: &[u8]) -> Result<p256::PublicKey> {
    let mut r = Reader::new("TPM2_CreatePrimary outPublic", public);
    if r.u16()? != ALG_ECC {
        return Err(r.malformed("not an ECC key"));
    }
    let _name_alg = r.u16()?;
    let _attributes = r.u32()?;
    let _auth_policy = r.tpm2b()?;
    if r.u16()? != ALG_NULL {
        let _key_bits = r.u16()?;
        let _mode = r.u16()?;
    }
    if r.u16()? != ALG_NULL {
        let _scheme_hash = r.u16()?;
    }
    let curve = r.u16()?;
    if curve != ECC_NIST_P256 {
        return Err(r.malformed(format!("curve {curve:#06x}; only NIST P-256 is supported")));
    }
    if r.u16()? != ALG_NULL {
        let _kdf_hash = r.u16()?;
    }
    let x = r.tpm2b()?;
    let y = r.tpm2b()?;
    if x.len() != 32 || y.len() != 32 {
        return Err(r.malformed(format!(
            "a P-256 point with {}- and {}-byte coordinates",
            x.len(),
            y.len()
        )));
    }
    let point = EncodedPoint::<p256::NistP256>::from_affine_coordinates(x.into(), y.into(), false);
    Option::from(p256::PublicKey::from_encoded_point(&point))
        .ok_or_else(|| r.malformed("the storage key's point is not on P-256"))
}

/// A salt for a session on `tpm_key`: the salt itself and the ephemeral point to send as the
/// encrypted salt (`TPMS_ECC_POINT` contents: x and y as `TPM2B`s).
pub fn ecdh_salt(tpm_key: &p256::PublicKey) -> Result<(Zeroizing<Vec<u8>>, Vec<u8>)> {
    let ephemeral = p256::ecdh::EphemeralSecret::random(&mut rand_core::OsRng);
    let ours = ephemeral.public_key().to_encoded_point(false);
    let theirs = tpm_key.to_encoded_point(false);
    let (Some(ex), Some(ey), Some(tx)) = (ours.x(), ours.y(), theirs.x()) else {
        return Err(Error::Token("an ECC point without coordinates".into()));
    };
    let shared = ephemeral.diffie_hellman(tpm_key);
    let salt = kdfe(
        shared.raw_secret_bytes(),
        "SECRET",
        ex,
        tx,
        8 * DIGEST_LEN as u32,
    );
    let mut point = Vec::with_capacity(4 + 64);
    for c in [ex, ey] {
        point.extend_from_slice(&(c.len() as u16).to_be_bytes());
        point.extend_from_slice(c);
    }
    Ok((salt, point))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// KDFa's input layout, pinned by recomputing one block by hand.
    #[test]
    fn kdfa_is_hmac_over_counter_label_contexts_and_bits() {
        let out = kdfa(b"key", "CFB", b"newer", b"older", 256);
        let mut input = 1u32.to_be_bytes().to_vec();
        input.extend_from_slice(b"CFB\0newerolder");
        input.extend_from_slice(&256u32.to_be_bytes());
        assert_eq!(out.as_slice(), hmac(b"key", &[&input]));
        // More than one block: the counter goes on, the bits field stays the total.
        let long = kdfa(b"key", "CFB", b"newer", b"older", 384);
        let mut second = 2u32.to_be_bytes().to_vec();
        second.extend_from_slice(b"CFB\0newerolder");
        second.extend_from_slice(&384u32.to_be_bytes());
        assert_eq!(long.len(), 48);
        assert_eq!(&long[32..], &hmac(b"key", &[&second])[..16]);
    }

    #[test]
    fn kdfe_is_a_hash_over_counter_z_label_and_parties() {
        let out = kdfe(b"zz", "SECRET", b"u", b"v", 256);
        assert_eq!(
            out.as_slice(),
            sha256(&[&1u32.to_be_bytes(), b"zz", b"SECRET\0", b"u", b"v"])
        );
    }

    /// CFB round trip over a length that ends in a partial block, and the first block checked
    /// against AES itself.
    #[test]
    fn cfb_round_trips_and_starts_with_aes_of_the_iv() {
        let (key, iv) = ([7u8; 16], [9u8; 16]);
        let plain: Vec<u8> = (0..37).collect();
        let mut data = plain.clone();
        cfb_encrypt(&key, &iv, &mut data);
        let mut block = aes::Block::from(iv);
        aes::Aes128::new((&key).into()).encrypt_block(&mut block);
        let first: Vec<u8> = plain[..16]
            .iter()
            .zip(block.iter())
            .map(|(p, k)| p ^ k)
            .collect();
        assert_eq!(&data[..16], first.as_slice());
        cfb_decrypt(&key, &iv, &mut data);
        assert_eq!(data, plain);
    }

    /// Both ends of the ECDH derive the same salt: the TPM's side is played by a static key.
    #[test]
    fn the_salt_is_what_the_key_holder_derives_from_the_point() {
        let tpm_secret = p256::SecretKey::random(&mut rand_core::OsRng);
        let tpm_public = tpm_secret.public_key();
        let (salt, point) = ecdh_salt(&tpm_public).unwrap();
        assert_eq!(point.len(), 2 + 32 + 2 + 32);
        let (x, y) = (&point[2..34], &point[36..68]);
        let ephemeral = p256::PublicKey::from_encoded_point(
            &EncodedPoint::<p256::NistP256>::from_affine_coordinates(x.into(), y.into(), false),
        )
        .unwrap();
        let shared =
            p256::ecdh::diffie_hellman(tpm_secret.to_nonzero_scalar(), ephemeral.as_affine());
        let tx = tpm_public.to_encoded_point(false);
        let theirs = kdfe(shared.raw_secret_bytes(), "SECRET", x, tx.x().unwrap(), 256);
        assert_eq!(salt, theirs);
    }
}
