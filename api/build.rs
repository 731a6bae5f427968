//! Generates the Rust types, the server trait and a client from `proto/cairn/v1/*.proto`.
//!
//! The .proto files are parsed by protox (pure Rust), so building needs no `protoc` on the
//! machine and every host compiles the same descriptors. The interop test compiles the same
//! files with Debian's protoc for Python, which keeps them honest for other toolchains.

use std::path::Path;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = Path::new("proto");
    let mut files = Vec::new();
    for entry in std::fs::read_dir(root.join("cairn/v1"))? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "proto") {
            files.push(path);
        }
    }
    files.sort();
    println!("cargo:rerun-if-changed={}", root.display());
    for f in &files {
        println!("cargo:rerun-if-changed={}", f.display());
    }

    let descriptors = protox::compile(&files, [root])?;
    tonic_prost_build::configure()
        // The client is generic over any transport: cairnctl and the tests bring their own
        // channel, and the device binary links no client transport.
        .build_transport(false)
        .compile_fds(descriptors)?;
    Ok(())
}
