//! Making and using upstream connections: TCP, TLS on top for an `https` upstream (SNI and
//! ALPN from its [`UpstreamTls`] and `protocol`), then an HTTP/1.1 or h2 handshake whose
//! connection task is the only task the connection ever has.
//!
//! [`Connector::send`] takes a connection from the endpoint's [`Idle`] stack (or makes one) and
//! sends one request on it; the caller gets the connection back as a [`Lease`] that goes back
//! to the stack when the response body has been read to its end.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use http::uri::Scheme;
use http::{Request, Response, Uri, Version};
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper::rt::{Read, Write};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpStream;

use super::idle::{Lease, Sender};
use super::{error_chain, EndpointState, Keepalive, Protocol, UpstreamConfig};
use crate::body::Body;
use crate::tls::UpstreamTls;
use crate::upstream::UpstreamError;

/// How an upstream's connections are made.
pub(crate) struct Connector {
    connect_timeout: Duration,
    tls: Option<UpstreamTls>,
    protocol: Protocol,
    pub(super) keepalive: Keepalive,
}

impl Connector {
    pub(super) fn new(config: &UpstreamConfig) -> Connector {
        Connector {
            connect_timeout: config.timeouts.connect,
            tls: config.tls.clone(),
            protocol: config.protocol,
            keepalive: config.keepalive,
        }
    }

    /// Sends `req` (an origin-form URI) to `ep`, on an idle connection when there is one. A
    /// pooled connection that turns out closed before the request went out is replaced by a
    /// fresh one; a request that was sent is never sent again here (that is `retry`'s call).
    pub(super) async fn send(
        &self,
        ep: &EndpointState,
        mut req: Request<Body>,
    ) -> Result<(Response<Incoming>, Lease), UpstreamError> {
        loop {
            let mut lease = self.lease(ep).await?;
            let sent = match &mut lease.send {
                Sender::H1(s) => {
                    *req.version_mut() = Version::HTTP_11;
                    s.try_send_request(req).await
                }
                Sender::H2(s) => {
                    *req.version_mut() = Version::HTTP_2;
                    *req.uri_mut() = absolute(self.scheme(), ep, req.uri());
                    s.try_send_request(req).await
                }
            };
            match sent {
                Ok(resp) => return Ok((resp, lease)),
                Err(mut e) => match e.take_message() {
                    Some(back) if lease.reused => {
                        if matches!(lease.send, Sender::H2(_)) {
                            ep.idle.drop_h2();
                        }
                        req = back;
                    }
                    // TLS 1.3 reports a refused client certificate only on the first read.
                    _ => {
                        return Err(match crate::tls::classify_upstream_error(e.error()) {
                            Some(failure) => UpstreamError::Tls(failure),
                            None => UpstreamError::Protocol(error_chain(e.error())),
                        })
                    }
                },
            }
        }
    }

    fn scheme(&self) -> Scheme {
        if self.tls.is_some() {
            Scheme::HTTPS
        } else {
            Scheme::HTTP
        }
    }

    /// A connection for one request: the shared h2 one, else the newest idle HTTP/1.1 one
    /// that is ready, else a new one.
    async fn lease(&self, ep: &EndpointState) -> Result<Lease, UpstreamError> {
        let idle = &ep.idle;
        let ka = self.keepalive;
        if let Some((send, served)) = idle.shared_h2(&ka) {
            return Ok(Lease::new(Sender::H2(send), served, true, idle, ka));
        }
        while let Some((mut send, served)) = idle.take_h1(&ka) {
            // Ready at once unless its connection task has not yet seen the last body end.
            if send.ready().await.is_ok() {
                return Ok(Lease::new(Sender::H1(send), served + 1, true, idle, ka));
            }
        }
        let _gate = if self.protocol == Protocol::H2 || idle.speaks_h2.load(Ordering::Relaxed) {
            let gate = idle.h2_connect.lock().await;
            // Someone else connected while this request waited.
            if let Some((send, served)) = idle.shared_h2(&ka) {
                return Ok(Lease::new(Sender::H2(send), served, true, idle, ka));
            }
            Some(gate)
        } else {
            None
        };
        let send = self.connect(ep.addr).await?;
        if let Sender::H2(s) = &send {
            idle.share_h2(s);
        }
        Ok(Lease::new(send, 1, false, idle, ka))
    }

    /// A new connection to `addr`.
    async fn connect(&self, addr: SocketAddr) -> Result<Sender, UpstreamError> {
        let tcp = match tokio::time::timeout(self.connect_timeout, TcpStream::connect(addr)).await {
            Err(_) => {
                return Err(UpstreamError::Connect(format!(
                    "{addr}: no connection within {:?}",
                    self.connect_timeout
                )))
            }
            Ok(Err(e)) => return Err(UpstreamError::Connect(format!("{addr}: {e}"))),
            Ok(Ok(tcp)) => tcp,
        };
        // Best effort: a socket without them still works.
        let _ = tcp.set_nodelay(true);
        let keepalive = socket2::TcpKeepalive::new().with_time(Duration::from_secs(60));
        let _ = socket2::SockRef::from(&tcp).set_tcp_keepalive(&keepalive);
        let Some(tls) = &self.tls else {
            return handshake(TokioIo::new(tcp), self.protocol == Protocol::H2).await;
        };
        // Read at each connection, not captured once: the files may have been reloaded.
        let mut config = rustls::ClientConfig::clone(&tls.config.borrow());
        config.alpn_protocols = match self.protocol {
            Protocol::H2 => vec![b"h2".to_vec()],
            Protocol::Auto => vec![b"h2".to_vec(), b"http/1.1".to_vec()],
            Protocol::Http1 => vec![b"http/1.1".to_vec()],
        };
        let stream = tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(tls.server_name.clone(), tcp)
            .await
            .map_err(|e| match crate::tls::classify_upstream_error(&e) {
                Some(failure) => UpstreamError::Tls(failure),
                None => UpstreamError::Connect(format!("{addr}: TLS: {e}")),
            })?;
        let h2 = self.protocol == Protocol::H2 || stream.get_ref().1.alpn_protocol() == Some(b"h2");
        handshake(TokioIo::new(stream), h2).await
    }
}

/// The HTTP handshake on a connected stream; spawns the connection's task.
async fn handshake<T>(io: T, h2: bool) -> Result<Sender, UpstreamError>
where
    T: Read + Write + Unpin + Send + 'static,
{
    let failed = |e: hyper::Error| UpstreamError::Connect(error_chain(&e));
    if h2 {
        let (send, conn) = http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .keep_alive_interval(Duration::from_secs(30))
            .keep_alive_timeout(Duration::from_secs(20))
            .handshake(io)
            .await
            .map_err(failed)?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "upstream h2 connection ended");
            }
        });
        return Ok(Sender::H2(send));
    }
    let (send, conn) = http1::handshake(io).await.map_err(failed)?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, "upstream connection ended");
        }
    });
    Ok(Sender::H1(send))
}

/// `uri` (origin-form) made absolute for h2's `:scheme` and `:authority`.
fn absolute(scheme: Scheme, ep: &EndpointState, uri: &Uri) -> Uri {
    let mut parts = http::uri::Parts::default();
    parts.scheme = Some(scheme);
    parts.authority = Some(ep.authority.clone());
    parts.path_and_query = uri
        .path_and_query()
        .cloned()
        .or_else(|| Some(http::uri::PathAndQuery::from_static("/")));
    Uri::from_parts(parts).unwrap_or_else(|_| uri.clone())
}
