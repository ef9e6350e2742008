//! The hook for a shared tier behind the in-process store (the Redis L2 of `corral-redis`,
//! wired by the binary). The gateway consults it only on the coalescing leader's path — one
//! lookup per key and replica however many requests wait — and writes fills to it behind the
//! client's back. Without a tier, nothing on the hot path changes.

use corral_core::entry::Entry;
use corral_core::judge::Verdict;
use corral_core::{CachePolicy, KeyRef};
use futures_util::future::BoxFuture;
use http::HeaderMap;

/// An entry found in the shared tier.
#[derive(Debug)]
pub struct SharedEntry {
    pub entry: Entry,
    /// How the tier's purges judge it: [`Verdict::Fresh`], or [`Verdict::Stale`] when a soft
    /// purge covers it (revalidate before serving). A tier does not return a
    /// [`Verdict::Gone`] entry; the gateway would treat one as a miss.
    pub verdict: Verdict,
}

/// What a shared-tier lookup found.
#[derive(Debug)]
#[allow(clippy::large_enum_variant)] // short-lived; boxing would cost an allocation per hit
pub enum SharedLookup {
    Found(SharedEntry),
    Miss,
    /// The tier could not answer (error, timeout, breaker open): do not ask it for a lease
    /// either, go to the origin.
    Unavailable,
}

/// A held fill lease; dropping it releases it (the fill failed or was not stored).
pub trait FillLease: Send + 'static {
    /// Releases the lease once the fill is in the tier, waking whoever waits for it.
    fn release(self: Box<Self>) -> BoxFuture<'static, ()>;
}

/// What asking for the fill lease ended with.
pub enum LeaseOutcome {
    /// This replica fetches; hand the lease to [`SharedTier::store`].
    Held(Box<dyn FillLease>),
    /// Another replica's fill finished: look in the tier again.
    Filled,
    /// Fetch without a lease.
    Proceed,
}

/// A shared cache tier (L2).
pub trait SharedTier: Send + Sync + 'static {
    /// Looks up the variant of `key` that `request` selects. Bounded in time; `None` on any
    /// trouble. `purge_seq` is the store's purge sequence when the lookup started.
    fn lookup<'a>(
        &'a self,
        key: KeyRef<'a>,
        request: &'a HeaderMap,
        policy: &'a CachePolicy,
        purge_seq: u64,
    ) -> BoxFuture<'a, SharedLookup>;

    /// Stores a fill, in the background; releases `lease` once written.
    fn store(&self, key: KeyRef<'_>, entry: Entry, lease: Option<Box<dyn FillLease>>);

    /// Takes the cluster-wide fill lease for `key`, or waits (bounded) for its holder's fill.
    fn lease<'a>(&'a self, key: KeyRef<'a>) -> BoxFuture<'a, LeaseOutcome>;
}
