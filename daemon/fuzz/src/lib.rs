//! What the uevent fuzz target feeds `cairn-daemon`, and the seed corpus it starts from.
//!
//! The one idea: the daemon mounts and formats what a uevent names, so an accepted event must
//! say exactly what its bytes say and name a device node only inside /dev. `uevent`: the
//! input is one datagram. For an accepted event: the header's action and path are the
//! event's, every variable is one of the message's `KEY=value` fields, at most `MAX_KEYS` of
//! them, the well-known fields agree with the variables, and `dev_node` is a plain path under
//! /dev. Errors are one line.

use std::path::{Component, Path};

use cairn_daemon::uevent::{Uevent, MAX_KEYS, MAX_MESSAGE};

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

/// The seed corpus, as (target, file name, bytes).
pub fn seeds() -> Vec<(&'static str, String, Vec<u8>)> {
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
        for (_, _, bytes) in super::seeds() {
            super::check_uevent(&bytes);
        }
    }
}
