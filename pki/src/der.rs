//! The parts of an X.509 certificate Cairn reads, from its DER, with a reader written for just
//! that (RFC 5280, section 4.1). A general X.509 parser costs the device binary about 97 KiB
//! for the handful of fields the device looks at once per boot (its kept server certificate).
//!
//! Lengths are checked against the input at every step; anything not understood is an error,
//! never a guess. Extensions other than the ones below are skipped.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

const BOOLEAN: u8 = 0x01;
const INTEGER: u8 = 0x02;
const BIT_STRING: u8 = 0x03;
const OCTET_STRING: u8 = 0x04;
const OID: u8 = 0x06;
const UTC_TIME: u8 = 0x17;
const GENERALIZED_TIME: u8 = 0x18;
const SEQUENCE: u8 = 0x30;
const SET: u8 = 0x31;
const VERSION: u8 = 0xa0;
const EXTENSIONS: u8 = 0xa3;

pub const OID_COMMON_NAME: &[u8] = &[0x55, 0x04, 0x03];
pub const OID_ORGANIZATION: &[u8] = &[0x55, 0x04, 0x0a];
const OID_SUBJECT_KEY_ID: &[u8] = &[0x55, 0x1d, 0x0e];
const OID_KEY_USAGE: &[u8] = &[0x55, 0x1d, 0x0f];
const OID_SUBJECT_ALT_NAME: &[u8] = &[0x55, 0x1d, 0x11];
const OID_BASIC_CONSTRAINTS: &[u8] = &[0x55, 0x1d, 0x13];
const OID_AUTHORITY_KEY_ID: &[u8] = &[0x55, 0x1d, 0x23];
const OID_EXT_KEY_USAGE: &[u8] = &[0x55, 0x1d, 0x25];
/// id-kp-serverAuth, 1.3.6.1.5.5.7.3.1, and id-kp-clientAuth, .2.
pub const OID_SERVER_AUTH: &[u8] = &[0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x03, 0x01];
pub const OID_CLIENT_AUTH: &[u8] = &[0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x03, 0x02];
/// ecdsa-with-SHA256, 1.2.840.10045.4.3.2: what Cairn's CAs sign with.
pub const OID_ECDSA_SHA256: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x02];

/// What is wrong with the DER, for [`crate::Error::Parse`].
pub type Malformed = String;

/// One attribute of a Name: its type, the string's DER tag and its bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attribute<'a> {
    pub oid: &'a [u8],
    pub tag: u8,
    pub value: &'a [u8],
}

/// The fields of a certificate that Cairn reads.
#[derive(Debug, Clone)]
pub struct Cert<'a> {
    /// The whole TBSCertificate, tag and length included: what the signature covers.
    pub tbs: &'a [u8],
    pub signature_algorithm: &'a [u8],
    pub signature: &'a [u8],
    /// The issuer's and subject's Name, tag and length included.
    pub issuer: &'a [u8],
    pub subject: &'a [u8],
    pub not_before: SystemTime,
    pub not_after: SystemTime,
    /// The whole SubjectPublicKeyInfo, tag and length included.
    pub spki: &'a [u8],
    /// The subject public key's bits (for EC keys, the point).
    pub public_key: &'a [u8],
    pub subject_key_id: Option<&'a [u8]>,
    pub authority_key_id: Option<&'a [u8]>,
    pub is_ca: bool,
    /// The keyUsage bits (bit 0 is digitalSignature), when present.
    pub key_usage: Option<u16>,
    /// extendedKeyUsage purposes, when present.
    pub ext_key_usage: Option<Vec<&'a [u8]>>,
    /// iPAddress entries of subjectAltName (4 or 16 bytes each).
    pub san_ips: Vec<&'a [u8]>,
}

/// One TLV off the front of `input`: (tag, value, the whole TLV).
fn tlv<'a>(input: &mut &'a [u8]) -> Result<(u8, &'a [u8], &'a [u8]), Malformed> {
    let all = *input;
    let (&tag, rest) = all.split_first().ok_or("truncated (no tag)")?;
    let (&first, mut rest) = rest.split_first().ok_or("truncated (no length)")?;
    let len = if first < 0x80 {
        usize::from(first)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return Err("a length DER does not allow".into());
        }
        let bytes = &rest[..n];
        rest = &rest[n..];
        let len = bytes
            .iter()
            .fold(0usize, |acc, &b| (acc << 8) | usize::from(b));
        // The shortest form only: no leading zero byte, no long form for a short length.
        if bytes[0] == 0 || len < 0x80 {
            return Err("a length DER does not allow".into());
        }
        len
    };
    if rest.len() < len {
        return Err(format!("truncated (tag {tag:#04x} wants {len} bytes)"));
    }
    let header = all.len() - rest.len();
    *input = &rest[len..];
    Ok((tag, &rest[..len], &all[..header + len]))
}

fn expect<'a>(input: &mut &'a [u8], want: u8) -> Result<&'a [u8], Malformed> {
    let (tag, value, _) = tlv(input)?;
    if tag != want {
        return Err(format!("expected tag {want:#04x}, found {tag:#04x}"));
    }
    Ok(value)
}

fn whole<'a>(input: &mut &'a [u8], want: u8) -> Result<&'a [u8], Malformed> {
    let (tag, _, all) = tlv(input)?;
    if tag != want {
        return Err(format!("expected tag {want:#04x}, found {tag:#04x}"));
    }
    Ok(all)
}

/// The attributes of a Name (each RelativeDistinguishedName must hold exactly one).
pub fn attributes(name: &[u8]) -> Result<Vec<Attribute<'_>>, Malformed> {
    let mut outer = name;
    let mut rdns = expect(&mut outer, SEQUENCE)?;
    let mut out = Vec::new();
    while !rdns.is_empty() {
        let mut set = expect(&mut rdns, SET)?;
        let mut pair = expect(&mut set, SEQUENCE)?;
        if !set.is_empty() {
            return Err("a name part with more than one attribute".into());
        }
        let oid = expect(&mut pair, OID)?;
        let (tag, value, _) = tlv(&mut pair)?;
        out.push(Attribute { oid, tag, value });
    }
    Ok(out)
}

/// RFC 4514-style text of a Name for messages: `CN=…, O=…` (other types by dotted OID).
pub fn name_text(name: &[u8]) -> String {
    let Ok(attrs) = attributes(name) else {
        return "(unreadable name)".into();
    };
    attrs
        .iter()
        .map(|a| {
            let key = match a.oid {
                OID_COMMON_NAME => "CN".to_string(),
                OID_ORGANIZATION => "O".to_string(),
                [0x55, 0x04, 0x0b] => "OU".to_string(),
                [0x55, 0x04, 0x06] => "C".to_string(),
                other => dotted(other),
            };
            format!("{key}={}", escaped(&String::from_utf8_lossy(a.value)))
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// A name's value for a one-line message: control characters and backslashes escaped.
fn escaped(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => out.push_str(&format!("\\x{:02x}", u32::from(c))),
            c => out.push(c),
        }
    }
    out
}

fn dotted(oid: &[u8]) -> String {
    let mut arcs = Vec::new();
    let mut v: u64 = 0;
    for &b in oid {
        v = (v << 7) | u64::from(b & 0x7f);
        if b & 0x80 == 0 {
            if arcs.is_empty() {
                let first = (v / 40).min(2);
                arcs.push(first);
                arcs.push(v - first * 40);
            } else {
                arcs.push(v);
            }
            v = 0;
        }
    }
    arcs.iter()
        .map(u64::to_string)
        .collect::<Vec<_>>()
        .join(".")
}

/// A UTCTime or GeneralizedTime (`Z` only, no fractions), as certificates must write them.
fn time(input: &mut &[u8]) -> Result<SystemTime, Malformed> {
    let (tag, value, _) = tlv(input)?;
    let text = std::str::from_utf8(value).map_err(|_| "a time that is not text")?;
    let digits = text.strip_suffix('Z').ok_or("a time not in UTC (no Z)")?;
    if !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("time {text:?}"));
    }
    let n = |s: &str| s.parse::<i64>().map_err(|_| format!("time {text:?}"));
    let (year, rest) = match (tag, digits.len()) {
        (UTC_TIME, 12) => {
            let yy = n(&digits[..2])?;
            (if yy >= 50 { 1900 + yy } else { 2000 + yy }, &digits[2..])
        }
        (GENERALIZED_TIME, 14) => (n(&digits[..4])?, &digits[4..]),
        _ => return Err(format!("time {text:?}")),
    };
    let (month, day) = (n(&rest[..2])?, n(&rest[2..4])?);
    let (h, m, s) = (n(&rest[4..6])?, n(&rest[6..8])?, n(&rest[8..10])?);
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || h > 23 || m > 59 || s > 60 {
        return Err(format!("time {text:?}"));
    }
    // Days from 1970-01-01 to the civil date (Howard Hinnant's algorithm).
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400 + h * 3600 + m * 60 + s;
    let d = Duration::from_secs(secs.unsigned_abs());
    Ok(if secs >= 0 {
        UNIX_EPOCH + d
    } else {
        UNIX_EPOCH - d
    })
}

/// A BIT STRING's bits, which must be whole bytes.
fn bits<'a>(input: &mut &'a [u8]) -> Result<&'a [u8], Malformed> {
    let value = expect(input, BIT_STRING)?;
    match value.split_first() {
        Some((0, rest)) => Ok(rest),
        _ => Err("a bit string that is not whole bytes".into()),
    }
}

impl<'a> Cert<'a> {
    /// Parses a whole certificate; bytes after it are an error.
    pub fn parse(der: &'a [u8]) -> Result<Cert<'a>, Malformed> {
        let mut input = der;
        let mut cert = expect(&mut input, SEQUENCE)?;
        if !input.is_empty() {
            return Err(format!("{} bytes follow the certificate", input.len()));
        }
        let tbs = whole(&mut cert, SEQUENCE)?;
        let mut alg = expect(&mut cert, SEQUENCE)?;
        let signature_algorithm = expect(&mut alg, OID)?;
        let signature = bits(&mut cert)?;
        if !cert.is_empty() {
            return Err("extra fields after the signature".into());
        }

        let mut t = tbs;
        let mut t = expect(&mut t, SEQUENCE)?;
        if t.first() == Some(&VERSION) {
            expect(&mut t, VERSION)?;
        }
        expect(&mut t, INTEGER)?;
        expect(&mut t, SEQUENCE)?;
        let issuer = whole(&mut t, SEQUENCE)?;
        let mut validity = expect(&mut t, SEQUENCE)?;
        let not_before = time(&mut validity)?;
        let not_after = time(&mut validity)?;
        let subject = whole(&mut t, SEQUENCE)?;
        let spki = whole(&mut t, SEQUENCE)?;
        let public_key = {
            let mut s = spki;
            let mut s = expect(&mut s, SEQUENCE)?;
            expect(&mut s, SEQUENCE)?;
            bits(&mut s)?
        };
        let mut out = Cert {
            tbs,
            signature_algorithm,
            signature,
            issuer,
            subject,
            not_before,
            not_after,
            spki,
            public_key,
            subject_key_id: None,
            authority_key_id: None,
            is_ca: false,
            key_usage: None,
            ext_key_usage: None,
            san_ips: Vec::new(),
        };
        while !t.is_empty() {
            let (tag, value, _) = tlv(&mut t)?;
            if tag == EXTENSIONS {
                let mut v = value;
                out.extensions(expect(&mut v, SEQUENCE)?)?;
            }
        }
        Ok(out)
    }

    fn extensions(&mut self, mut list: &'a [u8]) -> Result<(), Malformed> {
        while !list.is_empty() {
            let mut ext = expect(&mut list, SEQUENCE)?;
            let oid = expect(&mut ext, OID)?;
            if ext.first() == Some(&BOOLEAN) {
                expect(&mut ext, BOOLEAN)?;
            }
            let mut value = expect(&mut ext, OCTET_STRING)?;
            match oid {
                OID_SUBJECT_KEY_ID => self.subject_key_id = Some(expect(&mut value, OCTET_STRING)?),
                OID_AUTHORITY_KEY_ID => {
                    let mut aki = expect(&mut value, SEQUENCE)?;
                    while !aki.is_empty() {
                        let (tag, v, _) = tlv(&mut aki)?;
                        // [0] IMPLICIT KeyIdentifier
                        if tag == 0x80 {
                            self.authority_key_id = Some(v);
                        }
                    }
                }
                OID_BASIC_CONSTRAINTS => {
                    let mut bc = expect(&mut value, SEQUENCE)?;
                    if bc.first() == Some(&BOOLEAN) {
                        self.is_ca = expect(&mut bc, BOOLEAN)? == [0xff];
                    }
                }
                OID_KEY_USAGE => {
                    let v = expect(&mut value, BIT_STRING)?;
                    let mut usage = 0u16;
                    for (i, &b) in v.iter().skip(1).take(2).enumerate() {
                        for bit in 0..8 {
                            if b & (0x80 >> bit) != 0 {
                                usage |= 1 << (i * 8 + bit);
                            }
                        }
                    }
                    self.key_usage = Some(usage);
                }
                OID_EXT_KEY_USAGE => {
                    let mut seq = expect(&mut value, SEQUENCE)?;
                    let mut purposes = Vec::new();
                    while !seq.is_empty() {
                        purposes.push(expect(&mut seq, OID)?);
                    }
                    self.ext_key_usage = Some(purposes);
                }
                OID_SUBJECT_ALT_NAME => {
                    let mut names = expect(&mut value, SEQUENCE)?;
                    while !names.is_empty() {
                        let (tag, v, _) = tlv(&mut names)?;
                        // [7] IMPLICIT OCTET STRING: iPAddress
                        if tag == 0x87 {
                            self.san_ips.push(v);
                        }
                    }
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// The first value of attribute `oid` in the subject, as text.
    pub fn subject_attr(&self, oid: &[u8]) -> Result<Option<String>, Malformed> {
        Ok(attributes(self.subject)?
            .into_iter()
            .find(|a| a.oid == oid)
            .map(|a| String::from_utf8_lossy(a.value).into_owned()))
    }

    /// Whether the extendedKeyUsage lists `purpose`.
    pub fn has_purpose(&self, purpose: &[u8]) -> bool {
        self.ext_key_usage
            .as_ref()
            .is_some_and(|p| p.contains(&purpose))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_and_lengths() {
        let at = |der: &[u8]| time(&mut &der[..]);
        let utc = [&[UTC_TIME, 13][..], b"261207000608Z"].concat();
        assert_eq!(
            at(&utc).unwrap(),
            UNIX_EPOCH + Duration::from_secs(1_796_601_968)
        );
        let gen = [&[GENERALIZED_TIME, 15][..], b"20000229000000Z"].concat();
        assert_eq!(
            at(&gen).unwrap(),
            UNIX_EPOCH + Duration::from_secs(951_782_400)
        );
        let local = [&[UTC_TIME, 12][..], b"261207000608"].concat();
        assert!(at(&local).is_err());
        // Long form where the short form fits, and a length past the input.
        assert!(tlv(&mut &[0x30, 0x81, 0x05, 1, 2, 3, 4, 5][..]).is_err());
        assert!(tlv(&mut &[0x30, 0x82, 0x00, 0x85][..]).is_err());
        let long = [&[0x04, 0x81, 0x80][..], &[7u8; 0x80]].concat();
        let (tag, value, all) = tlv(&mut &long[..]).unwrap();
        assert_eq!((tag, value.len(), all.len()), (0x04, 0x80, 0x83));
        assert!(tlv(&mut &[0x30, 0x05, 1, 2][..]).is_err());
        assert_eq!(dotted(OID_SERVER_AUTH), "1.3.6.1.5.5.7.3.1");
        // Found by the cert_der fuzz target: a name value with a line break stays on one line.
        assert_eq!(escaped("cair\n\0min\\"), "cair\\x0a\\x00min\\\\");
    }
}
