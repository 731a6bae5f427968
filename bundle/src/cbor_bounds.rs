//! A pre-pass over untrusted CBOR that bounds its shape before any decoder builds values from it.
//!
//! A general decoder turns each 1-byte CBOR item into a value tens of bytes large, so 4 MiB of
//! hostile CBOR could cost hundreds of MiB before any field check runs. This walk allocates
//! nothing: it checks the input is exactly one well-formed, definite-length item with at most
//! `max_items` items nested at most `max_depth` deep. Legitimate bundles are far inside the limits.

/// Items a signed manifest envelope or manifest may hold (a maximal manifest has about 300).
pub(crate) const MAX_ITEMS: usize = 4096;
/// Nesting depth limit (a manifest nests 4 deep, the envelope 2).
pub(crate) const MAX_DEPTH: usize = 8;

/// Reads the argument of an item header at `bytes[*pos]`, advancing `pos`; returns (major, arg).
fn header(bytes: &[u8], pos: &mut usize) -> Result<(u8, u64), String> {
    let first = *bytes.get(*pos).ok_or("the CBOR ends inside an item")?;
    *pos += 1;
    let major = first >> 5;
    let info = first & 0x1f;
    let extra = match info {
        0..=23 => return Ok((major, u64::from(info))),
        24 => 1,
        25 => 2,
        26 => 4,
        27 => 8,
        31 => return Err("indefinite-length CBOR items are not allowed".to_string()),
        _ => return Err(format!("reserved CBOR additional information {info}")),
    };
    let end = pos
        .checked_add(extra)
        .filter(|&e| e <= bytes.len())
        .ok_or("the CBOR ends inside an item header")?;
    let arg = bytes[*pos..end]
        .iter()
        .fold(0u64, |acc, &b| (acc << 8) | u64::from(b));
    *pos = end;
    Ok((major, arg))
}

/// Checks that `bytes` is one bounded, well-formed CBOR item with nothing after it.
pub(crate) fn check(bytes: &[u8]) -> Result<(), String> {
    // Items still to read at each open nesting level; the top level expects one item.
    let mut pending = [0u64; MAX_DEPTH + 1];
    let mut depth = 0;
    pending[0] = 1;
    let mut items = 0usize;
    let mut pos = 0usize;
    loop {
        while pending[depth] == 0 {
            if depth == 0 {
                if pos != bytes.len() {
                    return Err(format!("{} bytes follow the CBOR item", bytes.len() - pos));
                }
                return Ok(());
            }
            depth -= 1;
        }
        pending[depth] -= 1;
        items += 1;
        if items > MAX_ITEMS {
            return Err(format!("more than {MAX_ITEMS} CBOR items"));
        }
        let (major, arg) = header(bytes, &mut pos)?;
        let children = match major {
            0 | 1 | 7 => 0,
            2 | 3 => {
                let len = usize::try_from(arg).map_err(|_| "a CBOR string is too long")?;
                pos = pos
                    .checked_add(len)
                    .filter(|&e| e <= bytes.len())
                    .ok_or("the CBOR ends inside a string")?;
                0
            }
            4 => arg,
            5 => arg.checked_mul(2).ok_or("a CBOR map is too long")?,
            _ => 1, // 6: a tag wraps one item
        };
        if children > 0 {
            if children > (MAX_ITEMS - items) as u64 {
                return Err(format!("more than {MAX_ITEMS} CBOR items"));
            }
            if depth == MAX_DEPTH {
                return Err(format!("CBOR nested more than {MAX_DEPTH} deep"));
            }
            depth += 1;
            pending[depth] = children;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_ordinary_items() {
        check(&[0x00]).unwrap();
        check(&[0xa1, 0x61, b'a', 0x82, 0x01, 0x42, 0xff, 0xff]).unwrap();
        check(&[0xd2, 0x84, 0x40, 0xa0, 0xf6, 0x40]).unwrap();
        check(&[0xfb, 0, 0, 0, 0, 0, 0, 0, 0]).unwrap();
    }

    #[test]
    fn refuses_huge_declared_counts_without_reading_them() {
        let err = check(&[0x9b, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]).unwrap_err();
        assert!(err.contains("more than"), "{err}");
        let err = check(&[0xbb, 0x80, 0, 0, 0, 0, 0, 0, 0]).unwrap_err();
        assert!(
            err.contains("too long") || err.contains("more than"),
            "{err}"
        );
        let err = check(&[0x5b, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]).unwrap_err();
        assert!(err.contains("ends inside"), "{err}");
    }

    #[test]
    fn refuses_many_small_items() {
        let mut many = vec![0x99, 0x20, 0x00]; // array of 8192
        many.resize(3 + 8192, 0x00);
        assert!(check(&many).unwrap_err().contains("more than"));
    }

    #[test]
    fn refuses_depth_indefinite_lengths_and_trailing_bytes() {
        let deep = vec![0x81; MAX_DEPTH + 1]
            .into_iter()
            .chain([0x00])
            .collect::<Vec<_>>();
        assert!(check(&deep).unwrap_err().contains("nested"));
        let ok = vec![0x81; MAX_DEPTH]
            .into_iter()
            .chain([0x00])
            .collect::<Vec<_>>();
        check(&ok).unwrap();
        assert!(check(&[0x9f, 0xff]).unwrap_err().contains("indefinite"));
        assert!(check(&[0x00, 0x00]).unwrap_err().contains("follow"));
        assert!(check(&[0x82, 0x00]).unwrap_err().contains("ends"));
        assert!(check(&[0x1c]).unwrap_err().contains("reserved"));
    }
}
