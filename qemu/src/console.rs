//! The serial console: raw bytes to a log file, clean lines to waiting tests.
//!
//! One reader thread per machine drains QEMU's stdout. The bytes go to `console.log` untouched
//! (that file is what a human reads after a failure); each complete line is also cleaned (carriage
//! returns, ANSI escape sequences and other control characters removed, invalid UTF-8 replaced) and
//! appended to a shared list that waiters watch through a condition variable. Waiters never consume
//! lines: each keeps its own cursor into the list.

use std::fs::File;
use std::io::{Read, Write};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::Instant;

/// A line longer than this is cut into pieces, so a firmware that never sends a newline cannot
/// grow one buffer without bound.
pub const MAX_LINE_BYTES: usize = 16 * 1024;

/// How many console lines an error message shows.
pub(crate) const TAIL_LINES: usize = 15;

/// Splits a byte stream into cleaned lines.
#[derive(Debug, Default)]
pub(crate) struct LineSplitter {
    partial: Vec<u8>,
}

impl LineSplitter {
    /// Feeds bytes; pushes every line they complete onto `out`.
    pub(crate) fn push(&mut self, mut bytes: &[u8], out: &mut Vec<String>) {
        while !bytes.is_empty() {
            let room = MAX_LINE_BYTES - self.partial.len();
            let window = &bytes[..bytes.len().min(room)];
            match window.iter().position(|&b| b == b'\n') {
                Some(i) => {
                    self.partial.extend_from_slice(&window[..i]);
                    out.push(clean_line(&self.partial));
                    self.partial.clear();
                    bytes = &bytes[i + 1..];
                }
                None => {
                    self.partial.extend_from_slice(window);
                    bytes = &bytes[window.len()..];
                    if self.partial.len() == MAX_LINE_BYTES {
                        out.push(clean_line(&self.partial));
                        self.partial.clear();
                    }
                }
            }
        }
    }

    /// End of stream: an unterminated last line (a prompt, a panic cut short) is still a line.
    pub(crate) fn finish(&mut self, out: &mut Vec<String>) {
        if !self.partial.is_empty() {
            out.push(clean_line(&self.partial));
            self.partial.clear();
        }
    }
}

/// Removes escape sequences and control characters (keeping tabs) and decodes lossily.
pub(crate) fn clean_line(raw: &[u8]) -> String {
    const ESC: u8 = 0x1b;
    const BEL: u8 = 0x07;
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        let b = raw[i];
        if b == ESC {
            i += 1;
            match raw.get(i) {
                // CSI: parameters 0x30-0x3f, intermediates 0x20-0x2f, one final byte 0x40-0x7e.
                Some(b'[') => {
                    i += 1;
                    while i < raw.len() && (0x20..=0x3f).contains(&raw[i]) {
                        i += 1;
                    }
                    i += 1;
                }
                // OSC: up to BEL or ESC \.
                Some(b']') => {
                    i += 1;
                    while i < raw.len() && raw[i] != BEL && raw[i] != ESC {
                        i += 1;
                    }
                    if raw.get(i) == Some(&ESC) {
                        i += 1;
                    }
                    i += 1;
                }
                // Other escapes: intermediates 0x20-0x2f, then one final byte.
                Some(_) => {
                    while i < raw.len() && (0x20..=0x2f).contains(&raw[i]) {
                        i += 1;
                    }
                    i += 1;
                }
                None => {}
            }
            continue;
        }
        if (b >= 0x20 && b != 0x7f) || b == b'\t' {
            out.push(b);
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[derive(Debug, Default)]
struct State {
    lines: Vec<String>,
    /// QEMU closed its stdout: it has exited (or is about to).
    closed: bool,
}

/// Console lines shared between the reader thread and the machine's waiters.
#[derive(Debug, Default)]
pub(crate) struct Console {
    state: Mutex<State>,
    changed: Condvar,
}

/// Outcome of [`Console::wait_for`].
pub(crate) enum Wait {
    /// Line index, needle index, line.
    Found(usize, usize, String),
    Closed,
    TimedOut,
}

impl Console {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic elsewhere while holding the lock leaves the line list valid: keep using it.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn append(&self, new: &mut Vec<String>, closed: bool) {
        if new.is_empty() && !closed {
            return;
        }
        let mut st = self.lock();
        st.lines.append(new);
        st.closed |= closed;
        drop(st);
        self.changed.notify_all();
    }

    pub(crate) fn lines(&self) -> Vec<String> {
        self.lock().lines.clone()
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.lock().closed
    }

    /// The last [`TAIL_LINES`] lines, indented, one per line, for error messages.
    pub(crate) fn tail(&self) -> String {
        let st = self.lock();
        let start = st.lines.len().saturating_sub(TAIL_LINES);
        let mut s = String::new();
        if st.lines.is_empty() {
            s.push_str("    (no console output)\n");
        }
        for line in &st.lines[start..] {
            s.push_str("    | ");
            s.push_str(line);
            s.push('\n');
        }
        s
    }

    /// Waits until a line at index `from` or later contains one of `needles`, the console closes,
    /// or `deadline` passes. Lines present before the close are still searched.
    pub(crate) fn wait_for(&self, from: usize, needles: &[&str], deadline: Instant) -> Wait {
        let mut st = self.lock();
        let mut next = from;
        loop {
            while next < st.lines.len() {
                let line = &st.lines[next];
                if let Some(n) = needles.iter().position(|n| line.contains(n)) {
                    return Wait::Found(next, n, line.clone());
                }
                next += 1;
            }
            if st.closed {
                return Wait::Closed;
            }
            let now = Instant::now();
            if now >= deadline {
                return Wait::TimedOut;
            }
            st = self
                .changed
                .wait_timeout(st, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// Waits until the console closes or `deadline` passes.
    pub(crate) fn wait_closed(&self, deadline: Instant) {
        let mut st = self.lock();
        while !st.closed {
            let now = Instant::now();
            if now >= deadline {
                return;
            }
            st = self
                .changed
                .wait_timeout(st, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// The reader thread's body: runs until QEMU closes its stdout.
    pub(crate) fn pump(&self, mut from: impl Read, mut log: File, echo: bool) {
        let mut splitter = LineSplitter::default();
        let mut buf = [0u8; 8192];
        let mut new = Vec::new();
        let mut log_ok = true;
        loop {
            let n = match from.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    eprintln!("cairn-qemu: reading the console failed: {e}");
                    break;
                }
            };
            if log_ok {
                if let Err(e) = log.write_all(&buf[..n]) {
                    // The lines still reach the waiters; only the file is incomplete.
                    eprintln!(
                        "cairn-qemu: writing the console log failed, continuing without: {e}"
                    );
                    log_ok = false;
                }
            }
            splitter.push(&buf[..n], &mut new);
            if echo {
                new.iter().for_each(|l| eprintln!("{l}"));
            }
            self.append(&mut new, false);
        }
        splitter.finish(&mut new);
        if echo {
            new.iter().for_each(|l| eprintln!("{l}"));
        }
        self.append(&mut new, true);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn split(chunks: &[&[u8]]) -> Vec<String> {
        let mut s = LineSplitter::default();
        let mut out = Vec::new();
        for c in chunks {
            s.push(c, &mut out);
        }
        s.finish(&mut out);
        out
    }

    #[test]
    fn splits_across_chunks_and_strips_cr() {
        assert_eq!(
            split(&[b"first\r", b"\nsec", b"ond\n\nthird"]),
            ["first", "second", "", "third"]
        );
    }

    #[test]
    fn strips_firmware_escapes_and_tolerates_bad_utf8() {
        let ovmf =
            b"\x1b[2J\x1b[01;01H\x1b[=3hBdsDxe: loading\r\n\x1b[1m\x1b[33m\x1b[40mShell> \x1b[0m";
        assert_eq!(split(&[ovmf]), ["BdsDxe: loading", "Shell> "]);
        assert_eq!(split(&[b"a\xffb\x08c\tz\n"]), ["a\u{fffd}bc\tz"]);
        assert_eq!(split(&[b"\x1b]0;title\x07x\x1b(By\n"]), ["xy"]);
        // An escape sequence split across reads is still removed: lines are cleaned whole.
        assert_eq!(split(&[b"ok \x1b[3", b"2mgreen\n"]), ["ok green"]);
    }

    #[test]
    fn overlong_lines_are_cut() {
        let long = vec![b'x'; MAX_LINE_BYTES * 2 + 5];
        let lines = split(&[&long, b"\n"]);
        assert_eq!(lines.len(), 3);
        assert_eq!(lines[0].len(), MAX_LINE_BYTES);
        assert_eq!(lines[2].len(), 5);
    }

    #[test]
    fn wait_sees_lines_before_close_and_times_out() {
        let c = Console::default();
        c.append(&mut vec!["a".into(), "b".into()], true);
        let soon = Instant::now() + Duration::from_millis(10);
        assert!(matches!(c.wait_for(0, &["b"], soon), Wait::Found(1, 0, _)));
        assert!(matches!(c.wait_for(2, &["b"], soon), Wait::Closed));
        let open = Console::default();
        assert!(matches!(open.wait_for(0, &["x"], soon), Wait::TimedOut));
    }
}
