//! Stage 1: PID 1 in the initramfs, from the kernel's hand-off to exec'ing the root's init.
//!
//! Mount proc, sysfs, devtmpfs and `/run`; load the watchdog's driver and start the watchdog
//! (before anything else, so that a hang from here on resets the machine); log to kmsg and the
//! console; disable the immediate Ctrl-Alt-Del reboot (the kernel sends SIGINT instead); read
//! `cairn.slot`, `cairn.roothash` and `cairn.hashoffset`; load the listed modules; wait for
//! `ROOT-<SLOT>`; put a dm-verity device over it ([`verity::open`]); [`switch_root`] into that
//! device. Stage 1 is selected by the presence of `/etc/cairn/initramfs`.

use std::time::Duration;

use crate::cmdline::{Cmdline, Slot};
use crate::error::{Error, Result};
use crate::log::Logger;
use crate::paths::{self, limits, read_limited, Paths};
use crate::switch_root::switch_root;
use crate::sys::{RebootCmd, Syscalls};
use crate::{extension, modules, mounts, partition, verity};

/// Seconds the watchdog waits for its next keepalive before it resets the machine.
pub const WATCHDOG_TIMEOUT_S: u32 = 30;

/// Loads the watchdog's driver (`/etc/cairn/modules-watchdog`), starts the watchdog and lets go
/// of it still running: from here on either cairnd keeps feeding it or the machine resets, so a
/// root whose init hangs, or a system that hangs later, comes back (and boot counting can act).
/// Runs before the log is attached, so it returns what to say.
fn arm_watchdog(
    sys: &dyn Syscalls,
    log: &Logger,
    paths: &Paths,
) -> std::result::Result<u32, String> {
    let summary =
        modules::load_list(sys, log, paths, paths::WATCHDOG_MODULE_LIST).map_err(|e| {
            format!(
                "{}: a hang will not reset this machine",
                crate::error::chain(&e)
            )
        })?;
    if !summary.failed.is_empty() {
        return Err(format!(
            "kernel module {} did not load: a hang will not reset this machine",
            summary.failed.join(", ")
        ));
    }
    let dev = paths.at(paths::DEV_WATCHDOG);
    if !dev.exists() {
        return Err(format!(
            "no {}: a hang will not reset this machine",
            dev.display()
        ));
    }
    cairn_daemon::watchdog::arm_and_release(&dev, WATCHDOG_TIMEOUT_S)
        .map(|t| t.as_secs() as u32)
        .map_err(|e| format!("arming {}: {e}", dev.display()))
}

/// Runs stage 1; returns only on failure. `start` is `CLOCK_BOOTTIME` when init started.
pub fn run(sys: &dyn Syscalls, log: &Logger, paths: &Paths, start: Duration) -> Error {
    match try_run(sys, log, paths, start) {
        Ok(never) => match never {},
        Err(e) => e,
    }
}

fn try_run(
    sys: &dyn Syscalls,
    log: &Logger,
    paths: &Paths,
    start: Duration,
) -> Result<std::convert::Infallible> {
    mounts::apply(sys, paths, &mounts::early())?;
    let watchdog = arm_watchdog(sys, log, paths);
    if let Err(e) = sys.stdio_to_console(&paths.at(paths::DEV_CONSOLE)) {
        log.warn(format_args!("no console for stdio: {e}"));
    }
    log.attach(paths);
    crate::pcrsig::carry(paths, log);
    match watchdog {
        Ok(t) => log.info(format_args!("watchdog armed ({t} s)")),
        Err(e) => log.warn(format_args!("{e}")),
    }
    if let Err(e) = sys.reboot(RebootCmd::CadOff) {
        log.warn(format_args!("disabling ctrl-alt-del reboot: {e}"));
    }

    let cmdline = Cmdline::parse(&read_limited(
        &paths.at(paths::PROC_CMDLINE),
        limits::CMDLINE,
    )?);
    for w in &cmdline.warnings {
        log.warn(format_args!("{w}"));
    }
    let slot = cmdline.slot()?;
    let root_verity = cmdline.verity()?;
    let label = slot.root_partition();

    let workers = cmdline.module_workers.unwrap_or_else(modules::workers);
    let open_root = |partition: &partition::Partition| {
        verity::open(sys, log, paths, partition, slot, &root_verity)
    };
    let (summary, t_modules, partition, root) =
        load_modules_and_find(sys, log, paths, label, workers, &open_root)?;
    let now = sys.boottime();
    log.info(format_args!(
        "slot {}: {} modules loaded ({workers} at a time) in {} ms{}, {label} is {} after {} ms",
        slot.as_str(),
        summary.loaded,
        t_modules.saturating_sub(start).as_millis(),
        if summary.failed.is_empty() {
            String::new()
        } else {
            format!(" ({} not loaded)", summary.failed.join(", "))
        },
        partition.node.display(),
        now.saturating_sub(start).as_millis(),
    ));
    let root = root?;
    log.info(format_args!(
        "slot {}: {label} verified by dm-verity as {} (root hash {}, {} data blocks); \
         switching root",
        slot.as_str(),
        root.node.display(),
        root_verity.root_hash.short(),
        root.data_blocks,
    ));
    let overlay = |newroot: &std::path::Path| {
        extension::mount_or_warn(
            sys,
            log,
            paths,
            &partition,
            slot,
            cmdline.extension(),
            newroot,
        )
    };
    Err(blame_verification(
        switch_root(sys, log, paths, &root.node, slot, start, Some(&overlay)),
        slot,
    ))
}

/// The verified root, or why not.
type Root = Result<verity::VerifiedRoot>;

/// Loads `/etc/cairn/modules`, looking for the partition `label` each time a module has finished
/// (no polling while modules load: under emulation a polling thread takes CPU time the loaders
/// need), so the root is usually found the moment its disk's driver is in; waits for it only
/// after the last module. As soon as the partition is there and dm_verity has loaded, `open`
/// puts dm-verity over it, while the modules after it go on loading. Returns what loaded,
/// `CLOCK_BOOTTIME` when the last module was in, the partition and what `open` made of it. A
/// module that fails is a console line (naming it); only a root partition that never appears is
/// fatal here.
fn load_modules_and_find(
    sys: &dyn Syscalls,
    log: &Logger,
    paths: &Paths,
    label: &str,
    workers: usize,
    open: &dyn Fn(&partition::Partition) -> Root,
) -> Result<(modules::Summary, Duration, partition::Partition, Root)> {
    let Some(graph) = modules::read_graph(log, paths, paths::MODULE_LIST)? else {
        let found = partition::wait_for(sys, paths, label, partition::TIMEOUT)?;
        let root = open(&found);
        return Ok((modules::Summary::default(), sys.boottime(), found, root));
    };
    // dm-verity's module, when the list has it (else it is built in).
    let dm_verity = graph
        .entries
        .iter()
        .position(|e| e.name() == "dm_verity" || e.name() == "dm-verity");
    let mut finished = vec![false; graph.entries.len()];
    let mut found = None;
    let mut root = None;
    let mut look = |i: usize| {
        finished[i] = true;
        if found.is_none() {
            found = partition::find(paths, label);
        }
        if let (None, Some(partition)) = (&root, &found) {
            if dm_verity.is_none_or(|v| finished[v]) {
                root = Some(open(partition));
            }
        }
    };
    let status = match sys.shared() {
        Some(shared) => modules::load_graph(
            &graph,
            workers,
            &|e: &modules::Entry| shared.load_module(&paths.at(&e.path), &e.params),
            &mut look,
        ),
        None => modules::load_graph_inline(
            &graph,
            &|e: &modules::Entry| sys.load_module(&paths.at(&e.path), &e.params),
            &mut look,
        ),
    };
    let done = sys.boottime();
    let summary = modules::report(log, paths, &graph, status);
    let found = match found {
        Some(p) => p,
        None => partition::wait_for(sys, paths, label, partition::TIMEOUT)?,
    };
    let root = root.unwrap_or_else(|| open(&found));
    Ok((summary, done, found, root))
}

/// An I/O error mounting or executing from the verified root most likely means a block did not
/// match the hash tree (the kernel reports that as EIO when it does not restart outright); say
/// so rather than leave a bare "Input/output error".
fn blame_verification(err: Error, slot: Slot) -> Error {
    let eio = match &err {
        Error::Mount { source, .. } | Error::Exec { source, .. } => {
            source.raw_os_error() == Some(libc::EIO)
        }
        _ => false,
    };
    if eio {
        Error::RootVerification {
            slot: slot.as_str(),
            inner: Box::new(err),
        }
    } else {
        err
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys::fake::{Call, Fake};
    use crate::verity::testing::{fake_kernel, write_partition};
    use cairn_dm::DevT;

    const HASH: &str = "1a2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f708192a3b4c5d6e7f809";
    const HASH_OFFSET: u64 = 32 * 4096;

    /// The verity parameters of the fake roots in [`initramfs`].
    fn verity_args() -> String {
        format!("cairn.roothash={HASH} cairn.hashoffset={HASH_OFFSET}")
    }

    /// A fake that answers device-mapper like the kernel, numbering the new device 253:0.
    fn sys_for(dir: &tempfile::TempDir) -> Fake {
        let sys = Fake::new();
        let dev = DevT {
            major: 253,
            minor: 0,
        };
        fake_kernel(&sys, dev, dir.path().join("dev/dm-0"));
        sys
    }

    /// A fake initramfs + /sys + /dev + mounted newroot, everything stage 1 reads. ROOT-A and
    /// ROOT-B carry a verity superblock for 30 data blocks at [`HASH_OFFSET`].
    pub(crate) fn initramfs(cmdline: &str) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let r = dir.path();
        let w = |p: &str, s: &str| {
            let p = r.join(p);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, s).unwrap();
        };
        w(paths::INITRAMFS_MARKER, "");
        w(paths::PROC_CMDLINE, cmdline);
        w(paths::WATCHDOG_MODULE_LIST, "lib/modules/softdog.ko\n");
        w(
            paths::MODULE_LIST,
            "lib/modules/dm-mod.ko\nlib/modules/dm-verity.ko\nlib/modules/virtio_blk.ko\n\
             lib/modules/squashfs.ko\n",
        );
        w(
            "sys/class/block/vda2/uevent",
            "DEVNAME=vda2\nPARTNAME=ROOT-A\n",
        );
        w(
            "sys/class/block/vda3/uevent",
            "DEVNAME=vda3\nPARTNAME=ROOT-B\n",
        );
        w("sys/class/block/vda2/dev", "254:2\n");
        w("sys/class/block/vda3/dev", "254:3\n");
        write_partition(&r.join("dev/vda2"), HASH_OFFSET, 30, b"a");
        write_partition(&r.join("dev/vda3"), HASH_OFFSET, 30, b"b");
        w(paths::DEV_MAPPER_CONTROL, "");
        w("newroot/sbin/init", "");
        for d in ["newroot/dev", "newroot/proc", "newroot/sys", "newroot/run"] {
            std::fs::create_dir_all(r.join(d)).unwrap();
        }
        dir
    }

    #[test]
    fn full_sequence() {
        let dir = initramfs(&format!(
            "console=ttyAMA0 quiet panic=5 cairn.slot=b {} cairn.x=1\n",
            verity_args()
        ));
        let r = dir.path();
        let sys = sys_for(&dir);
        let (log, mem) = Logger::memory();
        let err = run(&sys, &log, &Paths::under(r), Duration::from_millis(700));
        assert!(matches!(err, Error::Exec { .. }), "{err}");
        let kinds: Vec<String> = sys
            .actions()
            .iter()
            .map(|c| match c {
                Call::Mount { fstype, .. } => format!("mount {fstype}"),
                Call::MountMove(a, _) => format!("move {}", a.display()),
                Call::LoadModule(p, _) => {
                    format!("load {}", p.file_name().unwrap().to_str().unwrap())
                }
                Call::Reboot(c) => format!("reboot {c:?}"),
                Call::Exec { env, .. } => format!("exec {env:?}"),
                Call::Mkdir(..) => "mkdir".into(),
                Call::DmIoctl { cmd, .. } => format!("dm {}", cmd.name()),
                other => format!("{other:?}")
                    .split(['(', ' ', '{'])
                    .next()
                    .unwrap()
                    .to_owned(),
            })
            .collect();
        let moved = |m: &str| format!("move {}", r.join(m).display());
        assert_eq!(
            kinds,
            [
                "mount proc".to_string(),
                "mount sysfs".into(),
                "mount devtmpfs".into(),
                "mkdir".into(),
                "mount tmpfs".into(),
                "load softdog.ko".into(),
                "StdioToConsole".into(),
                "reboot CadOff".into(),
                "load dm-mod.ko".into(),
                "load dm-verity.ko".into(),
                // ROOT-B is there and dm-verity is in: verity is set up before the modules
                // after it load.
                "dm DM_DEV_CREATE".into(),
                "dm DM_TABLE_LOAD".into(),
                "dm DM_DEV_SUSPEND".into(),
                "load virtio_blk.ko".into(),
                "load squashfs.ko".into(),
                "mount squashfs".into(),
                moved("dev"),
                moved("proc"),
                moved("sys"),
                moved("run"),
                "RemoveTree".into(),
                "Chdir".into(),
                "move .".into(),
                "Chroot".into(),
                "Chdir".into(),
                r#"exec [("CAIRN_INIT_START_NS", "700000000"), ("CAIRN_SLOT", "b")]"#.into(),
            ]
        );
        let table = sys
            .calls()
            .into_iter()
            .find_map(|c| match c {
                Call::DmIoctl {
                    cmd: cairn_dm::Command::TableLoad,
                    request,
                    ..
                } => Some(cairn_dm::testing::Decoded::parse(&request)),
                _ => None,
            })
            .unwrap();
        assert_eq!(table.name, "root-b");
        assert_eq!(
            table.targets,
            [(
                0,
                240,
                "verity".into(),
                format!("1 254:3 254:3 4096 4096 30 33 sha256 {HASH} 62 1 restart_on_corruption")
            )]
        );
        assert!(sys.calls().contains(&Call::Mount {
            source: r.join("dev/dm-0").display().to_string(),
            target: r.join("newroot"),
            fstype: "squashfs".into(),
            flags: crate::sys::MountFlags::RDONLY
                | crate::sys::MountFlags::NODEV
                | crate::sys::MountFlags::NOSUID,
            data: "".into(),
        }));
        let text = mem.text();
        assert!(
            text.contains("ignoring unknown kernel parameter cairn.x"),
            "{text}"
        );
        assert!(text.contains("ROOT-B is"), "{text}");
        assert!(
            text.contains(&format!(
                "slot b: ROOT-B verified by dm-verity as {} (root hash 1a2b3c4d…, 30 data \
                 blocks); switching root",
                r.join("dev/dm-0").display()
            )),
            "{text}"
        );
    }

    const EXT_HASH: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
    /// The extension in the fake ROOT-B: after the root's superblock, 16 data blocks and its own
    /// superblock.
    const EXT_OFFSET: u64 = HASH_OFFSET + 2 * 4096;
    const EXT_HASH_OFFSET: u64 = 16 * 4096;

    /// ROOT-B with the root and the extension, and a fake kernel that numbers devices in order
    /// (root-b = dm-0, ext-b-data = dm-1, ext-b = dm-2) and gives the linear device the
    /// partition's bytes from the extension's offset on, as the kernel would.
    fn with_extension(dir: &tempfile::TempDir, ext_superblock: bool) -> Fake {
        let r = dir.path().to_owned();
        let part = r.join("dev/vda3");
        let mut bytes = std::fs::read(&part).unwrap();
        bytes.resize(EXT_OFFSET as usize + EXT_HASH_OFFSET as usize, 0);
        if ext_superblock {
            bytes.extend(crate::verity::testing::superblock_block(16, b"ext"));
        } else {
            bytes.extend(vec![0u8; 4096]);
        }
        std::fs::write(&part, &bytes).unwrap();
        std::fs::write(
            r.join("sys/class/block/vda3/size"),
            format!("{}\n", bytes.len() / 512),
        )
        .unwrap();
        let sys = Fake::new();
        let mut created = 0u32;
        sys.on_dm_ioctl(move |cmd, buf| {
            let dev = |minor| DevT { major: 253, minor }.to_dm();
            use cairn_dm::{testing::write_reply, Command, Flags};
            match cmd {
                Command::DevCreate => {
                    write_reply(buf, Flags::NONE, dev(created));
                    created += 1;
                }
                Command::TableLoad => write_reply(
                    buf,
                    Flags::INACTIVE_PRESENT | Flags::READONLY,
                    dev(created - 1),
                ),
                Command::DevSuspend => {
                    let minor = created - 1;
                    let content = if minor == 1 {
                        bytes[EXT_OFFSET as usize..].to_vec()
                    } else {
                        Vec::new()
                    };
                    std::fs::write(r.join(format!("dev/dm-{minor}")), content).unwrap();
                    write_reply(buf, Flags::ACTIVE_PRESENT | Flags::READONLY, dev(minor));
                }
                Command::DevRemove | Command::Version => {}
            }
        });
        sys
    }

    fn ext_args() -> String {
        format!(
            "cairn.ext.roothash={EXT_HASH} cairn.ext.offset={EXT_OFFSET} \
             cairn.ext.hashoffset={EXT_HASH_OFFSET}"
        )
    }

    #[test]
    fn the_extension_is_verified_and_overlaid_on_the_root() {
        let dir = initramfs(&format!("cairn.slot=b {} {}", verity_args(), ext_args()));
        let r = dir.path();
        let sys = with_extension(&dir, true);
        let (log, mem) = Logger::memory();
        let err = run(&sys, &log, &Paths::under(r), Duration::ZERO);
        assert!(matches!(err, Error::Exec { .. }), "{err}");
        let tables: Vec<_> = sys
            .calls()
            .into_iter()
            .filter_map(|c| match c {
                Call::DmIoctl {
                    cmd: cairn_dm::Command::TableLoad,
                    request,
                    ..
                } => Some(cairn_dm::testing::Decoded::parse(&request)),
                _ => None,
            })
            .collect();
        assert_eq!(tables.len(), 3);
        let start = EXT_OFFSET / 512;
        let total = (EXT_OFFSET + EXT_HASH_OFFSET + 4096) / 512;
        assert_eq!(tables[1].name, "ext-b-data");
        assert_eq!(
            tables[1].targets,
            [(0, total - start, "linear".into(), format!("254:3 {start}"))]
        );
        assert_eq!(tables[2].name, "ext-b");
        assert_eq!(
            tables[2].targets,
            [(
                0,
                16 * 8,
                "verity".into(),
                format!("1 253:1 253:1 4096 4096 16 17 sha256 {EXT_HASH} 657874")
            )]
        );
        let mounts: Vec<_> = sys
            .calls()
            .into_iter()
            .filter_map(|c| match c {
                Call::Mount {
                    source,
                    target,
                    fstype,
                    data,
                    ..
                } => Some((source, target, fstype, data)),
                _ => None,
            })
            .collect();
        let ext_mount = r.join(crate::extension::MOUNT_POINT);
        let newroot = r.join("newroot");
        let n = mounts.len();
        assert_eq!(
            mounts[n - 2],
            (
                r.join("dev/dm-2").display().to_string(),
                ext_mount.clone(),
                "squashfs".into(),
                "".into()
            )
        );
        assert_eq!(
            mounts[n - 1],
            (
                "overlay".into(),
                newroot.clone(),
                "overlay".into(),
                format!("lowerdir={}:{}", ext_mount.display(), newroot.display())
            )
        );
        // The overlay is in place before /run (with the extension's mount) moves into it.
        let actions = sys.actions();
        let overlay_at = actions
            .iter()
            .position(|c| matches!(c, Call::Mount { fstype, .. } if fstype == "overlay"))
            .unwrap();
        let first_move = actions
            .iter()
            .position(|c| matches!(c, Call::MountMove(..)))
            .unwrap();
        assert!(overlay_at < first_move);
        let text = mem.text();
        assert!(
            text.contains("containers extension mounted, 1 MiB, verity 0123456789ab"),
            "{text}"
        );
    }

    #[test]
    fn a_bad_extension_is_one_line_and_the_boot_goes_on() {
        // No verity superblock where the command line says: the devices made for it are removed.
        let dir = initramfs(&format!("cairn.slot=b {} {}", verity_args(), ext_args()));
        let sys = with_extension(&dir, false);
        let (log, mem) = Logger::memory();
        let err = run(&sys, &log, &Paths::under(dir.path()), Duration::ZERO);
        assert!(matches!(err, Error::Exec { .. }), "{err}");
        let text = mem.text();
        let line = text
            .lines()
            .find(|l| l.contains("containers extension not mounted"))
            .unwrap_or_else(|| panic!("{text}"));
        assert!(line.ends_with("; booting without it"), "{line}");
        assert!(line.contains("verity"), "{line}");
        let removed = sys
            .calls()
            .into_iter()
            .filter(|c| {
                matches!(
                    c,
                    Call::DmIoctl {
                        cmd: cairn_dm::Command::DevRemove,
                        ..
                    }
                )
            })
            .count();
        assert_eq!(removed, 1, "the linear device is removed again");
        assert!(!sys
            .calls()
            .iter()
            .any(|c| matches!(c, Call::Mount { fstype, .. } if fstype == "overlay")));

        // An overlay the kernel refuses (no overlay module): the extension's mount is undone.
        let dir = initramfs(&format!("cairn.slot=b {} {}", verity_args(), ext_args()));
        let sys = with_extension(&dir, true);
        sys.fail_when(
            |c| matches!(c, Call::Mount { fstype, .. } if fstype == "overlay"),
            libc::ENODEV,
        );
        let (log, mem) = Logger::memory();
        let err = run(&sys, &log, &Paths::under(dir.path()), Duration::ZERO);
        assert!(matches!(err, Error::Exec { .. }), "{err}");
        assert!(
            mem.text()
                .contains("containers extension not mounted: mounting overlay"),
            "{}",
            mem.text()
        );
        assert!(sys.calls().iter().any(|c| matches!(c, Call::Umount(..))));

        // Half the words: said, and no device is made.
        let dir = initramfs(&format!(
            "cairn.slot=b {} cairn.ext.roothash={EXT_HASH}",
            verity_args()
        ));
        let sys = with_extension(&dir, true);
        let (log, mem) = Logger::memory();
        let err = run(&sys, &log, &Paths::under(dir.path()), Duration::ZERO);
        assert!(matches!(err, Error::Exec { .. }), "{err}");
        assert!(
            mem.text().contains(
                "containers extension not mounted: cairn.ext.offset is missing; booting \
                 without it"
            ),
            "{}",
            mem.text()
        );
    }

    #[test]
    fn missing_root_hash_fails_before_modules() {
        let dir = initramfs(&format!("cairn.slot=a cairn.hashoffset={HASH_OFFSET}"));
        let sys = sys_for(&dir);
        let (log, _) = Logger::memory();
        let err = run(&sys, &log, &Paths::under(dir.path()), Duration::ZERO);
        assert_eq!(
            crate::error::chain(&err),
            "cairn.roothash is missing: refusing to mount an unverified root"
        );
        assert!(!loaded_beyond_the_watchdog(&sys));
        assert!(!sys
            .calls()
            .iter()
            .any(|c| matches!(c, Call::DmIoctl { .. })));
    }

    #[test]
    fn malformed_root_hash_fails_before_modules() {
        let upper = HASH.to_uppercase();
        for cmdline in [
            format!(
                "cairn.slot=a cairn.roothash={} cairn.hashoffset=8192",
                &HASH[2..]
            ),
            format!("cairn.slot=a cairn.roothash={upper} cairn.hashoffset=8192"),
            format!("cairn.slot=a cairn.roothash={HASH} cairn.hashoffset=8191"),
            format!("cairn.slot=a cairn.roothash={HASH}"),
        ] {
            let dir = initramfs(&cmdline);
            let sys = sys_for(&dir);
            let (log, _) = Logger::memory();
            let err = run(&sys, &log, &Paths::under(dir.path()), Duration::ZERO);
            assert!(
                matches!(
                    err,
                    Error::BadRootHash { .. }
                        | Error::BadHashOffset { .. }
                        | Error::MissingHashOffset
                ),
                "{cmdline}: {err}"
            );
            assert!(!loaded_beyond_the_watchdog(&sys));
        }
    }

    #[test]
    fn io_error_from_the_verified_root_blames_verification() {
        let dir = initramfs(&format!("cairn.slot=b {}", verity_args()));
        let sys = sys_for(&dir);
        sys.fail_when(
            |c| matches!(c, Call::Mount { fstype, .. } if fstype == "squashfs"),
            libc::EIO,
        );
        let (log, _) = Logger::memory();
        let err = run(&sys, &log, &Paths::under(dir.path()), Duration::ZERO);
        let r = dir.path();
        assert_eq!(
            crate::error::chain(&err),
            format!(
                "mounting squashfs {} on {}: Input/output error (os error 5): the root of slot b \
                 failed dm-verity verification",
                r.join("dev/dm-0").display(),
                r.join("newroot").display()
            )
        );

        let dir = initramfs(&format!("cairn.slot=a {}", verity_args()));
        let sys = sys_for(&dir);
        sys.fail_when(|c| matches!(c, Call::Exec { .. }), libc::EIO);
        let err = run(&sys, &log, &Paths::under(dir.path()), Duration::ZERO);
        assert_eq!(
            crate::error::chain(&err),
            "executing /sbin/init: Input/output error (os error 5): the root of slot a failed \
             dm-verity verification"
        );
    }

    #[test]
    fn other_mount_errors_are_not_blamed_on_verification() {
        let dir = initramfs(&format!("cairn.slot=b {}", verity_args()));
        let sys = sys_for(&dir);
        sys.fail_when(
            |c| matches!(c, Call::Mount { fstype, .. } if fstype == "squashfs"),
            libc::EINVAL,
        );
        let (log, _) = Logger::memory();
        let err = run(&sys, &log, &Paths::under(dir.path()), Duration::ZERO);
        assert!(matches!(err, Error::Mount { .. }), "{err}");
        assert!(!crate::error::chain(&err).contains("verification"));
    }

    #[test]
    fn missing_slot_fails_before_modules() {
        let dir = initramfs("console=ttyAMA0 quiet");
        let sys = Fake::new();
        let (log, _) = Logger::memory();
        let err = run(&sys, &log, &Paths::under(dir.path()), Duration::ZERO);
        assert!(matches!(err, Error::MissingSlot));
        assert!(!loaded_beyond_the_watchdog(&sys));
    }

    /// Loaded a module other than the watchdog's, which goes first whatever else fails.
    fn loaded_beyond_the_watchdog(sys: &Fake) -> bool {
        let loads: Vec<_> = sys.loaded_modules();
        assert!(
            loads.first().is_some_and(|p| p.ends_with("softdog.ko")),
            "{loads:?}"
        );
        loads.len() > 1
    }

    #[test]
    fn a_missing_watchdog_driver_is_reported_and_the_boot_goes_on() {
        let dir = initramfs(&format!("cairn.slot=b {}", verity_args()));
        let sys = sys_for(&dir);
        sys.fail_when(
            |c| matches!(c, Call::LoadModule(p, _) if p.ends_with("softdog.ko")),
            libc::ENOENT,
        );
        let (log, mem) = Logger::memory();
        let err = run(&sys, &log, &Paths::under(dir.path()), Duration::ZERO);
        assert!(matches!(err, Error::Exec { .. }), "{err}");
        let text = mem.text();
        assert!(
            text.contains("loading kernel module softdog")
                && text.contains("a hang will not reset this machine"),
            "{text}"
        );
    }

    #[test]
    fn a_module_the_root_does_not_need_fails_and_the_boot_goes_on() {
        let dir = initramfs(&format!("cairn.slot=a {}", verity_args()));
        let r = dir.path();
        std::fs::write(
            r.join(paths::MODULE_LIST),
            "lib/modules/dm-mod.ko\nlib/modules/dm-verity.ko\nlib/modules/evdev.ko\n\
             lib/modules/squashfs.ko\n",
        )
        .unwrap();
        std::fs::write(r.join("etc/cairn/modules.dep"), "dm-verity: dm-mod\n").unwrap();
        let sys = sys_for(&dir);
        sys.fail_when(
            |c| matches!(c, Call::LoadModule(p, _) if p.ends_with("evdev.ko")),
            libc::ENOEXEC,
        );
        let (log, mem) = Logger::memory();
        let err = run(&sys, &log, &Paths::under(r), Duration::ZERO);
        assert!(matches!(err, Error::Exec { .. }), "{err}");
        let text = mem.text();
        assert!(
            text.contains("loading kernel module evdev (")
                && text.contains("Exec format error (os error 8)"),
            "{text}"
        );
        assert!(
            text.contains("slot a: 3 modules loaded (") && text.contains(" (evdev not loaded)"),
            "{text}"
        );
    }

    #[test]
    fn proc_mount_failure_is_reported() {
        let dir = initramfs("cairn.slot=a");
        let sys = Fake::new();
        sys.fail_when(
            |c| matches!(c, Call::Mount { fstype, .. } if fstype == "proc"),
            libc::EPERM,
        );
        let (log, _) = Logger::memory();
        let err = run(&sys, &log, &Paths::under(dir.path()), Duration::ZERO);
        let line = crate::error::chain(&err);
        assert!(line.starts_with("mounting proc proc on "), "{line}");
        assert!(
            line.ends_with("Operation not permitted (os error 1)"),
            "{line}"
        );
        assert_eq!(sys.calls().len(), 1, "nothing after the failed mount");
    }
}
