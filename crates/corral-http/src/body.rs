//! Response and request bodies, without boxing on the hit path.
//!
//! [`Body::Full`] is a stored body handed out by reference count; [`Body::Fill`] streams an
//! origin body to the client while teeing it into the cache (never buffering before sending).

use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::{Bytes, BytesMut};
use http_body::{Body as _, Frame, SizeHint};
use hyper::body::Incoming;

use crate::pool::UpstreamBody;

/// The error type of every body here.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A body Corral sends (to clients or upstreams).
pub enum Body {
    Empty,
    Full(Option<Bytes>),
    /// A request body from a client, passed on.
    Incoming(Incoming),
    /// An upstream response body, passed on.
    Upstream(UpstreamBody),
    Fill(Box<FillBody>),
}

impl Body {
    pub fn empty() -> Body {
        Body::Empty
    }

    pub fn full(b: impl Into<Bytes>) -> Body {
        let b = b.into();
        if b.is_empty() {
            Body::Empty
        } else {
            Body::Full(Some(b))
        }
    }
}

impl From<Incoming> for Body {
    fn from(b: Incoming) -> Body {
        Body::Incoming(b)
    }
}

impl http_body::Body for Body {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            Body::Empty => Poll::Ready(None),
            Body::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            Body::Incoming(b) => Pin::new(b).poll_frame(cx).map_err(Into::into),
            Body::Upstream(b) => Pin::new(b).poll_frame(cx).map_err(Into::into),
            Body::Fill(f) => Pin::new(&mut **f).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Body::Empty => true,
            Body::Full(b) => b.is_none(),
            Body::Incoming(b) => b.is_end_stream(),
            Body::Upstream(b) => b.is_end_stream(),
            Body::Fill(f) => f.done || f.inner.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Body::Empty => SizeHint::with_exact(0),
            Body::Full(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            Body::Incoming(b) => b.size_hint(),
            Body::Upstream(b) => b.size_hint(),
            Body::Fill(f) => f.inner.size_hint(),
        }
    }
}

/// What a fill ends with.
pub enum FillEnd {
    /// The whole body arrived and fit within the object limit.
    Complete(Bytes),
    /// The body arrived but was too large to store.
    TooLarge,
    /// The body did not arrive whole (upstream error, timeout, or the client went away).
    Failed,
}

/// Called exactly once when a fill ends.
pub type OnFillEnd = Box<dyn FnOnce(FillEnd) + Send>;

/// Streams an origin body to the client and collects it for the store, up to `limit` bytes.
pub struct FillBody {
    inner: UpstreamBody,
    buf: Option<BytesMut>,
    limit: usize,
    on_end: Option<OnFillEnd>,
    done: bool,
}

impl FillBody {
    /// `limit`: the largest body to store. Over it (by `Content-Length`, or once more than
    /// `limit` bytes arrived) nothing is buffered: the body only streams through. How long it
    /// may take is the upstream body's own `total_timeout` ([`UpstreamBody`]).
    pub fn new(
        inner: UpstreamBody,
        limit: usize,
        expected: Option<u64>,
        on_end: OnFillEnd,
    ) -> FillBody {
        let storing = expected.is_none_or(|n| n <= limit as u64);
        let cap = expected.map_or(16 * 1024, |n| n as usize).min(limit);
        let mut fill = FillBody {
            inner,
            buf: storing.then(|| BytesMut::with_capacity(cap)),
            limit,
            on_end: Some(on_end),
            done: false,
        };
        // An empty body is never polled at all.
        if fill.inner.is_end_stream() {
            fill.finish();
        }
        fill
    }

    /// The whole body has arrived.
    fn finish(&mut self) {
        let how = match self.buf.take() {
            Some(b) => FillEnd::Complete(exact(b)),
            None => FillEnd::TooLarge,
        };
        self.end(how);
    }

    fn end(&mut self, how: FillEnd) {
        self.done = true;
        if let Some(f) = self.on_end.take() {
            f(how);
        }
    }
}

/// The collected body in an allocation of its own size.
///
/// Without a `Content-Length` the buffer starts at 16 KiB; frozen as it is, a 200-byte chunked
/// answer would keep all of it alive for the entry's life while the bound is charged 200 bytes.
/// Copying is cheap next to the fetch and happens once per fill, only when the slack is large.
fn exact(b: BytesMut) -> Bytes {
    if b.capacity() - b.len() > b.len() / 8 + 64 {
        Bytes::copy_from_slice(&b)
    } else {
        b.freeze()
    }
}

impl Drop for FillBody {
    fn drop(&mut self) {
        if !self.done {
            self.end(FillEnd::Failed);
        }
    }
}

impl FillBody {
    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        if this.done {
            return Poll::Ready(None);
        }
        match ready!(Pin::new(&mut this.inner).poll_frame(cx)) {
            Some(Ok(frame)) => {
                if let (Some(buf), Some(data)) = (this.buf.as_mut(), frame.data_ref()) {
                    if buf.len() + data.len() > this.limit {
                        // Over the limit: what was buffered is freed now, not at the end.
                        this.buf = None;
                    } else {
                        buf.extend_from_slice(data);
                    }
                }
                // hyper stops polling a body whose end it can see (Content-Length reached), so
                // the fill must complete here rather than wait for a `None` that never comes.
                if this.inner.is_end_stream() {
                    this.finish();
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Some(Err(e)) => {
                this.end(FillEnd::Failed);
                Poll::Ready(Some(Err(e)))
            }
            None => {
                this.finish();
                Poll::Ready(None)
            }
        }
    }
}

/// Reads a whole body, refusing more than `limit` bytes.
pub async fn collect_limited<B>(body: B, limit: usize) -> Result<Bytes, CollectError>
where
    B: http_body::Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    use http_body_util::BodyExt;
    let mut body = std::pin::pin!(body);
    let mut out = BytesMut::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| CollectError::Io(e.into()))?;
        if let Some(d) = frame.data_ref() {
            if out.len() + d.len() > limit {
                return Err(CollectError::TooLarge);
            }
            out.extend_from_slice(d);
        }
    }
    Ok(out.freeze())
}

/// Why [`collect_limited`] failed.
#[derive(Debug)]
pub enum CollectError {
    TooLarge,
    Io(BoxError),
}
