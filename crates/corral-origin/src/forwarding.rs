//! The routes the forwarding benchmark (`bench/forwarding.py`) and the large-body tests use:
//! bodies far larger than memory should hold, streamed from one shared buffer, and a `POST`
//! whose request body is read and dropped.

use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};
use http_body::{Frame, SizeHint};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;

use super::{body_bytes, text, Body, SHARED};

/// Largest streamed body (`/stream/{n}`): 1 GiB, never held in memory.
pub const MAX_STREAM: u64 = 1 << 30;
/// Largest `POST /bytes/{n}` request body read (the rest is refused with 413).
pub const MAX_POST: usize = 64 << 20;
/// Frame size of a streamed body: what hyper writes to the socket per poll.
const FRAME: usize = 64 << 10;

/// `n` pattern bytes, sent as `FRAME`-sized slices of the shared buffer with a
/// `Content-Length`, so the origin's memory stays flat whatever `n` is.
pub struct Stream {
    left: u64,
    offset: usize,
}

impl http_body::Body for Stream {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if self.left == 0 {
            return Poll::Ready(None);
        }
        let take = (self.left as usize).min(FRAME);
        // Slices that wrap around the shared buffer's end start over at 0, so every frame is
        // one zero-copy slice; the content stays the `abc…` pattern only per frame.
        if self.offset + take > SHARED {
            self.offset = 0;
        }
        let frame = body_bytes(SHARED).slice(self.offset..self.offset + take);
        self.offset += take;
        self.left -= take as u64;
        Poll::Ready(Some(Ok(Frame::data(frame))))
    }

    fn is_end_stream(&self) -> bool {
        self.left == 0
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.left)
    }
}

/// `GET /stream/{n}`: `n` bytes, cacheable (`max-age=ttl`), streamed.
pub(super) fn stream(n: u64, ttl: u64) -> Response<Body> {
    let mut r = Response::new(Body::Right(Stream {
        left: n.min(MAX_STREAM),
        offset: 0,
    }));
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    if let Ok(v) = HeaderValue::from_str(&format!("public, max-age={ttl}")) {
        h.insert(header::CACHE_CONTROL, v);
    }
    r
}

/// `POST /bytes/{n}`: reads the request body (at most [`MAX_POST`]) and answers `n` bytes
/// that must not be stored (`no-store`): what a gateway forwards for an API write.
pub(super) async fn post(n: usize, body: Incoming) -> Response<Body> {
    let mut body = http_body_util::Limited::new(body, MAX_POST);
    while let Some(frame) = body.frame().await {
        if frame.is_err() {
            return text(
                StatusCode::PAYLOAD_TOO_LARGE,
                "body over 64 MiB or broken\n",
            );
        }
    }
    let mut r = Response::new(Body::Left(Full::new(body_bytes(n))));
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}
