//! An upstream response body that keeps its request counted in flight until it ends, and ends
//! at the upstream's total timeout whoever is slow.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use tokio::time::{Instant, Sleep};

use super::endpoint::InFlight;
use super::idle::Lease;
use super::watchdog::{self, Slot, Watchdog};
use crate::body::BoxError;

/// The body of an upstream response. The endpoint counts the request in flight (for
/// least-request balancing and `corral_upstream_in_flight`) until this body has ended, failed
/// or been dropped, not merely until the response head arrived: a slow download is load.
///
/// `total_timeout` (request sent → end of body) is enforced here, for every path that reads
/// an upstream body (pass, fill, refresh): a slow origin is caught while the body is polled (a
/// timer armed only once the origin makes it wait), a slow client by the upstream's watchdog
/// (`pool/watchdog.rs`), which drops the connection at the deadline though nobody polls.
/// Either way the body ends with an error, so a fill stores nothing and the client's response
/// is cut.
pub struct UpstreamBody {
    inner: Inner,
    in_flight: Option<InFlight>,
    /// The connection, back to its pool when the body is read to its end (dropped unused if
    /// the body is cut or dropped first: hyper then closes it).
    lease: Option<Lease>,
    deadline: Instant,
    timer: Option<Pin<Box<Sleep>>>,
    timed_out: bool,
}

enum Inner {
    /// Small or empty: read straight.
    Owned(Incoming),
    /// Large or of unknown length: shared with the watchdog, which may take it away.
    Watched(Arc<Slot>),
}

impl std::fmt::Debug for UpstreamBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamBody")
            .field("deadline", &self.deadline)
            .finish_non_exhaustive()
    }
}

impl UpstreamBody {
    pub(super) fn new(
        inner: Incoming,
        in_flight: Option<InFlight>,
        lease: Lease,
        deadline: Instant,
        dog: &Arc<Watchdog>,
    ) -> UpstreamBody {
        let ended = inner.is_end_stream();
        let inner = if watchdog::worth_watching(&inner) {
            Inner::Watched(dog.watch(inner, deadline))
        } else {
            Inner::Owned(inner)
        };
        let mut body = UpstreamBody {
            inner,
            in_flight,
            lease: Some(lease),
            deadline,
            timer: None,
            timed_out: false,
        };
        if ended {
            body.ended();
        }
        body
    }

    /// The body was read to its end: no longer in flight, its connection free for another.
    fn ended(&mut self) {
        self.in_flight = None;
        if let Some(lease) = self.lease.take() {
            lease.finish();
        }
    }

    fn poll_inner(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let polled = match &mut self.inner {
            Inner::Owned(b) => Some(Pin::new(b).poll_frame(cx)),
            Inner::Watched(slot) => slot.lock().as_mut().map(|b| Pin::new(b).poll_frame(cx)),
        };
        // `None`: the watchdog took the body away, the deadline passed.
        let Some(polled) = polled else {
            return Poll::Ready(Some(Err(self.timeout())));
        };
        match polled {
            Poll::Ready(r) => Poll::Ready(r.map(|r| r.map_err(Into::into))),
            Poll::Pending => {
                // The origin makes us wait: only now is a timer worth its allocation.
                let deadline = self.deadline;
                let timer = self
                    .timer
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
                if timer.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(Some(Err(self.timeout())));
                }
                Poll::Pending
            }
        }
    }

    fn timeout(&mut self) -> BoxError {
        self.timed_out = true;
        if let Inner::Watched(slot) = &self.inner {
            slot.lock().take();
        }
        "the upstream total timeout passed before the body ended".into()
    }

    fn inner_ended(&self) -> bool {
        match &self.inner {
            Inner::Owned(b) => b.is_end_stream(),
            // Cut by the watchdog: not an end, an error the next poll reports (an end would
            // let hyper finish a chunked response as if it were whole).
            Inner::Watched(slot) => slot.lock().as_ref().is_some_and(|b| b.is_end_stream()),
        }
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        if this.timed_out {
            return Poll::Ready(None);
        }
        let polled = this.poll_inner(cx);
        match &polled {
            // Cut: the connection goes with the lease.
            Poll::Ready(Some(Err(_))) => {
                this.in_flight = None;
                this.lease = None;
            }
            Poll::Ready(None) => this.ended(),
            _ if this.inner_ended() => this.ended(),
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.timed_out || self.inner_ended()
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            Inner::Owned(b) => b.size_hint(),
            Inner::Watched(slot) => slot
                .lock()
                .as_ref()
                .map_or_else(|| SizeHint::with_exact(0), |b| b.size_hint()),
        }
    }
}
