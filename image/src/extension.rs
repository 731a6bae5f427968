//! The containers system extension: containerd, runc, the CNI plugins and iptables (nft backend)
//! from Debian's packages, with exactly the shared libraries they load, as a squashfs with its
//! own dm-verity tree. init overlays it on the root (docs/boot-slots.md).
//!
//! Packages are the dependency closure of [`PACKAGES`] through their `Depends` fields, each
//! fetched and pinned like the kernel ([`crate::deb`]). Which files of them go in is exact at the
//! file level: the programs in [`PROGRAMS`] (and the iptables extensions xtables loads with
//! `dlopen`), then, transitively, every library an ELF file names in `DT_NEEDED` and its
//! `PT_INTERP` loader, looked up in the closure's library folders as the loader does.
//! Documentation, other plugins, the legacy iptables and the rest stay out.
//!
//! An operator's k3s binary (and its airgap images tarball) may be added; `/usr/lib/cairn/
//! extension.json` lists what the extension carries (packages with version and sha256, and every
//! file's sha256). The built image is cached by a hash of everything that goes into it, so a
//! repeated image build copies it instead of compressing 100 MB again.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File};
use std::io::{Seek, SeekFrom};
use std::path::{Path, PathBuf};

use cairn_board::Arch;
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::deb::{sha256_file, Cache, FetchedPackage, PackageRecord};
use crate::error::{Error, Result};
use crate::formats::guid::Guid;
use crate::formats::tree::{FileContent, NodeKind, Tree};
use crate::formats::{squashfs, verity};

/// The packages the extension is made from; their `Depends` closure is fetched.
pub const PACKAGES: &[&str] = &[
    "containerd",
    "runc",
    "containernetworking-plugins",
    "iptables",
];

/// The programs kept, as the packages install them.
pub const PROGRAMS: &[&str] = &[
    "usr/bin/containerd",
    "usr/bin/containerd-shim-runc-v2",
    "usr/bin/ctr",
    "usr/sbin/runc",
    "usr/lib/cni/bridge",
    "usr/lib/cni/host-local",
    "usr/lib/cni/loopback",
    "usr/lib/cni/portmap",
    "usr/lib/cni/firewall",
    "usr/sbin/xtables-nft-multi",
];

/// The iptables commands, all of them xtables-nft-multi (Debian points them there through
/// update-alternatives, which a read-only image has no use for).
pub const XTABLES_LINKS: &[&str] = &[
    "iptables",
    "iptables-save",
    "iptables-restore",
    "ip6tables",
    "ip6tables-save",
    "ip6tables-restore",
    "iptables-nft",
    "iptables-nft-save",
    "iptables-nft-restore",
    "ip6tables-nft",
    "ip6tables-nft-save",
    "ip6tables-nft-restore",
];

/// Where the extension's manifest lives in the running system.
pub const MANIFEST_PATH: &str = "usr/lib/cairn/extension.json";
/// Where an operator's k3s goes, and its airgap images.
pub const K3S_PATH: &str = "usr/bin/k3s";
pub const K3S_IMAGES_DIR: &str = "usr/lib/cairn/k3s/images";
/// Largest extension accepted without k3s (the budget).
pub const BUDGET: u64 = 60 * 1024 * 1024;
/// Bumped whenever the way files are chosen or written changes, so cached images are rebuilt.
const CACHE_FORMAT: &str = "cairn-extension 2";

/// An operator-supplied k3s.
#[derive(Debug, Clone)]
pub struct K3sInput {
    pub binary: PathBuf,
    /// The sha256 the binary must have (hex), when the operator pins it.
    pub sha256: Option<String>,
    /// The airgap images tarball.
    pub images: Option<PathBuf>,
}

/// What to put into the extension besides the container runtime.
#[derive(Debug, Clone, Default)]
pub struct ExtensionOptions {
    pub k3s: Option<K3sInput>,
}

/// One file of the extension in its manifest.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct FileEntry {
    pub path: String,
    pub size: u64,
    pub sha256: String,
}

/// `/usr/lib/cairn/extension.json`.
#[derive(Debug, Clone, Serialize)]
pub struct ExtensionManifest {
    pub format: u32,
    pub arch: Arch,
    pub packages: Vec<PackageEntry>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub k3s: Option<K3sEntry>,
    pub files: Vec<FileEntry>,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct PackageEntry {
    pub package: String,
    pub version: String,
    pub sha256: String,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct K3sEntry {
    pub path: String,
    pub size: u64,
    pub sha256: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub images: Option<FileEntry>,
}

/// A built extension: its image file (squashfs then dm-verity tree) and how to verify it.
#[derive(Debug, Clone)]
pub struct BuiltExtension {
    /// The cached image; copy it, never write to it.
    pub image: PathBuf,
    pub squashfs_size: u64,
    pub tree: verity::VerityTree,
    pub manifest: ExtensionManifest,
    pub packages: Vec<FetchedPackage>,
    /// Whether the image came out of the cache.
    pub cached: bool,
}

impl BuiltExtension {
    /// Bytes of squashfs and hash tree: what the extension adds to a slot.
    pub fn size(&self) -> u64 {
        self.tree.hash_offset + self.tree.hash_size
    }
}

/// Checks an operator's k3s before anything is fetched or written: the file is there, its
/// sha256 is the pinned one, and it is an ELF for the board's CPU.
pub fn check_k3s(k3s: &K3sInput, arch: Arch) -> Result<String> {
    let bad = |reason: String| Error::BadK3s {
        path: k3s.binary.clone(),
        reason,
    };
    if !k3s.binary.is_file() {
        return Err(bad("no such file".into()));
    }
    let mut head = [0u8; 20];
    {
        use std::io::Read;
        let mut f = File::open(&k3s.binary).map_err(|e| Error::io("opening", &k3s.binary, e))?;
        let n = f
            .read(&mut head)
            .map_err(|e| Error::io("reading", &k3s.binary, e))?;
        if n < head.len() || &head[..4] != b"\x7fELF" {
            return Err(bad("not an ELF executable".into()));
        }
    }
    let machine = u16::from_le_bytes([head[18], head[19]]);
    if machine != elf_machine(arch) {
        return Err(bad(format!(
            "it is built for {}, this board is {}",
            machine_name(machine),
            machine_name(elf_machine(arch))
        )));
    }
    let actual = sha256_file(&k3s.binary)?;
    if let Some(expected) = &k3s.sha256 {
        if !expected.eq_ignore_ascii_case(&actual) {
            return Err(bad(format!(
                "its sha256 is {actual}, --k3s-sha256 says {expected}"
            )));
        }
    }
    if let Some(images) = &k3s.images {
        if !images.is_file() {
            return Err(Error::BadK3s {
                path: images.clone(),
                reason: "no such file (the airgap images tarball)".into(),
            });
        }
    }
    Ok(actual)
}

fn elf_machine(arch: Arch) -> u16 {
    match arch {
        Arch::Aarch64 => 0xB7,
        Arch::X86_64 => 0x3E,
    }
}

fn machine_name(machine: u16) -> String {
    match machine {
        0xB7 => "aarch64".into(),
        0x3E => "x86_64".into(),
        0x28 => "arm (32-bit)".into(),
        0x03 => "i386".into(),
        m => format!("ELF machine {m:#x}"),
    }
}

/// The Debian multiarch triplet: where the loader looks for libraries.
fn triplet(arch: Arch) -> &'static str {
    match arch {
        Arch::Aarch64 => "aarch64-linux-gnu",
        Arch::X86_64 => "x86_64-linux-gnu",
    }
}

/// The package names of a `Depends` field, first alternative of each, without versions or
/// architecture qualifiers.
pub fn depends_names(depends: &str) -> Vec<String> {
    depends
        .split(',')
        .filter_map(|d| {
            let first = d.split('|').next()?.trim();
            let name = first.split([' ', '(', ':']).next()?.trim();
            (!name.is_empty()).then(|| name.to_string())
        })
        .collect()
}

/// Fetches [`PACKAGES`] and everything they depend on, in a stable order.
fn fetch_closure(cache: &Cache, arch: Arch) -> Result<Vec<FetchedPackage>> {
    // Breadth first, one apt-cache run per level of the dependency graph.
    let mut level: Vec<String> = PACKAGES.iter().map(|p| p.to_string()).collect();
    let mut seen: BTreeSet<String> = level.iter().cloned().collect();
    let mut out = Vec::new();
    while !level.is_empty() {
        let mut next = Vec::new();
        for pkg in cache.fetch_all(&level, arch.deb_arch())? {
            for dep in depends_names(&pkg.record.depends) {
                if seen.insert(dep.clone()) {
                    next.push(dep);
                }
            }
            out.push(pkg);
        }
        level = next;
    }
    out.sort_by(|a, b| a.record.package.cmp(&b.record.package));
    Ok(out)
}

/// What an ELF file asks of the loader.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ElfNeeds {
    /// `PT_INTERP`: the dynamic loader, an absolute path.
    pub interp: Option<String>,
    /// `DT_NEEDED`: library file names.
    pub needed: Vec<String>,
}

/// What an ELF file asks of the loader: its interpreter and its `DT_NEEDED` libraries. `None`
/// for a file that is not an ELF file at all (scripts, data).
pub fn elf_needs(bytes: &[u8]) -> std::result::Result<Option<ElfNeeds>, String> {
    if bytes.get(..4) != Some(b"\x7fELF") {
        return Ok(None);
    }
    if bytes.get(4) != Some(&2) || bytes.get(5) != Some(&1) {
        return Err("not a little-endian ELF64 file".into());
    }
    let u16_at = |o: usize| {
        bytes
            .get(o..o + 2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]))
            .ok_or_else(|| format!("truncated at byte {o}"))
    };
    let u32_at = |o: usize| {
        bytes
            .get(o..o + 4)
            .map(|b| u32::from_le_bytes(b.try_into().unwrap_or([0; 4])))
            .ok_or_else(|| format!("truncated at byte {o}"))
    };
    let u64_at = |o: usize| {
        bytes
            .get(o..o + 8)
            .map(|b| u64::from_le_bytes(b.try_into().unwrap_or([0; 8])))
            .ok_or_else(|| format!("truncated at byte {o}"))
    };
    let phoff = u64_at(0x20)? as usize;
    let phentsize = u16_at(0x36)? as usize;
    let phnum = u16_at(0x38)? as usize;
    const PT_LOAD: u32 = 1;
    const PT_DYNAMIC: u32 = 2;
    const PT_INTERP: u32 = 3;
    let mut loads = Vec::new();
    let mut dynamic = None;
    let mut interp = None;
    for i in 0..phnum {
        let h = phoff + i * phentsize;
        let (kind, offset, vaddr, filesz) =
            (u32_at(h)?, u64_at(h + 8)?, u64_at(h + 16)?, u64_at(h + 32)?);
        match kind {
            PT_LOAD => loads.push((offset, vaddr, filesz)),
            PT_DYNAMIC => dynamic = Some((offset as usize, filesz as usize)),
            PT_INTERP => {
                let raw = bytes
                    .get(offset as usize..(offset + filesz) as usize)
                    .ok_or("PT_INTERP lies outside the file")?;
                let text = raw.split(|&b| b == 0).next().unwrap_or_default();
                interp = Some(String::from_utf8_lossy(text).into_owned());
            }
            _ => {}
        }
    }
    let Some((dyn_off, dyn_size)) = dynamic else {
        return Ok(Some(ElfNeeds {
            interp,
            needed: Vec::new(),
        }));
    };
    let (mut needed, mut strtab, mut strsz) = (Vec::new(), None, None);
    for e in (dyn_off..dyn_off + dyn_size).step_by(16) {
        let (tag, val) = (u64_at(e)?, u64_at(e + 8)?);
        match tag {
            0 => break,
            1 => needed.push(val),
            5 => strtab = Some(val),
            10 => strsz = Some(val),
            _ => {}
        }
    }
    if needed.is_empty() {
        return Ok(Some(ElfNeeds {
            interp,
            needed: Vec::new(),
        }));
    }
    let (Some(strtab), Some(strsz)) = (strtab, strsz) else {
        return Err("DT_NEEDED without a string table".into());
    };
    let str_off = loads
        .iter()
        .find(|(_, vaddr, filesz)| strtab >= *vaddr && strtab < vaddr + filesz)
        .map(|(offset, vaddr, _)| (strtab - vaddr + offset) as usize)
        .ok_or("the dynamic string table is not in a loaded segment")?;
    let table = bytes
        .get(str_off..str_off + strsz as usize)
        .ok_or("the dynamic string table lies outside the file")?;
    let names = needed
        .into_iter()
        .map(|at| {
            let s = table
                .get(at as usize..)
                .and_then(|s| s.split(|&b| b == 0).next())
                .ok_or("a DT_NEEDED name lies outside the string table")?;
            Ok(String::from_utf8_lossy(s).into_owned())
        })
        .collect::<std::result::Result<_, String>>()?;
    Ok(Some(ElfNeeds {
        interp,
        needed: names,
    }))
}

/// Gathers the extension's files from the unpacked packages (their union, as dpkg would install
/// them).
struct Collector<'a> {
    roots: Vec<(&'a FetchedPackage, &'a Path)>,
    lib_dirs: Vec<String>,
    /// Extension path → (host path, mode) or symlink target.
    files: BTreeMap<String, Entry>,
}

#[derive(Debug, Clone)]
enum Entry {
    File(PathBuf, u32),
    Symlink(String),
}

impl<'a> Collector<'a> {
    fn new(packages: &'a [FetchedPackage], arch: Arch) -> Self {
        let t = triplet(arch);
        Collector {
            roots: packages.iter().map(|p| (p, p.root.as_path())).collect(),
            lib_dirs: vec![
                format!("lib/{t}"),
                format!("usr/lib/{t}"),
                "lib".into(),
                "usr/lib".into(),
            ],
            files: BTreeMap::new(),
        }
    }

    /// The package root that has `rel` (without following a final symlink).
    fn find(&self, rel: &str) -> Option<(PathBuf, fs::Metadata)> {
        self.roots.iter().find_map(|(_, root)| {
            let p = root.join(rel);
            fs::symlink_metadata(&p).ok().map(|m| (p, m))
        })
    }

    /// Adds `rel` (following symlinks, adding link and target) and, for an ELF file, its loader
    /// and libraries.
    fn add(&mut self, rel: &str, why: &str) -> Result<()> {
        let rel = normalize(rel);
        if self.files.contains_key(&rel) {
            return Ok(());
        }
        let (host, meta) = self.find(&rel).ok_or_else(|| Error::ExtensionContent {
            path: rel.clone(),
            reason: format!("no package in the closure provides it ({why})"),
        })?;
        if meta.file_type().is_symlink() {
            let target = fs::read_link(&host).map_err(|e| Error::io("reading", &host, e))?;
            let target = target.to_string_lossy().into_owned();
            self.files
                .insert(rel.clone(), Entry::Symlink(target.clone()));
            let resolved = match target.strip_prefix('/') {
                Some(abs) => abs.to_string(),
                None => match rel.rsplit_once('/') {
                    Some((dir, _)) => format!("{dir}/{target}"),
                    None => target,
                },
            };
            return self.add(&resolved, &format!("target of {rel}"));
        }
        if !meta.is_file() {
            return Err(Error::ExtensionContent {
                path: rel,
                reason: "not a regular file".into(),
            });
        }
        use std::os::unix::fs::PermissionsExt;
        self.files.insert(
            rel.clone(),
            Entry::File(host.clone(), meta.permissions().mode()),
        );
        let bytes = fs::read(&host).map_err(|e| Error::io("reading", &host, e))?;
        let needs = elf_needs(&bytes).map_err(|reason| Error::ExtensionContent {
            path: rel.clone(),
            reason,
        })?;
        let Some(ElfNeeds {
            interp,
            needed: libs,
        }) = needs
        else {
            return Ok(());
        };
        if let Some(interp) = interp {
            self.add(&interp, &format!("the loader of {rel}"))?;
        }
        for lib in libs {
            let found = self
                .lib_dirs
                .iter()
                .map(|d| format!("{d}/{lib}"))
                .find(|p| self.find(p).is_some())
                .ok_or_else(|| Error::ExtensionContent {
                    path: rel.clone(),
                    reason: format!("it needs {lib}, which no package in the closure provides"),
                })?;
            self.add(&found, &format!("needed by {rel}"))?;
        }
        Ok(())
    }

    /// Every regular file in folder `rel` of any package (the xtables extensions).
    fn add_dir_files(&mut self, rel: &str) -> Result<()> {
        let mut names = BTreeSet::new();
        for (_, root) in &self.roots {
            if let Ok(rd) = fs::read_dir(root.join(rel)) {
                for e in rd.flatten() {
                    names.insert(e.file_name().to_string_lossy().into_owned());
                }
            }
        }
        if names.is_empty() {
            return Err(Error::ExtensionContent {
                path: rel.into(),
                reason: "no package in the closure has this folder".into(),
            });
        }
        for n in names {
            self.add(&format!("{rel}/{n}"), "an xtables extension")?;
        }
        Ok(())
    }
}

fn normalize(path: &str) -> String {
    let mut out: Vec<&str> = Vec::new();
    for c in path.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                out.pop();
            }
            c => out.push(c),
        }
    }
    out.join("/")
}

/// The extension's file tree and manifest, without writing anything.
pub fn extension_tree(
    packages: &[FetchedPackage],
    arch: Arch,
    k3s: Option<(&K3sInput, &str)>,
) -> Result<(Tree, ExtensionManifest)> {
    let mut c = Collector::new(packages, arch);
    for p in PROGRAMS {
        c.add(p, "a program the extension carries")?;
    }
    c.add_dir_files(&format!("usr/lib/{}/xtables", triplet(arch)))?;
    let mut tree = Tree::new();
    let mut files = Vec::new();
    for (path, entry) in &c.files {
        match entry {
            Entry::File(host, mode) => {
                files.push(FileEntry {
                    path: format!("/{path}"),
                    size: fs::metadata(host)
                        .map_err(|e| Error::io("reading", host, e))?
                        .len(),
                    sha256: sha256_file(host)?,
                });
                tree.add_file(path, *mode & 0o7777, host.clone())?;
            }
            Entry::Symlink(target) => tree.add_symlink(path, target)?,
        }
    }
    for link in XTABLES_LINKS {
        if tree.get(&format!("usr/sbin/{link}")).is_none() {
            tree.add_symlink(&format!("usr/sbin/{link}"), "xtables-nft-multi")?;
        }
    }
    let k3s_entry = match k3s {
        Some((k3s, sha256)) => {
            let size = fs::metadata(&k3s.binary)
                .map_err(|e| Error::io("reading", &k3s.binary, e))?
                .len();
            tree.add_file(K3S_PATH, 0o755, k3s.binary.clone())?;
            let images = match &k3s.images {
                Some(images) => {
                    let name = images
                        .file_name()
                        .map(|n| n.to_string_lossy().into_owned())
                        .unwrap_or_else(|| "images.tar".into());
                    let path = format!("{K3S_IMAGES_DIR}/{name}");
                    tree.add_file(&path, 0o644, images.clone())?;
                    Some(FileEntry {
                        path: format!("/{path}"),
                        size: fs::metadata(images)
                            .map_err(|e| Error::io("reading", images, e))?
                            .len(),
                        sha256: sha256_file(images)?,
                    })
                }
                None => None,
            };
            Some(K3sEntry {
                path: format!("/{K3S_PATH}"),
                size,
                sha256: sha256.to_string(),
                images,
            })
        }
        None => None,
    };
    let used: BTreeSet<&Path> = c
        .files
        .values()
        .filter_map(|e| match e {
            Entry::File(host, _) => Some(host.as_path()),
            Entry::Symlink(_) => None,
        })
        .collect();
    let manifest = ExtensionManifest {
        format: 1,
        arch,
        // Only the packages a kept file comes from, plus the ones asked for by name.
        packages: packages
            .iter()
            .filter(|p| {
                PACKAGES.contains(&p.record.package.as_str())
                    || used.iter().any(|h| h.starts_with(&p.root))
            })
            .map(|p| package_entry(&p.record))
            .collect(),
        k3s: k3s_entry,
        files,
    };
    let mut json = serde_json::to_string_pretty(&manifest).map_err(|e| Error::ToolFailed {
        command: "serialising extension.json".into(),
        stderr: e.to_string(),
    })?;
    json.push('\n');
    tree.add_file(MANIFEST_PATH, 0o644, json.into_bytes())?;
    Ok((tree, manifest))
}

fn package_entry(r: &PackageRecord) -> PackageEntry {
    PackageEntry {
        package: r.package.clone(),
        version: r.version.clone(),
        sha256: r.sha256.clone(),
    }
}

/// The verity parameters of the extension: salt and UUID derived from its content key, so the
/// same content gets the same extension whatever the build's seed or board (and one cached copy
/// serves them all). Both slots carry the same extension with the same root hash, so that a
/// bundle made from slot A fits slot B.
pub fn verity_params(key: &[u8], data_blocks: u64) -> verity::VerityParams {
    verity::VerityParams {
        data_blocks,
        salt: Guid::derive(key, "dm-verity-salt/extension")
            .as_bytes()
            .repeat(2),
        uuid: verity::VerityParams::derive_uuid(key, "extension"),
    }
}

/// A hash of everything the image depends on: paths, modes, symlink targets, file contents,
/// the timestamp and the writer's format (the verity salt and UUID derive from it).
fn cache_key(tree: &Tree, mtime: u32) -> Result<String> {
    let mut h = Sha256::new();
    h.update(CACHE_FORMAT.as_bytes());
    h.update(mtime.to_le_bytes());
    for (path, node) in tree.iter() {
        h.update(path.as_bytes());
        h.update([0]);
        h.update(node.mode.to_le_bytes());
        match &node.kind {
            NodeKind::Dir => h.update(b"d"),
            NodeKind::Symlink(t) => {
                h.update(b"l");
                h.update(t.as_bytes());
            }
            NodeKind::File(FileContent::Bytes(b)) => {
                h.update(b"f");
                h.update(Sha256::digest(b));
            }
            NodeKind::File(FileContent::Host(host)) => {
                h.update(b"f");
                h.update(sha256_file(host)?.as_bytes());
            }
        }
        h.update([0]);
    }
    Ok(hex::encode(h.finalize()))
}

/// Cached parameters of a built image (`<key>/params.json`).
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
struct CachedParams {
    squashfs_size: u64,
    root_hash: String,
    hash_offset: u64,
    hash_size: u64,
    data_blocks: u64,
}

/// Fetches, selects and builds the extension for `arch` (or takes it from the cache).
pub fn build(
    cache: &Cache,
    arch: Arch,
    mtime: u32,
    opts: &ExtensionOptions,
) -> Result<BuiltExtension> {
    let k3s_sha = match &opts.k3s {
        Some(k) => Some(check_k3s(k, arch)?),
        None => None,
    };
    let packages = fetch_closure(cache, arch)?;
    let (tree, manifest) =
        extension_tree(&packages, arch, opts.k3s.as_ref().zip(k3s_sha.as_deref()))?;
    let key = cache_key(&tree, mtime)?;
    let dir = cache.dir().join("extensions").join(&key);
    let image = dir.join("extension.img");
    let params_path = dir.join("params.json");
    let params = verity_params(key.as_bytes(), 0);
    if let Some(cached) = fs::read_to_string(&params_path)
        .ok()
        .and_then(|t| serde_json::from_str::<CachedParams>(&t).ok())
        .filter(|c| fs::metadata(&image).is_ok_and(|m| m.len() == c.hash_offset + c.hash_size))
    {
        let mut root_hash = [0u8; 32];
        if hex::decode_to_slice(&cached.root_hash, &mut root_hash).is_ok() {
            return Ok(BuiltExtension {
                image,
                squashfs_size: cached.squashfs_size,
                tree: verity::VerityTree {
                    root_hash,
                    hash_offset: cached.hash_offset,
                    hash_size: cached.hash_size,
                    data_blocks: cached.data_blocks,
                    salt: params.salt,
                    uuid: params.uuid,
                },
                manifest,
                packages,
                cached: true,
            });
        }
    }

    // Build into a private folder and rename it into place: a cut build never looks cached.
    let parent = cache.dir().join("extensions");
    fs::create_dir_all(&parent).map_err(|e| Error::io("creating", &parent, e))?;
    let partial = parent.join(format!(".{key}-{}", std::process::id()));
    let _ = fs::remove_dir_all(&partial);
    fs::create_dir_all(&partial).map_err(|e| Error::io("creating", &partial, e))?;
    let built = (|| -> Result<(u64, verity::VerityTree)> {
        let path = partial.join("extension.img");
        let mut file = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(|e| Error::io("creating", &path, e))?;
        let squashfs_size = squashfs::write_squashfs(&mut file, &tree, mtime)?;
        let params = verity_params(key.as_bytes(), squashfs_size / verity::BLOCK_SIZE);
        let vt = verity::append_hash_tree(&mut file, squashfs_size, &params)?;
        file.seek(SeekFrom::Start(0))
            .and_then(|_| file.sync_all())
            .map_err(|e| Error::io("writing", &path, e))?;
        let cp = CachedParams {
            squashfs_size,
            root_hash: vt.root_hash_hex(),
            hash_offset: vt.hash_offset,
            hash_size: vt.hash_size,
            data_blocks: vt.data_blocks,
        };
        let text = serde_json::to_string(&cp).map_err(|e| Error::ToolFailed {
            command: "serialising the extension's parameters".into(),
            stderr: e.to_string(),
        })?;
        let pp = partial.join("params.json");
        fs::write(&pp, text).map_err(|e| Error::io("writing", &pp, e))?;
        Ok((squashfs_size, vt))
    })();
    let (squashfs_size, vt) = match built {
        Ok(b) => b,
        Err(e) => {
            let _ = fs::remove_dir_all(&partial);
            return Err(e);
        }
    };
    let _ = fs::remove_dir_all(&dir);
    if let Err(e) = fs::rename(&partial, &dir) {
        let _ = fs::remove_dir_all(&partial);
        return Err(Error::io("moving into place", &dir, e));
    }
    Ok(BuiltExtension {
        image,
        squashfs_size,
        tree: vt,
        manifest,
        packages,
        cached: false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn depends_take_first_alternatives_without_versions() {
        assert_eq!(
            depends_names(
                "libip4tc2 (= 1.8.9-2), netbase (>= 6.0), libc6:any (>= 2.34), \
                 debconf | debconf-2.0, ,"
            ),
            ["libip4tc2", "netbase", "libc6", "debconf"]
        );
        assert!(depends_names("").is_empty());
    }

    #[test]
    fn normalizes_symlink_targets() {
        assert_eq!(normalize("usr/sbin/../../lib/x/./ld.so"), "lib/x/ld.so");
        assert_eq!(normalize("/lib64/ld"), "lib64/ld");
    }

    /// The test binary is a dynamically linked ELF of the host: its loader and libc are found.
    #[test]
    fn reads_interpreter_and_needed_of_a_real_binary() {
        let me = fs::read(std::env::current_exe().unwrap()).unwrap();
        let ElfNeeds { interp, needed } = elf_needs(&me).unwrap().unwrap();
        let interp = interp.expect("a test binary has a loader");
        assert!(interp.starts_with("/lib"), "{interp}");
        assert!(
            needed.iter().any(|n| n.starts_with("libc.so")),
            "{needed:?}"
        );
        assert_eq!(elf_needs(b"#!/bin/sh\n").unwrap(), None);
        assert!(elf_needs(&me[..100]).is_err());
    }

    fn fake_package(
        dir: &Path,
        name: &str,
        files: &[(&str, &[u8])],
        links: &[(&str, &str)],
    ) -> FetchedPackage {
        let root = dir.join(name);
        for (p, bytes) in files {
            let p = root.join(p);
            fs::create_dir_all(p.parent().unwrap()).unwrap();
            fs::write(p, bytes).unwrap();
        }
        for (p, target) in links {
            let p = root.join(p);
            fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::os::unix::fs::symlink(target, p).unwrap();
        }
        FetchedPackage {
            record: PackageRecord {
                package: name.into(),
                version: "1".into(),
                arch: "amd64".into(),
                sha256: "00".repeat(32),
                depends: String::new(),
            },
            requested: None,
            deb: PathBuf::new(),
            root,
        }
    }

    /// The host's own binaries stand in for the packages: the collector must find each one's
    /// loader and libraries (through symlinks) in the fake packages, and refuse when one is
    /// missing.
    #[test]
    fn collects_programs_with_exactly_their_libraries() {
        let dir = tempfile::tempdir().unwrap();
        let host_elf = fs::read(std::env::current_exe().unwrap()).unwrap();
        let ElfNeeds { interp, needed } = elf_needs(&host_elf).unwrap().unwrap();
        let interp = interp.unwrap();
        let t = triplet(Arch::X86_64);
        let mut libs: Vec<(String, Vec<u8>)> = needed
            .iter()
            .map(|n| (format!("usr/lib/{t}/{n}.real"), b"not elf".to_vec()))
            .collect();
        libs.push((format!("lib/{t}/loader"), b"loader".to_vec()));
        let lib_refs: Vec<(&str, &[u8])> = libs
            .iter()
            .map(|(p, b)| (p.as_str(), b.as_slice()))
            .collect();
        let link_names: Vec<(String, String)> = needed
            .iter()
            .map(|n| (format!("usr/lib/{t}/{n}"), format!("{n}.real")))
            .chain([(
                interp.trim_start_matches('/').to_string(),
                format!("/lib/{t}/loader"),
            )])
            .collect();
        let link_refs: Vec<(&str, &str)> = link_names
            .iter()
            .map(|(a, b)| (a.as_str(), b.as_str()))
            .collect();
        let libc = fake_package(dir.path(), "libc6", &lib_refs, &link_refs);
        let mut prog_files: Vec<(&str, &[u8])> =
            PROGRAMS.iter().map(|p| (*p, host_elf.as_slice())).collect();
        let xt = format!("usr/lib/{t}/xtables/libxt_comment.so");
        prog_files.push((xt.as_str(), b"plugin"));
        prog_files.push(("usr/share/doc/containerd/README", b"docs"));
        let progs = fake_package(dir.path(), "containerd", &prog_files, &[]);
        let packages = vec![progs, libc];
        let (tree, manifest) = extension_tree(&packages, Arch::X86_64, None).unwrap();
        for p in PROGRAMS {
            assert!(tree.get(p).is_some(), "{p}");
        }
        assert!(
            tree.get(interp.trim_start_matches('/')).is_some(),
            "{interp}"
        );
        assert!(tree.get(&format!("lib/{t}/loader")).is_some());
        for n in &needed {
            assert!(tree.get(&format!("usr/lib/{t}/{n}.real")).is_some(), "{n}");
        }
        assert!(tree.get("usr/share/doc/containerd/README").is_none());
        assert!(tree.get(&xt).is_some());
        assert_eq!(
            tree.get("usr/sbin/iptables").unwrap().kind,
            NodeKind::Symlink("xtables-nft-multi".into())
        );
        assert!(tree.get(MANIFEST_PATH).is_some());
        assert_eq!(manifest.packages.len(), 2);
        let runc = manifest
            .files
            .iter()
            .find(|f| f.path == "/usr/sbin/runc")
            .unwrap();
        assert_eq!(runc.sha256, hex::encode(Sha256::digest(&host_elf)));

        // Without the libc package, the programs' libraries are missing: one line says which.
        let err = extension_tree(&packages[..1], Arch::X86_64, None)
            .unwrap_err()
            .to_string();
        assert!(err.contains("no package in the closure provides"), "{err}");

        // A CNI plugin the packages do not carry (a Debian release that dropped or renamed
        // it): refused in one line naming it, before anything is written.
        let without_portmap: Vec<(&str, &[u8])> = prog_files
            .iter()
            .copied()
            .filter(|(p, _)| *p != "usr/lib/cni/portmap")
            .collect();
        let progs = fake_package(
            &dir.path().join("no-portmap"),
            "containernetworking-plugins",
            &without_portmap,
            &[],
        );
        let err = extension_tree(&[progs, packages[1].clone()], Arch::X86_64, None)
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "containers extension: /usr/lib/cni/portmap: no package in the closure provides it (a program the extension carries)"
        );

        // An operator's k3s and airgap tarball go in at their places, pinned in the manifest.
        let k3s = dir.path().join("k3s-bin");
        fs::write(&k3s, b"k3s stand-in").unwrap();
        let images = dir.path().join("k3s-airgap-images-amd64.tar");
        fs::write(&images, b"images").unwrap();
        let input = K3sInput {
            binary: k3s.clone(),
            sha256: None,
            images: Some(images.clone()),
        };
        let sha = sha256_file(&k3s).unwrap();
        let (tree, manifest) =
            extension_tree(&packages, Arch::X86_64, Some((&input, sha.as_str()))).unwrap();
        assert!(tree.get(K3S_PATH).is_some());
        assert!(tree
            .get(&format!("{K3S_IMAGES_DIR}/k3s-airgap-images-amd64.tar"))
            .is_some());
        let entry = manifest.k3s.unwrap();
        assert_eq!(
            (entry.path.as_str(), entry.sha256.as_str()),
            ("/usr/bin/k3s", sha.as_str())
        );
        assert_eq!(entry.images.unwrap().sha256, sha256_file(&images).unwrap());
    }

    #[test]
    fn k3s_is_checked_before_anything_is_built() {
        let dir = tempfile::tempdir().unwrap();
        let me = std::env::current_exe().unwrap();
        let host = if cfg!(target_arch = "x86_64") {
            Arch::X86_64
        } else {
            Arch::Aarch64
        };
        let other = match host {
            Arch::X86_64 => Arch::Aarch64,
            Arch::Aarch64 => Arch::X86_64,
        };
        let input = |binary: PathBuf, sha256: Option<String>| K3sInput {
            binary,
            sha256,
            images: None,
        };
        let sha = sha256_file(&me).unwrap();
        assert_eq!(
            check_k3s(&input(me.clone(), Some(sha.clone())), host).unwrap(),
            sha
        );
        let err = check_k3s(&input(me.clone(), Some("ab".repeat(32))), host)
            .unwrap_err()
            .to_string();
        assert!(err.contains("--k3s-sha256 says"), "{err}");
        let err = check_k3s(&input(me.clone(), None), other)
            .unwrap_err()
            .to_string();
        assert!(err.contains("it is built for"), "{err}");
        let err = check_k3s(&input(dir.path().join("nope"), None), host)
            .unwrap_err()
            .to_string();
        assert!(err.contains("no such file"), "{err}");
        let script = dir.path().join("k3s");
        fs::write(&script, "#!/bin/sh\necho k3s\n").unwrap();
        let err = check_k3s(&input(script, None), host)
            .unwrap_err()
            .to_string();
        assert!(err.contains("not an ELF"), "{err}");
        let err = check_k3s(
            &K3sInput {
                binary: me,
                sha256: None,
                images: Some(dir.path().join("images.tar")),
            },
            host,
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("airgap images"), "{err}");
        assert!(!err.contains('\n'), "{err}");
    }
}
