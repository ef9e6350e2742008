//! What the PostgreSQL and the MariaDB followers share: the reconnect loop around a database's
//! session, the reader task that feeds a session, and the session's event loop.
//!
//! A database says how to connect and stream until an error ([`ChangeStream`]) and how to
//! handle what the stream brings ([`Session`]); the loops here own the rest, once for both:
//! a jittered [`Backoff`] between sessions that starts over only once a session streams (a
//! server that accepts the connection and refuses the stream is retried ever more slowly),
//! every failure counted in [`Progress`] and the stream reported down, and a committed
//! transaction handed to the applier only as room frees in its queue, while acknowledgements
//! and the periodic report keep flowing.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use corral_core::Backoff;
use tokio::sync::mpsc;

use crate::progress::Progress;
use crate::transaction::Committed;

/// A database's change stream, as the reconnect loop drives it.
pub(crate) trait ChangeStream {
    type Error: std::fmt::Display + From<std::io::Error>;

    /// The source's name, for the logs.
    fn name(&self) -> &str;

    /// One session: connects, prepares and streams until an error or the server's end
    /// (`Ok`). Calls [`Streaming::started`] once the server streams.
    fn session(
        &self,
        progress: &Arc<Progress>,
        out: &mpsc::Sender<Committed>,
        streaming: &mut Streaming<'_>,
    ) -> impl Future<Output = Result<(), Self::Error>>;
}

/// Follows `source` until the task is dropped: a session after another, with backoff after
/// any error. Committed transactions go to `out`, in order.
pub(crate) async fn follow<S: ChangeStream>(
    source: &S,
    progress: &Arc<Progress>,
    out: &mpsc::Sender<Committed>,
) {
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(10));
    loop {
        let mut streaming = Streaming {
            progress,
            backoff: &mut backoff,
            started: false,
        };
        let e = match source.session(progress, out, &mut streaming).await {
            Ok(()) => S::Error::from(stopped("the server ended the stream")),
            Err(e) => e,
        };
        tracing::warn!(source = %source.name(), error = %e, "change stream interrupted; reconnecting");
        progress.failed(&e);
        backoff.wait().await;
    }
}

/// Told by a session when the server streams: the progress says so, and the backoff starts
/// over (a session that got this far was a success, whatever ends it later).
pub(crate) struct Streaming<'a> {
    progress: &'a Progress,
    backoff: &'a mut Backoff,
    started: bool,
}

impl Streaming<'_> {
    /// The server streams; only the first call in a session counts.
    pub(crate) fn started(&mut self) {
        if !self.started {
            self.started = true;
            self.progress.set_streaming(true);
            self.backoff.reset();
        }
    }
}

fn stopped(what: &str) -> std::io::Error {
    std::io::Error::other(what.to_owned())
}

/// One read of a frame, borrowing the reader.
pub(crate) type Read<'r, T, E> = Pin<Box<dyn Future<Output = Result<T, E>> + Send + 'r>>;

/// Reads a stream's frames on a task of its own, into the returned channel, until the first
/// error (sent too): a read cut short by `select!` would lose bytes, a channel does not.
/// The task stops when the receiver is dropped; abort it to stop it sooner.
pub(crate) fn spawn_reader<R, T, E, F>(
    mut reader: R,
    mut read: F,
) -> (tokio::task::JoinHandle<()>, mpsc::Receiver<Result<T, E>>)
where
    R: Send + 'static,
    T: Send + 'static,
    E: Send + 'static,
    F: for<'r> FnMut(&'r mut R) -> Read<'r, T, E> + Send + 'static,
{
    let (tx, rx) = mpsc::channel(64);
    let task = tokio::spawn(async move {
        loop {
            let frame = read(&mut reader).await;
            let end = frame.is_err();
            if tx.send(frame).await.is_err() || end {
                return;
            }
        }
    });
    (task, rx)
}

/// What a database's session does with its stream, driven by [`pump`].
pub(crate) trait Session {
    /// One frame read from the stream.
    type Frame;
    type Error: From<std::io::Error>;

    /// The committed transaction waiting for room in the applier's queue: while there is
    /// one, no frame is read.
    fn queued(&mut self) -> &mut Option<Committed>;

    /// Handles one frame; `false` when the server ended the stream.
    fn frame(&mut self, frame: Self::Frame) -> impl Future<Output = Result<bool, Self::Error>>;

    /// The applier acknowledged more.
    fn acknowledged(&mut self) -> impl Future<Output = Result<(), Self::Error>>;

    /// The periodic report or store of the acknowledged position.
    fn tick(&mut self) -> impl Future<Output = Result<(), Self::Error>>;
}

/// Runs `session` over the frames from `frames` until an error or the server's end, with
/// [`Session::tick`] every `period`.
pub(crate) async fn pump<S: Session>(
    mut session: S,
    progress: &Progress,
    mut frames: mpsc::Receiver<Result<S::Frame, S::Error>>,
    out: &mpsc::Sender<Committed>,
    period: Duration,
) -> Result<(), S::Error> {
    let mut acked = progress.subscribe_acked();
    let mut tick = tokio::time::interval(period);
    loop {
        let waiting = session.queued().is_some();
        tokio::select! {
            permit = out.reserve(), if waiting => {
                let permit = permit.map_err(|_| stopped("the applier stopped"))?;
                if let Some(c) = session.queued().take() {
                    permit.send(c);
                }
            }
            frame = frames.recv(), if !waiting => {
                let frame = frame.ok_or_else(|| stopped("the reader stopped"))??;
                if !session.frame(frame).await? {
                    return Ok(());
                }
            }
            changed = acked.changed() => {
                changed.map_err(|_| stopped("progress dropped"))?;
                session.acknowledged().await?;
            }
            _ = tick.tick() => session.tick().await?,
        }
    }
}
