//! PostgreSQL's frontend/backend message framing (protocol 3.0), bounded.
//!
//! A backend message is a type byte, a length that counts itself, and a body. The length is
//! checked before anything is allocated: a hostile or broken server cannot make the follower
//! allocate more than [`MAX_MESSAGE`], and every field read from a body checks what remains.

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::PgError;

/// The largest backend message accepted. A row change travels in one message; PostgreSQL's
/// own limit on a field is 1 GiB, but a purge rule reads keys, not documents.
pub const MAX_MESSAGE: usize = 64 << 20;

/// One backend message: its type byte and body.
#[derive(Debug)]
pub struct Backend {
    pub tag: u8,
    pub body: Vec<u8>,
}

/// Reads one backend message.
pub async fn read<R: AsyncRead + Unpin>(r: &mut R) -> Result<Backend, PgError> {
    let mut head = [0u8; 5];
    r.read_exact(&mut head).await?;
    let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
    if !(4..=MAX_MESSAGE).contains(&len) {
        return Err(PgError::Protocol(format!(
            "message {:?} of {len} bytes (at most {MAX_MESSAGE})",
            head[0] as char
        )));
    }
    let mut body = vec![0u8; len - 4];
    r.read_exact(&mut body).await?;
    Ok(Backend { tag: head[0], body })
}

/// Writes one frontend message (`tag` 0: the untagged startup message).
pub async fn write<W: AsyncWrite + Unpin>(w: &mut W, tag: u8, body: &[u8]) -> Result<(), PgError> {
    let mut out = Vec::with_capacity(body.len() + 5);
    if tag != 0 {
        out.push(tag);
    }
    out.extend_from_slice(&(body.len() as u32 + 4).to_be_bytes());
    out.extend_from_slice(body);
    w.write_all(&out).await?;
    w.flush().await?;
    Ok(())
}

/// A NUL-terminated string, as the protocol writes them.
pub fn cstr(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(s.as_bytes());
    out.push(0);
}

/// A cursor over a body; every read checks what remains.
pub struct Body<'a>(pub &'a [u8]);

impl<'a> Body<'a> {
    pub fn take(&mut self, n: usize) -> Result<&'a [u8], PgError> {
        if n > self.0.len() {
            return Err(PgError::Protocol("a message ends early".into()));
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Ok(head)
    }

    pub fn u8(&mut self) -> Result<u8, PgError> {
        Ok(self.take(1)?[0])
    }

    pub fn u16(&mut self) -> Result<u16, PgError> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    pub fn i32(&mut self) -> Result<i32, PgError> {
        let mut a = [0u8; 4];
        a.copy_from_slice(self.take(4)?);
        Ok(i32::from_be_bytes(a))
    }

    pub fn u64(&mut self) -> Result<u64, PgError> {
        let mut a = [0u8; 8];
        a.copy_from_slice(self.take(8)?);
        Ok(u64::from_be_bytes(a))
    }

    pub fn cstr(&mut self) -> Result<&'a str, PgError> {
        let end = self.0.iter().position(|&b| b == 0);
        let end = end.ok_or_else(|| PgError::Protocol("a string without its NUL".into()))?;
        let s = std::str::from_utf8(&self.0[..end])
            .map_err(|_| PgError::Protocol("a string is not UTF-8".into()))?;
        self.0 = &self.0[end + 1..];
        Ok(s)
    }

    pub fn rest(&self) -> &'a [u8] {
        self.0
    }
}

/// The fields of an `ErrorResponse` worth showing: severity, SQLSTATE and message.
pub fn error_text(body: &[u8]) -> (String, String) {
    let mut b = Body(body);
    let (mut code, mut severity, mut message) = (String::new(), String::new(), String::new());
    while let Ok(field) = b.u8() {
        if field == 0 {
            break;
        }
        let Ok(value) = b.cstr() else { break };
        match field {
            b'C' => code = value.to_owned(),
            b'S' => severity = value.to_owned(),
            b'M' => message = value.to_owned(),
            _ => {}
        }
    }
    (code, format!("{severity}: {message}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_length_beyond_the_bound_is_an_error_not_an_allocation() {
        let mut bytes: &[u8] = &[b'D', 0xff, 0xff, 0xff, 0xff];
        assert!(matches!(read(&mut bytes).await, Err(PgError::Protocol(_))));
        let mut bytes: &[u8] = &[b'D', 0, 0, 0, 3];
        assert!(matches!(read(&mut bytes).await, Err(PgError::Protocol(_))));
    }

    #[tokio::test]
    async fn a_message_round_trips() {
        let mut out = Vec::new();
        write(&mut out, b'Q', b"SELECT 1\0").await.unwrap();
        let mut r: &[u8] = &out;
        let m = read(&mut r).await.unwrap();
        assert_eq!((m.tag, &m.body[..]), (b'Q', &b"SELECT 1\0"[..]));
    }

    #[test]
    fn error_fields_are_read_and_garbage_ends_quietly() {
        let body = b"SERROR\0C42P01\0Mrelation \"x\" does not exist\0\0";
        let (code, text) = error_text(body);
        assert_eq!(code, "42P01");
        assert_eq!(text, "ERROR: relation \"x\" does not exist");
        let _ = error_text(b"S\xff\xfe");
    }
}
