//! An endpoint's idle connections: a stack of HTTP/1.1 connections waiting for their next
//! request, and the one shared HTTP/2 connection when the endpoint speaks h2.
//!
//! A request takes the most recently parked connection (its socket is the warmest) and gives it
//! back through [`Lease::finish`] only once its response was read to its end; a lease dropped
//! before that drops its connection, which hyper then closes, so no request can read the rest
//! of another's answer. There is no task per request: a connection's own task (spawned when it
//! is made) drives it, and parking is a push under a short lock.
//!
//! `keepalive.idle_timeout` is enforced by one reaper task per upstream ([`reap`]), which closes
//! connections parked too long though nobody checks one out; `max_requests` retires a
//! connection when it comes back after its last allowed request.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use hyper::client::conn::{http1, http2};
use parking_lot::{Mutex, RwLock};

use super::{EndpointSet, Keepalive};
use crate::body::Body;

/// The idle connections of one endpoint, kept across rediscoveries of it.
#[derive(Default)]
pub(crate) struct Idle {
    h1: Mutex<Vec<Parked>>,
    h2: Mutex<Option<Shared>>,
    /// Serialises h2 connects: one connection per endpoint carries concurrent requests.
    pub(super) h2_connect: tokio::sync::Mutex<()>,
    /// The endpoint answered ALPN with h2 once: later connects wait for the shared one.
    pub(super) speaks_h2: AtomicBool,
}

struct Parked {
    send: http1::SendRequest<Body>,
    since: Instant,
    served: u32,
}

struct Shared {
    send: http2::SendRequest<Body>,
    last_used: Instant,
    served: u32,
}

/// How a leased connection sends.
pub(crate) enum Sender {
    H1(http1::SendRequest<Body>),
    H2(http2::SendRequest<Body>),
}

/// A connection taken for one request.
pub(crate) struct Lease {
    pub(super) send: Sender,
    /// Requests this connection has carried, this one included.
    pub(super) served: u32,
    /// Taken from the idle stack (it may have been closed under us), not freshly made.
    pub(super) reused: bool,
    home: Arc<Idle>,
    keepalive: Keepalive,
}

impl Lease {
    pub(super) fn new(
        send: Sender,
        served: u32,
        reused: bool,
        home: &Arc<Idle>,
        keepalive: Keepalive,
    ) -> Lease {
        Lease {
            send,
            served,
            reused,
            home: home.clone(),
            keepalive,
        }
    }

    /// The response was read to its end: the connection may carry the next request. An h2
    /// lease is a clone of the shared connection and has nothing to give back.
    pub(crate) fn finish(self) {
        let Sender::H1(send) = self.send else { return };
        let ka = self.keepalive;
        let retired = ka.max_requests != 0 && self.served >= ka.max_requests;
        if retired || send.is_closed() {
            return;
        }
        let mut idle = self.home.h1.lock();
        if idle.len() < ka.max_idle_per_endpoint {
            idle.push(Parked {
                send,
                since: Instant::now(),
                served: self.served,
            });
        }
    }
}

impl Idle {
    /// The most recently parked HTTP/1.1 connection still open and young enough.
    pub(super) fn take_h1(&self, ka: &Keepalive) -> Option<(http1::SendRequest<Body>, u32)> {
        loop {
            let p = self.h1.lock().pop()?;
            if !p.send.is_closed() && p.since.elapsed() < ka.idle_timeout {
                return Some((p.send, p.served));
            }
        }
    }

    /// The shared h2 connection, counted one request more; retired (left to its streams in
    /// flight) once closed or past `max_requests`.
    pub(super) fn shared_h2(&self, ka: &Keepalive) -> Option<(http2::SendRequest<Body>, u32)> {
        let mut slot = self.h2.lock();
        let s = slot.as_mut()?;
        let spent = ka.max_requests != 0 && s.served >= ka.max_requests;
        if s.send.is_closed() || spent {
            *slot = None;
            return None;
        }
        s.served += 1;
        s.last_used = Instant::now();
        Some((s.send.clone(), s.served))
    }

    pub(super) fn share_h2(&self, send: &http2::SendRequest<Body>) {
        self.speaks_h2.store(true, Ordering::Relaxed);
        *self.h2.lock() = Some(Shared {
            send: send.clone(),
            last_used: Instant::now(),
            served: 1,
        });
    }

    /// Forgets the shared h2 connection (it refused a request it should have taken).
    pub(super) fn drop_h2(&self) {
        self.h2.lock().take();
    }

    /// Closes what has been idle `timeout` or longer.
    fn reap(&self, timeout: Duration) {
        self.h1
            .lock()
            .retain(|p| !p.send.is_closed() && p.since.elapsed() < timeout);
        let mut slot = self.h2.lock();
        if slot
            .as_ref()
            .is_some_and(|s| s.send.is_closed() || s.last_used.elapsed() >= timeout)
        {
            *slot = None;
        }
    }
}

/// Runs an upstream's reaper until the upstream is dropped: every quarter of `idle_timeout`
/// (at most every 5 s), each endpoint's connections idle `idle_timeout` or longer are closed.
pub(super) async fn reap(set: Weak<RwLock<Arc<EndpointSet>>>, timeout: Duration) {
    let tick = (timeout / 4).clamp(Duration::from_millis(10), Duration::from_secs(5));
    let mut every = tokio::time::interval(tick);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        let Some(set) = set.upgrade() else { return };
        let endpoints = set.read().clone();
        for e in &endpoints.endpoints {
            e.idle.reap(timeout);
        }
    }
}
