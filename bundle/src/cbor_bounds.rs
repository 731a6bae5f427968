//! A pre-pass over untrusted CBOR that bounds its shape before any decoder builds values from it.
//!
//! A general decoder turns each 1-byte CBOR item into a value tens of bytes large, so 4 MiB of
//! hostile CBOR could cost hundreds of MiB before any field check runs. This walk allocates
//! nothing: it checks the input is exactly one well-formed, definite-length item in shortest form,
//! with at most [`MAX_ITEMS`] items, none deeper than [`MAX_DEPTH`]. Legitimate bundles are far
//! inside the limits.
//!
//! Counting, as docs/bundle-format.md section 2 states it: every data item counts once (an integer,
//! a string whatever its length, an array or map header, a tag, a simple value); a map of n pairs
//! holds 2n items. The top-level item is at depth 0 and an item inside an array, map or tag is one
//! deeper than its container.

/// Items a signed manifest envelope or manifest may hold (a maximal manifest has about 300).
pub(crate) const MAX_ITEMS: usize = 4096;
/// Deepest item allowed (a manifest's deepest items are at depth 3, the envelope's at 2).
pub(crate) const MAX_DEPTH: usize = 8;

/// Reads an item header at `bytes[*pos]`, advancing `pos`; returns (major type, argument).
///
/// Refuses indefinite lengths, reserved additional information, and an argument that is not in
/// its shortest form (RFC 8949 section 4.2.1: a value below 24 in the initial byte, otherwise in
/// the fewest bytes). Major type 7 (floats and simple values) keeps its width, since the width is
/// the value's type there; no field of a bundle is a float.
pub(crate) fn read_header(bytes: &[u8], pos: &mut usize) -> Result<(u8, u64), String> {
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
    let shortest = match extra {
        1 => arg >= 24,
        2 => arg > 0xff,
        4 => arg > 0xffff,
        _ => arg > 0xffff_ffff,
    };
    if major == 7 {
        if extra == 1 && arg < 32 {
            return Err(format!(
                "a CBOR simple value {arg} in two bytes is not well-formed"
            ));
        }
    } else if !shortest {
        return Err(format!(
            "a CBOR integer, length or tag ({arg}) is not in its shortest form"
        ));
    }
    Ok((major, arg))
}

/// Appends an item header for `major` and `arg` in its shortest form.
pub(crate) fn push_header(out: &mut Vec<u8>, major: u8, arg: u64) {
    let m = major << 5;
    match arg {
        0..=23 => out.push(m | arg as u8),
        24..=0xff => out.extend_from_slice(&[m | 24, arg as u8]),
        0x100..=0xffff => {
            out.push(m | 25);
            out.extend_from_slice(&(arg as u16).to_be_bytes());
        }
        0x1_0000..=0xffff_ffff => {
            out.push(m | 26);
            out.extend_from_slice(&(arg as u32).to_be_bytes());
        }
        _ => {
            out.push(m | 27);
            out.extend_from_slice(&arg.to_be_bytes());
        }
    }
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
        let (major, arg) = read_header(bytes, &mut pos)?;
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
    fn integers_lengths_and_tags_must_be_in_shortest_form() {
        check(&[0x17]).unwrap();
        check(&[0x18, 0x18]).unwrap();
        check(&[0x19, 0x01, 0x00]).unwrap();
        for long in [
            &[0x18, 0x17][..],                           // 23 in two bytes
            &[0x19, 0x00, 0xff],                         // 255 in three
            &[0x1a, 0x00, 0x00, 0xff, 0xff],             // 65535 in five
            &[0x1b, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff], // u32::MAX in nine
            &[0x38, 0x00],                               // -1 in two bytes
            &[0x58, 0x01, 0x00],                         // bstr(1) with a 1-byte length
            &[0xd8, 0x12, 0x00],                         // tag 18 in two bytes
            &[0x98, 0x00],                               // empty array with a 1-byte count
        ] {
            let err = check(long).unwrap_err();
            assert!(err.contains("shortest"), "{long:02x?}: {err}");
        }
        // Simple values keep their width; one below 32 in two bytes is not well-formed.
        check(&[0xf9, 0x00, 0x00]).unwrap();
        assert!(check(&[0xf8, 0x14]).unwrap_err().contains("well-formed"));
    }

    #[test]
    fn push_header_writes_the_shortest_form() {
        for (arg, len) in [
            (0, 1),
            (23, 1),
            (24, 2),
            (255, 2),
            (256, 3),
            (65536, 5),
            (1 << 32, 9),
        ] {
            let mut out = Vec::new();
            push_header(&mut out, 2, arg);
            assert_eq!(out.len(), len, "{arg}");
            let mut pos = 0;
            assert_eq!(read_header(&out, &mut pos).unwrap(), (2, arg));
        }
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
