//! `aes-xts-plain64` over 512-byte sectors, the cipher of keyslot areas: the tweak of each
//! sector is its index from the start of the area, little-endian (dm-crypt's `plain64`).

use aes::cipher::KeyInit;
use aes::{Aes128, Aes256};
use xts_mode::{get_tweak_default, Xts128};

use crate::error::{Error, Result};

/// Keyslot areas are always encrypted in 512-byte sectors, whatever the data segment uses.
pub const AREA_SECTOR: usize = 512;

/// Checks that `encryption` with `key_size` is a keyslot cipher this crate implements.
pub fn check(encryption: &str, key_size: usize) -> Result<()> {
    if encryption != "aes-xts-plain64" || !(key_size == 32 || key_size == 64) {
        return Err(Error::Unsupported(format!(
            "keyslot area cipher {encryption} with a {key_size}-byte key"
        )));
    }
    Ok(())
}

/// Encrypts (or decrypts) `buf`, a whole number of sectors, in place.
pub fn xts(key: &[u8], buf: &mut [u8], encrypt: bool) -> Result<()> {
    check("aes-xts-plain64", key.len())?;
    assert_eq!(
        buf.len() % AREA_SECTOR,
        0,
        "keyslot material is whole sectors"
    );
    let half = key.len() / 2;
    let (k1, k2) = key.split_at(half);
    macro_rules! run {
        ($aes:ty) => {{
            let xts = Xts128::new(
                <$aes>::new_from_slice(k1).expect("key length checked"),
                <$aes>::new_from_slice(k2).expect("key length checked"),
            );
            if encrypt {
                xts.encrypt_area(buf, AREA_SECTOR, 0, get_tweak_default);
            } else {
                xts.decrypt_area(buf, AREA_SECTOR, 0, get_tweak_default);
            }
        }};
    }
    if half == 32 {
        run!(Aes256)
    } else {
        run!(Aes128)
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ieee1619_vector_10() {
        // IEEE 1619-2007 XTS-AES-256 vector 10: data unit sequence number 0xff, 512 bytes.
        let key = hex::decode(
            "2718281828459045235360287471352662497757247093699959574966967627\
             3141592653589793238462643383279502884197169399375105820974944592",
        )
        .unwrap();
        let mut buf: Vec<u8> = (0..=255u8).chain(0..=255u8).collect();
        let plain = buf.clone();
        // Encrypt as sector 0xff by prefixing 0xff empty sectors would be wasteful; use the
        // library directly with the same tweak function as `xts`.
        let xts = Xts128::new(
            Aes256::new_from_slice(&key[..32]).unwrap(),
            Aes256::new_from_slice(&key[32..]).unwrap(),
        );
        xts.encrypt_area(&mut buf, 512, 0xff, get_tweak_default);
        assert_eq!(hex::encode(&buf[..16]), "1c3b3a102f770386e4836c99e370cf9b");
        xts.decrypt_area(&mut buf, 512, 0xff, get_tweak_default);
        assert_eq!(buf, plain);
    }

    #[test]
    fn round_trip_and_sectors_differ() {
        let key = [3u8; 64];
        let mut buf = vec![0u8; 1024];
        xts(&key, &mut buf, true).unwrap();
        assert_ne!(buf[..512], buf[512..], "each sector has its own tweak");
        xts(&key, &mut buf, false).unwrap();
        assert!(buf.iter().all(|&b| b == 0));
    }
}
