//! pass: forward what the cache does not handle, streaming both bodies; a successful unsafe
//! request invalidates what it may have changed (§4.4).

use corral_core::policy::update;

use super::*;

impl Gateway {
    /// pass: forward a request the cache does not handle, streaming both bodies. A successful
    /// unsafe request invalidates what it may have changed (RFC 9111 §4.4).
    pub(super) async fn pass(
        self: &Arc<Self>,
        req: Request<Incoming>,
        route: &Route,
        client: SocketAddr,
        after: AfterPass,
        why: Option<&'static str>,
    ) -> Response<Body> {
        let (mut parts, body) = req.into_parts();
        let post = match &after {
            AfterPass::InvalidateWrite { key, route } if parts.method == Method::POST => Some((
                key.clone(),
                route.clone(),
                as_get(&parts.headers),
                self.now(),
            )),
            _ => None,
        };
        let target = matches!(after, AfterPass::InvalidateWrite { .. }).then(|| {
            (
                parts
                    .headers
                    .get(header::HOST)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_string),
                parts.uri.clone(),
            )
        });
        let head = match after {
            AfterPass::FreshenFromHead(key) => Some((
                key,
                parts.headers.clone(),
                self.store.purge_seq(),
                self.now(),
            )),
            _ => None,
        };
        hygiene::strip_hop_by_hop(&mut parts.headers);
        let transport = Transport::of(&parts.extensions);
        self.forward_headers(
            &mut parts.headers,
            route,
            Some(client),
            parts.version,
            transport,
        );
        // A body of unknown length (chunked, or HTTP/2 without Content-Length) is sent chunked:
        // left to itself the client would send a GET's body as no body at all.
        if !http_body::Body::is_end_stream(&body)
            && !parts.headers.contains_key(header::CONTENT_LENGTH)
        {
            parts.headers.insert(
                header::TRANSFER_ENCODING,
                HeaderValue::from_static("chunked"),
            );
        }
        let mut upstream_req = Request::from_parts(parts, Body::Incoming(body));
        *upstream_req.version_mut() = http::Version::HTTP_11;
        self.metrics.origin_requests.inc();
        let mut cs = CacheStatus::forward(Fwd::Bypass);
        cs.detail = why;
        let resp = match route.upstream.send(upstream_req).await {
            Ok(r) => r,
            Err(err) => {
                self.metrics.answered(Outcome::Bypass);
                cs.detail = Some(err.kind());
                let msg = format!("upstream {:?}: {err}", route.upstream.name);
                return deliver::error(err.status(), &msg, Some(cs));
            }
        };
        if let Some((Some(host), uri)) = &target {
            let ok = resp.status().is_success() || resp.status().is_redirection();
            if ok {
                self.invalidate_after_write(host, uri, resp.headers(), route, client);
            }
            if let Some((key, route, headers, request_time)) = post {
                let cc = route.policy.targeted.directives(resp.headers());
                let status = resp.status();
                if update::post_answers_get(
                    host,
                    uri.path(),
                    uri.query(),
                    status,
                    resp.headers(),
                    &cc,
                ) {
                    // Stored after the invalidation above, so that it is not covered by it.
                    let purge_seq = self.store.purge_seq();
                    let timing = Timing::new(request_time, self.now(), resp.headers());
                    let policy = route.policy.clone();
                    let ctx = Ctx {
                        method: Method::GET,
                        headers,
                        cc: RequestDirectives::default(),
                        route,
                        key,
                        transport,
                    };
                    let mut resp = self.store_and_deliver(
                        ctx,
                        resp,
                        timing,
                        purge_seq,
                        Fwd::Bypass,
                        None,
                        None,
                    );
                    deliver::targeted_fields(&mut resp, &policy.targeted);
                    return resp;
                }
            }
        }
        if let Some((key, req_headers, purge_seq, request_time)) = head {
            if resp.status() == StatusCode::OK {
                let timing = Timing::new(request_time, self.now(), resp.headers());
                self.freshen_from_head(
                    key.view(),
                    &req_headers,
                    resp.headers(),
                    timing,
                    purge_seq,
                    &route.policy,
                );
            }
        }
        self.metrics.answered(Outcome::Bypass);
        let (mut parts, body) = resp.into_parts();
        hygiene::strip_hop_by_hop(&mut parts.headers);
        self.config.tags.strip(&mut parts.headers);
        cs.fwd_status = Some(parts.status.as_u16());
        parts.headers.insert("cache-status", cs.to_header());
        let mut resp = Response::from_parts(parts, Body::Upstream(body));
        deliver::targeted_fields(&mut resp, &route.policy.targeted);
        resp
    }

    /// §4.4: the target URI, and `Location` / `Content-Location` on the same host.
    pub(super) fn invalidate_after_write(
        &self,
        host: &str,
        uri: &http::Uri,
        resp: &HeaderMap,
        route: &Route,
        client: SocketAddr,
    ) {
        let mut urls: Vec<String> =
            update::invalidated_by_write(host, uri.path(), uri.query(), resp)
                .iter()
                .map(|(path, query)| self.url_selector(host, path, query.as_deref(), route))
                .collect();
        urls.dedup();
        let selectors = Selectors {
            urls,
            ..Default::default()
        };
        self.sink.invalidate(
            Purge::new(selectors, Mode::Hard),
            Cause::UnsafeMethod,
            &client.ip().to_string(),
        );
    }
}

/// What a passed-through request does once its response arrives.
pub(super) enum AfterPass {
    Nothing,
    /// A successful unsafe request invalidates what it may have changed (§4.4); a `POST`'s
    /// response that is its target's new representation is stored for later `GET`s of `key`.
    InvalidateWrite {
        key: Key,
        route: Arc<Route>,
    },
    /// A HEAD response may freshen the stored GET of this key (§4.3.5).
    FreshenFromHead(Key),
}

pub(super) fn is_unsafe(m: &Method) -> bool {
    !matches!(
        *m,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE
    )
}

/// The request a stored `POST` response answers later: the `GET` of the same target, without
/// the fields that described the `POST`'s own content.
fn as_get(post: &HeaderMap) -> HeaderMap {
    let mut headers = post.clone();
    hygiene::strip_hop_by_hop(&mut headers);
    let content: Vec<header::HeaderName> = headers
        .keys()
        .filter(|n| n.as_str().starts_with("content-"))
        .cloned()
        .collect();
    for name in content {
        headers.remove(name);
    }
    headers
}
