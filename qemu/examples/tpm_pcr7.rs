//! Manual check of the TPM wiring: boots a built image with a software TPM until a console line
//! (by default the firmware starting the boot loader, after it has measured PCR 7), kills QEMU by
//! its pid and prints the PCR 7 extends swtpm logged. With `dbx`, first adds a hash to the
//! machine's `dbx` and boots the same machine (disk, variables, TPM state) again.
//!
//! ```text
//! cargo run -p cairn-qemu --example tpm_pcr7 -- qemu-x86_64 target/cairn/images/qemu-x86_64/disk.img /tmp/tpm-x86
//! cargo run -p cairn-qemu --example tpm_pcr7 -- qemu-x86_64 target/cairn/images/qemu-x86_64/disk.img /tmp/tpm-x86 dbx
//! ```
//!
//! `TPM_PCR7_UNTIL` names another console line to wait for (e.g. `cairn-init: ready`), and
//! `TPM_REUSE` (any value) boots the same machine again without touching `dbx`; the log then
//! shows every TPM command of that boot (e.g. the unlock's).

use std::error::Error;
use std::path::PathBuf;
use std::time::Duration;

fn main() -> Result<(), Box<dyn Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [board, image, work, rest @ ..] = args.as_slice() else {
        return Err("usage: tpm_pcr7 <board> <disk.img> <work dir> [dbx]".into());
    };
    let board = cairn_board::find(board)?;
    let work = PathBuf::from(work);
    let again = rest.first().is_some_and(|a| a == "dbx");
    let reuse = again || std::env::var("TPM_REUSE").is_ok();
    let until = std::env::var("TPM_PCR7_UNTIL").unwrap_or_else(|_| "BdsDxe: starting".into());

    if again {
        let vars = cairn_qemu::WorkPaths::new(&work).vars;
        let n = cairn_qemu::efivars::dbx_hashes(&vars)?.len();
        cairn_qemu::efivars::add_dbx_hash(&vars, [0xc0 | n as u8; 32])?;
        eprintln!("dbx of {} now holds {} hashes", vars.display(), n + 1);
    }
    let swtpm = cairn_qemu::Swtpm::start(&work.join("tpm"), cairn_qemu::SWTPM_LOG_COMMANDS)?;
    let mut machine = cairn_qemu::Machine::launch(cairn_qemu::LaunchOptions {
        tpm: Some(swtpm.socket_path().to_path_buf()),
        reuse_disk: reuse,
        echo_console: true,
        ..cairn_qemu::LaunchOptions::new(board, image, &work)
    })?;
    eprintln!("swtpm pid {}, QEMU pid {}", swtpm.pid(), machine.pid());
    machine.wait_for_line(&until, Duration::from_secs(600))?;
    eprintln!("QEMU killed ({})", machine.kill()?);
    drop(machine);
    eprintln!("swtpm stopped ({})", swtpm.stop()?);

    let log = work.join("tpm/swtpm.log");
    for e in cairn_qemu::pcr_extends(&log)? {
        if e.pcr == 7 {
            let hex: String = e
                .sha256()
                .unwrap_or_default()
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect();
            println!("PCR 7 extend sha256 {hex}");
        }
    }
    Ok(())
}
