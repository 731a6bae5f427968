//! cairnd's log: every line goes to the console (`cairnd: …`, which tests and operators read),
//! into a ring the API serves (`cairnctl logs cairnd`), and, once DATA is mounted, into
//! [`LOG_PATH`] so the next boot can show it again.
//!
//! Every module of the daemon logs through [`say!`]; nothing here knows about the others.

use std::fs;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::journal::Ring;

/// Lines kept for the API's Logs call.
pub const LOG_LINES: usize = 2000;
/// Where cairnd's log is kept across boots when DATA is mounted.
pub const LOG_PATH: &str = "/var/log/cairnd.log";
/// The log file is started over (the old one kept as `.1`) past this size.
const LOG_FILE_MAX: u64 = 1 << 20;

static LOG: OnceLock<Ring<(i64, String)>> = OnceLock::new();

/// Set once DATA is mounted: log lines are appended to [`LOG_PATH`] too. The file is opened
/// per line, so nothing holds DATA busy when it must be unmounted.
static LOG_TO_DATA: AtomicBool = AtomicBool::new(false);

/// cairnd's log: what it printed, newest last.
pub fn ring() -> &'static Ring<(i64, String)> {
    LOG.get_or_init(|| Ring::new(LOG_LINES))
}

/// Milliseconds since the Unix epoch (0 before it).
pub fn unix_ms(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Prints a line on the console (`cairnd: …`) and keeps it for the API, and in [`LOG_PATH`]
/// once DATA is mounted.
pub fn log(args: std::fmt::Arguments) {
    let line = args.to_string();
    if !QUIET.load(Ordering::Relaxed) {
        console(&line);
    }
    let now = unix_ms(SystemTime::now());
    if LOG_TO_DATA.load(Ordering::Relaxed) {
        use std::io::Write as _;
        if let Ok(mut f) = fs::OpenOptions::new().append(true).open(LOG_PATH) {
            let _ = writeln!(f, "{now} {line}");
        }
    }
    ring().push((now, line));
}

/// Prints `cairnd: <line>` on the console only, in one write: `eprintln!` writes its pieces one
/// by one (stderr is unbuffered), and the kernel's own console messages can land between them,
/// splitting a line that tests and operators look for.
pub fn console(line: &str) {
    use std::io::Write as _;
    let _ = std::io::stderr().write_all(format!("cairnd: {line}\n").as_bytes());
}

static QUIET: AtomicBool = AtomicBool::new(false);

/// Stops printing lines on the console; they are still kept. For many agents in one process
/// (the fleet simulation, `cargo xtask fleet`), never on a device.
pub fn quiet() {
    QUIET.store(true, Ordering::Relaxed);
}

/// `say!("…", args)`: [`log`] with format arguments.
macro_rules! say {
    ($($t:tt)*) => { $crate::log::log(format_args!($($t)*)) };
}
pub(crate) use say;

/// Starts keeping the log in [`LOG_PATH`] (on DATA), after putting the previous boots' last
/// lines into the ring, so `cairnctl logs cairnd` shows them too.
pub fn keep_on_data() {
    let path = Path::new(LOG_PATH);
    let _ = fs::create_dir_all("/var/log");
    if fs::metadata(path).is_ok_and(|m| m.len() > LOG_FILE_MAX) {
        let _ = fs::rename(path, format!("{LOG_PATH}.1"));
    }
    let earlier = fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = earlier.lines().collect();
    let mut kept = Vec::new();
    for l in &lines[lines.len().saturating_sub(LOG_LINES / 2)..] {
        if let Some((ms, text)) = l.split_once(' ') {
            if let Ok(ms) = ms.parse::<i64>() {
                kept.push((ms, text.to_string()));
            }
        }
    }
    // The lines of this boot so far come after the earlier boots' lines.
    ring().prepend(kept);
    match fs::OpenOptions::new().create(true).append(true).open(path) {
        Ok(_) => LOG_TO_DATA.store(true, Ordering::Relaxed),
        Err(e) => log(format_args!("keeping the log in {LOG_PATH}: {e}")),
    }
}

/// Stops writing to [`LOG_PATH`], before DATA is unmounted.
pub fn leave_data() {
    LOG_TO_DATA.store(false, Ordering::Relaxed);
}
