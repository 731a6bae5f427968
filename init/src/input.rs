//! The power key: finding input devices that have `KEY_POWER` and decoding their events.
//!
//! An evdev device `eventN` advertises its keys in
//! `/sys/class/input/eventN/device/capabilities/key` as space-separated hex words of the
//! kernel's `long` size, most significant word first, with leading zero words omitted (a power
//! button reads `10000000000000 0`: bit 116 = word 1, bit 52).
//! [`PowerKeys`] opens `/dev/input/eventN` for every device with bit [`KEY_POWER`] set and
//! [`decode`]s the fixed-size `struct input_event` records read from it. QEMU's
//! `system_powerdown` presses the ACPI power button (x86: input device "Power Button"; arm64
//! virt: the gpio-keys device), which arrives here as `EV_KEY KEY_POWER 1`.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;

use crate::log::Logger;
use crate::paths::{self, limits, read_limited, Paths};

pub const EV_KEY: u16 = 1;
pub const KEY_POWER: u16 = 116;

/// `struct input_event`: a `struct timeval` (two `long`s), then type u16, code u16, value i32.
pub const EVENT_SIZE: usize = 2 * std::mem::size_of::<libc::c_long>() + 8;

/// One decoded input event (the timestamp is dropped).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InputEvent {
    pub kind: u16,
    pub code: u16,
    pub value: i32,
}

impl InputEvent {
    /// A press (not release or autorepeat) of the power key.
    pub fn is_power_press(&self) -> bool {
        self.kind == EV_KEY && self.code == KEY_POWER && self.value == 1
    }
}

/// Decodes whole native-endian `input_event` records of `size` bytes; a partial tail is ignored.
pub fn decode(buf: &[u8], size: usize) -> impl Iterator<Item = InputEvent> + '_ {
    let t = size - 8;
    buf.chunks_exact(size).map(move |r| InputEvent {
        kind: u16::from_ne_bytes([r[t], r[t + 1]]),
        code: u16::from_ne_bytes([r[t + 2], r[t + 3]]),
        value: i32::from_ne_bytes([r[t + 4], r[t + 5], r[t + 6], r[t + 7]]),
    })
}

/// Tests bit `bit` in a sysfs capability bitmap of `word_bits`-bit hex words.
pub fn bitmap_has(text: &str, bit: usize, word_bits: usize) -> bool {
    let words: Vec<&str> = text.split_whitespace().collect();
    let idx = bit / word_bits;
    let Some(word) = idx.checked_add(1).and_then(|n| words.len().checked_sub(n)) else {
        return false;
    };
    u64::from_str_radix(words[word], 16).is_ok_and(|w| w >> (bit % word_bits) & 1 == 1)
}

/// The open power-key devices, by `eventN` name.
#[derive(Default)]
pub struct PowerKeys {
    open: BTreeMap<String, File>,
}

impl PowerKeys {
    /// Opens newly appeared power-key devices; logs each one found.
    pub fn rescan(&mut self, paths: &Paths, log: &Logger) {
        let Ok(dir) = std::fs::read_dir(paths.at(paths::SYS_CLASS_INPUT)) else {
            return;
        };
        for entry in dir.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if !name.starts_with("event") || self.open.contains_key(&name) {
                continue;
            }
            let caps = entry.path().join("device/capabilities/key");
            let Ok(caps) = read_limited(&caps, limits::SYSFS_ATTR) else {
                continue;
            };
            if !bitmap_has(&caps, KEY_POWER.into(), libc::c_long::BITS as usize) {
                continue;
            }
            let node = paths.at(paths::DEV_INPUT).join(&name);
            match std::fs::OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
                .open(&node)
            {
                Ok(f) => {
                    let label = read_limited(&entry.path().join("device/name"), 256)
                        .map(|s| s.trim().to_owned())
                        .unwrap_or_default();
                    log.info(format_args!("power key: {} ({label})", node.display()));
                    self.open.insert(name, f);
                }
                Err(e) => log.warn(format_args!("power key {}: {e}", node.display())),
            }
        }
    }

    /// File descriptors to poll, by name.
    pub fn fds(&self) -> Vec<(String, RawFd)> {
        self.open
            .iter()
            .map(|(n, f)| (n.clone(), f.as_raw_fd()))
            .collect()
    }

    /// Reads what `name` has buffered; true if it contained a power-key press. A device that
    /// went away (or errors) is closed.
    pub fn power_pressed(&mut self, name: &str) -> bool {
        let Some(file) = self.open.get_mut(name) else {
            return false;
        };
        let mut buf = [0u8; EVENT_SIZE * 32];
        let mut pressed = false;
        loop {
            match file.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    pressed |= decode(&buf[..n], EVENT_SIZE).any(|e| e.is_power_press());
                    if n < buf.len() {
                        break;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => {
                    self.open.remove(name);
                    break;
                }
            }
        }
        pressed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn power_button_bitmap() {
        // Real values: ACPI "Power Button" and a keyboard (x86_64, 64-bit longs).
        assert!(bitmap_has("10000000000000 0", 116, 64));
        assert!(!bitmap_has("10000000000000 0", 115, 64));
        let keyboard = "402000000 3803078f800d001 feffffdfffefffff fffffffffffffffe";
        assert!(bitmap_has(keyboard, 116, 64));
        assert!(bitmap_has(keyboard, 1, 64));
        assert!(!bitmap_has(keyboard, 0, 64));
        // Leading zero words are omitted: one word only covers bits 0..64.
        assert!(!bitmap_has("ffffffffffffffff", 116, 64));
        assert!(!bitmap_has("0", 116, 64));
        assert!(!bitmap_has("", 116, 64));
        assert!(!bitmap_has("zz 0", 116, 64));
        // 32-bit kernels print 32-bit words: 116 = word 3, bit 20.
        assert!(bitmap_has("100000 0 0 0", 116, 32));
        assert!(bitmap_has("100000 0 0 0\n", 116, 32));
    }

    fn record(kind: u16, code: u16, value: i32) -> Vec<u8> {
        let mut r = vec![0xAAu8; 16]; // timeval
        r.extend_from_slice(&kind.to_ne_bytes());
        r.extend_from_slice(&code.to_ne_bytes());
        r.extend_from_slice(&value.to_ne_bytes());
        r
    }

    #[test]
    fn decodes_input_events() {
        assert_eq!(EVENT_SIZE, 24);
        let mut buf = record(EV_KEY, KEY_POWER, 1);
        buf.extend(record(0, 0, 0)); // EV_SYN
        buf.extend(record(EV_KEY, KEY_POWER, 0));
        buf.extend([1, 2, 3]); // partial record
        let evs: Vec<_> = decode(&buf, 24).collect();
        assert_eq!(evs.len(), 3);
        assert_eq!(
            evs[0],
            InputEvent {
                kind: 1,
                code: 116,
                value: 1
            }
        );
        assert!(evs[0].is_power_press());
        assert!(!evs[1].is_power_press());
        assert!(!evs[2].is_power_press(), "release is not a press");
        assert!(!InputEvent {
            kind: 1,
            code: 116,
            value: 2
        }
        .is_power_press());
        assert!(!InputEvent {
            kind: 1,
            code: 114,
            value: 1
        }
        .is_power_press());
    }

    #[test]
    fn rescan_opens_only_power_keys_once() {
        let dir = tempfile::tempdir().unwrap();
        let r = dir.path();
        let dev = |n: &str, caps: &str| {
            let d = r
                .join(paths::SYS_CLASS_INPUT)
                .join(n)
                .join("device/capabilities");
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(d.join("key"), caps).unwrap();
            std::fs::create_dir_all(r.join(paths::DEV_INPUT)).unwrap();
            std::fs::write(r.join(paths::DEV_INPUT).join(n), "").unwrap();
        };
        dev("event0", "10000000000000 0\n");
        dev("event1", "0\n");
        std::fs::create_dir_all(r.join(paths::SYS_CLASS_INPUT).join("input0")).unwrap();
        let (log, mem) = Logger::memory();
        let mut keys = PowerKeys::default();
        let paths = Paths::under(r);
        keys.rescan(&paths, &log);
        keys.rescan(&paths, &log);
        let names: Vec<String> = keys.fds().into_iter().map(|(n, _)| n).collect();
        assert_eq!(names, ["event0"]);
        assert_eq!(mem.lines().len(), 1, "{:?}", mem.lines());
        // Fake event file: a press record is read and recognised.
        dev("event2", "10000000000000 0");
        std::fs::write(r.join("dev/input/event2"), record(EV_KEY, KEY_POWER, 1)).unwrap();
        keys.rescan(&paths, &log);
        assert!(keys.power_pressed("event2"));
        assert!(!keys.power_pressed("event0"));
    }
}
