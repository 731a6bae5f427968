//! The `cairn.*` keys of the kernel command line (`/proc/cmdline`).
//!
//! | key | value | default |
//! |---|---|---|
//! | `cairn.slot` | `a` or `b`: which root (`ROOT-A`/`ROOT-B`) to boot | required |
//! | `cairn.roothash` | the root's dm-verity root hash: 64 lowercase hex digits | required |
//! | `cairn.hashoffset` | byte offset of the verity superblock in the root partition | required |
//! | `cairn.ext.roothash` | the containers extension's dm-verity root hash (64 lowercase hex) | no extension |
//! | `cairn.ext.offset` | byte offset of the extension in the root partition (multiple of 4096) | with the hash |
//! | `cairn.ext.hashoffset` | byte offset of its verity superblock from the extension's start | with the hash |
//! | `cairn.fatal_delay` | seconds to show a fatal error before rebooting (0..=3600) | 5 |
//! | `cairn.module_workers` | kernel modules stage 1 loads at once (1..=64) | one per CPU |
//!
//! Words are split like the kernel does: on whitespace outside double quotes, with the quotes
//! removed (`k="a b"` is `k` = `a b`). A repeated key takes its last value. Unknown `cairn.*` keys
//! and unparsable optional values are reported as warnings, never fatal: a typo in a boot entry
//! must not stop a slot from booting. A missing or bad slot, root hash or hash offset is fatal
//! (see [`Cmdline::slot`] and [`Cmdline::verity`]): there is no way to boot an unverified root.
//! The hash offset is plain decimal (no sign, no leading zero) and a nonzero multiple of 4096;
//! uppercase hex in the root hash is refused rather than folded: the image builder never writes
//! it, so such a line did not come from it.

use std::time::Duration;

use cairn_facts::layout::label;

use crate::error::{Error, Result};
use crate::verity::{RootHash, BLOCK_SIZE};

pub const DEFAULT_FATAL_DELAY: Duration = Duration::from_secs(5);
const MAX_FATAL_DELAY_S: u64 = 3600;
/// Bad values are quoted in errors up to this many characters.
const MAX_QUOTED: usize = 80;

/// A root filesystem slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Slot {
    A,
    B,
}

impl Slot {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "a" => Some(Self::A),
            "b" => Some(Self::B),
            _ => None,
        }
    }

    /// `a` or `b`, as on the command line and in the ready line.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::A => "a",
            Self::B => "b",
        }
    }

    /// GPT partition name of this slot's root filesystem.
    pub fn root_partition(self) -> &'static str {
        match self {
            Self::A => label::ROOT_A,
            Self::B => label::ROOT_B,
        }
    }
}

/// Where the root's dm-verity hash tree is and what it must hash to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RootVerity {
    pub root_hash: RootHash,
    /// Byte offset of the verity superblock in the root partition; a multiple of 4096.
    pub hash_offset: u64,
}

/// What init takes from the command line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cmdline {
    slot: Option<String>,
    root_hash: Option<String>,
    hash_offset: Option<String>,
    ext_root_hash: Option<String>,
    ext_offset: Option<String>,
    ext_hash_offset: Option<String>,
    pub fatal_delay: Duration,
    /// Modules loaded at once, when the command line sets it.
    pub module_workers: Option<usize>,
    /// Human-readable problems to log (unknown keys, bad optional values).
    pub warnings: Vec<String>,
}

impl Cmdline {
    /// Parses the whole command line. Never fails; see [`Cmdline::slot`].
    pub fn parse(cmdline: &str) -> Self {
        let mut out = Self {
            slot: None,
            root_hash: None,
            hash_offset: None,
            ext_root_hash: None,
            ext_offset: None,
            ext_hash_offset: None,
            fatal_delay: DEFAULT_FATAL_DELAY,
            module_workers: None,
            warnings: Vec::new(),
        };
        for word in split(cmdline) {
            let Some(key) = word.strip_prefix("cairn.") else {
                continue;
            };
            let (key, value) = key.split_once('=').unwrap_or((key, ""));
            match key {
                "slot" => out.slot = Some(value.to_owned()),
                "roothash" => out.root_hash = Some(value.to_owned()),
                "hashoffset" => out.hash_offset = Some(value.to_owned()),
                "ext.roothash" => out.ext_root_hash = Some(value.to_owned()),
                "ext.offset" => out.ext_offset = Some(value.to_owned()),
                "ext.hashoffset" => out.ext_hash_offset = Some(value.to_owned()),
                "fatal_delay" => match value.parse::<u64>() {
                    Ok(s) if s <= MAX_FATAL_DELAY_S => out.fatal_delay = Duration::from_secs(s),
                    _ => out.warnings.push(format!(
                        "ignoring cairn.fatal_delay={value:?} (want 0..={MAX_FATAL_DELAY_S} \
                         seconds); using {} s",
                        DEFAULT_FATAL_DELAY.as_secs()
                    )),
                },
                "module_workers" => match value.parse::<usize>() {
                    Ok(n @ 1..=64) => out.module_workers = Some(n),
                    _ => out.warnings.push(format!(
                        "ignoring cairn.module_workers={value:?} (want 1..=64); loading one \
                         module per CPU at once"
                    )),
                },
                _ => out
                    .warnings
                    .push(format!("ignoring unknown kernel parameter cairn.{key}")),
            }
        }
        out
    }

    /// The slot to boot: `cairn.slot=` must be present and `a` or `b`.
    pub fn slot(&self) -> Result<Slot> {
        let value = self.slot.as_deref().ok_or(Error::MissingSlot)?;
        Slot::parse(value).ok_or_else(|| Error::BadSlot {
            value: value.to_owned(),
        })
    }

    /// The root's verity parameters: `cairn.roothash=` and `cairn.hashoffset=` must both be
    /// present and valid.
    pub fn verity(&self) -> Result<RootVerity> {
        let value = self.root_hash.as_deref().ok_or(Error::MissingRootHash)?;
        let root_hash = RootHash::parse(value).map_err(|reason| Error::BadRootHash {
            value: quote_limited(value),
            reason,
        })?;
        let value = self
            .hash_offset
            .as_deref()
            .ok_or(Error::MissingHashOffset)?;
        let hash_offset = parse_hash_offset(value).map_err(|reason| Error::BadHashOffset {
            value: quote_limited(value),
            reason: reason.to_owned(),
        })?;
        Ok(RootVerity {
            root_hash,
            hash_offset,
        })
    }
}

/// Where the containers extension is in the root partition and what it must hash to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExtVerity {
    /// Byte offset of the extension in the root partition; a multiple of 4096.
    pub offset: u64,
    /// The extension's verity parameters, relative to its start.
    pub verity: RootVerity,
}

impl Cmdline {
    /// The containers extension: `None` when the command line names none (no
    /// `cairn.ext.*`), else its parameters or why they are unusable. Never fatal to the boot.
    pub fn extension(&self) -> Option<std::result::Result<ExtVerity, String>> {
        if self.ext_root_hash.is_none()
            && self.ext_offset.is_none()
            && self.ext_hash_offset.is_none()
        {
            return None;
        }
        let get = |v: &Option<String>, key: &str| {
            v.clone().ok_or_else(|| format!("cairn.{key} is missing"))
        };
        let parse = || -> std::result::Result<ExtVerity, String> {
            let hash = get(&self.ext_root_hash, "ext.roothash")?;
            let root_hash = RootHash::parse(&hash).map_err(|reason| {
                format!(
                    "cairn.ext.roothash={:?} is unusable: {reason}",
                    quote_limited(&hash)
                )
            })?;
            let number = |v: &Option<String>, key: &str| {
                let text = get(v, key)?;
                parse_hash_offset(&text).map_err(|reason| {
                    format!(
                        "cairn.{key}={:?} is unusable: {reason}",
                        quote_limited(&text)
                    )
                })
            };
            Ok(ExtVerity {
                offset: number(&self.ext_offset, "ext.offset")?,
                verity: RootVerity {
                    root_hash,
                    hash_offset: number(&self.ext_hash_offset, "ext.hashoffset")?,
                },
            })
        };
        Some(parse())
    }
}

/// Plain decimal, as the image builder writes it: no sign, no leading zero, no separators.
fn parse_hash_offset(value: &str) -> std::result::Result<u64, &'static str> {
    if value.is_empty() {
        return Err("it is empty");
    }
    if !value.bytes().all(|b| b.is_ascii_digit()) {
        return Err("it is not a decimal number");
    }
    if value.starts_with('0') {
        return Err("it is zero or has a leading zero");
    }
    let offset: u64 = value.parse().map_err(|_| "it does not fit in 64 bits")?;
    if !offset.is_multiple_of(BLOCK_SIZE) {
        return Err("it is not a multiple of 4096");
    }
    Ok(offset)
}

/// `value`, cut to [`MAX_QUOTED`] characters so that one bad word cannot flood the console.
fn quote_limited(value: &str) -> String {
    let mut chars = value.chars();
    let mut out: String = chars.by_ref().take(MAX_QUOTED).collect();
    if chars.next().is_some() {
        out.push('…');
    }
    out
}

/// Splits a command line into words: whitespace outside double quotes separates, quotes vanish.
pub fn split(cmdline: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut cur = String::new();
    let mut in_word = false;
    let mut quoted = false;
    for c in cmdline.chars() {
        match c {
            '"' => {
                quoted = !quoted;
                in_word = true;
            }
            c if c.is_whitespace() && !quoted => {
                if in_word {
                    words.push(std::mem::take(&mut cur));
                    in_word = false;
                }
            }
            c => {
                cur.push(c);
                in_word = true;
            }
        }
    }
    if in_word {
        words.push(cur);
    }
    words
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn good_cmdline() {
        let c = Cmdline::parse("console=ttyAMA0 quiet panic=5 cairn.slot=a\n");
        assert_eq!(c.slot().unwrap(), Slot::A);
        assert_eq!(c.fatal_delay, DEFAULT_FATAL_DELAY);
        assert!(c.warnings.is_empty());

        let c = Cmdline::parse("cairn.module_workers=1 cairn.module_workers=0");
        assert_eq!(c.module_workers, Some(1));
        assert!(c.warnings[0].starts_with("ignoring cairn.module_workers=\"0\""));
        assert_eq!(Cmdline::parse("cairn.slot=a").module_workers, None);
        let c = Cmdline::parse("cairn.slot=b cairn.fatal_delay=30");
        assert_eq!(c.slot().unwrap(), Slot::B);
        assert_eq!(c.slot().unwrap().root_partition(), "ROOT-B");
        assert_eq!(c.fatal_delay, Duration::from_secs(30));
    }

    const HASH: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn extension_parameters() {
        let c = Cmdline::parse(&format!(
            "cairn.slot=a cairn.ext.roothash={HASH} cairn.ext.offset=2871296 \
             cairn.ext.hashoffset=40009728"
        ));
        assert!(c.warnings.is_empty(), "{:?}", c.warnings);
        let e = c.extension().unwrap().unwrap();
        assert_eq!(e.offset, 2871296);
        assert_eq!(e.verity.hash_offset, 40009728);
        assert_eq!(e.verity.root_hash.to_string(), HASH);
        assert_eq!(Cmdline::parse("cairn.slot=a").extension(), None);
        let err = Cmdline::parse(&format!("cairn.ext.roothash={HASH} cairn.ext.offset=4096"))
            .extension()
            .unwrap()
            .unwrap_err();
        assert_eq!(err, "cairn.ext.hashoffset is missing");
        let err = Cmdline::parse(&format!(
            "cairn.ext.roothash={HASH} cairn.ext.offset=4097 cairn.ext.hashoffset=4096"
        ))
        .extension()
        .unwrap()
        .unwrap_err();
        assert!(err.contains("not a multiple of 4096"), "{err}");
        let err =
            Cmdline::parse("cairn.ext.roothash=ab cairn.ext.offset=4096 cairn.ext.hashoffset=4096")
                .extension()
                .unwrap()
                .unwrap_err();
        assert!(err.contains("2 characters"), "{err}");
    }

    #[test]
    fn verity_parameters() {
        let c = Cmdline::parse(&format!(
            "cairn.slot=a cairn.roothash={HASH} cairn.hashoffset=8192"
        ));
        let v = c.verity().unwrap();
        assert_eq!(v.root_hash.to_string(), HASH);
        assert_eq!(v.hash_offset, 8192);
        assert!(c.warnings.is_empty(), "{:?}", c.warnings);
        let big = Cmdline::parse(&format!(
            "cairn.roothash={HASH} cairn.hashoffset=18446744073709547520"
        ));
        assert_eq!(big.verity().unwrap().hash_offset, u64::MAX - 4095);
    }

    #[test]
    fn missing_verity_parameters() {
        let err = Cmdline::parse("cairn.slot=a cairn.hashoffset=8192")
            .verity()
            .unwrap_err();
        assert!(matches!(err, Error::MissingRootHash));
        assert_eq!(
            err.to_string(),
            "cairn.roothash is missing: refusing to mount an unverified root"
        );
        let err = Cmdline::parse(&format!("cairn.slot=a cairn.roothash={HASH}"))
            .verity()
            .unwrap_err();
        assert!(matches!(err, Error::MissingHashOffset), "{err}");
    }

    #[test]
    fn bad_root_hash() {
        let bad = |v: &str| {
            Cmdline::parse(&format!("cairn.roothash={v} cairn.hashoffset=4096"))
                .verity()
                .unwrap_err()
                .to_string()
        };
        assert_eq!(
            bad(&HASH[1..]),
            format!(
                "kernel command line has cairn.roothash={:?}: it has 63 characters; expected \
                 the 64 lowercase hex digits of the root's dm-verity root hash",
                &HASH[1..]
            )
        );
        assert!(
            bad(&HASH.to_uppercase()).contains(": 'A' at position 11 is uppercase;"),
            "{}",
            bad(&HASH.to_uppercase())
        );
        assert!(bad(&HASH.replace('7', "x")).contains("'x' at position 8 is not a hex digit"));
        assert!(bad("").contains("it has 0 characters"));
        // A bare key has an empty value.
        let err = Cmdline::parse("cairn.roothash cairn.hashoffset=4096").verity();
        assert!(matches!(err, Err(Error::BadRootHash { .. })));
        // A huge value is quoted only in part.
        let line = bad(&"f".repeat(5000));
        assert!(line.len() < 300, "{line}");
        assert!(line.contains("it has 5000 characters"), "{line}");
    }

    #[test]
    fn bad_hash_offset() {
        let bad =
            |v: &str| match Cmdline::parse(&format!("cairn.roothash={HASH} cairn.hashoffset={v}"))
                .verity()
            {
                Err(Error::BadHashOffset { reason, .. }) => reason,
                other => panic!("{v:?}: {other:?}"),
            };
        assert_eq!(bad(""), "it is empty");
        assert_eq!(bad("0"), "it is zero or has a leading zero");
        assert_eq!(bad("08192"), "it is zero or has a leading zero");
        assert_eq!(bad("+8192"), "it is not a decimal number");
        assert_eq!(bad("-4096"), "it is not a decimal number");
        assert_eq!(bad("0x2000"), "it is not a decimal number");
        assert_eq!(bad("8k"), "it is not a decimal number");
        assert_eq!(bad("8193"), "it is not a multiple of 4096");
        assert_eq!(bad("512"), "it is not a multiple of 4096");
        assert_eq!(bad("18446744073709551616"), "it does not fit in 64 bits");
        let err = Cmdline::parse(&format!("cairn.roothash={HASH} cairn.hashoffset=100"))
            .verity()
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "kernel command line has cairn.hashoffset=\"100\": it is not a multiple of 4096; \
             expected the decimal byte offset of the dm-verity superblock, a positive multiple of \
             4096"
        );
    }

    #[test]
    fn missing_slot() {
        let c = Cmdline::parse("console=ttyS0 quiet slot=a xcairn.slot=a");
        assert!(matches!(c.slot(), Err(Error::MissingSlot)));
        assert!(c.slot().unwrap_err().to_string().contains("cairn.slot=a"));
    }

    #[test]
    fn bad_slot() {
        for bad in ["cairn.slot=c", "cairn.slot=A", "cairn.slot=", "cairn.slot"] {
            let err = Cmdline::parse(bad).slot().unwrap_err();
            assert!(matches!(err, Error::BadSlot { .. }), "{bad}: {err}");
        }
        let err = Cmdline::parse("cairn.slot=ab").slot().unwrap_err();
        assert_eq!(
            err.to_string(),
            "kernel command line has cairn.slot=\"ab\"; expected a or b"
        );
    }

    #[test]
    fn last_value_wins() {
        assert_eq!(
            Cmdline::parse("cairn.slot=a cairn.slot=b").slot().unwrap(),
            Slot::B
        );
    }

    #[test]
    fn quoted_args() {
        assert_eq!(split(r#"a "b c" d="e f"  g"#), ["a", "b c", "d=e f", "g"]);
        assert_eq!(split(r#"x="" y"#), ["x=", "y"]);
        let c = Cmdline::parse(r#"dyndbg="file x.c +p" "cairn.slot=b" cairn.fatal_delay="7""#);
        assert_eq!(c.slot().unwrap(), Slot::B);
        assert_eq!(c.fatal_delay, Duration::from_secs(7));
        // A quoted space does not leak a cairn key out of another parameter.
        let c = Cmdline::parse(r#"foo="bar cairn.slot=b" cairn.slot=a"#);
        assert_eq!(c.slot().unwrap(), Slot::A);
    }

    #[test]
    fn unknown_keys_and_bad_delay_warn() {
        let c = Cmdline::parse("cairn.slot=a cairn.colour=red cairn.fatal_delay=soon");
        assert_eq!(c.slot().unwrap(), Slot::A);
        assert_eq!(c.fatal_delay, DEFAULT_FATAL_DELAY);
        assert_eq!(c.warnings.len(), 2);
        assert!(c.warnings[0].contains("cairn.colour"));
        assert!(c.warnings[1].contains("cairn.fatal_delay=\"soon\""));
        let c = Cmdline::parse("cairn.slot=a cairn.fatal_delay=99999");
        assert_eq!(c.fatal_delay, DEFAULT_FATAL_DELAY);
        assert_eq!(c.warnings.len(), 1);
    }
}
