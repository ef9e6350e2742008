//! The proxy listeners: accept connections within limits, speak HTTP/1.1 and HTTP/2, and
//! drain gracefully.
//!
//! A plain listener speaks HTTP/1.1 and, unless `h2c = false`, HTTP/2 with prior knowledge
//! (h2c); a TLS listener ([`crate::tls::ServerTls`]) speaks what ALPN agreed (`h2` or
//! `http/1.1`). Both feed one gateway, one connection cap and one drain. A request from a TLS
//! listener carries [`Scheme::Https`] as an extension (unless the listener shares keys with
//! plain HTTP), which the gateway's key reads: the scheme is the transport's, never what the
//! client wrote.
//!
//! Limits against abuse: a cap on concurrent connections (accepting pauses at the cap, leaving
//! further clients in the kernel's backlog), a bound on request head size and header count,
//! a header read timeout that also closes idle keep-alive connections (slowloris), a TLS
//! handshake timeout, and HTTP/2's limits set explicitly (see [`ServerLimits`]).

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use corral_core::Scheme;
use hyper::server::conn::{http1, http2};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use tokio::net::TcpListener;
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};

use crate::gateway::Gateway;
use crate::tls::ServerTls;

/// Connection limits of the proxy listeners.
#[derive(Debug, Clone)]
pub struct ServerLimits {
    pub max_connections: usize,
    /// Time allowed to receive a request head, and to wait idle for the next one.
    pub header_read_timeout: Duration,
    /// Largest request head (request line and headers), in bytes; also HTTP/2's
    /// `SETTINGS_MAX_HEADER_LIST_SIZE`, which bounds a header block however it is split into
    /// CONTINUATION frames (h2 stops reading a block at this size: the CONTINUATION flood).
    pub max_header_bytes: usize,
    /// Most header fields in one request.
    pub max_headers: usize,
    /// Accept HTTP/2 with prior knowledge (h2c) beside HTTP/1.1 on a plain listener.
    pub h2c: bool,
    /// HTTP/2 `SETTINGS_MAX_CONCURRENT_STREAMS`: requests in flight on one connection.
    pub h2_max_concurrent_streams: u32,
    /// Streams a client may open and reset before the server has accepted them, at once: the
    /// rapid-reset (CVE-2023-44487) bound; beyond it the connection is closed (GOAWAY).
    pub h2_max_pending_accept_reset_streams: usize,
    /// Streams the server may reset for a client's protocol errors before it closes the
    /// connection (a client provoking resets, the variant of rapid reset h2 0.4.4 bounds).
    pub h2_max_local_error_reset_streams: usize,
}

impl Default for ServerLimits {
    fn default() -> Self {
        ServerLimits {
            max_connections: 10_000,
            header_read_timeout: Duration::from_secs(10),
            max_header_bytes: 64 * 1024,
            max_headers: 100,
            h2c: true,
            h2_max_concurrent_streams: 128,
            h2_max_pending_accept_reset_streams: 20,
            h2_max_local_error_reset_streams: 256,
        }
    }
}

/// How a request arrived: over TLS or not, on which port. An extension on every request from a
/// TLS listener; the gateway's `X-Forwarded-Proto` and `-Port` say it (a request without it
/// came over the plain listener).
#[derive(Debug, Clone, Copy, Default)]
pub struct Transport {
    pub tls: bool,
    /// The listener's port (`None`: the configured plain port).
    pub port: Option<u16>,
}

impl Transport {
    pub fn of(extensions: &http::Extensions) -> Transport {
        extensions.get::<Transport>().copied().unwrap_or_default()
    }
}

/// One bound socket, plain or TLS.
pub struct Listener {
    tcp: TcpListener,
    tls: Option<Arc<ServerTls>>,
}

impl Listener {
    pub fn plain(tcp: TcpListener) -> Listener {
        Listener { tcp, tls: None }
    }

    pub fn tls(tcp: TcpListener, tls: Arc<ServerTls>) -> Listener {
        Listener {
            tcp,
            tls: Some(tls),
        }
    }
}

/// The HTTP side of every connection, shared by the listeners. HTTP/1.1 alone and HTTP/2
/// alone use hyper's own builders: hyper-util's `auto` builder, pinned to HTTP/1.1, does not
/// apply `max_buf_size` to the request head (measured: a 100 KB header passed a 64 KiB limit),
/// and hyper's `max_header_size` states the bound directly.
struct Protocols {
    /// A plain listener with h2c: HTTP/1.1, or HTTP/2 when the client opens with its preface.
    auto: auto::Builder<TokioExecutor>,
    /// TLS that agreed on `h2`.
    h2: http2::Builder<TokioExecutor>,
    /// TLS that agreed on `http/1.1` (or nothing), and a plain listener without h2c.
    http1: http1::Builder,
    h2c: bool,
}

fn http1_builder(limits: &ServerLimits, b: &mut http1::Builder) {
    b.timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(limits.max_header_bytes.max(8192))
        .max_header_size(limits.max_header_bytes)
        .max_headers(limits.max_headers)
        .keep_alive(true);
}

/// HTTP/2's limits, set explicitly rather than left to the library's defaults. A macro, not a
/// function, because hyper's `http2::Builder` and hyper-util's `auto` HTTP/2 builder are
/// different types with the same methods: one list of settings for both.
macro_rules! http2_limits {
    ($b:expr, $limits:expr) => {
        $b.timer(TokioTimer::new())
            .max_header_list_size($limits.max_header_bytes as u32)
            .max_concurrent_streams($limits.h2_max_concurrent_streams)
            .max_pending_accept_reset_streams($limits.h2_max_pending_accept_reset_streams)
            .max_local_error_reset_streams($limits.h2_max_local_error_reset_streams)
            .keep_alive_interval(Some(Duration::from_secs(30)))
            .keep_alive_timeout(Duration::from_secs(20))
    };
}

impl Protocols {
    fn new(limits: &ServerLimits) -> Protocols {
        let mut auto = auto::Builder::new(TokioExecutor::new());
        auto.http1()
            .timer(TokioTimer::new())
            .header_read_timeout(limits.header_read_timeout)
            .max_buf_size(limits.max_header_bytes.max(8192))
            .max_headers(limits.max_headers)
            .keep_alive(true);
        http2_limits!(auto.http2(), limits);
        let mut h2 = http2::Builder::new(TokioExecutor::new());
        http2_limits!(h2, limits);
        let mut http1 = http1::Builder::new();
        http1_builder(limits, &mut http1);
        Protocols {
            auto,
            h2,
            http1,
            h2c: limits.h2c,
        }
    }
}

/// Which protocol a connection speaks.
#[derive(Clone, Copy)]
enum Speak {
    /// Plain: HTTP/1.1, and h2c when enabled.
    Plain,
    H2,
    Http1,
}

/// Serves `gateway` on every listener until `shutdown` resolves, then stops accepting and
/// waits up to `grace` for open requests to finish.
pub async fn serve(
    listeners: Vec<Listener>,
    gateway: Arc<Gateway>,
    limits: ServerLimits,
    shutdown: impl Future<Output = ()>,
    grace: Duration,
) {
    let shared = Arc::new(Shared {
        protocols: Protocols::new(&limits),
        gateway,
        slots: Arc::new(Semaphore::new(limits.max_connections)),
    });
    let graceful = GracefulShutdown::new();
    let (stop, stopped) = watch::channel(false);
    let loops = listeners
        .into_iter()
        .map(|l| accept_loop(l, shared.clone(), &graceful, stopped.clone()));
    let signal = async {
        shutdown.await;
        let _ = stop.send(true);
    };
    tokio::join!(futures_util::future::join_all(loops), signal);
    tokio::select! {
        () = graceful.shutdown() => tracing::info!("all connections drained"),
        () = tokio::time::sleep(grace) => tracing::warn!("shutdown grace period over; closing open connections"),
    }
}

struct Shared {
    protocols: Protocols,
    gateway: Arc<Gateway>,
    slots: Arc<Semaphore>,
}

/// Accepts on one listener until `stopped` turns true; each connection runs in its own task.
async fn accept_loop(
    listener: Listener,
    shared: Arc<Shared>,
    graceful: &GracefulShutdown,
    mut stopped: watch::Receiver<bool>,
) {
    let stop = async move {
        let _ = stopped.wait_for(|s| *s).await;
    };
    let mut stop = std::pin::pin!(stop);
    loop {
        let permit = tokio::select! {
            p = shared.slots.clone().acquire_owned() => p.expect("semaphore never closes"),
            () = &mut stop => break,
        };
        let (stream, peer) = tokio::select! {
            r = listener.tcp.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut stop => break,
        };
        let _ = stream.set_nodelay(true);
        let watcher = graceful.watcher();
        let shared = shared.clone();
        let tls = listener.tls.clone();
        let port = listener.tcp.local_addr().ok().map(|a| a.port());
        tokio::spawn(async move {
            let metrics = shared.gateway.metrics().clone();
            metrics.connections.inc();
            match tls {
                None => {
                    let arrival = Arrival::default();
                    connection(&shared, Speak::Plain, watcher, stream, peer, arrival).await
                }
                Some(tls) => {
                    // The handshake runs here, holding the connection's slot, under its timeout.
                    if let Some((stream, h2)) = tls.accept(stream).await {
                        let arrival = Arrival {
                            scheme: tls.key_scheme().then_some(Scheme::Https),
                            transport: Some(Transport { tls: true, port }),
                        };
                        let speak = if h2 { Speak::H2 } else { Speak::Http1 };
                        connection(&shared, speak, watcher, stream, peer, arrival).await;
                    }
                }
            }
            metrics.connections.dec();
            drop::<OwnedSemaphorePermit>(permit);
        });
    }
}

/// What a connection's requests carry as extensions.
#[derive(Clone, Copy, Default)]
struct Arrival {
    /// The key's scheme (absent: http, or a TLS listener sharing plain HTTP's keys).
    scheme: Option<Scheme>,
    transport: Option<Transport>,
}

/// Serves one HTTP connection on `io` until it ends; its requests carry `arrival`.
async fn connection<I>(
    shared: &Shared,
    speak: Speak,
    watcher: Watcher,
    io: I,
    peer: SocketAddr,
    arrival: Arrival,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let gw = shared.gateway.clone();
    let svc = service_fn(move |mut req: http::Request<hyper::body::Incoming>| {
        let gw = gw.clone();
        if let Some(s) = arrival.scheme {
            req.extensions_mut().insert(s);
        }
        if let Some(t) = arrival.transport {
            req.extensions_mut().insert(t);
        }
        async move { Ok::<_, std::convert::Infallible>(gw.handle(req, peer).await) }
    });
    let p = &shared.protocols;
    let io = TokioIo::new(io);
    let result = match speak {
        Speak::Plain if p.h2c => {
            watcher
                .watch(p.auto.serve_connection(io, svc).into_owned())
                .await
        }
        Speak::Plain | Speak::Http1 => watcher
            .watch(p.http1.serve_connection(io, svc))
            .await
            .map_err(Into::into),
        Speak::H2 => watcher
            .watch(p.h2.serve_connection(io, svc))
            .await
            .map_err(Into::into),
    };
    if let Err(e) = result {
        tracing::debug!(%peer, error = %e, "connection ended with an error");
    }
}

/// Binds a listener, with a message that names the address on failure.
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket
        .bind(addr)
        .map_err(|e| std::io::Error::new(e.kind(), format!("cannot bind {addr}: {e}")))?;
    socket.listen(4096)
}
