//! A software TPM 2.0 (Debian's `swtpm`) for a machine: one process per boot, one state
//! directory per machine.
//!
//! The state directory is the TPM's "chip": its seeds and NV space live there (`tpm2-00.permall`),
//! so stopping QEMU and swtpm and starting both again on the same directory boots the same TPM.
//! No `swtpm_setup` is needed: on the first start over an empty directory, swtpm manufactures a
//! fresh TPM (new seeds, no EK certificate) when QEMU initialises it.
//!
//! swtpm runs with `--terminate`: it exits when QEMU closes the data channel, so it never
//! outlives the machine it served. A [`Swtpm`] still stops its own child by pid when dropped.
//!
//! At log level [`SWTPM_LOG_COMMANDS`] swtpm logs every command in hex; [`pcr_extends`] reads the
//! `TPM2_PCR_Extend` commands back out, so a test can see what the firmware measured.

use std::fs::{self, File};
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileTypeExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::machine::MAX_SOCKET_PATH;
use crate::timeouts::Timeouts;

/// How long swtpm may take to create its control socket (before scaling).
const SOCKET_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a stopped swtpm gets between `SIGTERM` and `SIGKILL`.
const TERM_GRACE: Duration = Duration::from_secs(5);
/// How much of swtpm's log an error message quotes.
const LOG_TAIL_BYTES: u64 = 4096;

/// swtpm's log levels: 1 logs errors and start-up; 20 adds every TPM command and response in hex,
/// which is how a test sees what the firmware measured.
pub const SWTPM_LOG_COMMANDS: u32 = 20;

/// One running swtpm process serving one QEMU machine.
#[derive(Debug)]
pub struct Swtpm {
    child: Child,
    pid: u32,
    state_dir: PathBuf,
    socket: PathBuf,
    log: PathBuf,
}

impl Swtpm {
    /// Starts swtpm on `state_dir` (created if missing) and returns once its control socket
    /// `<state_dir>/swtpm.sock` exists. The log `<state_dir>/swtpm.log` is started afresh at
    /// `log_level` (see [`SWTPM_LOG_COMMANDS`]); copy it before starting the next swtpm on the
    /// same directory if it matters. Pass the socket to [`crate::LaunchOptions::tpm`].
    ///
    /// One swtpm per state directory at a time: drop (or [`Swtpm::stop`]) the previous one
    /// first. swtpm takes its lock on the directory only when QEMU initialises the TPM, so a
    /// second one would start and then fail under QEMU.
    pub fn start(state_dir: &Path, log_level: u32) -> Result<Swtpm> {
        let timeouts = Timeouts::from_env()?;
        fs::create_dir_all(state_dir).map_err(|source| Error::WorkDir {
            path: state_dir.to_path_buf(),
            source,
        })?;
        let state_dir = fs::canonicalize(state_dir).map_err(|source| Error::WorkDir {
            path: state_dir.to_path_buf(),
            source,
        })?;
        let socket = state_dir.join("swtpm.sock");
        let log = state_dir.join("swtpm.log");
        let stderr_path = state_dir.join("swtpm-stderr.log");
        let start_err = |detail: String, log_tail: String| Error::SwtpmStart {
            state_dir: state_dir.clone(),
            detail,
            log: log.clone(),
            log_tail,
        };
        if state_dir.as_os_str().as_bytes().contains(&b',') {
            return Err(start_err(
                "swtpm splits its options at commas and the path has one: use a state \
                 directory without commas"
                    .into(),
                String::new(),
            ));
        }
        let len = socket.as_os_str().len();
        if len > MAX_SOCKET_PATH {
            return Err(start_err(
                format!(
                    "socket path {} is {len} bytes, longer than a unix socket allows \
                     ({MAX_SOCKET_PATH}): use a shorter state directory",
                    socket.display()
                ),
                String::new(),
            ));
        }
        for stale in [&socket, &log] {
            match fs::remove_file(stale) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    return Err(Error::WorkDir {
                        path: stale.clone(),
                        source: e,
                    })
                }
                _ => {}
            }
        }
        let stderr = File::create(&stderr_path).map_err(|source| Error::WorkDir {
            path: stderr_path.clone(),
            source,
        })?;

        let mut cmd = Command::new("swtpm");
        cmd.arg("socket")
            .arg("--tpm2")
            .arg("--tpmstate")
            .arg(option_with_path("dir=", &state_dir, ""))
            .arg("--ctrl")
            .arg(option_with_path("type=unixio,path=", &socket, ""))
            .arg("--log")
            .arg(option_with_path(
                "file=",
                &log,
                &format!(",level={log_level}"),
            ))
            .arg("--terminate")
            .current_dir(&state_dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr);
        let parent = std::process::id();
        let die_with_parent = move || {
            // SAFETY: PR_SET_PDEATHSIG takes a signal number; no pointers are involved.
            let rc = unsafe {
                libc::prctl(
                    libc::PR_SET_PDEATHSIG,
                    libc::SIGKILL as libc::c_ulong,
                    0,
                    0,
                    0,
                )
            };
            if rc != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // SAFETY: getppid has no arguments and cannot fail.
            if unsafe { libc::getppid() } as u32 != parent {
                return Err(std::io::Error::from_raw_os_error(libc::ESRCH));
            }
            Ok(())
        };
        // SAFETY: the hook runs between fork and exec, where only async-signal-safe calls are
        // allowed; it makes two such syscalls (prctl, getppid) and allocates nothing.
        unsafe {
            cmd.pre_exec(die_with_parent);
        }
        let child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(Error::SwtpmNotInstalled(e))
            }
            Err(source) => {
                return Err(Error::Spawn {
                    binary: "swtpm".into(),
                    source,
                })
            }
        };
        let pid = child.id();
        // From here on an early return drops `swtpm`, which stops the child.
        let mut swtpm = Swtpm {
            child,
            pid,
            state_dir: state_dir.clone(),
            socket: socket.clone(),
            log: log.clone(),
        };

        let timeout = timeouts.scale(SOCKET_TIMEOUT);
        let deadline = Instant::now() + timeout;
        loop {
            if fs::metadata(&socket).is_ok_and(|m| m.file_type().is_socket()) {
                return Ok(swtpm);
            }
            match swtpm.child.try_wait() {
                Ok(Some(status)) => {
                    return Err(start_err(
                        format!("it exited ({status}) before creating {}", socket.display()),
                        logs_tail(&log, &stderr_path),
                    ))
                }
                Ok(None) => {}
                Err(source) => return Err(Error::Wait { pid, source }),
            }
            if Instant::now() >= deadline {
                return Err(start_err(
                    format!(
                        "no control socket {} after {timeout:?} (pid {pid})",
                        socket.display()
                    ),
                    logs_tail(&log, &stderr_path),
                ));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The control socket, for [`crate::LaunchOptions::tpm`].
    pub fn socket_path(&self) -> &Path {
        &self.socket
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// swtpm's log of this run.
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// The TPM's persistent state (seeds, NV); start another [`Swtpm`] on it for the same TPM.
    pub fn state_dir(&self) -> &Path {
        &self.state_dir
    }

    /// swtpm's exit status if it has exited (it does when its QEMU goes), without waiting.
    pub fn try_exit(&mut self) -> Result<Option<ExitStatus>> {
        self.child.try_wait().map_err(|source| Error::Wait {
            pid: self.pid,
            source,
        })
    }

    /// Stops swtpm (by pid: `SIGTERM`, then `SIGKILL` after a grace period) and reaps it.
    pub fn stop(mut self) -> Result<ExitStatus> {
        self.terminate()
    }

    fn terminate(&mut self) -> Result<ExitStatus> {
        let wait_err = |source| Error::Wait {
            pid: self.pid,
            source,
        };
        if let Some(status) = self.child.try_wait().map_err(wait_err)? {
            return Ok(status);
        }
        let pid = libc::pid_t::try_from(self.pid).map_err(|_| Error::Wait {
            pid: self.pid,
            source: std::io::Error::from_raw_os_error(libc::ESRCH),
        })?;
        // SAFETY: kill takes a pid and a signal number; the pid is our own unreaped child, so
        // it cannot have been recycled for another process.
        if unsafe { libc::kill(pid, libc::SIGTERM) } != 0 {
            return Err(wait_err(std::io::Error::last_os_error()));
        }
        let deadline = Instant::now() + TERM_GRACE;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().map_err(wait_err)? {
                return Ok(status);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        self.child.kill().map_err(wait_err)?;
        self.child.wait().map_err(wait_err)
    }
}

impl Drop for Swtpm {
    fn drop(&mut self) {
        if let Err(e) = self.terminate() {
            eprintln!("cairn-qemu: cannot stop swtpm pid {}: {e}", self.pid);
        }
    }
}

/// A swtpm option value with `path` inside (a path without commas: swtpm has no escape for them).
fn option_with_path(prefix: &str, path: &Path, suffix: &str) -> std::ffi::OsString {
    let mut out = std::ffi::OsString::from(prefix);
    out.push(path.as_os_str());
    out.push(suffix);
    out
}

/// The ends of swtpm's log and stderr, indented, for error messages.
fn logs_tail(log: &Path, stderr: &Path) -> String {
    let mut out = String::new();
    for path in [log, stderr] {
        let text = file_tail(path);
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            out.push_str(&format!("    ! {line}\n"));
        }
    }
    if out.is_empty() {
        out.push_str("    (nothing)\n");
    }
    out
}

fn file_tail(path: &Path) -> String {
    let mut buf = Vec::new();
    if let Ok(mut f) = File::open(path) {
        let len = f.metadata().map(|m| m.len()).unwrap_or(0);
        if f.seek(SeekFrom::Start(len.saturating_sub(LOG_TAIL_BYTES)))
            .is_ok()
        {
            let _ = f.take(LOG_TAIL_BYTES).read_to_end(&mut buf);
        }
    }
    String::from_utf8_lossy(&buf).into_owned()
}

/// `TPM_CC_PCR_Extend`.
const CC_PCR_EXTEND: u32 = 0x182;
/// The largest TPM command swtpm accepts; longer "commands" in a log are not parsed.
const MAX_COMMAND: usize = 4096;
/// `TPM_ALG_SHA256`.
pub const TPM_ALG_SHA256: u16 = 0x000b;

/// One `TPM2_PCR_Extend` command from a swtpm log: the PCR and a digest per bank.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PcrExtend {
    pub pcr: u32,
    /// `(TPM_ALG_ID, digest)` in command order.
    pub digests: Vec<(u16, Vec<u8>)>,
}

impl PcrExtend {
    /// The SHA-256 bank's digest, if the command extended that bank.
    pub fn sha256(&self) -> Option<&[u8]> {
        self.digests
            .iter()
            .find(|(alg, _)| *alg == TPM_ALG_SHA256)
            .map(|(_, d)| d.as_slice())
    }
}

/// The `TPM2_PCR_Extend` commands a swtpm log recorded, in order. Needs log level
/// [`SWTPM_LOG_COMMANDS`] (each command is a `SWTPM_IO_Read: length N` line followed by its bytes
/// in hex). Measurements sent as `TPM2_PCR_Event` (data rather than digests) are not included;
/// EDK II's firmware and the Linux kernel extend with digests.
pub fn pcr_extends(log: &Path) -> Result<Vec<PcrExtend>> {
    let io = |source| Error::SwtpmLog {
        path: log.to_path_buf(),
        source,
    };
    let mut extends = Vec::new();
    let mut command: Option<(usize, Vec<u8>)> = None;
    for line in BufReader::new(File::open(log).map_err(io)?).split(b'\n') {
        let line = line.map_err(io)?;
        let line = String::from_utf8_lossy(&line);
        if let Some(len) = line.trim().strip_prefix("SWTPM_IO_Read: length ") {
            command = len
                .parse()
                .ok()
                .filter(|&n| n <= MAX_COMMAND)
                .map(|n| (n, Vec::with_capacity(n)));
            continue;
        }
        let Some((want, bytes)) = command.as_mut() else {
            continue;
        };
        let hex: Option<Vec<u8>> = line
            .split_whitespace()
            .map(|h| u8::from_str_radix(h, 16).ok())
            .collect();
        match hex {
            Some(h) if !h.is_empty() && bytes.len() + h.len() <= *want => bytes.extend(h),
            _ => command = None,
        }
        if let Some((want, bytes)) = &command {
            if bytes.len() == *want {
                extends.extend(parse_extend(bytes));
                command = None;
            }
        }
    }
    Ok(extends)
}

/// A `TPM2_PCR_Extend` command's PCR and digests; `None` for any other command.
fn parse_extend(cmd: &[u8]) -> Option<PcrExtend> {
    let u32_at = |o: usize| {
        cmd.get(o..o + 4)
            .map(|b| u32::from_be_bytes(b.try_into().unwrap()))
    };
    if u32_at(6)? != CC_PCR_EXTEND {
        return None;
    }
    let pcr = u32_at(10)?;
    let mut at = 18usize.checked_add(u32_at(14)? as usize)?;
    let count = u32_at(at)?;
    at += 4;
    let mut digests = Vec::new();
    for _ in 0..count.min(16) {
        let alg = u16::from_be_bytes(cmd.get(at..at + 2)?.try_into().unwrap());
        let len = match alg {
            0x0004 => 20,                  // SHA-1
            TPM_ALG_SHA256 | 0x0012 => 32, // SHA-256, SM3-256
            0x000c => 48,                  // SHA-384
            0x000d => 64,                  // SHA-512
            _ => return None,
        };
        digests.push((alg, cmd.get(at + 2..at + 2 + len)?.to_vec()));
        at += 2 + len;
    }
    Some(PcrExtend { pcr, digests })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alive(pid: u32) -> bool {
        Path::new(&format!("/proc/{pid}")).exists()
    }

    use std::os::unix::process::ExitStatusExt;

    #[test]
    fn starts_creates_its_socket_and_stops_by_pid() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("tpm");
        let swtpm = Swtpm::start(&state, 1).unwrap();
        let pid = swtpm.pid();
        assert!(alive(pid));
        assert_eq!(swtpm.socket_path(), state.join("swtpm.sock"));
        assert!(fs::metadata(swtpm.socket_path())
            .unwrap()
            .file_type()
            .is_socket());
        assert_eq!(swtpm.log_path(), state.join("swtpm.log"));
        drop(swtpm);
        assert!(!alive(pid), "swtpm pid {pid} outlived its Swtpm");

        // The same directory serves again (a second boot of the same machine).
        let swtpm = Swtpm::start(&state, 1).unwrap();
        let pid = swtpm.pid();
        let status = swtpm.stop().unwrap();
        assert!(!alive(pid));
        // SIGTERM sufficed: the SIGKILL fallback was not needed.
        assert_ne!(status.signal(), Some(libc::SIGKILL), "{status}");
    }

    #[test]
    fn refuses_state_dirs_it_cannot_name() {
        let dir = tempfile::tempdir().unwrap();
        let comma = dir.path().join("a,b");
        let err = Swtpm::start(&comma, 1).unwrap_err().to_string();
        assert!(err.contains("comma"), "{err}");
        let long = dir.path().join("x".repeat(MAX_SOCKET_PATH));
        let err = Swtpm::start(&long, 1).unwrap_err().to_string();
        assert!(err.contains("longer than a unix socket allows"), "{err}");
    }

    #[test]
    fn pcr_extends_are_read_from_a_command_log() {
        // From a real OVMF boot at level 20: one PCR_Extend of PCR 7 (SHA-1 and SHA-256 banks
        // kept, the command length adjusted), one other command, and a response.
        let log = "\
 SWTPM_IO_Read: length 22
 80 01 00 00 00 16 00 00 01 7E 00 00 00 01 00 0B
 03 00 00 80 00 00
 SWTPM_IO_Read: length 87
 80 02 00 00 00 57 00 00 01 82 00 00 00 07 00 00
 00 09 40 00 00 09 00 00 00 00 00 00 00 00 02 00
 04 11 11 11 11 11 11 11 11 11 11 11 11 11 11 11
 11 11 11 11 11 00 0B 9F 75 B6 82 3B FF 6A F1 02
 4A 4E 20 36 71 9C DD 54 8D 3C BC 2B F1 DE 8E 7E
 F4 D0 ED 01 F9 4B F9 
 SWTPM_IO_Write: length 10
 80 01 00 00 00 0A 00 00 00 00
 SWTPM_IO_Read: length 79
 80 02 00 00 00 4F 00 00 01 82 00 00 00 04
";
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("swtpm.log");
        fs::write(&path, log).unwrap();
        let extends = pcr_extends(&path).unwrap();
        assert_eq!(extends.len(), 1, "{extends:?}");
        assert_eq!(extends[0].pcr, 7);
        assert_eq!(extends[0].digests[0], (0x0004, vec![0x11; 20]));
        let sha256: String = extends[0]
            .sha256()
            .unwrap()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        // The digest of an empty dbx (UEFI_VARIABLE_DATA), as OVMF measures it.
        assert_eq!(
            sha256,
            "9f75b6823bff6af1024a4e2036719cdd548d3cbc2bf1de8e7ef4d0ed01f94bf9"
        );
    }
}
