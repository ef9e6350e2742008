//! The peer client's connector: TCP, then TLS when `[cluster] tls` is set, each connection
//! counted while it is open, so the number of peer connections a replica holds is visible
//! (`corral_peer_connections`) and bounded connections can be measured rather than assumed.
//!
//! Over TLS the peer's certificate is verified against the configured roots under
//! [`PeerTls::server_name`] (else the peer's IP address, which the certificate must then
//! name); a failed handshake is counted in `corral_peer_tls_failures_total{reason}` and the
//! delivery fails like any connect error (it is retried). TLS adds confidentiality and peer
//! authentication; every message is still signed with the cluster secret.
//!
//! The rustls config is read from a [`watch::Receiver`] at each connect, so whoever owns the
//! sender (the binary reloads `[cluster] tls`'s files when they change) swaps it for new
//! connections, while pooled connections keep the config they were made with.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::Uri;
use hyper::rt::{Read, ReadBufCursor, Write};
use hyper_util::client::legacy::connect::{Connected, Connection, HttpConnector};
use hyper_util::rt::TokioIo;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio_rustls::client::TlsStream;

use crate::metrics::{Connections, ReasonLabel};

/// How peers are called over TLS: a verified rustls client config and the name to verify.
#[derive(Clone, Debug)]
pub struct PeerTls {
    /// Roots (a CA file or the system's) and, optionally, a client certificate: the value
    /// now, read at each new connection.
    pub config: watch::Receiver<Arc<rustls::ClientConfig>>,
    /// Sent as SNI and verified; `None`: the peer's IP address.
    pub server_name: Option<ServerName<'static>>,
    /// Names a failed handshake for the `reason` label (the binary passes the same
    /// classification upstream TLS errors get, so a reason means one thing everywhere).
    pub classify: fn(&io::Error) -> &'static str,
}

#[derive(Clone)]
pub struct CountingConnector {
    inner: HttpConnector,
    count: Connections,
    tls: Option<PeerTls>,
    tls_failures: Family<ReasonLabel, Counter>,
}

impl CountingConnector {
    pub fn new(
        mut inner: HttpConnector,
        count: Connections,
        tls: Option<PeerTls>,
        tls_failures: Family<ReasonLabel, Counter>,
    ) -> Self {
        // The URI says https when TLS is on; the TCP connector must not refuse it.
        inner.enforce_http(false);
        CountingConnector {
            inner,
            count,
            tls,
            tls_failures,
        }
    }
}

enum PeerIo {
    Plain(TokioIo<TcpStream>),
    Tls(Box<TokioIo<TlsStream<TcpStream>>>),
}

/// A connection that counts itself out when dropped.
pub struct Counted {
    io: PeerIo,
    count: Connections,
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.count.closed();
    }
}

type Connecting = Pin<Box<dyn Future<Output = Result<Counted, io::Error>> + Send>>;

impl tower_service::Service<Uri> for CountingConnector {
    type Response = Counted;
    type Error = io::Error;
    type Future = Connecting;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), io::Error>> {
        self.inner.poll_ready(cx).map_err(io::Error::other)
    }

    fn call(&mut self, uri: Uri) -> Connecting {
        let host = uri
            .host()
            .unwrap_or("")
            .trim_matches(['[', ']'])
            .to_string();
        let connecting = self.inner.call(uri);
        let count = self.count.clone();
        let tls = self.tls.clone();
        let failures = self.tls_failures.clone();
        Box::pin(async move {
            let tcp = connecting.await.map_err(io::Error::other)?;
            let io = match tls {
                None => PeerIo::Plain(tcp),
                Some(settings) => {
                    // The config of this moment: a reload applies to the next connection.
                    let config = settings.config.borrow().clone();
                    let connector = tokio_rustls::TlsConnector::from(config);
                    let name = match &settings.server_name {
                        Some(n) => n.clone(),
                        None => ServerName::try_from(host)
                            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?,
                    };
                    match connector.connect(name, tcp.into_inner()).await {
                        Ok(s) => PeerIo::Tls(Box::new(TokioIo::new(s))),
                        Err(e) => {
                            let reason = (settings.classify)(&e);
                            failures.get_or_create(&ReasonLabel { reason }).inc();
                            return Err(e);
                        }
                    }
                }
            };
            count.opened();
            Ok(Counted { io, count })
        })
    }
}

impl Connection for Counted {
    fn connected(&self) -> Connected {
        match &self.io {
            PeerIo::Plain(io) => io.connected(),
            PeerIo::Tls(_) => Connected::new(),
        }
    }
}

impl Read for Counted {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        match &mut self.io {
            PeerIo::Plain(io) => Pin::new(io).poll_read(cx, buf),
            PeerIo::Tls(io) => Pin::new(io.as_mut()).poll_read(cx, buf),
        }
    }
}

impl Write for Counted {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match &mut self.io {
            PeerIo::Plain(io) => Pin::new(io).poll_write(cx, buf),
            PeerIo::Tls(io) => Pin::new(io.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.io {
            PeerIo::Plain(io) => Pin::new(io).poll_flush(cx),
            PeerIo::Tls(io) => Pin::new(io.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.io {
            PeerIo::Plain(io) => Pin::new(io).poll_shutdown(cx),
            PeerIo::Tls(io) => Pin::new(io.as_mut()).poll_shutdown(cx),
        }
    }
}
