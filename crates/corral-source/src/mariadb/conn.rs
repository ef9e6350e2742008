//! A client connection: the v10 handshake, `mysql_native_password`, text queries and the
//! few commands a replica sends.
//!
//! `caching_sha2_password` (MySQL 8's default) and `ed25519` (a MariaDB plugin) are not
//! implemented: a server that asks for them gets a clear refusal naming the plugin, rather
//! than a password sent in a form we cannot vouch for.

use std::time::Duration;

use sha1::{Digest, Sha1};
use tokio::net::TcpStream;

use super::packet::{self, text, Reader};
use super::{ConnectSpec, Error};
use crate::tls::Stream;

const CLIENT_LONG_PASSWORD: u32 = 1;
const CLIENT_CONNECT_WITH_DB: u32 = 8;
const CLIENT_PROTOCOL_41: u32 = 0x200;
const CLIENT_SSL: u32 = 0x800;
const CLIENT_TRANSACTIONS: u32 = 0x2000;
const CLIENT_SECURE_CONNECTION: u32 = 0x8000;
const CLIENT_PLUGIN_AUTH: u32 = 0x8_0000;
/// `utf8mb4_general_ci`: names and values arrive as UTF-8.
const UTF8MB4: u8 = 45;
const NATIVE_PASSWORD: &str = "mysql_native_password";

pub const COM_QUERY: u8 = 0x03;
pub const COM_BINLOG_DUMP: u8 = 0x12;
pub const COM_REGISTER_SLAVE: u8 = 0x15;

/// One text-protocol row: each column's value, `None` for NULL.
pub type TextRow = Vec<Option<String>>;

/// A logged-in connection.
pub struct Connection {
    pub stream: Stream,
    /// The sequence number of the next packet this side sends.
    seq: u8,
}

impl Connection {
    /// Connects and logs in within `timeout`.
    pub async fn open(spec: &ConnectSpec, timeout: Duration) -> Result<Connection, Error> {
        let login = async {
            let tcp = TcpStream::connect((spec.host.as_str(), spec.port)).await?;
            tcp.set_nodelay(true)?;
            let conn = Connection {
                stream: Stream::Plain(tcp),
                seq: 0,
            };
            conn.login(spec).await
        };
        tokio::time::timeout(timeout, login)
            .await
            .map_err(|_| Error::Io(format!("no login within {timeout:?}")))?
    }

    /// Reads one payload, checking its sequence number follows ours.
    pub async fn read(&mut self) -> Result<Vec<u8>, Error> {
        let (seq, payload) = packet::read(&mut self.stream).await?;
        self.seq = seq.wrapping_add(1);
        Ok(payload)
    }

    async fn send(&mut self, payload: &[u8]) -> Result<(), Error> {
        packet::write(&mut self.stream, self.seq, payload).await?;
        self.seq = self.seq.wrapping_add(1);
        Ok(())
    }

    /// Sends a command (a new exchange: sequence numbers restart at 0).
    pub async fn command(&mut self, command: u8, body: &[u8]) -> Result<(), Error> {
        self.seq = 0;
        let mut payload = Vec::with_capacity(body.len() + 1);
        payload.push(command);
        payload.extend_from_slice(body);
        self.send(&payload).await
    }

    /// Sends a command whose answer is OK or an error.
    pub async fn command_ok(&mut self, command: u8, body: &[u8]) -> Result<(), Error> {
        self.command(command, body).await?;
        let answer = self.read().await?;
        match answer.first() {
            Some(0x00) => Ok(()),
            Some(0xff) => Err(server_error(&answer)),
            _ => Err(Error::protocol("neither OK nor an error after a command")),
        }
    }

    /// Runs one SQL statement; its rows (empty for a statement without a result set).
    pub async fn query(&mut self, sql: &str) -> Result<Vec<TextRow>, Error> {
        self.command(COM_QUERY, sql.as_bytes()).await?;
        let first = self.read().await?;
        match first.first() {
            Some(0x00) => return Ok(Vec::new()),
            Some(0xff) => return Err(server_error(&first)),
            _ => {}
        }
        let columns = Reader(&first).lenenc()?;
        if columns == 0 || columns > 4096 {
            return Err(Error::protocol(format!("a result of {columns} columns")));
        }
        for _ in 0..columns {
            self.read().await?;
        }
        let eof = self.read().await?;
        if !is_eof(&eof) {
            return Err(Error::protocol("no EOF after the column definitions"));
        }
        let mut rows = Vec::new();
        loop {
            let p = self.read().await?;
            if is_eof(&p) {
                return Ok(rows);
            }
            if p.first() == Some(&0xff) {
                return Err(server_error(&p));
            }
            let mut r = Reader(&p);
            let mut row = Vec::with_capacity(columns as usize);
            for _ in 0..columns {
                if r.0.first() == Some(&0xfb) {
                    r.skip(1)?;
                    row.push(None);
                } else {
                    row.push(Some(text(r.lenenc_bytes()?)));
                }
            }
            rows.push(row);
        }
    }

    /// The first column of the first row, if any.
    pub async fn query_one(&mut self, sql: &str) -> Result<Option<String>, Error> {
        let rows = self.query(sql).await?;
        Ok(rows.into_iter().next().and_then(|r| r.into_iter().next()?))
    }

    /// Logs in (switching to TLS first when the spec asks for it): the session, ready.
    async fn login(mut self, spec: &ConnectSpec) -> Result<Connection, Error> {
        let hello = self.read().await?;
        if hello.first() == Some(&0xff) {
            return Err(server_error(&hello));
        }
        let hello = Handshake::parse(&hello)?;
        let mut caps = CLIENT_LONG_PASSWORD
            | CLIENT_PROTOCOL_41
            | CLIENT_TRANSACTIONS
            | CLIENT_SECURE_CONNECTION
            | CLIENT_PLUGIN_AUTH;
        if !spec.database.is_empty() {
            caps |= CLIENT_CONNECT_WITH_DB;
        }
        let needed = CLIENT_PROTOCOL_41 | CLIENT_SECURE_CONNECTION | CLIENT_PLUGIN_AUTH;
        if hello.capabilities & needed != needed {
            return Err(Error::protocol(
                "the server lacks protocol 4.1 with authentication plugins",
            ));
        }
        let auth = self.auth_response(spec, &hello.plugin, &hello.scramble)?;
        if let Some(tls) = &spec.tls {
            caps |= CLIENT_SSL;
            self = self.start_tls(hello.capabilities, caps, tls).await?;
        }
        let mut out = login_head(caps);
        cstr(&mut out, &spec.user);
        out.push(auth.len() as u8);
        out.extend_from_slice(&auth);
        if !spec.database.is_empty() {
            cstr(&mut out, &spec.database);
        }
        cstr(&mut out, NATIVE_PASSWORD);
        self.send(&out).await?;
        loop {
            let answer = self.read().await?;
            match answer.first() {
                Some(0x00) => return Ok(self),
                Some(0xff) => {
                    return Err(match server_error(&answer) {
                        Error::Server { message, code, .. } => {
                            Error::Auth(format!("{message} (error {code})"))
                        }
                        other => other,
                    })
                }
                // AuthSwitchRequest: another plugin, with a fresh scramble.
                Some(0xfe) => {
                    let mut r = Reader(&answer[1..]);
                    let plugin = text(r.cstr()?);
                    let data = r.rest();
                    let scramble = data.strip_suffix(&[0]).unwrap_or(data);
                    let auth = self.auth_response(spec, &plugin, scramble)?;
                    self.send(&auth).await?;
                }
                _ => return Err(Error::protocol("an unexpected answer to the login")),
            }
        }
    }

    /// The SSL request (the login's first 32 bytes, `CLIENT_SSL` set), then the TLS handshake:
    /// the rest of the login, the password's proof included, travels under TLS. A server
    /// without TLS is an error, never a login in clear.
    async fn start_tls(
        mut self,
        offered: u32,
        caps: u32,
        tls: &crate::tls::ClientTls,
    ) -> Result<Connection, Error> {
        if offered & CLIENT_SSL == 0 {
            return Err(Error::Tls(
                "the server does not accept TLS connections (no ssl_cert/ssl_key); sslmode asks for TLS".into(),
            ));
        }
        self.send(&login_head(caps)).await?;
        let Stream::Plain(tcp) = self.stream else {
            return Err(Error::protocol("TLS asked for twice"));
        };
        Ok(Connection {
            stream: crate::tls::handshake(tcp, tls).await.map_err(Error::Tls)?,
            seq: self.seq,
        })
    }

    fn auth_response(
        &self,
        spec: &ConnectSpec,
        plugin: &str,
        scramble: &[u8],
    ) -> Result<Vec<u8>, Error> {
        if plugin != NATIVE_PASSWORD {
            return Err(Error::Auth(format!(
                "the server asks for the {plugin:?} authentication plugin, which Corral does not implement; \
                 give the user mysql_native_password (ALTER USER ... IDENTIFIED VIA mysql_native_password USING PASSWORD('...'))"
            )));
        }
        Ok(match &spec.password {
            Some(p) if !p.expose().is_empty() => native_password(p.expose(), scramble),
            _ => Vec::new(),
        })
    }
}

/// The v10 handshake's fields the login needs.
struct Handshake {
    capabilities: u32,
    scramble: Vec<u8>,
    plugin: String,
}

impl Handshake {
    fn parse(payload: &[u8]) -> Result<Handshake, Error> {
        let mut r = Reader(payload);
        let version = r.u8()?;
        if version != 10 {
            return Err(Error::protocol(format!(
                "handshake version {version}, not 10"
            )));
        }
        r.cstr()?; // server version
        r.skip(4)?; // connection id
        let mut scramble = r.take(8)?.to_vec();
        r.skip(1)?;
        let low = u32::from(r.u16()?);
        r.skip(1 + 2)?; // character set, status
        let high = u32::from(r.u16()?);
        let capabilities = low | (high << 16);
        let data_len = usize::from(r.u8()?);
        r.skip(10)?;
        // The second part is at least 13 bytes, its last a NUL.
        let part2 = data_len.saturating_sub(8).max(13);
        let more = r.take(part2.min(r.remaining()))?;
        scramble.extend_from_slice(more.strip_suffix(&[0]).unwrap_or(more));
        let plugin = match r.cstr() {
            Ok(name) => text(name),
            Err(_) => text(r.rest()),
        };
        Ok(Handshake {
            capabilities,
            scramble,
            plugin,
        })
    }
}

/// `SHA1(password) XOR SHA1(scramble + SHA1(SHA1(password)))`.
pub fn native_password(password: &str, scramble: &[u8]) -> Vec<u8> {
    let once = Sha1::digest(password.as_bytes());
    let twice = Sha1::digest(once);
    let mut h = Sha1::new();
    h.update(scramble);
    h.update(twice);
    let mask = h.finalize();
    once.iter().zip(mask.iter()).map(|(a, b)| a ^ b).collect()
}

/// The handshake response's fixed start: capabilities, the largest packet, the character set
/// and 23 reserved bytes. Alone, it is the SSL request.
fn login_head(caps: u32) -> Vec<u8> {
    let mut out = Vec::with_capacity(128);
    out.extend_from_slice(&caps.to_le_bytes());
    out.extend_from_slice(&(16u32 << 20).to_le_bytes());
    out.push(UTF8MB4);
    out.extend_from_slice(&[0; 23]);
    out
}

fn cstr(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(s.as_bytes());
    out.push(0);
}

/// An EOF packet (`0xfe` and fewer than 9 bytes: a longer one is a row starting with a
/// length-encoded 8-byte integer).
pub fn is_eof(p: &[u8]) -> bool {
    p.first() == Some(&0xfe) && p.len() < 9
}

/// An ERR packet's code, SQLSTATE and message.
pub fn server_error(p: &[u8]) -> Error {
    let mut r = Reader(p.get(1..).unwrap_or_default());
    let code = r.u16().unwrap_or(0);
    let mut state = String::new();
    if r.0.first() == Some(&b'#') {
        state = r.take(6).map(|s| text(&s[1..])).unwrap_or_default();
    }
    Error::Server {
        code,
        state,
        message: text(r.rest()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn native_password_matches_the_known_answer() {
        // SHA1(SHA1("secret")) is what mysql.user stores: *14E65567ABDB5135D0CFD9A70B3032C179A49EE7.
        let twice = Sha1::digest(Sha1::digest(b"secret"));
        let hex: String = twice.iter().map(|b| format!("{b:02X}")).collect();
        assert_eq!(hex, "14E65567ABDB5135D0CFD9A70B3032C179A49EE7");
        // The server's check: SHA1(response XOR SHA1(scramble + stored)) == stored.
        let scramble = b"abcdefghijklmnopqrst";
        let response = native_password("secret", scramble);
        let mut h = Sha1::new();
        h.update(scramble);
        h.update(twice);
        let mask = h.finalize();
        let once: Vec<u8> = response
            .iter()
            .zip(mask.iter())
            .map(|(a, b)| a ^ b)
            .collect();
        assert_eq!(Sha1::digest(&once)[..], twice[..]);
    }

    #[test]
    fn handshakes_and_errors_parse_and_truncations_fail_cleanly() {
        let mut hello = vec![10];
        hello.extend_from_slice(b"10.11.19-MariaDB\0");
        hello.extend_from_slice(&7u32.to_le_bytes());
        hello.extend_from_slice(b"12345678\0");
        hello.extend_from_slice(&0xf7ffu16.to_le_bytes());
        hello.extend_from_slice(&[45, 2, 0]);
        hello.extend_from_slice(&0x81bfu16.to_le_bytes());
        hello.push(21);
        hello.extend_from_slice(&[0; 10]);
        hello.extend_from_slice(b"abcdefghijkl\0mysql_native_password\0");
        let h = Handshake::parse(&hello).unwrap();
        assert_eq!(h.scramble, b"12345678abcdefghijkl");
        assert_eq!(h.plugin, NATIVE_PASSWORD);
        assert!(h.capabilities & CLIENT_PLUGIN_AUTH != 0);
        for n in 0..40 {
            assert!(Handshake::parse(&hello[..n]).is_err(), "{n} bytes");
        }
        let e = server_error(b"\xff\x15\x04#28000Access denied");
        assert_eq!(
            e,
            Error::Server {
                code: 1045,
                state: "28000".into(),
                message: "Access denied".into()
            }
        );
        assert!(matches!(
            server_error(b"\xff"),
            Error::Server { code: 0, .. }
        ));
    }
}
