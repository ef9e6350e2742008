//! The peer client's connector: plain TCP, each connection counted while it is open, so the
//! number of peer connections a replica holds is visible (`corral_peer_connections`) and
//! bounded connections can be measured rather than assumed.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use http::Uri;
use hyper::rt::{Read, ReadBufCursor, Write};
use hyper_util::client::legacy::connect::{Connected, Connection, HttpConnector};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::metrics::Connections;

#[derive(Clone)]
pub struct CountingConnector {
    inner: HttpConnector,
    count: Connections,
}

impl CountingConnector {
    pub fn new(inner: HttpConnector, count: Connections) -> Self {
        CountingConnector { inner, count }
    }
}

/// A connection that counts itself out when dropped.
pub struct Counted {
    io: TokioIo<TcpStream>,
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
        let connecting = self.inner.call(uri);
        let count = self.count.clone();
        Box::pin(async move {
            let io = connecting.await.map_err(io::Error::other)?;
            count.opened();
            Ok(Counted { io, count })
        })
    }
}

impl Connection for Counted {
    fn connected(&self) -> Connected {
        self.io.connected()
    }
}

impl Read for Counted {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl Write for Counted {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}
