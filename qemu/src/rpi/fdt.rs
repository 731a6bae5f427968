//! A flattened device tree (the `.dtb` format, version 17) read into a tree of nodes and
//! properties, edited, and written back.
//!
//! The harness changes a copy of the board's device tree the way the Raspberry Pi firmware does
//! before it starts the kernel (`/chosen/bootloader`), and switches off what the emulator lacks.
//! Reading into a tree and writing a fresh blob keeps the editing simple: no offsets to patch,
//! a strings block rebuilt without unused names. The memory reservation block is carried over
//! unchanged.
//!
//! Layout (Devicetree Specification, chapter 5): a 40-byte big-endian header, the memory
//! reservation block (16-byte entries ending with a zero one), the structure block
//! (`FDT_BEGIN_NODE` name, `FDT_PROP` len nameoff value, `FDT_END_NODE`, `FDT_NOP`, `FDT_END`,
//! each token and value padded to 4 bytes) and the strings block of property names.

const MAGIC: u32 = 0xd00d_feed;
const HEADER_BYTES: usize = 40;
const VERSION: u32 = 17;
const LAST_COMPATIBLE: u32 = 16;
const BEGIN_NODE: u32 = 1;
const END_NODE: u32 = 2;
const PROP: u32 = 3;
const NOP: u32 = 4;
const END: u32 = 9;

/// Limits on what [`Fdt::parse`] accepts: a board's tree is tens of KiB.
const MAX_BLOB_BYTES: usize = 4 << 20;
const MAX_DEPTH: usize = 64;

/// Why a blob was refused or an edit could not be made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("device tree: {0}")]
pub struct FdtError(pub String);

fn err<T>(reason: impl Into<String>) -> Result<T, FdtError> {
    Err(FdtError(reason.into()))
}

/// One node: its name with the unit address (`mmc@7e300000`), properties in order, children.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Node {
    pub name: String,
    pub props: Vec<(String, Vec<u8>)>,
    pub children: Vec<Node>,
}

impl Node {
    pub fn prop(&self, name: &str) -> Option<&[u8]> {
        self.props
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_slice())
    }

    /// Sets a property, replacing its value in place or appending it.
    pub fn set_prop(&mut self, name: &str, value: Vec<u8>) {
        match self.props.iter_mut().find(|(n, _)| n == name) {
            Some((_, v)) => *v = value,
            None => self.props.push((name.to_string(), value)),
        }
    }

    /// Removes a property; returns whether it was there.
    pub fn remove_prop(&mut self, name: &str) -> bool {
        let before = self.props.len();
        self.props.retain(|(n, _)| n != name);
        self.props.len() != before
    }

    pub fn child(&self, name: &str) -> Option<&Node> {
        self.children.iter().find(|c| c.name == name)
    }

    fn child_mut(&mut self, name: &str) -> Option<&mut Node> {
        self.children.iter_mut().find(|c| c.name == name)
    }
}

/// A whole device tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fdt {
    pub boot_cpuid_phys: u32,
    /// The memory reservation entries, (address, size), without the terminating zero entry.
    pub reservations: Vec<(u64, u64)>,
    pub root: Node,
}

fn be32(b: &[u8], at: usize) -> Result<u32, FdtError> {
    match b.get(at..at + 4) {
        Some(s) => Ok(u32::from_be_bytes([s[0], s[1], s[2], s[3]])),
        None => err(format!("truncated at byte {at}")),
    }
}

fn be64(b: &[u8], at: usize) -> Result<u64, FdtError> {
    Ok(((be32(b, at)? as u64) << 32) | be32(b, at + 4)? as u64)
}

fn align4(n: usize) -> usize {
    (n + 3) & !3
}

/// The NUL-terminated string at `at` in `b`.
fn c_str(b: &[u8], at: usize, what: &str) -> Result<String, FdtError> {
    let rest = b
        .get(at..)
        .ok_or_else(|| FdtError(format!("{what} at byte {at} is outside its block")))?;
    let end = rest
        .iter()
        .position(|&c| c == 0)
        .ok_or_else(|| FdtError(format!("{what} at byte {at} has no terminating NUL")))?;
    String::from_utf8(rest[..end].to_vec())
        .map_err(|_| FdtError(format!("{what} at byte {at} is not UTF-8")))
}

impl Fdt {
    /// Reads a blob (version 16 or later), checking every offset against its block.
    pub fn parse(blob: &[u8]) -> Result<Fdt, FdtError> {
        if blob.len() < HEADER_BYTES {
            return err(format!("{} bytes is shorter than the header", blob.len()));
        }
        if blob.len() > MAX_BLOB_BYTES {
            return err(format!(
                "{} bytes is more than the {MAX_BLOB_BYTES} a device tree may have here",
                blob.len()
            ));
        }
        if be32(blob, 0)? != MAGIC {
            return err("no device tree magic (0xd00dfeed)");
        }
        let total = be32(blob, 4)? as usize;
        let off_struct = be32(blob, 8)? as usize;
        let off_strings = be32(blob, 12)? as usize;
        let off_rsv = be32(blob, 16)? as usize;
        let version = be32(blob, 20)?;
        let last_comp = be32(blob, 24)?;
        let boot_cpuid_phys = be32(blob, 28)?;
        let size_strings = be32(blob, 32)? as usize;
        let size_struct = be32(blob, 36)? as usize;
        if total > blob.len() {
            return err(format!(
                "header says {total} bytes, the blob has {}",
                blob.len()
            ));
        }
        if version < 16 || last_comp > VERSION {
            return err(format!(
                "version {version} (compatible with {last_comp}) is not one this reader knows (16, 17)"
            ));
        }
        let block = |off: usize, size: usize, what: &str| {
            off.checked_add(size)
                .filter(|&end| end <= total)
                .map(|end| &blob[off..end])
                .ok_or_else(|| FdtError(format!("the {what} block runs past the blob")))
        };
        let structure = block(off_struct, size_struct, "structure")?;
        let strings = block(off_strings, size_strings, "strings")?;

        let mut reservations = Vec::new();
        let mut at = off_rsv;
        loop {
            if at + 16 > total {
                return err("the memory reservation block has no terminating entry");
            }
            let (addr, size) = (be64(blob, at)?, be64(blob, at + 8)?);
            if addr == 0 && size == 0 {
                break;
            }
            reservations.push((addr, size));
            at += 16;
        }

        let mut stack: Vec<Node> = Vec::new();
        let mut root = None;
        let mut pos = 0;
        loop {
            let token = be32(structure, pos)?;
            pos += 4;
            match token {
                BEGIN_NODE => {
                    if root.is_some() {
                        return err("a second root node");
                    }
                    if stack.len() >= MAX_DEPTH {
                        return err(format!("nodes nested deeper than {MAX_DEPTH}"));
                    }
                    let name = c_str(structure, pos, "a node name")?;
                    pos = align4(pos + name.len() + 1);
                    stack.push(Node {
                        name,
                        ..Node::default()
                    });
                }
                END_NODE => {
                    let node = stack
                        .pop()
                        .ok_or_else(|| FdtError("FDT_END_NODE without a node".into()))?;
                    match stack.last_mut() {
                        Some(parent) => parent.children.push(node),
                        None => root = Some(node),
                    }
                }
                PROP => {
                    let len = be32(structure, pos)? as usize;
                    let name_off = be32(structure, pos + 4)? as usize;
                    pos += 8;
                    let value = structure
                        .get(pos..pos.saturating_add(len))
                        .ok_or_else(|| {
                            FdtError(format!(
                                "a property of {len} bytes runs past the structure block"
                            ))
                        })?
                        .to_vec();
                    pos = align4(pos + len);
                    let name = c_str(strings, name_off, "a property name")?;
                    let node = stack
                        .last_mut()
                        .ok_or_else(|| FdtError(format!("property {name} outside any node")))?;
                    node.props.push((name, value));
                }
                NOP => {}
                END => break,
                other => return err(format!("unknown token {other:#x} at byte {}", pos - 4)),
            }
        }
        if !stack.is_empty() {
            return err("FDT_END inside an open node");
        }
        let root = root.ok_or_else(|| FdtError("no root node".into()))?;
        Ok(Fdt {
            boot_cpuid_phys,
            reservations,
            root,
        })
    }

    /// Writes a version 17 blob.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut structure = Vec::new();
        let mut strings: Vec<u8> = Vec::new();
        let mut names: Vec<(String, u32)> = Vec::new();
        write_node(&self.root, &mut structure, &mut strings, &mut names);
        structure.extend_from_slice(&END.to_be_bytes());

        let mut rsv = Vec::new();
        for &(addr, size) in self.reservations.iter().chain([(0, 0)].iter()) {
            rsv.extend_from_slice(&addr.to_be_bytes());
            rsv.extend_from_slice(&size.to_be_bytes());
        }
        let off_rsv = HEADER_BYTES; // 40: already 8-byte aligned.
        let off_struct = off_rsv + rsv.len();
        let off_strings = off_struct + structure.len();
        let total = off_strings + strings.len();

        let mut out = Vec::with_capacity(total);
        for v in [
            MAGIC,
            total as u32,
            off_struct as u32,
            off_strings as u32,
            off_rsv as u32,
            VERSION,
            LAST_COMPATIBLE,
            self.boot_cpuid_phys,
            strings.len() as u32,
            structure.len() as u32,
        ] {
            out.extend_from_slice(&v.to_be_bytes());
        }
        out.extend_from_slice(&rsv);
        out.extend_from_slice(&structure);
        out.extend_from_slice(&strings);
        out
    }

    /// The node at an absolute path such as `/soc/mmc@7e300000/wifi@1`.
    pub fn node(&self, path: &str) -> Option<&Node> {
        let mut node = &self.root;
        for part in components(path) {
            node = node.child(part)?;
        }
        Some(node)
    }

    pub fn node_mut(&mut self, path: &str) -> Result<&mut Node, FdtError> {
        let mut node = &mut self.root;
        for part in components(path) {
            node = node
                .child_mut(part)
                .ok_or_else(|| FdtError(format!("no node {path} (missing {part})")))?;
        }
        Ok(node)
    }

    /// The node at `path`, created (with any missing parents) when absent.
    pub fn node_or_create(&mut self, path: &str) -> &mut Node {
        let mut node = &mut self.root;
        for part in components(path) {
            let i = match node.children.iter().position(|c| c.name == part) {
                Some(i) => i,
                None => {
                    node.children.push(Node {
                        name: part.to_string(),
                        ..Node::default()
                    });
                    node.children.len() - 1
                }
            };
            node = &mut node.children[i];
        }
        node
    }

    /// `status = "disabled"`: the kernel then probes no driver for the node (nor its children).
    pub fn disable(&mut self, path: &str) -> Result<(), FdtError> {
        self.node_mut(path)?
            .set_prop("status", b"disabled\0".to_vec());
        Ok(())
    }
}

fn components(path: &str) -> impl Iterator<Item = &str> {
    path.split('/').filter(|p| !p.is_empty())
}

fn write_node(
    node: &Node,
    out: &mut Vec<u8>,
    strings: &mut Vec<u8>,
    names: &mut Vec<(String, u32)>,
) {
    out.extend_from_slice(&BEGIN_NODE.to_be_bytes());
    out.extend_from_slice(node.name.as_bytes());
    out.push(0);
    out.resize(align4(out.len()), 0);
    for (name, value) in &node.props {
        let off = match names.iter().find(|(n, _)| n == name) {
            Some(&(_, off)) => off,
            None => {
                let off = strings.len() as u32;
                strings.extend_from_slice(name.as_bytes());
                strings.push(0);
                names.push((name.clone(), off));
                off
            }
        };
        out.extend_from_slice(&PROP.to_be_bytes());
        out.extend_from_slice(&(value.len() as u32).to_be_bytes());
        out.extend_from_slice(&off.to_be_bytes());
        out.extend_from_slice(value);
        out.resize(align4(out.len()), 0);
    }
    for child in &node.children {
        write_node(child, out, strings, names);
    }
    out.extend_from_slice(&END_NODE.to_be_bytes());
}

/// A property value of one 32-bit cell.
pub fn cell(v: u32) -> Vec<u8> {
    v.to_be_bytes().to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Fdt {
        Fdt {
            boot_cpuid_phys: 0,
            reservations: vec![(0x1000, 0x2000)],
            root: Node {
                name: String::new(),
                props: vec![("#address-cells".into(), cell(1))],
                children: vec![
                    Node {
                        name: "chosen".into(),
                        props: vec![("stdout-path".into(), b"serial1:115200n8\0".to_vec())],
                        children: vec![],
                    },
                    Node {
                        name: "soc".into(),
                        props: vec![],
                        children: vec![Node {
                            name: "mmc@7e300000".into(),
                            props: vec![
                                ("status".into(), b"okay\0".to_vec()),
                                ("mmc-pwrseq".into(), cell(0x10)),
                            ],
                            children: vec![Node {
                                name: "wifi@1".into(),
                                props: vec![("reg".into(), cell(1))],
                                children: vec![],
                            }],
                        }],
                    },
                ],
            },
        }
    }

    #[test]
    fn round_trips() {
        let fdt = sample();
        let blob = fdt.to_bytes();
        assert_eq!(Fdt::parse(&blob).unwrap(), fdt);
        // Writing what was read gives the same bytes.
        assert_eq!(Fdt::parse(&blob).unwrap().to_bytes(), blob);
    }

    #[test]
    fn edits_land_where_asked() {
        let mut fdt = sample();
        fdt.disable("/soc/mmc@7e300000/wifi@1").unwrap();
        assert!(fdt
            .node_mut("/soc/mmc@7e300000")
            .unwrap()
            .remove_prop("mmc-pwrseq"));
        let bl = fdt.node_or_create("/chosen/bootloader");
        bl.set_prop("tryboot", cell(1));
        bl.set_prop("partition", cell(3));
        let back = Fdt::parse(&fdt.to_bytes()).unwrap();
        assert_eq!(
            back.node("/soc/mmc@7e300000/wifi@1")
                .unwrap()
                .prop("status"),
            Some(&b"disabled\0"[..])
        );
        assert_eq!(
            back.node("/soc/mmc@7e300000").unwrap().prop("mmc-pwrseq"),
            None
        );
        assert_eq!(
            back.node("/soc/mmc@7e300000").unwrap().prop("status"),
            Some(&b"okay\0"[..])
        );
        let bl = back.node("/chosen/bootloader").unwrap();
        assert_eq!(bl.prop("tryboot"), Some(&[0, 0, 0, 1][..]));
        assert_eq!(bl.prop("partition"), Some(&[0, 0, 0, 3][..]));
        assert!(fdt.disable("/soc/nothing@0").is_err());
    }

    #[test]
    fn nops_are_skipped() {
        let blob = sample().to_bytes();
        // Insert a NOP right after the root's BEGIN_NODE (4 bytes token + 4 bytes empty name).
        let off_struct = be32(&blob, 8).unwrap() as usize;
        let mut patched = blob[..off_struct + 8].to_vec();
        patched.extend_from_slice(&NOP.to_be_bytes());
        patched.extend_from_slice(&blob[off_struct + 8..]);
        let fix = |p: &mut Vec<u8>, at: usize, add: u32| {
            let v = be32(p, at).unwrap() + add;
            p[at..at + 4].copy_from_slice(&v.to_be_bytes());
        };
        fix(&mut patched, 4, 4); // totalsize
        fix(&mut patched, 12, 4); // off_dt_strings
        fix(&mut patched, 36, 4); // size_dt_struct
        assert_eq!(Fdt::parse(&patched).unwrap(), sample());
    }

    #[test]
    fn hostile_blobs_are_refused() {
        let blob = sample().to_bytes();
        assert!(Fdt::parse(&blob[..20]).is_err());
        let mut bad = blob.clone();
        bad[0] = 0;
        assert!(Fdt::parse(&bad).unwrap_err().0.contains("magic"));
        let mut long = blob.clone();
        long[36..40].copy_from_slice(&u32::MAX.to_be_bytes());
        assert!(Fdt::parse(&long).is_err());
        // Every truncation is an error, never a panic.
        for n in 0..blob.len() {
            let mut cut = blob[..n].to_vec();
            if cut.len() >= 8 {
                cut[4..8].copy_from_slice(&(n as u32).to_be_bytes());
            }
            assert!(Fdt::parse(&cut).is_err(), "{n}");
        }
    }
}
