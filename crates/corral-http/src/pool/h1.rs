//! An HTTP/1.1 upstream connection driven by the task that holds its lease, not by a task of
//! its own (as Pingora does).
//!
//! hyper splits a connection into a [`SendRequest`] handle and a dispatcher future
//! (`http1::Connection`) that does the socket I/O. Spawning the dispatcher makes every request
//! cross tasks twice (the request through hyper's dispatch channel, the response back through
//! a oneshot and its body through a body channel), each crossing a wake-up and a reschedule.
//! Here the dispatcher is kept with its handle ([`H1Conn`]) and polled by whoever waits on the
//! connection: the request's own task while it sends the request and reads the head
//! ([`H1Conn::send`]), whichever task polls the response body after that
//! (`pool/upstream_body.rs`), and the next request's task when it leases the connection from
//! the idle stack ([`H1Conn::ready`]), which is also when a connection the origin closed while
//! parked is noticed.
//!
//! A connection nobody will poll goes back to a task of its own ([`H1Conn::hand_off`]): one
//! whose large body the total-timeout watchdog must be able to cut while the client stalls
//! (`pool/watchdog.rs`: the cut drops the body, and only a running dispatcher then closes the
//! socket), and one parked while it still has work (a request body the origin answered before
//! reading it to its end). It stays in its task for the rest of its life.

use std::future::{poll_fn, Future};
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::{http1, TrySendError};

use crate::body::Body;

/// hyper's dispatcher for one connection, whatever its stream (TCP or TLS).
type Dispatcher = Pin<Box<dyn Future<Output = hyper::Result<()>> + Send>>;

/// An HTTP/1.1 connection: the handle requests are sent with, and its dispatcher while no task
/// of its own drives it.
pub(crate) struct H1Conn {
    send: http1::SendRequest<Body>,
    /// `None`: a spawned task drives the connection, or it has ended.
    dispatcher: Option<Dispatcher>,
}

impl H1Conn {
    /// A freshly handshaken connection, driven by whoever holds it.
    pub(super) fn new<F>(send: http1::SendRequest<Body>, dispatcher: F) -> H1Conn
    where
        F: Future<Output = hyper::Result<()>> + Send + 'static,
    {
        H1Conn {
            send,
            dispatcher: Some(Box::pin(dispatcher)),
        }
    }

    /// Moves the connection's I/O as far as it goes now; wakes `cx` when it can go further.
    pub(super) fn drive(&mut self, cx: &mut Context<'_>) {
        let Some(dispatcher) = &mut self.dispatcher else {
            return;
        };
        if let Poll::Ready(ended) = dispatcher.as_mut().poll(cx) {
            if let Err(e) = ended {
                tracing::debug!(error = %e, "upstream connection ended");
            }
            // Dropping it closes the socket and fails whatever was still waiting on it.
            self.dispatcher = None;
        }
    }

    /// [`drive`](Self::drive) once with nobody to wake: to see where the connection stands
    /// (closed by the origin, ready for the next request) when no task waits on it.
    pub(super) fn drive_once(&mut self) {
        self.drive(&mut Context::from_waker(Waker::noop()));
    }

    /// Gives the connection a task of its own from now on, for when nobody will poll it.
    pub(super) fn hand_off(&mut self) {
        if let Some(dispatcher) = self.dispatcher.take() {
            tokio::spawn(async move {
                if let Err(e) = dispatcher.await {
                    tracing::debug!(error = %e, "upstream connection ended");
                }
            });
        }
    }

    /// Waits until the connection can take a request (its dispatcher has seen the previous
    /// response end); an error when it was closed meanwhile.
    pub(super) async fn ready(&mut self) -> hyper::Result<()> {
        poll_fn(|cx| {
            self.drive(cx);
            self.send.poll_ready(cx)
        })
        .await
    }

    /// Whether the connection can take a request now, without waiting.
    pub(super) fn is_ready(&self) -> bool {
        self.send.is_ready()
    }

    pub(super) fn is_closed(&self) -> bool {
        self.send.is_closed()
    }

    /// Sends `req` and waits for the response head, driving the connection meanwhile (the
    /// request body included, as far as the origin reads it before answering). A request the
    /// connection closed before it went out comes back in the error, as with a spawned one.
    pub(super) async fn send(
        &mut self,
        req: Request<Body>,
    ) -> Result<Response<Incoming>, TrySendError<Request<Body>>> {
        let mut answer = std::pin::pin!(self.send.try_send_request(req));
        poll_fn(|cx| {
            // The dispatcher first: it is what writes the request and reads the answer.
            self.drive(cx);
            answer.as_mut().poll(cx)
        })
        .await
    }
}
