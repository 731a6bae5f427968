//! The booted UKI's PCR signature and public key, carried from the initramfs into `/run`.
//!
//! systemd 252's stub (`linuxx64.efi.stub`, `linuxaa64.efi.stub`) passes a UKI's `.pcrsig` and
//! `.pcrpkey` sections to the kernel as an extra initrd cpio holding
//! `/.extra/tpm2-pcr-signature.json` and `/.extra/tpm2-pcr-public-key.pem` (both names are in
//! the stub binary; systemd-stub(7), "Initrd Resources"). cairnd unlocks STATE and DATA after
//! the switch to the root file system, where the initramfs is gone, so stage 1 copies them to
//! `/run/cairn/pcr/` (`/run` moves into the new root). A boot without them (no UKI, or an
//! unsigned one) copies nothing, and cairnd's unlock of a signed seal takes the recovery path.

use std::path::Path;

use crate::log::Logger;
use crate::paths::{self, Paths};

/// What the stub leaves in the initramfs, and where it goes.
const FILES: [(&str, &str); 2] = [
    (
        ".extra/tpm2-pcr-signature.json",
        "run/cairn/pcr/tpm2-pcr-signature.json",
    ),
    (
        ".extra/tpm2-pcr-public-key.pem",
        "run/cairn/pcr/tpm2-pcr-public-key.pem",
    ),
];
/// A signature JSON is about 2 KiB and a PEM key under 1 KiB.
const LIMIT: usize = 64 * 1024;

/// Copies the stub's files that are present; returns how many. A file that cannot be read or
/// written is named on the console and left behind (cairnd then finds no signature).
pub fn carry(paths: &Paths, log: &Logger) -> usize {
    let mut carried = 0;
    for (from, to) in FILES {
        let from = paths.at(from);
        if !from.exists() {
            continue;
        }
        match copy(&from, &paths.at(to)) {
            Ok(()) => carried += 1,
            Err(e) => log.warn(format_args!("{}: {e}", from.display())),
        }
    }
    carried
}

fn copy(from: &Path, to: &Path) -> Result<(), String> {
    let text = paths::read_limited(from, LIMIT).map_err(|e| e.to_string())?;
    if let Some(dir) = to.parent() {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    std::fs::write(to, text).map_err(|e| format!("{}: {e}", to.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_stubs_files_are_carried_to_run() {
        let dir = tempfile::tempdir().unwrap();
        let paths = Paths::under(dir.path());
        let log = Logger::stderr();
        assert_eq!(carry(&paths, &log), 0);
        assert!(!dir.path().join("run/cairn/pcr").exists());

        std::fs::create_dir_all(dir.path().join(".extra")).unwrap();
        std::fs::write(
            dir.path().join(".extra/tpm2-pcr-signature.json"),
            "{\"sha256\":[]}\n",
        )
        .unwrap();
        assert_eq!(carry(&paths, &log), 1);
        assert_eq!(
            std::fs::read_to_string(dir.path().join("run/cairn/pcr/tpm2-pcr-signature.json"))
                .unwrap(),
            "{\"sha256\":[]}\n"
        );
        std::fs::write(dir.path().join(".extra/tpm2-pcr-public-key.pem"), "PEM\n").unwrap();
        assert_eq!(carry(&paths, &log), 2);
    }
}
