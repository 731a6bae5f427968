//! Boot Loader Specification Type #1 entries, as systemd-boot reads them: file names with their
//! boot counter, and contents.
//!
//! Boot counting lives in the entry's file name: `cairn-2-b+3-0.conf` has 3 tries left and 0
//! done. systemd-boot renames the file before each boot it makes from it (`+2-1`, ...); an entry
//! with `+0-N` is "bad" and sorted last; an entry without the counter is "good". How Cairn names
//! and changes its entries is [`crate::sdboot`]'s business.

use std::fmt::Write as _;

use crate::Error;

/// The boot counter carried in an entry's file name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Counter {
    pub left: u32,
    pub done: u32,
}

/// A parsed entry file name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntryName {
    /// The entry id without the counter and without `.conf`.
    pub id: String,
    pub counter: Option<Counter>,
}

impl EntryName {
    pub fn new(id: impl Into<String>, counter: Option<Counter>) -> Self {
        EntryName {
            id: id.into(),
            counter,
        }
    }

    /// Parses `id[+left[-done]].conf`.
    pub fn parse(file_name: &str) -> Result<Self, Error> {
        Self::parse_with_suffix(file_name, ".conf")
    }

    /// Parses `id[+left[-done]]<suffix>`: `.conf` for a Type #1 entry, `.efi` for a Type #2
    /// entry (a unified kernel image in `EFI/Linux/`), whose counter systemd-boot keeps and
    /// renames the same way.
    pub fn parse_with_suffix(file_name: &str, suffix: &str) -> Result<Self, Error> {
        let bad = || Error::BadEntryName(file_name.to_string());
        let stem = file_name.strip_suffix(suffix).ok_or_else(bad)?;
        let Some((id, count)) = stem.rsplit_once('+') else {
            return if stem.is_empty() {
                Err(bad())
            } else {
                Ok(EntryName::new(stem, None))
            };
        };
        let (left, done) = match count.split_once('-') {
            Some((l, d)) => (l, d),
            None => (count, "0"),
        };
        let num = |s: &str| {
            (!s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
                .then(|| s.parse::<u32>().ok())
                .flatten()
                .ok_or_else(bad)
        };
        if id.is_empty() {
            return Err(bad());
        }
        Ok(EntryName::new(
            id,
            Some(Counter {
                left: num(left)?,
                done: num(done)?,
            }),
        ))
    }

    pub fn file_name(&self) -> String {
        self.file_name_with_suffix(".conf")
    }

    pub fn file_name_with_suffix(&self, suffix: &str) -> String {
        match self.counter {
            Some(Counter { left, done }) => format!("{}+{left}-{done}{suffix}", self.id),
            None => format!("{}{suffix}", self.id),
        }
    }
}

/// The contents of one entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub title: String,
    pub version: String,
    /// Paths on the ESP, with a leading slash.
    pub linux: String,
    pub initrd: String,
    pub options: Vec<String>,
}

impl Entry {
    /// Renders the entry file. Fields are single lines; a line break would let one field
    /// inject another key, so it is refused.
    pub fn render(&self) -> Result<String, Error> {
        let mut out = String::new();
        let fields: [(&'static str, String); 5] = [
            ("title", self.title.clone()),
            ("version", self.version.clone()),
            ("linux", self.linux.clone()),
            ("initrd", self.initrd.clone()),
            ("options", self.options.join(" ")),
        ];
        for (key, value) in fields {
            if value.contains(['\n', '\r']) {
                return Err(Error::BadField { field: key });
            }
            let _ = writeln!(out, "{key} {value}");
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_counted_names() {
        let n = EntryName::parse("cairn-b+3-0.conf").unwrap();
        assert_eq!(n.id, "cairn-b");
        assert_eq!(n.counter, Some(Counter { left: 3, done: 0 }));
        assert_eq!(n.file_name(), "cairn-b+3-0.conf");
        let n = EntryName::parse("cairn-a+2.conf").unwrap();
        assert_eq!(n.counter, Some(Counter { left: 2, done: 0 }));
        let n = EntryName::parse("cairn-a.conf").unwrap();
        assert_eq!((n.id.as_str(), n.counter), ("cairn-a", None));
        let n = EntryName::parse_with_suffix("cairn-b+3-0.efi", ".efi").unwrap();
        assert_eq!(n.counter, Some(Counter { left: 3, done: 0 }));
        assert_eq!(n.file_name_with_suffix(".efi"), "cairn-b+3-0.efi");
        assert!(EntryName::parse("cairn-b+3-0.efi").is_err());
    }

    #[test]
    fn rejects_malformed_names() {
        for bad in [
            "cairn-a",
            "+3-0.conf",
            "cairn-a+x-0.conf",
            "cairn-a+3-.conf",
            ".conf",
        ] {
            assert!(EntryName::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn renders_entry_and_refuses_injection() {
        let mut e = Entry {
            title: "Cairn 0.1.0 (slot a)".into(),
            version: "0.1.0".into(),
            linux: "/EFI/cairn/a/vmlinuz".into(),
            initrd: "/EFI/cairn/a/initramfs.img".into(),
            options: vec!["console=ttyS0".into(), "cairn.slot=a".into()],
        };
        let text = e.render().unwrap();
        assert!(text.contains("\nlinux /EFI/cairn/a/vmlinuz\n"), "{text}");
        assert!(
            text.ends_with("options console=ttyS0 cairn.slot=a\n"),
            "{text}"
        );
        e.title = "x\noptions init=/bin/sh".into();
        assert!(matches!(
            e.render(),
            Err(Error::BadField { field: "title" })
        ));
    }
}
