//! A minimal QMP client: JSON lines over the machine's unix socket.
//!
//! QMP interleaves asynchronous events (`POWERDOWN`, `SHUTDOWN`, …) with command replies. The
//! harness sends one command at a time, so the reply to a command is the next message that is not
//! an event; events are kept, in order, for tests that want them.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::error::{Error, Result};

/// Longest QMP message accepted; replies to the commands the harness sends are tiny.
const MAX_MESSAGE_BYTES: u64 = 1024 * 1024;

#[derive(Debug)]
pub(crate) struct Qmp {
    socket: PathBuf,
    reader: BufReader<UnixStream>,
    writer: UnixStream,
    events: Vec<Value>,
}

impl Qmp {
    /// Connects, reads the greeting and leaves capability negotiation mode. Retries until the
    /// socket accepts or `timeout` passes; `gone` is asked between attempts so a QEMU that has
    /// already exited fails fast instead of after the whole timeout.
    pub(crate) fn connect(
        socket: &Path,
        timeout: Duration,
        io_timeout: Duration,
        mut gone: impl FnMut() -> bool,
    ) -> Result<Qmp> {
        let deadline = Instant::now() + timeout;
        let stream = loop {
            match UnixStream::connect(socket) {
                Ok(s) => break s,
                Err(e) if Instant::now() >= deadline || gone() => {
                    return Err(Error::QmpConnect {
                        socket: socket.to_path_buf(),
                        timeout,
                        source: e,
                    })
                }
                Err(_) => std::thread::sleep(Duration::from_millis(50)),
            }
        };
        let io = |source| Error::QmpIo {
            command: "connect".into(),
            socket: socket.to_path_buf(),
            source,
        };
        stream.set_read_timeout(Some(io_timeout)).map_err(io)?;
        stream.set_write_timeout(Some(io_timeout)).map_err(io)?;
        let writer = stream.try_clone().map_err(io)?;
        let mut qmp = Qmp {
            socket: socket.to_path_buf(),
            reader: BufReader::new(stream),
            writer,
            events: Vec::new(),
        };
        let greeting = qmp.read_message("greeting")?;
        if greeting.get("QMP").is_none() {
            return Err(Error::QmpProtocol {
                command: "greeting".into(),
                detail: format!("expected a QMP greeting, got {greeting}"),
            });
        }
        qmp.execute("qmp_capabilities", None)?;
        Ok(qmp)
    }

    /// Runs one command and returns its `return` value.
    pub(crate) fn execute(&mut self, command: &str, arguments: Option<Value>) -> Result<Value> {
        let mut msg = json!({ "execute": command });
        if let Some(args) = arguments {
            msg["arguments"] = args;
        }
        let mut line = msg.to_string();
        line.push('\n');
        self.writer
            .write_all(line.as_bytes())
            .map_err(|source| self.io_error(command, source))?;
        loop {
            let reply = self.read_message(command)?;
            if reply.get("event").is_some() {
                self.events.push(reply);
            } else if let Some(ret) = reply.get("return") {
                return Ok(ret.clone());
            } else if let Some(err) = reply.get("error") {
                let field = |k: &str| {
                    err.get(k)
                        .and_then(Value::as_str)
                        .unwrap_or("?")
                        .to_string()
                };
                return Err(Error::QmpRefused {
                    command: command.to_string(),
                    class: field("class"),
                    desc: field("desc"),
                });
            } else {
                return Err(Error::QmpProtocol {
                    command: command.to_string(),
                    detail: format!("unexpected message {reply}"),
                });
            }
        }
    }

    /// Events received since the last call, oldest first.
    pub(crate) fn take_events(&mut self) -> Vec<Value> {
        std::mem::take(&mut self.events)
    }

    fn read_message(&mut self, command: &str) -> Result<Value> {
        let mut buf = Vec::new();
        let n = (&mut self.reader)
            .take(MAX_MESSAGE_BYTES)
            .read_until(b'\n', &mut buf)
            .map_err(|source| self.io_error(command, source))?;
        if n == 0 {
            return Err(self.io_error(
                command,
                std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "QEMU closed the socket"),
            ));
        }
        if buf.last() != Some(&b'\n') {
            return Err(Error::QmpProtocol {
                command: command.to_string(),
                detail: format!("message longer than {MAX_MESSAGE_BYTES} bytes or cut short"),
            });
        }
        serde_json::from_slice(&buf).map_err(|e| Error::QmpProtocol {
            command: command.to_string(),
            detail: format!("invalid JSON ({e}): {}", String::from_utf8_lossy(&buf)),
        })
    }

    fn io_error(&self, command: &str, source: std::io::Error) -> Error {
        Error::QmpIo {
            command: command.to_string(),
            socket: self.socket.clone(),
            source,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixListener;

    /// A scripted QMP server: answers each command line with the given replies.
    fn serve(
        dir: &Path,
        script: Vec<Vec<&'static str>>,
    ) -> (PathBuf, std::thread::JoinHandle<Vec<String>>) {
        let path = dir.join("qmp.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let handle = std::thread::spawn(move || {
            let (stream, _) = listener.accept().unwrap();
            let mut w = stream.try_clone().unwrap();
            let mut r = BufReader::new(stream);
            writeln!(w, r#"{{"QMP": {{"version": {{}}, "capabilities": []}}}}"#).unwrap();
            let mut seen = Vec::new();
            for replies in script {
                let mut line = String::new();
                r.read_line(&mut line).unwrap();
                seen.push(line.trim().to_string());
                for reply in replies {
                    writeln!(w, "{reply}").unwrap();
                }
            }
            seen
        });
        (path, handle)
    }

    #[test]
    fn negotiates_skips_events_and_reports_errors() {
        let dir = tempfile::tempdir().unwrap();
        let (path, server) = serve(
            dir.path(),
            vec![
                vec![r#"{"return": {}}"#],
                vec![
                    r#"{"event": "POWERDOWN", "timestamp": {}}"#,
                    r#"{"return": {}}"#,
                ],
                vec![r#"{"error": {"class": "CommandNotFound", "desc": "nope"}}"#],
            ],
        );
        let t = Duration::from_secs(5);
        let mut qmp = Qmp::connect(&path, t, t, || false).unwrap();
        assert_eq!(qmp.execute("system_powerdown", None).unwrap(), json!({}));
        assert_eq!(qmp.take_events().len(), 1);
        let err = qmp
            .execute("bogus", Some(json!({"a": 1})))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("bogus") && err.contains("CommandNotFound: nope"),
            "{err}"
        );
        let seen = server.join().unwrap();
        assert_eq!(seen[0], r#"{"execute":"qmp_capabilities"}"#);
        assert_eq!(seen[2], r#"{"arguments":{"a":1},"execute":"bogus"}"#);
    }

    #[test]
    fn connect_gives_up_when_qemu_is_gone() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("never.sock");
        let start = Instant::now();
        let err = Qmp::connect(
            &path,
            Duration::from_secs(30),
            Duration::from_secs(1),
            || true,
        )
        .unwrap_err();
        assert!(start.elapsed() < Duration::from_secs(5));
        assert!(err.to_string().contains("never.sock"), "{err}");
    }
}
