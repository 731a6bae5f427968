//! Init's log lines, each written once to `/dev/kmsg` and shown once on the console.
//!
//! Every line is `cairn-init: <message>`. It goes to `/dev/kmsg` with a syslog level prefix
//! (`<6>` info, `<4>` warning, `<3>` error, `<7>` debug), so it lands in the kernel log. The
//! kernel itself echoes a kmsg record to the console when its level is below the console log
//! level (the first field of `/proc/sys/kernel/printk`: 4 with `quiet`, 7 without); init writes
//! the line to `/dev/console` itself only when the kernel will not, so each line appears on the
//! console exactly once. Debug lines are never written to the console by init.
//!
//! Before `/dev` exists (the first milliseconds of stage 1) lines go to stderr. Writes to
//! `/dev/kmsg` are rate-limited by default (10 lines per 5 s per open file), which would drop
//! lines that only the kernel was going to echo; [`Logger::attach`] therefore turns the limit off
//! with `kernel.printk_devkmsg=on` unless the command line pinned it.

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::sync::{Arc, Mutex, MutexGuard};

use crate::paths::{self, Paths};

/// Syslog severity of a line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Level {
    Error = 3,
    Warn = 4,
    Info = 6,
    Debug = 7,
}

/// kmsg truncates records at about 1 KiB; keep lines well inside that.
const MAX_LINE: usize = 900;

struct Sinks {
    kmsg: Option<File>,
    console: Box<dyn Write + Send>,
    /// Console log level; `None` when unknown (then every line goes to the console too).
    console_loglevel: Option<u8>,
}

/// The log of the init role. Cheap to share by reference; internally locked.
pub struct Logger {
    sinks: Mutex<Sinks>,
}

impl Logger {
    /// Lines go to stderr only (until [`Logger::attach`]).
    pub fn stderr() -> Self {
        Self::with_console(Box::new(io::stderr()))
    }

    fn with_console(console: Box<dyn Write + Send>) -> Self {
        Self {
            sinks: Mutex::new(Sinks {
                kmsg: None,
                console,
                console_loglevel: None,
            }),
        }
    }

    /// A logger that keeps lines in memory, for tests; returns it and the shared buffer.
    pub fn memory() -> (Self, MemoryLog) {
        let buf = MemoryLog::default();
        (Self::with_console(Box::new(buf.clone())), buf)
    }

    /// Switches to `/dev/kmsg` + `/dev/console` under `paths`, once `/dev` and `/proc` are mounted.
    /// Missing pieces are tolerated: no kmsg means console only.
    pub fn attach(&self, paths: &Paths) {
        let kmsg = OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_CLOEXEC)
            .open(paths.at(paths::DEV_KMSG))
            .ok();
        let console = OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_CLOEXEC | libc::O_NOCTTY)
            .open(paths.at(paths::DEV_CONSOLE))
            .ok();
        if kmsg.is_some() {
            // No create: outside a real /proc (tests) this fails harmlessly. EPERM when the
            // command line set printk.devkmsg= is fine too.
            if let Ok(mut f) = OpenOptions::new()
                .write(true)
                .open(paths.at(paths::PROC_PRINTK_DEVKMSG))
            {
                let _ = f.write_all(b"on\n");
            }
        }
        let console_loglevel = std::fs::read_to_string(paths.at(paths::PROC_PRINTK))
            .ok()
            .and_then(|s| parse_console_loglevel(&s));
        let mut s = self.lock();
        s.kmsg = kmsg;
        if let Some(c) = console {
            s.console = Box::new(c);
        }
        s.console_loglevel = console_loglevel;
    }

    fn lock(&self) -> MutexGuard<'_, Sinks> {
        // A panic while logging must not silence the fatal message that follows it.
        self.sinks.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn log(&self, level: Level, args: fmt::Arguments<'_>) {
        let mut line = format!("cairn-init: {args}");
        if line.len() > MAX_LINE {
            let mut cut = MAX_LINE;
            while !line.is_char_boundary(cut) {
                cut -= 1;
            }
            line.truncate(cut);
            line.push_str("...");
        }
        line = line.replace('\n', " ");
        line.push('\n');
        let mut s = self.lock();
        let s = &mut *s;
        let kernel_echoes = match s.kmsg.as_mut() {
            // One write(2) is one kmsg record.
            Some(k) => {
                let record = format!("<{}>{line}", level as u8);
                k.write(record.as_bytes()).is_ok()
                    && s.console_loglevel.is_some_and(|c| (level as u8) < c)
            }
            None => false,
        };
        let to_console = match level {
            Level::Debug => s.kmsg.is_none(),
            _ => !kernel_echoes,
        };
        if to_console {
            let _ = s.console.write_all(line.as_bytes());
            let _ = s.console.flush();
        }
    }

    pub fn info(&self, args: fmt::Arguments<'_>) {
        self.log(Level::Info, args)
    }

    pub fn warn(&self, args: fmt::Arguments<'_>) {
        self.log(Level::Warn, args)
    }

    pub fn error(&self, args: fmt::Arguments<'_>) {
        self.log(Level::Error, args)
    }

    pub fn debug(&self, args: fmt::Arguments<'_>) {
        self.log(Level::Debug, args)
    }
}

/// The first field of `/proc/sys/kernel/printk` ("4\t4\t1\t7").
pub fn parse_console_loglevel(printk: &str) -> Option<u8> {
    printk.split_whitespace().next()?.parse().ok()
}

/// In-memory console for tests.
#[derive(Clone, Default)]
pub struct MemoryLog(Arc<Mutex<Vec<u8>>>);

impl MemoryLog {
    pub fn lines(&self) -> Vec<String> {
        let buf = self.0.lock().unwrap_or_else(|p| p.into_inner());
        String::from_utf8_lossy(&buf)
            .lines()
            .map(str::to_owned)
            .collect()
    }

    pub fn text(&self) -> String {
        self.lines().join("\n")
    }
}

impl Write for MemoryLog {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend_from_slice(b);
        Ok(b.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn console_loglevel_is_first_field() {
        assert_eq!(parse_console_loglevel("4\t4\t1\t7\n"), Some(4));
        assert_eq!(parse_console_loglevel("7 4 1 7"), Some(7));
        assert_eq!(parse_console_loglevel(""), None);
    }

    #[test]
    fn lines_are_prefixed_and_single_line() {
        let (log, mem) = Logger::memory();
        log.info(format_args!("hello\nworld"));
        log.debug(format_args!("dbg"));
        assert_eq!(mem.lines(), ["cairn-init: hello world", "cairn-init: dbg"]);
    }

    /// Builds a fake /dev and /proc where kmsg is a plain file, to see both sinks.
    fn attached(loglevel: &str) -> (tempfile::TempDir, Logger) {
        let dir = tempfile::tempdir().unwrap();
        for d in ["dev", "proc/sys/kernel"] {
            std::fs::create_dir_all(dir.path().join(d)).unwrap();
        }
        std::fs::write(dir.path().join(paths::DEV_KMSG), "").unwrap();
        std::fs::write(dir.path().join(paths::DEV_CONSOLE), "").unwrap();
        std::fs::write(dir.path().join(paths::PROC_PRINTK), loglevel).unwrap();
        let log = Logger::stderr();
        log.attach(&Paths::under(dir.path()));
        (dir, log)
    }

    #[test]
    fn quiet_console_gets_info_from_us_and_errors_from_the_kernel() {
        let (dir, log) = attached("4 4 1 7");
        log.info(format_args!("ready"));
        log.error(format_args!("fatal: x"));
        log.debug(format_args!("detail"));
        let kmsg = std::fs::read_to_string(dir.path().join(paths::DEV_KMSG)).unwrap();
        let console = std::fs::read_to_string(dir.path().join(paths::DEV_CONSOLE)).unwrap();
        assert_eq!(
            kmsg,
            "<6>cairn-init: ready\n<3>cairn-init: fatal: x\n<7>cairn-init: detail\n"
        );
        // The kernel echoes <3> itself at loglevel 4, so we must not write it again.
        assert_eq!(console, "cairn-init: ready\n");
    }

    #[test]
    fn verbose_console_is_left_to_the_kernel() {
        let (dir, log) = attached("7 4 1 7");
        log.info(format_args!("ready"));
        let console = std::fs::read_to_string(dir.path().join(paths::DEV_CONSOLE)).unwrap();
        assert_eq!(console, "");
    }
}
