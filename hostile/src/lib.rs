//! The hostile-input corpus: for each kind of outside data a device reads, files that are
//! malformed or hostile, each with the refusal it must get (`corpus/<kind>/expected.txt`).
//!
//! The one idea: the files are generated here, byte for byte, so they can be checked against
//! the generator and regenerated (`CAIRN_WRITE_VECTORS=1 cargo test -p cairn-hostile`), and
//! `tests/corpus.rs` feeds each one to the function the device calls for that input, on a
//! device laid out in a temp dir, hashing its regions (both slots, the ESP, STATE, DATA and the
//! raw disk areas the input lies on) before and after: every input must be refused with one
//! line that names the problem, and nothing may change.
//!
//! Bundles that `bundle/vectors/` already holds are fed from there, not copied.

use std::path::PathBuf;

pub mod api;
mod bundles;
mod configs;
mod dhcp;
mod gpt;
mod luks;
mod sntp;
mod uboot_env;

pub use bundles::{device_key, ARCH, BOARD, ROOT_SIZE};
pub use sntp::ORIGIN_MARK;

/// One corpus file: its kind (the folder), name, bytes, and a phrase its refusal must contain.
#[derive(Debug, Clone)]
pub struct Case {
    pub kind: &'static str,
    pub name: String,
    pub bytes: Vec<u8>,
    pub expect: &'static str,
}

/// The kinds, in the order the table lists them.
pub const KINDS: [&str; 8] = [
    "bundles",
    "machine-configs",
    "uboot-env",
    "gpt",
    "luks",
    "dhcp",
    "sntp",
    "api",
];

/// `corpus/` in this crate.
pub fn corpus_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("corpus")
}

/// Every corpus file, generated.
pub fn generate() -> Vec<Case> {
    let mut out = Vec::new();
    let mut add = |kind: &'static str, cases: Vec<(String, Vec<u8>, &'static str)>| {
        out.extend(cases.into_iter().map(|(name, bytes, expect)| Case {
            kind,
            name,
            bytes,
            expect,
        }))
    };
    add("bundles", bundles::cases());
    add("machine-configs", configs::cases());
    add("uboot-env", uboot_env::cases());
    add("gpt", gpt::cases());
    add("luks", luks::cases());
    add("dhcp", dhcp::cases());
    add("sntp", sntp::cases());
    add("api", api::cases());
    out
}

/// Marks a refusal that comes after an install began: the other slot (B) is then released,
/// marked not bootable with its record cleared, as every install does before it writes; only
/// the ESP, STATE and ROOT-B (partly written) may change, and the machine must still boot
/// slot A.
pub const RELEASES_B: &str = "[releases B] ";

/// The `expected.txt` of one kind: a header, then `<file> <phrase>` per file.
pub fn expected_txt(kind: &str, cases: &[Case]) -> String {
    let mut out = format!(
        "# Hostile {kind}, made by hostile/src/ (CAIRN_WRITE_VECTORS=1 cargo test -p cairn-hostile\n\
         # rewrites them). One per line: <file> <a phrase the refusal must contain>; a phrase\n\
         # after \"[releases B]\" is refused once the install began: slot B is released (marked\n\
         # not bootable, its record cleared, its partition perhaps partly written), and nothing\n\
         # else changes.\n"
    );
    for c in cases.iter().filter(|c| c.kind == kind) {
        out.push_str(&format!("{} {}\n", c.name, c.expect));
    }
    out
}
