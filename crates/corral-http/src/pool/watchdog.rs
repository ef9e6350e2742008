//! The total-timeout watchdog: cuts an upstream body that is still open at its deadline even
//! when nobody polls it.
//!
//! A slow client stops hyper from polling the response body (its socket is full), so a
//! deadline checked inside `poll_frame` would never fire and the origin connection would stay
//! held as long as the client likes. Each upstream has one `total_timeout`, so deadlines
//! arrive in order: one FIFO and one task per upstream suffice, with no timer per request.
//! The task sleeps until the oldest deadline, then drops that body's connection (its
//! [`Incoming`] is taken out of the shared slot: hyper closes a connection whose body was
//! dropped unread, it never goes back to the pool). A body that ended first left only a dead
//! `Weak` behind, skipped at no cost.
//!
//! Only bodies that can outgrow the socket buffers are watched (see [`worth_watching`]): a
//! smaller one is already read off the origin's connection by the time a client could stall.

use std::collections::VecDeque;
use std::sync::{Arc, Weak};

use hyper::body::Incoming;
use parking_lot::Mutex;
use tokio::sync::Notify;
use tokio::time::Instant;

/// An upstream body the watchdog may cut: `None` once cut (or ended).
pub(crate) type Slot = Mutex<Option<Incoming>>;

/// Bodies at most this large (by `Content-Length`) are not watched: they fit in the socket
/// buffers between the origin and Corral, so the origin is done with them at once.
const UNWATCHED_MAX: u64 = 64 * 1024;

/// Whether a body of this size hint needs the watchdog.
pub(crate) fn worth_watching(body: &Incoming) -> bool {
    use http_body::Body as _;
    !body.is_end_stream() && body.size_hint().exact().is_none_or(|n| n > UNWATCHED_MAX)
}

/// One upstream's queue of watched bodies, oldest deadline first.
#[derive(Default)]
pub(crate) struct Watchdog {
    queue: Mutex<VecDeque<(Instant, Weak<Slot>)>>,
    wake: Arc<Notify>,
    started: std::sync::atomic::AtomicBool,
}

impl Watchdog {
    /// Watches `body` until `deadline`; the returned slot is what the body reads from.
    pub(crate) fn watch(self: &Arc<Self>, body: Incoming, deadline: Instant) -> Arc<Slot> {
        let slot = Arc::new(Mutex::new(Some(body)));
        let was_empty = {
            let mut q = self.queue.lock();
            q.push_back((deadline, Arc::downgrade(&slot)));
            q.len() == 1
        };
        if !self.started.swap(true, std::sync::atomic::Ordering::AcqRel) {
            // Lazily, on the first watched body: `Upstream::new` runs without a runtime.
            tokio::spawn(run(Arc::downgrade(self)));
        } else if was_empty {
            self.wake.notify_one();
        }
        slot
    }
}

async fn run(dog: Weak<Watchdog>) {
    loop {
        let Some(d) = dog.upgrade() else { return };
        let next = d.queue.lock().front().map(|(at, _)| *at);
        match next {
            None => {
                let wake = d.wake.clone();
                drop(d);
                // Holds no strong reference while idle: the task ends with its upstream.
                if tokio::time::timeout(std::time::Duration::from_secs(60), wake.notified())
                    .await
                    .is_err()
                    && dog.strong_count() == 0
                {
                    return;
                }
            }
            Some(at) if at > Instant::now() => {
                drop(d);
                tokio::time::sleep_until(at).await;
            }
            Some(_) => {
                let expired = d.queue.lock().pop_front();
                if let Some(slot) = expired.and_then(|(_, w)| w.upgrade()) {
                    if slot.lock().take().is_some() {
                        tracing::debug!("upstream body cut at its total timeout");
                    }
                }
            }
        }
    }
}
