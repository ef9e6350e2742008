//! One connection to PostgreSQL: startup, authentication, simple queries, and the switch into
//! streaming replication (CopyBoth).
//!
//! Always opened with `replication=database`: that session accepts both the replication
//! commands (`CREATE_REPLICATION_SLOT`, `START_REPLICATION`) and plain SQL through the simple
//! query protocol, so one kind of connection does the set-up, the column check and the stream.

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use super::auth::{md5_password, Scram};
use super::tls::{negotiate, PgStream};
use super::wire::{self, cstr, Backend, Body};
use super::{ConnectSpec, PgError};

/// The most rows a set-up query may return (the catalogue's columns of the rule tables).
const MAX_ROWS: usize = 100_000;

/// A query's rows, text format; `None` is NULL.
pub type Rows = Vec<Vec<Option<String>>>;

/// An authenticated session, ready for queries.
pub struct Connection<S = PgStream> {
    pub(crate) stream: S,
}

impl Connection {
    /// Connects, switches to TLS when the spec asks for it, starts up and authenticates,
    /// within `timeout`.
    pub async fn open(spec: &ConnectSpec, timeout: Duration) -> Result<Connection, PgError> {
        let open = async {
            let tcp = TcpStream::connect((spec.host.as_str(), spec.port)).await?;
            tcp.set_nodelay(true)?;
            let stream = negotiate(tcp, spec.tls.as_ref()).await?;
            Connection::start(stream, spec).await
        };
        tokio::time::timeout(timeout, open)
            .await
            .map_err(|_| PgError::Io(format!("no session within {timeout:?}")))?
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Connection<S> {
    /// Sends the startup message and answers the server's authentication request.
    pub async fn start(stream: S, spec: &ConnectSpec) -> Result<Connection<S>, PgError> {
        let mut c = Connection { stream };
        let mut body = 196_608u32.to_be_bytes().to_vec(); // protocol 3.0
        for (k, v) in [
            ("user", spec.user.as_str()),
            ("database", spec.database.as_str()),
            ("replication", "database"),
            ("application_name", "corral"),
            ("client_encoding", "UTF8"),
        ] {
            cstr(&mut body, k);
            cstr(&mut body, v);
        }
        body.push(0);
        wire::write(&mut c.stream, 0, &body).await?;
        c.authenticate(spec).await?;
        c.until_ready().await?;
        Ok(c)
    }

    async fn authenticate(&mut self, spec: &ConnectSpec) -> Result<(), PgError> {
        let mut scram: Option<Scram> = None;
        loop {
            let m = self.next().await?;
            if m.tag != b'R' {
                return Err(PgError::Protocol(format!(
                    "{:?} during authentication",
                    m.tag as char
                )));
            }
            let mut b = Body(&m.body);
            match b.i32()? {
                0 => return Ok(()),
                3 => self.password(spec.password_or_fail()?).await?,
                5 => {
                    let salt = b.take(4)?;
                    let answer = md5_password(&spec.user, spec.password_or_fail()?, salt);
                    self.password(&answer).await?;
                }
                10 => {
                    let mut offered = Vec::new();
                    while let Ok(name) = b.cstr() {
                        if name.is_empty() {
                            break;
                        }
                        offered.push(name.to_owned());
                    }
                    if !offered.iter().any(|m| m == Scram::MECHANISM) {
                        return Err(PgError::Auth(format!("the server offers only {offered:?}")));
                    }
                    let s = Scram::new(spec.password_or_fail()?);
                    let first = s.client_first();
                    let mut out = Vec::new();
                    cstr(&mut out, Scram::MECHANISM);
                    out.extend_from_slice(&(first.len() as u32).to_be_bytes());
                    out.extend_from_slice(first.as_bytes());
                    wire::write(&mut self.stream, b'p', &out).await?;
                    scram = Some(s);
                }
                11 => {
                    let s = scram.as_mut().ok_or_else(|| unexpected("SASLContinue"))?;
                    let last = s.client_final(b.rest())?;
                    wire::write(&mut self.stream, b'p', last.as_bytes()).await?;
                }
                12 => scram
                    .as_ref()
                    .ok_or_else(|| unexpected("SASLFinal"))?
                    .verify(b.rest())?,
                other => {
                    return Err(PgError::Auth(format!(
                        "authentication method {other} is not supported"
                    )))
                }
            }
        }
    }

    async fn password(&mut self, text: &str) -> Result<(), PgError> {
        let mut out = Vec::new();
        cstr(&mut out, text);
        wire::write(&mut self.stream, b'p', &out).await
    }

    /// The next message that is not a notice or a parameter report; an error is an `Err`.
    pub(crate) async fn next(&mut self) -> Result<Backend, PgError> {
        loop {
            let m = wire::read(&mut self.stream).await?;
            match m.tag {
                b'N' | b'S' | b'K' => continue,
                b'E' => {
                    let (code, text) = wire::error_text(&m.body);
                    return Err(PgError::Server {
                        code,
                        message: text,
                    });
                }
                _ => return Ok(m),
            }
        }
    }

    async fn until_ready(&mut self) -> Result<(), PgError> {
        loop {
            if self.next().await?.tag == b'Z' {
                return Ok(());
            }
        }
    }

    /// Runs one statement with the simple query protocol; returns its rows (text format).
    pub async fn query(&mut self, sql: &str) -> Result<Rows, PgError> {
        let mut out = Vec::new();
        cstr(&mut out, sql);
        wire::write(&mut self.stream, b'Q', &out).await?;
        let mut rows = Vec::new();
        let mut failed = None;
        loop {
            let m = match self.next().await {
                Ok(m) => m,
                // The server still sends ReadyForQuery after an error: read it, then fail.
                Err(e @ PgError::Server { .. }) => {
                    failed = Some(e);
                    continue;
                }
                Err(e) => return Err(e),
            };
            match m.tag {
                b'D' if rows.len() < MAX_ROWS => rows.push(data_row(&m.body)?),
                b'D' => return Err(PgError::Protocol(format!("more than {MAX_ROWS} rows"))),
                b'Z' => return failed.map_or(Ok(rows), Err),
                _ => {}
            }
        }
    }
}

fn unexpected(what: &str) -> PgError {
    PgError::Auth(format!("{what} before the exchange began"))
}

fn data_row(body: &[u8]) -> Result<Vec<Option<String>>, PgError> {
    let mut b = Body(body);
    let n = b.u16()?;
    let mut row = Vec::with_capacity(usize::from(n).min(body.len()));
    for _ in 0..n {
        let len = b.i32()?;
        row.push(match usize::try_from(len) {
            Err(_) => None,
            Ok(len) => Some(String::from_utf8_lossy(b.take(len)?).into_owned()),
        });
    }
    Ok(row)
}

/// A SQL string literal: quotes doubled. Names are validated in the configuration too.
pub fn literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// A SQL identifier: double quotes doubled.
pub fn ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_rows_are_bounded_by_their_bytes() {
        assert_eq!(data_row(&[0, 1, 255, 255, 255, 255]).unwrap(), vec![None]);
        assert_eq!(
            data_row(&[0, 1, 0, 0, 0, 2, b'h', b'i']).unwrap(),
            vec![Some("hi".to_owned())]
        );
        // 65535 columns announced, none present: an error, and no large allocation.
        assert!(data_row(&[255, 255]).is_err());
        assert!(data_row(&[0, 1, 0, 0, 0, 9, b'x']).is_err());
    }

    #[test]
    fn quoting_doubles_the_quote() {
        assert_eq!(literal("o'k"), "'o''k'");
        assert_eq!(ident("a\"b"), "\"a\"\"b\"");
    }
}
