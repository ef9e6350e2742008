//! partial: range requests answered from a stored `206`, and a stored prefix completed with a
//! range request to the origin (RFC 9111 §3.3, §3.4). The rules — what a part covers, what
//! to ask for, when two parts join — are `corral_core::policy::partial`'s.

use corral_core::policy::partial::{self, ContentRange};
use corral_core::policy::update;
use http_body_util::BodyExt;

use super::*;
use crate::server::Transport;

/// What a stored part can do for a request.
pub(super) enum PartAnswer {
    /// It holds the requested range: the answer.
    Answer(Response<Body>),
    /// It is a fresh prefix and the request wants more: ask the origin for the rest with
    /// these `Range` and `If-Range` values.
    Complete([HeaderValue; 2]),
    /// Nothing: go on as if nothing were stored.
    Miss,
}

impl Gateway {
    /// What the stored part `entry` can do for `req`.
    pub(super) fn answer_from_part(
        &self,
        req: &Request<Incoming>,
        route: &Route,
        entry: &Entry,
        cc: &RequestDirectives,
    ) -> PartAnswer {
        if req.method() != Method::GET || req.headers().contains_key(header::IF_RANGE) {
            return PartAnswer::Miss;
        }
        let stored_headers = entry.headers().to_map();
        let Some(stored) = ContentRange::of(&stored_headers) else {
            return PartAnswer::Miss;
        };
        let (age, fresh) = entry.age_and_freshness(self.now());
        let soft = entry.is_soft_purged();
        let honor = route.policy.honor_request_no_cache;
        let Reuse::Fresh { ttl } = freshness::reuse(&fresh, age, cc, soft, honor) else {
            return PartAnswer::Miss;
        };
        if let Some(range) = partial::covered(&stored, req.headers()) {
            self.metrics.answered(Outcome::Hit);
            let cs = CacheStatus::hit(ttl);
            return PartAnswer::Answer(deliver::part(entry, &stored, range, cs, age));
        }
        match partial::completion(&stored, &stored_headers) {
            Some(ask) => PartAnswer::Complete(ask),
            None => PartAnswer::Miss,
        }
    }

    /// Asks the origin for the rest of the stored prefix `old`; a `206` that continues it
    /// (same strong `ETag` and length) is joined to it and stored — a whole `200` once
    /// complete — and the client is answered from the result. Anything else is answered as
    /// a fetch of the client's own request would be.
    pub(super) async fn complete_part(
        self: &Arc<Self>,
        req: Request<Incoming>,
        route: Arc<Route>,
        key: Key,
        client: SocketAddr,
        old: Entry,
        [range, if_range]: [HeaderValue; 2],
    ) -> Response<Body> {
        let (parts, _body) = req.into_parts();
        let cc = RequestDirectives::from_headers(&parts.headers);
        let ctx = Ctx {
            transport: Transport::of(&parts.extensions),
            method: parts.method,
            headers: parts.headers,
            cc,
            route,
            key,
        };
        let purge_seq = self.store.purge_seq();
        let request_time = self.now();
        let mut upstream_req = self.origin_request(&ctx, None, Some(client));
        upstream_req
            .headers_mut()
            .insert(header::RANGE, range.clone());
        upstream_req
            .headers_mut()
            .insert(header::IF_RANGE, if_range);
        self.metrics.origin_requests.inc();
        let resp = match ctx.route.upstream.send(upstream_req).await {
            Ok(r) => r,
            Err(err) => {
                self.metrics.answered(Outcome::Miss);
                let mut cs = CacheStatus::forward(Fwd::Partial);
                cs.detail = Some(err.kind());
                let msg = format!("upstream {:?}: {err}", ctx.route.upstream.name);
                return deliver::error(err.status(), &msg, Some(cs));
            }
        };
        let timing = Timing::new(request_time, self.now(), resp.headers());
        let stored_headers = old.headers().to_map();
        let joined = ContentRange::of(&stored_headers).and_then(|stored| {
            partial::continues(&stored, &stored_headers, resp.status(), resp.headers())
                .map(|joined| (stored, joined))
        });
        let Some((stored, joined)) = joined else {
            if resp.status() == StatusCode::OK {
                // If-Range found the stored part outdated: this is the whole new one.
                return self.store_and_deliver(
                    ctx,
                    resp,
                    timing,
                    purge_seq,
                    Fwd::Partial,
                    None,
                    None,
                );
            }
            return self
                .fetch(ctx, None, Fwd::Partial, client, None, None)
                .await;
        };
        let limit = ctx
            .route
            .policy
            .max_object_size
            .saturating_sub(old.body_bytes().len());
        let (parts, body) = resp.into_parts();
        let rest = http_body_util::Limited::new(body, limit).collect().await;
        let rest = match rest.map(|c| c.to_bytes()) {
            Ok(rest) if rest.len() as u64 == joined.last - stored.last => rest,
            // Beyond max_object_size, short, or broken: the client's own request is fetched.
            _ => {
                return self
                    .fetch(ctx, None, Fwd::Partial, client, None, None)
                    .await
            }
        };
        let Some(entry) = self.join_parts(
            &ctx,
            &old,
            stored_headers,
            parts.headers,
            &rest,
            joined,
            &range,
            timing,
            purge_seq,
        ) else {
            return self
                .fetch(ctx, None, Fwd::Partial, client, None, None)
                .await;
        };
        self.metrics.answered(Outcome::Miss);
        let age = entry.age(self.now());
        let mut cs = CacheStatus::forward(Fwd::Partial);
        cs.fwd_status = Some(StatusCode::PARTIAL_CONTENT.as_u16());
        cs.stored = true;
        cs.ttl = Some(entry.freshness().ttl(age).as_secs() as i64);
        if joined.is_whole() {
            return deliver::entry(&entry, &ctx.method, &ctx.headers, cs, age);
        }
        match partial::covered(&joined, &ctx.headers) {
            Some(r) => deliver::part(&entry, &joined, r, cs, age),
            None => {
                self.fetch(ctx, None, Fwd::Partial, client, None, None)
                    .await
            }
        }
    }

    /// Stores the stored part `old` followed by `rest`, with the headers of the newer response
    /// merged in as a 304's would be (§3.4): a `200` when they make the whole representation.
    /// `None` (nothing stored) when the merged response may not be stored.
    #[allow(clippy::too_many_arguments)]
    fn join_parts(
        &self,
        ctx: &Ctx,
        old: &Entry,
        mut headers: HeaderMap,
        mut newer: HeaderMap,
        rest: &[u8],
        joined: ContentRange,
        asked: &HeaderValue,
        timing: Timing,
        purge_seq: u64,
    ) -> Option<Entry> {
        let policy = &ctx.route.policy;
        hygiene::strip_hop_by_hop(&mut newer);
        self.config.tags.strip(&mut newer);
        update::merge_not_modified(&mut headers, &newer);
        let status = if joined.is_whole() {
            headers.remove(header::CONTENT_RANGE);
            StatusCode::OK
        } else {
            headers.insert(header::CONTENT_RANGE, joined.header());
            StatusCode::PARTIAL_CONTENT
        };
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(joined.len()));
        let cc = policy.targeted.directives(&headers);
        let mut request = ctx.headers.clone();
        request.insert(header::RANGE, asked.clone());
        request.remove(header::IF_RANGE);
        let facts = RequestFacts {
            method: &ctx.method,
            headers: &request,
            directives: &ctx.cc,
        };
        storability::check(&facts, status, &headers, &cc, policy).ok()?;
        storability::strip_unshareable(&mut headers, &cc);
        let freshness = Freshness::compute(status, &headers, &cc, &timing, policy);
        let mut body = Vec::with_capacity(old.body_bytes().len() + rest.len());
        body.extend_from_slice(old.body_bytes());
        body.extend_from_slice(rest);
        let tags: Vec<Tag> = old.tags().map(Tag::from).collect();
        let entry = Entry::new(
            ctx.key.view(),
            status,
            &headers,
            &body,
            timing,
            freshness,
            &tags,
            old.variant().clone(),
            purge_seq,
            policy.keep,
        );
        // Parts stay local: the shared tier holds whole responses only.
        Some(self.keep(ctx.key.view(), entry, policy, status == StatusCode::OK))
    }
}
