//! fetch: the request sent upstream for a cacheable fetch (conditional when a validator is
//! stored, the key's own path and query), and what a 304 or a HEAD tells us about the stored
//! response (§4.3.4, §4.3.5).

use corral_core::policy::{partial, update};

use super::*;

impl Gateway {
    /// fetch: ask the origin (conditionally when a validator is stored), then store and deliver.
    pub(super) async fn fetch(
        self: &Arc<Self>,
        ctx: Ctx,
        stale: Option<Entry>,
        fwd: Fwd,
        client: SocketAddr,
        flight: Option<Flight>,
        lease: Option<Box<dyn FillLease>>,
    ) -> Response<Body> {
        let purge_seq = self.store.purge_seq();
        let request_time = self.now();
        let mut upstream_req = self.origin_request(&ctx, stale.as_ref(), Some(client));
        let span = corral_telemetry::phase("fetch");
        corral_telemetry::inject(upstream_req.headers_mut(), span.as_ref());
        self.metrics.origin_requests.inc();
        let result = ctx.route.upstream.send(upstream_req).await;
        drop(span);
        let response_time = self.now();
        let resp = match result {
            Ok(resp) => resp,
            Err(err) => {
                self.metrics
                    .upstream_errors
                    .get_or_create(&crate::metrics::KindLabel { kind: err.kind() })
                    .inc();
                tracing::warn!(upstream = %ctx.route.upstream.name, error = %err, "upstream request failed");
                if let Some(f) = flight {
                    f.finish(FlightOutcome::Failed(err.clone()));
                }
                if let Some(resp) = self.stale_on_error(&ctx, stale.as_ref()) {
                    return resp;
                }
                self.metrics.answered(Outcome::Miss);
                let mut cs = CacheStatus::forward(fwd);
                cs.detail = Some(err.kind());
                let msg = format!("upstream {:?}: {err}", ctx.route.upstream.name);
                return deliver::error(err.status(), &msg, Some(cs));
            }
        };
        let timing = Timing::new(request_time, response_time, resp.headers());
        let status = resp.status();
        if status == StatusCode::NOT_MODIFIED {
            if let Some(old) = stale.as_ref() {
                return self.revalidated(ctx, old, resp, timing, purge_seq, fwd, flight);
            }
        }
        if status.is_server_error() {
            if let Some(resp) = self.stale_on_error(&ctx, stale.as_ref()) {
                if let Some(f) = flight {
                    f.finish(FlightOutcome::Failed(UpstreamError::Protocol(format!(
                        "status {status}"
                    ))));
                }
                return resp;
            }
        }
        self.store_and_deliver(ctx, resp, timing, purge_seq, fwd, flight, lease)
    }

    /// A 304 to our conditional request: freshen the stored response (§4.3.4) and serve it.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn revalidated(
        self: &Arc<Self>,
        ctx: Ctx,
        old: &Entry,
        resp: Response<UpstreamBody>,
        timing: Timing,
        purge_seq: u64,
        fwd: Fwd,
        flight: Option<Flight>,
    ) -> Response<Body> {
        let entry = self.freshen(
            ctx.key.view(),
            old,
            resp.headers(),
            timing,
            purge_seq,
            &ctx.route.policy,
        );
        if let Some(f) = flight {
            f.finish(FlightOutcome::Stored(Some(entry.clone())));
        }
        self.metrics.answered(Outcome::Revalidated);
        let age = entry.age(self.now());
        let mut cs = CacheStatus::forward(fwd);
        cs.fwd_status = Some(304);
        cs.stored = true;
        cs.ttl = Some(entry.freshness().ttl(age).as_secs() as i64);
        deliver::entry(&entry, &ctx.method, &ctx.headers, cs, age)
    }

    /// Merges a 304's headers into a stored response and stores the result (§3.2, §4.3.4).
    pub(super) fn freshen(
        &self,
        key: KeyRef<'_>,
        old: &Entry,
        update: &HeaderMap,
        timing: Timing,
        purge_seq: u64,
        policy: &CachePolicy,
    ) -> Entry {
        let mut headers = old.headers().to_map();
        let mut fresh = update.clone();
        hygiene::strip_hop_by_hop(&mut fresh);
        let parsed = self.config.tags.parse(&fresh);
        self.config.tags.strip(&mut fresh);
        update::merge_not_modified(&mut headers, &fresh);
        let cc = policy.targeted.directives(&headers);
        storability::strip_unshareable(&mut headers, &cc);
        let freshness = Freshness::compute(old.status(), &headers, &cc, &timing, policy);
        let tags: Vec<Tag> = if parsed.tags.is_empty() {
            old.tags().map(Tag::from).collect()
        } else {
            parsed.tags
        };
        let entry = Entry::new(
            key,
            old.status(),
            &headers,
            old.body_bytes(),
            timing,
            freshness,
            &tags,
            old.variant().clone(),
            purge_seq,
            policy.keep,
        );
        self.keep(key, entry, policy, true)
    }

    /// Stores an entry rebuilt from a stored one (freshened, or completed) in L1 and, when
    /// `shared`, writes it behind to the shared tier: one place for both, as a fill does.
    pub(super) fn keep(
        &self,
        key: KeyRef<'_>,
        entry: Entry,
        policy: &CachePolicy,
        shared: bool,
    ) -> Entry {
        let entry = self.store.insert(entry, policy.max_variants);
        if shared {
            if let Some(tier) = self.shared.get() {
                tier.store(key, entry.clone(), None);
            }
        }
        entry
    }

    /// §4.3.5: a HEAD response freshens the stored GET it validates (same strong ETag, or the
    /// same Last-Modified when neither has an ETag); one that contradicts it removes it.
    pub(super) fn freshen_from_head(
        &self,
        key: KeyRef<'_>,
        req: &HeaderMap,
        resp: &HeaderMap,
        timing: Timing,
        purge_seq: u64,
        policy: &CachePolicy,
    ) {
        let Lookup::Found(old) = self.store.lookup(key, req) else {
            return;
        };
        let stored = update::Validators {
            etag: old.etag(),
            last_modified: old.last_modified(),
            length: old.body_bytes().len(),
        };
        match update::head_verdict(&stored, resp) {
            update::HeadVerdict::Freshen => {
                self.freshen(key, &old, resp, timing, purge_seq, policy);
            }
            update::HeadVerdict::Remove => self.store.remove(key),
            update::HeadVerdict::Keep => {}
        }
    }

    /// Builds the request sent upstream for a cacheable fetch.
    pub(super) fn origin_request(
        &self,
        ctx: &Ctx,
        stale: Option<&Entry>,
        client: Option<SocketAddr>,
    ) -> Request<Body> {
        let mut headers = ctx.headers.clone();
        hygiene::strip_hop_by_hop(&mut headers);
        // We fetch the whole representation to store it, and answer the client's own
        // conditionals and ranges from it ourselves; a single range with nothing stored is
        // asked for as it is, and its 206 stored (`policy::partial`).
        let keep_range = stale.is_none() && partial::storable_request(&headers).is_some();
        let range = headers.get(header::RANGE).cloned().filter(|_| keep_range);
        for h in [
            header::IF_NONE_MATCH,
            header::IF_MODIFIED_SINCE,
            header::IF_MATCH,
            header::IF_UNMODIFIED_SINCE,
            header::IF_RANGE,
            header::RANGE,
        ] {
            headers.remove(h);
        }
        if let Some(range) = range {
            headers.insert(header::RANGE, range);
        }
        if let Some(old) = stale {
            if let Some(etag) = old.etag() {
                headers.insert(header::IF_NONE_MATCH, etag);
            }
            if let Some(lm) = old.last_modified() {
                headers.insert(header::IF_MODIFIED_SINCE, lm);
            }
        }
        let (route, transport) = (&ctx.route, ctx.transport);
        self.forward_headers(
            &mut headers,
            route,
            client,
            http::Version::HTTP_11,
            transport,
        );
        let uri = request_path_uri(ctx.key.view());
        let mut req = Request::new(Body::empty());
        *req.method_mut() = Method::GET;
        *req.uri_mut() = uri;
        *req.headers_mut() = headers;
        req
    }

    pub(super) fn forward_headers(
        &self,
        headers: &mut HeaderMap,
        route: &Route,
        client: Option<SocketAddr>,
        version: http::Version,
        transport: Transport,
    ) {
        hygiene::add_via(headers, version);
        // Within a traced request the origin continues its trace (fetch re-parents it).
        corral_telemetry::inject(headers, None);
        if let Some(c) = client {
            let host = headers
                .get(header::HOST)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_string();
            let seen = Seen {
                client: c.ip(),
                host: &host,
                proto: if transport.tls { "https" } else { "http" },
                port: transport.port.unwrap_or(self.config.ingress.listen_port),
            };
            self.config.ingress.forwarding.set_forwarded(headers, &seen);
        } else {
            headers.remove(hygiene::KEY_CONTEXT);
        }
        match &self.config.host_header {
            HostHeader::Preserve => {}
            HostHeader::Upstream => {
                if let Ok(v) = HeaderValue::from_str(route.upstream.authority().as_str()) {
                    headers.insert(header::HOST, v);
                }
            }
            HostHeader::Fixed(h) => {
                if let Ok(v) = HeaderValue::from_str(h) {
                    headers.insert(header::HOST, v);
                }
            }
        }
    }
}

/// The path and query to request upstream, recovered from a primary key.
pub(super) fn request_path_uri(key: KeyRef<'_>) -> http::Uri {
    (key.path_and_query().parse()).unwrap_or_else(|_| http::Uri::from_static("/"))
}
