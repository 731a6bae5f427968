//! The `cairn.*` keys of the kernel command line (`/proc/cmdline`).
//!
//! | key | value | default |
//! |---|---|---|
//! | `cairn.slot` | `a` or `b`: which root (`ROOT-A`/`ROOT-B`) to boot | required |
//! | `cairn.fatal_delay` | seconds to show a fatal error before rebooting (0..=3600) | 5 |
//!
//! Words are split like the kernel does: on whitespace outside double quotes, with the quotes
//! removed (`k="a b"` is `k` = `a b`). A repeated key takes its last value. Unknown `cairn.*` keys
//! and unparsable optional values are reported as warnings, never fatal: a typo in a boot entry
//! must not stop a slot from booting. A missing or bad slot is fatal (see [`Cmdline::slot`]).

use std::time::Duration;

use crate::error::{Error, Result};

pub const DEFAULT_FATAL_DELAY: Duration = Duration::from_secs(5);
const MAX_FATAL_DELAY_S: u64 = 3600;

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
            Self::A => "ROOT-A",
            Self::B => "ROOT-B",
        }
    }
}

/// What init takes from the command line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cmdline {
    slot: Option<String>,
    pub fatal_delay: Duration,
    /// Human-readable problems to log (unknown keys, bad optional values).
    pub warnings: Vec<String>,
}

impl Cmdline {
    /// Parses the whole command line. Never fails; see [`Cmdline::slot`].
    pub fn parse(cmdline: &str) -> Self {
        let mut out = Self {
            slot: None,
            fatal_delay: DEFAULT_FATAL_DELAY,
            warnings: Vec::new(),
        };
        for word in split(cmdline) {
            let Some(key) = word.strip_prefix("cairn.") else {
                continue;
            };
            let (key, value) = key.split_once('=').unwrap_or((key, ""));
            match key {
                "slot" => out.slot = Some(value.to_owned()),
                "fatal_delay" => match value.parse::<u64>() {
                    Ok(s) if s <= MAX_FATAL_DELAY_S => out.fatal_delay = Duration::from_secs(s),
                    _ => out.warnings.push(format!(
                        "ignoring cairn.fatal_delay={value:?} (want 0..={MAX_FATAL_DELAY_S} \
                         seconds); using {} s",
                        DEFAULT_FATAL_DELAY.as_secs()
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

        let c = Cmdline::parse("cairn.slot=b cairn.fatal_delay=30");
        assert_eq!(c.slot().unwrap(), Slot::B);
        assert_eq!(c.slot().unwrap().root_partition(), "ROOT-B");
        assert_eq!(c.fatal_delay, Duration::from_secs(30));
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
