//! The QEMU command line, as a pure function of the board profile and the run's files.
//!
//! Everything about how a machine is wired (firmware in pflash, the disk behind a qcow2 overlay on
//! virtio-blk, user-mode networking bound to loopback, the serial console on stdout, QMP on a unix
//! socket) is decided here and nowhere else, so it can be unit-tested without QEMU.

use std::ffi::OsString;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::Path;

use cairn_board::QemuProfile;

use crate::options::{PortForward, WorkPaths};

/// The machine's disk: the run's qcow2 overlay, or a raw image used in place.
#[derive(Debug, Clone, Copy)]
pub enum DiskArg<'a> {
    Overlay(&'a Path),
    Raw(&'a Path),
    /// A raw image used in place, every write also recorded in `log` (blklogwrites).
    Logged {
        disk: &'a Path,
        log: &'a Path,
    },
}

/// Builds the arguments (without the binary) for one run.
///
/// The same list serves both boards as verified against QEMU 7.2: q35 with the non-secure-boot
/// OVMF (`OVMF_CODE_4M.fd`) needs neither SMM nor `-global` pflash settings, and `virt` with
/// AAVMF takes the two 64 MiB pflash volumes as they are. The board adds its own devices
/// (watchdog, USB controller, hot-plug root port) after the network card. `tpm` is a software
/// TPM's control socket ([`crate::Swtpm`]); without it the machine has no TPM.
pub fn qemu_args(
    profile: &QemuProfile,
    paths: &WorkPaths,
    disk: DiskArg<'_>,
    port_forwards: &[PortForward],
    tpm: Option<&Path>,
    extra_args: &[String],
) -> Vec<OsString> {
    let mut args: Vec<OsString> = vec!["-nodefaults".into()];
    let mut opt = |name: &str, value: OsString| {
        args.push(name.into());
        args.push(value);
    };

    opt("-machine", profile.machine.into());
    // KVM exists on these hosts but hangs; TCG is explicit so QEMU never tries it.
    opt("-accel", "tcg".into());
    opt("-cpu", profile.cpu.into());
    opt("-smp", profile.cpus.to_string().into());
    opt("-m", profile.memory_mib.to_string().into());

    let code = Path::new(profile.firmware_code);
    opt(
        "-drive",
        with_path("if=pflash,format=raw,readonly=on,file=", code, ""),
    );
    opt(
        "-drive",
        with_path("if=pflash,format=raw,file=", &paths.vars, ""),
    );
    match disk {
        DiskArg::Overlay(file) | DiskArg::Raw(file) => {
            let format = if matches!(disk, DiskArg::Overlay(_)) {
                "qcow2"
            } else {
                "raw"
            };
            opt(
                "-drive",
                with_path(&format!("if=none,id=disk0,format={format},file="), file, ""),
            );
            opt("-device", "virtio-blk-pci,drive=disk0,bootindex=0".into());
        }
        DiskArg::Logged { disk, log } => {
            // The log's super block is rewritten at each flush anyway; entries are read to the
            // end of the file, so a rare update is enough.
            let mut spec = with_path(
                "driver=blklogwrites,node-name=disk0,log-sector-size=512,\
                 log-super-update-interval=65536,file.driver=file,file.filename=",
                disk,
                ",log.driver=file,log.filename=",
            );
            spec.push(with_path("", log, ""));
            opt("-blockdev", spec);
            // Without discard and write-zeroes every entry carries its bytes (and QEMU 7.2's
            // blklogwrites logs concurrent write-zeroes requests at wrong places).
            opt(
                "-device",
                "virtio-blk-pci,drive=disk0,bootindex=0,discard=off,write-zeroes=off".into(),
            );
        }
    }

    let mut netdev = String::from("user,id=net0");
    for fwd in port_forwards {
        let addr = fwd.guest_addr.map(|a| a.to_string()).unwrap_or_default();
        netdev.push_str(&format!(
            ",hostfwd=tcp:127.0.0.1:{}-{addr}:{}",
            fwd.host, fwd.guest
        ));
    }
    opt("-netdev", netdev.into());
    // `romfile=` drops the iPXE option ROM: no network boot entry competes with the disk.
    opt("-device", "virtio-net-pci,netdev=net0,romfile=".into());
    for device in profile.devices {
        opt("-device", (*device).into());
    }
    if let Some(socket) = tpm {
        // QEMU passes swtpm the data channel over this control socket (`CMD_SET_DATAFD`).
        opt("-chardev", with_path("socket,id=chrtpm,path=", socket, ""));
        opt("-tpmdev", "emulator,id=tpm0,chardev=chrtpm".into());
        opt(
            "-device",
            format!("{},tpmdev=tpm0", tpm_device(profile)).into(),
        );
    }
    // A watchdog that expires resets the machine like the reset button (QEMU's default, stated
    // so that a changed default cannot turn a watchdog test into a hang). QMP reports it as a
    // `WATCHDOG` event; `watchdog-set-action` changes it for one run.
    opt("-action", "watchdog=reset".into());

    // `signal=off`: a ^C byte on the console must not kill QEMU.
    opt("-chardev", "stdio,id=con0,signal=off".into());
    opt("-serial", "chardev:con0".into());
    opt("-display", "none".into());
    opt("-monitor", "none".into());
    opt(
        "-qmp",
        with_path("unix:", &paths.qmp_socket, ",server=on,wait=off"),
    );

    args.extend(extra_args.iter().map(OsString::from));
    args
}

/// The TPM interface the board's firmware and kernel look for: the ISA TIS device at its fixed
/// address on a PC (q35), its sysbus twin on the Arm `virt` machine (described to the guest in the
/// device tree and ACPI tables that QEMU generates).
fn tpm_device(profile: &QemuProfile) -> &'static str {
    if profile.machine == "virt" || profile.machine.starts_with("virt-") {
        "tpm-tis-device"
    } else {
        "tpm-tis"
    }
}

/// `prefix`, `path` with its commas doubled (QEMU's escape inside option values), `suffix`.
fn with_path(prefix: &str, path: &Path, suffix: &str) -> OsString {
    let mut out = prefix.as_bytes().to_vec();
    for &b in path.as_os_str().as_bytes() {
        out.push(b);
        if b == b',' {
            out.push(b',');
        }
    }
    out.extend_from_slice(suffix.as_bytes());
    OsString::from_vec(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_logged_disk_goes_through_blklogwrites_without_discard_or_write_zeroes() {
        let board = cairn_board::find("qemu-x86_64").unwrap();
        let paths = WorkPaths::new(Path::new("/w"));
        let args: Vec<String> = qemu_args(
            board.qemu.as_ref().unwrap(),
            &paths,
            DiskArg::Logged {
                disk: Path::new("/t/a,b.img"),
                log: Path::new("/t/writes.log"),
            },
            &[],
            None,
            &[],
        )
        .into_iter()
        .map(|a| a.into_string().unwrap())
        .collect();
        let at = args.iter().position(|a| a == "-blockdev").unwrap();
        assert_eq!(
            args[at + 1],
            "driver=blklogwrites,node-name=disk0,log-sector-size=512,\
             log-super-update-interval=65536,file.driver=file,file.filename=/t/a,,b.img,\
             log.driver=file,log.filename=/t/writes.log"
        );
        assert_eq!(
            args[at + 3],
            "virtio-blk-pci,drive=disk0,bootindex=0,discard=off,write-zeroes=off"
        );
        assert!(!args.iter().any(|a| a.starts_with("if=none,id=disk0")));
    }

    fn args_for(board: &str, fwd: &[PortForward], extra: &[String]) -> Vec<String> {
        args_with_tpm(board, fwd, None, extra)
    }

    fn args_with_tpm(
        board: &str,
        fwd: &[PortForward],
        tpm: Option<&Path>,
        extra: &[String],
    ) -> Vec<String> {
        let board = cairn_board::find(board).unwrap();
        let paths = WorkPaths::new(Path::new("/w"));
        qemu_args(
            board.qemu.as_ref().unwrap(),
            &paths,
            DiskArg::Overlay(&paths.overlay),
            fwd,
            tpm,
            extra,
        )
        .into_iter()
        .map(|a| a.into_string().unwrap())
        .collect()
    }

    fn expected(
        machine: &str,
        cpu: &str,
        code: &str,
        netdev: &str,
        devices: &[&str],
    ) -> Vec<String> {
        expected_with(machine, cpu, code, netdev, devices, &[])
    }

    /// The full command line; `after_devices` follows the board's devices.
    fn expected_with(
        machine: &str,
        cpu: &str,
        code: &str,
        netdev: &str,
        devices: &[&str],
        after_devices: &[&str],
    ) -> Vec<String> {
        let mut args: Vec<String> = [
            "-nodefaults",
            "-machine",
            machine,
            "-accel",
            "tcg",
            "-cpu",
            cpu,
            "-smp",
            "2",
            "-m",
            "512",
            "-drive",
            &format!("if=pflash,format=raw,readonly=on,file={code}"),
            "-drive",
            "if=pflash,format=raw,file=/w/efivars.fd",
            "-drive",
            "if=none,id=disk0,format=qcow2,file=/w/overlay.qcow2",
            "-device",
            "virtio-blk-pci,drive=disk0,bootindex=0",
            "-netdev",
            netdev,
            "-device",
            "virtio-net-pci,netdev=net0,romfile=",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        for d in devices {
            args.extend(["-device".to_string(), d.to_string()]);
        }
        args.extend(after_devices.iter().map(|s| s.to_string()));
        args.extend(
            [
                "-action",
                "watchdog=reset",
                "-chardev",
                "stdio,id=con0,signal=off",
                "-serial",
                "chardev:con0",
                "-display",
                "none",
                "-monitor",
                "none",
                "-qmp",
                "unix:/w/qmp.sock,server=on,wait=off",
            ]
            .iter()
            .map(|s| s.to_string()),
        );
        args
    }

    #[test]
    fn x86_64_board() {
        let fwd = [
            PortForward::new(2222, 22),
            PortForward {
                host: 8443,
                guest: 443,
                guest_addr: Some("10.0.2.50".parse().unwrap()),
            },
        ];
        assert_eq!(
            args_for("qemu-x86_64", &fwd, &[]),
            expected(
                "q35",
                "max",
                "/usr/share/OVMF/OVMF_CODE_4M.fd",
                "user,id=net0,hostfwd=tcp:127.0.0.1:2222-:22,hostfwd=tcp:127.0.0.1:8443-10.0.2.50:443",
                &["i6300esb", "qemu-xhci,id=xhci"],
            )
        );
    }

    #[test]
    fn aarch64_board_with_extra_args() {
        let extra = vec!["-no-reboot".to_string()];
        let mut want = expected(
            "virt",
            "cortex-a57",
            "/usr/share/AAVMF/AAVMF_CODE.fd",
            "user,id=net0",
            &["pcie-root-port,id=hotplug0,chassis=1"],
        );
        want.push("-no-reboot".into());
        assert_eq!(args_for("qemu-aarch64", &[], &extra), want);
    }

    #[test]
    fn commas_in_paths_are_doubled() {
        let board = cairn_board::find("qemu-x86_64").unwrap();
        let paths = WorkPaths::new(Path::new("/tmp/a,b"));
        let profile = board.qemu.as_ref().unwrap();
        let tpm = Path::new("/run/t,pm/swtpm.sock");
        let args = qemu_args(
            profile,
            &paths,
            DiskArg::Overlay(&paths.overlay),
            &[],
            Some(tpm),
            &[],
        );
        let args: Vec<_> = args.iter().map(|a| a.to_str().unwrap()).collect();
        assert!(args.contains(&"if=none,id=disk0,format=qcow2,file=/tmp/a,,b/overlay.qcow2"));
        assert!(args.contains(&"unix:/tmp/a,,b/qmp.sock,server=on,wait=off"));
        assert!(args.contains(&"socket,id=chrtpm,path=/run/t,,pm/swtpm.sock"));
        let raw = Path::new("/img/x,y.img");
        let args = qemu_args(profile, &paths, DiskArg::Raw(raw), &[], None, &[]);
        let args: Vec<_> = args.iter().map(|a| a.to_str().unwrap()).collect();
        assert!(args.contains(&"if=none,id=disk0,format=raw,file=/img/x,,y.img"));
    }

    #[test]
    fn x86_64_board_with_tpm() {
        let sock = Path::new("/w/tpm/swtpm.sock");
        assert_eq!(
            args_with_tpm("qemu-x86_64", &[], Some(sock), &[]),
            expected_with(
                "q35",
                "max",
                "/usr/share/OVMF/OVMF_CODE_4M.fd",
                "user,id=net0",
                &["i6300esb", "qemu-xhci,id=xhci"],
                &[
                    "-chardev",
                    "socket,id=chrtpm,path=/w/tpm/swtpm.sock",
                    "-tpmdev",
                    "emulator,id=tpm0,chardev=chrtpm",
                    "-device",
                    "tpm-tis,tpmdev=tpm0",
                ],
            )
        );
    }

    #[test]
    fn aarch64_board_with_tpm() {
        let sock = Path::new("/w/tpm/swtpm.sock");
        assert_eq!(
            args_with_tpm("qemu-aarch64", &[], Some(sock), &[]),
            expected_with(
                "virt",
                "cortex-a57",
                "/usr/share/AAVMF/AAVMF_CODE.fd",
                "user,id=net0",
                &["pcie-root-port,id=hotplug0,chassis=1"],
                &[
                    "-chardev",
                    "socket,id=chrtpm,path=/w/tpm/swtpm.sock",
                    "-tpmdev",
                    "emulator,id=tpm0,chardev=chrtpm",
                    "-device",
                    "tpm-tis-device,tpmdev=tpm0",
                ],
            )
        );
    }

    #[test]
    fn no_tpm_without_a_socket() {
        for board in ["qemu-x86_64", "qemu-aarch64"] {
            let args = args_for(board, &[], &[]);
            assert!(!args.iter().any(|a| a.contains("tpm")), "{board}: {args:?}");
        }
    }
}
