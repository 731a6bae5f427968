//! Helpers shared by the interop tests of the format writers.
#![allow(dead_code)] // each test file uses a different subset

use std::path::PathBuf;

pub fn tool(name: &str, package: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let dirs = std::env::split_paths(&path).chain(["/usr/sbin".into(), "/sbin".into()]);
    for dir in dirs {
        let candidate = dir.join(name);
        if candidate.is_file() {
            return candidate;
        }
    }
    panic!("{name} not found; it comes from Debian package {package}, which `cargo xtask setup` installs");
}

/// Deterministic bytes that do not compress, so formats see realistic data.
pub fn pseudo_random(len: usize, seed: u32) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}
