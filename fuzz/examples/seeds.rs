//! Writes the seed corpus: `seeds <dir>` fills `<dir>/<target>/` with every target's seeds
//! (`cairn_fuzz::seeds`). Seeds are generated, never committed.

use std::path::PathBuf;

fn main() {
    let dir = PathBuf::from(std::env::args_os().nth(1).expect("usage: seeds <dir>"));
    let scratch = dir.join(".payloads");
    std::fs::create_dir_all(&scratch).expect("creating the scratch folder");
    let seeds = cairn_fuzz::seeds(&scratch);
    std::fs::remove_dir_all(&scratch).expect("removing the scratch folder");
    for (target, name, bytes) in seeds {
        let folder = dir.join(target);
        std::fs::create_dir_all(&folder).expect("creating a corpus folder");
        std::fs::write(folder.join(name), bytes).expect("writing a seed");
    }
}
