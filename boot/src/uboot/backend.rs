//! The U-Boot backend: the RAUC-style slot state of [`super::state`] behind the
//! [`Bootloader`] trait.
//!
//! Each operation is one write of the redundant environment, so a power cut leaves the old
//! state or the new one (see [`super::env`]). Unlike systemd-boot, U-Boot's boot script counts
//! every boot of every slot, committed or not: `tries_left` is always known, and a running
//! system must mark its slot good on every boot to keep its count up, as with RAUC.

use crate::model::{Bootloader, SlotInfo, Status};
use crate::uboot::env::Storage;
use crate::uboot::state::{self, BootState};
use crate::{Error, Slot};

/// The U-Boot backend over a redundant environment.
#[derive(Debug)]
pub struct UBoot<S> {
    state: BootState<S>,
    running: Option<Slot>,
}

impl<S: Storage> UBoot<S> {
    /// `running` is the slot on the kernel command line.
    pub fn new(state: BootState<S>, running: Option<Slot>) -> Self {
        UBoot { state, running }
    }

    pub fn state(&self) -> &BootState<S> {
        &self.state
    }

    pub fn into_state(self) -> BootState<S> {
        self.state
    }
}

/// The model's view of U-Boot's state. Priority: the slot first in `BOOT_ORDER` has the
/// highest; a slot outside it has 0.
pub fn model_status(uboot: &state::Status, running: Option<Slot>) -> Status {
    let info = |slot| {
        let s = uboot.slot(slot);
        SlotInfo {
            slot,
            bootable: s.bootable,
            priority: s.priority.map_or(0, |p| {
                u32::try_from(uboot.order.len() - p).unwrap_or(u32::MAX)
            }),
            tries_left: Some(s.tries_left),
            successful: s.committed,
        }
    };
    Status {
        running,
        trial: running.is_some_and(|r| uboot.trial == Some(r)),
        next: uboot.next_boot(),
        slots: Slot::ALL.map(info),
    }
}

impl<S: Storage> Bootloader for UBoot<S> {
    fn status(&mut self) -> Result<Status, Error> {
        Ok(model_status(&self.state.status()?, self.running))
    }

    /// Tries are limited to 1..=[`state::MAX_TRIES`].
    fn set_trial(&mut self, slot: Slot, tries: u32) -> Result<(), Error> {
        self.state.set_trial(slot, tries).map(drop)
    }

    fn mark_good(&mut self, slot: Slot) -> Result<(), Error> {
        self.state.mark_good(slot).map(drop)
    }

    /// Refused for the last slot in `BOOT_ORDER`.
    fn mark_bad(&mut self, slot: Slot) -> Result<(), Error> {
        self.state.mark_bad(slot).map(drop)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::uboot::env::{
        encode_copy, Area, EnvStore, Limits, MemStorage, PersistOrder, RedundantEnv, Vars,
    };
    use crate::uboot::state::{initial_vars, Op};

    const SIZE: usize = 0x2000;

    fn uboot_on(mem: &MemStorage, running: Slot) -> UBoot<MemStorage> {
        let store = EnvStore::open(
            Area::new(mem.clone(), 0),
            Area::new(mem.clone(), SIZE as u64),
            SIZE,
            Limits::default(),
        )
        .unwrap();
        UBoot::new(BootState::new(store), Some(running))
    }

    /// A medium holding `vars` in its first copy; the second is erased flash.
    fn medium(vars: &Vars) -> MemStorage {
        let mut bytes = encode_copy(vars, SIZE, 7).unwrap();
        bytes.extend(vec![0xff; SIZE]);
        MemStorage::new(bytes)
    }

    fn vars_after(start: &Vars, ops: &[Op]) -> Vars {
        let mut v = start.clone();
        for op in ops {
            op.apply(&mut v).unwrap();
        }
        v
    }

    /// What U-Boot reads at the next boot: the active copy, chosen by CRC and flags.
    fn env_at_boot(bytes: &[u8]) -> Vars {
        let env = RedundantEnv::parse(&bytes[..SIZE], &bytes[SIZE..], &Limits::default()).unwrap();
        env.vars().clone()
    }

    #[test]
    fn maps_the_rauc_state_to_the_model() {
        let mut v = initial_vars(Slot::A);
        Op::SetTrial(Slot::B, 3).apply(&mut v).unwrap();
        let s = model_status(&state::Status::from_vars(&v).unwrap(), Some(Slot::A));
        assert_eq!((s.next, s.trial), (Some(Slot::B), false));
        assert_eq!(
            s.slots,
            [
                SlotInfo {
                    slot: Slot::A,
                    bootable: true,
                    priority: 1,
                    tries_left: Some(3),
                    successful: true
                },
                SlotInfo {
                    slot: Slot::B,
                    bootable: true,
                    priority: 2,
                    tries_left: Some(3),
                    successful: false
                },
            ]
        );
        let s = model_status(&state::Status::from_vars(&v).unwrap(), Some(Slot::B));
        assert!(s.trial);
        Op::MarkBad(Slot::B).apply(&mut v).unwrap();
        let s = model_status(&state::Status::from_vars(&v).unwrap(), Some(Slot::B));
        assert!(!s.trial && !s.slot(Slot::B).bootable);
        assert_eq!((s.slot(Slot::B).priority, s.next), (0, Some(Slot::A)));
    }

    #[test]
    fn operations_go_through_the_trait() {
        let mem = medium(&initial_vars(Slot::A));
        let mut ub: Box<dyn Bootloader> = Box::new(uboot_on(&mem, Slot::A));
        ub.set_trial(Slot::B, 2).unwrap();
        assert_eq!(ub.reboot_argument(), None);
        assert_eq!(ub.status().unwrap().next, Some(Slot::B));
        let err = ub.mark_bad(Slot::A).and_then(|()| ub.mark_bad(Slot::B));
        assert_eq!(
            err.unwrap_err().to_string(),
            "refusing to mark slot b bad: the other slot is not bootable, so nothing would boot"
        );
        assert_eq!(
            ub.set_trial(Slot::A, 0).unwrap_err().to_string(),
            "a trial needs 1..=255 tries, not 0"
        );
    }

    /// Runs `ops` from `start` with the power cut after every number of sectors the sequence
    /// writes, in both sector orders. U-Boot must then find a valid copy whose `BOOT_ORDER`
    /// names a slot with tries left, the status must be one seen after a prefix of `ops`, and
    /// a run without cut ends in `start` with `ops` applied.
    fn check_power_cuts(start: &Vars, running: Slot, ops: &[Op]) {
        let dry = medium(start);
        let mut ub = uboot_on(&dry, running);
        let mut statuses = vec![ub.status().unwrap()];
        for op in ops {
            ub.state.apply(*op).unwrap();
            statuses.push(ub.status().unwrap());
        }
        let end = vars_after(start, ops);
        assert_eq!(env_at_boot(&dry.bytes()), end);
        let sectors = dry.sectors_written();
        assert_eq!(sectors, ops.len() * SIZE / MemStorage::SECTOR);

        for order in [PersistOrder::Forward, PersistOrder::Reverse] {
            for n in 0..=sectors {
                let mem = medium(start);
                let mut ub = uboot_on(&mem, running);
                mem.cut_power_after(n, order);
                for op in ops {
                    // After the cut every call fails: the process is gone.
                    if ub.state.apply(*op).is_err() {
                        break;
                    }
                }
                let bytes = mem.bytes();
                let vars = env_at_boot(&bytes);
                let st = state::Status::from_vars(&vars).unwrap();
                assert!(
                    st.order.iter().any(|&s| st.slot(s).tries_left > 0),
                    "{ops:?} {order:?} cut after {n}: nothing to boot in {vars:?}"
                );
                let status = uboot_on(&MemStorage::new(bytes), running).status().unwrap();
                assert!(
                    statuses.contains(&status),
                    "{ops:?} {order:?} cut after {n}: {status:?}"
                );
                if n == sectors {
                    assert_eq!(vars, end);
                }
            }
        }
    }

    fn trial_of_b_after_one_boot() -> Vars {
        let mut v = vars_after(&initial_vars(Slot::A), &[Op::SetTrial(Slot::B, 3)]);
        v.set("BOOT_B_LEFT", "2").unwrap();
        v
    }

    fn b_committed() -> Vars {
        vars_after(
            &initial_vars(Slot::A),
            &[Op::SetTrial(Slot::B, 3), Op::MarkGood(Slot::B)],
        )
    }

    #[test]
    fn power_cut_during_set_trial_from_a_fresh_image() {
        check_power_cuts(&initial_vars(Slot::A), Slot::A, &[Op::SetTrial(Slot::B, 3)]);
    }

    #[test]
    fn power_cut_during_mark_good_in_a_trial() {
        check_power_cuts(
            &trial_of_b_after_one_boot(),
            Slot::B,
            &[Op::MarkGood(Slot::B)],
        );
    }

    #[test]
    fn power_cut_during_mark_bad() {
        check_power_cuts(&b_committed(), Slot::B, &[Op::MarkBad(Slot::B)]);
        check_power_cuts(
            &trial_of_b_after_one_boot(),
            Slot::B,
            &[Op::MarkBad(Slot::B)],
        );
    }

    #[test]
    fn power_cut_during_set_trial_of_a_while_b_is_good() {
        check_power_cuts(&b_committed(), Slot::B, &[Op::SetTrial(Slot::A, 3)]);
    }

    #[test]
    fn power_cut_during_a_whole_update() {
        check_power_cuts(
            &initial_vars(Slot::A),
            Slot::A,
            &[Op::SetTrial(Slot::B, 3), Op::MarkGood(Slot::B)],
        );
    }
}
