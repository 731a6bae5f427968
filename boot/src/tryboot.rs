//! The Raspberry Pi backend: the firmware's `tryboot` and `autoboot.txt`, for Raspberry Pi 4
//! and 5 bootloaders.
//!
//! # What the firmware does
//!
//! The firmware reads `autoboot.txt` from partition 1 (only its first 512 bytes). Cairn's:
//!
//! ```text
//! [all]
//! tryboot_a_b=1
//! boot_partition=2
//! [tryboot]
//! boot_partition=3
//! ```
//!
//! Lines are `key=value` under conditional sections, as in `config.txt`: `[all]` applies
//! always (so do lines before the first section), `[tryboot]` only when the tryboot flag is
//! set, `[none]` never; `#` starts a comment. A later line overrides an earlier one. An
//! ordinary boot uses `[all]`'s `boot_partition`, the slot Cairn calls committed. A reboot with
//! the argument `"0 tryboot"` (reboot(2) with `LINUX_REBOOT_CMD_RESTART2`) sets a one-shot flag
//! that makes the next boot, and only that one, use the `[tryboot]` partition as well
//! (`tryboot_a_b=1` makes this switch the whole partition rather than `config.txt`). A crash,
//! a watchdog reset or any later reboot goes back to `[all]`: the fallback needs no writes.
//!
//! The booted system learns how it was started from `/proc/device-tree/chosen/bootloader/`:
//! `tryboot` (1 if this boot was a tryboot) and `partition` (the boot partition used), each a
//! 4-byte big-endian number.
//!
//! # Mapping to the slot model
//!
//! - A trial gets exactly one boot, whatever `tries` asks for: [`Tryboot::set_trial`] points
//!   `[tryboot]` at the slot and remembers, in memory only, that the next reboot must carry
//!   [`REBOOT_ARG`] ([`Bootloader::reboot_argument`]). The status shows the pending slot with
//!   `tries_left == Some(1)`; `next` stays the committed slot, since that is what an ordinary
//!   reboot starts.
//! - [`Tryboot::mark_good`] commits: `[all]` = the slot, `[tryboot]` = the other.
//! - [`Tryboot::mark_bad`] points `[all]` at the other slot if it named the bad one. The firmware
//!   keeps no record of the other slot's health, so this trusts the caller that it boots.
//!
//! # Power cuts
//!
//! Every change rewrites the whole file: written under a temporary name, made durable, then
//! renamed over `autoboot.txt`. A cut before the rename leaves the old file; after it, the new
//! one. An unchanged file is not rewritten.

use std::io::Read;
use std::path::PathBuf;

use crate::fs::Fs;
use crate::model::{Bootloader, SlotInfo, Status};
use crate::{Error, Slot};

/// Where autoboot.txt lives on partition 1.
pub const AUTOBOOT_PATH: &str = "autoboot.txt";

/// The temporary name a new autoboot.txt is written under.
const TEMP_PATH: &str = "autoboot.txt.tmp";

/// The reboot(2) argument that makes the next boot a tryboot: partition 0 (the one
/// autoboot.txt chooses) with the tryboot flag.
pub const REBOOT_ARG: &str = "0 tryboot";

/// How much of autoboot.txt the firmware reads; anything longer is refused.
pub const AUTOBOOT_MAX_LEN: usize = 512;

/// Largest autoboot.txt read at all, before its length is checked.
const READ_LIMIT: usize = 64 * 1024;

/// Where the kernel exposes the device tree the firmware passed.
pub const DEVICE_TREE: &str = "/proc/device-tree";

/// Where the backend finds things.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrybootConfig {
    /// The partition numbers of BOOT-A and BOOT-B, indexed by [`Slot::index`].
    pub boot_partitions: [u32; 2],
    /// The device-tree root ([`DEVICE_TREE`] on a device; tests use a directory of their own).
    pub device_tree: PathBuf,
}

impl Default for TrybootConfig {
    fn default() -> Self {
        TrybootConfig {
            boot_partitions: [2, 3],
            device_tree: PathBuf::from(DEVICE_TREE),
        }
    }
}

/// autoboot.txt as Cairn's image writes it.
pub fn autoboot_txt(committed: u32, tryboot: u32) -> String {
    format!(
        "[all]\ntryboot_a_b=1\nboot_partition={committed}\n[tryboot]\nboot_partition={tryboot}\n"
    )
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Section {
    All,
    Tryboot,
    None,
    Other(String),
}

/// A parsed autoboot.txt: its lines, kept verbatim for rewriting, and what the firmware takes
/// from them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Autoboot {
    lines: Vec<String>,
    /// The last `boot_partition` line under `[all]`: (line index, value).
    all: (usize, u32),
    /// The last `boot_partition` line under `[tryboot]`.
    tryboot: Option<(usize, u32)>,
    /// The last `boot_partition` under `[all]` or `[tryboot]`: what a tryboot uses.
    tryboot_effective: u32,
}

impl Autoboot {
    /// Parses the file; `path` names it in errors. Comments, unknown keys and other sections
    /// are accepted and kept; a missing or malformed `boot_partition`, a `boot_partition` under
    /// a section the firmware does not support here, or a missing `tryboot_a_b=1` is an error.
    pub fn parse(text: &str, path: &str) -> Result<Self, Error> {
        let err = |reason: String| Error::Autoboot {
            path: path.to_string(),
            reason,
        };
        if text.len() > AUTOBOOT_MAX_LEN {
            return Err(err(format!(
                "{} bytes, but the firmware reads only the first {AUTOBOOT_MAX_LEN}",
                text.len()
            )));
        }
        let lines: Vec<String> = text.lines().map(str::to_string).collect();
        let mut section = Section::All;
        let (mut all, mut tryboot, mut effective, mut a_b) = (None, None, None, None);
        for (i, raw) in lines.iter().enumerate() {
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
                section = match name.trim().to_ascii_lowercase().as_str() {
                    "all" => Section::All,
                    "tryboot" => Section::Tryboot,
                    "none" => Section::None,
                    other => Section::Other(other.to_string()),
                };
                continue;
            }
            let Some((key, value)) = line.split_once('=') else {
                continue;
            };
            let (key, value) = (key.trim(), value.trim());
            match key {
                "boot_partition" => {
                    let number = (!value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()))
                        .then(|| value.parse::<u32>().ok())
                        .flatten()
                        .ok_or_else(|| {
                            err(format!(
                                "line {}: boot_partition value {value:?} is not a partition number",
                                i + 1
                            ))
                        })?;
                    match &section {
                        Section::All => all = Some((i, number)),
                        Section::Tryboot => tryboot = Some((i, number)),
                        Section::None => continue,
                        Section::Other(name) => {
                            return Err(err(format!(
                                "line {}: boot_partition under [{name}]; autoboot.txt supports \
                                 only [all], [none] and [tryboot]",
                                i + 1
                            )))
                        }
                    }
                    effective = Some(number);
                }
                "tryboot_a_b" if matches!(section, Section::All | Section::Tryboot) => {
                    a_b = Some(value == "1");
                }
                _ => {}
            }
        }
        let all = all.ok_or_else(|| err("no boot_partition in the [all] section".into()))?;
        if a_b != Some(true) {
            return Err(err(
                "tryboot_a_b=1 is not set, so a tryboot would not switch partitions".into(),
            ));
        }
        Ok(Autoboot {
            lines,
            all,
            tryboot,
            tryboot_effective: effective.unwrap_or(all.1),
        })
    }

    /// The partition an ordinary boot uses.
    pub fn committed(&self) -> u32 {
        self.all.1
    }

    /// The partition a tryboot uses.
    pub fn tryboot(&self) -> u32 {
        self.tryboot_effective
    }

    pub fn render(&self) -> String {
        let mut out = self.lines.join("\n");
        out.push('\n');
        out
    }

    /// The same file with the two partitions changed, everything else kept. `[tryboot]` is
    /// appended if it has no `boot_partition`. Fails if later lines would override the
    /// changed ones.
    pub fn with_partitions(&self, committed: u32, tryboot: u32, path: &str) -> Result<Self, Error> {
        let mut lines = self.lines.clone();
        lines[self.all.0] = format!("boot_partition={committed}");
        match self.tryboot {
            Some((i, _)) => lines[i] = format!("boot_partition={tryboot}"),
            None => {
                lines.push("[tryboot]".into());
                lines.push(format!("boot_partition={tryboot}"));
            }
        }
        let mut text = lines.join("\n");
        text.push('\n');
        let new = Autoboot::parse(&text, path)?;
        if (new.committed(), new.tryboot()) != (committed, tryboot) {
            return Err(Error::Autoboot {
                path: path.to_string(),
                reason: "a later boot_partition line overrides the one under [tryboot]; write \
                         the file in the layout of Cairn's image"
                    .into(),
            });
        }
        Ok(new)
    }
}

/// The tryboot backend.
#[derive(Debug)]
pub struct Tryboot<F> {
    fs: F,
    running: Option<Slot>,
    config: TrybootConfig,
    /// Set by set_trial: the slot the next reboot must try with [`REBOOT_ARG`].
    pending: Option<Slot>,
}

impl<F: Fs> Tryboot<F> {
    /// `fs` is partition 1, holding autoboot.txt; `running` is the slot on the kernel command
    /// line.
    pub fn new(fs: F, running: Option<Slot>, config: TrybootConfig) -> Self {
        Tryboot {
            fs,
            running,
            config,
            pending: None,
        }
    }

    pub fn fs(&self) -> &F {
        &self.fs
    }

    pub fn into_fs(self) -> F {
        self.fs
    }

    /// The slot's boot partition number.
    pub fn partition(&self, slot: Slot) -> u32 {
        self.config.boot_partitions[slot.index()]
    }

    fn slot_of(&self, partition: u32) -> Option<Slot> {
        Slot::ALL
            .into_iter()
            .find(|&s| self.partition(s) == partition)
    }

    /// Reads autoboot.txt and the slot its `[all]` section commits to.
    fn load(&self) -> Result<(Autoboot, Slot), Error> {
        let err = |reason: String| Error::Autoboot {
            path: AUTOBOOT_PATH.into(),
            reason,
        };
        let bytes = self
            .fs
            .read(AUTOBOOT_PATH, READ_LIMIT)?
            .ok_or_else(|| err("missing: the image writes it to partition 1".into()))?;
        let text = String::from_utf8(bytes).map_err(|_| err("not UTF-8 text".into()))?;
        let autoboot = Autoboot::parse(&text, AUTOBOOT_PATH)?;
        let committed = self.slot_of(autoboot.committed()).ok_or_else(|| {
            err(format!(
                "[all] boot_partition={} is neither slot a's partition ({}) nor slot b's ({})",
                autoboot.committed(),
                self.partition(Slot::A),
                self.partition(Slot::B)
            ))
        })?;
        Ok((autoboot, committed))
    }

    fn store(&mut self, old: &Autoboot, new: &Autoboot) -> Result<(), Error> {
        let text = new.render();
        if text == old.render() {
            return Ok(());
        }
        self.fs.write_new(TEMP_PATH, text.as_bytes())?;
        self.fs.rename(TEMP_PATH, AUTOBOOT_PATH)
    }

    /// A number the firmware left in `chosen/bootloader/`.
    fn firmware_value(&self, name: &str) -> Result<u32, Error> {
        let path = self.config.device_tree.join("chosen/bootloader").join(name);
        let err = |reason: String| Error::DeviceTree {
            path: path.display().to_string(),
            reason,
        };
        let io_err = |source| Error::Io {
            action: "read",
            what: path.display().to_string(),
            source,
        };
        let file = match std::fs::File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(err("missing: the firmware did not report how it booted \
                                (tryboot needs a Raspberry Pi 4 or 5 bootloader)"
                    .into()))
            }
            Err(e) => return Err(io_err(e)),
        };
        let mut bytes = Vec::new();
        file.take(16).read_to_end(&mut bytes).map_err(io_err)?;
        let be: [u8; 4] = bytes.as_slice().try_into().map_err(|_| {
            err(format!(
                "{} bytes, expected a 4-byte big-endian number",
                bytes.len()
            ))
        })?;
        Ok(u32::from_be_bytes(be))
    }
}

impl<F: Fs> Bootloader for Tryboot<F> {
    /// On the device (a running slot is known) this also reads the firmware's report and checks
    /// that it booted the running slot's partition. Without a running slot (an image on a build
    /// host) only autoboot.txt is read and no boot is a trial.
    fn status(&mut self) -> Result<Status, Error> {
        let (_, committed) = self.load()?;
        let mut tryboot = false;
        if let Some(running) = self.running {
            tryboot = self.firmware_value("tryboot")? != 0;
            let partition = self.firmware_value("partition")?;
            let expected = self.partition(running);
            if partition != expected {
                return Err(Error::SlotMismatch {
                    running,
                    expected,
                    partition,
                });
            }
        }
        let trial = tryboot && self.running.is_some_and(|r| r != committed);
        let info = |slot| {
            if slot == committed {
                return SlotInfo {
                    slot,
                    bootable: true,
                    priority: 1,
                    tries_left: None,
                    successful: true,
                };
            }
            let tries_left = if self.pending == Some(slot) {
                Some(1)
            } else if trial && self.running == Some(slot) {
                Some(0)
            } else {
                None
            };
            SlotInfo {
                slot,
                bootable: false,
                priority: 0,
                tries_left,
                successful: false,
            }
        };
        Ok(Status {
            running: self.running,
            trial,
            next: Some(committed),
            slots: Slot::ALL.map(info),
        })
    }

    /// Any `tries` from 1 up gives one try: the firmware's flag is one-shot.
    fn set_trial(&mut self, slot: Slot, tries: u32) -> Result<(), Error> {
        if tries == 0 {
            return Err(Error::TrialTries {
                tries,
                max: u32::MAX,
            });
        }
        let (old, _) = self.load()?;
        let new = old.with_partitions(old.committed(), self.partition(slot), AUTOBOOT_PATH)?;
        self.store(&old, &new)?;
        self.pending = Some(slot);
        Ok(())
    }

    fn mark_good(&mut self, slot: Slot) -> Result<(), Error> {
        let (old, _) = self.load()?;
        let new = old.with_partitions(
            self.partition(slot),
            self.partition(slot.other()),
            AUTOBOOT_PATH,
        )?;
        self.store(&old, &new)?;
        if self.pending == Some(slot) {
            self.pending = None;
        }
        Ok(())
    }

    fn mark_bad(&mut self, slot: Slot) -> Result<(), Error> {
        let (old, committed) = self.load()?;
        if committed == slot {
            let new =
                old.with_partitions(self.partition(slot.other()), old.tryboot(), AUTOBOOT_PATH)?;
            self.store(&old, &new)?;
        }
        if self.pending == Some(slot) {
            self.pending = None;
        }
        Ok(())
    }

    fn reboot_argument(&self) -> Option<&'static str> {
        self.pending.map(|_| REBOOT_ARG)
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::fs::MemFs;

    /// A device-tree directory as the firmware leaves it.
    fn device_tree(tryboot: u32, partition: u32) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        set_device_tree(dir.path(), tryboot, partition);
        dir
    }

    fn set_device_tree(root: &Path, tryboot: u32, partition: u32) {
        let node = root.join("chosen/bootloader");
        std::fs::create_dir_all(&node).unwrap();
        std::fs::write(node.join("tryboot"), tryboot.to_be_bytes()).unwrap();
        std::fs::write(node.join("partition"), partition.to_be_bytes()).unwrap();
    }

    fn config(dt: &Path) -> TrybootConfig {
        TrybootConfig {
            device_tree: dt.to_path_buf(),
            ..TrybootConfig::default()
        }
    }

    fn partition1(text: &str) -> MemFs {
        MemFs::with_files([(AUTOBOOT_PATH, text)])
    }

    fn autoboot_of(fs: &MemFs) -> String {
        String::from_utf8(fs.files()[AUTOBOOT_PATH].clone()).unwrap()
    }

    fn parse(text: &str) -> Result<Autoboot, String> {
        Autoboot::parse(text, "autoboot.txt").map_err(|e| e.to_string())
    }

    #[test]
    fn parses_the_documented_layout() {
        let a = parse(&autoboot_txt(2, 3)).unwrap();
        assert_eq!((a.committed(), a.tryboot()), (2, 3));
        assert_eq!(a.render(), autoboot_txt(2, 3));
        assert_eq!(
            autoboot_txt(2, 3),
            "[all]\ntryboot_a_b=1\nboot_partition=2\n[tryboot]\nboot_partition=3\n"
        );
    }

    #[test]
    fn parses_leniently() {
        let text = "# Cairn\r\ntryboot_a_b = 1\r\n\r\nboot_partition = 3\r\nboot_delay=1\r\n\
                    nonsense line\r\n[none]\r\nboot_partition=9\r\n[TRYBOOT]\r\n  \
                    boot_partition=2\r\n[pi4]\r\nfoo=bar\r\n";
        let a = parse(text).unwrap();
        assert_eq!((a.committed(), a.tryboot()), (3, 2));
        // No [tryboot] partition: a tryboot boots the [all] one.
        let a = parse("[all]\ntryboot_a_b=1\nboot_partition=2\n").unwrap();
        assert_eq!(a.tryboot(), 2);
        // A later [all] line applies to a tryboot too.
        let a =
            parse("[tryboot]\nboot_partition=3\n[all]\ntryboot_a_b=1\nboot_partition=2\n").unwrap();
        assert_eq!((a.committed(), a.tryboot()), (2, 2));
    }

    #[test]
    fn names_the_problem_in_errors() {
        for (text, want) in [
            (
                "[all]\ntryboot_a_b=1\n[tryboot]\nboot_partition=3\n",
                "autoboot.txt: no boot_partition in the [all] section",
            ),
            (
                "[all]\ntryboot_a_b=1\nboot_partition=two\n",
                "autoboot.txt: line 3: boot_partition value \"two\" is not a partition number",
            ),
            (
                "[all]\ntryboot_a_b=1\nboot_partition=\n",
                "autoboot.txt: line 3: boot_partition value \"\" is not a partition number",
            ),
            (
                "[all]\ntryboot_a_b=1\nboot_partition=+2\n",
                "autoboot.txt: line 3: boot_partition value \"+2\" is not a partition number",
            ),
            (
                "[all]\ntryboot_a_b=1\nboot_partition=2\n[pi4]\nboot_partition=3\n",
                "autoboot.txt: line 5: boot_partition under [pi4]; autoboot.txt supports only \
                 [all], [none] and [tryboot]",
            ),
            (
                "[all]\nboot_partition=2\n[tryboot]\nboot_partition=3\n",
                "autoboot.txt: tryboot_a_b=1 is not set, so a tryboot would not switch partitions",
            ),
        ] {
            assert_eq!(parse(text).unwrap_err(), want, "{text:?}");
        }
        let long = format!("{}#{}\n", autoboot_txt(2, 3), "x".repeat(500));
        assert_eq!(
            parse(&long).unwrap_err(),
            format!(
                "autoboot.txt: {} bytes, but the firmware reads only the first 512",
                long.len()
            )
        );
    }

    #[test]
    fn rewrites_only_the_partitions() {
        let text = "# keep me\n[all]\ntryboot_a_b=1\nboot_partition=2\ndisable_x=1\n";
        let a = parse(text).unwrap();
        let b = a.with_partitions(3, 2, "autoboot.txt").unwrap();
        assert_eq!(
            b.render(),
            "# keep me\n[all]\ntryboot_a_b=1\nboot_partition=3\ndisable_x=1\n\
             [tryboot]\nboot_partition=2\n"
        );
        let c = b.with_partitions(2, 3, "autoboot.txt").unwrap();
        assert_eq!((c.committed(), c.tryboot()), (2, 3));
        assert_eq!(c.render().matches("[tryboot]").count(), 1);

        let overridden =
            parse("[tryboot]\nboot_partition=3\n[all]\ntryboot_a_b=1\nboot_partition=2\n").unwrap();
        let err = overridden
            .with_partitions(2, 3, "autoboot.txt")
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "autoboot.txt: a later boot_partition line overrides the one under [tryboot]; \
             write the file in the layout of Cairn's image"
        );
    }

    #[test]
    fn status_of_an_offline_image_needs_no_device_tree() {
        let fs = partition1(&autoboot_txt(3, 2));
        let missing = tempfile::tempdir().unwrap();
        let mut tb = Tryboot::new(fs, None, config(&missing.path().join("nope")));
        let s = tb.status().unwrap();
        assert_eq!((s.running, s.trial, s.next), (None, false, Some(Slot::B)));
        tb.set_trial(Slot::A, 1).unwrap();
        assert_eq!(tb.status().unwrap().slot(Slot::A).tries_left, Some(1));
    }

    #[test]
    fn status_reads_the_firmware_report() {
        let dt = device_tree(0, 2);
        let fs = partition1(&autoboot_txt(2, 3));
        let mut tb = Tryboot::new(fs.clone(), Some(Slot::A), config(dt.path()));
        let s = tb.status().unwrap();
        assert_eq!(
            (s.running, s.trial, s.next),
            (Some(Slot::A), false, Some(Slot::A))
        );
        assert_eq!(
            s.slots,
            [
                SlotInfo {
                    slot: Slot::A,
                    bootable: true,
                    priority: 1,
                    tries_left: None,
                    successful: true
                },
                SlotInfo {
                    slot: Slot::B,
                    bootable: false,
                    priority: 0,
                    tries_left: None,
                    successful: false
                },
            ]
        );

        // cmdline.txt on partition 2 claiming slot b.
        let mut wrong = Tryboot::new(fs.clone(), Some(Slot::B), config(dt.path()));
        assert_eq!(
            wrong.status().unwrap_err().to_string(),
            "the kernel command line says slot b, whose boot partition is 3, but the firmware \
             booted partition 2: that partition's cmdline.txt names the wrong slot"
        );

        let node = dt.path().join("chosen/bootloader");
        std::fs::write(node.join("tryboot"), [0, 1]).unwrap();
        let err = tb.status().unwrap_err().to_string();
        assert!(
            err.ends_with(
                "chosen/bootloader/tryboot: 2 bytes, expected a 4-byte big-endian number"
            ),
            "{err}"
        );
        std::fs::remove_file(node.join("tryboot")).unwrap();
        let err = tb.status().unwrap_err().to_string();
        assert!(
            err.contains("tryboot: missing: the firmware did not report"),
            "{err}"
        );

        let mut tb = Tryboot::new(partition1(&autoboot_txt(5, 3)), None, config(dt.path()));
        assert_eq!(
            tb.status().unwrap_err().to_string(),
            "autoboot.txt: [all] boot_partition=5 is neither slot a's partition (2) nor slot \
             b's (3)"
        );
        let mut tb = Tryboot::new(MemFs::new(), None, config(dt.path()));
        assert_eq!(
            tb.status().unwrap_err().to_string(),
            "autoboot.txt: missing: the image writes it to partition 1"
        );
        let mut tb = Tryboot::new(
            MemFs::with_files([(AUTOBOOT_PATH, vec![0xff, 0xfe])]),
            None,
            config(dt.path()),
        );
        assert_eq!(
            tb.status().unwrap_err().to_string(),
            "autoboot.txt: not UTF-8 text"
        );
    }

    #[test]
    fn an_update_that_works_and_one_that_does_not() {
        let dt = device_tree(0, 2);
        let fs = partition1(&autoboot_txt(2, 3));

        // Running A: try B. One try only; the next reboot must carry the argument.
        let mut tb = Tryboot::new(fs.clone(), Some(Slot::A), config(dt.path()));
        assert_eq!(tb.reboot_argument(), None);
        tb.set_trial(Slot::B, 3).unwrap();
        assert_eq!(tb.reboot_argument(), Some("0 tryboot"));
        assert_eq!(
            autoboot_of(&fs),
            autoboot_txt(2, 3),
            "already pointing at B"
        );
        let s = tb.status().unwrap();
        assert_eq!(s.next, Some(Slot::A));
        assert_eq!(s.slot(Slot::B).tries_left, Some(1));
        assert!(!s.slot(Slot::B).bootable);

        // The tryboot: B runs as a trial and its try is used.
        set_device_tree(dt.path(), 1, 3);
        let mut tb = Tryboot::new(fs.clone(), Some(Slot::B), config(dt.path()));
        let s = tb.status().unwrap();
        assert!(s.trial);
        assert_eq!(s.slot(Slot::B).tries_left, Some(0));
        assert_eq!(s.next, Some(Slot::A), "an ordinary reboot falls back");

        // B gives up on itself: nothing to write, [all] never named it.
        tb.mark_bad(Slot::B).unwrap();
        assert_eq!(autoboot_of(&fs), autoboot_txt(2, 3));

        // A second attempt that works: B commits.
        tb.mark_good(Slot::B).unwrap();
        assert_eq!(autoboot_of(&fs), autoboot_txt(3, 2));
        let s = tb.status().unwrap();
        assert!(!s.trial && s.slot(Slot::B).successful);
        assert_eq!(s.next, Some(Slot::B));
        assert!(!s.slot(Slot::A).bootable, "no automatic fallback on a Pi");

        // Marking the committed slot bad points [all] at the other one.
        tb.mark_bad(Slot::B).unwrap();
        assert_eq!(autoboot_of(&fs), autoboot_txt(2, 2));
        // And a trial of B then needs [tryboot] back.
        tb.set_trial(Slot::B, 1).unwrap();
        assert_eq!(autoboot_of(&fs), autoboot_txt(2, 3));
        tb.mark_bad(Slot::B).unwrap();
        assert_eq!(
            tb.reboot_argument(),
            None,
            "mark_bad cancels the pending trial"
        );

        let err = tb.set_trial(Slot::B, 0).unwrap_err().to_string();
        assert_eq!(err, "a trial needs 1..=4294967295 tries, not 0");
    }

    type Op = dyn Fn(&mut Tryboot<MemFs>) -> Result<(), Error>;

    /// Runs `ops` from `start` with the power cut after every possible number of writes; after
    /// each, autoboot.txt must parse with [all] on a slot's partition, and the status must be
    /// one seen after a prefix of `ops`. A run without cut ends in `end`. Returns the writes.
    fn check_power_cuts(
        start: &str,
        running: Slot,
        dt: (u32, u32),
        ops: &[&Op],
        end: &str,
    ) -> Result<usize, String> {
        let dt = device_tree(dt.0, dt.1);
        let cfg = config(dt.path());
        let status_of = |fs: MemFs| {
            Tryboot::new(fs, Some(running), cfg.clone())
                .status()
                .map_err(|e| e.to_string())
        };
        let dry = partition1(start);
        let mut statuses = vec![status_of(dry.persisted())?];
        let mut tb = Tryboot::new(dry.clone(), Some(running), cfg.clone());
        for op in ops {
            op(&mut tb).map_err(|e| format!("uncut run: {e}"))?;
            statuses.push(status_of(dry.persisted())?);
        }
        if autoboot_of(&dry) != end {
            return Err(format!("uncut run ends in {:?}", autoboot_of(&dry)));
        }
        let writes = dry.writes();
        for n in 0..=writes {
            let fs = partition1(start);
            fs.cut_power_after(n);
            let mut tb = Tryboot::new(fs.clone(), Some(running), cfg.clone());
            for op in ops {
                op(&mut tb).map_err(|e| format!("cut after {n}: {e}"))?;
            }
            let disk = fs.persisted();
            let text = autoboot_of(&disk);
            let parsed = parse(&text).map_err(|e| format!("cut after {n}: {e}"))?;
            if ![2, 3].contains(&parsed.committed()) {
                return Err(format!("cut after {n}: [all] names no slot: {text:?}"));
            }
            let status = status_of(disk)?;
            if !statuses.contains(&status) {
                return Err(format!(
                    "cut after {n}: status {status:?} is none of {statuses:?}"
                ));
            }
            if n == writes && text != end {
                return Err(format!("all writes persisted: {text:?}"));
            }
        }
        Ok(writes)
    }

    #[test]
    fn power_cut_during_set_trial_from_a_fresh_image() {
        let op = |tb: &mut Tryboot<MemFs>| tb.set_trial(Slot::B, 3);
        let writes = check_power_cuts(
            &autoboot_txt(2, 3),
            Slot::A,
            (0, 2),
            &[&op],
            &autoboot_txt(2, 3),
        )
        .unwrap();
        assert_eq!(writes, 0, "[tryboot] already names B");
    }

    #[test]
    fn power_cut_during_set_trial_that_rewrites_tryboot() {
        let op = |tb: &mut Tryboot<MemFs>| tb.set_trial(Slot::B, 3);
        let writes = check_power_cuts(
            &autoboot_txt(2, 2),
            Slot::A,
            (0, 2),
            &[&op],
            &autoboot_txt(2, 3),
        )
        .unwrap();
        assert_eq!(writes, 3, "create, write, rename");
    }

    #[test]
    fn power_cut_during_mark_good_in_a_trial() {
        let op = |tb: &mut Tryboot<MemFs>| tb.mark_good(Slot::B);
        let writes = check_power_cuts(
            &autoboot_txt(2, 3),
            Slot::B,
            (1, 3),
            &[&op],
            &autoboot_txt(3, 2),
        )
        .unwrap();
        assert_eq!(writes, 3);
    }

    #[test]
    fn power_cut_during_mark_bad() {
        let op = |tb: &mut Tryboot<MemFs>| tb.mark_bad(Slot::B);
        let writes = check_power_cuts(
            &autoboot_txt(3, 2),
            Slot::B,
            (0, 3),
            &[&op],
            &autoboot_txt(2, 2),
        )
        .unwrap();
        assert_eq!(writes, 3);
    }

    #[test]
    fn power_cut_during_set_trial_of_a_while_b_is_good() {
        let op = |tb: &mut Tryboot<MemFs>| tb.set_trial(Slot::A, 3);
        let writes = check_power_cuts(
            &autoboot_txt(3, 2),
            Slot::B,
            (0, 3),
            &[&op],
            &autoboot_txt(3, 2),
        )
        .unwrap();
        assert_eq!(writes, 0);
    }

    #[test]
    fn power_cut_check_catches_an_in_place_rewrite() {
        let in_place = |tb: &mut Tryboot<MemFs>| {
            let mut fs = tb.fs().clone();
            fs.write_new(AUTOBOOT_PATH, autoboot_txt(3, 2).as_bytes())
        };
        let err = check_power_cuts(
            &autoboot_txt(2, 3),
            Slot::B,
            (1, 3),
            &[&in_place],
            &autoboot_txt(3, 2),
        )
        .unwrap_err();
        assert_eq!(
            err,
            "cut after 1: autoboot.txt: no boot_partition in the [all] section"
        );
    }
}
