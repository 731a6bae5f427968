//! Power cuts during updates (systest/src/powercut.rs): a small fixed sample in the suite,
//! the same code as `cargo xtask powercut --points N --seed S [--board B] [--scenario S]`,
//! which sets the variables below and prints the table.
//!
//! - `CAIRN_POWERCUT_BOARD` (qemu-aarch64), `CAIRN_POWERCUT_POINTS` (4: the first two phases of
//!   each run, the installs and the trials), `CAIRN_POWERCUT_SEED`
//!   (2026), `CAIRN_POWERCUT_INSTALL_EVERY` (3): the next update is tried after every this
//!   many cuts; `CAIRN_POWERCUT_SCENARIOS` (`stick,api`): which traced runs to cut;
//!   `CAIRN_POWERCUT_JOBS` (1): how many cut disks boot at once.

use cairn_systest::powercut::{run, Plan, Scenario};
use cairn_systest::{qemu_lock, var};

#[test]
#[ignore = "needs built images: run `cargo xtask test`"]
fn power_cuts_during_an_update_leave_a_device_that_boots_and_updates() {
    let _lock = qemu_lock();
    let board_name: String = var("CAIRN_POWERCUT_BOARD", "qemu-aarch64".to_string());
    let board = cairn_board::find(&board_name)
        .unwrap_or_else(|_| panic!("CAIRN_POWERCUT_BOARD={board_name:?}: no such board"));
    let plan = Plan {
        board,
        scenarios: var("CAIRN_POWERCUT_SCENARIOS", "stick,api".to_string())
            .split(',')
            .map(|name| Scenario::parse(name.trim()).unwrap_or_else(|e| panic!("{e}")))
            .collect(),
        points: var("CAIRN_POWERCUT_POINTS", 4),
        seed: var("CAIRN_POWERCUT_SEED", 2026),
        install_every: var("CAIRN_POWERCUT_INSTALL_EVERY", 3),
        jobs: var("CAIRN_POWERCUT_JOBS", 1),
    };
    let report = run(&plan);
    let table = report.table();
    eprintln!("{table}");
    if let Ok(out) = std::env::var("CAIRN_POWERCUT_TABLE") {
        std::fs::write(&out, &table).unwrap();
    }
    assert_eq!(report.outcomes.len(), plan.points, "{table}");
    assert!(report.outcomes.iter().all(|o| o.good()), "{table}");
}
