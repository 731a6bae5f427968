//! Boot time with UEFI Secure Boot on and off, side by side, for one image built with
//! `--secure-boot`: each run launches a fresh machine (fresh overlay and variable store) and
//! times it from launch to `cairn-init: ready`, and takes `boot_ms` from that line (kernel start
//! to ready, as init measures it). "off" is the ordinary OVMF with an empty variable store (the
//! signed binaries boot as any others); "on" is the Secure Boot build with PK/KEK/db enrolled.
//!
//! ```text
//! cairnctl keys gen-secureboot --out /tmp/sb
//! cairnctl image build --board qemu-x86_64 --out /tmp/sb-img --version 0.1.0 --secure-boot /tmp/sb
//! cargo run -p cairn-qemu --example secureboot_boot_time -- qemu-x86_64 /tmp/sb-img/disk.img /tmp/sb 3
//! ```

use std::error::Error;
use std::path::PathBuf;
use std::time::{Duration, Instant};

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() -> Result<(), Box<dyn Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [board, image, keys, rest @ ..] = args.as_slice() else {
        return Err("usage: secureboot_boot_time <board> <disk.img> <key dir> [runs]".into());
    };
    let board = cairn_board::find(board)?;
    let runs: usize = rest.first().map_or(Ok(3), |r| r.parse())?;
    let work = tempfile::tempdir()?;
    let mut rows = Vec::new();
    for secure in [false, true] {
        let (mut wall, mut kernel) = (Vec::new(), Vec::new());
        for run in 0..runs {
            let mut opts = cairn_qemu::LaunchOptions::new(
                board,
                image,
                work.path().join(format!("{secure}-{run}")),
            );
            opts.secure_boot = secure.then(|| PathBuf::from(keys));
            opts.echo_console = std::env::var_os("SB_ECHO").is_some();
            let started = Instant::now();
            let mut m = cairn_qemu::Machine::launch(opts)?;
            let line = m.wait_for_line("cairn-init: ready ", Duration::from_secs(300))?;
            wall.push(started.elapsed().as_secs_f64());
            let ms = line
                .split_whitespace()
                .find_map(|w| w.strip_prefix("boot_ms="))
                .ok_or("no boot_ms on the ready line")?;
            kernel.push(ms.parse::<f64>()? / 1000.0);
            m.quit()?;
            m.wait_exit(Duration::from_secs(60))?;
        }
        rows.push((secure, median(wall), median(kernel)));
    }
    println!("secure boot | launch to ready (s) | kernel to ready (s) | runs");
    for (secure, wall, kernel) in rows {
        let name = if secure { "on" } else { "off" };
        println!("{name:<11} | {wall:>19.1} | {kernel:>19.2} | {runs}");
    }
    Ok(())
}
