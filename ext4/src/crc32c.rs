//! CRC-32C (Castagnoli) as ext4 and jbd2 use it: the kernel's `crc32c(seed, data)`, without the
//! usual inversion before and after, so checksums chain from a seed.

const POLY: u32 = 0x82F6_3B78;

const TABLE: [u32; 256] = {
    let mut table = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut crc = i as u32;
        let mut bit = 0;
        while bit < 8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ POLY
            } else {
                crc >> 1
            };
            bit += 1;
        }
        table[i] = crc;
        i += 1;
    }
    table
};

/// Continues `seed` over `data`.
pub fn crc32c(seed: u32, data: &[u8]) -> u32 {
    data.iter().fold(seed, |crc, &b| {
        TABLE[((crc ^ u32::from(b)) & 0xFF) as usize] ^ (crc >> 8)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_the_standard_check_value() {
        // CRC-32C's catalogued check: "123456789" with the usual inversions is 0xE3069283.
        assert_eq!(!crc32c(!0, b"123456789"), 0xE306_9283);
    }

    #[test]
    fn chains() {
        let whole = crc32c(!0, b"hello world");
        assert_eq!(crc32c(crc32c(!0, b"hello "), b"world"), whole);
    }
}
