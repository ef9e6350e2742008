//! An upstream response body that keeps its request counted in flight until it ends.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

use super::endpoint::InFlight;

/// The body of an upstream response. The endpoint counts the request in flight (for
/// least-request balancing and `corral_upstream_in_flight`) until this body has ended, failed
/// or been dropped, not merely until the response head arrived: a slow download is load.
#[derive(Debug)]
pub struct UpstreamBody {
    inner: Incoming,
    in_flight: Option<InFlight>,
}

impl UpstreamBody {
    pub(super) fn new(inner: Incoming, in_flight: InFlight) -> UpstreamBody {
        let in_flight = (!inner.is_end_stream()).then_some(in_flight);
        UpstreamBody { inner, in_flight }
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if matches!(polled, Poll::Ready(None | Some(Err(_)))) || self.inner.is_end_stream() {
            self.in_flight = None;
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
