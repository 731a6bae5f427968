//! Ways to reach a TPM: its resource-managed character device, or a simulator's TCP port.
//!
//! Both carry raw TPM 2.0 command and response buffers; one command is in flight at a time.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::path::Path;
use std::time::Duration;

use zeroize::Zeroizing;

use crate::marshal::HEADER_LEN;
use crate::{Error, Result};

/// The kernel's resource-managed TPM device: it flushes what a client leaves loaded.
pub const DEFAULT_DEVICE: &str = "/dev/tpmrm0";

/// The largest response accepted; TPMs answer within their 4 KiB I/O buffer.
pub const MAX_RESPONSE: usize = 8192;

/// How long a simulator may take to answer (RSA key generation is the slow case).
const TCP_TIMEOUT: Duration = Duration::from_secs(60);

/// Sends one command buffer and returns the whole response buffer.
pub trait Transport: Send {
    fn transact(&mut self, command: &[u8]) -> io::Result<Zeroizing<Vec<u8>>>;
}

/// A TPM character device (`/dev/tpmrm0`): a write sends a command, one read returns the
/// whole response.
pub struct Device(File);

impl Device {
    pub fn open(path: &Path) -> Result<Self> {
        OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map(Device)
            .map_err(|source| Error::Open {
                path: path.to_owned(),
                source,
            })
    }
}

impl Transport for Device {
    fn transact(&mut self, command: &[u8]) -> io::Result<Zeroizing<Vec<u8>>> {
        self.0.write_all(command)?;
        let mut buf = Zeroizing::new(vec![0; MAX_RESPONSE]);
        let n = self.0.read(&mut buf)?;
        buf.truncate(n);
        Ok(buf)
    }
}

/// swtpm's TCP command port (`swtpm socket --server type=tcp,port=P`): raw command and
/// response buffers on a stream, each response framed by the size in its header.
pub struct Tcp(TcpStream);

impl Tcp {
    pub fn connect(addr: impl ToSocketAddrs + std::fmt::Display) -> Result<Self> {
        let connect = || -> io::Result<TcpStream> {
            let stream = TcpStream::connect(&addr)?;
            stream.set_read_timeout(Some(TCP_TIMEOUT))?;
            stream.set_write_timeout(Some(TCP_TIMEOUT))?;
            stream.set_nodelay(true)?;
            Ok(stream)
        };
        connect().map(Tcp).map_err(|source| Error::Connect {
            addr: addr.to_string(),
            source,
        })
    }
}

impl Transport for Tcp {
    fn transact(&mut self, command: &[u8]) -> io::Result<Zeroizing<Vec<u8>>> {
        self.0.write_all(command)?;
        let mut buf = Zeroizing::new(vec![0; HEADER_LEN]);
        self.0.read_exact(&mut buf)?;
        let size = u32::from_be_bytes([buf[2], buf[3], buf[4], buf[5]]) as usize;
        if !(HEADER_LEN..=MAX_RESPONSE).contains(&size) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("response size {size} outside {HEADER_LEN}..={MAX_RESPONSE}"),
            ));
        }
        buf.resize(size, 0);
        self.0.read_exact(&mut buf[HEADER_LEN..])?;
        Ok(buf)
    }
}
