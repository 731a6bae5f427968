//! Host ports for user-mode network forwards.
//!
//! QEMU binds forwarded ports itself, so the harness can only pick a port that was free a moment
//! ago. Another process may take it in between; QEMU then exits with "Could not set up host
//! forwarding rule", which surfaces as a launch-time exit error carrying QEMU's stderr.

use std::io::{ErrorKind, Read};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use crate::error::{Error, Result};

/// A TCP port on 127.0.0.1 that was free when asked (bind to port 0, read it back, release it).
pub fn free_local_port() -> Result<u16> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).map_err(Error::FreePort)?;
    Ok(listener.local_addr().map_err(Error::FreePort)?.port())
}

/// What came back through a forwarded port within the wait.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ForwardAnswer {
    /// QEMU closed our connection: the guest answered its SYN with a reset, so a guest at the
    /// forward's address got the packet and could answer (nothing listens on that port).
    GuestRefused,
    /// The connection stayed open and silent: nobody at that address answered (or something
    /// there accepted and said nothing).
    Silent,
    /// The guest sent bytes: something listens and talks first.
    Data,
}

/// Connects to `127.0.0.1:host_port` and waits up to `wait` for what the guest does.
///
/// QEMU's user-mode stack accepts the host's connection at once and only then sends the SYN to
/// the guest; a guest kernel that has the address but no listener replies with RST, and QEMU then
/// closes our side. A guest without that address never answers, and our side stays open until
/// QEMU gives up over a minute later. So a quick close is proof the guest is reachable there.
pub fn forward_answer(host_port: u16, wait: Duration) -> std::io::Result<ForwardAnswer> {
    let mut stream = TcpStream::connect((Ipv4Addr::LOCALHOST, host_port))?;
    let deadline = Instant::now() + wait;
    let mut byte = [0u8; 1];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(ForwardAnswer::Silent);
        }
        stream.set_read_timeout(Some(left))?;
        return match stream.read(&mut byte) {
            Ok(0) => Ok(ForwardAnswer::GuestRefused),
            Ok(_) => Ok(ForwardAnswer::Data),
            Err(e) if e.kind() == ErrorKind::ConnectionReset => Ok(ForwardAnswer::GuestRefused),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                Ok(ForwardAnswer::Silent)
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => Err(e),
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_is_bindable() {
        let port = free_local_port().unwrap();
        assert_ne!(port, 0);
        TcpListener::bind((Ipv4Addr::LOCALHOST, port)).unwrap();
    }
}
