//! The anti-forensic splitter: a key is stored as `stripes` blocks that all must survive for the
//! key to be recovered, so wiping any small part of a keyslot destroys it.
//!
//! This is cryptsetup's `AF_split`/`AF_merge` with SHA-256: every block but the last is random;
//! a running XOR of them is "diffused" after each block (hashed per digest-sized chunk, each chunk
//! prefixed with its index as a big-endian 32-bit counter), and the last block is the key XORed
//! with the diffused accumulation.

use rand_core::{OsRng, RngCore};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

/// The stripe count cryptsetup writes and the only one it accepts for LUKS2 keyslots.
pub const STRIPES: u32 = 4000;

/// Hashes `buf` in place, chunk by chunk, as cryptsetup's `diffuse`.
fn diffuse(buf: &mut [u8]) {
    let digest_size = Sha256::output_size();
    for (i, chunk) in buf.chunks_mut(digest_size).enumerate() {
        let mut h = Sha256::new();
        h.update((i as u32).to_be_bytes());
        h.update(&*chunk);
        let out = h.finalize();
        let n = chunk.len();
        chunk.copy_from_slice(&out[..n]);
    }
}

fn xor_into(acc: &mut [u8], block: &[u8]) {
    for (a, b) in acc.iter_mut().zip(block) {
        *a ^= b;
    }
}

/// Splits `key` into `stripes` blocks of `key.len()` bytes.
pub fn split(key: &[u8], stripes: u32) -> Zeroizing<Vec<u8>> {
    let size = key.len();
    let stripes = stripes as usize;
    assert!(stripes >= 1, "AF split needs at least one stripe");
    let mut out = Zeroizing::new(vec![0u8; size * stripes]);
    OsRng.fill_bytes(&mut out[..size * (stripes - 1)]);
    let mut acc = Zeroizing::new(vec![0u8; size]);
    for block in out[..size * (stripes - 1)].chunks(size) {
        xor_into(&mut acc, block);
        diffuse(&mut acc);
    }
    let last = &mut out[size * (stripes - 1)..];
    last.copy_from_slice(key);
    xor_into(last, &acc);
    out
}

/// Recovers a `key_size`-byte key from `material`, which holds `stripes` blocks.
pub fn merge(material: &[u8], key_size: usize, stripes: u32) -> Zeroizing<Vec<u8>> {
    let stripes = stripes as usize;
    assert!(stripes >= 1 && material.len() >= key_size * stripes);
    let mut acc = Zeroizing::new(vec![0u8; key_size]);
    for block in material[..key_size * (stripes - 1)].chunks(key_size) {
        xor_into(&mut acc, block);
        diffuse(&mut acc);
    }
    xor_into(
        &mut acc,
        &material[key_size * (stripes - 1)..key_size * stripes],
    );
    acc
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_merge_round_trip() {
        let key: Vec<u8> = (0..64u8).collect();
        let material = split(&key, STRIPES);
        assert_eq!(material.len(), 64 * 4000);
        assert_eq!(&*merge(&material, 64, STRIPES), &key[..]);
        // A second split of the same key is different (random stripes) but merges the same.
        let again = split(&key, STRIPES);
        assert_ne!(&*material, &*again);
        assert_eq!(&*merge(&again, 64, STRIPES), &key[..]);
    }

    #[test]
    fn damaging_one_stripe_loses_the_key() {
        let key = [7u8; 32];
        let mut material = split(&key, 100);
        material[5] ^= 1;
        assert_ne!(&*merge(&material, 32, 100), &key[..]);
    }

    #[test]
    fn diffuse_matches_cryptsetup_definition() {
        // 40 bytes: one full SHA-256 chunk with counter 0, then 8 bytes hashed with counter 1.
        let mut buf: Vec<u8> = (0..40u8).collect();
        let orig = buf.clone();
        diffuse(&mut buf);
        let mut h = Sha256::new();
        h.update([0, 0, 0, 0]);
        h.update(&orig[..32]);
        assert_eq!(&buf[..32], &h.finalize()[..]);
        let mut h = Sha256::new();
        h.update([0, 0, 0, 1]);
        h.update(&orig[32..]);
        assert_eq!(&buf[32..], &h.finalize()[..8]);
    }

    #[test]
    fn single_stripe_is_the_key() {
        let key = [9u8; 16];
        assert_eq!(&*split(&key, 1), &key[..]);
    }
}
