//! store: tee a storable response into the store while it streams to the client; the fill
//! completes (or gives up) when its body ends.

use super::*;

impl Fill {
    fn end(mut self, end: FillEnd) {
        let outcome = match &end {
            FillEnd::Complete(_) => "complete",
            FillEnd::TooLarge => "too-large",
            FillEnd::Failed => "failed",
        };
        corral_telemetry::MaybeSpan::set(&mut self.span, "corral.fill", outcome);
        match end {
            FillEnd::Complete(body) => {
                let partial = self.status == StatusCode::PARTIAL_CONTENT;
                let mut headers = self.headers;
                headers.insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
                let entry = Entry::new(
                    self.key.view(),
                    self.status,
                    &headers,
                    &body,
                    self.timing,
                    self.freshness,
                    &self.tags,
                    self.variant,
                    self.purge_seq,
                    self.policy.keep,
                );
                let entry = self.gateway.store.insert(entry, self.policy.max_variants);
                if let Some(f) = self.flight {
                    f.finish(FlightOutcome::Stored(Some(entry.clone())));
                }
                // A part stays in this replica: the shared tier holds whole responses only.
                if let Some(tier) = self.gateway.shared.get().filter(|_| !partial) {
                    tier.store(self.key.view(), entry, self.lease);
                }
            }
            FillEnd::TooLarge => {
                let gateway = &self.gateway;
                gateway.store.remove(self.key.view());
                gateway.uncacheable.insert(self.key.clone(), ());
                gateway
                    .metrics
                    .not_stored
                    .get_or_create(&crate::metrics::KindLabel { kind: "too-large" })
                    .inc();
                if let Some(f) = self.flight {
                    f.finish(FlightOutcome::Uncacheable);
                }
            }
            // Dropping `self` drops the flight, which releases the waiters to try again.
            FillEnd::Failed => {}
        }
    }
}

impl Gateway {
    /// store: tee a storable response into the store while it streams to the client.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn store_and_deliver(
        self: &Arc<Self>,
        ctx: Ctx,
        resp: Response<UpstreamBody>,
        timing: Timing,
        purge_seq: u64,
        fwd: Fwd,
        flight: Option<Flight>,
        lease: Option<Box<dyn FillLease>>,
    ) -> Response<Body> {
        let (mut parts, body) = resp.into_parts();
        hygiene::strip_hop_by_hop(&mut parts.headers);
        let status = parts.status;
        let policy = &ctx.route.policy;
        let resp_cc = policy.targeted.directives(&parts.headers);
        let facts = RequestFacts {
            method: &ctx.method,
            headers: &ctx.headers,
            directives: &ctx.cc,
        };
        let verdict = storability::check(&facts, status, &parts.headers, &resp_cc, policy);
        let tags = self.config.tags.parse(&parts.headers).tags;
        self.config.tags.strip(&mut parts.headers);
        let mut cs = CacheStatus::forward(fwd);
        cs.fwd_status = Some(status.as_u16());
        let expected = content_length(&parts.headers);
        let too_large = expected.is_some_and(|n| n > policy.max_object_size as u64);
        let storable = match verdict {
            Ok(()) if too_large => Err("too-large"),
            Ok(()) => Ok(()),
            Err(reason) => Err(reason.as_str()),
        };
        if let Err(reason) = storable {
            let request_specific = matches!(verdict, Err(r) if r.is_request_specific());
            self.not_storing(&ctx, reason, request_specific, flight);
            cs.detail = Some(reason);
            self.metrics.answered(Outcome::Miss);
            parts.headers.insert("cache-status", cs.to_header());
            return Response::from_parts(parts, Body::Upstream(body));
        }
        let freshness = Freshness::compute(status, &parts.headers, &resp_cc, &timing, policy);
        let mut stored_headers = parts.headers.clone();
        storability::strip_unshareable(&mut stored_headers, &resp_cc);
        let variant = Variant::of(&ctx.headers, &stored_headers, &policy.key_headers);
        cs.stored = true;
        cs.ttl = Some(freshness.ttl(timing.initial_age).as_secs() as i64);
        let fill = Fill {
            gateway: self.clone(),
            key: ctx.key.clone(),
            status,
            headers: stored_headers,
            timing,
            freshness,
            tags: tags.into_boxed_slice(),
            variant,
            purge_seq,
            policy: policy.clone(),
            flight,
            lease,
            span: corral_telemetry::phase("store"),
        };
        let body = FillBody::new(
            body,
            policy.max_object_size,
            expected,
            Box::new(move |end| fill.end(end)),
        );
        self.metrics.answered(Outcome::Miss);
        // The client already holds this representation: answer 304 and finish the fill in
        // the background.
        if status == StatusCode::OK && deliver::not_modified(&ctx.headers, &parts.headers) {
            let fill = Body::Fill(Box::new(body));
            tokio::spawn(async move {
                let _ = http_body_util::BodyExt::collect(fill).await;
            });
            return deliver::not_modified_response(&parts.headers, cs);
        }
        parts.headers.insert("cache-status", cs.to_header());
        Response::from_parts(parts, Body::Fill(Box::new(body)))
    }

    pub(super) fn not_storing(
        &self,
        ctx: &Ctx,
        reason: &'static str,
        request_specific: bool,
        flight: Option<Flight>,
    ) {
        self.metrics
            .not_stored
            .get_or_create(&crate::metrics::KindLabel { kind: reason })
            .inc();
        // Request-specific reasons say nothing about this URL for the next request: neither
        // the stored response nor coalescing is affected (else any client could evict an
        // entry by sending `Authorization` or `Cache-Control: no-store`).
        if !request_specific {
            // What the origin says about this URL now supersedes what we stored before.
            self.store.remove(ctx.key.view());
            self.uncacheable.insert(ctx.key.clone(), ());
        }
        if let Some(f) = flight {
            f.finish(FlightOutcome::Uncacheable);
        }
    }
}

/// Completes a fill when its body ends: stores the entry and releases the waiters.
pub(super) struct Fill {
    gateway: Arc<Gateway>,
    key: Key,
    status: StatusCode,
    headers: HeaderMap,
    timing: Timing,
    freshness: Freshness,
    tags: Box<[Tag]>,
    variant: Variant,
    purge_seq: u64,
    policy: Arc<CachePolicy>,
    flight: Option<Flight>,
    /// The cluster-wide fill lease, released once L2 holds the fill (or dropped on failure).
    lease: Option<Box<dyn FillLease>>,
    /// The trace's `store` span: from the response head to the fill's end (tee and insert).
    span: Option<corral_telemetry::Span>,
}

pub(super) fn content_length(h: &HeaderMap) -> Option<u64> {
    h.get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}
