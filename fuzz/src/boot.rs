//! What the U-Boot environment fuzz target feeds `cairn-boot`, and the seed corpus it starts
//! from.
//!
//! `uboot_env`: the input is the two copies of a redundant environment as they lie on the disk,
//! each half of it (an odd last byte is dropped). They are read as the device reads them
//! ([`EnvStore::open`] over the medium), then the A/B boot state is read from the variables.
//! Checked: a refusal is one line of bounded length; an accepted environment holds only names
//! and values the writer would write, writing it back puts it in the other copy (the one not
//! in use), and the result reads back to the same variables with the flags one higher.

use cairn_boot::uboot::env::{
    check_key, encode_copy, Area, EnvStore, Limits, MemStorage, RedundantEnv, Vars,
};
use cairn_boot::uboot::state::{initial_vars, Status};
use cairn_boot::Slot;

/// Longest refusal accepted: one line an operator can read.
pub const MAX_REFUSAL: usize = 1024;

fn check_refusal(e: &impl std::fmt::Display) {
    let text = e.to_string();
    assert!(
        !text.chars().any(char::is_control),
        "not one line: {text:?}"
    );
    assert!(text.len() <= MAX_REFUSAL, "a {}-byte refusal", text.len());
}

/// Reads `disk` as two environment copies; panics (a finding) on a broken promise.
pub fn check_env(disk: &[u8]) {
    let size = disk.len() / 2;
    let medium = MemStorage::new(disk[..2 * size].to_vec());
    let open = EnvStore::open(
        Area::new(medium.clone(), 0),
        Area::new(medium.clone(), size as u64),
        size,
        Limits::default(),
    );
    let mut store = match open {
        Ok(store) => store,
        Err(e) => {
            check_refusal(&e);
            assert_eq!(
                medium.sectors_written(),
                0,
                "a refused environment was written"
            );
            return;
        }
    };
    assert_eq!(medium.sectors_written(), 0, "reading wrote to the medium");
    let vars = store.vars().clone();
    for (k, v) in vars.iter() {
        assert!(check_key(k).is_ok(), "name {k:?} accepted");
        assert!(!v.is_empty() && !v.contains('\0'), "value {v:?} accepted");
    }
    match Status::from_vars(&vars) {
        Ok(status) => assert!(status.order.len() <= 2),
        Err(e) => check_refusal(&e),
    }
    let (active, flags) = (store.env().active(), store.env().flags());
    // Writing back goes to the copy not in use, which then wins.
    match store.write() {
        Ok(()) => {
            let bytes = medium.bytes();
            let again = RedundantEnv::parse(&bytes[..size], &bytes[size..], &Limits::default())
                .expect("what was written reads back");
            assert_eq!(again.vars(), &vars);
            assert_eq!(again.active(), active.map(|a| a.other()));
            assert_eq!(again.flags(), flags.wrapping_add(1));
        }
        Err(e) => check_refusal(&e),
    }
}

/// Two copies of `size` bytes: the first with `first` at flags 4, the second with `second` at
/// flags 5 (so the second is active when both hold).
fn disk(size: usize, first: &Vars, second: &Vars) -> Vec<u8> {
    let mut out = encode_copy(first, size, 4).expect("a seed fits");
    out.extend(encode_copy(second, size, 5).expect("a seed fits"));
    out
}

/// The seed corpus, as (target, file name, bytes).
pub fn seeds() -> Vec<crate::Seed> {
    let a = initial_vars(Slot::A);
    let mut b = a.clone();
    b.set("bootcmd", "run cairn_boot").expect("a value");
    let mut torn = disk(512, &a, &b);
    torn[600] ^= 0x40; // the second copy's CRC no longer holds
    vec![
        ("uboot_env", "initial.env".into(), disk(512, &a, &a)),
        ("uboot_env", "two-copies.env".into(), disk(1024, &a, &b)),
        ("uboot_env", "torn-second.env".into(), torn),
    ]
}

#[cfg(test)]
mod tests {
    #[test]
    fn seeds_pass_the_oracle() {
        for (_, _, bytes) in super::seeds() {
            super::check_env(&bytes);
        }
    }
}
