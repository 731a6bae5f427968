//! The systemd-boot backend: slot state as Boot Loader Specification entries on the ESP, for
//! systemd-boot 252 (Debian bookworm) on UEFI.
//!
//! # What systemd-boot does with entries
//!
//! - It reads `loader/entries/*.conf` (the suffix compared case-insensitively), skipping names
//!   that start with `.` or `auto-`, and skipping an entry whose `linux` file does not exist. The
//!   entry's id is its whole file name, lower-cased, counter included.
//! - A name ending in `+<left>-<done>.conf` (or `+<left>.conf`) carries a boot counter. Before
//!   booting such an entry systemd-boot renames it to `+<left-1>-<done+1>` (left stops at 0). An
//!   entry without a counter is never counted.
//! - An entry with `left` = 0 is "bad": it sorts after every other entry. Otherwise, for entries
//!   without `sort-key` (Cairn writes none), the order is by id with a version-aware compare
//!   (digit runs compare by value), highest first.
//! - `default <glob>` in `loader/loader.conf` picks the first entry in that order whose id
//!   matches the glob, bad or not: an exact default would keep booting a slot whose tries are
//!   used up, so Cairn's default is the glob `cairn-*`. The EFI variables `LoaderEntryOneShot`
//!   and `LoaderEntryDefault` (set by `bootctl set-oneshot`/`set-default`) override loader.conf;
//!   Cairn never sets them.
//!
//! # Cairn's layout
//!
//! One entry per slot, `cairn-<gen>-<slot>[+<left>-<done>].conf`, where `gen` is a decimal
//! generation: among non-bad entries the highest generation boots. A freshly built image has
//! `cairn-1-a.conf` and `cairn-0-b.conf`, both good, A preferred. Every operation that gives a
//! slot a new name with a new generation uses the highest generation on the ESP plus one, so
//! generations never repeat.
//!
//! A slot's entry may instead be a unified kernel image, `EFI/Linux/cairn-<gen>-<slot>[+<left>-
//! <done>].efi` (Type #2): systemd-boot counts and renames it exactly like a `.conf`, and
//! [`SdBoot::set_trial`] renames it rather than copying it. Images are built with UKIs only;
//! the model still reads both kinds, sorting UKIs first as systemd-boot does (they have an
//! os-release sort key, `.conf` entries do not).
//!
//! # Operations and power cuts
//!
//! Every step below is one durable [`Fs`] call, and the argument is that each prefix of the
//! steps is a state in which the chosen entry is complete and which is either the old state or
//! the new one as far as systemd-boot's choice and [`Bootloader::status`] go. A slot's entries
//! other than its highest generation are *stale* (left by a cut before the last step of an
//! operation); systemd-boot only reaches them once the current entry of their slot is bad, and
//! every operation on a slot removes them.
//!
//! - [`SdBoot::set_trial`]: copy the slot's entry to `.cairn-entry.tmp` (ignored by systemd-boot:
//!   leading `.`, no `.conf`), rename it to `cairn-<new gen>-<slot>+<tries>-0.conf`, remove the
//!   slot's older entries. Until the rename the old entry is untouched; the rename makes the new
//!   complete entry the slot's current one in a single step.
//! - [`SdBoot::install_entry`]: the same with new contents and the bad name `+0-0`, so that the
//!   updater can then rewrite the slot's kernel files while nothing boots them.
//! - [`SdBoot::mark_good`]: rename the current entry to its name without counter, then remove
//!   stale entries.
//! - [`SdBoot::mark_bad`]: remove stale entries first (a stale entry might still be good), then
//!   rename the current entry to `+0-<done>`. Refused unless the other slot has a non-bad entry.
//!
//! The argument assumes a rename or removal reaches the disk whole, which is what [`MemFs`]
//! models. FAT has no journal and does not promise it; its directory updates are small, and a
//! torn one is left to `fsck.fat`.
//!
//! [`MemFs`]: crate::fs::MemFs

use std::cmp::Ordering;

use crate::bls::{Counter, Entry, EntryName};
use crate::fs::Fs;
use crate::model::{Bootloader, SlotInfo, Status};
use crate::{Error, Slot};

/// Where the entries live on the ESP.
pub const ENTRIES_DIR: &str = "loader/entries";

/// Where systemd-boot's configuration lives on the ESP; see [`loader_conf`].
pub const LOADER_CONF_PATH: &str = "loader/loader.conf";

/// Most tries a trial may have.
pub const MAX_TRIES: u32 = 10;

/// Largest entry file read; Cairn's entries are a few hundred bytes.
pub const MAX_ENTRY_LEN: usize = 64 * 1024;

/// Where a new or changed entry is written before it is renamed into place.
pub const TEMP_NAME: &str = ".cairn-entry.tmp";

/// Where unified kernel images (Type #2 entries) live on the ESP.
pub const UKI_DIR: &str = "EFI/Linux";

/// Where a new UKI is written (by its installer) before [`SdBoot::install_uki`] renames it into
/// place; systemd-boot skips names that start with `.`.
pub const UKI_TEMP_NAME: &str = ".cairn-uki.tmp";

/// The two kinds of entry systemd-boot reads. A slot's entry is one or the other; a Cairn
/// image built with UKIs has only [`EntryKind::Uki`] entries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum EntryKind {
    /// A unified kernel image, `EFI/Linux/<name>.efi` (Type #2). Listed first: systemd-boot
    /// sorts entries with a sort key (a UKI's os-release `ID`) before entries without one.
    Uki,
    /// A Boot Loader Specification entry, `loader/entries/<name>.conf` (Type #1).
    Conf,
}

impl EntryKind {
    pub fn dir(self) -> &'static str {
        match self {
            EntryKind::Conf => ENTRIES_DIR,
            EntryKind::Uki => UKI_DIR,
        }
    }

    pub fn suffix(self) -> &'static str {
        match self {
            EntryKind::Conf => ".conf",
            EntryKind::Uki => ".efi",
        }
    }

    fn of_name(name: &str) -> Option<EntryKind> {
        let lower = name.to_ascii_lowercase();
        [EntryKind::Conf, EntryKind::Uki]
            .into_iter()
            .find(|k| lower.ends_with(k.suffix()))
    }
}

const PREFIX: &str = "cairn-";

/// loader.conf for a Cairn ESP: no menu, no editor (the kernel command line carries the root
/// hash, so editing it must not be possible), no entries Cairn did not write, and the best
/// Cairn entry as default.
pub fn loader_conf() -> String {
    "timeout 0\neditor no\nauto-entries no\nauto-firmware no\nconsole-mode keep\n\
     default cairn-*\n"
        .to_string()
}

/// The file name of a slot's entry: `cairn-<gen>-<slot>[+<left>-<done>].conf`.
pub fn entry_file_name(gen: u32, slot: Slot, counter: Option<Counter>) -> String {
    kind_file_name(EntryKind::Conf, gen, slot, counter)
}

/// The file name of a slot's UKI: `cairn-<gen>-<slot>[+<left>-<done>].efi`.
pub fn uki_file_name(gen: u32, slot: Slot, counter: Option<Counter>) -> String {
    kind_file_name(EntryKind::Uki, gen, slot, counter)
}

fn kind_file_name(kind: EntryKind, gen: u32, slot: Slot, counter: Option<Counter>) -> String {
    EntryName::new(format!("{PREFIX}{gen}-{slot}"), counter).file_name_with_suffix(kind.suffix())
}

/// The UKI file names of a freshly built image (in [`UKI_DIR`]): slot A good and preferred,
/// slot B good as its fallback, as [`initial_entries`].
pub fn initial_uki_names() -> [(Slot, String); 2] {
    [
        (Slot::A, uki_file_name(1, Slot::A, None)),
        (Slot::B, uki_file_name(0, Slot::B, None)),
    ]
}

/// The entries of a freshly built image, as (file name in [`ENTRIES_DIR`], contents): slot A
/// good and preferred, slot B good as its fallback.
pub fn initial_entries(a: &Entry, b: &Entry) -> Result<Vec<(String, String)>, Error> {
    Ok(vec![
        (entry_file_name(1, Slot::A, None), a.render()?),
        (entry_file_name(0, Slot::B, None), b.render()?),
    ])
}

/// A Cairn entry file, parsed from its name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntryFile {
    /// The file name in [`ENTRIES_DIR`].
    pub name: String,
    pub gen: u32,
    pub slot: Slot,
    pub counter: Option<Counter>,
    pub kind: EntryKind,
}

impl EntryFile {
    /// Parses a file name found in [`ENTRIES_DIR`]. `Ok(None)` for a file that is not Cairn's
    /// business: systemd-boot ignores it, or `default cairn-*` cannot select it. A name that
    /// the glob matches but that is not one Cairn writes is an error, since systemd-boot might
    /// boot it.
    /// The kind follows the suffix: `.conf` in [`ENTRIES_DIR`], `.efi` in [`UKI_DIR`].
    pub fn parse(name: &str) -> Result<Option<EntryFile>, Error> {
        let lower = name.to_ascii_lowercase();
        let Some(kind) = EntryKind::of_name(name) else {
            return Ok(None);
        };
        if name.starts_with('.') || !lower.starts_with(PREFIX) {
            return Ok(None);
        }
        let bad = || Error::BadEntryFile {
            file: format!("{}/{name}", kind.dir()),
            reason: format!(
                "not a Cairn entry name (expected cairn-<generation>-<a|b>[+<left>-<done>]{})",
                kind.suffix()
            ),
        };
        let parsed = EntryName::parse_with_suffix(name, kind.suffix()).map_err(|_| bad())?;
        let rest = parsed.id.strip_prefix(PREFIX).ok_or_else(bad)?;
        let (gen, slot) = rest.split_once('-').ok_or_else(bad)?;
        let canonical = !gen.is_empty()
            && gen.len() <= 10
            && gen.bytes().all(|b| b.is_ascii_digit())
            && (gen == "0" || !gen.starts_with('0'));
        let gen = canonical
            .then(|| gen.parse::<u32>().ok())
            .flatten()
            .ok_or_else(bad)?;
        let slot = match slot {
            "a" => Slot::A,
            "b" => Slot::B,
            _ => return Err(bad()),
        };
        Ok(Some(EntryFile {
            name: name.to_string(),
            gen,
            slot,
            counter: parsed.counter,
            kind,
        }))
    }

    /// No tries left: systemd-boot sorts it last.
    pub fn is_bad(&self) -> bool {
        matches!(self.counter, Some(Counter { left: 0, .. }))
    }

    /// The entry as systemd-boot renames it right before booting it.
    pub fn after_boot_attempt(&self) -> EntryFile {
        let counter = self.counter.map(|c| Counter {
            left: c.left.saturating_sub(1),
            done: c.done.saturating_add(1).min(i32::MAX as u32),
        });
        EntryFile {
            name: kind_file_name(self.kind, self.gen, self.slot, counter),
            counter,
            ..self.clone()
        }
    }

    pub fn path(&self) -> String {
        format!("{}/{}", self.kind.dir(), self.name)
    }

    /// This entry's name with another counter (same kind, generation and slot).
    fn renamed(&self, gen: u32, counter: Option<Counter>) -> String {
        format!(
            "{}/{}",
            self.kind.dir(),
            kind_file_name(self.kind, gen, self.slot, counter)
        )
    }
}

/// systemd-boot's order: `Less` means `a` is preferred. Non-bad entries first; then UKIs,
/// whose os-release gives them a sort key (`ID=cairn`, the same for all, and no version:
/// see docs/boot-slots.md), before `.conf` entries without one; then the id, highest first.
fn boot_order(a: &EntryFile, b: &EntryFile) -> Ordering {
    a.is_bad()
        .cmp(&b.is_bad())
        .then_with(|| a.kind.cmp(&b.kind))
        .then_with(|| version_cmp(&b.name.to_ascii_lowercase(), &a.name.to_ascii_lowercase()))
}

/// Compares runs of digits by value and everything else byte by byte. This agrees with
/// systemd's `strverscmp_improved` on Cairn's names, which differ first in the generation or,
/// for equal generations, in the slot letter.
fn version_cmp(a: &str, b: &str) -> Ordering {
    let (mut a, mut b) = (a.as_bytes(), b.as_bytes());
    loop {
        match (a.first(), b.first()) {
            (None, None) => return Ordering::Equal,
            (None, Some(_)) => return Ordering::Less,
            (Some(_), None) => return Ordering::Greater,
            (Some(x), Some(y)) if x.is_ascii_digit() && y.is_ascii_digit() => {
                let run = |s: &[u8]| s.iter().take_while(|c| c.is_ascii_digit()).count();
                let (num_a, rest_a) = a.split_at(run(a));
                let (num_b, rest_b) = b.split_at(run(b));
                let zeros = |n: &[u8]| n.iter().take_while(|&&c| c == b'0').count();
                let (num_a, num_b) = (&num_a[zeros(num_a)..], &num_b[zeros(num_b)..]);
                let ord = num_a.len().cmp(&num_b.len()).then(num_a.cmp(num_b));
                if ord != Ordering::Equal {
                    return ord;
                }
                (a, b) = (rest_a, rest_b);
            }
            (Some(x), Some(y)) => {
                if x != y {
                    return x.cmp(y);
                }
                (a, b) = (&a[1..], &b[1..]);
            }
        }
    }
}

/// The entry systemd-boot boots next with `default cairn-*`, from the file names in
/// [`ENTRIES_DIR`] and [`UKI_DIR`]: the best-sorted Cairn entry, which is bad only if all are.
/// Returns its file name (systemd-boot's id, up to case) and slot.
pub fn next_boot<S: AsRef<str>>(file_names: &[S]) -> Result<Option<(String, Slot)>, Error> {
    let entries = Entries::from_names(file_names.iter().map(AsRef::as_ref))?;
    Ok(entries.next_boot().map(|e| (e.name.clone(), e.slot)))
}

/// The Cairn entries in [`ENTRIES_DIR`].
#[derive(Debug, Clone)]
struct Entries {
    files: Vec<EntryFile>,
}

impl Entries {
    fn from_names<'a>(names: impl Iterator<Item = &'a str>) -> Result<Self, Error> {
        let mut files = Vec::new();
        for name in names {
            if let Some(file) = EntryFile::parse(name)? {
                files.push(file);
            }
        }
        Ok(Entries { files })
    }

    fn load(fs: &impl Fs) -> Result<Self, Error> {
        let mut files = Vec::new();
        for kind in [EntryKind::Conf, EntryKind::Uki] {
            for name in fs.list(kind.dir())? {
                // systemd-boot reads only `.conf` in one folder and `.efi` in the other.
                if EntryKind::of_name(&name) != Some(kind) {
                    continue;
                }
                if let Some(file) = EntryFile::parse(&name)? {
                    files.push(file);
                }
            }
        }
        Ok(Entries { files })
    }

    fn next_boot(&self) -> Option<&EntryFile> {
        self.files.iter().min_by(|a, b| boot_order(a, b))
    }

    /// The slot's entry that counts: its highest generation.
    fn current(&self, slot: Slot) -> Option<&EntryFile> {
        self.of(slot)
            .min_by(|a, b| b.gen.cmp(&a.gen).then_with(|| boot_order(a, b)))
    }

    fn of(&self, slot: Slot) -> impl Iterator<Item = &EntryFile> {
        self.files.iter().filter(move |e| e.slot == slot)
    }

    /// The slot's entries other than its current one.
    fn stale(&self, slot: Slot) -> Vec<&EntryFile> {
        let current = self.current(slot);
        self.of(slot).filter(|e| Some(*e) != current).collect()
    }

    fn next_gen(&self) -> Result<u32, Error> {
        let max = self.files.iter().map(|e| e.gen).max().unwrap_or(0);
        max.checked_add(1).ok_or(Error::GenerationExhausted {
            dir: ENTRIES_DIR,
            gen: max,
        })
    }
}

/// The systemd-boot backend over the ESP.
#[derive(Debug)]
pub struct SdBoot<F> {
    fs: F,
    running: Option<Slot>,
}

impl<F: Fs> SdBoot<F> {
    /// `fs` is the ESP; `running` is the slot on the kernel command line.
    pub fn new(fs: F, running: Option<Slot>) -> Self {
        SdBoot { fs, running }
    }

    pub fn fs(&self) -> &F {
        &self.fs
    }

    pub fn into_fs(self) -> F {
        self.fs
    }

    /// Writes `entry` as the slot's new entry, bad (`+0-0`), replacing the slot's old entries;
    /// the slot's kernel files can then be rewritten, and [`Bootloader::set_trial`] puts the
    /// slot on trial. Refused for the running slot and when the other slot has no non-bad
    /// entry.
    pub fn install_entry(&mut self, slot: Slot, entry: &Entry) -> Result<(), Error> {
        if self.running == Some(slot) {
            return Err(Error::RunningSlot(slot));
        }
        let text = entry.render()?;
        let entries = Entries::load(&self.fs)?;
        require_other_bootable(&entries, slot)?;
        let name = entry_file_name(
            entries.next_gen()?,
            slot,
            Some(Counter { left: 0, done: 0 }),
        );
        self.replace(&entries, slot, text.as_bytes(), &name)
    }

    /// Makes the UKI the caller wrote (durably) to [`UKI_DIR`]/[`UKI_TEMP_NAME`] the slot's
    /// new entry, bad (`+0-0`), replacing the slot's old entries of either kind; then
    /// [`Bootloader::set_trial`] puts it on trial. Refused for the running slot and when the
    /// other slot has no non-bad entry.
    pub fn install_uki(&mut self, slot: Slot) -> Result<(), Error> {
        if self.running == Some(slot) {
            return Err(Error::RunningSlot(slot));
        }
        let entries = Entries::load(&self.fs)?;
        require_other_bootable(&entries, slot)?;
        let name = uki_file_name(
            entries.next_gen()?,
            slot,
            Some(Counter { left: 0, done: 0 }),
        );
        self.fs.rename(
            &format!("{UKI_DIR}/{UKI_TEMP_NAME}"),
            &format!("{UKI_DIR}/{name}"),
        )?;
        for old in entries.of(slot) {
            self.fs.remove(&old.path())?;
        }
        Ok(())
    }

    /// Writes `bytes` under the temporary name, renames it to `name`, then removes the slot's
    /// entries that were there before.
    fn replace(
        &mut self,
        before: &Entries,
        slot: Slot,
        bytes: &[u8],
        name: &str,
    ) -> Result<(), Error> {
        let temp = format!("{ENTRIES_DIR}/{TEMP_NAME}");
        self.fs.write_new(&temp, bytes)?;
        self.fs.rename(&temp, &format!("{ENTRIES_DIR}/{name}"))?;
        for old in before.of(slot) {
            self.fs.remove(&old.path())?;
        }
        Ok(())
    }

    /// Removes the slot's entries other than `keep` (which was renamed away).
    fn remove_stale_except(
        &mut self,
        entries: &Entries,
        slot: Slot,
        keep: &EntryFile,
    ) -> Result<(), Error> {
        for old in entries.of(slot).filter(|e| *e != keep) {
            self.fs.remove(&old.path())?;
        }
        Ok(())
    }

    fn remove_stale(&mut self, entries: &Entries, slot: Slot) -> Result<(), Error> {
        for old in entries.stale(slot) {
            self.fs.remove(&old.path())?;
        }
        Ok(())
    }
}

fn slot_info(slot: Slot, entry: Option<&EntryFile>) -> SlotInfo {
    match entry {
        Some(e) => SlotInfo {
            slot,
            bootable: !e.is_bad(),
            priority: e.gen,
            tries_left: e.counter.map(|c| c.left),
            successful: e.counter.is_none(),
        },
        None => SlotInfo {
            slot,
            bootable: false,
            priority: 0,
            tries_left: None,
            successful: false,
        },
    }
}

fn require_other_bootable(entries: &Entries, slot: Slot) -> Result<(), Error> {
    match entries.current(slot.other()) {
        Some(e) if !e.is_bad() => Ok(()),
        _ => Err(Error::LastBootableSlot(slot)),
    }
}

fn current_of(entries: &Entries, slot: Slot) -> Result<EntryFile, Error> {
    entries.current(slot).cloned().ok_or(Error::NoEntry {
        slot,
        dir: ENTRIES_DIR,
    })
}

impl<F: Fs> Bootloader for SdBoot<F> {
    fn status(&mut self) -> Result<Status, Error> {
        let entries = Entries::load(&self.fs)?;
        let trial = self
            .running
            .and_then(|r| entries.current(r))
            .is_some_and(|e| e.counter.is_some());
        Ok(Status {
            running: self.running,
            trial,
            next: entries.next_boot().map(|e| e.slot),
            slots: Slot::ALL.map(|s| slot_info(s, entries.current(s))),
        })
    }

    /// Tries are limited to 1..=[`MAX_TRIES`].
    fn set_trial(&mut self, slot: Slot, tries: u32) -> Result<(), Error> {
        if !(1..=MAX_TRIES).contains(&tries) {
            return Err(Error::TrialTries {
                tries,
                max: MAX_TRIES,
            });
        }
        let entries = Entries::load(&self.fs)?;
        let current = current_of(&entries, slot)?;
        let counter = Some(Counter {
            left: tries,
            done: 0,
        });
        if current.kind == EntryKind::Uki {
            // A UKI is tens of MiB: it is renamed, not copied. The rename is the one step
            // that makes the counted entry the slot's current one.
            self.fs.rename(
                &current.path(),
                &current.renamed(entries.next_gen()?, counter),
            )?;
            return self.remove_stale_except(&entries, slot, &current);
        }
        let contents = self
            .fs
            .read(&current.path(), MAX_ENTRY_LEN)?
            .ok_or(Error::NoEntry {
                slot,
                dir: ENTRIES_DIR,
            })?;
        let name = entry_file_name(
            entries.next_gen()?,
            slot,
            Some(Counter {
                left: tries,
                done: 0,
            }),
        );
        self.replace(&entries, slot, &contents, &name)
    }

    fn mark_good(&mut self, slot: Slot) -> Result<(), Error> {
        let entries = Entries::load(&self.fs)?;
        let current = current_of(&entries, slot)?;
        if current.counter.is_some() {
            self.fs
                .rename(&current.path(), &current.renamed(current.gen, None))?;
        }
        self.remove_stale(&entries, slot)
    }

    /// Refused unless the other slot has a non-bad entry. A slot without entry is left as is.
    fn mark_bad(&mut self, slot: Slot) -> Result<(), Error> {
        let entries = Entries::load(&self.fs)?;
        require_other_bootable(&entries, slot)?;
        self.remove_stale(&entries, slot)?;
        let Some(current) = entries.current(slot) else {
            return Ok(());
        };
        if !current.is_bad() {
            let done = current.counter.map_or(0, |c| c.done);
            let bad = current.renamed(current.gen, Some(Counter { left: 0, done }));
            self.fs.rename(&current.path(), &bad)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::fs::MemFs;

    fn entry(slot: Slot, version: &str) -> Entry {
        Entry {
            title: format!("Cairn {version} (slot {slot})"),
            version: version.into(),
            linux: format!("/EFI/cairn/{slot}/vmlinuz"),
            initrd: format!("/EFI/cairn/{slot}/initramfs.img"),
            options: vec![format!("cairn.slot={slot}")],
        }
    }

    fn text(slot: Slot, version: &str) -> String {
        entry(slot, version).render().unwrap()
    }

    /// An ESP holding loader.conf and these entries (name, contents).
    fn esp(entries: &[(&str, &str)]) -> MemFs {
        let mut files = vec![(LOADER_CONF_PATH.to_string(), loader_conf())];
        files.extend(
            entries
                .iter()
                .map(|(n, c)| (format!("{ENTRIES_DIR}/{n}"), c.to_string())),
        );
        MemFs::with_files(files)
    }

    /// The entries directory as (name, contents).
    fn entries_of(fs: &MemFs) -> BTreeMap<String, String> {
        fs.files()
            .into_iter()
            .filter_map(|(p, c)| {
                let name = p.strip_prefix(&format!("{ENTRIES_DIR}/"))?.to_string();
                Some((name, String::from_utf8(c).unwrap()))
            })
            .collect()
    }

    fn expect(entries: &[(&str, &str)]) -> BTreeMap<String, String> {
        entries
            .iter()
            .map(|(n, c)| (n.to_string(), c.to_string()))
            .collect()
    }

    /// What systemd-boot does on a reboot: renames the chosen entry if it is counted, then
    /// boots its slot.
    fn firmware_boot(fs: &mut MemFs) -> Slot {
        let entries = Entries::load(fs).unwrap();
        let chosen = entries.next_boot().expect("an entry to boot").clone();
        let after = chosen.after_boot_attempt();
        if after != chosen {
            fs.rename(&chosen.path(), &after.path()).unwrap();
        }
        chosen.slot
    }

    #[test]
    fn loader_conf_is_exactly_the_documented_one() {
        assert_eq!(
            loader_conf(),
            "timeout 0\neditor no\nauto-entries no\nauto-firmware no\nconsole-mode keep\n\
             default cairn-*\n"
        );
    }

    #[test]
    fn names_entries_and_parses_them_back() {
        assert_eq!(entry_file_name(1, Slot::A, None), "cairn-1-a.conf");
        let counted = entry_file_name(2, Slot::B, Some(Counter { left: 3, done: 0 }));
        assert_eq!(counted, "cairn-2-b+3-0.conf");
        let parsed = EntryFile::parse(&counted).unwrap().unwrap();
        assert_eq!(
            (parsed.gen, parsed.slot, parsed.counter),
            (2, Slot::B, Some(Counter { left: 3, done: 0 }))
        );
        assert!(!parsed.is_bad());
        let p = EntryFile::parse("cairn-4294967295-a+0.conf")
            .unwrap()
            .unwrap();
        assert_eq!((p.gen, p.is_bad()), (u32::MAX, true));
        assert_eq!(p.path(), "loader/entries/cairn-4294967295-a+0.conf");
    }

    #[test]
    fn ignores_what_systemd_boot_or_the_glob_ignores() {
        for name in [
            ".cairn-entry.tmp",
            ".cairn-1-a.conf",
            "cairn-1-a.conf.bak",
            "debian-6.1.conf",
            "auto-windows.conf",
            "loader.conf",
        ] {
            assert_eq!(EntryFile::parse(name).unwrap(), None, "{name}");
        }
    }

    #[test]
    fn refuses_glob_matches_it_cannot_model() {
        for name in [
            "cairn-a.conf",
            "cairn-1-c.conf",
            "cairn-01-a.conf",
            "cairn-x-a.conf",
            "cairn-1-a+x-0.conf",
            "cairn-99999999999-a.conf",
            "CAIRN-1-a.conf",
            "cairn-1-A.conf",
            "cairn-.conf",
        ] {
            let err = EntryFile::parse(name).unwrap_err().to_string();
            assert_eq!(
                err,
                format!(
                    "loader/entries/{name}: not a Cairn entry name \
                     (expected cairn-<generation>-<a|b>[+<left>-<done>].conf)"
                )
            );
        }
        let err = next_boot(&["cairn-1-a.conf", "cairn-b.conf"]).unwrap_err();
        assert!(err.to_string().contains("cairn-b.conf"), "{err}");
    }

    #[test]
    fn models_the_boot_counter_rename() {
        let e = EntryFile::parse("cairn-2-b+3-0.conf").unwrap().unwrap();
        let once = e.after_boot_attempt();
        assert_eq!(once.name, "cairn-2-b+2-1.conf");
        let e = EntryFile::parse("cairn-2-b+1.conf").unwrap().unwrap();
        assert_eq!(e.after_boot_attempt().name, "cairn-2-b+0-1.conf");
        let e = EntryFile::parse("cairn-2-b+0-5.conf").unwrap().unwrap();
        assert_eq!(e.after_boot_attempt().name, "cairn-2-b+0-6.conf");
        let good = EntryFile::parse("cairn-2-b.conf").unwrap().unwrap();
        assert_eq!(good.after_boot_attempt(), good);
    }

    #[test]
    fn selection_prefers_non_bad_then_higher_generation() {
        let pick = |names: &[&str]| next_boot(names).unwrap();
        assert_eq!(
            pick(&["cairn-0-b.conf", "cairn-1-a.conf"]),
            Some(("cairn-1-a.conf".into(), Slot::A))
        );
        // Version-aware: 10 beats 9 although "1" < "9".
        assert_eq!(
            pick(&["cairn-9-a.conf", "cairn-10-b+2-1.conf"]),
            Some(("cairn-10-b+2-1.conf".into(), Slot::B))
        );
        // A bad entry sorts last, whatever its generation ...
        assert_eq!(
            pick(&["cairn-1-a.conf", "cairn-2-b+0-3.conf"]),
            Some(("cairn-1-a.conf".into(), Slot::A))
        );
        // ... and a stale good entry can win over a bad current one.
        assert_eq!(
            pick(&["cairn-3-a+0-3.conf", "cairn-1-b.conf", "cairn-2-a.conf"]),
            Some(("cairn-2-a.conf".into(), Slot::A))
        );
        // The glob's default is taken even if bad, when all are.
        assert_eq!(
            pick(&["cairn-1-a+0-0.conf", "cairn-2-b+0-3.conf"]),
            Some(("cairn-2-b+0-3.conf".into(), Slot::B))
        );
        assert_eq!(pick(&["debian.conf", ".cairn-entry.tmp"]), None);
        // Equal generations (never written by Cairn): the slot letter decides, b > a.
        assert_eq!(
            pick(&["cairn-5-a.conf", "cairn-5-b.conf"]),
            Some(("cairn-5-b.conf".into(), Slot::B))
        );
    }

    #[test]
    fn version_compare_counts_digit_runs_by_value() {
        use Ordering::*;
        assert_eq!(version_cmp("cairn-10-a", "cairn-9-a"), Greater);
        assert_eq!(version_cmp("cairn-007-a", "cairn-7-a"), Equal);
        assert_eq!(version_cmp("cairn-2-b", "cairn-2-a"), Greater);
        assert_eq!(version_cmp("a1", "a1x"), Less);
        assert_eq!(version_cmp("", ""), Equal);
    }

    #[test]
    fn initial_entries_prefer_a_and_keep_b_as_fallback() {
        let files = initial_entries(&entry(Slot::A, "1.0"), &entry(Slot::B, "1.0")).unwrap();
        let names: Vec<&str> = files.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["cairn-1-a.conf", "cairn-0-b.conf"]);
        assert_eq!(files[0].1, text(Slot::A, "1.0"));
        let mut sd = SdBoot::new(
            esp(&[(&files[0].0, &files[0].1), (&files[1].0, &files[1].1)]),
            Some(Slot::A),
        );
        let s = sd.status().unwrap();
        assert_eq!((s.next, s.trial), (Some(Slot::A), false));
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
                    bootable: true,
                    priority: 0,
                    tries_left: None,
                    successful: true
                },
            ]
        );
        let mut bad = entry(Slot::B, "1.0");
        bad.options.push("x\ninit=/bin/sh".into());
        assert!(initial_entries(&entry(Slot::A, "1.0"), &bad).is_err());
    }

    #[test]
    fn an_update_that_works_and_one_that_does_not() {
        let (a1, b1, b2) = (text(Slot::A, "1"), text(Slot::B, "1"), text(Slot::B, "2"));
        let mut fs = esp(&[("cairn-1-a.conf", &a1), ("cairn-0-b.conf", &b1)]);

        // Running A, install and try B.
        let mut sd = SdBoot::new(fs.clone(), Some(Slot::A));
        sd.install_entry(Slot::B, &entry(Slot::B, "2")).unwrap();
        assert_eq!(
            entries_of(&fs),
            expect(&[("cairn-1-a.conf", &a1), ("cairn-2-b+0-0.conf", &b2)])
        );
        assert_eq!(sd.status().unwrap().next, Some(Slot::A));
        sd.set_trial(Slot::B, 2).unwrap();
        let s = sd.status().unwrap();
        assert_eq!(s.next, Some(Slot::B));
        assert_eq!(s.slot(Slot::B).tries_left, Some(2));
        assert!(!s.slot(Slot::B).successful && !s.trial);

        // B's first boot: counted, running as a trial.
        assert_eq!(firmware_boot(&mut fs), Slot::B);
        let mut sd = SdBoot::new(fs.clone(), Some(Slot::B));
        let s = sd.status().unwrap();
        assert!(s.trial);
        assert_eq!(s.slot(Slot::B).tries_left, Some(1));
        // It never marks itself good: one more try, then back to A.
        assert_eq!(firmware_boot(&mut fs), Slot::B);
        let s = sd.status().unwrap();
        assert!(s.trial && !s.slot(Slot::B).bootable);
        assert_eq!(s.next, Some(Slot::A));
        assert_eq!(firmware_boot(&mut fs), Slot::A);
        assert_eq!(firmware_boot(&mut fs), Slot::A, "A is not counted");
        let mut sd = SdBoot::new(fs.clone(), Some(Slot::A));
        assert!(!sd.status().unwrap().trial);
        sd.mark_bad(Slot::B).unwrap();
        assert_eq!(
            entries_of(&fs),
            expect(&[("cairn-1-a.conf", &a1), ("cairn-3-b+0-2.conf", &b2)]),
            "already bad: unchanged"
        );

        // Try again; this time B marks itself good and stays.
        sd.set_trial(Slot::B, 3).unwrap();
        assert_eq!(firmware_boot(&mut fs), Slot::B);
        let mut sd = SdBoot::new(fs.clone(), Some(Slot::B));
        sd.mark_good(Slot::B).unwrap();
        assert_eq!(
            entries_of(&fs),
            expect(&[("cairn-1-a.conf", &a1), ("cairn-4-b.conf", &b2)])
        );
        let s = sd.status().unwrap();
        assert!(!s.trial && s.slot(Slot::B).successful);
        assert_eq!((s.next, s.slot(Slot::B).priority), (Some(Slot::B), 4));
        assert_eq!(firmware_boot(&mut fs), Slot::B);
        assert_eq!(firmware_boot(&mut fs), Slot::B);
        // A is still the fallback: marking B bad boots A.
        sd.mark_bad(Slot::B).unwrap();
        assert_eq!(sd.status().unwrap().next, Some(Slot::A));
        // A bad slot may be marked good again by an operator.
        sd.mark_good(Slot::B).unwrap();
        assert_eq!(sd.status().unwrap().next, Some(Slot::B));
    }

    #[test]
    fn refuses_what_would_leave_nothing_bootable_or_touch_the_running_slot() {
        let (a1, b1) = (text(Slot::A, "1"), text(Slot::B, "1"));
        let fs = esp(&[("cairn-1-a.conf", &a1), ("cairn-2-b+0-3.conf", &b1)]);
        let mut sd = SdBoot::new(fs.clone(), Some(Slot::A));
        let before = fs.files();
        let err = sd.mark_bad(Slot::A).unwrap_err().to_string();
        assert_eq!(
            err,
            "refusing to mark slot a bad: the other slot is not bootable, so nothing would boot"
        );
        let err = sd.install_entry(Slot::A, &entry(Slot::A, "2")).unwrap_err();
        assert_eq!(
            err.to_string(),
            "refusing to replace the boot entry of slot a: it is the running slot"
        );
        let mut other = SdBoot::new(fs.clone(), Some(Slot::B));
        assert!(matches!(
            other.install_entry(Slot::A, &entry(Slot::A, "2")),
            Err(Error::LastBootableSlot(Slot::A))
        ));
        for tries in [0, MAX_TRIES + 1] {
            let err = sd.set_trial(Slot::B, tries).unwrap_err().to_string();
            assert_eq!(err, format!("a trial needs 1..=10 tries, not {tries}"));
        }
        assert_eq!(fs.files(), before, "refused operations write nothing");

        let mut empty = SdBoot::new(esp(&[("cairn-1-a.conf", &a1)]), Some(Slot::A));
        let err = empty.set_trial(Slot::B, 1).unwrap_err().to_string();
        assert_eq!(
            err,
            "slot b has no boot entry in loader/entries: install one first"
        );
        assert!(empty.mark_good(Slot::B).is_err());
        let s = empty.status().unwrap();
        assert!(!s.slot(Slot::B).bootable && s.slot(Slot::B).priority == 0);
    }

    #[test]
    fn refuses_an_oversized_entry_and_a_generation_overflow() {
        let big = "x".repeat(MAX_ENTRY_LEN + 1);
        let mut sd = SdBoot::new(
            esp(&[("cairn-1-a.conf", "a"), ("cairn-0-b.conf", &big)]),
            Some(Slot::A),
        );
        let err = sd.set_trial(Slot::B, 1).unwrap_err().to_string();
        assert_eq!(
            err,
            "loader/entries/cairn-0-b.conf is larger than 65536 bytes; refusing to read it"
        );
        let mut sd = SdBoot::new(
            esp(&[("cairn-4294967295-a.conf", "a"), ("cairn-0-b.conf", "b")]),
            Some(Slot::A),
        );
        let err = sd.set_trial(Slot::B, 1).unwrap_err().to_string();
        assert_eq!(
            err,
            "loader/entries: entry generation 4294967295 is the largest possible; \
             renumber the entries"
        );
    }

    #[test]
    fn a_failed_write_leaves_a_bootable_state() {
        let (a1, b1) = (text(Slot::A, "1"), text(Slot::B, "1"));
        let start = [("cairn-1-a.conf", a1.as_str()), ("cairn-0-b.conf", &b1)];
        for ok_writes in 0..4 {
            let fs = esp(&start);
            fs.fail_writes_after(ok_writes);
            let mut sd = SdBoot::new(fs.clone(), Some(Slot::A));
            let err = sd.set_trial(Slot::B, 3).unwrap_err().to_string();
            assert!(err.starts_with("cannot "), "{err}");
            let names: Vec<String> = fs.list(ENTRIES_DIR).unwrap();
            let (_, slot) = next_boot(&names).unwrap().unwrap();
            assert!(slot == Slot::A || slot == Slot::B);
            assert!(SdBoot::new(fs, Some(Slot::A)).status().is_ok());
        }
    }

    type Op = dyn Fn(&mut SdBoot<MemFs>) -> Result<(), Error>;

    /// Runs `ops` from `start` with the power cut after every possible number of writes and
    /// checks what the next boot finds: systemd-boot picks a non-bad entry whose contents are
    /// one of `contents` for its slot; the status is the one after some prefix of `ops`; a
    /// run without cut ends in `end`. Returns the number of writes.
    fn check_power_cuts(
        start: &[(&str, &str)],
        running: Slot,
        ops: &[&Op],
        end: &[(&str, &str)],
        contents: &[(Slot, &str)],
    ) -> Result<usize, String> {
        let status_of = |fs: MemFs| SdBoot::new(fs, Some(running)).status();
        let dry = esp(start);
        let mut statuses = vec![status_of(dry.persisted()).map_err(|e| e.to_string())?];
        let mut sd = SdBoot::new(dry.clone(), Some(running));
        for op in ops {
            op(&mut sd).map_err(|e| format!("uncut run: {e}"))?;
            statuses.push(status_of(dry.persisted()).map_err(|e| e.to_string())?);
        }
        if entries_of(&dry) != expect(end) {
            return Err(format!("uncut run ends in {:?}", entries_of(&dry)));
        }
        let writes = dry.writes();
        for n in 0..=writes {
            let fs = esp(start);
            fs.cut_power_after(n);
            let mut sd = SdBoot::new(fs.clone(), Some(running));
            for op in ops {
                op(&mut sd).map_err(|e| format!("cut after {n}: {e}"))?;
            }
            let disk = fs.persisted();
            let names = disk.list(ENTRIES_DIR).unwrap();
            let (name, slot) = next_boot(&names)
                .map_err(|e| e.to_string())?
                .ok_or(format!("cut after {n}: no entry at all"))?;
            if EntryFile::parse(&name).unwrap().unwrap().is_bad() {
                return Err(format!("cut after {n}: only bad entries: {names:?}"));
            }
            let got = disk.read(&format!("{ENTRIES_DIR}/{name}"), MAX_ENTRY_LEN);
            let got = String::from_utf8(got.unwrap().unwrap()).unwrap();
            if !contents.iter().any(|(s, c)| *s == slot && *c == got) {
                return Err(format!("cut after {n}: {name} holds {got:?}"));
            }
            let status = status_of(disk.clone()).map_err(|e| e.to_string())?;
            if !statuses.contains(&status) {
                return Err(format!(
                    "cut after {n}: status {status:?} is none of {statuses:?}"
                ));
            }
            if n == writes && entries_of(&disk) != expect(end) {
                return Err(format!("all writes persisted: {:?}", entries_of(&disk)));
            }
        }
        Ok(writes)
    }

    fn set_trial(slot: Slot, tries: u32) -> impl Fn(&mut SdBoot<MemFs>) -> Result<(), Error> {
        move |sd| sd.set_trial(slot, tries)
    }

    fn mark_good(slot: Slot) -> impl Fn(&mut SdBoot<MemFs>) -> Result<(), Error> {
        move |sd| sd.mark_good(slot)
    }

    fn mark_bad(slot: Slot) -> impl Fn(&mut SdBoot<MemFs>) -> Result<(), Error> {
        move |sd| sd.mark_bad(slot)
    }

    #[test]
    fn power_cut_during_set_trial_from_a_fresh_image() {
        let (a1, b1) = (text(Slot::A, "1"), text(Slot::B, "1"));
        let writes = check_power_cuts(
            &[("cairn-1-a.conf", &a1), ("cairn-0-b.conf", &b1)],
            Slot::A,
            &[&set_trial(Slot::B, 3)],
            &[("cairn-1-a.conf", &a1), ("cairn-2-b+3-0.conf", &b1)],
            &[(Slot::A, &a1), (Slot::B, &b1)],
        )
        .unwrap();
        assert_eq!(writes, 4, "create, write, rename, remove");
    }

    #[test]
    fn power_cut_during_mark_good_in_a_trial() {
        let (a1, b2) = (text(Slot::A, "1"), text(Slot::B, "2"));
        let writes = check_power_cuts(
            &[("cairn-1-a.conf", &a1), ("cairn-2-b+2-1.conf", &b2)],
            Slot::B,
            &[&mark_good(Slot::B)],
            &[("cairn-1-a.conf", &a1), ("cairn-2-b.conf", &b2)],
            &[(Slot::A, &a1), (Slot::B, &b2)],
        )
        .unwrap();
        assert_eq!(writes, 1);
    }

    #[test]
    fn power_cut_during_mark_bad() {
        let (a1, b2) = (text(Slot::A, "1"), text(Slot::B, "2"));
        let writes = check_power_cuts(
            &[("cairn-1-a.conf", &a1), ("cairn-2-b.conf", &b2)],
            Slot::B,
            &[&mark_bad(Slot::B)],
            &[("cairn-1-a.conf", &a1), ("cairn-2-b+0-0.conf", &b2)],
            &[(Slot::A, &a1), (Slot::B, &b2)],
        )
        .unwrap();
        assert_eq!(writes, 1);
    }

    #[test]
    fn power_cut_during_mark_bad_with_a_stale_good_entry() {
        // A cut during an earlier set_trial(A) left A's previous entry, and A's trial failed:
        // the stale entry is what boots. Marking A bad must remove it.
        let (a1, a2, b1) = (text(Slot::A, "1"), text(Slot::A, "2"), text(Slot::B, "1"));
        let writes = check_power_cuts(
            &[
                ("cairn-3-a+0-3.conf", &a2),
                ("cairn-2-a.conf", &a1),
                ("cairn-1-b.conf", &b1),
            ],
            Slot::A,
            &[&mark_bad(Slot::A)],
            &[("cairn-3-a+0-3.conf", &a2), ("cairn-1-b.conf", &b1)],
            &[(Slot::A, &a1), (Slot::B, &b1)],
        )
        .unwrap();
        assert_eq!(writes, 1);
    }

    #[test]
    fn power_cut_during_set_trial_of_a_while_b_is_good() {
        let (a1, b2) = (text(Slot::A, "1"), text(Slot::B, "2"));
        let writes = check_power_cuts(
            &[("cairn-1-a.conf", &a1), ("cairn-2-b.conf", &b2)],
            Slot::B,
            &[&set_trial(Slot::A, 3)],
            &[("cairn-2-b.conf", &b2), ("cairn-3-a+3-0.conf", &a1)],
            &[(Slot::A, &a1), (Slot::B, &b2)],
        )
        .unwrap();
        assert_eq!(writes, 4);
    }

    #[test]
    fn power_cut_during_install_and_set_trial() {
        let (a1, b1, b2) = (text(Slot::A, "1"), text(Slot::B, "1"), text(Slot::B, "2"));
        let install = |sd: &mut SdBoot<MemFs>| sd.install_entry(Slot::B, &entry(Slot::B, "2"));
        let writes = check_power_cuts(
            &[("cairn-1-a.conf", &a1), ("cairn-0-b.conf", &b1)],
            Slot::A,
            &[&install, &set_trial(Slot::B, 3)],
            &[("cairn-1-a.conf", &a1), ("cairn-3-b+3-0.conf", &b2)],
            &[(Slot::A, &a1), (Slot::B, &b1), (Slot::B, &b2)],
        )
        .unwrap();
        assert_eq!(writes, 8);
    }

    /// The checker is not vacuous: orders of writes that a power cut breaks are caught.
    #[test]
    fn power_cut_check_catches_unsafe_write_orders() {
        let (a1, b1) = (text(Slot::A, "1"), text(Slot::B, "1"));
        let start = [("cairn-1-a.conf", a1.as_str()), ("cairn-0-b.conf", &b1)];
        let end = [("cairn-1-a.conf", a1.as_str()), ("cairn-2-b+3-0.conf", &b1)];
        let contents = [(Slot::A, a1.as_str()), (Slot::B, &b1)];
        let b1_bytes = b1.clone();

        // Removing the old entry before writing the new one loses slot B for a moment.
        let remove_first = move |sd: &mut SdBoot<MemFs>| {
            let mut fs = sd.fs().clone();
            fs.remove("loader/entries/cairn-0-b.conf")?;
            fs.write_new("loader/entries/.cairn-entry.tmp", b1_bytes.as_bytes())?;
            fs.rename(
                "loader/entries/.cairn-entry.tmp",
                "loader/entries/cairn-2-b+3-0.conf",
            )
        };
        let err = check_power_cuts(&start, Slot::A, &[&remove_first], &end, &contents).unwrap_err();
        assert!(err.contains("cut after 1: status"), "{err}");

        // Writing the entry under its final name lets systemd-boot find it empty.
        let b1_bytes = b1.clone();
        let in_place = move |sd: &mut SdBoot<MemFs>| {
            let mut fs = sd.fs().clone();
            fs.write_new("loader/entries/cairn-2-b+3-0.conf", b1_bytes.as_bytes())?;
            fs.remove("loader/entries/cairn-0-b.conf")
        };
        let err = check_power_cuts(&start, Slot::A, &[&in_place], &end, &contents).unwrap_err();
        assert!(
            err.contains("cut after 1: cairn-2-b+3-0.conf holds \"\""),
            "{err}"
        );
    }
    /// The ESP's UKIs as (name, contents).
    fn ukis_of(fs: &MemFs) -> BTreeMap<String, String> {
        fs.files()
            .into_iter()
            .filter_map(|(p, c)| {
                let name = p.strip_prefix(&format!("{UKI_DIR}/"))?.to_string();
                Some((name, String::from_utf8(c).unwrap()))
            })
            .collect()
    }

    fn uki_esp(ukis: &[(&str, &str)]) -> MemFs {
        let mut files = vec![(LOADER_CONF_PATH.to_string(), loader_conf())];
        files.extend(
            ukis.iter()
                .map(|(n, c)| (format!("{UKI_DIR}/{n}"), c.to_string())),
        );
        MemFs::with_files(files)
    }

    #[test]
    fn ukis_are_counted_in_their_file_names_like_entries() {
        assert_eq!(
            initial_uki_names().map(|(_, n)| n),
            ["cairn-1-a.efi".to_string(), "cairn-0-b.efi".into()]
        );
        let mut fs = uki_esp(&[("cairn-1-a.efi", "a1"), ("cairn-0-b.efi", "b1")]);
        let mut sd = SdBoot::new(fs.clone(), Some(Slot::A));
        assert_eq!(sd.status().unwrap().next, Some(Slot::A));
        // The installer streams the new UKI to the temporary name, then installs it.
        fs.write_new(&format!("{UKI_DIR}/{UKI_TEMP_NAME}"), b"b2")
            .unwrap();
        sd.install_uki(Slot::B).unwrap();
        assert_eq!(
            ukis_of(&fs),
            expect(&[("cairn-1-a.efi", "a1"), ("cairn-2-b+0-0.efi", "b2")])
        );
        assert_eq!(sd.status().unwrap().next, Some(Slot::A));
        sd.set_trial(Slot::B, 2).unwrap();
        assert_eq!(
            ukis_of(&fs),
            expect(&[("cairn-1-a.efi", "a1"), ("cairn-3-b+2-0.efi", "b2")])
        );
        assert_eq!(firmware_boot(&mut fs), Slot::B);
        assert!(ukis_of(&fs).contains_key("cairn-3-b+1-1.efi"));
        assert_eq!(firmware_boot(&mut fs), Slot::B);
        // Tries used up: systemd-boot falls back to A by itself.
        assert_eq!(firmware_boot(&mut fs), Slot::A);
        let mut sd = SdBoot::new(fs.clone(), Some(Slot::A));
        let s = sd.status().unwrap();
        assert!(!s.slot(Slot::B).bootable && s.next == Some(Slot::A));
        sd.set_trial(Slot::B, 1).unwrap();
        assert_eq!(firmware_boot(&mut fs), Slot::B);
        let mut sd = SdBoot::new(fs.clone(), Some(Slot::B));
        sd.mark_good(Slot::B).unwrap();
        assert_eq!(
            ukis_of(&fs),
            expect(&[("cairn-1-a.efi", "a1"), ("cairn-4-b.efi", "b2")])
        );
        sd.mark_bad(Slot::B).unwrap();
        assert_eq!(
            ukis_of(&fs),
            expect(&[("cairn-1-a.efi", "a1"), ("cairn-4-b+0-0.efi", "b2")])
        );
        // Refusals write nothing.
        let before = fs.files();
        let mut on_a = SdBoot::new(fs.clone(), Some(Slot::A));
        assert!(matches!(
            on_a.install_uki(Slot::A),
            Err(Error::RunningSlot(Slot::A))
        ));
        assert!(on_a.mark_bad(Slot::A).is_err());
        assert_eq!(fs.files(), before);
    }

    #[test]
    fn a_power_cut_during_a_uki_trial_or_install_leaves_a_good_uki_to_boot() {
        let start = [("cairn-1-a.efi", "a1"), ("cairn-0-b.efi", "b1")];
        let dry = uki_esp(&start);
        let mut sd = SdBoot::new(dry.clone(), Some(Slot::A));
        let mut w = dry.clone();
        w.write_new(&format!("{UKI_DIR}/{UKI_TEMP_NAME}"), b"b2")
            .unwrap();
        let first = dry.writes();
        sd.install_uki(Slot::B).unwrap();
        sd.set_trial(Slot::B, 3).unwrap();
        let writes = dry.writes() - first;
        assert_eq!(writes, 3, "rename, remove; rename (no copy of the UKI)");
        for n in 0..=writes {
            let fs = uki_esp(&start);
            let mut w = fs.clone();
            w.write_new(&format!("{UKI_DIR}/{UKI_TEMP_NAME}"), b"b2")
                .unwrap();
            fs.cut_power_after(n);
            let mut sd = SdBoot::new(fs.clone(), Some(Slot::A));
            let _ = sd.install_uki(Slot::B);
            let _ = sd.set_trial(Slot::B, 3);
            let disk = fs.persisted();
            let names = disk.list(UKI_DIR).unwrap();
            let (name, slot) = next_boot(&names).unwrap().unwrap();
            assert!(!EntryFile::parse(&name).unwrap().unwrap().is_bad(), "{n}");
            let got = disk
                .read(&format!("{UKI_DIR}/{name}"), 16)
                .unwrap()
                .unwrap();
            let ok = match slot {
                Slot::A => got == b"a1",
                Slot::B => got == b"b1" || got == b"b2",
            };
            assert!(ok, "cut after {n}: {name} holds {got:?}");
        }
    }

    #[test]
    fn ukis_sort_before_conf_entries_as_systemd_boot_sorts_them() {
        assert_eq!(
            next_boot(&["cairn-5-a.conf", "cairn-1-b.efi"]).unwrap(),
            Some(("cairn-1-b.efi".into(), Slot::B))
        );
        assert_eq!(
            next_boot(&["cairn-5-a.conf", "cairn-1-b+0-3.efi"]).unwrap(),
            Some(("cairn-5-a.conf".into(), Slot::A))
        );
        let err = next_boot(&["cairn-x-b.efi"]).unwrap_err().to_string();
        assert_eq!(
            err,
            "EFI/Linux/cairn-x-b.efi: not a Cairn entry name \
             (expected cairn-<generation>-<a|b>[+<left>-<done>].efi)"
        );
        // A .efi in loader/entries is not an entry, for systemd-boot or for Cairn.
        let fs = esp(&[("cairn-1-a.conf", "a"), ("cairn-9-b.efi", "b")]);
        let s = SdBoot::new(fs, Some(Slot::A)).status().unwrap();
        assert!(!s.slot(Slot::B).bootable);
    }
}
