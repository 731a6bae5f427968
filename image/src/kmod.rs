//! Kernel modules for the initramfs.
//!
//! Debian's kernel packages ship no `modules.dep`, so dependencies are read from each module's
//! own `.modinfo` ELF section (`depends=a,b`). A board names the modules init needs to reach its
//! root; this resolves them against the kernel's `modules.order` (every loadable module) and
//! `modules.builtin` (those compiled in, which need no loading), and returns the files in an order
//! where every module comes after the modules it depends on.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// A module file to put into the initramfs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModuleFile {
    /// Canonical module name (dashes folded to underscores).
    pub name: String,
    /// Path on the host, inside the unpacked kernel package.
    pub path: PathBuf,
    /// Canonical names of the loadable modules it depends on (`.modinfo`'s `depends`, built-in
    /// ones left out); each comes before it in [`ModuleTree::resolve`]'s order.
    pub depends: Vec<String>,
}

/// The module tree of one kernel: `<root>/lib/modules/<release>/`.
pub struct ModuleTree {
    release: String,
    dir: PathBuf,
    /// Loadable modules: name → path relative to `dir`.
    loadable: BTreeMap<String, String>,
    builtin: BTreeSet<String>,
}

/// Module names treat `-` and `_` alike; the kernel stores them with underscores.
pub fn canonical_name(name: &str) -> String {
    name.replace('-', "_")
}

fn name_of_path(rel: &str) -> Option<String> {
    let file = rel.rsplit('/').next()?;
    let stem = file.strip_suffix(".ko")?;
    Some(canonical_name(stem))
}

impl ModuleTree {
    /// Opens the module tree of the only kernel release under `package_root/lib/modules`.
    pub fn open(package_root: &Path) -> Result<Self> {
        let base = package_root.join("lib/modules");
        let mut releases: Vec<_> = fs::read_dir(&base)
            .map_err(|e| Error::io("reading", &base, e))?
            .filter_map(|e| e.ok())
            .filter(|e| e.path().join("modules.order").exists())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        releases.sort();
        let release = releases.pop().ok_or_else(|| Error::PackageContent {
            package: package_root.display().to_string(),
            what: "kernel modules",
            path: "lib/modules/<release>/modules.order".into(),
        })?;
        let dir = base.join(&release);
        let read = |file: &str| {
            let p = dir.join(file);
            fs::read_to_string(&p).map_err(|e| Error::io("reading", p, e))
        };
        let order = read("modules.order")?;
        let builtin = read("modules.builtin")?;
        Ok(ModuleTree {
            release,
            loadable: order
                .lines()
                .filter_map(|l| Some((name_of_path(l.trim())?, l.trim().to_string())))
                .collect(),
            builtin: builtin
                .lines()
                .filter_map(|l| name_of_path(l.trim()))
                .collect(),
            dir,
        })
    }

    /// The kernel release (`uname -r`) these modules belong to.
    pub fn release(&self) -> &str {
        &self.release
    }

    /// Resolves `wanted` and their dependencies into load order. Built-in modules are left out.
    pub fn resolve(&self, wanted: &[&str]) -> Result<Vec<ModuleFile>> {
        let mut order = Vec::new();
        let mut done = BTreeSet::new();
        let mut visiting = BTreeSet::new();
        for name in wanted {
            self.visit(&canonical_name(name), &mut order, &mut done, &mut visiting)?;
        }
        Ok(order)
    }

    fn visit(
        &self,
        name: &str,
        order: &mut Vec<ModuleFile>,
        done: &mut BTreeSet<String>,
        visiting: &mut BTreeSet<String>,
    ) -> Result<()> {
        if done.contains(name) {
            return Ok(());
        }
        if self.builtin.contains(name) {
            done.insert(name.to_string());
            return Ok(());
        }
        let rel = self
            .loadable
            .get(name)
            .ok_or_else(|| Error::ModuleNotFound {
                name: name.to_string(),
                kernel: self.release.clone(),
            })?;
        if !visiting.insert(name.to_string()) {
            return Err(Error::ModuleCycle {
                name: name.to_string(),
            });
        }
        let path = self.dir.join(rel);
        let bytes = fs::read(&path).map_err(|e| Error::io("reading", &path, e))?;
        let info = modinfo(&bytes).map_err(|reason| Error::ModuleInfo {
            path: path.clone(),
            reason,
        })?;
        let mut depends = Vec::new();
        for dep in info
            .iter()
            .filter(|(k, _)| k == "depends")
            .flat_map(|(_, v)| v.split(','))
            .filter(|d| !d.is_empty())
        {
            let dep = canonical_name(dep);
            self.visit(&dep, order, done, visiting)?;
            if !self.builtin.contains(&dep) {
                depends.push(dep);
            }
        }
        visiting.remove(name);
        done.insert(name.to_string());
        order.push(ModuleFile {
            name: name.to_string(),
            path,
            depends,
        });
        Ok(())
    }
}

/// Reads the `.modinfo` section of a little-endian ELF64 module as `key=value` pairs.
pub fn modinfo(elf: &[u8]) -> std::result::Result<Vec<(String, String)>, String> {
    let u16_at = |off: usize| -> std::result::Result<u16, String> {
        elf.get(off..off + 2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]))
            .ok_or_else(|| format!("truncated ELF at byte {off}"))
    };
    let u32_at = |off: usize| -> std::result::Result<u32, String> {
        elf.get(off..off + 4)
            .map(|b| u32::from_le_bytes(b.try_into().unwrap_or([0; 4])))
            .ok_or_else(|| format!("truncated ELF at byte {off}"))
    };
    let u64_at = |off: usize| -> std::result::Result<usize, String> {
        elf.get(off..off + 8)
            .map(|b| u64::from_le_bytes(b.try_into().unwrap_or([0; 8])) as usize)
            .ok_or_else(|| format!("truncated ELF at byte {off}"))
    };
    if elf.get(..4) != Some(b"\x7fELF") || elf.get(4) != Some(&2) || elf.get(5) != Some(&1) {
        return Err("not a little-endian ELF64 file".into());
    }
    let shoff = u64_at(0x28)?;
    let shentsize = u16_at(0x3A)? as usize;
    let shnum = u16_at(0x3C)? as usize;
    let shstrndx = u16_at(0x3E)? as usize;
    if shentsize < 64 || shstrndx >= shnum {
        return Err("malformed section header table".into());
    }
    let section = |i: usize| -> std::result::Result<(u32, usize, usize), String> {
        let h = shoff + i * shentsize;
        Ok((u32_at(h)?, u64_at(h + 24)?, u64_at(h + 32)?))
    };
    let (_, stroff, strsize) = section(shstrndx)?;
    let strtab = elf
        .get(stroff..stroff.saturating_add(strsize))
        .ok_or("section names lie outside the file")?;
    for i in 0..shnum {
        let (name_off, off, size) = section(i)?;
        let name = strtab
            .get(name_off as usize..)
            .and_then(|s| s.split(|&b| b == 0).next())
            .unwrap_or_default();
        if name != b".modinfo" {
            continue;
        }
        let data = elf
            .get(off..off.saturating_add(size))
            .ok_or(".modinfo lies outside the file")?;
        return Ok(data
            .split(|&b| b == 0)
            .filter_map(|entry| {
                let text = std::str::from_utf8(entry).ok()?;
                let (k, v) = text.split_once('=')?;
                Some((k.to_string(), v.to_string()))
            })
            .collect());
    }
    Err("no .modinfo section".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Builds a minimal ELF64 with a `.modinfo` section holding `info`.
    fn fake_module(info: &[&str]) -> Vec<u8> {
        let mut modinfo = Vec::new();
        for i in info {
            modinfo.extend_from_slice(i.as_bytes());
            modinfo.push(0);
        }
        let shstrtab = b"\0.modinfo\0.shstrtab\0".to_vec();
        let mut elf = vec![0u8; 64];
        elf[..4].copy_from_slice(b"\x7fELF");
        elf[4] = 2;
        elf[5] = 1;
        let modinfo_off = elf.len();
        elf.extend_from_slice(&modinfo);
        let strtab_off = elf.len();
        elf.extend_from_slice(&shstrtab);
        let shoff = elf.len();
        let mut header = |name: u32, off: usize, size: usize| {
            let mut h = [0u8; 64];
            h[..4].copy_from_slice(&name.to_le_bytes());
            h[24..32].copy_from_slice(&(off as u64).to_le_bytes());
            h[32..40].copy_from_slice(&(size as u64).to_le_bytes());
            elf.extend_from_slice(&h);
        };
        header(0, 0, 0);
        header(1, modinfo_off, modinfo.len());
        header(10, strtab_off, shstrtab.len());
        elf[0x28..0x30].copy_from_slice(&(shoff as u64).to_le_bytes());
        elf[0x3A..0x3C].copy_from_slice(&64u16.to_le_bytes());
        elf[0x3C..0x3E].copy_from_slice(&3u16.to_le_bytes());
        elf[0x3E..0x40].copy_from_slice(&2u16.to_le_bytes());
        elf
    }

    fn fake_tree(dir: &Path) {
        let m = dir.join("lib/modules/6.1.0-test");
        fs::create_dir_all(m.join("kernel/drivers")).unwrap();
        let modules: &[(&str, &[&str])] = &[
            (
                "virtio_blk",
                &["depends=virtio,virtio_ring,squashfs", "name=virtio_blk"],
            ),
            ("virtio", &["depends=", "name=virtio"]),
            ("virtio_ring", &["depends=virtio", "name=virtio_ring"]),
            ("loop-a", &["depends=loop_b"]),
            ("loop_b", &["depends=loop-a"]),
        ];
        let mut order = String::new();
        for (name, info) in modules {
            fs::write(
                m.join(format!("kernel/drivers/{name}.ko")),
                fake_module(info),
            )
            .unwrap();
            order.push_str(&format!("kernel/drivers/{name}.ko\n"));
        }
        fs::write(m.join("modules.order"), order).unwrap();
        fs::write(
            m.join("modules.builtin"),
            "kernel/fs/squashfs/squashfs.ko\n",
        )
        .unwrap();
    }

    #[test]
    fn reads_modinfo_pairs() {
        let info = modinfo(&fake_module(&["license=GPL", "depends=a,b"])).unwrap();
        assert_eq!(info[1], ("depends".to_string(), "a,b".to_string()));
        assert!(modinfo(b"not elf").is_err());
        let mut truncated = fake_module(&["depends=a"]);
        truncated.truncate(70);
        assert!(modinfo(&truncated).is_err());
    }

    #[test]
    fn resolves_dependencies_first_and_skips_builtins() {
        let dir = tempfile::tempdir().unwrap();
        fake_tree(dir.path());
        let tree = ModuleTree::open(dir.path()).unwrap();
        assert_eq!(tree.release(), "6.1.0-test");
        let files = tree.resolve(&["virtio-blk", "squashfs", "virtio"]).unwrap();
        let names: Vec<_> = files.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(names, ["virtio", "virtio_ring", "virtio_blk"]);
        // The built-in squashfs is no dependency to wait for.
        assert_eq!(files[2].depends, ["virtio", "virtio_ring"]);
        assert_eq!(
            String::from_utf8(crate::build::dep_file(&files)).unwrap(),
            "virtio_ring: virtio\nvirtio_blk: virtio virtio_ring\n"
        );
    }

    #[test]
    fn unknown_module_and_cycles_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        fake_tree(dir.path());
        let tree = ModuleTree::open(dir.path()).unwrap();
        let err = tree.resolve(&["nvme"]).unwrap_err().to_string();
        assert!(
            err.contains("`nvme`") && err.contains("6.1.0-test"),
            "{err}"
        );
        let err = tree.resolve(&["loop_a"]).unwrap_err().to_string();
        assert!(err.contains("cycle"), "{err}");
    }
}
