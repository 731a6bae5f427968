//! The A/B slot state in the U-Boot environment, in RAUC's variables, so that RAUC's documented
//! boot script logic (ours is `boot/uboot/boot.cmd`) and RAUC's tooling read it unchanged.
//!
//! - `BOOT_ORDER`: the slots U-Boot may boot, space-separated, first = highest priority (`B A`).
//! - `BOOT_A_LEFT`, `BOOT_B_LEFT`: tries left, hexadecimal without `0x` (RAUC writes `%x`, U-Boot's
//!   `setexpr` writes `%lx`, RAUC and `itest` read base 16). The boot script boots the first slot
//!   in `BOOT_ORDER` with tries left, decrementing its count and saving before it boots; when no
//!   slot has any, it resets every count to 3 and resets the board.
//! - `CAIRN_TRIAL`: Cairn's own marker, the slot under trial since [`Op::SetTrial`] and not yet
//!   marked good or bad. RAUC has no notion of "committed"; U-Boot ignores this variable.
//!
//! The idea: every operation is one read-modify-write of the environment, i.e. one write of the
//! inactive copy, so a power cut leaves either the old state or the new one, never a mix (RAUC
//! itself calls `fw_setenv` twice for `set_primary`; Cairn does not).
//!
//! A missing `BOOT_ORDER` or `BOOT_x_LEFT` reads as the boot script's default (`A B`, 3), so
//! Cairn reports what U-Boot will actually do.

use crate::uboot::env::{EnvStore, Storage, Vars};
use crate::{Error, Slot};

pub const ORDER_KEY: &str = "BOOT_ORDER";
pub const TRIAL_KEY: &str = "CAIRN_TRIAL";

/// Tries a slot gets when marked good, and the boot script's reset value (RAUC's default too).
pub const DEFAULT_TRIES: u32 = 3;

/// Most tries a trial may have; U-Boot's `itest` and `setexpr` handle far more, but a trial that
/// needs more than this is a mistake.
pub const MAX_TRIES: u32 = 255;

/// The order the boot script assumes when `BOOT_ORDER` is unset.
pub const DEFAULT_ORDER: [Slot; 2] = [Slot::A, Slot::B];

/// The slot's name in RAUC's variables: `A` or `B`.
pub fn bootname(slot: Slot) -> &'static str {
    match slot {
        Slot::A => "A",
        Slot::B => "B",
    }
}

/// `BOOT_A_LEFT` or `BOOT_B_LEFT`.
pub fn left_key(slot: Slot) -> &'static str {
    match slot {
        Slot::A => "BOOT_A_LEFT",
        Slot::B => "BOOT_B_LEFT",
    }
}

fn from_bootname(name: &str) -> Option<Slot> {
    match name {
        "A" => Some(Slot::A),
        "B" => Some(Slot::B),
        _ => None,
    }
}

/// One slot as U-Boot will see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SlotStatus {
    pub slot: Slot,
    /// In `BOOT_ORDER`: U-Boot may boot it (now if it has tries left, else after the reset
    /// that happens when no slot has any).
    pub bootable: bool,
    /// Position in `BOOT_ORDER`, 0 = tried first.
    pub priority: Option<usize>,
    pub tries_left: u32,
    /// Bootable and not under trial: it was marked good (or never put on trial).
    pub committed: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    pub order: Vec<Slot>,
    pub trial: Option<Slot>,
    slots: [SlotStatus; 2],
}

impl Status {
    /// Reads the state from the variables.
    pub fn from_vars(vars: &Vars) -> Result<Status, Error> {
        let order = read_order(vars)?;
        let trial = match vars.get(TRIAL_KEY) {
            None => None,
            Some(v) => Some(from_bootname(v).ok_or_else(|| Error::EnvValue {
                key: TRIAL_KEY.into(),
                reason: "not `A` or `B`",
            })?),
        };
        let status = |slot| -> Result<SlotStatus, Error> {
            let priority = order.iter().position(|&s| s == slot);
            let bootable = priority.is_some();
            Ok(SlotStatus {
                slot,
                bootable,
                priority,
                tries_left: read_tries(vars, slot)?,
                committed: bootable && trial != Some(slot),
            })
        };
        Ok(Status {
            slots: [status(Slot::A)?, status(Slot::B)?],
            order,
            trial,
        })
    }

    pub fn slot(&self, slot: Slot) -> &SlotStatus {
        match slot {
            Slot::A => &self.slots[0],
            Slot::B => &self.slots[1],
        }
    }

    pub fn slots(&self) -> &[SlotStatus; 2] {
        &self.slots
    }

    /// The slot the boot script picks next: the first in `BOOT_ORDER` with tries left, or, if
    /// none has any, the first in `BOOT_ORDER` (after the script's reset). `None` only if
    /// `BOOT_ORDER` names no slot at all.
    pub fn next_boot(&self) -> Option<Slot> {
        self.order
            .iter()
            .copied()
            .find(|&s| self.slot(s).tries_left > 0)
            .or(self.order.first().copied())
    }
}

fn read_order(vars: &Vars) -> Result<Vec<Slot>, Error> {
    let Some(value) = vars.get(ORDER_KEY) else {
        return Ok(DEFAULT_ORDER.to_vec());
    };
    let bad = |reason| Error::BootOrder {
        value: value.to_string(),
        reason,
    };
    let mut order = Vec::new();
    for name in value.split(' ').filter(|n| !n.is_empty()) {
        let slot = from_bootname(name).ok_or_else(|| bad("unknown slot name"))?;
        if order.contains(&slot) {
            return Err(bad("a slot is listed twice"));
        }
        order.push(slot);
    }
    Ok(order)
}

fn read_tries(vars: &Vars, slot: Slot) -> Result<u32, Error> {
    let key = left_key(slot);
    let Some(value) = vars.get(key) else {
        return Ok(DEFAULT_TRIES);
    };
    let digits = value.strip_prefix("0x").unwrap_or(value);
    if digits.is_empty() || digits.len() > 8 || !digits.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(Error::BootTries {
            key,
            value: value.to_string(),
        });
    }
    // Cannot fail: at most 8 hex digits.
    Ok(u32::from_str_radix(digits, 16).unwrap_or(u32::MAX))
}

fn write_order(vars: &mut Vars, order: &[Slot]) -> Result<(), Error> {
    let names: Vec<&str> = order.iter().map(|&s| bootname(s)).collect();
    vars.set(ORDER_KEY, &names.join(" "))
}

fn write_tries(vars: &mut Vars, slot: Slot, tries: u32) -> Result<(), Error> {
    vars.set(left_key(slot), &format!("{tries:x}"))
}

/// `slot` first, then the rest of the current order.
fn promote(order: &[Slot], slot: Slot) -> Vec<Slot> {
    std::iter::once(slot)
        .chain(order.iter().copied().filter(|&s| s != slot))
        .collect()
}

/// A change of the slot state; each is applied as one environment write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// Boot `slot` next with this many tries: first in `BOOT_ORDER`, `BOOT_x_LEFT = tries`,
    /// under trial until marked good or bad.
    SetTrial(Slot, u32),
    /// The slot booted and works: first in `BOOT_ORDER`, tries back to [`DEFAULT_TRIES`], no
    /// longer under trial.
    MarkGood(Slot),
    /// Never boot the slot: out of `BOOT_ORDER`, `BOOT_x_LEFT = 0`. Refused for the last slot in
    /// `BOOT_ORDER`.
    MarkBad(Slot),
}

impl Op {
    /// Applies the change to the variables (no I/O).
    pub fn apply(self, vars: &mut Vars) -> Result<(), Error> {
        let order = read_order(vars)?;
        let trial = vars.get(TRIAL_KEY).and_then(from_bootname);
        match self {
            Op::SetTrial(slot, tries) => {
                if !(1..=MAX_TRIES).contains(&tries) {
                    return Err(Error::TrialTries {
                        tries,
                        max: MAX_TRIES,
                    });
                }
                write_order(vars, &promote(&order, slot))?;
                write_tries(vars, slot, tries)?;
                vars.set(TRIAL_KEY, bootname(slot))?;
            }
            Op::MarkGood(slot) => {
                write_order(vars, &promote(&order, slot))?;
                write_tries(vars, slot, DEFAULT_TRIES)?;
                if trial == Some(slot) {
                    vars.unset(TRIAL_KEY);
                }
            }
            Op::MarkBad(slot) => {
                let rest: Vec<Slot> = order.iter().copied().filter(|&s| s != slot).collect();
                if rest.is_empty() {
                    return Err(Error::LastBootableSlot(slot));
                }
                write_order(vars, &rest)?;
                write_tries(vars, slot, 0)?;
                if trial == Some(slot) {
                    vars.unset(TRIAL_KEY);
                }
            }
        }
        Ok(())
    }
}

/// The variables of a freshly built image: only `primary` bootable, with the default tries.
pub fn initial_vars(primary: Slot) -> Vars {
    let mut vars = Vars::new();
    // Cannot fail: constant names and non-empty values.
    let _ = write_order(&mut vars, &[primary]);
    let _ = write_tries(&mut vars, primary, DEFAULT_TRIES);
    let _ = write_tries(&mut vars, primary.other(), 0);
    vars
}

/// The slot state on a redundant U-Boot environment.
#[derive(Debug)]
pub struct BootState<S> {
    store: EnvStore<S>,
}

impl<S: Storage> BootState<S> {
    pub fn new(store: EnvStore<S>) -> Self {
        BootState { store }
    }

    /// The current state, re-read from the device.
    pub fn status(&mut self) -> Result<Status, Error> {
        self.store.reload()?;
        Status::from_vars(self.store.vars())
    }

    /// Applies one operation as a single environment write; returns the new state.
    pub fn apply(&mut self, op: Op) -> Result<Status, Error> {
        self.store.update(|vars| op.apply(vars))?;
        Status::from_vars(self.store.vars())
    }

    pub fn set_trial(&mut self, slot: Slot, tries: u32) -> Result<Status, Error> {
        self.apply(Op::SetTrial(slot, tries))
    }

    pub fn mark_good(&mut self, slot: Slot) -> Result<Status, Error> {
        self.apply(Op::MarkGood(slot))
    }

    pub fn mark_bad(&mut self, slot: Slot) -> Result<Status, Error> {
        self.apply(Op::MarkBad(slot))
    }

    pub fn store(&self) -> &EnvStore<S> {
        &self.store
    }

    pub fn into_store(self) -> EnvStore<S> {
        self.store
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::uboot::env::{encode_copy, Area, Limits, MemStorage, PersistOrder};

    const SIZE: usize = 0x2000;

    fn store_on(mem: &MemStorage) -> Result<EnvStore<MemStorage>, Error> {
        EnvStore::open(
            Area::new(mem.clone(), 0),
            Area::new(mem.clone(), SIZE as u64),
            SIZE,
            Limits::default(),
        )
    }

    fn status_of(vars: &Vars) -> Status {
        Status::from_vars(vars).unwrap()
    }

    fn apply(vars: &Vars, op: Op) -> Vars {
        let mut v = vars.clone();
        op.apply(&mut v).unwrap();
        v
    }

    #[test]
    fn initial_state_boots_the_primary_only() {
        let s = status_of(&initial_vars(Slot::A));
        assert_eq!(s.order, vec![Slot::A]);
        assert_eq!(s.next_boot(), Some(Slot::A));
        let a = s.slot(Slot::A);
        assert!(a.bootable && a.committed && a.tries_left == 3 && a.priority == Some(0));
        let b = s.slot(Slot::B);
        assert!(!b.bootable && !b.committed && b.tries_left == 0 && b.priority.is_none());
    }

    #[test]
    fn trial_then_good_then_bad() {
        let v0 = initial_vars(Slot::A);
        let v1 = apply(&v0, Op::SetTrial(Slot::B, 5));
        assert_eq!(v1.get("BOOT_ORDER"), Some("B A"));
        assert_eq!(v1.get("BOOT_B_LEFT"), Some("5"));
        let s = status_of(&v1);
        assert_eq!((s.trial, s.next_boot()), (Some(Slot::B), Some(Slot::B)));
        assert!(!s.slot(Slot::B).committed && s.slot(Slot::A).committed);
        assert_eq!(s.slot(Slot::A).priority, Some(1));

        let v2 = apply(&v1, Op::MarkGood(Slot::B));
        assert_eq!(v2.get("BOOT_B_LEFT"), Some("3"));
        assert_eq!(v2.get(TRIAL_KEY), None);
        assert!(status_of(&v2).slot(Slot::B).committed);

        let v3 = apply(&v2, Op::MarkBad(Slot::A));
        assert_eq!(v3.get("BOOT_ORDER"), Some("B"));
        assert_eq!(v3.get("BOOT_A_LEFT"), Some("0"));
        assert!(!status_of(&v3).slot(Slot::A).bootable);

        let mut v4 = v3.clone();
        assert!(matches!(
            Op::MarkBad(Slot::B).apply(&mut v4),
            Err(Error::LastBootableSlot(Slot::B))
        ));
        assert_eq!(v4, v3, "a refused operation changes nothing");
    }

    #[test]
    fn failed_trial_falls_back_and_mark_bad_ends_the_trial() {
        let mut v = apply(&initial_vars(Slot::A), Op::SetTrial(Slot::B, 1));
        // The boot script used B's only try and B never marked itself good.
        v.set("BOOT_B_LEFT", "0").unwrap();
        let s = status_of(&v);
        assert_eq!(s.next_boot(), Some(Slot::A));
        let v = apply(&v, Op::MarkBad(Slot::B));
        let s = status_of(&v);
        assert_eq!((s.order.clone(), s.trial), (vec![Slot::A], None));
    }

    #[test]
    fn reads_rauc_and_setexpr_values() {
        let mut v = Vars::new();
        let s = status_of(&v);
        assert_eq!(s.order, vec![Slot::A, Slot::B]);
        assert_eq!(s.slot(Slot::B).tries_left, 3);
        v.set("BOOT_ORDER", " B  A ").unwrap();
        v.set("BOOT_A_LEFT", "a").unwrap();
        v.set("BOOT_B_LEFT", "0x10").unwrap();
        let s = status_of(&v);
        assert_eq!(s.order, vec![Slot::B, Slot::A]);
        assert_eq!(
            (s.slot(Slot::A).tries_left, s.slot(Slot::B).tries_left),
            (10, 16)
        );
        for (key, bad) in [
            ("BOOT_ORDER", "A C"),
            ("BOOT_ORDER", "A A"),
            ("BOOT_A_LEFT", "-1"),
        ] {
            let mut w = v.clone();
            w.set(key, bad).unwrap();
            assert!(Status::from_vars(&w).is_err(), "{key}={bad}");
        }
        assert!(matches!(
            Op::SetTrial(Slot::A, 0).apply(&mut v),
            Err(Error::TrialTries { tries: 0, .. })
        ));
    }

    /// For each operation and each point at which the power can fail during its write, the
    /// state read back afterwards is the old one or the new one, and names a bootable slot.
    #[test]
    fn every_operation_survives_a_power_cut_anywhere() {
        let mut start = initial_vars(Slot::A);
        // Spread the list over several sectors, so that a torn write can tear it.
        start.set("cairn_filler", &"x".repeat(3000)).unwrap();
        let ops = [
            Op::SetTrial(Slot::B, 3),
            Op::MarkGood(Slot::B),
            Op::MarkBad(Slot::A),
            Op::SetTrial(Slot::A, 2),
            Op::MarkBad(Slot::A),
            Op::MarkGood(Slot::A),
        ];
        // Start near the flags wrap so the sequence crosses 255 -> 0.
        let mut image = encode_copy(&start, SIZE, 253).unwrap();
        image.extend(vec![0xffu8; SIZE]);
        let mem = MemStorage::new(image);
        let mut state = BootState::new(store_on(&mem).unwrap());
        let mut flags_seen = Vec::new();

        for op in ops {
            let before_bytes = mem.bytes();
            let old = state.status().unwrap();
            // A run without a cut gives the new state and the write's size in sectors.
            let new = {
                let dry = MemStorage::new(before_bytes.clone());
                let mut s = BootState::new(store_on(&dry).unwrap());
                let before = dry.sectors_written();
                let new = s.apply(op).unwrap();
                assert_eq!(dry.sectors_written() - before, SIZE / MemStorage::SECTOR);
                new
            };
            assert_ne!(old, new, "{op:?} must change something");
            for order in [PersistOrder::Forward, PersistOrder::Reverse] {
                let mut outcomes = [false; 2];
                for n in 0..=SIZE / MemStorage::SECTOR {
                    let cut = MemStorage::new(before_bytes.clone());
                    let mut s = BootState::new(store_on(&cut).unwrap());
                    cut.cut_power_after(n, order);
                    let _ = s.apply(op);
                    let rebooted = MemStorage::new(cut.bytes());
                    let got = BootState::new(store_on(&rebooted).unwrap())
                        .status()
                        .unwrap();
                    assert!(
                        got == old || got == new,
                        "{op:?}, {order:?}, cut after {n} sectors: {got:?}"
                    );
                    assert!(got.next_boot().is_some(), "{op:?} {n}: nothing bootable");
                    outcomes[usize::from(got == new)] = true;
                }
                assert_eq!(
                    outcomes,
                    [true, true],
                    "{op:?} {order:?}: both outcomes occur"
                );
            }
            let after = state.apply(op).unwrap();
            assert_eq!(after, new);
            flags_seen.push(state.store().env().flags());
        }
        assert_eq!(flags_seen, [254, 255, 0, 1, 2, 3]);
        let end = state.status().unwrap();
        assert_eq!(end.order, vec![Slot::A, Slot::B]);
        assert!(end.slot(Slot::A).committed && end.trial.is_none());
    }
}
