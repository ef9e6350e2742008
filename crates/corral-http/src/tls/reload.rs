//! TLS material that follows its files: one reload mechanism for the TLS listeners (proxy and
//! admin: [`super::server`]) and the peer client (`[cluster] tls`: [`super::client`]).
//!
//! Every `reload_interval` the files are read and hashed. Contents are compared, not mtimes:
//! a Kubernetes Secret volume swaps a symlink (`..data`), which may keep mtimes, and an
//! unreadable file hashes as its error, so a file that stays missing is one state, not a new
//! failure every tick. When the hash differs from the last one tried, the value is built again
//! from the files (by the loader, which checks what it reads: certificates parse, the key is
//! the certificate's) and, only if that succeeds, swapped in whole. A failed build keeps the
//! previous value, logs why at `warn` and counts `result="error"` once for that content; the
//! next change is tried again.
//!
//! The files are hashed again after the build: if they changed meanwhile (a Secret update
//! caught half way, one file old and one new), what was read may be a mix, so nothing is
//! swapped or counted and the next tick tries again.
//!
//! Readers take the current value ([`Watched::current`], or a [`watch::Receiver`] from
//! [`Watched::subscribe`] for crates that must not depend on this one, like the peer client in
//! `corral-cluster`). What they already built from an older value — an open TLS connection —
//! keeps it: only new handshakes see a reload, so nothing is dropped.

use std::hash::{BuildHasher, Hasher};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use tokio::sync::watch;

use super::metrics::ResultLabel;

/// Builds the value from the files (an error names the file and what is wrong with it).
pub type Loader<T> = Box<dyn Fn() -> Result<T, String> + Send + Sync>;

/// A value built from `files`, rebuilt when their contents change.
pub struct Watched<T> {
    /// What the log lines call it (`TLS listener certificates`, `peer TLS`).
    what: &'static str,
    files: Vec<PathBuf>,
    load: Loader<T>,
    current: watch::Sender<Arc<T>>,
    /// The state of the files last tried, good or bad; held while a reload runs, so two
    /// never interleave.
    tried: Mutex<u64>,
    reloads: Family<ResultLabel, Counter>,
}

impl<T> std::fmt::Debug for Watched<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watched")
            .field("what", &self.what)
            .field("files", &self.files)
            .finish_non_exhaustive()
    }
}

/// Hashes the files' contents, an unreadable file as its error: what decides whether to
/// reload.
fn state(files: &[PathBuf]) -> u64 {
    let mut h = foldhash::fast::FixedState::with_seed(0x7a11).build_hasher();
    for f in files {
        match std::fs::read(f) {
            Ok(bytes) => {
                h.write_u8(1);
                h.write(&bytes);
            }
            Err(e) => {
                h.write_u8(2);
                h.write(e.to_string().as_bytes());
            }
        }
        h.write_u8(0);
    }
    h.finish()
}

impl<T: Send + Sync + 'static> Watched<T> {
    /// Builds the first value; an error here is a start error (the caller names the key).
    /// `reloads` counts later reloads by result.
    pub fn new(
        what: &'static str,
        files: Vec<PathBuf>,
        load: Loader<T>,
        reloads: Family<ResultLabel, Counter>,
    ) -> Result<Arc<Watched<T>>, String> {
        let tried = state(&files);
        let first = load()?;
        Ok(Arc::new(Watched {
            what,
            files,
            load,
            current: watch::Sender::new(Arc::new(first)),
            tried: Mutex::new(tried),
            reloads,
        }))
    }

    /// The value new connections use now.
    pub fn current(&self) -> Arc<T> {
        self.current.borrow().clone()
    }

    /// A receiver that always holds the current value.
    pub fn subscribe(&self) -> watch::Receiver<Arc<T>> {
        self.current.subscribe()
    }

    /// One check: rebuilds when the files' contents changed. Returns whether it swapped.
    pub fn reload_if_changed(&self) -> bool {
        let mut tried = self.tried.lock();
        let before = state(&self.files);
        if before == *tried {
            return false;
        }
        let built = (self.load)();
        if state(&self.files) != before {
            tracing::debug!(
                what = self.what,
                "files changed while reloading; trying again"
            );
            return false;
        }
        *tried = before;
        match built {
            Ok(value) => {
                self.current.send_replace(Arc::new(value));
                tracing::info!(what = self.what, files = ?self.files, "TLS files reloaded");
                self.count("ok");
                true
            }
            Err(e) => {
                tracing::warn!(what = self.what, error = %e, "TLS reload failed: keeping what was loaded");
                self.count("error");
                false
            }
        }
    }

    fn count(&self, result: &'static str) {
        self.reloads.get_or_create(&ResultLabel { result }).inc();
    }

    /// Checks the files every `every` while anyone still uses the value: an owner holding
    /// the `Arc`, or a receiver from [`Watched::subscribe`]. With no files, nothing to watch.
    pub fn spawn_reloader(self: &Arc<Self>, every: Duration) {
        if self.files.is_empty() {
            return;
        }
        let watched = self.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                // Only this task holds it and nobody subscribed: no reader is left.
                if Arc::strong_count(&watched) == 1 && watched.current.is_closed() {
                    return;
                }
                watched.reload_if_changed();
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A value read from one file: its text, refused when it says "bad".
    fn watched(dir: &std::path::Path) -> (Arc<Watched<String>>, Family<ResultLabel, Counter>) {
        let file = dir.join("value");
        std::fs::write(&file, "one").unwrap();
        let reloads = Family::<ResultLabel, Counter>::default();
        let path = file.clone();
        let load: Loader<String> = Box::new(move || {
            let text = std::fs::read_to_string(&path).map_err(|e| e.to_string())?;
            if text == "bad" {
                return Err("bad content".into());
            }
            Ok(text)
        });
        let w = Watched::new("test", vec![file], load, reloads.clone()).unwrap();
        (w, reloads)
    }

    fn count(reloads: &Family<ResultLabel, Counter>, result: &'static str) -> u64 {
        reloads.get_or_create(&ResultLabel { result }).get()
    }

    #[test]
    fn a_change_is_swapped_in_and_a_bad_one_kept_out_counted_once() {
        let dir = tempfile::tempdir().unwrap();
        let (w, reloads) = watched(dir.path());
        let file = dir.path().join("value");
        let seen = w.subscribe();
        assert!(!w.reload_if_changed(), "unchanged: nothing to do");
        assert_eq!(count(&reloads, "ok") + count(&reloads, "error"), 0);

        std::fs::write(&file, "two").unwrap();
        assert!(w.reload_if_changed());
        assert_eq!(*w.current(), "two");
        assert_eq!(**seen.borrow(), "two", "subscribers see the new value");
        assert_eq!(count(&reloads, "ok"), 1);

        std::fs::write(&file, "bad").unwrap();
        assert!(!w.reload_if_changed());
        assert!(!w.reload_if_changed(), "the same bad content is tried once");
        assert_eq!(*w.current(), "two", "the previous value stays");
        assert_eq!(count(&reloads, "error"), 1);

        std::fs::remove_file(&file).unwrap();
        assert!(!w.reload_if_changed());
        assert!(
            !w.reload_if_changed(),
            "a file that stays missing counts once"
        );
        assert_eq!(count(&reloads, "error"), 2);
        assert_eq!(*w.current(), "two");

        std::fs::write(&file, "three").unwrap();
        assert!(w.reload_if_changed(), "the next good content is taken");
        assert_eq!(*w.current(), "three");
        assert_eq!(count(&reloads, "ok"), 2);
    }

    #[test]
    fn a_first_load_that_fails_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("missing");
        let path = file.clone();
        let load: Loader<String> =
            Box::new(move || std::fs::read_to_string(&path).map_err(|e| e.to_string()));
        assert!(Watched::new("test", vec![file], load, Family::default()).is_err());
    }
}
