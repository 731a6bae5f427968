//! The server: one thread, a current-thread tokio runtime, mutual TLS, then HTTP/2.
//!
//! Each accepted connection is one task: the TLS handshake (bounded in time, and connections
//! bounded in number), the [`Caller`] read once from the verified client certificate, then
//! HTTP/2 (hyper, HTTP/2 only) serving the generated service behind the [`Policy`] gate for that
//! caller. There is no other listener and no HTTP/1: a client that does not complete mutual
//! TLS never reaches HTTP/2 at all. tonic provides the gRPC codec and the generated service;
//! its own transport is not used, which keeps HTTP/1 out of the device binary.

use std::net::SocketAddr;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;

use crate::admission::{Activity, Admission, Pending, SpokeMarker};
use crate::policy::Policy;
use crate::proto::device_service_server::DeviceServiceServer;
use crate::service::Api;
use crate::{Caller, Device, Error, Limits, TlsConfig};

/// Where the server's log lines go (cairnd prefixes and prints them): denied calls, calls that
/// change the device and who made them, refused connections.
pub type Log = Arc<dyn Fn(&str) + Send + Sync>;

/// HTTP/2 pings find clients that vanished without closing (a cable pulled mid-stream).
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);
/// Request headers per call; gRPC sends a few small ones.
const MAX_HEADERS: u32 = 16 * 1024;

#[derive(Clone)]
pub struct Options {
    pub limits: Limits,
    pub log: Log,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            limits: Limits::default(),
            log: Arc::new(|line| eprintln!("api: {line}")),
        }
    }
}

/// A running server. Dropping it stops it too.
pub struct Server {
    addr: SocketAddr,
    stop: watch::Sender<bool>,
    thread: Option<JoinHandle<Result<(), Error>>>,
}

/// Connections the kernel completes and queues until the server accepts them. std's `bind` asks
/// for 128, which a peer opening sockets in a loop fills within a pause of a few milliseconds;
/// after that the kernel drops new SYNs, and the admin's connect waits for TCP's one-second
/// retransmit. The kernel caps it at `net.core.somaxconn` (4096 by default).
const BACKLOG: i32 = 4096;

/// Serves the API on `listener` in a thread of its own until [`Server::shutdown`].
pub fn serve(
    listener: std::net::TcpListener,
    tls: &TlsConfig,
    device: Arc<dyn Device>,
    options: Options,
) -> Result<Server, Error> {
    let acceptor = TlsAcceptor::from(tls.server_config()?);
    let addr = listener.local_addr().map_err(Error::Listener)?;
    listener.set_nonblocking(true).map_err(Error::Listener)?;
    // listen(2) again on a listening socket only sets its backlog.
    socket2::SockRef::from(&listener)
        .listen(BACKLOG)
        .map_err(Error::Listener)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .max_blocking_threads(options.limits.device_threads)
        .thread_name("cairn-api-call")
        .build()
        .map_err(Error::Runtime)?;
    let (stop, stopped) = watch::channel(false);
    let thread = std::thread::Builder::new()
        .name("cairn-api".into())
        .spawn(move || {
            let result = runtime.block_on(run(listener, acceptor, device, options, stopped));
            // Device calls still running (a log stream that follows) see their sink close.
            runtime.shutdown_timeout(Duration::from_secs(1));
            result
        })
        .map_err(Error::Runtime)?;
    Ok(Server {
        addr,
        stop,
        thread: Some(thread),
    })
}

impl Server {
    /// The address it listens on (useful after binding port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting, gives calls in flight [`Limits::shutdown_grace`], then ends every
    /// connection and stream.
    pub fn shutdown(mut self) -> Result<(), Error> {
        self.stop_and_join()
    }

    fn stop_and_join(&mut self) -> Result<(), Error> {
        self.stop.send_replace(true);
        match self.thread.take() {
            Some(thread) => thread.join().map_err(|_| Error::Panicked)?,
            None => Ok(()),
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.stop_and_join();
    }
}

async fn run(
    listener: std::net::TcpListener,
    acceptor: TlsAcceptor,
    device: Arc<dyn Device>,
    options: Options,
    mut stopped: watch::Receiver<bool>,
) -> Result<(), Error> {
    let listener = TcpListener::from_std(listener).map_err(Error::Listener)?;
    let Options { limits, log } = options;
    let api = DeviceServiceServer::new(Api::new(device, limits.clone(), log.clone()))
        .max_decoding_message_size(limits.max_message)
        .max_encoding_message_size(limits.max_message);
    let admission = Admission::new(&limits);
    let mut connections = JoinSet::new();
    loop {
        let (tcp, addr) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors and the like: do not spin.
                    log(&format!("accepting a connection failed: {e}"));
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = stop_requested(&mut stopped) => break,
            // Reap finished connections as they go, so the set stays as small as what is open.
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
        };
        let connection = Connection {
            acceptor: acceptor.clone(),
            api: api.clone(),
            limits: limits.clone(),
            log: log.clone(),
            stopped: stopped.clone(),
            pending: admission.begin(),
            admission: admission.clone(),
        };
        connections.spawn(connection.serve(tcp, addr));
        // Let the new connection read what its peer already sent before the next accept: a
        // peer that is speaking then holds its handshake place ahead of sockets that are not
        // (see crate::admission), however fast new sockets arrive.
        tokio::task::yield_now().await;
    }
    // Stop accepting at once; calls in flight get the grace period. A stream that follows
    // never ends by itself, so what is left after it is dropped with the runtime.
    drop(listener);
    let drain = async { while connections.join_next().await.is_some() {} };
    let _ = tokio::time::timeout(limits.shutdown_grace, drain).await;
    Ok(())
}

/// Returns once [`Server::shutdown`] has been called (or the handle dropped).
async fn stop_requested(stopped: &mut watch::Receiver<bool>) {
    // The guard `wait_for` returns is not Send: drop it here, before any other await.
    let _ = stopped.wait_for(|stop| *stop).await.map(|_| ());
}

/// One accepted TCP connection: TLS handshake, then HTTP/2 until either side ends it.
struct Connection {
    acceptor: TlsAcceptor,
    api: DeviceServiceServer<Api>,
    limits: Limits,
    log: Log,
    stopped: watch::Receiver<bool>,
    /// The handshake's place, until the connection is admitted.
    pending: Pending,
    admission: Arc<Admission>,
}

impl Connection {
    async fn serve(mut self, tcp: TcpStream, addr: SocketAddr) {
        let _ = tcp.set_nodelay(true);
        let tcp = Heard {
            inner: tcp,
            marker: Some(self.pending.marker()),
        };
        let handshake =
            tokio::time::timeout(self.limits.handshake_timeout, self.acceptor.accept(tcp));
        let tls = tokio::select! {
            done = handshake => match done {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => return (self.log)(&format!("refused a connection from {addr}: {e}")),
                Err(_) => {
                    return (self.log)(&format!(
                        "refused a connection from {addr}: no TLS handshake within {} s",
                        self.limits.handshake_timeout.as_secs()
                    ))
                }
            },
            // A newer connection took the place; ended quietly, as a flood would flood the log.
            _ = &mut self.pending.evicted => return,
        };
        // The verifier demands a certificate, so there is one.
        let Some(leaf) = tls.get_ref().1.peer_certificates().and_then(|c| c.first()) else {
            return (self.log)(&format!(
                "refused a connection from {addr}: no client certificate"
            ));
        };
        let caller = Caller::from_certificate(leaf, addr);
        let admitted = match self.admission.admit(&caller) {
            Ok(admitted) => admitted,
            Err(reason) => {
                (self.log)(&format!("refused a connection from {caller}: {reason}"));
                return self.refuse(tls, reason).await;
            }
        };
        drop(self.pending);

        let activity = Activity::new();
        let service = Policy::new(
            self.api,
            caller,
            &self.limits,
            self.log.clone(),
            activity.clone(),
        );
        let http2 = http2_builder(&self.limits);
        let connection =
            http2.serve_connection(TokioIo::new(tls), TowerToHyperService::new(service));
        tokio::pin!(connection);
        let idle_timeout = self.limits.idle_timeout;
        let mut tick = tokio::time::interval((idle_timeout / 4).max(Duration::from_millis(50)));
        loop {
            tokio::select! {
                // A connection that breaks is the client's business; the calls on it have
                // already reported what happened to them.
                _ = connection.as_mut() => break,
                () = stop_requested(&mut self.stopped) => {
                    connection.as_mut().graceful_shutdown();
                    let _ = connection.await;
                    break;
                }
                _ = tick.tick() => {
                    if activity.idle_since().is_some_and(|since| since.elapsed() >= idle_timeout) {
                        // GOAWAY: the client sees the connection end and reconnects when it
                        // next calls.
                        connection.as_mut().graceful_shutdown();
                        let _ = tokio::time::timeout(Duration::from_secs(5), connection).await;
                        break;
                    }
                }
            }
        }
        drop(admitted);
    }

    /// Answers every call on a connection that was not admitted with RESOURCE_EXHAUSTED and
    /// `reason`, for a few seconds, so the client learns why. The connection keeps its
    /// handshake place meanwhile, so refused connections stay bounded in number.
    async fn refuse(mut self, tls: tokio_rustls::server::TlsStream<Heard>, reason: String) {
        let refusal = Refusal(Arc::from(format!(
            "the device refused this connection: {reason}"
        )));
        self.pending.refused();
        let http2 = http2_builder(&self.limits);
        let connection =
            http2.serve_connection(TokioIo::new(tls), TowerToHyperService::new(refusal));
        tokio::select! {
            _ = tokio::time::timeout(REFUSAL_TIME, connection) => {}
            _ = &mut self.pending.evicted => {}
            () = stop_requested(&mut self.stopped) => {}
        }
    }
}

/// A connection's socket that tells its handshake place when the first bytes arrive.
struct Heard {
    inner: TcpStream,
    marker: Option<SpokeMarker>,
}

impl tokio::io::AsyncRead for Heard {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let poll = std::pin::Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            if let Some(marker) = self.marker.take() {
                marker.spoke();
            }
        }
        poll
    }
}

impl tokio::io::AsyncWrite for Heard {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// How long a refused connection is answered before it is closed.
const REFUSAL_TIME: Duration = Duration::from_secs(3);

fn http2_builder(limits: &Limits) -> hyper::server::conn::http2::Builder<TokioExecutor> {
    let mut http2 = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    http2
        .timer(TokioTimer::new())
        .max_concurrent_streams(limits.max_calls_per_connection)
        .max_header_list_size(MAX_HEADERS)
        .keep_alive_interval(KEEPALIVE_INTERVAL)
        .keep_alive_timeout(KEEPALIVE_TIMEOUT);
    http2
}

/// The service a refused connection gets: every call fails with the reason.
#[derive(Clone)]
struct Refusal(Arc<str>);

impl<B> tonic::codegen::Service<tonic::codegen::http::Request<B>> for Refusal {
    type Response = tonic::codegen::http::Response<tonic::body::Body>;
    type Error = std::convert::Infallible;
    type Future = std::future::Ready<Result<Self::Response, Self::Error>>;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: tonic::codegen::http::Request<B>) -> Self::Future {
        std::future::ready(Ok(
            tonic::Status::resource_exhausted(self.0.to_string()).into_http()
        ))
    }
}
