//! What the daemon's fuzz targets feed `cairn-daemon`, and the seed corpus they start from.
//!
//! The one idea: the daemon mounts and formats what a uevent names, so an accepted event must
//! say exactly what its bytes say and name a device node only inside /dev. `uevent`: the
//! input is one datagram. For an accepted event: the header's action and path are the
//! event's, every variable is one of the message's `KEY=value` fields, at most `MAX_KEYS` of
//! them, the well-known fields agree with the variables, and `dev_node` is a plain path under
//! /dev. Errors are one line.
//!
//! `eventlog`: the input is an event log file as a power cut or a damaged STATE may leave it.
//! The whole records read back are exactly a prefix of the file (framing them again gives its
//! bytes), each within the record limit, and reading that prefix alone gives the same records
//! with nothing torn.

use std::path::{Component, Path};

use cairn_daemon::eventlog;
use cairn_daemon::uevent::{Uevent, MAX_KEYS, MAX_MESSAGE};

/// Parses `bytes` as an event log and checks that what reads back is a whole prefix of it.
pub fn check_eventlog(bytes: &[u8]) {
    let limits = eventlog::Limits::EVENTS;
    let contents = eventlog::parse(bytes, limits);
    assert_eq!(contents.valid_len + contents.torn, bytes.len() as u64);
    let prefix = &bytes[..contents.valid_len as usize];
    let framed: Vec<u8> = contents
        .records
        .iter()
        .flat_map(|r| {
            assert!(!r.is_empty() && r.len() <= limits.record);
            eventlog::frame(r)
        })
        .collect();
    assert_eq!(framed, prefix, "the records are not the file's prefix");
    let again = eventlog::parse(prefix, limits);
    assert_eq!(again.records, contents.records);
    assert_eq!(again.torn, 0);
}

/// Parses `msg` and checks what an accepted event promises.
pub fn check_uevent(msg: &[u8]) {
    let event = match Uevent::parse(msg) {
        Ok(Some(event)) => event,
        Ok(None) => {
            assert!(
                msg.starts_with(b"libudev\0"),
                "ignored without udev's magic"
            );
            return;
        }
        Err(e) => {
            let text = e.to_string();
            assert!(!text.contains(['\n', '\r']), "not one line: {text:?}");
            return;
        }
    };
    assert!(msg.len() <= MAX_MESSAGE);
    assert!(event.env.len() <= MAX_KEYS);
    assert_eq!(Uevent::parse(msg).ok().flatten().as_ref(), Some(&event));

    let mut fields = msg.split(|&b| b == 0);
    let header = String::from_utf8_lossy(fields.next().unwrap_or_default()).into_owned();
    assert_eq!(
        header,
        format!("{}@{}", event.action.as_str(), event.devpath),
        "the header is not ACTION@DEVPATH"
    );
    assert!(event.devpath.starts_with('/'));
    for (key, value) in &event.env {
        assert!(!key.is_empty());
        assert!(key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'));
        let field = format!("{key}={value}");
        assert!(
            fields
                .clone()
                .any(|f| String::from_utf8_lossy(f) == field.as_str()),
            "{field:?} is not a field of the message"
        );
    }
    for (key, known) in [
        ("ACTION", Some(event.action.as_str())),
        ("DEVPATH", Some(event.devpath.as_str())),
        ("SUBSYSTEM", event.subsystem.as_deref()),
        ("DEVNAME", event.devname.as_deref()),
        ("DEVTYPE", event.devtype.as_deref()),
    ] {
        if let Some(value) = event.get(key) {
            assert_eq!(Some(value), known, "{key}");
        } else if !matches!(key, "ACTION" | "DEVPATH") {
            assert_eq!(known, None, "{key}");
        }
    }
    assert_eq!(
        event.seqnum.map(|n| n.to_string()).is_some(),
        event.get("SEQNUM").is_some()
    );
    if let Some(node) = event.dev_node() {
        let rest = node.strip_prefix("/dev").expect("a node under /dev");
        assert!(rest != Path::new(""), "/dev itself");
        assert!(
            rest.components().all(|c| matches!(c, Component::Normal(_))),
            "{node:?} leaves /dev"
        );
    }
}

/// A uevent datagram: the header, then each variable, each ending in NUL.
fn datagram(action: &str, devpath: &str, vars: &[(&str, &str)]) -> Vec<u8> {
    let mut out = format!("{action}@{devpath}\0").into_bytes();
    for (key, value) in [("ACTION", action), ("DEVPATH", devpath)]
        .iter()
        .chain(vars)
    {
        out.extend_from_slice(format!("{key}={value}\0").as_bytes());
    }
    out
}

/// Event log seeds: whole logs, and the same cut short and with a damaged checksum.
fn eventlog_seeds() -> Vec<crate::Seed> {
    let whole: Vec<u8> = [
        &b"install 0.2.0 into b"[..],
        b"trial boot of b",
        b"rollback: probe",
    ]
    .iter()
    .flat_map(|r| eventlog::frame(r))
    .collect();
    let mut damaged = whole.clone();
    damaged[9] ^= 1;
    vec![
        ("eventlog", "whole".to_string(), whole.clone()),
        (
            "eventlog",
            "torn".to_string(),
            whole[..whole.len() - 5].to_vec(),
        ),
        ("eventlog", "damaged".to_string(), damaged),
    ]
}

/// The seed corpus, as (target, file name, bytes).
pub fn seeds() -> Vec<crate::Seed> {
    let mut all = eventlog_seeds();
    all.extend(uevent_seeds());
    all
}

fn uevent_seeds() -> Vec<crate::Seed> {
    let disk =
        "/devices/pci0000:00/0000:00:14.0/usb2/2-1/2-1:1.0/host6/target6:0:0/6:0:0:0/block/sdb";
    let events = [
        (
            "add-disk",
            datagram(
                "add",
                disk,
                &[
                    ("SUBSYSTEM", "block"),
                    ("MAJOR", "8"),
                    ("MINOR", "16"),
                    ("DEVNAME", "sdb"),
                    ("DEVTYPE", "disk"),
                    ("DISKSEQ", "12"),
                    ("SEQNUM", "4021"),
                ],
            ),
        ),
        (
            "remove-partition",
            datagram(
                "remove",
                &format!("{disk}/sdb1"),
                &[
                    ("SUBSYSTEM", "block"),
                    ("DEVNAME", "sdb1"),
                    ("DEVTYPE", "partition"),
                    ("PARTN", "1"),
                    ("SEQNUM", "4100"),
                ],
            ),
        ),
        (
            "bind-usb",
            datagram(
                "bind",
                "/devices/pci0000:00/0000:00:14.0/usb2/2-1",
                &[
                    ("SUBSYSTEM", "usb"),
                    ("DEVNAME", "bus/usb/002/003"),
                    ("DEVTYPE", "usb_device"),
                    ("PRODUCT", "781/5581/100"),
                    ("SEQNUM", "4000"),
                ],
            ),
        ),
        (
            "change-net",
            datagram(
                "change",
                "/devices/virtual/net/eth0",
                &[
                    ("SUBSYSTEM", "net"),
                    ("INTERFACE", "eth0"),
                    ("IFINDEX", "2"),
                ],
            ),
        ),
    ];
    events
        .into_iter()
        .map(|(name, bytes)| {
            assert!(
                matches!(Uevent::parse(&bytes), Ok(Some(_))),
                "seed {name} is not accepted"
            );
            ("uevent", name.to_string(), bytes)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn seeds_pass_the_oracle() {
        for (target, _, bytes) in super::seeds() {
            match target {
                "uevent" => super::check_uevent(&bytes),
                _ => super::check_eventlog(&bytes),
            }
        }
    }
}
