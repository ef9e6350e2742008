//! The client protocol's packet framing and a bounded field reader.
//!
//! A packet is a 3-byte little-endian length, a sequence number and the payload; a payload of
//! 16 MiB - 1 or more continues in the next packet. The length is checked before anything is
//! allocated: a hostile or broken server cannot make the follower hold more than
//! [`MAX_PACKET`], and every field read through [`Reader`] checks what remains.

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::Error;

/// The largest payload accepted (after joining continuations). A binlog event travels in one
/// payload; a purge rule reads keys, not documents, and MariaDB's own `max_allowed_packet`
/// defaults to 16 MiB.
pub const MAX_PACKET: usize = 64 << 20;

/// A payload at this length continues in the next packet.
const CONTINUED: usize = 0xff_ffff;

/// Reads one payload (joining continuations); returns the last packet's sequence number.
pub async fn read<R: AsyncRead + Unpin>(r: &mut R) -> Result<(u8, Vec<u8>), Error> {
    let mut payload = Vec::new();
    loop {
        let mut head = [0u8; 4];
        r.read_exact(&mut head).await?;
        let len = u32::from_le_bytes([head[0], head[1], head[2], 0]) as usize;
        if payload.len() + len > MAX_PACKET {
            return Err(Error::protocol(format!(
                "a packet of more than {MAX_PACKET} bytes"
            )));
        }
        let start = payload.len();
        payload.resize(start + len, 0);
        r.read_exact(&mut payload[start..]).await?;
        if len < CONTINUED {
            return Ok((head[3], payload));
        }
    }
}

/// Writes one payload with sequence number `seq` (ours are small: no continuation needed).
pub async fn write<W: AsyncWrite + Unpin>(w: &mut W, seq: u8, payload: &[u8]) -> Result<(), Error> {
    if payload.len() >= CONTINUED {
        return Err(Error::protocol("a command of 16 MiB or more"));
    }
    let mut out = Vec::with_capacity(payload.len() + 4);
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes()[..3]);
    out.push(seq);
    out.extend_from_slice(payload);
    w.write_all(&out).await?;
    w.flush().await?;
    Ok(())
}

/// A cursor over a payload or an event; every read checks what remains.
#[derive(Clone, Copy)]
pub struct Reader<'a>(pub &'a [u8]);

impl<'a> Reader<'a> {
    pub fn remaining(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn take(&mut self, n: usize) -> Result<&'a [u8], Error> {
        if n > self.0.len() {
            return Err(Error::protocol(format!(
                "a field of {n} bytes where {} remain",
                self.0.len()
            )));
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Ok(head)
    }

    pub fn skip(&mut self, n: usize) -> Result<(), Error> {
        self.take(n).map(|_| ())
    }

    pub fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.0)
    }

    pub fn u8(&mut self) -> Result<u8, Error> {
        Ok(self.take(1)?[0])
    }

    /// An unsigned little-endian integer of `n` bytes (at most 8).
    pub fn uint(&mut self, n: usize) -> Result<u64, Error> {
        debug_assert!(n <= 8);
        let b = self.take(n)?;
        Ok(b.iter()
            .rev()
            .fold(0u64, |v, byte| (v << 8) | u64::from(*byte)))
    }

    /// An unsigned big-endian integer of `n` bytes (at most 8): packed temporal and decimal
    /// values are stored big-endian.
    pub fn uint_be(&mut self, n: usize) -> Result<u64, Error> {
        debug_assert!(n <= 8);
        let b = self.take(n)?;
        Ok(b.iter().fold(0u64, |v, byte| (v << 8) | u64::from(*byte)))
    }

    pub fn u16(&mut self) -> Result<u16, Error> {
        Ok(self.uint(2)? as u16)
    }

    pub fn u32(&mut self) -> Result<u32, Error> {
        Ok(self.uint(4)? as u32)
    }

    pub fn u64(&mut self) -> Result<u64, Error> {
        self.uint(8)
    }

    /// A length-encoded integer (`0xfb`, NULL in a text row, is the caller's to look for).
    pub fn lenenc(&mut self) -> Result<u64, Error> {
        match self.u8()? {
            n @ 0..=0xfa => Ok(u64::from(n)),
            0xfc => self.uint(2),
            0xfd => self.uint(3),
            0xfe => self.uint(8),
            other => Err(Error::protocol(format!(
                "0x{other:02x} is not a length-encoded integer"
            ))),
        }
    }

    /// A length-encoded integer used as a length: it must fit in what remains, so it can
    /// never size an allocation larger than the payload.
    pub fn lenenc_len(&mut self) -> Result<usize, Error> {
        let n = self.lenenc()?;
        if n > self.0.len() as u64 {
            return Err(Error::protocol(format!(
                "a length of {n} where {} bytes remain",
                self.0.len()
            )));
        }
        Ok(n as usize)
    }

    pub fn lenenc_bytes(&mut self) -> Result<&'a [u8], Error> {
        let n = self.lenenc_len()?;
        self.take(n)
    }

    /// A NUL-terminated string (the NUL consumed).
    pub fn cstr(&mut self) -> Result<&'a [u8], Error> {
        let end = self
            .0
            .iter()
            .position(|b| *b == 0)
            .ok_or_else(|| Error::protocol("a string without its NUL"))?;
        let s = self.take(end)?;
        self.skip(1)?;
        Ok(s)
    }
}

/// Text as the server sent it (names and values are UTF-8 under `utf8mb4`; anything else is
/// shown with replacement characters rather than refused).
pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn packets_round_trip_and_oversized_lengths_are_refused() {
        let mut buf = Vec::new();
        write(&mut buf, 3, b"hello").await.unwrap();
        let (seq, payload) = read(&mut &buf[..]).await.unwrap();
        assert_eq!((seq, &payload[..]), (3, &b"hello"[..]));
        // A claimed 16 MiB continuation, then nothing: an error, not a hang or a panic.
        let huge = [0xff, 0xff, 0xff, 0, 1, 2];
        assert!(read(&mut &huge[..]).await.is_err());
    }

    #[test]
    fn reader_bounds_every_field() {
        let mut r = Reader(&[0xfc, 0x10, 0x00, 1, 2]);
        assert!(r.lenenc_len().is_err(), "a length beyond the payload");
        let mut r = Reader(&[0xfe]);
        assert!(r.lenenc().is_err());
        let mut r = Reader(&[2, b'a', b'b', b'c', 0, 0x34, 0x12]);
        assert_eq!(r.lenenc_bytes().unwrap(), b"ab");
        assert_eq!(r.cstr().unwrap(), b"c");
        assert_eq!(r.u16().unwrap(), 0x1234);
        assert!(r.u8().is_err());
        assert_eq!(Reader(&[1, 2, 3]).uint_be(3).unwrap(), 0x010203);
    }
}
