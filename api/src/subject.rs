//! The subject of a client certificate: the Organizations that carry its role, and a one-line
//! text for logs.
//!
//! webpki has parsed and verified the certificate by the time this runs and hands over the raw
//! DER of the subject Name, so this module only walks that Name: a sequence of sets of
//! (object identifier, string) pairs. It is small on purpose (a full X.509 parser costs the
//! device binary about 80 KiB for one field), bounded ([`MAX_ATTRIBUTES`], lengths are checked
//! against the input), and anything it does not understand makes the subject unreadable,
//! which means no role.

use std::fmt::{self, Write as _};

/// Most attributes read from one Name.
pub const MAX_ATTRIBUTES: usize = 32;

const SEQUENCE: u8 = 0x30;
const SET: u8 = 0x31;
const OID: u8 = 0x06;
const UTF8_STRING: u8 = 0x0c;
const PRINTABLE_STRING: u8 = 0x13;
const IA5_STRING: u8 = 0x16;
const BMP_STRING: u8 = 0x1e;

/// id-at-organizationName, 2.5.4.10.
const ORGANIZATION: &[u8] = &[0x55, 0x04, 0x0a];
/// The short names RFC 4514 gives the common attributes.
const SHORT_NAMES: &[(&[u8], &str)] = &[
    (&[0x55, 0x04, 0x03], "CN"),
    (ORGANIZATION, "O"),
    (&[0x55, 0x04, 0x0b], "OU"),
    (&[0x55, 0x04, 0x06], "C"),
    (&[0x55, 0x04, 0x07], "L"),
    (&[0x55, 0x04, 0x08], "ST"),
    (&[0x55, 0x04, 0x05], "serialNumber"),
    (
        &[0x09, 0x92, 0x26, 0x89, 0x93, 0xf2, 0x2c, 0x64, 0x01, 0x19],
        "DC",
    ),
];

/// A Name, attribute by attribute in certificate order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subject {
    attributes: Vec<Attribute>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Attribute {
    oid: Vec<u8>,
    value: Value,
    /// Shares its set with the attribute before it (a multi-valued RDN, shown with `+`).
    joined: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Value {
    Text(String),
    /// A string type this module does not decode, as its DER tag and bytes.
    Other(u8, Vec<u8>),
}

/// The Name does not parse (or is over [`MAX_ATTRIBUTES`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Malformed;

impl Subject {
    /// Parses the contents of a DER Name (without its outer SEQUENCE tag and length, as webpki
    /// gives it).
    pub fn parse(mut der: &[u8]) -> Result<Subject, Malformed> {
        let mut attributes = Vec::new();
        while !der.is_empty() {
            let mut set = expect(&mut der, SET)?;
            let mut joined = false;
            while !set.is_empty() {
                let mut pair = expect(&mut set, SEQUENCE)?;
                let oid = expect(&mut pair, OID)?;
                let (tag, bytes) = tlv(&mut pair)?;
                if !pair.is_empty() || oid.is_empty() || attributes.len() == MAX_ATTRIBUTES {
                    return Err(Malformed);
                }
                attributes.push(Attribute {
                    oid: oid.to_vec(),
                    value: Value::decode(tag, bytes)?,
                    joined,
                });
                joined = true;
            }
        }
        Ok(Subject { attributes })
    }

    /// The Organization (O) values that are text.
    pub fn organizations(&self) -> impl Iterator<Item = &str> {
        self.attributes.iter().filter_map(|a| match &a.value {
            Value::Text(t) if a.oid == ORGANIZATION => Some(t.as_str()),
            _ => None,
        })
    }
}

impl Value {
    fn decode(tag: u8, bytes: &[u8]) -> Result<Value, Malformed> {
        match tag {
            UTF8_STRING | PRINTABLE_STRING | IA5_STRING => std::str::from_utf8(bytes)
                .map(|s| Value::Text(s.to_string()))
                .map_err(|_| Malformed),
            BMP_STRING if bytes.len().is_multiple_of(2) => {
                let units = bytes.chunks(2).map(|c| u16::from_be_bytes([c[0], c[1]]));
                char::decode_utf16(units)
                    .collect::<Result<String, _>>()
                    .map(Value::Text)
                    .map_err(|_| Malformed)
            }
            _ => Ok(Value::Other(tag, bytes.to_vec())),
        }
    }
}

/// One DER tag-length-value with a one-byte tag and a length below 64 KiB (a Name never needs
/// more); advances `input` past it.
fn tlv<'a>(input: &mut &'a [u8]) -> Result<(u8, &'a [u8]), Malformed> {
    let &[tag, first, ref rest @ ..] = *input else {
        return Err(Malformed);
    };
    if tag & 0x1f == 0x1f {
        return Err(Malformed);
    }
    // DER takes the shortest length form, so a long form holds at least 0x80.
    let (len, rest) = match (first, rest) {
        (0..=0x7f, rest) => (usize::from(first), rest),
        (0x81, &[n, ref rest @ ..]) if n >= 0x80 => (usize::from(n), rest),
        (0x82, &[hi, lo, ref rest @ ..]) if hi != 0 => {
            (usize::from(u16::from_be_bytes([hi, lo])), rest)
        }
        _ => return Err(Malformed),
    };
    if rest.len() < len {
        return Err(Malformed);
    }
    let (value, after) = rest.split_at(len);
    *input = after;
    Ok((tag, value))
}

fn expect<'a>(input: &mut &'a [u8], want: u8) -> Result<&'a [u8], Malformed> {
    match tlv(input)? {
        (tag, value) if tag == want => Ok(value),
        _ => Err(Malformed),
    }
}

/// RFC 4514 style, in certificate order: `CN=alice, O=cairn:operator`. Separators and control
/// characters in values are escaped, so a subject cannot forge a log line.
impl fmt::Display for Subject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, a) in self.attributes.iter().enumerate() {
            if i > 0 {
                f.write_str(if a.joined { "+" } else { ", " })?;
            }
            match SHORT_NAMES.iter().find(|(oid, _)| *oid == a.oid.as_slice()) {
                Some((_, name)) => f.write_str(name)?,
                None => write_dotted(f, &a.oid)?,
            }
            f.write_char('=')?;
            match &a.value {
                Value::Text(text) => write_escaped(f, text)?,
                Value::Other(tag, bytes) => {
                    write!(f, "#{tag:02x}")?;
                    for b in bytes {
                        write!(f, "{b:02x}")?;
                    }
                }
            }
        }
        Ok(())
    }
}

fn write_escaped(f: &mut fmt::Formatter<'_>, text: &str) -> fmt::Result {
    for c in text.chars() {
        match c {
            ',' | '+' | '"' | '\\' | '<' | '>' | ';' | '=' => write!(f, "\\{c}")?,
            c if c.is_control() => {
                let mut buf = [0; 4];
                for b in c.encode_utf8(&mut buf).bytes() {
                    write!(f, "\\{b:02x}")?;
                }
            }
            c => f.write_char(c)?,
        }
    }
    Ok(())
}

/// An object identifier in dotted form (`1.2.840.113549.1.9.1`).
fn write_dotted(f: &mut fmt::Formatter<'_>, oid: &[u8]) -> fmt::Result {
    let mut arcs = Vec::new();
    let mut arc: u64 = 0;
    for &b in oid {
        arc = arc.saturating_mul(128) | u64::from(b & 0x7f);
        if b & 0x80 == 0 {
            arcs.push(arc);
            arc = 0;
        }
    }
    let Some(&first) = arcs.first() else {
        return f.write_str("?");
    };
    let (x, y) = match first {
        0..=39 => (0, first),
        40..=79 => (1, first - 40),
        _ => (2, first - 80),
    };
    write!(f, "{x}.{y}")?;
    for a in &arcs[1..] {
        write!(f, ".{a}")?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn der(tag: u8, content: &[u8]) -> Vec<u8> {
        let mut out = vec![tag];
        match content.len() {
            n @ 0..=0x7f => out.push(n as u8),
            n @ 0x80..=0xff => out.extend([0x81, n as u8]),
            n => out.extend([0x82, (n >> 8) as u8, n as u8]),
        }
        out.extend_from_slice(content);
        out
    }

    fn attribute(oid: &[u8], tag: u8, value: &[u8]) -> Vec<u8> {
        der(SEQUENCE, &[der(OID, oid), der(tag, value)].concat())
    }

    fn rdn(attributes: &[Vec<u8>]) -> Vec<u8> {
        der(SET, &attributes.concat())
    }

    const CN: &[u8] = &[0x55, 0x04, 0x03];

    #[test]
    fn reads_organizations_and_prints_a_subject_line() {
        let name = [
            rdn(&[attribute(CN, UTF8_STRING, b"alice")]),
            rdn(&[attribute(ORGANIZATION, PRINTABLE_STRING, b"cairn:operator")]),
            rdn(&[attribute(ORGANIZATION, UTF8_STRING, b"Acme, Inc.")]),
        ]
        .concat();
        let s = Subject::parse(&name).unwrap();
        assert_eq!(
            s.organizations().collect::<Vec<_>>(),
            ["cairn:operator", "Acme, Inc."]
        );
        assert_eq!(s.to_string(), "CN=alice, O=cairn:operator, O=Acme\\, Inc.");
    }

    #[test]
    fn multi_valued_rdns_other_oids_and_other_string_types() {
        let email = [0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x09, 0x01];
        let name = [
            rdn(&[
                attribute(CN, BMP_STRING, &[0, b'b', 0, b'o', 0, b'b']),
                attribute(&email, IA5_STRING, b"bob@example.com"),
            ]),
            rdn(&[attribute(ORGANIZATION, 0x14, b"\xe9t\xe9")]),
        ]
        .concat();
        let s = Subject::parse(&name).unwrap();
        assert_eq!(
            s.to_string(),
            "CN=bob+1.2.840.113549.1.9.1=bob@example.com, O=#14e974e9"
        );
        // A TeletexString is not text we decode, so it grants nothing.
        assert_eq!(s.organizations().count(), 0);
    }

    #[test]
    fn a_subject_cannot_forge_a_log_line() {
        let name = rdn(&[attribute(CN, UTF8_STRING, b"x\ndenied Reboot to CN=admin")]);
        let line = Subject::parse(&name).unwrap().to_string();
        assert!(!line.contains('\n'), "{line}");
        assert_eq!(line, "CN=x\\0adenied Reboot to CN\\=admin");
    }

    #[test]
    fn long_lengths_are_read_and_bounds_are_kept() {
        let long = vec![b'a'; 300];
        let name = rdn(&[attribute(CN, UTF8_STRING, &long)]);
        assert!(Subject::parse(&name).is_ok());

        let many: Vec<u8> = (0..=MAX_ATTRIBUTES)
            .flat_map(|_| rdn(&[attribute(CN, UTF8_STRING, b"x")]))
            .collect();
        assert_eq!(Subject::parse(&many), Err(Malformed));

        // Not the shortest length form, as DER demands.
        assert_eq!(
            Subject::parse(&[SET, 0x81, 0x05, 0, 0, 0, 0, 0]),
            Err(Malformed)
        );
        // Invalid UTF-8 in a UTF8String.
        assert_eq!(
            Subject::parse(&rdn(&[attribute(ORGANIZATION, UTF8_STRING, b"\xff")])),
            Err(Malformed)
        );
    }

    /// Every truncation and every single-byte change of a good Name parses or is refused,
    /// without panicking (the fuzz target's cheap cousin).
    #[test]
    fn damaged_names_never_panic() {
        let name = [
            rdn(&[attribute(CN, UTF8_STRING, b"alice")]),
            rdn(&[
                attribute(ORGANIZATION, UTF8_STRING, b"cairn:admin"),
                attribute(&[0x55, 0x04, 0x0b], BMP_STRING, &[0, b'x']),
            ]),
        ]
        .concat();
        for end in 0..name.len() {
            let _ = Subject::parse(&name[..end]).map(|s| s.to_string());
        }
        for i in 0..name.len() {
            for b in [0x00, 0x01, 0x1f, 0x30, 0x7f, 0x80, 0x81, 0x82, 0xff] {
                let mut damaged = name.clone();
                damaged[i] = b;
                let _ = Subject::parse(&damaged).map(|s| s.to_string());
            }
        }
    }
}
