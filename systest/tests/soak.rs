//! The soak (systest/src/soak.rs): update cycles in a row on one machine. The suite runs a
//! short fixed sample; `cargo xtask soak --cycles N [--board B]` runs the long one, which sets
//! the variables below and prints the table.
//!
//! - `CAIRN_SOAK_BOARD` (qemu-aarch64), `CAIRN_SOAK_CYCLES` (2: a good update and a rollback),
//!   `CAIRN_SOAK_SAMPLE_EVERY` (10): how often cairnd's memory and descriptors are read.

use cairn_systest::soak::run;
use cairn_systest::{qemu_lock, var};

#[test]
#[ignore = "needs built images: run `cargo xtask test`"]
fn update_cycles_in_a_row_end_where_they_should_without_growth() {
    let _lock = qemu_lock();
    let board_name: String = var("CAIRN_SOAK_BOARD", "qemu-aarch64".to_string());
    let board = cairn_board::find(&board_name)
        .unwrap_or_else(|_| panic!("CAIRN_SOAK_BOARD={board_name:?}: no such board"));
    let cycles = var("CAIRN_SOAK_CYCLES", 2usize);
    let report = run(
        board,
        cycles,
        var("CAIRN_SOAK_SAMPLE_EVERY", 10usize).min(cycles),
    );
    let table = report.table();
    eprintln!("{table}");
    if let Ok(out) = std::env::var("CAIRN_SOAK_TABLE") {
        std::fs::write(&out, &table).unwrap();
    }
    assert_eq!(report.cycles.len(), cycles, "{table}");
    assert!(report.cycles.iter().all(|c| c.right()), "{table}");
    // cairnd is read at the same point of each boot: after it settled. Its descriptors stay
    // within a few of the first reading and its memory within a quarter.
    let first = &report.samples[0];
    assert!(first.rss_kib > 0 && first.open_fds > 0, "{table}");
    for s in &report.samples[1..] {
        assert!(
            s.open_fds <= first.open_fds + 4 && s.rss_kib <= first.rss_kib + first.rss_kib / 4,
            "cairnd grew: {table}"
        );
    }
}
