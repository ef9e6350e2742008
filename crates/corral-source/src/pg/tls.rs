//! TLS to PostgreSQL: the `SSLRequest` exchange on a fresh socket, then rustls over it.
//!
//! PostgreSQL does not listen for TLS on its own port: the client asks (`SSLRequest`) and the
//! server answers one byte, `S` (go ahead) or `N` (not here). A source configured for TLS
//! that hears `N` fails rather than carry on in clear, and the certificate is always verified
//! by the rustls config the binary built (`sslmode` in `docs/sources.md`): there is no
//! unverified mode.

use std::fmt;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use super::PgError;

/// The `SSLRequest` message: its length (8) and the request code 80877103.
const SSL_REQUEST: [u8; 8] = [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f];

/// How to speak TLS to the database: a verifying client config and the name to verify.
#[derive(Clone)]
pub struct PgTls {
    pub config: Arc<rustls::ClientConfig>,
    pub server_name: ServerName<'static>,
}

impl fmt::Debug for PgTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgTls")
            .field("server_name", &self.server_name)
            .finish_non_exhaustive()
    }
}

impl PartialEq for PgTls {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.config, &other.config) && self.server_name == other.server_name
    }
}

impl Eq for PgTls {}

/// The session's socket, in clear or under TLS.
pub enum PgStream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl PgStream {
    /// True when the session runs over TLS.
    pub fn is_tls(&self) -> bool {
        matches!(self, PgStream::Tls(_))
    }
}

/// Asks for TLS on `tcp` and completes the handshake; `None`: the session stays in clear.
pub async fn negotiate(mut tcp: TcpStream, tls: Option<&PgTls>) -> Result<PgStream, PgError> {
    let Some(tls) = tls else {
        return Ok(PgStream::Plain(tcp));
    };
    tcp.write_all(&SSL_REQUEST).await?;
    let mut answer = [0u8; 1];
    tcp.read_exact(&mut answer).await?;
    match answer[0] {
        b'S' => {}
        b'N' => {
            return Err(PgError::Tls(
                "the server does not accept TLS connections (ssl = off); sslmode asks for TLS"
                    .into(),
            ))
        }
        other => {
            return Err(PgError::Protocol(format!(
                "answer {:?} to SSLRequest",
                other as char
            )))
        }
    }
    let connector = tokio_rustls::TlsConnector::from(tls.config.clone());
    let stream = connector
        .connect(tls.server_name.clone(), tcp)
        .await
        .map_err(|e| PgError::Tls(format!("handshake: {e}")))?;
    Ok(PgStream::Tls(Box::new(stream)))
}

impl AsyncRead for PgStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            PgStream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            PgStream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for PgStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            PgStream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            PgStream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            PgStream::Plain(s) => Pin::new(s).poll_flush(cx),
            PgStream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            PgStream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            PgStream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}
