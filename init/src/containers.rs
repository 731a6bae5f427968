//! What containers need from the kernel, set up by stage 2 right after the ready line (so it never
//! delays `ready`): the kernel modules the image builder put into the root, and cgroup v2 with
//! the cpu, memory and pids controllers delegated to the root's children.
//!
//! - `/etc/cairn/modules-containers`: the modules, one path a line in load order (the format of
//!   [`crate::modules`]). A module that fails to load is one console line naming it; the rest
//!   are still tried.
//! - `/etc/cairn/modules-containers-missing`: names of modules containers need that this
//!   board's kernel lacks (found at image build time), one console line each.
//! - cgroup2 is mounted on `/sys/fs/cgroup` unless something is mounted there already, and
//!   `+cpu +memory +pids` written to its `cgroup.subtree_control`. A controller the kernel does
//!   not offer is one console line.
//!
//! When it is done, init writes [`DONE`] (`/run/cairn/containers-kernel`): one `key=value` line
//! each for `loaded`, `failed`, `missing` and `controllers_missing` (names comma-separated). cairnd
//! starts before the ready line, so whatever starts containerd waits for this file.
//!
//! An image without the containers extension has no module list, and nothing here runs.

use crate::log::Logger;
use crate::modules::parse_list;
use crate::mounts::{self, ensure_dir};
use crate::paths::{limits, read_limited, Paths};
use crate::sys::{Mount, MountFlags, Syscalls};

pub const MODULE_LIST: &str = "etc/cairn/modules-containers";
pub const MISSING_LIST: &str = "etc/cairn/modules-containers-missing";
pub const CGROUP_ROOT: &str = "sys/fs/cgroup";
/// Written when the modules are loaded and cgroup v2 is set up.
pub const DONE: &str = "run/cairn/containers-kernel";
/// The controllers containerd and k3s put limits through.
pub const CONTROLLERS: [&str; 3] = ["cpu", "memory", "pids"];

/// What [`setup`] did, for tests and the summary line.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Outcome {
    pub loaded: usize,
    pub failed: Vec<String>,
    pub missing: Vec<String>,
    pub controllers_missing: Vec<String>,
}

/// Loads the container modules and sets up cgroup v2; every problem is a console line, none is
/// fatal. Returns `None` when the image carries no containers extension.
pub fn setup(sys: &dyn Syscalls, log: &Logger, paths: &Paths) -> Option<Outcome> {
    let list_path = paths.at(MODULE_LIST);
    let text = read_limited(&list_path, limits::MODULE_LIST).ok()?;
    let mut out = Outcome::default();
    match parse_list(&text, &list_path) {
        Ok(entries) => {
            for entry in &entries {
                match sys.load_module(&paths.at(&entry.path), &entry.params) {
                    Ok(()) => out.loaded += 1,
                    Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {}
                    Err(e) => {
                        log.warn(format_args!(
                            "containers: kernel module {} did not load: {e}",
                            entry.name()
                        ));
                        out.failed.push(entry.name().to_owned());
                    }
                }
            }
        }
        Err(e) => log.warn(format_args!("containers: {}", crate::error::chain(&e))),
    }
    if let Ok(text) = read_limited(&paths.at(MISSING_LIST), limits::MODULE_LIST) {
        for name in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
            log.warn(format_args!(
                "containers: kernel module {name} is missing from this kernel"
            ));
            out.missing.push(name.to_owned());
        }
    }
    out.controllers_missing = cgroup(sys, log, paths);
    log.info(format_args!(
        "containers: {} kernel modules loaded, {} failed, {} missing; cgroup v2 on /{CGROUP_ROOT} \
         with {}",
        out.loaded,
        out.failed.len(),
        out.missing.len(),
        CONTROLLERS
            .iter()
            .filter(|c| !out.controllers_missing.iter().any(|m| m == *c))
            .copied()
            .collect::<Vec<_>>()
            .join(", ")
    ));
    let done = paths.at(DONE);
    let text = format!(
        "loaded={}\nfailed={}\nmissing={}\ncontrollers_missing={}\n",
        out.loaded,
        out.failed.join(","),
        out.missing.join(","),
        out.controllers_missing.join(",")
    );
    let written = done
        .parent()
        .map_or(Ok(()), std::fs::create_dir_all)
        .and_then(|()| std::fs::write(&done, text));
    if let Err(e) = written {
        log.warn(format_args!("containers: writing {}: {e}", done.display()));
    }
    Some(out)
}

/// Mounts cgroup2 and enables [`CONTROLLERS`] for the root's children; returns the controllers
/// that are not there.
fn cgroup(sys: &dyn Syscalls, log: &Logger, paths: &Paths) -> Vec<String> {
    let root = paths.at(CGROUP_ROOT);
    let all = || CONTROLLERS.iter().map(|c| c.to_string()).collect();
    if !mounts::is_mount_point(&root) {
        let mounted = ensure_dir(sys, &root).and_then(|()| {
            sys.mount(&Mount {
                source: "cgroup2",
                target: &root,
                fstype: "cgroup2",
                flags: MountFlags::NOSUID | MountFlags::NODEV | MountFlags::NOEXEC,
                data: "nsdelegate",
            })
            .map_err(|source| crate::error::Error::Mount {
                fstype: "cgroup2".into(),
                source_name: "cgroup2".into(),
                target: root.clone(),
                source,
            })
        });
        if let Err(e) = mounted {
            log.warn(format_args!(
                "containers: cgroup v2 is not available: {}",
                crate::error::chain(&e)
            ));
            return all();
        }
    }
    let offered = match read_limited(&root.join("cgroup.controllers"), limits::SYSFS_ATTR) {
        Ok(t) => t,
        Err(e) => {
            log.warn(format_args!(
                "containers: cgroup v2 controllers unknown: {}",
                crate::error::chain(&e)
            ));
            return all();
        }
    };
    let offered: Vec<&str> = offered.split_whitespace().collect();
    let mut missing = Vec::new();
    let mut enable = Vec::new();
    for c in CONTROLLERS {
        if offered.contains(&c) {
            enable.push(format!("+{c}"));
        } else {
            let why = if c == "memory" {
                ": containers run without memory limits or accounting"
            } else {
                ""
            };
            log.warn(format_args!(
                "containers: the cgroup v2 {c} controller is missing from this kernel{why}"
            ));
            missing.push(c.to_owned());
        }
    }
    let control = root.join("cgroup.subtree_control");
    // All at once; if the kernel refuses that, one by one, so one bad controller does not take
    // the others with it.
    if !enable.is_empty() && std::fs::write(&control, enable.join(" ")).is_err() {
        for c in &enable {
            if let Err(e) = std::fs::write(&control, c) {
                log.warn(format_args!(
                    "containers: enabling the cgroup v2 {} controller in {}: {e}",
                    &c[1..],
                    control.display()
                ));
                missing.push(c[1..].to_owned());
            }
        }
    }
    missing
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys::fake::{Call, Fake};

    fn files(dir: &std::path::Path, list: &str, missing: &str, controllers: &str) {
        let w = |p: &str, s: &str| {
            let p = dir.join(p);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, s).unwrap();
        };
        w(MODULE_LIST, list);
        w(MISSING_LIST, missing);
        w(&format!("{CGROUP_ROOT}/cgroup.controllers"), controllers);
        w(&format!("{CGROUP_ROOT}/cgroup.subtree_control"), "");
    }

    #[test]
    fn loads_every_module_names_failures_and_enables_controllers() {
        let dir = tempfile::tempdir().unwrap();
        let r = dir.path();
        files(
            r,
            "usr/lib/cairn/modules/overlay.ko\nusr/lib/cairn/modules/bridge.ko\n\
             usr/lib/cairn/modules/veth.ko\n",
            "vxlan\n",
            "cpuset cpu io memory hugetlb pids rdma misc\n",
        );
        let sys = Fake::new();
        sys.fail_when(
            |c| matches!(c, Call::LoadModule(p, _) if p.ends_with("bridge.ko")),
            libc::ENOEXEC,
        );
        let (log, mem) = Logger::memory();
        let out = setup(&sys, &log, &Paths::under(r)).unwrap();
        assert_eq!(out.loaded, 2);
        assert_eq!(out.failed, ["bridge"]);
        assert_eq!(out.missing, ["vxlan"]);
        assert!(out.controllers_missing.is_empty());
        let loads = sys
            .calls()
            .iter()
            .filter(|c| matches!(c, Call::LoadModule(..)))
            .count();
        assert_eq!(loads, 3, "a failure does not stop the others");
        assert!(sys.calls().iter().any(|c| matches!(
            c,
            Call::Mount { fstype, .. } if fstype == "cgroup2"
        )));
        assert_eq!(
            std::fs::read_to_string(r.join(CGROUP_ROOT).join("cgroup.subtree_control")).unwrap(),
            "+cpu +memory +pids"
        );
        let text = mem.text();
        assert!(text.contains("kernel module bridge did not load"), "{text}");
        assert!(text.contains("kernel module vxlan is missing"), "{text}");
        assert!(
            text.contains("2 kernel modules loaded, 1 failed, 1 missing"),
            "{text}"
        );
        assert_eq!(
            std::fs::read_to_string(r.join(DONE)).unwrap(),
            "loaded=2\nfailed=bridge\nmissing=vxlan\ncontrollers_missing=\n"
        );
    }

    #[test]
    fn a_missing_memory_controller_is_said() {
        let dir = tempfile::tempdir().unwrap();
        files(dir.path(), "", "", "cpu io pids\n");
        let sys = Fake::new();
        let (log, mem) = Logger::memory();
        let out = setup(&sys, &log, &Paths::under(dir.path())).unwrap();
        assert_eq!(out.controllers_missing, ["memory"]);
        assert!(
            mem.text()
                .contains("the cgroup v2 memory controller is missing from this kernel"),
            "{}",
            mem.text()
        );
        assert_eq!(
            std::fs::read_to_string(dir.path().join(CGROUP_ROOT).join("cgroup.subtree_control"))
                .unwrap(),
            "+cpu +pids"
        );
    }

    #[test]
    fn nothing_without_the_extension() {
        let dir = tempfile::tempdir().unwrap();
        let sys = Fake::new();
        let (log, mem) = Logger::memory();
        assert_eq!(setup(&sys, &log, &Paths::under(dir.path())), None);
        assert!(sys.calls().is_empty());
        assert_eq!(mem.text(), "");
    }
}
