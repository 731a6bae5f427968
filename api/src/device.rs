//! What the daemon implements: the [`Device`] trait, one method per call.
//!
//! The daemon is made of synchronous threads, so the trait is synchronous: the server runs
//! every method on a thread of its own pool and never on the runtime, so a slow device call
//! cannot stall other clients. Methods that stream (logs, events) get a [`Sink`] to push into,
//! which blocks while the client is behind (the stream's buffer is bounded) and fails once the
//! client has gone; the upgrade reads the uploaded bundle through [`Upload`], a plain
//! [`std::io::Read`] fed by the network with the same back-pressure. Roles and limits are
//! checked before a method is called: an implementation only sees calls it should serve.

use std::io::{self, Read};

use tokio::sync::mpsc;
use tonic::{Code, Status};

use crate::proto;

/// The device behind the API. Errors are one line for the operator: name the thing and the fix.
pub trait Device: Send + Sync + 'static {
    fn version(&self) -> Result<proto::VersionResponse, DeviceError>;

    fn health(&self) -> Result<proto::HealthResponse, DeviceError>;

    fn slot_status(&self) -> Result<proto::SlotStatusResponse, DeviceError>;

    fn service_list(&self) -> Result<proto::ServiceListResponse, DeviceError>;

    /// `name` is non-empty and at most [`crate::Limits::max_name`] bytes; an unknown service is
    /// [`ErrorKind::NotFound`].
    fn service_restart(&self, name: &str) -> Result<proto::ServiceRestartResponse, DeviceError>;

    /// Sends the last `request.tail` lines, then, when `request.follow`, new lines until
    /// [`Sink::send`] fails. While waiting for a line, check [`Sink::is_closed`] at least every
    /// second, so a client that went away frees its thread. `request.source` is set.
    fn logs(
        &self,
        request: &proto::LogsRequest,
        sink: &Sink<proto::LogsResponse>,
    ) -> Result<(), DeviceError>;

    /// Installs a bundle into the other slot (and reboots into it when `reboot`). `progress`
    /// may be called as often as convenient; the server forwards what the client can take
    /// and fills in `received` for uploads. Never called twice at once, nor during a rollback.
    fn upgrade(
        &self,
        source: UpgradeSource,
        reboot: bool,
        progress: &mut dyn FnMut(proto::UpgradeProgress),
    ) -> Result<proto::UpgradeDone, DeviceError>;

    /// Marks the running slot bad and reboots into the other one, after returning. Never called
    /// during an upgrade.
    fn rollback(&self) -> Result<proto::RollbackResponse, DeviceError>;

    /// Reboots, after returning (the answer must reach the client first).
    fn reboot(&self) -> Result<(), DeviceError>;

    /// Powers off, after returning.
    fn shutdown(&self) -> Result<(), DeviceError>;

    /// `request.config` is at most [`crate::Limits::max_config`] bytes, `dry_run` and
    /// `try_timeout_s` are not both set, and `try_timeout_s` is at most 3600.
    fn apply_config(
        &self,
        request: &proto::ApplyConfigRequest,
    ) -> Result<proto::ApplyConfigResponse, DeviceError>;

    fn confirm_config(&self, generation: u64) -> Result<(), DeviceError>;

    /// Like [`Device::logs`], with events, always following.
    fn events(
        &self,
        request: &proto::EventsRequest,
        sink: &Sink<proto::EventsResponse>,
    ) -> Result<(), DeviceError>;

    /// The recovery key of the encrypted STATE and DATA, once: forget it before returning it,
    /// so that every later call fails with [`ErrorKind::FailedPrecondition`]. The server logs
    /// that the call was made and by whom, never the answer.
    ///
    /// The default is for a device whose disks are not encrypted.
    fn recovery_key(&self) -> Result<proto::RecoveryKeyResponse, DeviceError> {
        Err(DeviceError::failed_precondition(
            "this device keeps no recovery key (its disks are not encrypted)",
        ))
    }

    /// k3s's admin kubeconfig as the device has it. The server logs that the call was made and
    /// by whom, never the answer.
    ///
    /// The default is for a device that runs no Kubernetes.
    fn kubeconfig(&self) -> Result<proto::KubeconfigResponse, DeviceError> {
        Err(DeviceError::failed_precondition(
            "this device runs no Kubernetes (its machine config has no kubernetes section)",
        ))
    }

    /// In maintenance mode (the TPM refused to unseal the disk key): opens STATE and DATA with
    /// `recovery_key`, seals a new key to the current PCRs and lets the boot go on, after
    /// returning. Outside maintenance mode: [`ErrorKind::FailedPrecondition`]. A key that opens
    /// nothing: [`ErrorKind::InvalidArgument`].
    ///
    /// `recovery_key` is non-empty and at most [`crate::Limits::max_recovery_key`] bytes, as
    /// the client sent it (no whitespace trimmed). Never called twice at once. Keep it out of
    /// logs and error messages; the server also blanks it out of what it logs.
    ///
    /// The default is for a device that is never in maintenance mode.
    fn unlock(&self, recovery_key: &str) -> Result<proto::UnlockResponse, DeviceError> {
        let _ = recovery_key;
        Err(DeviceError::failed_precondition(
            "the device is not in maintenance mode: its disks are unlocked",
        ))
    }
}

/// A failed device call: the gRPC code it becomes, and a one-line message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct DeviceError {
    pub kind: ErrorKind,
    pub message: String,
}

/// The gRPC codes a device call may fail with (the API itself uses the others).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The request is wrong (a config that does not parse, a bundle that does not verify, a
    /// recovery key that opens nothing).
    InvalidArgument,
    /// No such service.
    NotFound,
    /// Not now: the device's state does not allow it (nothing to roll back to, no pending try).
    FailedPrecondition,
    /// Try again later (the device is starting or stopping).
    Unavailable,
    /// The device failed (an I/O error on the disk).
    Internal,
}

impl DeviceError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> DeviceError {
        DeviceError {
            kind,
            message: message.into(),
        }
    }

    pub fn invalid_argument(message: impl Into<String>) -> DeviceError {
        DeviceError::new(ErrorKind::InvalidArgument, message)
    }

    pub fn not_found(message: impl Into<String>) -> DeviceError {
        DeviceError::new(ErrorKind::NotFound, message)
    }

    pub fn failed_precondition(message: impl Into<String>) -> DeviceError {
        DeviceError::new(ErrorKind::FailedPrecondition, message)
    }

    pub fn unavailable(message: impl Into<String>) -> DeviceError {
        DeviceError::new(ErrorKind::Unavailable, message)
    }

    pub fn internal(message: impl Into<String>) -> DeviceError {
        DeviceError::new(ErrorKind::Internal, message)
    }
}

impl From<DeviceError> for Status {
    fn from(e: DeviceError) -> Status {
        let code = match e.kind {
            ErrorKind::InvalidArgument => Code::InvalidArgument,
            ErrorKind::NotFound => Code::NotFound,
            ErrorKind::FailedPrecondition => Code::FailedPrecondition,
            ErrorKind::Unavailable => Code::Unavailable,
            ErrorKind::Internal => Code::Internal,
        };
        Status::new(code, e.message)
    }
}

/// The client went away (it cancelled the stream, or the connection dropped).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the client closed the stream")]
pub struct Closed;

/// The device's end of a server stream. The buffer behind it is bounded
/// ([`crate::Limits::stream_buffer`]).
#[derive(Debug)]
pub struct Sink<T> {
    tx: mpsc::Sender<Result<T, Status>>,
}

impl<T> Sink<T> {
    pub(crate) fn new(tx: mpsc::Sender<Result<T, Status>>) -> Sink<T> {
        Sink { tx }
    }

    /// Sends one message, waiting while the client is behind. Call it from the device's
    /// thread (it blocks), never from async code.
    pub fn send(&self, message: T) -> Result<(), Closed> {
        self.tx.blocking_send(Ok(message)).map_err(|_| Closed)
    }

    /// True once the client has gone: stop producing.
    pub fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }

    /// Ends the stream with an error (what a device method's `Err` does too).
    pub(crate) fn fail(&self, status: Status) {
        let _ = self.tx.blocking_send(Err(status));
    }
}

/// Where a bundle comes from.
#[derive(Debug)]
pub enum UpgradeSource {
    /// The client is sending it in the call.
    Upload(Upload),
    /// The device fetches it from an `https://` URL (checked to start so).
    Fetch { url: String },
    /// The device pulls it from an OCI registry: the bundle artifact `reference` names
    /// (`oci://…`, checked to parse).
    Registry {
        reference: crate::registry::Reference,
    },
}

/// An uploaded bundle as it arrives, exactly [`Upload::size`] bytes. A read fails when the
/// client stops sending, sends more than it announced, or goes away; a read that would block
/// waits for the network, so read it from the device's thread.
#[derive(Debug)]
pub struct Upload {
    size: u64,
    read: u64,
    rx: mpsc::Receiver<io::Result<Vec<u8>>>,
    chunk: Vec<u8>,
    pos: usize,
}

impl Upload {
    pub(crate) fn new(size: u64, rx: mpsc::Receiver<io::Result<Vec<u8>>>) -> Upload {
        Upload {
            size,
            read: 0,
            rx,
            chunk: Vec::new(),
            pos: 0,
        }
    }

    /// The bundle's length, as the client announced it.
    pub fn size(&self) -> u64 {
        self.size
    }
}

impl Read for Upload {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.pos == self.chunk.len() {
            match self.rx.blocking_recv() {
                Some(Ok(chunk)) => {
                    self.chunk = chunk;
                    self.pos = 0;
                }
                Some(Err(e)) => return Err(e),
                None if self.read == self.size => return Ok(0),
                None => {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        format!(
                            "the upload ended after {} of the {} bytes it announced",
                            self.read, self.size
                        ),
                    ))
                }
            }
        }
        let n = buf.len().min(self.chunk.len() - self.pos);
        buf[..n].copy_from_slice(&self.chunk[self.pos..self.pos + n]);
        self.pos += n;
        self.read += n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upload_reads_chunks_in_order_and_checks_the_length() {
        let (tx, rx) = mpsc::channel(4);
        tx.blocking_send(Ok(b"hello ".to_vec())).unwrap();
        tx.blocking_send(Ok(Vec::new())).unwrap();
        tx.blocking_send(Ok(b"world".to_vec())).unwrap();
        drop(tx);
        let mut up = Upload::new(11, rx);
        let mut all = String::new();
        up.read_to_string(&mut all).unwrap();
        assert_eq!(all, "hello world");

        let (tx, rx) = mpsc::channel(4);
        tx.blocking_send(Ok(b"short".to_vec())).unwrap();
        drop(tx);
        let e = Upload::new(11, rx)
            .read_to_end(&mut Vec::new())
            .unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof);
        assert!(e.to_string().contains("after 5 of the 11 bytes"), "{e}");
    }

    #[test]
    fn device_errors_keep_their_code_and_message() {
        let s = Status::from(DeviceError::not_found("no service \"x\": see ServiceList"));
        assert_eq!(s.code(), Code::NotFound);
        assert_eq!(s.message(), "no service \"x\": see ServiceList");
    }
}
