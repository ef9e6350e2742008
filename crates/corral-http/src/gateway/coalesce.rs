//! coalesce: one fetch per key. Followers wait for the leader (bounded) and are answered
//! from what it stored or carried; with a shared tier the leader asks L2 and the cluster-wide
//! fill lease first.

use super::*;
use corral_core::judge::Verdict;

impl Gateway {
    /// coalesce: one fetch per key; everyone else waits for it and looks up again.
    pub(super) async fn coalesce(
        self: &Arc<Self>,
        ctx: Ctx,
        stale: Option<Entry>,
        fwd: Fwd,
        client: SocketAddr,
    ) -> Response<Body> {
        if ctx.cc.no_store || self.uncacheable.contains_key(&ctx.key) {
            return self.fetch(ctx, stale, fwd, client, None, None).await;
        }
        // One budget for all rounds: a follower waits `coalesce_timeout` in all, however many
        // leaders in turn let it down (a leader that gave up, a fill that did not suit it).
        let deadline = Instant::now() + self.config.coalesce_timeout;
        let mut counted = false;
        for _ in 0..3 {
            let follower = match self.flights.join(ctx.key.clone()) {
                Role::Leader(leader) => {
                    if let Some(tier) = self.shared.get() {
                        let tier = tier.clone();
                        return self
                            .lead_with_tier(tier, ctx, stale, fwd, client, leader)
                            .await;
                    }
                    return self
                        .fetch(ctx, stale, fwd, client, Some(leader), None)
                        .await;
                }
                Role::Follower(f) => f,
            };
            if !std::mem::replace(&mut counted, true) {
                self.metrics.coalesced.inc();
            }
            let left = deadline.saturating_duration_since(Instant::now());
            let span = corral_telemetry::phase("coalesce");
            let waited = follower.wait(left).await;
            drop(span);
            match waited {
                Wait::Done(FlightOutcome::Stored(carried)) => {
                    if let Some(resp) = self.collapsed_hit(&ctx, fwd, carried) {
                        return resp;
                    }
                }
                Wait::Done(FlightOutcome::Uncacheable) => break,
                Wait::Done(FlightOutcome::Failed(err)) => {
                    if let Some(resp) = self.stale_on_error(&ctx, stale.as_ref()) {
                        return resp;
                    }
                    self.metrics.answered(Outcome::Miss);
                    let mut cs = CacheStatus::forward(fwd);
                    cs.collapsed = true;
                    cs.detail = Some(err.kind());
                    return deliver::error(err.status(), &err.to_string(), Some(cs));
                }
                Wait::TimedOut => break,
                Wait::Abandoned => {}
            }
        }
        self.fetch(ctx, stale, fwd, client, None, None).await
    }

    /// The coalescing leader with a shared tier: L2 first, then the cluster-wide fill lease
    /// (waiting for another replica's fill, bounded), then the origin.
    pub(super) async fn lead_with_tier(
        self: &Arc<Self>,
        tier: Arc<dyn SharedTier>,
        ctx: Ctx,
        stale: Option<Entry>,
        fwd: Fwd,
        client: SocketAddr,
        leader: Flight,
    ) -> Response<Body> {
        let mut lease = None;
        let mut stale = stale;
        if fwd != Fwd::Request {
            for round in 0..3 {
                match self.shared_hit(&*tier, &ctx).await {
                    TierAnswer::Hit(resp) => {
                        leader.finish(FlightOutcome::Stored(None));
                        return resp;
                    }
                    // Stale or soft-purged in L2: still worth a conditional request.
                    TierAnswer::Stale(found) => stale = Some(found),
                    TierAnswer::Miss => {}
                    // The tier just failed: no lease call either.
                    TierAnswer::Unavailable => break,
                }
                if round == 2 {
                    break;
                }
                let span = corral_telemetry::phase("lease");
                let leased = tier.lease(ctx.key.view()).await;
                drop(span);
                match leased {
                    LeaseOutcome::Held(l) => {
                        // Another replica may have filled L2 and released its lease between
                        // our lookup and our lease: look once more before the origin.
                        if let TierAnswer::Hit(resp) = self.shared_hit(&*tier, &ctx).await {
                            drop(l);
                            leader.finish(FlightOutcome::Stored(None));
                            return resp;
                        }
                        lease = Some(l);
                        break;
                    }
                    LeaseOutcome::Filled => {}
                    LeaseOutcome::Proceed => break,
                }
            }
        }
        self.fetch(ctx, stale, fwd, client, Some(leader), lease)
            .await
    }

    /// An answer from the shared tier, stored in L1 on the way, if it is fresh for this request;
    /// else the entry found, if any (to revalidate).
    pub(super) async fn shared_hit(&self, tier: &dyn SharedTier, ctx: &Ctx) -> TierAnswer {
        let policy = &ctx.route.policy;
        let purge_seq = self.store.purge_seq();
        let span = corral_telemetry::phase("l2");
        let found = tier
            .lookup(ctx.key.view(), &ctx.headers, policy, purge_seq)
            .await;
        drop(span);
        let found = match found {
            SharedLookup::Found(f) => f,
            SharedLookup::Miss => return TierAnswer::Miss,
            SharedLookup::Unavailable => return TierAnswer::Unavailable,
        };
        match found.verdict {
            Verdict::Fresh => {}
            // Marked before it is stored, so that no lookup here sees it unmarked.
            Verdict::Stale => found.entry.mark_soft_purged(),
            Verdict::Gone => return TierAnswer::Miss,
        }
        let entry = self.store.insert(found.entry, policy.max_variants);
        let (age, fresh) = entry.age_and_freshness(self.now());
        let Reuse::Fresh { ttl } = freshness::reuse(
            &fresh,
            age,
            &ctx.cc,
            entry.is_soft_purged(),
            policy.honor_request_no_cache,
        ) else {
            return TierAnswer::Stale(entry);
        };
        self.metrics.answered(Outcome::Hit);
        let mut cs = CacheStatus::hit(ttl);
        cs.detail = Some("l2");
        TierAnswer::Hit(deliver::entry(&entry, &ctx.method, &ctx.headers, cs, age))
    }

    /// A coalesced request's answer from what the leader stored, if it suits this request.
    pub(super) fn collapsed_hit(
        &self,
        ctx: &Ctx,
        fwd: Fwd,
        carried: Option<Entry>,
    ) -> Option<Response<Body>> {
        let entry = match self.store.lookup(ctx.key.view(), &ctx.headers) {
            Lookup::Found(entry) => entry,
            // Not stored (refused by admission, or purged during the fetch, which the leader's
            // own client is answered with too): the fill still answers those who waited.
            _ => carried.filter(|e| e.variant().matches(&ctx.headers))?,
        };
        // A stored part answers only the ranges it holds (lookup's business, not a follower's).
        if entry.status() == StatusCode::PARTIAL_CONTENT {
            return None;
        }
        let (age, fresh) = entry.age_and_freshness(self.now());
        let Reuse::Fresh { ttl } =
            freshness::reuse(&fresh, age, &ctx.cc, entry.is_soft_purged(), false)
        else {
            return None;
        };
        self.metrics.answered(Outcome::Miss);
        let mut cs = CacheStatus::forward(fwd);
        cs.collapsed = true;
        cs.fwd_status = Some(entry.status().as_u16());
        cs.ttl = Some(ttl.as_secs() as i64);
        Some(deliver::entry(&entry, &ctx.method, &ctx.headers, cs, age))
    }
}

/// What the shared tier offered the coalescing leader (short-lived: not worth boxing).
#[allow(clippy::large_enum_variant)]
pub(super) enum TierAnswer {
    /// Fresh for this request: the answer.
    Hit(Response<Body>),
    /// Found but not fresh for this request (stale, soft-purged): a validator to use.
    Stale(Entry),
    Miss,
    Unavailable,
}
