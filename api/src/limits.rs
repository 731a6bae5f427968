//! Every bound the server keeps, in one place (like tough's `Limits`).
//!
//! Only clients holding a certificate from the device's CA get past the TLS handshake, so the
//! HTTP/2 and gRPC limits guard against a buggy or compromised client, and the connection and
//! handshake limits against everyone else (see `admission.rs` for how they keep the admin's way
//! open). Memory in the worst case is about
//! `max_connections × max_calls_per_connection × max_message` for requests being decoded,
//! plus `stream_buffer` messages per open stream and `upload_buffer` chunks for the upload.

use std::time::Duration;

#[derive(Clone, Debug)]
pub struct Limits {
    /// Largest message decoded or encoded, in bytes; bigger is RESOURCE_EXHAUSTED.
    pub max_message: usize,
    /// Largest upload chunk, in bytes (a message carries a chunk and a few bytes of framing).
    pub max_chunk: usize,
    /// Largest bundle an Upload may announce.
    pub max_upload: u64,
    /// Largest machine config ApplyConfig takes (the daemon's own limit).
    pub max_config: usize,
    /// Longest service name, Fetch URL, and the like.
    pub max_name: usize,
    /// Longest recovery key Unlock passes to the device (systemd's are 71 bytes).
    pub max_recovery_key: usize,
    /// Time a call has until its response starts (for a unary call: its answer); after that it
    /// is DEADLINE_EXCEEDED. A stream's messages flow after this, without a deadline.
    pub call_deadline: Duration,
    /// An upload that sends nothing for this long is abandoned.
    pub upload_idle: Duration,
    /// Time a client has to finish the TLS handshake.
    pub handshake_timeout: Duration,
    /// TLS handshakes in progress at once; a new connection beyond this ends the oldest one.
    pub max_handshakes: usize,
    /// Connections past the handshake at once, admins included.
    pub max_connections: usize,
    /// Of `max_connections`, how many only an admin may take.
    pub admin_reserve: usize,
    /// Connections one certificate subject may hold at once.
    pub max_per_identity: usize,
    /// A connection with no call in flight for this long is closed.
    pub idle_timeout: Duration,
    /// Concurrent calls on one connection (HTTP/2 streams).
    pub max_calls_per_connection: u32,
    /// Logs and Events streams open at once, over all connections.
    pub max_streams: usize,
    /// Messages queued per server stream before the producer waits.
    pub stream_buffer: usize,
    /// Upload chunks queued between the network and the installer.
    pub upload_buffer: usize,
    /// Threads for device calls (streams that follow hold one each).
    pub device_threads: usize,
    /// After [`crate::Server::shutdown`]: how long calls in flight may take to finish.
    pub shutdown_grace: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_message: 1024 * 1024 + 1024,
            max_chunk: 1024 * 1024,
            max_upload: 8 * 1024 * 1024 * 1024,
            max_config: 64 * 1024,
            max_name: 2048,
            max_recovery_key: 256,
            call_deadline: Duration::from_secs(30),
            upload_idle: Duration::from_secs(60),
            handshake_timeout: Duration::from_secs(10),
            max_handshakes: 64,
            max_connections: 32,
            admin_reserve: 8,
            max_per_identity: 4,
            idle_timeout: Duration::from_secs(120),
            max_calls_per_connection: 16,
            max_streams: 16,
            stream_buffer: 64,
            upload_buffer: 8,
            device_threads: 32,
            shutdown_grace: Duration::from_secs(2),
        }
    }
}
