//! TLS to PostgreSQL: the `SSLRequest` exchange on a fresh socket, then rustls over it
//! ([`crate::tls`]).
//!
//! PostgreSQL does not listen for TLS on its own port: the client asks (`SSLRequest`) and the
//! server answers one byte, `S` (go ahead) or `N` (not here). A source configured for TLS
//! that hears `N` fails rather than carry on in clear, and the certificate is always verified
//! by the rustls config the binary built (`sslmode` in `docs/sources.md`): there is no
//! unverified mode.

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

pub use crate::tls::{ClientTls as PgTls, Stream as PgStream};

use super::PgError;

/// The `SSLRequest` message: its length (8) and the request code 80877103.
const SSL_REQUEST: [u8; 8] = [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f];

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
    crate::tls::handshake(tcp, tls).await.map_err(PgError::Tls)
}
