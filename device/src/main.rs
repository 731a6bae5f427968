//! `cairn`: the one binary on a Cairn device, multi-call by role.
//!
//! The role is `argv[0]`'s file name (`/init` and `/sbin/init` are `init`), or the first argument
//! when invoked as `cairn` (`cairn init`). All logic lives in the role libraries; this file only
//! dispatches, so it stays free of argument-parsing crates and small.

use std::ffi::OsStr;
use std::path::Path;
use std::process::ExitCode;

const USAGE: &str = "\
usage: cairn <role> [args...]   (or run through a link named after the role)

roles:
  init    PID 1: early mounts, modules, switch_root, supervision, clean shutdown
          (refuses to start unless it is process 1)
  cairnd  the device daemon init supervises: update bundles from sticks, the health
          window after an update, commit or roll back, the watchdog

options:
  -h, --help      print this help
  -V, --version   print the version
";

fn main() -> ExitCode {
    let args: Vec<_> = std::env::args_os().collect();
    let argv0 = args
        .first()
        .and_then(|a| Path::new(a).file_name())
        .unwrap_or(OsStr::new("cairn"));
    // The kernel may pass unknown command-line words to init as arguments: ignore them.
    if argv0 == "init" {
        return cairn_init::run();
    }
    if argv0 == "cairnd" {
        return cairn_daemon::cairnd::run();
    }
    match args.get(1).and_then(|a| a.to_str()) {
        Some("init") => cairn_init::run(),
        Some("cairnd") => cairn_daemon::cairnd::run(),
        Some("-h" | "--help" | "help") => {
            print!("cairn {}\n\n{USAGE}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        Some("-V" | "--version") => {
            println!("cairn {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        Some(other) => {
            eprintln!("cairn: unknown role {other:?}\n\n{USAGE}");
            ExitCode::from(2)
        }
        None => {
            eprint!("{USAGE}");
            ExitCode::from(2)
        }
    }
}
