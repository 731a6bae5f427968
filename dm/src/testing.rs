//! The kernel's side of a request, for tests that stand in for it: writing a reply into a
//! request buffer, and reading a request back to assert on what was sent.
//!
//! Compiled for this crate's tests and, through the `testing` feature, for the dev-dependencies
//! of crates that fake [`crate::Transport`]. The decoder panics on a malformed buffer: it only
//! ever reads buffers [`crate::Request`] built.

use std::ops::Range;

use crate::codec::{header, put, spec, Flags, Reply, TARGET_SPEC_SIZE};

/// Writes a reply's `flags` and `dev` into a request buffer, as the kernel does.
pub fn write_reply(buf: &mut [u8], flags: Flags, dev: u64) {
    put(buf, header::FLAGS, &flags.bits().to_ne_bytes());
    put(buf, header::DEV, &dev.to_ne_bytes());
}

/// A request buffer read back.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decoded {
    pub name: String,
    pub flags: Flags,
    /// `(sector_start, length, target_type, params)` per target.
    pub targets: Vec<(u64, u64, String, String)>,
}

impl Decoded {
    /// Follows `data_start` and each spec's `next` the way the kernel does.
    pub fn parse(buf: &[u8]) -> Self {
        let cstr = |b: &[u8]| {
            let end = b.iter().position(|&c| c == 0).expect("NUL-terminated");
            String::from_utf8(b[..end].to_vec()).expect("UTF-8")
        };
        let reply = Reply::parse(buf).expect("a whole header");
        let u32_at = |r: Range<usize>| u32::from_ne_bytes(buf[r].try_into().unwrap()) as usize;
        let mut at = u32_at(header::DATA_START);
        let mut targets = Vec::new();
        for _ in 0..reply.target_count {
            let s = &buf[at..];
            let u64_at = |r: Range<usize>| u64::from_ne_bytes(s[r].try_into().unwrap());
            targets.push((
                u64_at(spec::SECTOR_START),
                u64_at(spec::LENGTH),
                cstr(&s[spec::TARGET_TYPE]),
                cstr(&s[TARGET_SPEC_SIZE..]),
            ));
            at += u32::from_ne_bytes(s[spec::NEXT].try_into().unwrap()) as usize;
        }
        Self {
            name: cstr(&buf[header::NAME]),
            flags: reply.flags,
            targets,
        }
    }
}
