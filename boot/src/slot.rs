//! The two slots of an A/B system.

use std::fmt;
use std::str::FromStr;

use cairn_facts::layout::label;

use crate::Error;

/// One of the two system slots. A slot is one unit: kernel, initramfs, root and its hash.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Slot {
    A,
    B,
}

impl Slot {
    pub const ALL: [Slot; 2] = [Slot::A, Slot::B];

    /// Lower-case name used on the kernel command line and in file names.
    pub fn name(self) -> &'static str {
        match self {
            Slot::A => "a",
            Slot::B => "b",
        }
    }

    /// GPT label of the slot's root partition.
    pub fn root_label(self) -> &'static str {
        match self {
            Slot::A => label::ROOT_A,
            Slot::B => label::ROOT_B,
        }
    }

    /// 0 for A, 1 for B: the slot's place in per-slot arrays.
    pub fn index(self) -> usize {
        match self {
            Slot::A => 0,
            Slot::B => 1,
        }
    }

    pub fn other(self) -> Slot {
        match self {
            Slot::A => Slot::B,
            Slot::B => Slot::A,
        }
    }
}

impl fmt::Display for Slot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Slot {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Error> {
        match s {
            "a" | "A" => Ok(Slot::A),
            "b" | "B" => Ok(Slot::B),
            _ => Err(Error::BadSlot(s.to_string())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_names() {
        assert_eq!("a".parse::<Slot>().unwrap(), Slot::A);
        assert_eq!("B".parse::<Slot>().unwrap(), Slot::B);
        assert!(matches!("c".parse::<Slot>(), Err(Error::BadSlot(s)) if s == "c"));
        assert_eq!(Slot::A.other().root_label(), "ROOT-B");
    }
}
