//! lookup: serve from the store when the stored response may be reused now (fresh, or stale
//! where a directive allows it); a stale-while-revalidate refresh runs in the background. A
//! stored part goes to `partial_fill`; a single range with nothing stored is fetched as it is.
//! Every answer leaves through `deliver::targeted_fields` (RFC 9213).

use corral_core::policy::partial;

use super::partial_fill::PartAnswer;
use super::*;

impl Gateway {
    /// lookup: serve from the store when allowed, else go forward. Whatever answers, the
    /// targeted cache-control fields are applied to it on the way out.
    pub(super) async fn lookup(
        self: &Arc<Self>,
        req: Request<Incoming>,
        route: Arc<Route>,
        key: Key,
        client: SocketAddr,
    ) -> Response<Body> {
        let policy = route.policy.clone();
        let mut resp = self.lookup_and_answer(req, route, key, client).await;
        deliver::targeted_fields(&mut resp, &policy.targeted);
        resp
    }

    async fn lookup_and_answer(
        self: &Arc<Self>,
        req: Request<Incoming>,
        route: Arc<Route>,
        key: Key,
        client: SocketAddr,
    ) -> Response<Body> {
        let cc = RequestDirectives::from_headers(req.headers());
        let mut stale = None;
        let span = corral_telemetry::phase("lookup");
        let found = match self.store.lookup(key.view(), req.headers()) {
            // A stored part answers the ranges it holds; otherwise it is as good as nothing.
            Lookup::Found(entry) if entry.status() == StatusCode::PARTIAL_CONTENT => {
                match self.answer_from_part(&req, &route, &entry, &cc) {
                    PartAnswer::Answer(resp) => return resp,
                    PartAnswer::Complete(range) => {
                        return self
                            .complete_part(req, route, key, client, entry, range)
                            .await;
                    }
                    PartAnswer::Miss => Lookup::Miss,
                }
            }
            other => other,
        };
        let fwd = match found {
            Lookup::Found(entry) => {
                let (age, fresh) = entry.age_and_freshness(self.now());
                match freshness::reuse(
                    &fresh,
                    age,
                    &cc,
                    entry.is_soft_purged(),
                    route.policy.honor_request_no_cache,
                ) {
                    Reuse::Fresh { ttl } => {
                        self.metrics.answered(Outcome::Hit);
                        return deliver::entry(
                            &entry,
                            req.method(),
                            req.headers(),
                            CacheStatus::hit(ttl),
                            age,
                        );
                    }
                    Reuse::StaleAccepted => {
                        self.metrics.answered(Outcome::Stale);
                        let cs = stale_status(&entry, age, "stale");
                        return deliver::entry(&entry, req.method(), req.headers(), cs, age);
                    }
                    Reuse::StaleWhileRevalidate => {
                        self.metrics.answered(Outcome::Stale);
                        self.refresh_in_background(&req, &route, &key, &entry);
                        let cs = stale_status(&entry, age, "stale-while-revalidate");
                        return deliver::entry(&entry, req.method(), req.headers(), cs, age);
                    }
                    Reuse::Revalidate(reason) => {
                        stale = Some(entry);
                        if reason == RevalidateReason::Request {
                            Fwd::Request
                        } else {
                            Fwd::Stale
                        }
                    }
                }
            }
            Lookup::VaryMiss => Fwd::VaryMiss,
            Lookup::Miss => Fwd::Miss,
        };
        drop(span);
        if cc.only_if_cached {
            self.metrics.answered(Outcome::Miss);
            let mut cs = CacheStatus::forward(fwd);
            cs.detail = Some("only-if-cached");
            return deliver::error(
                StatusCode::GATEWAY_TIMEOUT,
                "only-if-cached: no usable stored response",
                Some(cs),
            );
        }
        // A HEAD or range request that cannot be answered from the store is passed through:
        // neither gives us a whole body to store.
        if req.method() == Method::HEAD && !req.headers().contains_key(header::RANGE) {
            return self
                .pass(req, &route, client, AfterPass::FreshenFromHead(key), None)
                .await;
        }
        // A single range with nothing stored is fetched as it is and its 206 stored, without
        // coalescing (another request's range would not answer it). Any other range request
        // (several ranges, If-Range, or a stale whole response to validate) passes.
        let storable_range =
            req.method() == Method::GET && partial::storable_request(req.headers()).is_some();
        if req.headers().contains_key(header::RANGE) && !(storable_range && stale.is_none()) {
            return self
                .pass(req, &route, client, AfterPass::Nothing, None)
                .await;
        }
        let (parts, _body) = req.into_parts();
        let ctx = Ctx {
            method: parts.method,
            headers: parts.headers,
            cc,
            route,
            key,
            transport: Transport::of(&parts.extensions),
        };
        if storable_range {
            return self.fetch(ctx, None, fwd, client, None, None).await;
        }
        self.coalesce(ctx, stale, fwd, client).await
    }

    /// A stale response standing in for an upstream failure, when `stale-if-error` allows.
    pub(super) fn stale_on_error(
        &self,
        ctx: &Ctx,
        stale: Option<&Entry>,
    ) -> Option<Response<Body>> {
        let entry = stale?;
        let (age, fresh) = entry.age_and_freshness(self.now());
        if !freshness::usable_on_error(&fresh, age, &ctx.cc) {
            return None;
        }
        self.metrics.answered(Outcome::Stale);
        let cs = stale_status(entry, age, "stale-if-error");
        Some(deliver::entry(entry, &ctx.method, &ctx.headers, cs, age))
    }

    /// Refreshes a stale entry in the background (stale-while-revalidate), once per key.
    pub(super) fn refresh_in_background(
        self: &Arc<Self>,
        req: &Request<Incoming>,
        route: &Arc<Route>,
        key: &Key,
        entry: &Entry,
    ) {
        let Role::Leader(flight) = self.flights.join(key.clone()) else {
            return; // a refresh or fetch is already under way
        };
        let ctx = Ctx {
            method: Method::GET,
            headers: req.headers().clone(),
            cc: RequestDirectives::default(),
            route: route.clone(),
            key: key.clone(),
            transport: Transport::of(req.extensions()),
        };
        let gateway = self.clone();
        let entry = entry.clone();
        tokio::spawn(async move { gateway.refresh(ctx, entry, flight).await });
    }

    pub(super) async fn refresh(self: Arc<Self>, ctx: Ctx, old: Entry, flight: Flight) {
        let purge_seq = self.store.purge_seq();
        let request_time = self.now();
        let req = self.origin_request(&ctx, Some(&old), None);
        self.metrics.origin_requests.inc();
        let Ok(resp) = ctx.route.upstream.send(req).await else {
            return; // the stale entry stays; the next request tries again
        };
        let timing = Timing::new(request_time, self.now(), resp.headers());
        if resp.status() == StatusCode::NOT_MODIFIED {
            let entry = self.freshen(
                ctx.key.view(),
                &old,
                resp.headers(),
                timing,
                purge_seq,
                &ctx.route.policy,
            );
            flight.finish(FlightOutcome::Stored(Some(entry)));
            return;
        }
        if resp.status().is_server_error() {
            return;
        }
        // Drain the new response through the same tee a client request would use.
        let resp =
            self.store_and_deliver(ctx, resp, timing, purge_seq, Fwd::Stale, Some(flight), None);
        let _ = http_body_util::BodyExt::collect(resp.into_body()).await;
    }
}

pub(super) fn stale_status(entry: &Entry, age: Duration, detail: &'static str) -> CacheStatus {
    let mut cs = CacheStatus::hit(Duration::ZERO);
    cs.ttl = Some(entry.freshness().lifetime.as_secs() as i64 - age.as_secs() as i64);
    cs.detail = Some(detail);
    cs
}
