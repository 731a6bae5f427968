//! Writes the seed corpus: `seeds <dir>` fills `<dir>/<target>/` with environments as the
//! device writes them. Seeds are generated, never committed.

use std::path::PathBuf;

fn main() {
    let dir = PathBuf::from(std::env::args_os().nth(1).expect("usage: seeds <dir>"));
    for (target, name, bytes) in cairn_boot_fuzz::seeds() {
        let folder = dir.join(target);
        std::fs::create_dir_all(&folder).expect("creating a corpus folder");
        std::fs::write(folder.join(name), bytes).expect("writing a seed");
    }
}
