//! Host ports for user-mode network forwards.
//!
//! QEMU binds forwarded ports itself, so the harness can only pick a port that was free a moment
//! ago. Another process may take it in between; QEMU then exits with "Could not set up host
//! forwarding rule", which surfaces as a launch-time exit error carrying QEMU's stderr.

use std::net::{Ipv4Addr, TcpListener};

use crate::error::{Error, Result};

/// A TCP port on 127.0.0.1 that was free when asked (bind to port 0, read it back, release it).
pub fn free_local_port() -> Result<u16> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).map_err(Error::FreePort)?;
    Ok(listener.local_addr().map_err(Error::FreePort)?.port())
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
