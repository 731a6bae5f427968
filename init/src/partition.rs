//! Finding the root partition by its GPT name in sysfs.
//!
//! Each entry of `/sys/class/block/` has a `uevent` file with `DEVNAME=vda2` and, for GPT
//! partitions with a name, `PARTNAME=ROOT-A`. Drivers probe asynchronously after their module
//! loads, so init polls: every [`POLL_INTERVAL`] it rescans until a partition with the wanted name
//! exists *and* its `/dev/<DEVNAME>` node does (devtmpfs creates the node just after the sysfs
//! entry). After the timeout the error lists every partition name that did show up, which tells
//! a missing driver (nothing seen) from a wrong slot or label (other names seen).

use std::path::PathBuf;
use std::time::Duration;

use crate::error::{Error, Result};
use crate::paths::{self, limits, read_limited, Paths};
use crate::sys::Syscalls;

pub const POLL_INTERVAL: Duration = Duration::from_millis(5);
pub const TIMEOUT: Duration = Duration::from_secs(10);

/// One block device as sysfs describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlockDev {
    pub devname: String,
    pub partname: Option<String>,
}

/// Parses a block device `uevent` file (`KEY=value` lines).
pub fn parse_uevent(text: &str) -> Option<BlockDev> {
    let mut devname = None;
    let mut partname = None;
    for line in text.lines() {
        match line.split_once('=') {
            Some(("DEVNAME", v)) => devname = Some(v.to_owned()),
            Some(("PARTNAME", v)) => partname = Some(v.to_owned()),
            _ => {}
        }
    }
    Some(BlockDev {
        devname: devname.filter(|d| !d.is_empty() && !d.contains(".."))?,
        partname,
    })
}

/// Every block device currently in `/sys/class/block`, sorted by device name.
pub fn scan(paths: &Paths) -> Vec<BlockDev> {
    let Ok(dir) = std::fs::read_dir(paths.at(paths::SYS_CLASS_BLOCK)) else {
        return Vec::new();
    };
    let mut devs: Vec<BlockDev> = dir
        .flatten()
        .filter_map(|e| read_limited(&e.path().join("uevent"), limits::UEVENT).ok())
        .filter_map(|t| parse_uevent(&t))
        .collect();
    devs.sort_by(|a, b| a.devname.cmp(&b.devname));
    devs
}

/// A partition that [`wait_for`] found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Partition {
    /// The kernel's name for it, as in `DEVNAME=` (`vda3`, `mmcblk0p3`).
    pub devname: String,
    /// Its device node under `/dev`.
    pub node: PathBuf,
}

impl Partition {
    /// Its sysfs `dev` attribute (`major:minor`). Sysfs spells a `/` in a device name as `!`.
    pub fn sysfs_dev(&self, paths: &Paths) -> PathBuf {
        paths
            .at(paths::SYS_CLASS_BLOCK)
            .join(self.devname.replace('/', "!"))
            .join("dev")
    }
}

/// Waits until the partition named `label` and its device node exist.
/// The partition `label` if it and its device node are there now: one look, no waiting.
pub fn find(paths: &Paths, label: &str) -> Option<Partition> {
    pick(paths, &scan(paths), label)
}

fn pick(paths: &Paths, devs: &[BlockDev], label: &str) -> Option<Partition> {
    let dev = devs.iter().find(|d| d.partname.as_deref() == Some(label))?;
    let node = paths.at("dev").join(&dev.devname);
    node.exists().then(|| Partition {
        devname: dev.devname.clone(),
        node,
    })
}

pub fn wait_for(
    sys: &dyn Syscalls,
    paths: &Paths,
    label: &str,
    timeout: Duration,
) -> Result<Partition> {
    let start = sys.boottime();
    loop {
        let devs = scan(paths);
        if let Some(found) = pick(paths, &devs, label) {
            return Ok(found);
        }
        let waited = sys.boottime().saturating_sub(start);
        if waited >= timeout {
            return Err(Error::PartitionTimeout {
                label: label.to_owned(),
                waited_ms: waited.as_millis(),
                seen: describe(&devs),
            });
        }
        sys.sleep(POLL_INTERVAL);
    }
}

/// `ESP (vda1), ROOT-B (vda3)`, or what block devices exist when no partition has a name.
fn describe(devs: &[BlockDev]) -> String {
    let named: Vec<String> = devs
        .iter()
        .filter_map(|d| Some(format!("{} ({})", d.partname.as_ref()?, d.devname)))
        .collect();
    if !named.is_empty() {
        return named.join(", ");
    }
    if devs.is_empty() {
        return "none, and no block devices".to_owned();
    }
    let names: Vec<&str> = devs.iter().map(|d| d.devname.as_str()).collect();
    format!("none (block devices: {})", names.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys::fake::Fake;
    use std::path::Path;

    fn add_dev(root: &Path, dev: &str, partname: Option<&str>, node: bool) {
        let d = root.join(paths::SYS_CLASS_BLOCK).join(dev);
        std::fs::create_dir_all(&d).unwrap();
        let mut uevent = format!("MAJOR=254\nMINOR=2\nDEVNAME={dev}\nDEVTYPE=partition\n");
        if let Some(p) = partname {
            uevent.push_str(&format!("PARTN=2\nPARTNAME={p}\n"));
        }
        std::fs::write(d.join("uevent"), uevent).unwrap();
        if node {
            std::fs::create_dir_all(root.join("dev")).unwrap();
            std::fs::write(root.join("dev").join(dev), "").unwrap();
        }
    }

    #[test]
    fn uevent_parsing() {
        let d = parse_uevent("MAJOR=254\nDEVNAME=vda2\nDEVTYPE=partition\nPARTNAME=ROOT-A\n");
        assert_eq!(
            d,
            Some(BlockDev {
                devname: "vda2".into(),
                partname: Some("ROOT-A".into())
            })
        );
        assert_eq!(parse_uevent("DEVNAME=vda\n").unwrap().partname, None);
        assert_eq!(parse_uevent("PARTNAME=x\n"), None);
        assert_eq!(parse_uevent("DEVNAME=../etc\n"), None);
    }

    #[test]
    fn finds_present_partition_without_sleeping() {
        let dir = tempfile::tempdir().unwrap();
        add_dev(dir.path(), "vda", None, true);
        add_dev(dir.path(), "vda1", Some("ESP"), true);
        add_dev(dir.path(), "vda2", Some("ROOT-A"), true);
        add_dev(dir.path(), "vda3", Some("ROOT-B"), true);
        let sys = Fake::new();
        let paths = Paths::under(dir.path());
        let found = wait_for(&sys, &paths, "ROOT-B", TIMEOUT).unwrap();
        assert_eq!(
            found,
            Partition {
                devname: "vda3".into(),
                node: dir.path().join("dev/vda3")
            }
        );
        assert_eq!(
            found.sysfs_dev(&paths),
            dir.path().join("sys/class/block/vda3/dev")
        );
        assert!(sys.calls().is_empty());
    }

    #[test]
    fn sysfs_spells_a_slash_in_a_device_name_as_bang() {
        let p = Partition {
            devname: "cciss/c0d0p3".into(),
            node: "/dev/cciss/c0d0p3".into(),
        };
        assert_eq!(
            p.sysfs_dev(&Paths::system()),
            Path::new("/sys/class/block/cciss!c0d0p3/dev")
        );
    }

    #[test]
    fn waits_for_late_partition_and_its_node() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_owned();
        add_dev(&root, "vda1", Some("ESP"), true);
        let sys = Fake::new();
        let start = sys.now();
        sys.on_sleep(move |now| {
            let t = now - start;
            if t >= Duration::from_millis(300) {
                add_dev(&root, "vda2", Some("ROOT-A"), false);
            }
            if t >= Duration::from_millis(320) {
                std::fs::write(root.join("dev/vda2"), "").unwrap();
            }
        });
        let paths = Paths::under(dir.path());
        let found = wait_for(&sys, &paths, "ROOT-A", TIMEOUT).unwrap();
        assert_eq!(found.node, dir.path().join("dev/vda2"));
        let waited = sys.now() - start;
        assert!(waited >= Duration::from_millis(320) && waited < Duration::from_millis(330));
    }

    #[test]
    fn timeout_lists_partitions_seen() {
        let dir = tempfile::tempdir().unwrap();
        add_dev(dir.path(), "vda", None, true);
        add_dev(dir.path(), "vda1", Some("ESP"), true);
        add_dev(dir.path(), "vda3", Some("ROOT-B"), true);
        let sys = Fake::new();
        let start = sys.now();
        let err = wait_for(&sys, &Paths::under(dir.path()), "ROOT-A", TIMEOUT).unwrap_err();
        assert_eq!(sys.now() - start, TIMEOUT);
        assert_eq!(
            err.to_string(),
            "partition ROOT-A did not appear within 10000 ms; partitions seen: ESP (vda1), \
             ROOT-B (vda3) (is the disk driver in /etc/cairn/modules?)"
        );
    }

    #[test]
    fn timeout_without_any_disk() {
        let dir = tempfile::tempdir().unwrap();
        let sys = Fake::new();
        let err = wait_for(
            &sys,
            &Paths::under(dir.path()),
            "ROOT-A",
            Duration::from_millis(50),
        )
        .unwrap_err();
        assert!(
            err.to_string().contains("seen: none, and no block devices"),
            "{err}"
        );
        add_dev(dir.path(), "sda", None, true);
        let err = wait_for(
            &sys,
            &Paths::under(dir.path()),
            "ROOT-A",
            Duration::from_millis(50),
        )
        .unwrap_err();
        assert!(
            err.to_string().contains("seen: none (block devices: sda)"),
            "{err}"
        );
    }
}
