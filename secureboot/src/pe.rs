//! PE/COFF images as UEFI loads them: the headers read, sections added, the Authenticode hash
//! taken and the certificate table set.
//!
//! Layout (Microsoft PE/COFF specification): the DOS header's `e_lfanew` (offset 0x3C) points at
//! `PE\0\0`, followed by the 20-byte COFF header (`NumberOfSections` at +2,
//! `SizeOfOptionalHeader` at +16), the optional header (PE32 `0x10b` or PE32+ `0x20b`:
//! `SectionAlignment` +32, `FileAlignment` +36, `SizeOfImage` +56, `SizeOfHeaders` +60,
//! `CheckSum` +64, data directories at +96 / +112, the fifth of which is the certificate table)
//! and the section table (40 bytes per section). Each section's raw data lies at
//! `PointerToRawData` for `SizeOfRawData` bytes (a multiple of `FileAlignment`) and is mapped at
//! `VirtualAddress` for `VirtualSize` bytes.
//!
//! The one idea: Cairn only handles images whose section data is packed, in file order, right
//! after the headers, with nothing after the last section but (once signed) the certificate
//! table. For such an image the Authenticode hash as the spec defines it (by file position)
//! and as EDK II's verifier computes it (headers, then sections, then `SizeOfHeaders` plus the
//! sum of raw sizes up to the certificate table) cover the same bytes, so a signature sbverify
//! accepts is one the firmware accepts. [`Pe::strip_tail`] drops unmapped bytes after the last
//! section (systemd's aarch64 binaries have some), which never reach memory.

use sha2::{Digest, Sha256};

use crate::error::{Error, Result};

/// Most sections read (systemd-boot itself refuses more than 96).
pub const MAX_SECTIONS: usize = 96;
/// Largest image handled: the certificate table's offset is a 32-bit field.
pub const MAX_IMAGE: usize = u32::MAX as usize;

const SECTION_HEADER_LEN: usize = 40;
const CERT_TABLE_DIR: usize = 4;
/// `IMAGE_SCN_CNT_INITIALIZED_DATA | IMAGE_SCN_MEM_READ`: what ukify gives the sections it adds.
const DATA_SECTION: u32 = 0x4000_0040;
/// `nop` (0xd503201f), little-endian.
const AARCH64_NOP: [u8; 4] = [0x1f, 0x20, 0x03, 0xd5];

/// One section header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Section {
    /// The name, NULs stripped (`.linux`).
    pub name: String,
    pub virtual_size: u32,
    pub virtual_address: u32,
    pub raw_size: u32,
    pub raw_offset: u32,
    pub characteristics: u32,
}

/// A parsed PE image (PE32 or PE32+).
#[derive(Debug, Clone)]
pub struct Pe {
    /// What the image is called in error messages (a path, or `UKI of slot b`).
    what: String,
    bytes: Vec<u8>,
    /// Offset of the COFF header (after `PE\0\0`).
    coff: usize,
    /// Offset of the optional header.
    opt: usize,
    /// Offset of the data directories.
    dirs: usize,
    section_table: usize,
    sections: Vec<Section>,
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

fn put_u32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

fn round_up(n: u64, align: u64) -> u64 {
    n.div_ceil(align) * align
}

impl Pe {
    /// Parses `bytes`; `what` names the image in errors.
    pub fn parse(what: impl Into<String>, bytes: Vec<u8>) -> Result<Pe> {
        let what = what.into();
        let bad = |reason: String| Error::BadPe {
            what: what.clone(),
            reason,
        };
        if bytes.len() > MAX_IMAGE {
            return Err(bad(format!(
                "is {} bytes, more than a PE image may be",
                bytes.len()
            )));
        }
        if bytes.len() < 0x40 || &bytes[..2] != b"MZ" {
            return Err(bad("has no DOS header (MZ): not a PE/COFF image".into()));
        }
        let pe = u32_at(&bytes, 0x3c) as usize;
        if pe.checked_add(24).is_none_or(|end| end > bytes.len()) || &bytes[pe..pe + 4] != b"PE\0\0"
        {
            return Err(bad(format!(
                "e_lfanew {pe:#x} does not point at a PE signature: not a PE/COFF image"
            )));
        }
        let coff = pe + 4;
        let nsec = u16_at(&bytes, coff + 2) as usize;
        let opt_size = u16_at(&bytes, coff + 16) as usize;
        let opt = coff + 20;
        if opt + opt_size > bytes.len() || opt_size < 2 {
            return Err(bad("ends inside its optional header".into()));
        }
        let (dirs, count_at) = match u16_at(&bytes, opt) {
            0x10b => (opt + 96, opt + 92),
            0x20b => (opt + 112, opt + 108),
            m => {
                return Err(bad(format!(
                    "optional header magic {m:#x} is neither PE32 nor PE32+"
                )))
            }
        };
        if dirs > opt + opt_size {
            return Err(bad("optional header is too short for its fields".into()));
        }
        let dir_count = u32_at(&bytes, count_at) as usize;
        if dir_count <= CERT_TABLE_DIR || dirs + 8 * dir_count > opt + opt_size {
            return Err(bad(format!(
                "has {dir_count} data directories in a {opt_size}-byte optional header \
                 (the certificate table is the fifth)"
            )));
        }
        if nsec == 0 || nsec > MAX_SECTIONS {
            return Err(bad(format!(
                "has {nsec} sections (1..={MAX_SECTIONS} handled)"
            )));
        }
        let section_table = opt + opt_size;
        let table_end = section_table + nsec * SECTION_HEADER_LEN;
        let size_of_headers = u32_at(&bytes, opt + 60) as usize;
        if table_end > size_of_headers || size_of_headers > bytes.len() {
            return Err(bad(format!(
                "SizeOfHeaders {size_of_headers:#x} does not hold the section table (ends at \
                 {table_end:#x}) inside the {}-byte file",
                bytes.len()
            )));
        }
        let sections = (0..nsec)
            .map(|i| {
                let s = section_table + i * SECTION_HEADER_LEN;
                let name = bytes[s..s + 8]
                    .iter()
                    .take_while(|&&c| c != 0)
                    .map(|&c| c as char)
                    .collect();
                Section {
                    name,
                    virtual_size: u32_at(&bytes, s + 8),
                    virtual_address: u32_at(&bytes, s + 12),
                    raw_size: u32_at(&bytes, s + 16),
                    raw_offset: u32_at(&bytes, s + 20),
                    characteristics: u32_at(&bytes, s + 36),
                }
            })
            .collect::<Vec<_>>();
        let pe = Pe {
            what,
            bytes,
            coff,
            opt,
            dirs,

            section_table,
            sections,
        };
        pe.check_packed()?;
        let (cert_at, cert_len) = pe.cert_table();
        if cert_len != 0
            && ((cert_at as usize) < pe.raw_end()
                || cert_at as u64 + cert_len as u64 > pe.bytes.len() as u64)
        {
            return Err(pe.bad(format!(
                "certificate table ({cert_len} bytes at {cert_at:#x}) is not after the sections \
                 and inside the file"
            )));
        }
        Ok(pe)
    }

    fn bad(&self, reason: String) -> Error {
        Error::BadPe {
            what: self.what.clone(),
            reason,
        }
    }

    /// Section data must follow the headers in file order without gaps (see the module docs).
    fn check_packed(&self) -> Result<()> {
        let mut at = self.size_of_headers() as u64;
        let mut with_data: Vec<&Section> =
            self.sections.iter().filter(|s| s.raw_size > 0).collect();
        with_data.sort_by_key(|s| s.raw_offset);
        for s in with_data {
            if s.raw_offset as u64 != at {
                return Err(self.bad(format!(
                    "section {} starts at {:#x}, not right after the previous data at {at:#x} \
                     (images with gaps between sections are not handled)",
                    s.name, s.raw_offset
                )));
            }
            at += s.raw_size as u64;
        }
        if at > self.bytes.len() as u64 {
            return Err(self.bad(format!(
                "its sections end at {at:#x}, after the end of the {}-byte file",
                self.bytes.len()
            )));
        }
        Ok(())
    }

    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    pub fn into_bytes(self) -> Vec<u8> {
        self.bytes
    }

    pub fn sections(&self) -> &[Section] {
        &self.sections
    }

    /// The data of the section named `name` (its virtual size, capped at its raw size).
    pub fn section_data(&self, name: &str) -> Option<&[u8]> {
        let s = self.sections.iter().find(|s| s.name == name)?;
        let len = s.virtual_size.min(s.raw_size) as usize;
        Some(&self.bytes[s.raw_offset as usize..s.raw_offset as usize + len])
    }

    /// `IMAGE_FILE_MACHINE_*` (0x8664 x86_64, 0xaa64 aarch64).
    pub fn machine(&self) -> u16 {
        u16_at(&self.bytes, self.coff)
    }

    fn size_of_headers(&self) -> u32 {
        u32_at(&self.bytes, self.opt + 60)
    }

    pub fn size_of_image(&self) -> u32 {
        u32_at(&self.bytes, self.opt + 56)
    }

    pub fn section_alignment(&self) -> u32 {
        u32_at(&self.bytes, self.opt + 32)
    }

    fn file_alignment(&self) -> u32 {
        u32_at(&self.bytes, self.opt + 36)
    }

    fn checksum_at(&self) -> usize {
        self.opt + 64
    }

    fn cert_dir_at(&self) -> usize {
        self.dirs + 8 * CERT_TABLE_DIR
    }

    /// The certificate table's file offset and size (0, 0 when unsigned).
    pub fn cert_table(&self) -> (u32, u32) {
        let at = self.cert_dir_at();
        (u32_at(&self.bytes, at), u32_at(&self.bytes, at + 4))
    }

    pub fn is_signed(&self) -> bool {
        self.cert_table().1 != 0
    }

    /// The end of the last section's raw data.
    fn raw_end(&self) -> usize {
        self.size_of_headers() as usize
            + self
                .sections
                .iter()
                .map(|s| s.raw_size as usize)
                .sum::<usize>()
    }

    /// Drops bytes after the last section that no section maps (refused for a signed image,
    /// whose certificate table lives there).
    pub fn strip_tail(mut self) -> Result<Pe> {
        if self.is_signed() {
            return Err(self.bad("is already signed".into()));
        }
        let end = self.raw_end();
        self.bytes.truncate(end);
        // A COFF symbol table (the x86_64 stub has one) lived in the dropped tail.
        let coff = self.coff;
        if u32_at(&self.bytes, coff + 8) as usize >= end {
            self.bytes[coff + 8..coff + 16].fill(0);
        }
        self.set_checksum();
        Ok(self)
    }

    /// Appends `sections` (name, data) after the last one, the way ukify places them: each
    /// starts at the next `SectionAlignment` boundary after the previous section's mapping,
    /// its raw data padded to `FileAlignment`; `SizeOfImage` and the checksum follow. Refused
    /// for a signed image (a signature would no longer match) and when the headers have no
    /// room for the new section headers.
    pub fn add_sections(self, sections: &[(&str, &[u8])]) -> Result<Pe> {
        let mut pe = self.strip_tail()?;
        let table_end = pe.section_table + pe.sections.len() * SECTION_HEADER_LEN;
        let room = pe.size_of_headers() as usize - table_end;
        if room < sections.len() * SECTION_HEADER_LEN
            || pe.sections.len() + sections.len() > MAX_SECTIONS
        {
            return Err(pe.bad(format!(
                "has room for {} more section headers, {} needed",
                room / SECTION_HEADER_LEN,
                sections.len()
            )));
        }
        // The space after the section table is padding: zeros, or (systemd's aarch64
        // binaries, gnu-efi's header) AArch64 NOPs, which nothing executes when the entry
        // point lies beyond the headers.
        let spare = &pe.bytes[table_end..table_end + sections.len() * SECTION_HEADER_LEN];
        let padding = spare.iter().all(|&b| b == 0)
            || (spare.chunks(4).all(|w| w == AARCH64_NOP)
                && u32_at(&pe.bytes, pe.opt + 16) >= pe.size_of_headers());
        if !padding {
            return Err(pe.bad("has data where new section headers would go".into()));
        }
        let salign = pe.section_alignment().max(1) as u64;
        let falign = pe.file_alignment().max(1) as u64;
        let mapped_end = pe
            .sections
            .iter()
            .map(|s| s.virtual_address as u64 + s.virtual_size.max(s.raw_size) as u64)
            .max()
            .unwrap_or(0);
        let mut va = round_up(mapped_end.max(pe.size_of_image() as u64), salign);
        let mut initialized = 0u64;
        for (i, (name, data)) in sections.iter().enumerate() {
            if name.is_empty() || name.len() > 8 || pe.sections.iter().any(|s| s.name == *name) {
                return Err(pe.bad(format!(
                    "cannot take a section {name:?}: names are 1..=8 bytes and unique"
                )));
            }
            let raw_offset = pe.bytes.len() as u64;
            let raw_size = round_up(data.len() as u64, falign);
            if raw_offset + raw_size > MAX_IMAGE as u64 || va + raw_size > u32::MAX as u64 {
                return Err(pe.bad(format!("would be too large with section {name}")));
            }
            let section = Section {
                name: name.to_string(),
                virtual_size: data.len() as u32,
                virtual_address: va as u32,
                raw_size: raw_size as u32,
                raw_offset: raw_offset as u32,
                characteristics: DATA_SECTION,
            };
            let at = table_end + i * SECTION_HEADER_LEN;
            let mut header = [0u8; SECTION_HEADER_LEN];
            header[..name.len()].copy_from_slice(name.as_bytes());
            put_u32(&mut header, 8, section.virtual_size);
            put_u32(&mut header, 12, section.virtual_address);
            put_u32(&mut header, 16, section.raw_size);
            put_u32(&mut header, 20, section.raw_offset);
            put_u32(&mut header, 36, section.characteristics);
            pe.bytes[at..at + SECTION_HEADER_LEN].copy_from_slice(&header);
            pe.bytes.extend_from_slice(data);
            pe.bytes.resize((raw_offset + raw_size) as usize, 0);
            va = round_up(va + data.len() as u64, salign);
            initialized += raw_size;
            pe.sections.push(section);
        }
        let count = pe.sections.len() as u16;
        let coff = pe.coff;
        pe.bytes[coff + 2..coff + 4].copy_from_slice(&count.to_le_bytes());
        let opt = pe.opt;
        put_u32(&mut pe.bytes, opt + 56, va as u32);
        let init = u32_at(&pe.bytes, opt + 8) as u64 + initialized;
        put_u32(&mut pe.bytes, opt + 8, init.min(u32::MAX as u64) as u32);
        pe.set_checksum();
        Ok(pe)
    }

    /// The Authenticode image hash (SHA-256): the headers without the checksum and the
    /// certificate table entry, every section's raw data in file order, then what follows up to
    /// the certificate table.
    pub fn authenticode_sha256(&self) -> [u8; 32] {
        let b = &self.bytes;
        let mut h = Sha256::new();
        let cks = self.checksum_at();
        let cert = self.cert_dir_at();
        h.update(&b[..cks]);
        h.update(&b[cks + 4..cert]);
        h.update(&b[cert + 8..self.size_of_headers() as usize]);
        let mut with_data: Vec<&Section> =
            self.sections.iter().filter(|s| s.raw_size > 0).collect();
        with_data.sort_by_key(|s| s.raw_offset);
        for s in &with_data {
            h.update(&b[s.raw_offset as usize..(s.raw_offset + s.raw_size) as usize]);
        }
        let hashed = self.raw_end();
        let (_, cert_len) = self.cert_table();
        let end = b.len() - cert_len as usize;
        if end > hashed {
            h.update(&b[hashed..end]);
        }
        h.finalize().into()
    }

    /// Appends `table` (a whole certificate table, 8-byte aligned) and points the data
    /// directory at it. The image must be unsigned.
    pub fn set_cert_table(&mut self, table: &[u8]) -> Result<()> {
        if self.is_signed() {
            return Err(self.bad("is already signed".into()));
        }
        // The table starts 8-byte aligned; padding before it is hashed as trailing data,
        // so it must be in place before the hash is taken (see `pad_for_cert_table`).
        if !self.bytes.len().is_multiple_of(8) {
            return Err(self.bad("does not end 8-byte aligned".into()));
        }
        let at = self.bytes.len() as u32;
        self.bytes.extend_from_slice(table);
        let dir = self.cert_dir_at();
        put_u32(&mut self.bytes, dir, at);
        put_u32(&mut self.bytes, dir + 4, table.len() as u32);
        self.set_checksum();
        Ok(())
    }

    /// Pads the file to a multiple of 8 bytes, where a certificate table may start.
    pub fn pad_for_cert_table(&mut self) {
        let len = round_up(self.bytes.len() as u64, 8) as usize;
        self.bytes.resize(len, 0);
        self.set_checksum();
    }

    /// The PE checksum: 16-bit one's-complement-style sum of the file with the checksum field
    /// taken as zero, folded, plus the file length.
    pub fn compute_checksum(&self) -> u32 {
        let cks = self.checksum_at();
        let mut sum: u64 = 0;
        for (i, pair) in self.bytes.chunks(2).enumerate() {
            let at = i * 2;
            if at == cks || at == cks + 2 {
                continue;
            }
            let word = match pair {
                [lo, hi] => u16::from_le_bytes([*lo, *hi]),
                [lo] => *lo as u16,
                _ => 0,
            };
            sum += word as u64;
            sum = (sum & 0xffff) + (sum >> 16);
        }
        sum = (sum & 0xffff) + (sum >> 16);
        (sum as u32).wrapping_add(self.bytes.len() as u32)
    }

    fn set_checksum(&mut self) {
        let c = self.compute_checksum();
        let at = self.checksum_at();
        put_u32(&mut self.bytes, at, c);
    }

    /// The checksum field as stored.
    pub fn checksum(&self) -> u32 {
        u32_at(&self.bytes, self.checksum_at())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A small PE32+ image: headers of 0x400 bytes, `.text` and `.data` of 0x200 each.
    pub(crate) fn tiny_pe() -> Vec<u8> {
        let mut b = vec![0u8; 0x800];
        b[..2].copy_from_slice(b"MZ");
        put_u32(&mut b, 0x3c, 0x80);
        b[0x80..0x84].copy_from_slice(b"PE\0\0");
        let coff = 0x84;
        b[coff..coff + 2].copy_from_slice(&0x8664u16.to_le_bytes());
        b[coff + 2..coff + 4].copy_from_slice(&2u16.to_le_bytes());
        b[coff + 16..coff + 18].copy_from_slice(&240u16.to_le_bytes());
        let opt = coff + 20;
        b[opt..opt + 2].copy_from_slice(&0x20bu16.to_le_bytes());
        put_u32(&mut b, opt + 32, 0x1000);
        put_u32(&mut b, opt + 36, 0x200);
        put_u32(&mut b, opt + 56, 0x3000);
        put_u32(&mut b, opt + 60, 0x400);
        put_u32(&mut b, opt + 108, 16);
        let table = opt + 240;
        for (i, name) in [".text", ".data"].iter().enumerate() {
            let s = table + 40 * i;
            b[s..s + name.len()].copy_from_slice(name.as_bytes());
            put_u32(&mut b, s + 8, 0x180);
            put_u32(&mut b, s + 12, 0x1000 * (i as u32 + 1));
            put_u32(&mut b, s + 16, 0x200);
            put_u32(&mut b, s + 20, 0x400 + 0x200 * i as u32);
        }
        for (i, byte) in b[0x400..].iter_mut().enumerate() {
            *byte = (i % 251) as u8;
        }
        b
    }

    #[test]
    fn parses_and_adds_sections_where_ukify_puts_them() {
        let pe = Pe::parse("tiny", tiny_pe()).unwrap();
        assert_eq!(pe.sections().len(), 2);
        let pe = pe
            .add_sections(&[(".osrel", b"ID=cairn\n"), (".linux", &[7u8; 0x1234])])
            .unwrap();
        let again = Pe::parse("again", pe.bytes().to_vec()).unwrap();
        let s = again.sections();
        assert_eq!(s.len(), 4);
        assert_eq!(
            (
                s[2].virtual_address,
                s[2].virtual_size,
                s[2].raw_offset,
                s[2].raw_size
            ),
            (0x3000, 9, 0x800, 0x200)
        );
        assert_eq!(
            (s[3].virtual_address, s[3].raw_offset, s[3].raw_size),
            (0x4000, 0xa00, 0x1400)
        );
        assert_eq!(again.size_of_image(), 0x6000);
        assert_eq!(again.section_data(".osrel").unwrap(), b"ID=cairn\n");
        assert_eq!(again.checksum(), again.compute_checksum());
        assert_eq!(again.bytes().len(), 0xa00 + 0x1400);
    }

    #[test]
    fn refuses_malformed_images_with_one_line() {
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (b"hello".to_vec(), "has no DOS header"),
            (
                {
                    let mut b = tiny_pe();
                    put_u32(&mut b, 0x3c, 0x7000_0000);
                    b
                },
                "does not point at a PE signature",
            ),
            (
                {
                    let mut b = tiny_pe();
                    b[0x84 + 20] = 0x0c;
                    b
                },
                "neither PE32 nor PE32+",
            ),
            (
                {
                    let mut b = tiny_pe();
                    put_u32(&mut b, 0x84 + 20 + 240 + 40 + 20, 0x700);
                    b
                },
                "section .data starts at 0x700",
            ),
            (
                {
                    let mut b = tiny_pe();
                    b.truncate(0x500);
                    b
                },
                "after the end of the 1280-byte file",
            ),
        ];
        for (bytes, want) in cases {
            let err = Pe::parse("x.efi", bytes).unwrap_err().to_string();
            assert!(err.starts_with("x.efi: "), "{err}");
            assert!(err.contains(want), "{err} lacks {want}");
            assert!(!err.contains('\n'), "{err}");
        }
        let full = Pe::parse("tiny", tiny_pe()).unwrap();
        let many: Vec<(String, Vec<u8>)> = (0..20).map(|i| (format!(".s{i}"), vec![1])).collect();
        let refs: Vec<(&str, &[u8])> = many.iter().map(|(n, d)| (n.as_str(), &d[..])).collect();
        let err = full.clone().add_sections(&refs).unwrap_err().to_string();
        assert!(err.contains("more section headers, 20 needed"), "{err}");
        let err = full
            .add_sections(&[(".text", b"x")])
            .unwrap_err()
            .to_string();
        assert!(err.contains("names are 1..=8 bytes and unique"), "{err}");
    }

    #[test]
    fn the_hash_skips_checksum_and_certificate_entry_but_nothing_else() {
        let pe = Pe::parse("tiny", tiny_pe()).unwrap();
        let h = pe.authenticode_sha256();
        let mut b = tiny_pe();
        b[0x84 + 20 + 64] ^= 0xff; // checksum
        assert_eq!(Pe::parse("t", b).unwrap().authenticode_sha256(), h);
        for at in [0x2, 0x84 + 20 + 56, 0x500, 0x7ff] {
            let mut b = tiny_pe();
            b[at] ^= 1;
            assert_ne!(
                Pe::parse("t", b).unwrap().authenticode_sha256(),
                h,
                "byte {at:#x}"
            );
        }
    }
}
